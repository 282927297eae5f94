//! Durable runs: a run's state is checkpointed after every node visit, so a run that was
//! interrupted (its process killed, its machine lost) continues after its last checkpoint
//! instead of starting again, and a run can wait for a person without holding a worker.
//!
//! - [`CheckpointStore`] keeps [`RunState`]s: [`EmbeddedStore`] on local disk (redb, feature
//!   `durable`), and JetStream KV (feature `nats`, `nats::KvCheckpoints`).
//! - [`DurableRuns`] runs flows durably in this process: [`run`](DurableRuns::run),
//!   [`resume`](DurableRuns::resume) after a crash or with a person's input, no server needed.
//! - With feature `nats`, [`nats`] spreads runs over worker processes through a JetStream
//!   work queue: `Queue::submit` from any process, `Worker`s pull runs bounded by their
//!   admission limit, results are kept under the run id.
//!
//! ## What is guaranteed
//! A node visit whose checkpoint was written is never executed again for that run. The visit
//! in flight when a process dies (its `exec` may have run, its checkpoint not yet written)
//! runs again on the next delivery: at-least-once per visit, exactly-once per checkpointed
//! visit. Side effects in `exec` that must not repeat should be idempotent. Checkpoints are
//! taken in the run's root flow, after each visit; a **sequential batch flow** there is also
//! checkpointed after each of its param sets (its sets are kept, and those that completed
//! are not run again). A nested flow, a parallel batch flow and a batch node are one visit,
//! checkpointed when they end: a batch node's outputs are typed values that serialise but
//! cannot be read back, so its items in flight at a crash run again.
//!
//! ## Waiting for a person
//! A node calls [`crate::Context::wait_for`] in `prep`: without the input the run is
//! checkpointed as suspended at that node and ends this execution (a worker is freed);
//! `resume(run_id, input)` writes the input into the store under the awaited key and the
//! node is visited again.
//!
//! ## Tracing
//! Every execution of a durable run records into the same trace id (the run's), so a backend
//! such as Langfuse shows the run as one trace; an execution that continues from a checkpoint
//! opens with a `resume` span naming the worker, the node it starts at, the delivery and any
//! batch progress. Every part shows the run's initial store as the trace's input (not the
//! checkpoint it starts from), and the last part the final store as its output. A suspension
//! is not an error: the spans of the part that suspends end normally, with an event at
//! DEFAULT level (`suspended at 'node': waiting for input 'key'`), so Langfuse shows no
//! ERROR level in the trace.
//!
//! ## Runtimes
//! [`DurableRuns`] and `nats::Worker` run through a [`Runtime`](crate::runtime::Runtime)
//! when given one (a worker builds its own otherwise): its admission limit bounds the runs a
//! worker pulls, and its time and step limits, tracer and supervision apply.

mod embedded;
#[cfg(feature = "nats")]
pub mod nats;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use embedded::EmbeddedStore;

use crate::actors::runtime::Runtime;
use crate::actors::supervisor::DurableParts;
use crate::actors::traced::TracedFlow;
use crate::actors::tracer::Tracer;
use crate::actors::visit::{BatchProgress, RunHook, Visited};
use crate::flow::{Flow, NodeRef, Params, SharedStore};
use crate::trace::TraceId;
use crate::{Error, RunOptions};

/// The version of [`RunState`] and [`RunRequest`] this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a durable-run operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The checkpoint store could not read or write.
    #[error("checkpoint store: {0}")]
    Store(String),
    /// A checkpoint or request could not be (de)serialised.
    #[error("cannot (de)serialise {what}: {reason}")]
    Format {
        /// What was read or written.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// No flow of this name is registered.
    #[error("unknown flow '{flow}' (registered: {known:?})")]
    UnknownFlow {
        /// The name asked for.
        flow: String,
        /// The names registered.
        known: Vec<String>,
    },
    /// The request or checkpoint was written by another version of the format or the flow.
    #[error("version mismatch: {0}")]
    Version(String),
    /// The input is not usable (a store that is not a JSON object, …).
    #[error("bad input: {0}")]
    BadInput(String),
    /// No run has this id.
    #[error("no run '{0}'")]
    NotFound(String),
    /// The run is not waiting for input.
    #[error("run '{run_id}' is not suspended (it is {state})")]
    NotSuspended {
        /// The run.
        run_id: String,
        /// What it is instead.
        state: String,
    },
    /// A setting or a registered flow is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The NATS connection or a JetStream request failed (messages never hold credentials).
    #[error("NATS: {0}")]
    Nats(String),
    /// Waiting for a result took longer than allowed.
    #[error("timed out waiting for run '{0}'")]
    Timeout(String),
}

/// The trace fields of a run (what [`crate::Flow::traced`] sets), carried with the run so that
/// every worker records it the same way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceFields {
    /// The trace name (defaults to the flow's registered name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Groups the trace in a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Attributes the trace to a user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Metadata entries.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// A request to run a registered flow: what [`Submission`] builds and a queue carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// The run's id (also its trace id, as 32 hex digits).
    pub run_id: String,
    /// The registered flow name.
    pub flow: String,
    /// The flow version the submitter expects, checked against the worker's registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_version: Option<String>,
    /// The initial shared store: a JSON object.
    pub store: Value,
    /// The run's params.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Params,
    /// Trace fields.
    #[serde(default)]
    pub trace: TraceFields,
}

/// Builds a [`RunRequest`]: a flow name, the initial store, params and trace fields.
#[derive(Debug, Clone)]
pub struct Submission {
    request: RunRequest,
}

impl Submission {
    /// A run of the flow registered as `flow`, with an empty store and a fresh run id.
    pub fn new(flow: impl Into<String>) -> Self {
        Submission {
            request: RunRequest {
                format: FORMAT_VERSION,
                run_id: new_run_id(),
                flow: flow.into(),
                flow_version: None,
                store: Value::Object(Map::new()),
                params: Params::new(),
                trace: TraceFields::default(),
            },
        }
    }
    /// The initial shared store (a JSON object; anything else gives the run an error result).
    pub fn store(mut self, store: Value) -> Self {
        self.request.store = store;
        self
    }
    /// The run's params.
    pub fn params(mut self, params: Params) -> Self {
        self.request.params = params;
        self
    }
    /// The flow version expected; a worker registered with another version refuses the run.
    pub fn flow_version(mut self, version: impl Into<String>) -> Self {
        self.request.flow_version = Some(version.into());
        self
    }
    /// A run id of the caller's choosing instead of a fresh one (for idempotent submits).
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        self.request.run_id = id.into();
        self
    }
    /// The trace name.
    pub fn trace_name(mut self, name: impl Into<String>) -> Self {
        self.request.trace.name = Some(name.into());
        self
    }
    /// The trace's session.
    pub fn session_id(mut self, id: impl Into<String>) -> Self {
        self.request.trace.session_id = Some(id.into());
        self
    }
    /// The trace's user.
    pub fn user_id(mut self, id: impl Into<String>) -> Self {
        self.request.trace.user_id = Some(id.into());
        self
    }
    /// Adds a trace tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.request.trace.tags.push(tag.into());
        self
    }
    /// Adds a trace metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.request.trace.metadata.insert(key.into(), value.into());
        self
    }
    /// The run id this submission will have.
    pub fn id(&self) -> &str {
        &self.request.run_id
    }
    /// The request.
    pub fn into_request(self) -> RunRequest {
        self.request
    }
}

/// Where a run stands, as its checkpoint says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunPhase {
    /// Running (or interrupted): it continues at `next`.
    Running,
    /// Waiting for input under `key` at node `node`.
    Suspended {
        /// The node that waits (visited again on resume).
        node: String,
        /// The store key the input goes to.
        key: String,
    },
    /// The root flow has no next node: the run's work is done.
    Finished,
}

/// A sequential batch flow's progress, checkpointed after each of its param sets while the
/// root flow visits it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchCheckpoint {
    /// The batch flow (a node of the root flow).
    pub node: String,
    /// Its param sets, as its `params` gave them (not asked for again on resume).
    pub sets: Vec<Params>,
    /// How many of them completed; their writes are in the checkpoint's store.
    pub done: usize,
}

/// A run's checkpoint: everything needed to continue it on any worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// The run's id.
    pub run_id: String,
    /// The registered flow name.
    pub flow: String,
    /// The flow version the run was submitted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_version: Option<String>,
    /// The shared store after the last checkpointed visit.
    pub store: Map<String, Value>,
    /// The run's initial store: every part of the run shows it as the trace's input.
    /// (Absent in checkpoints written before it was kept: the part's own start store is used.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Map<String, Value>>,
    /// The run's params.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Params,
    /// Trace fields.
    #[serde(default)]
    pub trace: TraceFields,
    /// The run's trace id, the same on every worker.
    pub trace_id: TraceId,
    /// The node to visit next (`None` when finished).
    pub next: Option<String>,
    /// Node visits counted by the root flow (for its step limit).
    pub steps: u64,
    /// Checkpoints written for this run.
    pub checkpoints: u64,
    /// The node of the last checkpointed visit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_node: Option<String>,
    /// The last visit's action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<String>,
    /// Progress inside the visit in flight, when it is a sequential batch flow: the param
    /// sets that completed are not run again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchCheckpoint>,
    /// Where the run stands.
    pub phase: RunPhase,
    /// Executions started (a worker that dies mid-run counts too); bounded by a worker's
    /// `max_deliveries`.
    #[serde(default)]
    pub attempts: u64,
    /// The last error of a failed execution (kept for a dead-lettered result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the checkpoint was written, milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
}

impl RunState {
    /// The state of a run that has not visited a node yet.
    pub fn initial(request: &RunRequest) -> Result<RunState, DurableError> {
        let store = match &request.store {
            Value::Object(m) => m.clone(),
            other => {
                return Err(DurableError::BadInput(format!(
                    "the initial store must be a JSON object, got {}",
                    json_kind(other)
                )))
            }
        };
        Ok(RunState {
            format: FORMAT_VERSION,
            run_id: request.run_id.clone(),
            flow: request.flow.clone(),
            flow_version: request.flow_version.clone(),
            input: Some(store.clone()),
            store,
            params: request.params.clone(),
            trace: request.trace.clone(),
            trace_id: trace_id_for(&request.run_id),
            next: None,
            steps: 0,
            checkpoints: 0,
            last_node: None,
            last_action: None,
            batch: None,
            phase: RunPhase::Running,
            attempts: 0,
            last_error: None,
            updated_unix_ms: now_ms(),
        })
    }

    /// The checkpoint as JSON bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DurableError> {
        serde_json::to_vec(self).map_err(|e| DurableError::Format { what: "a checkpoint", reason: e.to_string() })
    }

    /// A checkpoint read back; another format version is a [`DurableError::Version`].
    pub fn from_bytes(bytes: &[u8]) -> Result<RunState, DurableError> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(bytes)
            .map_err(|e| DurableError::Format { what: "a checkpoint", reason: e.to_string() })?;
        if head.format != FORMAT_VERSION {
            return Err(DurableError::Version(format!(
                "a checkpoint of format {} (this build reads {FORMAT_VERSION})",
                head.format
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| DurableError::Format { what: "a checkpoint", reason: e.to_string() })
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A fresh run id: 32 hex digits, which are also the run's trace id.
pub fn new_run_id() -> String {
    crate::trace::recorder::new_trace_id().to_string()
}

/// The trace id of a run: its id when that is 32 hex digits, else a hash of it.
pub fn trace_id_for(run_id: &str) -> TraceId {
    if run_id.len() == 32 {
        if let Ok(v) = u128::from_str_radix(run_id, 16) {
            return TraceId(v);
        }
    }
    // FNV-1a, 128-bit: stable across processes and builds.
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in run_id.bytes() {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    TraceId(h)
}

/// Where checkpoints are kept. Implementations: [`EmbeddedStore`] (local disk) and, with
/// feature `nats`, `nats::KvCheckpoints` (JetStream KV).
pub trait CheckpointStore: Send + Sync + 'static {
    /// The run's last checkpoint, if any.
    fn load<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<Option<RunState>, DurableError>>;
    /// Writes the run's checkpoint, replacing the previous one; durable when this returns.
    fn save<'a>(&'a self, state: &'a RunState) -> BoxFuture<'a, Result<(), DurableError>>;
    /// Removes the run's checkpoint.
    fn remove<'a>(&'a self, run_id: &'a str) -> BoxFuture<'a, Result<(), DurableError>>;
    /// The ids of every run with a checkpoint.
    fn run_ids(&self) -> BoxFuture<'_, Result<Vec<String>, DurableError>>;
}

/// A flow registered for durable runs, with its version and its nodes by name.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) flow: Flow,
    pub(crate) version: Option<String>,
    nodes: Arc<HashMap<String, NodeRef>>,
}

/// Flows by registered name.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    flows: HashMap<String, Registered>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("flows", &self.names()).finish()
    }
}

impl Registry {
    /// Registers `flow` as `name`. Its root flow's nodes must have distinct names: a
    /// checkpoint names the node to continue at.
    pub(crate) fn add(&mut self, name: &str, flow: &Flow, version: Option<String>) -> Result<(), DurableError> {
        let mut nodes: HashMap<String, NodeRef> = HashMap::new();
        let mut queue: VecDeque<NodeRef> = flow.start_node().into_iter().collect();
        while let Some(n) = queue.pop_front() {
            if let Some(seen) = nodes.get(n.name()) {
                if !Arc::ptr_eq(&seen.0, &n.0) {
                    return Err(DurableError::Config(format!(
                        "flow '{name}' has two nodes named '{}': a durable flow's nodes need distinct names",
                        n.name()
                    )));
                }
                continue;
            }
            for a in n.successor_actions() {
                if let Some(s) = n.successor(&a) {
                    queue.push_back(s);
                }
            }
            nodes.insert(n.name().to_owned(), n);
        }
        self.flows.insert(name.to_owned(), Registered { flow: flow.clone(), version, nodes: Arc::new(nodes) });
        Ok(())
    }

    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.flows.keys().cloned().collect();
        v.sort();
        v
    }

    pub(crate) fn get(&self, name: &str) -> Result<&Registered, DurableError> {
        self.flows.get(name).ok_or_else(|| DurableError::UnknownFlow { flow: name.to_owned(), known: self.names() })
    }
}

/// The engine hook of one execution: it starts the root flow at the checkpoint's next node
/// and writes a checkpoint after every visit.
struct CheckpointHook {
    store: Arc<dyn CheckpointStore>,
    /// Set when a checkpoint could not be written: the run failed for the store, not itself.
    save_failed: std::sync::atomic::AtomicBool,
    nodes: Arc<HashMap<String, NodeRef>>,
    state: parking_lot::Mutex<RunState>,
    resumed: bool,
}

impl RunHook for CheckpointHook {
    fn resume_at(&self, _start: Option<&NodeRef>) -> Result<Option<(NodeRef, u64)>, Error> {
        if !self.resumed {
            return Ok(None);
        }
        let state = self.state.lock();
        let Some(next) = &state.next else { return Ok(None) };
        match self.nodes.get(next) {
            Some(n) => Ok(Some((n.clone(), state.steps))),
            None => Err(crate::error::ConfigError::new(
                format!("the checkpoint of run '{}'", state.run_id),
                next.clone(),
                format!("continues at a node flow '{}' does not have (was the flow changed?)", state.flow),
            )
            .into()),
        }
    }

    fn visited<'a>(&'a self, v: Visited<'a>) -> BoxFuture<'a, Result<(), Error>> {
        let snapshot = {
            let mut s = self.state.lock();
            s.store = match v.shared.to_json() {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            s.next = v.next.map(|n| n.name().to_owned());
            s.batch = None;
            s.steps = v.steps;
            s.checkpoints += 1;
            s.last_node = Some(v.node.name().to_owned());
            s.phase = match (v.waiting_for, v.next) {
                (Some(key), Some(n)) => RunPhase::Suspended { node: n.name().to_owned(), key: key.to_owned() },
                (_, None) => RunPhase::Finished,
                _ => RunPhase::Running,
            };
            if let Some(a) = v.action {
                s.last_action = a.as_str().map(str::to_owned);
            }
            s.updated_unix_ms = now_ms();
            s.clone()
        };
        Box::pin(self.save(snapshot))
    }

    fn batch_resume(&self, node: &NodeRef) -> Option<BatchProgress> {
        let state = self.state.lock();
        let b = state.batch.as_ref().filter(|b| b.node == node.name())?;
        Some(BatchProgress { sets: b.sets.clone(), done: b.done })
    }

    fn batch_step<'a>(
        &'a self,
        node: &'a NodeRef,
        progress: &'a BatchProgress,
        shared: &'a SharedStore,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let snapshot = {
            let mut s = self.state.lock();
            s.store = match shared.to_json() {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            s.next = Some(node.name().to_owned());
            s.batch = Some(BatchCheckpoint {
                node: node.name().to_owned(),
                sets: progress.sets.clone(),
                done: progress.done,
            });
            s.checkpoints += 1;
            s.updated_unix_ms = now_ms();
            s.clone()
        };
        Box::pin(self.save(snapshot))
    }
}

impl CheckpointHook {
    async fn save(&self, snapshot: RunState) -> Result<(), Error> {
        self.store.save(&snapshot).await.map_err(|e| {
            self.save_failed.store(true, std::sync::atomic::Ordering::Relaxed);
            Error::Engine(format!("checkpoint failed: {e}"))
        })
    }
}

/// How one execution of a durable run ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The flow returned: its action and final store.
    Completed { action: Option<String>, store: Value },
    /// The run waits for input (its checkpoint says where).
    Suspended { node: String, key: String },
    /// The run was refused before any node ran (unknown flow, bad store, version); final.
    Rejected(DurableError),
    /// The flow failed (a node error, a panic); may be retried. `attempts` counts executions
    /// so far.
    Failed { error: Error, attempts: u64 },
    /// The checkpoint store failed (read or write): not the run's fault, retry later.
    Unavailable(Error),
    /// The run has used up its attempts (its workers died or it failed each time).
    Exhausted { attempts: u64, last_error: Option<String> },
}

/// One execution of a durable run, ready to start: what [`prepare`] makes of a request and
/// its checkpoint, for [`DurableRuns`] or a worker's [`Runtime`] to run.
pub(crate) struct Prepared {
    /// The root flow with the run's trace fields (its tracer: the caller's, else the
    /// runtime's, else the global one).
    pub(crate) traced: TracedFlow,
    pub(crate) shared: SharedStore,
    /// Params and the durable parts (the checkpoint hook, the trace id, the resume span).
    pub(crate) options: RunOptions,
    hook: Arc<CheckpointHook>,
    attempts: u64,
}

impl Prepared {
    /// Runs it here, under a supervisor of its own, or through `runtime` (its admission
    /// limit, its tracer, its supervision).
    pub(crate) async fn run(&self, runtime: Option<&Runtime>) -> Outcome {
        let res = match runtime {
            Some(rt) => match rt.spawn_with(&self.traced, &self.shared, self.options.clone()).await {
                Ok(handle) => handle.await,
                Err(e) => return Outcome::Unavailable(e),
            },
            None => {
                let (root, mut planned) = self.traced.plan(None);
                planned.params.clone_from(&self.options.params);
                planned.durable.clone_from(&self.options.durable);
                crate::actors::supervisor::run(root, self.shared.clone(), planned).await
            }
        };
        self.conclude(res)
    }

    /// The outcome of the execution that ended with `res`.
    pub(crate) fn conclude(&self, res: Result<crate::Action, Error>) -> Outcome {
        match res {
            Ok(action) => {
                Outcome::Completed { action: action.as_str().map(str::to_owned), store: self.shared.to_json() }
            }
            Err(Error::Suspended { node, key }) => Outcome::Suspended { node, key },
            Err(e) if self.hook.save_failed.load(std::sync::atomic::Ordering::Relaxed) => Outcome::Unavailable(e),
            Err(error) => Outcome::Failed { error, attempts: self.attempts },
        }
    }
}

/// Reads the run's checkpoint and makes the execution that continues it; `Err` holds the
/// outcome when no node is to run (refused, finished, suspended, out of attempts). With
/// `max_attempts`, the attempt is counted in the checkpoint before any node runs, so a run
/// whose workers keep dying stops after that many.
pub(crate) async fn prepare(
    registry: &Registry,
    store: &Arc<dyn CheckpointStore>,
    request: &RunRequest,
    tracer: Option<&Tracer>,
    worker: &str,
    delivery: u64,
    max_attempts: Option<u64>,
) -> Result<Prepared, Outcome> {
    if request.format != FORMAT_VERSION {
        return Err(Outcome::Rejected(DurableError::Version(format!(
            "a request of format {} (this worker reads {FORMAT_VERSION})",
            request.format
        ))));
    }
    let reg = registry.get(&request.flow).map_err(Outcome::Rejected)?;
    if let (Some(want), Some(have)) = (&request.flow_version, &reg.version) {
        if want != have {
            return Err(Outcome::Rejected(DurableError::Version(format!(
                "the run wants flow '{}' version {want}, this worker has version {have}",
                request.flow
            ))));
        }
    }
    let mut state = match store.load(&request.run_id).await {
        Ok(Some(s)) => s,
        Ok(None) => RunState::initial(request).map_err(Outcome::Rejected)?,
        Err(e @ DurableError::Version(_)) => return Err(Outcome::Rejected(e)),
        Err(e) => return Err(Outcome::Unavailable(Error::Engine(format!("cannot load the checkpoint: {e}")))),
    };
    let resumed = state.checkpoints > 0;
    match &state.phase {
        RunPhase::Finished => {
            return Err(Outcome::Completed { action: state.last_action.clone(), store: Value::Object(state.store) })
        }
        RunPhase::Suspended { node, key } => return Err(Outcome::Suspended { node: node.clone(), key: key.clone() }),
        RunPhase::Running => {}
    }
    if let Some(max) = max_attempts {
        if state.attempts >= max {
            return Err(Outcome::Exhausted { attempts: state.attempts, last_error: state.last_error.clone() });
        }
        state.attempts += 1;
        if let Err(e) = store.save(&state).await {
            return Err(Outcome::Unavailable(Error::Engine(format!("cannot write the checkpoint: {e}"))));
        }
    }
    let attempts = state.attempts;
    let shared = SharedStore::from_json(Value::Object(state.store.clone()));
    let mut options = RunOptions::new();
    if !state.params.is_empty() {
        options = options.params(state.params.clone());
    }
    let traced = traced_flow(&reg.flow, &state, tracer);
    let resume = resumed.then(|| {
        serde_json::json!({
            "worker": worker,
            "run_id": state.run_id,
            "node": state.next,
            "steps": state.steps,
            "checkpoints": state.checkpoints,
            "delivery": delivery,
            "batch": state.batch.as_ref().map(|b| serde_json::json!({
                "node": b.node, "done": b.done, "of": b.sets.len(),
            })),
        })
    });
    let trace_id = state.trace_id;
    let input = state.input.clone().map(|m| SharedStore::from_json(Value::Object(m)).snapshot());
    let hook = Arc::new(CheckpointHook {
        store: Arc::clone(store),
        save_failed: Default::default(),
        nodes: Arc::clone(&reg.nodes),
        state: parking_lot::Mutex::new(state),
        resumed,
    });
    options.durable = Some(DurableParts { hook: hook.clone(), trace_id, resume, input });
    Ok(Prepared { traced, shared, options, hook, attempts })
}

/// The run's root flow under its trace fields: the same name, session, user, tags, version
/// and metadata on every worker.
fn traced_flow(flow: &Flow, state: &RunState, tracer: Option<&Tracer>) -> TracedFlow {
    let f = &state.trace;
    let mut t = flow.traced(f.name.clone().unwrap_or_else(|| state.flow.clone()));
    if let Some(s) = &f.session_id {
        t = t.session_id(s.clone());
    }
    if let Some(u) = &f.user_id {
        t = t.user_id(u.clone());
    }
    for tag in &f.tags {
        t = t.tag(tag.clone());
    }
    if let Some(v) = &state.flow_version {
        t = t.version(v.clone());
    }
    for (k, v) in &f.metadata {
        t = t.metadata(k.clone(), v.clone());
    }
    if let Some(tracer) = tracer {
        t = t.tracer(tracer);
    }
    t
}

/// How a run ended (or where it stopped), as kept under its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResultStatus {
    /// The flow returned.
    Completed,
    /// The run waits for input (`resume` continues it).
    Suspended,
    /// The run was refused (unknown flow, bad store, version mismatch) or failed for good.
    Failed,
    /// The run failed on every one of its allowed deliveries; the error is the last one.
    DeadLettered,
}

/// A run's result: its status, and its final store or its error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The run.
    pub run_id: String,
    /// The registered flow name.
    pub flow: String,
    /// How it ended.
    pub status: ResultStatus,
    /// The flow's last action, when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The final shared store, when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<Value>,
    /// The error, when failed or dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error's kind (`unknown_flow`, `bad_input`, `version`, `node_error`, `panic`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// The node and key a suspended run waits at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<(String, String)>,
    /// Deliveries (executions) it took.
    pub deliveries: u64,
    /// The worker that wrote the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When, milliseconds since the Unix epoch.
    pub finished_unix_ms: u64,
}

impl RunResult {
    pub(crate) fn new(request: &RunRequest, status: ResultStatus, worker: &str, deliveries: u64) -> RunResult {
        RunResult {
            run_id: request.run_id.clone(),
            flow: request.flow.clone(),
            status,
            action: None,
            store: None,
            error: None,
            error_kind: None,
            waiting: None,
            deliveries,
            worker: Some(worker.to_owned()),
            finished_unix_ms: now_ms(),
        }
    }

    pub(crate) fn from_outcome(request: &RunRequest, outcome: Outcome, worker: &str, deliveries: u64) -> RunResult {
        match outcome {
            Outcome::Completed { action, store } => RunResult {
                action,
                store: Some(store),
                ..RunResult::new(request, ResultStatus::Completed, worker, deliveries)
            },
            Outcome::Suspended { node, key } => RunResult {
                waiting: Some((node, key)),
                ..RunResult::new(request, ResultStatus::Suspended, worker, deliveries)
            },
            Outcome::Rejected(e) => RunResult::failed(request, ResultStatus::Failed, &e, worker, deliveries),
            Outcome::Failed { error: e, .. } | Outcome::Unavailable(e) => RunResult {
                error: Some(e.to_string()),
                error_kind: Some(e.kind().to_owned()),
                ..RunResult::new(request, ResultStatus::Failed, worker, deliveries)
            },
            Outcome::Exhausted { attempts, last_error } => RunResult {
                error: Some(last_error.unwrap_or_else(|| format!("no attempt finished ({attempts} attempts)"))),
                error_kind: Some("dead_lettered".into()),
                ..RunResult::new(request, ResultStatus::DeadLettered, worker, deliveries)
            },
        }
    }

    pub(crate) fn failed(
        request: &RunRequest,
        status: ResultStatus,
        e: &DurableError,
        worker: &str,
        deliveries: u64,
    ) -> RunResult {
        RunResult {
            error: Some(e.to_string()),
            error_kind: Some(e.kind().to_owned()),
            ..RunResult::new(request, status, worker, deliveries)
        }
    }
}

impl DurableError {
    /// A short machine-readable kind, as in a [`RunResult`]'s `error_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            DurableError::Store(_) => "store",
            DurableError::Format { .. } => "bad_input",
            DurableError::UnknownFlow { .. } => "unknown_flow",
            DurableError::Version(_) => "version",
            DurableError::BadInput(_) => "bad_input",
            DurableError::NotFound(_) => "not_found",
            DurableError::NotSuspended { .. } => "not_suspended",
            DurableError::Config(_) => "config",
            DurableError::Nats(_) => "nats",
            DurableError::Timeout(_) => "timeout",
        }
    }
}

impl RunRequest {
    /// The request that continues a checkpointed run (its store is the checkpoint's).
    pub(crate) fn continuing(state: &RunState) -> RunRequest {
        RunRequest {
            format: FORMAT_VERSION,
            run_id: state.run_id.clone(),
            flow: state.flow.clone(),
            flow_version: state.flow_version.clone(),
            store: Value::Object(state.store.clone()),
            params: state.params.clone(),
            trace: state.trace.clone(),
        }
    }
}

/// A suspended run's state with `input` written under the awaited key, ready to continue.
pub(crate) fn with_input(mut state: RunState, input: Value) -> Result<RunState, DurableError> {
    match &state.phase {
        RunPhase::Suspended { key, .. } => {
            let key = key.clone();
            state.store.insert(key, input);
            state.phase = RunPhase::Running;
            state.updated_unix_ms = now_ms();
            Ok(state)
        }
        other => Err(DurableError::NotSuspended {
            run_id: state.run_id.clone(),
            state: match other {
                RunPhase::Running => "running".into(),
                RunPhase::Finished => "finished".into(),
                RunPhase::Suspended { .. } => "suspended".into(),
            },
        }),
    }
}

/// Durable runs in this process, checkpointed to a [`CheckpointStore`] (such as the embedded
/// one): a run interrupted by a crash is continued with [`resume`](Self::resume) after a
/// restart, from its last checkpoint.
///
/// ```no_run
/// # async fn demo(flow: flowtrace::Flow) -> Result<(), flowtrace::durable::DurableError> {
/// use flowtrace::durable::{DurableRuns, EmbeddedStore, Submission};
/// let runs = DurableRuns::builder(EmbeddedStore::open("runs.redb")?).flow("support", &flow)?.build();
/// // After a restart: continue whatever was interrupted.
/// for id in runs.unfinished().await? {
///     runs.resume(&id, None).await?;
/// }
/// let result = runs.run(Submission::new("support").store(serde_json::json!({"ticket": "…"}))).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DurableRuns {
    registry: Arc<Registry>,
    store: Arc<dyn CheckpointStore>,
    tracer: Option<Tracer>,
    worker: String,
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for DurableRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableRuns").field("flows", &self.registry.names()).field("worker", &self.worker).finish()
    }
}

/// Builds [`DurableRuns`].
pub struct DurableRunsBuilder {
    registry: Registry,
    store: Arc<dyn CheckpointStore>,
    tracer: Option<Tracer>,
    worker: String,
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for DurableRunsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableRunsBuilder").field("flows", &self.registry.names()).finish()
    }
}

/// This process's name as a worker: `FLOWTRACE_WORKER`, else host name and pid.
pub fn default_worker_name() -> String {
    std::env::var("FLOWTRACE_WORKER").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "localhost".into());
        format!("{host}-{}", std::process::id())
    })
}

impl DurableRunsBuilder {
    /// Registers `flow` under `name`.
    pub fn flow(mut self, name: &str, flow: &Flow) -> Result<Self, DurableError> {
        self.registry.add(name, flow, None)?;
        Ok(self)
    }
    /// Registers `flow` under `name` at `version`; runs submitted for another version are refused.
    pub fn flow_version(mut self, name: &str, flow: &Flow, version: &str) -> Result<Self, DurableError> {
        self.registry.add(name, flow, Some(version.to_owned()))?;
        Ok(self)
    }
    /// Traces runs with this tracer (default: the global one).
    pub fn tracer(mut self, tracer: &Tracer) -> Self {
        self.tracer = Some(tracer.clone());
        self
    }
    /// The name this process gives itself in resume spans and results.
    pub fn worker_name(mut self, name: impl Into<String>) -> Self {
        self.worker = name.into();
        self
    }
    /// Runs through `runtime` (its admission limit, time and step limits, tracer and
    /// supervision) instead of a supervisor of each run's own.
    pub fn runtime(mut self, runtime: &Runtime) -> Self {
        self.runtime = Some(runtime.clone());
        self
    }
    /// The runner.
    pub fn build(self) -> DurableRuns {
        DurableRuns {
            registry: Arc::new(self.registry),
            store: self.store,
            tracer: self.tracer,
            worker: self.worker,
            runtime: self.runtime,
        }
    }
}

impl DurableRuns {
    /// A builder over `store`.
    pub fn builder(store: impl CheckpointStore) -> DurableRunsBuilder {
        DurableRunsBuilder {
            registry: Registry::default(),
            store: Arc::new(store),
            tracer: None,
            worker: default_worker_name(),
            runtime: None,
        }
    }

    /// Runs a submission here, checkpointing after each visit, and returns its result
    /// (`Suspended` when a node waits for input).
    pub async fn run(&self, submission: Submission) -> Result<RunResult, DurableError> {
        let request = submission.into_request();
        let outcome = self.execute(&request).await;
        Ok(RunResult::from_outcome(&request, outcome, &self.worker, 1))
    }

    /// Continues a run from its checkpoint: after a crash (`input` `None`), or with the input
    /// a suspended run waits for.
    pub async fn resume(&self, run_id: &str, input: Option<Value>) -> Result<RunResult, DurableError> {
        let state = self.store.load(run_id).await?.ok_or_else(|| DurableError::NotFound(run_id.to_owned()))?;
        let state = match input {
            Some(input) => {
                let s = with_input(state, input)?;
                self.store.save(&s).await?;
                s
            }
            None => state,
        };
        let request = RunRequest::continuing(&state);
        let outcome = self.execute(&request).await;
        Ok(RunResult::from_outcome(&request, outcome, &self.worker, 1))
    }

    /// Executes (or continues) one run here, through the runtime if there is one.
    async fn execute(&self, request: &RunRequest) -> Outcome {
        match prepare(&self.registry, &self.store, request, self.tracer.as_ref(), &self.worker, 1, None).await {
            Ok(p) => p.run(self.runtime.as_ref()).await,
            Err(outcome) => outcome,
        }
    }

    /// A run's checkpoint.
    pub async fn state(&self, run_id: &str) -> Result<Option<RunState>, DurableError> {
        self.store.load(run_id).await
    }

    /// The runs whose checkpoint says they were running (interrupted): resume these after a
    /// restart.
    pub async fn unfinished(&self) -> Result<Vec<String>, DurableError> {
        let mut out = Vec::new();
        for id in self.store.run_ids().await? {
            if let Some(s) = self.store.load(&id).await? {
                if s.phase == RunPhase::Running {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }
}
