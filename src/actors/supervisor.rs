//! The run supervisor: one actor per run.
//!
//! The run executes inside the actor (in `post_start`, which ractor runs under the actor's
//! kill signal), answers with the run's result, and the actor is the run's failure boundary:
//! a panic in a node is contained where it happens and comes back as an error naming the
//! node, and anything that escapes that (a bug in the engine) still ends only this run.
//! Cancelling is `kill()`: the run's future is dropped, so open spans end as cancelled.
//!
//! Where work runs: a sequential chain has no concurrency to gain, so its nodes run inline in
//! the supervisor's task (spawning an actor per node visit, and a call to it, cost several
//! times a node's whole budget: `benches/engine.rs` measures both, `baseline_actor_per_node`).
//! Concurrent work, a parallel batch's items and a parallel batch flow's runs, goes to node
//! actors the supervisor spawns linked to itself, one per worker thread (`super::node_actor`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use super::node_actor::{Alive, Crew};
use super::tracer::Tracer;
use super::visit::{install_panic_hook, panic_error, visit, RunLimits, VisitCx};
use crate::error::{Error, Phase};
use crate::flow::graph::NodeRef;
use crate::flow::store::SharedStore;
use crate::flow::{Action, Params};
use crate::trace::recorder::error_status;
use crate::trace::{Recorder, SpanStatus, TraceEnd, TraceMeta};

/// Options for one run.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// Params for the run instead of the flow's own (when non-empty).
    pub params: Option<Params>,
    /// Ends the run with [`Error::Timeout`] when it takes longer.
    pub timeout: Option<Duration>,
    /// Ends the run with [`Error::MaxSteps`] after this many node visits in one flow.
    pub max_steps: Option<u64>,
    pub(crate) trace: Option<(Tracer, Arc<TraceMeta>)>,
    /// A durable run: its checkpoint hook, its trace id (the same on every worker) and, when
    /// it continues from a checkpoint, the resume span's content.
    pub(crate) durable: Option<DurableParts>,
}

/// What a durable run adds to a run's options.
#[derive(Clone)]
pub(crate) struct DurableParts {
    pub(crate) hook: Arc<dyn super::visit::RunHook>,
    pub(crate) trace_id: crate::trace::TraceId,
    /// `Some` when the run continues from a checkpoint: the span's input (worker, node, …).
    pub(crate) resume: Option<serde_json::Value>,
    /// The run's initial store, the trace's input on every part of the run (the store this
    /// part starts from is a checkpoint's).
    pub(crate) input: Option<crate::flow::store::StoreSnapshot>,
}

impl std::fmt::Debug for DurableParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableParts").field("trace_id", &self.trace_id).field("resume", &self.resume).finish()
    }
}

impl RunOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the run's params.
    pub fn params(mut self, params: Params) -> Self {
        self.params = Some(params);
        self
    }
    /// Sets a time limit for the whole run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Sets a step limit for each flow of the run.
    pub fn max_steps(mut self, n: u64) -> Self {
        self.max_steps = Some(n);
        self
    }
}

/// A run supervisor takes no messages: its run executes in `post_start`, which ractor runs
/// under the actor's kill signal, so cancelling a run is `kill()`.
pub(crate) enum RunMsg {}

/// Why a run was cancelled, set by whoever cancels it before the kill, read by the run's
/// trace and by the caller.
pub(crate) type CancelReason = Arc<parking_lot::Mutex<Option<String>>>;

/// PocketFlow's warnings of one run, kept for its [`RunReport`] (also when it is cancelled).
pub(crate) type Warnings = Arc<parking_lot::Mutex<Vec<String>>>;

pub(crate) struct RunArgs {
    root: NodeRef,
    shared: SharedStore,
    options: RunOptions,
    reply: oneshot::Sender<Result<Action, Error>>,
    reason: CancelReason,
    warnings: Warnings,
}

/// A finished run: its result, its outcome, and PocketFlow's warnings (which also go to
/// `tracing`, target `flowtrace::flow`).
#[derive(Debug)]
#[non_exhaustive]
pub struct RunReport {
    /// The last action, or why the run failed.
    pub result: Result<Action, Error>,
    /// PocketFlow's warnings, in the order they were given (`Flow ends: 'x' not found in
    /// ['a', 'b']`, `Node won't run successors. Use Flow.`).
    pub warnings: Vec<String>,
}

impl RunReport {
    /// How the run ended: succeeded, failed or cancelled.
    pub fn outcome(&self) -> super::runtime::RunStatus {
        super::runtime::RunStatus::of(&self.result)
    }
}

pub(crate) struct RunSupervisor;

static LIVE_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many run supervisors are alive in this process: runs started and not yet ended.
///
/// A diagnostic for services (runs in flight) and for leak tests: it counts supervisor actors
/// from their start to the moment their state is dropped, whichever way they end.
pub fn live_runs() -> usize {
    LIVE_RUNS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts a live supervisor; held in its state, so a killed actor is counted out too.
pub(crate) struct Live;

impl Live {
    fn new() -> Self {
        LIVE_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE_RUNS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Actor for RunSupervisor {
    type Msg = RunMsg;
    type State = (Option<RunArgs>, Live);
    type Arguments = RunArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<RunMsg>,
        args: RunArgs,
    ) -> Result<(Option<RunArgs>, Live), ActorProcessingErr> {
        Ok((Some(args), Live::new()))
    }

    // The run itself. It executes in this actor's own task (no second task, no message back:
    // both cost more than the whole node budget), and a kill drops it mid-way.
    async fn post_start(
        &self,
        me: ActorRef<RunMsg>,
        state: &mut (Option<RunArgs>, Live),
    ) -> Result<(), ActorProcessingErr> {
        if let Some(RunArgs { root, shared, options, reply, reason, warnings }) = state.0.take() {
            let crew = Crew::new(Some(me.get_cell()));
            // Declared before the run's future, so dropped after it when a kill drops both.
            let mut end = RunEnd { finisher: None, reply: Some(reply), alive: Arc::clone(&crew.alive) };
            let res = AssertUnwindSafe(execute(root, shared, options, reason, crew, warnings, &mut end.finisher))
                .catch_unwind()
                .await
                .unwrap_or_else(|p| Err(panic_error("<engine>", Phase::Exec, p)));
            drop(end.finisher.take());
            if let Some(reply) = end.reply.take() {
                let _ = reply.send(res);
            }
        }
        me.stop(None);
        Ok(())
    }

    // A run supervisor links no actors today; should one fail, log it and stop the run
    // rather than ractor's default of stopping silently.
    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<RunMsg>,
        event: SupervisionEvent,
        _state: &mut (Option<RunArgs>, Live),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, err) = event {
            tracing::error!(target: "flowtrace::run", actor = %who.get_id(), "a run's child actor failed: {err}");
            me.stop(Some(format!("child actor failed: {err}")));
        }
        Ok(())
    }
}

/// A started run: its supervisor, and how to cancel it.
pub(crate) struct RunControl {
    actor: ActorRef<RunMsg>,
    reason: CancelReason,
    warnings: Warnings,
}

impl RunControl {
    /// Cancels the run: the first reason given wins.
    pub(crate) fn cancel(&self, reason: impl Into<String>) {
        {
            let mut r = self.reason.lock();
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        self.actor.kill();
    }

    /// The run's warnings so far.
    pub(crate) fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// The result of a run whose supervisor ended without answering: it was cancelled.
    pub(crate) fn lost(&self) -> Error {
        match self.reason.lock().clone() {
            Some(reason) => Error::Cancelled { reason },
            None => Error::Engine("the run supervisor stopped without a result".into()),
        }
    }
}

/// Stops a run whose caller went away (its future was dropped).
struct CancelOnDrop(Option<RunControl>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel("the caller stopped waiting for the run");
        }
    }
}

/// Runs `root` under a fresh supervisor actor and waits for its result.
pub(crate) async fn run(root: NodeRef, shared: SharedStore, options: RunOptions) -> Result<Action, Error> {
    run_report(root, shared, options).await.result
}

/// Runs `root` as [`run`] does, and reports its warnings with its result.
pub(crate) async fn run_report(root: NodeRef, shared: SharedStore, options: RunOptions) -> RunReport {
    let (control, rx) = match start(root, shared, options).await {
        Ok(started) => started,
        Err(e) => return RunReport { result: Err(e), warnings: Vec::new() },
    };
    let mut guard = CancelOnDrop(Some(control));
    let res = rx.await;
    let control = guard.0.take().expect("the guard holds the control until here");
    RunReport { result: res.unwrap_or_else(|_| Err(control.lost())), warnings: control.warnings() }
}

/// Spawns the supervisor; the receiver gets the run's result.
pub(crate) async fn start(
    root: NodeRef,
    shared: SharedStore,
    options: RunOptions,
) -> Result<(RunControl, oneshot::Receiver<Result<Action, Error>>), Error> {
    let (tx, rx) = oneshot::channel();
    let reason = CancelReason::default();
    let warnings = Warnings::default();
    let args =
        RunArgs { root, shared, options, reply: tx, reason: Arc::clone(&reason), warnings: Arc::clone(&warnings) };
    let (actor, _join) = Actor::spawn(None, RunSupervisor, args)
        .await
        .map_err(|e| Error::Engine(format!("could not start the run supervisor: {e}")))?;
    Ok((RunControl { actor, reason, warnings }, rx))
}

/// The end of a run as its supervisor holds it: the trace's end and the caller's answer.
///
/// When a kill drops the run mid-way, the run's node actors are killed too (ractor stops a
/// supervisor's linked children), but they end a moment later, in their own tasks. Their open
/// spans end as cancelled only then, so the trace's end (and with it the caller's answer,
/// which must not arrive before the trace is complete) waits for them, off the supervisor.
struct RunEnd {
    finisher: Option<TraceFinisher>,
    reply: Option<oneshot::Sender<Result<Action, Error>>>,
    alive: Arc<Alive>,
}

impl Drop for RunEnd {
    fn drop(&mut self) {
        let (finisher, reply) = (self.finisher.take(), self.reply.take());
        if finisher.is_none() || self.alive.count() == 0 {
            drop(finisher);
            drop(reply);
            return;
        }
        let alive = Arc::clone(&self.alive);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    alive.wait_none(Duration::from_secs(5)).await;
                    drop(finisher);
                    drop(reply);
                });
            }
            Err(_) => {
                drop(finisher);
                drop(reply);
            }
        }
    }
}

/// Sends the trace's end record when the run ends, however it ends (also when aborted).
struct TraceFinisher {
    rec: Recorder,
    meta: Arc<TraceMeta>,
    shared: SharedStore,
    input: crate::flow::store::StoreSnapshot,
    start_unix_nanos: u64,
    cancel_reason: CancelReason,
    result: Option<(SpanStatus, Option<String>)>,
}

impl Drop for TraceFinisher {
    fn drop(&mut self) {
        let (status, action) = self.result.take().unwrap_or_else(|| {
            let reason = self.cancel_reason.lock().clone().unwrap_or_else(|| "the run was cancelled".into());
            (SpanStatus::Cancelled { reason }, None)
        });
        let end = TraceEnd {
            trace_id: self.rec.trace_id(),
            meta: Arc::clone(&self.meta),
            start_unix_nanos: self.start_unix_nanos,
            end_unix_nanos: self.rec.now_unix_nanos(),
            input: std::mem::take(&mut self.input),
            output: self.shared.snapshot(),
            status,
            action,
            spans: self.rec.drain(),
            clock: self.rec.clock(),
            spans_dropped: self.rec.shed(),
        };
        self.rec.end(end);
    }
}

/// One run, start to end: params, tracing, limits.
async fn execute(
    root: NodeRef,
    shared: SharedStore,
    options: RunOptions,
    cancel_reason: CancelReason,
    crew: Crew,
    warnings: Warnings,
    finisher: &mut Option<TraceFinisher>,
) -> Result<Action, Error> {
    install_panic_hook();
    let params = match options.params {
        Some(p) if !p.is_empty() => Arc::new(p),
        _ => Arc::clone(&root.0.params.read()),
    };
    let trace_id = options.durable.as_ref().map(|d| d.trace_id);
    let recorder = options
        .trace
        .as_ref()
        .map(|(t, meta)| match trace_id {
            Some(id) => t.recorder_for(id, meta),
            None => t.recorder(meta),
        })
        .filter(|r| options.trace.as_ref().is_some_and(|(t, _)| t.samples(r.trace_id())));
    *finisher = match (&recorder, &options.trace) {
        (Some(rec), Some((tracer, meta))) => {
            crate::trace::debug_start(tracer.debug(), meta, rec);
            Some(TraceFinisher {
                rec: rec.clone(),
                meta: Arc::clone(meta),
                shared: shared.clone(),
                input: options.durable.as_ref().and_then(|d| d.input.clone()).unwrap_or_else(|| shared.snapshot()),
                start_unix_nanos: rec.now_unix_nanos(),
                cancel_reason: Arc::clone(&cancel_reason),
                result: None,
            })
        }
        _ => None,
    };
    // A run continuing from a checkpoint opens with a span of its own, naming the worker.
    let resume_span = match (&recorder, options.durable.as_ref().and_then(|d| d.resume.clone())) {
        (Some(rec), Some(input)) => {
            let mut s = rec.start(None, crate::trace::SpanKind::Resume, "resume");
            s.input(|| input);
            Some(s)
        }
        _ => None,
    };
    let cx = VisitCx {
        shared,
        params,
        trace: recorder,
        parent: resume_span.as_ref().map(|s| s.id()),
        limits: Arc::new(RunLimits { max_steps: options.max_steps }),
        crew: crew.clone(),
        warnings,
        hook: options.durable.as_ref().map(|d| Arc::clone(&d.hook)),
        progress: None,
    };
    if root.has_successors() {
        cx.warn(root.name(), "Node won't run successors. Use Flow.".into());
    }
    let res = match options.timeout {
        Some(limit) => match tokio::time::timeout(limit, visit(&root, &cx)).await {
            Ok(r) => r,
            Err(_) => {
                *cancel_reason.lock() = Some(format!("run timed out after {limit:?}"));
                // The dropped visit killed its node actors; their spans end (as cancelled)
                // when they are gone, and belong in the trace.
                crew.alive.wait_none(Duration::from_secs(5)).await;
                Err(Error::Timeout { node: None, after: limit })
            }
        },
        None => visit(&root, &cx).await,
    };
    if let Some(s) = resume_span {
        s.end_with(res.as_ref().map(|_| ()));
    }
    if let Some(f) = finisher.as_mut() {
        f.result = Some(match &res {
            Ok(a) => (SpanStatus::Ok, a.as_str().map(str::to_owned)),
            Err(e) => (error_status(e, f.rec.switches().errors), None),
        });
    }
    drop(finisher.take());
    res
}
