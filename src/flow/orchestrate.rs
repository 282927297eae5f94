//! Flows: graphs of nodes joined by action-labelled edges, themselves usable as nodes.

use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::RwLock;
use serde_json::Value;
use tracing::Instrument;

use super::action::Action;
use super::batch::visit_batch_flow;
use super::context::{Context, Params};
use super::graph::{wiring_ops, NodeKind, NodeRef};
use super::store::SharedStore;
use super::visit::{contain, hook_error, VisitCx};
use crate::error::{Error, NodeResult, Phase};
use crate::trace::model::SpanKind;
use crate::trace::recorder::capture;

pub(crate) type FlowPrepFn = dyn Fn(&Context<'_>) -> NodeResult<Value> + Send + Sync;
pub(crate) type FlowPostFn = dyn Fn(&Context<'_>, Value, Action) -> NodeResult<Action> + Send + Sync;

/// A flow's own hooks and graph.
pub(crate) struct FlowDef {
    pub(crate) start: RwLock<Option<NodeRef>>,
    pub(crate) prep: RwLock<Option<Arc<FlowPrepFn>>>,
    pub(crate) post: RwLock<Option<Arc<FlowPostFn>>>,
    pub(crate) max_steps: RwLock<Option<u64>>,
}

impl FlowDef {
    pub(crate) fn new(start: Option<NodeRef>) -> Self {
        FlowDef {
            start: RwLock::new(start),
            prep: RwLock::new(None),
            post: RwLock::new(None),
            max_steps: RwLock::new(None),
        }
    }
}

/// A flow: a graph of nodes run from its start node, following each node's action.
///
/// A flow is a node too: wire it into another flow with `>>` and it runs its whole graph as
/// one step, its result (the last action) picking the outer edge. Flows hold no per-run
/// state, so one flow can run many times, concurrently.
///
/// ```
/// use flowtrace::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), flowtrace::Error> {
/// let set = FnNode::new("Set").prep(|ctx| { ctx.shared().insert("n", 5); Ok(().into()) }).into_node();
/// let check = FnNode::new("Check")
///     .post(|ctx, _, _| Ok(if ctx.shared().require::<i64>("n")? > 0 { "positive".into() } else { "negative".into() }))
///     .into_node();
/// let yes = FnNode::new("Yes").post(|ctx, _, _| { ctx.shared().insert("sign", "+"); Ok(Action::none()) }).into_node();
///
/// let flow = Flow::new(&set);
/// let _ = &set >> &check;
/// let _ = &check - "positive" >> &yes;
///
/// let shared = SharedStore::new();
/// flow.run(&shared).await?;
/// assert_eq!(shared.get::<String>("sign").unwrap().as_deref(), Some("+"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Flow {
    node: NodeRef,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow").field("name", &self.node.name()).finish()
    }
}

impl Flow {
    /// A flow named `Flow` starting at `start`.
    pub fn new(start: &NodeRef) -> Self {
        Self::named("Flow", Some(start))
    }

    /// A flow with no start node yet (set it with [`start`](Self::start)); running it returns
    /// no action.
    pub fn empty() -> Self {
        Self::named("Flow", None)
    }

    /// A flow with a name of its own (used for its span and in errors).
    pub fn named(name: impl Into<Arc<str>>, start: Option<&NodeRef>) -> Self {
        let def = FlowDef::new(start.cloned());
        Flow { node: NodeRef::from_kind(name, "Flow", NodeKind::Flow(def)) }
    }

    fn def(&self) -> &FlowDef {
        match &self.node.0.kind {
            NodeKind::Flow(f) => f,
            _ => unreachable!("a Flow handle always wraps a flow node"),
        }
    }

    /// Sets the start node and returns it, so `flow.start(&a).next(&b)` chains.
    pub fn start(&self, node: &NodeRef) -> NodeRef {
        *self.def().start.write() = Some(node.clone());
        node.clone()
    }

    /// Sets the flow's own `prep`, run before its graph; its result goes to the flow's `post`.
    pub fn with_prep(self, f: impl Fn(&Context<'_>) -> NodeResult<Value> + Send + Sync + 'static) -> Self {
        *self.def().prep.write() = Some(Arc::new(f));
        self
    }

    /// Sets the flow's own `post`: it receives the prep result and the last node's action, and
    /// its return is the flow's result. By default the flow returns the last action.
    pub fn with_post(
        self,
        f: impl Fn(&Context<'_>, Value, Action) -> NodeResult<Action> + Send + Sync + 'static,
    ) -> Self {
        *self.def().post.write() = Some(Arc::new(f));
        self
    }

    /// Ends a run with [`Error::MaxSteps`] after `n` node visits: a guard against loops that
    /// never end. Unlimited by default, as in PocketFlow.
    pub fn max_steps(self, n: u64) -> Self {
        *self.def().max_steps.write() = Some(n);
        self
    }

    /// Replaces the flow's params; every node of a run sees them.
    pub fn set_params(&self, params: Params) {
        self.node.set_params(params)
    }

    /// The flow as a node handle, to wire into another flow.
    pub fn as_node(&self) -> &NodeRef {
        &self.node
    }

    /// The start node, if set (durable runs index the graph from it).
    #[cfg_attr(not(feature = "durable"), allow(dead_code))]
    pub(crate) fn start_node(&self) -> Option<NodeRef> {
        self.def().start.read().clone()
    }

    /// The flow's name.
    pub fn name(&self) -> &str {
        self.node.name()
    }

    /// Runs the flow on `shared` in a supervised run and returns the last action.
    ///
    /// A panic in a node ends the run with [`Error::Panic`] naming the node; the caller's task
    /// and the process go on. Dropping the returned future cancels the run.
    pub async fn run(&self, shared: &SharedStore) -> Result<Action, Error> {
        crate::actors::supervisor::run(self.node.clone(), shared.clone(), Default::default()).await
    }

    /// Runs with options (params, a run timeout, a step limit).
    pub async fn run_with(&self, shared: &SharedStore, options: crate::RunOptions) -> Result<Action, Error> {
        crate::actors::supervisor::run(self.node.clone(), shared.clone(), options).await
    }
}

impl AsRef<NodeRef> for Flow {
    fn as_ref(&self) -> &NodeRef {
        &self.node
    }
}

impl From<Flow> for NodeRef {
    fn from(f: Flow) -> NodeRef {
        f.node
    }
}

wiring_ops!(Flow);

/// Dispatches one visit by node kind. Boxed because flows recurse.
pub(crate) fn visit<'a>(node: &'a NodeRef, cx: &'a VisitCx) -> BoxFuture<'a, Result<Action, Error>> {
    match &node.0.kind {
        NodeKind::Leaf(n) => n.visit(node, cx),
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
    let inner = cx.with_parent(span.as_ref().map(|s| s.id()));
    let ctx = Context { shared: &cx.shared, params: &cx.params, node: name };
    let res = async {
        let prep_fn = flow.prep.read().clone();
        let prep = match prep_fn {
            Some(f) => {
                contain(name, Phase::Prep, async { f(&ctx) }).await?.map_err(|e| hook_error(name, Phase::Prep, e))?
            }
            None => Value::Null,
        };
        let start = flow.start.read().clone();
        let max_steps = (*flow.max_steps.read()).or(cx.limits.max_steps);
        let last = orchestrate(name, start, max_steps, &inner).await?;
        let post_fn = flow.post.read().clone();
        match post_fn {
            Some(f) => contain(name, Phase::Post, async { f(&ctx, prep, last) })
                .await?
                .map_err(|e| hook_error(name, Phase::Post, e)),
            None => Ok(last),
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

/// PocketFlow's orchestration loop (spec §4): visit, then follow the action, until a node
/// has no edge for it.
pub(crate) async fn orchestrate(
    flow_name: &str,
    start: Option<NodeRef>,
    max_steps: Option<u64>,
    cx: &VisitCx,
) -> Result<Action, Error> {
    if let Some(hook) = &cx.hook {
        return orchestrate_durable(flow_name, start, max_steps, cx, hook).await;
    }
    let mut curr = start;
    let mut last = Action::none();
    let mut steps = 0_u64;
    while let Some(node) = curr {
        steps += 1;
        if let Some(limit) = max_steps {
            if steps > limit {
                return Err(Error::MaxSteps { flow: flow_name.to_owned(), limit });
            }
        }
        last = visit(&node, cx).await?;
        curr = node.next_for(&last);
    }
    Ok(last)
}

/// The same loop for a durable run's root flow: it may start part-way (at a checkpoint), and
/// the hook checkpoints after each visit and when a node suspends the run. Nested flows and
/// the visits themselves run without the hook.
async fn orchestrate_durable(
    flow_name: &str,
    start: Option<NodeRef>,
    max_steps: Option<u64>,
    cx: &VisitCx,
    hook: &Arc<dyn super::visit::RunHook>,
) -> Result<Action, Error> {
    let node_cx = VisitCx { hook: None, ..cx.clone() };
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
                let next = node.next_for(&action);
                let v = super::visit::Visited {
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
                // The waiting node is visited again on resume, so its step is not counted.
                let v = super::visit::Visited {
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
