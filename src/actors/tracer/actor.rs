//! The tracer actor: collects each run's span chunks, assembles the finished trace, and hands
//! it to the exporters. It runs on its own thread and runtime, so neither assembly nor export
//! ever competes with a run for the application's worker threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::export::{ExportReport, Exporter};
use crate::trace::recorder::recycle_spans;
use crate::trace::{Clock, SpanBuf, SpanRecord, TraceEnd, TraceId, TraceRecord};

pub(crate) enum TracerMsg {
    /// A chunk of finished spans of a run still in progress.
    Spans(TraceId, Clock, SpanBuf),
    /// The run ended: its last spans and the trace's own record.
    End(Box<TraceEnd>),
    /// Deliver what was handed over so far, within the timeout.
    Flush(Duration, RpcReplyPort<ExportReport>),
    /// Flush, then stop.
    Shutdown(Duration, RpcReplyPort<ExportReport>),
}

pub(crate) struct TracerActor;

pub(crate) struct TracerState {
    exporters: Vec<Arc<dyn Exporter>>,
    /// Spans cast by runs and not yet taken in (shared with the runs' sink).
    backlog: Arc<std::sync::atomic::AtomicU64>,
    partial: HashMap<TraceId, Vec<SpanRecord>>,
}

impl Actor for TracerActor {
    type Msg = TracerMsg;
    type State = TracerState;
    type Arguments = (Vec<Arc<dyn Exporter>>, Arc<std::sync::atomic::AtomicU64>);

    async fn pre_start(
        &self,
        _myself: ActorRef<TracerMsg>,
        (exporters, backlog): (Vec<Arc<dyn Exporter>>, Arc<std::sync::atomic::AtomicU64>),
    ) -> Result<TracerState, ActorProcessingErr> {
        Ok(TracerState { exporters, backlog, partial: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<TracerMsg>,
        msg: TracerMsg,
        state: &mut TracerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TracerMsg::Spans(id, clock, mut spans) => {
                state.backlog.fetch_sub(spans.len() as u64, std::sync::atomic::Ordering::Relaxed);
                state.partial.entry(id).or_default().extend(spans.iter_mut().map(|s| s.take_record(clock)));
                recycle_spans(spans);
            }
            TracerMsg::End(end) => {
                state.backlog.fetch_sub(end.spans.len() as u64 + 1, std::sync::atomic::Ordering::Relaxed);
                let mut spans = state.partial.remove(&end.trace_id).unwrap_or_default();
                let record = end.into_record(&mut spans);
                let record = Arc::new(record);
                for e in &state.exporters {
                    e.export(Arc::clone(&record));
                }
            }
            TracerMsg::Flush(timeout, reply) => {
                let _ = reply.send(flush_all(&state.exporters, timeout, false).await);
            }
            TracerMsg::Shutdown(timeout, reply) => {
                let mut report = flush_all(&state.exporters, timeout, true).await;
                let open = state.partial.len();
                if open > 0 {
                    let spans: u64 = state.partial.values().map(|v| v.len() as u64).sum();
                    report.dropped += spans;
                    report.reasons.push(format!(
                        "{open} runs were still in progress at shutdown; their {spans} spans were not exported"
                    ));
                }
                let _ = reply.send(report);
                myself.stop(None);
            }
        }
        Ok(())
    }
}

async fn flush_all(exporters: &[Arc<dyn Exporter>], timeout: Duration, shutdown: bool) -> ExportReport {
    let futs = exporters.iter().map(|e| if shutdown { e.shutdown(timeout) } else { e.flush(timeout) });
    let mut total = ExportReport::default();
    for r in futures::future::join_all(futs).await {
        total.merge(r);
    }
    total
}

impl TraceEnd {
    fn into_record(self, earlier: &mut Vec<SpanRecord>) -> TraceRecord {
        let TraceEnd {
            trace_id,
            meta,
            start_unix_nanos,
            end_unix_nanos,
            input,
            output,
            status,
            action,
            mut spans,
            clock,
            spans_dropped,
        } = self;
        earlier.reserve(spans.len());
        earlier.extend(spans.iter_mut().map(|s| s.take_record(clock)));
        recycle_spans(spans);
        TraceRecord {
            trace_id,
            name: meta.name.clone(),
            session_id: meta.session_id.clone(),
            user_id: meta.user_id.clone(),
            tags: meta.tags.clone(),
            release: meta.release.clone(),
            version: meta.version.clone(),
            metadata: meta.metadata.clone(),
            start_unix_nanos,
            end_unix_nanos,
            input: input.to_json(),
            output: output.to_json(),
            status,
            action,
            spans_dropped,
            spans: std::mem::take(earlier),
        }
    }
}
