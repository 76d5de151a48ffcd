//! `/api/v1/rules` and `/api/v1/alerts` in Prometheus's shapes (Grafana reads them), from
//! the rules the server runs; alerts a silence mutes say so in `silencedBy`, and alerts an
//! inhibit rule mutes name the firing alerts that inhibit them (fingerprints) in
//! `inhibitedBy`, as Alertmanager's do.
//!
//! Silences: the handlers of `/v1/silences` (create, list, expire; routed by `api.rs`, so
//! they need the token on the HTTP listener like every `/v1` endpoint), and a read-only
//! `GET /api/v2/silences` in Alertmanager's shape, so Grafana's Alertmanager data source
//! lists them.

use crate::AppState;
use crate::notify::SilenceError;
use crate::promapi::params::format_value;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tandem_alert::{Alert, AlertState, Health, RuleKind};
use tandem_api::{
    ErrorBody, ExpireSilenceRequest, Silence, SilenceRequest, SilenceState, SilenceStatus,
};
use tandem_spec::MatchOp;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v2/silences", get(alertmanager_silences))
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
                let mut json = alert_json(alert);
                // Only when muted, so the answer stays Prometheus's own otherwise.
                let silenced_by = state.rules.notifier.silences().muting(&alert.labels);
                if !silenced_by.is_empty() {
                    json["silencedBy"] = json!(silenced_by);
                }
                // Fingerprints of the firing alerts that inhibit it, as Alertmanager's.
                let inhibited_by = state.rules.notifier.inhibited_by(&alert.labels);
                if !inhibited_by.is_empty() {
                    json["inhibitedBy"] = json!(inhibited_by);
                }
                out.push(json);
            }
        }
    }
    Json(json!({ "status": "success", "data": { "alerts": out } })).into_response()
}

// === silences ===

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

fn silence_error(e: SilenceError) -> Response {
    let status = match &e {
        SilenceError::Invalid(_) | SilenceError::Ambiguous { .. } => StatusCode::BAD_REQUEST,
        SilenceError::NotFound(_) => StatusCode::NOT_FOUND,
        SilenceError::AlreadyExpired { .. } => StatusCode::CONFLICT,
        SilenceError::Write { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// The labels of the alerts firing now (those a silence keeps from being notified).
fn firing_labels(state: &AppState) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    for loaded in state.rules.groups() {
        let group_state = loaded.state.lock().expect("group lock");
        for (_, alert) in group_state.active_alerts() {
            if alert.state == AlertState::Firing {
                out.push(alert.labels.clone());
            }
        }
    }
    out
}

fn status_of(silence: Silence, now_ms: i64, firing: &[BTreeMap<String, String>]) -> SilenceStatus {
    SilenceStatus {
        state: silence.state(now_ms),
        mutes: firing.iter().filter(|l| silence.mutes(l, now_ms)).count(),
        silence,
    }
}

#[derive(Deserialize)]
pub(crate) struct SilencesQuery {
    /// Expired silences too.
    #[serde(default)]
    all: bool,
}

/// `GET /v1/silences`: active and pending silences (`?all=true`: expired ones too).
pub(crate) async fn list_silences(
    State(state): State<Arc<AppState>>,
    Query(q): Query<SilencesQuery>,
) -> Response {
    let silences = state.rules.notifier.silences();
    let now = silences.now_ms();
    let firing = firing_labels(&state);
    let list: Vec<SilenceStatus> = silences
        .list()
        .into_iter()
        .map(|s| status_of(s, now, &firing))
        .filter(|s| q.all || s.state != SilenceState::Expired)
        .collect();
    Json(list).into_response()
}

/// `POST /v1/silences`: creates one; answers with it.
pub(crate) async fn create_silence(
    State(state): State<Arc<AppState>>,
    Json(request): Json<SilenceRequest>,
) -> Response {
    let silences = state.rules.notifier.silences();
    match silences.create(request) {
        Ok(silence) => Json(status_of(
            silence,
            silences.now_ms(),
            &firing_labels(&state),
        ))
        .into_response(),
        Err(e) => silence_error(e),
    }
}

/// `POST /v1/silences/{id}/expire`: ends one now (the id, or the start of one id).
pub(crate) async fn expire_silence(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Json(request): Json<ExpireSilenceRequest>,
) -> Response {
    let silences = state.rules.notifier.silences();
    match silences.expire(&id, &request.who) {
        Ok(silence) => Json(status_of(
            silence,
            silences.now_ms(),
            &firing_labels(&state),
        ))
        .into_response(),
        Err(e) => silence_error(e),
    }
}

/// `GET /api/v2/silences`: every silence kept, in Alertmanager's `gettableSilences` shape.
async fn alertmanager_silences(State(state): State<Arc<AppState>>) -> Response {
    let silences = state.rules.notifier.silences();
    let now = silences.now_ms();
    let list: Vec<Value> = silences
        .list()
        .iter()
        .map(|s| {
            let matchers: Vec<Value> = s
                .matchers
                .iter()
                .map(|m| {
                    json!({
                        "name": m.name,
                        "value": m.value,
                        "isRegex": matches!(m.op, MatchOp::Regex | MatchOp::NotRegex),
                        "isEqual": matches!(m.op, MatchOp::Equal | MatchOp::Regex),
                    })
                })
                .collect();
            json!({
                "id": s.id,
                "matchers": matchers,
                "startsAt": rfc3339(s.starts_at_ms),
                "endsAt": rfc3339(s.ends_at_ms),
                "updatedAt": rfc3339(s.updated_at_ms),
                "createdBy": s.created_by,
                "comment": s.comment,
                "status": { "state": s.state(now).as_str() },
            })
        })
        .collect();
    Json(list).into_response()
}
