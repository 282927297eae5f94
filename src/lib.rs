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
//!
//! ## Nodes: `Node` or `FnNode`
//!
//! A node has three phases: `prep` reads the [`SharedStore`], `exec` does the work (retried up
//! to `max_retries` times, then `exec_fallback` gets the last error), `post` writes results
//! back and returns the [`Action`] that picks the next edge.
//!
//! - Implement the [`Node`] trait for a node with typed results (`type Prep`, `type Exec`,
//!   anything serialisable, so traces can record them); see its page for an example.
//! - Build an [`FnNode`] from closures when JSON values are enough: the terse form, and the
//!   one PocketFlow's Python reads most like.
//!
//! Either becomes a [`NodeRef`] with `into_node()`, a cheap handle to clone and wire. A node's
//! settings are chained where it is made and are fixed once it is shared:
//! `FnNode::new("Call").exec(..).into_node().max_retries(3).wait(d).timeout(d)`; `.blocking()`
//! runs `exec` on tokio's blocking pool. Every count (attempts, items, batch runs) is 0-based.
//!
//! ## Wiring
//!
//! Edges are labelled by actions; `>>` is the `default` action. [`wire!`] takes chains of
//! handles without moving them; the same edges read `&a >> &b`, `a.next(&b)` or
//! `a.on("approve").to(&b)` as expressions. A node whose action has no edge ends the flow. A
//! [`Flow`] is a node too, so flows nest; a graph, loops included, is freed with the last
//! handle to any of its nodes.
//!
//! ```
//! use flowtrace::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), flowtrace::Error> {
//! let draft = FnNode::new("Draft")
//!     .post(|ctx, _, _| {
//!         let n = ctx.shared().get::<i64>("drafts")?.unwrap_or(0) + 1;
//!         ctx.shared().insert("drafts", n);
//!         Ok(Action::none())
//!     })
//!     .into_node();
//! let review = FnNode::new("Review")
//!     .post(|ctx, _, _| Ok(if ctx.shared().require::<i64>("drafts")? < 2 { "revise".into() } else { "approve".into() }))
//!     .into_node();
//! let publish = FnNode::new("Publish").into_node();
//! wire! {
//!     draft >> review - "revise" >> draft;
//!     review - "approve" >> publish;
//! }
//! let shared = SharedStore::new();
//! Flow::named("Writer", &draft).run(&shared).await?;
//! assert_eq!(shared.get::<i64>("drafts").unwrap(), Some(2));
//! # Ok(()) }
//! ```
//!
//! ## Batches
//!
//! A [`BatchNode`] runs `exec` once per item: `into_batch()` one after another,
//! `into_parallel_batch()` concurrently (bounded with `max_concurrency(n)`), results in input
//! order; [`FnBatchNode`] is its closure form. Parallel items run in node actors, one per
//! worker thread, so CPU-bound items use every core. A [`BatchFlow`] runs a whole sub-flow
//! once per param set ([`params!`] builds one), one after another or with
//! `BatchFlow::parallel`.
//!
//! ```
//! use flowtrace::prelude::*;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), flowtrace::Error> {
//! let lengths = FnBatchNode::parallel("Lengths")
//!     .items(|ctx| Ok(ctx.shared().require::<serde_json::Value>("words")?))
//!     .exec(|word, _| async move { Ok(json!(word.as_str().map_or(0, str::len))) })
//!     .post(|ctx, _, out| { ctx.shared().insert("lengths", out); Ok(Action::none()) })
//!     .into_node();
//! let shared = SharedStore::new();
//! shared.insert("words", json!(["actor", "flow"]));
//! Flow::new(&lengths).run(&shared).await?;
//! assert_eq!(shared.get_json("lengths"), Some(json!([5, 4])));
//! # Ok(()) }
//! ```
//!
//! ## Running: `Flow::run` and the `Runtime`
//!
//! `flow.run(&shared)` runs a flow under a supervisor actor of its own and returns its last
//! action; a node's error or panic comes back as an [`Error`] naming the node and the phase,
//! and dropping the future cancels the run. A service holds a [`runtime::Runtime`]: a cap on
//! runs in flight, an admission policy, default limits, a [`runtime::RunHandle`] per run
//! (`Runtime::spawn` takes a flow, a batch flow, a node or a traced flow; dropping the handle
//! cancels the run unless `detach()`ed) and a graceful shutdown.
//!
//! ```
//! use flowtrace::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), flowtrace::Error> {
//! let rt = Runtime::builder().max_in_flight(64).build()?;
//! let flow = Flow::new(&FnNode::new("Step").into_node());
//! let handle = rt.spawn(&flow, &SharedStore::new()).await?;
//! handle.await?;
//! rt.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! ## Tracing
//!
//! `flow.traced("Name")` (with `.session_id(..)`, `.user_id(..)`, `.tag(..)`) records every run
//! as a span tree — flow, node, prep, exec, each attempt and item, post — with inputs, outputs
//! and errors, and hands it to a [`Tracer`] on its own thread; exporters deliver it to Langfuse,
//! any OTLP backend or a local JSON Lines file (`flowtrace show` draws it). Nothing in node code
//! changes, and a traced run returns exactly what the untraced one does. [`Tracer::from_env`]
//! reads Langfuse's own variables; [`trace::TracingConfig`] lists every setting.
//!
//! ```
//! use flowtrace::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), flowtrace::Error> {
//! let memory = MemoryExporter::new();
//! let tracer = Tracer::builder().exporter(memory.clone()).build().expect("a tracer");
//! let flow = Flow::new(&FnNode::new("Step").into_node());
//! flow.traced("Demo").session_id("s-1").tracer(&tracer).run(&SharedStore::new()).await?;
//! tracer.flush(std::time::Duration::from_secs(5)).await;
//! assert_eq!(memory.traces()[0].name, "Demo");
//! # Ok(()) }
//! ```

// Items inside the private rooms are `pub(crate)` unless the front door re-exports them.
#![warn(unreachable_pub)]

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
pub use actors::supervisor::{RunOptions, RunReport};
pub use actors::traced::TracedFlow;
pub use actors::tracer::{flush, global, set_global_tracer, shutdown, Tracer, TracerBuilder, TracerError};
pub use error::{BoxError, ConfigError, Error, NodeResult, Phase};
pub use flow::{
    live_nodes, Action, ActionError, BatchFlow, BatchNode, Context, ExecContext, Flow, FnBatchNode, FnNode, Generation,
    Node, NodeRef, ObservationType, Params, SharedStore, StoreError, StoreSnapshot, Transition, DEFAULT_ACTION,
};

/// Running many flows from a service: the [`Runtime`](runtime::Runtime) handle, its admission
/// policy, run handles, counters and the shutdown report.
pub mod runtime {
    pub use crate::actors::runtime::{
        Admission, RunCanceller, RunHandle, RunStatus, Runnable, Runtime, RuntimeBuilder, RuntimeStats, ShutdownReport,
    };
    pub use crate::actors::supervisor::live_runs;
}

/// What a program using flowtrace usually needs, in one import.
pub mod prelude {
    pub use crate::export::MemoryExporter;
    pub use crate::runtime::Runtime;
    pub use crate::{params, wire, BoxError};
    pub use crate::{
        Action, BatchFlow, BatchNode, Context, Error, ExecContext, Flow, FnBatchNode, FnNode, Generation, Node,
        NodeRef, NodeResult, ObservationType, Params, RunOptions, SharedStore, Tracer,
    };
}
