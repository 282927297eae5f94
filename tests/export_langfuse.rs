//! Langfuse export against the test server: the full tree over OTLP (current protocol) and as
//! valid legacy batch events, the automatic fallback on 404, privacy, and the example program.

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::collections::HashMap;
use std::time::Duration;

use flowtrace::export::{DeliveryOptions, Ingestion, LangfuseExporter, MemoryExporter, Privacy};
use flowtrace::Tracer;
use langfuse_server::{attr_str, run_sample, LangfuseServer, PK, SK};

fn opts() -> DeliveryOptions {
    DeliveryOptions::default().max_batch_age(Duration::from_millis(50)).initial_backoff(Duration::from_millis(20))
}

fn exporter(server: &LangfuseServer, mode: Ingestion, spool: &std::path::Path) -> LangfuseExporter {
    LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, SK)
        .ingestion(mode)
        .spool_dir(spool)
        .options(opts())
        .build()
        .expect("exporter")
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowtrace-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_delivers_the_full_tree_with_langfuse_attributes() {
    let server = LangfuseServer::start().await;
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder()
        .exporter(exporter(&server, Ingestion::Otel, &tempdir("otlp")))
        .exporter(memory.clone())
        .build()
        .unwrap();
    let (r, shout) = run_sample(&tracer, 1).await;
    assert!(r.is_ok());
    assert_eq!(shout.as_deref(), Some("HELLO USER1"));
    let report = tracer.flush(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    let trace = &memory.traces()[0];
    let spans = server.received(|r| r.otlp_spans.clone());
    assert_eq!(spans.len(), trace.spans.len(), "every span arrives once");
    // Ids and parent links are ours, byte for byte.
    let by_id: HashMap<Vec<u8>, _> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    for s in &trace.spans {
        let got = by_id.get(s.span_id.to_bytes().as_slice()).expect("span delivered");
        assert_eq!(got.trace_id, trace.trace_id.to_bytes().to_vec());
        assert_eq!(got.name, &*s.name);
        assert_eq!(got.parent_span_id, s.parent_id.map(|p| p.to_bytes().to_vec()).unwrap_or_default());
        assert_eq!((got.start_time_unix_nano, got.end_time_unix_nano), (s.start_unix_nanos, s.end_unix_nanos));
    }
    let root = spans.iter().find(|s| s.parent_span_id.is_empty()).expect("a root span");
    assert_eq!(attr_str(root, "langfuse.trace.name"), Some("GreetTrace"));
    assert_eq!(attr_str(root, "session.id"), Some("session-1"));
    assert_eq!(attr_str(root, "user.id"), Some("user-1"));
    assert_eq!(attr_str(root, "langfuse.release"), Some("r1"));
    let meta: serde_json::Value = serde_json::from_str(attr_str(root, "langfuse.trace.metadata").unwrap()).unwrap();
    assert_eq!(meta["env"], "test");
    // The secret in the store is redacted before it leaves the process.
    let input = attr_str(root, "langfuse.trace.input").expect("trace input");
    assert!(input.contains("<redacted>") && !input.contains("sk-very-secret"), "{input}");
    let exec = spans.iter().find(|s| s.name == "Shout.exec").expect("Shout.exec");
    assert_eq!(attr_str(exec, "langfuse.observation.output"), Some("\"HELLO USER1\""));
    let headers = server.received(|r| r.otlp_headers.clone());
    assert!(headers.iter().any(|(k, v)| k == "x-langfuse-ingestion-version" && v == "4"), "{headers:?}");
    assert!(headers.iter().any(|(k, v)| k == "content-type" && v == "application/x-protobuf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sends_valid_batch_events() {
    let server = LangfuseServer::start().await;
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder()
        .exporter(exporter(&server, Ingestion::Legacy, &tempdir("legacy")))
        .exporter(memory.clone())
        .build()
        .unwrap();
    let (r, _) = run_sample(&tracer, 2).await;
    assert!(r.is_ok());
    let report = tracer.flush(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    let trace = &memory.traces()[0];
    assert_eq!(server.received(|r| r.invalid.clone()), Vec::<String>::new());
    let events = server.received(|r| r.legacy_events.clone());
    let creates: Vec<_> = events.iter().filter(|e| e["type"] == "trace-create").collect();
    assert_eq!(creates.len(), 1);
    let t = &creates[0]["body"];
    assert_eq!(t["id"], trace.trace_id.to_uuid());
    assert_eq!(
        (t["name"].as_str(), t["sessionId"].as_str(), t["userId"].as_str()),
        (Some("GreetTrace"), Some("session-1"), Some("user-1"))
    );
    assert_eq!(t["input"]["api_key"], "<redacted>");
    let spans: Vec<_> = events.iter().filter(|e| e["type"] == "span-create").collect();
    assert_eq!(spans.len(), trace.spans.len());
    for s in &trace.spans {
        let e = spans.iter().find(|e| e["body"]["id"] == s.span_id.to_string()).expect("span-create");
        assert_eq!(e["body"]["traceId"], trace.trace_id.to_uuid());
        assert_eq!(e["body"]["name"], &*s.name);
        match s.parent_id {
            Some(p) => assert_eq!(e["body"]["parentObservationId"], p.to_string()),
            None => assert!(e["body"].get("parentObservationId").is_none()),
        }
        assert_eq!(e["body"]["startTime"], flowtrace::trace::format_timestamp(s.start_unix_nanos));
    }
    // Both exporters (legacy and memory) report one per span plus the trace.
    assert_eq!(report.delivered, 2 * (trace.spans.len() as u64 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_legacy_once_on_404() {
    let server = LangfuseServer::start().await;
    server.without_otel();
    let tracer = Tracer::builder().exporter(exporter(&server, Ingestion::Auto, &tempdir("auto"))).build().unwrap();
    for i in 0..3 {
        assert!(run_sample(&tracer, i).await.0.is_ok());
        tracer.flush(Duration::from_secs(10)).await;
    }
    let report = tracer.flush(Duration::from_secs(10)).await;
    assert!(report.is_complete() && report.spooled == 0, "{report:?}");
    let otel_404 = server.received(|r| r.requests.iter().filter(|(p, c)| p.contains("otel") && *c == 404).count());
    assert_eq!(otel_404, 1, "the OTLP path is tried once");
    assert_eq!(server.received(|r| r.legacy_events.iter().filter(|e| e["type"] == "trace-create").count()), 3);
    assert!(server.received(|r| r.invalid.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_hook_sees_every_value_and_sampling_is_deterministic() {
    let server = LangfuseServer::start().await;
    let lf = LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, SK)
        .ingestion(Ingestion::Legacy)
        .spool_dir(tempdir("mask"))
        .options(opts())
        .privacy(Privacy::default().with_mask(|v| {
            serde_json::from_str(&v.to_string().replace("user7", "<masked>")).unwrap_or(serde_json::Value::Null)
        }))
        .build()
        .unwrap();
    let tracer = Tracer::builder().exporter(lf).build().unwrap();
    run_sample(&tracer, 7).await.0.unwrap();
    tracer.flush(Duration::from_secs(10)).await;
    let events = server.received(|r| r.legacy_events.clone());
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("user7"), "the mask ran on every value");
    assert!(text.contains("<masked>"));

    let p = Privacy::default().with_sample_rate(0.5);
    let kept = (0..10_000u128).filter(|i| p.sampled(flowtrace::trace::TraceId(i * 0x9e37_79b9_7f4a_7c15_f39c))).count();
    assert!((4_500..5_500).contains(&kept), "{kept}");
    let id = flowtrace::trace::TraceId(42);
    assert_eq!(p.sampled(id), p.sampled(id));
}

/// The example program, pointed at the test server, delivers both traces with the full tree
/// over OTLP and, with `LANGFUSE_INGESTION=legacy`, as valid batch events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_support_example_delivers_both_traces() {
    let example = langfuse_server::example_binary();
    for mode in ["otel", "legacy"] {
        let server = LangfuseServer::start().await;
        let dir = tempdir(&format!("example-{mode}"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = tokio::process::Command::new(&example)
            .current_dir(&dir)
            .env("LANGFUSE_HOST", server.url())
            .env("LANGFUSE_PUBLIC_KEY", PK)
            .env("LANGFUSE_SECRET_KEY", SK)
            .env("LANGFUSE_INGESTION", mode)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("not delivered"), "{stderr}");
        // The seed's output, per ticket: classification, routing and the flow's result.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let t1 = stdout.find("📥 Processing TICKET-001: URGENT: Payment processing error").expect("TICKET-001");
        let t2 = stdout.find("📥 Processing TICKET-002: Question about billing cycle").expect("TICKET-002");
        let (first, second) = (&stdout[t1..t2], &stdout[t2..]);
        assert!(
            first.contains("📊 Classification: {'priority': 'high', 'category': 'technical', 'confidence': 0."),
            "{stdout}"
        );
        assert!(
            first.contains("🎯 Routing: {'assigned_team': 'escalation', 'estimated_response_time': '2 hours'}"),
            "{stdout}"
        );
        assert!(
            second.contains("📊 Classification: {'priority': 'medium', 'category': 'general', 'confidence': 0."),
            "{stdout}"
        );
        assert!(
            second.contains("🎯 Routing: {'assigned_team': 'general_support', 'estimated_response_time': '24 hours'}"),
            "{stdout}"
        );
        assert_eq!(stdout.matches("✅ Result: default").count(), 2, "{stdout}");
        if mode == "otel" {
            let spans = server.received(|r| r.otlp_spans.clone());
            let roots: Vec<_> = spans.iter().filter(|s| s.parent_span_id.is_empty()).collect();
            assert_eq!(roots.len(), 2, "two traces");
            for r in roots {
                assert_eq!(attr_str(r, "langfuse.trace.name"), Some("CustomerSupportTicketAnalysis"));
            }
            for name in ["TicketClassificationNode.exec", "TicketRoutingNode.exec", "TicketRoutingNode.post"] {
                assert_eq!(spans.iter().filter(|s| s.name == name).count(), 2, "{name}");
            }
            // Every parent link points at a delivered span.
            let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id.clone()).collect();
            assert!(spans.iter().all(|s| s.parent_span_id.is_empty() || ids.contains(&s.parent_span_id)));
        } else {
            assert!(server.received(|r| r.invalid.is_empty()), "{:?}", server.received(|r| r.invalid.clone()));
            let events = server.received(|r| r.legacy_events.clone());
            assert_eq!(events.iter().filter(|e| e["type"] == "trace-create").count(), 2);
            let spans = events.iter().filter(|e| e["type"] == "span-create").count();
            assert!(spans >= 10, "{spans} span-create events");
        }
    }
}
