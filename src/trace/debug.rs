//! Debug output like pocketflow-tracing's (`[TRACING] Starting trace: …`), through the
//! `tracing` crate, only when debug is on. Nothing printed here contains a key: spans and
//! trees carry no configuration.

use super::{Recorder, TraceMeta};

/// Prints the debug line for a trace's start when debug output is on.
pub(crate) fn debug_start(debug: bool, meta: &TraceMeta, rec: &Recorder) {
    if debug {
        tracing::info!(target: "flowtrace::trace", "[TRACING] Starting trace: {} ({})", meta.name, rec.trace_id());
    }
}

/// Prints where the local trace file is, once per process.
pub(crate) fn announce_trace_file(path: &std::path::Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        tracing::info!(target: "flowtrace::trace", "traces are written to {}", shown.display());
        eprintln!("flowtrace: traces are written to {} (view them with `flowtrace show`)", shown.display());
    });
}
