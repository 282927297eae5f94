//! 10,000 runs through a [`Runtime`], a quarter each: fine, a node that panics, a node that
//! hangs past its exec timeout, a node that returns an error. Every run ends with the right
//! result, every run has a complete trace whose status matches, and afterwards no run
//! supervisor and no task is left alive. (Alone in its file: it counts process-wide
//! supervisors.)

mod support;

use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::runtime::{Admission, Runtime};
use flowtrace::trace::{SpanKind, SpanStatus};
use flowtrace::Phase;
use serde_json::{json, Value};
use support::{eventually, silence_panics};

const RUNS: usize = 10_000;

fn mixed_flow() -> Flow {
    let first = FnNode::new("First").exec(|_, _| async { Ok(Value::Null) }).into_node();
    let faulty = FnNode::new("Faulty")
        .exec(|_, cx| async move {
            match cx.params().get("mode").and_then(Value::as_str) {
                Some("panic") => panic!("fault: panic"),
                Some("hang") => std::future::pending().await,
                Some("error") => Err("fault: error".into()),
                _ => Ok(json!("fine")),
            }
        })
        .into_node()
        .timeout(Duration::from_millis(20));
    let _ = &first >> &faulty;
    Flow::named("Mixed", Some(&first))
}

fn mode(i: usize) -> &'static str {
    ["ok", "panic", "hang", "error"][i % 4]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_fault_runs() {
    silence_panics("fault: panic");
    let metrics = tokio::runtime::Handle::current().metrics();
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    let tasks_before = metrics.num_alive_tasks();
    let runs_before = flowtrace::runtime::live_runs();
    let rt = Runtime::builder().max_in_flight(500).admission(Admission::Wait).tracer(&tracer).build().unwrap();
    let flow = mixed_flow();

    let started = std::time::Instant::now();
    // Spawn from a task of its own so handles are awaited while more runs are admitted.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let spawner = {
        let (rt, flow) = (rt.clone(), flow.clone());
        tokio::spawn(async move {
            for i in 0..RUNS {
                let mut p = Params::new();
                p.insert("mode".into(), json!(mode(i)));
                let h = rt.spawn_with(flow.as_node(), &SharedStore::new(), RunOptions::new().params(p)).await;
                tx.send((i, h.expect("admitted"))).expect("the test is listening");
            }
        })
    };
    let mut counts = [0usize; 4];
    while let Some((i, h)) = rx.recv().await {
        let res = h.await;
        match (mode(i), &res) {
            ("ok", Ok(_)) => counts[0] += 1,
            ("panic", Err(Error::Panic { node, phase: Phase::Exec, message, .. }))
                if node == "Faulty" && message == "fault: panic" =>
            {
                counts[1] += 1
            }
            ("hang", Err(Error::Timeout { node: Some(node), after }))
                if node == "Faulty" && after.as_millis() == 20 =>
            {
                counts[2] += 1
            }
            ("error", Err(e @ Error::Node { phase: Phase::Exec, .. }))
                if e.node() == Some("Faulty") && e.chain().last().is_some_and(|m| m == "fault: error") =>
            {
                counts[3] += 1
            }
            (m, r) => panic!("run {i} ({m}) ended with {r:?}"),
        }
    }
    spawner.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(counts, [RUNS / 4; 4]);
    let stats = rt.stats();
    assert_eq!((stats.started, stats.succeeded, stats.failed, stats.in_flight), (RUNS as u64, 2500, 7500, 0));

    // Every run has a complete trace whose status matches its result.
    let report = tracer.flush(Duration::from_secs(30)).await;
    assert!(report.is_complete(), "{report:?}");
    let traces = memory.traces();
    assert_eq!(traces.len(), RUNS);
    let mut by_kind = std::collections::HashMap::<String, usize>::new();
    for t in &traces {
        assert_eq!(t.spans_dropped, 0);
        let ids: std::collections::HashSet<_> = t.spans.iter().map(|s| s.span_id).collect();
        assert!(t.spans.iter().all(|s| s.parent_id.is_none_or(|p| ids.contains(&p))), "orphan span in {}", t.trace_id);
        assert_eq!(t.spans.iter().filter(|s| s.kind == SpanKind::Flow).count(), 1);
        assert_eq!(t.spans.iter().filter(|s| s.kind == SpanKind::Node).count(), 2, "{:?}", t.spans);
        assert!(t.spans.iter().all(|s| s.end_unix_nanos >= s.start_unix_nanos));
        let kind = match &t.status {
            SpanStatus::Ok => "ok".to_owned(),
            SpanStatus::Error { kind, .. } => kind.clone(),
            other => format!("{other:?}"),
        };
        *by_kind.entry(kind).or_default() += 1;
    }
    for k in ["ok", "panic", "timeout", "node_error"] {
        assert_eq!(by_kind.get(k), Some(&(RUNS / 4)), "{by_kind:?}");
    }

    // No leak: supervisors and tasks back to where they were.
    drop(rt);
    assert!(
        eventually(Duration::from_secs(10), || flowtrace::runtime::live_runs() == runs_before).await,
        "run supervisors still alive: {} (before: {runs_before})",
        flowtrace::runtime::live_runs()
    );
    assert!(
        eventually(Duration::from_secs(10), || metrics.num_alive_tasks() <= tasks_before).await,
        "tasks leaked: {} alive, {tasks_before} before",
        metrics.num_alive_tasks()
    );
    println!("{RUNS} mixed runs in {elapsed:?}");
}
