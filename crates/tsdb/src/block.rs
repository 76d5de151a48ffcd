//! Immutable blocks: the samples of one time window (`DbOptions::block_duration`), cut from
//! the head into a folder of their own:
//!
//! - `chunks`: per series, a run of chunks (up to [`BLOCK_CHUNK_SAMPLES`] samples each,
//!   re-encoded from the head's smaller ones: fewer headers, fewer bytes) with a CRC32C per
//!   run, so damage is found when that series is read, not by scanning the file at open.
//! - `index`: a symbol table, every series' labels and the place of its run, and the
//!   postings; one CRC32C over the whole file.
//! - `meta.json`: the window and counts, for people and for the next version.
//!
//! A block is written into `.tmp-NAME` and renamed when complete, so a crash leaves either
//! a whole block or a temporary folder that the next open removes. The index stays in
//! memory; chunk runs are read with positioned reads when a query needs them.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::chunk::{Chunk, MAX_CHUNK_SAMPLES};
use crate::encoding::{ByteReader, Truncated, crc32, put_string, put_uvarint, put_varint};
use crate::error::DbError;
use crate::model::{Labels, Matcher, Sample};
use crate::postings::Postings;

/// Samples per chunk in a block: four head chunks, which saves about 0.05 byte per sample
/// of headers and still decodes only minutes of data for a short range.
pub(crate) const BLOCK_CHUNK_SAMPLES: usize = 480;

const CHUNKS_MAGIC: &[u8; 5] = b"TDBC\x01";
const INDEX_MAGIC: &[u8; 5] = b"TDBI\x01";
pub(crate) const TMP_PREFIX: &str = ".tmp-";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct BlockMeta {
    pub(crate) version: u32,
    /// First and last sample time in the block (inclusive, ms).
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) series: u64,
    pub(crate) samples: u64,
    pub(crate) chunks: u64,
    /// End (exclusive) of the window the block was cut for: after a restart, samples
    /// before it stay refused, as they were before.
    pub(crate) window_end: i64,
}

#[derive(Debug)]
struct BlockSeries {
    labels: Labels,
    offset: u64,
    len: u64,
}

#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) dir: PathBuf,
    pub(crate) meta: BlockMeta,
    series: Vec<BlockSeries>,
    postings: Postings,
    chunks: File,
    pub(crate) bytes: u64,
}

fn corrupt(path: &Path, detail: impl Into<String>) -> DbError {
    DbError::CorruptBlock {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

// === writing ===

/// Writes a block of `series` (sorted by labels, chunks in time order) under `parent`;
/// returns it opened.
pub(crate) fn write(
    parent: &Path,
    window_end: i64,
    series: &[(Labels, Vec<Chunk>)],
) -> Result<Block, DbError> {
    let mut chunks_buf = CHUNKS_MAGIC.to_vec();
    let mut entries = Vec::with_capacity(series.len());
    let (mut min_t, mut max_t, mut samples, mut nchunks) = (i64::MAX, i64::MIN, 0u64, 0u64);
    for (labels, head_chunks) in series {
        let mut all: Vec<Sample> = Vec::new();
        for c in head_chunks {
            let decoded = c.decode().map_err(|_| DbError::CorruptBlock {
                path: parent.to_path_buf(),
                detail: format!(
                    "a head chunk of '{labels}' does not decode; the block was not written"
                ),
            })?;
            all.extend(decoded);
        }
        if all.is_empty() {
            continue;
        }
        min_t = min_t.min(all[0].t);
        max_t = max_t.max(all[all.len() - 1].t);
        samples += all.len() as u64;
        let offset = chunks_buf.len() as u64;
        let mut run = Vec::new();
        let groups: Vec<&[Sample]> = all.chunks(BLOCK_CHUNK_SAMPLES).collect();
        put_uvarint(&mut run, groups.len() as u64);
        let mut prev_t = 0i64;
        for g in groups {
            let c = Chunk::encode(g);
            put_uvarint(&mut run, u64::from(c.count));
            put_varint(&mut run, c.min_t.wrapping_sub(prev_t));
            put_uvarint(&mut run, c.max_t.wrapping_sub(c.min_t) as u64);
            put_uvarint(&mut run, c.data.len() as u64);
            run.extend_from_slice(&c.data);
            prev_t = c.max_t;
            nchunks += 1;
        }
        run.extend_from_slice(&crc32(&run).to_le_bytes());
        chunks_buf.extend_from_slice(&run);
        entries.push((labels, offset, run.len() as u64));
    }

    // Index: symbols, series, postings, checksum.
    let mut symbols: BTreeMap<&str, u64> = BTreeMap::new();
    for (labels, _, _) in &entries {
        for (k, v) in labels.iter() {
            symbols.insert(k, 0);
            symbols.insert(v, 0);
        }
    }
    for (i, slot) in symbols.values_mut().enumerate() {
        *slot = i as u64;
    }
    let mut index = INDEX_MAGIC.to_vec();
    put_uvarint(&mut index, symbols.len() as u64);
    for s in symbols.keys() {
        put_string(&mut index, s);
    }
    put_uvarint(&mut index, entries.len() as u64);
    let mut postings = Postings::default();
    for (i, (labels, offset, len)) in entries.iter().enumerate() {
        put_uvarint(&mut index, labels.len() as u64);
        for (k, v) in labels.iter() {
            put_uvarint(&mut index, symbols[k]);
            put_uvarint(&mut index, symbols[v]);
        }
        put_uvarint(&mut index, *offset);
        put_uvarint(&mut index, *len);
        postings.add(i as u64, labels);
    }
    let lists: Vec<(&str, &str, &[u64])> = postings.iter().collect();
    put_uvarint(&mut index, lists.len() as u64);
    for (name, value, ids) in lists {
        put_uvarint(&mut index, symbols[name]);
        put_uvarint(&mut index, symbols[value]);
        put_uvarint(&mut index, ids.len() as u64);
        let mut prev = 0;
        for &id in ids {
            put_uvarint(&mut index, id - prev);
            prev = id;
        }
    }
    let sum = crc32(&index);
    index.extend_from_slice(&sum.to_le_bytes());

    let meta = BlockMeta {
        version: 1,
        min_t,
        max_t,
        series: entries.len() as u64,
        samples,
        chunks: nchunks,
        window_end,
    };
    // Names sort by time (the sign bit flipped so negative times sort first); a second
    // block starting at the same time (never expected) gets a suffix rather than failing.
    let base = format!("block-{:016x}", (min_t as u64) ^ (1 << 63));
    let name = (0..)
        .map(|n| match n {
            0 => base.clone(),
            n => format!("{base}-{n}"),
        })
        .find(|n| !parent.join(n).exists())
        .unwrap_or(base);
    let tmp = parent.join(format!("{TMP_PREFIX}{name}"));
    let dir = parent.join(&name);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| DbError::io("create the block folder", &tmp, e))?;
    let meta_json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    for (file, data) in [
        ("chunks", &chunks_buf),
        ("index", &index),
        ("meta.json", &meta_json),
    ] {
        let path = tmp.join(file);
        let mut f =
            File::create(&path).map_err(|e| DbError::io("create the block file", &path, e))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(|e| DbError::io("write the block file", &path, e))?;
    }
    sync_dir(&tmp);
    fs::rename(&tmp, &dir).map_err(|e| DbError::io("move the new block into place", &dir, e))?;
    sync_dir(parent);
    open(&dir)
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

// === reading ===

/// Opens the block in `dir`, checking its index and meta.
pub(crate) fn open(dir: &Path) -> Result<Block, DbError> {
    let meta_path = dir.join("meta.json");
    let meta_bytes = fs::read(&meta_path).map_err(|e| corrupt(&meta_path, e.to_string()))?;
    let meta: BlockMeta = serde_json::from_slice(&meta_bytes)
        .map_err(|e| corrupt(&meta_path, format!("meta.json does not parse: {e}")))?;
    if meta.version != 1 {
        return Err(corrupt(
            dir,
            format!(
                "format version {} is not known to this tandem; upgrade tandem",
                meta.version
            ),
        ));
    }
    let index_path = dir.join("index");
    let index = fs::read(&index_path).map_err(|e| corrupt(&index_path, e.to_string()))?;
    let chunks_path = dir.join("chunks");
    let chunks = File::open(&chunks_path).map_err(|e| corrupt(&chunks_path, e.to_string()))?;
    let chunks_len = chunks
        .metadata()
        .map_err(|e| corrupt(&chunks_path, e.to_string()))?
        .len();
    let (series, postings) =
        parse_index(&index, chunks_len).map_err(|detail| corrupt(&index_path, detail))?;
    if series.len() as u64 != meta.series {
        return Err(corrupt(
            dir,
            "meta.json and the index disagree on the number of series",
        ));
    }
    let mut magic = [0u8; 5];
    chunks
        .read_exact_at(&mut magic, 0)
        .map_err(|e| corrupt(&chunks_path, e.to_string()))?;
    if &magic != CHUNKS_MAGIC {
        return Err(corrupt(&chunks_path, "not a tandem chunks file"));
    }
    Ok(Block {
        dir: dir.to_path_buf(),
        meta,
        series,
        postings,
        chunks,
        bytes: chunks_len + index.len() as u64 + meta_bytes.len() as u64,
    })
}

fn parse_index(data: &[u8], chunks_len: u64) -> Result<(Vec<BlockSeries>, Postings), String> {
    let Some(body_len) = data.len().checked_sub(4) else {
        return Err("the index is empty".into());
    };
    let (body, sum) = data.split_at(body_len);
    if crc32(body) != u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]) {
        return Err("the index checksum does not match".into());
    }
    if !body.starts_with(INDEX_MAGIC) {
        return Err("not a tandem index".into());
    }
    let t = |_: Truncated| "the index ends early".to_string();
    let mut r = ByteReader::new(&body[INDEX_MAGIC.len()..]);
    let nsym = r.uvarint().map_err(t)?;
    let mut symbols = Vec::new();
    for _ in 0..nsym {
        symbols.push(r.string().map_err(t)?);
    }
    let sym = |i: u64| -> Result<&str, String> {
        symbols
            .get(i as usize)
            .map(String::as_str)
            .ok_or_else(|| format!("symbol {i} is out of range"))
    };
    let nseries = r.uvarint().map_err(t)?;
    let mut series = Vec::new();
    for _ in 0..nseries {
        let n = r.uvarint().map_err(t)?;
        let mut pairs = Vec::new();
        for _ in 0..n {
            let k = sym(r.uvarint().map_err(t)?)?;
            let v = sym(r.uvarint().map_err(t)?)?;
            pairs.push((k, v));
        }
        let offset = r.uvarint().map_err(t)?;
        let len = r.uvarint().map_err(t)?;
        if offset.checked_add(len).is_none_or(|end| end > chunks_len) || len < 4 {
            return Err("a series points outside the chunks file".into());
        }
        series.push(BlockSeries {
            labels: Labels::new(pairs),
            offset,
            len,
        });
    }
    let mut postings = Postings::default();
    let nlists = r.uvarint().map_err(t)?;
    for _ in 0..nlists {
        let name = sym(r.uvarint().map_err(t)?)?;
        let value = sym(r.uvarint().map_err(t)?)?;
        let n = r.uvarint().map_err(t)?;
        let mut ids = Vec::new();
        let mut id = 0u64;
        for _ in 0..n {
            id = id.saturating_add(r.uvarint().map_err(t)?);
            if id >= nseries {
                return Err("a posting names a series that does not exist".into());
            }
            ids.push(id);
        }
        postings.insert_list(name, value, ids);
    }
    postings.set_all((0..nseries).collect());
    Ok((series, postings))
}

impl Block {
    pub(crate) fn overlaps(&self, min_t: i64, max_t: i64) -> bool {
        self.meta.min_t <= max_t && self.meta.max_t >= min_t
    }

    pub(crate) fn select(&self, matchers: &[Matcher]) -> Vec<u64> {
        self.postings.select(matchers)
    }

    pub(crate) fn labels(&self, id: u64) -> Option<&Labels> {
        self.series.get(id as usize).map(|s| &s.labels)
    }

    pub(crate) fn label_names(&self) -> impl Iterator<Item = &str> {
        self.postings.names()
    }

    pub(crate) fn label_values(&self, name: &str) -> impl Iterator<Item = &str> {
        self.postings.values(name)
    }

    /// Samples of series `id` in `[min_t, max_t]`.
    pub(crate) fn samples(&self, id: u64, min_t: i64, max_t: i64) -> Result<Vec<Sample>, DbError> {
        let chunks_path = || self.dir.join("chunks");
        let Some(s) = self.series.get(id as usize) else {
            return Ok(Vec::new());
        };
        let mut run = vec![0u8; s.len as usize];
        self.chunks
            .read_exact_at(&mut run, s.offset)
            .map_err(|e| DbError::io("read the block file", chunks_path(), e))?;
        let (body, sum) = run.split_at(run.len() - 4);
        if crc32(body) != u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]) {
            return Err(corrupt(
                &chunks_path(),
                format!("the chunks of '{}' fail their checksum", s.labels),
            ));
        }
        let bad = |_: Truncated| {
            corrupt(
                &chunks_path(),
                format!("the chunks of '{}' do not decode", s.labels),
            )
        };
        let mut r = ByteReader::new(body);
        let n = r.uvarint().map_err(bad)?;
        let mut out = Vec::new();
        let mut prev_t = 0i64;
        for _ in 0..n {
            let count = r.uvarint().map_err(bad)?;
            let c_min = prev_t.wrapping_add(r.varint().map_err(bad)?);
            let c_max = c_min.wrapping_add(r.uvarint().map_err(bad)? as i64);
            let len = r.uvarint().map_err(bad)? as usize;
            let data = r.bytes(len).map_err(bad)?;
            prev_t = c_max;
            if c_max < min_t || c_min > max_t {
                continue;
            }
            if count > u64::from(MAX_CHUNK_SAMPLES) {
                return Err(bad(Truncated));
            }
            let chunk = Chunk {
                min_t: c_min,
                max_t: c_max,
                count: count as u32,
                data: data.into(),
            };
            out.extend(
                chunk
                    .decode()
                    .map_err(bad)?
                    .into_iter()
                    .filter(|x| x.t >= min_t && x.t <= max_t),
            );
        }
        Ok(out)
    }
}
