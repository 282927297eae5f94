//! A long run streams its spans out as it goes: its finished spans reach the backend (OTLP
//! and legacy) and the trace file before the run ends, in parts; the tracer holds fewer than
//! a part's worth of a run's spans however long it runs; the run's end brings the root span
//! with the trace's input and output; readers merge the parts back; a short run is exported
//! whole, as before; an exporter that does not take parts gets the whole trace.

#[path = "support/langfuse_server.rs"]
mod langfuse_server;
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowtrace::export::{ExportReport, Exporter, Ingestion, JsonlFileExporter, LangfuseExporter, PART_SPANS};
use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;
use langfuse_server::{attr_str, fast_delivery, LangfuseServer, PK, SK};
use serde_json::Value;
use support::eventually;

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowtrace-stream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A gate the looping node waits at, once, at step `at`: the test opens it.
struct Gate {
    at: u64,
    reached: AtomicBool,
    open: AtomicBool,
}

/// A flow of one node that loops `steps` times (four spans a step: node, prep, exec, post),
/// stopping at the gate at its step.
fn looping(steps: u64, gate: Arc<Gate>) -> Flow {
    let count = Arc::new(AtomicU64::new(0));
    let step = FnNode::new("Step")
        .exec(move |_, _| {
            let gate = Arc::clone(&gate);
            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                if n == gate.at {
                    gate.reached.store(true, Ordering::Relaxed);
                    while !gate.open.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                Ok(Value::from(n))
            }
        })
        .post(move |_, _, n| Ok(if n.as_u64() < Some(steps) { "again".into() } else { Action::none() }))
        .into_node();
    wire!(step - "again" >> step);
    Flow::new(&step)
}

/// An exporter that does not take parts: it keeps whole traces in a [`MemoryExporter`].
struct WholeOnly(MemoryExporter);

impl Exporter for WholeOnly {
    fn name(&self) -> &str {
        "whole-only"
    }
    fn export(&self, trace: Arc<TraceRecord>) {
        self.0.export(trace)
    }
    fn flush(&self, timeout: Duration) -> futures::future::BoxFuture<'_, ExportReport> {
        self.0.flush(timeout)
    }
}

/// The spans of a whole run of `steps` steps, as an exporter without parts gets it.
async fn whole(steps: u64) -> Arc<TraceRecord> {
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(WholeOnly(memory.clone())).build().unwrap();
    looping(steps, open_gate()).traced("Whole").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    tracer.flush(Duration::from_secs(30)).await;
    memory.traces().pop().expect("the trace")
}

fn open_gate() -> Arc<Gate> {
    let g = gate(u64::MAX);
    g.open.store(true, Ordering::Relaxed);
    g
}

fn gate(at: u64) -> Arc<Gate> {
    Arc::new(Gate { at, reached: AtomicBool::new(false), open: AtomicBool::new(false) })
}

fn langfuse(server: &LangfuseServer, mode: Ingestion, name: &str) -> LangfuseExporter {
    LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, SK)
        .ingestion(mode)
        .spool_dir(tempdir(name))
        .options(fast_delivery())
        .build()
        .expect("exporter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_runs_spans_reach_an_otlp_backend_before_it_ends() {
    let server = LangfuseServer::start().await;
    let tracer = Tracer::builder().exporter(langfuse(&server, Ingestion::Otel, "otlp")).build().unwrap();
    // 5,000 steps make over 20,000 spans; the gate holds the run at step 3,000.
    let total = whole(5_000).await.spans.len();
    let g = gate(3_000);
    let flow = looping(5_000, Arc::clone(&g));
    let run = {
        let (flow, tracer) = (flow.clone(), tracer.clone());
        tokio::spawn(async move { flow.traced("Long").tracer(&tracer).run(&SharedStore::new()).await })
    };
    assert!(
        eventually(Duration::from_secs(30), || g.reached.load(Ordering::Relaxed)).await,
        "the run reached the gate"
    );
    // While the run waits at the gate, parts of it arrive: at least 4 parts' worth.
    let streamed =
        eventually(Duration::from_secs(30), || server.received(|r| r.otlp_spans.len()) >= 4 * PART_SPANS).await;
    let before_end = server.received(|r| r.otlp_spans.len());
    // The tracer holds less than a part (and a chunk in flight) of the run, not 12,000 spans.
    let held = tracer.held_spans();
    g.open.store(true, Ordering::Relaxed);
    run.await.unwrap().expect("the run succeeds");
    assert!(streamed, "the run's spans reached the backend while it was running ({before_end} received)");
    assert!(held < (PART_SPANS + 256) as u64, "the tracer held {held} spans of a run in progress");
    let report = tracer.flush(Duration::from_secs(30)).await;
    assert!(report.is_complete(), "{report:?}");
    // Straight from memory or after a trip through the spool (when the run outpaces the
    // exporter, a trace waits in the log): every span and the trace itself, all of it sent.
    assert_eq!(report.delivered + report.from_spool, total as u64 + 1, "every span and the trace itself: {report:?}");
    assert_eq!(report.from_spool, report.spooled, "what went to the spool was sent from it: {report:?}");
    server.received(|r| {
        let ids: BTreeSet<&[u8]> = r.otlp_spans.iter().map(|s| s.span_id.as_slice()).collect();
        assert_eq!(ids.len(), total, "every span exactly once, no made-up roots");
        assert_eq!(r.otlp_spans.len(), total);
        // Every span carries the trace's context, parts included.
        assert!(r.otlp_spans.iter().all(|s| attr_str(s, "langfuse.trace.name") == Some("Long")));
        // One root, sent with the run's end, carrying the trace's input and output.
        let roots: Vec<_> = r.otlp_spans.iter().filter(|s| s.parent_span_id.is_empty()).collect();
        assert_eq!(roots.len(), 1);
        assert!(attr_str(roots[0], "langfuse.trace.output").is_some());
        let at = r.otlp_spans.iter().position(|s| s.parent_span_id.is_empty()).unwrap();
        assert!(at >= before_end, "the root came with the run's end");
    });
    assert_eq!(tracer.held_spans(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_runs_observations_reach_the_legacy_api_before_it_ends() {
    let server = LangfuseServer::start().await;
    let tracer = Tracer::builder().exporter(langfuse(&server, Ingestion::Legacy, "legacy")).build().unwrap();
    let total = whole(2_500).await.spans.len();
    let g = gate(2_000);
    let flow = looping(2_500, Arc::clone(&g));
    let run = {
        let (flow, tracer) = (flow.clone(), tracer.clone());
        tokio::spawn(
            async move { flow.traced("LongLegacy").user_id("u-1").tracer(&tracer).run(&SharedStore::new()).await },
        )
    };
    assert!(eventually(Duration::from_secs(30), || g.reached.load(Ordering::Relaxed)).await);
    let streamed = eventually(Duration::from_secs(30), || {
        server.received(|r| r.legacy_events.iter().filter(|e| e["type"] == "span-create").count()) >= 2 * PART_SPANS
    })
    .await;
    let creates_before = server.received(|r| {
        r.legacy_events.iter().filter(|e| e["type"] == "trace-create").map(|e| e["body"].clone()).collect::<Vec<_>>()
    });
    g.open.store(true, Ordering::Relaxed);
    run.await.unwrap().expect("the run succeeds");
    assert!(streamed, "observations arrived while the run was going on");
    // A part's trace-create carries the trace's fields, and no input or output yet.
    assert!(!creates_before.is_empty());
    for body in &creates_before {
        assert_eq!((body["name"].as_str(), body["userId"].as_str()), (Some("LongLegacy"), Some("u-1")));
        assert!(body.get("input").is_none() && body.get("output").is_none(), "{body}");
    }
    let report = tracer.flush(Duration::from_secs(30)).await;
    assert!(report.is_complete(), "{report:?}");
    server.received(|r| {
        assert!(r.invalid.is_empty(), "{:?}", r.invalid);
        let spans: BTreeSet<String> = r
            .legacy_events
            .iter()
            .filter(|e| e["type"] != "trace-create")
            .map(|e| e["body"]["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(spans.len(), total, "every observation once");
        // The run's end brings the trace-create with the store at the end (requests run in
        // parallel, so not necessarily last; the parts' ones leave input and output alone).
        let ends = r.legacy_events.iter().filter(|e| e["type"] == "trace-create" && e["body"].get("output").is_some());
        assert_eq!(ends.count(), 1);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_file_holds_parts_that_merge_back_into_one_trace() {
    let dir = tempdir("file");
    let path = dir.join("traces.jsonl");
    let file = JsonlFileExporter::new(&path).unwrap();
    let tracer = Tracer::builder().exporter(file).build().unwrap();
    let (long, short) = (whole(2_000).await.spans.len(), whole(3).await.spans.len());
    looping(2_000, open_gate()).traced("FileLong").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    // A short run right after: one line, exactly as before.
    looping(3, open_gate()).traced("FileShort").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    let report = tracer.flush(Duration::from_secs(30)).await;
    assert_eq!(report.delivered, (long as u64 + 1) + (short as u64 + 1), "{report:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let parts = lines.iter().filter(|l| l.get("part").is_some()).count();
    assert_eq!(parts, long / PART_SPANS, "a part line per {PART_SPANS} spans");
    let long_end = lines.iter().find(|l| l["name"] == "FileLong" && l.get("part").is_none()).unwrap();
    assert_eq!(long_end["parts"], parts);
    let short_line = lines.iter().find(|l| l["name"] == "FileShort").unwrap();
    assert!(short_line.get("parts").is_none() && short_line.get("part").is_none(), "a short run's line is unchanged");
    let records: Vec<TraceRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let merged = TraceRecord::merge_parts(records);
    assert_eq!(merged.len(), 2);
    assert_eq!((merged[0].name.as_str(), merged[0].spans.len()), ("FileLong", long));
    assert!(merged[0].root().is_some());
    assert!(merged[0].output.is_object());
    assert_eq!(merged[1].spans.len(), short);
    // The tree shows the whole run.
    assert_eq!(merged[0].render_tree().lines().count(), 1 + long);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_keeps_a_long_run_streaming() {
    let dir = tempdir("debug");
    let path = dir.join("traces.jsonl");
    let tracer = Tracer::builder().exporter(JsonlFileExporter::new(&path).unwrap()).debug(true).build().unwrap();
    let g = gate(1_500);
    let run = {
        let (flow, tracer) = (looping(2_000, Arc::clone(&g)), tracer.clone());
        tokio::spawn(async move { flow.traced("DebugLong").tracer(&tracer).run(&SharedStore::new()).await })
    };
    assert!(eventually(Duration::from_secs(30), || g.reached.load(Ordering::Relaxed)).await);
    // 1,499 steps of four spans ended: without streaming the tracer would hold all of them.
    let streamed = eventually(Duration::from_secs(30), || tracer.held_spans() < PART_SPANS as u64).await;
    let held = tracer.held_spans();
    g.open.store(true, Ordering::Relaxed);
    run.await.unwrap().unwrap();
    assert!(streamed, "the tracer holds {held} spans of the run in progress");
    let report = tracer.flush(Duration::from_secs(30)).await;
    assert!(report.is_complete(), "{report:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<TraceRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(records.iter().any(TraceRecord::is_part), "the file got parts while the run went on");
    let merged = TraceRecord::merge_parts(records);
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].spans.len(), whole(2_000).await.spans.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_without_parts_gets_the_whole_trace() {
    let t = whole(1_000).await;
    assert!(t.spans.len() > 2 * PART_SPANS);
    assert_eq!((t.parts, t.part), (0, None));
    assert_eq!(t.spans.iter().filter(|s| s.parent_id.is_none()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_exporter_puts_a_streamed_run_back_together() {
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    // 2,000 steps make over 8,000 spans; the gate holds the run at step 1,000 (4,000 spans).
    let g = gate(1_000);
    let run = tokio::spawn({
        let (g, tracer) = (Arc::clone(&g), tracer.clone());
        async move { looping(2_000, g).traced("Streamed").tracer(&tracer).run(&SharedStore::new()).await }
    });
    assert!(eventually(Duration::from_secs(30), || g.reached.load(Ordering::Relaxed)).await);
    // Mid-run, a part has come in (counted as delivered), but the run is not a trace yet.
    let mut delivered = 0;
    for _ in 0..300 {
        delivered = tracer.flush(Duration::from_secs(30)).await.delivered;
        if delivered >= PART_SPANS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered >= PART_SPANS as u64, "a part of the run reached the exporter ({delivered} spans)");
    assert!(memory.traces().is_empty(), "a run in progress is not a finished trace");
    g.open.store(true, Ordering::Relaxed);
    run.await.unwrap().unwrap();
    tracer.flush(Duration::from_secs(30)).await;
    let traces = memory.traces();
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert!(t.parts > 0, "the run was streamed");
    assert_eq!(t.part, None);
    let ids: BTreeSet<_> = t.spans.iter().map(|s| s.span_id.0).collect();
    assert_eq!(ids.len(), t.spans.len(), "no span twice");
    assert_eq!(t.spans.len(), whole(2_000).await.spans.len(), "every span, once, in one record");
    assert_eq!(t.spans.iter().filter(|s| s.parent_id.is_none()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_in_progress_at_shutdown_leaves_its_spans_as_parts() {
    let dir = tempdir("shutdown");
    let path = dir.join("traces.jsonl");
    let tracer = Tracer::builder().exporter(JsonlFileExporter::new(&path).unwrap()).build().unwrap();
    let g = gate(600);
    let flow = looping(1_000, Arc::clone(&g));
    let run = {
        let (flow, tracer) = (flow.clone(), tracer.clone());
        tokio::spawn(async move { flow.traced("Cut").tracer(&tracer).run(&SharedStore::new()).await })
    };
    assert!(eventually(Duration::from_secs(30), || g.reached.load(Ordering::Relaxed)).await);
    // The run has recorded 599 steps; what reached the tracer is written, not dropped.
    let report = tracer.shutdown(Duration::from_secs(10)).await;
    g.open.store(true, Ordering::Relaxed);
    let _ = run.await;
    assert_eq!(report.dropped, 0, "{report:?}");
    assert!(report.reasons.iter().any(|r| r.contains("still in progress")), "{report:?}");
    let records: Vec<TraceRecord> =
        std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let merged = TraceRecord::merge_parts(records);
    assert_eq!(merged.len(), 1);
    assert!(merged[0].is_part(), "a run without its end stays marked as a part");
    assert_eq!(merged[0].spans.len() as u64, report.delivered);
    assert!(merged[0].render_tree().contains("in progress"));
}
