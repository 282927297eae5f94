//! A parallel batch flow over many items, with a progress bar on the terminal, traced.
//!
//! `cargo run --example parallel_batch` (`ITEMS=500 CONCURRENCY=32` to change the load).
//!
//! A loader puts `ITEMS` documents in the store; a parallel batch node "summarises" each (a
//! sleep stands in for an LLM call; every 50th item fails once and is retried), at most
//! `CONCURRENCY` at once; a reporter writes the totals. A ticker task redraws the progress bar
//! from a shared counter every 100 ms. Tracing uses the configuration from the environment
//! (Langfuse keys in `.env`, else a JSON Lines file under `.flowtrace/`), and the trace is
//! flushed before the program exits.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowtrace::prelude::*;
use serde_json::{json, Value};

fn env_number(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| format!("{name} must be a whole number, got {v:?}")),
        Err(_) => Ok(default),
    }
}

fn draw(done: usize, total: usize, started: Instant) {
    const WIDTH: usize = 40;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH).min(WIDTH);
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let mut out = std::io::stderr().lock();
    let _ =
        write!(out, "\r[{}{}] {done}/{total} items  {rate:.0} items/s", "#".repeat(filled), " ".repeat(WIDTH - filled));
    let _ = out.flush();
}

fn batch_flow(done: Arc<AtomicUsize>, concurrency: usize) -> Flow {
    let load = FnNode::new("LoadDocuments")
        .prep(|ctx| {
            let n: usize = ctx.param("items").ok_or("the flow needs an `items` param")?;
            let docs: Vec<Value> =
                (0..n).map(|i| json!({ "id": i, "text": format!("document {i} ") .repeat(5) })).collect();
            ctx.shared().insert("documents", docs);
            Ok(Value::Null)
        })
        .into_node();
    let summarise = FnBatchNode::parallel("SummariseDocuments")
        .items(|ctx| Ok(ctx.shared().get_json("documents").unwrap_or(Value::Null)))
        .exec(move |doc, cx| {
            let done = Arc::clone(&done);
            async move {
                tokio::time::sleep(Duration::from_millis(20 + (doc["id"].as_u64().unwrap_or(0) % 7) * 5)).await;
                if doc["id"].as_u64().unwrap_or(0) % 50 == 0 && cx.attempt() == 0 {
                    return Err("the model timed out (simulated); retrying".into());
                }
                done.fetch_add(1, Ordering::Relaxed);
                let words = doc["text"].as_str().unwrap_or("").split_whitespace().count();
                Ok(json!({ "id": doc["id"], "words": words }))
            }
        })
        .post(|ctx, _, out| {
            ctx.shared().insert("summaries", out);
            Ok(Action::none())
        })
        .into_node()
        .max_retries(2)
        .max_concurrency(concurrency);
    let report = FnNode::new("Report")
        .post(|ctx, _, _| {
            let summaries: Vec<Value> = ctx.shared().require("summaries")?;
            let words: u64 = summaries.iter().filter_map(|s| s["words"].as_u64()).sum();
            ctx.shared().insert("total_words", words);
            Ok(Action::none())
        })
        .into_node();
    let _ = &load >> &summarise >> &report;
    Flow::named("ParallelBatchFlow", &load)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let items = env_number("ITEMS", 200)?;
    let concurrency = env_number("CONCURRENCY", 16)?.max(1);
    let done = Arc::new(AtomicUsize::new(0));
    let flow = batch_flow(Arc::clone(&done), concurrency);
    let mut params = Params::new();
    params.insert("items".into(), json!(items));
    flow.set_params(params);

    let started = Instant::now();
    let ticker = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                draw(done.load(Ordering::Relaxed), items, started);
            }
        })
    };
    let shared = SharedStore::new();
    let result = flow.traced("ParallelBatch").tag("example").run(&shared).await;
    ticker.abort();
    draw(done.load(Ordering::Relaxed), items, started);
    eprintln!();
    result?;
    let words: u64 = shared.require("total_words")?;
    println!("{items} documents summarised in {:.2?} ({concurrency} at once): {words} words", started.elapsed());
    let report = flowtrace::flush(Duration::from_secs(10)).await;
    println!("trace: {} spans delivered, {} spooled, {} dropped", report.delivered, report.spooled, report.dropped);
    Ok(())
}
