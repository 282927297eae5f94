//! `TracingConfig`: every variable works, aliases work, bad values are clear errors naming the
//! variable, `.env` files load without overriding what is set, secrets never print, and the
//! built tracer honours the settings.

mod support;

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::path::PathBuf;
use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;
use flowtrace::trace::{TracingConfig, DEFAULT_LANGFUSE_HOST, DEFAULT_TRACE_FILE};
use serde_json::Value;
use support::*;

/// Tests that touch the process environment or the current directory take this lock.
static ENV: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowtrace-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const BOOLEANS: [(&str, &str); 7] = [
    ("FLOWTRACE_DEBUG", "POCKETFLOW_TRACING_DEBUG"),
    ("FLOWTRACE_TRACE_INPUTS", "POCKETFLOW_TRACE_INPUTS"),
    ("FLOWTRACE_TRACE_OUTPUTS", "POCKETFLOW_TRACE_OUTPUTS"),
    ("FLOWTRACE_TRACE_PREP", "POCKETFLOW_TRACE_PREP"),
    ("FLOWTRACE_TRACE_EXEC", "POCKETFLOW_TRACE_EXEC"),
    ("FLOWTRACE_TRACE_POST", "POCKETFLOW_TRACE_POST"),
    ("FLOWTRACE_TRACE_ERRORS", "POCKETFLOW_TRACE_ERRORS"),
];

fn flag(c: &TracingConfig, var: &str) -> bool {
    match var {
        "FLOWTRACE_DEBUG" => c.debug(),
        "FLOWTRACE_TRACE_INPUTS" => c.trace_inputs(),
        "FLOWTRACE_TRACE_OUTPUTS" => c.trace_outputs(),
        "FLOWTRACE_TRACE_PREP" => c.trace_prep(),
        "FLOWTRACE_TRACE_EXEC" => c.trace_exec(),
        "FLOWTRACE_TRACE_POST" => c.trace_post(),
        "FLOWTRACE_TRACE_ERRORS" => c.trace_errors(),
        other => panic!("no such flag {other}"),
    }
}

#[test]
fn every_boolean_and_its_alias_accepts_every_spelling() {
    for (name, alias) in BOOLEANS {
        for var in [name, alias] {
            for (text, want) in [
                ("true", true),
                ("TRUE", true),
                ("1", true),
                ("Yes", true),
                ("on", true),
                ("false", false),
                ("False", false),
                ("0", false),
                ("NO", false),
                ("Off", false),
            ] {
                let c = TracingConfig::from_vars([(var, text)]).unwrap();
                assert_eq!(flag(&c, name), want, "{var}={text}");
            }
            let err = TracingConfig::from_vars([(var, "enabled")]).unwrap_err();
            assert_eq!(err.variable, var);
            assert!(err.to_string().contains(var), "{err}");
            assert!(err.to_string().contains("enabled"), "{err}");
        }
    }
}

#[test]
fn defaults_record_everything_to_the_local_file() {
    let c = TracingConfig::from_vars(Vec::<(String, String)>::new()).unwrap();
    assert!(!c.debug());
    assert!(c.trace_inputs() && c.trace_outputs() && c.trace_prep());
    assert!(c.trace_exec() && c.trace_post() && c.trace_errors());
    assert_eq!(c.sample_rate(), 1.0);
    assert_eq!(c.max_value_bytes(), 1_000_000);
    assert_eq!(c.trace_file(), Some(PathBuf::from(DEFAULT_TRACE_FILE)));
    assert!(!c.langfuse_enabled());
    assert_eq!((c.host(), c.public_key(), c.secret_key()), (None, None, None));
}

#[test]
fn langfuse_numbers_and_ids_are_read() {
    let c = TracingConfig::from_vars([
        ("LANGFUSE_PUBLIC_KEY", " pk-lf-1 "),
        ("LANGFUSE_SECRET_KEY", "sk-lf-1"),
        ("LANGFUSE_HOST", "http://127.0.0.1:3000/"),
        ("FLOWTRACE_SAMPLE_RATE", "0.5"),
        ("FLOWTRACE_MAX_VALUE_BYTES", "4096"),
        ("FLOWTRACE_SESSION_ID", "s-1"),
        ("POCKETFLOW_USER_ID", "u-1"),
    ])
    .unwrap();
    assert!(c.langfuse_enabled());
    assert_eq!(c.host(), Some("http://127.0.0.1:3000"));
    assert_eq!((c.public_key(), c.secret_key()), (Some("pk-lf-1"), Some("sk-lf-1")));
    assert_eq!(c.sample_rate(), 0.5);
    assert_eq!(c.max_value_bytes(), 4096);
    assert_eq!((c.session_id(), c.user_id()), (Some("s-1"), Some("u-1")));
    assert_eq!(c.trace_file(), None, "with Langfuse keys the file is opt-in");
    let c = TracingConfig::from_vars([
        ("LANGFUSE_PUBLIC_KEY", "pk"),
        ("LANGFUSE_SECRET_KEY", "sk"),
        ("FLOWTRACE_TRACE_FILE", "/tmp/x.jsonl"),
    ])
    .unwrap();
    assert_eq!(c.host(), Some(DEFAULT_LANGFUSE_HOST));
    assert_eq!(c.trace_file(), Some(PathBuf::from("/tmp/x.jsonl")));
}

#[test]
fn bad_numbers_and_urls_name_the_variable() {
    for (var, val) in [
        ("FLOWTRACE_SAMPLE_RATE", "-0.1"),
        ("FLOWTRACE_SAMPLE_RATE", "NaN"),
        ("FLOWTRACE_SAMPLE_RATE", "half"),
        ("FLOWTRACE_MAX_VALUE_BYTES", "1MB"),
        ("FLOWTRACE_MAX_VALUE_BYTES", "3"),
        ("LANGFUSE_HOST", "ftp://h"),
    ] {
        let err = TracingConfig::from_vars([(var, val)]).unwrap_err();
        assert_eq!((err.variable.as_str(), err.value.as_str()), (var, val));
    }
    let err = TracingConfig::from_vars([("LANGFUSE_SECRET_KEY", "sk-lf-secret")]).unwrap_err();
    assert_eq!(err.variable, "LANGFUSE_PUBLIC_KEY");
    assert!(!err.to_string().contains("sk-lf-secret"), "{err}");
}

#[test]
fn builder_setters_override_the_environment() {
    let c = TracingConfig::from_vars([("FLOWTRACE_DEBUG", "true"), ("FLOWTRACE_TRACE_PREP", "false")])
        .unwrap()
        .with_debug(false)
        .with_trace_prep(true)
        .with_trace_outputs(false)
        .with_max_value_bytes(512)
        .with_trace_file("/tmp/y.jsonl")
        .with_sample_rate(0.1)
        .unwrap();
    assert!(!c.debug() && c.trace_prep() && !c.trace_outputs());
    assert_eq!(c.max_value_bytes(), 512);
    assert_eq!(c.trace_file(), Some(PathBuf::from("/tmp/y.jsonl")));
    assert_eq!(TracingConfig::new().with_sample_rate(1.5).unwrap_err().variable, "sample_rate");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let c = TracingConfig::from_vars([
        ("LANGFUSE_PUBLIC_KEY", "pk-lf-abcdefghijklmnop"),
        ("LANGFUSE_SECRET_KEY", "sk-lf-topsecretvalue"),
    ])
    .unwrap();
    let shown = format!("{c:?} {c:#?}");
    assert!(!shown.contains("topsecretvalue"), "{shown}");
    assert!(!shown.contains("ijklmnop"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn an_env_file_is_read_without_overriding_set_variables() {
    let _lock = ENV.lock();
    let dir = temp_dir("envfile");
    let file = dir.join("custom.env");
    std::fs::write(&file, "FLOWTRACE_SESSION_ID=from-file\nFLOWTRACE_USER_ID=from-file\n").unwrap();
    std::env::set_var("FLOWTRACE_USER_ID", "from-env");
    let c = TracingConfig::from_env_file(&file);
    std::env::remove_var("FLOWTRACE_USER_ID");
    std::env::remove_var("FLOWTRACE_SESSION_ID");
    let c = c.unwrap();
    assert_eq!(c.session_id(), Some("from-file"));
    assert_eq!(c.user_id(), Some("from-env"), "a variable already set wins over the file");

    let err = TracingConfig::from_env_file(dir.join("missing.env")).unwrap_err();
    assert!(err.to_string().contains("missing.env"), "{err}");
}

#[test]
fn from_env_finds_dot_env_in_a_parent_directory_and_reads_at_call_time() {
    let _lock = ENV.lock();
    let dir = temp_dir("upward");
    std::fs::write(dir.join(".env"), "POCKETFLOW_SESSION_ID=upward\n").unwrap();
    let child = dir.join("a").join("b");
    std::fs::create_dir_all(&child).unwrap();
    let cwd = std::env::current_dir().unwrap();
    std::env::set_current_dir(&child).unwrap();
    let c = TracingConfig::from_env();
    std::env::set_var("FLOWTRACE_TRACE_EXEC", "off");
    let later = TracingConfig::from_env();
    std::env::remove_var("FLOWTRACE_TRACE_EXEC");
    std::env::remove_var("POCKETFLOW_SESSION_ID");
    std::env::set_current_dir(cwd).unwrap();
    let c = c.unwrap();
    assert_eq!(c.session_id(), Some("upward"));
    assert!(c.trace_exec());
    assert!(!later.unwrap().trace_exec(), "each call reads the environment afresh");
}

#[test]
fn a_bad_environment_variable_is_an_error_from_from_env() {
    let _lock = ENV.lock();
    std::env::set_var("FLOWTRACE_TRACE_POST", "sometimes");
    let err = TracingConfig::from_env().unwrap_err();
    let tracer = Tracer::from_env();
    std::env::remove_var("FLOWTRACE_TRACE_POST");
    assert_eq!(err.variable, "FLOWTRACE_TRACE_POST");
    let msg = tracer.unwrap_err().to_string();
    assert!(msg.contains("FLOWTRACE_TRACE_POST"), "{msg}");
}

fn read_traces(path: &std::path::Path) -> Vec<TraceRecord> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn the_built_tracer_writes_the_file_and_honours_the_switches() {
    let dir = temp_dir("built");
    let path = dir.join("t.jsonl");
    let cfg = TracingConfig::from_vars([
        ("FLOWTRACE_TRACE_FILE", path.to_str().unwrap()),
        ("FLOWTRACE_TRACE_POST", "off"),
        ("FLOWTRACE_TRACE_OUTPUTS", "off"),
        ("FLOWTRACE_MAX_VALUE_BYTES", "100"),
        ("FLOWTRACE_SESSION_ID", "env-session"),
    ])
    .unwrap();
    let tracer = cfg.build_tracer().unwrap();
    let shared = SharedStore::new();
    shared.insert("big", "x".repeat(500));
    Flow::new(&number(3)).traced("Built").tracer(&tracer).run(&shared).await.unwrap();
    let report = tracer.flush(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report:?}");
    let traces = read_traces(&path);
    assert_eq!(traces.len(), 1);
    let t = &traces[0];
    assert_eq!(t.session_id.as_deref(), Some("env-session"));
    assert!(t.spans.iter().all(|s| !s.name.ends_with(".post")), "post spans are off");
    assert!(t.spans.iter().all(|s| s.output.is_none()), "outputs are off");
    let marker = t.input.get("big").and_then(Value::as_str).map(str::to_owned);
    let whole = serde_json::to_string(&t.input).unwrap();
    assert!(
        whole.contains("<truncated:") && marker.is_none_or(|m| m.contains("truncated")),
        "the large value is cut at export: {whole}"
    );
    assert_eq!(shared.get::<String>("big").unwrap().map(|s| s.len()), Some(500), "the run's store is untouched");
}

#[tokio::test]
async fn sample_rate_zero_records_nothing_and_changes_nothing() {
    let dir = temp_dir("sampled");
    let path = dir.join("t.jsonl");
    let cfg =
        TracingConfig::from_vars([("FLOWTRACE_TRACE_FILE", path.to_str().unwrap()), ("FLOWTRACE_SAMPLE_RATE", "0")])
            .unwrap();
    let tracer = cfg.build_tracer().unwrap();
    let a = number(2);
    let _ = &a >> mul(5);
    let shared = SharedStore::new();
    let action = Flow::new(&a).traced("Sampled").tracer(&tracer).run(&shared).await.unwrap();
    assert_eq!(action, Action::none());
    assert_eq!(shared.get::<i64>("current").unwrap(), Some(10));
    tracer.flush(Duration::from_secs(5)).await;
    assert!(read_traces(&path).is_empty());
}

/// The one line with no tracer given uses the global tracer, built lazily from the
/// environment on first use; `flowtrace::flush` delivers its traces.
#[tokio::test]
async fn the_global_tracer_is_built_from_the_environment_on_first_use() {
    let dir = temp_dir("global");
    let path = dir.join("global.jsonl");
    {
        let _lock = ENV.lock();
        std::env::set_var("FLOWTRACE_TRACE_FILE", &path);
        std::env::set_var("FLOWTRACE_USER_ID", "global-user");
        let tracer = flowtrace::global();
        std::env::remove_var("FLOWTRACE_TRACE_FILE");
        std::env::remove_var("FLOWTRACE_USER_ID");
        assert!(tracer.is_some());
    }
    let shared = SharedStore::new();
    Flow::new(&number(8)).traced("Global").run(&shared).await.unwrap();
    assert_eq!(current(&shared), 8);
    let report = flowtrace::flush(Duration::from_secs(5)).await;
    assert!(report.is_complete() && report.delivered > 0, "{report:?}");
    let traces = read_traces(&path);
    assert_eq!(traces.len(), 1);
    assert_eq!((traces[0].name.as_str(), traces[0].user_id.as_deref()), ("Global", Some("global-user")));
    let report = flowtrace::shutdown(Duration::from_secs(5)).await;
    assert!(report.is_complete(), "{report:?}");
}

/// A spool folder that cannot be created is not a `LANGFUSE_HOST` error and does not turn
/// tracing off: the warning and the report name `FLOWTRACE_SPOOL_DIR`, once, and traces are
/// still delivered (without a spool to fall back on).
#[tokio::test]
async fn a_spool_folder_that_cannot_be_created_leaves_tracing_on() {
    let server = langfuse_server::LangfuseServer::start().await;
    let warnings = Warnings::capture();
    let cfg = TracingConfig::from_vars([
        ("LANGFUSE_HOST", server.url()),
        ("LANGFUSE_PUBLIC_KEY", langfuse_server::PK.into()),
        ("LANGFUSE_SECRET_KEY", langfuse_server::SK.into()),
        ("LANGFUSE_INGESTION", "otel".into()),
        ("FLOWTRACE_SPOOL_DIR", "/proc/flowtrace-spool".into()),
    ])
    .unwrap();
    let tracer = Tracer::from_config(&cfg).expect("tracing stays on without a spool");
    assert_eq!(warnings.containing("FLOWTRACE_SPOOL_DIR"), 1, "{:?}", warnings.all());
    assert_eq!(warnings.containing("LANGFUSE_HOST"), 0, "{:?}", warnings.all());
    drop(warnings);
    for _ in 0..2 {
        Flow::new(&number(1)).traced("NoSpool").tracer(&tracer).run(&SharedStore::new()).await.unwrap();
    }
    let report = tracer.flush(Duration::from_secs(10)).await;
    // Per trace: the flow span, one node of 5 spans, and the trace itself.
    assert_eq!((report.delivered, report.dropped), (14, 0), "{report:?}");
    assert_eq!(server.otlp_span_ids().len(), 12, "the spans reached the backend");
    let about: Vec<&String> = report.reasons.iter().filter(|r| r.contains("FLOWTRACE_SPOOL_DIR")).collect();
    assert_eq!(about.len(), 1, "said once: {report:?}");
    assert!(about[0].contains("/proc/flowtrace-spool") && about[0].contains("without a spool"), "{}", about[0]);
    assert!(!report.reasons.iter().any(|r| r.contains("LANGFUSE_HOST")), "{report:?}");
}
