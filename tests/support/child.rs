//! Child processes for the behaviour tests: an example, built with the features this test was
//! built with (so the nested build reuses the tree the test runner just built).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The path of example `name`, built first (a no-op when it is fresh).
pub fn example_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("the target directory");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // The variables cargo sets for this test would change build scripts' fingerprints (ring
    // reruns on them) and rebuild half the tree: the nested build runs without them.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" {
            build.env_remove(k);
        }
    }
    let features: Vec<&str> = [("durable", cfg!(feature = "durable")), ("nats", cfg!(feature = "nats"))]
        .into_iter()
        .filter_map(|(f, on)| on.then_some(f))
        .collect();
    build.args(["build", "--example", name]);
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    let status =
        build.env("CARGO_TARGET_DIR", target_dir).current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("cargo runs");
    assert!(status.success(), "building the {name} example failed");
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "no example binary at {}", bin.display());
    bin
}
