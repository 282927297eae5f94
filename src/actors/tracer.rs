//! The tracer: the handle runs and users hold, and the actor behind it that assembles span
//! trees and feeds the exporters (in [`actor`]). Also the global tracer built from the
//! environment.

mod actor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};

use crate::error::ConfigError;
use crate::export::{DebugExporter, ExportReport, Exporter};
use crate::trace::recorder::{self, Recorder, RunTrace, SpanBuf, Switches};
use crate::trace::{
    announce_trace_file, SpanSink, TraceEnd, TraceId, TraceMeta, TraceRecord, TracingConfig, DEFAULT_LANGFUSE_HOST,
    DEFAULT_TRACE_FILE,
};
use actor::{Kept, TracerActor, TracerArgs, TracerMsg};

/// Where runs send their spans: the tracer actor, with a count of what could not be sent.
pub(crate) struct ActorSink {
    actor: ActorRef<TracerMsg>,
    lost: Arc<AtomicU64>,
    /// Spans cast to the tracer and not yet taken in by it.
    pub(crate) backlog: Arc<AtomicU64>,
    /// Spans shed because the backlog was over [`MAX_BACKLOG`] (only with an exporter that
    /// does not take parts).
    shed: Arc<AtomicU64>,
    /// Spans of runs in progress held by the tracer (not yet handed to the exporters).
    held: Arc<AtomicU64>,
    /// The tracer's exporters, for spans that bypass a tracer that is behind.
    exporters: Arc<[Arc<dyn Exporter>]>,
    /// Whether every exporter takes parts.
    stream: bool,
    /// Spans handed to the exporters straight from a run because the tracer was behind.
    bypassed: Arc<AtomicU64>,
    /// The tracer's records let go of by the exporters (see [`Kept`]): a run that bypasses
    /// the tracer builds its trace in one, and gives it back, as the tracer does.
    kept: Arc<parking_lot::Mutex<Kept>>,
}

/// The most spans waiting for the tracer (about 30 MB). Past it, a run hands its finished
/// spans to the exporters itself, as a part (or its whole trace), on its own thread: they
/// queue them or write them to their spools, and nothing is shed unless a spool is full. With
/// an exporter that does not take parts, runs shed their spans instead (counted, and said in
/// their trace) rather than let memory grow without bound.
pub(crate) const MAX_BACKLOG: u64 = 65_536;

impl ActorSink {
    fn over(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) > MAX_BACKLOG
    }

    /// Hands spans to the exporters from the run's thread: the tracer is behind. A whole
    /// trace's record is kept for reuse once they let go of it (a part, of another shape
    /// than a run's trace, is not).
    fn bypass(&self, record: TraceRecord) {
        warn_bypass();
        self.bypassed.fetch_add(record.weight(), Ordering::Relaxed);
        let record = Arc::new(record);
        let part = record.is_part();
        for e in self.exporters.iter() {
            if part {
                e.export_part(Arc::clone(&record));
            } else {
                e.export(Arc::clone(&record));
            }
        }
        if !part {
            self.kept.lock().give(record);
        }
    }
}

impl SpanSink for ActorSink {
    fn spans(&self, run: &RunTrace, mut spans: SpanBuf) -> u64 {
        let n = spans.len() as u64;
        if self.over() {
            if self.stream {
                let clock = run.clock();
                let records = spans.iter_mut().map(|s| s.take_record(clock)).collect();
                recorder::recycle_spans(spans);
                let index = run.parts().fetch_add(1, Ordering::Relaxed);
                let part = actor::part_record(run.trace_id, run.meta(), clock.start_unix_nanos(), index, records);
                self.bypass(part);
                return 0;
            }
            warn_shedding();
            self.shed.fetch_add(n, Ordering::Relaxed);
            recorder::recycle_spans(spans);
            return n;
        }
        run.mark_chunked();
        self.backlog.fetch_add(n, Ordering::Relaxed);
        let msg = TracerMsg::Spans(run.trace_id, run.clock(), Arc::clone(run.meta()), Arc::clone(run.parts()), spans);
        if self.actor.cast(msg).is_err() {
            self.backlog.fetch_sub(n, Ordering::Relaxed);
            self.lost.fetch_add(n, Ordering::Relaxed);
        }
        0
    }

    fn end(&self, run: &RunTrace, mut end: TraceEnd) {
        if self.over() {
            // A run none of whose spans are held by the tracer is assembled here; one whose
            // earlier spans the tracer holds ends there (one message, at most a chunk).
            if self.stream && !run.chunked() {
                let spare = self.kept.lock().take();
                let mut record = end.into_record_in(&mut Vec::new(), spare);
                record.parts = run.parts().load(Ordering::Relaxed);
                self.bypass(record);
                return;
            }
            if !self.stream {
                warn_shedding();
                // Keep the trace's own record (it says what was lost) and shed its spans.
                let n = end.spans.len() as u64;
                end.spans_dropped += n;
                self.shed.fetch_add(n, Ordering::Relaxed);
                recorder::recycle_spans(std::mem::take(&mut end.spans));
            }
        }
        let n = end.spans.len() as u64 + 1;
        self.backlog.fetch_add(n, Ordering::Relaxed);
        if self.actor.cast(TracerMsg::End(Box::new(end), Arc::clone(run.parts()))).is_err() {
            self.backlog.fetch_sub(n, Ordering::Relaxed);
            self.lost.fetch_add(n, Ordering::Relaxed);
        }
    }
}

fn warn_bypass() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::info!(
            target: "flowtrace::trace",
            "more than {MAX_BACKLOG} spans are waiting for the tracer: runs now hand their finished spans to the exporters themselves, which queue them or write them to their spools"
        )
    });
}

/// Resolves once `d` has passed on the wall clock (a paused test clock does not move it).
fn wall_clock_after(d: Duration) -> impl std::future::Future<Output = ()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name("flowtrace-deadline".into()).spawn(move || {
        std::thread::sleep(d);
        let _ = tx.send(());
    });
    async move {
        match spawned {
            Ok(_) => {
                let _ = rx.await;
            }
            // No thread: no wall-clock bound (the tracer's own deadline still holds).
            Err(_) => std::future::pending::<()>().await,
        }
    }
}

fn warn_shedding() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tracing::warn!(
            target: "flowtrace::trace",
            "more than {MAX_BACKLOG} spans are waiting for the tracer: the exporters cannot keep up, so runs now shed spans (counted; each trace says how many in spans_dropped)"
        )
    });
}

struct TracerInner {
    sink: Arc<ActorSink>,
    switches: Switches,
    sample_rate: f64,
    debug: bool,
    session_id: Option<String>,
    user_id: Option<String>,
}

impl Drop for TracerInner {
    fn drop(&mut self) {
        // The last handle is gone: stop the actor so the tracer thread ends.
        self.sink.actor.stop(None);
    }
}

/// A tracer: the actor that assembles span trees, and the exporters it feeds.
///
/// Cheap to clone. It runs on a thread of its own with its own single-threaded runtime, so it
/// works from any runtime (and from many test runtimes in one process).
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<TracerInner>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("switches", &self.inner.switches).finish()
    }
}

impl Tracer {
    /// A builder for a tracer with explicit exporters.
    pub fn builder() -> TracerBuilder {
        TracerBuilder::default()
    }

    /// Waits until every trace finished so far is delivered, spooled or dropped by each
    /// exporter, or `timeout` passes; reports which.
    ///
    /// At the deadline, what is not delivered is in the exporters' spools (where they have
    /// one) before this returns, spans still waiting for the tracer included: the deadline
    /// is on the wall clock from this call, and a tracer behind on its mailbox (at most
    /// 65,536 spans) gives the exporters only the time that is left. Returns by the
    /// deadline plus at most a second.
    pub async fn flush(&self, timeout: Duration) -> ExportReport {
        let deadline = std::time::Instant::now() + timeout;
        self.call(timeout, |reply| TracerMsg::Flush(deadline, reply)).await
    }

    /// Spans of runs still in progress that the tracer holds, not yet handed to the
    /// exporters. While every exporter [takes parts](crate::export::Exporter::takes_parts),
    /// this stays below [`PART_SPANS`](crate::export::PART_SPANS) per run in progress however
    /// long a run goes on; otherwise each run's spans are held until it ends.
    pub fn held_spans(&self) -> u64 {
        self.inner.sink.held.load(Ordering::Relaxed)
    }

    /// Flushes and stops the tracer; later runs traced with it are counted as lost.
    ///
    /// The deadline works as [`flush`](Self::flush)'s does; spans of runs still in progress
    /// that the tracer holds are handed to the exporters as parts first (when every exporter
    /// takes parts), so they are delivered or spooled, not dropped.
    pub async fn shutdown(&self, timeout: Duration) -> ExportReport {
        let deadline = std::time::Instant::now() + timeout;
        self.call(timeout, |reply| TracerMsg::Shutdown(deadline, reply)).await
    }

    async fn call(
        &self,
        timeout: Duration,
        msg: impl FnOnce(ractor::RpcReplyPort<ExportReport>) -> TracerMsg,
    ) -> ExportReport {
        let (tx, rx) = ractor::concurrency::oneshot();
        // The deadline is on the wall clock and kept by the tracer: timing out here on the
        // caller's clock would give up at once under a paused test clock. A stopped tracer
        // drops the reply port, so this cannot hang. The tracer's mailbox is bounded (runs
        // hand spans to the exporters themselves past MAX_BACKLOG), so it answers soon after
        // the deadline; should it not, past the deadline and a second the call returns with
        // what is still queued at the tracer counted as pending.
        let mut report = if self.inner.sink.actor.cast(msg(tx.into())).is_err() {
            ExportReport { reasons: vec!["the tracer has stopped".into()], ..Default::default() }
        } else {
            let late = wall_clock_after(timeout.saturating_add(Duration::from_secs(1)));
            tokio::select! {
                r = rx => match r {
                    Ok(r) => r,
                    Err(_) => {
                        ExportReport { reasons: vec!["the tracer stopped before answering".into()], ..Default::default() }
                    }
                },
                _ = late => {
                    let queued = self.inner.sink.backlog.load(Ordering::Relaxed);
                    ExportReport {
                        pending: queued,
                        reasons: vec![format!(
                            "the tracer was still behind at the deadline: {queued} spans were waiting for it (exported as it catches up)"
                        )],
                        ..Default::default()
                    }
                }
            }
        };
        let shed = self.inner.sink.shed.load(Ordering::Relaxed);
        if shed > 0 {
            report.dropped += shed;
            report.reasons.push(format!(
                "{shed} spans were shed because more than {MAX_BACKLOG} were waiting for the tracer (the exporters could not keep up); their traces say so in spans_dropped"
            ));
        }
        let bypassed = self.inner.sink.bypassed.load(Ordering::Relaxed);
        if bypassed > 0 {
            report.reasons.push(format!(
                "{bypassed} spans went to the exporters straight from their runs because more than {MAX_BACKLOG} were waiting for the tracer (counted above as the exporters delivered or spooled them)"
            ));
        }
        let lost = self.inner.sink.lost.load(Ordering::Relaxed);
        if lost > 0 {
            report.dropped += lost;
            report.reasons.push(format!("{lost} spans could not reach the tracer (it had stopped)"));
        }
        report
    }

    /// A tracer configured by `config`: Langfuse when its keys are set, the local JSON Lines
    /// file when they are not (or when a trace file is configured), and debug output when on.
    pub fn from_config(config: &TracingConfig) -> Result<Tracer, TracerError> {
        let mut b = Tracer::builder()
            .trace_inputs(config.trace_inputs())
            .trace_outputs(config.trace_outputs())
            .trace_prep(config.trace_prep())
            .trace_exec(config.trace_exec())
            .trace_post(config.trace_post())
            .trace_errors(config.trace_errors())
            .sample_rate(config.sample_rate())
            .debug(config.debug());
        if let Some(id) = config.session_id() {
            b = b.session_id(id);
        }
        if let Some(id) = config.user_id() {
            b = b.user_id(id);
        }
        let mut trace_file = config.trace_file();
        if config.langfuse_enabled() {
            if config.var("LANGFUSE_HOST").is_none() && config.host() == Some(DEFAULT_LANGFUSE_HOST) {
                tracing::info!(target: "flowtrace::trace", "LANGFUSE_HOST is not set: sending traces to {DEFAULT_LANGFUSE_HOST}");
            }
            match crate::export::langfuse_exporter(config) {
                Ok(Some(e)) => b = b.exporter_arc(e),
                Ok(None) => {
                    // Never silently untraced: with no Langfuse exporter, the local file.
                    let path = trace_file.get_or_insert_with(|| DEFAULT_TRACE_FILE.into());
                    tracing::warn!(target: "flowtrace::trace", "no Langfuse exporter in this build: traces go to {}", path.display());
                }
                Err(e) => return Err(e.into()),
            }
        }
        match crate::export::otlp_exporter(config) {
            Ok(Some(e)) => b = b.exporter_arc(e),
            Ok(None) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(path) = trace_file {
            let file =
                crate::export::JsonlFileExporter::with_privacy(&path, crate::export::Privacy::from_config(config))
                    .map_err(|e| {
                        let variable = if config.var("FLOWTRACE_TRACE_FILE").is_some() {
                            "FLOWTRACE_TRACE_FILE"
                        } else {
                            "trace_file"
                        };
                        ConfigError::new(variable, path.display().to_string(), format!("cannot open it: {e}"))
                    })?;
            announce_trace_file(file.path());
            b = b.exporter(file);
        }
        if config.debug() {
            b.debug_privacy = Some(crate::export::Privacy::from_config(config));
        }
        b.build()
    }

    /// [`from_config`](Self::from_config) with [`TracingConfig::from_env`].
    pub fn from_env() -> Result<Tracer, TracerError> {
        let config = TracingConfig::from_env()?;
        Self::from_config(&config)
    }

    /// Whether debug output is on.
    pub fn debug(&self) -> bool {
        self.inner.debug
    }

    /// The session id given to runs that set none (`FLOWTRACE_SESSION_ID`).
    pub(crate) fn default_session_id(&self) -> Option<&str> {
        self.inner.session_id.as_deref()
    }

    /// The user id given to runs that set none (`FLOWTRACE_USER_ID`).
    pub(crate) fn default_user_id(&self) -> Option<&str> {
        self.inner.user_id.as_deref()
    }

    /// A recorder for a run with these trace fields.
    pub(crate) fn recorder(&self, meta: &Arc<TraceMeta>) -> Recorder {
        self.recorder_for(recorder::new_trace_id(), meta)
    }

    /// A recorder for a run whose trace id is given (a durable run keeps one id everywhere).
    pub(crate) fn recorder_for(&self, id: TraceId, meta: &Arc<TraceMeta>) -> Recorder {
        Recorder::new(id, self.inner.switches, Arc::clone(&self.inner.sink) as Arc<dyn SpanSink>, Arc::clone(meta))
    }

    /// Whether a run with this trace id is recorded (deterministic sampling by id).
    pub(crate) fn samples(&self, id: TraceId) -> bool {
        let rate = self.inner.sample_rate;
        if rate >= 1.0 {
            return true;
        }
        ((id.0 >> 64) as u64 as f64 / u64::MAX as f64) < rate
    }
}

/// Builds a [`Tracer`].
#[derive(Default)]
pub struct TracerBuilder {
    exporters: Vec<Arc<dyn Exporter>>,
    switches: Switches,
    sample_rate: Option<f64>,
    debug: bool,
    /// The privacy rules of the debug output (the configuration's, from `from_config`).
    debug_privacy: Option<crate::export::Privacy>,
    session_id: Option<String>,
    user_id: Option<String>,
}

impl std::fmt::Debug for TracerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracerBuilder").field("exporters", &self.exporters.len()).finish()
    }
}

/// Why a tracer could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TracerError {
    /// A setting cannot be used.
    #[error("invalid tracer setting: {0}")]
    Config(#[from] ConfigError),
    /// The tracer thread or actor could not start.
    #[error("the tracer could not start: {0}")]
    Start(String),
}

impl TracerBuilder {
    /// Adds an exporter; traces go to every exporter added.
    pub fn exporter(mut self, e: impl Exporter) -> Self {
        self.exporters.push(Arc::new(e));
        self
    }

    /// Adds an exporter already behind an `Arc`.
    pub fn exporter_arc(mut self, e: Arc<dyn Exporter>) -> Self {
        self.exporters.push(e);
        self
    }

    /// Records span inputs (default on).
    pub fn trace_inputs(mut self, on: bool) -> Self {
        self.switches.inputs = on;
        self
    }
    /// Records span outputs (default on).
    pub fn trace_outputs(mut self, on: bool) -> Self {
        self.switches.outputs = on;
        self
    }
    /// Records `prep` spans (default on).
    pub fn trace_prep(mut self, on: bool) -> Self {
        self.switches.prep = on;
        self
    }
    /// Records `exec` spans, with their attempts and items (default on).
    pub fn trace_exec(mut self, on: bool) -> Self {
        self.switches.exec = on;
        self
    }
    /// Records `post` spans (default on).
    pub fn trace_post(mut self, on: bool) -> Self {
        self.switches.post = on;
        self
    }
    /// Records error messages and chains (default on); off keeps only the error kind.
    pub fn trace_errors(mut self, on: bool) -> Self {
        self.switches.errors = on;
        self
    }
    /// Prints debug output (`[TRACING] …` lines and each trace's tree) through `tracing`.
    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// The session id of runs that set none (what `FLOWTRACE_SESSION_ID` sets).
    pub fn session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// The user id of runs that set none (what `FLOWTRACE_USER_ID` sets).
    pub fn user_id(mut self, id: impl Into<String>) -> Self {
        self.user_id = Some(id.into());
        self
    }

    /// Traces this fraction of runs, chosen deterministically by trace id (default 1.0).
    pub fn sample_rate(mut self, rate: f64) -> Self {
        self.sample_rate = Some(rate);
        self
    }

    /// Starts the tracer's thread and actor.
    pub fn build(self) -> Result<Tracer, TracerError> {
        let sample_rate = self.sample_rate.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample_rate) || sample_rate.is_nan() {
            return Err(
                ConfigError::new("sample_rate", sample_rate.to_string(), "expected a number from 0 to 1").into()
            );
        }
        let mut exporters = self.exporters;
        if self.debug {
            exporters.push(Arc::new(DebugExporter::new(self.debug_privacy.unwrap_or_default())));
        }
        let exporters: Arc<[Arc<dyn Exporter>]> = exporters.into();
        let stream = !exporters.is_empty() && exporters.iter().all(|e| e.takes_parts());
        let (tx, rx) = std::sync::mpsc::channel();
        let backlog = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicU64::new(0));
        let kept = Arc::new(parking_lot::Mutex::new(Kept::default()));
        let args = TracerArgs {
            exporters: Arc::clone(&exporters),
            backlog: Arc::clone(&backlog),
            held: Arc::clone(&held),
            kept: Arc::clone(&kept),
        };
        // The thread ends when its actor stops (when the last handle is dropped, or at
        // shutdown); nothing joins it, so dropping a tracer never blocks.
        std::thread::Builder::new()
            .name("flowtrace-tracer".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Actor::spawn(None, TracerActor, args).await {
                        Ok((actor, handle)) => {
                            let _ = tx.send(Ok(actor));
                            let _ = handle.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                });
            })
            .map_err(|e| TracerError::Start(e.to_string()))?;
        let actor = rx.recv().map_err(|e| TracerError::Start(e.to_string()))?.map_err(TracerError::Start)?;
        Ok(Tracer {
            inner: Arc::new(TracerInner {
                sink: Arc::new(ActorSink {
                    actor,
                    lost: Arc::new(AtomicU64::new(0)),
                    backlog,
                    shed: Arc::new(AtomicU64::new(0)),
                    held,
                    exporters,
                    stream,
                    bypassed: Arc::new(AtomicU64::new(0)),
                    kept,
                }),
                switches: self.switches,
                sample_rate,
                debug: self.debug,
                session_id: self.session_id,
                user_id: self.user_id,
            }),
        })
    }
}

static GLOBAL: std::sync::OnceLock<parking_lot::RwLock<Option<Tracer>>> = std::sync::OnceLock::new();

fn global_slot() -> &'static parking_lot::RwLock<Option<Tracer>> {
    GLOBAL.get_or_init(|| parking_lot::RwLock::new(None))
}

/// Installs `tracer` as the one [`TracedFlow`](crate::TracedFlow)s use when given none.
pub fn set_global_tracer(tracer: Tracer) {
    *global_slot().write() = Some(tracer);
}

/// The global tracer: the one installed with [`set_global_tracer`], or else one built once
/// from the environment ([`Tracer::from_env`]). If the environment is invalid, the error is
/// logged once and traced runs run untraced: tracing never fails a run.
pub fn global() -> Option<Tracer> {
    if let Some(t) = global_slot().read().clone() {
        return Some(t);
    }
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| match Tracer::from_env() {
        Ok(t) => {
            let mut slot = global_slot().write();
            if slot.is_none() {
                *slot = Some(t);
            }
        }
        Err(e) => {
            tracing::error!(target: "flowtrace::trace", "tracing is off: {e}");
            eprintln!("flowtrace: tracing is off: {e}");
        }
    });
    global_slot().read().clone()
}

/// Flushes the global tracer (if any): waits up to `timeout` for every finished trace to be
/// delivered, spooled or dropped, and reports which.
pub async fn flush(timeout: Duration) -> ExportReport {
    let tracer = global_slot().read().clone();
    let report = match tracer {
        Some(t) => t.flush(timeout).await,
        None => ExportReport::default(),
    };
    if global_slot().read().as_ref().is_some_and(Tracer::debug) {
        tracing::info!(target: "flowtrace::trace", "[TRACING] Trace flushed: {} spans delivered, {} spooled, {} dropped", report.delivered, report.spooled, report.dropped);
    }
    report
}

/// Flushes and stops the global tracer.
pub async fn shutdown(timeout: Duration) -> ExportReport {
    let tracer = global_slot().write().take();
    match tracer {
        Some(t) => t.shutdown(timeout).await,
        None => ExportReport::default(),
    }
}
