//! Debug output like pocketflow-tracing's (`[TRACING] Starting trace: …`, `… span completed in
//! 0.12ms`, `Trace flushed …`), through the `tracing` crate, only when debug is on. Nothing
//! printed here contains a key: spans and trees carry no configuration, and error messages
//! go through the same privacy rules as every other destination.

use std::sync::Arc;
use std::time::Duration;

use super::{Recorder, TraceMeta, TraceRecord, Tracer};
use crate::export::{ExportReport, Exporter, Privacy};

/// Prints the debug line for a trace's start when debug output is on.
pub(crate) fn debug_start(tracer: &Tracer, meta: &TraceMeta, rec: &Recorder) {
    if tracer.debug() {
        tracing::info!(target: "flowtrace::trace", "[TRACING] Starting trace: {} ({})", meta.name, rec.trace_id());
    }
}

/// Prints where the local trace file is, once per process.
pub(super) fn announce_trace_file(path: &std::path::Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        tracing::info!(target: "flowtrace::trace", "traces are written to {}", shown.display());
        eprintln!("flowtrace: traces are written to {} (view them with `flowtrace show`)", shown.display());
    });
}

/// Debug output, as pocketflow-tracing prints it: a line per span, then the trace's tree.
pub(super) struct DebugExporter(Privacy);

impl DebugExporter {
    /// Debug output under these privacy rules.
    pub(super) fn new(privacy: Privacy) -> Self {
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
