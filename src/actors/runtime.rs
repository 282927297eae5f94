//! The runtime a service holds: many runs at once, each under its own supervisor, a cap on
//! runs in flight, a handle per run, and a graceful shutdown.
//!
//! ```
//! use std::time::Duration;
//! use flowtrace::prelude::*;
//! use flowtrace::runtime::{Admission, Runtime};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), flowtrace::Error> {
//! let rt = Runtime::builder().max_in_flight(64).admission(Admission::Wait).build()?;
//! let flow = Flow::new(&FnNode::new("Step").into_node());
//! let handle = rt.spawn(&flow, &SharedStore::new()).await?;
//! handle.await?;
//! let report = rt.shutdown(Duration::from_secs(5)).await;
//! assert_eq!(report.cancelled, 0);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::supervisor::{start, RunControl, RunOptions, RunReport};
use super::traced::{plan_trace, TracedFlow};
use super::tracer::Tracer;
use crate::error::{ConfigError, Error};
use crate::export::ExportReport;
use crate::flow::{Action, BatchFlow, Flow, NodeRef, SharedStore};

/// What a full runtime does with a new run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Admission {
    /// The caller of [`Runtime::spawn`] waits until a run ends and frees a place.
    #[default]
    Wait,
    /// [`Runtime::spawn`] returns [`Error::Refused`] at once.
    Refuse,
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum RunStatus {
    /// Admitted; its supervisor is starting.
    Pending = 0,
    /// Running.
    Running = 1,
    /// Ended with an action.
    Succeeded = 2,
    /// Ended with an error other than a cancellation.
    Failed = 3,
    /// Cancelled (by its handle, by shutdown) before it ended.
    Cancelled = 4,
}

impl RunStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => RunStatus::Pending,
            1 => RunStatus::Running,
            2 => RunStatus::Succeeded,
            3 => RunStatus::Failed,
            _ => RunStatus::Cancelled,
        }
    }

    pub(crate) fn of(res: &Result<Action, Error>) -> Self {
        match res {
            Ok(_) => RunStatus::Succeeded,
            Err(Error::Cancelled { .. }) => RunStatus::Cancelled,
            Err(_) => RunStatus::Failed,
        }
    }

    /// Whether the run has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled)
    }
}

/// Counters of a runtime, since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RuntimeStats {
    /// Runs admitted and not yet ended.
    pub in_flight: u64,
    /// Callers waiting for a place ([`Admission::Wait`]).
    pub waiting: u64,
    /// Runs admitted.
    pub started: u64,
    /// Runs that ended with an action.
    pub succeeded: u64,
    /// Runs that ended with an error (timeouts included, cancellations not).
    pub failed: u64,
    /// Runs that timed out (also counted in `failed`).
    pub timed_out: u64,
    /// Runs cancelled.
    pub cancelled: u64,
    /// Runs refused (runtime full under [`Admission::Refuse`], or shutting down).
    pub refused: u64,
}

/// What [`Runtime::shutdown`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Runs in flight when shutdown began.
    pub in_flight_at_start: u64,
    /// Of those, runs that ended on their own before the deadline.
    pub finished: u64,
    /// Of those, runs cancelled at the deadline.
    pub cancelled: u64,
    /// Runs that had not ended even after being cancelled (should be 0).
    pub unfinished: u64,
    /// What the tracer's final flush did (`None` without a tracer).
    pub export: Option<ExportReport>,
    /// How long the shutdown took.
    #[serde(serialize_with = "ser_duration")]
    pub elapsed: Duration,
    /// The runtime's counters at the end.
    pub stats: RuntimeStats,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shutdown in {:.3}s: {} runs in flight, {} finished, {} cancelled, {} unfinished",
            self.elapsed.as_secs_f64(),
            self.in_flight_at_start,
            self.finished,
            self.cancelled,
            self.unfinished
        )?;
        if let Some(e) = &self.export {
            write!(
                f,
                "; spans delivered {}, spooled {}, dropped {}, pending {}",
                e.delivered, e.spooled, e.dropped, e.pending
            )?;
            for r in &e.reasons {
                write!(f, "; {r}")?;
            }
        }
        Ok(())
    }
}

/// Builds a [`Runtime`].
#[derive(Debug, Clone, Default)]
pub struct RuntimeBuilder {
    max_in_flight: Option<usize>,
    admission: Admission,
    run_timeout: Option<Duration>,
    max_steps: Option<u64>,
    tracer: Option<Tracer>,
}

impl RuntimeBuilder {
    /// The most runs in flight at once (default 1,024). Must be at least 1.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }
    /// What a full runtime does with a new run (default [`Admission::Wait`]).
    pub fn admission(mut self, policy: Admission) -> Self {
        self.admission = policy;
        self
    }
    /// A time limit for every run that sets none of its own. Must not be zero.
    pub fn run_timeout(mut self, limit: Duration) -> Self {
        self.run_timeout = Some(limit);
        self
    }
    /// A step limit for every run that sets none of its own. Must be at least 1.
    pub fn max_steps(mut self, n: u64) -> Self {
        self.max_steps = Some(n);
        self
    }
    /// Traces every run with `tracer` (plain flows under their own name); flushed on shutdown.
    pub fn tracer(mut self, tracer: &Tracer) -> Self {
        self.tracer = Some(tracer.clone());
        self
    }

    /// Checks the settings and builds the runtime. Needs no tokio context.
    pub fn build(self) -> Result<Runtime, Error> {
        let max = self.max_in_flight.unwrap_or(1024);
        if max == 0 {
            return Err(ConfigError::new("max_in_flight", "0", "must be at least 1").into());
        }
        if max > Semaphore::MAX_PERMITS {
            let reason = format!("must be at most {}", Semaphore::MAX_PERMITS);
            return Err(ConfigError::new("max_in_flight", max.to_string(), reason).into());
        }
        if self.run_timeout.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("run_timeout", "0s", "must be greater than zero").into());
        }
        if self.max_steps == Some(0) {
            return Err(ConfigError::new("max_steps", "0", "must be at least 1").into());
        }
        Ok(Runtime {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(max)),
                max_in_flight: max,
                admission: self.admission,
                run_timeout: self.run_timeout,
                max_steps: self.max_steps,
                tracer: self.tracer,
                closed: AtomicBool::new(false),
                runs: DashMap::new(),
                next_id: AtomicU64::new(1),
                idle: Notify::new(),
                counters: Counters::default(),
            }),
        })
    }
}

#[derive(Default)]
struct Counters {
    in_flight: AtomicU64,
    waiting: AtomicU64,
    started: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
    refused: AtomicU64,
}

struct Inner {
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    admission: Admission,
    run_timeout: Option<Duration>,
    max_steps: Option<u64>,
    tracer: Option<Tracer>,
    closed: AtomicBool,
    runs: DashMap<u64, Arc<Shared>>,
    next_id: AtomicU64,
    idle: Notify,
    counters: Counters,
}

/// What a run's handle and the runtime share about it.
struct Shared {
    status: AtomicU8,
    control: parking_lot::Mutex<Option<Arc<RunControl>>>,
    /// A cancel asked for before the supervisor started.
    early_cancel: parking_lot::Mutex<Option<String>>,
}

impl Shared {
    fn cancel(&self, reason: String) {
        let control = self.control.lock().clone();
        match control {
            Some(c) => c.cancel(reason),
            None => {
                let mut early = self.early_cancel.lock();
                if early.is_none() {
                    *early = Some(reason);
                }
            }
        }
    }
}

/// Runs flows for a service: concurrently, each under its own supervisor, at most
/// `max_in_flight` at once, with a [`RunHandle`] per run and a graceful [`shutdown`](Self::shutdown).
///
/// Cheap to clone; clones share the runtime. The runtime installs no signal handlers: a
/// service calls `shutdown` from its own (e.g. `tokio::signal`).
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("max_in_flight", &self.inner.max_in_flight)
            .field("admission", &self.inner.admission)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Runtime {
    /// A builder with the defaults: 1,024 runs in flight, [`Admission::Wait`], no limits, no tracer.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The runtime's counters now.
    pub fn stats(&self) -> RuntimeStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        RuntimeStats {
            in_flight: l(&c.in_flight),
            waiting: l(&c.waiting),
            started: l(&c.started),
            succeeded: l(&c.succeeded),
            failed: l(&c.failed),
            timed_out: l(&c.timed_out),
            cancelled: l(&c.cancelled),
            refused: l(&c.refused),
        }
    }

    /// Whether [`shutdown`](Self::shutdown) has begun (new runs are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// The tracer the runtime traces with, if any.
    pub fn tracer(&self) -> Option<&Tracer> {
        self.inner.tracer.as_ref()
    }

    /// The most runs in flight at once (a durable worker pulls no more runs than this).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight
    }

    /// Places free now (a durable worker pulls no more runs than this at a time).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn free_slots(&self) -> usize {
        self.inner.slots.available_permits()
    }

    /// Starts a run of anything runnable on `shared`: a [`Flow`], a [`BatchFlow`], a single
    /// [`NodeRef`], or a [`TracedFlow`] (its trace fields and options, its tracer else the
    /// runtime's). A plain flow is traced under its own name when the runtime has a tracer.
    /// Waits for a place or is refused, by the admission policy; always refused once shutdown
    /// has begun.
    pub async fn spawn<R: Runnable + ?Sized>(&self, run: &R, shared: &SharedStore) -> Result<RunHandle, Error> {
        let (root, options) = run.plan(self.inner.tracer.as_ref());
        self.admit(root, shared.clone(), options).await
    }

    /// [`spawn`](Self::spawn) with run options (params, a time limit, a step limit) in place
    /// of the runnable's own; the runtime's timeout and step limit apply where they set none.
    pub async fn spawn_with<R: Runnable + ?Sized>(
        &self,
        run: &R,
        shared: &SharedStore,
        options: RunOptions,
    ) -> Result<RunHandle, Error> {
        let (root, mut planned) = run.plan(self.inner.tracer.as_ref());
        let trace = planned.trace.take();
        let options = RunOptions { trace, ..options };
        self.admit(root, shared.clone(), options).await
    }

    fn refuse(&self, why: String) -> Error {
        self.inner.counters.refused.fetch_add(1, Ordering::SeqCst);
        Error::Refused(why)
    }

    async fn admit(&self, root: NodeRef, shared: SharedStore, mut options: RunOptions) -> Result<RunHandle, Error> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(self.refuse("the runtime is shutting down".into()));
        }
        let permit = match inner.admission {
            Admission::Refuse => match Arc::clone(&inner.slots).try_acquire_owned() {
                Ok(p) => p,
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    return Err(self.refuse(format!("{} runs already in flight (the limit)", inner.max_in_flight)))
                }
                Err(tokio::sync::TryAcquireError::Closed) => {
                    return Err(self.refuse("the runtime is shutting down".into()))
                }
            },
            Admission::Wait => {
                inner.counters.waiting.fetch_add(1, Ordering::SeqCst);
                let p = Arc::clone(&inner.slots).acquire_owned().await;
                inner.counters.waiting.fetch_sub(1, Ordering::SeqCst);
                match p {
                    Ok(p) => p,
                    Err(_) => return Err(self.refuse("the runtime is shutting down".into())),
                }
            }
        };
        if inner.closed.load(Ordering::SeqCst) {
            return Err(self.refuse("the runtime is shutting down".into()));
        }
        if options.timeout.is_none() {
            options.timeout = inner.run_timeout;
        }
        if options.max_steps.is_none() {
            options.max_steps = inner.max_steps;
        }
        let id = inner.next_id.fetch_add(1, Ordering::SeqCst);
        let shared_state = Arc::new(Shared {
            status: AtomicU8::new(0),
            control: parking_lot::Mutex::new(None),
            early_cancel: parking_lot::Mutex::new(None),
        });
        inner.counters.started.fetch_add(1, Ordering::SeqCst);
        inner.counters.in_flight.fetch_add(1, Ordering::SeqCst);
        inner.runs.insert(id, Arc::clone(&shared_state));
        let (tx, rx) = oneshot::channel();
        let watcher = Watcher { rt: Arc::clone(inner), id, state: Arc::clone(&shared_state), _permit: permit };
        tokio::spawn(watcher.run(root, shared, options, tx));
        Ok(RunHandle { id, state: shared_state, rx, released: false })
    }

    /// Shuts down gracefully: refuses new runs at once, lets runs in flight finish until
    /// `deadline` has passed, cancels the rest, then flushes the tracer (for up to `deadline`
    /// again, at least 1 s) and reports what happened.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let started = Instant::now();
        let inner = &self.inner;
        inner.closed.store(true, Ordering::SeqCst);
        inner.slots.close();
        let at_start = inner.counters.in_flight.load(Ordering::SeqCst);
        let ended_before = self.ended();
        let finished_in_time = self.wait_idle(deadline).await;
        let finished = self.ended() - ended_before;
        let mut cancelled = 0;
        if !finished_in_time {
            let reason = format!("the runtime shut down (deadline of {deadline:?} passed)");
            for entry in inner.runs.iter() {
                entry.value().cancel(reason.clone());
                cancelled += 1;
            }
            // A cancel is a kill: supervisors end promptly. Bound the wait all the same.
            self.wait_idle(Duration::from_secs(5)).await;
        }
        let unfinished = inner.counters.in_flight.load(Ordering::SeqCst);
        let export = match &inner.tracer {
            Some(t) => Some(t.flush(deadline.max(Duration::from_secs(1))).await),
            None => None,
        };
        ShutdownReport {
            in_flight_at_start: at_start,
            finished: finished.min(at_start),
            cancelled: cancelled.min(at_start),
            unfinished,
            export,
            elapsed: started.elapsed(),
            stats: self.stats(),
        }
    }

    fn ended(&self) -> u64 {
        let c = &self.inner.counters;
        c.succeeded.load(Ordering::SeqCst) + c.failed.load(Ordering::SeqCst) + c.cancelled.load(Ordering::SeqCst)
    }

    /// Waits until no run is in flight, or `limit` passes; true when idle.
    async fn wait_idle(&self, limit: Duration) -> bool {
        let inner = &self.inner;
        let wait = async {
            loop {
                let notified = inner.idle.notified();
                if inner.counters.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

/// Drives one run: starts its supervisor, waits for the result, updates the counters, frees
/// its place (the permit drops with the watcher) and hands the result to the handle.
struct Watcher {
    rt: Arc<Inner>,
    id: u64,
    state: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Watcher {
    async fn run(
        self,
        root: NodeRef,
        shared: SharedStore,
        options: RunOptions,
        tx: oneshot::Sender<(Result<Action, Error>, Vec<String>)>,
    ) {
        let (res, warnings) = self.drive(root, shared, options).await;
        let status = RunStatus::of(&res);
        let c = &self.rt.counters;
        match status {
            RunStatus::Succeeded => c.succeeded.fetch_add(1, Ordering::SeqCst),
            RunStatus::Cancelled => c.cancelled.fetch_add(1, Ordering::SeqCst),
            _ => c.failed.fetch_add(1, Ordering::SeqCst),
        };
        if matches!(res, Err(Error::Timeout { node: None, .. })) {
            c.timed_out.fetch_add(1, Ordering::SeqCst);
        }
        self.state.status.store(status as u8, Ordering::SeqCst);
        *self.state.control.lock() = None;
        self.rt.runs.remove(&self.id);
        // Free the place before answering, so a caller that awaited this run finds it free.
        let Watcher { rt, _permit: permit, .. } = self;
        drop(permit);
        if rt.counters.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            rt.idle.notify_waiters();
        }
        let _ = tx.send((res, warnings));
    }

    async fn drive(
        &self,
        root: NodeRef,
        shared: SharedStore,
        options: RunOptions,
    ) -> (Result<Action, Error>, Vec<String>) {
        if let Some(reason) = self.state.early_cancel.lock().clone() {
            return (Err(Error::Cancelled { reason }), Vec::new());
        }
        let (control, rx) = match start(root, shared, options).await {
            Ok(started) => started,
            Err(e) => return (Err(e), Vec::new()),
        };
        let control = Arc::new(control);
        {
            let mut slot = self.state.control.lock();
            *slot = Some(Arc::clone(&control));
            self.state.status.store(RunStatus::Running as u8, Ordering::SeqCst);
        }
        // A cancel that arrived while the supervisor was starting.
        if let Some(reason) = self.state.early_cancel.lock().clone() {
            control.cancel(reason);
        }
        let answered = rx.await;
        (answered.result.unwrap_or_else(|| Err(control.lost())), answered.warnings)
    }
}

/// What [`Runtime::spawn`] starts: [`Flow`], [`BatchFlow`], [`NodeRef`] and [`TracedFlow`].
///
/// Sealed: the runtime plans each run (its root, options and tracing) in one place.
pub trait Runnable: sealed::Sealed {
    /// The run's root node and options, its tracing planned with the runtime's tracer.
    #[doc(hidden)]
    fn plan(&self, runtime_tracer: Option<&Tracer>) -> (NodeRef, RunOptions);
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::flow::Flow {}
    impl Sealed for crate::flow::BatchFlow {}
    impl Sealed for crate::flow::NodeRef {}
    impl Sealed for super::TracedFlow {}
}

fn plan_plain(root: &NodeRef, runtime_tracer: Option<&Tracer>) -> (NodeRef, RunOptions) {
    let options = RunOptions { trace: plan_trace(root, None, runtime_tracer), ..RunOptions::default() };
    (root.clone(), options)
}

impl Runnable for Flow {
    fn plan(&self, runtime_tracer: Option<&Tracer>) -> (NodeRef, RunOptions) {
        plan_plain(self.as_node(), runtime_tracer)
    }
}

impl Runnable for BatchFlow {
    fn plan(&self, runtime_tracer: Option<&Tracer>) -> (NodeRef, RunOptions) {
        plan_plain(self.as_node(), runtime_tracer)
    }
}

impl Runnable for NodeRef {
    fn plan(&self, runtime_tracer: Option<&Tracer>) -> (NodeRef, RunOptions) {
        plan_plain(self, runtime_tracer)
    }
}

impl Runnable for TracedFlow {
    fn plan(&self, runtime_tracer: Option<&Tracer>) -> (NodeRef, RunOptions) {
        TracedFlow::plan(self, runtime_tracer)
    }
}

/// A run started by a [`Runtime`]: await it (or [`result`](Self::result)) for its action,
/// [`cancel`](Self::cancel) it, or ask its [`status`](Self::status).
///
/// Dropping the handle before the run ends cancels the run (its reason says the handle was
/// dropped): a service whose client went away stops spending on its run, as dropping the
/// future of [`Flow::run`](crate::Flow::run) does. To let a run go on alone, call
/// [`detach`](Self::detach).
#[derive(Debug)]
#[must_use = "dropping a RunHandle cancels its run: await it, or detach() it"]
pub struct RunHandle {
    id: u64,
    state: Arc<Shared>,
    rx: oneshot::Receiver<(Result<Action, Error>, Vec<String>)>,
    /// Whether dropping the handle leaves the run alone: detached, or its result taken.
    released: bool,
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        if !self.released && !self.status().is_finished() {
            self.state.cancel("the run's handle was dropped".into());
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("status", &RunStatus::from_u8(self.status.load(Ordering::SeqCst))).finish()
    }
}

impl RunHandle {
    /// The run's id, unique within its runtime.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Where the run is now.
    pub fn status(&self) -> RunStatus {
        RunStatus::from_u8(self.state.status.load(Ordering::SeqCst))
    }

    /// Cancels the run; it ends with [`Error::Cancelled`] carrying `reason` (the first reason
    /// given wins), and its open spans end as cancelled. Nested flows and parallel batch items
    /// of the run are cancelled with it. No effect on a run that has ended.
    pub fn cancel(&self, reason: impl Into<String>) {
        if !self.status().is_finished() {
            self.state.cancel(reason.into());
        }
    }

    /// A handle that can cancel the run from elsewhere while this one is awaited.
    pub fn canceller(&self) -> RunCanceller {
        RunCanceller { state: Arc::clone(&self.state) }
    }

    /// Waits for the run's result (the same as awaiting the handle).
    pub async fn result(self) -> Result<Action, Error> {
        self.await
    }

    /// Waits for the run's [`RunReport`]: its result, its outcome and PocketFlow's warnings.
    pub async fn report(mut self) -> RunReport {
        std::future::poll_fn(|cx| self.poll_report(cx)).await
    }

    fn poll_report(&mut self, cx: &mut Context<'_>) -> Poll<RunReport> {
        let res = Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok((result, warnings)) => RunReport { result, warnings },
            Err(_) => RunReport {
                result: Err(Error::Engine("the run's watcher task ended without a result".into())),
                warnings: Vec::new(),
            },
        });
        if res.is_ready() {
            self.released = true;
        }
        res
    }

    /// Lets the run go on to its end without this handle: dropping a handle otherwise cancels
    /// its run. A [`canceller`](Self::canceller) taken before still works.
    pub fn detach(mut self) {
        self.released = true;
    }
}

impl Future for RunHandle {
    type Output = Result<Action, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_report(cx).map(|r| r.result)
    }
}

/// Cancels one run; cheap to clone (see [`RunHandle::canceller`]).
#[derive(Debug, Clone)]
pub struct RunCanceller {
    state: Arc<Shared>,
}

impl RunCanceller {
    /// As [`RunHandle::cancel`].
    pub fn cancel(&self, reason: impl Into<String>) {
        if !RunStatus::from_u8(self.state.status.load(Ordering::SeqCst)).is_finished() {
            self.state.cancel(reason.into());
        }
    }
}
