//! The node interface the runtime drives, with each node's own types erased.
//!
//! A node's phases pass typed values (`Node::Prep`, `Node::Exec`, batch items and outputs).
//! The runtime (`crate::actors`) must hold them between phases, record them in traces and
//! hand them back, without knowing their types: here they become boxed values that can be
//! serialised (for traces) and downcast back (by the node's own adapter). This is the whole
//! contract between what users write and how it runs; nothing here knows of actors or spans.

use std::any::Any;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;

use super::action::Action;
use super::context::{Context, ExecContext};
use crate::error::{BoxError, NodeResult};

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
}
