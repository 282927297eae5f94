//! A finished trace as text: an indented tree with durations, optionally with a timeline bar
//! per span. Used by debug output and by the `flowtrace` binary.

use std::fmt::Write;

use std::collections::{HashMap, HashSet};

use super::model::{SpanId, SpanRecord, SpanStatus, TraceRecord};

fn ms(nanos: u64) -> String {
    let ms = nanos as f64 / 1e6;
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else {
        format!("{ms:.1}ms")
    }
}

fn status_note(s: &SpanStatus) -> String {
    match s {
        SpanStatus::Ok => String::new(),
        SpanStatus::Error { kind, message, location, .. } => match location {
            Some(l) => format!("  ERROR ({kind}): {message} at {l}"),
            None => format!("  ERROR ({kind}): {message}"),
        },
        SpanStatus::Cancelled { reason } => format!("  CANCELLED: {reason}"),
    }
}

/// `  3 generations, 1234 tokens, $0.0012` (nothing when the trace has no generation).
fn usage_note(t: &TraceRecord) -> String {
    let u = t.usage_totals();
    if u.generations == 0 {
        return String::new();
    }
    let mut s = format!(
        "  {} generation{}, {} tokens",
        u.generations,
        if u.generations == 1 { "" } else { "s" },
        u.total_tokens
    );
    if let Some(c) = u.cost {
        let _ = write!(s, ", ${c:.6}");
    }
    s
}

/// A generation's model, tokens and cost; an event's level.
fn span_note(s: &SpanRecord) -> String {
    if let Some(g) = &s.generation {
        let mut n = format!("  [{}", g.model.as_deref().unwrap_or("generation"));
        let (i, o) = (g.usage.get("input"), g.usage.get("output"));
        if let (Some(i), Some(o)) = (i, o) {
            let _ = write!(n, " {i}+{o} tokens");
        } else if !g.usage.is_empty() {
            let _ = write!(n, " {} tokens", g.total_tokens());
        }
        if let Some(c) = g.total_cost() {
            let _ = write!(n, " ${c:.6}");
        }
        n.push(']');
        return n;
    }
    match s.attributes.get("level").and_then(serde_json::Value::as_str) {
        Some(level) => format!("  {level}"),
        None => String::new(),
    }
}

impl TraceRecord {
    /// The trace as an indented tree with each span's duration and any error.
    ///
    /// ```text
    /// Support  ok  151.20ms  trace 8f3c…  7 spans
    /// └─ SupportFlow  151.10ms
    ///    ├─ Classify  100.80ms
    ///    │  ├─ Classify.prep  0.01ms
    /// ```
    pub fn render_tree(&self) -> String {
        self.render(None)
    }

    /// The tree with a timeline bar of `width` characters before each span, placing the span
    /// within the whole trace.
    pub fn render_timeline(&self, width: usize) -> String {
        self.render(Some(width.max(10)))
    }

    fn render(&self, bar: Option<usize>) -> String {
        let mut out = String::new();
        let total = self.end_unix_nanos.saturating_sub(self.start_unix_nanos).max(1);
        let status = match &self.status {
            // Parts of a run whose end was never recorded (the process stopped mid-run).
            SpanStatus::Ok if self.is_part() => "in progress (the run's end was not recorded)".to_owned(),
            SpanStatus::Ok => "ok".to_owned(),
            SpanStatus::Error { .. } => "error".to_owned(),
            SpanStatus::Cancelled { .. } => "cancelled".to_owned(),
        };
        let _ = writeln!(
            out,
            "{}  {status}  {}  trace {}  {} spans{}{}",
            self.name,
            ms(total),
            &self.trace_id.to_string()[..12],
            self.spans.len(),
            usage_note(self),
            status_note(&self.status)
        );
        // Children by parent, once: a streamed run can have millions of spans. A span whose
        // parent was not recorded is shown at the top rather than lost.
        let ids: HashSet<SpanId> = self.spans.iter().map(|s| s.span_id).collect();
        let mut children: HashMap<SpanId, Vec<&SpanRecord>> = HashMap::new();
        let mut roots: Vec<&SpanRecord> = Vec::new();
        for s in &self.spans {
            match s.parent_id.filter(|p| ids.contains(p)) {
                Some(p) => children.entry(p).or_default().push(s),
                None => roots.push(s),
            }
        }
        for v in children.values_mut() {
            v.sort_by_key(|s| (s.start_unix_nanos, s.span_id.0));
        }
        roots.sort_by_key(|s| (s.start_unix_nanos, s.span_id.0));
        let view = View { children, bar, total, start: self.start_unix_nanos };
        let n = roots.len();
        for (i, s) in roots.into_iter().enumerate() {
            view.render_span(&mut out, s, "", i + 1 == n);
        }
        if self.spans_dropped > 0 {
            let _ = writeln!(out, "({} spans of this run could not be recorded)", self.spans_dropped);
        }
        out
    }
}

/// A trace being rendered: children by parent, and the timeline's width and span.
struct View<'a> {
    children: HashMap<SpanId, Vec<&'a SpanRecord>>,
    bar: Option<usize>,
    total: u64,
    start: u64,
}

impl View<'_> {
    fn render_span(&self, out: &mut String, s: &SpanRecord, prefix: &str, last: bool) {
        let (bar, total) = (self.bar, self.total);
        if let Some(width) = bar {
            let from = s.start_unix_nanos.saturating_sub(self.start) as f64 / total as f64;
            let to = s.end_unix_nanos.saturating_sub(self.start) as f64 / total as f64;
            let a = ((from * width as f64) as usize).min(width - 1);
            let b = ((to * width as f64).ceil() as usize).clamp(a + 1, width);
            let line: String = (0..width).map(|i| if i >= a && i < b { '█' } else { '·' }).collect();
            let _ = write!(out, "{line} ");
        }
        let branch = if last { "└─ " } else { "├─ " };
        let _ = writeln!(
            out,
            "{prefix}{branch}{}  {}{}{}",
            s.name,
            ms(s.end_unix_nanos.saturating_sub(s.start_unix_nanos)),
            span_note(s),
            status_note(&s.status)
        );
        let child_prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
        let children = self.children.get(&s.span_id).map(Vec::as_slice).unwrap_or_default();
        let n = children.len();
        for (i, c) in children.iter().enumerate() {
            self.render_span(out, c, &child_prefix, i + 1 == n);
        }
    }
}
