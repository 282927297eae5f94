//! PocketFlow conformance, batch nodes (spec §13 cases 13–18, 41, 70, 71).

mod support;

use std::sync::Arc;
use std::time::Duration;

use flowtrace::prelude::*;
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
    let shared = SharedStore::new();
    shared.insert("input_array", (0..25).collect::<Vec<i64>>());
    ArrayChunk { chunk_size: 10 }.into_batch().run(&shared).await.unwrap();
    assert_eq!(shared.get::<Vec<i64>>("chunk_results").unwrap(), Some(vec![45, 145, 110]));
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
}
