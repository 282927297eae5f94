//! Flow runs on NATS JetStream, against real `nats-server` processes started here on
//! 127.0.0.1 (ephemeral ports, temp dirs): a worker SIGKILLed mid-load, a cluster member
//! killed mid-load, a run suspended on one worker process and resumed on another with one
//! trace, a poison run dead-lettered, and bad input given clear error results.
//!
//! Without `nats-server` these print SKIP (and fail under CI=true): see tests/support/nats.rs.

#![cfg(unix)]

#[path = "support/child.rs"]
mod child;
#[path = "support/counted_batch.rs"]
mod counted_batch;
#[path = "support/nats.rs"]
mod nats;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use counted_batch::{assert_resumed_once_each, batch_flow};
use flowtrace::durable::nats::{NatsConfig, Queue, Worker};
use flowtrace::durable::{ResultStatus, RunPhase, RunResult, Submission};
use flowtrace::prelude::*;
use futures::StreamExt;
use nats::{NatsCluster, NatsServer};
use parking_lot::Mutex;
use serde_json::{json, Value};

fn example_binary() -> PathBuf {
    child::example_binary("distributed")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowtrace-distributed-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A worker process of the example, killed on drop.
struct WorkerProcess {
    child: Child,
    name: String,
}

impl WorkerProcess {
    fn start(bin: &Path, urls: &str, name: &str, extra: &[&str], trace_file: &Path) -> WorkerProcess {
        let mut child = Command::new(bin)
            .args(["worker", "--nats", urls, "--name", name, "--concurrency", "16", "--ack-wait-ms", "2000"])
            .args(extra)
            .env("STEP_MS", "20")
            .env("FLOWTRACE_TRACE_FILE", trace_file)
            .env_remove("LANGFUSE_PUBLIC_KEY")
            .env_remove("LANGFUSE_SECRET_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker");
        // Wait for its "ready" line (it has connected and set up the JetStream objects).
        let stdout = child.stdout.take().expect("the worker's stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read the worker's first line");
        assert!(line.contains("ready"), "worker {name} did not start: {line:?}");
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        WorkerProcess { child, name: name.to_owned() }
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn sigterm_and_wait(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let status = self.child.wait().expect("the worker exits");
        assert!(status.success(), "worker {} exited with {status}", self.name);
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every execution witnessed on `flowtrace.demo.witness`: (run, node) → workers, in order.
type Witness = Arc<Mutex<HashMap<(String, String), Vec<String>>>>;

async fn watch_witness(client: &async_nats::Client) -> Witness {
    let mut sub = client.subscribe("flowtrace.demo.witness").await.expect("subscribe to the witness subject");
    client.flush().await.unwrap();
    let seen: Witness = Default::default();
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let v: Value = serde_json::from_slice(&m.payload).expect("witness JSON");
            let key = (v["run"].as_str().unwrap_or("").to_owned(), v["node"].as_str().unwrap_or("").to_owned());
            out.lock().entry(key).or_default().push(v["worker"].as_str().unwrap_or("").to_owned());
        }
    });
    seen
}

/// Submits `n` demo runs (their id in the store, as the example's submitter does).
async fn submit_demo(queue: &Queue, n: usize) -> Vec<String> {
    let subs: Vec<Submission> = (0..n)
        .map(|i| {
            let s = Submission::new("demo");
            let id = s.id().to_owned();
            s.store(json!({ "run_id": id, "n": i }))
        })
        .collect();
    let ids: Vec<String> = subs.iter().map(|s| s.id().to_owned()).collect();
    let results = futures::stream::iter(subs.into_iter().map(|s| queue.submit(s))).buffer_unordered(64);
    for r in results.collect::<Vec<_>>().await {
        r.expect("submit");
    }
    ids
}

/// Collects results of `ids` from the result watch until all are in, or the deadline.
async fn collect_results(
    results: &mut futures::stream::BoxStream<'static, Result<RunResult, flowtrace::durable::DurableError>>,
    ids: &HashSet<String>,
    limit: Duration,
    mut on_result: impl FnMut(usize),
) -> (HashMap<String, RunResult>, usize) {
    let mut got: HashMap<String, RunResult> = HashMap::new();
    let mut puts = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < ids.len() {
        match tokio::time::timeout_at(deadline, results.next()).await {
            Ok(Some(Ok(r))) if ids.contains(&r.run_id) => {
                puts += 1;
                got.insert(r.run_id.clone(), r);
                on_result(got.len());
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("result watch: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    (got, puts)
}

const NODES: [&str; 5] = ["fetch", "classify", "draft", "review", "send"];

/// Polls until every run has a witness for each of its five nodes (witnesses and results
/// travel separately), or the deadline.
async fn witness_complete(witness: &Witness, ids: &HashSet<String>, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let missing = {
            let w = witness.lock();
            ids.iter().any(|id| NODES.iter().any(|n| !w.contains_key(&(id.clone(), (*n).to_owned()))))
        };
        if !missing {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_runs_over_three_workers_survive_a_sigkilled_worker() {
    let Some(server) = NatsServer::start("a_thousand_runs_over_three_workers_survive_a_sigkilled_worker") else {
        return;
    };
    let bin = example_binary();
    let dir = temp_dir("sigkill");
    let url = server.url();
    let mut workers: Vec<WorkerProcess> = (1..=3)
        .map(|i| WorkerProcess::start(&bin, &url, &format!("w{i}"), &[], &dir.join(format!("w{i}.jsonl"))))
        .collect();
    let queue = Queue::connect(&NatsConfig::new(&url).unwrap().ack_wait(Duration::from_secs(2))).await.unwrap();
    let witness = watch_witness(queue.client()).await;
    let mut results = queue.results().await.unwrap();

    let ids: HashSet<String> = submit_demo(&queue, 1000).await.into_iter().collect();
    let mut killed = false;
    let (got, puts) = collect_results(&mut results, &ids, Duration::from_secs(120), |n| {
        if n >= 250 && !killed {
            workers[1].sigkill();
            killed = true;
        }
    })
    .await;
    assert!(killed, "the worker was killed mid-load");
    assert_eq!(got.len(), 1000, "every run has a result ({} of 1000)", got.len());
    assert_eq!(puts, 1000, "each result was written once");
    for r in got.values() {
        assert_eq!(r.status, ResultStatus::Completed, "{r:?}");
        // The store crossed the crash intact: one post per node, never one replayed.
        assert_eq!(r.store.as_ref().unwrap()["steps"], 5, "{r:?}");
    }
    assert!(got.values().any(|r| r.deliveries > 1), "some runs were redelivered after the kill");

    assert!(witness_complete(&witness, &ids, Duration::from_secs(10)).await, "every node of every run was witnessed");
    let w = witness.lock();
    let mut repeated_runs = HashSet::new();
    for ((run, node), by) in w.iter() {
        if !ids.contains(run) {
            continue;
        }
        if by.len() > 1 {
            // Only the visit in flight at the kill may run again: first on the killed worker,
            // and at most one such visit per run.
            assert_eq!(by.len(), 2, "run {run} node {node} ran {} times: {by:?}", by.len());
            assert_eq!(by[0], "w2", "run {run} node {node} was repeated though its worker lived: {by:?}");
            assert!(repeated_runs.insert(run.clone()), "run {run} repeated more than one visit");
        }
    }
    assert!(
        repeated_runs.len() <= 16,
        "at most the killed worker's runs in flight repeat a visit: {}",
        repeated_runs.len()
    );
    drop(w);
    for wp in &mut workers {
        wp.sigkill();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_complete_when_one_of_three_servers_is_killed() {
    let Some(mut cluster) = NatsCluster::start("runs_complete_when_one_of_three_servers_is_killed") else {
        return;
    };
    let bin = example_binary();
    let dir = temp_dir("cluster");
    let urls = cluster.urls();
    let cfg = NatsConfig::new(&urls).unwrap().replicas(3).ack_wait(Duration::from_secs(2));
    // Set up the replicated stream and buckets first (the cluster elects its leaders meanwhile).
    let queue = Queue::connect(&cfg).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let _workers: Vec<WorkerProcess> = (1..=2)
        .map(|i| {
            WorkerProcess::start(&bin, &urls, &format!("c{i}"), &["--replicas", "3"], &dir.join(format!("c{i}.jsonl")))
        })
        .collect();
    // The server to kill is the run stream's leader (the member that orders every submit and
    // ack), looked up from JetStream's own stream info.
    let js = async_nats::jetstream::new(queue.client().clone());
    let leader = stream_leader(&js, "FLOWTRACE_RUNS").await;
    let victim = cluster
        .servers
        .iter()
        .position(|s| s.name == leader)
        .unwrap_or_else(|| panic!("the leader '{leader}' is one of the members"));
    let mut results = queue.results().await.unwrap();
    let ids: HashSet<String> = submit_demo(&queue, 300).await.into_iter().collect();
    let mut killed = false;
    let (got, _) = collect_results(&mut results, &ids, Duration::from_secs(120), |n| {
        if n >= 60 && !killed {
            cluster.servers[victim].kill();
            killed = true;
        }
    })
    .await;
    assert!(killed, "the stream's leader was killed mid-load");
    let new_leader = stream_leader(&js, "FLOWTRACE_RUNS").await;
    assert_ne!(new_leader, leader, "another member leads the stream after the kill");
    assert_eq!(got.len(), 300, "every run completed though a server died ({} of 300)\n{}", got.len(), cluster.logs());
    for r in got.values() {
        assert_eq!(r.status, ResultStatus::Completed, "{r:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server name of the stream's leader, waiting (up to 30 s) while one is elected.
async fn stream_leader(js: &async_nats::jetstream::Context, stream: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(info) = s.info().await {
                if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                    return leader;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "stream {stream} has no leader after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The trace records in a JSON Lines trace file, as JSON.
fn traces(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON line in {}: {e}", path.display())))
        .collect()
}

fn span<'a>(trace: &'a Value, name: &str) -> Option<&'a Value> {
    trace["spans"].as_array()?.iter().find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_run_resumes_on_another_worker_process_in_one_trace() {
    let Some(server) = NatsServer::start("a_suspended_run_resumes_on_another_worker_process_in_one_trace") else {
        return;
    };
    let bin = example_binary();
    let dir = temp_dir("suspend");
    let url = server.url();
    let queue = Queue::connect(&NatsConfig::new(&url).unwrap().ack_wait(Duration::from_secs(2))).await.unwrap();
    let mut a = WorkerProcess::start(&bin, &url, "worker-a", &[], &dir.join("a.jsonl"));
    let run_id = queue.submit(Submission::new("approval").store(json!({"ticket": "T-1"}))).await.unwrap();

    // Suspended: checkpointed at the approval node, and no result.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = queue.state(&run_id).await.unwrap() {
            if matches!(s.phase, RunPhase::Suspended { .. }) {
                assert_eq!(s.next.as_deref(), Some("approve"));
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the run did not suspend");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(queue.result(&run_id).await.unwrap().is_none(), "a suspended run has no final result");
    a.sigterm_and_wait();

    let mut b = WorkerProcess::start(&bin, &url, "worker-b", &[], &dir.join("b.jsonl"));
    queue.resume(&run_id, json!(true)).await.unwrap();
    assert!(queue.resume(&run_id, json!(true)).await.is_err(), "a second resume is refused");
    let result = queue.wait(&run_id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(result.status, ResultStatus::Completed, "{result:?}");
    assert_eq!(result.worker.as_deref(), Some("worker-b"));
    assert_eq!(result.store.as_ref().unwrap()["sent"], true);
    b.sigterm_and_wait();

    let ta = traces(&dir.join("a.jsonl"));
    let tb = traces(&dir.join("b.jsonl"));
    let ta = ta.iter().find(|t| t["trace_id"] == run_id.as_str()).expect("worker A's part of the trace");
    let tb = tb.iter().find(|t| t["trace_id"] == run_id.as_str()).expect("worker B's part of the trace");
    assert_eq!(ta["trace_id"], tb["trace_id"], "one trace across the two workers");
    assert!(span(ta, "draft").is_some(), "worker A ran draft");
    // A suspension is no error: every span of A's part ends ok (Langfuse shows no ERROR
    // level anywhere in the trace), and an event at DEFAULT level says why the part ends.
    assert_eq!(ta["status"], "ok", "worker A's part is not an error: {ta}");
    let spans = ta["spans"].as_array().unwrap();
    assert!(spans.iter().all(|s| s["status"] == "ok"), "no span of A's part is an error: {ta}");
    let event = spans
        .iter()
        .find(|s| s["kind"] == "event" && s["name"].as_str().is_some_and(|n| n.starts_with("suspended at 'approve'")))
        .unwrap_or_else(|| panic!("a suspension event in A's part: {ta}"));
    assert_eq!(event["attributes"]["level"], "DEFAULT");
    // Both parts show the run's initial store as the trace's input; B's (the last) shows
    // the final store as its output.
    assert_eq!(ta["input"], json!({"ticket": "T-1"}));
    assert_eq!(tb["input"], json!({"ticket": "T-1"}), "B's part shows the run's input, not its checkpoint");
    assert_eq!(tb["output"]["sent"], true);
    assert_eq!(tb["status"], "ok");
    let resume = span(tb, "resume").expect("worker B's part opens with a resume span");
    assert_eq!(resume["kind"], "resume");
    assert_eq!(resume["input"]["worker"], "worker-b");
    assert_eq!(resume["input"]["node"], "approve");
    assert!(span(tb, "draft").is_none(), "draft was not executed again");
    assert!(span(tb, "approve").is_some(), "worker B visited approve");
    let flow = span(tb, "approval").expect("worker B's flow span");
    assert_eq!(flow["parent_id"], resume["span_id"], "the resumed flow hangs under the resume span");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tiny_flow() -> Flow {
    let n = FnNode::new("only")
        .post(|ctx, _, _| {
            ctx.shared().insert("done", true);
            Ok(Action::none())
        })
        .into_node();
    Flow::named("tiny", &n)
}

fn poison_flow() -> Flow {
    let n = FnNode::new("explode").exec(|_, _| async { panic!("poison input") }).into_node();
    Flow::named("poison", &n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_runs_are_dead_lettered_and_bad_input_gets_error_results() {
    let Some(server) = NatsServer::start("poison_runs_are_dead_lettered_and_bad_input_gets_error_results") else {
        return;
    };
    let cfg = NatsConfig::new(&server.url()).unwrap().ack_wait(Duration::from_secs(2));
    let queue = Queue::connect(&cfg).await.unwrap();
    let worker = Worker::builder(&queue)
        .name("in-test")
        .max_deliveries(3)
        .flow_version("tiny", &tiny_flow(), "2")
        .unwrap()
        .flow("poison", &poison_flow())
        .unwrap()
        .build();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    let wait = |id: String| {
        let q = queue.clone();
        async move { q.wait(&id, Duration::from_secs(30)).await.unwrap() }
    };

    let ok = queue.submit(Submission::new("tiny")).await.unwrap();
    let r = wait(ok).await;
    assert_eq!(r.status, ResultStatus::Completed);
    assert_eq!(r.store.unwrap()["done"], true);

    let unknown = queue.submit(Submission::new("no-such-flow")).await.unwrap();
    let r = wait(unknown).await;
    assert_eq!(r.status, ResultStatus::Failed);
    assert_eq!(r.error_kind.as_deref(), Some("unknown_flow"));
    assert!(r.error.unwrap().contains("unknown flow 'no-such-flow'"));

    let bad_store = queue.submit(Submission::new("tiny").store(json!("not an object"))).await.unwrap();
    let r = wait(bad_store).await;
    assert_eq!(r.error_kind.as_deref(), Some("bad_input"), "{r:?}");

    let old = queue.submit(Submission::new("tiny").flow_version("1")).await.unwrap();
    let r = wait(old).await;
    assert_eq!(r.error_kind.as_deref(), Some("version"), "{r:?}");

    queue.submit_raw("garbage-run", b"{not json".to_vec()).await.unwrap();
    let r = wait("garbage-run".into()).await;
    assert_eq!(r.status, ResultStatus::Failed);
    assert!(r.error.unwrap().contains("does not deserialise"));

    let poison = queue.submit(Submission::new("poison")).await.unwrap();
    let r = wait(poison).await;
    assert_eq!(r.status, ResultStatus::DeadLettered, "{r:?}");
    assert_eq!(r.deliveries, 3, "dead-lettered after exactly max_deliveries");
    assert_eq!(r.error_kind.as_deref(), Some("panic"));
    assert!(r.error.unwrap().contains("poison input"));

    let _ = stop_tx.send(());
    let report = handle.await.unwrap().unwrap();
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(report.retried, 2);
    assert_eq!(report.completed, 1);
    assert_eq!(report.failed, 4);
}

/// One node whose exec takes 50 ms and notes the most executions in flight at once.
fn slow_flow(in_flight: &Arc<std::sync::atomic::AtomicUsize>, most: &Arc<std::sync::atomic::AtomicUsize>) -> Flow {
    use std::sync::atomic::Ordering;
    let (in_flight, most) = (Arc::clone(in_flight), Arc::clone(most));
    let n = FnNode::new("slow")
        .exec(move |_, _| {
            let (in_flight, most) = (Arc::clone(&in_flight), Arc::clone(&most));
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok(Value::Null)
            }
        })
        .into_node();
    Flow::named("slow", &n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_through_its_runtime_and_a_redelivered_batch_skips_completed_items() {
    let Some(server) =
        NatsServer::start("a_worker_runs_through_its_runtime_and_a_redelivered_batch_skips_completed_items")
    else {
        return;
    };
    let cfg = NatsConfig::new(&server.url()).unwrap().ack_wait(Duration::from_secs(2));
    let queue = Queue::connect(&cfg).await.unwrap();
    let rt = Runtime::builder().max_in_flight(2).build().unwrap();
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let (in_flight, most) = (Arc::default(), Arc::default());
    let worker = Worker::builder(&queue)
        .name("rt-worker")
        .runtime(&rt)
        .concurrency(64) // ignored: the runtime's limit holds
        .max_deliveries(3)
        .flow("batched", &batch_flow(&counts, "i3"))
        .unwrap()
        .flow("slow", &slow_flow(&in_flight, &most))
        .unwrap()
        .build();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));

    // The runtime's admission limit bounds what the worker runs at once.
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(queue.submit(Submission::new("slow")).await.unwrap());
    }
    for id in &ids {
        let r = queue.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(r.status, ResultStatus::Completed, "{r:?}");
    }
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&most), "at most the runtime's 2 runs at once, saw {most}");

    // Item i3 fails on the first delivery; the redelivery continues inside the batch.
    let id = queue.submit(Submission::new("batched")).await.unwrap();
    let r = queue.wait(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(r.status, ResultStatus::Completed, "{r:?}");
    assert_eq!(r.deliveries, 2, "{r:?}");
    let store = r.store.unwrap();
    assert_resumed_once_each(&store, &counts, "completed items are not executed again after the redelivery");

    let _ = stop_tx.send(());
    let report = handle.await.unwrap().unwrap();
    assert_eq!(report.completed, 9);
    assert_eq!(report.retried, 1);
    // Every execution went through the runtime; the worker leaves a runtime it was given running.
    assert_eq!(rt.stats().started, 10);
    assert_eq!(rt.stats().succeeded, 9);
    assert!(!rt.is_shutting_down());
}

// Credentials: user/password, token, TLS with a private CA, a creds file.

/// A secret for one test: random enough not to appear by chance in any output.
fn secret(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{tag}-{:08x}{:08x}Q7z", std::process::id(), nanos)
}

/// Asserts that `text` holds neither `secret` nor any 10-character piece of it.
fn assert_no_secret(what: &str, text: &str, secret: &str) {
    let chars: Vec<char> = secret.chars().collect();
    for w in chars.windows(10) {
        let piece: String = w.iter().collect();
        assert!(!text.contains(&piece), "{what} shows a piece of the secret ({piece:?}):\n{text}");
    }
}

/// Runs the worker example against `url` with `env` (and RUST_LOG=trace, so everything it
/// and its NATS client log is written), has it complete one demo run submitted through
/// `queue`, stops it, and returns all it printed.
async fn one_run_through_a_worker_process(url: &str, env: &[(&str, &str)], queue: &Queue, tag: &str) -> String {
    let bin = example_binary();
    let dir = temp_dir(tag);
    let (out, err) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    let mut child = Command::new(&bin)
        .args(["worker", "--nats", url, "--name", tag, "--concurrency", "4"])
        .env_remove("NATS_URL")
        .env_remove("NATS_USER")
        .env_remove("NATS_PASSWORD")
        .env_remove("NATS_TOKEN")
        .env_remove("NATS_CA")
        .envs(env.iter().copied())
        .env("RUST_LOG", "trace")
        .env("STEP_MS", "1")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start a worker");
    let printed = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default()
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("ready") {
        assert!(child.try_wait().unwrap().is_none(), "worker {tag} exited:\n{}", printed());
        assert!(tokio::time::Instant::now() < deadline, "worker {tag} not ready:\n{}", printed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = queue.submit(Submission::new("demo")).await.unwrap();
    let r = queue.wait(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(r.status, ResultStatus::Completed, "{r:?}");
    assert_eq!(r.worker.as_deref(), Some(tag));
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success(), "worker {tag} exits cleanly:\n{}", printed());
    let all = printed();
    assert!(all.contains("connects with NatsConfig"), "the worker logged its configuration:\n{all}");
    assert!(all.contains("TRACE"), "the worker logged at TRACE level:\n{all}");
    // The NATS client's own wire trace is in the output too: its CONNECT line is where a
    // client would put the credentials.
    assert!(all.contains("write operation: CONNECT"), "the NATS client's CONNECT line was logged:\n{all}");
    if std::env::var_os("KEEP_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_password_and_token_credentials_work_and_never_leak() {
    const TEST: &str = "user_password_and_token_credentials_work_and_never_leak";
    let password = secret("pw");
    let Some(server) =
        NatsServer::start_with(TEST, &format!("authorization {{ user: alice, password: \"{password}\" }}"))
    else {
        return;
    };
    let host = format!("127.0.0.1:{}", server.port);
    // From the URL, in this process and in a worker process.
    let with_url = format!("nats://alice:{password}@{host}");
    let queue = Queue::connect(&NatsConfig::new(&with_url).unwrap()).await.unwrap();
    let printed = one_run_through_a_worker_process(&with_url, &[], &queue, "userpass-url").await;
    assert_no_secret("the worker given the password in its URL", &printed, &password);
    // From the environment.
    let env = [("NATS_USER", "alice"), ("NATS_PASSWORD", password.as_str())];
    let printed = one_run_through_a_worker_process(&format!("nats://{host}"), &env, &queue, "userpass-env").await;
    assert_no_secret("the worker given the password in NATS_PASSWORD", &printed, &password);
    // A wrong password fails at once, with an error that names the server and no password.
    let wrong = secret("wrong");
    let started = std::time::Instant::now();
    let err = NatsConfig::new(&format!("nats://alice:{wrong}@{host}")).unwrap().connect().await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("authorization violation") && shown.contains(&host), "{shown}");
    assert!(started.elapsed() < Duration::from_secs(10), "a refused credential is not retried");
    assert_no_secret("the refused connection's error", &shown, &wrong);
    drop(server);

    let token = secret("tok");
    let Some(server) = NatsServer::start_with(TEST, &format!("authorization {{ token: \"{token}\" }}")) else {
        return;
    };
    let host = format!("127.0.0.1:{}", server.port);
    let queue = Queue::connect(&NatsConfig::new(&format!("nats://{token}@{host}")).unwrap()).await.unwrap();
    let printed = one_run_through_a_worker_process(&format!("nats://{token}@{host}"), &[], &queue, "token-url").await;
    assert_no_secret("the worker given the token in its URL", &printed, &token);
    let env = [("NATS_TOKEN", token.as_str())];
    let printed = one_run_through_a_worker_process(&format!("nats://{host}"), &env, &queue, "token-env").await;
    assert_no_secret("the worker given the token in NATS_TOKEN", &printed, &token);
    let err = NatsConfig::new(&format!("nats://{host}")).unwrap().connect().await.unwrap_err();
    assert!(err.to_string().contains("authorization violation"), "no token, no connection: {err}");
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it, with the openssl CLI;
/// `None` when openssl is missing.
fn private_ca(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !run(&["version"]) {
        return None;
    }
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=flowtrace test CA",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
    assert!(ok, "openssl could not make the test certificates");
    Some((dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_from_the_environment() {
    const TEST: &str = "tls_with_a_private_ca_from_the_environment";
    let dir = temp_dir("tls");
    let Some((ca, cert, key)) = private_ca(&dir) else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "{TEST}: the openssl CLI is needed to make test certificates, and CI=true");
        eprintln!("\n*** SKIP {TEST}: the openssl CLI is not installed (it makes the test's certificates) ***\n");
        return;
    };
    let tls = format!("tls {{ cert_file: \"{}\", key_file: \"{}\" }}", cert.display(), key.display());
    let Some(server) = NatsServer::start_with(TEST, &tls) else {
        return;
    };
    let url = format!("tls://127.0.0.1:{}", server.port);
    let queue = Queue::connect(&NatsConfig::new(&url).unwrap().tls_ca(&ca)).await.unwrap();
    let ca_path = ca.display().to_string();
    one_run_through_a_worker_process(&url, &[("NATS_CA", ca_path.as_str())], &queue, "tls-env").await;
    // Without the CA the server's certificate is not trusted: a TLS error, at once.
    let started = std::time::Instant::now();
    let err = NatsConfig::new(&url).unwrap().connect().await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("tls"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "a TLS failure is not retried");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_creds_file_is_named_in_errors_but_never_quoted() {
    // Authenticating with a creds file needs an operator, an account and a user JWT signed in
    // turn (`nsc`), which these tests cannot make; what they can check is that its contents
    // (the user's seed) never reach an error.
    eprintln!(
        "\n*** SKIP a_creds_file_is_named_in_errors_but_never_quoted (the authenticating part): \
         creds-file auth needs operator/account JWTs made by nsc, not installed here ***\n"
    );
    let dir = temp_dir("creds");
    let seed = format!("SUA{}", secret("SEED").to_uppercase());
    let path = dir.join("user.creds");
    std::fs::write(&path, format!("-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n")).unwrap();
    let err = NatsConfig::new("nats://127.0.0.1:1").unwrap().creds_file(&path).connect().await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("user.creds"), "the error names the file: {shown}");
    assert_no_secret("the creds file's error", &shown, &seed);
    let missing = NatsConfig::new("nats://127.0.0.1:1").unwrap().creds_file(dir.join("nope.creds"));
    let err = missing.connect().await.unwrap_err();
    assert!(err.to_string().contains("nope.creds"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
