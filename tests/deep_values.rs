//! Values nested too deep to record: a node that returns a JSON value nested 100,000 levels
//! deep, traced to every destination (trace file, Langfuse, OTLP, debug output), ends
//! normally with a marker in the trace, and the process goes on; a trace nested deeper than
//! serde_json reads (128 levels) is recorded at 64 levels, so the spool reads it back whole.

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::time::Duration;

use flowtrace::export::{DeliveryOptions, Exporter, Ingestion, LangfuseExporter, MAX_DEPTH};
use flowtrace::prelude::*;
use flowtrace::trace::{TraceRecord, TracingConfig};
use langfuse_server::{LangfuseServer, PK, SK};
use opentelemetry_proto::tonic::common::v1::any_value;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);
const MARKER: &str = "<truncated: nested deeper than 64 levels>";

/// `[[[…[1]…]]]`, built without recursion.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// How deep `v` goes, without recursion.
fn depth_of(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|v| (v, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|v| (v, d + 1))),
            _ => {}
        }
    }
    max
}

fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// `Deep`: exec returns a value nested `depth` levels; post keeps it in the store.
fn deep_flow(depth: usize) -> Flow {
    let node = FnNode::new("Deep")
        .exec(move |_, _| async move { Ok(nested(depth)) })
        .post(|ctx, _, deep| {
            ctx.shared().insert("deep", deep);
            Ok(Action::none())
        })
        .into_node();
    Flow::new(&node)
}

fn marker_in_spans(server: &LangfuseServer) -> bool {
    server.received(|r| {
        r.otlp_spans.iter().any(|s| {
            s.attributes.iter().any(|kv| {
                matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                    Some(any_value::Value::StringValue(v)) if v.contains(MARKER))
            })
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_nested_100000_deep_is_traced_everywhere_with_a_marker_and_the_process_goes_on() {
    assert_eq!(MAX_DEPTH, 64);
    let langfuse = LangfuseServer::start().await;
    let otlp = LangfuseServer::start().await;
    let dir = std::env::temp_dir().join(format!("flowtrace-deep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join("traces.jsonl");
    let auth = format!("authorization=Basic {}", base64(format!("{PK}:{SK}").as_bytes()));
    let cfg = TracingConfig::from_vars([
        ("LANGFUSE_HOST", langfuse.url()),
        ("LANGFUSE_PUBLIC_KEY", PK.into()),
        ("LANGFUSE_SECRET_KEY", SK.into()),
        ("LANGFUSE_INGESTION", "otel".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url()),
        ("OTEL_EXPORTER_OTLP_HEADERS", auth),
        ("FLOWTRACE_SPOOL_DIR", dir.join("spool").display().to_string()),
        ("FLOWTRACE_TRACE_FILE", file.display().to_string()),
        ("FLOWTRACE_DEBUG", "true".into()),
    ])
    .unwrap();
    let tracer = Tracer::from_config(&cfg).unwrap();

    let shared = SharedStore::new();
    let action = deep_flow(100_000).traced("Deep").tracer(&tracer).run(&shared).await;
    assert_eq!(action.unwrap(), Action::none(), "the run ends normally");
    let report = tracer.flush(T).await;
    assert!(report.is_complete(), "{report:?}");
    assert!(report.reasons.is_empty(), "{report:?}");

    // The trace file: reads back, the value is cut at 64 levels with the marker.
    let line = std::fs::read_to_string(&file).unwrap();
    let t: TraceRecord = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let out = t.span("Deep.exec").unwrap().output.as_ref().unwrap();
    assert_eq!(depth_of(out), MAX_DEPTH + 1, "64 levels of arrays, then the marker");
    assert!(serde_json::to_string(out).unwrap().contains(MARKER));
    assert!(t.output["deep"].to_string().contains(MARKER), "the store snapshot is cut too: {}", t.output);
    // Langfuse and the OTLP backend got the spans, with the marker.
    assert!(marker_in_spans(&langfuse), "no marker in what Langfuse received");
    assert!(marker_in_spans(&otlp), "no marker in what the OTLP backend received");

    // The process goes on: the store still holds the value, and the next run works.
    assert!(shared.contains_key("deep"));
    let again = SharedStore::new();
    deep_flow(3).traced("Shallow").tracer(&tracer).run(&again).await.unwrap();
    assert_eq!(again.get_json("deep"), Some(json!([[[1]]])));
    let report = tracer.shutdown(T).await;
    assert!(report.is_complete(), "{report:?}");
    drop(shared); // the store's JSON values drop without recursion
    let _ = std::fs::remove_dir_all(&dir);
}

/// Before the depth cap, a trace nested 200 deep was spooled, could not be read back
/// (serde_json stops at 128 levels) and was lost, counted as 1 span instead of 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_nested_200_deep_is_spooled_and_delivered_whole() {
    let server = LangfuseServer::start().await;
    let spool = std::env::temp_dir().join(format!("flowtrace-deep-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let lf = LangfuseExporter::builder()
        .host(server.url())
        .keys(PK, SK)
        .ingestion(Ingestion::Otel)
        .spool_dir(&spool)
        .options(
            DeliveryOptions::default()
                .max_batch_age(Duration::from_millis(10))
                .initial_backoff(Duration::from_millis(10))
                .max_attempts(1)
                .probe_interval(Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    let tracer = Tracer::builder().exporter(lf.clone()).build().unwrap();
    server.down();
    deep_flow(200).traced("Deep200").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    tracer.flush(T).await;
    let down = lf.flush(T).await;
    // The flow span, the node's 5 spans (node, prep, exec, attempt, post), and the trace.
    assert_eq!((down.spooled, down.dropped), (7, 0), "{down:?}");
    // The spool's record of the trace reads back whole (its 6 spans).
    let spooled = flowtrace::export::read_spool(&spool).unwrap();
    assert_eq!(spooled.iter().map(|t| t.spans.len()).collect::<Vec<_>>(), [6], "the spooled trace reads back");

    server.up().await;
    let mut after = lf.flush(T).await;
    let deadline = std::time::Instant::now() + T;
    while after.from_spool < 7 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = lf.flush(T).await;
    }
    assert_eq!((after.from_spool, after.dropped), (7, 0), "{after:?}");
    assert_eq!(server.otlp_span_ids().len(), 6, "every span arrived");
    assert!(marker_in_spans(&server));
    let _ = std::fs::remove_dir_all(&spool);
}

/// A trace field given a value nested 100,000 deep is recorded with the marker, and runs go on.
#[tokio::test]
async fn deep_trace_metadata_is_capped_when_given() {
    let memory = flowtrace::export::MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    let flow = Flow::new(&FnNode::new("Step").into_node());
    let traced = flow.traced("DeepMeta").metadata("deep", nested(100_000)).tracer(&tracer);
    for _ in 0..3 {
        traced.run(&SharedStore::new()).await.unwrap();
    }
    tracer.flush(Duration::from_secs(10)).await;
    let traces = memory.traces();
    assert_eq!(traces.len(), 3);
    assert_eq!(depth_of(&traces[0].metadata["deep"]), MAX_DEPTH + 1, "64 levels, then the marker");
}
