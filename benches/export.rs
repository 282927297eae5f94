//! Exporter throughput: spans per second encoded (OTLP protobuf, Langfuse legacy JSON), and
//! encoded and delivered over HTTP to a local Langfuse-compatible sink, both protocols.
//!
//! `EXPORT_BENCH_ENCODER_THREADS=n` sets the delivery benches' encoder threads (default: the
//! exporter's own, one per core up to four). `EXPORT_BENCH_ONCE=<name>` (e.g.
//! `otlp_1000_traces`) delivers that case's 1,000 traces once, without criterion's timing:
//! a run to count instructions under `valgrind --tool=callgrind --separate-threads=yes`.

#[path = "support/sink.rs"]
mod sink;
#[path = "support/workloads.rs"]
mod workloads;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowtrace::export::__bench as wire;
use flowtrace::export::{Compression, DeliveryOptions, Exporter, Ingestion, LangfuseExporter};
use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;

/// One real trace of the seed flow (11 spans and the trace itself).
fn seed_trace(rt: &tokio::runtime::Runtime) -> Arc<TraceRecord> {
    rt.block_on(async {
        let memory = MemoryExporter::new();
        let tracer = Tracer::builder().exporter(memory.clone()).build().expect("tracer");
        let shared = SharedStore::new();
        shared.insert("ticket", workloads::ticket());
        workloads::seed().traced("CustomerSupportTicketAnalysis").tracer(&tracer).run(&shared).await.expect("run");
        tracer.flush(Duration::from_secs(5)).await;
        memory.traces().pop().expect("trace")
    })
}

fn encode(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let trace = seed_trace(&rt);
    if std::env::var_os("EXPORT_BENCH_DUMP").is_some() {
        eprintln!("{}", serde_json::to_string_pretty(&*trace).unwrap_or_default());
    }
    let spans_per_trace = trace.spans.len() as u64 + 1;
    let mut g = c.benchmark_group("export_encode");
    g.throughput(Throughput::Elements(100 * spans_per_trace));
    let resource = wire::resource("bench");
    {
        let mut spans = Vec::new();
        wire::otlp_encode_trace(&trace, &mut spans);
        let body = wire::otlp_encode_request(&resource, &spans);
        let json = serde_json::to_vec(&*trace).map(|v| v.len()).unwrap_or(0);
        eprintln!(
            "seed trace: {spans_per_trace} spans, {json} bytes as JSON, {} bytes as one OTLP request",
            body.len()
        );
    }
    g.bench_function("otlp_protobuf_100_traces", |b| {
        b.iter(|| {
            let mut spans = Vec::new();
            for _ in 0..100 {
                wire::otlp_encode_trace(&trace, &mut spans);
            }
            wire::otlp_encode_request(&resource, &spans)
        })
    });
    // The privacy scan every destination runs before writing: for a trace with nothing to
    // redact it is a scan (keys, strings, depth, size) and no copy.
    let privacy = flowtrace::export::Privacy::default().with_secret_values(["sk-lf-bench-0000-secret"]);
    assert!(Arc::ptr_eq(&privacy.apply_shared(Arc::clone(&trace)), &trace), "the seed trace has nothing to redact");
    g.bench_function("privacy_scan_100_traces", |b| {
        b.iter(|| {
            for _ in 0..100 {
                std::hint::black_box(privacy.apply_shared(Arc::clone(&trace)));
            }
        })
    });
    g.bench_function("legacy_json_100_traces", |b| {
        b.iter(|| {
            let mut events = Vec::new();
            for _ in 0..100 {
                wire::legacy_encode_trace(&trace, &mut events);
            }
            wire::legacy_batch_body(&events, "pk-lf-bench")
        })
    });
    g.finish();
}

/// One real trace of the bench's chain of ten nodes (50 spans and the trace itself).
fn chain_trace(rt: &tokio::runtime::Runtime) -> Arc<TraceRecord> {
    rt.block_on(async {
        let memory = MemoryExporter::new();
        let tracer = Tracer::builder().exporter(memory.clone()).build().expect("tracer");
        let shared = SharedStore::new();
        shared.insert("x", 0_i64);
        workloads::chain(10).traced("ChainFlow").tracer(&tracer).run(&shared).await.expect("run");
        tracer.flush(Duration::from_secs(5)).await;
        memory.traces().pop().expect("trace")
    })
}

/// The write-ahead spool: a chain trace as a log record (binary, and JSON as before), and
/// appended to and read back from a log on disk.
fn spool(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let trace = chain_trace(&rt);
    let spans = trace.spans.len() as u64 + 1;
    let mut bin = Vec::new();
    wire::spool::encode(&trace, &mut bin);
    let json = serde_json::to_vec(&*trace).expect("json");
    eprintln!(
        "chain trace: {spans} spans; record {} B binary ({:.1} B/span), {} B JSON ({:.1} B/span), 16 B frame header",
        bin.len(),
        bin.len() as f64 / spans as f64,
        json.len(),
        json.len() as f64 / spans as f64
    );
    let mut g = c.benchmark_group("spool");
    g.throughput(Throughput::Elements(100 * spans));
    g.bench_function("encode_binary_100_traces", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            out.clear();
            for _ in 0..100 {
                wire::spool::encode(&trace, &mut out);
            }
            out.len()
        })
    });
    g.bench_function("encode_json_100_traces", |b| {
        let mut out = Vec::new();
        b.iter(|| {
            out.clear();
            for _ in 0..100 {
                serde_json::to_writer(&mut out, &*trace).expect("json");
            }
            out.len()
        })
    });
    g.bench_function("decode_binary_100_traces", |b| {
        b.iter(|| (0..100).filter_map(|_| wire::spool::decode(&bin)).count())
    });
    g.bench_function("decode_json_100_traces", |b| {
        b.iter(|| (0..100).filter_map(|_| serde_json::from_slice::<TraceRecord>(&json).ok()).count())
    });
    let dir = std::env::temp_dir().join(format!("flowtrace-bench-spool-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut log = wire::spool::Spool::open(&dir).expect("spool");
    // Appends and reads are paired so the log's acknowledged segments go and the disk stays
    // small; the two are timed apart.
    g.bench_function("append_100_traces", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for _ in 0..100 {
                    log.append(&trace);
                }
                total += start.elapsed();
                assert_eq!(log.read_and_ack(100), 100);
            }
            total
        })
    });
    g.bench_function("read_back_100_traces", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..100 {
                    log.append(&trace);
                }
                let start = Instant::now();
                assert_eq!(log.read_and_ack(100), 100);
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}

fn deliver(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let trace = seed_trace(&rt);
    let spans_per_trace = trace.spans.len() as u64 + 1;
    let mut g = c.benchmark_group("export_deliver");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1000 * spans_per_trace));
    for (name, ingestion, compression, on_wire) in [
        // OTLP carries the trace as attributes of its root span; legacy sends a trace-create.
        // A loopback sink gets plain bodies by default; gzip is what a remote Langfuse gets.
        ("otlp_1000_traces", Ingestion::Otel, Compression::None, spans_per_trace - 1),
        ("otlp_gzip_1000_traces", Ingestion::Otel, Compression::Gzip, spans_per_trace - 1),
        ("legacy_1000_traces", Ingestion::Legacy, Compression::None, spans_per_trace),
    ] {
        let sink = sink::Sink::start();
        let mut options = DeliveryOptions::default();
        // The default is one encoder thread per core (at most four); this compares others.
        if let Some(n) = std::env::var("EXPORT_BENCH_ENCODER_THREADS").ok().and_then(|v| v.parse().ok()) {
            options = options.encoder_threads(n);
        }
        let exporter = LangfuseExporter::builder()
            .host(format!("http://{}", sink.addr))
            .keys("pk-lf-bench", "sk-lf-bench")
            .ingestion(ingestion)
            .compression(compression)
            .options(options)
            .no_spool()
            .build()
            .expect("exporter");
        if let Some(once) = std::env::var_os("EXPORT_BENCH_ONCE") {
            if once == name {
                rt.block_on(async {
                    for _ in 0..1000 {
                        exporter.export(Arc::clone(&trace));
                    }
                    let report = exporter.flush(Duration::from_secs(600)).await;
                    assert!(report.is_complete(), "{report:?}");
                });
                assert_eq!(sink.spans.load(Ordering::Relaxed), 1000 * on_wire, "the sink got every span");
                eprintln!("{name}: delivered once ({} spans on the wire)", 1000 * on_wire);
            }
            continue;
        }
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    sink.spans.store(0, Ordering::Relaxed);
                    let start = Instant::now();
                    // The exporter's worker runs on a runtime; drive it from this one.
                    rt.block_on(async {
                        for _ in 0..1000 {
                            exporter.export(Arc::clone(&trace));
                        }
                        let report = exporter.flush(Duration::from_secs(60)).await;
                        assert!(report.is_complete(), "{report:?}");
                    });
                    total += start.elapsed();
                    assert_eq!(sink.spans.load(Ordering::Relaxed), 1000 * on_wire, "the sink got every span");
                }
                total
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    // Short windows keep all benches within a few minutes on a 2-core machine.
    Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, spool, deliver
}
criterion_main!(benches);
