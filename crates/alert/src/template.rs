//! The subset of Go's `text/template` that Prometheus users write in alert labels and
//! annotations, with Prometheus's template functions.
//!
//! Rule files are shared with Prometheus, so `{{ $labels.instance }}`, `{{ $value |
//! humanize }}`, `{{ printf "%.2f" $value }}`, `{{ if gt $value 0.5 }}...{{ end }}` and
//! friends must read and print exactly as they do there: values print with Go's `fmt`
//! rules and functions follow Prometheus's `template/template.go`. A template is parsed once
//! when its rule is loaded (a syntax error or an unknown function is refused then, with its
//! place) and executed at every evaluation; an execution error never panics, the caller
//! gets it as text (see [`expand`]).
//!
//! Supported: text, `{{- -}}` trimming, comments, pipelines, variables (`$x := ...`,
//! `$x = ...`), field chains on `.`, variables and parenthesised pipelines, `if / else if /
//! else / end`, `with / else / end`, `range` over lists and maps (with `$i, $e :=`). Not
//! supported: `define`, `template`, `block`, `break`, `continue` (refused at parse time).

use std::collections::BTreeMap;
use std::fmt;

use crate::format::{go_e, go_f, go_float, go_g, go_quote, parse_duration};

/// What an alert's templates see: `.Labels`/`$labels`, `.ExternalLabels`/`$externalLabels`,
/// `.ExternalURL`/`$externalURL`, `.Value`/`$value`.
#[derive(Clone, Debug, Default)]
pub struct TemplateData {
    pub labels: BTreeMap<String, String>,
    pub external_labels: BTreeMap<String, String>,
    pub external_url: String,
    pub value: f64,
}

/// The samples of an instant vector as the template function `query` returns them.
pub type QuerySamples = Vec<(BTreeMap<String, String>, f64)>;

/// Runs a PromQL query for the template function `query`.
pub type QueryFn<'a> = dyn Fn(&str) -> Result<QuerySamples, String> + 'a;

/// Why a template did not parse or did not execute; displays as Prometheus words it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("error parsing template {name}: template: {name}:{line}: {message}")]
    Parse {
        name: String,
        line: usize,
        message: String,
    },
    #[error(
        "error executing template {name}: template: {name}:{line}:{col}: executing \"{name}\" at <{at}>: {message}"
    )]
    Exec {
        name: String,
        line: usize,
        col: usize,
        at: String,
        message: String,
    },
}

/// Expands `text` for an alert the way Prometheus does: on any error, the result is the
/// visible text `<error expanding template: ...>`, so a broken annotation shows up in the
/// alert instead of stopping evaluation.
pub fn expand(name: &str, text: &str, data: &TemplateData, query: Option<&QueryFn<'_>>) -> String {
    if !text.contains("{{") {
        return text.to_string();
    }
    match Template::parse(name, text).and_then(|t| t.execute(data, query)) {
        Ok(s) => s,
        Err(e) => format!("<error expanding template: {e}>"),
    }
}

/// A parsed template.
#[derive(Clone, Debug)]
pub struct Template {
    name: String,
    text: String,
    root: Vec<Node>,
}

#[derive(Clone, Debug)]
enum Node {
    Text(String),
    Out(Pipe),
    If {
        branches: Vec<(Pipe, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    With {
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Range {
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

#[derive(Clone, Debug)]
struct Pipe {
    /// Byte offset of the action in the template text (for error places).
    pos: usize,
    vars: Vec<String>,
    /// `=` (assign to existing variables) rather than `:=`.
    assign: bool,
    cmds: Vec<Vec<Operand>>,
}

#[derive(Clone, Debug)]
struct Operand {
    term: Term,
    fields: Vec<String>,
}

#[derive(Clone, Debug)]
enum Term {
    Dot,
    Var(String),
    Func(String),
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    Pipe(Box<Pipe>),
}

// === lexer ===

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Str(String),
    Num(String),
    Ident(String),
    /// `.name`; `joined` when nothing separates it from what precedes it (a chain).
    Field(String, bool),
    Dot,
    Var(String),
    Pipe,
    LParen,
    RParen,
    Declare,
    Assign,
    Comma,
}

/// One piece of template text: literal text or an action's tokens with its offset.
enum Item {
    Text(String),
    Action(Vec<Tok>, usize),
}

fn line_of(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())].matches('\n').count() + 1
}

fn col_of(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    pos - text[..pos].rfind('\n').map_or(0, |i| i + 1)
}

struct Lexer<'a> {
    name: &'a str,
    text: &'a str,
}

impl Lexer<'_> {
    fn err(&self, pos: usize, message: impl Into<String>) -> TemplateError {
        TemplateError::Parse {
            name: self.name.to_string(),
            line: line_of(self.text, pos),
            message: message.into(),
        }
    }

    fn items(&self) -> Result<Vec<Item>, TemplateError> {
        let text = self.text;
        let mut items = Vec::new();
        let mut i = 0;
        let mut trim_next = false;
        while i < text.len() {
            let Some(open) = text[i..].find("{{").map(|o| i + o) else {
                let mut t = &text[i..];
                if trim_next {
                    t = t.trim_start();
                }
                items.push(Item::Text(t.to_string()));
                break;
            };
            let mut t = &text[i..open];
            if trim_next {
                t = t.trim_start();
            }
            let mut start = open + 2;
            let b = text.as_bytes();
            if b.get(start) == Some(&b'-')
                && b.get(start + 1).is_some_and(|c| c.is_ascii_whitespace())
            {
                t = t.trim_end();
                start += 2;
            }
            if !t.is_empty() {
                items.push(Item::Text(t.to_string()));
            }
            let (toks, end, trim) = self.action(start, open)?;
            trim_next = trim;
            if let Some(toks) = toks {
                items.push(Item::Action(toks, open));
            }
            i = end;
        }
        Ok(items)
    }

    /// Tokens of the action starting at `start`, the offset after its `}}`, and whether
    /// it ends with `-}}`. Comments give no tokens.
    #[allow(clippy::type_complexity)]
    fn action(
        &self,
        start: usize,
        open: usize,
    ) -> Result<(Option<Vec<Tok>>, usize, bool), TemplateError> {
        let text = self.text;
        let b = text.as_bytes();
        let rest = &text[start..];
        if rest.trim_start().starts_with("/*") {
            let Some(close) = rest.find("*/") else {
                return Err(self.err(open, "unclosed comment"));
            };
            let after = start + close + 2;
            let tail = &text[after..];
            let trimmed = tail.trim_start();
            if let Some(r) = trimmed.strip_prefix("-}}") {
                return Ok((None, text.len() - r.len(), true));
            }
            if let Some(r) = trimmed.strip_prefix("}}") {
                return Ok((None, text.len() - r.len(), false));
            }
            return Err(self.err(open, "comment ends before closing delimiter"));
        }
        let mut toks = Vec::new();
        let mut i = start;
        let mut prev_space = true;
        loop {
            let Some(&c) = b.get(i) else {
                return Err(self.err(open, "unclosed action"));
            };
            if c.is_ascii_whitespace() {
                // ` -}}` ends the action and trims what follows.
                if b.get(i + 1) == Some(&b'-') && text[i + 2..].starts_with("}}") {
                    return Ok((Some(toks), i + 4, true));
                }
                i += 1;
                prev_space = true;
                continue;
            }
            if text[i..].starts_with("}}") {
                return Ok((Some(toks), i + 2, false));
            }
            let joined = !prev_space;
            prev_space = false;
            match c {
                b'"' => {
                    let mut s = String::new();
                    let mut j = i + 1;
                    loop {
                        let Some(ch) = text[j..].chars().next() else {
                            return Err(self.err(open, "unterminated quoted string"));
                        };
                        match ch {
                            '"' => break,
                            '\n' => return Err(self.err(open, "unterminated quoted string")),
                            '\\' => {
                                let esc = text[j + 1..].chars().next().unwrap_or('\\');
                                j += 1 + esc.len_utf8();
                                match esc {
                                    'n' => s.push('\n'),
                                    't' => s.push('\t'),
                                    'r' => s.push('\r'),
                                    '\\' => s.push('\\'),
                                    '"' => s.push('"'),
                                    '\'' => s.push('\''),
                                    other => {
                                        s.push('\\');
                                        s.push(other);
                                    }
                                }
                                continue;
                            }
                            ch => s.push(ch),
                        }
                        j += ch.len_utf8();
                    }
                    toks.push(Tok::Str(s));
                    i = j + 1;
                }
                b'`' => {
                    let Some(close) = text[i + 1..].find('`') else {
                        return Err(self.err(open, "unterminated raw quoted string"));
                    };
                    toks.push(Tok::Str(text[i + 1..i + 1 + close].to_string()));
                    i += close + 2;
                }
                b'|' => {
                    toks.push(Tok::Pipe);
                    i += 1;
                }
                b'(' => {
                    toks.push(Tok::LParen);
                    i += 1;
                }
                b')' => {
                    toks.push(Tok::RParen);
                    i += 1;
                }
                b',' => {
                    toks.push(Tok::Comma);
                    i += 1;
                }
                b':' if b.get(i + 1) == Some(&b'=') => {
                    toks.push(Tok::Declare);
                    i += 2;
                }
                b'=' => {
                    toks.push(Tok::Assign);
                    i += 1;
                }
                b'$' => {
                    let n = word_len(&text[i + 1..]);
                    toks.push(Tok::Var(text[i + 1..i + 1 + n].to_string()));
                    i += 1 + n;
                }
                b'.' if b.get(i + 1).is_some_and(|c| c.is_ascii_digit()) => {
                    let n = number_len(&text[i..]);
                    toks.push(Tok::Num(text[i..i + n].to_string()));
                    i += n;
                }
                b'.' => {
                    let n = word_len(&text[i + 1..]);
                    if n == 0 {
                        toks.push(Tok::Dot);
                    } else {
                        toks.push(Tok::Field(text[i + 1..i + 1 + n].to_string(), joined));
                    }
                    i += 1 + n;
                }
                b'0'..=b'9' | b'-' | b'+' => {
                    let n = number_len(&text[i..]);
                    if n == 0 {
                        return Err(self.err(open, format!("bad character {:?}", c as char)));
                    }
                    toks.push(Tok::Num(text[i..i + n].to_string()));
                    i += n;
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let n = word_len(&text[i..]);
                    toks.push(Tok::Ident(text[i..i + n].to_string()));
                    i += n;
                }
                _ => {
                    let ch = text[i..].chars().next().unwrap_or('?');
                    return Err(self.err(open, format!("unexpected {ch:?} in command")));
                }
            }
        }
    }
}

fn word_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

fn number_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'-' | b'+')) {
        i = 1;
    }
    let digits_start = i;
    while i < b.len()
        && (b[i].is_ascii_alphanumeric()
            || b[i] == b'.'
            || b[i] == b'_'
            || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
    {
        i += 1;
    }
    if i == digits_start { 0 } else { i }
}

// === parser ===

struct Parser<'a> {
    lexer: &'a Lexer<'a>,
    items: std::iter::Peekable<std::vec::IntoIter<Item>>,
}

/// How a list of nodes ended.
enum End {
    Eof,
    Closed,
    Else(Vec<Tok>, usize),
}

const FUNCS: &[&str] = &[
    "and",
    "or",
    "not",
    "len",
    "index",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "print",
    "printf",
    "println",
    "html",
    "js",
    "urlquery",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toUpper",
    "toLower",
    "title",
    "reReplaceAll",
    "match",
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "sortByLabel",
    "args",
    "safeHtml",
    "stripPort",
    "stripDomain",
    "parseDuration",
    "toTime",
    "externalURL",
    "pathPrefix",
    "tableLink",
    "graphLink",
];

impl Parser<'_> {
    fn list(&mut self, in_block: bool) -> Result<(Vec<Node>, End), TemplateError> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            let (toks, pos) = match item {
                Item::Text(t) => {
                    nodes.push(Node::Text(t));
                    continue;
                }
                Item::Action(toks, pos) => (toks, pos),
            };
            let keyword = match toks.first() {
                Some(Tok::Ident(k)) => k.as_str(),
                None => return Err(self.lexer.err(pos, "missing value for command")),
                _ => "",
            };
            match keyword {
                "end" => {
                    if !in_block {
                        return Err(self.lexer.err(pos, "unexpected {{end}}"));
                    }
                    return Ok((nodes, End::Closed));
                }
                "else" => {
                    if !in_block {
                        return Err(self.lexer.err(pos, "unexpected {{else}}"));
                    }
                    return Ok((nodes, End::Else(toks[1..].to_vec(), pos)));
                }
                "if" | "with" | "range" => {
                    nodes.push(self.block(keyword, toks[1..].to_vec(), pos)?);
                }
                "define" | "template" | "block" | "break" | "continue" => {
                    return Err(self.lexer.err(
                        pos,
                        format!("'{keyword}' is not supported in tandem's rule templates"),
                    ));
                }
                _ => nodes.push(Node::Out(self.pipe(&toks, pos)?)),
            }
        }
        if in_block {
            return Err(self.lexer.err(self.lexer.text.len(), "unexpected EOF"));
        }
        Ok((nodes, End::Eof))
    }

    fn block(&mut self, keyword: &str, toks: Vec<Tok>, pos: usize) -> Result<Node, TemplateError> {
        let pipe = self.pipe(&toks, pos)?;
        let (body, end) = self.list(true)?;
        let mut branches = vec![(pipe, body)];
        let mut otherwise = Vec::new();
        let mut end = end;
        loop {
            match end {
                End::Closed | End::Eof => break,
                End::Else(rest, epos) => {
                    // `else if` / `else with` chain into the same block.
                    let chained = matches!(rest.first(), Some(Tok::Ident(k)) if k == keyword)
                        && keyword != "range";
                    if chained {
                        let pipe = self.pipe(&rest[1..], epos)?;
                        let (body, next) = self.list(true)?;
                        branches.push((pipe, body));
                        end = next;
                        continue;
                    }
                    if !rest.is_empty() {
                        return Err(self.lexer.err(epos, "unexpected tokens after else"));
                    }
                    let (body, next) = self.list(true)?;
                    if let End::Else(_, p) = next {
                        return Err(self.lexer.err(p, "expected end; found {{else}}"));
                    }
                    otherwise = body;
                    break;
                }
            }
        }
        Ok(match keyword {
            "if" => Node::If {
                branches,
                otherwise,
            },
            _ => {
                // A `with` chain is nested: `with a`...`else with b`... is
                // `with a`...`else`{`with b`...}.
                let mut node_else = otherwise;
                while branches.len() > 1 {
                    let (pipe, body) = branches.pop().unwrap_or_else(|| unreachable!());
                    node_else = vec![Node::With {
                        pipe,
                        body,
                        otherwise: node_else,
                    }];
                }
                let (pipe, body) = branches.pop().unwrap_or_else(|| unreachable!());
                if keyword == "with" {
                    Node::With {
                        pipe,
                        body,
                        otherwise: node_else,
                    }
                } else {
                    Node::Range {
                        pipe,
                        body,
                        otherwise: node_else,
                    }
                }
            }
        })
    }

    fn pipe(&self, toks: &[Tok], pos: usize) -> Result<Pipe, TemplateError> {
        let mut i = 0;
        let mut vars = Vec::new();
        let mut assign = false;
        // Declarations: `$x :=`, `$i, $e :=`, `$x =`.
        let mut j = 0;
        let mut names = Vec::new();
        while let Some(Tok::Var(v)) = toks.get(j) {
            names.push(v.clone());
            j += 1;
            match toks.get(j) {
                Some(Tok::Comma) => j += 1,
                Some(Tok::Declare) | Some(Tok::Assign) => break,
                _ => {
                    names.clear();
                    break;
                }
            }
        }
        if !names.is_empty() && matches!(toks.get(j), Some(Tok::Declare) | Some(Tok::Assign)) {
            assign = toks[j] == Tok::Assign;
            vars = names;
            i = j + 1;
        }
        let (cmds, used) = self.cmds(&toks[i..], pos)?;
        if i + used != toks.len() {
            return Err(self.lexer.err(pos, "unexpected ')' in command"));
        }
        if cmds.is_empty() {
            return Err(self.lexer.err(pos, "missing value for command"));
        }
        Ok(Pipe {
            pos,
            vars,
            assign,
            cmds,
        })
    }

    /// Commands up to the end or an unmatched `)`; returns them and the tokens consumed.
    #[allow(clippy::type_complexity)]
    fn cmds(&self, toks: &[Tok], pos: usize) -> Result<(Vec<Vec<Operand>>, usize), TemplateError> {
        let mut cmds = Vec::new();
        let mut cmd: Vec<Operand> = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let term = match &toks[i] {
                Tok::RParen => break,
                Tok::Pipe => {
                    if cmd.is_empty() {
                        return Err(self.lexer.err(pos, "missing command before '|'"));
                    }
                    cmds.push(std::mem::take(&mut cmd));
                    i += 1;
                    continue;
                }
                Tok::LParen => {
                    let (inner, used) = self.cmds(&toks[i + 1..], pos)?;
                    if toks.get(i + 1 + used) != Some(&Tok::RParen) {
                        return Err(self.lexer.err(pos, "unclosed left paren"));
                    }
                    if inner.is_empty() {
                        return Err(self.lexer.err(pos, "missing value for command"));
                    }
                    i += used + 1;
                    Term::Pipe(Box::new(Pipe {
                        pos,
                        vars: Vec::new(),
                        assign: false,
                        cmds: inner,
                    }))
                }
                Tok::Dot => Term::Dot,
                Tok::Field(name, _) => {
                    // `.A.b` is a chain from dot.
                    let mut fields = vec![name.clone()];
                    while let Some(Tok::Field(n, true)) = toks.get(i + 1) {
                        fields.push(n.clone());
                        i += 1;
                    }
                    cmd.push(Operand {
                        term: Term::Dot,
                        fields,
                    });
                    i += 1;
                    continue;
                }
                Tok::Var(v) => Term::Var(v.clone()),
                Tok::Str(s) => Term::Str(s.clone()),
                Tok::Num(n) => parse_number(n)
                    .ok_or_else(|| self.lexer.err(pos, format!("bad number syntax: {n:?}")))?,
                Tok::Ident(name) => match name.as_str() {
                    "true" => Term::Bool(true),
                    "false" => Term::Bool(false),
                    "nil" => Term::Nil,
                    n if FUNCS.contains(&n) => Term::Func(n.to_string()),
                    n => {
                        return Err(self.lexer.err(pos, format!("function {n:?} not defined")));
                    }
                },
                Tok::Declare | Tok::Assign | Tok::Comma => {
                    return Err(self.lexer.err(pos, "unexpected token in command"));
                }
            };
            let mut fields = Vec::new();
            while let Some(Tok::Field(n, true)) = toks.get(i + 1) {
                fields.push(n.clone());
                i += 1;
            }
            cmd.push(Operand { term, fields });
            i += 1;
        }
        if !cmd.is_empty() {
            cmds.push(cmd);
        } else if !cmds.is_empty() {
            return Err(self.lexer.err(pos, "missing command after '|'"));
        }
        Ok((cmds, i))
    }
}

fn parse_number(n: &str) -> Option<Term> {
    let clean = n.replace('_', "");
    let (neg, digits) = match clean.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let int = if let Some(hex) = digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16).ok()
    } else if digits.chars().all(|c| c.is_ascii_digit()) {
        digits.parse::<i64>().ok()
    } else {
        None
    };
    if let Some(v) = int {
        return Some(Term::Int(if neg { -v } else { v }));
    }
    clean.parse::<f64>().ok().map(Term::Float)
}

impl Template {
    /// Parses `text`; `name` is used in error messages.
    pub fn parse(name: &str, text: &str) -> Result<Template, TemplateError> {
        let lexer = Lexer { name, text };
        let items = lexer.items()?;
        let mut parser = Parser {
            lexer: &lexer,
            items: items.into_iter().peekable(),
        };
        let (root, _) = parser.list(false)?;
        Ok(Template {
            name: name.to_string(),
            text: text.to_string(),
            root,
        })
    }

    /// Executes the template over an alert's data.
    pub fn execute(
        &self,
        data: &TemplateData,
        query: Option<&QueryFn<'_>>,
    ) -> Result<String, TemplateError> {
        let map = |m: &BTreeMap<String, String>| {
            Val::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), Val::Str(v.clone())))
                    .collect(),
            )
        };
        let dot = Val::Struct(
            "*template.tmplData",
            BTreeMap::from([
                ("Labels".to_string(), map(&data.labels)),
                ("ExternalLabels".to_string(), map(&data.external_labels)),
                (
                    "ExternalURL".to_string(),
                    Val::Str(data.external_url.clone()),
                ),
                ("Value".to_string(), Val::Float(data.value)),
            ]),
        );
        let mut exec = Exec {
            template: self,
            query,
            vars: vec![
                ("".to_string(), dot.clone()),
                ("labels".to_string(), map(&data.labels)),
                ("externalLabels".to_string(), map(&data.external_labels)),
                (
                    "externalURL".to_string(),
                    Val::Str(data.external_url.clone()),
                ),
                ("value".to_string(), Val::Float(data.value)),
            ],
            out: String::new(),
        };
        exec.nodes(&self.root, &dot)?;
        Ok(exec.out)
    }
}

// === execution ===

/// A value inside a running template, typed as Go would see it.
#[derive(Clone, Debug)]
enum Val {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Map(BTreeMap<String, Val>),
    List(Vec<Val>),
    /// A Go struct: its type name and fields.
    Struct(&'static str, BTreeMap<String, Val>),
}

impl Val {
    fn truth(&self) -> bool {
        match self {
            Val::Nil => false,
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
            Val::Float(f) => *f != 0.0,
            Val::Str(s) => !s.is_empty(),
            Val::Map(m) => !m.is_empty(),
            Val::List(l) => !l.is_empty(),
            Val::Struct(..) => true,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Val::Nil => "<nil>",
            Val::Bool(_) => "bool",
            Val::Int(_) => "int",
            Val::Float(_) => "float64",
            Val::Str(_) => "string",
            Val::Map(_) => "map[string]string",
            Val::List(_) => "[]interface {}",
            Val::Struct(name, _) => name,
        }
    }

    fn as_float(&self) -> Result<f64, String> {
        match self {
            Val::Float(f) => Ok(*f),
            Val::Int(i) => Ok(*i as f64),
            Val::Str(s) => s
                .trim()
                .parse::<f64>()
                .or_else(|_| match s.trim() {
                    "+Inf" | "Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
                    "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
                    "NaN" => Ok(f64::NAN),
                    _ => Err(()),
                })
                .map_err(|_| {
                    format!(
                        "strconv.ParseFloat: parsing {}: invalid syntax",
                        go_quote(s)
                    )
                }),
            other => Err(format!("can't convert {} to float", other.type_name())),
        }
    }
}

impl fmt::Display for Val {
    /// Go's `fmt.Print` of the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Nil => f.write_str("<no value>"),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Int(i) => write!(f, "{i}"),
            Val::Float(v) => f.write_str(&go_float(*v)),
            Val::Str(s) => f.write_str(s),
            Val::Map(m) => {
                f.write_str("map[")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{k}:{v}")?;
                }
                f.write_str("]")
            }
            Val::List(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Val::Struct(_, fields) => {
                f.write_str("{")?;
                for (i, v) in fields.values().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

struct Exec<'a> {
    template: &'a Template,
    query: Option<&'a QueryFn<'a>>,
    /// Variables in scope, innermost last; `""` is `$`.
    vars: Vec<(String, Val)>,
    out: String,
}

impl Exec<'_> {
    fn err(&self, pos: usize, at: &str, message: impl Into<String>) -> TemplateError {
        TemplateError::Exec {
            name: self.template.name.clone(),
            line: line_of(&self.template.text, pos),
            col: col_of(&self.template.text, pos),
            at: at.to_string(),
            message: message.into(),
        }
    }

    fn nodes(&mut self, nodes: &[Node], dot: &Val) -> Result<(), TemplateError> {
        for node in nodes {
            match node {
                Node::Text(t) => self.out.push_str(t),
                Node::Out(pipe) => {
                    let v = self.pipe(pipe, dot)?;
                    if pipe.vars.is_empty() {
                        let s = v.to_string();
                        self.out.push_str(&s);
                    }
                }
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let mut done = false;
                    for (pipe, body) in branches {
                        if self.pipe(pipe, dot)?.truth() {
                            self.nodes(body, dot)?;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        self.nodes(otherwise, dot)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::With {
                    pipe,
                    body,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let v = self.pipe(pipe, dot)?;
                    if v.truth() {
                        self.nodes(body, &v)?;
                    } else {
                        self.nodes(otherwise, dot)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::Range {
                    pipe,
                    body,
                    otherwise,
                } => {
                    let mark = self.vars.len();
                    let bare = Pipe {
                        vars: Vec::new(),
                        assign: false,
                        ..pipe.clone()
                    };
                    let v = self.pipe(&bare, dot)?;
                    let elems: Vec<(Val, Val)> = match v {
                        Val::List(l) => l
                            .into_iter()
                            .enumerate()
                            .map(|(i, e)| (Val::Int(i as i64), e))
                            .collect(),
                        Val::Map(m) => m.into_iter().map(|(k, e)| (Val::Str(k), e)).collect(),
                        Val::Nil => Vec::new(),
                        Val::Int(n) => (0..n.max(0)).map(|i| (Val::Int(i), Val::Int(i))).collect(),
                        other => {
                            return Err(self.err(
                                pipe.pos,
                                "range",
                                format!("range can't iterate over {other}"),
                            ));
                        }
                    };
                    if elems.is_empty() {
                        self.nodes(otherwise, dot)?;
                    }
                    for (k, e) in elems {
                        let inner = self.vars.len();
                        match pipe.vars.as_slice() {
                            [] => {}
                            [one] => self.vars.push((one.clone(), e.clone())),
                            [key, elem, ..] => {
                                self.vars.push((key.clone(), k));
                                self.vars.push((elem.clone(), e.clone()));
                            }
                        }
                        self.nodes(body, &e)?;
                        self.vars.truncate(inner);
                    }
                    self.vars.truncate(mark);
                }
            }
        }
        Ok(())
    }

    fn pipe(&mut self, pipe: &Pipe, dot: &Val) -> Result<Val, TemplateError> {
        let mut value: Option<Val> = None;
        for cmd in &pipe.cmds {
            value = Some(self.cmd(cmd, dot, value, pipe.pos)?);
        }
        let value = value.unwrap_or(Val::Nil);
        if let Some(name) = pipe.vars.first() {
            if pipe.assign {
                match self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = value.clone(),
                    None => {
                        return Err(self.err(
                            pipe.pos,
                            &format!("${name}"),
                            format!("undefined variable: ${name}"),
                        ));
                    }
                }
            } else {
                self.vars.push((name.clone(), value.clone()));
            }
        }
        Ok(value)
    }

    fn cmd(
        &mut self,
        cmd: &[Operand],
        dot: &Val,
        piped: Option<Val>,
        pos: usize,
    ) -> Result<Val, TemplateError> {
        let first = &cmd[0];
        if let Term::Func(name) = &first.term {
            let mut args = Vec::new();
            for op in &cmd[1..] {
                args.push(self.operand(op, dot, pos)?);
            }
            if let Some(p) = piped {
                args.push(p);
            }
            let v = self
                .call(name, args)
                .map_err(|m| self.err(pos, name, format!("error calling {name}: {m}")))?;
            return self.fields(v, &first.fields, pos);
        }
        if cmd.len() > 1 || piped.is_some() {
            return Err(self.err(
                pos,
                &describe(first),
                format!("can't give argument to non-function {}", describe(first)),
            ));
        }
        self.operand(first, dot, pos)
    }

    fn operand(&mut self, op: &Operand, dot: &Val, pos: usize) -> Result<Val, TemplateError> {
        let base = match &op.term {
            Term::Dot => dot.clone(),
            Term::Var(name) => match self.vars.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => v.clone(),
                None => {
                    return Err(self.err(
                        pos,
                        &format!("${name}"),
                        format!("undefined variable: ${name}"),
                    ));
                }
            },
            Term::Func(name) => self
                .call(name, Vec::new())
                .map_err(|m| self.err(pos, name, format!("error calling {name}: {m}")))?,
            Term::Str(s) => Val::Str(s.clone()),
            Term::Int(i) => Val::Int(*i),
            Term::Float(f) => Val::Float(*f),
            Term::Bool(b) => Val::Bool(*b),
            Term::Nil => Val::Nil,
            Term::Pipe(p) => self.pipe(p, dot)?,
        };
        self.fields(base, &op.fields, pos)
    }

    fn fields(&self, mut v: Val, fields: &[String], pos: usize) -> Result<Val, TemplateError> {
        for f in fields {
            v = match v {
                // Labels are map[string]string: a missing key is the empty string.
                Val::Map(mut m) => m.remove(f).unwrap_or(Val::Str(String::new())),
                Val::Struct(name, mut m) => match m.remove(f) {
                    Some(x) => x,
                    None => {
                        return Err(self.err(
                            pos,
                            &format!(".{f}"),
                            format!("can't evaluate field {f} in type {name}"),
                        ));
                    }
                },
                Val::Nil => {
                    return Err(self.err(
                        pos,
                        &format!(".{f}"),
                        format!("nil pointer evaluating interface {{}}.{f}"),
                    ));
                }
                other => {
                    return Err(self.err(
                        pos,
                        &format!(".{f}"),
                        format!("can't evaluate field {f} in type {}", other.type_name()),
                    ));
                }
            };
        }
        Ok(v)
    }

    fn call(&self, name: &str, args: Vec<Val>) -> Result<Val, String> {
        let want = |n: usize| -> Result<(), String> {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "wrong number of args for {name}: want {n} got {}",
                    args.len()
                ))
            }
        };
        let float = |i: usize| args[i].as_float();
        let string = |i: usize| -> Result<String, String> {
            match &args[i] {
                Val::Str(s) => Ok(s.clone()),
                other => Err(format!(
                    "wrong type for value; expected string; got {}",
                    other.type_name()
                )),
            }
        };
        Ok(match name {
            "and" | "or" => {
                if args.is_empty() {
                    return Err(format!(
                        "wrong number of args for {name}: want at least 1 got 0"
                    ));
                }
                let want_truth = name == "or";
                let last = args.len() - 1;
                for (i, a) in args.iter().enumerate() {
                    if a.truth() == want_truth || i == last {
                        return Ok(a.clone());
                    }
                }
                Val::Nil
            }
            "not" => {
                want(1)?;
                Val::Bool(!args[0].truth())
            }
            "len" => {
                want(1)?;
                Val::Int(match &args[0] {
                    Val::Str(s) => s.len(),
                    Val::List(l) => l.len(),
                    Val::Map(m) => m.len(),
                    other => return Err(format!("len of type {}", other.type_name())),
                } as i64)
            }
            "index" => {
                let Some((first, keys)) = args.split_first() else {
                    return Err("wrong number of args for index: want at least 1 got 0".into());
                };
                let mut v = first.clone();
                for k in keys {
                    v = match (v, k) {
                        (Val::Map(mut m), Val::Str(s)) => {
                            m.remove(s).unwrap_or(Val::Str(String::new()))
                        }
                        (Val::List(l), Val::Int(i)) => l
                            .get(usize::try_from(*i).unwrap_or(usize::MAX))
                            .cloned()
                            .ok_or_else(|| format!("index out of range: {i}"))?,
                        (v, k) => {
                            return Err(format!(
                                "can't index item of type {} with {}",
                                v.type_name(),
                                k.type_name()
                            ));
                        }
                    };
                }
                v
            }
            "eq" | "ne" | "lt" | "le" | "gt" | "ge" => {
                if args.len() < 2 {
                    return Err("missing argument for comparison".into());
                }
                let cmp = |a: &Val, b: &Val| -> Result<std::cmp::Ordering, String> {
                    match (a, b) {
                        (Val::Str(x), Val::Str(y)) => Ok(x.cmp(y)),
                        (Val::Bool(x), Val::Bool(y)) if matches!(name, "eq" | "ne") => Ok(x.cmp(y)),
                        (Val::Int(_) | Val::Float(_), Val::Int(_) | Val::Float(_)) => {
                            let (x, y) = (a.as_float()?, b.as_float()?);
                            x.partial_cmp(&y)
                                .ok_or_else(|| "NaN in comparison".to_string())
                        }
                        _ => Err("incompatible types for comparison".into()),
                    }
                };
                if name == "eq" {
                    for b in &args[1..] {
                        if matches!(cmp(&args[0], b), Ok(std::cmp::Ordering::Equal)) {
                            return Ok(Val::Bool(true));
                        }
                        if let Err(e) = cmp(&args[0], b)
                            && e != "NaN in comparison"
                        {
                            return Err(e);
                        }
                    }
                    return Ok(Val::Bool(false));
                }
                want(2)?;
                let ord = match cmp(&args[0], &args[1]) {
                    Ok(o) => Some(o),
                    Err(e) if e == "NaN in comparison" => None,
                    Err(e) => return Err(e),
                };
                use std::cmp::Ordering::*;
                Val::Bool(match (name, ord) {
                    (_, None) => name == "ne",
                    ("ne", Some(o)) => o != Equal,
                    ("lt", Some(o)) => o == Less,
                    ("le", Some(o)) => o != Greater,
                    ("gt", Some(o)) => o == Greater,
                    (_, Some(o)) => o != Less,
                })
            }
            "print" => Val::Str(go_sprint(&args)),
            "println" => {
                let parts: Vec<String> = args.iter().map(Val::to_string).collect();
                Val::Str(parts.join(" ") + "\n")
            }
            "printf" => {
                let Some((Val::Str(f), rest)) = args.split_first() else {
                    return Err("printf needs a format string".into());
                };
                Val::Str(go_sprintf(f, rest))
            }
            "html" => Val::Str(html_escape(&go_sprint(&args))),
            "safeHtml" => Val::Str(go_sprint(&args)),
            "js" => Val::Str(go_sprint(&args).escape_default().to_string()),
            "urlquery" => Val::Str(url_query_escape(&go_sprint(&args))),
            "humanize" => {
                want(1)?;
                Val::Str(humanize(float(0)?))
            }
            "humanize1024" => {
                want(1)?;
                Val::Str(humanize1024(float(0)?))
            }
            "humanizeDuration" => {
                want(1)?;
                Val::Str(humanize_duration(float(0)?))
            }
            "humanizePercentage" => {
                want(1)?;
                Val::Str(format!("{}%", go_g(float(0)? * 100.0, Some(4), false)))
            }
            "humanizeTimestamp" => {
                want(1)?;
                Val::Str(humanize_timestamp(float(0)?)?)
            }
            "toTime" => {
                want(1)?;
                Val::Str(humanize_timestamp(float(0)?)?)
            }
            "parseDuration" => {
                want(1)?;
                let d = parse_duration(&string(0)?)?;
                Val::Float(d.as_secs_f64())
            }
            "toUpper" => {
                want(1)?;
                Val::Str(string(0)?.to_uppercase())
            }
            "toLower" => {
                want(1)?;
                Val::Str(string(0)?.to_lowercase())
            }
            "title" => {
                want(1)?;
                Val::Str(title(&string(0)?))
            }
            "reReplaceAll" => {
                want(3)?;
                let re = regex::Regex::new(&string(0)?).map_err(|e| e.to_string())?;
                Val::Str(
                    re.replace_all(&string(2)?, string(1)?.as_str())
                        .into_owned(),
                )
            }
            "match" => {
                want(2)?;
                let re = regex::Regex::new(&string(0)?).map_err(|e| e.to_string())?;
                Val::Bool(re.is_match(&string(1)?))
            }
            "stripPort" => {
                want(1)?;
                Val::Str(strip_port(&string(0)?))
            }
            "stripDomain" => {
                want(1)?;
                let s = string(0)?;
                let (host, port) = match s.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') => (h.to_string(), format!(":{p}")),
                    _ => (s.clone(), String::new()),
                };
                if host.parse::<std::net::IpAddr>().is_ok() {
                    Val::Str(s)
                } else {
                    Val::Str(host.split('.').next().unwrap_or("").to_string() + &port)
                }
            }
            "query" => {
                want(1)?;
                let q = string(0)?;
                let Some(run) = self.query else {
                    return Err("queries are not available here".into());
                };
                let samples = run(&q)?;
                Val::List(samples.into_iter().map(sample_val).collect())
            }
            "first" => {
                want(1)?;
                match &args[0] {
                    Val::List(l) => l
                        .first()
                        .cloned()
                        .ok_or_else(|| "first() called on vector with no elements".to_string())?,
                    other => return Err(format!("first of type {}", other.type_name())),
                }
            }
            "label" => {
                want(2)?;
                let l = string(0)?;
                match &args[1] {
                    Val::Struct(_, f) => match f.get("Labels") {
                        Some(Val::Map(m)) => m.get(&l).cloned().unwrap_or(Val::Str(String::new())),
                        _ => Val::Str(String::new()),
                    },
                    other => return Err(format!("label of type {}", other.type_name())),
                }
            }
            "value" | "strvalue" => {
                want(1)?;
                match &args[0] {
                    Val::Struct(_, f) if name == "value" => {
                        f.get("Value").cloned().unwrap_or(Val::Nil)
                    }
                    Val::Struct(_, f) => match f.get("Labels") {
                        Some(Val::Map(m)) => m
                            .get("__value__")
                            .cloned()
                            .unwrap_or(Val::Str(String::new())),
                        _ => Val::Str(String::new()),
                    },
                    other => return Err(format!("{name} of type {}", other.type_name())),
                }
            }
            "sortByLabel" => {
                want(2)?;
                let l = string(0)?;
                let Val::List(mut list) = args[1].clone() else {
                    return Err("sortByLabel needs a query result".into());
                };
                let key = |v: &Val| match v {
                    Val::Struct(_, f) => match f.get("Labels") {
                        Some(Val::Map(m)) => m.get(&l).map(Val::to_string).unwrap_or_default(),
                        _ => String::new(),
                    },
                    _ => String::new(),
                };
                list.sort_by_key(key);
                Val::List(list)
            }
            "args" => Val::Map(
                args.iter()
                    .enumerate()
                    .map(|(i, a)| (format!("arg{i}"), a.clone()))
                    .collect(),
            ),
            "externalURL" | "pathPrefix" => Val::Str(String::new()),
            "tableLink" | "graphLink" => {
                want(1)?;
                let expr = url_query_escape(&string(0)?);
                let tab = if name == "tableLink" { 1 } else { 0 };
                Val::Str(format!("/graph?g0.expr={expr}&g0.tab={tab}"))
            }
            other => return Err(format!("function {other:?} not defined")),
        })
    }
}

fn describe(op: &Operand) -> String {
    let base = match &op.term {
        Term::Dot => ".".to_string(),
        Term::Var(v) => format!("${v}"),
        Term::Func(f) => f.clone(),
        Term::Str(s) => go_quote(s),
        Term::Int(i) => i.to_string(),
        Term::Float(f) => go_float(*f),
        Term::Bool(b) => b.to_string(),
        Term::Nil => "nil".into(),
        Term::Pipe(_) => "(...)".into(),
    };
    let fields: String = op.fields.iter().map(|f| format!(".{f}")).collect();
    if matches!(op.term, Term::Dot) && !fields.is_empty() {
        fields
    } else {
        base + &fields
    }
}

fn sample_val((labels, value): (BTreeMap<String, String>, f64)) -> Val {
    Val::Struct(
        "*template.sample",
        BTreeMap::from([
            (
                "Labels".to_string(),
                Val::Map(labels.into_iter().map(|(k, v)| (k, Val::Str(v))).collect()),
            ),
            ("Value".to_string(), Val::Float(value)),
        ]),
    )
}

/// `fmt.Sprint`: operands joined, with a space between two operands when neither is a
/// string.
fn go_sprint(args: &[Val]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !matches!(a, Val::Str(_)) && !matches!(args[i - 1], Val::Str(_)) {
            out.push(' ');
        }
        out.push_str(&a.to_string());
    }
    out
}

/// `fmt.Sprintf` for the verbs people use in alert templates.
fn go_sprintf(format: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut next = 0;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut plus, mut zero, mut space, mut sharp) =
            (false, false, false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                ' ' => space = true,
                '#' => sharp = true,
                _ => break,
            }
            chars.next();
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut prec: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            prec = Some(p.parse().unwrap_or(0));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next += 1;
        let bad = || format!("%!{verb}({}={arg})", arg.type_name());
        let sign = |s: String, neg: bool| -> String {
            if !neg && plus {
                format!("+{s}")
            } else if !neg && space {
                format!(" {s}")
            } else {
                s
            }
        };
        let body = match (verb, arg) {
            ('v', Val::Float(f)) => match prec {
                Some(p) => go_g(*f, Some(p), false),
                None => sign(go_float(*f), *f < 0.0),
            },
            ('v', a) => a.to_string(),
            ('s', Val::Str(s)) => match prec {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            },
            ('s', a @ (Val::Map(_) | Val::List(_) | Val::Struct(..) | Val::Nil)) => a.to_string(),
            ('q', Val::Str(s)) => go_quote(s),
            ('t', Val::Bool(b)) => b.to_string(),
            ('d', Val::Int(i)) => sign(i.to_string(), *i < 0),
            ('x', Val::Int(i)) => format!("{}{i:x}", if sharp { "0x" } else { "" }),
            ('X', Val::Int(i)) => format!("{}{i:X}", if sharp { "0X" } else { "" }),
            ('x', Val::Str(s)) => s.bytes().map(|b| format!("{b:02x}")).collect(),
            ('X', Val::Str(s)) => s.bytes().map(|b| format!("{b:02X}")).collect(),
            ('c', Val::Int(i)) => char::from_u32(*i as u32)
                .map(String::from)
                .unwrap_or_default(),
            ('f' | 'F', Val::Float(f)) => sign(go_f(*f, prec.unwrap_or(6)), *f < 0.0),
            ('e' | 'E', Val::Float(f)) => sign(go_e(*f, prec.unwrap_or(6), verb == 'E'), *f < 0.0),
            ('g' | 'G', Val::Float(f)) => sign(go_g(*f, prec, verb == 'G'), *f < 0.0),
            _ => bad(),
        };
        let w: usize = width.parse().unwrap_or(0);
        let len = body.chars().count();
        if len >= w {
            out.push_str(&body);
        } else if minus {
            out.push_str(&body);
            out.push_str(&" ".repeat(w - len));
        } else if zero && matches!(arg, Val::Int(_) | Val::Float(_)) {
            let (s, digits) = match body.strip_prefix(['-', '+']) {
                Some(d) => (&body[..1], d),
                None => ("", body.as_str()),
            };
            out.push_str(s);
            out.push_str(&"0".repeat(w - len));
            out.push_str(digits);
        } else {
            out.push_str(&" ".repeat(w - len));
            out.push_str(&body);
        }
    }
    if next < args.len() {
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| format!("{}={a}", a.type_name()))
            .collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    out
}

/// Prometheus's `humanize`: SI prefixes, 4 significant digits.
pub(crate) fn humanize(v: f64) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return go_g(v, Some(4), false);
    }
    let mut v = v;
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", go_g(v, Some(4), false))
}

/// Prometheus's `humanize1024`: binary prefixes.
pub(crate) fn humanize1024(v: f64) -> String {
    if v.abs() <= 1.0 || v.is_nan() || v.is_infinite() {
        return go_g(v, Some(4), false);
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", go_g(v, Some(4), false))
}

/// Prometheus's `humanizeDuration`: `1d 2h 3m 4s`, or `1.5s`, `250ms`.
pub(crate) fn humanize_duration(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return go_g(v, Some(4), false);
    }
    if v == 0.0 {
        return format!("{}s", go_g(v, Some(4), false));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let v = v.abs();
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86_400);
        if days != 0 {
            return format!("{sign}{days}d {h}h {m}m {s}s");
        }
        if h != 0 {
            return format!("{sign}{h}h {m}m {s}s");
        }
        if m != 0 {
            return format!("{sign}{m}m {s}s");
        }
        return format!("{sign}{}s", go_g(v, Some(4), false));
    }
    let mut v = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_g(v, Some(4), false))
}

/// Prometheus's `humanizeTimestamp`: Go's `time.Time` text in UTC, millisecond precision.
pub(crate) fn humanize_timestamp(v: f64) -> Result<String, String> {
    if v.is_nan() || v.is_infinite() {
        return Ok(go_g(v, Some(4), false));
    }
    let nanos = v * 1e9;
    if nanos > i64::MAX as f64 || nanos < i64::MIN as f64 {
        return Err(format!(
            "{} cannot be represented as a nanoseconds timestamp since it overflows int64",
            go_float(v)
        ));
    }
    let ms = (nanos as i64) / 1_000_000;
    Ok(utc_time_string(ms))
}

/// `2006-01-02 15:04:05.999 +0000 UTC` for a millisecond timestamp, as Go prints a UTC time.
pub(crate) fn utc_time_string(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let frac = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60
    );
    if frac != 0 {
        let f = format!("{frac:03}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// Go's deprecated `strings.Title`: upper-cases the first letter of every word.
fn title(s: &str) -> String {
    let is_sep = |c: char| {
        if c.is_ascii() {
            !(c.is_ascii_alphanumeric() || c == '_')
        } else {
            !c.is_alphanumeric() && c.is_whitespace()
        }
    };
    let mut prev = ' ';
    s.chars()
        .flat_map(|c| {
            let up = is_sep(prev);
            prev = c;
            if up {
                c.to_uppercase().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn strip_port(s: &str) -> String {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((host, _)) = rest.split_once("]:")
    {
        return host.to_string();
    }
    match s.rsplit_once(':') {
        Some((h, _)) if !h.contains(':') => h.to_string(),
        _ => s.to_string(),
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn url_query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> TemplateData {
        TemplateData {
            labels: BTreeMap::from([
                ("instance".to_string(), "db-1:9100".to_string()),
                ("job".to_string(), "node".to_string()),
            ]),
            external_labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            external_url: "http://tandem:7300".into(),
            value: 0.123456,
        }
    }

    fn run(text: &str) -> String {
        Template::parse("t", text)
            .and_then(|t| t.execute(&data(), None))
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn labels_values_and_external_labels() {
        assert_eq!(
            run("{{ $labels.instance }} of {{ .Labels.job }} in {{ $externalLabels.env }}"),
            "db-1:9100 of node in prod"
        );
        assert_eq!(run("{{ $value }} {{ .Value }}"), "0.123456 0.123456");
        assert_eq!(run("[{{ $labels.missing }}]"), "[]");
        assert_eq!(run("{{ $externalURL }}"), "http://tandem:7300");
    }

    #[test]
    fn pipelines_and_functions_print_like_prometheus() {
        assert_eq!(run("{{ $value | humanizePercentage }}"), "12.35%");
        assert_eq!(run("{{ printf \"%.2f\" $value }}"), "0.12");
        assert_eq!(run("{{ 1234567.0 | humanize }}"), "1.235M");
        assert_eq!(run("{{ 0.0015 | humanize }}"), "1.5m");
        assert_eq!(run("{{ 2048.0 | humanize1024 }}"), "2ki");
        assert_eq!(run("{{ 93784.0 | humanizeDuration }}"), "1d 2h 3m 4s");
        assert_eq!(run("{{ 0.25 | humanizeDuration }}"), "250ms");
        assert_eq!(run("{{ 1.5 | humanizeDuration }}"), "1.5s");
        assert_eq!(
            run("{{ 1435065584.128 | humanizeTimestamp }}"),
            "2015-06-23 13:19:44.128 +0000 UTC"
        );
        assert_eq!(
            run("{{ \"abc\" | toUpper }}{{ \"DEF\" | toLower }}"),
            "ABCdef"
        );
        assert_eq!(run("{{ title \"hello big-world\" }}"), "Hello Big-World");
        assert_eq!(
            run("{{ reReplaceAll \"(.*):.*\" \"$1\" $labels.instance }}"),
            "db-1"
        );
        assert_eq!(run("{{ $labels.instance | stripPort }}"), "db-1");
        assert_eq!(
            run("{{ printf \"%s=%d %5.1f|%-4s|\" \"a\" 3 2.25 \"x\" }}"),
            "a=3   2.2|x   |"
        );
        assert_eq!(run("{{ printf \"%d\" 1.5 }}"), "%!d(float64=1.5)");
    }

    #[test]
    fn control_flow() {
        assert_eq!(
            run("{{ if gt $value 0.5 }}high{{ else if gt $value 0.1 }}mid{{ else }}low{{ end }}"),
            "mid"
        );
        assert_eq!(
            run("{{ with $labels.job }}job={{ . }}{{ end }}"),
            "job=node"
        );
        assert_eq!(
            run("{{ with $labels.nope }}x{{ else }}none{{ end }}"),
            "none"
        );
        assert_eq!(
            run("{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}"),
            "instance=db-1:9100;job=node;"
        );
        assert_eq!(run("{{ $x := 2 }}{{ $x }}{{ $x = 3 }}{{ $x }}"), "23");
        assert_eq!(run("a  {{- \"b\" -}}  c"), "abc");
        assert_eq!(run("{{/* note */}}x"), "x");
        assert_eq!(
            run("{{ if and (eq $labels.job \"node\") (not false) }}y{{ end }}"),
            "y"
        );
    }

    #[test]
    fn queries_run_through_the_callback() {
        let q = |expr: &str| -> Result<QuerySamples, String> {
            assert_eq!(expr, "up");
            Ok(vec![(
                BTreeMap::from([("job".to_string(), "a".to_string())]),
                1.0,
            )])
        };
        let t = Template::parse(
            "t",
            "{{ with query \"up\" }}{{ . | first | value }} {{ range . }}{{ .Labels.job }}{{ end }}{{ end }}",
        )
        .unwrap();
        assert_eq!(t.execute(&data(), Some(&q)).unwrap(), "1 a");
    }

    #[test]
    fn errors_are_reported_not_panicked() {
        let e = Template::parse("__alert_A", "{{ nosuch $value }}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "error parsing template __alert_A: template: __alert_A:1: function \"nosuch\" not defined"
        );
        assert!(Template::parse("t", "{{ if 1 }}x").is_err());
        assert!(Template::parse("t", "{{ end }}").is_err());
        assert!(Template::parse("t", "{{ \"abc }}").is_err());
        let text = expand("__alert_A", "v={{ .Nope }}", &data(), None);
        assert!(
            text.starts_with("<error expanding template: error executing template __alert_A:"),
            "{text}"
        );
        assert!(text.contains("can't evaluate field Nope"), "{text}");
        let text = expand("__alert_A", "{{ query \"up\" }}", &data(), None);
        assert!(text.starts_with("<error expanding template:"), "{text}");
        let text = expand("__alert_A", "{{ humanize \"abc\" }}", &data(), None);
        assert!(text.contains("error calling humanize"), "{text}");
        // Plain text needs no parse.
        assert_eq!(
            expand("x", "plain {{", &data(), None),
            "<error expanding template: error parsing template x: template: x:1: unclosed action>"
        );
    }
}
