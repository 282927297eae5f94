//! The user's model: nodes, flows, the shared store, batches.

pub(crate) mod action;
pub(crate) mod batch;
pub(crate) mod context;
pub(crate) mod fn_node;
pub(crate) mod graph;
mod mermaid;
pub(crate) mod node;
pub(crate) mod orchestrate;
pub(crate) mod store;
pub(crate) mod visit;

pub use action::{Action, ActionError, DEFAULT_ACTION};
pub use batch::{BatchFlow, BatchNode, FnBatchNode};
pub use context::{Context, ExecContext, Params};
pub use fn_node::FnNode;
pub use graph::{NodeRef, Transition};
pub use node::Node;
pub use orchestrate::Flow;
pub use store::{SharedStore, StoreError, StoreSnapshot};

impl NodeRef {
    /// Runs this node alone, once, on `shared` (PocketFlow's `node.run`): it never follows
    /// successors, and warns `Node won't run successors. Use Flow.` if it has any.
    pub async fn run(&self, shared: &SharedStore) -> Result<Action, crate::Error> {
        crate::actors::supervisor::run(self.clone(), shared.clone(), Default::default()).await
    }
}
