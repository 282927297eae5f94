//! SIGKILL mid-load: the service example runs tickets while the Langfuse backend (a fake on
//! 127.0.0.1) is down; every finished trace is in the spool's write-ahead log; the process is
//! killed with SIGKILL, five times; the service is started again with the same spool and the
//! backend up, and every span of every run that had ended a second before a kill is delivered.

#![cfg(unix)]

#[path = "support/child.rs"]
mod child;
#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use langfuse_server::{LangfuseServer, PK, SK};
use serde_json::{json, Value};

fn service_binary() -> PathBuf {
    child::example_binary("service")
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

/// Traces waiting in the spool and the spans they stand for (trace + its spans).
fn spooled(dir: &Path) -> (u64, u64) {
    let traces = flowtrace::export::read_spool(dir).unwrap_or_default();
    (traces.iter().map(|t| t.spans.len() as u64 + 1).sum(), traces.len() as u64)
}

async fn tickets(client: &reqwest::Client, port: u16, round: usize, n: usize) -> Vec<String> {
    let url = format!("http://127.0.0.1:{port}/tickets");
    let requests = (0..n).map(|i| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let t =
                json!({"id": format!("K-{round}-{i}"), "subject": "s", "description": "d", "customer_tier": "free"});
            let r = client.post(url).json(&t).send().await.expect("the service answers");
            assert_eq!(r.status().as_u16(), 200);
            t["id"].as_str().unwrap_or_default().to_owned()
        }
    });
    futures::future::join_all(requests).await
}

/// Five SIGKILLs under load with the backend down: every span of every run that ended more
/// than a second before a kill is delivered once a process runs again with the backend up.
/// (Runs still in flight at a kill, and the last moment's traces, may be lost: see README.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sigkills_lose_no_run_that_ended_a_second_before() {
    let bin = tokio::task::spawn_blocking(service_binary).await.unwrap();
    let server = LangfuseServer::start().await;
    server.down();
    let spool_root = std::env::temp_dir().join(format!("flowtrace-sigkill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool_root);
    let spool = spool_root.join("langfuse");
    let client = reqwest::Client::new();
    let mut must_arrive: Vec<String> = Vec::new();
    for round in 0..5 {
        let (mut child, port, _out) = start(&bin, &server.url(), &spool_root);
        must_arrive.extend(tickets(&client, port, round, 60).await);
        // Every one of those ended before its answer; a second later they must be safe.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // More load in flight at the kill.
        for i in 0..20 {
            let t =
                json!({"id": format!("L-{round}-{i}"), "subject": "s", "description": "d", "customer_tier": "free"});
            let url = format!("http://127.0.0.1:{port}/tickets");
            let client = client.clone();
            tokio::spawn(async move { client.post(url).json(&t).send().await });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
        let status = child.wait().unwrap();
        assert!(!status.success(), "killed, not exited");
    }
    let (in_spool, traces) = spooled(&spool);
    assert!(traces as usize >= must_arrive.len(), "{traces} traces in the spool, {} runs ended", must_arrive.len());

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
    assert_eq!(spooled(&spool).0, 0, "spool not drained: {report}");
    // Every span (OTLP carries the spans, not the trace itself) of every run that had ended.
    // Runs are told apart by their session id (the ticket's id), on the trace's root span.
    let mut per_trace: std::collections::HashMap<Vec<u8>, std::collections::BTreeSet<Vec<u8>>> = Default::default();
    let mut session: std::collections::HashMap<String, Vec<u8>> = Default::default();
    server.received(|r| {
        for s in &r.otlp_spans {
            per_trace.entry(s.trace_id.clone()).or_default().insert(s.span_id.clone());
            if let Some(id) = langfuse_server::attr_str(s, "session.id") {
                session.insert(id.to_owned(), s.trace_id.clone());
            }
        }
    });
    for ticket in &must_arrive {
        let got = session.get(ticket).and_then(|t| per_trace.get(t)).map_or(0, |s| s.len());
        assert_eq!(got, 11, "ticket {ticket}: {got} of 11 spans delivered; {report}");
    }
    let _ = std::fs::remove_dir_all(&spool_root);
}
