//! How a node visit runs: panic containment, PocketFlow's retry loop, batches, the
//! orchestration loop of flows and batch flows, and the spans each of them records.
//!
//! Nodes reach this module only through their erased phases (`crate::flow::erased`), so
//! what users write knows nothing of how it is run or recorded.

use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Once, OnceLock};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;
use tracing::Instrument;

use super::node_actor::{run_concurrently, Crew};
use super::supervisor::RunState;
use crate::error::{BoxError, Error, NodeResult, Phase};
use crate::flow::batch::BatchFlowDef;
use crate::flow::erased::{ErasedBatch, ErasedNode, Executed, GivenError, PhaseCell, PhaseError, Prepared};
use crate::flow::flows::FlowDef;
use crate::flow::graph::{Hop, NodeConfig, NodeDef, NodeKind, NodeRef, Plan};
use crate::flow::store::{record_reads, record_writes, Key, Recorded, SharedStore, MAX_RECORDED};
use crate::flow::{Action, Context, ExecContext, Params};
use crate::trace::model::{SpanId, SpanKind};
use crate::trace::recorder::{capture, capture_as, error_status, AttrVal, OpenSpan};
use crate::trace::Recorder;

/// Limits that hold for a whole run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunLimits {
    pub(crate) max_steps: Option<u64>,
}

/// What a visit needs from its run: the store, the run's params, and where to record spans.
#[derive(Clone)]
pub(crate) struct VisitCx {
    pub(crate) shared: SharedStore,
    pub(crate) params: Arc<Params>,
    pub(crate) trace: Option<Recorder>,
    pub(crate) parent: Option<SpanId>,
    pub(crate) limits: RunLimits,
    /// Where the run's concurrent work goes: node actors linked to its supervisor.
    pub(crate) crew: Crew,
    /// The run's shared state: PocketFlow's warnings of this run go there, for its report.
    pub(crate) run: Arc<RunState>,
    /// A durable run's hook, for the root flow's loop only (it is not passed to the visits).
    pub(crate) hook: Option<Arc<dyn RunHook>>,
    /// The same hook for a visit of the root flow, so that a sequential batch flow there
    /// checkpoints its progress; never passed further down (see [`VisitCx::with_parent`]).
    pub(crate) progress: Option<Arc<dyn RunHook>>,
}

impl VisitCx {
    /// Logs PocketFlow's warning `message` about `node` and keeps it for the run's report.
    pub(crate) fn warn(&self, node: &str, message: String) {
        tracing::warn!(target: "flowtrace::flow", node = %node, "{message}");
        self.run.warn(message);
    }
}

/// How a durable run sees its root flow: where it starts, and a checkpoint after each visit.
/// The loop knows nothing more of durability (`crate::actors::durable` does the rest).
pub(crate) trait RunHook: Send + Sync + 'static {
    /// The node to start at and the steps already taken, instead of the flow's start node
    /// (`None`: start at `start`, from step 0).
    fn resume_at(&self, start: Option<&NodeRef>) -> Result<Option<(NodeRef, u64)>, Error>;
    /// After each visit of the root flow that ended in an action, or suspended the run
    /// (`waiting_for` is set, `next` is the node that waits). An error ends the run.
    fn visited<'a>(&'a self, visit: Visited<'a>) -> BoxFuture<'a, Result<(), Error>>;
    /// Where a sequential batch flow visited by the root flow stands, when the run's
    /// checkpoint was taken inside it: its param sets and how many have completed.
    fn batch_resume(&self, _node: &NodeRef) -> Option<BatchProgress> {
        None
    }
    /// After each param set of such a batch flow completed (the store has its writes).
    fn batch_step<'a>(
        &'a self,
        _node: &'a NodeRef,
        _progress: &'a BatchProgress,
        _shared: &'a SharedStore,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A sequential batch flow's progress in a durable run: its param sets (as its `params`
/// gave them) and how many of them have completed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchProgress {
    pub(crate) sets: Vec<Params>,
    pub(crate) done: usize,
}

/// One finished visit of a durable run's root flow.
#[cfg_attr(not(feature = "durable"), allow(dead_code))]
pub(crate) struct Visited<'a> {
    pub(crate) node: &'a NodeRef,
    pub(crate) action: Option<&'a Action>,
    pub(crate) next: Option<&'a NodeRef>,
    /// The store key the run waits for, when the visit suspended it.
    pub(crate) waiting_for: Option<&'a str>,
    pub(crate) steps: u64,
    pub(crate) shared: &'a SharedStore,
}

impl VisitCx {
    /// The context of a visit's children: batch progress is only checkpointed for the
    /// root flow's own visits.
    fn with_parent(&self, parent: Option<SpanId>) -> VisitCx {
        VisitCx { parent, progress: None, ..self.clone() }
    }

    fn span(&self, kind: SpanKind, name: &Arc<str>) -> Option<OpenSpan> {
        self.trace.as_ref().map(|r| r.start(self.parent, kind, Arc::clone(name)))
    }

    /// A span starting at a clock reading taken by the caller (`None` when untraced).
    fn span_at(&self, kind: SpanKind, name: &Arc<str>, at: Option<Instant>) -> Option<OpenSpan> {
        match (&self.trace, at) {
            (Some(r), Some(at)) => Some(r.start_at(self.parent, kind, Arc::clone(name), at)),
            _ => None,
        }
    }

    fn context<'a>(&'a self, node: &'a str) -> Context<'a> {
        Context { shared: &self.shared, params: &self.params, node }
    }
}

// ---------------------------------------------------------------------------------------------
// Panics and errors

thread_local! {
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// How many contained regions (a hook's future being polled) this thread is inside.
    static CONTAINED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Marks the thread as inside a contained region while alive.
struct Contained;

// Inlined (here and in its drop): a release build's code units split the crate, and a call
// across them per poll of a node's future is several times the work it does.
impl Contained {
    #[inline]
    fn enter() -> Self {
        CONTAINED.with(|c| c.set(c.get() + 1));
        Contained
    }
}

impl Drop for Contained {
    #[inline]
    fn drop(&mut self) {
        CONTAINED.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Installs, once, a panic hook that notes where a panic happened (for the error and the
/// span). A panic that a run contains (it becomes the run's [`Error::Panic`]) is reported
/// through `tracing`, with its location, where the error is made, and not printed by Rust's
/// default hook: the run's caller gets it as an error, and a backtrace on stderr for a
/// handled error is noise. A hook the application installed before still runs for it. Any
/// other panic goes to the hook that was there before, as if this one were not installed.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        // `take_hook` leaves the default hook installed, so this is the default hook: the one
        // the application's own hook, if any, is told apart from. A copy of the default hook
        // is the same function behind the same vtable.
        let default = std::panic::take_hook();
        let user_installed = !std::ptr::eq(&*previous, &*default);
        std::panic::set_hook(Box::new(move |info| {
            let loc = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            PANIC_LOCATION.with(|p| *p.borrow_mut() = loc);
            if CONTAINED.with(|c| c.get()) == 0 || user_installed {
                previous(info);
            }
        }));
    });
}

/// Runs a hook's future, turning a panic into [`Error::Panic`] naming the node and phase.
pub(crate) async fn contain<F: Future>(node: &str, phase: Phase, fut: F) -> Result<F::Output, Error> {
    contain_at(node, || phase, fut).await
}

/// [`contain`] for a future that runs several phases: `phase` says which one panicked.
async fn contain_at<F: Future>(node: &str, phase: impl FnOnce() -> Phase, fut: F) -> Result<F::Output, Error> {
    let mut fut = std::pin::pin!(AssertUnwindSafe(fut).catch_unwind());
    let res = std::future::poll_fn(|cx| {
        let _inside = Contained::enter();
        fut.as_mut().poll(cx)
    })
    .await;
    match res {
        Ok(v) => Ok(v),
        Err(payload) => Err(panic_error(node, phase(), payload)),
    }
}

pub(crate) fn panic_error(node: &str, phase: Phase, payload: Box<dyn std::any::Any + Send>) -> Error {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    };
    let location = PANIC_LOCATION.with(|p| p.borrow_mut().take());
    tracing::error!(
        target: "flowtrace::panic",
        node,
        phase = phase.as_str(),
        location = location.as_deref().unwrap_or("unknown"),
        "node '{node}' panicked in {phase}: {message} (contained: the run ends with this error)"
    );
    Error::Panic { node: node.to_owned(), phase, message, location }
}

/// A hook's error, named by node and phase. A flowtrace error raised inside a hook (a timeout,
/// a nested run's failure) passes through as it is.
fn hook_error(node: &str, phase: Phase, e: BoxError) -> Error {
    match e.downcast::<Error>() {
        Ok(inner) => *inner,
        Err(e) => Error::Node { node: node.to_owned(), phase, source: e },
    }
}

/// A hook run under panic containment, its error named by node and phase.
async fn guarded<T>(node: &str, phase: Phase, fut: impl Future<Output = NodeResult<T>>) -> Result<T, Error> {
    contain(node, phase, fut).await?.map_err(|e| hook_error(node, phase, e))
}

/// A hook's boxed future under panic containment, polled in place (a panic becomes
/// [`Error::Panic`] naming the node and phase), with `rec` recording its store accesses
/// when given. A struct, not an `async fn` around the future: each `async fn` layer that
/// takes a future by value holds it twice (its argument and its pinned copy), and the
/// layers of containment, recording and retries made a traced visit's future kilobytes
/// that were copied at every move.
struct Hook<'r, F> {
    fut: F,
    node: &'r str,
    phase: Phase,
    rec: Option<&'r mut Recorded>,
}

impl<'r, F> Hook<'r, F> {
    fn new(node: &'r str, phase: Phase, fut: F) -> Self {
        Hook { fut, node, phase, rec: None }
    }

    fn recording(mut self, rec: Option<&'r mut Recorded>) -> Self {
        self.rec = rec;
        self
    }
}

impl<F: Future + Unpin> Future for Hook<'_, F> {
    type Output = Result<F::Output, Error>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = &mut *self;
        let _inside = Contained::enter();
        let fut = &mut this.fut;
        let mut poll = || std::panic::catch_unwind(AssertUnwindSafe(|| std::pin::Pin::new(&mut *fut).poll(cx)));
        let polled = match this.rec.as_deref_mut() {
            Some(r) => r.during(poll),
            None => poll(),
        };
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(panic_error(this.node, this.phase, payload))),
        }
    }
}

/// A hook's result with its error named by node and phase (as [`guarded`] gives it).
fn named<T>(node: &str, phase: Phase, res: Result<NodeResult<T>, Error>) -> Result<T, Error> {
    res?.map_err(|e| hook_error(node, phase, e))
}

/// Ends the open phase and node spans with `e` and returns it.
fn fail<T>(e: Error, phase_span: Option<OpenSpan>, node_span: Option<OpenSpan>) -> Result<T, Error> {
    if let Some(s) = phase_span {
        s.end_with(Err(&e));
    }
    if let Some(s) = node_span {
        s.end_with(Err(&e));
    }
    Err(e)
}

// ---------------------------------------------------------------------------------------------
// Dispatch

/// Dispatches one visit by node kind. Boxed because flows recurse.
pub(crate) fn visit<'a>(node: &'a NodeRef, cx: &'a VisitCx) -> BoxFuture<'a, Result<Action, Error>> {
    // Each visit is also a `tracing` span, so applications' own subscribers see it (a disabled
    // span costs a few nanoseconds).
    match &node.0.kind {
        NodeKind::Node(n) => Box::pin(
            visit_node(n, &node.0, cx)
                .instrument(tracing::info_span!(target: "flowtrace::node", "node", node = %node.name())),
        ),
        NodeKind::Batch { node: b, parallel } => Box::pin(
            visit_batch(b, *parallel, node, cx)
                .instrument(tracing::info_span!(target: "flowtrace::node", "node", node = %node.name())),
        ),
        NodeKind::Flow(f) => Box::pin(
            visit_flow(node, f, cx)
                .instrument(tracing::info_span!(target: "flowtrace::flow", "flow", flow = %node.name())),
        ),
        NodeKind::BatchFlow(b) => Box::pin(
            visit_batch_flow(node, b, cx)
                .instrument(tracing::info_span!(target: "flowtrace::flow", "batch_flow", flow = %node.name())),
        ),
    }
}

/// A run's root visit: a flow whose visits nothing records is visited in place (no box, no
/// `tracing` span for it), by the unrecorded loop alone; anything else goes through [`visit`].
///
/// So the future of an unrecorded run holds only what such a run needs: the recorded loop's
/// future (a traced visit lives in it, unboxed) is kilobytes, and the run's future is moved
/// once as it starts.
pub(crate) async fn visit_root(node: &NodeRef, cx: &VisitCx) -> Result<Action, Error> {
    match &node.0.kind {
        NodeKind::Flow(f)
            if cx.hook.is_none()
                && cx.progress.is_none()
                && unrecorded(cx)
                && !tracing::enabled!(target: "flowtrace::flow", tracing::Level::INFO) =>
        {
            let name = node.name();
            let ctx = cx.context(name);
            let prep = match &f.prep {
                Some(p) => guarded(name, Phase::Prep, async { p(&ctx) }).await?,
                None => Value::Null,
            };
            let max_steps = f.max_steps.or(cx.limits.max_steps);
            let last = orchestrate_unrecorded(name, Route::Plan(f.plan()), max_steps, cx).await?;
            match &f.post {
                Some(post) => guarded(name, Phase::Post, async { post(&ctx, prep, last) }).await,
                None => Ok(last),
            }
        }
        _ => visit(node, cx).await,
    }
}

/// The `tracing` span of one phase (a child of the visit's `node` span).
fn phase_span(phase: &'static str) -> tracing::Span {
    tracing::info_span!(target: "flowtrace::node", "phase", phase)
}

// ---------------------------------------------------------------------------------------------
// Exec: one attempt at a time, with retries and the fallback

/// The exec side of a visit: a plain node's exec on its prep result, or a batch node's on
/// one item; inline or on the blocking pool.
enum ExecTarget<'a> {
    Node { node: &'a Arc<dyn ErasedNode>, prep: &'a Prepared },
    Item { node: &'a Arc<dyn ErasedBatch>, items: &'a Prepared, index: usize },
}

impl ExecTarget<'_> {
    /// One attempt as the node's own boxed future (inline), or one that runs it on the
    /// blocking pool.
    fn attempt_boxed(&self, cx: ExecContext, blocking: bool) -> BoxFuture<'_, NodeResult<Executed>> {
        match (self, blocking) {
            (ExecTarget::Node { node, prep }, false) => node.exec(&***prep, cx),
            (ExecTarget::Item { node, items, index }, false) => node.exec(&***items, *index, cx),
            (_, true) => Box::pin(self.attempt(cx, true)),
        }
    }

    /// The fallback as the node's own boxed future.
    fn fallback_boxed(&self, err: BoxError, cx: ExecContext) -> BoxFuture<'_, NodeResult<Executed>> {
        match self {
            ExecTarget::Node { node, prep } => node.fallback(&***prep, err, cx),
            ExecTarget::Item { node, items, index } => node.fallback(&***items, *index, err, cx),
        }
    }

    async fn attempt(&self, cx: ExecContext, blocking: bool) -> NodeResult<Executed> {
        match (self, blocking) {
            (ExecTarget::Node { node, prep }, false) => node.exec(&***prep, cx).await,
            (ExecTarget::Node { node, prep }, true) => {
                let (node, prep) = (Arc::clone(node), Arc::clone(prep));
                on_blocking_pool(move || node.exec_detached(prep, cx)).await
            }
            (ExecTarget::Item { node, items, index }, false) => node.exec(&***items, *index, cx).await,
            (ExecTarget::Item { node, items, index }, true) => {
                let (node, items, index) = (Arc::clone(node), Arc::clone(items), *index);
                on_blocking_pool(move || node.exec_detached(items, index, cx)).await
            }
        }
    }
}

/// Runs an async closure to completion on a blocking-pool thread; a panic there is resumed
/// here, where the visit's panic containment turns it into an error.
async fn on_blocking_pool<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let run = move || {
        // A panic here is resumed in the caller's contained region: it is contained too.
        let _inside = Contained::enter();
        handle.block_on(f())
    };
    match tokio::task::spawn_blocking(run).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(e) => panic!("blocking exec was cancelled: {e}"),
        },
    }
}

/// An attempt span's name: `attempt 0`, `attempt 1`, … (0-based, as `ExecContext::attempt`,
/// item and batch indices are).
fn attempt_name(n: u32) -> Arc<str> {
    static NAMES: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| (0..16).map(|i| Arc::from(format!("attempt {i}"))).collect());
    names.get(n as usize).cloned().unwrap_or_else(|| Arc::from(format!("attempt {n}")))
}

static WAIT_NAME: OnceLock<Arc<str>> = OnceLock::new();

/// PocketFlow's retry loop (spec §2): attempts `0..max_retries`, a wait between attempts and
/// never after the last, then `exec_fallback` with the last error. Each attempt, wait and the
/// fallback is a span under `parent`.
async fn run_exec(
    target: &ExecTarget<'_>,
    def: &NodeDef,
    cfg: &NodeConfig,
    params: &Arc<Params>,
    item: Option<usize>,
    trace: Option<(&Recorder, SpanId)>,
) -> Result<Executed, Error> {
    let name = &*def.name;
    let mut attempt = 0;
    loop {
        let mut span = trace.map(|(r, p)| {
            let mut s = r.start(Some(p), SpanKind::Attempt, attempt_name(attempt));
            s.attr("attempt", attempt);
            s
        });
        let cx = ExecContext {
            params: exec_params(params),
            attempt,
            max_retries: cfg.max_retries,
            node: def.exec_name(),
            item,
            generations: trace.zip(span.as_ref()).map(|((r, _), s)| r.generations(s.id())),
        };
        let run = target.attempt_boxed(cx.clone(), cfg.blocking);
        let outcome = match cfg.timeout {
            Some(limit) => match tokio::time::timeout(limit, Hook::new(name, Phase::Exec, run)).await {
                Ok(r) => r,
                Err(_) => Ok(Err(Box::new(Error::Timeout { node: Some(name.to_owned()), after: limit }) as BoxError)),
            },
            None if tracing::enabled!(target: "flowtrace::node", tracing::Level::INFO) => {
                Hook::new(name, Phase::Exec, run.instrument(exec_span(attempt))).await
            }
            None => Hook::new(name, Phase::Exec, run).await,
        };
        let err = match outcome {
            Ok(Ok(v)) => {
                if let Some(s) = span.take() {
                    s.end();
                }
                return Ok(v);
            }
            // A panic is not retried: it is a bug, not a transient failure.
            Err(panic) => {
                if let Some(s) = span.take() {
                    s.end_with(Err(&panic));
                }
                return Err(panic);
            }
            Ok(Err(e)) => e,
        };
        if let Some(s) = span.take() {
            let detailed = trace.map(|(r, _)| r.switches().errors).unwrap_or(true);
            let status = match err.downcast_ref::<Error>() {
                Some(inner) => error_status(inner, detailed),
                None => {
                    let as_error =
                        Error::Node { node: name.to_owned(), phase: Phase::Exec, source: err.to_string().into() };
                    error_status(&as_error, detailed)
                }
            };
            s.fail(status);
        }
        if attempt + 1 >= cfg.max_retries {
            let mut fspan = trace.map(|(r, p)| r.start(Some(p), SpanKind::Fallback, Arc::clone(&def.names.fallback)));
            if let Some(s) = fspan.as_mut() {
                let msg = err.to_string();
                s.input(|| serde_json::json!({ "error": msg }));
            }
            // A fallback that hands back the error it was given (the default one does) re-raises
            // exec's error, in `Phase::Exec`; any other error, like a panic, is the fallback's own.
            let given = GivenError::of(&err);
            let res = Hook::new(name, Phase::Fallback, target.fallback_boxed(err, cx)).await;
            let res = match res {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(hook_error(name, given.phase_of(&e), e)),
                Err(panic) => Err(panic),
            };
            if let Some(s) = fspan {
                s.end_with(res.as_ref().map(|_| ()));
            }
            return res;
        }
        if !cfg.wait.is_zero() {
            let wspan = trace.map(|(r, p)| {
                let name = WAIT_NAME.get_or_init(|| Arc::from("wait"));
                let mut s = r.start(Some(p), SpanKind::Wait, Arc::clone(name));
                s.attr("wait_ms", cfg.wait.as_secs_f64() * 1e3);
                s
            });
            tokio::time::sleep(cfg.wait).await;
            if let Some(s) = wspan {
                s.end();
            }
        }
        attempt += 1;
    }
}

fn exec_span(attempt: u32) -> tracing::Span {
    tracing::info_span!(target: "flowtrace::node", "phase", phase = "exec", attempt)
}

// ---------------------------------------------------------------------------------------------
// The fused path

/// Whether a visit may take the fused path: nothing records it (no trace, and no `tracing`
/// subscriber wants the engine's spans) and its exec runs once, inline, without a time limit.
/// The fused path does exactly what the phased one does, minus the recording: one future per
/// visit instead of one per phase, and the typed values never boxed between phases.
fn fused(cfg: &NodeConfig, cx: &VisitCx) -> bool {
    single_attempt(cfg) && unrecorded(cx)
}

/// Whether a node's exec runs once, inline, without a time limit (the node's part of [`fused`]).
fn single_attempt(cfg: &NodeConfig) -> bool {
    cfg.max_retries == 1 && cfg.timeout.is_none() && !cfg.blocking
}

/// Whether nothing records the visits made with `cx` (the run's part of [`fused`]).
fn unrecorded(cx: &VisitCx) -> bool {
    cx.trace.is_none() && !tracing::enabled!(target: "flowtrace::node", tracing::Level::INFO)
}

/// A run's params as an exec context holds them: none when there are none.
fn exec_params(params: &Arc<Params>) -> Option<Arc<Params>> {
    (!params.is_empty()).then(|| Arc::clone(params))
}

/// The exec context of a fused (single, unrecorded) attempt.
fn once_context(def: &NodeDef, params: &Arc<Params>, item: Option<usize>) -> ExecContext {
    ExecContext {
        params: exec_params(params),
        attempt: 0,
        max_retries: 1,
        node: def.exec_name(),
        item,
        generations: None,
    }
}

/// A fused visit's future (see [`fused`]) under panic containment, polled in place: a panic
/// becomes [`Error::Panic`] naming the node and the phase `at` says it was in. A struct, as
/// [`Hook`] is: the `async fn` layers of [`contain_at`] (its pinned copy of the future, its
/// `poll_fn`, its `catch_unwind` wrapper) were a tenth of a chain node's cost.
struct Fused<'r, F> {
    fut: F,
    node: &'r str,
    at: &'r PhaseCell,
}

impl<F: Future<Output = Result<Action, PhaseError>> + Unpin> Future for Fused<'_, F> {
    // The visit's own result, its error named here: one result to move out of the poll, not
    // a result in a result (each a large enum, moved at each level).
    type Output = Result<Action, Error>;

    // Inlined into the loop: a call of its own saved and restored a dozen registers per visit.
    #[inline(always)]
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = &mut *self;
        let _inside = Contained::enter();
        let fut = &mut this.fut;
        match std::panic::catch_unwind(AssertUnwindSafe(|| std::pin::Pin::new(fut).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(Ok(action))) => Poll::Ready(Ok(action)),
            Ok(Poll::Ready(Err((phase, e)))) => Poll::Ready(Err(hook_error(this.node, phase, e))),
            Err(payload) => Poll::Ready(Err(panic_error(this.node, this.at.get(), payload))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plain nodes

async fn visit_node(node: &Arc<dyn ErasedNode>, def: &NodeDef, cx: &VisitCx) -> Result<Action, Error> {
    let name = &*def.name;
    let cfg = def.config;
    // One clock reading ends a phase and starts the next: the node's spans share 4 readings.
    let t0 = cx.trace.as_ref().map(|_| Instant::now());
    let mut node_span = cx.span_at(SpanKind::Node, &def.name, t0);
    if let Some(s) = node_span.as_mut() {
        s.attr("node_type", def.type_name);
        node_span_extras(s, def, &cfg, cx);
    }
    let switches = cx.trace.as_ref().map(|r| r.switches()).unwrap_or_default();
    // The phases' spans hang under the node's (no copy of the visit's context for that).
    let under = node_span.as_ref().map(|s| s.id());
    let phase = |kind: SpanKind, name: &Arc<str>, at: Option<Instant>| match (&cx.trace, at) {
        (Some(r), Some(at)) => Some(r.start_at(under, kind, Arc::clone(name), at)),
        _ => None,
    };
    let ctx = cx.context(name);

    // prep: its input is the store entries it read.
    let mut span = if switches.prep { phase(SpanKind::Prep, &def.names.prep, t0) } else { None };
    let mut reads = (node_span.is_some() && switches.inputs).then(Recorded::reads);
    // The phases' `tracing` spans only when a subscriber wants them: a disabled span's
    // wrapper is one more future to move and poll per phase.
    let phase_spans = tracing::enabled!(target: "flowtrace::node", tracing::Level::INFO);
    let prep = node.prep(&ctx);
    let prep = if phase_spans {
        Hook::new(name, Phase::Prep, prep.instrument(phase_span("prep"))).recording(reads.as_mut()).await
    } else {
        Hook::new(name, Phase::Prep, prep).recording(reads.as_mut()).await
    };
    let prep = named(name, Phase::Prep, prep);
    let reads = reads.map(|r| Arc::new(r.into_reads()));
    if let (Some(n), Some(r)) = (node_span.as_mut(), &reads) {
        n.input_reads(r);
    }
    if let (Some(s), Some(r)) = (span.as_mut(), &reads) {
        s.input_reads(r);
    }
    let prep = match prep {
        Ok(p) => p,
        Err(e) => return fail(e, span, node_span),
    };
    let t1 = t0.map(|_| Instant::now());
    // Serialised once, for prep's output, exec's input and post's input.
    let prep_json = match &node_span {
        Some(_) if switches.inputs || switches.outputs => Some(capture_as(&*prep, prep.type_name())),
        _ => None,
    };
    if let (Some(mut s), Some(t)) = (span, t1) {
        if let Some(j) = &prep_json {
            s.output(|| j.clone());
        }
        s.end_at(t);
    }

    // exec
    let mut span = if switches.exec { phase(SpanKind::Exec, &def.names.exec, t1) } else { None };
    if let Some(s) = span.as_mut() {
        if let Some(j) = &prep_json {
            s.input(|| j.clone());
        }
        s.attr("max_retries", cfg.max_retries);
    }
    let trace = match (&cx.trace, &span) {
        (Some(r), Some(s)) => Some((r, s.id())),
        _ => None,
    };
    let exec = if cfg.max_retries == 0 {
        node.skipped().ok_or_else(|| skipped_error(name))
    } else {
        run_exec(&ExecTarget::Node { node, prep: &prep }, def, &cfg, &cx.params, None, trace).await
    };
    let exec = match exec {
        Ok(v) => v,
        Err(e) => return fail(e, span, node_span),
    };
    let t2 = t0.map(|_| Instant::now());
    let exec_json = match &node_span {
        Some(_) if switches.inputs || switches.outputs => Some(capture_as(&*exec, exec.type_name())),
        _ => None,
    };
    if let (Some(mut s), Some(t)) = (span, t2) {
        if let Some(j) = &exec_json {
            s.output(|| j.clone());
        }
        s.end_at(t);
    }

    // post: its input is prep's and exec's results; its output the action and the entries it
    // changed, with their new values.
    let mut span = if switches.post { phase(SpanKind::Post, &def.names.post, t2) } else { None };
    if let (Some(s), Some(p), Some(e)) = (span.as_mut(), prep_json, exec_json) {
        s.input_post(p, e);
    }
    let mut writes = node_span.is_some().then(Recorded::writes);
    let post = node.post(&ctx, prep, exec);
    let res = if phase_spans {
        Hook::new(name, Phase::Post, post.instrument(phase_span("post"))).recording(writes.as_mut()).await
    } else {
        Hook::new(name, Phase::Post, post).recording(writes.as_mut()).await
    };
    let res = named(name, Phase::Post, res);
    let changed = writes.map(Recorded::into_writes).unwrap_or_default();
    let action = match res {
        Ok(a) => a,
        Err(e) => return fail(e, span, node_span),
    };
    let t3 = Instant::now();
    end_post(span, node_span, &cx.shared, &action, changed, t3, switches.outputs);
    Ok(action)
}

/// Ends the post and node spans of a visit that succeeded: both show the action and the
/// entries post changed (values by reference count, serialised off the run's path).
fn end_post(
    span: Option<OpenSpan>,
    node_span: Option<OpenSpan>,
    shared: &SharedStore,
    action: &Action,
    changed: Vec<Key>,
    at: Instant,
    outputs: bool,
) {
    if span.is_none() && node_span.is_none() {
        return;
    }
    // When the output shows every changed key (it is recorded, and the list is within the
    // entries' limit), the entries take the keys themselves (no copy of each), and the
    // post span's `changed_keys` is read from them on the tracer's thread.
    if outputs && changed.len() <= MAX_RECORDED {
        let entries = Arc::new(shared.entries_owned(changed));
        if let Some(mut s) = span {
            s.output_changes(action, &entries);
            s.attr("changed_keys", AttrVal::ChangedKeys);
            s.end_at(at);
        }
        if let Some(mut s) = node_span {
            s.output_changes(action, &entries);
            s.end_at(at);
        }
        return;
    }
    let entries = Arc::new(shared.entries(&changed));
    if let Some(mut s) = span {
        s.output_changes(action, &entries);
        s.changed_keys(changed.iter().map(|k| k.to_string()).collect());
        s.end_at(at);
    }
    if let Some(mut s) = node_span {
        s.output_changes(action, &entries);
        s.end_at(at);
    }
}

/// A node span's declared observation type, and the node's wiring warnings as WARNING
/// events under it (both almost always absent: one branch each).
fn node_span_extras(s: &mut OpenSpan, def: &NodeDef, cfg: &NodeConfig, cx: &VisitCx) {
    if let Some(t) = cfg.observation {
        s.attr("observation_type", t.as_str());
    }
    let warnings = def.wiring_warnings.read();
    if !warnings.is_empty() {
        if let Some(r) = &cx.trace {
            for w in warnings.iter() {
                r.event(Some(s.id()), Arc::clone(w), "WARNING");
            }
        }
    }
}

fn skipped_error(name: &str) -> Error {
    Error::Node {
        node: name.to_owned(),
        phase: Phase::Exec,
        source: "max_retries is 0, so exec never ran and there is no result to hand to post \
                 (PocketFlow passes None here; a typed node cannot receive it: use max_retries >= 1, \
                 or an FnNode, whose exec result is JSON)"
            .into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Batch nodes

async fn visit_batch(
    node: &Arc<dyn ErasedBatch>,
    parallel: bool,
    nref: &NodeRef,
    cx: &VisitCx,
) -> Result<Action, Error> {
    let def: &NodeDef = &nref.0;
    let name = &*def.name;
    let cfg = nref.config();
    let mut node_span = cx.span(SpanKind::Node, &def.name);
    if let Some(s) = node_span.as_mut() {
        s.attr("node_type", def.type_name);
        s.attr("batch", if parallel { "parallel" } else { "sequential" });
        node_span_extras(s, def, &cfg, cx);
    }
    let switches = cx.trace.as_ref().map(|r| r.switches()).unwrap_or_default();
    let inner = cx.with_parent(node_span.as_ref().map(|s| s.id()));
    let ctx = cx.context(name);

    let mut span = if switches.prep { inner.span(SpanKind::Prep, &def.names.prep) } else { None };
    let prep = guarded(name, Phase::Prep, node.prep(&ctx));
    let (items, reads) = if node_span.is_some() && switches.inputs {
        let (p, r) = record_reads(prep).await;
        (p, Some(Arc::new(r)))
    } else {
        (prep.await, None)
    };
    if let (Some(n), Some(r)) = (node_span.as_mut(), &reads) {
        n.input_reads(r);
    }
    if let (Some(s), Some(r)) = (span.as_mut(), &reads) {
        s.input_reads(r);
    }
    let items = match items {
        Ok(items) => items,
        Err(e) => return fail(e, span, node_span),
    };
    let items_json = match &node_span {
        Some(_) if switches.inputs || switches.outputs => Some(capture_as(&*items, items.type_name())),
        _ => None,
    };
    if let Some(mut s) = span {
        if let Some(j) = &items_json {
            s.output(|| j.clone());
        }
        s.end();
    }
    let count = node.len(&*items);

    let mut span = if switches.exec { inner.span(SpanKind::Exec, &def.names.exec) } else { None };
    if let Some(s) = span.as_mut() {
        s.attr("items", count);
        s.attr("max_retries", cfg.max_retries);
        if let Some(n) = cfg.max_concurrency.filter(|_| parallel) {
            s.attr("max_concurrency", n);
        }
    }
    let item_cx = inner.with_parent(span.as_ref().map(|s| s.id()).or(inner.parent));
    let outputs = if parallel {
        run_parallel_items(node, &items, nref, cfg, &item_cx, count).await
    } else {
        let batch = Batch { node, items: &items, def: nref, cfg, cx: &item_cx };
        let mut out = Vec::with_capacity(count);
        let mut failed = None;
        for i in 0..count {
            match batch.run_item(i).await {
                Ok(v) => out.push(v),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    };
    let outputs = match outputs {
        Ok(o) => o,
        Err(e) => return fail(e, span, node_span),
    };
    let outputs_json = match &node_span {
        Some(_) if switches.inputs || switches.outputs => Some(capture(&outputs)),
        _ => None,
    };
    if let Some(mut s) = span {
        if let Some(j) = &outputs_json {
            s.output(|| j.clone());
        }
        s.end();
    }
    let mut span = if switches.post { inner.span(SpanKind::Post, &def.names.post) } else { None };
    if let (Some(s), Some(p), Some(e)) = (span.as_mut(), items_json, outputs_json) {
        s.input_post(p, e);
    }
    let post = guarded(name, Phase::Post, node.post(&ctx, items, outputs));
    let (res, changed) = if node_span.is_some() { record_writes(post).await } else { (post.await, Vec::new()) };
    let action = match res {
        Ok(a) => a,
        Err(e) => return fail(e, span, node_span),
    };
    end_post(span, node_span, &cx.shared, &action, changed, Instant::now(), switches.outputs);
    Ok(action)
}

/// One batch visit's items, and what each item's exec needs.
struct Batch<'a> {
    node: &'a Arc<dyn ErasedBatch>,
    items: &'a Prepared,
    def: &'a NodeRef,
    cfg: NodeConfig,
    cx: &'a VisitCx,
}

impl Batch<'_> {
    /// One item's exec, with its own span under the exec span.
    async fn run_item(&self, index: usize) -> Result<Executed, Error> {
        let cx = self.cx;
        if fused(&self.cfg, cx) {
            let def = &self.def.0;
            let at = PhaseCell::new(Phase::Exec);
            let exec_cx = once_context(def, &cx.params, Some(index));
            let res =
                contain_at(&def.name, || at.get(), self.node.exec_once(&**self.items, index, &exec_cx, &at)).await?;
            return res.map_err(|(phase, e)| hook_error(&def.name, phase, e));
        }
        let mut span = cx.trace.as_ref().map(|r| r.start(cx.parent, SpanKind::Item, format!("item {index}")));
        if let Some(s) = span.as_mut() {
            s.attr("item_index", index);
            if let Some(item) = self.node.item(&**self.items, index) {
                s.input(|| capture(item));
            }
        }
        let trace = match (&cx.trace, &span) {
            (Some(r), Some(s)) => Some((r, s.id())),
            _ => None,
        };
        let res = if self.cfg.max_retries == 0 {
            self.node.skipped().ok_or_else(|| Error::Batch {
                node: self.def.name().to_owned(),
                message: "max_retries is 0: no item can be processed".into(),
            })
        } else {
            let target = ExecTarget::Item { node: self.node, items: self.items, index };
            run_exec(&target, &self.def.0, &self.cfg, &cx.params, Some(index), trace).await
        };
        if let Some(mut s) = span {
            if let Ok(v) = &res {
                s.output(|| capture_as(&**v, v.type_name()));
            }
            s.end_with(res.as_ref().map(|_| ()));
        }
        res
    }
}

/// Runs a parallel batch's items in node actors (see `super::node_actor`), at most
/// `max_concurrency` at once, keeping results in input order. The first error ends the batch:
/// the other items are cancelled (their node actors killed, and awaited), so none keeps
/// running after the node has failed, and their spans end as cancelled.
async fn run_parallel_items(
    node: &Arc<dyn ErasedBatch>,
    items: &Prepared,
    nref: &NodeRef,
    cfg: NodeConfig,
    cx: &VisitCx,
    count: usize,
) -> Result<Vec<Executed>, Error> {
    struct Work {
        node: Arc<dyn ErasedBatch>,
        items: Prepared,
        def: NodeRef,
        cfg: NodeConfig,
        cx: VisitCx,
    }
    let work =
        Arc::new(Work { node: Arc::clone(node), items: Arc::clone(items), def: nref.clone(), cfg, cx: cx.clone() });
    if fused(&cfg, cx) {
        // A small future per item (one attempt, nothing recorded), held inline by its node
        // actor: no box for the item, and nothing of the recording path to copy.
        return run_concurrently(&cx.crew, nref.name(), "item", count, cfg.max_concurrency, move |i| {
            let w = Arc::clone(&work);
            async move {
                let def = &w.def.0;
                let at = PhaseCell::new(Phase::Exec);
                let exec_cx = once_context(def, &w.cx.params, Some(i));
                let res = contain_at(&def.name, || at.get(), w.node.exec_once(&*w.items, i, &exec_cx, &at)).await?;
                res.map_err(|(phase, e)| hook_error(&def.name, phase, e))
            }
        })
        .await;
    }
    run_concurrently(&cx.crew, nref.name(), "item", count, cfg.max_concurrency, move |i| {
        let w = Arc::clone(&work);
        // Boxed: an item's recorded visit (its retry loop, its spans) is a large future.
        Box::pin(async move {
            let batch = Batch { node: &w.node, items: &w.items, def: &w.def, cfg: w.cfg, cx: &w.cx };
            batch.run_item(i).await
        }) as BoxFuture<'static, Result<Executed, Error>>
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Flows and batch flows

async fn visit_flow(node: &NodeRef, flow: &FlowDef, cx: &VisitCx) -> Result<Action, Error> {
    let name = node.name();
    let mut span = cx.span(SpanKind::Flow, &node.0.name);
    if let Some(s) = span.as_mut() {
        s.attr("node_type", node.type_name());
        if !cx.params.is_empty() {
            let p = cx.params.clone();
            s.input(|| serde_json::json!({ "params": *p }));
        }
    }
    // Untraced, the flow's nodes see the flow's own context (no span to hang under, and no
    // batch progress to drop): no copy of it per flow visit.
    let owned;
    let inner = if span.is_none() && cx.progress.is_none() {
        cx
    } else {
        owned = cx.with_parent(span.as_ref().map(|s| s.id()));
        &owned
    };
    let ctx = cx.context(name);
    let res = async {
        let prep = match &flow.prep {
            Some(f) => guarded(name, Phase::Prep, async { f(&ctx) }).await?,
            None => Value::Null,
        };
        let max_steps = flow.max_steps.or(cx.limits.max_steps);
        let last = orchestrate(name, Route::Plan(flow.plan()), max_steps, inner).await?;
        match &flow.post {
            Some(f) => guarded(name, Phase::Post, async { f(&ctx, prep, last) }).await,
            None => Ok(last),
        }
    }
    .await;
    end_flow_span(span, &res);
    res
}

fn end_flow_span(span: Option<OpenSpan>, res: &Result<Action, Error>) {
    if let Some(mut s) = span {
        if let Ok(a) = res {
            s.output(|| capture(a));
        }
        s.end_with(res.as_ref().map(|_| ()));
    }
}

/// Where an orchestration loop starts, and how it follows edges.
enum Route {
    /// By a flow's plan (see [`Plan`]), while the wiring stays as it was.
    Plan(Arc<Plan>),
    /// By the live graph, from this node.
    Live(Option<NodeRef>),
}

/// PocketFlow's orchestration loop (spec §4): visit, then follow the action, until a node
/// has no edge for it.
async fn orchestrate(flow_name: &str, route: Route, max_steps: Option<u64>, cx: &VisitCx) -> Result<Action, Error> {
    let (plan, mut live) = match route {
        Route::Plan(p) => (Some(p), None),
        Route::Live(start) => (None, start),
    };
    if let Some(hook) = &cx.hook {
        let start = match &plan {
            Some(p) => p.start().map(|i| p.node(i).clone()),
            None => live,
        };
        return orchestrate_durable(flow_name, start, max_steps, cx, hook).await;
    }
    // Asked once per loop rather than once per visit: whether a subscriber wants the engine's
    // spans is a look-up, and a loop's visits are recorded alike.
    if unrecorded(cx) {
        let route = match plan {
            Some(p) => Route::Plan(p),
            None => Route::Live(live),
        };
        return orchestrate_unrecorded(flow_name, route, max_steps, cx).await;
    }
    // The plan's node being visited; `live` takes over (no plan, or the graph was rewired
    // while the run went on) and holds the node itself.
    let mut at = plan.as_ref().and_then(|p| p.start());
    let mut last = Action::none();
    let mut steps = 0_u64;
    let node_spans = tracing::enabled!(target: "flowtrace::node", tracing::Level::INFO);
    loop {
        let (node, i) = match (&live, &plan, at) {
            (Some(n), _, _) => (n, None),
            (None, Some(p), Some(i)) => (p.node(i), Some(i)),
            _ => break,
        };
        steps += 1;
        check_steps(flow_name, steps, max_steps)?;
        last = match &node.0.kind {
            // A recorded plain node is not boxed either: its visit does not recurse, so it
            // can live in the loop's future (a box per traced visit, and the moves into it,
            // were a tenth of a traced node's cost on the run's thread).
            // Without a subscriber for the engine's `tracing` spans, not wrapped in a disabled
            // one either (a wrapper is one more move of the visit's future).
            NodeKind::Node(n) if !node_spans => visit_node(n, &node.0, cx).await?,
            NodeKind::Node(n) => {
                visit_node(n, &node.0, cx)
                    .instrument(tracing::info_span!(target: "flowtrace::node", "node", node = %node.name()))
                    .await?
            }
            _ => visit(node, cx).await?,
        };
        let hop = match (&plan, i) {
            (Some(p), Some(i)) if p.is_current_at(i) => p.hop(i, &last),
            _ => Hop::Live,
        };
        match hop {
            Hop::To(j) => at = Some(j),
            Hop::End => break,
            Hop::Live => {
                live = follow(node, &last, cx);
                if live.is_none() {
                    break;
                }
            }
        }
    }
    Ok(last)
}

/// [`orchestrate`] for visits nothing records (no trace, no subscriber for the engine's spans,
/// no durable hook): a plain node whose exec runs once goes the fused way, its one future
/// polled in place by the loop; any other visit is boxed. Nothing of the recorded path (its
/// unboxed traced visit) is in this loop's future, which an unrecorded run moves as it starts.
async fn orchestrate_unrecorded(
    flow_name: &str,
    route: Route,
    max_steps: Option<u64>,
    cx: &VisitCx,
) -> Result<Action, Error> {
    let (plan, mut live) = match route {
        Route::Plan(p) => (Some(p), None),
        Route::Live(start) => (None, start),
    };
    let mut at = plan.as_ref().and_then(|p| p.start());
    let mut last = Action::none();
    let mut steps = 0_u64;
    // The exec context of the loop's fused visits: the same for each but for the node's name,
    // so made once and renamed at each visit (made and dropped per visit, it cost about 25
    // instructions of a chain node's 900).
    let mut once: Option<ExecContext> = None;
    loop {
        let (node, i) = match (&live, &plan, at) {
            (Some(n), _, _) => (n, None),
            (None, Some(p), Some(i)) => (p.node(i), Some(i)),
            _ => break,
        };
        steps += 1;
        check_steps(flow_name, steps, max_steps)?;
        last = match &node.0.kind {
            // Not boxed: the common case of a chain, one future per visit (the node's own),
            // polled in place by the loop under panic containment.
            NodeKind::Node(n) if single_attempt(&node.0.config) => {
                let def = &*node.0;
                let ctx = cx.context(&def.name);
                let at = PhaseCell::new(Phase::Prep);
                let exec_cx = match &mut once {
                    Some(e) => {
                        e.node = def.exec_name();
                        e
                    }
                    None => once.insert(once_context(def, &cx.params, None)),
                };
                let fut = n.visit_once(&ctx, exec_cx, &at);
                (Fused { fut, node: &def.name, at: &at }).await?
            }
            // Retries, a time limit or the blocking pool: the phased visit, boxed (no
            // disabled `tracing` span around it).
            NodeKind::Node(n) => Box::pin(visit_node(n, &node.0, cx)).await?,
            _ => visit(node, cx).await?,
        };
        let hop = match (&plan, i) {
            (Some(p), Some(i)) if p.is_current_at(i) => p.hop(i, &last),
            _ => Hop::Live,
        };
        match hop {
            Hop::To(j) => at = Some(j),
            Hop::End => break,
            Hop::Live => {
                live = follow(node, &last, cx);
                if live.is_none() {
                    break;
                }
            }
        }
    }
    Ok(last)
}

/// [`Error::MaxSteps`] once a flow's visits pass its step limit.
#[inline]
fn check_steps(flow_name: &str, steps: u64, max_steps: Option<u64>) -> Result<(), Error> {
    match max_steps {
        Some(limit) if steps > limit => Err(Error::MaxSteps { flow: flow_name.to_owned(), limit }),
        _ => Ok(()),
    }
}

/// The node `action` leads to from `node`; PocketFlow's `Flow ends: …` warning, when the flow
/// ends because the action is not wired, becomes an event on the flow's span.
fn follow(node: &NodeRef, action: &Action, cx: &VisitCx) -> Option<NodeRef> {
    match node.next_for(action) {
        Ok(next) => next,
        Err(warning) => {
            if let Some(r) = &cx.trace {
                r.event(cx.parent, warning.clone(), "WARNING");
            }
            cx.warn(node.name(), warning);
            None
        }
    }
}

/// The same loop for a durable run's root flow: it may start part-way (at a checkpoint), and
/// the hook checkpoints after each visit and when a node suspends the run. Nested flows and
/// the visits themselves run without the hook.
async fn orchestrate_durable(
    flow_name: &str,
    start: Option<NodeRef>,
    max_steps: Option<u64>,
    cx: &VisitCx,
    hook: &Arc<dyn RunHook>,
) -> Result<Action, Error> {
    let node_cx = VisitCx { hook: None, progress: Some(Arc::clone(hook)), ..cx.clone() };
    let (mut curr, mut steps) = match hook.resume_at(start.as_ref())? {
        Some((node, steps)) => (Some(node), steps),
        None => (start, 0),
    };
    let mut last = Action::none();
    while let Some(node) = curr {
        steps += 1;
        if let Some(limit) = max_steps {
            if steps > limit {
                return Err(Error::MaxSteps { flow: flow_name.to_owned(), limit });
            }
        }
        match visit(&node, &node_cx).await {
            Ok(action) => {
                let next = follow(&node, &action, cx);
                let v = Visited {
                    node: &node,
                    action: Some(&action),
                    next: next.as_ref(),
                    waiting_for: None,
                    steps,
                    shared: &cx.shared,
                };
                hook.visited(v).await?;
                last = action;
                curr = next;
            }
            Err(Error::Suspended { node: waiting, key }) => {
                // A suspension, not a failure: its spans end normally, and this event says why
                // the trace's part ends here.
                if let Some(r) = &cx.trace {
                    r.event(cx.parent, format!("suspended at '{waiting}': waiting for input '{key}'"), "DEFAULT");
                }
                // The waiting node is visited again on resume, so its step is not counted.
                let v = Visited {
                    node: &node,
                    action: None,
                    next: Some(&node),
                    waiting_for: Some(&key),
                    steps: steps - 1,
                    shared: &cx.shared,
                };
                hook.visited(v).await?;
                return Err(Error::Suspended { node: waiting, key });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(last)
}

async fn visit_batch_flow(node: &NodeRef, def: &BatchFlowDef, cx: &VisitCx) -> Result<Action, Error> {
    let name = node.name();
    let mut span = cx.span(SpanKind::Flow, &node.0.name);
    if let Some(s) = span.as_mut() {
        s.attr("node_type", node.type_name());
        s.attr("batch", if def.parallel { "parallel" } else { "sequential" });
    }
    let inner = cx.with_parent(span.as_ref().map(|s| s.id()));
    let ctx = cx.context(name);
    // A durable run continuing inside this batch flow: its param sets as they were, and the
    // completed ones are not run again.
    let resumed = if def.parallel { None } else { cx.progress.as_ref().and_then(|h| h.batch_resume(node)) };
    let res = async {
        let (sets, done) = match resumed {
            Some(p) => (p.sets, p.done),
            None => match &def.params {
                Some(f) => (guarded(name, Phase::Prep, async { f(&ctx) }).await?, 0),
                None => (Vec::new(), 0),
            },
        };
        let start = def.start.read().clone();
        let merged: Vec<Arc<Params>> = sets
            .iter()
            .map(|bp| {
                let mut p = (*cx.params).clone();
                p.extend(bp.iter().map(|(k, v)| (k.clone(), v.clone())));
                Arc::new(p)
            })
            .collect();
        if def.parallel {
            // Each param set's run goes to a node actor (see `super::node_actor`); the first
            // error cancels the others, and a cancel of the run kills their actors.
            let flow_name: Arc<str> = Arc::clone(&node.0.name);
            let merged = Arc::new(merged);
            let (run_start, run_cx, runs) = (start.clone(), inner.clone(), Arc::clone(&merged));
            run_concurrently(&inner.crew, name, "batch", merged.len(), None, move |i| {
                let (flow_name, start, params, cx) =
                    (Arc::clone(&flow_name), run_start.clone(), Arc::clone(&runs[i]), run_cx.clone());
                // Boxed: a batch flow's run nests visits, and its future's size must be known.
                Box::pin(async move { run_param_set(&flow_name, i, start, params, &cx).await })
                    as futures::future::BoxFuture<'static, Result<(), Error>>
            })
            .await?;
        } else {
            // Only a durable run's root flow keeps the sets for its checkpoints.
            let mut progress = cx.progress.as_ref().map(|h| (h, BatchProgress { sets: sets.clone(), done }));
            for (i, p) in merged.into_iter().enumerate().skip(done) {
                run_param_set(name, i, start.clone(), p, &inner).await?;
                if let Some((h, state)) = progress.as_mut() {
                    state.done = i + 1;
                    h.batch_step(node, state, &cx.shared).await?;
                }
            }
        }
        let prep_value = Value::Array(sets.into_iter().map(Value::Object).collect());
        match &def.post {
            Some(f) => guarded(name, Phase::Post, async { f(&ctx, prep_value) }).await,
            None => Ok(Action::none()),
        }
    }
    .await;
    end_flow_span(span, &res);
    res
}

async fn run_param_set(
    flow_name: &str,
    index: usize,
    start: Option<NodeRef>,
    params: Arc<Params>,
    cx: &VisitCx,
) -> Result<(), Error> {
    let mut span = cx.trace.as_ref().map(|r| r.start(cx.parent, SpanKind::BatchRun, format!("batch {index}")));
    if let Some(s) = span.as_mut() {
        s.attr("batch_index", index);
        let p = Arc::clone(&params);
        s.input(|| serde_json::json!({ "params": *p }));
    }
    let run_cx = VisitCx { params, parent: span.as_ref().map(|s| s.id()).or(cx.parent), ..cx.clone() };
    let res = orchestrate(flow_name, Route::Live(start), cx.limits.max_steps, &run_cx).await;
    end_flow_span(span, &res);
    res.map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::flow::{Flow, FnNode, Node};

    /// A node that appends its name to the store's `path`.
    fn step(name: &'static str) -> FnNode {
        FnNode::new(name).post(move |ctx, _, _| {
            let mut path: Vec<String> = ctx.shared().get("path")?.unwrap_or_default();
            path.push(name.to_owned());
            ctx.shared().insert("path", path);
            Ok(Action::none())
        })
    }

    // Runs follow their flow's plan; one whose graph is rewired while it runs follows the new
    // wiring from there, as it would the live graph.
    #[tokio::test(flavor = "current_thread")]
    async fn a_run_follows_wiring_changed_while_it_runs() {
        let c = step("C").into_node();
        let b = step("B").into_node();
        let rewire: Arc<Mutex<Option<(NodeRef, NodeRef)>>> = Arc::default();
        let hook = Arc::clone(&rewire);
        let a = FnNode::new("A")
            .post(move |_, _, _| {
                if let Some((from, to)) = hook.lock().unwrap().take() {
                    from.next(&to);
                }
                Ok(Action::none())
            })
            .into_node();
        a.next(&b);
        let flow = Flow::new(&a);

        let shared = SharedStore::new();
        flow.run(&shared).await.unwrap();
        assert_eq!(shared.get::<Vec<String>>("path").unwrap(), Some(vec!["B".to_owned()]));

        *rewire.lock().unwrap() = Some((a.clone(), c.clone()));
        let shared = SharedStore::new();
        flow.run(&shared).await.unwrap();
        assert_eq!(shared.get::<Vec<String>>("path").unwrap(), Some(vec!["C".to_owned()]), "rewired mid-run");

        // And the next run plans the new wiring.
        let shared = SharedStore::new();
        flow.run(&shared).await.unwrap();
        assert_eq!(shared.get::<Vec<String>>("path").unwrap(), Some(vec!["C".to_owned()]));
    }
}
