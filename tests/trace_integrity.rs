//! What tracing guarantees about the trees it records: every flow and phase has its span,
//! trees nest and end, concurrent and nested runs keep their own traces, values are JSON and
//! inputs are snapshots, switches work, no signal handler is installed, slow exporters never
//! slow a run, and an overloaded pipeline says what it shed.
//!
//! Each `bug_NN` test is the guarantee that the Python reference tracer breaks as its bug NN
//! (`pocketflow-tracing-impl.md` §5).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowtrace::export::{ExportReport, Exporter};
use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;
use flowtrace::trace::{SpanKind, TracingConfig};
use serde_json::{json, Value};
use support::*;

async fn one_trace(flow: &Flow, shared: &SharedStore) -> TraceRecord {
    let (tracer, memory) = memory_tracer();
    flow.traced("T").tracer(&tracer).run(shared).await.unwrap();
    tracer.flush(Duration::from_secs(10)).await;
    (*memory.traces().pop().unwrap()).clone()
}

/// Bug 1: the PyPI tracer records no node spans for flows run synchronously.
#[tokio::test]
async fn bug_01_every_flow_gets_node_and_phase_spans() {
    let t = one_trace(&Flow::new(&number(1)), &SharedStore::new()).await;
    assert!(t.span("Number(1)").is_some_and(|s| s.kind == SpanKind::Node));
    for phase in ["prep", "exec", "post"] {
        assert!(t.span(&format!("Number(1).{phase}")).is_some(), "{phase}");
    }
}

/// Bug 2: tracing ran hooks on the original node, so batch-flow params vanished and
/// `cur_retry` raised. Here params and attempts are the same traced or not.
#[tokio::test]
async fn bug_02_tracing_does_not_change_params_or_attempts() {
    let node = FnNode::new("Item")
        .prep(|ctx| Ok(ctx.params().get("i").cloned().unwrap_or(json!("item-<missing>"))))
        .exec(|i, cx| async move {
            if cx.attempt() == 0 {
                Err(value_error("retry me"))
            } else {
                Ok(json!({ "i": i, "attempt": cx.attempt() }))
            }
        })
        .post(|ctx, _, out| {
            ctx.shared().update("seen", Vec::<Value>::new, |v| v.push(out.clone()))?;
            Ok(Action::none())
        })
        .into_node()
        .max_retries(2);
    let batch = BatchFlow::new(&node).params(|_| Ok(vec![params(json!({ "i": 1 })), params(json!({ "i": 2 }))]));
    let (_, shared, _) = run_batch_both(&batch, json!({})).await;
    assert_eq!(shared.get_json("seen").unwrap(), json!([{ "i": 1, "attempt": 1 }, { "i": 2, "attempt": 1 }]));
}

/// Bug 3: concurrent spans of one node and phase collided, leaving spans unended or with
/// another call's data. Here every parallel item has its own, ended span with its own data.
#[tokio::test]
async fn bug_03_concurrent_spans_do_not_collide() {
    let node = FnBatchNode::parallel("Par")
        .items(|_| Ok(json!((0..50).collect::<Vec<_>>())))
        .exec(|v, _| async move {
            tokio::task::yield_now().await;
            Ok(json!(v.as_i64().unwrap_or(0) * 10))
        })
        .into_node();
    let t = one_trace(&Flow::new(&node), &SharedStore::new()).await;
    let items: Vec<_> = t.spans.iter().filter(|s| s.kind == SpanKind::Item).collect();
    assert_eq!(items.len(), 50);
    for s in items {
        let i = s.input.as_ref().and_then(Value::as_i64).unwrap();
        assert_eq!(s.output, Some(json!(i * 10)), "item {i} has its own output");
        assert_eq!(s.attributes["item_index"], json!(i));
        assert!(s.end_unix_nanos >= s.start_unix_nanos && !s.status.is_error());
    }
}

/// Bug 4: the trace input was the live store, serialised later. Here it is the store at
/// start, however long the run, and later writes are only in the output.
#[tokio::test]
async fn bug_04_trace_input_is_a_snapshot() {
    let writer = FnNode::new("W")
        .post(|ctx, _, _| {
            ctx.shared().insert("chunk_results", json!([1]));
            ctx.shared().insert("total", 1);
            Ok(Action::none())
        })
        .into_node();
    let t = one_trace(&Flow::new(&writer), &SharedStore::from_json(json!({ "input_array": [1] }))).await;
    assert_eq!(t.input, json!({ "input_array": [1] }));
    assert_eq!(t.output["total"], json!(1));
}

/// Bug 5: inputs were Python repr strings. Here they are JSON values.
#[tokio::test]
async fn bug_05_values_are_json_not_repr_strings() {
    let node =
        FnNode::new("J").prep(|_| Ok(json!({ "query": "x", "n": 2 }))).exec(|v, _| async move { Ok(v) }).into_node();
    let t = one_trace(&Flow::new(&node), &SharedStore::new()).await;
    assert_eq!(t.span("J.exec").unwrap().input, Some(json!({ "query": "x", "n": 2 })));
}

/// Bug 6: the tree was flat. Here phases nest under their node, nodes under their flow.
#[tokio::test]
async fn bug_06_the_tree_nests() {
    let inner = Flow::named("Inner", &number(1));
    let t = one_trace(&Flow::named("Outer", inner.as_node()), &SharedStore::new()).await;
    let parent_of = |name: &str| {
        let s = t.span(name).unwrap();
        t.spans.iter().find(|p| Some(p.span_id) == s.parent_id).map(|p| p.name.to_string())
    };
    assert_eq!(parent_of("Number(1).prep").as_deref(), Some("Number(1)"));
    assert_eq!(parent_of("Number(1)").as_deref(), Some("Inner"));
    assert_eq!(parent_of("Inner").as_deref(), Some("Outer"));
    assert_eq!(parent_of("Outer"), None);
}

/// Bug 7: the sub-flow span was never ended. Here every span ends, nested flows included.
#[tokio::test]
async fn bug_07_nested_flow_spans_end() {
    let inner = Flow::named("Sub", &number(1));
    let t = one_trace(&Flow::named("Main", inner.as_node()), &SharedStore::new()).await;
    let sub = t.span("Sub").unwrap();
    assert!(sub.end_unix_nanos >= sub.start_unix_nanos && sub.end_unix_nanos > 0);
    assert!(!sub.status.is_error());
}

/// Bug 8: one tracer slot per flow instance, clobbered by concurrent runs. Here
/// concurrent runs of one flow each get a complete trace of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bug_08_concurrent_runs_of_one_flow_get_their_own_traces() {
    let (tracer, memory) = memory_tracer();
    let node = FnNode::new("Echo")
        .prep(|ctx| Ok(ctx.shared().get_json("id").unwrap_or(Value::Null)))
        .exec(|v, _| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(v)
        })
        .into_node();
    let flow = Flow::new(&node);
    let runs = (0..20).map(|i| {
        let (flow, tracer) = (flow.clone(), tracer.clone());
        tokio::spawn(
            async move { flow.traced("R").tracer(&tracer).run(&SharedStore::from_json(json!({ "id": i }))).await },
        )
    });
    for r in futures::future::join_all(runs).await {
        r.unwrap().unwrap();
    }
    tracer.flush(Duration::from_secs(10)).await;
    let traces = memory.traces();
    assert_eq!(traces.len(), 20);
    let mut ids: Vec<i64> = traces
        .iter()
        .map(|t| {
            assert_eq!(t.spans.len(), 6);
            let out = t.span("Echo.exec").unwrap().output.clone().unwrap();
            assert_eq!(out, t.input["id"], "each trace holds its own run's data");
            out.as_i64().unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());
}

/// Bug 9: the context was cleared on exit instead of restored, so a traced run started inside
/// another lost the outer one's context. Here a traced run inside a node's exec gets its own
/// trace, and the outer run's later spans still land in the outer trace, parented right.
#[tokio::test]
async fn bug_09_a_nested_traced_run_leaves_the_outer_context_intact() {
    let (tracer, memory) = memory_tracer();
    let inner_tracer = tracer.clone();
    let calls_inner = FnNode::new("CallsInner")
        .exec(move |_, _| {
            let t = inner_tracer.clone();
            async move {
                let store = SharedStore::new();
                Flow::named("InnerFlow", &number(7)).traced("Inner").tracer(&t).run(&store).await?;
                Ok(json!(store.get_json("current")))
            }
        })
        .into_node();
    let after = number(2);
    let _ = &calls_inner >> &after;
    Flow::named("OuterFlow", &calls_inner).traced("Outer").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    tracer.flush(Duration::from_secs(5)).await;
    let traces = memory.traces();
    assert_eq!(traces.len(), 2);
    let outer = traces.iter().find(|t| t.name == "Outer").unwrap();
    let inner = traces.iter().find(|t| t.name == "Inner").unwrap();
    assert_ne!(outer.trace_id, inner.trace_id);
    assert!(inner.span("Number(7)").is_some() && outer.span("Number(7)").is_none());
    let exec = outer.span("CallsInner.exec").unwrap();
    assert_eq!(exec.output, Some(json!(7)));
    let later = outer.span("Number(2)").expect("spans after the nested run stay in the outer trace");
    assert_eq!(later.parent_id, Some(outer.span("OuterFlow").unwrap().span_id));
}

/// Caught signals of this process, from `/proc/self/status` (Linux).
fn caught_signals() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("SigCgt:")).map(str::to_owned)
}

/// Bug 10: the reference installed SIGINT/SIGTERM handlers that swallowed the signals. Here
/// running traced flows, failing ones included, leaves the process's signal handling as it
/// was.
#[tokio::test]
async fn bug_10_no_signal_handlers_are_installed() {
    let before = caught_signals();
    let bad = FnNode::new("Bad").exec(|_, _| async { Err(value_error("x")) }).into_node();
    let (tracer, _m) = memory_tracer();
    let _ = Flow::new(&bad).traced("S").tracer(&tracer).run(&SharedStore::new()).await;
    Flow::new(&number(1)).traced("S").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    tracer.flush(Duration::from_secs(5)).await;
    assert_eq!(caught_signals(), before);
}

/// Bug 11: `TRACE_PREP/EXEC/POST` were read by nothing, and only the literal `true` enabled a
/// boolean. Here each switch works, and `1`/`yes`/`on` are true.
#[tokio::test]
async fn bug_11_every_switch_works() {
    let cfg = TracingConfig::from_vars([
        ("POCKETFLOW_TRACE_PREP", "false"),
        ("POCKETFLOW_TRACE_EXEC", "no"),
        ("POCKETFLOW_TRACE_POST", "0"),
        ("POCKETFLOW_TRACE_INPUTS", "1"),
        ("FLOWTRACE_TRACE_FILE", "/dev/null"),
    ])
    .unwrap();
    assert!(cfg.trace_inputs());
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder()
        .exporter(memory.clone())
        .trace_prep(cfg.trace_prep())
        .trace_exec(cfg.trace_exec())
        .trace_post(cfg.trace_post())
        .build()
        .unwrap();
    Flow::new(&number(1)).traced("S").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    tracer.flush(Duration::from_secs(5)).await;
    let t = memory.traces().pop().unwrap();
    let names: Vec<&str> = t.spans.iter().map(|s| &*s.name).collect();
    assert_eq!(names, ["Number(1)", "Flow"], "only the node and flow spans remain");
}

/// Bug 12: a missing `LANGFUSE_HOST` silently disabled all tracing. Here keys without a
/// host use Langfuse Cloud, and no keys at all still record every trace to the local file.
#[test]
fn bug_12_missing_host_does_not_disable_tracing() {
    let cfg =
        TracingConfig::from_vars([("LANGFUSE_PUBLIC_KEY", "pk-lf-x"), ("LANGFUSE_SECRET_KEY", "sk-lf-x")]).unwrap();
    assert_eq!(cfg.host(), Some(flowtrace::trace::DEFAULT_LANGFUSE_HOST));
    let cfg = TracingConfig::from_vars(Vec::<(String, String)>::new()).unwrap();
    assert!(cfg.trace_file().is_some());
}

/// Bug 13: flow hooks, batch-flow prep and `exec_fallback` were not traced. Here the flow's
/// own span wraps its hooks, batch runs have spans, and the fallback has its own span.
#[tokio::test]
async fn bug_13_fallback_and_batch_runs_are_traced() {
    let node = FnNode::new("F")
        .exec(|_, _| async { Err(value_error("fail")) })
        .fallback(|_, _, _| async { Ok(json!("fallback")) })
        .into_node();
    let batch = BatchFlow::new(&node).params(|_| Ok(vec![params(json!({ "k": 1 }))]));
    let (_, _, t) = run_batch_both(&batch, json!({})).await;
    assert!(t.span("F.exec_fallback").is_some());
    assert!(t.span("batch 0").is_some_and(|s| s.kind == SpanKind::BatchRun));
}

/// Bug 14: config was captured when the decorator ran, and per-flow session ids mutated a
/// shared config. Here trace fields are per traced call.
#[tokio::test]
async fn bug_14_trace_fields_are_per_call() {
    let (tracer, memory) = memory_tracer();
    let flow = Flow::new(&number(1));
    flow.traced("A").session_id("s1").user_id("u1").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    flow.traced("B").session_id("s2").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    tracer.flush(Duration::from_secs(5)).await;
    let t = memory.traces();
    assert_eq!((t[0].session_id.as_deref(), t[0].user_id.as_deref()), (Some("s1"), Some("u1")));
    assert_eq!((t[1].session_id.as_deref(), t[1].user_id.as_deref()), (Some("s2"), None));
}

/// Bug 15: metadata timestamps were local time without a zone. Here every time is UTC.
#[tokio::test]
async fn bug_15_timestamps_are_utc_with_microseconds() {
    let t = one_trace(&Flow::new(&number(1)), &SharedStore::new()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert!(now.abs_diff(t.start_unix_nanos) < 60_000_000_000, "start is Unix time (UTC)");
    let s = flowtrace::trace::format_timestamp(t.start_unix_nanos);
    assert!(s.ends_with('Z') && s.len() == "2026-11-28T19:00:13.638615Z".len(), "{s}");
}

/// An exporter that blocks its thread for 50 ms per trace.
struct Slow;
impl Exporter for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn export(&self, _trace: Arc<TraceRecord>) {
        std::thread::sleep(Duration::from_millis(50));
    }
    fn flush(&self, _t: Duration) -> futures::future::BoxFuture<'_, ExportReport> {
        Box::pin(async { ExportReport::default() })
    }
}

/// Bug 16: tracing ran inline on the run's path (the per-run flush blocked every run). Here
/// an exporter that takes 50 ms per trace does not slow the runs: 40 runs finish long before
/// the exporter could have handled them (40 × 50 ms = 2 s if it were on the path).
#[tokio::test]
async fn bug_16_a_slow_exporter_does_not_slow_runs() {
    let tracer = Tracer::builder().exporter(Slow).build().unwrap();
    let flow = Flow::new(&number(1));
    let start = Instant::now();
    for _ in 0..40 {
        flow.traced("S").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    }
    let runs = start.elapsed();
    assert!(runs < Duration::from_millis(1000), "40 traced runs took {runs:?}");
}

/// Not a reference bug, the other side of bug 16: when exporters cannot keep up, the queue to
/// the tracer does not grow without bound. With an exporter that does not take parts, past
/// `MAX_BACKLOG` (65,536) waiting spans, runs shed their spans;
/// the loss is counted in the flush report (with why) and in the trace's `spans_dropped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_the_limit_sheds_spans_and_says_so() {
    use std::sync::mpsc;
    /// Holds the tracer's thread on the first trace until the test lets it go.
    struct Gate(parking_lot::Mutex<Option<mpsc::Receiver<()>>>, MemoryExporter);
    impl Exporter for Gate {
        fn name(&self) -> &str {
            "gate"
        }
        fn export(&self, trace: Arc<TraceRecord>) {
            if let Some(rx) = self.0.lock().take() {
                let _ = rx.recv();
            }
            self.1.export(trace);
        }
        fn flush(&self, t: Duration) -> futures::future::BoxFuture<'_, ExportReport> {
            self.1.flush(t)
        }
    }
    let (open, gate) = mpsc::channel();
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(Gate(parking_lot::Mutex::new(Some(gate)), memory.clone())).build().unwrap();
    // The first run's trace holds the tracer at the gate.
    Flow::new(&number(1)).traced("first").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    // 150,000 items record 300,000 spans (an item and an attempt each): over the limit.
    let big = FnBatchNode::new("Big").items(|_| Ok(json!(vec![0; 150_000]))).into_node();
    let shared = SharedStore::new();
    Flow::new(&big).traced("big").tracer(&tracer).run(&shared).await.unwrap();
    open.send(()).unwrap();
    let report = tracer.flush(Duration::from_secs(30)).await;
    assert!(report.dropped > 0, "{report:?}");
    assert!(report.reasons.iter().any(|r| r.contains("were waiting for the tracer")), "{report:?}");
    let big_trace = memory.traces().into_iter().find(|t| t.name == "big").expect("the big run still has its trace");
    assert!(big_trace.spans_dropped > 0, "the trace says spans are missing");
    assert_eq!(big_trace.spans_dropped + big_trace.spans.len() as u64, 300_005, "every span is recorded or counted");
}
