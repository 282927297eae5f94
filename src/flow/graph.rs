//! Node handles and wiring: `a >> b`, `a - "approve" >> b`, and the builder form.

use std::fmt;
use std::ops::Shr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::action::{Action, DEFAULT_ACTION};
use super::batch::BatchFlowDef;
use super::context::Params;
use super::erased::{ErasedBatch, ErasedNode};
use super::flows::FlowDef;

/// How a node's `exec` runs: attempts, the wait between them, a time limit, where it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeConfig {
    pub(crate) max_retries: u32,
    pub(crate) wait: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) blocking: bool,
    pub(crate) max_concurrency: Option<usize>,
    /// How the node shows in Langfuse (`None`: a plain span).
    pub(crate) observation: Option<super::generation::ObservationType>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            max_retries: 1,
            wait: Duration::ZERO,
            timeout: None,
            blocking: false,
            max_concurrency: None,
            observation: None,
        }
    }
}

/// What a node is, for the runtime that visits it.
pub(crate) enum NodeKind {
    /// A plain node (the `Node` trait or an `FnNode`).
    Node(Arc<dyn ErasedNode>),
    /// A batch node: exec once per item, one after another or concurrently.
    Batch {
        node: Arc<dyn ErasedBatch>,
        parallel: bool,
    },
    Flow(FlowDef),
    BatchFlow(BatchFlowDef),
}

/// Span names computed once per node rather than once per visit.
pub(crate) struct SpanNames {
    pub(crate) prep: Arc<str>,
    pub(crate) exec: Arc<str>,
    pub(crate) fallback: Arc<str>,
    pub(crate) post: Arc<str>,
}

/// An edge: the action, and its target (`None`: the action ends the flow).
pub(crate) type Edge = (Arc<str>, Option<Weak<NodeDef>>);

pub(crate) struct NodeDef {
    pub(crate) name: Arc<str>,
    /// The name, when it is a literal (a node type's own name): exec contexts hold it without
    /// a reference count (see [`NodeDef::exec_name`]).
    pub(crate) literal_name: Option<&'static str>,
    pub(crate) type_name: &'static str,
    pub(crate) names: SpanNames,
    pub(crate) kind: NodeKind,
    /// Successors in insertion order (PocketFlow lists them in that order in warnings). Weak:
    /// the graph's [`Arena`] owns every node, so a loop is no reference cycle.
    pub(crate) successors: RwLock<Vec<Edge>>,
    /// Whether `successors` has any (read without its lock, by every run of a flow).
    wired: std::sync::atomic::AtomicBool,
    /// Counts changes of `successors`: a [`Plan`] that saw another count is stale at this
    /// node. Per node, so wiring one graph (a service building flows per request) leaves
    /// every other graph's plans alone.
    wiring: AtomicU64,
    pub(crate) params: RwLock<Arc<Params>>,
    /// Whether `params` has any (read without its lock, by every run of a flow).
    has_params: std::sync::atomic::AtomicBool,
    /// Fixed once the node is shared (cloned or wired): set only through a unique handle.
    pub(crate) config: NodeConfig,
    /// Whether an arena owns this node (it has been wired).
    owned: std::sync::atomic::AtomicBool,
    /// PocketFlow's wiring warnings (`Overwriting successor …`), shown on the node's spans.
    pub(crate) wiring_warnings: RwLock<Vec<Arc<str>>>,
}

impl NodeDef {
    /// The node's params for a run of it: without its lock, and without a reference count
    /// every run of the node shares, when it has none.
    pub(crate) fn run_params(&self) -> Arc<Params> {
        thread_local! {
            static NONE: Arc<Params> = Arc::new(Params::new());
        }
        if self.has_params.load(Ordering::Acquire) {
            return Arc::clone(&self.params.read());
        }
        NONE.with(Arc::clone)
    }

    /// The node's name for an exec context.
    #[inline]
    pub(crate) fn exec_name(&self) -> super::context::NodeName {
        match self.literal_name {
            Some(s) => super::context::NodeName::Static(s),
            None => super::context::NodeName::Shared(Arc::clone(&self.name)),
        }
    }
}

static LIVE_NODES: AtomicUsize = AtomicUsize::new(0);

/// How many nodes (of any kind, flows included) are alive in this process.
///
/// A diagnostic for leak tests and services: a graph, loops included, is freed when the last
/// handle to any of its nodes is dropped, so building and dropping flows leaves this where it
/// was.
pub fn live_nodes() -> usize {
    LIVE_NODES.load(Ordering::SeqCst)
}

impl Drop for NodeDef {
    fn drop(&mut self) {
        LIVE_NODES.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The nodes of one graph, owned together.
///
/// Wiring `a >> b` puts both in one arena (merging theirs); successors point at each other
/// weakly, and every handle keeps its node's arena, and so the whole graph, alive. A graph
/// with a loop is therefore no reference cycle: when the last handle to any of its nodes is
/// dropped, every node goes. An arena merged into another keeps a strong link to it (never
/// the other way), so handles taken before the merge still keep the whole graph.
pub(crate) struct Arena {
    nodes: Mutex<Vec<Arc<NodeDef>>>,
    merged_into: Mutex<Option<Arc<Arena>>>,
}

/// Wiring is rare (when graphs are built) and merges two arenas: one lock orders all merges.
static WIRING: Mutex<()> = Mutex::new(());

impl Arena {
    /// A node's own arena: empty until the node is wired (so a handle that was never cloned
    /// or wired is the node's only owner, and can still configure it).
    fn new() -> Arc<Arena> {
        Arc::new(Arena { nodes: Mutex::new(Vec::new()), merged_into: Mutex::new(None) })
    }

    /// The arena that owns this arena's nodes now.
    fn root(self: &Arc<Arena>) -> Arc<Arena> {
        let mut cur = Arc::clone(self);
        loop {
            let next = cur.merged_into.lock().clone();
            match next {
                Some(n) => cur = n,
                None => return cur,
            }
        }
    }

    /// Puts the nodes of `a`'s and `b`'s graphs, `a` and `b` included, in one arena.
    fn merge(a: &NodeRef, b: &NodeRef) {
        let _wiring = WIRING.lock();
        let (ra, rb) = (a.1.root(), b.1.root());
        for (n, root) in [(a, &ra), (b, &rb)] {
            if !n.0.owned.swap(true, Ordering::SeqCst) {
                root.nodes.lock().push(Arc::clone(&n.0));
            }
        }
        if Arc::ptr_eq(&ra, &rb) {
            return;
        }
        let (big, small) = if ra.nodes.lock().len() >= rb.nodes.lock().len() { (ra, rb) } else { (rb, ra) };
        let moved = std::mem::take(&mut *small.nodes.lock());
        big.nodes.lock().extend(moved);
        *small.merged_into.lock() = Some(big);
    }
}

/// A wired edge as a handle: the action, and its target (`None`: the action ends the flow).
pub(crate) type Successor = (Arc<str>, Option<NodeRef>);

/// A handle to a node in a graph: cheap to clone, and every clone is the same node.
///
/// Wire handles with `>>` (the `default` action) and `- "action" >>`, as in PocketFlow:
///
/// ```
/// use flowtrace::prelude::*;
/// let review = FnNode::new("Review").into_node();
/// let approve = FnNode::new("Approve").into_node();
/// let reject = FnNode::new("Reject").into_node();
/// let _ = &review - "approve" >> &approve;
/// let _ = &review - "reject" >> &reject;
/// assert_eq!(review.successor_actions(), vec!["approve", "reject"]);
/// ```
#[derive(Clone)]
pub struct NodeRef(pub(crate) Arc<NodeDef>, Arc<Arena>);

impl NodeRef {
    pub(crate) fn from_kind(name: impl Into<Arc<str>>, type_name: &'static str, kind: NodeKind) -> Self {
        let name: Arc<str> = name.into();
        let names = SpanNames {
            prep: format!("{name}.prep").into(),
            exec: format!("{name}.exec").into(),
            fallback: format!("{name}.exec_fallback").into(),
            post: format!("{name}.post").into(),
        };
        let def = Arc::new(NodeDef {
            name,
            literal_name: None,
            type_name,
            names,
            kind,
            successors: RwLock::new(Vec::new()),
            wired: std::sync::atomic::AtomicBool::new(false),
            wiring: AtomicU64::new(0),
            params: RwLock::new(Arc::new(Params::new())),
            has_params: std::sync::atomic::AtomicBool::new(false),
            config: NodeConfig::default(),
            owned: std::sync::atomic::AtomicBool::new(false),
            wiring_warnings: RwLock::new(Vec::new()),
        });
        LIVE_NODES.fetch_add(1, Ordering::SeqCst);
        NodeRef(def, Arena::new())
    }

    /// Notes that the node's name is the literal `name`, if it is one (see
    /// [`NodeDef::literal_name`]).
    pub(crate) fn with_literal_name(mut self, name: Option<&'static str>) -> Self {
        if let (Some(literal), Some(def)) = (name, self.unique_def()) {
            def.literal_name = Some(literal);
        }
        self
    }

    /// The node's definition, to set what is fixed once it is shared; `None` when this handle
    /// is not its only one (it was cloned, or wired).
    pub(crate) fn unique_def(&mut self) -> Option<&mut NodeDef> {
        Arc::get_mut(&mut self.0)
    }

    /// Changes a setting of a node nothing else holds yet.
    ///
    /// # Panics
    ///
    /// When the node was cloned or wired first: its settings are fixed once it is shared.
    pub(crate) fn configure(mut self, setting: &str, f: impl FnOnce(&mut NodeDef)) -> Self {
        match self.unique_def() {
            Some(def) => f(def),
            None => panic!(
                "{setting} on node '{}' after it was cloned or wired: a node's settings are fixed once it is \
                 shared; set them where the node is made (`X.into_node().{setting}(..)`), then wire it",
                self.0.name
            ),
        }
        self
    }

    /// A handle to `def`, a node of this handle's graph.
    fn sibling(&self, def: &Weak<NodeDef>) -> Option<NodeRef> {
        def.upgrade().map(|d| NodeRef(d, Arc::clone(&self.1)))
    }

    /// The wired successors, as handles, in wiring order.
    pub(crate) fn successor_list(&self) -> Vec<Successor> {
        self.successor_list_counted().1
    }

    /// The wired successors, with the node's wiring count they go with.
    fn successor_list_counted(&self) -> (u64, Vec<Successor>) {
        let succ = self.0.successors.read();
        let count = self.0.wiring.load(Ordering::Acquire);
        let list = succ.iter().map(|(a, t)| (Arc::clone(a), t.as_ref().and_then(|t| self.sibling(t)))).collect();
        (count, list)
    }

    /// The node's name (its type's name unless given).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Wires `target` as the successor for `action` and returns `target`, so calls chain.
    /// Re-wiring an action warns `Overwriting successor for action '<action>'`.
    pub fn next_on(&self, action: impl AsRef<str>, target: &NodeRef) -> NodeRef {
        self.set_successor(action.as_ref(), Some(target.clone()));
        target.clone()
    }

    /// Starts an edge for `action`, completed with `>> target`: `a.on("approve") >> &b` is
    /// `a - "approve" >> &b` without the operator-precedence lint.
    pub fn on(&self, action: impl Into<String>) -> Transition {
        Transition { from: self.clone(), action: action.into() }
    }

    /// Wires `target` as the `default` successor and returns it (PocketFlow's `next`).
    pub fn next(&self, target: &NodeRef) -> NodeRef {
        self.next_on(DEFAULT_ACTION, target)
    }

    /// Wires `action` to nothing: returning it ends the flow, with PocketFlow's warning.
    pub fn end_on(&self, action: impl AsRef<str>) {
        self.set_successor(action.as_ref(), None);
    }

    fn set_successor(&self, action: &str, target: Option<NodeRef>) {
        if let Some(t) = &target {
            Arena::merge(self, t);
        }
        let target = target.map(|t| Arc::downgrade(&t.0));
        let mut succ = self.0.successors.write();
        if let Some(slot) = succ.iter_mut().find(|(a, _)| &**a == action) {
            let warning = format!("Overwriting successor for action '{action}'");
            tracing::warn!(target: "flowtrace::flow", node = %self.0.name, "{warning}");
            slot.1 = target;
            // Kept (a few) so that every traced visit of the node shows it as a warning event.
            let mut kept = self.0.wiring_warnings.write();
            if kept.len() < 8 {
                kept.push(warning.into());
            }
        } else {
            succ.push((Arc::from(action), target));
        }
        self.0.wired.store(true, Ordering::Release);
        // Under the successors' lock: a plan reads the count, then the list, under that lock.
        self.0.wiring.fetch_add(1, Ordering::Release);
        drop(succ);
    }

    /// The wired actions, in the order they were first wired.
    pub fn successor_actions(&self) -> Vec<String> {
        self.0.successors.read().iter().map(|(a, _)| a.to_string()).collect()
    }

    /// The successor wired for `action`, if any.
    pub fn successor(&self, action: &str) -> Option<NodeRef> {
        let succ = self.0.successors.read();
        succ.iter().find(|(a, _)| &**a == action).and_then(|(_, n)| n.as_ref().and_then(|n| self.sibling(n)))
    }

    /// Whether any successor is wired.
    pub fn has_successors(&self) -> bool {
        // Edges are never removed: a flag, not the lock every run of a flow would take.
        self.0.wired.load(Ordering::Acquire)
    }

    /// Replaces the node's params (PocketFlow's `set_params`: never merges). Inside a flow a
    /// node sees the run's params instead; its own are used when it runs alone.
    pub fn set_params(&self, params: Params) {
        let any = !params.is_empty();
        let mut slot = self.0.params.write();
        *slot = Arc::new(params);
        // Under the lock: the flag follows the last params set.
        self.0.has_params.store(any, Ordering::Release);
    }

    /// The node's own params.
    pub fn params(&self) -> Params {
        (**self.0.params.read()).clone()
    }

    // The settings below are fixed once the node is shared: each takes the node's only
    // handle, as `X.into_node().max_retries(3)` has it, and panics on a handle that was
    // cloned or wired (where a change would reach every holder of the node at once).

    /// Sets how many times `exec` is attempted (default 1, a single attempt).
    ///
    /// # Panics
    ///
    /// When the handle was cloned or wired first: set a node's settings where it is made.
    pub fn max_retries(self, n: u32) -> Self {
        self.configure("max_retries", |d| d.config.max_retries = n)
    }

    /// Sets the pause between attempts (default none). It is never taken after the last one.
    ///
    /// # Panics
    ///
    /// As [`max_retries`](Self::max_retries).
    pub fn wait(self, wait: Duration) -> Self {
        self.configure("wait", |d| d.config.wait = wait)
    }

    /// Limits each `exec` attempt to `timeout`; a timed-out attempt fails (and is retried
    /// like any failure), ending with [`crate::Error::Timeout`] if none succeeds.
    ///
    /// # Panics
    ///
    /// As [`max_retries`](Self::max_retries).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.configure("timeout", |d| d.config.timeout = Some(timeout))
    }

    /// Runs `exec` on tokio's blocking pool, for CPU-bound work that would stall the runtime.
    ///
    /// # Panics
    ///
    /// As [`max_retries`](Self::max_retries).
    pub fn blocking(self) -> Self {
        self.configure("blocking", |d| d.config.blocking = true)
    }

    /// How the node shows in Langfuse: an agent, a tool, a retriever, … or a generation
    /// (`langfuse.observation.type`; on the legacy API, `metadata.observation_type`).
    ///
    /// # Panics
    ///
    /// As [`max_retries`](Self::max_retries).
    pub fn observation_type(self, t: super::generation::ObservationType) -> Self {
        self.configure("observation_type", |d| d.config.observation = Some(t))
    }

    /// For parallel batches: at most `n` items at once (default: all, as PocketFlow).
    ///
    /// # Panics
    ///
    /// As [`max_retries`](Self::max_retries).
    pub fn max_concurrency(self, n: usize) -> Self {
        self.configure("max_concurrency", |d| d.config.max_concurrency = Some(n.max(1)))
    }

    pub(crate) fn config(&self) -> NodeConfig {
        self.0.config
    }

    /// Looks up the next node for `action`: `Err` with PocketFlow's warning when the flow ends
    /// because the action is not wired (only when the node has some successor).
    pub(crate) fn next_for(&self, action: &Action) -> Result<Option<NodeRef>, String> {
        let succ = self.0.successors.read();
        if succ.is_empty() {
            return Ok(None);
        }
        let key = action.key();
        match succ.iter().find(|(a, _)| &**a == key) {
            Some((_, Some(n))) => Ok(self.sibling(n)),
            _ => {
                let keys: Vec<String> = succ.iter().map(|(a, _)| format!("'{a}'")).collect();
                Err(format!("Flow ends: '{action}' not found in [{}]", keys.join(", ")))
            }
        }
    }

    /// The node's type, for traces (`node_type`).
    pub fn type_name(&self) -> &'static str {
        self.0.type_name
    }
}

impl fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeRef").field("name", &self.0.name).field("successors", &self.successor_actions()).finish()
    }
}

impl AsRef<NodeRef> for NodeRef {
    fn as_ref(&self) -> &NodeRef {
        self
    }
}

/// A half-built edge, `node - "action"`, completed by `>> target`.
#[derive(Debug, Clone)]
#[must_use = "a transition does nothing until completed with `>> target`"]
pub struct Transition {
    pub(crate) from: NodeRef,
    pub(crate) action: String,
}

impl Transition {
    /// Completes the edge to `target` (the same as `>> target`).
    pub fn to(self, target: &NodeRef) -> NodeRef {
        self.from.next_on(&self.action, target)
    }

    /// Completes the edge to nothing: the action ends the flow (PocketFlow's `- "x" >> None`).
    pub fn end(self) {
        self.from.end_on(&self.action)
    }
}

/// Implements `>>` and `-` for a handle type and its reference.
macro_rules! wiring_ops {
    ($t:ty) => {
        impl<R: AsRef<$crate::flow::graph::NodeRef>> ::std::ops::Shr<R> for &$t {
            type Output = $crate::flow::graph::NodeRef;
            fn shr(self, rhs: R) -> $crate::flow::graph::NodeRef {
                AsRef::<$crate::flow::graph::NodeRef>::as_ref(self).next(rhs.as_ref())
            }
        }
        impl<R: AsRef<$crate::flow::graph::NodeRef>> ::std::ops::Shr<R> for $t {
            type Output = $crate::flow::graph::NodeRef;
            fn shr(self, rhs: R) -> $crate::flow::graph::NodeRef {
                AsRef::<$crate::flow::graph::NodeRef>::as_ref(&self).next(rhs.as_ref())
            }
        }
        impl ::std::ops::Sub<&str> for &$t {
            type Output = $crate::flow::graph::Transition;
            fn sub(self, action: &str) -> $crate::flow::graph::Transition {
                $crate::flow::graph::Transition {
                    from: AsRef::<$crate::flow::graph::NodeRef>::as_ref(self).clone(),
                    action: action.to_owned(),
                }
            }
        }
        impl ::std::ops::Sub<&str> for $t {
            type Output = $crate::flow::graph::Transition;
            fn sub(self, action: &str) -> $crate::flow::graph::Transition {
                $crate::flow::graph::Transition {
                    from: AsRef::<$crate::flow::graph::NodeRef>::as_ref(&self).clone(),
                    action: action.to_owned(),
                }
            }
        }
    };
}
pub(crate) use wiring_ops;

wiring_ops!(NodeRef);

impl<R: AsRef<NodeRef>> Shr<R> for Transition {
    type Output = NodeRef;
    fn shr(self, rhs: R) -> NodeRef {
        self.to(rhs.as_ref())
    }
}

/// Wires edges, PocketFlow style, without a `let _ =` per edge or a moved handle.
///
/// Each statement is a chain of node (or flow) handles joined by `>>` (the `default` action)
/// or `- "action" >>`; statements are separated by `;`. Handles are borrowed, never moved.
///
/// ```
/// use flowtrace::prelude::*;
/// let (think, act, answer) = (FnNode::new("Think").into_node(), FnNode::new("Act").into_node(), FnNode::new("Answer").into_node());
/// wire! {
///     think - "act" >> act >> think;
///     think - "answer" >> answer;
/// }
/// assert_eq!(think.successor_actions(), vec!["act", "answer"]);
/// assert_eq!(act.successor("default").unwrap().name(), "Think");
/// ```
#[macro_export]
macro_rules! wire {
    () => {};
    (@chain $from:ident) => {};
    (@chain $from:ident ; $($rest:tt)*) => { $crate::wire!($($rest)*); };
    (@chain $from:ident >> $to:ident $($rest:tt)*) => {
        ::core::convert::AsRef::<$crate::NodeRef>::as_ref(&$from)
            .next(::core::convert::AsRef::<$crate::NodeRef>::as_ref(&$to));
        $crate::wire!(@chain $to $($rest)*);
    };
    (@chain $from:ident - $action:literal >> $to:ident $($rest:tt)*) => {
        ::core::convert::AsRef::<$crate::NodeRef>::as_ref(&$from)
            .next_on($action, ::core::convert::AsRef::<$crate::NodeRef>::as_ref(&$to));
        $crate::wire!(@chain $to $($rest)*);
    };
    ($from:ident $($rest:tt)*) => { $crate::wire!(@chain $from $($rest)*); };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FnNode, Node};

    fn node(name: &str) -> NodeRef {
        FnNode::new(name.to_owned()).into_node()
    }

    #[test]
    fn edges_keep_the_order_they_were_first_wired_in_and_rewiring_replaces() {
        let (a, b, c) = (node("A"), node("B"), node("C"));
        a.next_on("approve", &b);
        a.next_on("reject", &c);
        a.next_on("approve", &c);
        assert_eq!(a.successor_actions(), vec!["approve", "reject"]);
        assert_eq!(a.successor("approve").map(|n| n.name().to_owned()).as_deref(), Some("C"));
    }

    #[test]
    fn an_unwired_action_ends_the_flow_with_pocketflows_warning_only_when_there_are_edges() {
        let (a, b) = (node("A"), node("B"));
        assert!(matches!(a.next_for(&Action::from("anything")), Ok(None)), "no edges: no warning");
        let _ = &a >> &b;
        assert_eq!(a.next_for(&Action::none()).ok().flatten().map(|n| n.name().to_owned()).as_deref(), Some("B"));
        assert_eq!(a.next_for(&Action::from("retry")).unwrap_err(), "Flow ends: 'retry' not found in ['default']");
    }

    #[test]
    fn an_action_wired_to_nothing_ends_the_flow() {
        let a = node("A");
        a.end_on("stop");
        assert!(a.has_successors());
        assert!(a.successor("stop").is_none());
        assert!(a.next_for(&Action::from("stop")).is_err(), "the flow ends with the warning");
    }

    #[test]
    fn a_chain_returns_its_target_so_edges_compose() {
        let (a, b, c) = (node("A"), node("B"), node("C"));
        let end = a.next(&b).next(&c);
        assert_eq!(end.name(), "C");
        assert_eq!(b.successor("default").map(|n| n.name().to_owned()).as_deref(), Some("C"));
    }
}

/// A flow's graph as its runs follow it: the nodes reachable from its start, each edge's
/// target resolved to an index.
///
/// Following an edge in the live graph takes its lock, upgrades the target's weak reference
/// and clones its handle: reference counts every run of the flow shares, so on several
/// threads each step of each run bounced their cache lines between cores, and that cost more
/// than the node's own hooks. A plan is made once per wiring and shared by every run; each
/// node counts the changes of its own edges (see [`NodeDef::wiring`]), so a plan goes stale
/// only where its own graph was rewired, and a run whose graph is rewired while it runs
/// follows the live graph from the rewired node on (see [`Plan::is_current_at`]), so it
/// sees the new wiring as it did before plans.
pub(crate) struct Plan {
    start: Option<usize>,
    nodes: Vec<NodeRef>,
    /// Per node, its wiring count when the plan read its edges.
    wiring: Vec<u64>,
    /// Set by a run that found a node rewired since (see [`Plan::is_current_at`]): the
    /// flow's next run makes a new plan. Runs only look at the nodes they visit, so a plan
    /// is not checked whole at every run.
    stale: std::sync::atomic::AtomicBool,
    /// Per node, its edges in wiring order: the action and the target's index (`None`: the
    /// edge ends the flow).
    edges: Vec<Vec<(Arc<str>, Option<usize>)>>,
}

/// Where an action leads from a node, by the plan.
pub(crate) enum Hop {
    /// To the node at this index.
    To(usize),
    /// Nowhere, without a warning: the node has no successors.
    End,
    /// The live graph says (PocketFlow's `Flow ends: …` warning, when the action is not wired).
    Live,
}

impl Plan {
    /// The plan of the graph reachable from `start`, as it is wired now.
    pub(crate) fn of(start: Option<&NodeRef>) -> Plan {
        let mut nodes: Vec<NodeRef> = Vec::new();
        let mut index: std::collections::HashMap<*const NodeDef, usize> = std::collections::HashMap::new();
        let mut edges = Vec::new();
        let mut wiring = Vec::new();
        if let Some(s) = start {
            index.insert(Arc::as_ptr(&s.0), 0);
            nodes.push(s.clone());
        }
        let mut i = 0;
        while i < nodes.len() {
            let (count, list) = nodes[i].successor_list_counted();
            wiring.push(count);
            let mut resolved = Vec::with_capacity(list.len());
            for (action, target) in list {
                let j = target.map(|t| {
                    *index.entry(Arc::as_ptr(&t.0)).or_insert_with(|| {
                        nodes.push(t);
                        nodes.len() - 1
                    })
                });
                resolved.push((action, j));
            }
            edges.push(resolved);
            i += 1;
        }
        Plan { start: start.map(|_| 0), nodes, wiring, edges, stale: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Whether the graph is wired as it was when the plan was made.
    #[cfg(test)]
    pub(crate) fn is_current(&self) -> bool {
        (0..self.nodes.len()).all(|i| self.is_current_at(i))
    }

    /// Whether the node at `i` has the edges it had when the plan was made (its targets may
    /// have been rewired since: each is asked in turn when the run gets there). When it has
    /// not, the plan is marked stale for the flow's next run.
    #[inline]
    pub(crate) fn is_current_at(&self, i: usize) -> bool {
        let current = self.nodes[i].0.wiring.load(Ordering::Acquire) == self.wiring[i];
        if !current {
            self.stale.store(true, Ordering::Release);
        }
        current
    }

    /// Whether a run found the plan stale (see [`Plan::is_current_at`]).
    pub(crate) fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// The start node's index.
    pub(crate) fn start(&self) -> Option<usize> {
        self.start
    }

    /// The node at `i`.
    #[inline]
    pub(crate) fn node(&self, i: usize) -> &NodeRef {
        &self.nodes[i]
    }

    /// Where `action` leads from the node at `i` (as [`NodeRef::next_for`] says).
    #[inline]
    pub(crate) fn hop(&self, i: usize, action: &Action) -> Hop {
        let edges = &self.edges[i];
        if edges.is_empty() {
            return Hop::End;
        }
        let key = action.key();
        match edges.iter().find(|(a, _)| crate::flow::store::same_key(a, key)) {
            Some((_, Some(j))) => Hop::To(*j),
            _ => Hop::Live,
        }
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::flow::{FnNode, Node};

    #[test]
    fn a_plan_resolves_edges_and_goes_stale_when_rewired() {
        let a = FnNode::new("A").into_node();
        let b = FnNode::new("B").into_node();
        let c = FnNode::new("C").into_node();
        a.next(&b);
        b.next_on("loop", &a);
        b.end_on("stop");
        let plan = Plan::of(Some(&a));
        assert_eq!(plan.nodes.len(), 2, "c is not reachable");
        assert!(matches!(plan.hop(0, &Action::none()), Hop::To(1)));
        assert!(matches!(plan.hop(1, &Action::new("loop")), Hop::To(0)));
        assert!(matches!(plan.hop(1, &Action::new("stop")), Hop::Live), "an end_on edge warns");
        assert!(matches!(plan.hop(1, &Action::new("other")), Hop::Live));
        assert!(plan.is_current());
        b.next_on("more", &c);
        assert!(!plan.is_current());
        let plan = Plan::of(Some(&a));
        assert_eq!(plan.nodes.len(), 3);
        assert!(matches!(plan.hop(2, &Action::none()), Hop::End));
    }

    #[test]
    fn wiring_another_graph_leaves_a_plan_current() {
        let a = FnNode::new("A").into_node();
        let b = FnNode::new("B").into_node();
        a.next(&b);
        let flow = crate::flow::Flow::new(&a);
        let NodeKind::Flow(def) = &flow.as_node().0.kind else { unreachable!() };
        let first = def.plan();
        // A service building flows per request wires other graphs all the time.
        let (x, y) = (FnNode::new("X").into_node(), FnNode::new("Y").into_node());
        x.next(&y);
        let _other = crate::flow::Flow::new(&x);
        assert!(first.is_current());
        assert!(Arc::ptr_eq(&first, &def.plan()), "the flow keeps its plan");
        // Its own wiring makes it stale: at the rewired node only, once a run gets there.
        b.next_on("again", &a);
        assert!(first.is_current_at(0) && !first.is_stale());
        assert!(!first.is_current_at(1) && first.is_stale());
        assert!(!Arc::ptr_eq(&first, &def.plan()), "the flow plans its new wiring");
        // And so does a new start.
        let second = def.plan();
        flow.start(&b);
        let third = def.plan();
        assert!(!Arc::ptr_eq(&second, &third));
        assert_eq!(third.node(third.start().unwrap()).name(), "B");
    }
}
