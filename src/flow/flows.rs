//! Flows: graphs of nodes joined by action-labelled edges, themselves usable as nodes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;

use super::action::Action;
use super::context::{Context, Params};
use super::graph::{wiring_ops, NodeKind, NodeRef, Plan};
use crate::error::NodeResult;

pub(crate) type FlowPrepFn = dyn Fn(&Context<'_>) -> NodeResult<Value> + Send + Sync;
pub(crate) type FlowPostFn = dyn Fn(&Context<'_>, Value, Action) -> NodeResult<Action> + Send + Sync;

/// A flow's own hooks and graph.
///
/// The start node is wiring (PocketFlow's `flow.start(a)` may come after the flow is made);
/// the hooks and the step limit are settings, fixed once the flow is shared.
pub(crate) struct FlowDef {
    pub(crate) start: RwLock<Option<NodeRef>>,
    pub(crate) prep: Option<Arc<FlowPrepFn>>,
    pub(crate) post: Option<Arc<FlowPostFn>>,
    pub(crate) max_steps: Option<u64>,
    /// Counts changes of `start` (written under its lock).
    starts: AtomicU64,
    /// The graph as runs follow it, made again when the wiring changes (see [`Plan`]), with
    /// the count of `start` it was made for.
    plan: parking_lot::Mutex<Option<(u64, Arc<Plan>)>>,
}

impl FlowDef {
    pub(crate) fn new(start: Option<NodeRef>) -> Self {
        FlowDef {
            start: RwLock::new(start),
            prep: None,
            post: None,
            max_steps: None,
            starts: AtomicU64::new(0),
            plan: Default::default(),
        }
    }

    /// The flow's plan for a run starting now.
    pub(crate) fn plan(&self) -> Arc<Plan> {
        let mut slot = self.plan.lock();
        let starts = self.starts.load(Ordering::Acquire);
        if let Some((_, p)) = slot.as_ref().filter(|(n, p)| *n == starts && !p.is_stale()) {
            return Arc::clone(p);
        }
        let (starts, plan) = {
            let start = self.start.read();
            (self.starts.load(Ordering::Acquire), Arc::new(Plan::of(start.as_ref())))
        };
        *slot = Some((starts, Arc::clone(&plan)));
        plan
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
        Self::build("Flow", Some(start))
    }

    /// A flow with no start node yet (set it with [`start`](Self::start)); running it returns
    /// no action.
    pub fn empty() -> Self {
        Self::build("Flow", None)
    }

    /// A flow with a name of its own (used for its span and in errors), starting at `start`.
    pub fn named(name: impl Into<Arc<str>>, start: &NodeRef) -> Self {
        Self::build(name, Some(start))
    }

    fn build(name: impl Into<Arc<str>>, start: Option<&NodeRef>) -> Self {
        let def = FlowDef::new(start.cloned());
        Flow { node: NodeRef::from_kind(name, "Flow", NodeKind::Flow(def)) }
    }

    fn def(&self) -> &FlowDef {
        match &self.node.0.kind {
            NodeKind::Flow(f) => f,
            _ => unreachable!("a Flow handle always wraps a flow node"),
        }
    }

    /// Changes a setting of a flow nothing else holds yet (see [`NodeRef::max_retries`]).
    fn configure(self, setting: &str, f: impl FnOnce(&mut FlowDef)) -> Self {
        let node = self.node.configure(setting, |d| match &mut d.kind {
            NodeKind::Flow(def) => f(def),
            _ => unreachable!("a Flow handle always wraps a flow node"),
        });
        Flow { node }
    }

    /// Sets the start node and returns it, so `flow.start(&a).next(&b)` chains.
    pub fn start(&self, node: &NodeRef) -> NodeRef {
        let def = self.def();
        let mut start = def.start.write();
        *start = Some(node.clone());
        def.starts.fetch_add(1, Ordering::Release);
        drop(start);
        node.clone()
    }

    /// Sets the flow's own `prep`, run before its graph; its result goes to the flow's `post`.
    ///
    /// # Panics
    ///
    /// When the flow was cloned or wired first: a flow's settings are fixed once it is shared.
    pub fn prep(self, f: impl Fn(&Context<'_>) -> NodeResult<Value> + Send + Sync + 'static) -> Self {
        self.configure("prep", |d| d.prep = Some(Arc::new(f)))
    }

    /// Sets the flow's own `post`: it receives the prep result and the last node's action, and
    /// its return is the flow's result. By default the flow returns the last action.
    ///
    /// # Panics
    ///
    /// As [`prep`](Self::prep).
    pub fn post(self, f: impl Fn(&Context<'_>, Value, Action) -> NodeResult<Action> + Send + Sync + 'static) -> Self {
        self.configure("post", |d| d.post = Some(Arc::new(f)))
    }

    /// Ends a run with [`Error::MaxSteps`](crate::Error::MaxSteps) after `n` node visits: a
    /// guard against loops that never end. Unlimited by default, as in PocketFlow.
    ///
    /// # Panics
    ///
    /// As [`prep`](Self::prep).
    pub fn max_steps(self, n: u64) -> Self {
        self.configure("max_steps", |d| d.max_steps = Some(n))
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
