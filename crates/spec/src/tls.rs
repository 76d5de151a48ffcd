//! The files behind a service's `tls = { cert, key }`, checked offline: each must be
//! readable and parse as PEM (a certificate chain, a private key of a kind rustls can sign
//! with), and the key must belong to the certificate. `tandem validate` reports these at the
//! `tls` entry, so a typo in a path or a truncated file is caught before a deploy. The
//! proxy loads the same files again when it opens the listener (and whenever they change);
//! this module only decides whether they would load.
//!
//! It also owns the one TLS warning: a private key readable by group or others.

use crate::model::System;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// Why a certificate or key file would not load: the message and what to do.
pub(crate) struct FileProblem {
    pub(crate) message: String,
    pub(crate) hint: String,
}

impl FileProblem {
    fn new(message: String, hint: impl Into<String>) -> FileProblem {
        FileProblem {
            message,
            hint: hint.into(),
        }
    }
}

/// Reads `path` (written `shown` in the file) as a PEM certificate chain.
pub(crate) fn check_cert(
    path: &Path,
    shown: &str,
) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let bytes = read(path, shown, "certificate")?;
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        match item {
            Ok(cert) => chain.push(cert),
            Err(error) => {
                return Err(FileProblem::new(
                    format!("TLS certificate '{shown}' is not valid PEM: {error}"),
                    "give the PEM file with the certificate chain (fullchain.pem for certbot), starting with -----BEGIN CERTIFICATE-----",
                ));
            }
        }
    }
    if chain.is_empty() {
        return Err(FileProblem::new(
            format!("TLS certificate '{shown}' holds no certificate"),
            "give the PEM file with the certificate chain (fullchain.pem for certbot), starting with -----BEGIN CERTIFICATE-----",
        ));
    }
    Ok(chain)
}

/// Reads `path` (written `shown` in the file) as a PEM private key.
pub(crate) fn check_key(path: &Path, shown: &str) -> Result<PrivateKeyDer<'static>, FileProblem> {
    let bytes = read(path, shown, "key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| {
        let problem = match error {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no private key".to_string(),
            other => format!("is not a valid PEM private key: {other}"),
        };
        FileProblem::new(
            format!("TLS key '{shown}' {problem}"),
            "give the PEM file with the private key (privkey.pem for certbot), starting with -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY)",
        )
    })
}

/// Whether `key` can sign and belongs to the first certificate of `chain`.
pub(crate) fn check_pair(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_shown: &str,
    key_shown: &str,
) -> Result<(), FileProblem> {
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| {
            FileProblem::new(
                format!("TLS key '{key_shown}' cannot be used: {error}"),
                "use an RSA, ECDSA (P-256 or P-384) or Ed25519 key",
            )
        })?;
    match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(FileProblem::new(
            format!("TLS key '{key_shown}' does not belong to the certificate '{cert_shown}'"),
            "give the key the certificate was issued for (certbot keeps them side by side as privkey.pem and fullchain.pem)",
        )),
        Err(error) => Err(FileProblem::new(
            format!("TLS certificate '{cert_shown}' cannot be used: {error}"),
            "give a PEM file whose first certificate is the server's own (the leaf), followed by its chain",
        )),
    }
}

fn read(path: &Path, shown: &str, what: &str) -> Result<Vec<u8>, FileProblem> {
    std::fs::read(path).map_err(|error| {
        let reason = match error.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => error.to_string(),
        };
        let hint = match error.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "let the user tandem runs as read it (chmod 600 and chown to that user)"
            }
            _ => "fix the path; relative paths are against the folder holding the system file",
        };
        FileProblem::new(
            format!(
                "cannot read TLS {what} '{shown}' ({}): {reason}",
                path.display()
            ),
            hint,
        )
    })
}

/// A warning when the private key at `path` can be read by its group or by others: a key
/// should be readable by its owner only. `None` when it is private, or cannot be looked at.
pub fn key_permission_warning(service: &str, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the TLS key {} of service '{service}' is readable by {} (mode {mode:04o}); run `chmod 600 {}` so only its owner can read it",
            path.display(),
            if mode & 0o007 != 0 { "others" } else { "its group" },
            path.display()
        )
    })
}

/// Every warning about the TLS files of `system` (keys readable by others), in service order.
pub fn tls_warnings(system: &System) -> Vec<String> {
    system
        .service
        .iter()
        .filter_map(|(name, service)| {
            let tls = service.tls.as_ref()?;
            key_permission_warning(name, Path::new(&tls.key))
        })
        .collect()
}
