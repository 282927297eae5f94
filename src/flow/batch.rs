//! Batches: a node's exec over many items, and a sub-flow over many param sets, one after
//! another or concurrently.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::Value;

use super::action::Action;
use super::context::{Context, ExecContext, Params};
use super::graph::{wiring_ops, NodeDef, NodeKind, NodeRef};
use super::node::short_type_name;
use super::orchestrate::orchestrate;
use super::visit::{contain, hook_error, run_exec, ErasedNode, ExecOps, VisitCx};
use crate::error::{BoxError, Error, NodeResult, Phase};
use crate::trace::model::SpanKind;
use crate::trace::recorder::capture;

/// A node whose `exec` runs once per item (PocketFlow's `BatchNode`).
///
/// `prep` returns the items; `exec` runs on each with the full retry/fallback loop (attempt
/// state is per item); `post` receives the items and the results in input order. Turn it into
/// a graph node with [`into_batch`](BatchNode::into_batch) (items one after another) or
/// [`into_parallel_batch`](BatchNode::into_parallel_batch) (items concurrently, each on its
/// own task, optionally bounded with [`NodeRef::max_concurrency`]).
///
/// ```
/// use flowtrace::prelude::*;
///
/// struct Squares;
/// impl BatchNode for Squares {
///     type Item = u64;
///     type Output = u64;
///     async fn prep(&self, _ctx: &Context<'_>) -> NodeResult<Vec<u64>> { Ok((1..=4).collect()) }
///     async fn exec(&self, n: &u64, _cx: &ExecContext) -> NodeResult<u64> { Ok(n * n) }
///     async fn post(&self, ctx: &Context<'_>, _items: Vec<u64>, out: Vec<u64>) -> NodeResult<Action> {
///         ctx.shared().insert("squares", out);
///         Ok(Action::none())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let shared = SharedStore::new();
/// Flow::new(&Squares.into_parallel_batch()).run(&shared).await.unwrap();
/// assert_eq!(shared.get::<Vec<u64>>("squares").unwrap(), Some(vec![1, 4, 9, 16]));
/// # }
/// ```
pub trait BatchNode: Send + Sync + Sized + 'static {
    /// One item.
    type Item: Serialize + Send + Sync + 'static;
    /// The result for one item.
    type Output: Serialize + Send + 'static;

    /// The node's name; the type's name by default.
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name::<Self>())
    }

    /// Reads the items from the store.
    fn prep(&self, ctx: &Context<'_>) -> impl Future<Output = NodeResult<Vec<Self::Item>>> + Send;

    /// Processes one item (once per attempt).
    fn exec(&self, item: &Self::Item, cx: &ExecContext) -> impl Future<Output = NodeResult<Self::Output>> + Send;

    /// Called with an item's last error; the default returns it, failing the node.
    fn exec_fallback(
        &self,
        item: &Self::Item,
        error: BoxError,
        cx: &ExecContext,
    ) -> impl Future<Output = NodeResult<Self::Output>> + Send {
        let _ = (item, cx);
        async move { Err(error) }
    }

    /// An item's result when `max_retries` is 0 and exec never runs. PocketFlow gives `None`
    /// for every item; a typed batch node has no such value, so by default the node fails with
    /// a clear error. [`FnBatchNode`] returns `null`, as PocketFlow does.
    fn exec_skipped(&self) -> Option<Self::Output> {
        None
    }

    /// Writes the results (in input order) and picks the next edge.
    fn post(
        &self,
        ctx: &Context<'_>,
        items: Vec<Self::Item>,
        outputs: Vec<Self::Output>,
    ) -> impl Future<Output = NodeResult<Action>> + Send;

    /// A graph node processing items one after another (PocketFlow's `BatchNode`).
    fn into_batch(self) -> NodeRef {
        let name = self.name();
        NodeRef::from_kind(
            name,
            short_type_name::<Self>(),
            NodeKind::Leaf(Box::new(BatchAdapter { node: Arc::new(self), parallel: false })),
        )
    }

    /// A graph node processing items concurrently, each on its own task (PocketFlow's
    /// `AsyncParallelBatchNode`); results stay in input order.
    fn into_parallel_batch(self) -> NodeRef {
        let name = self.name();
        NodeRef::from_kind(
            name,
            short_type_name::<Self>(),
            NodeKind::Leaf(Box::new(BatchAdapter { node: Arc::new(self), parallel: true })),
        )
    }
}

struct BatchAdapter<B> {
    node: Arc<B>,
    parallel: bool,
}

struct ItemOps<'a, B: BatchNode> {
    node: &'a B,
    item: &'a B::Item,
}

impl<B: BatchNode> ExecOps for ItemOps<'_, B> {
    type Out = B::Output;
    async fn attempt(&self, cx: ExecContext) -> NodeResult<B::Output> {
        self.node.exec(self.item, &cx).await
    }
    async fn fallback(&self, err: BoxError, cx: ExecContext) -> NodeResult<B::Output> {
        self.node.exec_fallback(self.item, err, &cx).await
    }
}

impl<B: BatchNode> ErasedNode for BatchAdapter<B> {
    fn visit<'a>(&'a self, node: &'a NodeRef, cx: &'a VisitCx) -> BoxFuture<'a, Result<Action, Error>> {
        let span = tracing::info_span!(target: "flowtrace::node", "node", node = %node.name());
        Box::pin(tracing::Instrument::instrument(visit_batch(&self.node, self.parallel, node, cx), span))
    }
}

/// One item's exec, with its own span under the exec span.
async fn run_item<B: BatchNode>(
    node: &B,
    item: &B::Item,
    index: usize,
    def: &NodeRef,
    cx: &VisitCx,
) -> Result<B::Output, Error> {
    let cfg = def.config();
    let mut span = cx.trace.as_ref().map(|r| r.start(cx.parent, SpanKind::Item, format!("item {index}")));
    if let Some(s) = span.as_mut() {
        s.attr("item_index", index);
        s.input(|| capture(item));
    }
    let trace = match (&cx.trace, &span) {
        (Some(r), Some(s)) => Some((r, s.id())),
        _ => None,
    };
    let ops = ItemOps { node, item };
    let res = if cfg.max_retries == 0 {
        ops.node.exec_skipped().ok_or_else(|| Error::Batch {
            node: def.name().to_owned(),
            message: "max_retries is 0: no item can be processed".into(),
        })
    } else {
        run_exec(&ops, &def.0, &cfg, &cx.params, Some(index), trace).await
    };
    if let Some(mut s) = span {
        if let Ok(v) = &res {
            s.output(|| capture(v));
        }
        s.end_with(res.as_ref().map(|_| ()));
    }
    res
}

async fn visit_batch<B: BatchNode>(
    node: &Arc<B>,
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
    }
    let switches = cx.trace.as_ref().map(|r| r.switches()).unwrap_or_default();
    let inner = cx.with_parent(node_span.as_ref().map(|s| s.id()));
    let ctx = Context { shared: &cx.shared, params: &cx.params, node: name };

    let span = if switches.prep { inner.span(SpanKind::Prep, &def.names.prep) } else { None };
    let items = match contain(name, Phase::Prep, node.prep(&ctx)).await {
        Ok(Ok(items)) => items,
        Ok(Err(e)) => return fail(hook_error(name, Phase::Prep, e), span, node_span),
        Err(e) => return fail(e, span, node_span),
    };
    if let Some(mut s) = span {
        s.output(|| capture(&items));
        s.end();
    }

    let mut span = if switches.exec { inner.span(SpanKind::Exec, &def.names.exec) } else { None };
    if let Some(s) = span.as_mut() {
        s.attr("items", items.len());
        s.attr("max_retries", cfg.max_retries);
        if let Some(n) = cfg.max_concurrency.filter(|_| parallel) {
            s.attr("max_concurrency", n);
        }
    }
    let item_cx = inner.with_parent(span.as_ref().map(|s| s.id()).or(inner.parent));
    let outputs = if parallel {
        run_parallel(&**node, &items, nref, &item_cx, cfg.max_concurrency).await
    } else {
        let mut out = Vec::with_capacity(items.len());
        let mut failed = None;
        for (i, item) in items.iter().enumerate() {
            match run_item(&**node, item, i, nref, &item_cx).await {
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
    if let Some(mut s) = span {
        s.output(|| capture(&outputs));
        s.end();
    }
    let mut span = if switches.post { inner.span(SpanKind::Post, &def.names.post) } else { None };
    if let Some(s) = span.as_mut() {
        s.input(|| capture(&outputs));
    }
    let post = node.post(&ctx, items, outputs);
    let (res, changed) = if span.is_some() {
        super::store::record_writes(contain(name, Phase::Post, post)).await
    } else {
        (contain(name, Phase::Post, post).await, Vec::new())
    };
    let action = match res {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return fail(hook_error(name, Phase::Post, e), span, node_span),
        Err(e) => return fail(e, span, node_span),
    };
    if let Some(mut s) = span {
        s.attr("changed_keys", changed);
        s.output(|| capture(&action));
        s.end();
    }
    if let Some(mut s) = node_span {
        s.output(|| capture(&action));
        s.end();
    }
    Ok(action)
}

/// Runs the items concurrently, at most `limit` at once, keeping results in input order.
///
/// Items run as futures of the run's own task (as PocketFlow's `gather` runs coroutines):
/// spawning a task per item cost more than a trivial item's whole budget (measured with
/// `examples/bench.rs parallel`). CPU-bound items belong on the blocking pool
/// ([`NodeRef::blocking`]). The first error ends the batch: the other items are dropped
/// (cancelled) at once, so none keeps running after the node has failed, and their spans
/// end as cancelled.
async fn run_parallel<B: BatchNode>(
    node: &B,
    items: &[B::Item],
    nref: &NodeRef,
    cx: &VisitCx,
    limit: Option<usize>,
) -> Result<Vec<B::Output>, Error> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let limit = limit.unwrap_or(usize::MAX).max(1);
    let mut results: Vec<Option<B::Output>> = Vec::with_capacity(items.len());
    results.resize_with(items.len(), || None);
    let start = |i: usize| async move { (i, run_item(node, &items[i], i, nref, cx).await) };
    let mut running = FuturesUnordered::new();
    let mut next = 0;
    while next < items.len() && running.len() < limit {
        running.push(start(next));
        next += 1;
    }
    while let Some((i, res)) = running.next().await {
        results[i] = Some(res?);
        if next < items.len() {
            running.push(start(next));
            next += 1;
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every item finished")).collect())
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

/// Items from a JSON value, by PocketFlow's rules: an array's elements, a string's characters,
/// an object's keys; `null` is no items for a sequential batch and an error for a parallel one
/// (as `BatchNode` and `AsyncParallelBatchNode` differ).
pub(crate) fn json_items(v: Value, parallel: bool) -> Result<Vec<Value>, String> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Null if !parallel => Ok(Vec::new()),
        Value::Null => Err("items must be a list, got null".into()),
        Value::String(s) => Ok(s.chars().map(|c| Value::String(c.to_string())).collect()),
        Value::Object(m) => Ok(m.into_iter().map(|(k, _)| Value::String(k)).collect()),
        other => Err(format!("items must be a list, got {other}")),
    }
}

type ItemsFn = dyn Fn(&Context<'_>) -> NodeResult<Value> + Send + Sync;
type ItemFn = dyn Fn(Value, ExecContext) -> BoxFuture<'static, NodeResult<Value>> + Send + Sync;
type ItemFallbackFn = dyn Fn(Value, BoxError, ExecContext) -> BoxFuture<'static, NodeResult<Value>> + Send + Sync;
type BatchPostFn = dyn Fn(&Context<'_>, Value, Value) -> NodeResult<Action> + Send + Sync;

/// A batch node from closures, with JSON items: the terse form of [`BatchNode`].
///
/// `items` returns a JSON value read by PocketFlow's rules (an array's elements, a string's
/// characters, an object's keys; `null` is empty for a sequential batch and an error for a
/// parallel one). `post` receives the items and the results as JSON arrays.
#[derive(Clone)]
pub struct FnBatchNode {
    name: Arc<str>,
    parallel: bool,
    items: Option<Arc<ItemsFn>>,
    exec: Option<Arc<ItemFn>>,
    fallback: Option<Arc<ItemFallbackFn>>,
    post: Option<Arc<BatchPostFn>>,
}

impl std::fmt::Debug for FnBatchNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnBatchNode").field("name", &self.name).field("parallel", &self.parallel).finish()
    }
}

impl FnBatchNode {
    /// A sequential batch node named `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        FnBatchNode { name: name.into(), parallel: false, items: None, exec: None, fallback: None, post: None }
    }

    /// A parallel batch node named `name`.
    pub fn parallel(name: impl Into<Arc<str>>) -> Self {
        FnBatchNode { parallel: true, ..Self::new(name) }
    }

    /// Sets how items are read from the store.
    pub fn items(mut self, f: impl Fn(&Context<'_>) -> NodeResult<Value> + Send + Sync + 'static) -> Self {
        self.items = Some(Arc::new(f));
        self
    }

    /// Sets the per-item exec.
    pub fn exec<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Value, ExecContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = NodeResult<Value>> + Send + 'static,
    {
        self.exec = Some(Arc::new(move |v, cx| Box::pin(f(v, cx))));
        self
    }

    /// Sets the per-item fallback.
    pub fn fallback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Value, BoxError, ExecContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = NodeResult<Value>> + Send + 'static,
    {
        self.fallback = Some(Arc::new(move |v, e, cx| Box::pin(f(v, e, cx))));
        self
    }

    /// Sets `post`, which gets the items and the results as JSON arrays.
    pub fn post(
        mut self,
        f: impl Fn(&Context<'_>, Value, Value) -> NodeResult<Action> + Send + Sync + 'static,
    ) -> Self {
        self.post = Some(Arc::new(f));
        self
    }

    /// The graph node (sequential or parallel, as constructed).
    pub fn into_node(self) -> NodeRef {
        if self.parallel {
            BatchNode::into_parallel_batch(self)
        } else {
            BatchNode::into_batch(self)
        }
    }
}

impl BatchNode for FnBatchNode {
    type Item = Value;
    type Output = Value;

    fn name(&self) -> Cow<'static, str> {
        Cow::Owned(self.name.to_string())
    }

    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<Vec<Value>> {
        let v = match &self.items {
            Some(f) => f(ctx)?,
            None => Value::Null,
        };
        json_items(v, self.parallel).map_err(Into::into)
    }

    async fn exec(&self, item: &Value, cx: &ExecContext) -> NodeResult<Value> {
        match &self.exec {
            Some(f) => f(item.clone(), cx.clone()).await,
            None => Ok(Value::Null),
        }
    }

    async fn exec_fallback(&self, item: &Value, error: BoxError, cx: &ExecContext) -> NodeResult<Value> {
        match &self.fallback {
            Some(f) => f(item.clone(), error, cx.clone()).await,
            None => Err(error),
        }
    }

    fn exec_skipped(&self) -> Option<Value> {
        Some(Value::Null)
    }

    async fn post(&self, ctx: &Context<'_>, items: Vec<Value>, outputs: Vec<Value>) -> NodeResult<Action> {
        match &self.post {
            Some(f) => f(ctx, Value::Array(items), Value::Array(outputs)),
            None => Ok(Action::none()),
        }
    }
}

type ParamsFn = dyn Fn(&Context<'_>) -> NodeResult<Vec<Params>> + Send + Sync;
type BatchFlowPostFn = dyn Fn(&Context<'_>, Value) -> NodeResult<Action> + Send + Sync;

impl BatchFlowDef {
    pub(crate) fn start(&self) -> Option<NodeRef> {
        self.start.read().clone()
    }
}

pub(crate) struct BatchFlowDef {
    start: RwLock<Option<NodeRef>>,
    params: RwLock<Option<Arc<ParamsFn>>>,
    post: RwLock<Option<Arc<BatchFlowPostFn>>>,
    parallel: bool,
}

/// A flow run once per param set (PocketFlow's `BatchFlow`, or `AsyncParallelBatchFlow` when
/// built with [`parallel`](Self::parallel)).
///
/// Each param set is laid over the flow's params (its keys win) and handed to every node of
/// that iteration. Results are not collected: nodes write them to the store. The flow returns
/// no action unless its `post` says otherwise.
///
/// ```
/// use flowtrace::prelude::*;
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let double = FnNode::new("Double").prep(|ctx| {
///     let key: String = ctx.param("key").unwrap();
///     let v = ctx.shared().require::<i64>(&key)?;
///     ctx.shared().insert(format!("{key}_x2"), v * 2);
///     Ok(().into())
/// }).into_node();
/// let batch = BatchFlow::new(&double).with_params(|_ctx| {
///     Ok(["a", "b"].iter().map(|k| json!({ "key": k }).as_object().unwrap().clone()).collect())
/// });
/// let shared = SharedStore::new();
/// shared.insert("a", 1);
/// shared.insert("b", 2);
/// batch.run(&shared).await.unwrap();
/// assert_eq!(shared.get::<i64>("b_x2").unwrap(), Some(4));
/// # }
/// ```
#[derive(Clone)]
pub struct BatchFlow {
    node: NodeRef,
}

impl std::fmt::Debug for BatchFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchFlow").field("name", &self.node.name()).finish()
    }
}

impl BatchFlow {
    /// A sequential batch flow named `BatchFlow` over the graph starting at `start`.
    pub fn new(start: &NodeRef) -> Self {
        Self::build("BatchFlow", Some(start), false)
    }

    /// A batch flow whose param sets run concurrently (`ParallelBatchFlow`).
    pub fn parallel(start: &NodeRef) -> Self {
        Self::build("ParallelBatchFlow", Some(start), true)
    }

    /// A batch flow with a name of its own.
    pub fn named(name: impl Into<Arc<str>>, start: Option<&NodeRef>, parallel: bool) -> Self {
        Self::build(name, start, parallel)
    }

    fn build(name: impl Into<Arc<str>>, start: Option<&NodeRef>, parallel: bool) -> Self {
        let def = BatchFlowDef {
            start: RwLock::new(start.cloned()),
            params: RwLock::new(None),
            post: RwLock::new(None),
            parallel,
        };
        let type_name = if parallel { "ParallelBatchFlow" } else { "BatchFlow" };
        BatchFlow { node: NodeRef::from_kind(name, type_name, NodeKind::BatchFlow(def)) }
    }

    fn def(&self) -> &BatchFlowDef {
        match &self.node.0.kind {
            NodeKind::BatchFlow(b) => b,
            _ => unreachable!("a BatchFlow handle always wraps a batch flow node"),
        }
    }

    /// Sets the start node and returns it.
    pub fn start(&self, node: &NodeRef) -> NodeRef {
        *self.def().start.write() = Some(node.clone());
        node.clone()
    }

    /// Sets the batch flow's `prep`: the param sets to run the graph with.
    pub fn with_params(self, f: impl Fn(&Context<'_>) -> NodeResult<Vec<Params>> + Send + Sync + 'static) -> Self {
        *self.def().params.write() = Some(Arc::new(f));
        self
    }

    /// Sets the batch flow's `post`: it gets the param sets (as JSON) and returns the action.
    pub fn with_post(self, f: impl Fn(&Context<'_>, Value) -> NodeResult<Action> + Send + Sync + 'static) -> Self {
        *self.def().post.write() = Some(Arc::new(f));
        self
    }

    /// Replaces the batch flow's params (the base each param set is laid over).
    pub fn set_params(&self, params: Params) {
        self.node.set_params(params)
    }

    /// The batch flow as a node handle.
    pub fn as_node(&self) -> &NodeRef {
        &self.node
    }

    /// Runs the batch flow on `shared` in a supervised run.
    pub async fn run(&self, shared: &super::store::SharedStore) -> Result<Action, Error> {
        crate::actors::supervisor::run(self.node.clone(), shared.clone(), Default::default()).await
    }
}

impl AsRef<NodeRef> for BatchFlow {
    fn as_ref(&self) -> &NodeRef {
        &self.node
    }
}

impl From<BatchFlow> for NodeRef {
    fn from(f: BatchFlow) -> NodeRef {
        f.node
    }
}

wiring_ops!(BatchFlow);

pub(crate) async fn visit_batch_flow(node: &NodeRef, def: &BatchFlowDef, cx: &VisitCx) -> Result<Action, Error> {
    let name = node.name();
    let mut span = cx.span(SpanKind::Flow, &node.0.name);
    if let Some(s) = span.as_mut() {
        s.attr("node_type", node.type_name());
        s.attr("batch", if def.parallel { "parallel" } else { "sequential" });
    }
    let inner = cx.with_parent(span.as_ref().map(|s| s.id()));
    let ctx = Context { shared: &cx.shared, params: &cx.params, node: name };
    let res = async {
        let params_fn = def.params.read().clone();
        let sets = match params_fn {
            Some(f) => {
                contain(name, Phase::Prep, async { f(&ctx) }).await?.map_err(|e| hook_error(name, Phase::Prep, e))?
            }
            None => Vec::new(),
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
            // The runs are futures of this task (not spawned tasks): dropping this visit (a
            // cancel, a run timeout) drops them at once, so their open spans end as cancelled
            // before the trace's end is sent. Spawned tasks were aborted only later, and
            // their spans arrived after the trace had ended and were lost.
            use futures::stream::{FuturesUnordered, StreamExt};
            let mut set: FuturesUnordered<_> =
                merged.into_iter().enumerate().map(|(i, p)| run_param_set(name, i, start.clone(), p, &inner)).collect();
            while let Some(res) = set.next().await {
                res?;
            }
        } else {
            for (i, p) in merged.into_iter().enumerate() {
                run_param_set(name, i, start.clone(), p, &inner).await?;
            }
        }
        let prep_value = Value::Array(sets.into_iter().map(Value::Object).collect());
        let post_fn = def.post.read().clone();
        match post_fn {
            Some(f) => contain(name, Phase::Post, async { f(&ctx, prep_value) })
                .await?
                .map_err(|e| hook_error(name, Phase::Post, e)),
            None => Ok(Action::none()),
        }
    }
    .await;
    if let Some(mut s) = span {
        if let Ok(a) = &res {
            s.output(|| capture(a));
        }
        s.end_with(res.as_ref().map(|_| ()));
    }
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
    let res = orchestrate(flow_name, start, cx.limits.max_steps, &run_cx).await;
    if let Some(mut s) = span {
        if let Ok(a) = &res {
            s.output(|| capture(a));
        }
        s.end_with(res.as_ref().map(|_| ()));
    }
    res.map(|_| ())
}
