//! Errors and panics: each names its node and phase, and ends only its own run.

use flowtrace::prelude::*;
use flowtrace::Phase;

#[tokio::test]
async fn a_panic_in_prep_or_post_names_that_phase() {
    let in_prep = FnNode::new("P").prep(|_| panic!("in prep")).into_node();
    let err = Flow::new(&in_prep).run(&SharedStore::new()).await.unwrap_err();
    assert!(matches!(&err, Error::Panic { phase: Phase::Prep, node, .. } if node == "P"), "{err}");
    let in_post = FnNode::new("Q").post(|_, _, _| panic!("in post")).into_node();
    let err = Flow::new(&in_post).run(&SharedStore::new()).await.unwrap_err();
    assert!(matches!(&err, Error::Panic { phase: Phase::Post, node, .. } if node == "Q"), "{err}");
    assert_eq!(err.to_string().split(" at ").next().unwrap(), "node 'Q' panicked in post: in post");
}

#[tokio::test]
async fn a_panicking_parallel_item_fails_its_run_only() {
    let node = FnBatchNode::parallel("Items")
        .items(|_| Ok(serde_json::json!([1, 2, 3])))
        .exec(|item, _| async move {
            if item == serde_json::json!(2) {
                panic!("item two");
            }
            Ok(item)
        })
        .into_node();
    let err = Flow::new(&node).run(&SharedStore::new()).await.unwrap_err();
    assert!(matches!(&err, Error::Panic { node, message, .. } if node == "Items" && message == "item two"), "{err}");
    // The same flow still runs fine afterwards.
    let ok = FnBatchNode::parallel("Items").items(|_| Ok(serde_json::json!([1]))).into_node();
    Flow::new(&ok).run(&SharedStore::new()).await.unwrap();
}
