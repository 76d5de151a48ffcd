//! Secrets of a service: `secrets = ["DB_PASSWORD", "STRIPE_KEY"]`, the names of variables
//! whose values come from the environment's secret store (`tandem secret set`), never from
//! the file, as Kamal's `env.secret`. The file, and every revision made from it, holds only
//! the names, so values stay out of git, of `tandem show`/`diff`/`plan` and of the store.
//!
//! This module owns the syntax of the list and the keyed fingerprint that stands for a
//! value wherever a change of it must be seen (the content hash, the template hash, the
//! diff): HMAC-SHA256 under a random key of the environment's store. A bare hash would let
//! anyone holding a revision try short values until one matches; without the key, a
//! fingerprint says only "same value" or "changed".

use crate::check::{Field, Report};
use crate::interpolate;
use crate::model::Service;
use crate::node::Entry;
use sha2::{Digest, Sha256};

/// Reads `secrets = [...]` into `service.secrets`. Run after `env`, whose names a secret
/// may not repeat.
pub(crate) fn read_secrets(
    report: &mut Report<'_>,
    entry: &Entry,
    section: &str,
    service: &mut Service,
) {
    let field = Field::new(section, "secrets = [\"DB_PASSWORD\"]");
    let Some(items) = report.strings(entry, &field) else {
        return;
    };
    for (name, span) in items {
        if !interpolate::is_variable_name(name) {
            report.value_error(
                span,
                format!("'{name}' in 'secrets' is not a valid environment variable name"),
                "use letters, digits and '_', not starting with a digit, like \"DB_PASSWORD\"",
            );
            continue;
        }
        if name == "PORT" {
            report.value_error(
                span,
                "'PORT' is set by tandem for each instance; it cannot be a secret",
                "remove it from 'secrets'",
            );
            continue;
        }
        if service.secrets.iter().any(|seen| seen == name) {
            report.value_error(
                span,
                format!("'{name}' is listed twice in 'secrets'"),
                "list each secret once",
            );
            continue;
        }
        // An overlay may add the `env` entry or the secret, so this needs the merged service.
        if service.env.contains_key(name) {
            report.context_error(
                span.clone(),
                format!(
                    "'{name}' is both in 'env' and in 'secrets' of {section}; which value wins would be ambiguous"
                ),
                format!(
                    "remove env.{name} and keep the value in the secret store (`tandem secret set {name}`), or remove it from 'secrets'"
                ),
            );
        }
        service.secrets.push(name.to_string());
    }
}

/// The fingerprint of secret `name` with `value` under `key`: `hmac-sha256:` and the first
/// 16 hex digits of HMAC-SHA256(key, name NUL value). The name is part of the message so
/// that two secrets with one value do not show as equal.
pub fn secret_fingerprint(key: &[u8], name: &str, value: &str) -> String {
    let mut message = Vec::with_capacity(name.len() + 1 + value.len());
    message.extend_from_slice(name.as_bytes());
    message.push(0);
    message.extend_from_slice(value.as_bytes());
    let mac = hmac_sha256(key, &message);
    format!("hmac-sha256:{}", hex::encode(&mac[..8]))
}

/// HMAC-SHA256 (RFC 2104) over `sha2`, which the crate already has: the block is 64 bytes.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2.
    #[test]
    fn hmac_matches_the_rfc() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn fingerprints_depend_on_key_name_and_value() {
        let a = secret_fingerprint(b"key-a", "DB_PASSWORD", "hunter2");
        assert_eq!(a, secret_fingerprint(b"key-a", "DB_PASSWORD", "hunter2"));
        assert!(a.starts_with("hmac-sha256:") && a.len() == "hmac-sha256:".len() + 16);
        assert_ne!(a, secret_fingerprint(b"key-b", "DB_PASSWORD", "hunter2"));
        assert_ne!(a, secret_fingerprint(b"key-a", "DB_PASSWORD", "hunter3"));
        assert_ne!(a, secret_fingerprint(b"key-a", "API_KEY", "hunter2"));
        assert!(!a.contains("hunter2"));
    }
}

#[cfg(test)]
mod diff_tests {
    use crate::{content_hash, diff, resolve};

    const FILE: &str = r#"
[service.api]
run = "./api --password ${DB_PASSWORD}"
secrets = ["DB_PASSWORD"]
"#;

    /// A changed fingerprint is a change of the content (a new revision), shown by name
    /// only; a service added whole shows no fingerprint either.
    #[test]
    fn diff_names_a_changed_secret_but_never_its_fingerprint() {
        let dir = std::env::temp_dir();
        let mut old = resolve("tandem.toml", FILE, &dir, "dev").unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(old.service["api"].secrets, vec!["DB_PASSWORD"]);
        let mut new = old.clone();
        let print = |v: &str| super::secret_fingerprint(b"key", "DB_PASSWORD", v);
        old.service.get_mut("api").unwrap().secret_fingerprints =
            [("DB_PASSWORD".to_string(), print("one"))].into();
        new.service.get_mut("api").unwrap().secret_fingerprints =
            [("DB_PASSWORD".to_string(), print("two"))].into();
        assert_ne!(content_hash(&old), content_hash(&new));
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].path, "service.api.secrets.DB_PASSWORD");
        assert_eq!(changes[0].old, Some(serde_json::json!("(secret)")));
        assert_eq!(changes[0].new, Some(serde_json::json!("changed (secret)")));

        let mut empty = old.clone();
        empty.service.clear();
        let added = diff(&empty, &new);
        let text = serde_json::to_string(&added[0].new).unwrap();
        assert!(text.contains("\"DB_PASSWORD\":\"(secret)\""), "{text}");
        assert!(!text.contains(&print("two")), "{text}");
    }
}
