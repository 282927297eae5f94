//! The run supervisor: an actor dedicated to one run at a time.
//!
//! The run executes inside the actor (in `post_start`, which ractor runs under the actor's
//! kill signal), answers with the run's result, and the actor is the run's failure boundary:
//! a panic in a node is contained where it happens and comes back as an error naming the
//! node, and anything that escapes that (a bug in the engine) still ends only this run.
//! Cancelling is `kill()`: the run's future is dropped, so open spans end as cancelled.
//!
//! Supervisors are pooled per tokio runtime: spawning an actor (its ports, its task, its
//! start) costs more than a whole short run, so a supervisor whose run ended waits for the
//! next one, and idle ones expire (see [`pool`]). A run still has a supervisor of its own from
//! its start to its end; one whose run was cancelled is gone with it.
//!
//! Where work runs: a sequential chain has no concurrency to gain, so its nodes run inline in
//! the supervisor's task (spawning an actor per node visit, and a call to it, cost several
//! times a node's whole budget: `benches/engine.rs` measures both, `baseline_actor_per_node`).
//! Concurrent work, a parallel batch's items and a parallel batch flow's runs, goes to node
//! actors the supervisor spawns linked to itself, one per worker thread (`super::node_actor`).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::task::AtomicWaker;
use futures::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::node_actor::{Alive, Crew};
use super::tracer::Tracer;
use super::visit::{install_panic_hook, panic_error, visit_root, RunLimits, VisitCx};
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

/// A run supervisor takes no ractor messages: its runs arrive over a channel of its own and
/// execute in `post_start`, which ractor runs under the actor's kill signal, so cancelling a
/// run is `kill()`.
pub(crate) enum RunMsg {}

/// What a run's caller, its supervisor and its visits share: why it was cancelled (set by
/// whoever cancels it before the kill, read by the run's trace and by the caller), PocketFlow's
/// warnings (kept for its [`RunReport`], also when it is cancelled), and who ends it.
pub(crate) struct RunState {
    /// Everything but the caller's waker, under one lock: a run's hand-over and answer take
    /// it a few times each, and a lock per field made a short run's end as many lock pairs.
    inner: parking_lot::Mutex<RunInner>,
    /// The caller waiting for the answer.
    caller: AtomicWaker,
}

struct RunInner {
    reason: Option<String>,
    warnings: Vec<String>,
    ticket: Ticket,
    /// The run's result, for its caller (see [`Reply`] and [`Answer`]).
    answer: Outcome,
}

/// Where a run's result stands, for its caller.
enum Outcome {
    Pending,
    Ready(Result<Action, Error>),
    /// The supervisor let go of the run without an answer (it was killed), or the answer was
    /// taken.
    Gone,
}

/// Who may end a run's supervisor: the run, when it ends, or a cancel before that. Whoever
/// comes first decides, so a late cancel never kills a supervisor that has gone on to another
/// run, and a supervisor that was told to die never takes another run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Running,
    Cancelled,
    Ended,
}

impl RunState {
    fn new() -> Arc<RunState> {
        Arc::new(RunState::fresh())
    }

    /// The state a run starts with, for [`new`](Self::new) and [`renew`](Self::renew) alike.
    fn fresh() -> RunState {
        RunState {
            inner: parking_lot::Mutex::new(RunInner {
                reason: None,
                warnings: Vec::new(),
                ticket: Ticket::Running,
                answer: Outcome::Pending,
            }),
            caller: AtomicWaker::new(),
        }
    }

    /// A state for a new run: `last`, the state of the supervisor's previous run, made new
    /// again when nothing else holds it any more (its caller, its control and its visits have
    /// let go), else a new one: an allocation and its release fewer per run (about 100 to 150
    /// instructions of a short run). A state still held elsewhere is left to its holders, so
    /// nothing of one run can be seen, or cancelled, from another.
    fn renew(last: Option<Arc<RunState>>) -> Arc<RunState> {
        match last {
            Some(mut state) => match Arc::get_mut(&mut state) {
                Some(s) => {
                    *s = RunState::fresh();
                    state
                }
                None => RunState::new(),
            },
            None => RunState::new(),
        }
    }

    /// Keeps PocketFlow's warning `message` for the run's report.
    pub(crate) fn warn(&self, message: String) {
        self.inner.lock().warnings.push(message);
    }

    /// Why the run was cancelled, if it was.
    fn reason(&self) -> Option<String> {
        self.inner.lock().reason.clone()
    }

    /// Cancels the run for `reason` (the first reason given wins): kills `actor` if the run
    /// has not ended.
    fn cancel(&self, actor: &ActorRef<RunMsg>, reason: String) {
        let kill = {
            let mut inner = self.inner.lock();
            if inner.reason.is_none() {
                inner.reason = Some(reason);
            }
            let running = inner.ticket == Ticket::Running;
            if running {
                inner.ticket = Ticket::Cancelled;
            }
            running
        };
        // Outside the lock: the ticket has decided already (a supervisor whose run ends now
        // finds it cancelled, and takes no other run), and nothing the kill sets off can
        // wait for the lock held here.
        if kill {
            actor.kill();
        }
    }
}

pub(crate) struct RunArgs {
    root: NodeRef,
    shared: SharedStore,
    settings: Settings,
    reply: Reply,
    state: Arc<RunState>,
}

/// A run's options as its supervisor takes them: a durable run's parts boxed, so that what
/// the hand-over moves (several times, between tasks) stays small.
struct Settings {
    params: Option<Params>,
    timeout: Option<Duration>,
    max_steps: Option<u64>,
    trace: Option<(Tracer, Arc<TraceMeta>)>,
    durable: Option<Box<DurableParts>>,
}

impl From<RunOptions> for Settings {
    fn from(o: RunOptions) -> Self {
        Settings {
            params: o.params,
            timeout: o.timeout,
            max_steps: o.max_steps,
            trace: o.trace,
            durable: o.durable.map(Box::new),
        }
    }
}

/// The supervisor's end of a run's answer: [`send`](Self::send) gives the caller the result;
/// dropped without sending (the run was killed), it tells the caller the answer is gone.
///
/// The answer lives in the run's state, which caller and supervisor share already: a channel
/// of its own (an allocation, and more atomics to send and to wait) cost a tenth of a short run.
pub(crate) struct Reply(Option<Arc<RunState>>);

impl Reply {
    /// Ends the run with `res`, in the same lock as the answer: false when a cancel came
    /// first (the supervisor is being killed, and takes no more runs).
    fn send(mut self, res: Result<Action, Error>) -> bool {
        let Some(state) = self.0.take() else { return false };
        let running = {
            let mut inner = state.inner.lock();
            inner.answer = Outcome::Ready(res);
            let running = inner.ticket == Ticket::Running;
            if running {
                inner.ticket = Ticket::Ended;
            }
            running
        };
        state.caller.wake();
        running
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            {
                let mut inner = state.inner.lock();
                if matches!(inner.answer, Outcome::Pending) {
                    inner.answer = Outcome::Gone;
                }
            }
            state.caller.wake();
        }
    }
}

/// What a run's caller gets: the result (`None`: the supervisor ended without answering, it
/// was killed) and PocketFlow's warnings, taken in the same lock.
pub(crate) struct Answered {
    pub(crate) result: Option<Result<Action, Error>>,
    pub(crate) warnings: Vec<String>,
}

/// The caller's end of a run's answer.
pub(crate) struct Answer {
    state: Arc<RunState>,
    /// Whether it was polled: the first poll comes before the run can have ended (it was
    /// just handed over), so it registers the waker before looking, and looks once.
    polled: bool,
}

impl Answer {
    fn new(state: Arc<RunState>) -> Self {
        Answer { state, polled: false }
    }
}

impl std::future::Future for Answer {
    type Output = Answered;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let first = !std::mem::replace(&mut self.polled, true);
        let state = &self.state;
        let take = || {
            let mut inner = state.inner.lock();
            if matches!(inner.answer, Outcome::Pending) {
                return None;
            }
            let result = match std::mem::replace(&mut inner.answer, Outcome::Gone) {
                Outcome::Ready(res) => Some(res),
                _ => None,
            };
            Some(Answered { result, warnings: std::mem::take(&mut inner.warnings) })
        };
        take_or_wait(&state.caller, cx, first, take)
    }
}

/// What `take` finds, or, once the task's waker is registered with `waker`, what `take` finds
/// when it looks again: something given in between is not missed. `first`: nothing can have
/// been given yet (the first poll right after a hand-over), so it registers before it looks,
/// and looks once.
fn take_or_wait<T>(
    waker: &AtomicWaker,
    cx: &mut std::task::Context<'_>,
    first: bool,
    mut take: impl FnMut() -> Option<T>,
) -> std::task::Poll<T> {
    if !first {
        if let Some(v) = take() {
            return std::task::Poll::Ready(v);
        }
    }
    waker.register(cx.waker());
    match take() {
        Some(v) => std::task::Poll::Ready(v),
        None => std::task::Poll::Pending,
    }
}

/// Where a supervisor's next run waits for it.
///
/// A supervisor takes one run at a time, and only from a caller that took it out of the pool
/// (or spawned it), so one slot is enough: a channel (its blocks, its permits) cost more than
/// a short run's node visits.
struct Mailbox {
    slot: parking_lot::Mutex<Slot>,
    supervisor: AtomicWaker,
}

struct Slot {
    run: Option<RunArgs>,
    /// The supervisor no longer takes runs (it stopped, or was killed).
    closed: bool,
}

/// Where a caller hands a supervisor its run.
#[derive(Clone)]
pub(crate) struct Runs(Arc<Mailbox>);

impl Runs {
    fn new() -> (Runs, Inlet) {
        let mailbox = Arc::new(Mailbox {
            slot: parking_lot::Mutex::new(Slot { run: None, closed: false }),
            supervisor: AtomicWaker::new(),
        });
        (Runs(Arc::clone(&mailbox)), Inlet(mailbox))
    }

    /// Hands `run` over; gives it back (`Some`) when the supervisor takes no more runs.
    #[must_use = "a run given back was not handed over"]
    fn send(&self, run: RunArgs) -> Option<RunArgs> {
        {
            let mut slot = self.0.slot.lock();
            if slot.closed || slot.run.is_some() {
                return Some(run);
            }
            slot.run = Some(run);
        }
        self.0.supervisor.wake();
        None
    }
}

/// The supervisor's end of its [`Mailbox`]: dropped (the supervisor stopped or was killed), it
/// closes the mailbox, and a run handed over just before is dropped unanswered (its caller
/// gets no answer).
pub(crate) struct Inlet(Arc<Mailbox>);

impl Inlet {
    /// The next run. `fresh`: the supervisor was just spawned for a run (handed over before
    /// it first looks). Otherwise it just put itself back in the pool, and no run can be here
    /// yet: it registers its waker before it looks, and looks once.
    async fn recv(&mut self, fresh: bool) -> RunArgs {
        let mailbox = &self.0;
        let mut first = !fresh;
        std::future::poll_fn(|cx| {
            take_or_wait(&mailbox.supervisor, cx, std::mem::take(&mut first), || mailbox.slot.lock().run.take())
        })
        .await
    }
}

impl Drop for Inlet {
    fn drop(&mut self) {
        let run = {
            let mut slot = self.0.slot.lock();
            slot.closed = true;
            slot.run.take()
        };
        drop(run);
    }
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

/// How many stripes the process's run counts and supervisor pools have (see [`stripe`]).
const STRIPES: usize = 8;

/// This thread's stripe: threads take stripes in turn, so the few worker threads of a runtime
/// each write a cache line of their own where every run would otherwise write one for all.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

/// One stripe's count of live runs, on a cache line of its own.
#[repr(align(128))]
struct LiveCount(AtomicIsize);

/// Runs counted in on a stripe's thread, less those counted out there (a run can end on
/// another thread than it started on, so one stripe alone can be negative).
static LIVE_RUNS: [LiveCount; STRIPES] = [const { LiveCount(AtomicIsize::new(0)) }; STRIPES];

/// How many runs are in flight in this process: taken by their supervisor and not yet ended.
///
/// A diagnostic for services (runs in flight) and for leak tests: a run is counted from the
/// moment its supervisor takes it to the moment its state is dropped, whichever way it ends.
pub fn live_runs() -> usize {
    let sum: isize = LIVE_RUNS.iter().map(|c| c.0.load(Ordering::SeqCst)).sum();
    sum.max(0) as usize
}

/// Counts a live run; held by the run's future, so a killed run is counted out too.
pub(crate) struct Live;

impl Live {
    fn new() -> Self {
        LIVE_RUNS[stripe()].0.fetch_add(1, Ordering::SeqCst);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE_RUNS[stripe()].0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A supervisor's state: where its runs arrive, and its own end of that channel (to put
/// itself back in the pool).
pub(crate) struct Inbox {
    runs: Option<Inlet>,
    me: Runs,
    /// The count of the current run's node actors: the same one from run to run, as a
    /// supervisor is reused only after runs that started none (so it is zero, and unlinked).
    alive: Arc<Alive>,
    /// The runtime the supervisor's task lives in (`None`: none could be found, and the
    /// supervisor is not pooled).
    runtime: Option<tokio::runtime::Id>,
}

impl Actor for RunSupervisor {
    type Msg = RunMsg;
    type State = Inbox;
    type Arguments = Inbox;

    async fn pre_start(&self, _me: ActorRef<RunMsg>, inbox: Inbox) -> Result<Inbox, ActorProcessingErr> {
        Ok(inbox)
    }

    // The runs themselves, one after another, in this actor's own task (no task per run, no
    // ractor message per run: each costs more than a short run's node visits). A kill drops
    // the run in progress mid-way, and the supervisor with it.
    async fn post_start(&self, me: ActorRef<RunMsg>, inbox: &mut Inbox) -> Result<(), ActorProcessingErr> {
        if let Some(mut runs) = inbox.runs.take() {
            let mut fresh = true;
            // The same for every run: made once, not per run (its reference counts, taken and
            // dropped, were a run's worth of atomics).
            let crew = Crew { supervisor: Some(me.get_cell()), alive: Arc::clone(&inbox.alive) };
            loop {
                let RunArgs { root, shared, settings, reply, state } = runs.recv(std::mem::take(&mut fresh)).await;
                // Kept for the next run (see [`RunState::renew`]).
                let last = Arc::clone(&state);
                // The run, in place: an `async fn` for it was a future of the run's size,
                // copied into this one at every run.
                let linked = {
                    let _live = Live::new();
                    let alive = &inbox.alive;
                    // Declared before the run's future, so dropped after it when a kill drops both.
                    let mut end = RunEnd { finisher: None, reply: Some(reply), alive };
                    let res = AssertUnwindSafe(execute(root, shared, settings, state, &crew, &mut end.finisher))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|p| Err(panic_error("<engine>", Phase::Exec, p)));
                    drop(end.finisher.take());
                    // `None` when a cancel came first (the supervisor is being killed), else
                    // whether the run linked node actors to the supervisor.
                    let reusable = end.reply.take().is_some_and(|reply| reply.send(res));
                    reusable.then(|| alive.linked())
                };
                // A supervisor that linked node actors has their supervision events queued
                // (ractor delivers them only between messages): it is not reused.
                match (linked, inbox.runtime) {
                    (Some(false), Some(runtime)) if pool::put_back(runtime, &me, &inbox.me, last) => {}
                    _ => break,
                }
            }
        }
        me.stop(None);
        Ok(())
    }

    // Node actors report their end to their run through the crew (see `super::node_actor`);
    // should a failure reach the supervisor itself, log it.
    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<RunMsg>,
        event: SupervisionEvent,
        _inbox: &mut Inbox,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, err) = event {
            tracing::debug!(target: "flowtrace::run", actor = %who.get_id(), "a run's node actor failed: {err}");
        }
        Ok(())
    }
}

/// The idle run supervisors of each tokio runtime.
///
/// A run takes an idle supervisor of its runtime, or spawns one; a supervisor whose run ended
/// comes back (up to [`MAX_IDLE`] per runtime and stripe). Idle supervisors expire: a sweeper
/// task of the runtime, alive only while its pool holds any, stops those idle for a whole sweep
/// interval, so an idle process goes back to no supervisor tasks at all.
///
/// The pools are striped by thread (see [`super::stripe`]): a supervisor goes back to the
/// stripe of the thread its run ended on, and a run looks in its own thread's stripe first.
/// With one pool for all, every run's start and end took a lock whose cache line went back
/// and forth between the worker threads, the most of a short run's cost on two threads.
mod pool {
    use std::time::Duration;

    use parking_lot::Mutex;
    use ractor::{ActorRef, ActorStatus};
    use tokio::runtime::{Handle, Id};

    use std::sync::Arc;

    use super::{stripe, RunMsg, RunState, Runs, STRIPES};

    /// Idle supervisors kept per runtime and stripe; more are stopped when their run ends.
    const MAX_IDLE: usize = 1024;
    /// An idle supervisor is stopped after one to two of these.
    const SWEEP: Duration = Duration::from_millis(500);

    pub(super) struct Idle {
        pub(super) actor: ActorRef<RunMsg>,
        pub(super) runs: Runs,
        /// The state of its last run, for its next (see [`RunState::renew`]).
        pub(super) last: Arc<RunState>,
        /// The sweep count when it went idle.
        epoch: u64,
    }

    struct RuntimePool {
        runtime: Id,
        idle: Vec<Idle>,
        epoch: u64,
        sweeping: bool,
    }

    /// One stripe's pools, on a cache line of its own.
    #[repr(align(128))]
    struct Stripe(Mutex<Vec<RuntimePool>>);

    static POOLS: [Stripe; STRIPES] = [const { Stripe(Mutex::new(Vec::new())) }; STRIPES];

    fn with_pool<R>(stripe: usize, runtime: Id, f: impl FnOnce(&mut RuntimePool) -> R) -> R {
        let mut pools = POOLS[stripe].0.lock();
        let i = match pools.iter().position(|p| p.runtime == runtime) {
            Some(i) => i,
            None => {
                // A runtime that was shut down leaves its pool behind, every actor in it stopped.
                pools.retain(|p| p.idle.iter().any(|i| i.actor.get_status() != ActorStatus::Stopped));
                pools.push(RuntimePool { runtime, idle: Vec::new(), epoch: 0, sweeping: false });
                pools.len() - 1
            }
        };
        f(&mut pools[i])
    }

    /// An idle supervisor of the current runtime, if there is one: of this thread's stripe,
    /// else of any.
    pub(super) fn take() -> Option<Idle> {
        let runtime = Handle::try_current().ok()?.id();
        let own = stripe();
        (0..STRIPES).map(|k| (own + k) % STRIPES).find_map(|s| {
            let mut pools = POOLS[s].0.lock();
            pools.iter_mut().find(|p| p.runtime == runtime).and_then(|p| p.idle.pop())
        })
    }

    /// Keeps a supervisor of `runtime` whose run ended for the next run; false when enough
    /// wait already (the supervisor stops).
    pub(super) fn put_back(runtime: Id, actor: &ActorRef<RunMsg>, runs: &Runs, last: Arc<RunState>) -> bool {
        let s = stripe();
        let (kept, start_sweeper) = with_pool(s, runtime, |p| {
            if p.idle.len() >= MAX_IDLE {
                return (false, false);
            }
            p.idle.push(Idle { actor: actor.clone(), runs: runs.clone(), last, epoch: p.epoch });
            let start = !p.sweeping;
            p.sweeping = true;
            (true, start)
        });
        if start_sweeper {
            match Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(sweep(s, runtime));
                }
                Err(_) => {
                    with_pool(s, runtime, |p| p.sweeping = false);
                }
            }
        }
        kept
    }

    /// Stops the supervisors of a runtime's pool in `stripe` idle for a whole interval; ends
    /// when none is idle there.
    async fn sweep(stripe: usize, runtime: Id) {
        loop {
            tokio::time::sleep(SWEEP).await;
            let (expired, done) = with_pool(stripe, runtime, |p| {
                p.epoch += 1;
                let now = p.epoch;
                let (expired, kept): (Vec<Idle>, Vec<Idle>) = p.idle.drain(..).partition(|i| now - i.epoch >= 2);
                p.idle = kept;
                let done = p.idle.is_empty();
                if done {
                    p.sweeping = false;
                }
                (expired, done)
            });
            // An idle supervisor waits for its next run: killing it ends no run.
            for i in expired {
                i.actor.kill();
            }
            if done {
                return;
            }
        }
    }
}

/// A started run: its supervisor, and how to cancel it.
pub(crate) struct RunControl {
    actor: ActorRef<RunMsg>,
    state: Arc<RunState>,
}

impl RunControl {
    /// Cancels the run: the first reason given wins. No effect once the run has ended.
    pub(crate) fn cancel(&self, reason: impl Into<String>) {
        self.state.cancel(&self.actor, reason.into());
    }

    /// The result of a run whose supervisor ended without answering: it was cancelled.
    pub(crate) fn lost(&self) -> Error {
        match self.state.reason() {
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

/// Runs `root` under a supervisor actor of its own and waits for its result.
///
/// The run is handed over when this is called (see [`run_report`]).
pub(crate) fn run(
    root: NodeRef,
    shared: SharedStore,
    options: RunOptions,
) -> impl std::future::Future<Output = Result<Action, Error>> + Send {
    // Not `run_report` and a field of its report: that was one more future to poll, and the
    // report to move out of it, per run.
    supervised(root, shared, options, |result, _warnings| result)
}

/// Runs `root` as [`run`] does, and reports its warnings with its result.
///
/// The run is handed to an idle supervisor when this is called, so the returned future holds
/// only the run's control and answer: a caller's future (often a task of its own, which tokio
/// moves several times) stays small. Dropping it cancels the run.
pub(crate) fn run_report(
    root: NodeRef,
    shared: SharedStore,
    options: RunOptions,
) -> impl std::future::Future<Output = RunReport> + Send {
    supervised(root, shared, options, |result, warnings| RunReport { result, warnings })
}

/// [`run`] and [`run_report`]: the run handed over now, its result and warnings given to
/// `finish` when it ends.
fn supervised<T>(
    root: NodeRef,
    shared: SharedStore,
    options: RunOptions,
    finish: impl FnOnce(Result<Action, Error>, Vec<String>) -> T + Send,
) -> impl std::future::Future<Output = T> + Send {
    let handed = hand_over(root, shared, options).map(|(control, rx)| (CancelOnDrop(Some(control)), rx));
    async move {
        let (mut guard, rx) = match handed {
            Ok(started) => started,
            // No idle supervisor: spawning one is the rare case, boxed to keep this future small.
            Err(run) => match Box::pin(spawn_for(*run)).await {
                Ok((control, rx)) => (CancelOnDrop(Some(control)), rx),
                Err(e) => return finish(Err(e), Vec::new()),
            },
        };
        let Answered { result, warnings } = rx.await;
        let control = guard.0.take().expect("the guard holds the control until here");
        finish(result.unwrap_or_else(|| Err(control.lost())), warnings)
    }
}

/// Hands the run to an idle supervisor of the runtime, or to a new one; the answer gets the
/// run's result.
pub(crate) async fn start(
    root: NodeRef,
    shared: SharedStore,
    options: RunOptions,
) -> Result<(RunControl, Answer), Error> {
    match hand_over(root, shared, options) {
        Ok(started) => Ok(started),
        Err(run) => Box::pin(spawn_for(*run)).await,
    }
}

/// Hands the run to an idle supervisor of the runtime; gives it back when none takes it.
fn hand_over(root: NodeRef, shared: SharedStore, options: RunOptions) -> Result<(RunControl, Answer), Box<RunArgs>> {
    let settings = Settings::from(options);
    let args = |state: Arc<RunState>| RunArgs { root, shared, settings, reply: Reply(Some(Arc::clone(&state))), state };
    let Some(mut idle) = pool::take() else {
        return Err(Box::new(args(RunState::new())));
    };
    let state = RunState::renew(Some(idle.last));
    let mut run = args(Arc::clone(&state));
    // An idle supervisor may have been stopped (by the sweeper, or with its runtime) since it
    // was put back: the run comes back, and goes to the next one.
    loop {
        match idle.runs.send(run) {
            None => return Ok((RunControl { actor: idle.actor, state: Arc::clone(&state) }, Answer::new(state))),
            Some(r) => run = r,
        }
        match pool::take() {
            Some(next) => idle = next,
            None => return Err(Box::new(run)),
        }
    }
}

/// Starts a new supervisor for `run` (no idle one took it).
async fn spawn_for(run: RunArgs) -> Result<(RunControl, Answer), Error> {
    let state = Arc::clone(&run.state);
    let (runs, inbox) = Runs::new();
    let runtime = tokio::runtime::Handle::try_current().ok().map(|h| h.id());
    let inbox = Inbox { runs: Some(inbox), me: runs.clone(), alive: Arc::new(Alive::default()), runtime };
    let (actor, _join) = Actor::spawn(None, RunSupervisor, inbox)
        .await
        .map_err(|e| Error::Engine(format!("could not start the run supervisor: {e}")))?;
    if runs.send(run).is_some() {
        return Err(Error::Engine("the run supervisor stopped before its run".into()));
    }
    Ok((RunControl { actor, state: Arc::clone(&state) }, Answer::new(state)))
}

/// The end of a run as its supervisor holds it: the trace's end and the caller's answer.
///
/// When a kill drops the run mid-way, the run's node actors are killed too (ractor stops a
/// supervisor's linked children), but they end a moment later, in their own tasks. Their open
/// spans end as cancelled only then, so the trace's end (and with it the caller's answer,
/// which must not arrive before the trace is complete) waits for them, off the supervisor.
struct RunEnd<'a> {
    finisher: Option<TraceFinisher>,
    reply: Option<Reply>,
    alive: &'a Arc<Alive>,
}

impl Drop for RunEnd<'_> {
    fn drop(&mut self) {
        // Nothing to wait for: the fields drop as declared, the trace's end before the answer.
        if self.finisher.is_none() || self.alive.count() == 0 {
            return;
        }
        let (finisher, reply) = (self.finisher.take(), self.reply.take());
        let alive = Arc::clone(self.alive);
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
    run: Arc<RunState>,
    result: Option<(SpanStatus, Option<String>)>,
}

impl Drop for TraceFinisher {
    fn drop(&mut self) {
        let (status, action) = self.result.take().unwrap_or_else(|| {
            let reason = self.run.reason().unwrap_or_else(|| "the run was cancelled".into());
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
    options: Settings,
    run: Arc<RunState>,
    crew: &Crew,
    finisher: &mut Option<TraceFinisher>,
) -> Result<Action, Error> {
    install_panic_hook();
    let params = match options.params {
        Some(p) if !p.is_empty() => Arc::new(p),
        _ => root.0.run_params(),
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
                run: Arc::clone(&run),
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
        limits: RunLimits { max_steps: options.max_steps },
        crew: crew.clone(),
        run: Arc::clone(&run),
        hook: options.durable.as_ref().map(|d| Arc::clone(&d.hook)),
        progress: None,
    };
    if root.has_successors() {
        cx.warn(root.name(), "Node won't run successors. Use Flow.".into());
    }
    let res = match options.timeout {
        Some(limit) => match tokio::time::timeout(limit, visit_root(&root, &cx)).await {
            Ok(r) => r,
            Err(_) => {
                run.inner.lock().reason = Some(format!("run timed out after {limit:?}"));
                // The dropped visit killed its node actors; their spans end (as cancelled)
                // when they are gone, and belong in the trace.
                crew.alive.wait_none(Duration::from_secs(5)).await;
                Err(Error::Timeout { node: None, after: limit })
            }
        },
        None => visit_root(&root, &cx).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FnNode, Node};

    // One thread: the run's answer wakes the test only once its supervisor is back in the pool.
    #[tokio::test(flavor = "current_thread")]
    async fn a_late_cancel_leaves_the_supervisors_next_run_alone() {
        let quick = FnNode::new("Quick").into_node();
        let (first, answer) = start(quick, SharedStore::new(), RunOptions::default()).await.unwrap();
        assert!(answer.await.result.unwrap().is_ok());
        let slow = FnNode::new("Slow")
            .exec(|_, _| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(serde_json::Value::Null)
            })
            .into_node();
        let (second, answer) = start(slow, SharedStore::new(), RunOptions::default()).await.unwrap();
        assert_eq!(first.actor.get_id(), second.actor.get_id(), "the idle supervisor takes the next run");
        first.cancel("too late: this run has ended");
        assert!(answer.await.result.unwrap().is_ok(), "the next run on the same supervisor is not cancelled");
        second.cancel("now");
    }

    // One thread: the second run takes the supervisor (and the state) the first one ended with,
    // whose caller let go of it without taking the answer (its warnings are still in it).
    #[tokio::test(flavor = "current_thread")]
    async fn a_run_on_a_reused_supervisor_starts_with_nothing_of_the_last_run() {
        let ask = FnNode::new("Ask").post(|_, _, _| Ok("maybe".into())).into_node();
        let yes = FnNode::new("Yes").into_node();
        ask.next_on("yes", &yes);
        let flow = crate::flow::Flow::new(&ask);
        let (first, answer) = start(flow.as_node().clone(), SharedStore::new(), RunOptions::default()).await.unwrap();
        // The run ends in the supervisor's task, which puts itself back in the pool in the same poll.
        while matches!(first.state.inner.lock().answer, Outcome::Pending) {
            tokio::task::yield_now().await;
        }
        assert_eq!(first.state.inner.lock().warnings, vec!["Flow ends: 'maybe' not found in ['yes']"]);
        let reused = first.actor.get_id();
        drop((first, answer));

        let quiet = FnNode::new("Quiet").into_node();
        let (second, answer) = start(quiet, SharedStore::new(), RunOptions::default()).await.unwrap();
        let Answered { result, warnings } = answer.await;
        assert_eq!(second.actor.get_id(), reused, "the idle supervisor takes the next run");
        assert_eq!(result.expect("an answer").unwrap().as_str(), None, "the result is this run's own");
        assert!(warnings.is_empty(), "the last run's warnings leaked into this one: {warnings:?}");
        assert!(second.state.reason().is_none());
    }
}
