//! The series notation of Prometheus's test files: `name{label="value", ...}` for a series
//! and the expanding values notation (`0+1x120`, `1x5`, `_`, `_x3`, `stale`) for its
//! samples, as `promtool test rules` reads `input_series` and `exp_samples`.

use tandem_tsdb::model::{Labels, METRIC_NAME, stale_nan};

/// Parses `name{a="1", b='2'}`, `name` or `{a="1"}` into labels.
pub(crate) fn parse_series(text: &str) -> Result<Labels, String> {
    let s = text.trim();
    let bad = |why: &str| format!("cannot parse series '{text}': {why}");
    let name_len = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    let name = &s[..name_len];
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad("a metric name cannot start with a digit"));
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    if !name.is_empty() {
        pairs.push((METRIC_NAME.to_string(), name.to_string()));
    }
    let rest = s[name_len..].trim_start();
    if rest.is_empty() {
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        return Ok(Labels::new(pairs));
    }
    let Some(body) = rest.strip_prefix('{') else {
        return Err(bad("expected '{' after the metric name"));
    };
    let mut chars = body.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        match chars.peek() {
            Some((_, '}')) => {
                let (i, _) = chars.next().unwrap_or((0, '}'));
                if !body[i + 1..].trim().is_empty() {
                    return Err(bad("unexpected text after '}'"));
                }
                break;
            }
            None => return Err(bad("missing '}'")),
            _ => {}
        }
        let mut label = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| c.is_ascii_alphanumeric() || *c == '_') {
            label.push(c);
        }
        if label.is_empty() {
            return Err(bad("expected a label name"));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(bad(&format!("expected '=' after label '{label}'")));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let quote = match chars.next() {
            Some((_, q @ ('"' | '\'' | '`'))) => q,
            _ => return Err(bad(&format!("the value of label '{label}' must be quoted"))),
        };
        let mut value = String::new();
        loop {
            match chars.next() {
                None => return Err(bad("unterminated quoted string")),
                Some((_, c)) if c == quote => break,
                Some((_, '\\')) if quote != '`' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, c)) => value.push(c),
                    None => return Err(bad("unterminated quoted string")),
                },
                Some((_, c)) => value.push(c),
            }
        }
        pairs.push((label, value));
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        match chars.peek() {
            Some((_, ',')) => {
                chars.next();
            }
            Some((_, '}')) => {}
            _ => return Err(bad("expected ',' or '}' after a label")),
        }
    }
    Ok(Labels::new(pairs))
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "Inf" | "+Inf" | "inf" | "+inf" => return Some(f64::INFINITY),
        "-Inf" | "-inf" => return Some(f64::NEG_INFINITY),
        "NaN" | "nan" => return Some(f64::NAN),
        "stale" => return Some(stale_nan()),
        _ => {}
    }
    // Rust would also read "infinity" and "nan" spelled otherwise; Go's test notation
    // does not.
    if s.chars()
        .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
    {
        return None;
    }
    s.parse().ok()
}

/// Expands a values string into one entry per interval: `None` for `_` (no sample).
pub(crate) fn parse_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for item in text.split_whitespace() {
        let bad = || {
            format!(
                "cannot parse '{item}' in values '{text}' (write for example '0+1x10', '1x5', '_', 'stale')"
            )
        };
        let (head, times) = match item.rfind('x') {
            Some(i)
                if !item[i + 1..].is_empty()
                    && item[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                let n: usize = item[i + 1..].parse().map_err(|_| bad())?;
                (&item[..i], Some(n))
            }
            _ => (item, None),
        };
        if head == "_" {
            out.extend(std::iter::repeat_n(None, times.unwrap_or(1)));
            continue;
        }
        // `a+b` or `a-b`: the sign after the first character that is not an exponent's.
        let split = head
            .char_indices()
            .skip(1)
            .find(|&(i, c)| {
                (c == '+' || c == '-') && !matches!(head.as_bytes()[i - 1], b'e' | b'E')
            })
            .map(|(i, _)| i);
        match (split, times) {
            (Some(i), Some(n)) => {
                let start = parse_number(&head[..i]).ok_or_else(bad)?;
                let step = parse_number(&head[i..]).ok_or_else(bad)?;
                let mut v = start;
                out.push(Some(v));
                for _ in 0..n {
                    v += step;
                    out.push(Some(v));
                }
            }
            (Some(_), None) => return Err(bad()),
            (None, n) => {
                let v = parse_number(head).ok_or_else(bad)?;
                out.extend(std::iter::repeat_n(Some(v), n.map_or(1, |n| n + 1)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_tsdb::model::is_stale_nan;

    #[test]
    fn series_notation() {
        let l = parse_series(r#"up{job="prometheus", instance='localhost:9090',}"#).unwrap();
        assert_eq!(
            l.to_string(),
            r#"up{instance="localhost:9090", job="prometheus"}"#
        );
        assert_eq!(parse_series("test").unwrap().to_string(), "test{}");
        assert_eq!(
            parse_series(r#"{job="t"}"#).unwrap().to_string(),
            r#"{job="t"}"#
        );
        assert_eq!(
            parse_series(r#"a:b{x="q\"uote"}"#).unwrap().get("x"),
            Some("q\"uote")
        );
        assert!(parse_series(r#"up{job=prom}"#).is_err());
        assert!(parse_series(r#"up{job="a""#).is_err());
        assert!(parse_series("").is_err());
    }

    #[test]
    fn expanding_values() {
        let v = |t: &str| parse_values(t).unwrap();
        assert_eq!(v("0+1x3"), vec![Some(0.0), Some(1.0), Some(2.0), Some(3.0)]);
        assert_eq!(v("10-2x2"), vec![Some(10.0), Some(8.0), Some(6.0)]);
        assert_eq!(v("-1+1x1"), vec![Some(-1.0), Some(0.0)]);
        assert_eq!(
            v("1x2 _ _x2 4"),
            vec![Some(1.0), Some(1.0), Some(1.0), None, None, None, Some(4.0)]
        );
        // In this notation `0x8` is 0 nine times, not hexadecimal.
        assert_eq!(v("0x2"), vec![Some(0.0); 3]);
        assert_eq!(v("1e3 Inf"), vec![Some(1000.0), Some(f64::INFINITY)]);
        let s = v("0 stale");
        assert!(is_stale_nan(s[1].unwrap()));
        assert!(parse_values("1+").is_err());
        assert!(parse_values("abc").is_err());
        assert!(parse_values("1+1").is_err());
    }
}
