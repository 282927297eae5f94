//! The trace backend goes down during a load of runs through a [`Runtime`], then comes back:
//! no run is slowed or failed by it, and every span is delivered or spooled, and after the
//! backend is back the spool is delivered too.

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::time::Duration;

use flowtrace::export::{Exporter, Ingestion, LangfuseExporter};
use flowtrace::prelude::*;
use flowtrace::runtime::Runtime;
use langfuse_server::{LangfuseServer, PK, SK};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn flow() -> Flow {
    let a = FnNode::new("A").exec(|_, _| async { Ok(Value::from("a")) }).into_node();
    let b = FnNode::new("B")
        .exec(|_, _| async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(Value::from("b"))
        })
        .into_node();
    let _ = &a >> &b;
    Flow::named("Outage", &a)
}

/// The Langfuse exporter of these tests: OTLP, quick retries, its spool in `spool`.
fn exporter(server: &LangfuseServer, spool: &std::path::Path) -> LangfuseExporter {
    LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, SK)
        .ingestion(Ingestion::Otel)
        .spool_dir(spool)
        .options(langfuse_server::fast_delivery())
        .build()
        .expect("the test's exporter builds")
}

async fn load(rt: &Runtime, flow: &Flow, n: usize) {
    let mut handles = Vec::new();
    for _ in 0..n {
        handles.push(rt.spawn(flow, &SharedStore::new()).await.unwrap());
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_mid_load_then_back_loses_nothing() {
    let server = LangfuseServer::start().await;
    let spool = std::env::temp_dir().join(format!("flowtrace-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let lf = exporter(&server, &spool);
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(lf.clone()).exporter(memory.clone()).build().unwrap();
    let rt = Runtime::builder().max_in_flight(64).tracer(&tracer).build().unwrap();
    let flow = flow();

    // Up, then down in the middle of the load, then back up.
    load(&rt, &flow, 300).await;
    server.down();
    load(&rt, &flow, 400).await;
    let stats = rt.stats();
    assert_eq!((stats.succeeded, stats.failed), (700, 0), "the outage failed no run");
    tracer.flush(T).await;
    let during = lf.flush(T).await;
    let total: u64 = memory.traces().iter().map(|t| t.spans.len() as u64 + 1).sum();
    assert_eq!(memory.traces().len(), 700);
    assert_eq!(during.dropped, 0, "{during:?}");
    assert_eq!(during.pending, 0, "{during:?}");
    assert_eq!(during.delivered + during.spooled, total, "every span delivered or spooled: {during:?}");
    assert!(during.spooled > 0, "the outage spooled nothing: {during:?}");

    server.up().await;
    load(&rt, &flow, 100).await;
    let report = rt.shutdown(T).await;
    let after = lf.flush(T).await;
    let export = report.export.clone().unwrap();
    assert!(export.is_complete(), "{report}");
    assert_eq!(export.dropped + after.dropped, 0);
    // Every span of the 800 runs reached the backend once it was back (OTLP carries the
    // spans; the trace itself is their root).
    let expected: usize = memory.traces().iter().map(|t| t.spans.len()).sum();
    assert_eq!(memory.traces().len(), 800);
    let deadline = std::time::Instant::now() + T;
    while server.otlp_span_ids().len() < expected && std::time::Instant::now() < deadline {
        lf.flush(T).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.otlp_span_ids().len(), expected);
    let _ = std::fs::remove_dir_all(&spool);
}

/// A frame of the spool's log as versions before the binary record wrote it: length,
/// sequence, FNV-1a checksum of the payload, and the trace as JSON.
fn json_frame(seq: u64, t: &flowtrace::trace::TraceRecord) -> Vec<u8> {
    let payload = serde_json::to_vec(t).unwrap();
    let sum = payload.iter().fold(0x811c_9dc5u32, |h, b| (h ^ *b as u32).wrapping_mul(0x0100_0193));
    let mut f = Vec::new();
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(&sum.to_le_bytes());
    f.extend_from_slice(&payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_left_by_the_previous_version_is_delivered() {
    // Real traces, as a process of the previous version would have spooled them.
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    let flow = flow();
    for _ in 0..5 {
        flow.traced("Outage").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    }
    tracer.flush(T).await;
    let traces = memory.traces();
    assert_eq!(traces.len(), 5);
    let spool = std::env::temp_dir().join(format!("flowtrace-old-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    std::fs::create_dir_all(&spool).unwrap();
    let mut segment = Vec::new();
    for (i, t) in traces.iter().enumerate() {
        segment.extend(json_frame(i as u64, t));
    }
    std::fs::write(spool.join(format!("{:020}.seg", 0)), segment).unwrap();
    assert_eq!(flowtrace::export::read_spool(&spool).unwrap().len(), 5, "the JSON records read back");

    let server = LangfuseServer::start().await;
    let lf = exporter(&server, &spool);
    let report = lf.shutdown(T).await;
    let spans: u64 = traces.iter().map(|t| t.spans.len() as u64 + 1).sum();
    assert_eq!((report.from_spool, report.dropped), (spans, 0), "{report:?}");
    let expected: usize = traces.iter().map(|t| t.spans.len()).sum();
    assert_eq!(server.otlp_span_ids().len(), expected);
    assert!(flowtrace::export::read_spool(&spool).unwrap().is_empty(), "the spool is drained");
    let _ = std::fs::remove_dir_all(&spool);
}
