//! Shared helpers for the behaviour tests: the spec's Number/Add/Mul nodes, warning capture,
//! and running a flow both untraced and traced.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::Layer;

/// `Number(n)`: prep sets `current = n`.
pub fn number(n: i64) -> NodeRef {
    FnNode::new(format!("Number({n})"))
        .prep(move |ctx| {
            ctx.shared().insert("current", n);
            Ok(Value::Null)
        })
        .into_node()
}

/// `Add(n)`: prep does `current += n`.
pub fn add(n: i64) -> NodeRef {
    FnNode::new(format!("Add({n})"))
        .prep(move |ctx| {
            ctx.shared().update("current", || 0_i64, |c| *c += n)?;
            Ok(Value::Null)
        })
        .into_node()
}

/// `Mul(n)`: prep does `current *= n`.
pub fn mul(n: i64) -> NodeRef {
    FnNode::new(format!("Mul({n})"))
        .prep(move |ctx| {
            ctx.shared().update("current", || 0_i64, |c| *c *= n)?;
            Ok(Value::Null)
        })
        .into_node()
}

/// A node whose post returns `action` (or no action).
pub fn signal(name: &str, action: Option<&'static str>) -> NodeRef {
    FnNode::new(name.to_owned()).post(move |_, _, _| Ok(Action::from(action))).into_node()
}

/// A node that writes `key = value` in prep.
pub fn set(key: &'static str, value: Value) -> NodeRef {
    FnNode::new(format!("Set({key})"))
        .prep(move |ctx| {
            ctx.shared().insert(key, value.clone());
            Ok(Value::Null)
        })
        .into_node()
}

/// `shared["current"]` as an integer.
pub fn current(shared: &SharedStore) -> i64 {
    shared.require::<i64>("current").expect("current is set")
}

struct WarnLayer(Arc<Mutex<Vec<String>>>);

struct MessageVisitor<'a>(&'a mut String);

impl tracing::field::Visit for MessageVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            *self.0 = value.to_owned();
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for WarnLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN && event.metadata().target().starts_with("flowtrace") {
            let mut msg = String::new();
            event.record(&mut MessageVisitor(&mut msg));
            self.0.lock().push(msg);
        }
    }
}

/// Collects flowtrace's warnings on this thread while the guard lives. Tests using it run on
/// tokio's current-thread runtime (`#[tokio::test]`), so every task of the run is on this
/// thread and its warnings are seen.
pub struct Warnings {
    seen: Arc<Mutex<Vec<String>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Warnings {
    /// Starts capturing: flowtrace's warn events on this thread are recorded until the guard
    /// is dropped.
    pub fn capture() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(WarnLayer(seen.clone()));
        Warnings { seen, _guard: tracing::subscriber::set_default(subscriber) }
    }

    /// Every warning message captured so far, in order.
    pub fn all(&self) -> Vec<String> {
        self.seen.lock().clone()
    }

    /// How many captured warnings contain `text`.
    pub fn containing(&self, text: &str) -> usize {
        self.seen.lock().iter().filter(|w| w.contains(text)).count()
    }
}

/// A tracer that keeps traces in memory.
pub fn memory_tracer() -> (Tracer, MemoryExporter) {
    let memory = MemoryExporter::new();
    (Tracer::builder().exporter(memory.clone()).build().expect("tracer"), memory)
}

/// Runs `flow` twice, on two copies of `initial`: untraced, then traced. Asserts both give the
/// same result and the same final store; returns the untraced result and store, and the trace.
pub async fn run_both(flow: &Flow, initial: Value) -> (Result<Action, String>, SharedStore, Arc<TraceRecord>) {
    run_pair(initial, async |s| flow.run(s).await, flow.traced("conformance")).await
}

/// The comparison behind [`run_both`] and [`run_batch_both`]: `untraced` and `traced` run on
/// two copies of `initial` and must agree; the traced run must leave a complete trace.
async fn run_pair(
    initial: Value,
    untraced: impl AsyncFnOnce(&SharedStore) -> Result<Action, flowtrace::Error>,
    traced: flowtrace::TracedFlow,
) -> (Result<Action, String>, SharedStore, Arc<TraceRecord>) {
    let plain = SharedStore::from_json(initial.clone());
    let r1 = untraced(&plain).await.map_err(|e| e.to_string());
    let (tracer, memory) = memory_tracer();
    let traced_store = SharedStore::from_json(initial);
    let r2 = traced.tracer(&tracer).run(&traced_store).await.map_err(|e| e.to_string());
    let report = tracer.flush(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "traced run lost spans: {report:?}");
    assert_eq!(r1, r2, "traced and untraced runs returned different results");
    assert_eq!(plain.to_json(), traced_store.to_json(), "traced and untraced runs left different stores");
    let trace = memory.traces().pop().expect("the traced run produced a trace");
    (r1, plain, trace)
}

/// Like [`run_both`], capturing flowtrace's warnings of each run separately (each under its
/// own [`Warnings`] guard, so call it without an outer capture). Asserts the traced run warns
/// exactly as the untraced one; returns the untraced result, store and warnings.
pub async fn run_both_warned(flow: &Flow, initial: Value) -> (Result<Action, String>, SharedStore, Vec<String>) {
    let plain = SharedStore::from_json(initial.clone());
    let capture = Warnings::capture();
    let r1 = flow.run(&plain).await.map_err(|e| e.to_string());
    let w1 = capture.all();
    drop(capture);

    let (tracer, memory) = memory_tracer();
    let traced = SharedStore::from_json(initial);
    let capture = Warnings::capture();
    let r2 = flow.traced("conformance").tracer(&tracer).run(&traced).await.map_err(|e| e.to_string());
    let report = tracer.flush(Duration::from_secs(10)).await;
    let w2 = capture.all();
    drop(capture);
    assert!(report.is_complete(), "traced run lost spans: {report:?}");
    assert_eq!(r1, r2, "traced and untraced runs returned different results");
    assert_eq!(plain.to_json(), traced.to_json(), "traced and untraced runs left different stores");
    assert_eq!(w1, w2, "traced and untraced runs warned differently");
    assert!(!memory.traces().is_empty(), "the traced run produced a trace");
    (r1, plain, w1)
}

/// A JSON object as params.
pub fn params(v: Value) -> Params {
    match v {
        Value::Object(m) => m,
        _ => panic!("params must be an object"),
    }
}

/// `json!` re-exported for brevity.
pub fn j(v: Value) -> Value {
    v
}

/// Asserts the run failed in `node`'s `phase` with a user error of type `E`.
pub fn assert_user_error<E: std::error::Error + 'static>(err: &flowtrace::Error, node: &str, phase: flowtrace::Phase) {
    assert!(err.is_user_error::<E>(), "expected a {} from the node, got: {err}", std::any::type_name::<E>());
    assert_eq!(err.node(), Some(node), "{err}");
    assert_eq!(err.phase(), Some(phase), "{err}");
}

/// A Python-style ValueError.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

/// A boxed [`ValueError`] with `msg`, as a node hook returns it.
pub fn value_error(msg: &str) -> flowtrace::BoxError {
    Box::new(ValueError(msg.to_owned()))
}

/// An empty JSON object (an empty initial store).
pub fn empty() -> Value {
    json!({})
}

/// Like [`run_both`], for a batch flow run at the top level (so its own params stay the base
/// its param sets are laid over): untraced, then traced; both must agree.
pub async fn run_batch_both(
    flow: &BatchFlow,
    initial: Value,
) -> (Result<Action, String>, SharedStore, Arc<TraceRecord>) {
    run_pair(initial, async |s| flow.run(s).await, flow.traced("conformance")).await
}

/// Polls `cond` until it holds or `limit` passes (actors stop asynchronously after replying).
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

/// Silences panics whose message is exactly `message` (a test's intended ones), passing every
/// other panic to the hook that was installed before.
pub fn silence_panics(message: &'static str) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&message) {
            previous(info);
        }
    }));
}
