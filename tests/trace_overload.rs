//! A tracer that falls behind loses nothing: with exporters that take parts, runs past the
//! tracer's backlog limit hand their spans to the exporters themselves (which queue them or
//! write them to their spools) instead of shedding them; every span reaches the exporter and
//! the tracer's queue stays bounded. A flush whose deadline passes while the backend is slow
//! leaves everything undelivered in the spool, nothing pending, and returns by its deadline
//! plus a second.

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use flowtrace::export::{ExportReport, Exporter, LangfuseExporter};
use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;
use langfuse_server::{fast_delivery, Fault, LangfuseServer, PK, SK};
use serde_json::json;

/// Counts the spans it is given (parts and whole traces), holding the tracer's thread at its
/// first call there until the test lets it go: a tracer far behind.
struct Gated {
    gate: parking_lot::Mutex<Option<mpsc::Receiver<()>>>,
    spans: AtomicU64,
    from_runs: AtomicU64,
}

impl Gated {
    fn take(&self, t: &TraceRecord) {
        let on_tracer = std::thread::current().name() == Some("flowtrace-tracer");
        if on_tracer {
            if let Some(rx) = self.gate.lock().take() {
                let _ = rx.recv();
            }
        } else {
            self.from_runs.fetch_add(t.weight(), Ordering::Relaxed);
        }
        self.spans.fetch_add(t.weight(), Ordering::Relaxed);
    }
}

struct Handle(Arc<Gated>);

impl Exporter for Handle {
    fn name(&self) -> &str {
        "gated"
    }
    fn export(&self, trace: Arc<TraceRecord>) {
        self.0.take(&trace);
    }
    fn takes_parts(&self) -> bool {
        true
    }
    fn export_part(&self, part: Arc<TraceRecord>) {
        assert!(part.is_part());
        self.0.take(&part);
    }
    fn flush(&self, _t: Duration) -> futures::future::BoxFuture<'_, ExportReport> {
        Box::pin(async { ExportReport::default() })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracer_far_behind_sheds_nothing_when_the_exporters_take_parts() {
    let (open, gate) = mpsc::channel();
    let gated = Arc::new(Gated { gate: parking_lot::Mutex::new(Some(gate)), spans: 0.into(), from_runs: 0.into() });
    let tracer = Tracer::builder().exporter(Handle(Arc::clone(&gated))).build().unwrap();
    // The first run's trace holds the tracer's thread at the gate.
    let one = FnNode::new("One").into_node();
    Flow::new(&one).traced("first").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    // 150,000 items record 300,000 spans (an item and an attempt each), far past the limit.
    let big = FnBatchNode::new("Big").items(|_| Ok(json!(vec![0; 150_000]))).into_node();
    Flow::new(&big).traced("big").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    // Runs of short traces too, while the tracer is still held.
    for _ in 0..20_000 {
        Flow::new(&one).traced("short").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    }
    let from_runs = gated.from_runs.load(Ordering::Relaxed);
    assert!(from_runs > 200_000, "past the limit, runs handed spans over themselves ({from_runs})");
    open.send(()).unwrap();
    let report = tracer.flush(Duration::from_secs(30)).await;
    assert_eq!(report.dropped, 0, "nothing shed: {report:?}");
    let whole = |spans: u64| spans + 1;
    // first: 6 spans (flow, node, prep, exec, attempt, post); big: 300,005; short: 6 each.
    let produced = whole(6) + whole(300_005) + 20_000 * whole(6);
    assert_eq!(gated.spans.load(Ordering::Relaxed), produced, "every span reached the exporter once");
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowtrace-overload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_deadline_with_a_slow_backend_leaves_everything_in_the_spool() {
    let server = LangfuseServer::start().await;
    server.fault(Fault::Slow(Duration::from_secs(3)));
    let dir = tempdir("slow");
    let exporter = LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, SK)
        .spool_dir(dir.clone())
        .options(fast_delivery())
        .build()
        .unwrap();
    let tracer = Tracer::builder().exporter(exporter).build().unwrap();
    let one = FnNode::new("One").into_node();
    let flow = Flow::new(&one);
    for _ in 0..1_000 {
        flow.traced("burst").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    }
    let start = Instant::now();
    let report = tracer.shutdown(Duration::from_millis(500)).await;
    let took = start.elapsed();
    // By the deadline plus a second (the bound), with room for a loaded test machine.
    assert!(took < Duration::from_millis(2_500), "shutdown(500 ms) returned after {took:?}");
    let produced = 1_000 * 7;
    assert_eq!((report.pending, report.dropped), (0, 0), "{report:?}");
    assert_eq!(report.delivered + report.spooled, produced, "{report:?}");
    // What was not delivered is in the spool, for the next process.
    let spooled: u64 = flowtrace::export::read_spool(&dir).unwrap().iter().map(|t| t.weight()).sum();
    assert!(spooled >= report.spooled, "{spooled} spans in the spool, {} reported spooled", report.spooled);
}
