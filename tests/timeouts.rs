//! Time limits: per exec attempt (`NodeRef::timeout`, retried like any failure) and per run
//! (`RunOptions::timeout`, the runtime's default), and the step limit for flows that loop
//! forever. Each ends with its own error kind, and the spans say so. On tokio's paused clock.

use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::runtime::Runtime;
use flowtrace::trace::{SpanKind, SpanStatus, TraceRecord};
use serde_json::Value;

fn tracer() -> (Tracer, MemoryExporter) {
    let memory = MemoryExporter::new();
    (Tracer::builder().exporter(memory.clone()).build().unwrap(), memory)
}

async fn one_trace(tracer: &Tracer, memory: &MemoryExporter) -> std::sync::Arc<TraceRecord> {
    assert!(tracer.flush(Duration::from_secs(5)).await.is_complete());
    let t = memory.traces();
    assert_eq!(t.len(), 1);
    t[0].clone()
}

fn sleeper(name: &str, d: Duration) -> NodeRef {
    FnNode::new(name.to_owned())
        .exec(move |_, _| async move {
            tokio::time::sleep(d).await;
            Ok(Value::Null)
        })
        .into_node()
}

fn kind_of(s: &SpanStatus) -> Option<&str> {
    match s {
        SpanStatus::Error { kind, .. } => Some(kind),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn an_exec_attempt_past_its_timeout_fails_and_is_retried() {
    let (tracer, memory) = tracer();
    let slow = sleeper("Slow", Duration::from_secs(10)).timeout(Duration::from_millis(100)).max_retries(3);
    let flow = Flow::new(&slow);
    let start = tokio::time::Instant::now();
    let err = flow.traced("t").tracer(&tracer).run(&SharedStore::new()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Timeout { node: Some(n), after } if n == "Slow" && *after == Duration::from_millis(100)),
        "{err}"
    );
    assert_eq!(err.kind(), "timeout");
    assert_eq!(err.to_string(), "node 'Slow' timed out after 100ms");
    // Three attempts of 100 ms each, no wait between them.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    let trace = one_trace(&tracer, &memory).await;
    let attempts: Vec<_> = trace.spans.iter().filter(|s| s.kind == SpanKind::Attempt).collect();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|s| kind_of(&s.status) == Some("timeout")), "{attempts:?}");
    assert_eq!(kind_of(&trace.status), Some("timeout"));
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_can_fall_back() {
    let node = FnNode::new("Slow")
        .exec(|_, _| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(Value::Null)
        })
        .fallback(|_, e, _| async move { Ok(Value::String(format!("fallback: {e}"))) })
        .post(|ctx, _, out| {
            ctx.shared().insert("out", out);
            Ok(Action::none())
        })
        .into_node()
        .timeout(Duration::from_millis(10));
    let shared = SharedStore::new();
    Flow::new(&node).run(&shared).await.unwrap();
    assert_eq!(shared.get::<String>("out").unwrap().unwrap(), "fallback: node 'Slow' timed out after 10ms");
}

#[tokio::test(start_paused = true)]
async fn a_run_past_its_timeout_ends_with_a_run_timeout() {
    let (tracer, memory) = tracer();
    let a = sleeper("A", Duration::from_millis(50));
    let b = sleeper("B", Duration::from_secs(3600));
    let _ = &a >> &b;
    let flow = Flow::new(&a);
    let err = flow
        .traced("run-timeout")
        .tracer(&tracer)
        .options(RunOptions::new().timeout(Duration::from_millis(500)))
        .run(&SharedStore::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { node: None, after } if after == Duration::from_millis(500)), "{err}");
    assert_eq!(err.to_string(), "run timed out after 500ms");
    let trace = one_trace(&tracer, &memory).await;
    assert_eq!(kind_of(&trace.status), Some("timeout"));
    // A finished; B was open when time ran out: its spans end as cancelled, not as errors.
    let a_span = trace.spans.iter().find(|s| &*s.name == "A").unwrap();
    assert_eq!(a_span.status, SpanStatus::Ok);
    let b_span = trace.spans.iter().find(|s| &*s.name == "B").unwrap();
    assert!(matches!(b_span.status, SpanStatus::Cancelled { .. }), "{:?}", b_span.status);
    assert!(trace.spans.iter().all(|s| !matches!(s.status, SpanStatus::Error { .. })));
}

#[tokio::test(start_paused = true)]
async fn the_runtime_default_timeout_and_a_run_own_timeout() {
    let rt = Runtime::builder().run_timeout(Duration::from_secs(1)).build().unwrap();
    let flow = Flow::new(&sleeper("Long", Duration::from_secs(5)));
    let err = rt.spawn(&flow, &SharedStore::new()).await.unwrap().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { node: None, after } if after == Duration::from_secs(1)));
    // A run's own timeout wins over the runtime's.
    let h = rt
        .spawn_with(flow.as_node(), &SharedStore::new(), RunOptions::new().timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    h.await.unwrap();
}

#[tokio::test]
async fn a_flow_that_loops_forever_ends_at_its_step_limit() {
    let spin = FnNode::new("Spin").post(|_, _, _| Ok(Action::new("again"))).into_node();
    let _ = spin.on("again") >> &spin;
    let flow = Flow::named("Loop", Some(&spin)).max_steps(1000);
    let err = flow.run(&SharedStore::new()).await.unwrap_err();
    assert!(matches!(&err, Error::MaxSteps { flow, limit: 1000 } if flow == "Loop"), "{err}");
    assert_eq!(err.to_string(), "flow 'Loop' exceeded its limit of 1000 steps");
    // The same through run options and through the runtime's default.
    let flow = Flow::named("Loop2", Some(&spin));
    let err = flow.run_with(&SharedStore::new(), RunOptions::new().max_steps(10)).await.unwrap_err();
    assert_eq!(err.kind(), "max_steps");
    let rt = Runtime::builder().max_steps(50).build().unwrap();
    let err = rt.spawn(&flow, &SharedStore::new()).await.unwrap().await.unwrap_err();
    assert!(matches!(err, Error::MaxSteps { limit: 50, .. }), "{err}");
}
