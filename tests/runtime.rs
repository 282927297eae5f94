//! The service runtime: handles, the in-flight cap and its two admission policies, cancel,
//! status, invalid settings and graceful shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::runtime::{Admission, RunStatus, Runtime};
use flowtrace::trace::{SpanKind, SpanStatus};
use serde_json::Value;
use tokio::sync::Semaphore;

/// A flow whose one node waits on `gate` (one permit per run) and counts how many wait at once.
fn gated_flow(gate: Arc<Semaphore>, inside: Arc<AtomicUsize>, peak: Arc<AtomicUsize>) -> Flow {
    let node = FnNode::new("Gated")
        .exec(move |_, _| {
            let (gate, inside, peak) = (gate.clone(), inside.clone(), peak.clone());
            async move {
                let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                gate.acquire().await.map_err(|e| e.to_string())?.forget();
                inside.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
        .into_node();
    Flow::new(&node)
}

fn hanging_flow() -> Flow {
    let node = FnNode::new("Hang").exec(|_, _| std::future::pending()).into_node();
    Flow::named("HangFlow", Some(&node))
}

#[tokio::test]
async fn a_handle_gives_the_result_and_status() {
    let rt = Runtime::builder().build().unwrap();
    let node = FnNode::new("Set")
        .post(|ctx, _, _| {
            ctx.shared().insert("done", true);
            Ok(Action::new("finished"))
        })
        .into_node();
    let flow = Flow::new(&node);
    let shared = SharedStore::new();
    let handle = rt.spawn(&flow, &shared).await.unwrap();
    assert!(handle.id() > 0);
    let action = handle.await.unwrap();
    assert_eq!(action, Action::new("finished"));
    assert_eq!(shared.get::<bool>("done").unwrap(), Some(true));
    let stats = rt.stats();
    assert_eq!((stats.started, stats.succeeded, stats.in_flight), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_admission_never_exceeds_the_cap() {
    let rt = Runtime::builder().max_in_flight(4).admission(Admission::Wait).build().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (inside, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flow = gated_flow(gate.clone(), inside.clone(), peak.clone());
    let spawner = {
        let rt = rt.clone();
        tokio::spawn(async move {
            let mut handles = Vec::new();
            for _ in 0..20 {
                handles.push(rt.spawn(&flow, &SharedStore::new()).await.unwrap());
            }
            handles
        })
    };
    // Release the runs one at a time; the spawner can only get ahead by 4.
    gate.add_permits(20);
    let handles = spawner.await.unwrap();
    for h in handles {
        h.await.unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 4, "peak {} over the cap of 4", peak.load(Ordering::SeqCst));
    assert_eq!(rt.stats().succeeded, 20);
    assert_eq!(rt.stats().in_flight, 0);
}

#[tokio::test]
async fn refuse_admission_says_why() {
    let rt = Runtime::builder().max_in_flight(2).admission(Admission::Refuse).build().unwrap();
    let flow = hanging_flow();
    let a = rt.spawn(&flow, &SharedStore::new()).await.unwrap();
    let b = rt.spawn(&flow, &SharedStore::new()).await.unwrap();
    let err = rt.spawn(&flow, &SharedStore::new()).await.unwrap_err();
    assert!(matches!(&err, Error::Refused(m) if m.contains("2 runs already in flight")), "{err}");
    assert_eq!(rt.stats().refused, 1);
    a.cancel("test over");
    b.cancel("test over");
    assert!(matches!(a.await, Err(Error::Cancelled { .. })));
    assert!(matches!(b.await, Err(Error::Cancelled { .. })));
    // A place is free again.
    let c = rt.spawn(&flow, &SharedStore::new()).await.unwrap();
    c.cancel("done");
    assert!(c.await.is_err());
}

#[tokio::test]
async fn cancel_ends_the_run_with_its_reason() {
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    let rt = Runtime::builder().tracer(&tracer).build().unwrap();
    let handle = rt.spawn(&hanging_flow(), &SharedStore::new()).await.unwrap();
    // Synchronise on the run having started, not on time.
    while handle.status() != RunStatus::Running {
        tokio::task::yield_now().await;
    }
    handle.cancel("the user gave up");
    let err = handle.await.unwrap_err();
    assert!(matches!(&err, Error::Cancelled { reason } if reason == "the user gave up"), "{err}");
    assert_eq!(err.kind(), "cancelled");
    assert_eq!(rt.stats().cancelled, 1);
    tracer.flush(Duration::from_secs(5)).await;
    let traces = memory.traces();
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].name, "HangFlow");
    assert!(matches!(&traces[0].status, SpanStatus::Cancelled { reason } if reason == "the user gave up"));
    assert!(!traces[0].spans.is_empty());
    for kind in [SpanKind::Flow, SpanKind::Node, SpanKind::Exec, SpanKind::Attempt] {
        let span = traces[0].spans.iter().find(|s| s.kind == kind).expect("span recorded");
        assert!(matches!(span.status, SpanStatus::Cancelled { .. }), "{kind:?}: {:?}", span.status);
    }
    assert!(traces[0].spans.iter().all(|s| !matches!(s.status, SpanStatus::Error { .. })));
}

#[tokio::test]
async fn cancel_before_start_and_after_end() {
    let rt = Runtime::builder().build().unwrap();
    let h = rt.spawn(&hanging_flow(), &SharedStore::new()).await.unwrap();
    h.cancel("at once");
    assert!(matches!(h.await, Err(Error::Cancelled { reason }) if reason == "at once"));
    let ok = Flow::new(&FnNode::new("Ok").into_node());
    let h = rt.spawn(&ok, &SharedStore::new()).await.unwrap();
    let c = h.canceller();
    h.await.unwrap();
    c.cancel("too late"); // no effect, no panic
    assert_eq!(rt.stats().succeeded, 1);
}

#[tokio::test(start_paused = true)]
async fn the_runtime_timeout_applies_to_every_run() {
    let rt = Runtime::builder().run_timeout(Duration::from_secs(2)).build().unwrap();
    let err = rt.spawn(&hanging_flow(), &SharedStore::new()).await.unwrap().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { node: None, after } if after == Duration::from_secs(2)), "{err}");
    assert_eq!(rt.stats().timed_out, 1);
    assert_eq!(rt.stats().failed, 1);
}

#[test]
fn invalid_settings_are_refused_with_a_message() {
    let e = Runtime::builder().max_in_flight(0).build().unwrap_err();
    assert!(matches!(&e, Error::Config(c) if c.variable == "max_in_flight" && c.value == "0"), "{e}");
    let e = Runtime::builder().run_timeout(Duration::ZERO).build().unwrap_err();
    assert!(matches!(&e, Error::Config(c) if c.variable == "run_timeout"), "{e}");
    let e = Runtime::builder().max_steps(0).build().unwrap_err();
    assert!(matches!(&e, Error::Config(c) if c.variable == "max_steps"), "{e}");
    let e = Runtime::builder().max_in_flight(usize::MAX).build().unwrap_err();
    assert_eq!(e.kind(), "config");
    let e = Tracer::builder().sample_rate(1.5).build().unwrap_err();
    assert!(matches!(&e, flowtrace::TracerError::Config(c) if c.variable == "sample_rate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_runs_finish_then_cancels_the_rest() {
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    let rt = Runtime::builder().tracer(&tracer).build().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let (inside, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let quick = gated_flow(gate.clone(), inside.clone(), peak);
    let mut quick_handles = Vec::new();
    for _ in 0..3 {
        quick_handles.push(rt.spawn(&quick, &SharedStore::new()).await.unwrap());
    }
    let hung: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(rt.spawn(&hanging_flow(), &SharedStore::new()).await.unwrap());
        }
        v
    };
    while inside.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    let shutdown = tokio::spawn({
        let rt = rt.clone();
        async move { rt.shutdown(Duration::from_millis(300)).await }
    });
    // New runs are refused once shutdown has begun.
    while !rt.is_shutting_down() {
        tokio::task::yield_now().await;
    }
    let err = rt.spawn(&quick, &SharedStore::new()).await.unwrap_err();
    assert!(matches!(&err, Error::Refused(m) if m.contains("shutting down")), "{err}");
    gate.add_permits(3);
    let report = shutdown.await.unwrap();
    for h in quick_handles {
        h.await.unwrap();
    }
    for h in hung {
        assert!(matches!(h.await, Err(Error::Cancelled { reason }) if reason.contains("shut down")));
    }
    assert!(report.in_flight_at_start >= 5, "{report}");
    assert_eq!(report.cancelled, 2, "{report}");
    assert_eq!(report.unfinished, 0, "{report}");
    let export = report.export.clone().expect("a tracer was set");
    assert!(export.is_complete(), "{report}");
    assert!(report.to_string().contains("2 cancelled"), "{report}");
    // Every run that started has a complete trace: the 3 quick, the 2 cancelled, and any
    // admitted while shutdown began.
    assert_eq!(memory.traces().len() as u64, rt.stats().started);
}
