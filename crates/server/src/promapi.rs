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
use params::{BadParam, parse_duration, parse_time, write_time, write_value};
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

/// A blocking task that died (a panic in a query): Prometheus's `internal` error.
fn internal_failure(e: tokio::task::JoinError) -> Response {
    failure(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        &e.to_string(),
    )
}

/// The store refused a read (a limit, a damaged block): an `execution` error.
fn storage_failure(e: tandem_tsdb::QueryError) -> Response {
    failure(
        StatusCode::UNPROCESSABLE_ENTITY,
        "execution",
        &e.to_string(),
    )
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

/// A query's answer, written by [`query_body`], as a JSON response.
fn query_success(body: Vec<u8>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A query's answer as Prometheus writes it, `{"data":{"result":...,"resultType":...},
/// "status":"success"}`, written straight into the response body: a range query's answer
/// has tens of thousands of points, and a `serde_json::Value` tree of them cost more
/// allocations than evaluating the query. Keys are in the order `serde_json`'s maps keep
/// them (sorted), so the bytes are those the tree gave.
fn query_body(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(match value {
        Value::Matrix(series) => series.iter().map(|s| 200 + 32 * s.samples.len()).sum(),
        Value::Vector(v) => 64 + 200 * v.len(),
        _ => 128,
    });
    out.extend_from_slice(b"{\"data\":{\"result\":");
    match value {
        Value::Scalar { t, v } => {
            write_point(&mut out, *t, *v);
        }
        Value::String(s) => {
            out.push(b'[');
            write_time(&mut out, tandem_api::now_ms());
            out.push(b',');
            write_json_str(&mut out, s);
            out.push(b']');
        }
        Value::Vector(samples) => {
            out.push(b'[');
            for (i, (labels, s)) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"metric\":");
                write_labels(&mut out, labels);
                out.extend_from_slice(b",\"value\":");
                write_point(&mut out, s.t, s.v);
                out.push(b'}');
            }
            out.push(b']');
        }
        Value::Matrix(series) => {
            out.push(b'[');
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"metric\":");
                write_labels(&mut out, &s.labels);
                out.extend_from_slice(b",\"values\":[");
                for (j, x) in s.samples.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    write_point(&mut out, x.t, x.v);
                }
                out.extend_from_slice(b"]}");
            }
            out.push(b']');
        }
    }
    out.extend_from_slice(b",\"resultType\":\"");
    out.extend_from_slice(value.type_name().as_bytes());
    out.extend_from_slice(b"\"},\"status\":\"success\"}");
    out
}

/// `[1435781451.781,"1"]`
fn write_point(out: &mut Vec<u8>, t: i64, v: f64) {
    out.push(b'[');
    write_time(out, t);
    out.extend_from_slice(b",\"");
    write_value(out, v);
    out.extend_from_slice(b"\"]");
}

/// `{"job":"api",...}`: labels are kept sorted by name, as a JSON map's keys are.
fn write_labels(out: &mut Vec<u8>, labels: &Labels) {
    out.push(b'{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, k);
        out.push(b':');
        write_json_str(out, v);
    }
    out.push(b'}');
}

/// A JSON string, escaped as `serde_json` escapes it.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
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
    // The answer is written on the blocking thread too: for a large one that is
    // milliseconds of work that should not hold up the server's async workers.
    let result = tokio::task::spawn_blocking(move || {
        let value = monitor.engine.instant(monitor.db.as_ref(), &q, t)?;
        Ok::<_, EvalError>(query_body(&value))
    })
    .await;
    match result {
        Ok(Ok(body)) => query_success(body),
        Ok(Err(e)) => eval_failure(e),
        Err(e) => internal_failure(e),
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
            .map(|value| query_body(&value))
    })
    .await;
    match result {
        Ok(Ok(body)) => query_success(body),
        Ok(Err(e)) => eval_failure(e),
        Err(e) => internal_failure(e),
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
        Ok(Err(e)) => storage_failure(e),
        Err(e) => internal_failure(e),
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
        Ok(Err(e)) => storage_failure(e),
        Err(e) => internal_failure(e),
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
        Ok(Err(e)) => storage_failure(e),
        Err(e) => internal_failure(e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_tsdb::{Sample, Series};

    /// The answer as the `serde_json::Value` tree this module used to build.
    fn tree(value: &Value) -> Json_ {
        let time = |ms: i64| -> Json_ {
            if ms % 1000 == 0 {
                Json_::Number((ms / 1000).into())
            } else {
                serde_json::Number::from_f64(ms as f64 / 1000.0)
                    .map(Json_::Number)
                    .unwrap_or(Json_::Null)
            }
        };
        let data = match value {
            Value::Scalar { t, v } => {
                json!({ "resultType": "scalar", "result": [time(*t), params::format_value(*v)] })
            }
            Value::String(_) => unreachable!("strings are stamped with the current time"),
            Value::Vector(samples) => json!({
                "resultType": "vector",
                "result": samples.iter().map(|(l, s)| json!({
                    "metric": labels_json(l),
                    "value": [time(s.t), params::format_value(s.v)],
                })).collect::<Vec<_>>(),
            }),
            Value::Matrix(series) => json!({
                "resultType": "matrix",
                "result": series.iter().map(|s| json!({
                    "metric": labels_json(&s.labels),
                    "values": s.samples.iter().map(|x| json!([time(x.t), params::format_value(x.v)])).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            }),
        };
        json!({ "status": "success", "data": data })
    }

    #[test]
    fn answers_are_written_byte_for_byte_as_the_json_tree_was() {
        let odd = Labels::new([
            ("__name__", "up"),
            ("a_quote", "say \"hi\"\\"),
            ("ctrl", "tab\there\nnew\u{1}\u{7f}"),
            ("utf8", "é→🦀"),
        ]);
        let plain = Labels::new([("job", "api")]);
        let values = [
            1.0,
            0.1,
            -0.0,
            1e21,
            -1.5e-7,
            123_456.789,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let samples: Vec<Sample> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| Sample {
                t: 1_435_781_451_000 + i as i64 * 1_781 - 7_000,
                v,
            })
            .collect();
        let answers = [
            Value::Scalar { t: -1_500, v: 0.25 },
            Value::Scalar {
                t: 1_435_781_451_000,
                v: f64::NAN,
            },
            Value::Vector(Vec::new()),
            Value::Vector(vec![
                (odd.clone(), samples[0]),
                (Labels::default(), samples[4]),
            ]),
            Value::Matrix(Vec::new()),
            Value::Matrix(vec![
                Series {
                    labels: odd,
                    samples: samples.clone(),
                },
                Series {
                    labels: plain,
                    samples: Vec::new(),
                },
            ]),
        ];
        for answer in &answers {
            let want = serde_json::to_string(&tree(answer)).unwrap();
            let got = String::from_utf8(query_body(answer)).unwrap();
            assert_eq!(got, want);
        }
    }
}
