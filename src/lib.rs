//! # flowtrace
//!
//! An async workflow engine with PocketFlow's model — nodes with `prep` / `exec` / `post`,
//! flows of action-labelled edges, batches — run by actors on tokio, with tracing built in:
//! one call turns every run into a complete span tree, sent to Langfuse (or a local file) off
//! the run's path.
//!
//! ```
//! use flowtrace::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), flowtrace::Error> {
//! // A node that fails twice, then succeeds: exec is retried.
//! let flaky = FnNode::new("Flaky")
//!     .exec(|_, cx| async move {
//!         if cx.attempt() < 2 { Err("not yet".into()) } else { Ok("done".into()) }
//!     })
//!     .post(|ctx, _, out| { ctx.shared().insert("result", out); Ok(Action::none()) })
//!     .into_node()
//!     .max_retries(3);
//!
//! let shared = SharedStore::new();
//! Flow::new(&flaky).run(&shared).await?;
//! assert_eq!(shared.get::<String>("result").unwrap().as_deref(), Some("done"));
//! # Ok(()) }
//! ```

// The four rooms. Each imports only the rooms below it: `flow` (what users write) names
// nothing but `error`; `trace` (what a run leaves behind) reads `flow`'s values; `export`
// (where traces go) reads `trace`'s records; `actors` (how it runs) sits on top. Users reach
// them through the re-exports below, each item at one path.
mod actors;
mod error;
pub mod export;
mod flow;
pub mod trace;

#[cfg(feature = "durable")]
pub use actors::durable;
pub use actors::supervisor::RunOptions;
pub use actors::traced::TracedFlow;
pub use actors::tracer::{flush, global, set_global_tracer, shutdown, Tracer, TracerBuilder, TracerError};
pub use error::{BoxError, ConfigError, Error, NodeResult, Phase};
pub use flow::{
    Action, ActionError, BatchFlow, BatchNode, Context, ExecContext, Flow, FnBatchNode, FnNode, Generation, Node,
    NodeRef, ObservationType, Params, SharedStore, StoreError, StoreSnapshot, Transition, DEFAULT_ACTION,
};

/// Running many flows from a service: the [`Runtime`](runtime::Runtime) handle, its admission
/// policy, run handles, counters and the shutdown report.
pub mod runtime {
    pub use crate::actors::runtime::{
        Admission, RunCanceller, RunHandle, RunStatus, Runtime, RuntimeBuilder, RuntimeStats, ShutdownReport,
    };
    pub use crate::actors::supervisor::live_runs;
}

/// What a program using flowtrace usually needs, in one import.
pub mod prelude {
    pub use crate::export::MemoryExporter;
    pub use crate::runtime::Runtime;
    pub use crate::{
        Action, BatchFlow, BatchNode, Context, Error, ExecContext, Flow, FnBatchNode, FnNode, Generation, Node,
        NodeRef, NodeResult, ObservationType, Params, RunOptions, SharedStore, Tracer,
    };
}
