//! The inverted index: for every label name and value, the sorted ids of the series that
//! carry it. The head and every block keep one, and both answer a selector the same way,
//! so the matcher semantics (a missing label matches as the empty string) live here once.

use std::collections::BTreeMap;

use crate::model::{Labels, Matcher};

#[derive(Debug, Default)]
pub(crate) struct Postings {
    by_label: BTreeMap<String, BTreeMap<String, Vec<u64>>>,
    all: Vec<u64>,
}

impl Postings {
    /// Adds series `id`. Ids must be added in increasing order so lists stay sorted.
    pub(crate) fn add(&mut self, id: u64, labels: &Labels) {
        for (name, value) in labels.iter() {
            let list = self
                .by_label
                .entry(name.to_string())
                .or_default()
                .entry(value.to_string())
                .or_default();
            push_sorted(list, id);
        }
        push_sorted(&mut self.all, id);
    }

    /// Sets one posting list (when loading a block index).
    pub(crate) fn insert_list(&mut self, name: &str, value: &str, ids: Vec<u64>) {
        self.by_label
            .entry(name.to_string())
            .or_default()
            .insert(value.to_string(), ids);
    }

    pub(crate) fn set_all(&mut self, ids: Vec<u64>) {
        self.all = ids;
    }

    /// Removes every series for which `gone` is true.
    pub(crate) fn remove(&mut self, gone: impl Fn(u64) -> bool) {
        for values in self.by_label.values_mut() {
            values.retain(|_, ids| {
                ids.retain(|&id| !gone(id));
                !ids.is_empty()
            });
        }
        self.by_label.retain(|_, values| !values.is_empty());
        self.all.retain(|&id| !gone(id));
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str, &[u64])> {
        self.by_label.iter().flat_map(|(n, values)| {
            values
                .iter()
                .map(move |(v, ids)| (n.as_str(), v.as_str(), ids.as_slice()))
        })
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.by_label.keys().map(String::as_str)
    }

    pub(crate) fn values(&self, name: &str) -> impl Iterator<Item = &str> {
        self.by_label
            .get(name)
            .into_iter()
            .flat_map(|values| values.keys().map(String::as_str))
    }

    /// Sorted ids of the series that satisfy every matcher.
    ///
    /// A matcher that does not match the empty string needs the label to be there with a
    /// matching value: the union of those values' lists, intersected in. One that does
    /// match the empty string holds for every series except those carrying the label with
    /// a value it rejects: those are subtracted, from all series if nothing narrowed first.
    pub(crate) fn select(&self, matchers: &[Matcher]) -> Vec<u64> {
        let mut result: Option<Vec<u64>> = None;
        let mut excluded: Vec<u64> = Vec::new();
        // Equality first: it is one lookup and narrows the most.
        let mut ordered: Vec<&Matcher> = matchers.iter().collect();
        ordered.sort_by_key(|m| m.op != crate::model::MatchOp::Equal);
        for m in ordered {
            let values = self.by_label.get(&m.name);
            if m.matches_value("") {
                if let Some(values) = values {
                    for (v, ids) in values {
                        if !m.matches_value(v) {
                            excluded.extend_from_slice(ids);
                        }
                    }
                }
                continue;
            }
            let found = match (m.op, values) {
                (_, None) => Vec::new(),
                (crate::model::MatchOp::Equal, Some(values)) => {
                    values.get(&m.value).cloned().unwrap_or_default()
                }
                (_, Some(values)) => {
                    let mut ids: Vec<u64> = values
                        .iter()
                        .filter(|(v, _)| m.matches_value(v))
                        .flat_map(|(_, ids)| ids.iter().copied())
                        .collect();
                    ids.sort_unstable();
                    ids.dedup();
                    ids
                }
            };
            result = Some(match result {
                None => found,
                Some(prev) => intersect(&prev, &found),
            });
            if result.as_ref().is_some_and(Vec::is_empty) {
                return Vec::new();
            }
        }
        let base = result.unwrap_or_else(|| self.all.clone());
        if excluded.is_empty() {
            return base;
        }
        excluded.sort_unstable();
        excluded.dedup();
        base.into_iter()
            .filter(|id| excluded.binary_search(id).is_err())
            .collect()
    }
}

fn push_sorted(list: &mut Vec<u64>, id: u64) {
    match list.last() {
        Some(&last) if last >= id => {
            if let Err(at) = list.binary_search(&id) {
                list.insert(at, id);
            }
        }
        _ => list.push(id),
    }
}

fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MatchOp;

    #[test]
    fn selectors_follow_prometheus_semantics() {
        let mut p = Postings::default();
        let series = [
            Labels::new([("__name__", "up"), ("job", "api")]),
            Labels::new([("__name__", "up"), ("job", "web"), ("env", "prod")]),
            Labels::new([("__name__", "down"), ("job", "api"), ("env", "dev")]),
        ];
        for (i, l) in series.iter().enumerate() {
            p.add(i as u64, l);
        }
        let sel = |p: &Postings, ms: &[(&str, MatchOp, &str)]| {
            let ms: Vec<Matcher> = ms
                .iter()
                .map(|(n, op, v)| Matcher::new(n, *op, v).unwrap())
                .collect();
            p.select(&ms)
        };
        assert_eq!(sel(&p, &[("__name__", MatchOp::Equal, "up")]), [0, 1]);
        assert_eq!(
            sel(
                &p,
                &[
                    ("__name__", MatchOp::Equal, "up"),
                    ("job", MatchOp::NotEqual, "api")
                ]
            ),
            [1]
        );
        assert_eq!(sel(&p, &[("env", MatchOp::Equal, "")]), [0]);
        assert_eq!(sel(&p, &[("env", MatchOp::NotEqual, "")]), [1, 2]);
        assert_eq!(sel(&p, &[("job", MatchOp::Regex, "a.*")]), [0, 2]);
        assert_eq!(sel(&p, &[("job", MatchOp::Regex, "a")]), Vec::<u64>::new());
        assert_eq!(sel(&p, &[("env", MatchOp::NotRegex, "prod|dev")]), [0]);
        assert_eq!(sel(&p, &[("env", MatchOp::Regex, "|dev")]), [0, 2]);
        assert_eq!(sel(&p, &[]), [0, 1, 2]);
        p.remove(|id| id == 1);
        assert_eq!(sel(&p, &[("__name__", MatchOp::Equal, "up")]), [0]);
        assert_eq!(p.values("env").collect::<Vec<_>>(), ["dev"]);
    }
}
