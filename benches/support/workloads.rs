//! The bench workloads, shared by the criterion benches and `examples/bench.rs`, built to
//! match the Python reference's scripts in `shared/peers/python-bench/`.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowtrace::export::{ExportReport, Exporter};
use flowtrace::prelude::*;
use flowtrace::trace::TraceRecord;
use futures::future::BoxFuture;

/// One chain step: prep reads `x`, exec adds one, post writes `x` (bench_chain.py's `Step`).
pub struct Step;

impl Node for Step {
    type Prep = i64;
    type Exec = i64;
    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<i64> {
        Ok(ctx.shared().require("x")?)
    }
    async fn exec(&self, x: &i64, _cx: &ExecContext) -> NodeResult<i64> {
        Ok(x + 1)
    }
    async fn post(&self, ctx: &Context<'_>, _p: i64, x: i64) -> NodeResult<Action> {
        ctx.shared().insert("x", x);
        Ok(Action::new("default"))
    }
}

/// A flow of `n` [`Step`]s.
pub fn chain(n: usize) -> Flow {
    let nodes: Vec<NodeRef> = (0..n).map(|_| Step.into_node()).collect();
    for w in nodes.windows(2) {
        w[0].next(&w[1]);
    }
    Flow::named("ChainFlow", &nodes[0])
}

/// One [`Step`] looping until `x` reaches `steps`.
pub fn looping(steps: i64) -> Flow {
    struct Again(i64);
    impl Node for Again {
        type Prep = i64;
        type Exec = i64;
        async fn prep(&self, ctx: &Context<'_>) -> NodeResult<i64> {
            Ok(ctx.shared().require("x")?)
        }
        async fn exec(&self, x: &i64, _cx: &ExecContext) -> NodeResult<i64> {
            Ok(x + 1)
        }
        async fn post(&self, ctx: &Context<'_>, _p: i64, x: i64) -> NodeResult<Action> {
            ctx.shared().insert("x", x);
            Ok(Action::new(if x < self.0 { "again" } else { "done" }))
        }
    }
    let step = Again(steps).into_node();
    step.next_on("again", &step);
    Flow::named("LoopFlow", &step)
}

/// Adds one to each item (bench_parallel.py's `Double`).
pub struct PlusOne;

impl BatchNode for PlusOne {
    type Item = u64;
    type Output = u64;
    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<Vec<u64>> {
        Ok(ctx.shared().require("items")?)
    }
    async fn exec(&self, item: &u64, _cx: &ExecContext) -> NodeResult<u64> {
        Ok(item + 1)
    }
    async fn post(&self, ctx: &Context<'_>, _items: Vec<u64>, out: Vec<u64>) -> NodeResult<Action> {
        ctx.shared().insert("out", out);
        Ok(Action::new("default"))
    }
}

/// A flow of one parallel batch node.
pub fn parallel_batch() -> Flow {
    Flow::named("ParallelFlow", &PlusOne.into_parallel_batch())
}

/// Iterations of [`spin`] that take about 50 µs on this machine (one core, release build).
pub const SPIN_50US: u64 = 6_300;

/// CPU-bound work: `n` rounds of splitmix, a fixed amount of work whatever the clock says.
#[inline(never)]
pub fn spin(seed: u64, n: u64) -> u64 {
    let mut z = seed;
    for _ in 0..n {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^= z >> 27;
    }
    std::hint::black_box(z)
}

/// A CPU-bound item: about 50 µs of [`spin`] (the CPU-bound parallel batch).
pub struct Spin;

impl BatchNode for Spin {
    type Item = u64;
    type Output = u64;
    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<Vec<u64>> {
        Ok(ctx.shared().require("items")?)
    }
    async fn exec(&self, item: &u64, _cx: &ExecContext) -> NodeResult<u64> {
        Ok(spin(*item, SPIN_50US) | 1)
    }
    async fn post(&self, ctx: &Context<'_>, _items: Vec<u64>, out: Vec<u64>) -> NodeResult<Action> {
        ctx.shared().insert("out", out);
        Ok(Action::new("default"))
    }
}

/// A flow of one parallel batch node of CPU-bound items.
pub fn cpu_parallel_batch() -> Flow {
    Flow::named("CpuParallelFlow", &Spin.into_parallel_batch())
}

/// The same CPU-bound items one after another: the serial baseline.
pub fn cpu_sequential_batch() -> Flow {
    Flow::named("CpuBatchFlow", &Spin.into_batch())
}

/// A flow of one sequential batch node.
pub fn sequential_batch() -> Flow {
    Flow::named("BatchFlow", &PlusOne.into_batch())
}

/// The seed's customer-support flow without its sleeps.
pub fn seed() -> Flow {
    let classify = FnNode::new("TicketClassificationNode")
        .prep(|ctx| Ok(ctx.shared().require::<serde_json::Value>("ticket")?))
        .exec(|t, _| async move {
            let text = format!("{} {}", t["subject"], t["description"]).to_lowercase();
            let priority = if text.contains("urgent") || text.contains("critical") {
                "high"
            } else if text.contains("billing") || text.contains("payment") {
                "medium"
            } else {
                "low"
            };
            let category = if text.contains("error") { "technical" } else { "general" };
            Ok(serde_json::json!({ "priority": priority, "category": category }))
        })
        .post(|ctx, _, c| {
            ctx.shared().insert("classification", c);
            Ok(Action::new("route_ticket"))
        })
        .into_node();
    let route = FnNode::new("TicketRoutingNode")
        .prep(|ctx| Ok(ctx.shared().require::<serde_json::Value>("classification")?))
        .exec(|c, _| async move {
            let team = if c["priority"] == "high" {
                "escalation"
            } else if c["category"] == "technical" {
                "engineering"
            } else {
                "general_support"
            };
            Ok(serde_json::json!({ "team": team }))
        })
        .post(|ctx, _, r| {
            ctx.shared().insert("routing", r);
            Ok(Action::none())
        })
        .into_node();
    let _ = classify.on("route_ticket") >> &route;
    Flow::named("CustomerSupportFlow", &classify)
}

/// The seed's ticket.
pub fn ticket() -> serde_json::Value {
    serde_json::json!({
        "id": "TICKET-001",
        "subject": "URGENT: payment system down",
        "description": "Checkout fails with error 500",
        "customer_tier": "premium"
    })
}

/// A node whose first attempt fails, retried once.
pub fn retry_flow() -> Flow {
    let flaky = FnNode::new("Flaky")
        .exec(|_, cx| async move {
            if cx.attempt() == 0 {
                Err("first attempt fails".into())
            } else {
                Ok(1.into())
            }
        })
        .into_node()
        .max_retries(2);
    Flow::named("RetryFlow", &flaky)
}

/// A flow nesting a 5-step chain inside an outer flow, twice.
pub fn nested() -> Flow {
    let inner = chain(5);
    let outer_start = Step.into_node();
    let _ = &outer_start >> inner.as_node() >> &Step.into_node();
    Flow::named("Outer", &outer_start)
}

/// An exporter that counts spans and drops the traces: the cheapest local sink.
#[derive(Clone, Default)]
pub struct CountingExporter {
    pub spans: Arc<AtomicU64>,
    pub traces: Arc<AtomicU64>,
}

impl Exporter for CountingExporter {
    fn name(&self) -> &str {
        "counting"
    }
    fn export(&self, trace: Arc<TraceRecord>) {
        self.spans.fetch_add(trace.spans.len() as u64 + 1, Ordering::Relaxed);
        self.traces.fetch_add(1, Ordering::Relaxed);
    }
    fn flush(&self, _timeout: Duration) -> BoxFuture<'_, ExportReport> {
        let delivered = self.spans.load(Ordering::Relaxed);
        Box::pin(async move {
            let mut r = ExportReport::default();
            r.delivered = delivered;
            r
        })
    }
}
