//! What both Langfuse encoders (OTLP and legacy batch) agree on: an observation's level and
//! its metadata, so the two protocols show the same trace.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::trace::{SpanId, SpanKind, SpanRecord, SpanStatus, TraceRecord};

/// Langfuse's observation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Default,
    Warning,
    Error,
}

impl Level {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Level::Default => "DEFAULT",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }
}

/// The levels of a trace's spans.
///
/// A failure is `ERROR` only when it ended the run: the span failed and so did every span
/// above it, up to a failed run. A failure something above it survived (an attempt a later
/// attempt or the fallback recovered, a failure inside a run that still succeeded) is
/// `WARNING`, because Langfuse marks a whole trace ERROR as soon as one observation is (§10,
/// `aggregated_level`); so is an attempt that was retried. A cancelled span (the run
/// stopped, or its deadline passed, while it was open) is `WARNING`; its status message says
/// why. The root of a failed run is `ERROR` even when it was cut short (a run timeout), so a
/// failed run always shows as failed.
pub(crate) struct Levels<'a> {
    trace: &'a TraceRecord,
    by_id: HashMap<SpanId, &'a SpanRecord>,
    /// The highest attempt number under each parent (exec or item span).
    last_attempt: HashMap<SpanId, u64>,
}

fn attempt_of(s: &SpanRecord) -> Option<u64> {
    if s.kind == SpanKind::Attempt {
        s.attributes.get("attempt").and_then(Value::as_u64)
    } else {
        None
    }
}

impl<'a> Levels<'a> {
    pub(crate) fn new(trace: &'a TraceRecord) -> Self {
        let mut last_attempt: HashMap<SpanId, u64> = HashMap::new();
        for s in &trace.spans {
            if let (Some(p), Some(n)) = (s.parent_id, attempt_of(s)) {
                let e = last_attempt.entry(p).or_default();
                *e = (*e).max(n);
            }
        }
        Levels { trace, by_id: trace.spans.iter().map(|s| (s.span_id, s)).collect(), last_attempt }
    }

    fn retried(&self, s: &SpanRecord) -> bool {
        match (s.parent_id, attempt_of(s)) {
            (Some(p), Some(n)) => self.last_attempt.get(&p).is_some_and(|last| *last > n),
            _ => false,
        }
    }

    pub(crate) fn of(&self, s: &SpanRecord) -> Level {
        // The root of a failed run is ERROR whatever its own status (it may have been cut
        // short by the run's deadline).
        if s.parent_id.is_none() && matches!(self.trace.status, SpanStatus::Error { .. }) {
            return Level::Error;
        }
        match &s.status {
            SpanStatus::Ok => match s.attributes.get("level").and_then(Value::as_str) {
                Some("WARNING") => Level::Warning,
                Some("ERROR") => Level::Error,
                _ => Level::Default,
            },
            SpanStatus::Cancelled { .. } => Level::Warning,
            SpanStatus::Error { .. } => {
                // Up the chain of failed spans: an attempt on the way that was retried, or a
                // span that survived the failure, means this failure did not end the run.
                let mut cur = s;
                // Bounded by the span count, in case a broken record has a cycle.
                for _ in 0..=self.by_id.len() {
                    if self.retried(cur) {
                        return Level::Warning;
                    }
                    match cur.parent_id.and_then(|p| self.by_id.get(&p)) {
                        Some(p) if matches!(p.status, SpanStatus::Error { .. }) => cur = p,
                        Some(_) => return Level::Warning,
                        // The top (or a parent that was not recorded): the run decides.
                        None => break,
                    }
                }
                if matches!(self.trace.status, SpanStatus::Error { .. }) {
                    Level::Error
                } else {
                    Level::Warning
                }
            }
        }
    }
}

/// Langfuse's observation type of a span: `generation` for a recorded LLM call, `event` for
/// a warning, the type a node was declared as, else `span`.
pub(crate) fn observation_type(s: &SpanRecord) -> &str {
    match s.kind {
        SpanKind::Generation => "generation",
        SpanKind::Event => "event",
        _ => s.attributes.get("observation_type").and_then(Value::as_str).unwrap_or("span"),
    }
}

/// A node declared [`ObservationType::Generation`](crate::ObservationType) *is* the LLM call:
/// the generations its exec recorded are folded into it (model, parameters and prompt of the
/// last call, usage and cost summed, the first completion start, the last call's messages
/// and output), so Langfuse shows one generation and counts its tokens once. Failed calls
/// stay as their own (usage-less) generations under their attempts. `None` when the trace
/// has no such node (the usual case: nothing is copied).
pub(crate) fn fold_generation_nodes(trace: &TraceRecord) -> Option<TraceRecord> {
    let is_gen_node = |s: &SpanRecord| {
        s.kind == SpanKind::Node && s.attributes.get("observation_type").and_then(Value::as_str) == Some("generation")
    };
    if !trace.spans.iter().any(is_gen_node) {
        return None;
    }
    let by_id: HashMap<SpanId, &SpanRecord> = trace.spans.iter().map(|s| (s.span_id, s)).collect();
    let node_of = |s: &SpanRecord| {
        let mut cur = s.parent_id;
        for _ in 0..=by_id.len() {
            let p = by_id.get(&cur?)?;
            if p.kind == SpanKind::Node {
                return Some(p.span_id);
            }
            cur = p.parent_id;
        }
        None
    };
    let mut folded: HashMap<SpanId, (crate::trace::GenerationRecord, Option<Value>, Option<Value>)> = HashMap::new();
    let mut gone = std::collections::HashSet::new();
    // Spans are in the order they ended, so "last" is the last call to finish.
    for s in &trace.spans {
        let (Some(g), SpanStatus::Ok) = (&s.generation, &s.status) else { continue };
        let Some(node) = node_of(s).filter(|n| by_id.get(n).is_some_and(|n| is_gen_node(n))) else { continue };
        let e = folded.entry(node).or_default();
        let m = &mut e.0;
        if g.model.is_some() {
            m.model = g.model.clone();
        }
        if !g.model_parameters.is_empty() {
            m.model_parameters = g.model_parameters.clone();
        }
        if g.prompt_name.is_some() {
            m.prompt_name = g.prompt_name.clone();
            m.prompt_version = g.prompt_version;
        }
        for (k, v) in &g.usage {
            *m.usage.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &g.cost {
            *m.cost.entry(k.clone()).or_default() += v;
        }
        m.completion_start_unix_nanos = match (m.completion_start_unix_nanos, g.completion_start_unix_nanos) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if s.input.is_some() {
            e.1 = s.input.clone();
        }
        if s.output.is_some() {
            e.2 = s.output.clone();
        }
        gone.insert(s.span_id);
    }
    let mut t = trace.clone();
    t.spans.retain(|s| !gone.contains(&s.span_id));
    for s in &mut t.spans {
        if let Some((g, input, output)) = folded.remove(&s.span_id) {
            s.generation = Some(Box::new(g));
            if input.is_some() {
                s.input = input;
            }
            if output.is_some() {
                s.output = output;
            }
        }
    }
    Some(t)
}

/// The name a span kind has in metadata (`span_kind`).
pub(crate) fn kind_name(k: SpanKind) -> &'static str {
    match k {
        SpanKind::Flow => "flow",
        SpanKind::BatchRun => "batch_run",
        SpanKind::Node => "node",
        SpanKind::Prep => "prep",
        SpanKind::Exec => "exec",
        SpanKind::Item => "item",
        SpanKind::Attempt => "attempt",
        SpanKind::Wait => "wait",
        SpanKind::Fallback => "fallback",
        SpanKind::Post => "post",
        SpanKind::Generation => "generation",
        SpanKind::Event => "event",
        #[allow(unreachable_patterns)]
        _ => "span",
    }
}

/// An observation's metadata, flat and structured: the span's attributes (`node_type`,
/// `attempt`, `item_index`, `batch_index`, `changed_keys` …) as top-level keys, plus
/// `span_kind`, and for a failure `error_kind`, `error_chain` (an array) and `panic_location`.
/// Top-level keys are what Langfuse lets users filter on.
pub(crate) fn metadata(s: &SpanRecord) -> Map<String, Value> {
    let mut m = s.attributes.clone();
    m.insert("span_kind".into(), kind_name(s.kind).into());
    match &s.status {
        SpanStatus::Error { kind, chain, location, .. } => {
            m.insert("error_kind".into(), kind.clone().into());
            if !chain.is_empty() {
                m.insert("error_chain".into(), chain.clone().into());
            }
            if let Some(l) = location {
                m.insert("panic_location".into(), l.clone().into());
            }
        }
        SpanStatus::Cancelled { .. } => {
            m.insert("error_kind".into(), "cancelled".into());
        }
        SpanStatus::Ok => {}
    }
    m
}

/// The trace's own metadata, as both encoders send it: the user's entries plus
/// `framework`, the run's `action`, its error, and `spans_dropped` when spans were lost.
pub(crate) fn trace_metadata(t: &TraceRecord) -> Map<String, Value> {
    let mut m = t.metadata.clone();
    m.insert("framework".into(), "flowtrace".into());
    if let Some(a) = &t.action {
        m.insert("action".into(), a.clone().into());
    }
    match &t.status {
        SpanStatus::Ok => {}
        SpanStatus::Error { kind, message, .. } => {
            m.insert("status".into(), "error".into());
            m.insert("error_kind".into(), kind.clone().into());
            m.insert("error".into(), message.clone().into());
        }
        SpanStatus::Cancelled { reason } => {
            m.insert("status".into(), "cancelled".into());
            m.insert("error".into(), reason.clone().into());
        }
    }
    if t.spans_dropped > 0 {
        m.insert("spans_dropped".into(), t.spans_dropped.into());
    }
    m
}

/// Checks an environment name the way Langfuse's SDKs do (`^(?!langfuse)[a-z0-9-_]+$`, at
/// most 40 characters): the server silently turns anything else into `default`, so a wrong
/// name is refused here, loudly, instead.
pub(crate) fn check_environment(v: &str) -> Result<String, String> {
    let v = v.trim();
    let ok = !v.is_empty()
        && v.len() <= 40
        && !v.starts_with("langfuse")
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(v.to_owned())
    } else {
        Err(format!(
            "{v:?}: expected lower-case letters, digits, '-' or '_' (at most 40, not starting with \"langfuse\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_follow_langfuse() {
        assert_eq!(check_environment("production").unwrap(), "production");
        assert_eq!(check_environment("staging-eu_1").unwrap(), "staging-eu_1");
        for bad in ["", "Prod", "langfuse-x", "a b", &"x".repeat(41)] {
            assert!(check_environment(bad).is_err(), "{bad}");
        }
    }
}
