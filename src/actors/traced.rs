//! The entry points that run what users wrote: `Flow::run`, `NodeRef::run`, `BatchFlow::run`,
//! and tracing switched on with `traced`, through the one function that plans a run's tracing.

use std::sync::Arc;

use serde_json::Value;

use super::supervisor::{self, RunOptions};
use super::tracer::{global, Tracer};
use crate::error::Error;
use crate::flow::{Action, BatchFlow, Flow, NodeRef, SharedStore};
use crate::trace::model::drop_deep;
use crate::trace::recorder::capture;
use crate::trace::TraceMeta;

impl Flow {
    /// Runs the flow on `shared` in a supervised run and returns the last action.
    ///
    /// A panic in a node ends the run with [`Error::Panic`] naming the node; the caller's task
    /// and the process go on. Dropping the returned future cancels the run.
    pub async fn run(&self, shared: &SharedStore) -> Result<Action, Error> {
        supervisor::run(self.as_node().clone(), shared.clone(), RunOptions::default()).await
    }

    /// Runs with options (params, a run timeout, a step limit).
    pub async fn run_with(&self, shared: &SharedStore, options: RunOptions) -> Result<Action, Error> {
        supervisor::run(self.as_node().clone(), shared.clone(), options).await
    }

    /// This flow with tracing on, under the trace name `name`: the one line that makes every
    /// run a complete span tree. Nothing in node code changes.
    pub fn traced(&self, name: impl Into<String>) -> TracedFlow {
        TracedFlow::new(self.as_node().clone(), name)
    }
}

impl BatchFlow {
    /// Runs the batch flow on `shared` in a supervised run.
    pub async fn run(&self, shared: &SharedStore) -> Result<Action, Error> {
        supervisor::run(self.as_node().clone(), shared.clone(), RunOptions::default()).await
    }

    /// This batch flow with tracing on, under the trace name `name`.
    pub fn traced(&self, name: impl Into<String>) -> TracedFlow {
        TracedFlow::new(self.as_node().clone(), name)
    }
}

impl NodeRef {
    /// Runs this node alone, once, on `shared` (PocketFlow's `node.run`): it never follows
    /// successors, and warns `Node won't run successors. Use Flow.` if it has any.
    pub async fn run(&self, shared: &SharedStore) -> Result<Action, Error> {
        supervisor::run(self.clone(), shared.clone(), RunOptions::default()).await
    }
}

/// A flow with tracing switched on: what [`crate::Flow::traced`] returns.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use flowtrace::prelude::*;
/// let memory = MemoryExporter::new();
/// let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
/// let flow = Flow::new(&FnNode::new("Step").into_node());
/// flow.traced("Support").session_id("s-1").user_id("u-7").tag("demo").tracer(&tracer)
///     .run(&SharedStore::new()).await.unwrap();
/// tracer.flush(std::time::Duration::from_secs(5)).await;
/// assert_eq!(memory.traces()[0].session_id.as_deref(), Some("s-1"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TracedFlow {
    root: NodeRef,
    meta: TraceMeta,
    tracer: Option<Tracer>,
    options: RunOptions,
}

impl TracedFlow {
    pub(crate) fn new(root: NodeRef, name: impl Into<String>) -> Self {
        TracedFlow {
            root,
            meta: TraceMeta { name: name.into(), ..Default::default() },
            tracer: None,
            options: Default::default(),
        }
    }

    /// Groups the trace in a session.
    pub fn session_id(mut self, id: impl Into<String>) -> Self {
        self.meta.session_id = Some(id.into());
        self
    }
    /// Attributes the trace to a user.
    pub fn user_id(mut self, id: impl Into<String>) -> Self {
        self.meta.user_id = Some(id.into());
        self
    }
    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.meta.tags.push(tag.into());
        self
    }
    /// Sets the application's release.
    pub fn release(mut self, release: impl Into<String>) -> Self {
        self.meta.release = Some(release.into());
        self
    }
    /// Sets the flow's version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.meta.version = Some(version.into());
        self
    }
    /// Adds a metadata entry.
    ///
    /// Nesting deeper than [`MAX_DEPTH`](crate::export::MAX_DEPTH) levels is replaced by a marker
    /// here, once: the trace fields are copied for every run, and a copy of a deeper value
    /// could overflow a thread's stack.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        let value = value.into();
        let capped = capture(&value);
        drop_deep(value);
        self.meta.metadata.insert(key.into(), capped);
        self
    }
    /// Sends traces to this tracer instead of the global one.
    pub fn tracer(mut self, tracer: &Tracer) -> Self {
        self.tracer = Some(tracer.clone());
        self
    }
    /// Sets run options (params, timeout, step limit).
    pub fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// The trace name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Runs the flow traced; the result is exactly what the untraced run would give.
    pub async fn run(&self, shared: &SharedStore) -> Result<Action, Error> {
        let (root, options) = self.plan(None);
        supervisor::run(root, shared.clone(), options).await
    }

    /// The root and the options of a run of this traced flow, its tracing planned.
    pub(crate) fn plan(&self, runtime: Option<&Tracer>) -> (NodeRef, RunOptions) {
        let mut options = self.options.clone();
        options.trace = plan_trace(&self.root, Some(self), runtime);
        (self.root.clone(), options)
    }
}

/// The one place that decides how a run is traced, for every way of starting one: its tracer
/// (the traced flow's own, else the runtime's, else, for a traced flow, the global one) and its
/// trace fields (the traced flow's, or the root's name for a plain run through a traced
/// runtime), with the tracer's default session and user wherever the run sets none.
pub(crate) fn plan_trace(
    root: &NodeRef,
    traced: Option<&TracedFlow>,
    runtime: Option<&Tracer>,
) -> Option<(Tracer, Arc<TraceMeta>)> {
    let (tracer, mut meta) = match traced {
        Some(t) => {
            let tracer = t.tracer.clone().or_else(|| runtime.cloned()).or_else(global)?;
            (tracer, t.meta.clone())
        }
        None => (runtime?.clone(), TraceMeta { name: root.name().to_owned(), ..Default::default() }),
    };
    if meta.session_id.is_none() {
        meta.session_id = tracer.default_session_id().map(str::to_owned);
    }
    if meta.user_id.is_none() {
        meta.user_id = tracer.default_user_id().map(str::to_owned);
    }
    Some((tracer, Arc::new(meta)))
}
