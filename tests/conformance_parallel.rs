//! PocketFlow conformance, parallel batches (spec §13 cases 47–56, 82–84, 86). Timing cases
//! run on tokio's paused clock, so "concurrent" is checked exactly: the clock only advances
//! when every task waits, so elapsed virtual time is the longest chain of sleeps.

mod support;

use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::trace::SpanKind;
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

/// Runs `flow` untraced, then traced, each on a fresh copy of `initial`, timing both on
/// tokio's clock. Both runs must give the same result, the same store and the same virtual
/// elapsed time (tracing never changes the schedule); the trace must be complete. Returns the
/// untraced result, store and elapsed time.
async fn timed_both(flow: &Flow, initial: Value) -> (Result<Action, flowtrace::Error>, SharedStore, Duration) {
    let plain = SharedStore::from_json(initial.clone());
    let start = Instant::now();
    let r1 = flow.run(&plain).await;
    let untraced = start.elapsed();
    let (tracer, memory) = memory_tracer();
    let traced = SharedStore::from_json(initial);
    let start = Instant::now();
    let r2 = flow.traced("parallel").tracer(&tracer).run(&traced).await;
    let traced_elapsed = start.elapsed();
    assert_eq!(untraced, traced_elapsed, "tracing changed the run's timing");
    let report = tracer.flush(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "traced run lost spans: {report:?}");
    assert_eq!(memory.traces().len(), 1);
    assert_eq!(r1.as_ref().map_err(ToString::to_string), r2.as_ref().map_err(ToString::to_string));
    assert_eq!(plain.to_json(), traced.to_json(), "traced and untraced runs left different stores");
    (r1, plain, untraced)
}

async fn run_items(node: &NodeRef, items: Value) -> (Result<Action, flowtrace::Error>, SharedStore, Duration) {
    timed_both(&Flow::new(node), json!({ "items": items })).await
}

#[tokio::test(start_paused = true)]
async fn case_047_parallel_processing() {
    let (r, shared, elapsed) = run_items(&doubler(100), json!([0, 1, 2, 3, 4])).await;
    r.unwrap();
    assert_eq!(shared.get_json("processed_numbers").unwrap(), json!([0, 2, 4, 6, 8]));
    assert!(elapsed < Duration::from_millis(200), "items ran one after another: {elapsed:?}");
    assert_eq!(elapsed, Duration::from_millis(100));
}

/// `AsyncParallelNumberProcessor` with the typed API: the items come from the store as a
/// `Vec<i64>`; each sleeps `delay` and is doubled.
struct TypedDoubler {
    delay: Duration,
}

impl BatchNode for TypedDoubler {
    type Item = i64;
    type Output = i64;
    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<Vec<i64>> {
        Ok(ctx.shared().require("items")?)
    }
    async fn exec(&self, n: &i64, _cx: &ExecContext) -> NodeResult<i64> {
        tokio::time::sleep(self.delay).await;
        Ok(n * 2)
    }
    async fn post(&self, ctx: &Context<'_>, _items: Vec<i64>, out: Vec<i64>) -> NodeResult<Action> {
        ctx.shared().insert("processed_numbers", out);
        Ok(Action::none())
    }
}

#[tokio::test(start_paused = true)]
async fn case_047_typed_parallel_processing() {
    let node = TypedDoubler { delay: Duration::from_millis(100) }.into_parallel_batch();
    let (r, shared, elapsed) = run_items(&node, json!([0, 1, 2, 3, 4])).await;
    r.unwrap();
    assert_eq!(shared.get::<Vec<i64>>("processed_numbers").unwrap(), Some(vec![0, 2, 4, 6, 8]));
    assert_eq!(elapsed, Duration::from_millis(100));
    // The same node run sequentially takes the sum of the sleeps.
    let node = TypedDoubler { delay: Duration::from_millis(100) }.into_batch();
    let (r, shared, elapsed) = run_items(&node, json!([0, 1, 2, 3, 4])).await;
    r.unwrap();
    assert_eq!(shared.get::<Vec<i64>>("processed_numbers").unwrap(), Some(vec![0, 2, 4, 6, 8]));
    assert_eq!(elapsed, Duration::from_millis(500));
}

/// `max_concurrency(n)` bounds how many items run at once; results keep input order.
#[tokio::test(start_paused = true)]
async fn parallel_batch_max_concurrency_bounds_overlap() {
    let node = TypedDoubler { delay: Duration::from_millis(100) }.into_parallel_batch().max_concurrency(2);
    let (r, shared, elapsed) = run_items(&node, json!([1, 2, 3, 4, 5])).await;
    r.unwrap();
    assert_eq!(shared.get::<Vec<i64>>("processed_numbers").unwrap(), Some(vec![2, 4, 6, 8, 10]));
    assert_eq!(elapsed, Duration::from_millis(300), "5 items, 2 at a time: 3 rounds");
}

/// Per-item attempt state in a parallel batch: two always-failing items each get their full
/// `max_retries` attempts, counted from 0, however their attempts interleave (no shared
/// `cur_retry`, unlike PocketFlow at repo HEAD; see case 89).
#[tokio::test(start_paused = true)]
async fn typed_parallel_batch_retries_are_per_item() {
    struct AlwaysFails {
        log: Arc<Mutex<Vec<(char, u32)>>>,
    }
    impl BatchNode for AlwaysFails {
        type Item = char;
        type Output = String;
        async fn prep(&self, _ctx: &Context<'_>) -> NodeResult<Vec<char>> {
            Ok(vec!['a', 'b'])
        }
        async fn exec(&self, item: &char, cx: &ExecContext) -> NodeResult<String> {
            self.log.lock().push((*item, cx.attempt()));
            tokio::time::sleep(Duration::from_millis(if *item == 'a' { 10 } else { 15 })).await;
            Err(value_error("always fails"))
        }
        async fn exec_fallback(&self, item: &char, _e: flowtrace::BoxError, cx: &ExecContext) -> NodeResult<String> {
            Ok(format!("{item}:{}", cx.attempt() + 1))
        }
        async fn post(&self, ctx: &Context<'_>, _items: Vec<char>, out: Vec<String>) -> NodeResult<Action> {
            ctx.shared().insert("attempts", out);
            Ok(Action::none())
        }
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let node = AlwaysFails { log: log.clone() }.into_parallel_batch().max_retries(3);
    let (r, shared, elapsed) = timed_both(&Flow::new(&node), json!({})).await;
    r.unwrap();
    assert_eq!(shared.get_json("attempts").unwrap(), json!(["a:3", "b:3"]));
    assert_eq!(elapsed, Duration::from_millis(45), "b's three attempts overlap a's");
    let log = log.lock().clone();
    for item in ['a', 'b'] {
        let seen: Vec<u32> = log.iter().filter(|(i, _)| *i == item).map(|(_, a)| *a).collect();
        assert_eq!(seen, [0, 1, 2].repeat(2), "item {item}, over the untraced and the traced run");
    }
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
    let (r, _, _) = timed_both(&Flow::new(&node), json!({})).await;
    assert_user_error::<ValueError>(&r.unwrap_err(), "FailsOnTwo", Phase::Exec);
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
    let (r, _, elapsed) = timed_both(&Flow::new(&node), json!({})).await;
    r.unwrap();
    assert_eq!(elapsed, Duration::from_millis(100));
    let order = order.lock().clone();
    assert_eq!(order.len(), 8, "two runs of four items: {order:?}");
    for run in order.chunks(4) {
        let pos = |x| run.iter().position(|&v| v == x).unwrap();
        assert!(pos(1) < pos(0), "{run:?}");
        assert!(pos(3) < pos(2), "{run:?}");
    }
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
    BatchFlow::parallel(&processor).params(|ctx| {
        let n = ctx.shared().require::<Value>("batches")?.as_array().map_or(0, |a| a.len());
        Ok((0..n).map(|i| params(json!({ "batch_id": i }))).collect())
    })
}

#[tokio::test(start_paused = true)]
async fn case_053_parallel_batch_flow() {
    // Run as the start of a plain flow, so it can be timed traced and untraced alike. On the
    // paused clock every processor finishes at 100 ms, so the last aggregator sees all batches.
    let batches = json!({ "batches": [[1, 2, 3], [4, 5, 6], [7, 8, 9]] });
    let (r, shared, elapsed) = timed_both(&Flow::new(processing_flow(100).as_node()), batches).await;
    r.unwrap();
    assert!(elapsed < Duration::from_millis(200), "{elapsed:?}");
    assert_eq!(elapsed, Duration::from_millis(100));
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
    let flow = BatchFlow::parallel(&failing).params(|_| Ok((0..3).map(|i| params(json!({ "batch_id": i }))).collect()));
    let err = flow.run(&SharedStore::new()).await.unwrap_err();
    assert_user_error::<ValueError>(&err, "FailingProcessor", Phase::Prep);
    let (r, _, _) = run_batch_both(&flow, json!({})).await;
    assert_eq!(r.unwrap_err(), err.to_string());
}

/// Case 54 with slow siblings: the failing param set's error arrives at once, and (the same
/// deliberate difference as case 84) the other param sets' runs are cancelled, not left
/// running: their writes never happen.
#[tokio::test(start_paused = true)]
async fn case_054_parallel_batch_flow_error_cancels_other_param_sets() {
    let slow = FnNode::new("SlowProcessor")
        .prep(|ctx| Ok(json!(ctx.param::<usize>("batch_id").ok_or("no batch_id")?)))
        .exec(|id, _| async move {
            if id == json!(2) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Err(value_error("batch 2 fails"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(id)
        })
        .post(|ctx, _, id| {
            ctx.shared().update("done", Vec::<Value>::new, |d| d.push(id.clone()))?;
            Ok(Action::none())
        })
        .into_node();
    let flow = BatchFlow::parallel(&slow).params(|_| Ok((0..3).map(|i| params(json!({ "batch_id": i }))).collect()));
    let (r, shared, elapsed) = timed_both(&Flow::new(flow.as_node()), json!({})).await;
    assert_user_error::<ValueError>(&r.unwrap_err(), "SlowProcessor", Phase::Exec);
    assert_eq!(elapsed, Duration::from_millis(10), "the error must not wait for the other param sets");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(shared.get_json("done"), None, "cancelled param sets must not complete");
}

#[tokio::test(start_paused = true)]
async fn case_055_multiple_batch_sizes() {
    let batches = json!({ "batches": [[1], [2, 3, 4], [5, 6], [7, 8, 9, 10]] });
    let (r, shared, elapsed) = timed_both(&Flow::new(processing_flow(50).as_node()), batches).await;
    r.unwrap();
    assert_eq!(elapsed, Duration::from_millis(50));
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
    let inner = BatchFlow::parallel(&item).params(|ctx| {
        let group: String = ctx.param("group").ok_or("no group")?;
        let n = ctx.shared().require::<Value>("groups")?[&group].as_array().map_or(0, |a| a.len());
        Ok((0..n).map(|i| params(json!({ "item": i, "group": group }))).collect())
    });
    let outer = BatchFlow::parallel(inner.as_node()).params(|ctx| {
        let groups: serde_json::Map<String, Value> = ctx.shared().require("groups")?;
        Ok(groups.keys().map(|g| params(json!({ "group": g }))).collect())
    });
    // Untraced and traced; the order inside a group is free, so each store is checked alone.
    let (tracer, _memory) = memory_tracer();
    for traced in [false, true] {
        let shared = SharedStore::from_json(json!({ "groups": { "A": [1, 2], "B": [3, 4] } }));
        if traced {
            outer.traced("nested").tracer(&tracer).run(&shared).await.unwrap();
        } else {
            outer.run(&shared).await.unwrap();
        }
        let results: std::collections::BTreeMap<String, Vec<i64>> = shared.require("results").unwrap();
        let sorted = |mut v: Vec<i64>| {
            v.sort();
            v
        };
        assert_eq!(results.keys().collect::<Vec<_>>(), vec!["A", "B"], "traced: {traced}");
        assert_eq!(sorted(results["A"].clone()), vec![2, 4], "traced: {traced}");
        assert_eq!(sorted(results["B"].clone()), vec![6, 8], "traced: {traced}");
    }
}

/// A parallel batch rejects `null` items (PocketFlow's `AsyncParallelBatchNode` raises a
/// type error); `[]` gives `[]`. flowtrace's sequential batch follows `BatchNode`'s rule
/// (`null` is no items, case 70), and a typed `BatchNode` returns a `Vec`, never `null`.
#[tokio::test(start_paused = true)]
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
    let (r, shared, _) = timed_both(&Flow::new(&node), json!({})).await;
    r.unwrap();
    assert_eq!(*finished.lock(), vec![2, 1, 2, 1], "item 2 finishes first, untraced and traced");
    assert_eq!(shared.get_json("out").unwrap(), json!([10, 20]));
}

/// The error of the first failing item propagates at once. Deliberate difference: PocketFlow
/// leaves the other items running in the background after the node has failed; flowtrace
/// cancels them (and awaits their cancellation), so a failed run leaves no work behind and
/// their spans end as cancelled. (Item 0 fails after 10 ms rather than at once, so that the
/// siblings have surely started; the error still arrives at 10 ms, not at their 100 ms.)
#[tokio::test(start_paused = true)]
async fn case_084_first_error_propagates_at_once_and_siblings_are_cancelled() {
    /// Counts the sleeping items' futures dropped before they completed.
    struct DropProbe(Arc<Mutex<usize>>, bool);
    impl Drop for DropProbe {
        fn drop(&mut self) {
            if !self.1 {
                *self.0.lock() += 1;
            }
        }
    }
    let completed = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(Mutex::new(0_usize));
    let (log, drops) = (completed.clone(), dropped.clone());
    let node = FnBatchNode::parallel("FailFast")
        .items(|_| Ok(json!([0, 1, 2])))
        .exec(move |item, _| {
            let (log, drops) = (log.clone(), drops.clone());
            async move {
                if item == json!(0) {
                    // Fails at 10 ms, when its siblings are surely mid-sleep.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    return Err(value_error("item 0 fails"));
                }
                let mut probe = DropProbe(drops, false);
                tokio::time::sleep(Duration::from_millis(100)).await;
                probe.1 = true;
                log.lock().push(item);
                Ok(Value::Null)
            }
        })
        .into_node();
    let (tracer, memory) = memory_tracer();
    for traced in [false, true] {
        *dropped.lock() = 0;
        let start = Instant::now();
        let err = if traced {
            Flow::new(&node).traced("fail-fast").tracer(&tracer).run(&SharedStore::new()).await.unwrap_err()
        } else {
            Flow::new(&node).run(&SharedStore::new()).await.unwrap_err()
        };
        assert_eq!(start.elapsed(), Duration::from_millis(10), "the error must not wait for the other items");
        assert_user_error::<ValueError>(&err, "FailFast", Phase::Exec);
        assert_eq!(*dropped.lock(), 2, "both sleeping siblings are cancelled before the run returns");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(completed.lock().is_empty(), "cancelled items must not complete: {:?}", completed.lock());
    }
    tracer.flush(Duration::from_secs(5)).await;
    let trace = memory.traces().pop().unwrap();
    let items: Vec<_> = trace.spans.iter().filter(|s| s.kind == SpanKind::Item).collect();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|s| s.status.is_error()), "every item span ends, as failed or cancelled");
    let failed = items.iter().find(|s| s.name.as_ref() == "item 0").expect("item 0's span");
    assert!(failed.status.message().is_some_and(|m| m.contains("item 0 fails")), "{:?}", failed.status);
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
    let sequential = BatchFlow::new(&sleeper).params(sets);
    let (r, _, elapsed) = timed_both(&Flow::new(sequential.as_node()), json!({})).await;
    r.unwrap();
    assert_eq!(elapsed, Duration::from_millis(300), "one after another");
    let parallel = BatchFlow::parallel(&sleeper).params(sets);
    let (r, _, elapsed) = timed_both(&Flow::new(parallel.as_node()), json!({})).await;
    r.unwrap();
    assert_eq!(elapsed, Duration::from_millis(100), "overlapping");
}

/// Parallel items record one span each, parented to the node's exec span, all ended.
#[tokio::test]
async fn parallel_items_each_have_their_own_span() {
    let (_, _, trace) = run_both(&Flow::new(&doubler(1)), json!({ "items": [1, 2, 3, 4] })).await;
    let exec = trace.span("ParallelDouble.exec").expect("exec span");
    let all_items: Vec<_> = trace.spans.iter().filter(|s| s.kind == SpanKind::Item).collect();
    assert_eq!(all_items.len(), 4, "one span per item, no more");
    let mut items: Vec<_> = trace.children(exec.span_id).into_iter().filter(|s| s.kind == SpanKind::Item).collect();
    items.sort_by_key(|s| s.attributes["item_index"].as_u64());
    assert_eq!(items.len(), 4, "every item span is a child of the exec span");
    let mut ids: Vec<_> = items.iter().map(|s| s.span_id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4, "distinct spans");
    for (i, s) in items.iter().enumerate() {
        assert_eq!(s.name.as_ref(), format!("item {i}"));
        assert_eq!(s.attributes["item_index"], json!(i));
        assert_eq!(s.input, Some(json!(i + 1)));
        assert_eq!(s.output, Some(json!((i + 1) * 2)));
        assert!(!s.status.is_error(), "{:?}", s.status);
        assert!(s.end_unix_nanos >= s.start_unix_nanos, "the span ended");
        assert!(s.start_unix_nanos >= exec.start_unix_nanos && s.end_unix_nanos <= exec.end_unix_nanos);
        let attempts = trace.children(s.span_id);
        assert_eq!(attempts.len(), 1, "one attempt under item {i}");
        assert_eq!(attempts[0].kind, SpanKind::Attempt);
    }
}
