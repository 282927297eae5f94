//! PocketFlow conformance, parallel batches (spec §13 cases 47–56, 82–84, 86). Timing cases
//! run on tokio's paused clock, so "concurrent" is checked exactly: the clock only advances
//! when every task waits, so elapsed virtual time is the longest chain of sleeps.

mod support;

use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::Phase;
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::*;
use tokio::time::Instant;

/// `AsyncParallelNumberProcessor`: each item sleeps `delay` ms and is doubled; the results go
/// to `processed_numbers`.
fn doubler(delay_ms: u64) -> NodeRef {
    FnBatchNode::parallel("ParallelDouble")
        .items(|ctx| Ok(ctx.shared().get_json("items").unwrap_or(Value::Null)))
        .exec(move |item, _| async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Ok(json!(item.as_i64().ok_or("items are numbers")? * 2))
        })
        .post(|ctx, _, out| {
            ctx.shared().insert("processed_numbers", out);
            Ok(Action::none())
        })
        .into_node()
}

async fn run_items(node: &NodeRef, items: Value) -> (Result<Action, flowtrace::Error>, SharedStore, Duration) {
    let shared = SharedStore::from_json(json!({ "items": items }));
    let start = Instant::now();
    let r = Flow::new(node).run(&shared).await;
    (r, shared, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn case_047_parallel_processing() {
    let (r, shared, elapsed) = run_items(&doubler(100), json!([0, 1, 2, 3, 4])).await;
    r.unwrap();
    assert_eq!(shared.get_json("processed_numbers").unwrap(), json!([0, 2, 4, 6, 8]));
    assert!(elapsed < Duration::from_millis(200), "items ran one after another: {elapsed:?}");
    assert_eq!(elapsed, Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn case_048_empty_input() {
    let (r, shared, _) = run_items(&doubler(10), json!([])).await;
    r.unwrap();
    assert_eq!(shared.get_json("processed_numbers").unwrap(), json!([]));
}

#[tokio::test(start_paused = true)]
async fn case_049_single_item() {
    let (r, shared, _) = run_items(&doubler(10), json!([42])).await;
    r.unwrap();
    assert_eq!(shared.get_json("processed_numbers").unwrap(), json!([84]));
}

#[tokio::test(start_paused = true)]
async fn case_050_large_batch_keeps_input_order() {
    let (r, shared, elapsed) = run_items(&doubler(10), json!((0..100).collect::<Vec<_>>())).await;
    r.unwrap();
    assert_eq!(shared.get_json("processed_numbers").unwrap(), json!((0..100).map(|i| i * 2).collect::<Vec<_>>()));
    assert_eq!(elapsed, Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn case_051_error_handling() {
    let node = FnBatchNode::parallel("FailsOnTwo")
        .items(|_| Ok(json!([1, 2, 3])))
        .exec(|item, _| async move {
            if item == json!(2) {
                Err(value_error("item 2 fails"))
            } else {
                Ok(item)
            }
        })
        .into_node();
    let err = Flow::new(&node).run(&SharedStore::new()).await.unwrap_err();
    assert_user_error::<ValueError>(&err, "FailsOnTwo", Phase::Exec);
}

#[tokio::test(start_paused = true)]
async fn case_052_concurrent_execution_completion_order() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let log = order.clone();
    let node = FnBatchNode::parallel("Ordered")
        .items(|_| Ok(json!([0, 1, 2, 3])))
        .exec(move |item, _| {
            let log = log.clone();
            async move {
                let i = item.as_i64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 100 } else { 50 })).await;
                log.lock().push(i);
                Ok(item)
            }
        })
        .into_node();
    Flow::new(&node).run(&SharedStore::new()).await.unwrap();
    let order = order.lock().clone();
    let pos = |x| order.iter().position(|&v| v == x).unwrap();
    assert!(pos(1) < pos(0), "{order:?}");
    assert!(pos(3) < pos(2), "{order:?}");
}

/// The processor / aggregator pair of the upstream parallel batch flow tests.
fn processing_flow(delay_ms: u64) -> BatchFlow {
    let processor = FnBatchNode::parallel("Processor")
        .items(|ctx| {
            let id: usize = ctx.param("batch_id").ok_or("no batch_id")?;
            Ok(ctx.shared().require::<Value>("batches")?[id].clone())
        })
        .exec(move |item, _| async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Ok(json!(item.as_i64().unwrap_or(0) * 2))
        })
        .post(|ctx, _, out| {
            let id: usize = ctx.param("batch_id").ok_or("no batch_id")?;
            ctx.shared()
                .update("processed_numbers", serde_json::Map::new, |m| m.insert(id.to_string(), out.clone()))?;
            Ok("processed".into())
        })
        .into_node();
    let aggregator = FnNode::new("Aggregator")
        .prep(|ctx| {
            let done: serde_json::Map<String, Value> = ctx.shared().require("processed_numbers")?;
            let total: i64 =
                done.values().flat_map(|v| v.as_array().cloned().unwrap_or_default()).filter_map(|v| v.as_i64()).sum();
            ctx.shared().insert("total", total);
            Ok(Value::Null)
        })
        .into_node();
    let _ = processor.on("processed") >> &aggregator;
    BatchFlow::parallel(&processor).with_params(|ctx| {
        let n = ctx.shared().require::<Value>("batches")?.as_array().map_or(0, |a| a.len());
        Ok((0..n).map(|i| params(json!({ "batch_id": i }))).collect())
    })
}

#[tokio::test(start_paused = true)]
async fn case_053_parallel_batch_flow() {
    let shared = SharedStore::from_json(json!({ "batches": [[1, 2, 3], [4, 5, 6], [7, 8, 9]] }));
    let start = Instant::now();
    processing_flow(100).run(&shared).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(200), "{:?}", start.elapsed());
    assert_eq!(
        shared.get_json("processed_numbers").unwrap(),
        json!({ "0": [2, 4, 6], "1": [8, 10, 12], "2": [14, 16, 18] })
    );
    assert_eq!(shared.get::<i64>("total").unwrap(), Some(90));
}

#[tokio::test(start_paused = true)]
async fn case_054_parallel_batch_flow_error() {
    let failing = FnNode::new("FailingProcessor")
        .prep(|ctx| {
            if ctx.param::<usize>("batch_id") == Some(2) {
                return Err(value_error("batch 2 fails"));
            }
            Ok(Value::Null)
        })
        .into_node();
    let flow =
        BatchFlow::parallel(&failing).with_params(|_| Ok((0..3).map(|i| params(json!({ "batch_id": i }))).collect()));
    let err = flow.run(&SharedStore::new()).await.unwrap_err();
    assert_user_error::<ValueError>(&err, "FailingProcessor", Phase::Prep);
}

#[tokio::test(start_paused = true)]
async fn case_055_multiple_batch_sizes() {
    let shared = SharedStore::from_json(json!({ "batches": [[1], [2, 3, 4], [5, 6], [7, 8, 9, 10]] }));
    processing_flow(50).run(&shared).await.unwrap();
    assert_eq!(
        shared.get_json("processed_numbers").unwrap(),
        json!({ "0": [2], "1": [4, 6, 8], "2": [10, 12], "3": [14, 16, 18, 20] })
    );
    assert_eq!(shared.get::<i64>("total").unwrap(), Some(110));
}

#[tokio::test]
async fn case_056_nested_parallel_batch_flow() {
    // Both levels parallel: the same graph as case 25, with results as multisets per group.
    let item = FnNode::new("Item")
        .prep(|ctx| {
            let group: String = ctx.param("group").ok_or("no group")?;
            let i: usize = ctx.param("item").ok_or("no item")?;
            Ok(ctx.shared().require::<Value>("groups")?[&group][i].clone())
        })
        .exec(|v, _| async move { Ok(json!(v.as_i64().unwrap_or(0) * 2)) })
        .post(|ctx, _, doubled| {
            let group: String = ctx.param("group").ok_or("no group")?;
            ctx.shared().update("results", serde_json::Map::new, |r| {
                if let Some(a) = r.entry(group.clone()).or_insert_with(|| json!([])).as_array_mut() {
                    a.push(doubled.clone());
                }
            })?;
            Ok(Action::none())
        })
        .into_node();
    let inner = BatchFlow::parallel(&item).with_params(|ctx| {
        let group: String = ctx.param("group").ok_or("no group")?;
        let n = ctx.shared().require::<Value>("groups")?[&group].as_array().map_or(0, |a| a.len());
        Ok((0..n).map(|i| params(json!({ "item": i, "group": group }))).collect())
    });
    let outer = BatchFlow::parallel(inner.as_node()).with_params(|ctx| {
        let groups: serde_json::Map<String, Value> = ctx.shared().require("groups")?;
        Ok(groups.keys().map(|g| params(json!({ "group": g }))).collect())
    });
    let shared = SharedStore::from_json(json!({ "groups": { "A": [1, 2], "B": [3, 4] } }));
    outer.run(&shared).await.unwrap();
    let results: std::collections::BTreeMap<String, Vec<i64>> = shared.require("results").unwrap();
    let sorted = |mut v: Vec<i64>| {
        v.sort();
        v
    };
    assert_eq!(results.keys().collect::<Vec<_>>(), vec!["A", "B"]);
    assert_eq!(sorted(results["A"].clone()), vec![2, 4]);
    assert_eq!(sorted(results["B"].clone()), vec![6, 8]);
}

/// A parallel batch rejects `null` items (PocketFlow's `AsyncParallelBatchNode` raises a
/// type error); `[]` gives `[]`. flowtrace's sequential batch follows `BatchNode`'s rule
/// (`null` is no items, case 70), and a typed `BatchNode` returns a `Vec`, never `null`.
#[tokio::test]
async fn case_082_parallel_batch_null_items_is_an_error() {
    let (r, _, _) = run_items(&doubler(0), Value::Null).await;
    let err = r.unwrap_err();
    assert_eq!(err.phase(), Some(Phase::Prep), "{err}");
    assert!(err.to_string().contains("items must be a list, got null"), "{err}");
    let (r, shared, _) = run_items(&doubler(0), json!([])).await;
    r.unwrap();
    assert_eq!(shared.get_json("processed_numbers").unwrap(), json!([]));
}

#[tokio::test(start_paused = true)]
async fn case_083_results_in_input_order_whatever_completion_order() {
    let finished = Arc::new(Mutex::new(Vec::new()));
    let log = finished.clone();
    let node = FnBatchNode::parallel("Tens")
        .items(|_| Ok(json!([1, 2])))
        .exec(move |item, _| {
            let log = log.clone();
            async move {
                let i = item.as_i64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(if i == 1 { 50 } else { 10 })).await;
                log.lock().push(i);
                Ok(json!(i * 10))
            }
        })
        .post(|ctx, _, out| {
            ctx.shared().insert("out", out);
            Ok(Action::none())
        })
        .into_node();
    let shared = SharedStore::new();
    Flow::new(&node).run(&shared).await.unwrap();
    assert_eq!(*finished.lock(), vec![2, 1], "item 2 finishes first");
    assert_eq!(shared.get_json("out").unwrap(), json!([10, 20]));
}

/// The error of the first failing item propagates at once. Deliberate difference: PocketFlow
/// leaves the other items running in the background after the node has failed; flowtrace
/// cancels them (and awaits their cancellation), so a failed run leaves no work behind and
/// their spans end as cancelled.
#[tokio::test(start_paused = true)]
async fn case_084_first_error_propagates_at_once_and_siblings_are_cancelled() {
    let completed = Arc::new(Mutex::new(Vec::new()));
    let log = completed.clone();
    let node = FnBatchNode::parallel("FailFast")
        .items(|_| Ok(json!([0, 1, 2])))
        .exec(move |item, _| {
            let log = log.clone();
            async move {
                if item == json!(0) {
                    return Err(value_error("item 0 fails immediately"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                log.lock().push(item);
                Ok(Value::Null)
            }
        })
        .into_node();
    let (tracer, memory) = memory_tracer();
    let start = Instant::now();
    let err = Flow::new(&node).traced("fail-fast").tracer(&tracer).run(&SharedStore::new()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "the error must not wait for the other items");
    assert_user_error::<ValueError>(&err, "FailFast", Phase::Exec);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(completed.lock().is_empty(), "cancelled items must not complete: {:?}", completed.lock());
    tracer.flush(Duration::from_secs(5)).await;
    let trace = memory.traces().pop().unwrap();
    let items: Vec<_> = trace.spans.iter().filter(|s| s.name.starts_with("item ")).collect();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|s| s.status.is_error()), "every item span ends, as failed or cancelled");
}

#[tokio::test(start_paused = true)]
async fn case_086_batch_flow_sequential_parallel_flow_overlaps() {
    let sleeper = FnNode::new("Sleeper")
        .exec(|_, _| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(Value::Null)
        })
        .into_node();
    let sets = |_: &Context<'_>| Ok((0..3).map(|i| params(json!({ "i": i }))).collect());
    let start = Instant::now();
    BatchFlow::new(&sleeper).with_params(sets).run(&SharedStore::new()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(300), "one after another");
    let start = Instant::now();
    BatchFlow::parallel(&sleeper).with_params(sets).run(&SharedStore::new()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100), "overlapping");
}

/// Parallel items record one span each, parented to the node's exec span, all ended.
#[tokio::test]
async fn parallel_items_each_have_their_own_span() {
    let (_, _, trace) = run_both(&Flow::new(&doubler(1)), json!({ "items": [1, 2, 3, 4] })).await;
    let exec = trace.span("ParallelDouble.exec").expect("exec span");
    let items: Vec<_> = trace.children(exec.span_id).into_iter().filter(|s| s.name.starts_with("item ")).collect();
    assert_eq!(items.len(), 4);
    for (i, s) in items.iter().enumerate() {
        assert_eq!(s.attributes["item_index"], json!(i));
        assert!(!s.status.is_error());
        assert!(s.end_unix_nanos >= s.start_unix_nanos);
    }
}
