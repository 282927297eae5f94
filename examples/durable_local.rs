//! Durable runs on one machine, no server: checkpoints in an embedded store (redb).
//!
//! `cargo run --features durable --example durable_local -- run --db runs.redb --run-id R1`
//! runs a five-node flow (nodes `A` … `E`, each exec about `STEP_MS`, default 200 ms, and
//! appending its name to the file `--witness` when given). Kill it part-way (Ctrl-C, or
//! SIGKILL), then
//! `cargo run --features durable --example durable_local -- resume --db runs.redb`
//! continues every interrupted run after its last checkpoint: the nodes that completed are
//! not executed again. Each finished run prints one JSON line (its result).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use flowtrace::durable::{DurableRuns, EmbeddedStore, Submission};
use flowtrace::prelude::*;

fn five_nodes(witness: Option<PathBuf>, step: Duration) -> Flow {
    let names = ["A", "B", "C", "D", "E"];
    let nodes: Vec<NodeRef> = names
        .iter()
        .map(|&name| {
            let witness = witness.clone();
            FnNode::new(name)
                .exec(move |_, cx| {
                    let witness = witness.clone();
                    async move {
                        tokio::time::sleep(step).await;
                        if let Some(path) = witness {
                            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                            writeln!(f, "{}", cx.node_name())?;
                        }
                        Ok(serde_json::Value::Null)
                    }
                })
                .post(move |ctx, _, _| {
                    ctx.shared().update("visited", Vec::<String>::new, |v| v.push(ctx.node_name().to_owned()))?;
                    Ok(Action::none())
                })
                .into_node()
        })
        .collect();
    for pair in nodes.windows(2) {
        let _ = &pair[0] >> &pair[1];
    }
    Flow::named("five-nodes", Some(&nodes[0]))
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_default();
    let db = arg(&args, "--db").unwrap_or_else(|| "runs.redb".into());
    let witness = arg(&args, "--witness").map(PathBuf::from);
    let step = Duration::from_millis(std::env::var("STEP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(200));
    let runs = DurableRuns::builder(EmbeddedStore::open(&db)?).flow("five-nodes", &five_nodes(witness, step))?.build();
    match mode.as_str() {
        "run" => {
            let mut sub = Submission::new("five-nodes");
            if let Some(id) = arg(&args, "--run-id") {
                sub = sub.run_id(id);
            }
            println!("started {}", sub.id());
            let result = runs.run(sub).await?;
            println!("{}", serde_json::to_string(&result)?);
        }
        "resume" => {
            for id in runs.unfinished().await? {
                let result = runs.resume(&id, None).await?;
                println!("{}", serde_json::to_string(&result)?);
            }
        }
        _ => {
            eprintln!("usage: durable_local run|resume --db PATH [--run-id ID] [--witness FILE]");
            std::process::exit(2);
        }
    }
    flowtrace::flush(Duration::from_secs(5)).await;
    Ok(())
}
