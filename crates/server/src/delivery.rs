//! What can go wrong when the server sends something over HTTP (remote write, alert
//! notifications), and which failures are worth another try: one classification shared by
//! every sender, following Prometheus's rule.

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("cannot reach it: {0}")]
    Connection(String),
    #[error("it did not answer within {0:?}")]
    Timeout(Duration),
    #[error("it answered {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { status: u16, body: String },
    /// The request could not be made at all (the message says why).
    #[error("{0}")]
    Request(String),
}

impl SendError {
    /// Connection trouble, timeouts, 5xx and 429 are worth another try; any other answer
    /// means the receiver refused this content and will refuse it again.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            SendError::Connection(_) | SendError::Timeout(_) => true,
            SendError::Status { status, .. } => *status == 429 || *status >= 500,
            SendError::Request(_) => false,
        }
    }
}

/// The client the senders share: `http://` and `https://` (rustls on ring, Mozilla's
/// roots compiled in, so no dependence on the host's certificate store), HTTP/1.1,
/// connections pooled per host.
pub(crate) type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds an [`HttpsClient`]; `extra_root` is trusted besides the built-in roots (tests
/// trust their self-signed certificate this way).
pub(crate) fn https_client(extra_root: Option<CertificateDer<'static>>) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(root) = extra_root {
        // Only a test passes one; a certificate rustls cannot read is its bug.
        roots.add(root).expect("extra root certificate");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // The https connector hands it https URLs too.
    http.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A TLS server on a free loopback port with a fresh self-signed certificate for
/// 127.0.0.1: it answers every request 204 and hands the request's path and body to
/// the returned channel. Returns the port and the certificate to trust.
#[cfg(test)]
pub(crate) async fn tls_server() -> (
    u16,
    rustls::pki_types::CertificateDer<'static>,
    tokio::sync::mpsc::UnboundedReceiver<(String, Bytes)>,
) {
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (received, bodies) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let received = received.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let path = request.uri().path().to_string();
                        let body = request.into_body().collect().await?.to_bytes();
                        let _ = received.send((path, body));
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::NO_CONTENT;
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, cert, bodies)
}

/// The largest part of an error answer's body kept for the message.
const MAX_ERROR_BODY: usize = 512;

/// Sends `request` and waits for its answer up to `timeout`. The answer's body is read
/// either way: it frees the connection for the next request, and an error's body says why
/// (Prometheus explains refused samples there).
pub(crate) async fn exchange(
    client: &HttpsClient,
    request: hyper::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(), SendError> {
    use http_body_util::{BodyExt, Limited};
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| SendError::Connection(error_chain(&e)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|c| String::from_utf8_lossy(&c.to_bytes()).trim().to_string())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::Status {
                status: status.as_u16(),
                body,
            })
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(SendError::Timeout(timeout)))
}

/// The error and its causes, `: `-joined (hyper's own message alone says "client error").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
