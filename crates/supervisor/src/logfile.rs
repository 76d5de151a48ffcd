//! An instance's log: one text file of timestamped lines from the service's stdout and
//! stderr, rotated by size, plus the readers `tandem logs` needs (read everything, follow
//! the live file across rotations, merge several instances by time).
//!
//! Each line is `2026-11-26T06:31:16.123Z out <text>` (or `err`): UTC with milliseconds, so
//! lines sort as text and several instances merge by time. One file per instance rather
//! than one per stream keeps the interleaving the service produced. Rotation renames
//! `path` to `path.1`, `path.1` to `path.2`, ..., keeping `max_files` rotated files, so a
//! reader holding the old file keeps reading it while the writer starts a new one.

use crate::launch::LogSettings;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest text one log line carries; longer lines are split into several. This bounds the
/// memory a reader needs per line whatever the service writes.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Which output stream of the service a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Out,
    Err,
}

impl Stream {
    /// The word written in the file: `out` or `err`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
        }
    }
}

/// One parsed log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the epoch.
    pub time_ms: i64,
    pub stream: Stream,
    pub text: String,
}

// === impl RotatingLog ===

/// The writing side: appends lines to the current file and rotates it by size. A
/// `max_bytes` of 0 never rotates; a `max_files` of 0 keeps no rotated file (the current
/// one starts over). Not synchronised: the shim shares one behind a mutex.
#[derive(Debug)]
pub struct RotatingLog {
    settings: LogSettings,
    file: File,
    size: u64,
}

impl RotatingLog {
    /// Opens (creating it and its folder when missing) the current file for appending.
    pub fn open(settings: &LogSettings) -> io::Result<Self> {
        if let Some(parent) = settings.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let file = open_append(&settings.path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            settings: settings.clone(),
            file,
            size,
        })
    }

    /// Appends `line` (without its newline) stamped with the current time.
    pub fn write_line(&mut self, stream: Stream, line: &[u8]) -> io::Result<()> {
        self.write_line_at(SystemTime::now(), stream, line)
    }

    /// Appends `line` stamped with `at`. Invalid UTF-8 is replaced (the file stays text),
    /// a trailing `\r` is dropped, an embedded `\n` starts a new record, and text longer
    /// than [`MAX_LINE_BYTES`] is split into several records.
    pub fn write_line_at(&mut self, at: SystemTime, stream: Stream, line: &[u8]) -> io::Result<()> {
        let stamp = humantime::format_rfc3339_millis(at).to_string();
        let text = String::from_utf8_lossy(line);
        for part in text.split('\n') {
            let part = part.strip_suffix('\r').unwrap_or(part);
            for chunk in split_at_char_boundaries(part, MAX_LINE_BYTES) {
                let record = format!("{stamp} {} {chunk}\n", stream.as_str());
                self.append(record.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Where the current file is.
    pub fn path(&self) -> &Path {
        &self.settings.path
    }

    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        let len = record.len() as u64;
        // A record never straddles two files, and a record larger than the whole budget
        // still goes into a file of its own rather than being dropped.
        if self.settings.max_bytes > 0 && self.size > 0 && self.size + len > self.settings.max_bytes
        {
            self.rotate()?;
        }
        self.file.write_all(record)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        rotate_files(&self.settings.path, self.settings.max_files)?;
        self.file = open_append(&self.settings.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Moves `path` to `path.1`, `path.1` to `path.2`, ..., keeping `keep` rotated files (none:
/// `path` is removed). The caller opens a new `path`. Also used for the server's own log.
pub fn rotate_files(path: &Path, keep: u32) -> io::Result<()> {
    // Files past the budget (left over from a larger `max_files`) go first.
    let mut n = keep + 1;
    while rotated_path(path, n).exists() {
        remove_if_present(&rotated_path(path, n))?;
        n += 1;
    }
    if keep == 0 {
        remove_if_present(path)?;
    } else {
        for n in (1..keep).rev() {
            let from = rotated_path(path, n);
            if from.exists() {
                fs::rename(&from, rotated_path(path, n + 1))?;
            }
        }
        fs::rename(path, rotated_path(path, 1))?;
    }
    Ok(())
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `path.N`: the N-th most recent rotated file.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn split_at_char_boundaries(text: &str, max: usize) -> Vec<&str> {
    if text.len() <= max {
        return vec![text];
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    if !rest.is_empty() {
        parts.push(rest);
    }
    parts
}

// === reading ===

/// Parses one line of a log file (without its newline); `None` when it is not one.
pub fn parse_line(line: &str) -> Option<LogLine> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let (stamp, rest) = line.split_once(' ')?;
    let (word, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let stream = match word {
        "out" => Stream::Out,
        "err" => Stream::Err,
        _ => return None,
    };
    let time = humantime::parse_rfc3339(stamp).ok()?;
    Some(LogLine {
        time_ms: epoch_ms(time),
        stream,
        text: text.to_owned(),
    })
}

fn epoch_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Converts milliseconds since the epoch back to a time, for writing lines at a given time.
pub fn time_from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// Every line of an instance's log: the rotated files oldest first, then the current one.
/// Missing files are skipped (an instance that never wrote has no log yet), and lines that
/// do not parse are left out.
pub fn read_all(path: &Path) -> io::Result<Vec<LogLine>> {
    let mut files = Vec::new();
    let mut n = 1;
    while rotated_path(path, n).exists() {
        files.push(rotated_path(path, n));
        n += 1;
    }
    files.reverse();
    files.push(path.to_path_buf());
    let mut lines = Vec::new();
    for file in files {
        match fs::read(&file) {
            Ok(bytes) => lines.extend(parse_lines(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
        }
    }
    Ok(lines)
}

fn parse_lines(bytes: &[u8]) -> impl Iterator<Item = LogLine> + '_ {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| parse_line(&String::from_utf8_lossy(l)))
}

/// Merges the lines of several sources (one per instance, each already in time order) into
/// one sequence by time. The merge is stable: each source keeps its own order even where
/// its clock stepped back, and equal times keep the order the sources were given in.
pub fn merge(sources: Vec<(String, Vec<LogLine>)>) -> Vec<(String, LogLine)> {
    let total = sources.iter().map(|(_, lines)| lines.len()).sum();
    let mut iters: Vec<(String, std::iter::Peekable<std::vec::IntoIter<LogLine>>)> = sources
        .into_iter()
        .map(|(prefix, lines)| (prefix, lines.into_iter().peekable()))
        .collect();
    let mut heads: BinaryHeap<Reverse<(i64, usize)>> = iters
        .iter_mut()
        .enumerate()
        .filter_map(|(i, (_, it))| it.peek().map(|l| Reverse((l.time_ms, i))))
        .collect();
    let mut out = Vec::with_capacity(total);
    while let Some(Reverse((_, i))) = heads.pop() {
        let (prefix, it) = &mut iters[i];
        if let Some(line) = it.next() {
            out.push((prefix.clone(), line));
        }
        if let Some(next) = it.peek() {
            heads.push(Reverse((next.time_ms, i)));
        }
    }
    out
}

// === impl LogFollower ===

/// Follows an instance's current log file by path, as `tail -F` does: it keeps reading the
/// file it has open until the writer rotates it away, then moves to the new file, so no
/// line is lost across a rotation (or several, as long as the file it held is still among
/// the rotated ones). A file that shrinks is taken as truncated and read from its start.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    /// The open file and its inode, `None` until the path exists.
    file: Option<(File, u64)>,
    offset: u64,
    /// Bytes after the last newline, waiting for the rest of their line.
    partial: Vec<u8>,
}

impl LogFollower {
    /// Starts at byte `offset` of the current file (0 reads it from the start).
    pub fn new(path: &Path, offset: u64) -> Self {
        LogFollower {
            path: path.to_path_buf(),
            file: None,
            offset,
            partial: Vec::new(),
        }
    }

    /// Starts at the current end of the file: only lines written from now on.
    pub fn from_end(path: &Path) -> Self {
        let offset = fs::metadata(path).map_or(0, |m| m.len());
        Self::new(path, offset)
    }

    /// Byte offset reached in the file being followed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Returns the complete lines written since the last call.
    pub fn poll(&mut self) -> io::Result<Vec<LogLine>> {
        let mut bytes = Vec::new();
        // Look at the path *before* draining the open file: a writer renames only after its
        // last write to the old file, so if the path already names another file, everything
        // in the old one is there to be read now.
        let current = match fs::metadata(&self.path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        // A file opened just now is the current one by definition (the metadata above may
        // predate a rotation that happened before the open).
        let mut just_opened = false;
        if self.file.is_none() {
            if current.is_none() {
                return Ok(Vec::new());
            }
            self.open_current(self.offset)?;
            just_opened = true;
        }
        let Some((file, inode)) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        let inode = *inode;
        let len = file.metadata()?.len();
        if len < self.offset {
            // Truncated in place: start over at its beginning.
            self.offset = 0;
            self.partial.clear();
        }
        self.offset += read_from(file, self.offset, &mut bytes)?;
        if !just_opened && current.is_some_and(|m| m.ino() != inode) {
            // Rotated. Files rotated out after ours (we missed them between polls) sit
            // between ours and the current one: read them whole, oldest first.
            for missed in self.missed_rotations(inode) {
                if let Ok(mut f) = File::open(&missed) {
                    read_from(&mut f, 0, &mut bytes)?;
                }
            }
            self.open_current(0)?;
            if let Some((file, _)) = self.file.as_mut() {
                self.offset = read_from(file, 0, &mut bytes)?;
            }
        }
        Ok(self.take_lines(bytes))
    }

    fn open_current(&mut self, offset: u64) -> io::Result<()> {
        match File::open(&self.path) {
            Ok(file) => {
                let inode = file.metadata()?.ino();
                self.file = Some((file, inode));
                self.offset = offset;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.file = None;
                self.offset = 0;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The rotated files newer than the one with `inode`, oldest first; empty when that
    /// file is `path.1` or no longer among the rotated files (deleted: nothing to recover).
    fn missed_rotations(&self, inode: u64) -> Vec<PathBuf> {
        let mut newer = Vec::new();
        let mut n = 1;
        loop {
            let path = rotated_path(&self.path, n);
            match fs::metadata(&path) {
                Ok(meta) if meta.ino() == inode => {
                    newer.reverse();
                    return newer;
                }
                Ok(_) => newer.push(path),
                Err(_) => return Vec::new(),
            }
            n += 1;
        }
    }

    fn take_lines(&mut self, bytes: Vec<u8>) -> Vec<LogLine> {
        let mut data = std::mem::take(&mut self.partial);
        data.extend_from_slice(&bytes);
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.partial = data.split_off(complete);
        parse_lines(&data).collect()
    }
}

fn read_from(file: &mut File, offset: u64, into: &mut Vec<u8>) -> io::Result<u64> {
    file.seek(SeekFrom::Start(offset))?;
    let read = file.read_to_end(into)?;
    Ok(read as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_it_writes() {
        let line = parse_line("2026-11-26T06:31:16.123Z err boom: it  broke ").expect("parses");
        assert_eq!(line.stream, Stream::Err);
        assert_eq!(line.text, "boom: it  broke ");
        assert_eq!(
            humantime::format_rfc3339_millis(time_from_ms(line.time_ms)).to_string(),
            "2026-11-26T06:31:16.123Z"
        );
        assert_eq!(
            parse_line("2026-11-26T06:31:16.123Z out").map(|l| l.text),
            Some(String::new())
        );
        assert_eq!(parse_line("2026-11-26T06:31:16.123Z mid x"), None);
        assert_eq!(parse_line("yesterday out x"), None);
        assert_eq!(parse_line(""), None);
    }

    #[test]
    fn splits_long_text_on_char_boundaries() {
        let text = "é".repeat(5);
        let parts = split_at_char_boundaries(&text, 3);
        assert!(parts.iter().all(|p| p.len() <= 3));
        assert_eq!(parts.concat(), text);
        assert_eq!(split_at_char_boundaries("", 3), vec![""]);
    }
}
