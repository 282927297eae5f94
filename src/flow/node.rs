//! The `Node` trait users implement, and its erased form the runtime drives.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;

use super::action::Action;
use super::context::{Context, ExecContext};
use super::erased::{
    exec_owned, prep_owned, prep_ref, ErasedNode, Executed, GivenError, PhaseCell, PhaseError, PrepValue, Prepared,
};
use super::graph::{NodeKind, NodeRef};
use crate::error::{BoxError, NodeResult, Phase};

/// A step of a flow, with PocketFlow's three phases.
///
/// - `prep` reads the shared store and returns what `exec` needs;
/// - `exec` does the work on that alone; it is retried (see [`NodeRef::max_retries`]), and
///   after the last failed attempt [`exec_fallback`](Node::exec_fallback) gets the error;
/// - `post` writes results back and returns the [`Action`] that picks the next node.
///
/// Results are typed and serialisable so that traces can record them. A node is never
/// mutated by a run (hooks take `&self`), so the same node can run in many flows at once.
///
/// ```
/// use flowtrace::prelude::*;
///
/// struct Double;
///
/// impl Node for Double {
///     type Prep = i64;
///     type Exec = i64;
///
///     async fn prep(&self, ctx: &Context<'_>) -> NodeResult<i64> {
///         Ok(ctx.shared().require::<i64>("n")?)
///     }
///     async fn exec(&self, n: &i64, _cx: &ExecContext) -> NodeResult<i64> {
///         Ok(n * 2)
///     }
///     async fn post(&self, ctx: &Context<'_>, _n: i64, doubled: i64) -> NodeResult<Action> {
///         ctx.shared().insert("n", doubled);
///         Ok(Action::none())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let shared = SharedStore::new();
/// shared.insert("n", 21_i64);
/// Flow::new(&Double.into_node()).run(&shared).await.unwrap();
/// assert_eq!(shared.get::<i64>("n").unwrap(), Some(42));
/// # }
/// ```
pub trait Node: Send + Sync + Sized + 'static {
    /// What `prep` hands to `exec` (and then to `post`).
    type Prep: Serialize + Send + Sync + 'static;
    /// What `exec` (or the fallback) produces for `post`.
    type Exec: Serialize + Send + 'static;

    /// The node's name in traces and errors; the type's name by default.
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name::<Self>())
    }

    /// Reads what the node needs from the shared store.
    fn prep(&self, ctx: &Context<'_>) -> impl Future<Output = NodeResult<Self::Prep>> + Send;

    /// Does the work. Called once per attempt with the same `prep` result.
    fn exec(&self, prep: &Self::Prep, cx: &ExecContext) -> impl Future<Output = NodeResult<Self::Exec>> + Send;

    /// Called with the last attempt's error when every attempt failed. The default returns the
    /// error, which fails the run.
    fn exec_fallback(
        &self,
        prep: &Self::Prep,
        error: BoxError,
        cx: &ExecContext,
    ) -> impl Future<Output = NodeResult<Self::Exec>> + Send {
        let _ = (prep, cx);
        async move { Err(error) }
    }

    /// Writes results to the store and picks the next edge.
    fn post(
        &self,
        ctx: &Context<'_>,
        prep: Self::Prep,
        exec: Self::Exec,
    ) -> impl Future<Output = NodeResult<Action>> + Send;

    /// The `exec` result when `max_retries` is 0 and exec never runs. PocketFlow passes `None`;
    /// a typed node has no such value, so by default the visit fails with a clear error.
    /// JSON nodes ([`crate::FnNode`]) return `null`, as PocketFlow does.
    fn exec_skipped(&self) -> Option<Self::Exec> {
        None
    }

    /// Wraps the node in a graph handle, ready to wire and configure.
    fn into_node(self) -> NodeRef {
        let name = self.name();
        let literal = if let Cow::Borrowed(s) = &name { Some(*s) } else { None };
        NodeRef::from_kind(name, short_type_name::<Self>(), NodeKind::Node(Arc::new(NodeAdapter(self))))
            .with_literal_name(literal)
    }
}

/// `my_crate::nodes::Classify<T>` → `Classify`.
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

pub(crate) struct NodeAdapter<N>(pub(crate) N);

/// A fused visit's fallback (see [`ErasedNode::visit_once`]), boxed: it is the rare path, and
/// in place its state (the error it was given, its future) made every visit's future larger,
/// and that future is copied into its box as it is made.
fn fallback_once<'a, N: Node>(
    node: &'a N,
    prep: &'a N::Prep,
    e: BoxError,
    cx: &'a ExecContext,
    at: &'a PhaseCell,
) -> BoxFuture<'a, Result<N::Exec, PhaseError>> {
    Box::pin(async move {
        at.set(Phase::Fallback);
        let given = GivenError::of(&e);
        node.exec_fallback(prep, e, cx).await.map_err(|e| (given.phase_of(&e), e))
    })
}

impl<N: Node> ErasedNode for NodeAdapter<N> {
    fn prep<'a>(&'a self, ctx: &'a Context<'a>) -> BoxFuture<'a, NodeResult<Prepared>> {
        Box::pin(async move { Ok(Arc::new(self.0.prep(ctx).await?) as Prepared) })
    }

    fn exec<'a>(&'a self, prep: &'a dyn PrepValue, cx: ExecContext) -> BoxFuture<'a, NodeResult<Executed>> {
        Box::pin(async move {
            let prep = prep_ref::<N::Prep>(prep)?;
            Ok(Box::new(self.0.exec(prep, &cx).await?) as Executed)
        })
    }

    fn exec_detached(self: Arc<Self>, prep: Prepared, cx: ExecContext) -> BoxFuture<'static, NodeResult<Executed>> {
        Box::pin(async move {
            let p = prep_ref::<N::Prep>(&*prep)?;
            Ok(Box::new(self.0.exec(p, &cx).await?) as Executed)
        })
    }

    fn fallback<'a>(
        &'a self,
        prep: &'a dyn PrepValue,
        error: BoxError,
        cx: ExecContext,
    ) -> BoxFuture<'a, NodeResult<Executed>> {
        Box::pin(async move {
            let prep = prep_ref::<N::Prep>(prep)?;
            Ok(Box::new(self.0.exec_fallback(prep, error, &cx).await?) as Executed)
        })
    }

    fn skipped(&self) -> Option<Executed> {
        self.0.exec_skipped().map(|v| Box::new(v) as Executed)
    }

    fn post<'a>(&'a self, ctx: &'a Context<'a>, prep: Prepared, exec: Executed) -> BoxFuture<'a, NodeResult<Action>> {
        Box::pin(async move {
            let prep = prep_owned::<N::Prep>(prep)?;
            let exec = exec_owned::<N::Exec>(exec)?;
            self.0.post(ctx, prep, exec).await
        })
    }

    fn visit_once<'a>(
        &'a self,
        ctx: &'a Context<'a>,
        cx: &'a ExecContext,
        at: &'a PhaseCell,
    ) -> BoxFuture<'a, Result<Action, PhaseError>> {
        Box::pin(async move {
            at.set(Phase::Prep);
            let prep = self.0.prep(ctx).await.map_err(|e| (Phase::Prep, e))?;
            // exec_once's steps, written out: a nested `async fn` taking exec's future by value
            // holds it twice, and this future is moved into its box as it is made.
            at.set(Phase::Exec);
            let exec = match self.0.exec(&prep, cx).await {
                Ok(v) => v,
                Err(e) => fallback_once(&self.0, &prep, e, cx, at).await?,
            };
            at.set(Phase::Post);
            self.0.post(ctx, prep, exec).await.map_err(|e| (Phase::Post, e))
        })
    }
}
