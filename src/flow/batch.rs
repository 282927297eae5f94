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
use super::erased::{
    exec_once, exec_owned, mismatch, prep_owned, prep_ref, ErasedBatch, Executed, PhaseCell, PhaseError, PrepValue,
    Prepared,
};
use super::graph::{wiring_ops, NodeKind, NodeRef};
use super::node::short_type_name;
use crate::error::{BoxError, NodeResult, Phase};

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
        let literal = if let Cow::Borrowed(s) = &name { Some(*s) } else { None };
        NodeRef::from_kind(
            name,
            short_type_name::<Self>(),
            NodeKind::Batch { node: Arc::new(BatchAdapter(self)), parallel: false },
        )
        .with_literal_name(literal)
    }

    /// A graph node processing items concurrently, each on its own task (PocketFlow's
    /// `AsyncParallelBatchNode`); results stay in input order.
    fn into_parallel_batch(self) -> NodeRef {
        let name = self.name();
        let literal = if let Cow::Borrowed(s) = &name { Some(*s) } else { None };
        NodeRef::from_kind(
            name,
            short_type_name::<Self>(),
            NodeKind::Batch { node: Arc::new(BatchAdapter(self)), parallel: true },
        )
        .with_literal_name(literal)
    }
}

pub(crate) struct BatchAdapter<B>(pub(crate) B);

impl<B: BatchNode> ErasedBatch for BatchAdapter<B> {
    fn prep<'a>(&'a self, ctx: &'a Context<'a>) -> BoxFuture<'a, NodeResult<Prepared>> {
        Box::pin(async move { Ok(Arc::new(self.0.prep(ctx).await?) as Prepared) })
    }

    fn len(&self, items: &dyn PrepValue) -> usize {
        prep_ref::<Vec<B::Item>>(items).map_or(0, Vec::len)
    }

    fn item<'a>(&self, items: &'a dyn PrepValue, i: usize) -> Option<&'a dyn erased_serde::Serialize> {
        let items = prep_ref::<Vec<B::Item>>(items).ok()?;
        items.get(i).map(|v| v as &dyn erased_serde::Serialize)
    }

    fn exec<'a>(&'a self, items: &'a dyn PrepValue, i: usize, cx: ExecContext) -> BoxFuture<'a, NodeResult<Executed>> {
        Box::pin(async move {
            let item = item_at::<B>(items, i)?;
            Ok(Box::new(self.0.exec(item, &cx).await?) as Executed)
        })
    }

    fn exec_detached(
        self: Arc<Self>,
        items: Prepared,
        i: usize,
        cx: ExecContext,
    ) -> BoxFuture<'static, NodeResult<Executed>> {
        Box::pin(async move {
            let item = item_at::<B>(&*items, i)?;
            Ok(Box::new(self.0.exec(item, &cx).await?) as Executed)
        })
    }

    fn fallback<'a>(
        &'a self,
        items: &'a dyn PrepValue,
        i: usize,
        error: BoxError,
        cx: ExecContext,
    ) -> BoxFuture<'a, NodeResult<Executed>> {
        Box::pin(async move {
            let item = item_at::<B>(items, i)?;
            Ok(Box::new(self.0.exec_fallback(item, error, &cx).await?) as Executed)
        })
    }

    fn skipped(&self) -> Option<Executed> {
        self.0.exec_skipped().map(|v| Box::new(v) as Executed)
    }

    fn post<'a>(
        &'a self,
        ctx: &'a Context<'a>,
        items: Prepared,
        outputs: Vec<Executed>,
    ) -> BoxFuture<'a, NodeResult<Action>> {
        Box::pin(async move {
            let items = prep_owned::<Vec<B::Item>>(items)?;
            let outputs = outputs.into_iter().map(exec_owned::<B::Output>).collect::<NodeResult<Vec<_>>>()?;
            self.0.post(ctx, items, outputs).await
        })
    }

    fn exec_once<'a>(
        &'a self,
        items: &'a dyn PrepValue,
        i: usize,
        cx: &'a ExecContext,
        at: &'a PhaseCell,
    ) -> BoxFuture<'a, Result<Executed, PhaseError>> {
        Box::pin(async move {
            let item = item_at::<B>(items, i).map_err(|e| (Phase::Exec, e))?;
            let out = exec_once(|| self.0.exec(item, cx), |e| self.0.exec_fallback(item, e, cx), at).await?;
            Ok(Box::new(out) as Executed)
        })
    }
}

fn item_at<B: BatchNode>(items: &dyn PrepValue, i: usize) -> NodeResult<&B::Item> {
    prep_ref::<Vec<B::Item>>(items)?.get(i).ok_or_else(|| mismatch("item index"))
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

pub(crate) type ParamsFn = dyn Fn(&Context<'_>) -> NodeResult<Vec<Params>> + Send + Sync;
pub(crate) type BatchFlowPostFn = dyn Fn(&Context<'_>, Value) -> NodeResult<Action> + Send + Sync;

impl BatchFlowDef {
    pub(crate) fn start(&self) -> Option<NodeRef> {
        self.start.read().clone()
    }
}

/// A batch flow's graph and hooks: the start node is wiring, the hooks settings (fixed once
/// the batch flow is shared).
pub(crate) struct BatchFlowDef {
    pub(crate) start: RwLock<Option<NodeRef>>,
    pub(crate) params: Option<Arc<ParamsFn>>,
    pub(crate) post: Option<Arc<BatchFlowPostFn>>,
    pub(crate) parallel: bool,
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
/// let batch = BatchFlow::new(&double).params(|_ctx| {
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

    /// A sequential batch flow with a name of its own.
    pub fn named(name: impl Into<Arc<str>>, start: &NodeRef) -> Self {
        Self::build(name, Some(start), false)
    }

    /// A parallel batch flow with a name of its own.
    pub fn parallel_named(name: impl Into<Arc<str>>, start: &NodeRef) -> Self {
        Self::build(name, Some(start), true)
    }

    fn build(name: impl Into<Arc<str>>, start: Option<&NodeRef>, parallel: bool) -> Self {
        let def = BatchFlowDef { start: RwLock::new(start.cloned()), params: None, post: None, parallel };
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
        // Batch flows follow the live graph (no plan to make stale).
        *self.def().start.write() = Some(node.clone());
        node.clone()
    }

    /// Changes a setting of a batch flow nothing else holds yet.
    fn configure(self, setting: &str, f: impl FnOnce(&mut BatchFlowDef)) -> Self {
        let node = self.node.configure(setting, |d| match &mut d.kind {
            NodeKind::BatchFlow(def) => f(def),
            _ => unreachable!("a BatchFlow handle always wraps a batch flow node"),
        });
        BatchFlow { node }
    }

    /// Sets the batch flow's `prep`: the param sets to run the graph with.
    ///
    /// # Panics
    ///
    /// When the batch flow was cloned or wired first: its settings are fixed once it is shared.
    pub fn params(self, f: impl Fn(&Context<'_>) -> NodeResult<Vec<Params>> + Send + Sync + 'static) -> Self {
        self.configure("params", |d| d.params = Some(Arc::new(f)))
    }

    /// Sets the batch flow's `post`: it gets the param sets (as JSON) and returns the action.
    ///
    /// # Panics
    ///
    /// As [`params`](Self::params).
    pub fn post(self, f: impl Fn(&Context<'_>, Value) -> NodeResult<Action> + Send + Sync + 'static) -> Self {
        self.configure("post", |d| d.post = Some(Arc::new(f)))
    }

    /// Replaces the batch flow's params (the base each param set is laid over).
    pub fn set_params(&self, params: Params) {
        self.node.set_params(params)
    }

    /// The batch flow as a node handle.
    pub fn as_node(&self) -> &NodeRef {
        &self.node
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
