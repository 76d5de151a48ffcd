//! Silences of alert notifications, as they cross the API: what a client asks for
//! (`POST /v1/silences`), what the server keeps and lists (`GET /v1/silences`), and the
//! request that expires one (`POST /v1/silences/{id}/expire`). The semantics are
//! Alertmanager's; see `docs/alerts.md`.

use serde::{Deserialize, Serialize};
use tandem_spec::Matcher;

/// A new silence. Matchers are sent as their text (`service=~"api|web"`) so the server can
/// say which one is wrong and why. The end is `ends_at_ms`, or `duration_ms` after the
/// start; the start is `starts_at_ms`, or now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SilenceRequest {
    pub matchers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub created_by: String,
    pub comment: String,
}

/// Who expires a silence (for the timeline).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExpireSilenceRequest {
    pub who: String,
}

/// A silence as the server keeps it: alerts whose labels satisfy every matcher are not
/// notified to webhook receivers from `starts_at_ms` until `ends_at_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    /// Milliseconds since the Unix epoch.
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    /// When it was created or last expired.
    pub updated_at_ms: i64,
    pub created_by: String,
    pub comment: String,
}

impl Silence {
    /// Its state at `now_ms`: pending before its start, active until its end, then expired.
    pub fn state(&self, now_ms: i64) -> SilenceState {
        if now_ms >= self.ends_at_ms {
            SilenceState::Expired
        } else if now_ms < self.starts_at_ms {
            SilenceState::Pending
        } else {
            SilenceState::Active
        }
    }

    /// Whether it mutes an alert with `labels` at `now_ms`: active, and every matcher holds.
    pub fn mutes(&self, labels: &std::collections::BTreeMap<String, String>, now_ms: i64) -> bool {
        self.state(now_ms) == SilenceState::Active
            && self.matchers.iter().all(|m| m.matches(labels))
    }

    /// The matchers as Alertmanager shows them: `{alertname="ApiDown", severity!="info"}`.
    pub fn matchers_text(&self) -> String {
        let parts: Vec<String> = self.matchers.iter().map(|m| m.to_string()).collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// Alertmanager's silence states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    Active,
    Pending,
    Expired,
}

impl SilenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SilenceState::Active => "active",
            SilenceState::Pending => "pending",
            SilenceState::Expired => "expired",
        }
    }
}

/// A silence in a listing (and the answer to a create or an expire): its state now and how
/// many firing alerts it mutes now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SilenceStatus {
    #[serde(flatten)]
    pub silence: Silence,
    pub state: SilenceState,
    pub mutes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silence_mutes_only_while_active_and_only_what_all_its_matchers_match() {
        let silence = Silence {
            id: "x".into(),
            matchers: vec![
                "alertname=ApiDown".parse().unwrap(),
                r#"severity!~"info|debug""#.parse().unwrap(),
            ],
            starts_at_ms: 100,
            ends_at_ms: 200,
            updated_at_ms: 50,
            created_by: "Ada".into(),
            comment: "maintenance".into(),
        };
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let page = labels(&[("alertname", "ApiDown"), ("severity", "page")]);
        assert_eq!(silence.state(99), SilenceState::Pending);
        assert!(!silence.mutes(&page, 99));
        assert!(silence.mutes(&page, 100));
        assert!(!silence.mutes(
            &labels(&[("alertname", "ApiDown"), ("severity", "info")]),
            150
        ));
        assert!(!silence.mutes(&labels(&[("alertname", "WebDown")]), 150));
        assert_eq!(silence.state(200), SilenceState::Expired);
        assert!(!silence.mutes(&page, 200));
        assert_eq!(
            silence.matchers_text(),
            r#"{alertname="ApiDown", severity!~"info|debug"}"#
        );
        let status = SilenceStatus {
            silence: silence.clone(),
            state: SilenceState::Active,
            mutes: 1,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["matchers"][1], r#"severity!~"info|debug""#);
        assert_eq!(json["state"], "active");
        assert_eq!(
            serde_json::from_value::<SilenceStatus>(json).unwrap(),
            status
        );
    }
}
