//! `/api/v1/rules` and `/api/v1/alerts` in Prometheus's shapes (Grafana reads them), from
//! the rules the server runs.

use crate::AppState;
use crate::promapi::params::format_value;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::Arc;
use tandem_alert::{Alert, AlertState, Health, RuleKind};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn alert_json(alert: &Alert) -> Value {
    json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "state": alert.state.as_str(),
        "activeAt": rfc3339(alert.active_at_ms),
        "value": format_value(alert.value),
    })
}

fn health(h: Health) -> &'static str {
    match h {
        Health::Ok => "ok",
        Health::Err => "err",
        Health::Unknown => "unknown",
    }
}

async fn rules(State(state): State<Arc<AppState>>) -> Response {
    let mut groups = Vec::new();
    for loaded in state.rules.groups() {
        let group_state = loaded.state.lock().expect("group lock").clone();
        let mut rules = Vec::new();
        for (rule, rs) in loaded.group.rules.iter().zip(group_state.rules.iter()) {
            let last_eval = rs
                .last_eval_ms
                .map(rfc3339)
                .unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
            match rule.kind {
                RuleKind::Alert => {
                    let alerts: Vec<&Alert> = rs
                        .alerts
                        .iter()
                        .filter(|a| a.state != AlertState::Inactive)
                        .collect();
                    let rule_state = alerts
                        .iter()
                        .map(|a| a.state)
                        .max()
                        .unwrap_or(AlertState::Inactive);
                    rules.push(json!({
                        "type": "alerting",
                        "name": rule.name,
                        "query": rule.expr,
                        "duration": rule.for_.as_secs_f64(),
                        "keepFiringFor": rule.keep_firing_for.as_secs_f64(),
                        "labels": rule.labels,
                        "annotations": rule.annotations,
                        "alerts": alerts.iter().map(|a| alert_json(a)).collect::<Vec<_>>(),
                        "state": rule_state.as_str(),
                        "health": health(rs.health),
                        "lastError": rs.last_error.clone().unwrap_or_default(),
                        "lastEvaluation": last_eval,
                        "evaluationTime": rs.eval_seconds,
                    }));
                }
                RuleKind::Record => rules.push(json!({
                    "type": "recording",
                    "name": rule.name,
                    "query": rule.expr,
                    "labels": rule.labels,
                    "health": health(rs.health),
                    "lastError": rs.last_error.clone().unwrap_or_default(),
                    "lastEvaluation": last_eval,
                    "evaluationTime": rs.eval_seconds,
                })),
            }
        }
        groups.push(json!({
            "name": loaded.group.name,
            "file": loaded.group.file,
            "interval": loaded.group.interval.as_secs_f64(),
            "limit": loaded.group.limit,
            "rules": rules,
            "lastEvaluation": group_state.last_eval_ms.map(rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
            "evaluationTime": group_state.eval_seconds,
        }));
    }
    Json(json!({ "status": "success", "data": { "groups": groups } })).into_response()
}

async fn alerts(State(state): State<Arc<AppState>>) -> Response {
    let mut out = Vec::new();
    for loaded in state.rules.groups() {
        let group_state = loaded.state.lock().expect("group lock");
        for (_, alert) in group_state.active_alerts() {
            if alert.state != AlertState::Inactive {
                out.push(alert_json(alert));
            }
        }
    }
    Json(json!({ "status": "success", "data": { "alerts": out } })).into_response()
}
