//! Silences: Alertmanager's way to mute a known problem (a maintenance, an incident being
//! worked on) for a while. A silence is a set of matchers and a time window; a firing alert
//! whose labels satisfy every matcher of an active silence is not notified to webhook
//! receivers (the workers ask [`Silences::active`] at every flush). Alertmanager receivers
//! get every alert: Alertmanager applies its own silences.
//!
//! This store owns the silences of one environment: creating and expiring them (each a
//! timeline event with who and the matchers, and so is a silence whose time is up), and
//! keeping them in `silences.json` in the data directory, written whole after every change
//! (temporary file, fsync, rename, fsync of the folder, as the notification log), so a
//! restarted server mutes what it muted before. Expired silences are kept [`RETENTION`]
//! (Alertmanager's default) so that `tandem alerts silences --all` can show what was
//! silenced last week, then dropped. A file that cannot be read does not stop the server:
//! the problem is reported, the file is kept aside, and the store starts empty.

use super::Clock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_api::{Event, EventKind, EventSink, Silence, SilenceRequest, SilenceState};
use tandem_spec::Matcher;
use tokio::sync::Notify;

/// How long an expired silence is kept (Alertmanager's `--data.retention` default).
pub(crate) const RETENTION: Duration = Duration::from_secs(5 * 24 * 3600);

/// The format of the file; a file of another version is unreadable.
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SilenceFile {
    version: u32,
    silences: Vec<Silence>,
}

/// Why a silence cannot be created or expired. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SilenceError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "no silence has the id '{0}'\n  hint: `tandem alerts silences --all` lists the silences and their ids"
    )]
    NotFound(String),
    #[error(
        "'{prefix}' is the start of more than one silence id ({})\n  hint: give more of the id",
        ids.join(", ")
    )]
    Ambiguous { prefix: String, ids: Vec<String> },
    #[error(
        "silence '{id}' has already expired (at {at})\n  hint: `tandem alerts silences` lists the ones that are active or pending"
    )]
    AlreadyExpired { id: String, at: String },
    #[error("the silences cannot be written to {path}: {reason}; nothing was changed")]
    Write { path: String, reason: String },
}

/// The silences of one environment.
pub(crate) struct Silences {
    env: String,
    sink: Arc<dyn EventSink>,
    /// `None` keeps them in memory only (tests).
    file: Option<PathBuf>,
    clock: Clock,
    inner: Mutex<Inner>,
    /// Woken on every change, for the task that announces ends ([`Silences::watch_ends`]).
    changed: Notify,
    /// Writing the file failed last time (logged once until it works again).
    write_failing: AtomicBool,
}

#[derive(Default)]
struct Inner {
    list: Vec<Silence>,
    /// Expired silences whose end is already on the timeline (or was before this start).
    told_ended: BTreeSet<String>,
}

impl Silences {
    /// The store of `file` (read now; a file that cannot be used is reported and set
    /// aside), or an in-memory one.
    pub(super) fn open(
        env: &str,
        sink: Arc<dyn EventSink>,
        file: Option<PathBuf>,
        clock: Clock,
    ) -> Arc<Silences> {
        let silences = Silences {
            env: env.to_string(),
            sink,
            file,
            clock,
            inner: Mutex::default(),
            changed: Notify::new(),
            write_failing: AtomicBool::new(false),
        };
        if let Some(path) = &silences.file {
            match read(path) {
                Ok(list) => {
                    let now = clock.now_ms();
                    let mut inner = silences.inner.lock().expect("silences lock");
                    inner.told_ended = list
                        .iter()
                        .filter(|s| s.state(now) == SilenceState::Expired)
                        .map(|s| s.id.clone())
                        .collect();
                    inner.list = list;
                    if gc(&mut inner, now) {
                        silences.write(&inner.list).ok();
                    }
                }
                Err(reason) => {
                    let aside = path.with_extension("json.unreadable");
                    let kept = match std::fs::rename(path, &aside) {
                        Ok(()) => format!(" (it is kept as {})", aside.display()),
                        Err(_) => String::new(),
                    };
                    silences.emit(
                        EventKind::NotificationFailed,
                        None,
                        format!(
                            "the silences file {} cannot be used: {reason}{kept}; tandem starts without silences, so alerts they muted are notified again; create them again with `tandem alerts silence`",
                            path.display()
                        ),
                    );
                }
            }
        }
        Arc::new(silences)
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Every silence kept (expired ones for [`RETENTION`]), active ones first (ending
    /// soonest first), then pending (starting soonest first), then expired (newest first),
    /// as Alertmanager lists them.
    pub(crate) fn list(&self) -> Vec<Silence> {
        let now = self.now_ms();
        let mut inner = self.inner.lock().expect("silences lock");
        if gc(&mut inner, now) {
            let _ = self.write(&inner.list);
        }
        let mut list = inner.list.clone();
        drop(inner);
        list.sort_by_key(|s| match s.state(now) {
            SilenceState::Active => (0, s.ends_at_ms),
            SilenceState::Pending => (1, s.starts_at_ms),
            SilenceState::Expired => (2, -s.ends_at_ms),
        });
        list
    }

    /// The silences active at `now_ms`.
    pub(crate) fn active(&self, now_ms: i64) -> Vec<Silence> {
        self.inner
            .lock()
            .expect("silences lock")
            .list
            .iter()
            .filter(|s| s.state(now_ms) == SilenceState::Active)
            .cloned()
            .collect()
    }

    /// The ids of the silences that mute an alert with `labels` now.
    pub(crate) fn muting(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        let now = self.now_ms();
        self.inner
            .lock()
            .expect("silences lock")
            .list
            .iter()
            .filter(|s| s.mutes(labels, now))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Checks and stores a new silence, and puts it on the timeline.
    pub(crate) fn create(&self, request: SilenceRequest) -> Result<Silence, SilenceError> {
        let now = self.now_ms();
        let silence = validate(request, now)?;
        let mut inner = self.inner.lock().expect("silences lock");
        gc(&mut inner, now);
        let mut list = inner.list.clone();
        list.push(silence.clone());
        self.write(&list)?;
        inner.list = list;
        drop(inner);
        let when = if silence.starts_at_ms > now {
            format!(
                "from {} until {}",
                rfc3339(silence.starts_at_ms),
                rfc3339(silence.ends_at_ms)
            )
        } else {
            format!(
                "until {} ({})",
                rfc3339(silence.ends_at_ms),
                humantime::format_duration(round_to_seconds(silence.ends_at_ms - now))
            )
        };
        self.emit(
            EventKind::SilenceCreated,
            Some(silence.created_by.clone()),
            format!(
                "silence {} mutes notifications of alerts matching {} {when}: {}",
                silence.id,
                silence.matchers_text(),
                silence.comment
            ),
        );
        self.changed.notify_one();
        Ok(silence)
    }

    /// Ends the silence whose id is `id` (or starts with it, when only one does) now, as
    /// Alertmanager expires one: an active silence ends now, a pending one never starts.
    pub(crate) fn expire(&self, id: &str, who: &str) -> Result<Silence, SilenceError> {
        let now = self.now_ms();
        let mut inner = self.inner.lock().expect("silences lock");
        gc(&mut inner, now);
        let index = find(&inner.list, id)?;
        let mut list = inner.list.clone();
        let silence = &mut list[index];
        if silence.state(now) == SilenceState::Expired {
            return Err(SilenceError::AlreadyExpired {
                id: silence.id.clone(),
                at: rfc3339(silence.ends_at_ms),
            });
        }
        if silence.starts_at_ms > now {
            silence.starts_at_ms = now;
        }
        silence.ends_at_ms = now;
        silence.updated_at_ms = now;
        let silence = silence.clone();
        self.write(&list)?;
        inner.list = list;
        inner.told_ended.insert(silence.id.clone());
        drop(inner);
        self.emit(
            EventKind::SilenceExpired,
            Some(who.to_string()),
            format!(
                "silence {} of alerts matching {} was expired; alerts it muted are notified again",
                silence.id,
                silence.matchers_text()
            ),
        );
        self.changed.notify_one();
        Ok(silence)
    }

    /// Puts silences whose time ran out on the timeline, once each; returns when the next
    /// one ends (or starts: nothing to say then, but a pending silence may end later).
    fn announce_ended(&self) -> Option<i64> {
        let now = self.now_ms();
        let mut inner = self.inner.lock().expect("silences lock");
        let ended: Vec<Silence> = inner
            .list
            .iter()
            .filter(|s| s.state(now) == SilenceState::Expired && !inner.told_ended.contains(&s.id))
            .cloned()
            .collect();
        for s in &ended {
            inner.told_ended.insert(s.id.clone());
        }
        let next = inner
            .list
            .iter()
            .filter(|s| s.state(now) != SilenceState::Expired)
            .map(|s| s.ends_at_ms)
            .min();
        drop(inner);
        for s in ended {
            self.emit(
                EventKind::SilenceExpired,
                None,
                format!(
                    "silence {} of alerts matching {} ended at {}; alerts it muted are notified again",
                    s.id,
                    s.matchers_text(),
                    rfc3339(s.ends_at_ms)
                ),
            );
        }
        next
    }

    /// Announces each silence's end when its time is up, until aborted.
    pub(super) async fn watch_ends(self: Arc<Self>) {
        loop {
            let next = self.announce_ended();
            match next {
                Some(at) => {
                    let wait =
                        Duration::from_millis(u64::try_from(at - self.now_ms()).unwrap_or(0));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }

    fn emit(&self, kind: EventKind, who: Option<String>, message: String) {
        self.sink.emit(Event {
            time_ms: tandem_api::now_ms(),
            env: self.env.clone(),
            kind,
            service: None,
            instance: None,
            revision: None,
            who,
            message,
        });
    }

    /// Writes `list` as the file, atomically and durably (nothing to do in memory).
    fn write(&self, list: &[Silence]) -> Result<(), SilenceError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        match write(path, list) {
            Ok(()) => {
                self.write_failing.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                // tandem cannot write its data directory: its own error, logged once.
                if !self.write_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!("cannot write the silences to {}: {e}", path.display());
                }
                Err(SilenceError::Write {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// Drops silences expired longer than [`RETENTION`] ago; true when it dropped one.
fn gc(inner: &mut Inner, now_ms: i64) -> bool {
    let keep_after = now_ms - RETENTION.as_millis() as i64;
    let before = inner.list.len();
    inner.list.retain(|s| s.ends_at_ms > keep_after);
    let Inner { list, told_ended } = inner;
    told_ended.retain(|id| list.iter().any(|s| &s.id == id));
    inner.list.len() != before
}

/// The index of the silence `id` names: its whole id, or the start of exactly one.
fn find(list: &[Silence], id: &str) -> Result<usize, SilenceError> {
    let id = id.trim();
    if let Some(i) = list.iter().position(|s| s.id == id) {
        return Ok(i);
    }
    let starting: Vec<usize> = (0..list.len())
        .filter(|&i| !id.is_empty() && list[i].id.starts_with(id))
        .collect();
    match starting.as_slice() {
        [i] => Ok(*i),
        [] => Err(SilenceError::NotFound(id.to_string())),
        many => Err(SilenceError::Ambiguous {
            prefix: id.to_string(),
            ids: many.iter().map(|&i| list[i].id.clone()).collect(),
        }),
    }
}

/// A new silence from `request` at `now_ms`, or every reason it cannot be one.
pub(crate) fn validate(request: SilenceRequest, now_ms: i64) -> Result<Silence, SilenceError> {
    let mut problems = Vec::new();
    let mut matchers = Vec::new();
    if request.matchers.is_empty() {
        problems.push(
            "a silence needs at least one matcher\n  hint: name what to mute, as in alertname=ApiDown or service=~\"api|web\"".to_string(),
        );
    }
    for text in &request.matchers {
        match Matcher::parse(text) {
            Ok(m) => matchers.push(m),
            Err(e) => problems.push(format!("{}\n  hint: {}", e.message, e.hint)),
        }
    }
    let empty = BTreeMap::new();
    if !matchers.is_empty()
        && matchers.len() == request.matchers.len()
        && matchers.iter().all(|m| m.matches(&empty))
    {
        let texts: Vec<String> = matchers.iter().map(|m| m.to_string()).collect();
        problems.push(format!(
            "the matchers {{{}}} also match an alert that has none of their labels, so the silence would mute alerts it does not name\n  hint: add a matcher that an alert's label must satisfy, as in alertname=ApiDown (Alertmanager has the same rule)",
            texts.join(", ")
        ));
    }
    if request.comment.trim().is_empty() {
        problems.push(
            "a silence needs a comment saying why\n  hint: add --comment \"...\", as in --comment \"db maintenance, ticket 123\"".to_string(),
        );
    }
    if request.created_by.trim().is_empty() {
        problems.push("a silence needs an author\n  hint: add --author NAME".to_string());
    }
    let starts_at_ms = request.starts_at_ms.unwrap_or(now_ms).max(now_ms);
    let ends_at_ms = match (request.ends_at_ms, request.duration_ms) {
        (Some(_), Some(_)) => {
            problems.push(
                "a silence has either an end or a duration, not both\n  hint: use --for or --until"
                    .to_string(),
            );
            None
        }
        (Some(end), None) => Some(end),
        (None, Some(0)) => {
            problems.push(
                "a silence's duration must be more than 0\n  hint: write a duration such as 30m, 2h or 1d".to_string(),
            );
            None
        }
        (None, Some(d)) => Some(starts_at_ms.saturating_add(i64::try_from(d).unwrap_or(i64::MAX))),
        (None, None) => {
            problems.push(
                "a silence needs an end\n  hint: give --for 2h, or --until with an RFC 3339 time such as 2026-11-26T18:00:00Z".to_string(),
            );
            None
        }
    };
    if let Some(end) = ends_at_ms {
        if end <= now_ms {
            problems.push(format!(
                "the silence would end at {}, which is not in the future (now is {})\n  hint: give --until a later time, or use --for 2h",
                rfc3339(end),
                rfc3339(now_ms)
            ));
        } else if end <= starts_at_ms {
            problems.push(format!(
                "the silence would end at {} before it starts at {}\n  hint: give --until a time after --start",
                rfc3339(end),
                rfc3339(starts_at_ms)
            ));
        }
    }
    if !problems.is_empty() {
        return Err(SilenceError::Invalid(problems.join("\n")));
    }
    Ok(Silence {
        id: new_id(),
        matchers,
        starts_at_ms,
        ends_at_ms: ends_at_ms.unwrap_or(starts_at_ms),
        updated_at_ms: now_ms,
        created_by: request.created_by.trim().to_string(),
        comment: request.comment.trim().to_string(),
    })
}

/// A random UUID (version 4), as Alertmanager's silence ids are.
fn new_id() -> String {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

pub(crate) fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn round_to_seconds(ms: i64) -> Duration {
    Duration::from_secs(u64::try_from((ms + 500) / 1000).unwrap_or(0))
}

/// Reads the file: no file is no silences; `Err(reason)` when it cannot be used.
fn read(path: &Path) -> Result<Vec<Silence>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let file: SilenceFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!(
            "it is of version {}, this tandem reads version {VERSION}",
            file.version
        ));
    }
    Ok(file.silences)
}

fn write(path: &Path, list: &[Silence]) -> std::io::Result<()> {
    let file = SilenceFile {
        version: VERSION,
        silences: list.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    crate::files::write_atomically(path, &bytes, 0o600)
}
