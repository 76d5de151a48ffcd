//! Terminal output: colors only on a terminal (and never with `NO_COLOR`), tables with
//! aligned columns, and short human forms of times and sizes.

use std::io::IsTerminal;

pub(crate) fn color_enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub(crate) fn paint(code: &str, text: &str) -> String {
    if color_enabled() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub(crate) fn red(text: &str) -> String {
    paint("31", text)
}
pub(crate) fn green(text: &str) -> String {
    paint("32", text)
}
pub(crate) fn yellow(text: &str) -> String {
    paint("33", text)
}
pub(crate) fn bold(text: &str) -> String {
    paint("1", text)
}
pub(crate) fn dim(text: &str) -> String {
    paint("2", text)
}

/// A color for a name, stable across runs, for log prefixes.
pub(crate) fn name_color(name: &str) -> &'static str {
    const COLORS: [&str; 6] = ["36", "33", "35", "32", "34", "91"];
    let h = name.bytes().fold(0usize, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(b as usize)
    });
    COLORS[h % COLORS.len()]
}

/// Prints rows with columns padded to their widest cell (ANSI codes not counted).
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(visible_len(cell));
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(widths[i] - visible_len(cell) + 2));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| dim(h)).collect());
    for row in rows {
        line(row.clone());
    }
}

fn visible_len(text: &str) -> usize {
    let mut n = 0;
    let mut in_escape = false;
    for c in text.chars() {
        if in_escape {
            if c == 'm' {
                in_escape = false;
            }
        } else if c == '\x1b' {
            in_escape = true;
        } else {
            n += 1;
        }
    }
    n
}

/// "3s", "5m", "2h", "4d".
pub(crate) fn age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// Local-agnostic timestamp: UTC, to the second.
pub(crate) fn timestamp(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .replace('Z', "")
}

pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}
