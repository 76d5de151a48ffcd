//! The notification log of webhook receivers: per receiver and group, what was last
//! notified (the alerts told firing, with what it takes to resolve them later, the ones told
//! resolved, when, and a hash of them), kept in `notifications/` in the data directory.
//! It is Alertmanager's `nflog`, for the same reasons: a restarted server does not repeat a
//! notification before `repeat_interval`, and it still tells the resolution of an alert that
//! ended while it was down.
//!
//! One JSON file per receiver, written whole after every delivered notification (a
//! temporary file, fsync, rename, fsync of the folder), so a crash leaves the old log or the
//! new one, never half of one. A file that cannot be read or parsed costs duplicates, not
//! the server: the receiver starts empty (the caller says so once).

use super::payload::{Labels, Observed, fingerprint};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The format of the files; a file of another version is read as unreadable.
const VERSION: u32 = 1;

/// One receiver's log, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReceiverLog {
    pub(crate) version: u32,
    pub(crate) receiver: String,
    /// The `group_by` the groups were made with; under another one they mean nothing.
    pub(crate) group_by: Vec<String>,
    pub(crate) groups: Vec<GroupLog>,
}

/// The last notification delivered for one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupLog {
    pub(crate) group_labels: Labels,
    /// When it was delivered, in milliseconds since the epoch.
    pub(crate) notified_at_ms: i64,
    /// The alerts it told firing.
    pub(crate) firing: Vec<LoggedAlert>,
    /// The labels of the alerts it told resolved.
    pub(crate) resolved: Vec<Labels>,
    /// [`alerts_hash`] of `firing` and `resolved`: an entry whose hash does not match was
    /// not written by tandem whole, and the file is not trusted.
    pub(crate) hash: String,
}

/// A firing alert as notified, and the rule group that reported it (so it resolves when
/// that group is gone).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoggedAlert {
    pub(crate) source: String,
    pub(crate) labels: Labels,
    #[serde(default)]
    pub(crate) annotations: Labels,
    pub(crate) starts_at_ms: i64,
    #[serde(default)]
    pub(crate) generator_url: String,
}

impl LoggedAlert {
    pub(crate) fn new(source: &str, alert: &Observed) -> LoggedAlert {
        LoggedAlert {
            source: source.to_string(),
            labels: alert.labels.clone(),
            annotations: alert.annotations.clone(),
            starts_at_ms: alert.starts_at_ms,
            generator_url: alert.generator_url.clone(),
        }
    }

    /// The alert, firing.
    pub(crate) fn observed(&self) -> Observed {
        Observed {
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            starts_at_ms: self.starts_at_ms,
            resolved_at_ms: None,
            generator_url: self.generator_url.clone(),
        }
    }
}

impl GroupLog {
    pub(crate) fn new(
        group_labels: &Labels,
        notified_at_ms: i64,
        firing: Vec<LoggedAlert>,
        resolved: Vec<Labels>,
    ) -> GroupLog {
        let hash = alerts_hash(firing.iter().map(|a| &a.labels), resolved.iter());
        GroupLog {
            group_labels: group_labels.clone(),
            notified_at_ms,
            firing,
            resolved,
            hash,
        }
    }
}

/// FNV-1a 64 over the sorted fingerprints of the firing alerts, then of the resolved ones.
pub(crate) fn alerts_hash<'a>(
    firing: impl Iterator<Item = &'a Labels>,
    resolved: impl Iterator<Item = &'a Labels>,
) -> String {
    let firing: BTreeSet<String> = firing.map(fingerprint).collect();
    let resolved: BTreeSet<String> = resolved.map(fingerprint).collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (tag, set) in [(b"f", &firing), (b"r", &resolved)] {
        for fp in set {
            add(tag);
            add(fp.as_bytes());
            add(&[0xff]);
        }
    }
    format!("{hash:016x}")
}

/// The file of receiver `name` in `dir`: the name itself when it is a plain file name,
/// else a cleaned-up name with a hash of the real one, so two names never share a file.
pub(crate) fn file_for(dir: &Path, name: &str) -> PathBuf {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        return dir.join(format!("{name}.json"));
    }
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(64)
        .collect();
    let mut labels = Labels::new();
    labels.insert("receiver".to_string(), name.to_string());
    dir.join(format!("{cleaned}-{}.json", fingerprint(&labels)))
}

/// Reads a log: `Ok(None)` when there is none, `Err(reason)` when it cannot be used.
pub(crate) fn read(path: &Path, receiver: &str) -> Result<Option<ReceiverLog>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let log: ReceiverLog = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if log.version != VERSION {
        return Err(format!(
            "it is of version {}, this tandem reads version {VERSION}",
            log.version
        ));
    }
    if log.receiver != receiver {
        return Err(format!("it belongs to receiver '{}'", log.receiver));
    }
    if let Some(bad) = log
        .groups
        .iter()
        .find(|g| g.hash != alerts_hash(g.firing.iter().map(|a| &a.labels), g.resolved.iter()))
    {
        return Err(format!(
            "the entry of group {} does not match its hash",
            super::payload::label_text(&bad.group_labels)
        ));
    }
    Ok(Some(log))
}

/// Writes `groups` as receiver `receiver`'s log, atomically and durably.
pub(crate) fn write(
    path: &Path,
    receiver: &str,
    group_by: &[String],
    groups: Vec<GroupLog>,
) -> std::io::Result<()> {
    let log = ReceiverLog {
        version: VERSION,
        receiver: receiver.to_string(),
        group_by: group_by.to_vec(),
        groups,
    };
    let bytes = serde_json::to_vec_pretty(&log).map_err(std::io::Error::other)?;
    crate::files::write_atomically(path, &bytes, 0o600)
}

/// Removes the logs in `dir` of receivers other than `keep` (by file), and temporary files
/// left by a crash.
pub(crate) fn retain(dir: &Path, keep: &BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".json") || n.ends_with(".json.tmp"));
        if ours && !keep.contains(&path) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_log_reads_back_as_written_and_a_tampered_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_for(dir.path(), "ops");
        assert_eq!(path, dir.path().join("ops.json"));
        let alert = Observed {
            labels: labels(&[("alertname", "Down"), ("instance", "a")]),
            annotations: labels(&[("summary", "a is down")]),
            starts_at_ms: 5,
            resolved_at_ms: None,
            generator_url: "http://x/q".into(),
        };
        let group = GroupLog::new(
            &labels(&[("alertname", "Down")]),
            1_000,
            vec![LoggedAlert::new("g", &alert)],
            vec![labels(&[("alertname", "Down"), ("instance", "b")])],
        );
        write(&path, "ops", &["alertname".into()], vec![group.clone()]).unwrap();
        let log = read(&path, "ops").unwrap().unwrap();
        assert_eq!(log.groups, std::slice::from_ref(&group));
        assert_eq!(log.groups[0].firing[0].observed(), alert);
        assert!(!dir.path().join("ops.json.tmp").exists());

        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"b\"", "\"c\"");
        std::fs::write(&path, text).unwrap();
        let err = read(&path, "ops").unwrap_err();
        assert!(err.contains("does not match its hash"), "{err}");
        assert!(
            read(&dir.path().join("none.json"), "none")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn every_receiver_name_has_its_own_file() {
        let dir = Path::new("/d");
        let a = file_for(dir, "a b");
        let b = file_for(dir, "a_b");
        let c = file_for(dir, "a/b");
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.parent(), Some(dir));
        assert_eq!(c.parent(), Some(dir), "no way out of the folder");
        assert!(file_for(dir, "..").starts_with(dir));
    }
}
