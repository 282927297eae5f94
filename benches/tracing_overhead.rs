//! The figure users ask for: what tracing adds per node. The same flows, untraced and traced
//! (every span delivered to a counting sink on the tracer's thread), side by side.

#[path = "support/workloads.rs"]
mod workloads;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flowtrace::prelude::*;
use workloads::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// `iters` runs of `flow`, on a runtime worker, traced or not; returns the elapsed time.
fn run_flow(rt: &tokio::runtime::Runtime, flow: &Flow, tracer: Option<&Tracer>, iters: u64) -> Duration {
    let (flow, tracer) = (flow.clone(), tracer.cloned());
    rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..iters {
                let shared = SharedStore::new();
                shared.insert("x", 0_i64);
                shared.insert("ticket", ticket());
                match &tracer {
                    Some(t) => flow.traced("overhead").tracer(t).run(&shared).await,
                    None => flow.run(&shared).await,
                }
                .expect("run");
            }
            start.elapsed()
        })
        .await
        .expect("bench task")
    })
}

fn overhead(c: &mut Criterion) {
    let rt = runtime();
    let sink = CountingExporter::default();
    let tracer = Tracer::builder().exporter(sink.clone()).build().expect("tracer");
    let mut g = c.benchmark_group("tracing_overhead");
    for (name, flow, nodes) in [("chain10", chain(10), 10), ("chain1", chain(1), 1), ("seed", seed(), 2)] {
        g.throughput(Throughput::Elements(nodes));
        for traced in [false, true] {
            let id = BenchmarkId::new(name, if traced { "traced" } else { "untraced" });
            g.bench_function(id, |b| b.iter_custom(|iters| run_flow(&rt, &flow, traced.then_some(&tracer), iters)));
        }
    }
    g.finish();
    let report = rt.block_on(tracer.flush(Duration::from_secs(30)));
    assert!(report.is_complete(), "spans were lost: {report:?}");
}

fn config() -> Criterion {
    // Short windows keep all benches within a few minutes on a 2-core machine.
    Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = overhead
}
criterion_main!(benches);
