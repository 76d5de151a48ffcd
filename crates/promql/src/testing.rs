//! A small in-memory [`Querier`] for tests: the conformance runner loads Prometheus's test
//! scripts into it, and unit tests build their fixtures with it. It is deliberately naive
//! (a linear scan over every series) so that it is obviously right; the real store lives in
//! `tandem-tsdb`.

use tandem_tsdb::model::{Labels, Matcher, Querier, QueryError, Sample, Series};

/// Series held in memory, each with its samples in time order.
#[derive(Debug, Default)]
pub struct MemQuerier {
    series: Vec<Series>,
}

impl MemQuerier {
    pub fn new() -> MemQuerier {
        MemQuerier::default()
    }

    /// Adds samples to the series with these labels (created when new). Samples are kept
    /// sorted by time; a sample at an existing timestamp replaces the old one.
    pub fn add(&mut self, labels: Labels, samples: impl IntoIterator<Item = Sample>) {
        let idx = match self.series.iter().position(|s| s.labels == labels) {
            Some(i) => i,
            None => {
                self.series.push(Series {
                    labels,
                    samples: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        let s = &mut self.series[idx].samples;
        for sample in samples {
            match s.binary_search_by_key(&sample.t, |x| x.t) {
                Ok(i) => s[i] = sample,
                Err(i) => s.insert(i, sample),
            }
        }
    }

    /// Drops every series.
    pub fn clear(&mut self) {
        self.series.clear();
    }

    fn matching<'a>(&'a self, matchers: &'a [Matcher]) -> impl Iterator<Item = &'a Series> + 'a {
        self.series
            .iter()
            .filter(move |s| matchers.iter().all(|m| m.matches(&s.labels)))
    }
}

impl Querier for MemQuerier {
    fn select(
        &self,
        matchers: &[Matcher],
        min_t: i64,
        max_t: i64,
    ) -> Result<Vec<Series>, QueryError> {
        let mut out = Vec::new();
        for s in self.matching(matchers) {
            let lo = s.samples.partition_point(|x| x.t < min_t);
            let hi = s.samples.partition_point(|x| x.t <= max_t);
            if lo < hi {
                out.push(Series {
                    labels: s.labels.clone(),
                    samples: s.samples[lo..hi].to_vec(),
                });
            }
        }
        Ok(out)
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        _min_t: i64,
        _max_t: i64,
    ) -> Result<Vec<String>, QueryError> {
        let mut names: Vec<String> = self
            .matching(matchers)
            .flat_map(|s| s.labels.iter().map(|(k, _)| k.to_string()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        _min_t: i64,
        _max_t: i64,
    ) -> Result<Vec<String>, QueryError> {
        let mut values: Vec<String> = self
            .matching(matchers)
            .filter_map(|s| s.labels.get(name).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        Ok(values)
    }
}
