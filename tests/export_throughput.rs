//! Rough exporter throughput: spans encoded and delivered per second to a local sink that
//! answers 200 at once. Ignored by default (timing, release build):
//! `cargo test --release --test export_throughput -- --ignored --nocapture`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use flowtrace::export::{DeliveryOptions, Exporter, Ingestion, LangfuseExporter, OtlpExporter};
use flowtrace::TraceRecord;
use serde_json::json;

fn sample_trace(id: u128, spans: usize) -> TraceRecord {
    let mut list = vec![json!({"span_id": format!("{:016x}", 1), "kind": "flow", "name": "Flow",
        "start_unix_nanos": 1_000, "end_unix_nanos": 9_000, "status": "ok"})];
    for i in 2..=spans as u64 {
        list.push(json!({"span_id": format!("{i:016x}"), "parent_id": format!("{:016x}", 1), "kind": "exec",
            "name": format!("Node{i}.exec"), "start_unix_nanos": 1_000 + i, "end_unix_nanos": 2_000 + i,
            "status": "ok", "input": {"question": "what is the weather", "n": i}, "output": "sunny",
            "attributes": {"node_type": "FnNode", "attempt": 1}}));
    }
    serde_json::from_value(json!({"trace_id": format!("{id:032x}"), "name": "Bench", "start_unix_nanos": 1_000,
        "end_unix_nanos": 9_000, "input": {"q": 1}, "output": {"a": 2}, "status": "ok", "spans": list}))
    .expect("a trace")
}

async fn sink() -> (String, Arc<AtomicU64>) {
    let bytes = Arc::new(AtomicU64::new(0));
    let b = Arc::clone(&bytes);
    let handler = move |body: axum::body::Bytes| {
        let b = Arc::clone(&b);
        async move {
            b.fetch_add(body.len() as u64, Ordering::Relaxed);
            (axum::http::StatusCode::OK, "{}")
        }
    };
    let app = axum::Router::new()
        .route("/v1/traces", post(handler.clone()))
        .route("/api/public/otel/v1/traces", post(handler.clone()))
        .route("/api/public/ingestion", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bytes)
}

async fn measure(label: &str, e: &dyn Exporter, traces: usize, spans: usize) {
    let sample = sample_trace(1, spans);
    let batch: Vec<Arc<TraceRecord>> = (0..traces)
        .map(|i| {
            let mut t = sample.clone();
            t.trace_id = flowtrace::trace::TraceId(i as u128 + 1);
            Arc::new(t)
        })
        .collect();
    let started = Instant::now();
    for t in batch {
        e.export(t);
    }
    let r = e.flush(Duration::from_secs(120)).await;
    let secs = started.elapsed().as_secs_f64();
    assert!(r.is_complete() && r.spooled == 0, "{r:?}");
    println!(
        "{label}: {} spans (+{} traces) in {secs:.2} s = {:.0} spans/s",
        traces * spans,
        traces,
        r.delivered as f64 / secs
    );
}

/// Encoding alone, on this thread: OTLP protobuf and legacy JSON.
fn measure_encoding(traces: usize, spans: usize) {
    let sample = sample_trace(1, spans);
    let resource = flowtrace::export::otlp::resource("bench");
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..traces {
        let mut out = Vec::new();
        flowtrace::export::otlp::encode_trace(&sample, &mut out);
        bytes += flowtrace::export::otlp::encode_request(&resource, out).len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!("otlp encode only: {:.0} spans/s ({} MB)", (traces * spans) as f64 / secs, bytes / 1_000_000);
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..traces {
        let mut out = Vec::new();
        flowtrace::export::legacy::encode_trace(&sample, &mut out);
        bytes += serde_json::to_vec(&out).map(|b| b.len()).unwrap_or(0);
    }
    let secs = started.elapsed().as_secs_f64();
    println!("legacy encode only: {:.0} spans/s ({} MB)", (traces * spans) as f64 / secs, bytes / 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing; run in release with --ignored --nocapture"]
async fn exporter_throughput() {
    measure_encoding(10_000, 50);
    let (url, bytes) = sink().await;
    let spool = std::env::temp_dir().join(format!("flowtrace-throughput-{}", std::process::id()));
    for spans_per_batch in [64, 1024] {
        let o = DeliveryOptions { queue_capacity: 100_000, max_batch_spans: spans_per_batch, ..Default::default() };
        let otlp = OtlpExporter::builder().endpoint(&url).options(o.clone()).spool_dir(&spool).build().unwrap();
        measure(&format!("otlp, {spans_per_batch}-span batches"), &otlp, 10_000, 50).await;
        let legacy = LangfuseExporter::builder()
            .host(&url)
            .keys("pk", "sk")
            .ingestion(Ingestion::Legacy)
            .options(o)
            .spool_dir(&spool)
            .build()
            .unwrap();
        measure(&format!("legacy, {spans_per_batch}-span batches"), &legacy, 10_000, 50).await;
    }
    println!("sink received {} MB", bytes.load(Ordering::Relaxed) / 1_000_000);
}
