//! Privacy before export: redaction of secret-looking keys everywhere (values, metadata,
//! attributes), the mask hook, and the 1 MB value limit with a visible marker.

use flowtrace::export::{Privacy, REDACTED};
use flowtrace::trace::TraceRecord;
use serde_json::json;

fn trace(big: usize) -> TraceRecord {
    serde_json::from_value(json!({
        "trace_id": "0123456789abcdef0123456789abcdef", "name": "T",
        "start_unix_nanos": 1, "end_unix_nanos": 2, "status": "ok",
        "input": {"user": "ann", "Authorization": "Bearer x", "deep": [{"db_password": "p"}]},
        "output": {"answer": "x".repeat(big)},
        "metadata": {"openai_api_key": "sk-1", "team": "a"},
        "spans": [{"span_id": "0000000000000001", "kind": "exec", "name": "N.exec", "start_unix_nanos": 1,
                   "end_unix_nanos": 2, "status": "ok", "input": {"token": "t", "q": "hi"},
                   "output": "ok", "attributes": {"session_token": "s", "attempt": 1}}]
    }))
    .unwrap()
}

#[test]
fn secret_keys_are_redacted_everywhere() {
    let t = Privacy::default().apply(&trace(10));
    assert_eq!(t.input["Authorization"], REDACTED);
    assert_eq!(t.input["deep"][0]["db_password"], REDACTED);
    assert_eq!(t.input["user"], "ann");
    assert_eq!(t.metadata["openai_api_key"], REDACTED);
    assert_eq!(t.metadata["team"], "a");
    let s = &t.spans[0];
    assert_eq!(s.input.as_ref().unwrap()["token"], REDACTED);
    assert_eq!(s.input.as_ref().unwrap()["q"], "hi");
    assert_eq!(s.attributes["session_token"], REDACTED);
    assert_eq!(s.attributes["attempt"], 1);
}

#[test]
fn configured_keys_replace_the_defaults() {
    let t = Privacy::default().with_redacted_keys(["user"]).apply(&trace(10));
    assert_eq!(t.input["user"], REDACTED);
    assert_eq!(t.input["Authorization"], "Bearer x");
}

#[test]
fn values_over_the_limit_are_truncated_visibly() {
    let t = Privacy::default().apply(&trace(1_100_000));
    let out = t.output.as_str().expect("the marker replaces the value");
    assert!(out.starts_with("<truncated: ") && out.contains("1000000-byte limit"), "{out}");
    assert_eq!(t.input["user"], "ann", "small values stay");
    let shared = std::sync::Arc::new(trace(10));
    let p = Privacy::default().with_redacted_keys(Vec::<String>::new());
    assert!(std::sync::Arc::ptr_eq(&p.apply_shared(shared.clone()), &shared), "nothing to change: no copy");
}

#[test]
fn the_mask_hook_runs_on_every_value_and_a_panicking_mask_hides_the_value() {
    let p = Privacy::default().with_mask(|v| if v == json!("ok") { json!("MASKED") } else { v });
    let t = p.apply(&trace(10));
    assert_eq!(t.spans[0].output, Some(json!("MASKED")));
    let p = Privacy::default().with_mask(|_| panic!("mask bug"));
    let t = p.apply(&trace(10));
    assert!(t.input.as_str().is_some_and(|s| s.contains("fully masked")), "{}", t.input);
}
