//! Encoding on several threads: the exporter's encoder threads scrub and encode traces
//! together, and every span still arrives exactly once; a deadline spill waits for the traces
//! being encoded, so none escapes the log.

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use flowtrace::export::{Exporter, Ingestion, LangfuseExporter, Privacy};
use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;
use langfuse_server::{fast_delivery, LangfuseServer, PK, SK};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// `n` distinct traces of a three-node flow (its own span ids each).
async fn traces(n: usize) -> Vec<Arc<TraceRecord>> {
    let a = FnNode::new("A").exec(|_, _| async { Ok(Value::from("a")) }).into_node();
    let b = FnNode::new("B").exec(|_, _| async { Ok(serde_json::json!({"b": [1, 2, 3]})) }).into_node();
    let c = FnNode::new("C").exec(|_, _| async { Ok(Value::from("c")) }).into_node();
    let _ = &a >> &b >> &c;
    let flow = Flow::named("Encoders", &a);
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    for i in 0..n {
        let shared = SharedStore::new();
        shared.insert("i", i as i64);
        flow.traced("Encoders").tracer(&tracer).run(&shared).await.unwrap();
    }
    tracer.flush(T).await;
    let out = memory.traces();
    assert_eq!(out.len(), n);
    out
}

/// Spans of a trace as reports count them (the trace itself is one).
fn counted(ts: &[Arc<TraceRecord>]) -> u64 {
    ts.iter().map(|t| t.spans.len() as u64 + 1).sum()
}

fn exporter(
    server: &LangfuseServer,
    mode: Ingestion,
    threads: usize,
    spool: Option<&std::path::Path>,
) -> LangfuseExporter {
    let b = LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, SK)
        .ingestion(mode)
        .options(fast_delivery().encoder_threads(threads));
    match spool {
        Some(dir) => b.spool_dir(dir),
        None => b.no_spool(),
    }
    .build()
    .expect("the test's exporter builds")
}

fn spool_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowtrace-encoders-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_with_several_encoder_threads_delivers_every_span_exactly_once() {
    let ts = traces(300).await;
    for mode in [Ingestion::Otel, Ingestion::Legacy] {
        for threads in [1, 4] {
            let server = LangfuseServer::start().await;
            let lf = exporter(&server, mode, threads, None);
            for t in &ts {
                lf.export(Arc::clone(t));
            }
            let report = lf.flush(T).await;
            assert!(report.is_complete(), "{mode:?}, {threads} threads: {report:?}");
            assert_eq!(report.delivered, counted(&ts), "{mode:?}, {threads} threads: {report:?}");
            let spans: usize = ts.iter().map(|t| t.spans.len()).sum();
            let (received, distinct) = match mode {
                Ingestion::Otel => (server.received(|r| r.otlp_spans.len()), server.otlp_span_ids().len()),
                _ => (
                    server.received(|r| r.legacy_events.iter().filter(|e| e["type"] == "span-create").count()),
                    server.received(|r| {
                        r.legacy_events
                            .iter()
                            .filter(|e| e["type"] == "span-create")
                            .filter_map(|e| e["body"]["id"].as_str())
                            .collect::<std::collections::BTreeSet<_>>()
                            .len()
                    }),
                ),
            };
            assert_eq!((received, distinct), (spans, spans), "{mode:?}, {threads} threads: each span once");
            lf.shutdown(T).await;
        }
    }
}

/// A mask hook that holds the first trace it sees until released (and says when it has it).
struct Gate {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
    first: AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_spill_waits_for_traces_being_encoded_and_none_escapes_the_log() {
    let ts = traces(120).await;
    let server = LangfuseServer::start().await;
    server.down();
    let dir = spool_dir("spill");
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
        first: AtomicBool::new(true),
    });
    let g = Arc::clone(&gate);
    let privacy = Privacy::default().with_mask(move |v| {
        if g.first.swap(false, Ordering::SeqCst) {
            let _ = g.entered.lock().unwrap().send(());
            let _ = g.release.lock().unwrap().recv();
        }
        v
    });
    let lf = LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, SK)
        .ingestion(Ingestion::Otel)
        .options(fast_delivery().encoder_threads(3))
        .spool_dir(&dir)
        .privacy(privacy)
        .build()
        .unwrap();
    for t in &ts {
        lf.export(Arc::clone(t));
    }
    // A trace is in the middle of being scrubbed when the flush's deadline (now) comes.
    tokio::task::spawn_blocking(move || entered.recv().expect("the hook ran")).await.unwrap();
    let mut flush = lf.flush(Duration::ZERO);
    assert!(futures::poll!(&mut flush).is_pending(), "the flush waits for the worker");
    release.send(()).unwrap();
    let report = flush.await;
    // Every span is accounted for at the answer: in the log (spooled), none pending or lost.
    assert_eq!((report.pending, report.dropped, report.delivered), (0, 0, 0), "{report:?}");
    assert_eq!(report.spooled, counted(&ts), "{report:?}");
    lf.shutdown(T).await;

    // What the log holds is every trace: a new exporter on the folder delivers each span once.
    server.up().await;
    let again = exporter(&server, Ingestion::Otel, 3, Some(&dir));
    let report = again.flush(T).await;
    assert!(report.is_complete(), "{report:?}");
    let spans: usize = ts.iter().map(|t| t.spans.len()).sum();
    assert_eq!(server.received(|r| r.otlp_spans.len()), spans, "each span once");
    assert_eq!(server.otlp_span_ids().len(), spans);
    again.shutdown(T).await;
    let _ = std::fs::remove_dir_all(&dir);
}
