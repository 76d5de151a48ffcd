//! The client side of the server's API, over the data directory's Unix socket.
//!
//! Every command that needs a server goes through here; none touches the store or the
//! supervisor directly. Answers are JSON, or NDJSON streams for long operations.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

/// A connection target: one environment's server.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    socket: PathBuf,
    env: String,
}

impl Client {
    pub(crate) fn new(data_dir: &Path, env: &str) -> Client {
        Client {
            socket: data_dir.join("server.sock"),
            env: env.to_string(),
        }
    }

    /// True when a server answers on the socket.
    pub(crate) async fn is_up(&self) -> bool {
        self.get_json::<serde_json::Value>("/v1/server")
            .await
            .is_ok()
    }

    fn not_running(&self) -> anyhow::Error {
        anyhow!(
            "no tandem server runs for environment '{}' (looked for {})\n  hint: `tandem up` starts one",
            self.env,
            self.socket.display()
        )
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|_| self.not_running())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("cannot talk to the server")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response = sender
            .send_request(request)
            .await
            .context("the server did not answer")?;
        Ok(response)
    }

    async fn check(response: Response<Incoming>) -> Result<Response<Incoming>> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let message = serde_json::from_slice::<tandem_api::ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).to_string());
        if status == StatusCode::NOT_FOUND && message.is_empty() {
            bail!("the server does not know this request (is it an older tandem?)");
        }
        bail!("{message}")
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = Self::check(self.send(Method::GET, path, None).await?).await?;
        let body = response.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&body)
            .with_context(|| format!("unexpected answer from the server to {path}"))
    }

    /// GET that returns the JSON body whatever the status (the Prometheus API puts its
    /// errors in the body).
    pub(crate) async fn get_json_any(&self, path: &str) -> Result<serde_json::Value> {
        let response = self.send(Method::GET, path, None).await?;
        let body = response.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&body)
            .with_context(|| format!("unexpected answer from the server to {path}"))
    }

    pub(crate) async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let bytes = serde_json::to_vec(body)?;
        let response = Self::check(self.send(Method::POST, path, Some(bytes)).await?).await?;
        let body = response.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&body)
            .with_context(|| format!("unexpected answer from the server to {path}"))
    }

    /// Sends a request answered by an NDJSON stream; calls `on_line` for every line.
    pub(crate) async fn stream<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        mut on_line: impl FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        let bytes = body.map(serde_json::to_vec).transpose()?;
        let response = Self::check(self.send(method, path, bytes).await?).await?;
        let mut body = response.into_body();
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the server's answer broke off")?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).to_string();
                    if !text.is_empty() {
                        on_line(&text)?;
                    }
                }
            }
        }
        Ok(())
    }
}
