//! What is sent: the webhook JSON (Alertmanager's webhook shape, version 4, so receivers
//! written for Alertmanager read it unchanged), its Slack-compatible form (`{"text": ...}`),
//! and the body of Alertmanager's `POST /api/v2/alerts`. The shapes are documented in
//! `docs/alerts.md`.

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub(crate) type Labels = BTreeMap<String, String>;

/// Alertmanager's "not ended" time in webhook payloads (Go's zero time).
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// One alert as a notifier sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Observed {
    pub(crate) labels: Labels,
    pub(crate) annotations: Labels,
    /// When it fired (milliseconds since the epoch).
    pub(crate) starts_at_ms: i64,
    /// When it resolved; `None` while it fires.
    pub(crate) resolved_at_ms: Option<i64>,
    /// Where its expression can be queried.
    pub(crate) generator_url: String,
}

impl Observed {
    pub(crate) fn firing(&self) -> bool {
        self.resolved_at_ms.is_none()
    }
}

/// RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Prometheus's label-set fingerprint (FNV-1a 64 over sorted names and values, each
/// followed by a 0xff byte), as 16 hex digits: Alertmanager shows the same value.
pub(crate) fn fingerprint(labels: &Labels) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, value) in labels {
        add(name.as_bytes());
        add(&[0xff]);
        add(value.as_bytes());
        add(&[0xff]);
    }
    format!("{hash:016x}")
}

/// One notification of a group to a webhook receiver.
#[derive(Clone, Debug)]
pub(crate) struct GroupNotification<'a> {
    pub(crate) receiver: &'a str,
    pub(crate) group_labels: &'a Labels,
    pub(crate) firing: Vec<&'a Observed>,
    pub(crate) resolved: Vec<&'a Observed>,
    pub(crate) external_url: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookAlert<'a> {
    status: &'static str,
    labels: &'a Labels,
    annotations: &'a Labels,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: &'a str,
    fingerprint: String,
}

impl GroupNotification<'_> {
    fn all(&self) -> impl Iterator<Item = &Observed> {
        self.firing.iter().chain(&self.resolved).copied()
    }

    /// `firing` while one alert of the group fires, else `resolved`.
    fn status(&self) -> &'static str {
        if self.firing.is_empty() {
            "resolved"
        } else {
            "firing"
        }
    }

    /// The pairs every alert of the group has, of its labels or of its annotations.
    fn common(&self, of: impl Fn(&Observed) -> &Labels) -> Labels {
        let mut alerts = self.all();
        let Some(first) = alerts.next() else {
            return Labels::new();
        };
        let mut common = of(first).clone();
        for alert in alerts {
            let theirs = of(alert);
            common.retain(|k, v| theirs.get(k) == Some(v));
        }
        common
    }

    /// Alertmanager's webhook payload (version 4).
    pub(crate) fn json(&self) -> Value {
        let alerts: Vec<WebhookAlert<'_>> = self
            .all()
            .map(|a| WebhookAlert {
                status: if a.firing() { "firing" } else { "resolved" },
                labels: &a.labels,
                annotations: &a.annotations,
                starts_at: rfc3339(a.starts_at_ms),
                ends_at: a
                    .resolved_at_ms
                    .map_or_else(|| ZERO_TIME.to_string(), rfc3339),
                generator_url: &a.generator_url,
                fingerprint: fingerprint(&a.labels),
            })
            .collect();
        json!({
            "version": "4",
            "groupKey": format!("{{}}:{}", label_text(self.group_labels)),
            "truncatedAlerts": 0,
            "status": self.status(),
            "receiver": self.receiver,
            "groupLabels": self.group_labels,
            "commonLabels": self.common(|a| &a.labels),
            "commonAnnotations": self.common(|a| &a.annotations),
            "externalURL": self.external_url,
            "alerts": alerts,
        })
    }

    /// A Slack incoming-webhook body: one `text` with a header line and a line per alert.
    pub(crate) fn slack(&self) -> Value {
        // The group's alert name, or the one all its alerts share when it is not grouped
        // by it (`group_by = []`).
        let common = self.common(|a| &a.labels);
        let name = self
            .group_labels
            .get("alertname")
            .or_else(|| common.get("alertname"))
            .map_or("alerts", String::as_str);
        let rest: Vec<String> = self
            .group_labels
            .iter()
            .filter(|(k, _)| *k != "alertname")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let header = if self.firing.is_empty() {
            format!("*[RESOLVED] {name}*")
        } else {
            format!("*[FIRING:{}] {name}*", self.firing.len())
        };
        let mut text = if rest.is_empty() {
            header
        } else {
            format!("{header} ({})", rest.join(", "))
        };
        let describe = |a: &Observed| {
            a.annotations
                .get("summary")
                .or_else(|| a.annotations.get("description"))
                .cloned()
                .unwrap_or_else(|| {
                    let own: Vec<String> = a
                        .labels
                        .iter()
                        .filter(|(k, _)| !self.group_labels.contains_key(*k))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    if own.is_empty() {
                        name.to_string()
                    } else {
                        own.join(", ")
                    }
                })
        };
        for a in &self.firing {
            text.push_str(&format!(
                "\n• {} (since {})",
                describe(a),
                rfc3339(a.starts_at_ms)
            ));
        }
        for a in &self.resolved {
            text.push_str(&format!(
                "\n• resolved: {} (at {})",
                describe(a),
                rfc3339(a.resolved_at_ms.unwrap_or_default())
            ));
        }
        json!({ "text": text })
    }
}

/// `{a="b", c="d"}`.
pub(crate) fn label_text(labels: &Labels) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// One alert in Alertmanager's `POST /api/v2/alerts` body, as Prometheus sends it: a
/// firing alert ends a few evaluation intervals from now (so it resolves by itself if
/// Prometheus, here tandem, stops resending it), a resolved one at its resolution.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PostableAlert {
    pub(crate) labels: Labels,
    pub(crate) annotations: Labels,
    pub(crate) starts_at: String,
    pub(crate) ends_at: String,
    #[serde(rename = "generatorURL")]
    pub(crate) generator_url: String,
}

impl PostableAlert {
    pub(crate) fn new(alert: &Observed, valid_until_ms: i64) -> PostableAlert {
        PostableAlert {
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
            starts_at: rfc3339(alert.starts_at_ms),
            ends_at: rfc3339(alert.resolved_at_ms.unwrap_or(valid_until_ms)),
            generator_url: alert.generator_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn alert(instance: &str, resolved: Option<i64>) -> Observed {
        Observed {
            labels: labels(&[
                ("alertname", "ApiDown"),
                ("service", "api"),
                ("env", "dev"),
                ("severity", "page"),
                ("instance", instance),
            ]),
            annotations: labels(&[("summary", &format!("{instance} is down"))]),
            starts_at_ms: 1_700_000_000_000,
            resolved_at_ms: resolved,
            generator_url: "http://127.0.0.1:7300/api/v1/query?query=up".into(),
        }
    }

    #[test]
    fn fingerprints_are_prometheus_s() {
        // model.LabelSet{"foo": "bar"}.Fingerprint() in Prometheus's common/model.
        assert_eq!(fingerprint(&labels(&[])), "cbf29ce484222325");
        assert_eq!(
            fingerprint(&labels(&[("foo", "bar")])),
            fingerprint(&labels(&[("foo", "bar")]))
        );
        assert_ne!(
            fingerprint(&labels(&[("a", "bc")])),
            fingerprint(&labels(&[("ab", "c")]))
        );
    }

    #[test]
    fn the_webhook_payload_has_alertmanager_s_shape() {
        let (a, b) = (alert("a", None), alert("b", Some(1_700_000_060_000)));
        let group = labels(&[("alertname", "ApiDown"), ("env", "dev"), ("service", "api")]);
        let n = GroupNotification {
            receiver: "ops",
            group_labels: &group,
            firing: vec![&a],
            resolved: vec![&b],
            external_url: "http://127.0.0.1:7300",
        };
        let body = n.json();
        assert_eq!(body["version"], "4");
        assert_eq!(body["status"], "firing");
        assert_eq!(body["receiver"], "ops");
        assert_eq!(
            body["groupKey"],
            "{}:{alertname=\"ApiDown\", env=\"dev\", service=\"api\"}"
        );
        assert_eq!(body["groupLabels"]["service"], "api");
        assert_eq!(body["commonLabels"]["severity"], "page");
        assert!(body["commonLabels"].get("instance").is_none());
        assert_eq!(body["commonAnnotations"], json!({}));
        assert_eq!(body["alerts"][0]["status"], "firing");
        assert_eq!(body["alerts"][0]["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(body["alerts"][0]["endsAt"], ZERO_TIME);
        assert_eq!(body["alerts"][1]["status"], "resolved");
        assert_eq!(body["alerts"][1]["endsAt"], "2023-11-14T22:14:20.000Z");
        assert_eq!(
            body["alerts"][1]["generatorURL"],
            "http://127.0.0.1:7300/api/v1/query?query=up"
        );
        assert_eq!(body["alerts"][1]["fingerprint"].as_str().unwrap().len(), 16);

        let only_resolved = GroupNotification {
            firing: vec![],
            ..n.clone()
        };
        assert_eq!(only_resolved.json()["status"], "resolved");
    }

    #[test]
    fn the_slack_text_says_what_fires_and_what_resolved() {
        let (a, b) = (alert("a", None), alert("b", Some(1_700_000_060_000)));
        let group = labels(&[("alertname", "ApiDown"), ("service", "api")]);
        let n = GroupNotification {
            receiver: "chat",
            group_labels: &group,
            firing: vec![&a],
            resolved: vec![&b],
            external_url: "",
        };
        let text = n.slack()["text"].as_str().unwrap().to_string();
        assert_eq!(
            text,
            "*[FIRING:1] ApiDown* (service=api)\n• a is down (since 2023-11-14T22:13:20.000Z)\n• resolved: b is down (at 2023-11-14T22:14:20.000Z)"
        );
        let one_group = GroupNotification {
            group_labels: &Labels::new(),
            ..n.clone()
        };
        assert!(
            one_group.slack()["text"]
                .as_str()
                .unwrap()
                .starts_with("*[FIRING:1] ApiDown*\n"),
            "with no group labels, the name all alerts share"
        );
        let done = GroupNotification {
            firing: vec![],
            ..n
        };
        assert!(
            done.slack()["text"]
                .as_str()
                .unwrap()
                .starts_with("*[RESOLVED] ApiDown*")
        );
    }

    #[test]
    fn alertmanager_alerts_end_when_resolved_or_when_their_validity_runs_out() {
        let firing = PostableAlert::new(&alert("a", None), 1_700_000_240_000);
        assert_eq!(firing.ends_at, "2023-11-14T22:17:20.000Z");
        let resolved = PostableAlert::new(&alert("a", Some(1_700_000_060_000)), 1_700_000_240_000);
        assert_eq!(resolved.ends_at, "2023-11-14T22:14:20.000Z");
        let body = serde_json::to_value(vec![firing]).unwrap();
        assert_eq!(body[0]["labels"]["alertname"], "ApiDown");
        assert_eq!(body[0]["startsAt"], "2023-11-14T22:13:20.000Z");
        assert!(body[0]["generatorURL"].is_string());
    }
}
