//! A flow whose executions are counted, for the tests of batch progress across a resume
//! (embedded store and NATS alike).

use std::collections::HashMap;
use std::sync::Arc;

use flowtrace::prelude::*;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// `Before` >> a sequential batch flow over items i0..i4 >> `After`; item `fail_at` fails on
/// its first execution. Every execution is counted by name (and the batch's `params` calls).
pub fn batch_flow(counts: &Arc<Mutex<HashMap<String, u32>>>, fail_at: &'static str) -> Flow {
    let count = |counts: &Arc<Mutex<HashMap<String, u32>>>, key: &str| -> u32 {
        let mut c = counts.lock();
        let n = c.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    };
    let c = Arc::clone(counts);
    let item = FnNode::new("Item")
        .prep(move |ctx| {
            let key: String = ctx.param("item").expect("the item param");
            if count(&c, &key) == 1 && key == fail_at {
                return Err(format!("{key} fails on its first execution").into());
            }
            ctx.shared().insert(format!("done_{key}"), true);
            Ok(Value::Null)
        })
        .into_node();
    let c = Arc::clone(counts);
    let batch = BatchFlow::named("Items", &item).params(move |_| {
        count(&c, "params");
        Ok((0..5).map(|i| json!({ "item": format!("i{i}") }).as_object().unwrap().clone()).collect())
    });
    let (c1, c2) = (Arc::clone(counts), Arc::clone(counts));
    let before = FnNode::new("Before")
        .prep(move |_| {
            count(&c1, "Before");
            Ok(Value::Null)
        })
        .into_node();
    let after = FnNode::new("After")
        .prep(move |_| {
            count(&c2, "After");
            Ok(Value::Null)
        })
        .into_node();
    let _ = &before >> batch.as_node() >> &after;
    Flow::named("batched", &before)
}

/// After a resume with `i3` in flight: every item is done (in `store`), and only `i3` ran twice.
pub fn assert_resumed_once_each(store: &Value, counts: &Arc<Mutex<HashMap<String, u32>>>, why: &str) {
    for i in 0..5 {
        assert_eq!(store[format!("done_i{i}")], true, "item i{i} is done: {store}");
    }
    let counts = counts.lock().clone();
    let expect: HashMap<String, u32> =
        [("Before", 1), ("params", 1), ("i0", 1), ("i1", 1), ("i2", 1), ("i3", 2), ("i4", 1), ("After", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    assert_eq!(counts, expect, "{why}");
}
