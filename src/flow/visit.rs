//! The machinery of one node visit: the erased node interface, panic containment, and the
//! retry loop shared by plain nodes and batch items.

use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Once, OnceLock};

use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::Instrument;

use super::action::Action;
use super::context::{ExecContext, Params};
use super::graph::{NodeConfig, NodeDef, NodeRef};
use super::store::SharedStore;
use crate::error::{BoxError, Error, NodeResult, Phase};
use crate::trace::model::{SpanId, SpanKind};
use crate::trace::recorder::OpenSpan;
use crate::trace::Recorder;

/// Limits that hold for a whole run.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunLimits {
    pub(crate) max_steps: Option<u64>,
}

/// How a durable run sees its root flow: where it starts, and a checkpoint after each visit.
/// The engine knows nothing more of durability (`crate::actors::durable` does the rest).
pub(crate) trait RunHook: Send + Sync + 'static {
    /// The node to start at and the steps already taken, instead of the flow's start node
    /// (`None`: start at `start`, from step 0).
    fn resume_at(&self, start: Option<&NodeRef>) -> Result<Option<(NodeRef, u64)>, Error>;
    /// After each visit of the root flow that ended in an action, or suspended the run
    /// (`action` is `None`, `next` is the node that waits). An error ends the run.
    fn visited<'a>(&'a self, visit: Visited<'a>) -> BoxFuture<'a, Result<(), Error>>;
}

/// One finished visit of a durable run's root flow.
#[cfg_attr(not(feature = "durable"), allow(dead_code))]
pub(crate) struct Visited<'a> {
    pub(crate) node: &'a NodeRef,
    pub(crate) action: Option<&'a Action>,
    pub(crate) next: Option<&'a NodeRef>,
    /// The store key the run waits for, when the visit suspended it.
    pub(crate) waiting_for: Option<&'a str>,
    pub(crate) steps: u64,
    pub(crate) shared: &'a SharedStore,
}

/// What a visit needs from its run: the store, the run's params, and where to record spans.
#[derive(Clone)]
pub(crate) struct VisitCx {
    pub(crate) shared: SharedStore,
    pub(crate) params: Arc<Params>,
    pub(crate) trace: Option<Recorder>,
    pub(crate) parent: Option<SpanId>,
    pub(crate) limits: Arc<RunLimits>,
    /// A durable run's hook, for the root flow's loop only (it is not passed to the visits).
    pub(crate) hook: Option<Arc<dyn RunHook>>,
}

impl VisitCx {
    pub(crate) fn with_parent(&self, parent: Option<SpanId>) -> VisitCx {
        VisitCx { parent, ..self.clone() }
    }

    pub(crate) fn span(&self, kind: SpanKind, name: &Arc<str>) -> Option<OpenSpan> {
        self.trace.as_ref().map(|r| r.start(self.parent, kind, Arc::clone(name)))
    }

    /// A span starting at a clock reading taken by the caller (`None` when untraced).
    pub(crate) fn span_at(&self, kind: SpanKind, name: &Arc<str>, at: Option<std::time::Instant>) -> Option<OpenSpan> {
        match (&self.trace, at) {
            (Some(r), Some(at)) => Some(r.start_at(self.parent, kind, Arc::clone(name), at)),
            _ => None,
        }
    }
}

/// A node type behind the graph: one visit = prep, exec (retried), post.
pub(crate) trait ErasedNode: Send + Sync + 'static {
    fn visit<'a>(&'a self, node: &'a NodeRef, cx: &'a VisitCx) -> BoxFuture<'a, Result<Action, Error>>;
}

thread_local! {
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once, a panic hook that notes where a panic happened (for the error and the span)
/// and then calls the hook that was there before, so the application's own hook still runs.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let loc = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            PANIC_LOCATION.with(|p| *p.borrow_mut() = loc);
            previous(info);
        }));
    });
}

/// Runs a hook's future, turning a panic into [`Error::Panic`] naming the node and phase.
pub(crate) async fn contain<F: Future>(node: &str, phase: Phase, fut: F) -> Result<F::Output, Error> {
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(v) => Ok(v),
        Err(payload) => Err(panic_error(node, phase, payload)),
    }
}

pub(crate) fn panic_error(node: &str, phase: Phase, payload: Box<dyn std::any::Any + Send>) -> Error {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    };
    let location = PANIC_LOCATION.with(|p| p.borrow_mut().take());
    Error::Panic { node: node.to_owned(), phase, message, location }
}

/// A hook's error, named by node and phase. A flowtrace error raised inside a hook (a timeout,
/// a nested run's failure) passes through as it is.
pub(crate) fn hook_error(node: &str, phase: Phase, e: BoxError) -> Error {
    match e.downcast::<Error>() {
        Ok(inner) => *inner,
        Err(e) => Error::Node { node: node.to_owned(), phase, source: e },
    }
}

/// The exec side of a node, for the retry loop: one attempt, and the fallback.
pub(crate) trait ExecOps: Sync {
    type Out: serde::Serialize + Send;
    fn attempt(&self, cx: ExecContext) -> impl Future<Output = NodeResult<Self::Out>> + Send;
    fn fallback(&self, err: BoxError, cx: ExecContext) -> impl Future<Output = NodeResult<Self::Out>> + Send;
}

fn attempt_name(n: u32) -> Arc<str> {
    static NAMES: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let names = NAMES.get_or_init(|| (1..=16).map(|i| Arc::from(format!("attempt {i}"))).collect());
    names.get(n as usize - 1).cloned().unwrap_or_else(|| Arc::from(format!("attempt {n}")))
}

static WAIT_NAME: OnceLock<Arc<str>> = OnceLock::new();

/// PocketFlow's retry loop (spec §2): attempts `0..max_retries`, a wait between attempts and
/// never after the last, then `exec_fallback` with the last error. Each attempt, wait and the
/// fallback is a span under `parent`.
pub(crate) async fn run_exec<O: ExecOps>(
    ops: &O,
    def: &NodeDef,
    cfg: &NodeConfig,
    params: &Arc<Params>,
    item: Option<usize>,
    trace: Option<(&Recorder, SpanId)>,
) -> Result<O::Out, Error> {
    let name = &*def.name;
    let mut attempt = 0;
    loop {
        let cx = ExecContext {
            params: Arc::clone(params),
            attempt,
            max_retries: cfg.max_retries,
            node: Arc::clone(&def.name),
            item,
        };
        let mut span = trace.map(|(r, p)| {
            let mut s = r.start(Some(p), SpanKind::Attempt, attempt_name(attempt + 1));
            s.attr("attempt", attempt + 1);
            s
        });
        let outcome = match cfg.timeout {
            Some(limit) => match tokio::time::timeout(limit, contain(name, Phase::Exec, ops.attempt(cx.clone()))).await
            {
                Ok(r) => r,
                Err(_) => Ok(Err(Box::new(Error::Timeout { node: Some(name.to_owned()), after: limit }) as BoxError)),
            },
            None => contain(name, Phase::Exec, ops.attempt(cx.clone()).instrument(exec_span(attempt))).await,
        };
        let err = match outcome {
            Ok(Ok(v)) => {
                if let Some(s) = span.take() {
                    s.end();
                }
                return Ok(v);
            }
            // A panic is not retried: it is a bug, not a transient failure.
            Err(panic) => {
                if let Some(s) = span.take() {
                    s.end_with(Err(&panic));
                }
                return Err(panic);
            }
            Ok(Err(e)) => e,
        };
        if let Some(s) = span.take() {
            let as_error = Error::Node { node: name.to_owned(), phase: Phase::Exec, source: err.to_string().into() };
            let status = match err.downcast_ref::<Error>() {
                Some(inner) => crate::trace::recorder::error_status(inner, r_switch_errors(trace)),
                None => crate::trace::recorder::error_status(&as_error, r_switch_errors(trace)),
            };
            s.fail(status);
        }
        if attempt + 1 >= cfg.max_retries {
            let mut fspan = trace.map(|(r, p)| r.start(Some(p), SpanKind::Fallback, Arc::clone(&def.names.fallback)));
            if let Some(s) = fspan.as_mut() {
                let msg = err.to_string();
                s.input(|| serde_json::json!({ "error": msg }));
            }
            let res = contain(name, Phase::Fallback, ops.fallback(err, cx)).await;
            let res = match res {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(hook_error(name, Phase::Exec, e)),
                Err(panic) => Err(panic),
            };
            if let Some(s) = fspan {
                s.end_with(res.as_ref().map(|_| ()));
            }
            return res;
        }
        if !cfg.wait.is_zero() {
            let wspan = trace.map(|(r, p)| {
                let name = WAIT_NAME.get_or_init(|| Arc::from("wait"));
                let mut s = r.start(Some(p), SpanKind::Wait, Arc::clone(name));
                s.attr("wait_ms", cfg.wait.as_secs_f64() * 1e3);
                s
            });
            tokio::time::sleep(cfg.wait).await;
            if let Some(s) = wspan {
                s.end();
            }
        }
        attempt += 1;
    }
}

fn exec_span(attempt: u32) -> tracing::Span {
    tracing::info_span!(target: "flowtrace::node", "phase", phase = "exec", attempt = attempt + 1)
}

fn r_switch_errors(trace: Option<(&Recorder, SpanId)>) -> bool {
    trace.map(|(r, _)| r.switches().errors).unwrap_or(true)
}
