//! Delivery under faults: the backend down, slow, answering 500, 429 with `Retry-After`, 207
//! with some errors, 413 and 401, and a full queue. In each case the flow's result is
//! unaffected and every span ends up delivered, spooled or (for rejected events) dropped,
//! all counted.

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flowtrace::export::{DeliveryOptions, ExportReport, Exporter, Ingestion, LangfuseExporter, MemoryExporter};
use flowtrace::Tracer;
use langfuse_server::{run_sample, Fault, LangfuseServer, PK, SK};

const T: Duration = Duration::from_secs(20);

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowtrace-faults-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn opts() -> DeliveryOptions {
    langfuse_server::fast_delivery()
}

struct Setup {
    server: LangfuseServer,
    lf: LangfuseExporter,
    tracer: Tracer,
    memory: MemoryExporter,
    spool: PathBuf,
}

async fn setup(name: &str, mode: Ingestion, o: DeliveryOptions, secret: &str) -> Setup {
    let server = LangfuseServer::start().await;
    let spool = tempdir(name);
    let lf = LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, secret)
        .ingestion(mode)
        .spool_dir(&spool)
        .options(o)
        .build()
        .unwrap();
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(lf.clone()).exporter(memory.clone()).build().unwrap();
    Setup { server, lf, tracer, memory, spool }
}

impl Setup {
    /// Runs `n` flows and checks each result is what it is without any exporter trouble.
    async fn run_flows(&self, n: usize) {
        for i in 0..n {
            let started = Instant::now();
            let (r, shout) = run_sample(&self.tracer, i).await;
            assert!(r.is_ok(), "{r:?}");
            assert_eq!(shout, Some(format!("HELLO USER{i}")));
            assert!(started.elapsed() < Duration::from_secs(2), "a run waited on the exporter");
        }
    }
    /// Spans handed to the exporter (one per span plus one per trace).
    fn total(&self) -> u64 {
        self.memory.traces().iter().map(|t| t.spans.len() as u64 + 1).sum()
    }
    async fn flush(&self) -> ExportReport {
        self.tracer.flush(T).await;
        self.lf.flush(T).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_spools_and_the_next_process_delivers() {
    let s = setup("down", Ingestion::Otel, opts(), SK).await;
    s.server.down();
    s.run_flows(3).await;
    let r = s.flush().await;
    assert_eq!((r.delivered, r.spooled, r.dropped, r.pending), (0, s.total(), 0, 0), "{r:?}");
    assert!(std::fs::read_dir(&s.spool).unwrap().count() > 0);
    s.lf.shutdown(T).await;

    // The backend is back; a new exporter (the next process) with the same spool sends it.
    s.server.up().await;
    let next = LangfuseExporter::builder()
        .host(s.server.url())
        .keys(PK, SK)
        .ingestion(Ingestion::Otel)
        .spool_dir(&s.spool)
        .options(opts())
        .build()
        .unwrap();
    let r = next.flush(T).await;
    assert_eq!(r.from_spool, s.total(), "{r:?}");
    let expected: usize = s.memory.traces().iter().map(|t| t.spans.len()).sum();
    assert_eq!(s.server.otlp_span_ids().len(), expected);
    assert_eq!(
        std::fs::read_dir(&s.spool)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "jsonl"))
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_then_back_in_the_same_process() {
    let s = setup("down-up", Ingestion::Legacy, opts(), SK).await;
    s.server.down();
    s.run_flows(2).await;
    let r = s.flush().await;
    assert_eq!(r.spooled, s.total(), "{r:?}");
    s.server.up().await;
    let r = s.flush().await;
    assert_eq!((r.from_spool, r.spooled, r.dropped), (s.total(), s.total(), 0), "{r:?}");
    assert!(s.server.received(|r| r.invalid.is_empty()));
    assert_eq!(s.server.legacy_body_ids().len() as u64, s.total());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_times_out_into_the_spool() {
    let o = opts().request_timeout(Duration::from_millis(100)).max_attempts(2);
    let s = setup("slow", Ingestion::Otel, o, SK).await;
    s.server.fault(Fault::Slow(Duration::from_millis(400)));
    s.run_flows(2).await;
    let r = s.flush().await;
    assert_eq!((r.delivered + r.spooled, r.dropped, r.pending), (s.total(), 0, 0), "{r:?}");
    assert!(r.spooled > 0);
    // Fast again: the spool drains on the next flush.
    s.server.fault(Fault::None);
    let r = s.flush().await;
    assert_eq!(r.from_spool, r.spooled, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried() {
    let s = setup("500", Ingestion::Otel, opts(), SK).await;
    s.server.fault(Fault::Status { code: 500, times: 2 });
    s.run_flows(2).await;
    let r = s.flush().await;
    assert_eq!((r.delivered, r.spooled, r.dropped), (s.total(), 0, 0), "{r:?}");
    let codes: Vec<u16> = s.server.received(|r| r.requests.iter().map(|x| x.1).collect());
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 2, "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_honours_retry_after() {
    let s = setup("429", Ingestion::Otel, opts(), SK).await;
    s.server.fault(Fault::RateLimited { retry_after_secs: 1, times: 1 });
    s.run_flows(1).await;
    let started = Instant::now();
    let r = s.flush().await;
    assert_eq!((r.delivered, r.spooled, r.dropped), (s.total(), 0, 0), "{r:?}");
    assert!(started.elapsed() >= Duration::from_millis(950), "Retry-After was not honoured: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_207_resends_only_the_failed_events() {
    let s = setup("207-500", Ingestion::Legacy, opts(), SK).await;
    s.server.fault(Fault::Partial { every: 3, status: 500 });
    s.run_flows(2).await;
    let r = s.flush().await;
    assert_eq!((r.delivered, r.spooled, r.dropped), (s.total(), 0, 0), "{r:?}");
    // Each event arrived exactly once: the successes were not resent.
    let events = s.server.received(|r| r.legacy_events.len()) as u64;
    assert_eq!(events, s.total());
    assert_eq!(s.server.legacy_body_ids().len() as u64, s.total());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_207_rejections_are_reported_with_the_server_message() {
    let s = setup("207-400", Ingestion::Legacy, opts(), SK).await;
    s.server.fault(Fault::Partial { every: 4, status: 400 });
    s.run_flows(2).await;
    let r = s.flush().await;
    assert!(r.dropped > 0, "{r:?}");
    assert_eq!(r.delivered + r.dropped, s.total(), "{r:?}");
    assert_eq!(s.server.received(|r| r.legacy_events.len()) as u64, r.delivered);
    assert!(r.reasons.iter().any(|x| x.contains("injected 400")), "{:?}", r.reasons);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_too_large_is_split() {
    let o = opts().max_batch_spans(10_000).max_batch_age(Duration::from_millis(500));
    let s = setup("413", Ingestion::Otel, o, SK).await;
    s.server.fault(Fault::MaxBody(4_000));
    s.run_flows(4).await;
    let r = s.flush().await;
    assert_eq!((r.delivered, r.spooled, r.dropped), (s.total(), 0, 0), "{r:?}");
    assert!(s.server.received(|r| r.requests.iter().any(|x| x.1 == 413)), "the server said 413 at least once");
    let expected: usize = s.memory.traces().iter().map(|t| t.spans.len()).sum();
    assert_eq!(s.server.otlp_span_ids().len(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_are_reported_once_and_nothing_is_lost() {
    let s = setup("401", Ingestion::Otel, opts(), "sk-wrong").await;
    for _ in 0..3 {
        s.run_flows(1).await;
        s.flush().await;
    }
    let r = s.flush().await;
    assert_eq!((r.delivered, r.spooled, r.dropped), (0, s.total(), 0), "{r:?}");
    let auth: Vec<_> = r.reasons.iter().filter(|x| x.contains("authentication failed")).collect();
    assert_eq!(auth.len(), 1, "{:?}", r.reasons);
    assert!(auth[0].contains("401") && auth[0].contains("Invalid credentials"), "{auth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_spills_to_the_spool() {
    let o = opts().queue_capacity(1).max_batch_spans(1);
    let s = setup("full", Ingestion::Otel, o, SK).await;
    s.server.fault(Fault::Slow(Duration::from_millis(50)));
    s.run_flows(8).await;
    let r = s.flush().await;
    assert_eq!((r.delivered + r.spooled, r.dropped, r.pending), (s.total(), 0, 0), "{r:?}");
    assert!(r.spooled > 0, "{r:?}");
}
