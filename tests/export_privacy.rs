//! Privacy before export: redaction of secret-looking keys everywhere (values, metadata,
//! attributes), the mask hook, and the 1 MB value limit with a visible marker.

use flowtrace::export::{Privacy, REDACTED};
use flowtrace::trace::TraceRecord;
use serde_json::json;

fn trace(big: usize) -> TraceRecord {
    serde_json::from_value(json!({
        "trace_id": "0123456789abcdef0123456789abcdef", "name": "T",
        "start_unix_nanos": 1, "end_unix_nanos": 2, "status": "ok",
        "input": {"user": "ann", "Authorization": "Bearer x", "deep": [{"db_password": "p"}]},
        "output": {"answer": "x".repeat(big)},
        "metadata": {"openai_api_key": "sk-1", "team": "a"},
        "spans": [{"span_id": "0000000000000001", "kind": "exec", "name": "N.exec", "start_unix_nanos": 1,
                   "end_unix_nanos": 2, "status": "ok", "input": {"token": "t", "q": "hi"},
                   "output": "ok", "attributes": {"session_token": "s", "attempt": 1}}]
    }))
    .unwrap()
}

#[test]
fn secret_keys_are_redacted_everywhere() {
    let t = Privacy::default().apply(&trace(10));
    assert_eq!(t.input["Authorization"], REDACTED);
    assert_eq!(t.input["deep"][0]["db_password"], REDACTED);
    assert_eq!(t.input["user"], "ann");
    assert_eq!(t.metadata["openai_api_key"], REDACTED);
    assert_eq!(t.metadata["team"], "a");
    let s = &t.spans[0];
    assert_eq!(s.input.as_ref().unwrap()["token"], REDACTED);
    assert_eq!(s.input.as_ref().unwrap()["q"], "hi");
    assert_eq!(s.attributes["session_token"], REDACTED);
    assert_eq!(s.attributes["attempt"], 1);
}

#[test]
fn configured_keys_replace_the_defaults() {
    let t = Privacy::default().with_redacted_keys(["user"]).apply(&trace(10));
    assert_eq!(t.input["user"], REDACTED);
    assert_eq!(t.input["Authorization"], "Bearer x");
}

#[test]
fn values_over_the_limit_are_truncated_visibly() {
    let t = Privacy::default().apply(&trace(1_100_000));
    let out = t.output.as_str().expect("the marker replaces the value");
    assert!(out.starts_with("<truncated: ") && out.contains("1000000-byte limit"), "{out}");
    assert_eq!(t.input["user"], "ann", "small values stay");
    let shared = std::sync::Arc::new(trace(10));
    let p = Privacy::default().with_redacted_keys(Vec::<String>::new());
    assert!(std::sync::Arc::ptr_eq(&p.apply_shared(shared.clone()), &shared), "nothing to change: no copy");
}

#[test]
fn the_mask_hook_runs_on_every_value_and_a_panicking_mask_hides_the_value() {
    let p = Privacy::default().with_mask(|v| if v == json!("ok") { json!("MASKED") } else { v });
    let t = p.apply(&trace(10));
    assert_eq!(t.spans[0].output, Some(json!("MASKED")));
    let p = Privacy::default().with_mask(|_| panic!("mask bug"));
    let t = p.apply(&trace(10));
    assert!(t.input.as_str().is_some_and(|s| s.contains("fully masked")), "{}", t.input);
}

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use flowtrace::export::JsonlFileExporter;
use flowtrace::prelude::*;
use flowtrace::trace::TracingConfig;
use langfuse_server::{Fault, LangfuseServer};

/// The names the issue found going out in plain text, spelt the ways applications spell them.
const NAMES: &[&str] = &[
    "apiKey",
    "x-api-key",
    "private_key",
    "passwd",
    "pwd",
    "client_secret",
    "access_token",
    "refresh_token",
    "cookie",
    "set-cookie",
    "session_token",
    "bearer",
    "API-KEY",
    "Api_Key",
    "PrivateKey",
];

fn full(value: serde_json::Value) -> TraceRecord {
    let mut v = json!({
        "trace_id": "0123456789abcdef0123456789abcdef", "name": "T",
        "start_unix_nanos": 1, "end_unix_nanos": 2, "status": "ok",
        "spans": [{"span_id": "0000000000000001", "kind": "exec", "name": "N.exec", "start_unix_nanos": 1,
                   "end_unix_nanos": 2, "status": "ok"}]
    });
    v["input"] = value.clone();
    v["output"] = json!([{"deeper": [value.clone()]}]);
    v["metadata"] = json!({ "m": value.clone() });
    v["spans"][0]["input"] = value.clone();
    v["spans"][0]["output"] = json!({ "wrapped": value.clone() });
    v["spans"][0]["attributes"] = json!({ "a": value });
    serde_json::from_value(v).unwrap()
}

#[test]
fn common_secret_names_are_redacted_in_any_spelling_at_any_depth() {
    let mut store = serde_json::Map::new();
    for (i, name) in NAMES.iter().enumerate() {
        store.insert((*name).into(), json!(format!("leak-{i:02}-value")));
    }
    store.insert("user".into(), json!("ann"));
    let t = Privacy::default().apply(&full(json!({ "level1": { "level2": [serde_json::Value::Object(store)] } })));
    let text = serde_json::to_string(&t).unwrap();
    assert!(!text.contains("leak-"), "{text}");
    assert_eq!(text.matches("\"ann\"").count(), 6, "other values stay, everywhere: {text}");
    assert_eq!(text.matches(REDACTED).count(), 6 * NAMES.len(), "{text}");
}

#[test]
fn credential_shaped_values_are_redacted_whatever_their_key_unless_turned_off() {
    let jwt =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let values = json!({
        "header": "Bearer zyxw9876543210qwerty",
        "note": "use sk-proj-abcdefghijklmnop0123 for the model",
        "lf": "pk-lf-1234abcd-5678-90ef",
        "session": jwt,
        "plain": "hello world",
    });
    let t = Privacy::default().apply(&full(values.clone()));
    let text = serde_json::to_string(&t).unwrap();
    for leak in ["zyxw9876543210qwerty", "sk-proj-abcdefghijklmnop0123", "pk-lf-1234abcd", "eyJhbGci"] {
        assert!(!text.contains(leak), "{leak} in {text}");
    }
    assert_eq!(t.input["header"], "Bearer <redacted>");
    assert_eq!(t.input["note"], "use <redacted> for the model");
    assert_eq!(t.input["plain"], "hello world");

    // FLOWTRACE_REDACT_VALUES=false turns value patterns off; FLOWTRACE_REDACT_KEYS adds keys.
    let cfg = TracingConfig::from_vars([("FLOWTRACE_REDACT_VALUES", "false"), ("FLOWTRACE_REDACT_KEYS", "Plain, ssn")])
        .unwrap();
    let t = Privacy::from_config(&cfg).apply(&full(values));
    assert_eq!(t.input["header"], "Bearer zyxw9876543210qwerty");
    assert_eq!(t.input["session"], jwt);
    assert_eq!(t.input["plain"], REDACTED, "an added key, matched case-insensitively");
}

#[test]
fn applying_the_rules_twice_copies_nothing_the_second_time() {
    let p = Privacy::default();
    let once = std::sync::Arc::new(p.apply(&trace(10)));
    assert!(std::sync::Arc::ptr_eq(&p.apply_shared(once.clone()), &once), "already scrubbed: no copy");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowtrace-privacy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A flow whose store, values and error messages hold secrets of every kind: by key name, by
/// shape, and the exporter's own Langfuse keys.
fn leaky_flow(pk: &'static str, sk: &'static str, basic: String) -> Flow {
    let node = FnNode::new("Leaky")
        .prep(move |ctx| {
            ctx.shared().insert("note", format!("configured with {sk}"));
            ctx.shared().insert(
                "headers",
                json!({"Authorization": format!("Basic {basic}"), "X-Api-Key": "xk-0123456789abcdef"}),
            );
            ctx.shared().insert("db", json!({"user": "ann", "passwd": "hunter2hunter2"}));
            Ok(json!({ "public": pk }))
        })
        .exec(|_, cx| async move {
            if cx.attempt() == 0 {
                Err("upstream answered 401 to Authorization: Bearer tok-0123456789abcdefghij".into())
            } else {
                Ok(json!({"client_secret": "cs-0123456789abcdef", "answer": 42}))
            }
        })
        .into_node()
        .max_retries(2);
    Flow::new(&node)
}

/// What every destination must not show, for a key pair: the keys, their Basic form, every
/// 12-character piece of the secret, and the flow's own secrets.
fn forbidden(pk: &str, sk: &str, basic: &str) -> Vec<String> {
    let mut v: Vec<String> = vec![pk.into(), sk.into(), basic.into()];
    let chars: Vec<char> = sk.chars().collect();
    v.extend(chars.windows(12).map(|w| w.iter().collect::<String>()));
    for s in ["xk-0123456789abcdef", "hunter2hunter2", "tok-0123456789abcdefghij", "cs-0123456789abcdef"] {
        v.push(s.into());
    }
    v
}

fn read_all(dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            read_all(&p, out);
        } else if let Ok(bytes) = std::fs::read(&p) {
            // Lossy: the spool's segments are binary frames around JSON, and must be scanned too.
            out.push((p.display().to_string(), String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
}

const ECHO_PK: &str = "pk-lf-4c1d2e3f-aaaa-4bbb-8ccc-0123456789ab";
const ECHO_SK: &str = "sk-lf-7e6d5c4b-dddd-4eee-9fff-ba9876543210";
const OTLP_KEY: &str = "otlp-key-0123456789abcdef";
const OTLP_TOKEN: &str = "otlp-token-abcdef0123456789";

/// The HTTP Basic credentials of a key pair, as an `Authorization` header carries them.
fn basic(pk: &str, sk: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{pk}:{sk}"))
}

/// Run by [`no_secret_leaves_under_a_header_echoing_backend`] as a child process, so that
/// everything it prints (every log level, debug output) can be searched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by no_secret_leaves_under_a_header_echoing_backend"]
async fn echo_backend_child() {
    let dir = PathBuf::from(std::env::var("FLOWTRACE_ECHO_DIR").expect("FLOWTRACE_ECHO_DIR is set by the parent test"));
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(std::io::stderr).try_init();
    let langfuse = LangfuseServer::start_with_keys(ECHO_PK, ECHO_SK).await;
    langfuse.echo_headers();
    // The OTLP backend takes none of these credentials: every answer is a 401 echoing them.
    let otlp = LangfuseServer::start().await;
    otlp.echo_headers();
    let cfg = TracingConfig::from_vars([
        ("LANGFUSE_HOST", langfuse.url()),
        ("LANGFUSE_PUBLIC_KEY", ECHO_PK.into()),
        ("LANGFUSE_SECRET_KEY", ECHO_SK.into()),
        ("LANGFUSE_INGESTION", "otel".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url()),
        ("OTEL_EXPORTER_OTLP_HEADERS", format!("x-api-key={OTLP_KEY},authorization=Bearer {OTLP_TOKEN}")),
        ("FLOWTRACE_SPOOL_DIR", dir.join("spool").display().to_string()),
        ("FLOWTRACE_TRACE_FILE", dir.join("traces.jsonl").display().to_string()),
        ("FLOWTRACE_DEBUG", "true".into()),
    ])
    .unwrap();
    println!("config {cfg:?}");
    let tracer = Tracer::from_config(&cfg).unwrap();
    let flow = leaky_flow(ECHO_PK, ECHO_SK, basic(ECHO_PK, ECHO_SK));
    for fault in [
        Fault::Status { code: 500, times: 1 },
        Fault::RateLimited { retry_after_secs: 0, times: 1 },
        Fault::Status { code: 401, times: 1 },
    ] {
        langfuse.fault(fault);
        flow.traced("Leaky").tracer(&tracer).metadata("api_key", ECHO_SK).run(&SharedStore::new()).await.unwrap();
        let report = tracer.flush(Duration::from_secs(10)).await;
        println!("report {report:?}");
    }
    let report = tracer.shutdown(Duration::from_secs(10)).await;
    println!("shutdown report {report:?}");
    println!(
        "echoed langfuse {:?} otlp {:?}",
        langfuse.received(|r| r.echoed.clone()),
        otlp.received(|r| r.echoed.clone())
    );
}

/// A backend that echoes every request header (`Authorization` among them) in its 401, 429
/// and 500 bodies: nothing printed at any level (`RUST_LOG=trace`, `FLOWTRACE_DEBUG=true`),
/// reported, written to the trace file or spooled holds the keys, their Basic form, any 12
/// characters of the secret, or the other credentials of the run.
#[test]
fn no_secret_leaves_under_a_header_echoing_backend() {
    let dir = temp_dir("echo");
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["echo_backend_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("FLOWTRACE_ECHO_DIR", &dir)
        .env("RUST_LOG", "trace")
        .env("FLOWTRACE_DEBUG", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the child failed:\n{stdout}\n{stderr}");
    // The scenario happened: every error status echoed the headers, bodies were logged.
    assert!(stdout.contains("echoed langfuse [500, 429, 401]"), "{stdout}");
    assert!(stdout.contains("otlp [401"), "{stdout}");
    assert!(stderr.contains("401 from http://127.0.0.1"), "the 401 body is logged (scrubbed): {stderr}");
    assert!(stderr.contains("[TRACING]"), "debug output is on: {stderr}");
    let mut sources = vec![("stdout".to_owned(), stdout), ("stderr".to_owned(), stderr)];
    read_all(&dir, &mut sources);
    assert!(sources.iter().any(|(p, t)| p.ends_with("traces.jsonl") && t.contains("Leaky")), "the trace file");
    assert!(sources.iter().any(|(p, t)| p.contains("spool") && t.contains("Leaky")), "the OTLP spool");
    let mut bad = forbidden(ECHO_PK, ECHO_SK, &basic(ECHO_PK, ECHO_SK));
    bad.extend([OTLP_KEY.to_owned(), OTLP_TOKEN.to_owned(), basic(langfuse_server::PK, langfuse_server::SK)]);
    for (source, text) in &sources {
        for b in &bad {
            if let Some(at) = text.find(b.as_str()) {
                let from = text[..at].char_indices().rev().nth(80).map(|(i, _)| i).unwrap_or(0);
                panic!("{b:?} found in {source}: …{}…", &text[from..(at + b.len()).min(text.len())]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The local trace file (the default destination without keys, and `FLOWTRACE_TRACE_FILE`)
/// applies the same rules as Langfuse; so does `JsonlFileExporter::new`.
#[tokio::test]
async fn the_trace_file_is_redacted_like_every_destination() {
    let dir = temp_dir("file");
    let path = dir.join("traces.jsonl");
    let cfg = TracingConfig::from_vars([("FLOWTRACE_TRACE_FILE", path.display().to_string())]).unwrap();
    let tracer = Tracer::from_config(&cfg).unwrap();
    let plain_path = dir.join("plain.jsonl");
    let plain = Tracer::builder().exporter(JsonlFileExporter::new(&plain_path).unwrap()).build().unwrap();
    let flow = leaky_flow("pk-lf-0000-file-test-public", "sk-lf-0000-file-test-secret", "cGs6c2s=".into());
    for t in [&tracer, &plain] {
        flow.traced("Leaky").tracer(t).run(&SharedStore::new()).await.unwrap();
        assert!(t.flush(Duration::from_secs(5)).await.is_complete());
    }
    for p in [&path, &plain_path] {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(text.contains("\"user\":\"ann\""), "{text}");
        for b in forbidden("pk-lf-0000-file-test-public", "sk-lf-0000-file-test-secret", "cGs6c2s=") {
            assert!(!text.contains(&b), "{b} in {}: {text}", p.display());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_secret_deep_inside_an_otherwise_clean_trace_is_still_redacted() {
    // The scan shares a clean trace (no copy); one value needing redaction anywhere, however
    // deep or late, means a copy with that value redacted.
    let clean = || {
        let mut t = full(json!({"user": "ann", "note": "nothing to hide here, just ordinary text"}));
        let mut s = t.spans[0].clone();
        for i in 2..40u64 {
            s.span_id = flowtrace::trace::SpanId(i);
            t.spans.push(s.clone());
        }
        t
    };
    let p = Privacy::default().with_secret_values(["known-secret-value"]);
    let shared = std::sync::Arc::new(clean());
    assert!(std::sync::Arc::ptr_eq(&p.apply_shared(shared.clone()), &shared), "nothing to change: no copy");
    let deep = json!({"a": [{"b": {"c": [1, "x", {"d": "text then Bearer abcdefgh12345678 and more"}]}}]});
    let leaks: [(&str, serde_json::Value); 3] = [
        ("abcdefgh12345678", deep),
        ("known-secret-value", json!(["ok", {"k": "ends with known-secret-value"}])),
        ("hidden", json!({"x": {"y": {"client_secret": "hidden"}}})),
    ];
    for (leak, value) in leaks {
        let mut t = clean();
        let last = t.spans.len() - 1;
        t.spans[last].output = Some(json!({"wrapped": value}));
        let shared = std::sync::Arc::new(t);
        let out = p.apply_shared(shared.clone());
        assert!(!std::sync::Arc::ptr_eq(&out, &shared), "{leak}: a copy");
        let text = serde_json::to_string(&*out).unwrap();
        assert!(!text.contains(leak) && text.contains(REDACTED), "{leak} in {text}");
        assert!(text.contains("nothing to hide here"), "the rest stays");
    }
}
