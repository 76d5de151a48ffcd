//! The system file as a tree of spanned values, and the overlay merge.
//!
//! The TOML parser's own tree borrows the text and is awkward to merge, so the file is
//! copied once into [`Node`]s that own their values and keep the byte span of every key and
//! value. Environment overlays are merged on this tree, not on typed structs, so each value
//! keeps the position it was written at: an error in a value that came from
//! `[env.prod.service.api]` points there, not at the base.

use std::collections::BTreeMap;
use std::ops::Range;
use toml::de::{DeTable, DeValue};

pub(crate) type Span = Range<usize>;

/// One value and where it is written.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) span: Span,
    pub(crate) value: Value,
}

#[derive(Clone, Debug)]
pub(crate) enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Table),
}

/// A table's entries by key.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table(pub(crate) BTreeMap<String, Entry>);

/// A key (with its own span) and its value.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) key_span: Span,
    pub(crate) node: Node,
}

/// A TOML syntax problem: where, and the parser's message.
#[derive(Clone, Debug)]
pub(crate) struct SyntaxError {
    pub(crate) span: Span,
    pub(crate) message: String,
}

impl Value {
    /// The type as a phrase for messages: "a string", "an integer", ...
    pub(crate) fn type_phrase(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

impl Node {
    pub(crate) fn as_table(&self) -> Option<&Table> {
        match &self.value {
            Value::Table(table) => Some(table),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(text) => Some(text),
            _ => None,
        }
    }
}

impl Table {
    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.0.get(key)
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.0.values()
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The table under `key`, if that key holds a table.
    pub(crate) fn table(&self, key: &str) -> Option<&Table> {
        self.get(key).and_then(|entry| entry.node.as_table())
    }
}

/// Parses TOML text into a tree, or every syntax error the parser could find.
pub(crate) fn parse(text: &str) -> Result<Node, Vec<SyntaxError>> {
    let (document, errors) = DeTable::parse_recoverable(text);
    let mut syntax_errors: Vec<SyntaxError> = errors
        .iter()
        .map(|error| SyntaxError {
            span: error.span().unwrap_or(0..0),
            message: error.message().to_string(),
        })
        .collect();
    let span = document.span();
    let root = Node {
        span,
        value: Value::Table(convert_table(document.get_ref(), &mut syntax_errors)),
    };
    if syntax_errors.is_empty() {
        Ok(root)
    } else {
        Err(syntax_errors)
    }
}

fn convert_table(table: &DeTable<'_>, errors: &mut Vec<SyntaxError>) -> Table {
    let mut entries = BTreeMap::new();
    for (key, value) in table.iter() {
        let key_text = key.get_ref().to_string();
        let entry = Entry {
            key: key_text.clone(),
            key_span: key.span(),
            node: convert_value(value.get_ref(), value.span(), errors),
        };
        entries.insert(key_text, entry);
    }
    Table(entries)
}

fn convert_value(value: &DeValue<'_>, span: Span, errors: &mut Vec<SyntaxError>) -> Node {
    let value = match value {
        DeValue::String(text) => Value::String(text.to_string()),
        DeValue::Integer(integer) => {
            match i64::from_str_radix(&integer.as_str().replace('_', ""), integer.radix()) {
                Ok(number) => Value::Integer(number),
                Err(_) => {
                    errors.push(SyntaxError {
                        span: span.clone(),
                        message: "integer does not fit in 64 bits".into(),
                    });
                    Value::Integer(0)
                }
            }
        }
        DeValue::Float(float) => Value::Float(float.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(flag) => Value::Boolean(*flag),
        DeValue::Datetime(_) => Value::Datetime,
        DeValue::Array(array) => Value::Array(
            array
                .iter()
                .map(|item| convert_value(item.get_ref(), item.span(), errors))
                .collect(),
        ),
        DeValue::Table(table) => Value::Table(convert_table(table, errors)),
    };
    Node { span, value }
}

/// Merges `overlay` onto `base`: tables merge key by key, anything else is replaced.
pub(crate) fn merge(base: &Table, overlay: &Table) -> Table {
    let mut merged = base.clone();
    for (key, entry) in &overlay.0 {
        let combined = match (merged.0.get(key), &entry.node.value) {
            (Some(existing), Value::Table(overlay_table)) => match &existing.node.value {
                Value::Table(base_table) => Entry {
                    key: key.clone(),
                    key_span: existing.key_span.clone(),
                    node: Node {
                        span: existing.node.span.clone(),
                        value: Value::Table(merge(base_table, overlay_table)),
                    },
                },
                _ => entry.clone(),
            },
            _ => entry.clone(),
        };
        merged.0.insert(key.clone(), combined);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_spans_of_keys_and_values() {
        let text = "[service.api]\nport = 80\n";
        let root = parse(text).expect("valid");
        let api = root
            .as_table()
            .and_then(|t| t.table("service"))
            .and_then(|t| t.get("api"))
            .expect("api");
        assert_eq!(&text[api.key_span.clone()], "api");
        let port = api
            .node
            .as_table()
            .and_then(|t| t.get("port"))
            .expect("port");
        assert_eq!(&text[port.node.span.clone()], "80");
    }

    #[test]
    fn reports_several_syntax_errors() {
        let errors = parse("a = = 1\nb = \"x\n").expect_err("invalid");
        assert!(errors.len() >= 2, "{errors:?}");
    }

    #[test]
    fn merge_replaces_scalars_and_merges_tables() {
        let base = parse("[a]\nx = 1\n[a.t]\np = 1\nq = 2\n").expect("valid");
        let overlay = parse("[a]\nx = 2\n[a.t]\nq = 3\n").expect("valid");
        let merged = merge(
            base.as_table().expect("table"),
            overlay.as_table().expect("table"),
        );
        let a = merged.table("a").expect("a");
        assert!(matches!(
            a.get("x").map(|e| &e.node.value),
            Some(Value::Integer(2))
        ));
        let t = a.table("t").expect("t");
        assert!(matches!(
            t.get("p").map(|e| &e.node.value),
            Some(Value::Integer(1))
        ));
        assert!(matches!(
            t.get("q").map(|e| &e.node.value),
            Some(Value::Integer(3))
        ));
    }
}
