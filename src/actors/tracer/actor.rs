//! The tracer actor: collects each run's span chunks, assembles the finished trace, and hands
//! it to the exporters. It runs on its own thread and runtime, so neither assembly nor export
//! ever competes with a run for the application's worker threads.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::export::{ExportReport, Exporter, PART_SPANS};
use crate::trace::recorder::{drop_pooled_entries, recycle_spans};
use crate::trace::{Clock, SpanBuf, SpanRecord, SpanStatus, TraceEnd, TraceId, TraceMeta, TraceRecord};

pub(crate) enum TracerMsg {
    /// A chunk of finished spans of a run still in progress, with the run's trace fields and
    /// its count of parts.
    Spans(TraceId, Clock, Arc<TraceMeta>, Arc<AtomicU32>, SpanBuf),
    /// The run ended: its last spans and the trace's own record, and its count of parts.
    End(Box<TraceEnd>, Arc<AtomicU32>),
    /// Deliver what was handed over so far, by the deadline (on the wall clock, set by the
    /// caller: a tracer behind on its mailbox gives the exporters only what time is left, so
    /// what it could not deliver is spilled to their spools before the caller is answered).
    Flush(Instant, RpcReplyPort<ExportReport>),
    /// Flush, then stop.
    Shutdown(Instant, RpcReplyPort<ExportReport>),
    /// Sent to itself every [`REAP_INTERVAL`]: takes back the records the exporters let go of
    /// while no run ended, and frees the spare ones once no record was built for a while.
    Reap,
}

/// How often the tracer looks for records the exporters let go of (see [`Kept`]).
const REAP_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct TracerActor;

/// What the tracer holds of a run still in progress.
struct Open {
    spans: Vec<SpanRecord>,
    meta: Arc<TraceMeta>,
    start_unix_nanos: u64,
    /// The run's count of parts handed to the exporters (shared with the run's sink).
    parts: Arc<AtomicU32>,
}

/// A part of a run still in progress: the trace's fields and these spans.
pub(crate) fn part_record(
    id: TraceId,
    meta: &TraceMeta,
    start_unix_nanos: u64,
    index: u32,
    spans: Vec<SpanRecord>,
) -> TraceRecord {
    let end_unix_nanos = spans.iter().map(|s| s.end_unix_nanos).max().unwrap_or(start_unix_nanos);
    let mut part = trace_shell(id, meta, start_unix_nanos, end_unix_nanos, spans);
    part.part = Some(index);
    part
}

/// A trace record with the run's trace fields and these spans; input, output, status and the
/// rest as for a run not ended yet (null, ok, none).
fn trace_shell(
    trace_id: TraceId,
    meta: &TraceMeta,
    start_unix_nanos: u64,
    end_unix_nanos: u64,
    spans: Vec<SpanRecord>,
) -> TraceRecord {
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
        input: serde_json::Value::Null,
        output: serde_json::Value::Null,
        status: SpanStatus::Ok,
        action: None,
        spans_dropped: 0,
        spans,
        part: None,
        parts: 0,
    }
}

pub(crate) struct TracerState {
    exporters: Arc<[Arc<dyn Exporter>]>,
    /// Spans cast by runs and not yet taken in (shared with the runs' sink).
    backlog: Arc<AtomicU64>,
    /// Spans of runs in progress held here (shared with the tracer's handle).
    held: Arc<AtomicU64>,
    /// Whether every exporter takes parts, so long runs are streamed.
    stream: bool,
    partial: HashMap<TraceId, Open>,
    /// Records handed to the exporters, whose memory the next records are built in (shared
    /// with the runs' sink, which builds the records of runs that bypass a tracer behind).
    kept: Arc<parking_lot::Mutex<Kept>>,
}

/// Records the tracer built and handed to the exporters (and those runs built when they
/// bypassed it), kept until the exporters let go of them, and then built the next records in
/// (a run's next trace is mostly of the same shape: its maps are overwritten in place, see
/// [`RawSpan::take_record_into`]).
///
/// An exporter let go of a record on its own worker thread: freeing there sent each of its
/// few hundred blocks back to this thread's glibc arena from another thread (the free took
/// the arena's lock, against this thread's allocations), and this thread then allocated every
/// block of the next record afresh, mostly on malloc's slow path. Reused, a record is neither
/// freed nor allocated again.
///
/// Bounded: past [`KEPT_SPANS`] spans (a record still held by an exporter for long, a slow
/// backend), the oldest are let go and freed wherever their last holder drops them, as
/// before; at most [`SPARE_SPANS`] spans wait to be reused, and a flush frees those.
///
/// [`RawSpan::take_record_into`]: crate::trace::recorder::RawSpan::take_record_into
#[derive(Default)]
pub(crate) struct Kept {
    /// Still held by an exporter, oldest first.
    held: VecDeque<Arc<TraceRecord>>,
    held_spans: u64,
    /// Let go by every exporter: the next records are built in these.
    spare: Vec<TraceRecord>,
    spare_spans: u64,
    /// Records given back, ever, and as of the last [`tick`](Self::tick).
    given: u64,
    given_at_tick: u64,
}

/// The most spans [`Kept`] holds on to while exporters hold them too (the HTTP exporters'
/// queues and memory hold up to about 32,768).
const KEPT_SPANS: u64 = 32_768;
/// The most spans of records waiting in [`Kept`] to be reused.
/// At least a delivery round's worth (an exporter lets go of up to 256 traces at once: 13,000
/// spans of 10-node runs); fewer, and most of a round was freed here while the next records
/// were built afresh.
const SPARE_SPANS: u64 = 16_384;

impl Kept {
    /// Takes `r` back once handed to the exporters: to reuse it now if none of them kept it,
    /// or once they let go of it.
    pub(crate) fn give(&mut self, r: Arc<TraceRecord>) {
        self.given += 1;
        match Arc::try_unwrap(r) {
            Ok(t) => self.spare(t),
            Err(r) => {
                self.held_spans += r.spans.len() as u64;
                self.held.push_back(r);
            }
        }
        self.reap();
    }

    /// Takes back the oldest records no exporter holds any more (in order: exporters mostly
    /// let go in the order they took them); lets go of the oldest past the bound.
    fn reap(&mut self) {
        while let Some(front) = self.held.front() {
            if Arc::strong_count(front) != 1 && self.held_spans <= KEPT_SPANS {
                break;
            }
            let Some(r) = self.held.pop_front() else { break };
            self.held_spans -= r.spans.len() as u64;
            if let Ok(t) = Arc::try_unwrap(r) {
                self.spare(t);
            }
        }
    }

    fn spare(&mut self, t: TraceRecord) {
        let n = t.spans.len() as u64;
        if self.spare_spans + n <= SPARE_SPANS {
            self.spare_spans += n;
            self.spare.push(t);
        }
    }

    /// A record to build the next one in, if one is spare.
    pub(crate) fn take(&mut self) -> Option<TraceRecord> {
        let t = self.spare.pop()?;
        self.spare_spans -= t.spans.len() as u64;
        Some(t)
    }

    /// Takes back what the exporters let go of; lets go of the spare records when none was
    /// built since the last tick (the tracer is idle: they would only hold memory), for the
    /// caller to free as [`release`](Self::release) says.
    #[must_use]
    fn tick(&mut self) -> Option<Vec<TraceRecord>> {
        let idle = self.given == self.given_at_tick;
        self.given_at_tick = self.given;
        if idle {
            Some(self.release())
        } else {
            self.reap();
            None
        }
    }

    /// Lets go of the spare records (nothing to build soon: a flush, a shutdown), for the
    /// caller to free once it no longer holds the lock runs take too.
    #[must_use]
    fn release(&mut self) -> Vec<TraceRecord> {
        self.reap();
        self.spare_spans = 0;
        std::mem::take(&mut self.spare)
    }
}

/// What the tracer actor starts with.
pub(crate) struct TracerArgs {
    pub(crate) exporters: Arc<[Arc<dyn Exporter>]>,
    pub(crate) backlog: Arc<AtomicU64>,
    pub(crate) held: Arc<AtomicU64>,
    pub(crate) kept: Arc<parking_lot::Mutex<Kept>>,
}

impl TracerState {
    /// Hands the spans held for `id` to the exporters as the run's next part.
    fn export_part(&mut self, id: TraceId) {
        let Some(open) = self.partial.get_mut(&id) else { return };
        if open.spans.is_empty() {
            return;
        }
        let spans = std::mem::replace(&mut open.spans, Vec::with_capacity(PART_SPANS));
        self.held.fetch_sub(spans.len() as u64, Ordering::Relaxed);
        let index = open.parts.fetch_add(1, Ordering::Relaxed);
        let part = Arc::new(part_record(id, &open.meta, open.start_unix_nanos, index, spans));
        for e in self.exporters.iter() {
            e.export_part(Arc::clone(&part));
        }
        self.kept.lock().give(part);
    }
}

impl Actor for TracerActor {
    type Msg = TracerMsg;
    type State = TracerState;
    type Arguments = TracerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TracerMsg>,
        TracerArgs { exporters, backlog, held, kept }: TracerArgs,
    ) -> Result<TracerState, ActorProcessingErr> {
        let stream = !exporters.is_empty() && exporters.iter().all(|e| e.takes_parts());
        // The timer's task ends with the actor (and its runtime).
        let _timer = myself.send_interval(REAP_INTERVAL, || TracerMsg::Reap);
        Ok(TracerState { exporters, backlog, held, stream, partial: HashMap::new(), kept })
    }

    async fn handle(
        &self,
        myself: ActorRef<TracerMsg>,
        msg: TracerMsg,
        state: &mut TracerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TracerMsg::Spans(id, clock, meta, parts, mut spans) => {
                let n = spans.len() as u64;
                state.backlog.fetch_sub(n, Ordering::Relaxed);
                state.held.fetch_add(n, Ordering::Relaxed);
                let open = state.partial.entry(id).or_insert_with(|| Open {
                    spans: Vec::new(),
                    meta,
                    start_unix_nanos: clock.start_unix_nanos(),
                    parts,
                });
                open.spans.extend(spans.iter_mut().map(|s| s.take_record(clock)));
                recycle_spans(spans);
                if state.stream && open.spans.len() >= PART_SPANS {
                    state.export_part(id);
                }
            }
            TracerMsg::End(end, parts) => {
                state.backlog.fetch_sub(end.spans.len() as u64 + 1, Ordering::Relaxed);
                let mut spans = match state.partial.remove(&end.trace_id) {
                    Some(open) => {
                        state.held.fetch_sub(open.spans.len() as u64, Ordering::Relaxed);
                        open.spans
                    }
                    None => Vec::new(),
                };
                let spare = if spans.is_empty() { state.kept.lock().take() } else { None };
                let mut record = end.into_record_in(&mut spans, spare);
                record.parts = parts.load(Ordering::Relaxed);
                let record = Arc::new(record);
                for e in state.exporters.iter() {
                    e.export(Arc::clone(&record));
                }
                state.kept.lock().give(record);
            }
            TracerMsg::Reap => {
                let released = state.kept.lock().tick();
                if let Some(spare) = released {
                    drop(spare);
                    drop_pooled_entries();
                }
            }
            TracerMsg::Flush(deadline, reply) => {
                let timeout = deadline.saturating_duration_since(Instant::now());
                let report = flush_all(&state.exporters, timeout, false).await;
                // Answered first: freeing the spare records is no part of the flush's wait.
                let _ = reply.send(report);
                let spare = state.kept.lock().release();
                drop(spare);
            }
            TracerMsg::Shutdown(deadline, reply) => {
                let open = state.partial.len();
                let held: u64 = state.partial.values().map(|o| o.spans.len() as u64).sum();
                if state.stream {
                    // What runs still in progress recorded so far leaves as their last parts.
                    let ids: Vec<TraceId> = state.partial.keys().copied().collect();
                    for id in ids {
                        state.export_part(id);
                    }
                }
                let timeout = deadline.saturating_duration_since(Instant::now());
                let mut report = flush_all(&state.exporters, timeout, true).await;
                if open > 0 {
                    if state.stream {
                        report.reasons.push(format!(
                            "{open} runs were still in progress at shutdown: their spans so far were exported as parts, without the run's end"
                        ));
                    } else {
                        report.dropped += held;
                        report.reasons.push(format!(
                            "{open} runs were still in progress at shutdown; their {held} spans were not exported"
                        ));
                    }
                }
                let _ = reply.send(report);
                // After the answer: freeing the kept records is no part of the wait.
                let kept = std::mem::take(&mut *state.kept.lock());
                drop(kept);
                drop_pooled_entries();
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
    /// The finished trace: `earlier` spans (taken) and the run's last ones, built in the
    /// memory of `spare` (a record the exporters let go of) when there is one and no
    /// `earlier` spans.
    pub(crate) fn into_record_in(self, earlier: &mut Vec<SpanRecord>, spare: Option<TraceRecord>) -> TraceRecord {
        match spare {
            Some(t) if earlier.is_empty() => self.into_spare(t),
            _ => self.into_fresh(earlier),
        }
    }

    fn into_spare(self, t: TraceRecord) -> TraceRecord {
        let TraceEnd {
            trace_id,
            meta,
            start_unix_nanos,
            end_unix_nanos,
            input,
            output,
            status,
            action,
            spans: mut raw,
            clock,
            spans_dropped,
        } = self;
        // Every field named (no `..`): a field added to the record must be set here too.
        let TraceRecord {
            trace_id: _,
            mut name,
            mut session_id,
            mut user_id,
            mut tags,
            mut release,
            mut version,
            mut metadata,
            start_unix_nanos: _,
            end_unix_nanos: _,
            input: mut input_json,
            output: mut output_json,
            status: _,
            action: _,
            spans_dropped: _,
            mut spans,
            part: _,
            parts: _,
        } = t;
        spans.truncate(raw.len());
        for (i, r) in raw.iter_mut().enumerate() {
            match spans.get_mut(i) {
                Some(s) => r.take_record_into(s, clock),
                None => spans.push(r.take_record(clock)),
            }
        }
        recycle_spans(raw);
        name.clone_from(&meta.name);
        session_id.clone_from(&meta.session_id);
        user_id.clone_from(&meta.user_id);
        tags.clone_from(&meta.tags);
        release.clone_from(&meta.release);
        version.clone_from(&meta.version);
        metadata.clone_from(&meta.metadata);
        for (slot, snapshot) in [(&mut input_json, input), (&mut output_json, output)] {
            let kept = match slot {
                serde_json::Value::Object(m) => snapshot.json_into(m),
                _ => false,
            };
            if !kept {
                *slot = snapshot.to_json();
            }
        }
        TraceRecord {
            trace_id,
            name,
            session_id,
            user_id,
            tags,
            release,
            version,
            metadata,
            start_unix_nanos,
            end_unix_nanos,
            input: input_json,
            output: output_json,
            status,
            action,
            spans_dropped,
            spans,
            part: None,
            parts: 0,
        }
    }

    fn into_fresh(self, earlier: &mut Vec<SpanRecord>) -> TraceRecord {
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
        let mut record = trace_shell(trace_id, &meta, start_unix_nanos, end_unix_nanos, std::mem::take(earlier));
        record.input = input.to_json();
        record.output = output.to_json();
        record.status = status;
        record.action = action;
        record.spans_dropped = spans_dropped;
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(spans: usize) -> TraceRecord {
        let span = SpanRecord {
            span_id: crate::trace::SpanId(1),
            parent_id: None,
            kind: crate::trace::SpanKind::Node,
            name: "n".into(),
            start_unix_nanos: 0,
            end_unix_nanos: 0,
            status: SpanStatus::Ok,
            input: None,
            output: None,
            attributes: Default::default(),
            generation: None,
        };
        trace_shell(TraceId(7), &TraceMeta::default(), 0, 0, vec![span; spans])
    }

    #[test]
    fn records_come_back_once_every_exporter_let_go_and_the_bounds_hold() {
        let mut kept = Kept::default();
        // Nobody kept it: spare at once.
        kept.give(Arc::new(record(3)));
        assert_eq!((kept.spare.len(), kept.held.len()), (1, 0));
        // Held by an exporter: kept until let go, then spare.
        let r = Arc::new(record(2));
        let exporter = Arc::clone(&r);
        kept.give(r);
        assert_eq!((kept.spare.len(), kept.held.len()), (1, 1));
        drop(exporter);
        kept.reap();
        assert_eq!((kept.spare.len(), kept.held.len(), kept.spare_spans), (2, 0, 5));
        assert_eq!(kept.take().map(|t| t.spans.len()), Some(2));
        // Held past the bound: the oldest are let go (their holders free them).
        let holders: Vec<Arc<TraceRecord>> = (0..3).map(|_| Arc::new(record(KEPT_SPANS as usize / 2))).collect();
        for h in &holders {
            kept.give(Arc::clone(h));
        }
        assert!(kept.held_spans <= KEPT_SPANS && kept.held.len() == 2, "{}", kept.held.len());
        assert!(holders.iter().skip(1).all(|h| Arc::strong_count(h) == 2));
        // Spares are bounded too, and an idle tick frees them.
        for _ in 0..10 {
            kept.give(Arc::new(record(SPARE_SPANS as usize / 4)));
        }
        assert!(kept.spare_spans <= SPARE_SPANS);
        assert!(kept.tick().is_none(), "records were given since the last tick");
        assert!(!kept.spare.is_empty());
        let released = kept.tick().expect("an idle tick lets the spares go");
        assert!(!released.is_empty());
        assert!(kept.spare.is_empty() && kept.spare_spans == 0);
    }
}
