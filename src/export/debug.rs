//! Debug output, as pocketflow-tracing prints it: a line per span (`[TRACING] … span completed
//! in 0.12ms`), then the trace's tree. Error messages and values go through the same privacy
//! rules as every other destination.

use std::sync::Arc;
use std::time::Duration;

use super::{ExportReport, Exporter, Privacy};
use crate::trace::TraceRecord;

/// Prints each finished trace through `tracing` (target `flowtrace::trace`).
pub(crate) struct DebugExporter(Privacy);

impl DebugExporter {
    /// Debug output under these privacy rules.
    pub(crate) fn new(privacy: Privacy) -> Self {
        DebugExporter(privacy)
    }
}

impl Exporter for DebugExporter {
    fn name(&self) -> &str {
        "debug"
    }
    fn export(&self, trace: Arc<TraceRecord>) {
        let trace = self.0.apply_shared(trace);
        for s in &trace.spans {
            tracing::info!(
                target: "flowtrace::trace",
                "[TRACING] {} span completed in {:.2}ms",
                s.name,
                s.end_unix_nanos.saturating_sub(s.start_unix_nanos) as f64 / 1e6
            );
        }
        tracing::info!(target: "flowtrace::trace", "[TRACING] Trace finished: {}\n{}", trace.name, trace.render_tree());
    }
    fn flush(&self, _timeout: Duration) -> futures::future::BoxFuture<'_, ExportReport> {
        Box::pin(async { ExportReport::default() })
    }
}
