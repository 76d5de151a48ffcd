//! The head: the newest samples of every series, in memory. Each series keeps its sealed
//! chunks (compressed, up to [`HEAD_CHUNK_SAMPLES`] samples, never crossing a block
//! boundary so that a block cut takes whole chunks) and an open buffer of raw samples.
//! Series ids are interned here (labels -> id) with the postings that answer selectors.
//!
//! The head only checks and applies; durability is the WAL's job, and `Db` writes the WAL
//! before it applies a batch here.

use crate::chunk::Chunk;
use crate::encoding::FxHashMap;
use crate::error::SampleError;
use crate::model::{Labels, Matcher, Sample};
use crate::postings::Postings;

/// Samples per sealed head chunk: Prometheus's figure, two minutes at one per second.
pub(crate) const HEAD_CHUNK_SAMPLES: usize = 120;

#[derive(Debug)]
pub(crate) struct MemSeries {
    pub(crate) labels: Labels,
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) open: Vec<Sample>,
    /// The newest sample, kept after a block cut empties the series so order still holds.
    pub(crate) last: Option<Sample>,
}

impl MemSeries {
    fn first_t(&self) -> Option<i64> {
        self.chunks
            .first()
            .map(|c| c.min_t)
            .or(self.open.first().map(|s| s.t))
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.open.is_empty()
    }

    /// Samples in `[min_t, max_t]`, in time order.
    pub(crate) fn samples(&self, min_t: i64, max_t: i64) -> Result<Vec<Sample>, String> {
        let mut out = Vec::new();
        for c in &self.chunks {
            if c.max_t < min_t || c.min_t > max_t {
                continue;
            }
            let decoded = c
                .decode()
                .map_err(|_| format!("a head chunk of '{}' does not decode", self.labels))?;
            out.extend(decoded.into_iter().filter(|s| s.t >= min_t && s.t <= max_t));
        }
        out.extend(self.open.iter().filter(|s| s.t >= min_t && s.t <= max_t));
        Ok(out)
    }

    pub(crate) fn overlaps(&self, min_t: i64, max_t: i64) -> bool {
        match (self.first_t(), self.last) {
            (Some(first), Some(last)) => first <= max_t && last.t >= min_t,
            _ => false,
        }
    }
}

/// What became of one sample offered to the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accept {
    New,
    /// Same timestamp, same value bits: nothing to do.
    Duplicate,
}

#[derive(Debug)]
pub(crate) struct Head {
    series: FxHashMap<u64, MemSeries>,
    by_labels: FxHashMap<Labels, u64>,
    pub(crate) postings: Postings,
    next_id: u64,
    /// Samples older than this are refused (they belong to a cut block).
    pub(crate) min_valid_t: i64,
    /// Block length in ms: chunks never span a multiple of it.
    block_ms: i64,
    /// Oldest sample in the head (i64::MAX when empty): kept up to date so that checking
    /// whether a cut is due costs nothing per append.
    min_t: i64,
    max_t: i64,
    samples: u64,
}

impl Head {
    pub(crate) fn new(block_ms: i64) -> Head {
        Head {
            series: FxHashMap::default(),
            by_labels: FxHashMap::default(),
            postings: Postings::default(),
            next_id: 1,
            min_valid_t: i64::MIN,
            block_ms,
            min_t: i64::MAX,
            max_t: i64::MIN,
            samples: 0,
        }
    }

    pub(crate) fn id_of(&self, labels: &Labels) -> Option<u64> {
        self.by_labels.get(labels).copied()
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id
    }

    pub(crate) fn get(&self, id: u64) -> Option<&MemSeries> {
        self.series.get(&id)
    }

    /// Registers a series under `id` (from the WAL, or freshly allocated by the caller
    /// through [`Head::next_id`]). A second registration of the same id is ignored.
    pub(crate) fn insert_series(&mut self, id: u64, labels: Labels) {
        if self.series.contains_key(&id) {
            return;
        }
        self.next_id = self.next_id.max(id + 1);
        if let Some(old) = self.by_labels.insert(labels.clone(), id) {
            // Two ids for one label set (only from a damaged WAL): keep the newer.
            self.by_labels.insert(labels.clone(), old.max(id));
        }
        self.postings.add(id, &labels);
        self.series.insert(
            id,
            MemSeries {
                labels,
                chunks: Vec::new(),
                open: Vec::new(),
                last: None,
            },
        );
    }

    /// The oldest timestamp still accepted: after the last cut, and no more than half a
    /// block behind the newest sample (as Prometheus does), so one stray old sample
    /// cannot stretch the head over days.
    pub(crate) fn min_appendable_t(&self) -> i64 {
        let lag = if self.max_t == i64::MIN {
            i64::MIN
        } else {
            self.max_t.saturating_sub(self.block_ms / 2)
        };
        self.min_valid_t.max(lag)
    }

    /// Checks `s` against `last` (the series' newest sample, from the head or earlier in
    /// the same batch).
    pub(crate) fn check(
        &self,
        labels: &Labels,
        last: Option<Sample>,
        s: Sample,
    ) -> Result<Accept, SampleError> {
        if let Some(last) = last {
            if s.t == last.t {
                return if s.v.to_bits() == last.v.to_bits() {
                    Ok(Accept::Duplicate)
                } else {
                    Err(SampleError::Duplicate {
                        series: labels.to_string(),
                        t: s.t,
                        old: last.v,
                        new: s.v,
                    })
                };
            }
            if s.t < last.t {
                return Err(SampleError::OutOfOrder {
                    series: labels.to_string(),
                    t: s.t,
                    last_t: last.t,
                });
            }
        }
        let min_t = self.min_appendable_t();
        if s.t < min_t {
            return Err(SampleError::TooOld {
                series: labels.to_string(),
                t: s.t,
                min_t,
            });
        }
        Ok(Accept::New)
    }

    /// Appends a checked sample (or one replayed from the WAL, which is checked again
    /// and dropped silently when it no longer fits).
    pub(crate) fn push(&mut self, id: u64, s: Sample) -> bool {
        let block_ms = self.block_ms;
        let min_valid = self.min_valid_t;
        let Some(series) = self.series.get_mut(&id) else {
            return false;
        };
        if s.t < min_valid || series.last.is_some_and(|l| l.t >= s.t) {
            return false;
        }
        if let Some(first) = series.open.first()
            && (series.open.len() >= HEAD_CHUNK_SAMPLES
                || first.t.div_euclid(block_ms) != s.t.div_euclid(block_ms))
        {
            series.chunks.push(Chunk::encode(&series.open));
            series.open.clear();
        }
        series.open.push(s);
        series.last = Some(s);
        self.min_t = self.min_t.min(s.t);
        self.max_t = self.max_t.max(s.t);
        self.samples += 1;
        true
    }

    pub(crate) fn series(&self) -> impl Iterator<Item = (u64, &MemSeries)> {
        self.series.iter().map(|(&id, s)| (id, s))
    }

    pub(crate) fn select(&self, matchers: &[Matcher]) -> Vec<u64> {
        self.postings.select(matchers)
    }

    pub(crate) fn num_series(&self) -> usize {
        self.series.len()
    }

    pub(crate) fn num_samples(&self) -> u64 {
        self.samples
    }

    pub(crate) fn num_chunks(&self) -> usize {
        self.series.values().map(|s| s.chunks.len()).sum()
    }

    /// Oldest and newest sample time in the head, if it holds any.
    pub(crate) fn time_range(&self) -> Option<(i64, i64)> {
        (self.samples > 0).then_some((self.min_t, self.max_t))
    }

    /// Every series' samples before `end` (a block boundary), sorted by labels: the
    /// content of the next block.
    pub(crate) fn collect_before(&self, end: i64) -> Vec<(Labels, Vec<Chunk>)> {
        let mut out: Vec<(Labels, Vec<Chunk>)> = self
            .series
            .values()
            .filter_map(|s| {
                let mut chunks: Vec<Chunk> =
                    s.chunks.iter().filter(|c| c.max_t < end).cloned().collect();
                let open: Vec<Sample> = s.open.iter().filter(|x| x.t < end).copied().collect();
                if !open.is_empty() {
                    chunks.push(Chunk::encode(&open));
                }
                (!chunks.is_empty()).then(|| (s.labels.clone(), chunks))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Drops every sample before `end` (now in a block) and the series left empty, and
    /// refuses samples before `end` from now on.
    pub(crate) fn truncate_before(&mut self, end: i64) {
        self.min_valid_t = self.min_valid_t.max(end);
        let mut dropped = 0u64;
        for s in self.series.values_mut() {
            s.chunks.retain(|c| {
                let keep = c.max_t >= end;
                if !keep {
                    dropped += u64::from(c.count);
                }
                keep
            });
            let before = s.open.len();
            s.open.retain(|x| x.t >= end);
            dropped += (before - s.open.len()) as u64;
        }
        self.samples -= dropped.min(self.samples);
        self.min_t = self
            .series
            .values()
            .filter_map(MemSeries::first_t)
            .min()
            .unwrap_or(i64::MAX);
        let gone: Vec<u64> = self
            .series
            .iter()
            .filter(|(_, s)| s.is_empty())
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            if let Some(s) = self.series.remove(id) {
                self.by_labels.remove(&s.labels);
            }
        }
        let mut gone = gone;
        gone.sort_unstable();
        self.postings.remove(|id| gone.binary_search(&id).is_ok());
    }
}
