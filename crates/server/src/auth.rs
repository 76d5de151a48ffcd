//! Who may use the HTTP listener: requests must name the listener in their Host header (a
//! web page cannot reach the API through DNS rebinding) and carry the bearer token from the
//! data directory's owner-only `token` file. The Unix socket needs neither: its file mode
//! already limits it to the owner.

use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// For the read-only Prometheus API: on a loopback listener the Host check is enough (as
/// for a local Prometheus); on any other address the token is required too.
pub(crate) async fn read_only(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.check_host {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !state.allowed_hosts.iter().any(|h| h == host) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                axum::Json(serde_json::json!({
                    "status": "error",
                    "errorType": "bad_data",
                    "error": format!("Host '{host}' is not this server's address; use {}", state.info.listen)
                })),
            )
                .into_response();
        }
        return next.run(request).await;
    }
    require_token(State(state), request, next).await
}

pub(crate) async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if state.check_host && !state.allowed_hosts.iter().any(|h| h == host) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            axum::Json(serde_json::json!({
                "error": format!("Host '{host}' is not this server's address; use {}", state.info.listen)
            })),
        )
            .into_response();
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({
                "error": "this endpoint needs the server's token: send `Authorization: Bearer <token>` with the token from the data directory's `token` file"
            })),
        )
            .into_response();
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
