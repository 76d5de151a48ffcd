//! The server's [`EventSink`]: every event the runtime and the engine report is logged and
//! written to the timeline in the store, in one place.

use std::sync::Arc;
use tandem_api::{Event, EventKind, EventSink, now_ms};
use tandem_store::Store;

pub(crate) struct Recorder {
    store: Arc<Store>,
}

impl Recorder {
    pub(crate) fn new(store: Arc<Store>) -> Recorder {
        Recorder { store }
    }

    pub(crate) fn emit_server(&self, env: &str, kind: EventKind, message: String) {
        self.emit(Event {
            time_ms: now_ms(),
            env: env.to_string(),
            kind,
            service: None,
            instance: None,
            revision: None,
            who: None,
            message,
        });
    }
}

impl EventSink for Recorder {
    fn emit(&self, event: Event) {
        match event.kind {
            EventKind::InstanceCrashed
            | EventKind::InstanceOomKilled
            | EventKind::CrashLoop
            | EventKind::InstanceUnhealthy
            | EventKind::ApplyFailed
            | EventKind::LimitsUnavailable
            | EventKind::RemoteWriteFailed
            | EventKind::NotificationFailed
            | EventKind::DeployRolledBack => {
                tracing::warn!(kind = event.kind.as_str(), "{}", event.message)
            }
            _ => tracing::info!(kind = event.kind.as_str(), "{}", event.message),
        }
        if let Err(e) = self.store.add_event(&event) {
            tracing::error!("cannot record an event in the timeline: {e}");
        }
    }
}
