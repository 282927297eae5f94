//! The embedded default: traces appended to a JSON Lines file, and the `flowtrace` binary
//! that shows them.

mod support;

use std::process::Command;
use std::time::Duration;

use flowtrace::export::JsonlFileExporter;
use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;
use flowtrace::trace::TracingConfig;
use serde_json::json;
use support::*;

fn temp_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowtrace-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("nested").join("traces.jsonl")
}

#[tokio::test]
async fn each_trace_is_one_json_line_and_the_binary_shows_it() {
    let path = temp_file("lines");
    let file = JsonlFileExporter::new(&path).unwrap();
    let tracer = Tracer::builder().exporter(file).build().unwrap();
    let a = number(2);
    let _ = &a >> mul(21);
    let flow = Flow::named("Answer", Some(&a));
    for _ in 0..2 {
        flow.traced("Question").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    }
    let report = tracer.flush(Duration::from_secs(5)).await;
    // Per trace: the flow span, 2 nodes of 5 spans (node, prep, exec, attempt, post), and the trace.
    assert_eq!(report.delivered, 2 * 12, "{report:?}");

    let text = std::fs::read_to_string(&path).unwrap();
    let traces: Vec<TraceRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(traces.len(), 2);
    assert_eq!(traces[1].output, json!({ "current": 42 }));

    let out = Command::new(env!("CARGO_BIN_EXE_flowtrace"))
        .args(["show", path.to_str().unwrap(), "--last", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8(out.stdout).unwrap();
    assert_eq!(shown.matches("Question  ok").count(), 1, "{shown}");
    assert!(shown.contains("└─ Answer"), "{shown}");
    assert!(shown.contains("Mul(21).exec"), "{shown}");
    assert!(shown.contains('█'), "timeline bars: {shown}");
}

#[tokio::test]
async fn huge_values_are_truncated_with_a_marker() {
    let path = temp_file("huge");
    let tracer =
        Tracer::builder().exporter(JsonlFileExporter::with_max_value_bytes(&path, 1000).unwrap()).build().unwrap();
    let big = FnNode::new("Big").prep(|_| Ok(json!("x".repeat(5000)))).into_node();
    let shared = SharedStore::new();
    Flow::new(&big).traced("T").tracer(&tracer).run(&shared).await.unwrap();
    tracer.flush(Duration::from_secs(5)).await;
    let t: TraceRecord = serde_json::from_str(std::fs::read_to_string(&path).unwrap().lines().next().unwrap()).unwrap();
    let out = t.span("Big.prep").unwrap().output.clone().unwrap();
    assert_eq!(out, json!("<truncated: 5002 bytes, over the 1000-byte limit>"));
}

#[test]
fn the_binary_explains_bad_usage_and_missing_files() {
    let bin = env!("CARGO_BIN_EXE_flowtrace");
    let out = Command::new(bin).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: flowtrace show"));
    let out = Command::new(bin).args(["show", "/nonexistent/traces.jsonl"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/traces.jsonl"));
}

#[test]
fn an_unwritable_trace_file_is_a_clear_error() {
    let cfg = TracingConfig::from_vars([("FLOWTRACE_TRACE_FILE", "/proc/flowtrace/traces.jsonl")]).unwrap();
    let err = Tracer::from_config(&cfg).unwrap_err();
    assert!(err.to_string().contains("cannot open the trace file /proc/flowtrace/traces.jsonl"), "{err}");
}

/// A write failure (here a full disk: `/dev/full`) never fails the run; the lost spans are
/// counted as dropped, with the reason, in the flush report.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_failing_write_is_counted_and_the_run_goes_on() {
    let file = JsonlFileExporter::new("/dev/full").unwrap();
    let tracer = Tracer::builder().exporter(file).build().unwrap();
    let shared = SharedStore::new();
    for _ in 0..2 {
        Flow::new(&number(4)).traced("Full").tracer(&tracer).run(&shared).await.unwrap();
    }
    assert_eq!(current(&shared), 4);
    let report = tracer.flush(Duration::from_secs(5)).await;
    // Per trace: the flow span, one node of 5 spans, and the trace itself.
    assert_eq!((report.delivered, report.dropped, report.pending), (0, 14, 0), "{report:?}");
    assert!(report.reasons.iter().any(|r| r.contains("/dev/full")), "{report:?}");
}
