//! Numbers and durations written the way Go and Prometheus write them.
//!
//! Rule templates, `promtool test rules` output and Prometheus's API all print floats with
//! Go's `fmt`/`strconv` rules (`%v` switches to an exponent at 1e21, `%g` at its precision,
//! `1e+06` rather than `1e6`), and durations with Prometheus's `model.Duration` (`1h30m`,
//! `2m59s999ms`). Users compare these strings in their tests, so they are reproduced here
//! exactly rather than approximated with Rust's own formatting.

use std::time::Duration;

/// The decimal digits of `v` (no leading or trailing zeros) and the position of the
/// decimal point relative to them (`dp`): `v = 0.d1d2... * 10^dp`. `prec` rounds to that
/// many significant digits; `None` gives the shortest digits that read back as `v`.
fn digits(v: f64, prec: Option<usize>) -> (Vec<u8>, i32) {
    let v = v.abs();
    if v == 0.0 {
        return (Vec::new(), 0);
    }
    let text = match prec {
        Some(p) => format!("{:.*e}", p.max(1) - 1, v),
        None => format!("{v:e}"),
    };
    let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut ds: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    while ds.last() == Some(&b'0') {
        ds.pop();
    }
    (ds, exp + 1)
}

fn special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v.is_infinite() {
        Some(if v > 0.0 { "+Inf" } else { "-Inf" }.into())
    } else {
        None
    }
}

/// `%e` of Go with `prec` digits after the point; `upper` for `%E`.
fn fmt_e(neg: bool, ds: &[u8], dp: i32, prec: usize, upper: bool) -> String {
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    s.push(ds.first().map_or('0', |&d| d as char));
    if prec > 0 {
        s.push('.');
        for i in 1..=prec {
            s.push(ds.get(i).map_or('0', |&d| d as char));
        }
    }
    let exp = if ds.is_empty() { 0 } else { dp - 1 };
    s.push(if upper { 'E' } else { 'e' });
    s.push(if exp < 0 { '-' } else { '+' });
    let e = exp.unsigned_abs();
    if e < 10 {
        s.push('0');
    }
    s.push_str(&e.to_string());
    s
}

/// `%f` of Go with `prec` digits after the point, from already rounded digits.
fn fmt_f(neg: bool, ds: &[u8], dp: i32, prec: usize) -> String {
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    if dp > 0 {
        for i in 0..dp as usize {
            s.push(ds.get(i).map_or('0', |&d| d as char));
        }
    } else {
        s.push('0');
    }
    if prec > 0 {
        s.push('.');
        for i in 0..prec as i32 {
            let j = dp + i;
            s.push(if j < 0 {
                '0'
            } else {
                ds.get(j as usize).map_or('0', |&d| d as char)
            });
        }
    }
    s
}

/// Go's `strconv.FormatFloat(v, 'g', prec, 64)` (`prec` `None` is `-1`, the shortest);
/// with `upper`, `'G'`. `%v` of a float64 is `go_g(v, None, false)`.
pub(crate) fn go_g(v: f64, prec: Option<usize>, upper: bool) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let neg = v.is_sign_negative();
    let (ds, dp) = digits(v, prec);
    let nd = ds.len().max(1) as i32;
    let dp = if ds.is_empty() { 1 } else { dp };
    let mut p = prec.map_or(nd, |p| p.max(1) as i32);
    let mut eprec = p;
    if eprec > nd && nd >= dp {
        eprec = nd;
    }
    if prec.is_none() {
        eprec = 6;
    }
    let exp = dp - 1;
    if exp < -4 || exp >= eprec {
        if p > nd {
            p = nd;
        }
        return fmt_e(neg, &ds, dp, (p - 1) as usize, upper);
    }
    if p > dp {
        p = nd;
    }
    fmt_f(neg, &ds, dp, (p - dp).max(0) as usize)
}

/// Go's `%v` for a float64 in `fmt`: `%g` with the shortest digits (an exponent from 1e+06
/// and below 1e-04).
pub(crate) fn go_float(v: f64) -> String {
    go_g(v, None, false)
}

/// Go's `strconv.FormatFloat(v, 'E', -1, 64)`, as promtool prints sample values.
pub(crate) fn go_e_shortest(v: f64) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let (ds, dp) = digits(v, None);
    let prec = ds.len().saturating_sub(1);
    fmt_e(v.is_sign_negative(), &ds, dp, prec, true)
}

/// Go's `%.Nf` (or `%f`, six digits).
pub(crate) fn go_f(v: f64, prec: usize) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    format!("{v:.prec$}")
}

/// Go's `%.Ne` (or `%e`, six digits).
pub(crate) fn go_e(v: f64, prec: usize, upper: bool) -> String {
    if let Some(s) = special(v) {
        return s;
    }
    let neg = v.is_sign_negative();
    let (ds, dp) = digits(v, Some(prec + 1));
    fmt_e(neg, &ds, if ds.is_empty() { 1 } else { dp }, prec, upper)
}

/// Parses a Prometheus duration: `[0-9]+` followed by `y w d h m s ms`, units in that
/// order, each at most once (`1h30m`, `2m59s999ms`); a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration string".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    let bad =
        || format!("not a valid duration string: '{text}' (write for example 30s, 5m, 1h30m)");
    let mut rest = s;
    let mut next_unit = 0;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if n == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..u];
        rest = &rest[u..];
        let idx = UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or_else(bad)?;
        if idx < next_unit {
            return Err(bad());
        }
        next_unit = idx + 1;
        total = number
            .checked_mul(UNITS[idx].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("duration out of range: '{text}'"))?;
    }
    Ok(Duration::from_millis(total))
}

/// Prometheus's `model.Duration` text: `0s`, `1m`, `1h30m`, `2m59s999ms`, `1d`, `1w`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, mult, exact) in [
        ("y", 365 * 86_400_000u64, true),
        ("w", 7 * 86_400_000, true),
        ("d", 86_400_000, false),
        ("h", 3_600_000, false),
        ("m", 60_000, false),
        ("s", 1_000, false),
        ("ms", 1, false),
    ] {
        if exact && !ms.is_multiple_of(mult) {
            continue;
        }
        let v = ms / mult;
        if v > 0 {
            out.push_str(&format!("{v}{unit}"));
            ms -= v * mult;
        }
    }
    out
}

/// A label value quoted as Go's `strconv.Quote` does (the form Prometheus prints labels in).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A label set as Prometheus's Go code prints `labels.Labels`: `{a="1", b="2"}`, the
/// metric name as the label `__name__`.
pub(crate) fn go_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let body: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    format!("{{{}}}", body.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_go() {
        assert_eq!(go_float(1.0), "1");
        assert_eq!(go_float(0.5), "0.5");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(-2.5), "-2.5");
        assert_eq!(go_float(f64::INFINITY), "+Inf");
        assert_eq!(go_g(1234.5, Some(4), false), "1234");
        assert_eq!(go_g(12345.0, Some(4), false), "1.234e+04");
        assert_eq!(go_g(1.5, Some(4), false), "1.5");
        assert_eq!(go_g(100.0, Some(4), false), "100");
        assert_eq!(go_g(0.0, Some(4), false), "0");
        assert_eq!(go_g(1e-7, Some(4), false), "1e-07");
        assert_eq!(go_e_shortest(61.0), "6.1E+01");
        assert_eq!(go_e_shortest(1.0), "1E+00");
        assert_eq!(go_e_shortest(0.0), "0E+00");
        assert_eq!(go_e(1234.5678, 2, false), "1.23e+03");
        assert_eq!(go_f(2.0 / 3.0, 2), "0.67");
    }

    #[test]
    fn durations_round_trip_like_prometheus() {
        for (text, ms) in [
            ("0", 0),
            ("1m", 60_000),
            ("2m59s999ms", 179_999),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
        ] {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_millis(ms));
        }
        assert_eq!(
            format_duration(Duration::from_millis(179_999)),
            "2m59s999ms"
        );
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "1w");
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("1m1h").is_err());
        assert!(parse_duration("").is_err());
    }
}
