//! Cancelling a run: it ends with `Error::Cancelled` and its reason, every span still open
//! ends as cancelled, and the cancel reaches nested flows, parallel batch items and parallel
//! batch-flow runs (their tasks stop: nothing keeps running after the cancel).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::runtime::{RunHandle, Runtime};
use flowtrace::trace::{SpanKind, SpanStatus, TraceRecord};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// A node that signals `started` and then never finishes, counting exits in `finished`.
fn stuck(name: &str, started: Arc<Semaphore>, finished: Arc<AtomicUsize>) -> NodeRef {
    FnNode::new(name.to_owned())
        .exec(move |_, _| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.add_permits(1);
                std::future::pending::<()>().await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
        .into_node()
}

fn runtime() -> (Runtime, MemoryExporter) {
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    (Runtime::builder().tracer(&tracer).build().unwrap(), memory)
}

/// Cancels once `n` nodes have started; returns the run's error and its one trace.
async fn cancel_after(
    rt: &Runtime,
    memory: &MemoryExporter,
    h: RunHandle,
    started: &Semaphore,
    n: u32,
) -> (Error, Arc<TraceRecord>) {
    started.acquire_many(n).await.unwrap().forget();
    h.cancel("stop now");
    let err = h.await.unwrap_err();
    let report = rt.tracer().unwrap().flush(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report:?}");
    let traces = memory.traces();
    assert_eq!(traces.len(), 1);
    (err, Arc::clone(&traces[0]))
}

fn assert_cancelled(err: &Error, trace: &TraceRecord) {
    assert!(matches!(err, Error::Cancelled { reason } if reason == "stop now"), "{err}");
    assert_eq!(err.kind(), "cancelled");
    assert!(matches!(&trace.status, SpanStatus::Cancelled { reason } if reason == "stop now"), "{:?}", trace.status);
    assert!(
        trace.spans.iter().all(|s| !matches!(s.status, SpanStatus::Error { .. })),
        "a cancelled run recorded an error span"
    );
}

fn status_of<'a>(trace: &'a TraceRecord, name: &str) -> Vec<&'a SpanStatus> {
    trace.spans.iter().filter(|s| &*s.name == name).map(|s| &s.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_nested_flow() {
    let (rt, memory) = runtime();
    let (started, finished) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
    let inner_node = stuck("InnerStuck", started.clone(), finished.clone());
    let inner = Flow::named("Inner", &inner_node);
    let middle = Flow::named("Middle", inner.as_node());
    let first = FnNode::new("First").into_node();
    let _ = &first >> middle.as_node();
    let outer = Flow::named("Outer", &first);
    let h = rt.spawn(&outer, &SharedStore::new()).await.unwrap();
    let (err, trace) = cancel_after(&rt, &memory, h, &started, 1).await;
    assert_cancelled(&err, &trace);
    for name in ["Outer", "Middle", "Inner", "InnerStuck"] {
        let st = status_of(&trace, name);
        assert!(!st.is_empty(), "no span for {name}");
        assert!(st.iter().all(|s| matches!(s, SpanStatus::Cancelled { .. })), "{name}: {st:?}");
    }
    assert_eq!(status_of(&trace, "First"), vec![&SpanStatus::Ok]);
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    assert_eq!(rt.stats().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_parallel_batch_items() {
    let (rt, memory) = runtime();
    let started = Arc::new(Semaphore::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (s2, f2) = (started.clone(), finished.clone());
    let batch = FnBatchNode::parallel("Fanout")
        .items(|_| Ok(json!([1, 2, 3, 4, 5])))
        .exec(move |_, _| {
            let (started, finished) = (s2.clone(), f2.clone());
            async move {
                started.add_permits(1);
                std::future::pending::<()>().await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
        .into_node();
    let flow = Flow::named("Batch", &batch);
    let h = rt.spawn(&flow, &SharedStore::new()).await.unwrap();
    let (err, trace) = cancel_after(&rt, &memory, h, &started, 5).await;
    assert_cancelled(&err, &trace);
    let items: Vec<_> = trace.spans.iter().filter(|s| s.kind == SpanKind::Item).collect();
    assert_eq!(items.len(), 5, "one span per item");
    assert!(items.iter().all(|s| matches!(s.status, SpanStatus::Cancelled { .. })), "{items:?}");
    let attempts: Vec<_> = trace.spans.iter().filter(|s| s.kind == SpanKind::Attempt).collect();
    assert_eq!(attempts.len(), 5);
    assert!(attempts.iter().all(|s| matches!(s.status, SpanStatus::Cancelled { .. })));
    assert_eq!(finished.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_parallel_batch_flow_runs() {
    let (rt, memory) = runtime();
    let (started, finished) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
    let node = stuck("PerParams", started.clone(), finished.clone());
    let bf = BatchFlow::parallel(&node).params(|_| {
        Ok((0..4)
            .map(|i| {
                let mut p = Params::new();
                p.insert("i".into(), json!(i));
                p
            })
            .collect())
    });
    let h = rt.spawn(&bf, &SharedStore::new()).await.unwrap();
    let (err, trace) = cancel_after(&rt, &memory, h, &started, 4).await;
    assert_cancelled(&err, &trace);
    let names: Vec<_> = trace.spans.iter().map(|s| (s.kind, s.name.to_string())).collect();
    let st = status_of(&trace, "PerParams");
    assert_eq!(st.len(), 4, "{names:?}");
    assert_eq!(st.len(), 4);
    assert!(st.iter().all(|s| matches!(s, SpanStatus::Cancelled { .. })), "{st:?}");
    assert_eq!(finished.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_plain_run_future_cancels_it() {
    let (started, finished) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    let flow = Flow::named("Dropped", &stuck("S", started.clone(), finished.clone()));
    let run = tokio::spawn({
        let flow = flow.clone();
        let tracer = tracer.clone();
        async move { flow.traced("Dropped").tracer(&tracer).run(&SharedStore::new()).await }
    });
    started.acquire().await.unwrap().forget();
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    // The kill reaches the supervisor asynchronously; its trace follows. Poll, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while memory.traces().is_empty() && tokio::time::Instant::now() < deadline {
        assert!(tracer.flush(Duration::from_secs(5)).await.is_complete());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let traces = memory.traces();
    assert_eq!(traces.len(), 1);
    assert!(matches!(&traces[0].status, SpanStatus::Cancelled { reason } if reason.contains("stopped waiting")));
}
