//! Where finished traces go: the exporter interface and the built-in exporters.
//!
//! The tracer actor hands every finished [`TraceRecord`] to each exporter with
//! [`Exporter::export`], which must only queue it: delivery (batching, retries, spooling)
//! happens in the exporter's own task, never on a run's path.
//!
//! A long run is streamed: when every exporter [takes parts](Exporter::takes_parts), the
//! tracer hands over each [`PART_SPANS`] finished spans of a run still in progress as a part
//! ([`Exporter::export_part`], a record with [`part`](TraceRecord::part) set), and the
//! run's end record carries only its last spans (with [`parts`](TraceRecord::parts) saying
//! how many came before). A run shorter than that is exported whole, exactly as before. The
//! built-in Langfuse, OTLP, file and memory exporters and the debug output take parts (the
//! memory exporter puts each run back together, so its traces are whole); an exporter that
//! keeps the default gets every trace whole (the tracer then holds a run's spans until it
//! ends).

mod debug;
mod delivery;
mod file;
mod langfuse;
mod legacy;
mod memory;
mod observation;
mod otlp;
mod privacy;
mod spool;

pub use crate::trace::model::MAX_DEPTH;
pub(crate) use debug::DebugExporter;
pub use delivery::{Compression, DeliveryOptions};
pub use file::JsonlFileExporter;
pub use langfuse::{
    parse_headers, Ingestion, LangfuseExporter, LangfuseExporterBuilder, OtlpExporter, OtlpExporterBuilder,
};
pub use memory::MemoryExporter;
pub use privacy::{MaskFn, Privacy, DEFAULT_REDACTED_KEYS, REDACTED};

/// The traces waiting in a spool folder (not yet acknowledged by its exporter), read without
/// taking the folder from the process that holds it: for inspection and tests. A record being
/// written at that moment is left out.
pub fn read_spool(dir: impl AsRef<std::path::Path>) -> std::io::Result<Vec<TraceRecord>> {
    spool::peek(dir.as_ref())
}

/// The wire encoders, for the criterion benches only: not part of the API, and free to change.
#[doc(hidden)]
pub mod __bench {
    pub use super::legacy::{batch_body as legacy_batch_body, encode_trace as legacy_encode_trace};
    pub use super::otlp::{encode_request as otlp_encode_request, encode_trace as otlp_encode_trace, resource};
    pub use super::spool::bench as spool;
}

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::trace::TraceRecord;

/// A destination for finished traces.
///
/// Implementations queue in [`export`](Self::export) and deliver in their own task. The tracer
/// calls every method from its own runtime thread. An exporter that
/// [takes parts](Self::takes_parts) may also have `export` and `export_part` called from a
/// run's thread: when more than a bounded number of spans wait for the tracer, runs hand their
/// finished spans to the exporters themselves rather than shed them, so these two must be
/// cheap and thread-safe (queue, or write to a spool) and must not assume a Tokio runtime.
pub trait Exporter: Send + Sync + 'static {
    /// A short name for logs and reports (`langfuse`, `file`, `memory`, …).
    fn name(&self) -> &str;

    /// Queues a finished trace. Must return at once; it may drop or spool under pressure, but
    /// must count what it did. Of a streamed run, this is the record that ends it (its last
    /// spans; [`TraceRecord::parts`] says how many parts came before).
    fn export(&self, trace: Arc<TraceRecord>);

    /// Whether this exporter takes parts of runs still in progress (default `false`). The
    /// tracer streams a long run only when every exporter it feeds does.
    fn takes_parts(&self) -> bool {
        false
    }

    /// Queues a part of a run still in progress (a record with [`TraceRecord::part`] set: the
    /// trace's fields and the spans that ended since the last part). Called only when
    /// [`takes_parts`](Self::takes_parts) is true; the same rules as [`export`](Self::export).
    /// The default hands it to `export`.
    fn export_part(&self, part: Arc<TraceRecord>) {
        self.export(part)
    }

    /// Waits until everything queued so far is delivered, spooled or dropped, or `timeout`
    /// passes, and says which.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ExportReport>;

    /// Flushes, then stops taking traces. The default only flushes.
    fn shutdown(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.flush(timeout)
    }
}

/// A run's spans are handed to the exporters in a part each time this many have ended while
/// the run goes on (when every exporter [takes parts](Exporter::takes_parts)).
///
/// A part is encoded on its own, without the run's outcome: a failed span in it is shown at
/// WARNING level even if the run later fails (what ends a run is in its last record, which
/// is shown at ERROR as before).
pub const PART_SPANS: usize = 2048;

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
    /// Spans sent from the on-disk spool (spooled earlier by this process or an earlier one);
    /// not counted in `delivered`.
    pub from_spool: u64,
}

impl ExportReport {
    /// Adds another report into this one.
    pub fn merge(&mut self, other: ExportReport) {
        self.delivered += other.delivered;
        self.spooled += other.spooled;
        self.dropped += other.dropped;
        self.pending += other.pending;
        self.from_spool += other.from_spool;
        self.reasons.extend(other.reasons);
    }

    /// Whether nothing was dropped and nothing is still pending.
    pub fn is_complete(&self) -> bool {
        self.dropped == 0 && self.pending == 0
    }
}

/// The marker that replaces a value too large to record.
pub(crate) fn truncation_marker(size: usize, max: usize) -> serde_json::Value {
    serde_json::Value::String(format!("<truncated: {size} bytes, over the {max}-byte limit>"))
}

/// A copy of `trace` with every input, output and metadata value larger than `max` bytes
/// (serialised) replaced by a visible marker; `None` when nothing is that large.
pub(crate) fn limit_values(trace: &TraceRecord, max: usize) -> Option<TraceRecord> {
    let size = |v: &serde_json::Value| serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0);
    let too_big = |v: &Option<serde_json::Value>| v.as_ref().is_some_and(|v| size(v) > max);
    let any = size(&trace.input) > max
        || size(&trace.output) > max
        || trace.spans.iter().any(|s| too_big(&s.input) || too_big(&s.output));
    if !any {
        return None;
    }
    let cut = |v: &mut serde_json::Value| {
        let n = size(v);
        if n > max {
            *v = truncation_marker(n, max);
        }
    };
    let mut t = trace.clone();
    cut(&mut t.input);
    cut(&mut t.output);
    for s in &mut t.spans {
        for v in [&mut s.input, &mut s.output].into_iter().flatten() {
            cut(v);
        }
    }
    Some(t)
}

/// The Langfuse exporter for a configuration with Langfuse keys, or `None` when this build
/// has none to offer (the trace then goes to the local file only, with a warning).
///
/// An error names the variable it is about (`LANGFUSE_HOST`, `LANGFUSE_INGESTION`, …), never
/// showing a key's value. A spool folder that cannot be created is not an error: the exporter
/// then runs without a spool and says so.
pub(crate) fn langfuse_exporter(
    config: &crate::trace::TracingConfig,
) -> Result<Option<Arc<dyn Exporter>>, crate::error::ConfigError> {
    LangfuseExporter::from_config(config).map(|e| Some(Arc::new(e) as Arc<dyn Exporter>))
}

/// The generic OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `_TRACES_ENDPOINT`) is
/// among the configuration's variables.
pub(crate) fn otlp_exporter(
    config: &crate::trace::TracingConfig,
) -> Result<Option<Arc<dyn Exporter>>, crate::error::ConfigError> {
    match OtlpExporter::from_lookup_with(|k| config.var(k).map(str::to_owned), Privacy::from_config(config)) {
        Ok(Some(e)) => Ok(Some(Arc::new(e))),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    }
}
