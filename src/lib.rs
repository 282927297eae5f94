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

mod actors;
mod error;
pub mod export;
pub mod flow;
pub mod trace;

#[cfg(feature = "durable")]
pub use actors::durable;
pub use actors::runtime::{
    Admission, RunCanceller, RunHandle, RunStatus, Runtime, RuntimeBuilder, RuntimeStats, ShutdownReport,
};
pub use actors::supervisor::{live_runs, RunOptions};
pub use error::{BoxError, Error, NodeResult, Phase};
pub use export::{ExportReport, Exporter, MemoryExporter};
pub use flow::{
    Action, BatchFlow, BatchNode, Context, ExecContext, Flow, FnBatchNode, FnNode, Node, NodeRef, Params, SharedStore,
    StoreError,
};
pub use trace::{flush, shutdown, TraceRecord, TracedFlow, Tracer, TracingConfig};

/// What a program using flowtrace usually needs, in one import.
pub mod prelude {
    pub use crate::{
        Action, BatchFlow, BatchNode, Context, Error, ExecContext, Flow, FnBatchNode, FnNode, MemoryExporter, Node,
        NodeRef, NodeResult, Params, RunOptions, SharedStore, Tracer,
    };
}
