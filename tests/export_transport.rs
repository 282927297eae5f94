//! How requests travel: several in flight at once on both Langfuse protocols (never more
//! than `max_in_flight`), and gzip on the OTLP path when asked, never on the legacy one.

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::time::Duration;

use flowtrace::export::{Compression, Ingestion, LangfuseExporter};
use flowtrace::Tracer;
use langfuse_server::{attr_str, fast_delivery, run_sample, Fault, LangfuseServer, PK, SK};

const RUNS: usize = 8;

fn exporter(server: &LangfuseServer, mode: Ingestion, in_flight: usize, c: Option<Compression>) -> LangfuseExporter {
    // One trace per batch, so every run is a request of its own.
    let opts = fast_delivery().max_batch_spans(1).max_in_flight(in_flight);
    let b = LangfuseExporter::builder().host(server.url()).keys(PK, SK).ingestion(mode).no_spool().options(opts);
    match c {
        Some(c) => b.compression(c),
        None => b,
    }
    .build()
    .expect("exporter")
}

async fn run_all(server: &LangfuseServer, exporter: LangfuseExporter) {
    let tracer = Tracer::builder().exporter(exporter).build().unwrap();
    for i in 0..RUNS {
        assert!(run_sample(&tracer, i).await.0.is_ok());
    }
    let report = tracer.flush(Duration::from_secs(20)).await;
    assert!(report.is_complete(), "{report:?}");
    let ok = server.received(|r| r.requests.iter().filter(|(_, s)| (200..300).contains(s)).count());
    assert_eq!(ok, RUNS, "one request per run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_requests_are_in_flight_on_both_protocols() {
    for mode in [Ingestion::Otel, Ingestion::Legacy] {
        for in_flight in [1, 4] {
            let server = LangfuseServer::start().await;
            // Each request is held long enough for the next ones to be sent meanwhile.
            server.fault(Fault::Slow(Duration::from_millis(300)));
            run_all(&server, exporter(&server, mode, in_flight, None)).await;
            let max = server.received(|r| r.max_concurrent);
            assert_eq!(max, in_flight, "{mode:?}: requests in flight with max_in_flight = {in_flight}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_bodies_are_gzipped_when_asked_and_arrive_whole() {
    let plain = LangfuseServer::start().await;
    // A host on this machine gets plain bodies by default.
    run_all(&plain, exporter(&plain, Ingestion::Otel, 4, None)).await;
    let gz = LangfuseServer::start().await;
    run_all(&gz, exporter(&gz, Ingestion::Otel, 4, Some(Compression::Gzip))).await;
    assert!(plain.received(|r| r.encodings.iter().all(String::is_empty)));
    assert!(gz.received(|r| r.encodings.len() == RUNS && r.encodings.iter().all(|e| e == "gzip")));
    // The same spans and attributes either way.
    let key = |s: &opentelemetry_proto::tonic::trace::v1::Span| {
        (s.name.clone(), attr_str(s, "langfuse.observation.metadata").map(str::to_owned))
    };
    let mut a: Vec<_> = plain.received(|r| r.otlp_spans.iter().map(key).collect());
    let mut b: Vec<_> = gz.received(|r| r.otlp_spans.iter().map(key).collect());
    a.sort();
    b.sort();
    assert!(!a.is_empty());
    assert_eq!(a, b);
    let (pa, pb): (usize, usize) =
        (plain.received(|r| r.body_sizes.iter().sum()), gz.received(|r| r.body_sizes.iter().sum()));
    assert!(pb * 2 < pa, "gzip shrinks the bodies: {pb} vs {pa} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_bodies_stay_plain_json() {
    let server = LangfuseServer::start().await;
    run_all(&server, exporter(&server, Ingestion::Legacy, 4, Some(Compression::Gzip))).await;
    assert!(server.received(|r| r.encodings.len() == RUNS && r.encodings.iter().all(String::is_empty)));
    assert!(server.received(|r| !r.legacy_events.is_empty() && r.invalid.is_empty()));
}
