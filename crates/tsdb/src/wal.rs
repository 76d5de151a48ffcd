//! The write-ahead log: every series creation and every accepted batch of samples, written
//! to the kernel before the head applies it, so a killed process loses nothing that
//! `append` acknowledged; `fsync` (against power loss) runs per batch or at most once per
//! sync interval, as `DbOptions::wal_sync` says.
//!
//! Segments are numbered files in `wal/`. Each record is `[len u32][crc32c u32][payload]`,
//! the payload starting with its type. Every segment begins by declaring all series alive
//! when it was opened, so older segments can be deleted once their samples are all in a
//! block without losing the declarations newer samples refer to. Replay stops at the first
//! record whose length or checksum is wrong, cuts the file there, drops any later segment,
//! and reports it: a torn tail after `kill -9` or a power cut is expected, not fatal.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::encoding::{ByteReader, crc32, put_string, put_uvarint, put_varint};
use crate::error::{DbError, OpenWarning};
use crate::model::{Labels, Sample};

const REC_SERIES: u8 = 1;
const REC_SAMPLES: u8 = 2;
/// A segment is rotated past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Larger records are damage (a batch is never near this).
const MAX_RECORD: u32 = 1 << 30;

/// One record as replay reads it, handed to the caller before the next is read.
#[derive(Debug)]
pub(crate) enum Record<'a> {
    Series(Vec<(u64, Labels)>),
    Samples(&'a [(u64, Sample)]),
}

#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    file: File,
    current: u64,
    size: u64,
    /// Newest sample time of each segment (i64::MIN when it holds none).
    segment_max_t: BTreeMap<u64, i64>,
    /// Written since the last `fsync`.
    dirty: bool,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:08}"))
}

impl Wal {
    /// Replays every segment in `dir` (created if missing), repairing a torn tail: each
    /// record goes to `apply` as soon as it is read and checked, segment after segment, so
    /// replay holds one record in memory at a time, never the log. Returns the newest
    /// sample time of every segment; call [`Wal::open_for_append`] with it afterwards.
    pub(crate) fn replay(
        dir: &Path,
        warnings: &mut Vec<OpenWarning>,
        mut apply: impl FnMut(Record<'_>),
    ) -> Result<BTreeMap<u64, i64>, DbError> {
        fs::create_dir_all(dir).map_err(|e| DbError::io("create the WAL folder", dir, e))?;
        let mut segments: Vec<u64> = Vec::new();
        let entries = fs::read_dir(dir).map_err(|e| DbError::io("read the WAL folder", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DbError::io("read the WAL folder", dir, e))?;
            if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                segments.push(n);
            }
        }
        segments.sort_unstable();
        let mut max_ts = BTreeMap::new();
        let mut damaged = false;
        let mut reader = SegmentReader::default();
        for n in segments {
            let path = segment_path(dir, n);
            if damaged {
                fs::remove_file(&path)
                    .map_err(|e| DbError::io("remove the WAL segment", &path, e))?;
                warnings.push(OpenWarning::WalSegmentDropped { path });
                continue;
            }
            let file =
                File::open(&path).map_err(|e| DbError::io("read the WAL segment", &path, e))?;
            let mut max_t = i64::MIN;
            let (good, len, problem) = reader
                .replay(file, &mut max_t, &mut apply)
                .map_err(|e| DbError::io("read the WAL segment", &path, e))?;
            if let Some(detail) = problem {
                damaged = true;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| DbError::io("repair the WAL segment", &path, e))?;
                f.set_len(good)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| DbError::io("repair the WAL segment", &path, e))?;
                warnings.push(OpenWarning::TornWal {
                    path,
                    offset: good,
                    dropped_bytes: len - good,
                    detail,
                });
            }
            max_ts.insert(n, max_t);
        }
        Ok(max_ts)
    }

    /// Opens a new segment after the replayed ones and declares `live` series in it.
    pub(crate) fn open_for_append<'a>(
        dir: &Path,
        segment_max_t: BTreeMap<u64, i64>,
        live: impl Iterator<Item = (u64, &'a Labels)>,
    ) -> Result<Wal, DbError> {
        let next = segment_max_t.keys().next_back().map_or(1, |n| n + 1);
        let (file, path) = create_segment(dir, next)?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            file,
            current: next,
            size: 0,
            segment_max_t,
            dirty: false,
        };
        wal.segment_max_t.insert(next, i64::MIN);
        wal.declare_live(live, &path)?;
        Ok(wal)
    }

    fn declare_live<'a>(
        &mut self,
        live: impl Iterator<Item = (u64, &'a Labels)>,
        path: &Path,
    ) -> Result<(), DbError> {
        let mut live: Vec<(u64, &Labels)> = live.collect();
        live.sort_by_key(|(id, _)| *id);
        let mut buf = Vec::new();
        for part in live.chunks(10_000) {
            encode_series(&mut buf, part.iter().copied());
        }
        self.write_raw(&buf)?;
        self.sync()
            .map_err(|e| DbError::io("sync the WAL segment", path, e))
    }

    /// Starts the next segment (after a block cut, or when this one is full).
    pub(crate) fn rotate<'a>(
        &mut self,
        live: impl Iterator<Item = (u64, &'a Labels)>,
    ) -> Result<(), DbError> {
        let path = segment_path(&self.dir, self.current);
        self.file
            .sync_data()
            .map_err(|e| DbError::io("sync the WAL segment", &path, e))?;
        let next = self.current + 1;
        let (file, path) = create_segment(&self.dir, next)?;
        self.file = file;
        self.current = next;
        self.size = 0;
        self.segment_max_t.insert(next, i64::MIN);
        self.declare_live(live, &path)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.size >= SEGMENT_BYTES
    }

    /// Deletes the oldest segments whose samples are all before `end` (now in a block).
    pub(crate) fn delete_before(&mut self, end: i64) -> Result<(), DbError> {
        let old: Vec<u64> = self
            .segment_max_t
            .iter()
            .take_while(|(n, max_t)| **n != self.current && **max_t < end)
            .map(|(n, _)| *n)
            .collect();
        for n in old {
            let path = segment_path(&self.dir, n);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DbError::io("remove the WAL segment", &path, e)),
            }
            self.segment_max_t.remove(&n);
        }
        Ok(())
    }

    /// Writes one batch: new series first, then samples, in a single write.
    pub(crate) fn log(
        &mut self,
        series: &[(u64, Labels)],
        samples: &[(u64, Sample)],
    ) -> Result<(), DbError> {
        let mut buf = Vec::with_capacity(32 + samples.len() * 11);
        if !series.is_empty() {
            encode_series(&mut buf, series.iter().map(|(id, l)| (*id, l)));
        }
        if !samples.is_empty() {
            let base = samples[0].1.t;
            let mut p = vec![REC_SAMPLES];
            put_varint(&mut p, base);
            let mut max_t = i64::MIN;
            for (id, s) in samples {
                put_uvarint(&mut p, *id);
                put_varint(&mut p, s.t.wrapping_sub(base));
                p.extend_from_slice(&s.v.to_bits().to_le_bytes());
                max_t = max_t.max(s.t);
            }
            frame(&mut buf, &p);
            let slot = self.segment_max_t.entry(self.current).or_insert(i64::MIN);
            *slot = (*slot).max(max_t);
        }
        self.write_raw(&buf)
    }

    fn write_raw(&mut self, buf: &[u8]) -> Result<(), DbError> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(buf) {
            let path = segment_path(&self.dir, self.current);
            // A partial write would leave a torn record in the middle of the segment;
            // cut it off so later records stay readable.
            let _ = self.file.set_len(self.size);
            return Err(DbError::io("write the WAL segment", path, e));
        }
        self.size += buf.len() as u64;
        self.dirty = true;
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// For the background sync: a handle on the current segment if it has unsynced
    /// writes, to `fsync` without holding the WAL lock (appends go on meanwhile).
    pub(crate) fn take_sync_handle(&mut self) -> Option<File> {
        if !self.dirty {
            return None;
        }
        let f = self.file.try_clone().ok()?;
        self.dirty = false;
        Some(f)
    }

    pub(crate) fn current_path(&self) -> PathBuf {
        segment_path(&self.dir, self.current)
    }

    /// Bytes of every segment on disk.
    pub(crate) fn bytes(&self) -> u64 {
        self.segment_max_t
            .keys()
            .filter_map(|&n| fs::metadata(segment_path(&self.dir, n)).ok())
            .map(|m| m.len())
            .sum()
    }
}

fn create_segment(dir: &Path, n: u64) -> Result<(File, PathBuf), DbError> {
    let path = segment_path(dir, n);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| DbError::io("create the WAL segment", &path, e))?;
    // The new name must survive a crash too.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((file, path))
}

fn encode_series<'a>(buf: &mut Vec<u8>, series: impl Iterator<Item = (u64, &'a Labels)>) {
    let mut p = vec![REC_SERIES];
    let mut any = false;
    for (id, labels) in series {
        any = true;
        put_uvarint(&mut p, id);
        put_uvarint(&mut p, labels.len() as u64);
        for (k, v) in labels.iter() {
            put_string(&mut p, k);
            put_string(&mut p, v);
        }
    }
    if any {
        frame(buf, &p);
    }
}

fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Reads segments record by record through buffers reused from one record (and one
/// segment) to the next.
#[derive(Default)]
struct SegmentReader {
    payload: Vec<u8>,
    samples: Vec<(u64, Sample)>,
}

/// Read buffer per segment: large enough that a batch of a thousand samples (about 11 KB)
/// is one copy, small against the 64 MB a segment can reach.
const READ_BUFFER: usize = 256 << 10;

impl SegmentReader {
    /// Hands every good record of `file` to `apply`; returns how many bytes were good, the
    /// file's length, and, if the rest is not good, why. An `Err` is a failed read, not
    /// damage.
    fn replay(
        &mut self,
        file: File,
        max_t: &mut i64,
        apply: &mut impl FnMut(Record<'_>),
    ) -> std::io::Result<(u64, u64, Option<String>)> {
        let file_len = file.metadata()?.len();
        let mut r = BufReader::with_capacity(READ_BUFFER, file);
        let mut pos = 0u64;
        let problem = loop {
            let mut head = [0u8; 8];
            match read_full(&mut r, &mut head)? {
                0 => break None,
                8 => {}
                _ => break Some("incomplete record header".into()),
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if len == 0 || len > MAX_RECORD {
                break Some(format!("impossible record length {len}"));
            }
            // Checked against the file before the buffer grows, so a damaged length cannot
            // ask for a gigabyte.
            if pos + 8 + u64::from(len) > file_len {
                break Some("incomplete record".into());
            }
            self.payload.resize(len as usize, 0);
            if read_full(&mut r, &mut self.payload)? != self.payload.len() {
                break Some("incomplete record".into());
            }
            if crc32(&self.payload) != crc {
                break Some("checksum mismatch".into());
            }
            match parse_record(&self.payload, &mut self.samples, max_t) {
                Some(record) => apply(record),
                None => break Some("record does not parse".into()),
            }
            pos += 8 + u64::from(len);
        };
        if self.payload.capacity() > READ_BUFFER {
            // One large record (a declaration of many series) need not stay allocated.
            self.payload = Vec::new();
        }
        Ok((pos, file_len, problem))
    }
}

/// Fills `buf` unless the file ends first; returns how many bytes it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Parses one checked payload; samples go into `samples` (cleared first), which the
/// returned record borrows. `None` when it does not parse: nothing of it is applied.
fn parse_record<'a>(
    payload: &[u8],
    samples: &'a mut Vec<(u64, Sample)>,
    max_t: &mut i64,
) -> Option<Record<'a>> {
    let mut r = ByteReader::new(payload);
    match r.u8().ok()? {
        REC_SERIES => {
            let mut series = Vec::new();
            while !r.is_empty() {
                let id = r.uvarint().ok()?;
                let n = r.uvarint().ok()?;
                let mut pairs = Vec::new();
                for _ in 0..n {
                    let k = r.string().ok()?;
                    let v = r.string().ok()?;
                    pairs.push((k, v));
                }
                series.push((id, Labels::new(pairs)));
            }
            Some(Record::Series(series))
        }
        REC_SAMPLES => {
            let base = r.varint().ok()?;
            samples.clear();
            let mut newest = i64::MIN;
            while !r.is_empty() {
                let id = r.uvarint().ok()?;
                let t = base.wrapping_add(r.varint().ok()?);
                let v = f64::from_bits(r.u64_le().ok()?);
                newest = newest.max(t);
                samples.push((id, Sample { t, v }));
            }
            *max_t = (*max_t).max(newest);
            Some(Record::Samples(samples))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(t: i64) -> Vec<(u64, Sample)> {
        (1..=3).map(|id| (id, Sample { t, v: id as f64 })).collect()
    }

    /// Replays `dir`, returning what reached `apply`: series ids and sample times in order.
    fn replay_all(dir: &Path, warnings: &mut Vec<OpenWarning>) -> (Vec<u64>, Vec<i64>) {
        let (mut ids, mut times) = (Vec::new(), Vec::new());
        Wal::replay(dir, warnings, |r| match r {
            Record::Series(s) => ids.extend(s.iter().map(|(id, _)| *id)),
            Record::Samples(s) => times.extend(s.iter().map(|(_, x)| x.t)),
        })
        .unwrap();
        (ids, times)
    }

    #[test]
    fn damage_mid_segment_cuts_it_there_and_drops_later_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("wal");
        let mut warnings = Vec::new();
        let segments = Wal::replay(&dir, &mut warnings, |_| {}).unwrap();
        let labels = [
            Labels::new([("__name__", "a")]),
            Labels::new([("__name__", "b")]),
        ];
        let mut wal = Wal::open_for_append(&dir, segments, std::iter::empty()).unwrap();
        let series: Vec<(u64, Labels)> = labels
            .iter()
            .cloned()
            .zip(1..)
            .map(|(l, i)| (i, l))
            .collect();
        wal.log(&series, &batch(1000)).unwrap();
        let good = wal.size;
        wal.log(&[], &batch(2000)).unwrap();
        wal.log(&[], &batch(3000)).unwrap();
        let damaged = wal.current_path();
        wal.rotate(series.iter().map(|(id, l)| (*id, l))).unwrap();
        wal.log(&[], &batch(4000)).unwrap();
        let later = wal.current_path();
        drop(wal);

        let (ids, times) = replay_all(&dir, &mut Vec::new());
        assert_eq!(ids, [1, 2, 1, 2]);
        assert_eq!(
            times,
            [
                1000, 1000, 1000, 2000, 2000, 2000, 3000, 3000, 3000, 4000, 4000, 4000
            ]
        );

        // Flip a byte in the second batch's payload: its checksum fails.
        let mut data = fs::read(&damaged).unwrap();
        let total = data.len() as u64;
        data[good as usize + 12] ^= 0xff;
        fs::write(&damaged, &data).unwrap();
        let mut warnings = Vec::new();
        let (ids, times) = replay_all(&dir, &mut warnings);
        assert_eq!(ids, [1, 2]);
        assert_eq!(times, [1000, 1000, 1000]);
        match &warnings[..] {
            [
                OpenWarning::TornWal {
                    path,
                    offset,
                    dropped_bytes,
                    detail,
                },
                OpenWarning::WalSegmentDropped { path: gone },
            ] => {
                assert_eq!(
                    (path, *offset, *dropped_bytes),
                    (&damaged, good, total - good)
                );
                assert_eq!(detail, "checksum mismatch");
                assert_eq!(gone, &later);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::metadata(&damaged).unwrap().len(), good);
        assert!(!later.exists());

        // A length beyond the end of the file is a torn record, not a huge allocation.
        let mut data = fs::read(&damaged).unwrap();
        data.extend_from_slice(&(MAX_RECORD - 1).to_le_bytes());
        data.extend_from_slice(&[0; 12]);
        fs::write(&damaged, &data).unwrap();
        let mut warnings = Vec::new();
        let (_, times) = replay_all(&dir, &mut warnings);
        assert_eq!(times, [1000, 1000, 1000]);
        assert!(
            matches!(&warnings[..], [OpenWarning::TornWal { detail, dropped_bytes: 16, .. }] if detail == "incomplete record"),
            "{warnings:?}"
        );
    }
}
