//! Contained panics are quiet: a node's panic that becomes the run's error goes to `tracing`
//! with its location and is not printed by Rust's default hook; a panic hook the application
//! installed still runs; panics elsewhere still reach the default hook.
//!
//! Panic hooks are per process, so each scenario runs in a child process (this test binary,
//! running one ignored scenario test) whose stderr and stdout the parent reads.

use std::process::Command;

use flowtrace::prelude::*;

fn run_scenario(name: &str) -> (String, String) {
    let out = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--ignored", "--exact", "--nocapture", "--test-threads=1", name])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the scenario runs");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "scenario {name} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

fn panicking_flow() -> Flow {
    Flow::new(&FnNode::new("Boom").exec(|_, _| async { panic!("kaboom in exec") }).into_node())
}

async fn run_and_check() {
    let err = panicking_flow().run(&SharedStore::new()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Panic { node, message, .. } if node == "Boom" && message == "kaboom in exec"),
        "{err}"
    );
}

#[tokio::test]
#[ignore = "a scenario, run in a child process by contained_panics_are_quiet_and_traced"]
async fn scenario_quiet() {
    // The application's subscriber prints `tracing` events to stdout.
    let subscriber = tracing_subscriber::fmt().with_writer(std::io::stdout).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    run_and_check().await;
    // A panic no run contains still goes to the default hook.
    let _ = std::thread::spawn(|| panic!("uncontained panic")).join();
}

#[tokio::test]
#[ignore = "a scenario, run in a child process by an_application_panic_hook_still_runs"]
async fn scenario_user_hook() {
    std::panic::set_hook(Box::new(|info| eprintln!("APP HOOK: {}", info.payload_as_str().unwrap_or("?"))));
    run_and_check().await;
}

#[test]
fn contained_panics_are_quiet_and_traced() {
    let (stdout, stderr) = run_scenario("scenario_quiet");
    assert!(!stderr.contains("kaboom"), "a contained panic reached stderr:\n{stderr}");
    // One backtrace: the uncontained panic's (RUST_BACKTRACE=1), none for the contained one.
    assert_eq!(stderr.matches("stack backtrace").count(), 1, "a contained panic printed a backtrace:\n{stderr}");
    let event =
        stdout.lines().find(|l| l.contains("kaboom in exec")).unwrap_or_else(|| panic!("no tracing event:\n{stdout}"));
    assert!(event.contains("ERROR") && event.contains("flowtrace::panic"), "{event}");
    assert!(
        event.contains("location=") && event.contains("tests/quiet_panics.rs:"),
        "the event gives the location: {event}"
    );
    assert!(stderr.contains("uncontained panic"), "other panics still reach the default hook:\n{stderr}");
}

#[test]
fn an_application_panic_hook_still_runs() {
    let (_stdout, stderr) = run_scenario("scenario_user_hook");
    assert!(stderr.contains("APP HOOK: kaboom in exec"), "the application's hook did not run:\n{stderr}");
}
