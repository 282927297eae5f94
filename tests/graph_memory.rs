//! Graphs free themselves: a flow whose nodes loop back is no reference cycle, so dropping
//! its last handle frees every node (counted with `flowtrace::live_nodes`).
//!
//! One test function, so that no other test of this binary builds nodes meanwhile.

use flowtrace::prelude::*;

fn looping_flow(i: usize) -> Flow {
    let think = FnNode::new(format!("Think{i}")).into_node();
    let act = FnNode::new("Act").into_node();
    let answer = FnNode::new("Answer").into_node();
    wire! {
        think - "act" >> act - "think" >> think;
        think - "done" >> answer;
    }
    Flow::new(&think)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_graphs_are_freed_and_a_held_node_keeps_its_graph() {
    let before = flowtrace::live_nodes();

    // 50,000 agent-style loops, built and dropped.
    for i in 0..50_000 {
        let flow = looping_flow(i);
        assert!(flowtrace::live_nodes() >= before + 4);
        drop(flow);
    }
    assert_eq!(flowtrace::live_nodes(), before, "every node of every dropped loop is freed");

    // A handle to any one node keeps its whole graph: wiring survives the other handles.
    let (a, b, c) = (FnNode::new("A").into_node(), FnNode::new("B").into_node(), FnNode::new("C").into_node());
    wire!(a >> b >> c - "again" >> a);
    drop((a, c));
    assert_eq!(flowtrace::live_nodes(), before + 3);
    let c = b.successor("default").expect("B's successor is alive while B is held");
    assert_eq!(c.name(), "C");
    assert_eq!(c.successor("again").map(|a| a.name().to_owned()).as_deref(), Some("A"));
    drop((b, c));
    assert_eq!(flowtrace::live_nodes(), before);

    // A flow that ran (and loops) is freed as well, its run included.
    let counter = FnNode::new("Count")
        .post(|ctx, _, _| {
            let n = ctx.shared().get::<i64>("n")?.unwrap_or(0) + 1;
            ctx.shared().insert("n", n);
            Ok(if n < 5 { "again".into() } else { Action::none() })
        })
        .into_node();
    wire!(counter - "again" >> counter);
    let flow = Flow::new(&counter);
    drop(counter);
    let shared = SharedStore::new();
    flow.run(&shared).await.unwrap();
    assert_eq!(shared.get::<i64>("n").unwrap(), Some(5));
    drop(flow);
    assert_eq!(flowtrace::live_nodes(), before);
}
