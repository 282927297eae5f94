//! Bad input a service meets: invalid settings are refused with a message naming the setting;
//! a value that cannot be serialised is recorded as a marker and the run goes on; a huge value
//! is truncated with a marker at export; a flow that loops forever ends at its step limit.
//! (Malformed JSON to the service: `tests/service.rs`.)

use std::collections::HashMap;
use std::time::Duration;

use flowtrace::export::JsonlFileExporter;
use flowtrace::prelude::*;
use flowtrace::runtime::Runtime;
use flowtrace::trace::SpanKind;
use flowtrace::trace::TracingConfig;
use serde_json::Value;

#[test]
fn invalid_settings_name_the_setting_and_the_value() {
    for (var, value) in [
        ("FLOWTRACE_SAMPLE_RATE", "2.5"),
        ("FLOWTRACE_SAMPLE_RATE", "lots"),
        ("FLOWTRACE_MAX_VALUE_BYTES", "-1"),
        ("FLOWTRACE_TRACE_INPUTS", "maybe"),
        ("LANGFUSE_HOST", "ftp://example"),
    ] {
        let e = TracingConfig::from_vars([(var, value)]).unwrap_err().to_string();
        assert!(e.contains(var), "{var}={value}: {e}");
    }
    let e = TracingConfig::from_vars([("LANGFUSE_PUBLIC_KEY", "pk")]).unwrap_err().to_string();
    assert!(e.contains("LANGFUSE_SECRET_KEY"), "{e}");
    let e = Runtime::builder().max_in_flight(0).build().unwrap_err();
    assert_eq!(e.to_string(), "invalid configuration: max_in_flight=\"0\": must be at least 1");
}

/// A map with non-string keys: serde_json cannot serialise it.
struct Unserialisable;

impl Node for Unserialisable {
    type Prep = ();
    type Exec = HashMap<(u8, u8), u8>;

    async fn prep(&self, _ctx: &Context<'_>) -> NodeResult<()> {
        Ok(())
    }
    async fn exec(&self, _p: &(), _cx: &ExecContext) -> NodeResult<HashMap<(u8, u8), u8>> {
        Ok(HashMap::from([((1, 2), 3)]))
    }
    async fn post(&self, ctx: &Context<'_>, _p: (), out: HashMap<(u8, u8), u8>) -> NodeResult<Action> {
        ctx.shared().insert("entries", out.len());
        Ok(Action::new("done"))
    }
}

#[tokio::test]
async fn an_unserialisable_value_is_a_marker_and_the_run_goes_on() {
    let memory = MemoryExporter::new();
    let tracer = Tracer::builder().exporter(memory.clone()).build().unwrap();
    let node = Unserialisable.into_node();
    let shared = SharedStore::new();
    let action = Flow::new(&node).traced("unserialisable").tracer(&tracer).run(&shared).await.unwrap();
    assert_eq!(action, Action::new("done"));
    assert_eq!(shared.get::<usize>("entries").unwrap(), Some(1));
    assert!(tracer.flush(Duration::from_secs(5)).await.is_complete());
    let trace = &memory.traces()[0];
    let exec = trace.spans.iter().find(|s| s.kind == SpanKind::Exec).expect("an exec span");
    let out = exec.output.as_ref().and_then(Value::as_str).expect("a marker string");
    assert!(out.starts_with("<unserialisable"), "{out}");
    assert!(out.contains("key must be a string"), "{out}");
}

#[tokio::test]
async fn a_huge_value_is_truncated_with_a_marker_at_export() {
    let dir = std::env::temp_dir().join(format!("flowtrace-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("traces.jsonl");
    let _ = std::fs::remove_file(&path);
    let file = JsonlFileExporter::with_max_value_bytes(&path, 1024).unwrap();
    let tracer = Tracer::builder().exporter(file).build().unwrap();
    let huge = FnNode::new("Huge")
        .exec(|_, _| async { Ok(Value::String("x".repeat(2_000_000))) })
        .post(|ctx, _, out| {
            ctx.shared().insert("len", out.as_str().map(str::len).unwrap_or(0));
            Ok(Action::none())
        })
        .into_node();
    let shared = SharedStore::new();
    Flow::new(&huge).traced("huge").tracer(&tracer).run(&shared).await.unwrap();
    assert_eq!(shared.get::<usize>("len").unwrap(), Some(2_000_000), "the run saw the whole value");
    assert!(tracer.flush(Duration::from_secs(10)).await.is_complete());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.len() < 100_000, "the exported trace is {} bytes", text.len());
    assert!(text.contains("<truncated: 2000002 bytes, over the 1024-byte limit>"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_flow_that_loops_forever_ends_with_a_clear_error() {
    let spin = FnNode::new("Spin").post(|_, _, _| Ok(Action::new("again"))).into_node();
    let _ = spin.on("again") >> &spin;
    let flow = Flow::named("Forever", Some(&spin));
    let rt = Runtime::builder().max_steps(10_000).build().unwrap();
    let err = rt.spawn(&flow, &SharedStore::new()).await.unwrap().await.unwrap_err();
    assert_eq!(err.to_string(), "flow 'Forever' exceeded its limit of 10000 steps");
}
