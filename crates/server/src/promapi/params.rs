//! Parameters of the Prometheus HTTP API as Prometheus reads them: times as RFC 3339 or
//! Unix seconds with decimals, durations as Prometheus durations (`5m`, `1h30m`) or plain
//! seconds, and `match[]` repeated parameters from the query string or a form body.

/// A parameter that does not parse; answered as `bad_data`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadParam(pub(crate) String);

/// `1435781451.781` or `2015-07-01T20:10:51.781Z` to milliseconds since the epoch.
pub(crate) fn parse_time(name: &str, text: &str) -> Result<i64, BadParam> {
    if let Ok(secs) = text.parse::<f64>()
        && secs.is_finite()
    {
        return Ok((secs * 1000.0).round() as i64);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        let ms = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        };
        return Ok(ms);
    }
    Err(BadParam(format!(
        "invalid parameter \"{name}\": cannot parse \"{text}\" to a valid timestamp"
    )))
}

/// `15s`, `1m30s`, `0.5` (seconds) to milliseconds.
pub(crate) fn parse_duration(name: &str, text: &str) -> Result<i64, BadParam> {
    let bad = || {
        BadParam(format!(
            "invalid parameter \"{name}\": cannot parse \"{text}\" to a valid duration"
        ))
    };
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() {
            return Ok((secs * 1000.0).round() as i64);
        }
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms_per = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total
            .checked_add(n.checked_mul(ms_per).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    Ok(total)
}

/// `a=1&b=x%20y` to decoded pairs, in order.
pub(crate) fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A sample value as Prometheus writes it in JSON: the shortest decimal that reads back,
/// `NaN`, `+Inf`, `-Inf`.
pub(crate) fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's Display is the shortest round-tripping form, like Go's 'f', -1 for
        // ordinary magnitudes; Go switches to exponent form for very large/small numbers.
        let abs = v.abs();
        if abs != 0.0 && !(1e-4..1e21).contains(&abs) {
            let s = format!("{v:e}");
            // Go writes 1e+21 where Rust writes 1e21.
            match s.split_once('e') {
                Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
                _ => s,
            }
        } else {
            format!("{v}")
        }
    }
}

/// [`format_value`] into a response body, without allocating for ordinary values.
pub(crate) fn write_value(out: &mut Vec<u8>, v: f64) {
    use std::io::Write;
    let abs = v.abs();
    if v.is_finite() && (abs == 0.0 || (1e-4..1e21).contains(&abs)) {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{v}");
    } else {
        out.extend_from_slice(format_value(v).as_bytes());
    }
}

/// Milliseconds as the float seconds Prometheus puts in JSON, written into a response body.
pub(crate) fn write_time(out: &mut Vec<u8>, ms: i64) {
    use std::io::Write;
    // Whole seconds print as integers (1435781451), others with their milliseconds
    // (1435781451.781), as Prometheus writes them; serde_json writes the float as it would
    // in a `serde_json::Value`. Writing into a Vec cannot fail.
    if ms % 1000 == 0 {
        let _ = write!(out, "{}", ms / 1000);
    } else {
        let _ = serde_json::to_writer(out, &(ms as f64 / 1000.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_durations_and_values_read_and_print_like_prometheus() {
        assert_eq!(
            parse_time("t", "1435781451.781").unwrap(),
            1_435_781_451_781
        );
        assert_eq!(
            parse_time("t", "2015-07-01T20:10:51.781Z").unwrap(),
            1_435_781_451_781
        );
        assert!(
            parse_time("t", "yesterday")
                .unwrap_err()
                .0
                .contains("\"t\"")
        );
        assert_eq!(parse_duration("step", "15s").unwrap(), 15_000);
        assert_eq!(parse_duration("step", "1m30s").unwrap(), 90_000);
        assert_eq!(parse_duration("step", "0.5").unwrap(), 500);
        assert!(parse_duration("step", "5 minutes").is_err());
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e21), "1e+21");
        let written = |t: i64, v: f64| {
            let mut out = Vec::new();
            write_time(&mut out, t);
            out.push(b' ');
            write_value(&mut out, v);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(written(1_435_781_451_781, 0.1), "1435781451.781 0.1");
        assert_eq!(written(-1_500, 1e21), "-1.5 1e+21");
        assert_eq!(written(3_000, f64::NAN), "3 NaN");
        assert_eq!(written(0, -0.0), "0 -0");
        let pairs = form_pairs("match%5B%5D=up&match[]=a%7Bb%3D%22c%22%7D&x=1+2");
        assert_eq!(pairs[0], ("match[]".to_string(), "up".to_string()));
        assert_eq!(pairs[1], ("match[]".to_string(), "a{b=\"c\"}".to_string()));
        assert_eq!(pairs[2], ("x".to_string(), "1 2".to_string()));
    }
}
