//! HTTPS on a public listener: the certificate and key files behind it, loaded with rustls
//! (ring), and reloaded when they change on disk, so a renewal (certbot rewriting
//! `fullchain.pem` and `privkey.pem`) reaches new connections without a deploy.
//!
//! [`ServerTls::load`] reads both files at once and fails with a reason a person can act on
//! (unreadable, not PEM, a key that is not the certificate's), which is what a deploy needs
//! before it moves any traffic. After that, the certificate resolver looks at the files'
//! metadata during a handshake at most once per [`RELOAD_CHECK`]: when either file changed
//! (modification time, size or inode, so a rename of a new file in place counts) it loads
//! the pair again. A pair that fails to load is logged once per change and the previous one
//! keeps serving. The check runs on the handshake path rather than in a timer task so that
//! nothing outlives the listener and a listener nobody connects to costs nothing; it is a
//! `stat` of two files every few seconds, and a read of two small files after a renewal.
//!
//! ALPN offers `h2` and `http/1.1`; the HTTP side tells them apart by the HTTP/2 preface as
//! it does for plain connections, so a client that negotiated nothing still works.

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// How often, at most, a handshake looks at whether the files changed.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Why a certificate and key could not be loaded, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read the TLS {what} {path}: {source}; check the path and that tandem's user may read it"
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the TLS certificate {path} holds no PEM certificate ({reason}); give the certificate chain, starting with -----BEGIN CERTIFICATE-----"
    )]
    NoCertificate { path: PathBuf, reason: String },
    #[error(
        "the TLS key {path} holds no PEM private key ({reason}); give the private key, starting with -----BEGIN PRIVATE KEY-----"
    )]
    NoKey { path: PathBuf, reason: String },
    #[error(
        "the TLS key {path} cannot be used: {reason}; use an RSA, ECDSA (P-256, P-384) or Ed25519 key"
    )]
    UnusableKey { path: PathBuf, reason: String },
    #[error(
        "the TLS key {key} does not belong to the certificate {cert}; give the key the certificate was issued for"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the TLS certificate {path} cannot be used: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
}

/// The TLS side of one public listener: a rustls server configuration whose certificate
/// follows the files on disk. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    resolver: Arc<ReloadingCert>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.resolver.cert)
            .field("key", &self.resolver.key)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the PEM certificate chain at `cert` and the private key at `key`; later
    /// changes to the files are picked up at most [`RELOAD_CHECK`] after they happen.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        ServerTls::load_checking_every(cert, key, RELOAD_CHECK)
    }

    /// [`ServerTls::load`], looking for changed files at most every `interval` (zero: at
    /// every handshake).
    pub fn load_checking_every(
        cert: &Path,
        key: &Path,
        interval: Duration,
    ) -> Result<ServerTls, TlsError> {
        let stamps = (Stamp::of(cert), Stamp::of(key));
        let pair = load_pair(cert, key)?;
        let resolver = Arc::new(ReloadingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            interval,
            state: Mutex::new(ReloadState {
                current: Arc::new(pair),
                seen: stamps,
                checked_at: Instant::now(),
            }),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::BadCertificate {
                path: cert.to_path_buf(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The certificate and key files.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.resolver.cert, &self.resolver.key)
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// What identifies a version of a file: a rewrite changes the time or size, a new file
/// renamed into place (or a symlink moved to one, as certbot does) the inode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl Stamp {
    /// `None` when the file cannot be looked at (it is being replaced, or gone).
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    state: Mutex<ReloadState>,
}

#[derive(Debug)]
struct ReloadState {
    current: Arc<CertifiedKey>,
    /// The files as last loaded, or as last tried: a failed change is not tried (or
    /// logged) again until the files change once more.
    seen: (Option<Stamp>, Option<Stamp>),
    checked_at: Instant,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(state.checked_at) >= self.interval {
            state.checked_at = now;
            let stamps = (Stamp::of(&self.cert), Stamp::of(&self.key));
            if stamps != state.seen {
                state.seen = stamps;
                match load_pair(&self.cert, &self.key) {
                    Ok(pair) => {
                        info!(cert = %self.cert.display(), "reloaded the TLS certificate and key after they changed");
                        state.current = Arc::new(pair);
                    }
                    Err(error) => {
                        warn!(cert = %self.cert.display(), "the TLS files changed but do not load, so the previous certificate keeps serving: {error}");
                    }
                }
            }
        }
        Some(state.current.clone())
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and checks a certificate chain and its key.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert, "certificate")?;
    let key_pem = read(key, "key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
            reason: "no certificate found".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::UnusableKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        Err(error) => Err(TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason: error.to_string(),
        }),
    }
}
