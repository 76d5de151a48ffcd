//! Conformance with Prometheus: runs Prometheus's own PromQL test scripts (the
//! "promqltest" language, see `../shared/promql-testdata/NOTICE.md`) against tandem's engine
//! over the in-memory store, and prints per file how many cases passed, failed, were skipped
//! (native histograms, feature-flagged files) or could not be parsed by `promql-parser`.
//!
//! The number of failures per file may not exceed `conformance-baseline.txt`, so progress
//! is locked in and a regression fails the build. `BLESS=1` rewrites the baseline with
//! today's counts; review the diff before committing it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_promql::testing::MemQuerier;
use tandem_promql::{Engine, EvalError, Value};
use tandem_tsdb::model::{Labels, Querier, Sample, stale_nan};

/// Files Prometheus only runs with a feature flag turned on, and which tandem does not
/// implement either. `fill-modifier` and `limit` are flagged in Prometheus too, but tandem
/// implements them, so they run (`limit` reads native histograms almost throughout).
const FEATURE_FLAG_FILES: &[&str] = &[
    "duration_expression",
    "extended_vectors",
    "info",
    "name_label_dropping",
    "start_timestamps",
    "type_and_unit",
];

fn testdata_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/promql-testdata")
}

fn baseline_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance-baseline.txt")
}

// === the script language ===

/// One value of a series description.
#[derive(Clone, Copy, Debug)]
enum SeqVal {
    Value(f64),
    Omitted,
    /// A native histogram (`{{...}}`), which tandem does not support yet.
    Histogram,
}

#[derive(Debug)]
struct Expected {
    labels: Labels,
    vals: Vec<SeqVal>,
    pos: usize,
}

#[derive(Debug, Default)]
struct EvalCase {
    line: usize,
    query: String,
    range: Option<(i64, i64, i64)>,
    at: i64,
    fail: bool,
    fail_msg: Option<String>,
    fail_regex: Option<String>,
    ordered: bool,
    annotations_expected: bool,
    expected_scalar: Option<f64>,
    expected_string: Option<String>,
    /// `expect range vector from A to B step S` on an instant query.
    range_vector: Option<(i64, i64, i64)>,
    expected: Vec<Expected>,
    uses_histograms: bool,
}

/// Parses a Prometheus duration (`1h30m`, `10s53ms`, `0`) into milliseconds.
fn parse_duration(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(0);
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let mut total: i64 = 0;
    let mut rest = body;
    if rest.is_empty() {
        return Err(format!("invalid duration '{s}'"));
    }
    while !rest.is_empty() {
        let n = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(format!("invalid duration '{s}'"));
        }
        let num: i64 = rest[..n]
            .parse()
            .map_err(|_| format!("invalid duration '{s}'"))?;
        rest = &rest[n..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('d') {
            (86_400_000, 1)
        } else if rest.starts_with('w') {
            (7 * 86_400_000, 1)
        } else if rest.starts_with('y') {
            (365 * 86_400_000, 1)
        } else {
            return Err(format!("invalid duration unit in '{s}'"));
        };
        total += num * unit;
        rest = &rest[len..];
    }
    Ok(if neg { -total } else { total })
}

/// A number in a series description (no hex: `0x5` there means "0, five more times").
fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    let (sign, body) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    let lower = body.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Some(sign * f64::INFINITY);
    }
    if lower == "nan" {
        return Some(f64::NAN);
    }
    if body.is_empty()
        || !body
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    body.parse::<f64>().ok().map(|v| sign * v)
}

/// A bare number on its own line, the expected value of a scalar query (Go's
/// `strconv.ParseInt(s, 0, 64)` then `ParseFloat`, so hex is allowed here).
fn parse_scalar_line(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.contains(char::is_whitespace) {
        return None;
    }
    let (sign, body) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        return i64::from_str_radix(hex, 16).ok().map(|v| sign * v as f64);
    }
    parse_number(t)
}

/// Expands one value token: `1`, `_`, `_x3`, `stale`, `1x3`, `1+2x3`, `1-2x3`.
fn parse_value_token(tok: &str, out: &mut Vec<SeqVal>) -> Result<(), String> {
    if tok == "_" {
        out.push(SeqVal::Omitted);
        return Ok(());
    }
    if tok == "stale" {
        out.push(SeqVal::Value(stale_nan()));
        return Ok(());
    }
    if let Some(n) = tok.strip_prefix("_x") {
        let n: usize = n.parse().map_err(|_| format!("bad value '{tok}'"))?;
        out.extend(std::iter::repeat_n(SeqVal::Omitted, n));
        return Ok(());
    }
    if let Some(v) = parse_number(tok) {
        out.push(SeqVal::Value(v));
        return Ok(());
    }
    // `<a>[+-]<b>x<n>` or `<a>x<n>`.
    let Some(xpos) = tok.rfind('x') else {
        return Err(format!("bad value '{tok}'"));
    };
    let times: usize = tok[xpos + 1..]
        .parse()
        .map_err(|_| format!("bad value '{tok}'"))?;
    let head = &tok[..xpos];
    if head == "stale" {
        out.extend(std::iter::repeat_n(SeqVal::Value(stale_nan()), times + 1));
        return Ok(());
    }
    let bytes = head.as_bytes();
    let split = (1..bytes.len())
        .find(|&i| (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E'));
    match split {
        None => {
            let v = parse_number(head).ok_or_else(|| format!("bad value '{tok}'"))?;
            out.extend(std::iter::repeat_n(SeqVal::Value(v), times + 1));
        }
        Some(i) => {
            let mut a = parse_number(&head[..i]).ok_or_else(|| format!("bad value '{tok}'"))?;
            let b = parse_number(&head[i..]).ok_or_else(|| format!("bad value '{tok}'"))?;
            out.push(SeqVal::Value(a));
            for _ in 0..times {
                a += b;
                out.push(SeqVal::Value(a));
            }
        }
    }
    Ok(())
}

fn unquote(s: &str) -> Result<(String, usize), String> {
    let mut chars = s.char_indices();
    let Some((_, q)) = chars.next() else {
        return Err("empty string".into());
    };
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        if c == q {
            return Ok((out, i + c.len_utf8()));
        }
        if c == '\\' && q != '`' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, '\'')) => out.push('\''),
                Some((j, 'x')) => {
                    let hex = s.get(j + 1..j + 3).ok_or("bad escape")?;
                    let b = u8::from_str_radix(hex, 16).map_err(|_| "bad escape")?;
                    out.push(b as char);
                    chars.next();
                    chars.next();
                }
                Some((j, 'u')) => {
                    let hex = s.get(j + 1..j + 5).ok_or("bad escape")?;
                    let c = u32::from_str_radix(hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or("bad escape")?;
                    out.push(c);
                    for _ in 0..4 {
                        chars.next();
                    }
                }
                Some((_, other)) => {
                    out.push('\\');
                    out.push(other);
                }
                None => return Err("unterminated string".into()),
            }
        } else {
            out.push(c);
        }
    }
    Err("unterminated string".into())
}

/// Parses `name{a="b", ...}`, returning the labels and the rest of the line.
fn parse_metric(line: &str) -> Result<(Labels, &str, bool), String> {
    let line = line.trim_start();
    let mut pairs: Vec<(String, String)> = Vec::new();
    let name_len = line
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .map(|(i, _)| i)
        .unwrap_or(line.len());
    if name_len > 0 {
        pairs.push(("__name__".into(), line[..name_len].to_string()));
    }
    let mut rest = &line[name_len..];
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
                continue;
            }
            // A label name, bare or quoted; a lone quoted string is the metric name.
            let name = if rest.starts_with('"') || rest.starts_with('\'') || rest.starts_with('`') {
                let (n, len) = unquote(rest)?;
                rest = &rest[len..];
                n
            } else {
                let len = rest
                    .char_indices()
                    .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map(|(i, _)| i)
                    .unwrap_or(rest.len());
                if len == 0 {
                    return Err(format!("bad label list at '{rest}'"));
                }
                let n = rest[..len].to_string();
                rest = &rest[len..];
                n
            };
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('=') {
                let (v, len) = unquote(r.trim_start())?;
                rest = &r.trim_start()[len..];
                pairs.push((name, v));
            } else {
                pairs.push(("__name__".into(), name));
            }
        }
    }
    let has_braces_or_name = name_len > 0 || line.starts_with('{');
    Ok((Labels::new(pairs), rest, has_braces_or_name))
}

fn parse_series(line: &str) -> Result<(Labels, Vec<SeqVal>), String> {
    let (labels, rest, ok) = parse_metric(line)?;
    if !ok {
        return Err(format!("not a series: '{line}'"));
    }
    let mut vals = Vec::new();
    let rest = rest.trim();
    if rest.contains("{{") {
        // Keep the positions of the values around histograms roughly right; only the
        // presence of a histogram matters, as such cases are skipped.
        vals.push(SeqVal::Histogram);
        return Ok((labels, vals));
    }
    for tok in rest.split_whitespace() {
        parse_value_token(tok, &mut vals)?;
    }
    Ok((labels, vals))
}

enum Command {
    Load {
        step: i64,
        nhcb: bool,
        series: Vec<(Labels, Vec<SeqVal>)>,
    },
    Clear,
    Eval(Box<EvalCase>),
}

fn parse_script(text: &str) -> Result<Vec<Command>, String> {
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim();
            if t.starts_with('#') {
                String::new()
            } else {
                t.to_string()
            }
        })
        .collect();
    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        let lineno = i + 1;
        if line.is_empty() {
            i += 1;
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or("");
        match word {
            "clear" => {
                cmds.push(Command::Clear);
                i += 1;
            }
            "load" | "load_with_nhcb" => {
                let step = parse_duration(line[word.len()..].trim())
                    .map_err(|e| format!("line {lineno}: {e}"))?;
                let mut series = Vec::new();
                i += 1;
                while i < lines.len() && !lines[i].is_empty() {
                    series
                        .push(parse_series(&lines[i]).map_err(|e| format!("line {}: {e}", i + 1))?);
                    i += 1;
                }
                cmds.push(Command::Load {
                    step,
                    nhcb: word == "load_with_nhcb",
                    series,
                });
            }
            w if w.starts_with("eval") => {
                let mut case =
                    parse_eval_header(line).map_err(|e| format!("line {lineno}: {e}"))?;
                case.line = lineno;
                i += 1;
                let mut pos = 0;
                while i < lines.len() && !lines[i].is_empty() {
                    let l = &lines[i];
                    i += 1;
                    if let Some(m) = l.strip_prefix("expected_fail_message") {
                        case.fail_msg = Some(m.trim().to_string());
                        continue;
                    }
                    if let Some(m) = l.strip_prefix("expected_fail_regexp") {
                        case.fail_regex = Some(m.trim().to_string());
                        continue;
                    }
                    if let Some(r) = l.strip_prefix("expect range vector") {
                        let parts: Vec<&str> = r.split_whitespace().collect();
                        if let ["from", a, "to", b, "step", s] = parts[..] {
                            case.range_vector =
                                Some((parse_duration(a)?, parse_duration(b)?, parse_duration(s)?));
                        } else {
                            return Err(format!("line {}: bad range vector directive", i));
                        }
                        continue;
                    }
                    if let Some(r) = l.strip_prefix("expect string") {
                        let (s, _) = unquote(r.trim())?;
                        case.expected_string = Some(s);
                        continue;
                    }
                    if l.split(' ').next() == Some("expect") {
                        parse_expect(&mut case, l);
                        continue;
                    }
                    if let Some(v) = parse_scalar_line(l) {
                        case.expected_scalar = Some(v);
                        continue;
                    }
                    if l.contains("{{") {
                        case.uses_histograms = true;
                    }
                    let (labels, vals) = parse_series(l).map_err(|e| format!("line {}: {e}", i))?;
                    pos += 1;
                    case.expected.push(Expected { labels, vals, pos });
                }
                cmds.push(Command::Eval(Box::new(case)));
            }
            _ => return Err(format!("line {lineno}: unknown command '{line}'")),
        }
    }
    Ok(cmds)
}

fn parse_expect(case: &mut EvalCase, l: &str) {
    let rest = l["expect".len()..].trim();
    let (kind, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    match kind {
        "fail" => {
            case.fail = true;
            let tail = tail.trim();
            if let Some(m) = tail.strip_prefix("msg:") {
                case.fail_msg = Some(m.trim().to_string());
            } else if let Some(r) = tail.strip_prefix("regex:") {
                case.fail_regex = Some(r.trim().to_string());
            }
        }
        "ordered" => case.ordered = true,
        "warn" | "info" => case.annotations_expected = true,
        _ => {}
    }
}

fn parse_eval_header(line: &str) -> Result<EvalCase, String> {
    let (head, rest) = line.split_once(char::is_whitespace).ok_or("bad eval")?;
    let mut case = EvalCase::default();
    match head {
        "eval" => {}
        "eval_fail" => case.fail = true,
        "eval_ordered" => case.ordered = true,
        "eval_warn" | "eval_info" => case.annotations_expected = true,
        _ => return Err(format!("unknown eval variant '{head}'")),
    }
    let rest = rest.trim_start();
    if let Some(r) = rest.strip_prefix("instant") {
        let r = r.trim_start();
        let r = r
            .strip_prefix("at")
            .ok_or("instant eval without 'at'")?
            .trim_start();
        let (t, q) = r
            .split_once(char::is_whitespace)
            .ok_or("bad instant eval")?;
        case.at = parse_duration(t)?;
        case.query = q.trim().to_string();
    } else if let Some(r) = rest.strip_prefix("range") {
        let parts: Vec<&str> = r.split_whitespace().collect();
        if parts.len() < 7 || parts[0] != "from" || parts[2] != "to" || parts[4] != "step" {
            return Err("bad range eval".into());
        }
        case.range = Some((
            parse_duration(parts[1])?,
            parse_duration(parts[3])?,
            parse_duration(parts[5])?,
        ));
        // The query is everything after the step, spaces included.
        let idx = nth_token_end(r, 6);
        case.query = r[idx..].trim().to_string();
    } else {
        return Err("eval must be 'instant' or 'range'".into());
    }
    Ok(case)
}

/// The byte offset just past the `n`th whitespace-separated token of `s`.
fn nth_token_end(s: &str, n: usize) -> usize {
    let mut count = 0;
    let mut in_tok = false;
    for (i, c) in s.char_indices() {
        if c.is_whitespace() {
            if in_tok {
                count += 1;
                if count == n {
                    return i;
                }
            }
            in_tok = false;
        } else {
            in_tok = true;
        }
    }
    s.len()
}

// === running ===

enum Outcome {
    Pass,
    Fail(String),
    Unparseable(String),
}

fn almost_equal(a: f64, b: f64) -> bool {
    use tandem_tsdb::model::is_stale_nan;
    if is_stale_nan(a) || is_stale_nan(b) {
        return is_stale_nan(a) && is_stale_nan(b);
    }
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < 1e-6 * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < 1e-6
}

fn check_failure(case: &EvalCase, err: &EvalError) -> Outcome {
    if let Some(m) = &case.fail_msg
        && *m != err.message
    {
        return Outcome::Fail(format!(
            "error message differs: expected '{m}', got '{}'",
            err.message
        ));
    }
    if let Some(r) = &case.fail_regex {
        match regex::Regex::new(r) {
            Ok(re) if re.is_match(&err.message) => {}
            _ => {
                return Outcome::Fail(format!(
                    "error message does not match /{r}/: '{}'",
                    err.message
                ));
            }
        }
    }
    Outcome::Pass
}

/// Compares an instant-vector result with the expected lines.
fn compare_vector(case: &EvalCase, got: &[(Labels, f64)]) -> Result<(), String> {
    if case.expected_scalar.is_some() {
        return Err("expected a scalar, got a vector".into());
    }
    let expected: HashMap<&Labels, &Expected> =
        case.expected.iter().map(|e| (&e.labels, e)).collect();
    let mut seen = HashSet::new();
    for (pos, (l, v)) in got.iter().enumerate() {
        let Some(e) = expected.get(l) else {
            return Err(format!("unexpected series {l} {v}"));
        };
        if case.ordered && e.pos != pos + 1 {
            return Err(format!("{l} at position {} instead of {}", pos + 1, e.pos));
        }
        let want = match e.vals.first() {
            Some(SeqVal::Value(x)) => *x,
            _ => return Err(format!("no expected value for {l}")),
        };
        if !almost_equal(want, *v) {
            return Err(format!("{l}: expected {want}, got {v}"));
        }
        seen.insert(l.clone());
    }
    for e in &case.expected {
        if !seen.contains(&e.labels) {
            return Err(format!("missing series {}", e.labels));
        }
    }
    Ok(())
}

fn compare_matrix(
    case: &EvalCase,
    got: &[tandem_tsdb::model::Series],
    (start, end, step): (i64, i64, i64),
) -> Result<(), String> {
    if case.expected_scalar.is_some() {
        return Err("expected a scalar, got a matrix".into());
    }
    for w in got.windows(2) {
        if w[0].labels > w[1].labels {
            return Err("matrix is not sorted by labels".into());
        }
    }
    let expected: HashMap<&Labels, &Expected> =
        case.expected.iter().map(|e| (&e.labels, e)).collect();
    let mut seen = HashSet::new();
    for s in got {
        let Some(e) = expected.get(&s.labels) else {
            return Err(format!(
                "unexpected series {} {:?}",
                s.labels,
                points(&s.samples)
            ));
        };
        let mut want = Vec::new();
        for (i, v) in e.vals.iter().enumerate() {
            let t = start + i as i64 * step;
            if t > end {
                return Err(format!("more expected points than steps for {}", s.labels));
            }
            if let SeqVal::Value(x) = v {
                want.push((t, *x));
            }
        }
        if want.len() != s.samples.len() {
            return Err(format!(
                "{}: expected {} points, got {:?}",
                s.labels,
                want.len(),
                points(&s.samples)
            ));
        }
        for ((t, x), smp) in want.iter().zip(&s.samples) {
            if *t != smp.t || !almost_equal(*x, smp.v) {
                return Err(format!(
                    "{}: expected {x} at {t}, got {:?}",
                    s.labels,
                    points(&s.samples)
                ));
            }
        }
        seen.insert(s.labels.clone());
    }
    for e in &case.expected {
        if !seen.contains(&e.labels) {
            return Err(format!("missing series {}", e.labels));
        }
    }
    Ok(())
}

fn points(s: &[Sample]) -> Vec<(i64, f64)> {
    s.iter().map(|x| (x.t, x.v)).collect()
}

fn compare_value(case: &EvalCase, v: &Value) -> Result<(), String> {
    match v {
        Value::Scalar { v, .. } => match case.expected_scalar {
            Some(want) if almost_equal(want, *v) => Ok(()),
            Some(want) => Err(format!("expected scalar {want}, got {v}")),
            None => Err(format!("expected a vector or matrix, got scalar {v}")),
        },
        Value::String(s) => match &case.expected_string {
            Some(want) if want == s => Ok(()),
            want => Err(format!("expected string {want:?}, got {s:?}")),
        },
        Value::Vector(els) => {
            let got: Vec<(Labels, f64)> = els.iter().map(|(l, s)| (l.clone(), s.v)).collect();
            compare_vector(case, &got)
        }
        Value::Matrix(m) => {
            if case.ordered {
                return Err("expected an ordered vector, got a matrix".into());
            }
            let frame = case
                .range_vector
                .or(case.range)
                .unwrap_or((case.at, case.at, 0));
            compare_matrix(case, m, frame)
        }
    }
}

fn run_case(engine: &Engine, q: &MemQuerier, case: &EvalCase) -> Outcome {
    if let Err(e) = tandem_promql::parse(&case.query) {
        // Prometheus fails too, but the expected message is about something promql-parser
        // never gets to: count it as unparseable rather than as an evaluator failure.
        if case.fail && matches!(check_failure(case, &e), Outcome::Pass) {
            return Outcome::Pass;
        }
        return Outcome::Unparseable(e.message);
    }
    let result = match case.range {
        Some((s, e, st)) => engine.range(q, &case.query, s, e, st),
        None => engine.instant(q, &case.query, case.at),
    };
    let v = match result {
        Err(e) if case.fail => return check_failure(case, &e),
        Err(e) => return Outcome::Fail(format!("error: {e}")),
        Ok(_) if case.fail => return Outcome::Fail("expected an error, got a result".into()),
        Ok(v) => v,
    };
    if let Err(why) = compare_value(case, &v) {
        return Outcome::Fail(why);
    }
    // Prometheus also checks that an instant query gives the same answer as the middle
    // step of a range query around it; do the same.
    let excluded = case.range.is_some()
        || case.range_vector.is_some()
        || case.expected_string.is_some()
        || regex::Regex::new(r"(start|end|range|step)\(\)")
            .map(|r| r.is_match(&case.query))
            .unwrap_or(false);
    if excluded {
        return Outcome::Pass;
    }
    let rv = match engine.range(q, &case.query, case.at - 60_000, case.at + 60_000, 60_000) {
        Ok(v) => v,
        Err(e) => return Outcome::Fail(format!("error in range mode: {e}")),
    };
    if case.ordered {
        return Outcome::Pass;
    }
    let Value::Matrix(m) = rv else {
        return Outcome::Fail("range mode did not return a matrix".into());
    };
    let at_t: Vec<(Labels, f64)> = m
        .iter()
        .filter_map(|s| {
            s.samples
                .iter()
                .find(|x| x.t == case.at)
                .map(|x| (s.labels.clone(), x.v))
        })
        .collect();
    let res = if matches!(v, Value::Scalar { .. }) {
        match at_t.first() {
            Some((_, x)) => compare_value(case, &Value::Scalar { t: case.at, v: *x }),
            None => Err("no scalar at the evaluation time".into()),
        }
    } else {
        compare_vector(case, &at_t)
    };
    match res {
        Ok(()) => Outcome::Pass,
        Err(why) => Outcome::Fail(format!("range mode: {why}")),
    }
}

/// Identifiers in a query, to tell whether it touches a native-histogram series.
fn identifiers(q: &str) -> HashSet<&str> {
    q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|s| !s.is_empty())
        .collect()
}

#[derive(Default)]
struct FileReport {
    passed: usize,
    failed: Vec<(usize, String, String)>,
    skipped: BTreeMap<String, usize>,
    skipped_cases: Vec<(usize, String, String)>,
    unparseable: Vec<(usize, String, String)>,
    annotations_unchecked: usize,
    note: Option<String>,
}

fn run_file(engine: &Engine, name: &str, text: &str) -> FileReport {
    let mut rep = FileReport::default();
    let stem = name.trim_end_matches(".test");
    if FEATURE_FLAG_FILES.contains(&stem) {
        let n = text
            .lines()
            .filter(|l| l.trim_start().starts_with("eval"))
            .count();
        rep.skipped.insert(
            format!("whole file behind a Prometheus feature flag ('{stem}')"),
            n,
        );
        return rep;
    }
    let cmds = match parse_script(text) {
        Ok(c) => c,
        Err(e) => {
            rep.failed
                .push((0, String::new(), format!("script does not parse: {e}")));
            return rep;
        }
    };
    let mut q = MemQuerier::new();
    let mut native: HashSet<String> = HashSet::new();
    // One sample per native-histogram series, to see which ones a query selects.
    let mut native_series = MemQuerier::new();
    for cmd in cmds {
        match cmd {
            Command::Clear => {
                q.clear();
                native.clear();
                native_series.clear();
            }
            Command::Load { step, nhcb, series } => {
                for (labels, vals) in series {
                    let name = labels.metric_name().unwrap_or("").to_string();
                    if vals.iter().any(|v| matches!(v, SeqVal::Histogram)) {
                        native.insert(name.clone());
                        native_series.add(labels.clone(), [Sample { t: 0, v: 0.0 }]);
                    }
                    if nhcb {
                        for suffix in ["_bucket", "_count", "_sum"] {
                            if let Some(base) = name.strip_suffix(suffix) {
                                native.insert(base.to_string());
                            }
                        }
                    }
                    let samples: Vec<Sample> = vals
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| match v {
                            SeqVal::Value(x) => Some(Sample {
                                t: i as i64 * step,
                                v: *x,
                            }),
                            _ => None,
                        })
                        .collect();
                    q.add(labels, samples);
                }
            }
            Command::Eval(case) => {
                let ids = identifiers(&case.query);
                let mut touched: Vec<String> = ids
                    .iter()
                    .filter(|i| native.contains(**i))
                    .map(|i| i.to_string())
                    .collect();
                for set in tandem_promql::selectors(&case.query).unwrap_or_default() {
                    for s in native_series
                        .select(&set, i64::MIN, i64::MAX)
                        .unwrap_or_default()
                    {
                        touched.push(s.labels.to_string());
                    }
                }
                if case.uses_histograms || !touched.is_empty() {
                    let why = if case.uses_histograms {
                        "native histograms in the expected result".to_string()
                    } else {
                        "native histograms in the data the query reads".to_string()
                    };
                    if std::env::var_os("CONFORMANCE_VERBOSE").is_some() {
                        rep.skipped_cases.push((
                            case.line,
                            case.query.clone(),
                            format!("{why} {touched:?}"),
                        ));
                    }
                    *rep.skipped.entry(why).or_default() += 1;
                    continue;
                }
                let outcome = catch_unwind(AssertUnwindSafe(|| run_case(engine, &q, &case)))
                    .unwrap_or_else(|_| Outcome::Fail("PANIC".into()));
                match outcome {
                    Outcome::Pass => {
                        rep.passed += 1;
                        if case.annotations_expected {
                            rep.annotations_unchecked += 1;
                        }
                    }
                    Outcome::Fail(why) => rep.failed.push((case.line, case.query.clone(), why)),
                    Outcome::Unparseable(e) => {
                        rep.unparseable.push((case.line, case.query.clone(), e))
                    }
                }
            }
        }
    }
    rep
}

fn read_baseline() -> BTreeMap<String, usize> {
    let Ok(text) = std::fs::read_to_string(baseline_path()) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn prometheus_promql_test_scripts() {
    let dir = testdata_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => panic!(
            "the PromQL conformance data is missing: cannot read {} ({e}); it is expected at ../shared/promql-testdata next to the repository",
            dir.display()
        ),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .test files in {}", dir.display());

    let engine = Engine {
        timeout: Some(Duration::from_secs(20)),
        ..Engine::default()
    };
    let baseline = read_baseline();
    let mut summary = String::new();
    let mut details = String::new();
    let mut regressions = Vec::new();
    let mut new_baseline = String::from(
        "# Maximum number of failing cases per file in tests/conformance.rs; lower it as cases are fixed.\n",
    );
    let _ = writeln!(
        summary,
        "{:<28} {:>7} {:>7} {:>8} {:>12}",
        "file", "passed", "failed", "skipped", "unparseable"
    );
    let (mut tp, mut tf, mut ts, mut tu, mut ta) = (0, 0, 0, 0, 0);
    for path in &files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let rep = run_file(&engine, &name, &text);
        let skipped: usize = rep.skipped.values().sum();
        let _ = writeln!(
            summary,
            "{:<28} {:>7} {:>7} {:>8} {:>12}",
            name,
            rep.passed,
            rep.failed.len(),
            skipped,
            rep.unparseable.len()
        );
        for (why, n) in &rep.skipped {
            let _ = writeln!(details, "{name}: skipped {n}: {why}");
        }
        for (line, q, why) in &rep.skipped_cases {
            let _ = writeln!(details, "{name}:{line}: SKIP {q}\n    {why}");
        }
        for (line, q, why) in &rep.failed {
            let _ = writeln!(details, "{name}:{line}: FAIL {q}\n    {why}");
        }
        for (line, q, why) in &rep.unparseable {
            let _ = writeln!(
                details,
                "{name}:{line}: UNPARSEABLE by promql-parser: {q}\n    {why}"
            );
        }
        if let Some(n) = &rep.note {
            let _ = writeln!(details, "{name}: {n}");
        }
        tp += rep.passed;
        tf += rep.failed.len();
        ts += skipped;
        tu += rep.unparseable.len();
        ta += rep.annotations_unchecked;
        let allowed = baseline.get(&name).copied().unwrap_or(0);
        if rep.failed.len() > allowed {
            regressions.push(format!(
                "{name}: {} failures, baseline allows {allowed}",
                rep.failed.len()
            ));
        } else if rep.failed.len() < allowed {
            let _ = writeln!(
                details,
                "{name}: {} failures, below the baseline of {allowed}: lower it",
                rep.failed.len()
            );
        }
        let _ = writeln!(new_baseline, "{name} {}", rep.failed.len());
    }
    let _ = writeln!(
        summary,
        "{:<28} {:>7} {:>7} {:>8} {:>12}",
        "total", tp, tf, ts, tu
    );
    let _ = writeln!(
        summary,
        "({ta} passing cases also expect warn/info annotations, which tandem does not produce and the runner does not check)"
    );
    eprintln!("\n{details}\n{summary}");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(baseline_path(), new_baseline).expect("write the baseline");
        return;
    }
    assert!(
        regressions.is_empty(),
        "conformance regressed:\n{}",
        regressions.join("\n")
    );
}
