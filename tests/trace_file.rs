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
    assert!(
        matches!(&err, flowtrace::TracerError::Config(c)
            if c.variable == "FLOWTRACE_TRACE_FILE" && c.value == "/proc/flowtrace/traces.jsonl" && c.reason.starts_with("cannot open it")),
        "{err}"
    );
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

/// Every kind of error span (an exec attempt that failed before a retry worked, a panic, an
/// attempt timeout, a run timeout that cancels open spans, the step limit) goes through the
/// file and back, and the viewer shows each: error spans carry `error_kind`, so the span's own
/// `kind` appears once and generic JSON readers still see it.
#[tokio::test]
async fn error_spans_round_trip_through_the_file_and_the_viewer() {
    silence_panics("kaboom");
    let path = temp_file("errors");
    let tracer = Tracer::builder().exporter(JsonlFileExporter::new(&path).unwrap()).build().unwrap();
    let flaky = FnNode::new("Flaky")
        .exec(|_, cx| async move {
            if cx.attempt() < 2 {
                Err(value_error("not yet"))
            } else {
                Ok(json!("ok"))
            }
        })
        .into_node()
        .max_retries(3);
    Flow::new(&flaky).traced("Retried").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    let boom = FnNode::new("Boom").exec(|_, _| async move { panic!("kaboom") }).into_node();
    Flow::new(&boom).traced("Panicked").tracer(&tracer).run(&SharedStore::new()).await.unwrap_err();
    let slow = FnNode::new("Slow")
        .exec(|_, _| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(json!(null))
        })
        .into_node()
        .timeout(Duration::from_millis(20));
    Flow::new(&slow).traced("TimedOut").tracer(&tracer).run(&SharedStore::new()).await.unwrap_err();
    let sleepy = FnNode::new("Sleepy")
        .exec(|_, _| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(json!(null))
        })
        .into_node();
    Flow::new(&sleepy)
        .traced("RunTimeout")
        .tracer(&tracer)
        .options(RunOptions::new().timeout(Duration::from_millis(20)))
        .run(&SharedStore::new())
        .await
        .unwrap_err();
    let looping = signal("Loop", Some("again"));
    looping.next_on("again", &looping);
    Flow::new(&looping)
        .traced("Looped")
        .tracer(&tracer)
        .options(RunOptions::new().max_steps(3))
        .run(&SharedStore::new())
        .await
        .unwrap_err();
    let report = tracer.flush(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report:?}");

    let text = std::fs::read_to_string(&path).unwrap();
    let span_kinds = ["flow", "batch_run", "node", "prep", "exec", "item", "attempt", "wait", "fallback", "post"];
    let mut error_kinds = std::collections::BTreeSet::new();
    for line in text.lines() {
        // A generic reader: the span kind survives, and the error kind has its own key.
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for s in v["spans"].as_array().unwrap() {
            let kind = s["kind"].as_str().unwrap();
            assert!(span_kinds.contains(&kind), "span kind {kind:?} in {s}");
            if s["status"] == "error" {
                error_kinds.insert(s["error_kind"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(line.matches("\"kind\"").count(), v["spans"].as_array().unwrap().len(), "one kind per span");
        let t: TraceRecord = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_value(&t).unwrap(), v, "the record round-trips");
    }
    for k in ["node_error", "panic", "timeout", "max_steps"] {
        assert!(error_kinds.contains(k), "no {k} span in {error_kinds:?}");
    }
    assert!(text.contains("\"status\":\"cancelled\""), "the run timeout leaves cancelled spans");

    let out = Command::new(env!("CARGO_BIN_EXE_flowtrace")).args(["show", path.to_str().unwrap()]).output().unwrap();
    let (shown, errors) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{errors}");
    assert!(!errors.contains("is not a trace"), "{errors}");
    assert!(shown.contains("Retried  ok"), "the run that succeeded after retries is shown: {shown}");
    for note in
        ["ERROR (node_error): not yet", "ERROR (panic): kaboom", "ERROR (timeout)", "CANCELLED", "ERROR (max_steps)"]
    {
        assert!(shown.contains(note), "{note:?} missing from\n{shown}");
    }
}

/// Files written before `error_kind` (an error span holding `kind` twice) still read, with
/// the span kind and the error kind each in its place.
#[test]
fn old_files_with_a_duplicate_kind_still_read() {
    let line = r#"{"trace_id":"0123456789abcdef0123456789abcdef","name":"Old","start_unix_nanos":1,"end_unix_nanos":9,"input":{},"output":{},"status":"error","kind":"node_error","message":"boom","spans":[{"span_id":"0000000000000001","kind":"attempt","name":"attempt 1","start_unix_nanos":1,"end_unix_nanos":2,"status":"error","kind":"node_error","message":"boom","chain":["boom"]}]}"#;
    let t: TraceRecord = serde_json::from_str(line).unwrap();
    assert_eq!(t.spans[0].kind, flowtrace::trace::SpanKind::Attempt);
    match (&t.spans[0].status, &t.status) {
        (
            flowtrace::trace::SpanStatus::Error { kind, chain, .. },
            flowtrace::trace::SpanStatus::Error { kind: tk, .. },
        ) => {
            assert_eq!((kind.as_str(), tk.as_str(), chain.len()), ("node_error", "node_error", 1));
        }
        other => panic!("expected errors, got {other:?}"),
    }
    let again = serde_json::to_string(&t).unwrap();
    assert_eq!(again.matches("\"kind\"").count(), 1, "{again}");
    assert!(again.contains("\"error_kind\":\"node_error\""), "{again}");
}
