//! The Prometheus HTTP API that Grafana and other Prometheus clients use, served from the
//! environment's time-series store: `/api/v1/query`, `/api/v1/query_range` (GET and POST
//! form), `/api/v1/series`, `/api/v1/labels`, `/api/v1/label/<name>/values`,
//! `/api/v1/metadata` and `/api/v1/status/buildinfo`, with Prometheus's JSON shapes and its
//! error format (`errorType`, `error`). Queries run on blocking threads, so a slow query
//! never stalls the server's other work.

pub(crate) mod params;

use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use params::{BadParam, format_time, format_value, parse_duration, parse_time};
use serde_json::{Value as Json_, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tandem_promql::{ErrorKind, EvalError, Value};
use tandem_tsdb::{Labels, Matcher, Querier};

/// The routes, sharing the server's state; callers add authentication.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/metrics", get(crate::self_metrics::metrics))
}

fn success(data: Json_) -> Response {
    Json(json!({ "status": "success", "data": data })).into_response()
}

fn failure(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "status": "error", "errorType": error_type, "error": message })),
    )
        .into_response()
}

fn bad_data(e: BadParam) -> Response {
    failure(StatusCode::BAD_REQUEST, "bad_data", &e.0)
}

fn eval_failure(e: EvalError) -> Response {
    let status = match e.kind {
        ErrorKind::BadData => StatusCode::BAD_REQUEST,
        ErrorKind::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Execution | ErrorKind::Limit => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let message = match e.position {
        Some((start, end)) => format!("{} (at characters {start}-{end} of the query)", e.message),
        None => e.message,
    };
    failure(status, e.kind.error_type(), &message)
}

/// The parameters of a GET query string or a POST form body, together.
fn params_of(
    method: &Method,
    headers: &HeaderMap,
    raw: Option<String>,
    body: &Bytes,
) -> Vec<(String, String)> {
    let mut pairs = params::form_pairs(raw.as_deref().unwrap_or(""));
    let is_form = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if *method == Method::POST && is_form {
        pairs.extend(params::form_pairs(&String::from_utf8_lossy(body)));
    }
    pairs
}

fn one<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn all(pairs: &[(String, String)], name: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

fn labels_json(labels: &Labels) -> Json_ {
    let map: serde_json::Map<String, Json_> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Json_::String(v.to_string())))
        .collect();
    Json_::Object(map)
}

fn value_json(value: Value) -> Json_ {
    match value {
        Value::Scalar { t, v } => {
            json!({ "resultType": "scalar", "result": [format_time(t), format_value(v)] })
        }
        Value::String(s) => {
            json!({ "resultType": "string", "result": [format_time(tandem_api::now_ms()), s] })
        }
        Value::Vector(samples) => json!({
            "resultType": "vector",
            "result": samples.into_iter().map(|(l, s)| json!({
                "metric": labels_json(&l),
                "value": [format_time(s.t), format_value(s.v)],
            })).collect::<Vec<_>>(),
        }),
        Value::Matrix(series) => json!({
            "resultType": "matrix",
            "result": series.into_iter().map(|s| json!({
                "metric": labels_json(&s.labels),
                "values": s.samples.iter().map(|x| json!([format_time(x.t), format_value(x.v)])).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
    }
}

async fn query(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let pairs = params_of(&method, &headers, raw, &body);
    let Some(q) = one(&pairs, "query").map(str::to_string) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": missing",
        );
    };
    let t = match one(&pairs, "time") {
        Some(text) => match parse_time("time", text) {
            Ok(t) => t,
            Err(e) => return bad_data(e),
        },
        None => tandem_api::now_ms(),
    };
    let monitor = state.monitor.clone();
    let result =
        tokio::task::spawn_blocking(move || monitor.engine.instant(monitor.db.as_ref(), &q, t))
            .await;
    match result {
        Ok(Ok(value)) => success(value_json(value)),
        Ok(Err(e)) => eval_failure(e),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

async fn query_range(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let pairs = params_of(&method, &headers, raw, &body);
    let Some(q) = one(&pairs, "query").map(str::to_string) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid parameter \"query\": missing",
        );
    };
    let parsed = (|| {
        let start = parse_time(
            "start",
            one(&pairs, "start")
                .ok_or_else(|| BadParam("invalid parameter \"start\": missing".into()))?,
        )?;
        let end = parse_time(
            "end",
            one(&pairs, "end")
                .ok_or_else(|| BadParam("invalid parameter \"end\": missing".into()))?,
        )?;
        let step = parse_duration(
            "step",
            one(&pairs, "step")
                .ok_or_else(|| BadParam("invalid parameter \"step\": missing".into()))?,
        )?;
        if end < start {
            return Err(BadParam(
                "end timestamp must not be before start time".into(),
            ));
        }
        if step <= 0 {
            return Err(BadParam(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        Ok((start, end, step))
    })();
    let (start, end, step) = match parsed {
        Ok(v) => v,
        Err(e) => return bad_data(e),
    };
    let monitor = state.monitor.clone();
    let result = tokio::task::spawn_blocking(move || {
        monitor
            .engine
            .range(monitor.db.as_ref(), &q, start, end, step)
    })
    .await;
    match result {
        Ok(Ok(value)) => success(value_json(value)),
        Ok(Err(e)) => eval_failure(e),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

/// `start`/`end` of the metadata endpoints (default: everything).
fn time_range(pairs: &[(String, String)]) -> Result<(i64, i64), BadParam> {
    let start = match one(pairs, "start") {
        Some(t) => parse_time("start", t)?,
        None => i64::MIN / 2,
    };
    let end = match one(pairs, "end") {
        Some(t) => parse_time("end", t)?,
        None => i64::MAX / 2,
    };
    Ok((start, end))
}

fn matcher_sets(pairs: &[(String, String)]) -> Result<Vec<Vec<Matcher>>, Box<Response>> {
    let mut sets = Vec::new();
    for selector in all(pairs, "match[]") {
        match tandem_promql::selectors(&selector) {
            Ok(found) => sets.extend(found),
            Err(e) => return Err(Box::new(eval_failure(e))),
        }
    }
    Ok(sets)
}

async fn series(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let pairs = params_of(&method, &headers, raw, &body);
    let sets = match matcher_sets(&pairs) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if sets.is_empty() {
        return failure(
            StatusCode::BAD_REQUEST,
            "bad_data",
            "no match[] parameter provided",
        );
    }
    let (start, end) = match time_range(&pairs) {
        Ok(r) => r,
        Err(e) => return bad_data(e),
    };
    let monitor = state.monitor.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut found: BTreeMap<Labels, ()> = BTreeMap::new();
        for matchers in sets {
            for s in monitor.db.select(&matchers, start, end)? {
                found.insert(s.labels, ());
            }
        }
        Ok::<_, tandem_tsdb::QueryError>(
            found
                .into_keys()
                .map(|l| labels_json(&l))
                .collect::<Vec<_>>(),
        )
    })
    .await;
    match result {
        Ok(Ok(list)) => success(Json_::Array(list)),
        Ok(Err(e)) => failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            &e.to_string(),
        ),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

async fn labels(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let pairs = params_of(&method, &headers, raw, &body);
    let sets = match matcher_sets(&pairs) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (start, end) = match time_range(&pairs) {
        Ok(r) => r,
        Err(e) => return bad_data(e),
    };
    let monitor = state.monitor.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut names: Vec<String> = Vec::new();
        if sets.is_empty() {
            names = monitor.db.label_names(&[], start, end)?;
        } else {
            for m in sets {
                names.extend(monitor.db.label_names(&m, start, end)?);
            }
        }
        names.sort();
        names.dedup();
        Ok::<_, tandem_tsdb::QueryError>(names)
    })
    .await;
    match result {
        Ok(Ok(names)) => success(json!(names)),
        Ok(Err(e)) => failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            &e.to_string(),
        ),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

async fn label_values(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let pairs = params::form_pairs(raw.as_deref().unwrap_or(""));
    let sets = match matcher_sets(&pairs) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let (start, end) = match time_range(&pairs) {
        Ok(r) => r,
        Err(e) => return bad_data(e),
    };
    let monitor = state.monitor.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut values: Vec<String> = Vec::new();
        if sets.is_empty() {
            values = monitor.db.label_values(&name, &[], start, end)?;
        } else {
            for m in sets {
                values.extend(monitor.db.label_values(&name, &m, start, end)?);
            }
        }
        values.sort();
        values.dedup();
        Ok::<_, tandem_tsdb::QueryError>(values)
    })
    .await;
    match result {
        Ok(Ok(values)) => success(json!(values)),
        Ok(Err(e)) => failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            &e.to_string(),
        ),
        Err(e) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

async fn metadata(State(state): State<Arc<AppState>>, RawQuery(raw): RawQuery) -> Response {
    let pairs = params::form_pairs(raw.as_deref().unwrap_or(""));
    let wanted = one(&pairs, "metric").map(str::to_string);
    let mut out = serde_json::Map::new();
    for (name, m) in state.monitor.metadata() {
        if wanted.as_ref().is_some_and(|w| *w != name) {
            continue;
        }
        out.insert(
            name,
            json!([{ "type": m.kind, "help": m.help, "unit": m.unit }]),
        );
    }
    success(Json_::Object(out))
}

async fn buildinfo(State(state): State<Arc<AppState>>) -> Response {
    success(json!({
        "version": state.info.version,
        "revision": "",
        "branch": "",
        "buildUser": "tandem",
        "buildDate": "",
        "goVersion": "none (tandem is written in Rust)",
    }))
}
