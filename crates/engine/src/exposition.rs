//! The Prometheus exposition formats an app's `metrics` path answers with: the text format
//! 0.0.4 and OpenMetrics 1.0 text. Parsing turns a scrape body into samples and metadata
//! (type, help, unit per metric family); a malformed line is an error naming its line and
//! what is wrong, so a bad scrape marks the target down with a reason a person can act on.
//!
//! Differences between the two formats handled here: OpenMetrics timestamps are seconds
//! (floats), the text format's are milliseconds (integers); OpenMetrics ends with `# EOF`
//! and may carry exemplars after `#` on a sample line (ignored), and `UNIT` lines.

use std::collections::BTreeMap;

/// Which format a body is in (from the response's Content-Type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4` (and anything unknown).
    Text,
    /// `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The format a Content-Type header names.
    pub fn from_content_type(content_type: &str) -> Format {
        if content_type.to_ascii_lowercase().contains("openmetrics") {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// One sample of a scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct ScrapedSample {
    pub name: String,
    /// In the order written (the caller sorts when it builds a series).
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the app gave one.
    pub timestamp_ms: Option<i64>,
}

/// What `# TYPE`, `# HELP` and `# UNIT` said of a metric family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub kind: Option<String>,
    pub help: Option<String>,
    pub unit: Option<String>,
}

/// A whole scrape body, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<ScrapedSample>,
    /// By family name.
    pub metadata: BTreeMap<String, Metadata>,
}

/// What is wrong with a scrape body, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses a scrape body.
pub fn parse(body: &str, format: Format) -> Result<Scrape, ParseError> {
    let mut scrape = Scrape::default();
    let mut saw_eof = false;
    for (index, raw) in body.lines().enumerate() {
        let line_no = index + 1;
        let err = |message: String| ParseError {
            line: line_no,
            message,
        };
        if saw_eof {
            if raw.trim().is_empty() {
                continue;
            }
            return Err(err("content after '# EOF'".into()));
        }
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start();
            if comment == "EOF" {
                saw_eof = true;
                continue;
            }
            let mut parts = comment.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            let (Some(name), rest) = (parts.next(), parts.next()) else {
                continue;
            };
            if !matches!(keyword, "TYPE" | "HELP" | "UNIT") {
                continue;
            }
            let entry = scrape.metadata.entry(name.to_string()).or_default();
            match keyword {
                "TYPE" => {
                    let kind = rest.unwrap_or("").trim().to_string();
                    const KINDS: &[&str] = &[
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                        "gaugehistogram",
                        "stateset",
                        "info",
                    ];
                    if !KINDS.contains(&kind.as_str()) {
                        return Err(err(format!("unknown metric type '{kind}' for '{name}'")));
                    }
                    entry.kind = Some(kind);
                }
                "HELP" => entry.help = Some(unescape_help(rest.unwrap_or(""))),
                "UNIT" => entry.unit = Some(rest.unwrap_or("").trim().to_string()),
                _ => {}
            }
            continue;
        }
        scrape
            .samples
            .push(parse_sample(line, format).map_err(err)?);
    }
    if format == Format::OpenMetrics && !saw_eof {
        return Err(ParseError {
            line: body.lines().count().max(1),
            message: "OpenMetrics body does not end with '# EOF'".into(),
        });
    }
    Ok(scrape)
}

fn unescape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn parse_sample(line: &str, format: Format) -> Result<ScrapedSample, String> {
    let bytes: Vec<char> = line.chars().collect();
    let mut i = 0;
    if !bytes.first().copied().is_some_and(is_name_start) {
        return Err(format!(
            "expected a metric name, found {:?}",
            truncate(line)
        ));
    }
    while i < bytes.len() && is_name_char(bytes[i]) {
        i += 1;
    }
    let name: String = bytes[..i].iter().collect();
    let mut labels = Vec::new();
    if i < bytes.len() && bytes[i] == '{' {
        i += 1;
        loop {
            while i < bytes.len() && bytes[i] == ' ' {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == '}' {
                i += 1;
                break;
            }
            let start = i;
            if !(i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == '_')) {
                return Err(format!("bad label name in {:?}", truncate(line)));
            }
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            let label: String = bytes[start..i].iter().collect();
            while i < bytes.len() && bytes[i] == ' ' {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] != '=' {
                return Err(format!("expected '=' after label '{label}'"));
            }
            i += 1;
            while i < bytes.len() && bytes[i] == ' ' {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] != '"' {
                return Err(format!("expected a quoted value for label '{label}'"));
            }
            i += 1;
            let mut value = String::new();
            loop {
                match bytes.get(i) {
                    None => return Err(format!("unterminated value of label '{label}'")),
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        match bytes.get(i + 1) {
                            Some('n') => value.push('\n'),
                            Some('"') => value.push('"'),
                            Some('\\') => value.push('\\'),
                            Some(other) => {
                                value.push('\\');
                                value.push(*other);
                            }
                            None => return Err(format!("unterminated value of label '{label}'")),
                        }
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
            if labels.iter().any(|(k, _): &(String, String)| *k == label) {
                return Err(format!("label '{label}' appears twice"));
            }
            labels.push((label, value));
            while i < bytes.len() && bytes[i] == ' ' {
                i += 1;
            }
            match bytes.get(i) {
                Some(',') => i += 1,
                Some('}') => {
                    i += 1;
                    break;
                }
                _ => return Err(format!("expected ',' or '}}' in the labels of '{name}'")),
            }
        }
    }
    let rest: String = bytes[i..].iter().collect();
    // OpenMetrics exemplars follow " # ".
    let rest = match rest.find(" # ") {
        Some(pos) if format == Format::OpenMetrics => rest[..pos].to_string(),
        _ => rest,
    };
    let mut fields = rest.split_whitespace();
    let value_text = fields
        .next()
        .ok_or_else(|| format!("'{name}' has no value"))?;
    let value = parse_value(value_text)
        .ok_or_else(|| format!("'{value_text}' is not a number (value of '{name}')"))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(match format {
            Format::Text => t
                .parse::<i64>()
                .map_err(|_| format!("'{t}' is not a timestamp in milliseconds"))?,
            Format::OpenMetrics => {
                let secs: f64 = t
                    .parse()
                    .map_err(|_| format!("'{t}' is not a timestamp in seconds"))?;
                (secs * 1000.0).round() as i64
            }
        }),
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected '{extra}' after the value of '{name}'"));
    }
    Ok(ScrapedSample {
        name,
        labels,
        value,
        timestamp_ms,
    })
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => text.parse::<f64>().ok(),
    }
}

fn truncate(line: &str) -> String {
    line.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_with_metadata_escapes_and_timestamps() {
        let body = "# HELP http_requests_total The total.\\nSecond line\n# TYPE http_requests_total counter\nhttp_requests_total{method=\"post\",code=\"200\",} 1027 1395066363000\nhttp_requests_total{path=\"a\\\"b\\\\c\\nd\"} 3\n\nmetric_without_labels 12.47\nnan_value NaN\nneg_inf -Inf\n";
        let s = parse(body, Format::Text).unwrap();
        assert_eq!(s.samples.len(), 5);
        assert_eq!(
            s.samples[0].labels,
            vec![
                ("method".into(), "post".into()),
                ("code".into(), "200".into())
            ]
        );
        assert_eq!(s.samples[0].timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(s.samples[1].labels[0].1, "a\"b\\c\nd");
        assert!(s.samples[3].value.is_nan());
        assert_eq!(s.samples[4].value, f64::NEG_INFINITY);
        let m = &s.metadata["http_requests_total"];
        assert_eq!(m.kind.as_deref(), Some("counter"));
        assert_eq!(m.help.as_deref(), Some("The total.\nSecond line"));
    }

    #[test]
    fn openmetrics_needs_eof_takes_seconds_and_skips_exemplars() {
        let body = "# TYPE foo counter\n# UNIT foo seconds\nfoo_total{a=\"1\"} 17 1520879607.789 # {trace_id=\"x\"} 1 1520879607.7\n# EOF\n";
        let s = parse(body, Format::OpenMetrics).unwrap();
        assert_eq!(s.samples[0].timestamp_ms, Some(1_520_879_607_789));
        assert_eq!(s.metadata["foo"].unit.as_deref(), Some("seconds"));
        let err = parse("foo 1\n", Format::OpenMetrics).unwrap_err();
        assert!(err.message.contains("EOF"), "{err}");
        let err = parse("# EOF\nfoo 1\n", Format::OpenMetrics).unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn malformed_lines_say_where_and_what() {
        for (body, line, needle) in [
            ("ok 1\n{a=\"b\"} 1\n", 2, "metric name"),
            ("x{a=b} 1\n", 1, "quoted value"),
            ("x{a=\"b} 1\n", 1, "unterminated"),
            ("x{a=\"1\",a=\"2\"} 1\n", 1, "twice"),
            ("x one\n", 1, "not a number"),
            ("x 1 2 3\n", 1, "unexpected"),
            ("# TYPE x bogus\n", 1, "unknown metric type"),
            ("x 1 12.5\n", 1, "milliseconds"),
        ] {
            let err = parse(body, Format::Text).unwrap_err();
            assert_eq!(err.line, line, "{body:?}: {err}");
            assert!(err.message.contains(needle), "{body:?}: {err}");
        }
    }
}
