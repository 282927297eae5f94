//! Flow runs spread over worker processes through NATS JetStream (feature `nats`).
//!
//! On one machine, with `nats-server -js` running on 127.0.0.1:4222:
//!
//! ```text
//! cargo run --release --features nats --example distributed -- worker --nats nats://127.0.0.1:4222 &
//! cargo run --release --features nats --example distributed -- worker --nats nats://127.0.0.1:4222 &
//! cargo run --release --features nats --example distributed -- submit --nats nats://127.0.0.1:4222 --runs 1000
//! ```
//!
//! `worker` runs until SIGTERM or Ctrl-C (then it lets its runs finish for `--grace-s`,
//! default 10, hands back the rest, and prints its report as JSON). Options: `--name`,
//! `--concurrency` (runs in flight, default 32), `--max-deliveries` (default 5), and for the
//! JetStream objects the first process creates, `--replicas` and `--ack-wait-ms`.
//!
//! `submit` submits `--runs N` runs of the demo flow (`--flow` picks another registered flow),
//! waits for all their results (at most `--timeout-s`, default 300) and prints
//! `{"submitted":N,"completed":..,"failed":..,"elapsed_s":..}`.
//!
//! `bench-checkpoint` measures one checkpoint write (median and p99 of `--n` sequential
//! saves) to JetStream KV, or with `--embedded PATH` to the embedded store.
//!
//! The demo flow has five nodes; each exec takes `STEP_MS` (default 20) milliseconds and
//! publishes `{"run","node","worker"}` to `flowtrace.demo.witness`, so an outside observer can
//! count executions. Workers also register `approval` (waits for input `approved`) and
//! `poison` (panics on every delivery). Credentials may be in the URL or in `NATS_USER` /
//! `NATS_PASSWORD`, `NATS_TOKEN`, `NATS_CREDS`; they are never printed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flowtrace::durable::nats::{NatsConfig, Queue, Worker};
use flowtrace::durable::{ResultStatus, Submission};
use flowtrace::prelude::*;
use futures::StreamExt;
use serde_json::{json, Value};

/// The subject every demo-node execution is announced on.
const WITNESS: &str = "flowtrace.demo.witness";

fn demo_flow(client: async_nats::Client, worker: String, step: Duration) -> Flow {
    let nodes: Vec<NodeRef> = ["fetch", "classify", "draft", "review", "send"]
        .iter()
        .map(|&name| {
            let client = client.clone();
            let worker = worker.clone();
            FnNode::new(name)
                .prep(|ctx| Ok(ctx.shared().get_json("run_id").unwrap_or(Value::Null)))
                .exec(move |run, cx| {
                    let client = client.clone();
                    let worker = worker.clone();
                    async move {
                        tokio::time::sleep(step).await;
                        let w = json!({ "run": run, "node": cx.node_name(), "worker": worker });
                        client.publish(WITNESS, serde_json::to_vec(&w)?.into()).await?;
                        // At the server before the visit ends, so a crash cannot hide it.
                        client.flush().await?;
                        Ok(Value::Null)
                    }
                })
                .post(|ctx, _, _| {
                    ctx.shared().update("steps", || 0_u64, |n| *n += 1)?;
                    Ok(Action::none())
                })
                .into_node()
        })
        .collect();
    for pair in nodes.windows(2) {
        let _ = &pair[0] >> &pair[1];
    }
    Flow::named("demo", &nodes[0])
}

fn approval_flow() -> Flow {
    let draft = FnNode::new("draft")
        .post(|ctx, _, _| {
            ctx.shared().insert("draft", "Dear customer, your refund is on its way.");
            Ok(Action::none())
        })
        .into_node();
    let approve = FnNode::new("approve")
        .prep(|ctx| Ok(ctx.wait_for::<Value>("approved")?))
        .post(|ctx, approved, _| {
            ctx.shared().insert("sent", approved.as_bool() == Some(true));
            Ok(Action::none())
        })
        .into_node();
    let _ = &draft >> &approve;
    Flow::named("approval", &draft)
}

fn poison_flow() -> Flow {
    let bad = FnNode::new("explode").exec(|_, _| async { panic!("poison input") }).into_node();
    Flow::named("poison", &bad)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg(args, name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config(args: &[String]) -> Result<NatsConfig, Box<dyn std::error::Error>> {
    let url = arg(args, "--nats").or_else(|| std::env::var("NATS_URL").ok()).unwrap_or("nats://127.0.0.1:4222".into());
    let mut cfg = NatsConfig::from_url_and_env(&url)?.replicas(num(args, "--replicas", 1));
    if let Some(ms) = arg(args, "--ack-wait-ms").and_then(|v| v.parse().ok()) {
        cfg = cfg.ack_wait(Duration::from_millis(ms));
    }
    Ok(cfg)
}

async fn worker(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let name = arg(args, "--name").unwrap_or_else(flowtrace::durable::default_worker_name);
    let cfg = config(args)?.connection_name(format!("flowtrace-worker-{name}"));
    tracing::info!(target: "distributed", "worker {name} connects with {cfg:?}");
    let queue = Queue::connect(&cfg).await?;
    let step = Duration::from_millis(std::env::var("STEP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(20));
    let worker = Worker::builder(&queue)
        .name(&name)
        .concurrency(num(args, "--concurrency", 32))
        .max_deliveries(num(args, "--max-deliveries", 5))
        .grace(Duration::from_secs(num(args, "--grace-s", 10)))
        .flow("demo", &demo_flow(queue.client().clone(), name.clone(), step))?
        .flow("approval", &approval_flow())?
        .flow("poison", &poison_flow())?
        .build();
    println!("worker {name} ready");
    let shutdown = async {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = worker.run(shutdown).await?;
    let spans = flowtrace::flush(Duration::from_secs(10)).await;
    println!(
        "{}",
        json!({
            "worker": name, "completed": report.completed, "failed": report.failed,
            "dead_lettered": report.dead_lettered, "suspended": report.suspended,
            "retried": report.retried, "handed_back": report.handed_back,
            "spans_delivered": spans.delivered, "spans_dropped": spans.dropped,
        })
    );
    Ok(())
}

async fn submit(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::connect(&config(args)?).await?;
    let runs: usize = num(args, "--runs", 100);
    let flow = arg(args, "--flow").unwrap_or_else(|| "demo".into());
    let timeout = Duration::from_secs(num(args, "--timeout-s", 300));
    let mut results = queue.results().await?;
    let started = Instant::now();
    let subs: Vec<Submission> = (0..runs)
        .map(|i| {
            let s = Submission::new(&flow).trace_name("distributed demo");
            let id = s.id().to_owned();
            s.store(json!({ "run_id": id, "n": i }))
        })
        .collect();
    let mut pending: HashSet<String> = subs.iter().map(|s| s.id().to_owned()).collect();
    let submitted =
        futures::stream::iter(subs.into_iter().map(|s| queue.submit(s))).buffer_unordered(64).collect::<Vec<_>>().await;
    for r in &submitted {
        if let Err(e) = r {
            eprintln!("submit failed: {e}");
        }
    }
    let (mut completed, mut failed) = (0_usize, 0_usize);
    let deadline = tokio::time::Instant::now() + timeout;
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, results.next()).await {
            Ok(Some(Ok(r))) => {
                if pending.remove(&r.run_id) {
                    if r.status == ResultStatus::Completed {
                        completed += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
            Ok(Some(Err(e))) => eprintln!("result watch: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    println!(
        "{}",
        json!({
            "submitted": submitted.iter().filter(|r| r.is_ok()).count(),
            "completed": completed,
            "failed": failed,
            "elapsed_s": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}

/// The cost of one checkpoint: `--n` sequential saves of a demo run's state (after a warm-up),
/// to JetStream KV (`--nats`) or to the embedded store (`--embedded PATH`); prints the median
/// and p99 in microseconds.
async fn bench_checkpoint(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    use flowtrace::durable::{CheckpointStore, EmbeddedStore, RunState};
    let n: usize = num(args, "--n", 5000);
    let (store, target): (Box<dyn CheckpointStore>, String) = match arg(args, "--embedded") {
        Some(path) => (Box::new(EmbeddedStore::open(&path)?), format!("embedded redb at {path}")),
        None => {
            let queue = Queue::connect(&config(args)?).await?;
            (Box::new(queue.checkpoints().clone()), "JetStream KV".to_owned())
        }
    };
    let sub = Submission::new("demo");
    let id = sub.id().to_owned();
    let mut state = RunState::initial(&sub.store(json!({ "run_id": id, "n": 7 })).into_request())?;
    let mut micros = Vec::with_capacity(n);
    for i in 0..(n + 200) {
        state.steps = i as u64;
        state.next = Some(["fetch", "classify", "draft", "review", "send"][i % 5].to_owned());
        state.store.insert("steps".into(), json!(i % 5));
        let t = Instant::now();
        store.save(&state).await?;
        if i >= 200 {
            micros.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    micros.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| micros[((micros.len() as f64 * p) as usize).min(micros.len() - 1)];
    println!(
        "{}",
        json!({
            "target": target, "checkpoints": n,
            "bytes": state.to_bytes()?.len(),
            "median_us": (pct(0.5) * 10.0).round() / 10.0,
            "p99_us": (pct(0.99) * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // RUST_LOG set: everything the worker and its NATS client log, wire trace included, to
    // stderr (the credential tests read it for secrets).
    if std::env::var_os("RUST_LOG").is_some() {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let filter = tracing_subscriber::filter::Targets::new().with_default(tracing::Level::TRACE);
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter)
            .try_init();
    }
    match args.first().map(String::as_str) {
        Some("worker") => worker(&args).await,
        Some("submit") => submit(&args).await,
        Some("bench-checkpoint") => bench_checkpoint(&args).await,
        _ => {
            eprintln!("usage: distributed worker --nats URL [--name N] [--concurrency N]\n       distributed submit --nats URL --runs N");
            std::process::exit(2);
        }
    }
}
