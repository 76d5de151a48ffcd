//! `tandem alerts` and its silences: the pending and firing alerts of the environment's
//! rules (muted ones name their silence, inhibited ones say how many alerts inhibit them),
//! and `silence`, `silences` and `unsilence`, which create, list and expire silences
//! through the server's `/v1/silences` API, as
//! Alertmanager's `amtool silence` does. The server checks every silence (matchers,
//! comment, times) and says all that is wrong at once; here only the command line's
//! durations and times are read.

use super::{Ctx, author};
use crate::cli::{AlertsAction, Output};
use crate::output::{age, green, red, table, timestamp, yellow};
use anyhow::{Context, Result, bail};
use tandem_api::{ExpireSilenceRequest, SilenceRequest, SilenceState, SilenceStatus, now_ms};

pub(crate) async fn run(ctx: &Ctx, format: Output, action: Option<AlertsAction>) -> Result<u8> {
    match action {
        None => alerts(ctx, format).await,
        Some(AlertsAction::Silence {
            matchers,
            duration,
            until,
            start,
            comment,
            author: who,
        }) => {
            let request = SilenceRequest {
                matchers,
                starts_at_ms: start.as_deref().map(|t| time("--start", t)).transpose()?,
                ends_at_ms: until.as_deref().map(|t| time("--until", t)).transpose()?,
                duration_ms: duration.as_deref().map(duration_ms).transpose()?,
                created_by: who.unwrap_or_else(|| author(&ctx.project_dir)),
                comment,
            };
            if request.ends_at_ms.is_none() && request.duration_ms.is_none() {
                bail!(
                    "a silence needs an end\n  hint: add --for 2h, or --until with an RFC 3339 time such as 2026-11-26T18:00:00Z"
                );
            }
            silence(ctx, format, &request).await
        }
        Some(AlertsAction::Silences { all }) => silences(ctx, format, all).await,
        Some(AlertsAction::Unsilence { id, author: who }) => {
            let request = ExpireSilenceRequest {
                who: who.unwrap_or_else(|| author(&ctx.project_dir)),
            };
            unsilence(ctx, format, &id, &request).await
        }
    }
}

/// `--for 2h` in milliseconds.
fn duration_ms(text: &str) -> Result<u64> {
    let d: tandem_spec::units::Dur = text.parse().ok().with_context(|| {
        format!("--for '{text}' is not a duration\n  hint: write a duration such as 30m, 2h or 1d")
    })?;
    Ok(d.0.as_millis() as u64)
}

/// An RFC 3339 time in milliseconds since the epoch.
fn time(flag: &str, text: &str) -> Result<i64> {
    let t = humantime::parse_rfc3339_weak(text).ok().with_context(|| {
        format!(
            "{flag} '{text}' is not a time\n  hint: write an RFC 3339 time in UTC, such as 2026-11-26T18:00:00Z"
        )
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Ok(ms)
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Time left, to the minute from a minute on: "2h", not the "1h 59m 59s" left by the time
/// it prints.
fn left(ms: i64) -> String {
    let secs = u64::try_from((ms + 500) / 1000).unwrap_or(0);
    let secs = if secs >= 60 {
        (secs + 30) / 60 * 60
    } else {
        secs
    };
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// The first characters of an id, enough to name it among a few (`unsilence` takes them).
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

async fn silence(ctx: &Ctx, format: Output, request: &SilenceRequest) -> Result<u8> {
    let created: SilenceStatus = ctx.client()?.post_json("/v1/silences", request).await?;
    if format == Output::Json {
        print_json(&created)?;
        return Ok(0);
    }
    // The id alone on stdout, so `ID=$(tandem alerts silence ...)` works; the rest is for
    // people.
    let s = &created.silence;
    println!("{}", s.id);
    let when = match created.state {
        SilenceState::Pending => format!(
            "from {} until {} UTC",
            timestamp(s.starts_at_ms),
            timestamp(s.ends_at_ms)
        ),
        _ => format!(
            "until {} UTC (for {})",
            timestamp(s.ends_at_ms),
            left(s.ends_at_ms - now_ms())
        ),
    };
    eprintln!(
        "{} notifications of alerts matching {} are muted {when}; {} firing alert{} muted now",
        green("✓"),
        s.matchers_text(),
        created.mutes,
        if created.mutes == 1 { " is" } else { "s are" }
    );
    Ok(0)
}

async fn silences(ctx: &Ctx, format: Output, all: bool) -> Result<u8> {
    let path = if all {
        "/v1/silences?all=true"
    } else {
        "/v1/silences"
    };
    let list: Vec<SilenceStatus> = ctx.client()?.get_json(path).await?;
    if format == Output::Json {
        print_json(&list)?;
        return Ok(0);
    }
    if list.is_empty() {
        if all {
            println!("no silences in {}", ctx.env);
        } else {
            println!(
                "no active or pending silences in {} (`tandem alerts silences --all` shows expired ones)",
                ctx.env
            );
        }
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|status| {
            let s = &status.silence;
            let state = match status.state {
                SilenceState::Active => green("active"),
                SilenceState::Pending => yellow("pending"),
                SilenceState::Expired => "expired".to_string(),
            };
            vec![
                s.id.clone(),
                state,
                s.matchers_text(),
                timestamp(s.starts_at_ms),
                timestamp(s.ends_at_ms),
                s.created_by.clone(),
                status.mutes.to_string(),
                s.comment.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATE", "MATCHERS", "FROM", "UNTIL", "AUTHOR", "MUTES", "COMMENT",
        ],
        &rows,
    );
    Ok(0)
}

async fn unsilence(
    ctx: &Ctx,
    format: Output,
    id: &str,
    request: &ExpireSilenceRequest,
) -> Result<u8> {
    let path = format!("/v1/silences/{}/expire", encode_segment(id));
    let expired: SilenceStatus = ctx.client()?.post_json(&path, request).await?;
    if format == Output::Json {
        print_json(&expired)?;
        return Ok(0);
    }
    println!(
        "{} silence {} of alerts matching {} expired; alerts it muted are notified again",
        green("✓"),
        expired.silence.id,
        expired.silence.matchers_text()
    );
    Ok(0)
}

/// `id` as one path segment (an id is hex and dashes; anything else is escaped so a
/// mistyped one reaches the server and is reported as unknown).
fn encode_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn alerts(ctx: &Ctx, format: Output) -> Result<u8> {
    let answer: serde_json::Value = ctx.client()?.get_json_any("/api/v1/alerts").await?;
    let list = answer["data"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if format == Output::Json {
        print_json(&list)?;
        return Ok(0);
    }
    if list.is_empty() {
        println!("no pending or firing alerts in {}", ctx.env);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let name = a["labels"]["alertname"].as_str().unwrap_or("").to_string();
            let state = state_text(a);
            let since = a["activeAt"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| age(now_ms() - d.as_millis() as i64))
                .unwrap_or_else(|| "-".into());
            let labels: Vec<String> = a["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| *k != "alertname")
                .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or("")))
                .collect();
            let summary = a["annotations"]["summary"]
                .as_str()
                .unwrap_or("")
                .to_string();
            vec![
                name,
                state,
                since,
                a["value"].as_str().unwrap_or("").to_string(),
                labels.join(", "),
                summary,
            ]
        })
        .collect();
    table(
        &["ALERT", "STATE", "SINCE", "VALUE", "LABELS", "SUMMARY"],
        &rows,
    );
    Ok(0)
}

/// The STATE column: the alert's state, and what mutes it (silences by the start of their
/// id; inhibiting alerts by their number, since the API names them by fingerprint).
fn state_text(a: &serde_json::Value) -> String {
    let muted_by: Vec<&str> = a["silencedBy"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| id.as_str())
        .map(short)
        .collect();
    let inhibitors = a["inhibitedBy"].as_array().map_or(0, Vec::len);
    let mut state = match (a["state"].as_str().unwrap_or(""), muted_by.is_empty()) {
        ("firing", true) if inhibitors == 0 => red("firing"),
        (other, true) if inhibitors == 0 => yellow(other),
        (other, true) => other.to_string(),
        (other, false) => format!("{other}, muted by {}", muted_by.join(", ")),
    };
    if inhibitors > 0 {
        state.push_str(&format!(
            ", inhibited by {inhibitors} alert{}",
            if inhibitors == 1 { "" } else { "s" }
        ));
    }
    state
}

#[cfg(test)]
mod tests {
    use super::state_text;
    use serde_json::json;

    #[test]
    fn the_state_says_what_mutes_an_alert() {
        let id = "59dd8b13-cd09-4a29-83a0-18ee2660dd92";
        assert_eq!(
            state_text(&json!({"state": "firing", "inhibitedBy": ["3f6b1d1f0e1c2a4b"]})),
            "firing, inhibited by 1 alert"
        );
        assert_eq!(
            state_text(&json!({"state": "firing", "silencedBy": [id], "inhibitedBy": ["a", "b"]})),
            "firing, muted by 59dd8b13, inhibited by 2 alerts"
        );
        assert!(!state_text(&json!({"state": "firing"})).contains("inhibited"));
    }
}
