//! The user's model: nodes, flows, the shared store, batches.

pub(crate) mod action;
pub(crate) mod batch;
pub(crate) mod context;
pub(crate) mod erased;
pub(crate) mod flows;
pub(crate) mod fn_node;
pub(crate) mod generation;
pub(crate) mod graph;
mod mermaid;
pub(crate) mod node;
pub(crate) mod store;

pub use action::{Action, ActionError, DEFAULT_ACTION};
pub use batch::{BatchFlow, BatchNode, FnBatchNode};
pub use context::{Context, ExecContext, Params};
pub use flows::Flow;
pub use fn_node::FnNode;
pub use generation::{Generation, ObservationType};
pub use graph::{NodeRef, Transition};
pub use node::Node;
pub use store::{SharedStore, StoreError, StoreSnapshot};
