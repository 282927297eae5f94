//! SIGKILL mid-load: the service example runs tickets while the Langfuse backend (a fake on
//! 127.0.0.1) is down, so undelivered batches go to the spool; the process is killed with
//! SIGKILL; the service is started again with the same spool and the backend up, and every
//! span that had reached the spool is delivered. (What can be lost is what was only in memory
//! at the kill: see the README.)

#![cfg(unix)]

#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use flowtrace::trace::TraceRecord;
use langfuse_server::{LangfuseServer, PK, SK};
use serde_json::{json, Value};

fn service_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("the target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--example", "service"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the service example failed");
    profile_dir.join("examples").join("service")
}

fn start(bin: &Path, backend: &str, spool: &Path) -> (Child, u16, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(bin)
        .env("PORT", "0")
        .env("SHUTDOWN_SECS", "20")
        .env("LANGFUSE_HOST", backend)
        .env("LANGFUSE_PUBLIC_KEY", PK)
        .env("LANGFUSE_SECRET_KEY", SK)
        .env("LANGFUSE_INGESTION", "otel")
        .env("FLOWTRACE_SPOOL_DIR", spool)
        .env_remove("TRACE_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the service starts");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the address line");
    let port = line
        .trim()
        .strip_prefix("listening on 127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    (child, port, out)
}

/// Spool files (whole, or claimed for sending) and the spans they hold (trace + its spans).
fn spooled(dir: &Path) -> (Vec<PathBuf>, u64, u64) {
    let mut files = Vec::new();
    let mut spans = 0;
    let mut traces = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
        if name.starts_with('.') || !(name.ends_with(".jsonl") || name.ends_with(".sending")) {
            continue; // a temporary file being written at the kill: never a spooled file
        }
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let t: TraceRecord = serde_json::from_str(line).expect("a spooled file holds whole traces");
            spans += t.spans.len() as u64 + 1;
            traces += 1;
        }
        files.push(p);
    }
    (files, spans, traces)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_in_the_spool_survive_sigkill() {
    let bin = tokio::task::spawn_blocking(service_binary).await.unwrap();
    let server = LangfuseServer::start().await;
    server.down();
    let spool_root = std::env::temp_dir().join(format!("flowtrace-sigkill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool_root);
    let spool = spool_root.join("langfuse");

    let (mut child, port, _out) = start(&bin, &server.url(), &spool_root);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/tickets");
    let requests = (0..100).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let t = json!({"id": format!("K-{i}"), "subject": "s", "description": "d", "customer_tier": "free"});
            client.post(url).json(&t).send().await.map(|r| r.status().as_u16())
        }
    });
    for r in futures::future::join_all(requests).await {
        assert_eq!(r.unwrap(), 200);
    }
    // Wait (bounded) until delivery has given up on some batches and spooled them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while spooled(&spool).1 == 0 {
        assert!(Instant::now() < deadline, "nothing reached the spool in 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More load in flight at the kill.
    for i in 0..20 {
        let t = json!({"id": format!("L-{i}"), "subject": "s", "description": "d", "customer_tier": "free"});
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.post(url).json(&t).send().await });
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not exited");

    let (files, in_spool, traces) = spooled(&spool);
    assert!(in_spool > 0);
    // A file the killed process had claimed for a probe is taken back once it is a minute old
    // (a live process may still be sending it). Age such files instead of waiting a minute.
    for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "sending")) {
        let old = SystemTime::now() - Duration::from_secs(120);
        std::fs::File::options().write(true).open(f).unwrap().set_modified(old).unwrap();
    }

    // Restart with the same spool, the backend up; a SIGTERM flushes and reports.
    server.up().await;
    let (mut child, _port, mut out) = start(&bin, &server.url(), &spool_root);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    let line = rest.lines().find_map(|l| l.strip_prefix("shutdown report: ")).expect("a report");
    let report: Value = serde_json::from_str(line).unwrap();
    assert_eq!(report["export"]["from_spool"].as_u64(), Some(in_spool), "{report}");
    // The backend received every spooled span (OTLP carries the spans, not the trace itself).
    let (_, left, _) = spooled(&spool);
    assert_eq!(left, 0, "spool not drained");
    assert!(server.otlp_span_ids().len() as u64 >= in_spool - traces, "{report}");
    let _ = std::fs::remove_dir_all(&spool_root);
}
