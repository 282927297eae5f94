//! What leaves the process: masking, redaction of secret-looking keys, value size limits and
//! deterministic sampling by trace id.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::limit_values;
use crate::trace::{TraceId, TraceRecord};

/// The keys redacted by default (matched case-insensitively as substrings of object keys).
pub const DEFAULT_REDACTED_KEYS: &[&str] = &["password", "secret", "token", "api_key", "authorization"];

/// The value that replaces a redacted one.
pub const REDACTED: &str = "<redacted>";

/// A user function applied to every input, output and metadata value before export.
pub type MaskFn = Arc<dyn Fn(Value) -> Value + Send + Sync>;

/// The privacy rules of an exporter: a masking hook, redacted keys, a value size limit and a
/// sample rate.
///
/// ```
/// use flowtrace::export::Privacy;
/// let p = Privacy::default();
/// let v = p.scrub(serde_json::json!({"user": "ann", "api_key": "k-1", "nested": {"Password": "x"}}));
/// assert_eq!(v, serde_json::json!({"user": "ann", "api_key": "<redacted>", "nested": {"Password": "<redacted>"}}));
/// ```
#[derive(Clone)]
pub struct Privacy {
    mask: Option<MaskFn>,
    redact: Vec<String>,
    max_value_bytes: usize,
    sample_rate: f64,
}

impl fmt::Debug for Privacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Privacy")
            .field("mask", &self.mask.as_ref().map(|_| "<fn>"))
            .field("redact", &self.redact)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("sample_rate", &self.sample_rate)
            .finish()
    }
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy {
            mask: None,
            redact: DEFAULT_REDACTED_KEYS.iter().map(|s| s.to_string()).collect(),
            max_value_bytes: 1_000_000,
            sample_rate: 1.0,
        }
    }
}

impl Privacy {
    /// Sets the masking hook (applied after redaction).
    pub fn with_mask(mut self, mask: impl Fn(Value) -> Value + Send + Sync + 'static) -> Self {
        self.mask = Some(Arc::new(mask));
        self
    }
    /// Replaces the redacted key fragments (an empty list redacts nothing).
    pub fn with_redacted_keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.redact = keys.into_iter().map(|k| k.into().to_ascii_lowercase()).collect();
        self
    }
    /// Values larger than this (serialised) are replaced by a visible truncation marker.
    pub fn with_max_value_bytes(mut self, max: usize) -> Self {
        self.max_value_bytes = max;
        self
    }
    /// The fraction of traces kept, 0..=1 (clamped), chosen deterministically by trace id.
    pub fn with_sample_rate(mut self, rate: f64) -> Self {
        self.sample_rate = if rate.is_nan() { 1.0 } else { rate.clamp(0.0, 1.0) };
        self
    }

    /// Whether a trace is kept: the same trace id always gets the same answer.
    pub fn sampled(&self, id: TraceId) -> bool {
        if self.sample_rate >= 1.0 {
            return true;
        }
        // SplitMix64 over both halves: uniform, stable across processes and versions.
        let mut z = (id.0 as u64) ^ ((id.0 >> 64) as u64).rotate_left(17);
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < self.sample_rate
    }

    /// Redacts configured keys, then applies the mask hook, to one value.
    pub fn scrub(&self, v: Value) -> Value {
        let v = if self.redact.is_empty() { v } else { self.redact_value(v) };
        match &self.mask {
            Some(mask) => {
                let m = Arc::clone(mask);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || m(v)))
                    .unwrap_or_else(|_| Value::String("<fully masked: the mask function panicked>".into()))
            }
            None => v,
        }
    }

    fn is_secret(&self, key: &str) -> bool {
        self.redact.iter().any(|r| contains_ci(key, r))
    }

    /// Whether any key inside `v` would be redacted, or `v` might be over the size limit.
    fn needs_work(&self, v: &Value) -> bool {
        let mut budget = self.max_value_bytes;
        self.has_secret(v) || !fits(v, &mut budget)
    }

    fn has_secret(&self, v: &Value) -> bool {
        match v {
            Value::Object(m) => m.iter().any(|(k, v)| self.is_secret(k) || self.has_secret(v)),
            Value::Array(a) => a.iter().any(|v| self.has_secret(v)),
            _ => false,
        }
    }

    /// The trace as it may leave the process, sharing `trace` when nothing needs changing
    /// (no mask hook, no secret-looking key, no oversized value): the common case costs a
    /// scan, not a copy.
    pub fn apply_shared(&self, trace: std::sync::Arc<TraceRecord>) -> std::sync::Arc<TraceRecord> {
        let t = &*trace;
        let dirty = self.mask.is_some()
            || self.needs_work(&t.input)
            || self.needs_work(&t.output)
            || t.metadata.iter().any(|(k, v)| self.is_secret(k) || self.needs_work(v))
            || t.spans.iter().any(|s| {
                s.input.as_ref().is_some_and(|v| self.needs_work(v))
                    || s.output.as_ref().is_some_and(|v| self.needs_work(v))
                    || s.attributes.iter().any(|(k, v)| self.is_secret(k) || self.has_secret(v))
            });
        if dirty {
            std::sync::Arc::new(self.apply(t))
        } else {
            trace
        }
    }

    fn redact_value(&self, v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| {
                        if self.is_secret(&k) {
                            (k, Value::String(REDACTED.into()))
                        } else {
                            let v = self.redact_value(v);
                            (k, v)
                        }
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(|v| self.redact_value(v)).collect()),
            other => other,
        }
    }

    fn scrub_map(&self, m: &mut serde_json::Map<String, Value>) {
        let taken = std::mem::take(m);
        for (k, v) in taken {
            let v = if self.is_secret(&k) { Value::String(REDACTED.into()) } else { self.scrub(v) };
            m.insert(k, v);
        }
    }

    /// The trace as it may leave the process: every input, output, metadata and attribute
    /// value scrubbed, values over the size limit truncated with a marker.
    pub fn apply(&self, trace: &TraceRecord) -> TraceRecord {
        let mut t = trace.clone();
        let plain = self.mask.is_none() && self.redact.is_empty();
        if !plain {
            t.input = self.scrub(std::mem::take(&mut t.input));
            t.output = self.scrub(std::mem::take(&mut t.output));
            self.scrub_map(&mut t.metadata);
            for s in &mut t.spans {
                if let Some(v) = s.input.take() {
                    s.input = Some(self.scrub(v));
                }
                if let Some(v) = s.output.take() {
                    s.output = Some(self.scrub(v));
                }
                self.scrub_map(&mut s.attributes);
            }
        }
        limit_values(&t, self.max_value_bytes).unwrap_or(t)
    }
}

/// ASCII case-insensitive substring test; `needle` is lowercase.
fn contains_ci(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// Whether `v` serialises to at most `budget` bytes, by an upper bound (6 bytes per string
/// byte covers any escape); consumes the budget as it goes.
fn fits(v: &Value, budget: &mut usize) -> bool {
    let mut take = |n: usize| match budget.checked_sub(n) {
        Some(rest) => {
            *budget = rest;
            true
        }
        None => false,
    };
    match v {
        Value::Null | Value::Bool(_) => take(5),
        Value::Number(_) => take(24),
        Value::String(s) => take(2 + 6 * s.len()),
        Value::Array(a) => take(2 + a.len()) && a.iter().all(|v| fits(v, budget)),
        Value::Object(m) => {
            take(2)
                && m.iter().all(|(k, v)| {
                    let mut b = budget.checked_sub(4 + 6 * k.len());
                    match b.as_mut() {
                        Some(rest) => {
                            let ok = fits(v, rest);
                            *budget = *rest;
                            ok
                        }
                        None => false,
                    }
                })
        }
    }
}
