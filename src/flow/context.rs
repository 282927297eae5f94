//! What a node's hooks can see: the shared store, the run's params, the current attempt.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::generation::{Generation, GenerationSink};
use super::store::SharedStore;

/// A run's params: a string-keyed JSON map, as PocketFlow's `params` dict.
pub type Params = serde_json::Map<String, Value>;

/// What `prep` and `post` receive: the shared store and the run's params.
#[derive(Debug)]
pub struct Context<'a> {
    pub(crate) shared: &'a SharedStore,
    pub(crate) params: &'a Arc<Params>,
    pub(crate) node: &'a str,
}

impl<'a> Context<'a> {
    /// The run's shared store.
    pub fn shared(&self) -> &'a SharedStore {
        self.shared
    }

    /// The run's params (the flow's, overlaid by batch-flow params).
    pub fn params(&self) -> &'a Params {
        self.params
    }

    /// One param read as a `T`; `None` when absent or of another shape.
    pub fn param<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.params.get(key).and_then(|v| T::deserialize(v).ok())
    }

    /// The name of the node running.
    pub fn node_name(&self) -> &'a str {
        self.node
    }

    /// Outside input (a person's approval, an edit) under store key `key`: the value once it
    /// has been given, else [`crate::Error::Suspended`], which suspends the run here. Return
    /// it with `?` from `prep`.
    ///
    /// A durable run (`flowtrace::durable`) is checkpointed when it suspends and holds no
    /// worker while it waits; `resume(run_id, input)` writes the input to `key` and the run
    /// visits this node again, from `prep`. A run that is not durable just ends with the error.
    pub fn wait_for<T: DeserializeOwned + Clone + 'static>(&self, key: &str) -> Result<T, crate::Error> {
        match self.shared.get::<T>(key) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(crate::Error::Suspended { node: self.node.to_owned(), key: key.to_owned() }),
            Err(e) => {
                Err(crate::Error::Node { node: self.node.to_owned(), phase: crate::Phase::Prep, source: Box::new(e) })
            }
        }
    }
}

/// What `exec` and `exec_fallback` receive: the run's params and the attempt in progress.
///
/// State is per attempt and per item, never shared between parallel items (PocketFlow's
/// `cur_retry` race in parallel batches does not exist here).
#[derive(Clone)]
pub struct ExecContext {
    /// `None` for no params: an exec context is made per attempt, and a reference count of
    /// the run's params (shared by every run of a flow, so by every worker thread) per node
    /// visit cost more than the rest of a short visit.
    pub(crate) params: Option<Arc<Params>>,
    pub(crate) attempt: u32,
    pub(crate) max_retries: u32,
    pub(crate) node: NodeName,
    pub(crate) item: Option<usize>,
    /// Where generations go, and the attempt span they hang under; `None` when untraced.
    pub(crate) generations: Option<(Arc<dyn GenerationSink>, u64)>,
}

/// A node's name as an exec context holds it: a literal (a node type's own name, the common
/// case) without a reference count to take and drop per attempt, or a shared string.
#[derive(Clone)]
pub(crate) enum NodeName {
    Static(&'static str),
    Shared(Arc<str>),
}

impl NodeName {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            NodeName::Static(s) => s,
            NodeName::Shared(s) => s,
        }
    }
}

/// The params of a run that has none.
pub(crate) fn no_params() -> &'static Params {
    static EMPTY: std::sync::OnceLock<Params> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Params::new)
}

impl std::fmt::Debug for ExecContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecContext")
            .field("attempt", &self.attempt)
            .field("max_retries", &self.max_retries)
            .field("node", &self.node.as_str())
            .field("item", &self.item)
            .field("traced", &self.generations.is_some())
            .finish()
    }
}

impl ExecContext {
    /// The 0-based attempt number (PocketFlow's `cur_retry`). During `exec_fallback` it is
    /// `max_retries - 1`.
    ///
    /// Every count in flowtrace starts at 0: this attempt number, the attempt spans (`attempt
    /// 0`, `attempt 1`, … and their `attempt` attribute), batch items ([`item_index`](Self::item_index),
    /// `item 0` spans) and a batch flow's runs (`batch 0` spans), as PocketFlow's indices do.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The node's configured number of attempts.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Whether this is the last attempt before the fallback.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt + 1 >= self.max_retries
    }

    /// The run's params.
    pub fn params(&self) -> &Params {
        match &self.params {
            Some(p) => p,
            None => no_params(),
        }
    }

    /// One param read as a `T`.
    pub fn param<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.params().get(key).and_then(|v| T::deserialize(v).ok())
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        self.node.as_str()
    }

    /// The index of the batch item being processed, for batch nodes.
    pub fn item_index(&self) -> Option<usize> {
        self.item
    }

    /// Records an LLM call as a generation under this attempt (ended now). Call it once per
    /// call: several calls give several generations. Does nothing when the run is not traced,
    /// so the workflow behaves the same either way.
    pub fn generation(&self, g: Generation) {
        if let Some((sink, parent)) = &self.generations {
            sink.generation(*parent, g);
        }
    }

    /// Whether generations recorded here go anywhere (the run is traced).
    pub fn is_traced(&self) -> bool {
        self.generations.is_some()
    }
}

/// Builds [`Params`] from `key => value` pairs; each value is anything `serde_json::Value`
/// converts from (strings, numbers, booleans, `json!(..)` values).
///
/// ```
/// use flowtrace::prelude::*;
/// let p: Params = params! { "user" => "ada", "limit" => 3 };
/// assert_eq!(p["user"], "ada");
/// assert_eq!(p["limit"], 3);
/// ```
///
/// `Params` is also a map from pairs: `Params::from_iter([("user".to_owned(), "ada".into())])`.
#[macro_export]
macro_rules! params {
    () => { $crate::Params::new() };
    ($($key:expr => $value:expr),+ $(,)?) => {{
        let mut p = $crate::Params::new();
        $( p.insert(::std::string::String::from($key), ::core::convert::Into::into($value)); )+
        p
    }};
}
