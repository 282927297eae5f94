//! PocketFlow conformance, batch nodes (spec §13 cases 13–18, 41, 70, 71).

mod support;

use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
use flowtrace::trace::SpanKind;
use flowtrace::BoxError;
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::*;

/// PocketFlow's `ArrayChunkNode`, typed: splits `input_array` into chunks and sums each.
struct ArrayChunk {
    chunk_size: usize,
}

impl BatchNode for ArrayChunk {
    type Item = Vec<i64>;
    type Output = i64;
    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<Vec<Vec<i64>>> {
        let input: Vec<i64> = ctx.shared().get("input_array")?.unwrap_or_default();
        Ok(input.chunks(self.chunk_size).map(<[i64]>::to_vec).collect())
    }
    async fn exec(&self, chunk: &Vec<i64>, _cx: &ExecContext) -> NodeResult<i64> {
        Ok(chunk.iter().sum())
    }
    async fn post(&self, ctx: &Context<'_>, _items: Vec<Vec<i64>>, sums: Vec<i64>) -> NodeResult<Action> {
        ctx.shared().insert("chunk_results", sums);
        Ok("default".into())
    }
}

/// PocketFlow's `SumReduceNode`: total = sum(chunk_results).
fn reduce() -> NodeRef {
    FnNode::new("SumReduce")
        .prep(|ctx| {
            let parts: Vec<i64> = ctx.shared().get("chunk_results")?.unwrap_or_default();
            ctx.shared().insert("total", parts.iter().sum::<i64>());
            Ok(Value::Null)
        })
        .into_node()
}

async fn map_reduce(n: i64, chunk_size: usize) -> SharedStore {
    let chunker = ArrayChunk { chunk_size }.into_batch();
    let _ = &chunker >> reduce();
    let (_, shared, _) = run_both(&Flow::new(&chunker), json!({ "input_array": (0..n).collect::<Vec<_>>() })).await;
    shared
}

#[tokio::test]
async fn case_013_array_chunking() {
    // `node.run` alone, as upstream: no successors, so no warning; post's "default" is returned.
    let shared = SharedStore::new();
    shared.insert("input_array", (0..25).collect::<Vec<i64>>());
    let node = ArrayChunk { chunk_size: 10 }.into_batch();
    assert_eq!(node.run(&shared).await.unwrap(), "default");
    assert_eq!(shared.get::<Vec<i64>>("chunk_results").unwrap(), Some(vec![45, 145, 110]));
    // The same node in a one-node flow, untraced and traced, with one item span per chunk.
    let (r, shared, trace) = run_both(&Flow::new(&node), json!({ "input_array": (0..25).collect::<Vec<i64>>() })).await;
    assert_eq!(r.unwrap(), "default");
    assert_eq!(shared.get_json("chunk_results").unwrap(), json!([45, 145, 110]));
    let items: Vec<_> = trace.spans.iter().filter(|s| s.kind == SpanKind::Item).map(|s| s.output.clone()).collect();
    assert_eq!(items, vec![Some(json!(45)), Some(json!(145)), Some(json!(110))]);
}

#[tokio::test]
async fn case_014_map_reduce_sum() {
    assert_eq!(map_reduce(100, 10).await.get::<i64>("total").unwrap(), Some(4950));
}

#[tokio::test]
async fn case_015_uneven_chunks() {
    assert_eq!(map_reduce(25, 10).await.get::<i64>("total").unwrap(), Some(300));
}

#[tokio::test]
async fn case_016_custom_chunk_size() {
    assert_eq!(map_reduce(100, 15).await.get::<i64>("total").unwrap(), Some(4950));
}

#[tokio::test]
async fn case_017_single_element_chunks() {
    assert_eq!(map_reduce(5, 1).await.get::<i64>("total").unwrap(), Some(10));
}

#[tokio::test]
async fn case_018_empty_array() {
    let shared = map_reduce(0, 10).await;
    assert_eq!(shared.get::<Vec<i64>>("chunk_results").unwrap(), Some(vec![]));
    assert_eq!(shared.get::<i64>("total").unwrap(), Some(0));
}

#[tokio::test]
async fn case_041_async_batch_chunking() {
    let node = FnBatchNode::new("AsyncArrayChunk")
        .items(|ctx| {
            let input: Vec<i64> = ctx.shared().require("input_array")?;
            Ok(json!(input.chunks(10).map(<[i64]>::to_vec).collect::<Vec<_>>()))
        })
        .exec(|chunk, _| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(json!(chunk.as_array().map(|c| c.iter().filter_map(Value::as_i64).sum::<i64>()).unwrap_or(0)))
        })
        .post(|ctx, _, sums| {
            ctx.shared().insert("chunk_results", sums);
            Ok(Action::none())
        })
        .into_node();
    let (_, shared, _) = run_both(&Flow::new(&node), json!({ "input_array": (0..25).collect::<Vec<i64>>() })).await;
    assert_eq!(shared.get_json("chunk_results").unwrap(), json!([45, 145, 110]));
}

/// Records the items a sequential batch node gets.
fn echo_items(items: Value) -> NodeRef {
    FnBatchNode::new("Echo")
        .items(move |_| Ok(items.clone()))
        .exec(|item, _| async move { Ok(item) })
        .post(|ctx, _, out| {
            ctx.shared().insert("exec_res", out);
            Ok(Action::none())
        })
        .into_node()
}

#[tokio::test]
async fn case_070_batch_item_rules() {
    for (items, expected) in
        [(Value::Null, json!([])), (json!("ab"), json!(["a", "b"])), (json!({ "k1": 1, "k2": 2 }), json!(["k1", "k2"]))]
    {
        let (_, shared, _) = run_both(&Flow::new(&echo_items(items.clone())), json!({})).await;
        assert_eq!(shared.get_json("exec_res").unwrap(), expected, "items {items}");
    }
    // The typed API has no `null`: an empty Vec is the only "no items", and gives [].
    let (_, shared, _) = run_both(&Flow::new(&ArrayChunk { chunk_size: 3 }.into_batch()), json!({})).await;
    assert_eq!(shared.get_json("chunk_results").unwrap(), json!([]));
}

#[tokio::test]
async fn case_071_batch_retries_are_per_item() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let probe = log.clone();
    let node = FnBatchNode::new("FlakyItems")
        .items(|_| Ok(json!([1, 2])))
        .exec(move |item, cx| {
            let probe = probe.clone();
            async move {
                probe.lock().push((item.as_i64().unwrap_or(0), cx.attempt()));
                if cx.attempt() == 0 {
                    Err(value_error("first attempt fails"))
                } else {
                    Ok(item)
                }
            }
        })
        .into_node()
        .max_retries(2);
    node.run(&SharedStore::new()).await.unwrap();
    assert_eq!(*log.lock(), vec![(1, 0), (1, 1), (2, 0), (2, 1)]);
    // Traced, the same attempts happen, and each item's span holds its own two attempts.
    log.lock().clear();
    let (r, _, trace) = run_both(&Flow::new(&node), json!({})).await;
    r.unwrap();
    assert_eq!(*log.lock(), [(1, 0), (1, 1), (2, 0), (2, 1)].repeat(2));
    for item in trace.spans.iter().filter(|s| s.kind == SpanKind::Item) {
        let attempts = trace.children(item.span_id).into_iter().filter(|s| s.kind == SpanKind::Attempt).count();
        assert_eq!(attempts, 2, "{}", item.name);
    }
}

/// Case 71 with the typed API and a fallback: every item gets its full `max_retries`
/// attempts (counted from 0 per item) before its own fallback runs.
#[tokio::test]
async fn case_071_typed_batch_retries_then_fallback_per_item() {
    struct Flaky {
        log: Arc<Mutex<Vec<(char, u32)>>>,
    }
    impl BatchNode for Flaky {
        type Item = char;
        type Output = String;
        async fn prep(&self, _ctx: &Context<'_>) -> NodeResult<Vec<char>> {
            Ok(vec!['a', 'b'])
        }
        async fn exec(&self, item: &char, cx: &ExecContext) -> NodeResult<String> {
            self.log.lock().push((*item, cx.attempt()));
            Err(value_error(&format!("{item} fails on attempt {}", cx.attempt())))
        }
        async fn exec_fallback(&self, item: &char, error: BoxError, cx: &ExecContext) -> NodeResult<String> {
            Ok(format!("{item}: fallback after attempt {} ({error})", cx.attempt()))
        }
        async fn post(&self, ctx: &Context<'_>, _items: Vec<char>, out: Vec<String>) -> NodeResult<Action> {
            ctx.shared().insert("out", out);
            Ok(Action::none())
        }
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let node = Flaky { log: log.clone() }.into_batch().max_retries(3);
    let (r, shared, _) = run_both(&Flow::new(&node), json!({})).await;
    r.unwrap();
    let one_run = [('a', 0), ('a', 1), ('a', 2), ('b', 0), ('b', 1), ('b', 2)];
    assert_eq!(*log.lock(), one_run.repeat(2), "traced and untraced runs each retry every item fully");
    assert_eq!(
        shared.get_json("out").unwrap(),
        json!([
            "a: fallback after attempt 2 (a fails on attempt 2)",
            "b: fallback after attempt 2 (b fails on attempt 2)"
        ])
    );
}

/// The batch counterpart of case 66: with `max_retries(0)` exec never runs. PocketFlow's
/// `BatchNode` then gives `None` per item, and so does `FnBatchNode` (sequential or parallel);
/// a typed `BatchNode` has no such value and fails with a clear error, as a typed `Node` does.
#[tokio::test]
async fn batch_with_zero_retries_never_calls_exec() {
    for node in [FnBatchNode::new("Zero"), FnBatchNode::parallel("Zero")] {
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let node = node
            .items(|_| Ok(json!([1, 2])))
            .exec(move |item, _| {
                *c.lock() += 1;
                async move { Ok(item) }
            })
            .post(|ctx, _, out| {
                ctx.shared().insert("exec_res", out);
                Ok(Action::none())
            })
            .into_node()
            .max_retries(0);
        let (r, shared, _) = run_both(&Flow::new(&node), json!({})).await;
        r.unwrap();
        assert_eq!(*calls.lock(), 0, "exec must not be called");
        assert_eq!(shared.get_json("exec_res").unwrap(), json!([null, null]));
    }
    let node = ArrayChunk { chunk_size: 2 }.into_batch().max_retries(0);
    let shared = SharedStore::from_json(json!({ "input_array": [1, 2, 3] }));
    let err = node.run(&shared).await.unwrap_err();
    assert!(err.to_string().contains("max_retries is 0"), "{err}");
}

/// §3: an item whose last attempt fails (default fallback) aborts the whole node; later items
/// are not run and post is not called.
#[tokio::test]
async fn batch_item_failure_aborts_later_items() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let node = FnBatchNode::new("StopsAtTwo")
        .items(|_| Ok(json!([1, 2, 3])))
        .exec(move |item, _| {
            log.lock().push(item.clone());
            async move {
                if item == json!(2) {
                    Err(value_error("item 2 fails"))
                } else {
                    Ok(item)
                }
            }
        })
        .post(|ctx, _, out| {
            ctx.shared().insert("exec_res", out);
            Ok(Action::none())
        })
        .into_node()
        .max_retries(2);
    let (r, shared, trace) = run_both(&Flow::new(&node), json!({})).await;
    assert!(r.unwrap_err().contains("item 2 fails"));
    assert_eq!(*seen.lock(), json!([1, 2, 2, 1, 2, 2]).as_array().unwrap().clone(), "item 3 never runs");
    assert_eq!(shared.get_json("exec_res"), None, "post is not called");
    let items: Vec<_> = trace.spans.iter().filter(|s| s.kind == SpanKind::Item).map(|s| s.status.is_error()).collect();
    assert_eq!(items, vec![false, true]);
}
