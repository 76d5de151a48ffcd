//! Reading a service's `proxy` table: the limits tandem's proxy holds that service's traffic
//! to (timeouts and request sizes), on its public port and every edge listener to it.
//!
//! Each key is optional and keeps the proxy's default when left out, so an overlay that sets
//! one key merges onto the base's table like `limits` does. A value of zero is refused: no
//! limit of zero makes sense, and "no limit" is written by leaving the key out (for the body
//! size) or by a generous value (for the timeouts). Keys that only mean something per request
//! are refused on a `protocol = "tcp"` service, which carries bytes, not requests; that check
//! needs the merged service (an overlay may change the protocol), so it is a build-phase one.

use crate::check::{Field, Report};
use crate::model::{Protocol, ProxySettings};
use crate::node::{Entry, Value};
use crate::units::{ByteSize, Dur};

const PROXY_KEYS: &[&str] = &[
    "idle_timeout",
    "max_request_header",
    "max_request_body",
    "connect_timeout",
    "response_timeout",
];

/// The keys that apply to requests, so not to a TCP service.
const HTTP_ONLY_KEYS: &[&str] = &[
    "idle_timeout",
    "max_request_header",
    "max_request_body",
    "response_timeout",
];

/// The largest request head limit accepted: the proxy may buffer twice the limit while it
/// reads a head, and heads this large are already pathological.
const MAX_REQUEST_HEADER: u64 = 1 << 20;

/// `proxy = { response_timeout = "5m", max_request_body = "50MiB", ... }` of service `name`,
/// whose (merged) protocol is `protocol`.
pub(crate) fn read_proxy(
    report: &mut Report<'_>,
    name: &str,
    entry: &Entry,
    service_section: &str,
    protocol: Protocol,
) -> ProxySettings {
    let section = format!("{}.proxy]", service_section.trim_end_matches(']'));
    let mut settings = ProxySettings::default();
    let example = "proxy = { response_timeout = \"5m\", max_request_body = \"50MiB\" }";
    let Some(table) = report.table(entry, &Field::new(service_section, example)) else {
        return settings;
    };
    report.unknown_keys(table, &section, PROXY_KEYS);

    settings.idle_timeout = duration(
        report,
        table.get("idle_timeout"),
        &section,
        "idle_timeout = \"30s\"",
    );
    settings.connect_timeout = duration(
        report,
        table.get("connect_timeout"),
        &section,
        "connect_timeout = \"1s\"",
    );
    settings.response_timeout = duration(
        report,
        table.get("response_timeout"),
        &section,
        "response_timeout = \"5m\"",
    );
    settings.max_request_body = size(
        report,
        table.get("max_request_body"),
        &section,
        "max_request_body = \"50MiB\"",
        "remove it for no limit on request bodies",
    );
    settings.max_request_header = size(
        report,
        table.get("max_request_header"),
        &section,
        "max_request_header = \"128KiB\"",
        "give the largest request head (request line and headers) to accept, like \"128KiB\"",
    );
    if let (Some(limit), Some(written)) =
        (settings.max_request_header, table.get("max_request_header"))
        && limit.0 > MAX_REQUEST_HEADER
    {
        report.value_error(
            written.node.span.clone(),
            format!("'max_request_header' in {section} may be at most 1MiB, found '{limit}'"),
            "request heads are kept in memory while they are read; send large data in the body instead",
        );
        settings.max_request_header = None;
    }

    if protocol == Protocol::Tcp {
        for key in HTTP_ONLY_KEYS {
            if let Some(written) = table.get(key) {
                report.context_error(
                    written.key_span.clone(),
                    format!("service '{name}' has '{key}' in 'proxy', but its protocol is tcp"),
                    "a tcp service's connections carry bytes, not requests, so request limits cannot apply; remove it, or set protocol = \"http\" if the service speaks HTTP",
                );
            }
        }
    }
    settings
}

/// A positive duration, or `None` (reported) when missing, unreadable or zero.
fn duration(
    report: &mut Report<'_>,
    entry: Option<&Entry>,
    section: &str,
    example: &str,
) -> Option<Dur> {
    let entry = entry?;
    let d = report.parsed::<Dur>(entry, &Field::new(section, example), "duration")?;
    if d.0.is_zero() {
        report.value_error(
            entry.node.span.clone(),
            format!("'{}' in {section} must be longer than 0s", entry.key),
            format!("use a positive duration, like {example}, or remove it for the default"),
        );
        return None;
    }
    Some(d)
}

/// A positive size (a string with a unit, or a whole number of bytes), or `None` (reported)
/// when missing, unreadable or zero.
fn size(
    report: &mut Report<'_>,
    entry: Option<&Entry>,
    section: &str,
    example: &str,
    zero_hint: &str,
) -> Option<ByteSize> {
    let entry = entry?;
    let size = match entry.node.value {
        Value::Integer(bytes) if bytes >= 0 => ByteSize(bytes.unsigned_abs()),
        _ => report.parsed::<ByteSize>(entry, &Field::new(section, example), "size")?,
    };
    if size.0 == 0 {
        report.value_error(
            entry.node.span.clone(),
            format!("'{}' in {section} must be more than 0 bytes", entry.key),
            zero_hint,
        );
        return None;
    }
    Some(size)
}
