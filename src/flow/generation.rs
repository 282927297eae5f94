//! LLM calls as a node records them from `exec`: a [`Generation`] handed to
//! [`ExecContext::generation`](super::ExecContext::generation), and the observation types a
//! node can be declared as.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};

/// The kind of observation a node shows as in Langfuse (`langfuse.observation.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ObservationType {
    /// A plain span (the default).
    Span,
    /// An LLM call.
    Generation,
    /// An agent: decides which tools to call.
    Agent,
    /// A tool an agent calls.
    Tool,
    /// A chain of steps.
    Chain,
    /// Fetches context (a search, a vector store).
    Retriever,
    /// Computes embeddings.
    Embedding,
    /// Checks input or output (safety, policy).
    Guardrail,
    /// Judges an output.
    Evaluator,
}

impl ObservationType {
    /// Langfuse's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObservationType::Span => "span",
            ObservationType::Generation => "generation",
            ObservationType::Agent => "agent",
            ObservationType::Tool => "tool",
            ObservationType::Chain => "chain",
            ObservationType::Retriever => "retriever",
            ObservationType::Embedding => "embedding",
            ObservationType::Guardrail => "guardrail",
            ObservationType::Evaluator => "evaluator",
        }
    }
}

/// One LLM call, built while it happens and recorded with
/// [`ExecContext::generation`](super::ExecContext::generation). It starts when created.
///
/// ```
/// use flowtrace::Generation;
/// use serde_json::json;
/// let g = Generation::new("decide")
///     .model("gpt-4o-mini")
///     .model_parameter("temperature", 0.2)
///     .input(json!([{"role": "user", "content": "Hi"}]))
///     .output(json!({"role": "assistant", "content": "Hello"}))
///     .usage(12, 3)
///     .usage_detail("input_cached_tokens", 4)
///     .cost(0.000_018, 0.000_009)
///     .prompt("decide-prompt", 3);
/// # let _ = g;
/// ```
#[derive(Debug, Clone)]
pub struct Generation {
    pub(crate) name: Arc<str>,
    pub(crate) started: Instant,
    pub(crate) completion_start: Option<Instant>,
    pub(crate) model: Option<String>,
    pub(crate) model_parameters: Map<String, Value>,
    pub(crate) input: Option<Value>,
    pub(crate) output: Option<Value>,
    pub(crate) usage: BTreeMap<String, u64>,
    pub(crate) cost: BTreeMap<String, f64>,
    pub(crate) prompt: Option<(String, u32)>,
    pub(crate) error: Option<String>,
}

fn to_value<T: Serialize + ?Sized>(v: &T) -> Value {
    serde_json::to_value(v)
        .unwrap_or_else(|e| Value::String(format!("<unserialisable {}: {e}>", std::any::type_name::<T>())))
}

impl Generation {
    /// A generation named `name` (shown as the observation's name), starting now.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Generation {
            name: name.into(),
            started: Instant::now(),
            completion_start: None,
            model: None,
            model_parameters: Map::new(),
            input: None,
            output: None,
            usage: BTreeMap::new(),
            cost: BTreeMap::new(),
            prompt: None,
            error: None,
        }
    }
    /// Sets when the call started (default: when the generation was created).
    pub fn started_at(mut self, at: Instant) -> Self {
        self.started = at;
        self
    }
    /// The model, as the provider names it.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }
    /// One model parameter (`temperature`, `max_tokens`, …).
    pub fn model_parameter(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        self.model_parameters.insert(key.into(), to_value(&value));
        self
    }
    /// What was sent: the messages (or a prompt string).
    pub fn input(mut self, input: impl Serialize) -> Self {
        self.input = Some(to_value(&input));
        self
    }
    /// What came back.
    pub fn output(mut self, output: impl Serialize) -> Self {
        self.output = Some(to_value(&output));
        self
    }
    /// Input and output tokens; `total` is their sum unless set with [`usage_detail`](Self::usage_detail).
    pub fn usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage.insert("input".into(), input_tokens);
        self.usage.insert("output".into(), output_tokens);
        self.usage.entry("total".into()).or_insert(input_tokens + output_tokens);
        self
    }
    /// A token count of any kind (`total`, `input_cached_tokens`, `output_reasoning_tokens`, …).
    pub fn usage_detail(mut self, kind: impl Into<String>, tokens: u64) -> Self {
        self.usage.insert(kind.into(), tokens);
        self
    }
    /// Input and output cost in USD (`total` is their sum). Optional: Langfuse computes the
    /// cost from the model and the usage when none is given.
    pub fn cost(mut self, input_usd: f64, output_usd: f64) -> Self {
        self.cost.insert("input".into(), input_usd);
        self.cost.insert("output".into(), output_usd);
        self.cost.insert("total".into(), input_usd + output_usd);
        self
    }
    /// A cost of any kind, in USD.
    pub fn cost_detail(mut self, kind: impl Into<String>, usd: f64) -> Self {
        self.cost.insert(kind.into(), usd);
        self
    }
    /// Marks when the first token arrived (now).
    pub fn completion_started(mut self) -> Self {
        self.completion_start = Some(Instant::now());
        self
    }
    /// Marks when the first token arrived.
    pub fn completion_started_at(mut self, at: Instant) -> Self {
        self.completion_start = Some(at);
        self
    }
    /// The Langfuse-managed prompt used, by name and version.
    pub fn prompt(mut self, name: impl Into<String>, version: u32) -> Self {
        self.prompt = Some((name.into(), version));
        self
    }
    /// The call failed (an HTTP 429, a timeout, …): recorded as a failed generation.
    pub fn failed(mut self, message: impl Into<String>) -> Self {
        self.error = Some(message.into());
        self
    }
}

/// Where an exec's generations go when the run is traced: implemented by the run's recorder,
/// so `flow` knows nothing of how they are recorded.
pub(crate) trait GenerationSink: Send + Sync {
    /// Records `g`, ended now, under the span `parent`.
    fn generation(&self, parent: u64, g: Generation);
}
