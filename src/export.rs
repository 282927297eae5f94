//! Where finished traces go: the exporter interface and the built-in exporters.
//!
//! The tracer actor hands every finished [`TraceRecord`] to each exporter with
//! [`Exporter::export`], which must only queue it: delivery (batching, retries, spooling)
//! happens in the exporter's own task, never on a run's path.

mod memory;

pub use memory::MemoryExporter;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::trace::TraceRecord;

/// A destination for finished traces.
///
/// Implementations queue in [`export`](Self::export) and deliver in their own task. The tracer
/// calls every method from its own runtime thread, so an exporter may `tokio::spawn` there.
pub trait Exporter: Send + Sync + 'static {
    /// A short name for logs and reports (`langfuse`, `file`, `memory`, …).
    fn name(&self) -> &str;

    /// Queues a finished trace. Must return at once; it may drop or spool under pressure, but
    /// must count what it did.
    fn export(&self, trace: Arc<TraceRecord>);

    /// Waits until everything queued so far is delivered, spooled or dropped, or `timeout`
    /// passes, and says which.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ExportReport>;

    /// Flushes, then stops taking traces. The default only flushes.
    fn shutdown(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.flush(timeout)
    }
}

/// What became of the spans handed to an exporter (or to all of them, summed).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ExportReport {
    /// Spans (including one per trace for the trace itself) the backend accepted.
    pub delivered: u64,
    /// Spans written to the on-disk spool, to be sent later.
    pub spooled: u64,
    /// Spans lost, with [`reasons`](Self::reasons).
    pub dropped: u64,
    /// Spans still queued when the deadline passed.
    pub pending: u64,
    /// Why anything was dropped, and any failure worth telling the user.
    pub reasons: Vec<String>,
}

impl ExportReport {
    /// Adds another report into this one.
    pub fn merge(&mut self, other: ExportReport) {
        self.delivered += other.delivered;
        self.spooled += other.spooled;
        self.dropped += other.dropped;
        self.pending += other.pending;
        self.reasons.extend(other.reasons);
    }

    /// Whether nothing was dropped and nothing is still pending.
    pub fn is_complete(&self) -> bool {
        self.dropped == 0 && self.pending == 0
    }
}
