//! Each remote-write target's durable watermark: the sample time up to which the target has
//! accepted (or refused for good) everything the store holds, kept in one small JSON file per
//! target under `<data dir>/remote-write/`. A restarted server reads it to send what the
//! target missed from the store, so a stop, a crash or an outage shorter than the store's
//! retention loses nothing.
//!
//! The file is named after the target's URL without credentials, query or fragment, plus a
//! hash of the URL without credentials (so two targets never share a file), and it holds that
//! cleaned URL for people who look. A `user:password@` part, and tokens in a query string,
//! never reach the disk. Writes go to a temporary file that is synced and renamed, and the
//! folder is synced after, so a crash leaves the old watermark or the new one.

use std::path::{Path, PathBuf};

/// The format of the files; any other version is read as unreadable.
const VERSION: u32 = 1;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct File {
    version: u32,
    /// The target, without credentials, query or fragment.
    url: String,
    /// Every sample stored at or before this time (ms since the epoch) was accepted by the
    /// target, or refused by it for good.
    acked_through_ms: i64,
}

/// The URL as it may be shown or written: no `user:password@`, no query, no fragment.
pub(super) fn shown(redacted_url: &str) -> &str {
    let end = redacted_url.find(['?', '#']).unwrap_or(redacted_url.len());
    &redacted_url[..end]
}

/// The watermark file of the target at `redacted_url` (credentials already removed) in `dir`.
pub(super) fn file_for(dir: &Path, redacted_url: &str) -> PathBuf {
    let plain = shown(redacted_url)
        .split_once("://")
        .map_or(shown(redacted_url), |(_, rest)| rest);
    let cleaned: String = plain
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect();
    dir.join(format!(
        "{cleaned}-{:016x}.json",
        fnv1a(redacted_url.as_bytes())
    ))
}

/// FNV-1a, written out because the file name must not change between builds (the standard
/// library's hashers make no such promise).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Reads a watermark: `Ok(None)` when there is no file (a new target), `Err(reason)` when
/// there is one that cannot be used.
pub(super) fn read(path: &Path) -> Result<Option<i64>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let file: File = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!(
            "it is of version {}, this tandem reads version {VERSION}",
            file.version
        ));
    }
    Ok(Some(file.acked_through_ms))
}

/// Writes a watermark, atomically and durably.
pub(super) fn write(path: &Path, redacted_url: &str, acked_through_ms: i64) -> std::io::Result<()> {
    let file = File {
        version: VERSION,
        url: shown(redacted_url).to_string(),
        acked_through_ms,
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    crate::files::write_atomically(path, &bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_distinct_and_free_of_secrets() {
        let dir = Path::new("/data/remote-write");
        let a = file_for(dir, "http://127.0.0.1:9090/api/v1/write");
        assert_eq!(
            a,
            dir.join("127_0_0_1_9090_api_v1_write-7f3749b68686662b.json")
        );
        let b = file_for(dir, "http://127.0.0.1:9090/api/v1/write?tenant=a");
        let c = file_for(dir, "http://127.0.0.1:9090/api/v1/write?tenant=b");
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert!(!b.to_string_lossy().contains("tenant"));
        assert_eq!(file_for(dir, "http://../../x").parent(), Some(dir));
    }

    #[test]
    fn a_watermark_survives_a_write_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("t.json");
        assert_eq!(read(&path), Ok(None));
        write(&path, "http://x/write?token=secret", 42).unwrap();
        assert_eq!(read(&path), Ok(Some(42)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("secret"), "{text}");
        std::fs::write(&path, "{not json").unwrap();
        assert!(read(&path).is_err());
    }
}
