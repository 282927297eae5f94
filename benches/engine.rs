//! Engine costs, each untraced and traced (to a counting sink), beside raw baselines: the same
//! 10-step chain as plain `async fn` calls and as one ractor actor per step.

#[path = "support/workloads.rs"]
mod workloads;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flowtrace::prelude::*;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use workloads::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn tracer() -> (Tracer, CountingExporter) {
    let sink = CountingExporter::default();
    (Tracer::builder().exporter(sink.clone()).build().expect("tracer"), sink)
}

/// Runs `f` `iters` times on a runtime worker (not the bench thread) and returns the time.
fn timed<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, f: F) -> Duration
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async move {
        tokio::spawn(async move {
            let start = Instant::now();
            for _ in 0..iters {
                f().await;
            }
            start.elapsed()
        })
        .await
        .expect("bench task")
    })
}

#[inline(never)]
async fn step(x: i64) -> i64 {
    std::hint::black_box(x + 1)
}

struct StepActor;
enum StepMsg {
    Add(i64, RpcReplyPort<i64>),
}
impl Actor for StepActor {
    type Msg = StepMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<StepMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(&self, _: ActorRef<StepMsg>, m: StepMsg, _: &mut ()) -> Result<(), ActorProcessingErr> {
        let StepMsg::Add(x, reply) = m;
        let _ = reply.send(x + 1);
        Ok(())
    }
}

fn chain10(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("chain10");
    g.throughput(Throughput::Elements(10));
    g.bench_function("baseline_async_fn", |b| {
        b.iter_custom(|iters| {
            timed(&rt, iters, || async {
                let mut x = 0;
                for _ in 0..10 {
                    x = step(x).await;
                }
                assert_eq!(x, 10);
            })
        })
    });
    g.bench_function("baseline_actor_per_node", |b| {
        let actors: Vec<ActorRef<StepMsg>> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..10 {
                v.push(Actor::spawn(None, StepActor, ()).await.expect("actor").0);
            }
            v
        });
        let actors = std::sync::Arc::new(actors);
        b.iter_custom(|iters| {
            let actors = actors.clone();
            timed(&rt, iters, move || {
                let actors = actors.clone();
                async move {
                    let mut x = 0;
                    for a in actors.iter() {
                        x = ractor::call!(a, StepMsg::Add, x).expect("call");
                    }
                    assert_eq!(x, 10);
                }
            })
        })
    });
    let flow = chain(10);
    for traced in [false, true] {
        let (t, _sink) = tracer();
        let flow = flow.clone();
        g.bench_function(if traced { "flowtrace_traced" } else { "flowtrace_untraced" }, |b| {
            b.iter_custom(|iters| {
                let (flow, t) = (flow.clone(), t.clone());
                timed(&rt, iters, move || {
                    let (flow, t) = (flow.clone(), t.clone());
                    async move {
                        let shared = SharedStore::new();
                        shared.insert("x", 0_i64);
                        if traced {
                            flow.traced("ChainFlow").tracer(&t).run(&shared).await.expect("run");
                        } else {
                            flow.run(&shared).await.expect("run");
                        }
                    }
                })
            })
        });
    }
    g.finish();
}

fn flows(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("flows");
    for (name, flow) in [("seed", seed()), ("nested", nested()), ("retry_first_fails", retry_flow())] {
        for traced in [false, true] {
            let (t, _sink) = tracer();
            let id = BenchmarkId::new(name, if traced { "traced" } else { "untraced" });
            let flow = flow.clone();
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let (flow, t) = (flow.clone(), t.clone());
                    timed(&rt, iters, move || {
                        let (flow, t) = (flow.clone(), t.clone());
                        async move {
                            let shared = SharedStore::new();
                            shared.insert("ticket", ticket());
                            shared.insert("x", 0_i64);
                            if traced {
                                flow.traced("bench").tracer(&t).run(&shared).await.expect("run");
                            } else {
                                flow.run(&shared).await.expect("run");
                            }
                        }
                    })
                })
            });
        }
    }
    g.finish();
}

fn batches(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("batch_10000_items");
    g.throughput(Throughput::Elements(10_000));
    g.sample_size(20);
    let items: Vec<u64> = (0..10_000).collect();
    for (name, flow) in [("parallel", parallel_batch()), ("sequential", sequential_batch())] {
        for traced in [false, true] {
            let (t, _sink) = tracer();
            let flow = flow.clone();
            let items = items.clone();
            g.bench_function(BenchmarkId::new(name, if traced { "traced" } else { "untraced" }), |b| {
                b.iter_custom(|iters| {
                    let (flow, t, items) = (flow.clone(), t.clone(), items.clone());
                    timed(&rt, iters, move || {
                        let (flow, t, items) = (flow.clone(), t.clone(), items.clone());
                        async move {
                            let shared = SharedStore::new();
                            shared.insert("items", items);
                            if traced {
                                flow.traced("bench").tracer(&t).run(&shared).await.expect("run");
                            } else {
                                flow.run(&shared).await.expect("run");
                            }
                        }
                    })
                })
            });
        }
    }
    g.finish();
}

fn concurrent(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("concurrent_1000_flows_of_5");
    g.throughput(Throughput::Elements(1000));
    g.sample_size(20);
    let flow = chain(5);
    for traced in [false, true] {
        let (t, _sink) = tracer();
        let flow = flow.clone();
        g.bench_function(if traced { "traced" } else { "untraced" }, |b| {
            b.iter_custom(|iters| {
                let (flow, t) = (flow.clone(), t.clone());
                timed(&rt, iters, move || {
                    let (flow, t) = (flow.clone(), t.clone());
                    async move {
                        let runs = (0..1000).map(|_| {
                            let (flow, t) = (flow.clone(), t.clone());
                            tokio::spawn(async move {
                                let shared = SharedStore::new();
                                shared.insert("x", 0_i64);
                                if traced {
                                    flow.traced("bench").tracer(&t).run(&shared).await
                                } else {
                                    flow.run(&shared).await
                                }
                            })
                        });
                        for r in futures::future::join_all(runs).await {
                            r.expect("task").expect("run");
                        }
                    }
                })
            })
        });
    }
    g.finish();
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
    targets = chain10, flows, batches, concurrent
}
criterion_main!(benches);
