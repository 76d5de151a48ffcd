//! What a query returns: the four PromQL value types, in tandem's data model.

use tandem_tsdb::model::{Labels, Sample, Series};

/// The result of a query.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A single number at the evaluation time `t` (milliseconds).
    Scalar { t: i64, v: f64 },
    /// A string literal (only the query `"..."` itself yields one).
    String(String),
    /// An instant vector: one sample per series, all at the evaluation time. The order is
    /// the query's (sort, topk and friends order it); otherwise it is unspecified.
    Vector(Vec<(Labels, Sample)>),
    /// A range vector (instant queries of `x[5m]`) or the result of a range query: series
    /// sorted by labels, samples in time order.
    Matrix(Vec<Series>),
}

impl Value {
    /// Prometheus's `resultType` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar { .. } => "scalar",
            Value::String(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}
