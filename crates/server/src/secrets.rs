//! The environment's secret store: `secrets.json` in the data directory, the only place a
//! secret's value is kept. It holds a random key (for the keyed fingerprints that stand
//! for values in revisions and diffs) and, per name, the value, when it was set and by whom.
//!
//! The file is readable only by its owner: every write goes to a temporary file created
//! with mode 0600 (never wider, not even for a moment), is fsync'd, then renamed over the
//! old one, so a crash leaves the old file or the new one, never half of one. One value per
//! name, as Kamal keeps them: a value set now is what every instance started from now on
//! gets, whatever revision it belongs to. Nothing here logs a value, and the `Debug` form
//! shows names only.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tandem_api::{SecretInfo, now_ms};
use tandem_spec::System;

/// What `secrets.json` holds.
#[derive(Clone, Serialize, Deserialize)]
struct StoreFile {
    /// 32 random bytes, hex: the HMAC key of the fingerprints.
    key: String,
    #[serde(default)]
    secrets: BTreeMap<String, Entry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    value: String,
    set_ms: i64,
    set_by: String,
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret store {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error(
        "the secret store {path} is not valid ({reason}); restore it from a backup, or move it away and set every secret again"
    )]
    Corrupt { path: String, reason: String },
    #[error("cannot write the secret store {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// One environment's secrets.
pub struct SecretStore {
    path: PathBuf,
    state: Mutex<StoreFile>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().secrets.keys().cloned().collect();
        f.debug_struct("SecretStore")
            .field("path", &self.path)
            .field("names", &names)
            .finish()
    }
}

// === impl SecretStore ===

impl SecretStore {
    /// Opens `path`, or creates it (0600, with a new random key) when it does not exist. A
    /// file that others may read is made owner-only again.
    pub fn open(path: &Path) -> Result<SecretStore, SecretError> {
        let shown = path.display().to_string();
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                let state: StoreFile =
                    serde_json::from_slice(&bytes).map_err(|e| SecretError::Corrupt {
                        // serde_json's message names a line and column, never the text.
                        path: shown.clone(),
                        reason: e.to_string(),
                    })?;
                if hex::decode(&state.key).map(|k| k.len()) != Ok(32) {
                    return Err(SecretError::Corrupt {
                        path: shown,
                        reason: "its key is not 32 bytes of hex".into(),
                    });
                }
                let mode = std::fs::metadata(path)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or(0o600);
                if mode != 0o600 {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|source| SecretError::Write {
                            path: shown.clone(),
                            source,
                        })?;
                }
                state
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut key))
                    .map_err(|source| SecretError::Read {
                        path: "/dev/urandom".into(),
                        source,
                    })?;
                let state = StoreFile {
                    key: hex::encode(key),
                    secrets: BTreeMap::new(),
                };
                write_private(path, &state).map_err(|source| SecretError::Write {
                    path: shown,
                    source,
                })?;
                state
            }
            Err(source) => {
                return Err(SecretError::Read {
                    path: shown,
                    source,
                });
            }
        };
        Ok(SecretStore {
            path: path.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreFile> {
        self.state.lock().expect("secret store lock")
    }

    fn write_error(&self, source: io::Error) -> SecretError {
        SecretError::Write {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Sets `name` to `value`; the file is written before the call returns.
    pub fn set(&self, name: &str, value: &str, who: &str) -> Result<SecretInfo, SecretError> {
        let mut state = self.lock();
        let mut next = state.clone();
        next.secrets.insert(
            name.to_string(),
            Entry {
                value: value.to_string(),
                set_ms: now_ms(),
                set_by: who.to_string(),
            },
        );
        write_private(&self.path, &next).map_err(|e| self.write_error(e))?;
        *state = next;
        Ok(info(&state, name).expect("just set"))
    }

    /// Removes `name`; false when it was not set.
    pub fn remove(&self, name: &str) -> Result<bool, SecretError> {
        let mut state = self.lock();
        if !state.secrets.contains_key(name) {
            return Ok(false);
        }
        let mut next = state.clone();
        next.secrets.remove(name);
        write_private(&self.path, &next).map_err(|e| self.write_error(e))?;
        *state = next;
        Ok(true)
    }

    /// Every secret, by name, without values (`used_by` left empty).
    pub fn list(&self) -> Vec<SecretInfo> {
        let state = self.lock();
        state
            .secrets
            .keys()
            .filter_map(|name| info(&state, name))
            .collect()
    }

    /// The keyed fingerprint of `name`'s value, when it is set.
    pub fn fingerprint(&self, name: &str) -> Option<String> {
        info(&self.lock(), name).map(|i| i.fingerprint)
    }

    /// Fills in each service's `secret_fingerprints` from the store (whatever the request
    /// carried is replaced), or says which secrets are missing and how to set them. Done
    /// before a plan or a deploy looks at the system, so a changed value is a changed
    /// revision and nothing starts without its secrets.
    pub fn seal(&self, system: &mut System) -> Result<(), String> {
        let env = system.env.clone();
        let mut missing = Vec::new();
        for (service_name, service) in system.service.iter_mut() {
            service.secret_fingerprints.clear();
            for name in &service.secrets {
                match self.fingerprint(name) {
                    Some(print) => {
                        service.secret_fingerprints.insert(name.clone(), print);
                    }
                    None => missing.push(format!(
                        "service '{service_name}' needs the secret '{name}', which is not set in {env}\n  hint: set it with `tandem secret set {name} --env {env}` (the value is read from stdin)"
                    )),
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("\n"))
        }
    }
}

impl tandem_engine::SecretValues for SecretStore {
    fn value(&self, name: &str) -> Option<String> {
        self.lock().secrets.get(name).map(|e| e.value.clone())
    }
}

fn info(state: &StoreFile, name: &str) -> Option<SecretInfo> {
    let entry = state.secrets.get(name)?;
    let key = hex::decode(&state.key).unwrap_or_default();
    Some(SecretInfo {
        name: name.to_string(),
        set_ms: entry.set_ms,
        set_by: entry.set_by.clone(),
        fingerprint: tandem_spec::secret_fingerprint(&key, name, &entry.value),
        used_by: Vec::new(),
    })
}

/// Writes `state` to `path`: a temporary file created 0600, written, fsync'd, renamed over
/// `path`, and the folder fsync'd so that the rename itself survives a crash.
fn write_private(path: &Path, state: &StoreFile) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    crate::files::write_atomically(path, &bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_engine::SecretValues;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_file_is_owner_only_atomic_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        let store = SecretStore::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let set = store.set("DB_PASSWORD", "hunter2", "Ada").unwrap();
        assert_eq!(set.set_by, "Ada");
        assert_eq!(mode(&path), 0o600);
        assert!(!path.with_extension("json.tmp").exists());
        // Listing and Debug never show the value.
        let listed = serde_json::to_string(&store.list()).unwrap();
        assert!(listed.contains("DB_PASSWORD") && !listed.contains("hunter2"));
        assert!(!format!("{store:?}").contains("hunter2"));

        // A reopen (a server restart) reads the same value and key.
        drop(store);
        let store = SecretStore::open(&path).unwrap();
        assert_eq!(store.value("DB_PASSWORD").as_deref(), Some("hunter2"));
        assert_eq!(store.fingerprint("DB_PASSWORD"), Some(set.fingerprint));

        // A file someone made readable is owner-only again once opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = SecretStore::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);

        // A temporary file left by a crash (any mode) does not widen the next write.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, "left over").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        store.set("API_KEY", "k", "Ada").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(store.remove("API_KEY").unwrap());
        assert!(!store.remove("API_KEY").unwrap());
        assert_eq!(store.value("API_KEY"), None);
    }

    #[test]
    fn fingerprints_are_keyed_per_environment() {
        let dir = tempfile::tempdir().unwrap();
        let dev = SecretStore::open(&dir.path().join("dev.json")).unwrap();
        let prod = SecretStore::open(&dir.path().join("prod.json")).unwrap();
        dev.set("DB_PASSWORD", "same", "Ada").unwrap();
        prod.set("DB_PASSWORD", "same", "Ada").unwrap();
        let (a, b) = (
            dev.fingerprint("DB_PASSWORD").unwrap(),
            prod.fingerprint("DB_PASSWORD").unwrap(),
        );
        assert_ne!(a, b, "the same value in two environments");
        // And not a bare hash of the value.
        use sha2_free_check::bare_hex;
        assert!(!a.contains(&bare_hex("same")[..16]));
        dev.set("DB_PASSWORD", "other", "Ada").unwrap();
        assert_ne!(dev.fingerprint("DB_PASSWORD").unwrap(), a);
    }

    #[test]
    fn a_corrupt_store_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        let text = "{\"key\": \"zz\", \"secrets\": {}}";
        std::fs::write(&path, text).unwrap();
        let error = SecretStore::open(&path).unwrap_err().to_string();
        assert!(error.contains("secrets.json is not valid"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn seal_fills_fingerprints_or_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SecretStore::open(&dir.path().join("secrets.json")).unwrap();
        let file = "[service.api]\nrun = \"./api\"\nsecrets = [\"DB_PASSWORD\"]\n";
        let mut system = tandem_spec::resolve("tandem.toml", file, dir.path(), "dev").unwrap();
        let error = store.seal(&mut system).unwrap_err();
        assert!(
            error.contains("service 'api' needs the secret 'DB_PASSWORD', which is not set in dev")
                && error.contains("tandem secret set DB_PASSWORD --env dev"),
            "{error}"
        );
        store.set("DB_PASSWORD", "hunter2", "Ada").unwrap();
        store.seal(&mut system).unwrap();
        let json = serde_json::to_string(&system).unwrap();
        assert!(json.contains("hmac-sha256:") && !json.contains("hunter2"));
    }

    /// The SHA-256 of a value, to show a fingerprint is not it (without a sha2 dependency
    /// here: `sha256sum` is on every test machine).
    mod sha2_free_check {
        pub(super) fn bare_hex(value: &str) -> String {
            use std::io::Write;
            let mut child = std::process::Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("sha256sum");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(value.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout)[..64].to_string()
        }
    }
}
