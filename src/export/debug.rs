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

    /// A line per span, as pocketflow-tracing prints them when they complete.
    fn span_lines(trace: &TraceRecord) {
        for s in &trace.spans {
            tracing::info!(
                target: "flowtrace::trace",
                "[TRACING] {} span completed in {:.2}ms",
                s.name,
                s.end_unix_nanos.saturating_sub(s.start_unix_nanos) as f64 / 1e6
            );
        }
    }
}

impl Exporter for DebugExporter {
    fn name(&self) -> &str {
        "debug"
    }
    fn export(&self, trace: Arc<TraceRecord>) {
        let trace = self.0.apply_shared(trace);
        Self::span_lines(&trace);
        // A streamed run's earlier spans were printed as their parts came; its whole tree would
        // be as long as the run.
        let streamed = if trace.parts > 0 {
            format!(" (streamed in {} parts before this one; the tree shows its last spans)", trace.parts)
        } else {
            String::new()
        };
        tracing::info!(target: "flowtrace::trace", "[TRACING] Trace finished: {}{streamed}\n{}", trace.name, trace.render_tree());
    }
    // Printing a part as it comes keeps a long run streaming with debug output on (the tracer
    // streams only while every exporter takes parts).
    fn takes_parts(&self) -> bool {
        true
    }
    fn export_part(&self, part: Arc<TraceRecord>) {
        Self::span_lines(&self.0.apply_shared(part));
    }
    fn flush(&self, _timeout: Duration) -> futures::future::BoxFuture<'_, ExportReport> {
        Box::pin(async { ExportReport::default() })
    }
}
