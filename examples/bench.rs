//! The side-by-side bench program: the Python reference's five workloads
//! (`shared/peers/python-bench/`), run by flowtrace, one JSON line per run.
//!
//! ```text
//! cargo run --release --example bench -- <chain|seed|parallel|concurrent|batch|cpu|cpu_serial> \
//!     [--mode untraced|traced] [--n RUNS] [--items N] [--flows N] [--repeat R]
//! cargo run --release --example bench -- loop --n STEPS [--mode traced] [--repeat R]
//! ```
//!
//! `loop` is one run of one node looping `--n` times (default 1,000,000): a long run, whose
//! spans the tracer streams to the sink in parts while it goes on.
//!
//! Traced mode exports every trace with the Langfuse exporter (OTLP, or the legacy batch API
//! with `--protocol legacy`) to a Langfuse-compatible sink the program starts itself on
//! 127.0.0.1, on a thread of its own (as the Python reference's `sink_server.py` runs in a
//! process of its own), and reports how many spans the sink received (`spans_delivered`).

#[path = "../benches/support/sink.rs"]
mod sink;
#[path = "../benches/support/workloads.rs"]
mod workloads;

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use flowtrace::prelude::*;
use sink::Sink;
use workloads::*;

struct Args {
    workload: String,
    traced: bool,
    legacy: bool,
    n: Option<usize>,
    items: usize,
    flows: usize,
    repeat: usize,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let workload = it
        .next()
        .ok_or("usage: bench <chain|seed|parallel|concurrent|batch|cpu|cpu_serial> [--mode untraced|traced]")?;
    let mut a = Args { workload, traced: false, legacy: false, n: None, items: 10_000, flows: 1_000, repeat: 5 };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--mode" => {
                a.traced = match value()?.as_str() {
                    "traced" => true,
                    "untraced" | "plain" => false,
                    m => return Err(format!("--mode must be untraced or traced, not {m}")),
                }
            }
            "--protocol" => {
                a.legacy = match value()?.as_str() {
                    "legacy" => true,
                    "otlp" => false,
                    p => return Err(format!("--protocol must be otlp or legacy, not {p}")),
                }
            }
            "--n" => a.n = Some(value()?.parse().map_err(|e| format!("--n: {e}"))?),
            "--items" => a.items = value()?.parse().map_err(|e| format!("--items: {e}"))?,
            "--flows" => a.flows = value()?.parse().map_err(|e| format!("--flows: {e}"))?,
            "--repeat" => a.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            f => return Err(format!("unknown flag {f}")),
        }
    }
    Ok(a)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn run(flow: &Flow, shared: &SharedStore, tracer: Option<&Tracer>) {
    match tracer {
        Some(t) => flow.traced(flow.name().to_owned()).tracer(t).run(shared).await,
        None => flow.run(shared).await,
    }
    .expect("a bench run failed");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The loop runs on a runtime worker, as a service's request handler would, not on the
    // thread that called `block_on` (which would make every run a cross-thread hand-off).
    tokio::spawn(bench()).await.expect("the bench task panicked");
}

async fn bench() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let sink = args.traced.then(Sink::start);
    let tracer = sink.as_ref().map(|s| {
        let exporter = flowtrace::export::LangfuseExporter::builder()
            .host(format!("http://{}", s.addr))
            .keys("pk-lf-bench", "sk-lf-bench")
            .ingestion(if args.legacy {
                flowtrace::export::Ingestion::Legacy
            } else {
                flowtrace::export::Ingestion::Otel
            })
            .spool_dir(std::env::temp_dir().join(format!("flowtrace-bench-spool-{}", std::process::id())))
            .build()
            .expect("exporter");
        Tracer::builder().exporter(exporter).build().expect("tracer")
    });
    let t = tracer.as_ref();

    // (unit count per run, runs per repetition, one repetition)
    let (units_per_run, unit, runs) = match args.workload.as_str() {
        "chain" => (10, "node", args.n.unwrap_or(20_000)),
        "seed" => (1, "flow", args.n.unwrap_or(20_000)),
        "parallel" | "batch" => (args.items, "item", args.n.unwrap_or(20)),
        // 1,000 CPU-bound items of about 50 µs, concurrently or one after another.
        "cpu" | "cpu_serial" => (args.items.min(1_000), "item", args.n.unwrap_or(10)),
        "concurrent" => (args.flows, "flow", args.n.unwrap_or(1)),
        "loop" => (args.n.unwrap_or(1_000_000), "step", 1),
        w => {
            eprintln!("bench: unknown workload {w}");
            std::process::exit(2);
        }
    };
    let mut per_unit_us = Vec::new();
    let mut flows_per_s = Vec::new();
    let mut total_runs = 0;
    for rep in 0..=args.repeat {
        let start = Instant::now();
        match args.workload.as_str() {
            "chain" => {
                let flow = chain(10);
                for _ in 0..runs {
                    let shared = SharedStore::new();
                    shared.insert("x", 0_i64);
                    run(&flow, &shared, t).await;
                    assert_eq!(shared.get::<i64>("x").ok().flatten(), Some(10), "wrong chain result");
                }
            }
            "seed" => {
                let flow = seed();
                for _ in 0..runs {
                    let shared = SharedStore::new();
                    shared.insert("ticket", ticket());
                    run(&flow, &shared, t).await;
                    assert!(shared.contains_key("routing"), "the seed flow did not route");
                }
            }
            "loop" => {
                let flow = looping(units_per_run as i64);
                let shared = SharedStore::new();
                shared.insert("x", 0_i64);
                run(&flow, &shared, t).await;
                assert_eq!(shared.get::<i64>("x").ok().flatten(), Some(units_per_run as i64), "wrong loop result");
            }
            "parallel" | "batch" | "cpu" | "cpu_serial" => {
                let flow = match args.workload.as_str() {
                    "parallel" => parallel_batch(),
                    "batch" => sequential_batch(),
                    "cpu" => cpu_parallel_batch(),
                    _ => cpu_sequential_batch(),
                };
                let n_items = units_per_run;
                let items: Vec<u64> = (0..n_items as u64).collect();
                for _ in 0..runs {
                    let shared = SharedStore::new();
                    shared.insert("items", items.clone());
                    run(&flow, &shared, t).await;
                    let out: Vec<u64> = shared.require("out").expect("batch output");
                    assert_eq!(out.len(), n_items);
                }
            }
            _ => {
                let flow = chain(5);
                for _ in 0..runs {
                    let tasks: Vec<_> = (0..args.flows)
                        .map(|_| {
                            let (flow, t) = (flow.clone(), tracer.clone());
                            // An untraced flow's task is what a service spawns for one: it
                            // runs the flow. Through `run`, whose future also holds the traced
                            // branch's (a traced flow and its run, unused here), each task was
                            // four times as large, and so each spawn's copies and allocation.
                            match t {
                                None => tokio::spawn(async move {
                                    let shared = SharedStore::new();
                                    shared.insert("x", 0_i64);
                                    flow.run(&shared).await.expect("a bench run failed");
                                }),
                                Some(t) => tokio::spawn(async move {
                                    let shared = SharedStore::new();
                                    shared.insert("x", 0_i64);
                                    run(&flow, &shared, Some(&t)).await;
                                }),
                            }
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("a concurrent run panicked");
                    }
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if rep == 0 {
            // Warm-up: not timed, and its spans are not counted.
            if let (Some(t), Some(s)) = (&tracer, &sink) {
                t.flush(Duration::from_secs(60)).await;
                s.spans.store(0, Ordering::Relaxed);
            }
            continue;
        }
        total_runs += runs;
        let flows = if args.workload == "concurrent" { runs * args.flows } else { runs };
        flows_per_s.push(flows as f64 / secs);
        per_unit_us.push(secs * 1e6 / (runs * units_per_run) as f64);
    }
    let mut delivered = serde_json::Value::Null;
    let mut export = serde_json::Value::Null;
    let mut flush_s = serde_json::Value::Null;
    if let (Some(t), Some(s)) = (&tracer, &sink) {
        let flush = Instant::now();
        let report = t.flush(Duration::from_secs(120)).await;
        flush_s = flush.elapsed().as_secs_f64().into();
        if !report.is_complete() {
            eprintln!("bench: not every span reached the sink: {report:?}");
        }
        delivered = s.spans.load(Ordering::Relaxed).into();
        // The exporter's counts (warm-up included) weigh each trace as its spans plus one.
        export = serde_json::to_value(&report).unwrap_or_default();
    }
    let unit_key = format!("us_per_{unit}");
    let line = serde_json::json!({
        "workload": args.workload,
        "mode": if args.traced { "traced" } else { "untraced" },
        "runs": total_runs,
        "flows_per_s": median(flows_per_s),
        unit_key: median(per_unit_us.clone()),
        "units_per_s": 1e6 / median(per_unit_us),
        "peak_rss_mb": peak_rss_mb(),
        "spans_delivered": delivered,
        "final_flush_s": flush_s,
        "export": export,
    });
    println!("{line}");
}
