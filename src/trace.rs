//! What a run leaves behind: span and trace records, the recorder a run writes into, the
//! tree and the viewer's formatting, and the tracing configuration read from the environment.
//!
//! A run records spans into its own buffer and hands them in chunks to the tracer (an actor
//! of its own), which assembles each finished run into a [`TraceRecord`] for the exporters.
//! Nothing here runs anything.

mod config;
mod debug;
pub(crate) mod model;
pub(crate) mod recorder;
mod tree;

pub use config::{TracingConfig, DEFAULT_LANGFUSE_HOST, DEFAULT_TRACE_FILE};
pub use model::{
    format_timestamp, GenerationRecord, SpanId, SpanKind, SpanRecord, SpanStatus, TraceId, TraceRecord, UsageTotals,
};

use std::sync::Arc;

use serde_json::Value;

use crate::flow::store::StoreSnapshot;
pub(crate) use debug::{announce_trace_file, debug_start};
pub(crate) use recorder::{Clock, Recorder, SpanBuf};

/// Where a run's spans go: the tracer, which assembles them into trees.
pub(crate) trait SpanSink: Send + Sync + 'static {
    /// Takes a chunk of a run's spans; the run gives its trace fields (a long run's spans are
    /// exported in parts before it ends, and each part carries them); returns how many were
    /// shed instead (the run's end record counts them in its `spans_dropped`).
    fn spans(&self, run: &recorder::RunTrace, spans: SpanBuf) -> u64;
    /// Takes a run's end record with its last spans.
    fn end(&self, run: &recorder::RunTrace, end: TraceEnd);
}

/// A run's handle on its [`SpanSink`].
pub(crate) type TraceSink = Arc<dyn SpanSink>;

/// The trace-level fields given with [`crate::Flow::traced`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TraceMeta {
    pub(crate) name: String,
    pub(crate) session_id: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) release: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) metadata: serde_json::Map<String, Value>,
}

/// The end of a run, sent to the tracer with the last spans.
pub(crate) struct TraceEnd {
    pub(crate) trace_id: TraceId,
    pub(crate) meta: Arc<TraceMeta>,
    pub(crate) start_unix_nanos: u64,
    pub(crate) end_unix_nanos: u64,
    pub(crate) input: StoreSnapshot,
    pub(crate) output: StoreSnapshot,
    pub(crate) status: SpanStatus,
    pub(crate) action: Option<String>,
    pub(crate) spans: SpanBuf,
    pub(crate) clock: Clock,
    /// Spans of this run shed under backlog (see [`MAX_BACKLOG`]).
    pub(crate) spans_dropped: u64,
}
