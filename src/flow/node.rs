//! The `Node` trait users implement, and how one visit of it runs.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use serde::Serialize;
use tracing::Instrument;

use super::action::Action;
use super::context::{Context, ExecContext};
use super::graph::{NodeDef, NodeKind, NodeRef};
use super::store::record_writes;
use super::visit::{contain, hook_error, run_exec, ErasedNode, ExecOps, VisitCx};
use crate::error::{BoxError, Error, NodeResult, Phase};
use crate::trace::model::SpanKind;
use crate::trace::recorder::capture;

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
        NodeRef::from_kind(name, short_type_name::<Self>(), NodeKind::Leaf(Box::new(NodeAdapter(Arc::new(self)))))
    }
}

/// `my_crate::nodes::Classify<T>` → `Classify`.
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

pub(crate) struct NodeAdapter<N>(pub(crate) Arc<N>);

struct Inline<'a, N: Node> {
    node: &'a N,
    prep: &'a N::Prep,
}

impl<N: Node> ExecOps for Inline<'_, N> {
    type Out = N::Exec;
    async fn attempt(&self, cx: ExecContext) -> NodeResult<N::Exec> {
        self.node.exec(self.prep, &cx).await
    }
    async fn fallback(&self, err: BoxError, cx: ExecContext) -> NodeResult<N::Exec> {
        self.node.exec_fallback(self.prep, err, &cx).await
    }
}

/// Exec on the blocking pool: the node and its prep result are shared with the pool thread.
struct Blocking<N: Node> {
    node: Arc<N>,
    prep: Arc<N::Prep>,
}

impl<N: Node> ExecOps for Blocking<N> {
    type Out = N::Exec;
    fn attempt(&self, cx: ExecContext) -> impl Future<Output = NodeResult<N::Exec>> + Send {
        let (node, prep) = (Arc::clone(&self.node), Arc::clone(&self.prep));
        on_blocking_pool(move || async move { node.exec(&prep, &cx).await })
    }
    async fn fallback(&self, err: BoxError, cx: ExecContext) -> NodeResult<N::Exec> {
        self.node.exec_fallback(&self.prep, err, &cx).await
    }
}

/// Runs an async closure to completion on a blocking-pool thread; a panic there is resumed
/// here, where the visit's panic containment turns it into an error.
pub(crate) async fn on_blocking_pool<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || handle.block_on(f())).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(e) => panic!("blocking exec was cancelled: {e}"),
        },
    }
}

impl<N: Node> ErasedNode for NodeAdapter<N> {
    fn visit<'a>(&'a self, node: &'a NodeRef, cx: &'a VisitCx) -> BoxFuture<'a, Result<Action, Error>> {
        // Also a `tracing` span, so applications' own subscribers see each visit (a disabled
        // span costs a few nanoseconds).
        let span = tracing::info_span!(target: "flowtrace::node", "node", node = %node.name());
        Box::pin(visit_node(&self.0, &node.0, cx).instrument(span))
    }
}

async fn visit_node<N: Node>(node: &Arc<N>, def: &NodeDef, cx: &VisitCx) -> Result<Action, Error> {
    let name = &*def.name;
    let cfg = *def.config.read();
    // One clock reading ends a phase and starts the next: the node's spans share 4 readings.
    let t0 = cx.trace.as_ref().map(|_| Instant::now());
    let mut node_span = cx.span_at(SpanKind::Node, &def.name, t0);
    if let Some(s) = node_span.as_mut() {
        s.attr("node_type", def.type_name);
    }
    let switches = cx.trace.as_ref().map(|r| r.switches()).unwrap_or_default();
    let inner = cx.with_parent(node_span.as_ref().map(|s| s.id()));
    let ctx = Context { shared: &cx.shared, params: &cx.params, node: name };

    // prep
    let span = if switches.prep { inner.span_at(SpanKind::Prep, &def.names.prep, t0) } else { None };
    let prep = match contain(name, Phase::Prep, node.prep(&ctx).instrument(phase_span("prep"))).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return fail(hook_error(name, Phase::Prep, e), span, node_span),
        Err(e) => return fail(e, span, node_span),
    };
    let t1 = t0.map(|_| Instant::now());
    if let (Some(mut s), Some(t)) = (span, t1) {
        s.output(|| capture(&prep));
        s.end_at(t);
    }

    // exec
    let mut span = if switches.exec { inner.span_at(SpanKind::Exec, &def.names.exec, t1) } else { None };
    if let Some(s) = span.as_mut() {
        s.input(|| capture(&prep));
        s.attr("max_retries", cfg.max_retries);
    }
    let trace = match (&cx.trace, &span) {
        (Some(r), Some(s)) => Some((r, s.id())),
        _ => None,
    };
    let (exec, prep) = if cfg.max_retries == 0 {
        match node.exec_skipped() {
            Some(v) => (Ok(v), prep),
            None => (Err(skipped_error(name)), prep),
        }
    } else if cfg.blocking {
        let ops = Blocking { node: Arc::clone(node), prep: Arc::new(prep) };
        let r = run_exec(&ops, def, &cfg, &cx.params, None, trace).await;
        let Blocking { prep, .. } = ops;
        // Every pool thread has normally finished with its clone, so the prep result is ours
        // again; only an attempt abandoned by its timeout can still hold it.
        match Arc::try_unwrap(prep) {
            Ok(prep) => (r, prep),
            Err(_) => {
                let e = Error::Node {
                    node: name.to_owned(),
                    phase: Phase::Exec,
                    source: "a timed-out exec attempt is still running on the blocking pool and holds \
                             the prep result, so post cannot take it"
                        .into(),
                };
                return fail(e, span, node_span);
            }
        }
    } else {
        let r = run_exec(&Inline { node: &**node, prep: &prep }, def, &cfg, &cx.params, None, trace).await;
        (r, prep)
    };
    let exec = match exec {
        Ok(v) => v,
        Err(e) => return fail(e, span, node_span),
    };
    let t2 = t0.map(|_| Instant::now());
    if let (Some(mut s), Some(t)) = (span, t2) {
        s.output(|| capture(&exec));
        s.end_at(t);
    }

    // post
    let mut span = if switches.post { inner.span_at(SpanKind::Post, &def.names.post, t2) } else { None };
    if let Some(s) = span.as_mut() {
        s.input(|| capture(&exec));
    }
    let post = node.post(&ctx, prep, exec).instrument(phase_span("post"));
    let (res, changed) = if span.is_some() {
        record_writes(contain(name, Phase::Post, post)).await
    } else {
        (contain(name, Phase::Post, post).await, Vec::new())
    };
    let action = match res {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return fail(hook_error(name, Phase::Post, e), span, node_span),
        Err(e) => return fail(e, span, node_span),
    };
    let t3 = Instant::now();
    if let Some(mut s) = span {
        s.attr("changed_keys", changed);
        s.output(|| capture(&action));
        s.end_at(t3);
    }
    if let Some(mut s) = node_span {
        s.output(|| capture(&action));
        s.end_at(t3);
    }
    Ok(action)
}

/// The `tracing` span of one phase (a child of the visit's `node` span).
pub(crate) fn phase_span(phase: &'static str) -> tracing::Span {
    tracing::info_span!(target: "flowtrace::node", "phase", phase)
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

fn fail(
    e: Error,
    phase_span: Option<crate::trace::recorder::OpenSpan>,
    node_span: Option<crate::trace::recorder::OpenSpan>,
) -> Result<Action, Error> {
    if let Some(s) = phase_span {
        s.end_with(Err(&e));
    }
    if let Some(s) = node_span {
        s.end_with(Err(&e));
    }
    Err(e)
}
