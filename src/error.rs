//! The one public error type of a run, and the phase names errors point at.

use std::fmt;
use std::time::Duration;

/// A boxed error from user code: what node hooks return (as tower, axum and ractor do).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a node hook returns.
pub type NodeResult<T> = Result<T, BoxError>;

/// The phase of a node (or flow) an error or span belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    /// `prep`: reads the shared store.
    Prep,
    /// `exec`: the retried work.
    Exec,
    /// `exec_fallback`: called with the last `exec` error.
    Fallback,
    /// `post`: writes results and picks the action.
    Post,
}

impl Phase {
    /// The phase's name as PocketFlow spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prep => "prep",
            Phase::Exec => "exec",
            Phase::Fallback => "exec_fallback",
            Phase::Post => "post",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run did not produce an action.
///
/// Every variant that comes from user code names the node and the phase, so a failed run says
/// where it failed without a debugger. The original user error stays reachable through
/// [`std::error::Error::source`] and [`Error::user_error`], so callers can downcast it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node hook returned an error.
    #[error("node '{node}' failed in {phase}: {source}")]
    Node {
        /// The node's name.
        node: String,
        /// The phase that failed.
        phase: Phase,
        /// The error the hook returned.
        #[source]
        source: BoxError,
    },
    /// A node hook panicked; the panic was contained to this run.
    #[error("node '{node}' panicked in {phase}: {message}{}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panic {
        /// The node's name.
        node: String,
        /// The phase that panicked.
        phase: Phase,
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
    },
    /// The run, or one exec attempt, ran past its time limit.
    #[error("{}timed out after {:?}", node.as_ref().map(|n| format!("node '{n}' ")).unwrap_or_else(|| "run ".into()), after)]
    Timeout {
        /// The node whose exec attempt timed out; `None` for the whole run.
        node: Option<String>,
        /// The limit that was reached.
        after: Duration,
    },
    /// The run was cancelled before it finished.
    #[error("run cancelled: {reason}")]
    Cancelled {
        /// Who or what cancelled it.
        reason: String,
    },
    /// The flow visited more nodes than its step limit allows (a loop that never ends).
    #[error("flow '{flow}' exceeded its limit of {limit} steps")]
    MaxSteps {
        /// The flow that hit the limit.
        flow: String,
        /// The configured limit.
        limit: u64,
    },
    /// A parallel batch item or a batch-flow parameter set was malformed.
    #[error("node '{node}': {message}")]
    Batch {
        /// The batch node or flow.
        node: String,
        /// What was wrong.
        message: String,
    },
    /// A node suspended the run to wait for outside input ([`crate::Context::wait_for`]). A
    /// durable run is checkpointed here and continues when the input is given; any other run
    /// ends with this error.
    #[error("run suspended at node '{node}': waiting for input '{key}'")]
    Suspended {
        /// The node that waits.
        node: String,
        /// The store key the input will be written to.
        key: String,
    },
    /// The runtime refused the run (shut down, or at its in-flight limit).
    #[error("run refused: {0}")]
    Refused(String),
    /// A setting is invalid (a runtime built with an out-of-range value).
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The engine itself failed (an actor could not start): a bug or resource exhaustion.
    #[error("engine error: {0}")]
    Engine(String),
}

impl Error {
    /// The node the error points at, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Error::Node { node, .. }
            | Error::Panic { node, .. }
            | Error::Batch { node, .. }
            | Error::Suspended { node, .. } => Some(node),
            Error::Timeout { node, .. } => node.as_deref(),
            Error::MaxSteps { flow, .. } => Some(flow),
            _ => None,
        }
    }

    /// The phase the error points at, if any.
    pub fn phase(&self) -> Option<Phase> {
        match self {
            Error::Node { phase, .. } | Error::Panic { phase, .. } => Some(*phase),
            Error::Timeout { node: Some(_), .. } => Some(Phase::Exec),
            _ => None,
        }
    }

    /// The user error a hook returned, for downcasting (`err.user_error()?.downcast_ref::<MyErr>()`).
    pub fn user_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Error::Node { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }

    /// Whether the user error is of type `E` (shorthand for a downcast).
    pub fn is_user_error<E: std::error::Error + 'static>(&self) -> bool {
        self.user_error().is_some_and(|e| e.downcast_ref::<E>().is_some())
    }

    /// A short machine-readable kind, used as the error type in traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Node { .. } => "node_error",
            Error::Panic { .. } => "panic",
            Error::Timeout { .. } => "timeout",
            Error::Cancelled { .. } => "cancelled",
            Error::MaxSteps { .. } => "max_steps",
            Error::Batch { .. } => "batch",
            Error::Suspended { .. } => "suspended",
            Error::Refused(_) => "refused",
            Error::Config(_) => "config",
            Error::Engine(_) => "engine",
        }
    }

    /// The messages of the error and each of its sources, outermost first.
    pub fn chain(&self) -> Vec<String> {
        let mut out = vec![self.to_string()];
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            out.push(e.to_string());
            cur = e.source();
        }
        out
    }
}

/// A setting that cannot be used, from the environment or a builder: names it, shows the value
/// given, and says what was expected.
///
/// The one configuration error of the crate: [`Error::Config`], [`TracerError::Config`](crate::TracerError)
/// and the exporter builders all carry it. The value of a secret setting (a key, a token) is
/// never kept: it shows as `<redacted>`.
///
/// ```
/// let e = flowtrace::trace::TracingConfig::new().with_sample_rate(1.5).unwrap_err();
/// assert_eq!(e.variable, "sample_rate");
/// assert_eq!(e.to_string(), "sample_rate=\"1.5\": expected a number from 0 to 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {reason}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The environment variable (`LANGFUSE_HOST`) or builder setting (`max_in_flight`).
    pub variable: String,
    /// The value given (`<redacted>` for a secret).
    pub value: String,
    /// What was expected.
    pub reason: String,
}

impl ConfigError {
    /// An error about `variable`, given `value`, for `reason`.
    pub fn new(variable: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { variable: variable.into(), value: value.into(), reason: reason.into() }
    }
}
