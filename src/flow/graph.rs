//! Node handles and wiring: `a >> b`, `a - "approve" >> b`, and the builder form.

use std::fmt;
use std::ops::Shr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

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

pub(crate) struct NodeDef {
    pub(crate) name: Arc<str>,
    pub(crate) type_name: &'static str,
    pub(crate) names: SpanNames,
    pub(crate) kind: NodeKind,
    /// Successors in insertion order (PocketFlow lists them in that order in warnings).
    pub(crate) successors: RwLock<Vec<(Arc<str>, Option<NodeRef>)>>,
    pub(crate) params: RwLock<Arc<Params>>,
    pub(crate) config: RwLock<NodeConfig>,
    /// PocketFlow's wiring warnings (`Overwriting successor …`), shown on the node's spans.
    pub(crate) wiring_warnings: RwLock<Vec<Arc<str>>>,
}

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
pub struct NodeRef(pub(crate) Arc<NodeDef>);

impl NodeRef {
    pub(crate) fn from_kind(name: impl Into<Arc<str>>, type_name: &'static str, kind: NodeKind) -> Self {
        let name: Arc<str> = name.into();
        let names = SpanNames {
            prep: format!("{name}.prep").into(),
            exec: format!("{name}.exec").into(),
            fallback: format!("{name}.exec_fallback").into(),
            post: format!("{name}.post").into(),
        };
        NodeRef(Arc::new(NodeDef {
            name,
            type_name,
            names,
            kind,
            successors: RwLock::new(Vec::new()),
            params: RwLock::new(Arc::new(Params::new())),
            config: RwLock::new(NodeConfig::default()),
            wiring_warnings: RwLock::new(Vec::new()),
        }))
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
    }

    /// The wired actions, in the order they were first wired.
    pub fn successor_actions(&self) -> Vec<String> {
        self.0.successors.read().iter().map(|(a, _)| a.to_string()).collect()
    }

    /// The successor wired for `action`, if any.
    pub fn successor(&self, action: &str) -> Option<NodeRef> {
        self.0.successors.read().iter().find(|(a, _)| &**a == action).and_then(|(_, n)| n.clone())
    }

    /// Whether any successor is wired.
    pub fn has_successors(&self) -> bool {
        !self.0.successors.read().is_empty()
    }

    /// Replaces the node's params (PocketFlow's `set_params`: never merges). Inside a flow a
    /// node sees the run's params instead; its own are used when it runs alone.
    pub fn set_params(&self, params: Params) {
        *self.0.params.write() = Arc::new(params);
    }

    /// The node's own params.
    pub fn params(&self) -> Params {
        (**self.0.params.read()).clone()
    }

    /// Sets how many times `exec` is attempted (default 1, a single attempt).
    pub fn max_retries(self, n: u32) -> Self {
        self.0.config.write().max_retries = n;
        self
    }

    /// Sets the pause between attempts (default none). It is never taken after the last one.
    pub fn wait(self, wait: Duration) -> Self {
        self.0.config.write().wait = wait;
        self
    }

    /// Limits each `exec` attempt to `timeout`; a timed-out attempt fails (and is retried
    /// like any failure), ending with [`crate::Error::Timeout`] if none succeeds.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.0.config.write().timeout = Some(timeout);
        self
    }

    /// Runs `exec` on tokio's blocking pool, for CPU-bound work that would stall the runtime.
    pub fn blocking(self) -> Self {
        self.0.config.write().blocking = true;
        self
    }

    /// How the node shows in Langfuse: an agent, a tool, a retriever, … or a generation
    /// (`langfuse.observation.type`; on the legacy API, `metadata.observation_type`).
    pub fn observation_type(self, t: super::generation::ObservationType) -> Self {
        self.0.config.write().observation = Some(t);
        self
    }

    /// For parallel batches: at most `n` items at once (default: all, as PocketFlow).
    pub fn max_concurrency(self, n: usize) -> Self {
        self.0.config.write().max_concurrency = Some(n.max(1));
        self
    }

    pub(crate) fn config(&self) -> NodeConfig {
        *self.0.config.read()
    }

    /// Looks up the next node for `action`, warning as PocketFlow does when the flow ends
    /// because the action is not wired (only when the node has some successor); the warning
    /// is also handed back, for the trace.
    pub(crate) fn next_for(&self, action: &Action) -> (Option<NodeRef>, Option<String>) {
        let succ = self.0.successors.read();
        if succ.is_empty() {
            return (None, None);
        }
        let key = action.key();
        match succ.iter().find(|(a, _)| &**a == key) {
            Some((_, Some(n))) => (Some(n.clone()), None),
            _ => {
                let keys: Vec<String> = succ.iter().map(|(a, _)| format!("'{a}'")).collect();
                let warning = format!("Flow ends: '{action}' not found in [{}]", keys.join(", "));
                tracing::warn!(target: "flowtrace::flow", node = %self.0.name, "{warning}");
                (None, Some(warning))
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
