//! The HTTP API (`/v1/...`), the same on the Unix socket and on the HTTP listener; on the
//! latter every route passes [`crate::auth::require_token`] first.
//!
//! Long operations (apply, down) and log following answer with NDJSON streams, one JSON
//! object a line, so a client shows progress as it happens.

use crate::AppState;
use crate::logs;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use tandem_api::{
    ApplyMessage, ApplyRequest, ErrorBody, Event, EventKind, LogEntry, NoteRequest, StatusResponse,
    now_ms,
};
use tandem_store::EventFilter;
use tokio::sync::mpsc;

pub(crate) fn router(state: Arc<AppState>, needs_token: bool) -> Router {
    let routes = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/server", get(server_info))
        .route("/v1/plan", post(plan))
        .route("/v1/apply", post(apply))
        .route("/v1/rollback", post(rollback))
        .route("/v1/deployments", get(deployments))
        .route("/v1/down", post(down))
        .route("/v1/restart/{service}", post(restart))
        .route("/v1/revisions", get(revisions))
        .route("/v1/revisions/{number}", get(revision))
        .route("/v1/events", get(events))
        .route("/v1/notes", post(note))
        .route(
            "/v1/silences",
            get(crate::alertapi::list_silences).post(crate::alertapi::create_silence),
        )
        .route(
            "/v1/silences/{id}/expire",
            post(crate::alertapi::expire_silence),
        )
        .route("/v1/logs", get(logs_route))
        .route("/v1/secrets", get(list_secrets))
        .route("/v1/secrets/{name}", post(set_secret))
        .route("/v1/secrets/{name}/remove", post(remove_secret))
        .route("/v1/services/{name}/exec-env", post(exec_env));
    let routes = if needs_token {
        routes.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::require_token,
        ))
    } else {
        routes
    };
    routes.with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

fn ndjson_response(rx: mpsc::Receiver<String>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| {
            (
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line + "\n")),
                rx,
            )
        })
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// A sender for the engine's progress lines, and the task that streams them to the client
/// as `{"progress": ...}` NDJSON lines; the task ends when the sender is dropped.
fn forward_progress(
    tx: mpsc::Sender<String>,
) -> (tandem_engine::Progress, tokio::task::JoinHandle<()>) {
    let (ptx, mut prx) = mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        while let Some(message) = prx.recv().await {
            let line =
                serde_json::to_string(&ApplyMessage::Progress { message }).unwrap_or_default();
            let _ = tx.send(line).await;
        }
    });
    (ptx, task)
}

async fn server_info(State(state): State<Arc<AppState>>) -> Response {
    Json(state.info.clone()).into_response()
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    match state.engine.services_status() {
        Ok((live_revision, services)) => Json(StatusResponse {
            server: state.info.clone(),
            live_revision,
            deploying: state.engine.deploying(),
            services,
        })
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn check_env(state: &AppState, request: &ApplyRequest) -> Option<Response> {
    if request.system.env != state.env {
        return Some(error(
            StatusCode::CONFLICT,
            format!(
                "this server runs environment '{}', but the system was resolved for '{}'",
                state.env, request.system.env
            ),
        ));
    }
    None
}

async fn plan(
    State(state): State<Arc<AppState>>,
    Json(mut request): Json<ApplyRequest>,
) -> Response {
    if let Some(r) = check_env(&state, &request) {
        return r;
    }
    if let Err(missing) = state.secrets.seal(&mut request.system) {
        return error(StatusCode::BAD_REQUEST, missing);
    }
    match state.engine.plan(&request.system) {
        Ok(plan) => Json(plan).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn apply(
    State(state): State<Arc<AppState>>,
    Json(mut request): Json<ApplyRequest>,
) -> Response {
    if let Some(r) = check_env(&state, &request) {
        return r;
    }
    let (tx, rx) = mpsc::channel::<String>(64);
    // Every secret a service lists must be set before anything starts or is recorded; the
    // revision then carries each value's keyed fingerprint, never the value.
    if let Err(missing) = state.secrets.seal(&mut request.system) {
        let failed = ApplyMessage::Failed {
            error: missing,
            revision: None,
            rolled_back: false,
        };
        let _ = tx.try_send(serde_json::to_string(&failed).unwrap_or_default());
        return ndjson_response(rx);
    }
    let engine = state.engine.clone();
    let dir = state.dir.clone();
    let mut recovered = state.recovered.clone();
    let app = state.clone();
    tokio::spawn(async move {
        let send = |m: ApplyMessage| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::to_string(&m).unwrap_or_default()).await;
            }
        };
        if !*recovered.borrow() {
            send(ApplyMessage::Progress {
                message: "waiting for the server to finish re-attaching to running instances"
                    .into(),
            })
            .await;
            let _ = recovered.wait_for(|r| *r).await;
        }
        let (ptx, forward) = forward_progress(tx.clone());
        if let Err(e) = dir.mark_down(false) {
            tracing::warn!("cannot clear the down mark: {e}");
        }
        // The deployment runs to its end even when the client goes away.
        let options = tandem_engine::DeployOptions {
            force: request.force,
            plain: false,
        };
        let result = engine
            .deploy(request.system, request.provenance, options, Some(ptx))
            .await;
        let _ = forward.await;
        if result.is_ok() {
            apply_live_settings(&app);
        }
        send(outcome_message(result)).await;
    });
    ndjson_response(rx)
}

/// Hands the live revision's `[monitoring]` to the monitor and its rules to the rule
/// engine (after a deploy or rollback).
fn apply_live_settings(state: &AppState) {
    match state.engine.store().live(&state.env) {
        Ok(Some(live)) => {
            state.monitor.apply_settings(&live.system.monitoring);
            let base = std::path::Path::new(&live.provenance.file)
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            state.rules.load(&live.system, &base);
            let url = format!("http://{}", state.info.listen);
            state.rules.notifier.load(&live.system, &url);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot read the live revision's settings: {e}"),
    }
}

fn outcome_message(
    result: Result<tandem_api::ApplyResult, tandem_engine::DeployError>,
) -> ApplyMessage {
    match result {
        Ok(done) => ApplyMessage::Done(done),
        Err(e) => ApplyMessage::Failed {
            revision: e.revision(),
            rolled_back: matches!(e, tandem_engine::DeployError::RolledBack { .. }),
            error: e.to_string(),
        },
    }
}

async fn rollback(
    State(state): State<Arc<AppState>>,
    Json(request): Json<tandem_api::RollbackRequest>,
) -> Response {
    let (tx, rx) = mpsc::channel::<String>(64);
    let engine = state.engine.clone();
    let dir = state.dir.clone();
    let mut recovered = state.recovered.clone();
    let app = state.clone();
    tokio::spawn(async move {
        let _ = recovered.wait_for(|r| *r).await;
        if let Err(e) = dir.mark_down(false) {
            tracing::warn!("cannot clear the down mark: {e}");
        }
        let (ptx, forward) = forward_progress(tx.clone());
        let result = engine.rollback(request.to, &request.who, Some(ptx)).await;
        let _ = forward.await;
        if result.is_ok() {
            apply_live_settings(&app);
        }
        let line = serde_json::to_string(&outcome_message(result)).unwrap_or_default();
        let _ = tx.send(line).await;
    });
    ndjson_response(rx)
}

async fn deployments(State(state): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    match state
        .engine
        .store()
        .deployments(&state.env, q.limit.unwrap_or(50))
    {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn down(State(state): State<Arc<AppState>>) -> Response {
    let (tx, rx) = mpsc::channel::<String>(64);
    let engine = state.engine.clone();
    let dir = state.dir.clone();
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let (ptx, forward) = forward_progress(tx.clone());
        let result = engine.down(Some(ptx)).await;
        let _ = forward.await;
        match result {
            Ok(()) => {
                if let Err(e) = dir.mark_down(true) {
                    tracing::warn!("cannot leave the down mark: {e}");
                }
                let _ = tx.send(serde_json::json!({"down": true}).to_string()).await;
                drop(tx);
                // The graceful shutdown lets this answer's stream finish before the
                // listeners close.
                let _ = shutdown.send(true);
            }
            // A deployment holds the lock: nothing was stopped, the server stays.
            Err(e) => {
                let last = serde_json::json!({"failed": {"error": e}});
                let _ = tx.send(last.to_string()).await;
            }
        }
    });
    ndjson_response(rx)
}

async fn restart(State(state): State<Arc<AppState>>, Path(service): Path<String>) -> Response {
    match state.engine.restart(&service) {
        Ok(n) => Json(serde_json::json!({ "service": service, "instances": n })).into_response(),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn revisions(State(state): State<Arc<AppState>>, Query(q): Query<ListQuery>) -> Response {
    match state.engine.store().list(&state.env, q.limit.unwrap_or(50)) {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn revision(State(state): State<Arc<AppState>>, Path(number): Path<String>) -> Response {
    let store = state.engine.store();
    let found = if number == "live" {
        store.live(&state.env)
    } else {
        match number.parse::<u64>() {
            Ok(n) => store.get(&state.env, n),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "'{number}' is not a revision number; use a number from `tandem history` or 'live'"
                    ),
                );
            }
        }
    };
    match found {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "revision {number} does not exist in {}; `tandem history` lists them",
                state.env
            ),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    since_ms: Option<i64>,
    service: Option<String>,
    limit: Option<usize>,
}

async fn events(State(state): State<Arc<AppState>>, Query(q): Query<EventsQuery>) -> Response {
    let filter = EventFilter {
        env: state.env.clone(),
        since_ms: q.since_ms,
        service: q.service,
        kinds: Vec::new(),
        limit: q.limit.unwrap_or(200),
    };
    match state.engine.store().events(&filter) {
        Ok(list) => Json(list).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn note(State(state): State<Arc<AppState>>, Json(note): Json<NoteRequest>) -> Response {
    let event = Event {
        time_ms: now_ms(),
        env: state.env.clone(),
        kind: EventKind::Note,
        service: None,
        instance: None,
        revision: None,
        who: Some(note.who),
        message: note.text,
    };
    match state.engine.store().add_event(&event) {
        Ok(()) => Json(event).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct LogsQuery {
    /// Comma-separated service names; all when absent.
    service: Option<String>,
    since_ms: Option<i64>,
    tail: Option<usize>,
    #[serde(default)]
    follow: bool,
}

async fn logs_route(State(state): State<Arc<AppState>>, Query(q): Query<LogsQuery>) -> Response {
    let services: Vec<String> = q
        .service
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let logs_dir = state.engine.runtime().logs_dir().to_path_buf();
    if let Some(unknown) = services.iter().find(|s| !logs_dir.join(s).is_dir()) {
        let known: Vec<String> = logs::log_files(&logs_dir, &[])
            .into_iter()
            .map(|(s, _, _)| s)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !q.follow {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "service '{unknown}' has no logs; services with logs: {}",
                    known.join(", ")
                ),
            );
        }
    }
    let (tx, rx) = mpsc::channel::<String>(256);
    tokio::spawn(async move {
        let stored = logs::read_merged(&logs_dir, &services, q.since_ms, q.tail);
        for e in stored {
            if tx
                .send(serde_json::to_string(&e).unwrap_or_default())
                .await
                .is_err()
            {
                return;
            }
        }
        if q.follow {
            let (etx, mut erx) = mpsc::channel::<LogEntry>(256);
            tokio::spawn(logs::follow(logs_dir, services, etx));
            while let Some(e) = erx.recv().await {
                if tx
                    .send(serde_json::to_string(&e).unwrap_or_default())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    ndjson_response(rx)
}

// === secrets ===

/// `GET /v1/secrets`: every secret's name, when and by whom it was set, its fingerprint and
/// the live revision's services that use it; never a value.
async fn list_secrets(State(state): State<Arc<AppState>>) -> Response {
    let live = match state.engine.store().live(&state.env) {
        Ok(live) => live,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut list = state.secrets.list();
    for secret in &mut list {
        secret.used_by = live
            .iter()
            .flat_map(|l| l.system.service.iter())
            .filter(|(_, s)| s.secrets.contains(&secret.name))
            .map(|(name, _)| name.clone())
            .collect();
    }
    Json(list).into_response()
}

fn check_secret_name(name: &str) -> Option<Response> {
    if !tandem_spec::is_variable_name(name) || name == "PORT" {
        return Some(error(
            StatusCode::BAD_REQUEST,
            format!(
                "'{name}' cannot be a secret's name: use letters, digits and '_', not starting with a digit, and not PORT"
            ),
        ));
    }
    None
}

/// `POST /v1/secrets/{name}` with `{"value", "who"}`: sets it. The value is neither logged
/// nor echoed; the answer is the secret's [`tandem_api::SecretInfo`].
async fn set_secret(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Json(request): Json<tandem_api::SecretSetRequest>,
) -> Response {
    if let Some(r) = check_secret_name(&name) {
        return r;
    }
    match state.secrets.set(&name, &request.value, &request.who) {
        Ok(info) => {
            tracing::info!(
                "secret {name} of {} set by {} ({})",
                state.env,
                request.who,
                info.fingerprint
            );
            record_secret_event(
                &state,
                EventKind::SecretSet,
                &request.who,
                format!(
                    "secret {name} set (fingerprint {}); services that use it get the new value with the next deploy",
                    info.fingerprint
                ),
            );
            Json(info).into_response()
        }
        Err(e) => {
            tracing::error!("{e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// Puts a change of the secret store on the timeline: who changed which secret, so "who
/// rotated the database password, and when?" has an answer. Never the value.
fn record_secret_event(state: &AppState, kind: EventKind, who: &str, message: String) {
    let event = Event {
        time_ms: now_ms(),
        env: state.env.clone(),
        kind,
        service: None,
        instance: None,
        revision: None,
        who: Some(who.to_string()),
        message,
    };
    if let Err(e) = state.engine.store().add_event(&event) {
        tracing::error!("cannot record the secret change on the timeline: {e}");
    }
}

/// `POST /v1/secrets/{name}/remove` with `{"who"}`: removes it; 404 when it is not set.
async fn remove_secret(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Json(request): Json<tandem_api::SecretRemoveRequest>,
) -> Response {
    match state.secrets.remove(&name) {
        Ok(true) => {
            tracing::info!("secret {name} of {} removed by {}", state.env, request.who);
            record_secret_event(
                &state,
                EventKind::SecretRemoved,
                &request.who,
                format!("secret {name} removed"),
            );
            Json(serde_json::json!({ "removed": name })).into_response()
        }
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!(
                "secret '{name}' is not set in {}; `tandem secret list` lists them",
                state.env
            ),
        ),
        Err(e) => {
            tracing::error!("{e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

// === exec ===

/// `POST /v1/services/{name}/exec-env` with `{"who", "command"}`: what `tandem exec` runs a
/// one-off command with, the service's folder and environment in the live revision (see
/// [`tandem_api::ExecEnv`]), whether or not it has instances. The answer holds secret
/// values, as the instances' launch files do: it goes only to a caller of the socket (the
/// data directory's owner) or of the HTTP listener with the token, and is never logged.
/// A POST, not a GET: every call is put on the timeline (who, which command, which service;
/// never the environment), so "who ran a console on prod?" has an answer.
async fn exec_env(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Json(request): Json<tandem_api::ExecRequest>,
) -> Response {
    if request.command.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no command to run");
    }
    let live = match state.engine.store().live(&state.env) {
        Ok(Some(live)) => live,
        Ok(None) => {
            return error(
                StatusCode::CONFLICT,
                format!(
                    "no revision is live in {}, so no service has an environment yet\n  hint: `tandem up` or `tandem deploy` makes one live",
                    state.env
                ),
            );
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some((cwd, declared)) = state.engine.service_environment(&live.system, &name) else {
        let names: Vec<&str> = live.system.service.keys().map(String::as_str).collect();
        let hint = match closest_name(&name, &names) {
            Some(best) => format!(
                "did you mean '{best}'? The services are: {}",
                names.join(", ")
            ),
            None => format!("the services are: {}", names.join(", ")),
        };
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "service '{name}' is not in the live revision ({}) of {}\n  hint: {hint}",
                live.number, state.env
            ),
        );
    };
    // `${VAR}` in values is interpolated as at an instance's launch: from the service's own
    // variables, then the server's environment. There is no `PORT` (this is no instance), so
    // a value that needs one is left out and named, rather than failing the whole command.
    let lookup = |var: &str| {
        declared
            .get(var)
            .cloned()
            .or_else(|| std::env::var(var).ok())
    };
    let mut env = std::collections::BTreeMap::new();
    let mut left_out = Vec::new();
    for (key, value) in &declared {
        match tandem_spec::interpolate(value, &lookup) {
            Ok(value) => {
                env.insert(key.clone(), value);
            }
            Err(why) => left_out.push(format!("{key}: {why}")),
        }
    }
    env.insert("TANDEM_EXEC".to_string(), "1".to_string());
    env.insert("TANDEM_REVISION".to_string(), live.number.to_string());
    let line = command_line(&request.command);
    tracing::info!(
        "{} runs a command in {name} of {} (revision {}): {line}",
        request.who,
        state.env,
        live.number
    );
    let event = Event {
        time_ms: now_ms(),
        env: state.env.clone(),
        kind: EventKind::Exec,
        service: Some(name.clone()),
        instance: None,
        revision: Some(live.number),
        who: Some(request.who.clone()),
        message: format!("ran `{line}` in {name}"),
    };
    if let Err(e) = state.engine.store().add_event(&event) {
        // Refused rather than run unrecorded: the timeline is the answer to who ran what.
        tracing::error!("cannot record the exec on the timeline: {e}");
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    Json(tandem_api::ExecEnv {
        service: name,
        revision: live.number,
        cwd: cwd.display().to_string(),
        env,
        left_out,
    })
    .into_response()
}

/// The command as one line a user could paste into a shell: words with spaces or quotes are
/// single-quoted.
fn command_line(words: &[String]) -> String {
    words
        .iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The name in `names` closest to `word`, if it is close enough to be a typo: at most a
/// third of its letters differ, counting a swap of two neighbours as one.
fn closest_name<'n>(word: &str, names: &[&'n str]) -> Option<&'n str> {
    // The optimal string alignment distance: Levenshtein plus adjacent transpositions.
    fn distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        d[0] = (0..=b.len()).collect();
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[i - 1][j] + 1)
                    .min(d[i][j - 1] + 1)
                    .min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[i - 2][j - 2] + 1);
                }
                d[i][j] = best;
            }
        }
        d[a.len()][b.len()]
    }
    names
        .iter()
        .map(|name| (distance(word, name), *name))
        .filter(|(d, name)| *d <= (name.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_quotes_what_a_shell_would_split() {
        let words = ["sh", "-c", "echo $A; exit 7", "it's"].map(String::from);
        assert_eq!(command_line(&words), "sh -c 'echo $A; exit 7' 'it'\\''s'");
        assert_eq!(command_line(&["".to_string()]), "''");
    }

    #[test]
    fn a_typo_of_a_service_is_suggested_and_a_stranger_is_not() {
        let names = ["api", "web", "worker"];
        assert_eq!(closest_name("wbe", &names), Some("web"));
        assert_eq!(closest_name("wb", &names), Some("web"));
        assert_eq!(closest_name("workr", &names), Some("worker"));
        assert_eq!(closest_name("database", &names), None);
    }
}
