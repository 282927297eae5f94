//! The service example (`examples/service.rs`) as a child process on 127.0.0.1: a burst of
//! 1,000 concurrent tickets with tracing on, malformed input, and SIGTERM mid-load (graceful
//! shutdown: runs finish, traces flushed, a report printed, exit 0).
//!
//! The example binary is the one `cargo test` builds; when it is missing (e.g. `cargo test
//! --test service` alone), the test builds it with the same cargo and target directory.

#![cfg(unix)]

#[path = "support/child.rs"]
mod child;
#[path = "support/langfuse_server.rs"]
mod langfuse_server;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

fn example_binary() -> PathBuf {
    child::example_binary("service")
}

struct Service {
    child: Child,
    port: u16,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Service {
    fn start() -> Service {
        Self::start_with(&[])
    }

    fn start_with(env: &[(&str, String)]) -> Service {
        let mut cmd = Command::new(example_binary());
        cmd.env("PORT", "0").env("SHUTDOWN_SECS", "20").env_remove("TRACE_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("the service starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("the service prints its address");
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Service { child, port, stdout }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends SIGTERM and returns (exit code, the rest of stdout).
    fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(st.success());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("stdout readable");
        let code = self.child.wait().expect("the service exits").code();
        (code, rest)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ticket(i: usize) -> Value {
    let (subject, description, tier, team) = match i % 4 {
        0 => ("URGENT: checkout down", "error 500 everywhere", "premium", "escalation"),
        1 => ("App crash", "I get an error on login", "free", "engineering"),
        2 => ("Billing question", "How do I change my payment card?", "premium", "premium_support"),
        _ => ("Hello", "Just saying hi", "free", "general_support"),
    };
    json!({ "id": format!("T-{i}"), "subject": subject, "description": description, "customer_tier": tier, "team": team })
}

async fn stats(client: &reqwest::Client, svc: &Service) -> Value {
    client.get(svc.url("/stats")).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_concurrent_tickets_then_sigterm() {
    let t0 = std::time::Instant::now();
    let svc = Service::start();
    println!("service up after {:?}", t0.elapsed());
    let client = reqwest::Client::builder().pool_max_idle_per_host(1100).build().unwrap();
    let started = std::time::Instant::now();
    let requests = (0..1000).map(|i| {
        let client = client.clone();
        let url = svc.url("/tickets");
        async move {
            let t = ticket(i);
            let resp = client.post(url).json(&t).send().await.map_err(|e| format!("request {i}: {e}"))?;
            let status = resp.status();
            let body: Value = resp.json().await.map_err(|e| format!("response {i}: {e}"))?;
            if status != 200 {
                return Err(format!("request {i}: {status} {body}"));
            }
            Ok::<_, String>((t, body))
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(requests))
        .await
        .expect("the burst finishes within 60 s");
    let elapsed = started.elapsed();
    let mut ok = 0;
    for r in results {
        let (t, body) = r.unwrap();
        assert_eq!(body["ticket_id"], t["id"], "{body}");
        assert_eq!(body["routing"]["assigned_team"], t["team"], "{body}");
        assert!(body["classification"]["priority"].is_string(), "{body}");
        ok += 1;
    }
    assert_eq!(ok, 1000);
    println!("1,000 concurrent tickets in {elapsed:?}");

    // Every run is traced: the exporter has seen 1,000 traces (the tracer assembles them off
    // the request path, so wait for it, bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = stats(&client, &svc).await;
        if s["exporter"]["traces"] == 1000 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("traces counted after {:?}", started.elapsed());
    assert_eq!(s["exporter"]["traces"], 1000, "{s}");
    assert_eq!(s["runs"]["succeeded"], 1000, "{s}");
    assert_eq!(s["runs_in_flight"], 0, "{s}");
    // 1 trace + Flow, 2 × (Node, Prep, Exec, Attempt, Post) spans per run.
    assert_eq!(s["exporter"]["spans"], 1000 * 12, "{s}");

    let t = std::time::Instant::now();
    let (code, out) = tokio::task::spawn_blocking(move || svc.terminate()).await.unwrap();
    println!("SIGTERM to exit: {:?}", t.elapsed());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("shutdown report: "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_400_with_a_message() {
    let svc = Service::start();
    let client = reqwest::Client::new();
    for (body, expect) in [
        ("{\"id\": 1", "invalid ticket JSON"),
        ("not json", "invalid ticket JSON"),
        ("{\"id\":\"T\",\"subject\":\"s\",\"description\":\"d\"}", "customer_tier"),
        ("", "invalid ticket JSON"),
    ] {
        let resp = client
            .post(svc.url("/tickets"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].as_str().is_some_and(|m| m.contains(expect)), "{body}: {v}");
    }
    // The service is still up and serves a good ticket.
    let resp = client.post(svc.url("/tickets")).json(&ticket(0)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let s = stats(&client, &svc).await;
    assert_eq!(s["runs"]["started"], 1, "bad input never started a run: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_finishes_runs_and_flushes_traces() {
    let svc = Service::start();
    let client = reqwest::Client::new();
    let load: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            let url = svc.url("/tickets");
            tokio::spawn(async move { client.post(url).json(&ticket(i)).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Wait until runs are in flight, then SIGTERM.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stats(&client, &svc).await["runs_in_flight"].as_u64().unwrap_or(0) < 50 {
        assert!(std::time::Instant::now() < deadline, "no load reached the service");
        tokio::task::yield_now().await;
    }
    let (code, out) = tokio::task::spawn_blocking(move || svc.terminate()).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    let report_line = out.lines().find_map(|l| l.strip_prefix("shutdown report: ")).expect("a report");
    let report: Value = serde_json::from_str(report_line).unwrap();
    // Requests whose connection was accepted before the signal were answered 200; any sent
    // after it were refused at the socket (connection error), never half-answered.
    let mut answered = 0;
    for h in load {
        match h.await.unwrap() {
            Ok(status) => {
                assert_eq!(status, 200);
                answered += 1;
            }
            Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
        }
    }
    assert!(answered >= 50, "only {answered} answered");
    let stats = &report["stats"];
    assert_eq!(stats["succeeded"], stats["started"], "{report}");
    assert_eq!(report["unfinished"], 0, "{report}");
    // Traces flushed: every run's spans (12 per run) delivered, nothing dropped or pending.
    let export = &report["export"];
    assert_eq!(export["dropped"], 0, "{report}");
    assert_eq!(export["pending"], 0, "{report}");
    assert_eq!(export["delivered"].as_u64().unwrap(), stats["started"].as_u64().unwrap() * 12, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_run() {
    use std::io::Write;
    // Each run waits 20 s (a slow model call), so it is surely in flight when the client leaves.
    let svc = Service::start_with(&[("EXTRA_LATENCY_MS", "20000".to_owned())]);
    let client = reqwest::Client::new();
    let body = ticket(0).to_string();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", svc.port)).unwrap();
    write!(
        conn,
        "POST /tickets HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stats(&client, &svc).await["runs_in_flight"] != 1 {
        assert!(std::time::Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The client goes away without reading its answer.
    drop(conn);
    let s = loop {
        let s = stats(&client, &svc).await;
        if s["runs"]["cancelled"] == 1 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(s["runs"]["cancelled"], 1, "the run of a client that went away is cancelled: {s}");
    assert_eq!(s["runs"]["succeeded"], 0, "{s}");
    assert_eq!(s["runs_in_flight"], 0, "{s}");
}

/// 1,000 tickets while Langfuse answers each request after 2 s, then SIGTERM with a 3 s
/// deadline: what is not delivered by then is in the spool when the process exits (the report
/// says so exactly, nothing pending or dropped), and a restart with a healthy backend delivers
/// it: every span of every run reaches Langfuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_slow_backend_spills_and_a_restart_delivers_every_span() {
    let server = langfuse_server::LangfuseServer::start().await;
    server.fault(langfuse_server::Fault::Slow(Duration::from_secs(2)));
    let spool = std::env::temp_dir().join(format!("flowtrace-service-spill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    let env = [
        ("LANGFUSE_HOST", server.url()),
        ("LANGFUSE_PUBLIC_KEY", langfuse_server::PK.to_owned()),
        ("LANGFUSE_SECRET_KEY", langfuse_server::SK.to_owned()),
        ("LANGFUSE_INGESTION", "otel".to_owned()),
        ("FLOWTRACE_SPOOL_DIR", spool.display().to_string()),
        ("SHUTDOWN_SECS", "3".to_owned()),
    ];
    let svc = Service::start_with(&env);
    let client = reqwest::Client::new();
    let load = (0..1000).map(|i| {
        let (client, url) = (client.clone(), svc.url("/tickets"));
        async move { client.post(url).json(&ticket(i)).send().await.map(|r| r.status().as_u16()) }
    });
    for r in futures::future::join_all(load).await {
        assert_eq!(r.unwrap(), 200);
    }
    let started = std::time::Instant::now();
    let (code, out) = tokio::task::spawn_blocking(move || svc.terminate()).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    let line = out.lines().find_map(|l| l.strip_prefix("shutdown report: ")).expect("a report");
    let report: Value = serde_json::from_str(line).unwrap();
    let export = &report["export"];
    // The flush returned by its deadline (plus the grace for requests in flight).
    assert!(started.elapsed() < Duration::from_secs(3 + 1 + 2), "{:?}: {report}", started.elapsed());
    assert_eq!((export["dropped"].as_u64(), export["pending"].as_u64()), (Some(0), Some(0)), "{report}");
    let (delivered, spooled) = (export["delivered"].as_u64().unwrap(), export["spooled"].as_u64().unwrap());
    assert_eq!(delivered + spooled, 1000 * 12, "{report}");
    assert!(spooled > 0, "a 2 s backend cannot take 1,000 traces in 3 s: {report}");
    let in_spool: u64 =
        flowtrace::export::read_spool(spool.join("langfuse")).unwrap().iter().map(|t| t.spans.len() as u64 + 1).sum();
    assert!(in_spool >= spooled, "{in_spool} spans in the spool, {spooled} reported spooled");

    // The next process, with a healthy backend, delivers what the spool holds.
    server.fault(langfuse_server::Fault::None);
    let svc = Service::start_with(&env[..5]);
    let (code, out) = tokio::task::spawn_blocking(move || svc.terminate()).await.unwrap();
    assert_eq!(code, Some(0), "{out}");
    let line = out.lines().find_map(|l| l.strip_prefix("shutdown report: ")).expect("a report");
    let report: Value = serde_json::from_str(line).unwrap();
    assert_eq!(report["export"]["from_spool"].as_u64(), Some(in_spool), "{report}");
    assert_eq!(flowtrace::export::read_spool(spool.join("langfuse")).unwrap().len(), 0, "spool drained: {report}");
    // OTLP carries 11 spans per run (the trace rides on its root span): none lost.
    assert_eq!(server.otlp_span_ids().len(), 1000 * 11, "{report}");
    let _ = std::fs::remove_dir_all(&spool);
}
