//! The tracer's default session and user (`FLOWTRACE_SESSION_ID`, `FLOWTRACE_USER_ID`) reach
//! every trace, whichever way the run was started, and a run's own fields win over them.

use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::runtime::Runtime;
use flowtrace::trace::TraceRecord;

fn tracer() -> (Tracer, MemoryExporter) {
    let memory = MemoryExporter::new();
    let tracer =
        Tracer::builder().exporter(memory.clone()).session_id("s-default").user_id("u-default").build().unwrap();
    (tracer, memory)
}

fn step() -> NodeRef {
    FnNode::new("Step")
        .post(|ctx, _, _| {
            ctx.shared().insert("done", true);
            Ok(Action::none())
        })
        .into_node()
}

/// Flushes and returns the one trace named `name`.
async fn trace_named(tracer: &Tracer, memory: &MemoryExporter, name: &str) -> std::sync::Arc<TraceRecord> {
    let report = tracer.flush(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    let found: Vec<_> = memory.traces().into_iter().filter(|t| t.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "one trace named {name}: {:?}",
        memory.traces().iter().map(|t| &t.name).collect::<Vec<_>>()
    );
    found[0].clone()
}

fn assert_defaults(t: &std::sync::Arc<TraceRecord>) {
    assert_eq!(t.session_id.as_deref(), Some("s-default"), "session of {}", t.name);
    assert_eq!(t.user_id.as_deref(), Some("u-default"), "user of {}", t.name);
}

#[tokio::test]
async fn every_run_path_carries_the_tracers_defaults() {
    let (tracer, memory) = tracer();
    let node = step();
    let flow = Flow::named("Plain", &node);
    let batch = BatchFlow::named("Batch", &step()).params(|_| Ok(vec![Params::new(), Params::new()]));

    // flow.traced(..).run() and a traced batch flow
    flow.traced("Traced").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    assert_defaults(&trace_named(&tracer, &memory, "Traced").await);
    batch.traced("TracedBatch").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    assert_defaults(&trace_named(&tracer, &memory, "TracedBatch").await);

    // Every Runtime entry point, traced by the runtime's tracer.
    let rt = Runtime::builder().tracer(&tracer).build().unwrap();
    rt.spawn(&flow, &SharedStore::new()).await.unwrap().await.unwrap();
    assert_defaults(&trace_named(&tracer, &memory, "Plain").await);
    rt.spawn(&batch, &SharedStore::new()).await.unwrap().await.unwrap();
    assert_defaults(&trace_named(&tracer, &memory, "Batch").await);
    rt.spawn_with(&node, &SharedStore::new(), RunOptions::new()).await.unwrap().await.unwrap();
    assert_defaults(&trace_named(&tracer, &memory, "Step").await);
    rt.spawn(&flow.traced("SpawnTraced"), &SharedStore::new()).await.unwrap().await.unwrap();
    assert_defaults(&trace_named(&tracer, &memory, "SpawnTraced").await);
    rt.spawn(&flow.traced("OwnTracer").tracer(&tracer), &SharedStore::new()).await.unwrap().await.unwrap();
    assert_defaults(&trace_named(&tracer, &memory, "OwnTracer").await);
    rt.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_runs_own_session_and_user_win_over_the_defaults() {
    let (tracer, memory) = tracer();
    let flow = Flow::named("Own", &step());
    let own = |name: &str| flow.traced(name).session_id("s-own").user_id("u-own");
    own("Own").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    let rt = Runtime::builder().tracer(&tracer).build().unwrap();
    rt.spawn(&own("OwnSpawned"), &SharedStore::new()).await.unwrap().await.unwrap();
    for name in ["Own", "OwnSpawned"] {
        let t = trace_named(&tracer, &memory, name).await;
        assert_eq!(t.session_id.as_deref(), Some("s-own"));
        assert_eq!(t.user_id.as_deref(), Some("u-own"));
    }
}

#[tokio::test]
async fn an_untraced_run_through_an_untraced_runtime_records_nothing() {
    let (tracer, memory) = tracer();
    let flow = Flow::named("Untraced", &step());
    flow.run(&SharedStore::new()).await.unwrap();
    let rt = Runtime::builder().build().unwrap();
    rt.spawn(&flow, &SharedStore::new()).await.unwrap().await.unwrap();
    tracer.flush(Duration::from_secs(5)).await;
    assert!(memory.traces().is_empty());
}
