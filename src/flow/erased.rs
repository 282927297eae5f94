//! The node interface the runtime drives, with each node's own types erased.
//!
//! A node's phases pass typed values (`Node::Prep`, `Node::Exec`, batch items and outputs).
//! The runtime (`crate::actors`) must hold them between phases, record them in traces and
//! hand them back, without knowing their types: here they become boxed values that can be
//! serialised (for traces) and downcast back (by the node's own adapter). This is the whole
//! contract between what users write and how it runs; nothing here knows of actors or spans.

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;

use super::action::Action;
use super::context::{Context, ExecContext};
use crate::error::{BoxError, NodeResult, Phase};

/// What `prep` produced: shared between attempts (and with a blocking-pool thread), then
/// handed to `post`.
pub(crate) trait PrepValue: Send + Sync + 'static {
    fn value(&self) -> &dyn erased_serde::Serialize;
    fn type_name(&self) -> &'static str;
    fn as_any(&self) -> &(dyn Any + Send + Sync);
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<T: Serialize + Send + Sync + 'static> PrepValue for T {
    fn value(&self) -> &dyn erased_serde::Serialize {
        self
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// What `exec` (or the fallback) produced, for `post`.
pub(crate) trait ExecValue: Send + 'static {
    fn value(&self) -> &dyn erased_serde::Serialize;
    fn type_name(&self) -> &'static str;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

impl<T: Serialize + Send + 'static> ExecValue for T {
    fn value(&self) -> &dyn erased_serde::Serialize {
        self
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Serialize for dyn PrepValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        erased_serde::serialize(self.value(), s)
    }
}

impl Serialize for dyn ExecValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        erased_serde::serialize(self.value(), s)
    }
}

pub(crate) type Prepared = Arc<dyn PrepValue>;
pub(crate) type Executed = Box<dyn ExecValue>;

/// A value handed back to the adapter that made it is always of its type; anything else is a
/// bug in the runtime, reported as the node's error rather than a panic.
pub(crate) fn mismatch(what: &str) -> BoxError {
    format!("flowtrace internal error: the {what} handed back to the node is not of its type").into()
}

/// Downcasts a prep value by reference.
pub(crate) fn prep_ref<T: 'static>(p: &dyn PrepValue) -> NodeResult<&T> {
    p.as_any().downcast_ref::<T>().ok_or_else(|| mismatch("prep result"))
}

/// Takes a prep value back by value; `Err` when it is of another type or still shared (an
/// exec attempt abandoned by its timeout on the blocking pool can still hold it).
pub(crate) fn prep_owned<T: Send + Sync + 'static>(p: Prepared) -> NodeResult<T> {
    let arc = p.into_any().downcast::<T>().map_err(|_| mismatch("prep result"))?;
    Arc::try_unwrap(arc).map_err(|_| {
        "a timed-out exec attempt is still running on the blocking pool and holds the prep result, so post \
         cannot take it"
            .into()
    })
}

/// Takes an exec value back.
pub(crate) fn exec_owned<T: 'static>(e: Executed) -> NodeResult<T> {
    e.into_any().downcast::<T>().map(|b| *b).map_err(|_| mismatch("exec result"))
}

/// The phase a fused visit (see [`ErasedNode::visit_once`]) is in, kept outside its future so
/// that a panic, which drops the future, can still be named by phase.
#[derive(Debug)]
pub(crate) struct PhaseCell(AtomicU8);

impl PhaseCell {
    // Inlined: called at each phase of every visit, from another of the crate's code units.
    #[inline]
    pub(crate) fn new(phase: Phase) -> Self {
        PhaseCell(AtomicU8::new(phase as u8))
    }

    #[inline]
    pub(crate) fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn get(&self) -> Phase {
        match self.0.load(Ordering::Relaxed) {
            0 => Phase::Prep,
            1 => Phase::Exec,
            2 => Phase::Fallback,
            _ => Phase::Post,
        }
    }
}

/// How a fused visit failed: the phase the error belongs to, and the hook's error.
pub(crate) type PhaseError = (Phase, BoxError);

/// The error a fallback was given, to tell whether the fallback handed it back.
///
/// A fallback that hands back the error it was given (the default one does) re-raises exec's
/// error, which belongs to exec; any other error is the fallback's own. Compared by address
/// and message: an address alone could be reused by a new error once the fallback dropped the
/// one it was given.
pub(crate) struct GivenError {
    addr: usize,
    message: String,
}

impl GivenError {
    pub(crate) fn of(e: &BoxError) -> Self {
        GivenError { addr: addr_of(e), message: e.to_string() }
    }

    /// The phase of `e`, an error the fallback returned.
    pub(crate) fn phase_of(&self, e: &BoxError) -> Phase {
        if addr_of(e) == self.addr && e.to_string() == self.message {
            Phase::Exec
        } else {
            Phase::Fallback
        }
    }
}

fn addr_of(e: &BoxError) -> usize {
    (&**e as *const (dyn std::error::Error + Send + Sync)).cast::<()>() as usize
}

/// exec, then the fallback with exec's error when it fails: PocketFlow's single attempt, with
/// the phase of each error (for [`ErasedBatch::exec_once`]; [`ErasedNode::visit_once`] has
/// the same steps written out, which measured cheaper still on a chain node).
///
/// exec's future is made here, by `exec`, not passed in: an `async fn` holds a future it is
/// given twice (as its argument and as what it awaits), and this one lives in a boxed future
/// that is copied into its box as it is made.
pub(crate) async fn exec_once<T, X, F>(
    exec: impl FnOnce() -> X,
    fallback: impl FnOnce(BoxError) -> F,
    at: &PhaseCell,
) -> Result<T, PhaseError>
where
    X: std::future::Future<Output = NodeResult<T>>,
    F: std::future::Future<Output = NodeResult<T>>,
{
    at.set(Phase::Exec);
    match exec().await {
        Ok(v) => Ok(v),
        Err(e) => {
            at.set(Phase::Fallback);
            let given = GivenError::of(&e);
            fallback(e).await.map_err(|e| (given.phase_of(&e), e))
        }
    }
}

/// A plain node's phases.
pub(crate) trait ErasedNode: Send + Sync + 'static {
    fn prep<'a>(&'a self, ctx: &'a Context<'a>) -> BoxFuture<'a, NodeResult<Prepared>>;
    fn exec<'a>(&'a self, prep: &'a dyn PrepValue, cx: ExecContext) -> BoxFuture<'a, NodeResult<Executed>>;
    /// `exec` with everything owned, for a blocking-pool thread.
    fn exec_detached(self: Arc<Self>, prep: Prepared, cx: ExecContext) -> BoxFuture<'static, NodeResult<Executed>>;
    fn fallback<'a>(
        &'a self,
        prep: &'a dyn PrepValue,
        error: BoxError,
        cx: ExecContext,
    ) -> BoxFuture<'a, NodeResult<Executed>>;
    /// The exec result when `max_retries` is 0 and exec never runs.
    fn skipped(&self) -> Option<Executed>;
    fn post<'a>(&'a self, ctx: &'a Context<'a>, prep: Prepared, exec: Executed) -> BoxFuture<'a, NodeResult<Action>>;
    /// The whole visit in one future, for a visit nothing records whose exec runs once, inline
    /// and without a time limit: prep, exec, the fallback on exec's error, post. The typed
    /// values stay inside the future (nothing is boxed between phases); `at` follows the phase.
    /// `cx` is borrowed, not moved in: the future is moved into its box as it is made.
    fn visit_once<'a>(
        &'a self,
        ctx: &'a Context<'a>,
        cx: &'a ExecContext,
        at: &'a PhaseCell,
    ) -> BoxFuture<'a, Result<Action, PhaseError>>;
}

/// A batch node's phases: `prep` yields the items (one value holding them all), `exec` runs
/// on the item at an index.
pub(crate) trait ErasedBatch: Send + Sync + 'static {
    fn prep<'a>(&'a self, ctx: &'a Context<'a>) -> BoxFuture<'a, NodeResult<Prepared>>;
    /// How many items `prep` produced.
    fn len(&self, items: &dyn PrepValue) -> usize;
    /// Item `i`, to record.
    fn item<'a>(&self, items: &'a dyn PrepValue, i: usize) -> Option<&'a dyn erased_serde::Serialize>;
    fn exec<'a>(&'a self, items: &'a dyn PrepValue, i: usize, cx: ExecContext) -> BoxFuture<'a, NodeResult<Executed>>;
    /// `exec` on item `i` with everything owned, for a blocking-pool thread.
    fn exec_detached(
        self: Arc<Self>,
        items: Prepared,
        i: usize,
        cx: ExecContext,
    ) -> BoxFuture<'static, NodeResult<Executed>>;
    fn fallback<'a>(
        &'a self,
        items: &'a dyn PrepValue,
        i: usize,
        error: BoxError,
        cx: ExecContext,
    ) -> BoxFuture<'a, NodeResult<Executed>>;
    /// An item's result when `max_retries` is 0.
    fn skipped(&self) -> Option<Executed>;
    fn post<'a>(
        &'a self,
        ctx: &'a Context<'a>,
        items: Prepared,
        outputs: Vec<Executed>,
    ) -> BoxFuture<'a, NodeResult<Action>>;
    /// Item `i`'s exec and, when it fails, its fallback, in one future: a single attempt that
    /// nothing records, inline and without a time limit. `at` follows the phase.
    fn exec_once<'a>(
        &'a self,
        items: &'a dyn PrepValue,
        i: usize,
        cx: &'a ExecContext,
        at: &'a PhaseCell,
    ) -> BoxFuture<'a, Result<Executed, PhaseError>>;
}
