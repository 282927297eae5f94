//! What leaves the process: masking, redaction of secret-looking keys and credential-shaped
//! values, a depth and a size limit on values, and deterministic sampling by trace id.
//!
//! One rule set, applied by every destination (the trace file, Langfuse, OTLP, the spool and
//! the debug output); the same rules scrub the backend answers that go into logs and reports.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::limit_values;
use crate::trace::model::{depth_marker, drop_deep, MAX_DEPTH};
use crate::trace::{SpanStatus, TraceId, TraceRecord};

/// The keys redacted by default. Keys are compared case-insensitively with `_`, `-`, `.` and
/// spaces removed (`apiKey` = `api_key` = `API-KEY`), and a key is secret when it contains
/// one of these: `client_secret`, `x-api-key`, `set-cookie` and `refresh_token` all are.
pub const DEFAULT_REDACTED_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "private_key",
    "authorization",
    "cookie",
    "bearer",
    "credential",
];

/// The value that replaces a redacted one.
pub const REDACTED: &str = "<redacted>";

/// A user function applied to every input, output and metadata value before export.
pub type MaskFn = Arc<dyn Fn(Value) -> Value + Send + Sync>;

/// The privacy rules of an exporter: a masking hook, redacted keys, credential-shaped values,
/// known secret values, depth and size limits, and a sample rate.
///
/// ```
/// use flowtrace::export::Privacy;
/// let p = Privacy::default();
/// let v = p.scrub(serde_json::json!({"user": "ann", "apiKey": "k-1", "nested": {"Password": "x"},
///     "header": "Bearer abcdefgh12345678"}));
/// assert_eq!(v, serde_json::json!({"user": "ann", "apiKey": "<redacted>",
///     "nested": {"Password": "<redacted>"}, "header": "Bearer <redacted>"}));
/// ```
#[derive(Clone)]
pub struct Privacy {
    mask: Option<MaskFn>,
    /// Normalised key fragments (see [`normalise`]).
    redact: Vec<String>,
    /// The same, grouped by first byte (kept in step with `redact`).
    redact_index: Arc<KeyIndex>,
    /// Whether credential-shaped strings are redacted whatever their key.
    values: bool,
    /// Exact values never to let out (the exporter's own keys, for one).
    secrets: Vec<String>,
    /// What a string scan looks for, in one pass (kept in step with `secrets` and `values`).
    scan: Arc<StrScan>,
    max_value_bytes: usize,
    max_depth: usize,
    sample_rate: f64,
}

impl fmt::Debug for Privacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Privacy")
            .field("mask", &self.mask.as_ref().map(|_| "<fn>"))
            .field("redact", &self.redact)
            .field("values", &self.values)
            .field("secrets", &self.secrets.len())
            .field("max_value_bytes", &self.max_value_bytes)
            .field("max_depth", &self.max_depth)
            .field("sample_rate", &self.sample_rate)
            .finish()
    }
}

impl Default for Privacy {
    fn default() -> Self {
        Privacy {
            mask: None,
            redact: DEFAULT_REDACTED_KEYS.iter().map(|s| normalise(s)).collect(),
            redact_index: Arc::new(KeyIndex::new(DEFAULT_REDACTED_KEYS.iter().map(|s| normalise(s)))),
            values: true,
            secrets: Vec::new(),
            scan: Arc::new(StrScan::new(&[], true)),
            max_value_bytes: 1_000_000,
            max_depth: MAX_DEPTH,
            sample_rate: 1.0,
        }
    }
}

impl Privacy {
    /// The rules a tracing configuration asks for: the default keys plus
    /// `FLOWTRACE_REDACT_KEYS`, value redaction unless `FLOWTRACE_REDACT_VALUES=false`, the
    /// value size limit, and the configured Langfuse keys (and their Basic form) as known
    /// secrets. Sampling stays with the tracer.
    pub fn from_config(cfg: &crate::trace::TracingConfig) -> Privacy {
        let mut p = Privacy::default()
            .with_extra_redacted_keys(cfg.redact_keys().iter().cloned())
            .with_value_redaction(cfg.redact_values())
            .with_max_value_bytes(cfg.max_value_bytes());
        if let (Some(pk), Some(sk)) = (cfg.public_key(), cfg.secret_key()) {
            p = p.with_secret_values([pk.to_owned(), sk.to_owned(), base64(format!("{pk}:{sk}").as_bytes())]);
        }
        p
    }

    /// Sets the masking hook (applied after redaction).
    ///
    /// It may be called from several threads at once, and more than once on the same value
    /// (an exporter whose encoder thread is descheduled prepares that trace again itself and
    /// keeps the first result), so it should be a pure function of its input.
    pub fn with_mask(mut self, mask: impl Fn(Value) -> Value + Send + Sync + 'static) -> Self {
        self.mask = Some(Arc::new(mask));
        self
    }
    /// Replaces the redacted key fragments (an empty list redacts no key).
    pub fn with_redacted_keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.redact = keys.into_iter().map(|k| normalise(&k.into())).filter(|k| !k.is_empty()).collect();
        self.redact_index = Arc::new(KeyIndex::new(self.redact.iter().cloned()));
        self
    }
    /// Adds key fragments to the redacted ones.
    pub fn with_extra_redacted_keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        for k in keys {
            let k = normalise(&k.into());
            if !k.is_empty() && !self.redact.contains(&k) {
                self.redact.push(k);
            }
        }
        self.redact_index = Arc::new(KeyIndex::new(self.redact.iter().cloned()));
        self
    }
    /// Whether credential-shaped strings (`Bearer …`, `Basic …`, `sk-…`, `pk-lf-…`, JWTs) are
    /// redacted whatever their key (default on).
    pub fn with_value_redaction(mut self, on: bool) -> Self {
        self.values = on;
        self.scan = Arc::new(StrScan::new(&self.secrets, on));
        self
    }
    /// Exact values replaced wherever they appear in a string (values shorter than 6
    /// characters are ignored: they would match ordinary text).
    pub fn with_secret_values<S: Into<String>>(mut self, values: impl IntoIterator<Item = S>) -> Self {
        for v in values {
            let v = v.into();
            if v.chars().count() >= 6 && !self.secrets.contains(&v) {
                self.secrets.push(v);
            }
        }
        // Longest first, so a value containing another is replaced whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.scan = Arc::new(StrScan::new(&self.secrets, self.values));
        self
    }
    /// Values larger than this (serialised) are replaced by a visible truncation marker.
    pub fn with_max_value_bytes(mut self, max: usize) -> Self {
        self.max_value_bytes = max;
        self
    }
    /// Values nested deeper than this are replaced by a visible marker (default
    /// [`MAX_DEPTH`]; at least 1).
    pub fn with_max_depth(mut self, max: usize) -> Self {
        self.max_depth = max.max(1);
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

    /// Caps the depth, redacts secret keys and credential-shaped values, then applies the
    /// mask hook, to one value.
    pub fn scrub(&self, mut v: Value) -> Value {
        cap_depth(&mut v, self.max_depth);
        self.redact_in_place(&mut v);
        match &self.mask {
            Some(mask) => {
                let m = Arc::clone(mask);
                let mut v = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || m(v)))
                    .unwrap_or_else(|_| Value::String("<fully masked: the mask function panicked>".into()));
                cap_depth(&mut v, self.max_depth);
                v
            }
            None => v,
        }
    }

    /// `text` as it may go into a log line or a report: values after secret-looking names
    /// (`Authorization: …`, `"x-api-key": "…"`, `password=…`), known secrets and
    /// credential-shaped tokens redacted, whitespace collapsed, at most `max_chars` long.
    pub fn scrub_text(&self, text: &str, max_chars: usize) -> String {
        let mut s = redact_fields(text, &self.redact);
        s = self.scrub_str(&s, true).unwrap_or(s);
        let mut out = String::with_capacity(s.len().min(max_chars + 4));
        let mut n = 0;
        let mut space = false;
        for c in s.chars() {
            if c.is_whitespace() || c.is_control() {
                space = !out.is_empty();
                continue;
            }
            if n >= max_chars {
                out.push('…');
                break;
            }
            if space {
                out.push(' ');
                n += 1;
                space = false;
            }
            out.push(c);
            n += 1;
        }
        out
    }

    fn is_secret(&self, key: &str) -> bool {
        !self.redact.is_empty() && self.redact_index.matches_cached(key)
    }

    /// The string with known secrets and (when on, or `force`d) credential-shaped tokens
    /// redacted; `None` when nothing needed redacting.
    fn scrub_str(&self, s: &str, force: bool) -> Option<String> {
        let mut out: Option<String> = None;
        for secret in &self.secrets {
            let cur = out.as_deref().unwrap_or(s);
            if cur.contains(secret.as_str()) {
                out = Some(cur.replace(secret.as_str(), REDACTED));
            }
        }
        if self.values || force {
            let cur = out.as_deref().unwrap_or(s);
            if let Some(r) = redact_credentials(cur) {
                out = Some(r);
            }
        }
        out
    }

    /// Whether `s` holds a known secret or (when on) a credential-shaped token: one pass over
    /// its bytes for both.
    fn str_dirty(&self, s: &str) -> bool {
        self.scan.dirty(s.as_bytes())
    }

    /// Whether `v` needs any change: a secret key not yet redacted, a string to scrub, too
    /// deep, or perhaps over the size limit. Iterative: any depth is safe to look at.
    fn needs_work<'t>(&self, v: &'t Value, walk: &mut Walk<'t, '_>) -> bool {
        let mut budget = self.max_value_bytes;
        let mut take = |n: usize| match budget.checked_sub(n) {
            Some(rest) => {
                budget = rest;
                true
            }
            None => false,
        };
        // A plain value needs no stack (most inputs and outputs of small nodes are one).
        match v {
            Value::Null | Value::Bool(_) => return self.max_value_bytes < 5,
            Value::Number(_) => return self.max_value_bytes < 24,
            Value::String(s) => return self.max_value_bytes < 2 + 6 * s.len() || self.str_dirty(s),
            Value::Array(_) | Value::Object(_) => {}
        }
        // One stack for the whole trace (the caller's): left empty on `false`.
        let Walk { stack, keys } = walk;
        stack.clear();
        stack.push((v, 1));
        while let Some((v, depth)) = stack.pop() {
            match v {
                Value::Null | Value::Bool(_) => {
                    if !take(5) {
                        return true;
                    }
                }
                Value::Number(_) => {
                    if !take(24) {
                        return true;
                    }
                }
                // 6 bytes per string byte covers any escape.
                Value::String(s) => {
                    if !take(2 + 6 * s.len()) || self.str_dirty(s) {
                        return true;
                    }
                }
                Value::Array(a) => {
                    if (depth > self.max_depth && !a.is_empty()) || !take(2 + a.len()) {
                        return true;
                    }
                    stack.extend(a.iter().map(|v| (v, depth + 1)));
                }
                Value::Object(m) => {
                    if (depth > self.max_depth && !m.is_empty()) || !take(2) {
                        return true;
                    }
                    for (k, v) in m {
                        if !take(4 + 6 * k.len()) || (self.secret_in(keys, k) && !is_redacted(v)) {
                            return true;
                        }
                        stack.push((v, depth + 1));
                    }
                }
            }
        }
        false
    }

    fn map_dirty<'t>(&self, m: &'t serde_json::Map<String, Value>, walk: &mut Walk<'t, '_>) -> bool {
        m.iter().any(|(k, v)| (self.secret_in(&mut walk.keys, k) && !is_redacted(v)) || self.needs_work(v, walk))
    }

    /// [`is_secret`](Self::is_secret), with the thread's cache of key answers in hand when
    /// the caller holds it.
    fn secret_in(&self, keys: &mut Option<&mut KeyCache>, key: &str) -> bool {
        !self.redact.is_empty()
            && match keys {
                Some(c) => self.redact_index.matches_in(c, key),
                None => self.redact_index.matches_cached(key),
            }
    }

    fn status_dirty(&self, s: &SpanStatus) -> bool {
        match s {
            SpanStatus::Ok => false,
            SpanStatus::Error { message, chain, location, .. } => {
                self.str_dirty(message)
                    || chain.iter().any(|c| self.str_dirty(c))
                    || location.as_deref().is_some_and(|l| self.str_dirty(l))
            }
            SpanStatus::Cancelled { reason } => self.str_dirty(reason),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    fn scrub_status(&self, s: &mut SpanStatus) {
        let fix = |x: &mut String| {
            if let Some(r) = self.scrub_str(x, false) {
                *x = r;
            }
        };
        match s {
            SpanStatus::Ok => {}
            SpanStatus::Error { message, chain, location, .. } => {
                fix(message);
                chain.iter_mut().for_each(fix);
                if let Some(l) = location.as_mut() {
                    fix(l);
                }
            }
            SpanStatus::Cancelled { reason } => fix(reason),
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// The trace as it may leave the process, sharing `trace` when nothing needs changing
    /// (no mask hook, no secret-looking key or value, nothing too deep or too large): the
    /// common case costs a scan, not a copy. Applying it twice changes nothing the second time.
    pub fn apply_shared(&self, trace: Arc<TraceRecord>) -> Arc<TraceRecord> {
        let dirty = self.mask.is_some() || self.dirty_except(&trace, false, |_| false);
        if dirty {
            Arc::new(self.apply(&trace))
        } else {
            trace
        }
    }

    /// Whether anything in `t` needs work (see [`apply_shared`](Self::apply_shared)) other
    /// than the inputs and outputs a [`ValueScan`] looks at: the trace's own when
    /// `trace_values`, a span's when `span_values` says so. The mask hook is not looked at.
    pub(crate) fn dirty_except(
        &self,
        t: &TraceRecord,
        trace_values: bool,
        span_values: impl Fn(&crate::trace::SpanRecord) -> bool,
    ) -> bool {
        // The thread's cache of key answers is taken once for the trace, not once a key.
        KEY_CACHE.with(|c| match c.try_borrow_mut() {
            Ok(mut c) => self.dirty_in(t, trace_values, &span_values, Some(&mut c)),
            Err(_) => self.dirty_in(t, trace_values, &span_values, None),
        })
    }

    /// [`dirty_except`](Self::dirty_except) with the key cache, if it was free.
    fn dirty_in(
        &self,
        t: &TraceRecord,
        trace_values: bool,
        span_values: &impl Fn(&crate::trace::SpanRecord) -> bool,
        keys: Option<&mut KeyCache>,
    ) -> bool {
        let mut walk = Walk { stack: Vec::new(), keys };
        let st = &mut walk;
        (!trace_values && (self.needs_work(&t.input, st) || self.needs_work(&t.output, st)))
            || self.map_dirty(&t.metadata, st)
            || self.status_dirty(&t.status)
            || t.spans.iter().any(|s| {
                (!span_values(s)
                    && (s.input.as_ref().is_some_and(|v| self.needs_work(v, st))
                        || s.output.as_ref().is_some_and(|v| self.needs_work(v, st))))
                    || self.map_dirty(&s.attributes, st)
                    || self.status_dirty(&s.status)
            })
    }

    /// Whether a mask hook is set (it may change any value).
    pub(crate) fn masks(&self) -> bool {
        self.mask.is_some()
    }

    /// `f` given a check of inputs and outputs as an encoder writes them (see
    /// [`ValueScan`]), which holds this thread's cache of key answers for the while (not
    /// looked up again for every key); `None` with a mask hook, which may change any value.
    pub(crate) fn with_scan<R>(&self, f: impl FnOnce(&mut ValueScan<'_>) -> R) -> Option<R> {
        if self.mask.is_some() {
            return None;
        }
        Some(KEY_CACHE.with(|c| match c.try_borrow_mut() {
            Ok(mut c) => f(&mut ValueScan { privacy: self, cache: Some(&mut c), dirty: false }),
            Err(_) => f(&mut ValueScan { privacy: self, cache: None, dirty: false }),
        }))
    }

    /// Redacts in place; `v` is already within the depth limit, so recursion is bounded.
    fn redact_in_place(&self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if self.is_secret(k) {
                        if !is_redacted(v) {
                            *v = Value::String(REDACTED.into());
                        }
                    } else {
                        self.redact_in_place(v);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| self.redact_in_place(v)),
            Value::String(s) => {
                if let Some(r) = self.scrub_str(s, false) {
                    *s = r;
                }
            }
            _ => {}
        }
    }

    fn scrub_map(&self, m: &mut serde_json::Map<String, Value>) {
        for (k, v) in m.iter_mut() {
            if self.is_secret(k) {
                *v = Value::String(REDACTED.into());
            } else {
                *v = self.scrub(std::mem::take(v));
            }
        }
    }

    /// The trace as it may leave the process: every input, output, metadata and attribute
    /// value scrubbed, error messages scrubbed, values too deep or over the size limit
    /// replaced by a marker.
    pub fn apply(&self, trace: &TraceRecord) -> TraceRecord {
        let mut t = trace.clone();
        t.input = self.scrub(std::mem::take(&mut t.input));
        t.output = self.scrub(std::mem::take(&mut t.output));
        self.scrub_map(&mut t.metadata);
        self.scrub_status(&mut t.status);
        for s in &mut t.spans {
            if let Some(v) = s.input.take() {
                s.input = Some(self.scrub(v));
            }
            if let Some(v) = s.output.take() {
                s.output = Some(self.scrub(v));
            }
            self.scrub_map(&mut s.attributes);
            self.scrub_status(&mut s.status);
        }
        limit_values(&t, self.max_value_bytes).unwrap_or(t)
    }
}

/// [`Privacy::needs_work`] for values an encoder writes, riding on the writer's walk: it is
/// shown every string, entry and container the writer writes, and the length of each value's
/// JSON text, and says whether any of it needs work (a string to scrub, a secret key not yet
/// redacted, too deep, or over the size limit, which [`limit_values`] measures by that same
/// text). Not dirty means [`Privacy::apply`] would leave those values as they are.
pub(crate) struct ValueScan<'p> {
    privacy: &'p Privacy,
    /// The thread's cache of key answers, when it was free.
    cache: Option<&'p mut KeyCache>,
    dirty: bool,
}

impl ValueScan<'_> {
    /// Whether something seen needs work.
    pub(crate) fn dirty(&self) -> bool {
        self.dirty
    }
}

// Inlined into the writer's walk: called for every string, key and container written.
impl super::otlp::Watch for ValueScan<'_> {
    #[inline]
    fn string(&mut self, s: &str) {
        self.dirty = self.dirty || self.privacy.str_dirty(s);
    }
    #[inline]
    fn key(&mut self, k: &str, v: &Value) {
        if self.dirty || self.privacy.redact.is_empty() {
            return;
        }
        let ix = &self.privacy.redact_index;
        let secret = match self.cache.as_deref_mut() {
            Some(c) => ix.matches_in(c, k),
            None => ix.matches_cached(k),
        };
        self.dirty = secret && !is_redacted(v);
    }
    #[inline]
    fn container(&mut self, depth: usize, nonempty: bool) -> bool {
        self.dirty = self.dirty || (nonempty && depth > self.privacy.max_depth);
        !self.dirty
    }
    #[inline]
    fn value(&mut self, len: usize) {
        self.dirty = self.dirty || len > self.privacy.max_value_bytes;
    }
    #[inline]
    fn stopped(&self) -> bool {
        self.dirty
    }
}

/// What [`Privacy::needs_work`] walks a trace's values with: one stack for them all, and the
/// thread's cache of key answers when it was free.
struct Walk<'t, 'c> {
    stack: Vec<(&'t Value, usize)>,
    keys: Option<&'c mut KeyCache>,
}

/// The string scan of [`Privacy::needs_work`]: known secrets and credential-shaped tokens
/// looked for in one pass, stopping only at bytes one of them can start with.
#[derive(Debug)]
struct StrScan {
    /// Per byte value: [`CRED`] when a credential can start with it, [`SECRET`] when a
    /// secret does.
    starts: [u8; 256],
    /// Secrets as bytes, longest first.
    secrets: Vec<Box<[u8]>>,
    /// Shorter strings cannot hold anything looked for.
    min_len: usize,
    /// Bytes one of which every match holds (see [`StrScan::new`]); a string with none of
    /// them is passed eight bytes at a time. `None` when there would be too many to test.
    filter: Option<Vec<u8>>,
}

/// How rare a byte is in ordinary text, lower is rarer: punctuation, capitals, digits, then
/// lower-case letters from the rarest.
fn rarity(c: u8) -> usize {
    const LOWER: &[u8] = b"zqxjkvbpygfwmucldrhsnioate";
    match c {
        b'A'..=b'Z' => 1,
        b'0'..=b'9' => 2,
        b'a'..=b'z' => 3 + LOWER.iter().position(|&l| l == c).unwrap_or(0),
        _ => 0,
    }
}

/// Whether `b` (at least eight bytes) holds one of `bytes`: eight bytes at a time, each
/// tested against all of them at once (SWAR: a zero byte of `word ^ c` sets its high bit).
fn has_any(b: &[u8], bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    debug_assert!(b.len() >= 8);
    let hit = |w: u64| {
        bytes.iter().fold(0, |acc, &c| {
            let x = w ^ (ONES * u64::from(c));
            acc | (x.wrapping_sub(ONES) & !x & HIGH)
        }) != 0
    };
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let mut i = 0;
    while i + 8 <= b.len() {
        if hit(word(i)) {
            return true;
        }
        i += 8;
    }
    // The last eight bytes (some tested already, which changes nothing).
    i < b.len() && hit(word(b.len() - 8))
}

const CRED: u8 = 1;
const SECRET: u8 = 2;

impl StrScan {
    fn new(secrets: &[String], values: bool) -> Self {
        let mut starts = [0u8; 256];
        let mut min_len = usize::MAX;
        if values {
            for c in 0..=255u8 {
                if starts_credential(c) {
                    starts[c as usize] |= CRED;
                }
            }
            min_len = MIN_CREDENTIAL;
        }
        for x in secrets {
            if let Some(&c) = x.as_bytes().first() {
                starts[c as usize] |= SECRET;
                min_len = min_len.min(x.len());
            }
        }
        // Every credential holds one of these: `Bearer` and `Basic` start with `b` or `B`,
        // `sk-` and `pk-lf-` keys hold `-`, a JWT starts `eyJ`; a secret holds its rarest byte.
        let mut filter: Vec<u8> = if values { b"bB-J".to_vec() } else { Vec::new() };
        for x in secrets {
            if let Some(&c) = x.as_bytes().iter().min_by_key(|&&c| rarity(c)) {
                if !filter.contains(&c) {
                    filter.push(c);
                }
            }
        }
        let filter = (filter.len() <= 8).then_some(filter);
        StrScan { starts, secrets: secrets.iter().map(|x| x.as_bytes().into()).collect(), min_len, filter }
    }

    /// What `secrets.iter().any(|x| s.contains(x)) || !credential_spans(s, true).is_empty()`
    /// says (the latter only with value redaction on), in one pass: a credential starts a
    /// word, and before the first one every word start is tried, so trying each word start
    /// in turn finds the same.
    fn dirty(&self, b: &[u8]) -> bool {
        if b.len() < self.min_len {
            return false;
        }
        if let Some(f) = &self.filter {
            if b.len() >= 8 && !has_any(b, f) {
                return false;
            }
        }
        let cred_ok = b.len() >= MIN_CREDENTIAL;
        for (i, &c) in b.iter().enumerate() {
            let f = self.starts[c as usize];
            if f == 0 {
                continue;
            }
            if f & CRED != 0 && cred_ok && (i == 0 || !is_word_byte(b[i - 1])) && credential_at(b, i).is_some() {
                return true;
            }
            if f & SECRET != 0 {
                let rest = &b[i..];
                if self.secrets.iter().any(|x| rest.len() >= x.len() && rest[1] == x[1] && rest.starts_with(x)) {
                    return true;
                }
            }
        }
        false
    }
}

fn is_redacted(v: &Value) -> bool {
    v.as_str() == Some(REDACTED)
}

/// A key as compared with the redaction list: ASCII lowercase, without `_ - . ` and spaces.
fn normalise(key: &str) -> String {
    key.bytes().filter(|b| !matches!(b, b'_' | b'-' | b'.' | b' ')).map(|b| b.to_ascii_lowercase() as char).collect()
}

/// `key` as compared with the redaction list (see [`normalise`]), on the stack for keys up
/// to 128 bytes.
fn with_normalised<R>(key: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut buf = [0u8; 128];
    let mut heap = Vec::new();
    let mut n = 0;
    for b in key.bytes().filter(|b| !matches!(b, b'_' | b'-' | b'.' | b' ')) {
        let b = b.to_ascii_lowercase();
        if n < buf.len() {
            buf[n] = b;
        } else {
            if heap.is_empty() {
                heap.extend_from_slice(&buf);
            }
            heap.push(b);
        }
        n += 1;
    }
    f(if heap.is_empty() { &buf[..n] } else { &heap })
}

/// Whether `key`, normalised, contains one of `fragments` (already normalised).
fn contains_normalised(key: &str, fragments: &[String]) -> bool {
    with_normalised(key, |hay| {
        fragments.iter().any(|f| {
            let f = f.as_bytes();
            !f.is_empty() && hay.len() >= f.len() && hay.windows(f.len()).any(|w| w == f)
        })
    })
}

/// Normalised key fragments grouped by their first byte: every key of every exported value
/// is checked, so a check looks only where a fragment can start, and there only at the
/// fragments starting with that byte.
#[derive(Debug, Default)]
struct KeyIndex {
    /// Tells indexes apart in the per-thread cache of answers.
    id: u64,
    /// A bit per byte value that starts some fragment.
    first: [u64; 4],
    groups: Vec<(u8, Vec<Box<[u8]>>)>,
}

/// Slots of the per-thread cache of key answers (a power of two).
const KEY_SLOTS: usize = 1024;

/// The answers for keys seen on this thread, for one index (its id): direct-mapped, a key's
/// slot chosen from its length and its first and last eight bytes, a newer key in the same
/// slot replacing an older one. The same few field names come back in every trace.
struct KeyCache {
    id: u64,
    slots: Vec<Option<CachedKey>>,
}

/// A key and its answer, with its first and last eight bytes (see [`key_words`]): for keys of
/// up to 16 bytes those words and the length are the key, so no comparison of bytes is needed.
#[derive(Clone)]
struct CachedKey {
    words: (u64, u64),
    key: Box<str>,
    matches: bool,
}

thread_local! {
    static KEY_CACHE: std::cell::RefCell<KeyCache> = const { std::cell::RefCell::new(KeyCache { id: 0, slots: Vec::new() }) };
}

/// A key's first and last eight bytes as words (the same, zero-padded, below eight bytes).
fn key_words(k: &[u8]) -> (u64, u64) {
    // Fixed-size copies (a load each), not a copy of a length known only at run time (a call).
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        u64::from_le_bytes(w)
    };
    if k.len() >= 8 {
        (word(k), word(&k[k.len() - 8..]))
    } else if k.len() >= 4 {
        // Two overlapping four-byte loads, the second shifted down past the bytes they share.
        let n = k.len();
        let half = |at: usize| u64::from(u32::from_le_bytes([k[at], k[at + 1], k[at + 2], k[at + 3]]));
        let w = half(0) | (half(n - 4) >> (8 * (8 - n))) << 32;
        (w, w)
    } else {
        let w = k.iter().enumerate().fold(0u64, |w, (i, &c)| w | u64::from(c) << (8 * i));
        (w, w)
    }
}

/// The cache slot of a key (at most 64 bytes) from its length and [`key_words`].
fn key_slot(len: usize, (head, tail): (u64, u64)) -> usize {
    let h = (head ^ tail.rotate_left(29) ^ len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 54) as usize & (KEY_SLOTS - 1)
}

impl KeyIndex {
    fn new(fragments: impl IntoIterator<Item = String>) -> Self {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut ix = KeyIndex { id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed), ..Default::default() };
        for f in fragments {
            let Some(&b) = f.as_bytes().first() else { continue };
            ix.first[(b >> 6) as usize] |= 1 << (b & 63);
            match ix.groups.iter_mut().find(|(g, _)| *g == b) {
                Some((_, list)) => list.push(f.into_bytes().into()),
                None => ix.groups.push((b, vec![f.into_bytes().into()])),
            }
        }
        ix
    }

    /// [`matches`](Self::matches), remembered per thread for keys of up to 64 bytes (at most
    /// [`KEY_SLOTS`] of them).
    fn matches_cached(&self, key: &str) -> bool {
        if key.len() > 64 {
            return self.matches(key);
        }
        KEY_CACHE.with(|c| match c.try_borrow_mut() {
            Ok(mut c) => self.matches_in(&mut c, key),
            Err(_) => self.matches(key),
        })
    }

    /// [`matches_cached`](Self::matches_cached) with the thread's cache in hand.
    fn matches_in(&self, c: &mut KeyCache, key: &str) -> bool {
        if key.len() > 64 {
            return self.matches(key);
        }
        if c.id != self.id || c.slots.is_empty() {
            c.slots.clear();
            c.slots.resize(KEY_SLOTS, None);
            c.id = self.id;
        }
        let words = key_words(key.as_bytes());
        let slot = &mut c.slots[key_slot(key.len(), words)];
        if let Some(s) = slot {
            if s.words == words && s.key.len() == key.len() && (key.len() <= 16 || *s.key == *key) {
                return s.matches;
            }
        }
        let m = self.matches(key);
        *slot = Some(CachedKey { words, key: key.into(), matches: m });
        m
    }

    /// Whether `key`, normalised, contains one of the fragments. Normalises on the fly: a
    /// fragment has no separators, so no occurrence starts at one.
    fn matches(&self, key: &str) -> bool {
        let k = key.as_bytes();
        (0..k.len()).any(|i| {
            let b = k[i].to_ascii_lowercase();
            self.first[(b >> 6) as usize] & (1 << (b & 63)) != 0
                && self.groups.iter().any(|(g, list)| *g == b && list.iter().any(|f| starts_normalised(&k[i..], f)))
        })
    }
}

/// Whether `key`, normalised, starts with `fragment` (normalised already).
fn starts_normalised(key: &[u8], fragment: &[u8]) -> bool {
    let mut want = fragment.iter();
    for &c in key {
        if matches!(c, b'_' | b'-' | b'.' | b' ') {
            continue;
        }
        match want.next() {
            Some(&w) if w == c.to_ascii_lowercase() => {}
            Some(_) => return false,
            None => return true,
        }
    }
    want.next().is_none()
}

/// Replaces nested values deeper than `max` levels by a marker, in place and without
/// recursion; what is cut off is dropped without recursion too.
pub(crate) fn cap_depth(v: &mut Value, max: usize) {
    let mut stack: Vec<(&mut Value, usize)> = vec![(v, 1)];
    while let Some((v, depth)) = stack.pop() {
        let nonempty = match &*v {
            Value::Array(a) => !a.is_empty(),
            Value::Object(m) => !m.is_empty(),
            _ => false,
        };
        if nonempty && depth > max {
            drop_deep(std::mem::replace(v, depth_marker(max)));
            continue;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter_mut().map(|v| (v, depth + 1))),
            Value::Object(m) => stack.extend(m.iter_mut().map(|(_, v)| (v, depth + 1))),
            _ => {}
        }
    }
}

/// Standard base64 with padding (how HTTP Basic credentials are sent).
pub(crate) fn base64(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')
}

fn starts_with_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay[..needle.len()].eq_ignore_ascii_case(needle)
}

/// The shortest credential [`credential_at`] finds takes 14 bytes (`Basic ` and 8, `pk-lf-`
/// and 8); most strings in a trace are shorter.
const MIN_CREDENTIAL: usize = 14;

/// Whether a credential pattern can start with this byte (at the start of a word).
fn starts_credential(c: u8) -> bool {
    matches!(c, b'b' | b'B' | b's' | b'p' | b'e')
}

/// The credential-shaped token starting at `i` (a word start whose byte passes
/// [`starts_credential`]), as the byte range to hide and where scanning resumes: the
/// credentials after `Bearer ` or `Basic `, `sk-…` and `pk-lf-…` keys, and JWTs.
fn credential_at(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let rest = &b[i..];
    // `Bearer <token>` / `Basic <token>`: keep the scheme, hide the credentials.
    let scheme = [&b"bearer"[..], &b"basic"[..]].into_iter().find(|w| starts_with_ci(rest, w));
    if let Some(w) = scheme {
        let mut j = i + w.len();
        let sep = j;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        let from = j;
        while j < b.len() && is_token_byte(b[j]) {
            j += 1;
        }
        if j > sep && from > sep && j - from >= 8 {
            return Some((from, j));
        }
    }
    // API keys: `sk-…` (OpenAI, Anthropic, Langfuse secret keys) and `pk-lf-…`.
    let prefix = if rest.starts_with(b"pk-lf-") {
        Some((6, 8))
    } else if rest.starts_with(b"sk-") {
        Some((3, 16))
    } else {
        None
    };
    if let Some((len, min)) = prefix {
        let mut j = i + len;
        while j < b.len() && is_word_byte(b[j]) {
            j += 1;
        }
        if j - i - len >= min {
            return Some((i, j));
        }
    }
    // JWT: three base64url segments, the first a JSON object (`eyJ`).
    if rest.starts_with(b"eyJ") {
        let mut j = i;
        let mut segs = [0usize; 3];
        let mut seg = 0;
        while j < b.len() && seg < 3 {
            if b[j].is_ascii_alphanumeric() || b[j] == b'-' || b[j] == b'_' {
                segs[seg] += 1;
            } else if b[j] == b'.' && seg < 2 {
                seg += 1;
            } else {
                break;
            }
            j += 1;
        }
        if seg == 2 && segs[0] >= 10 && segs[1] >= 10 {
            return Some((i, j));
        }
    }
    None
}

/// The byte ranges of credential-shaped tokens in `s` (only the first when `first`), see
/// [`credential_at`].
fn credential_spans(s: &str, first: bool) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    if b.len() < MIN_CREDENTIAL {
        return out;
    }
    let mut i = 0;
    while i < b.len() {
        // Every pattern starts a word with one of these letters: the rest is skipped cheaply.
        if !starts_credential(b[i]) || (i > 0 && is_word_byte(b[i - 1])) {
            i += 1;
            continue;
        }
        match credential_at(b, i) {
            Some((from, to)) => {
                out.push((from, to));
                if first {
                    break;
                }
                i = to;
            }
            None => i += 1,
        }
    }
    out
}

/// `s` with credential-shaped tokens replaced by [`REDACTED`]; `None` when it has none.
fn redact_credentials(s: &str) -> Option<String> {
    let spans = credential_spans(s, false);
    if spans.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (from, to) in spans {
        out.push_str(&s[at..from]);
        out.push_str(REDACTED);
        at = to;
    }
    out.push_str(&s[at..]);
    Some(out)
}

/// Header names whose values are always credentials, whatever the redaction list says.
const CREDENTIAL_FIELDS: &[&str] = &["authorization", "cookie", "apikey", "token", "secret", "password"];

/// `text` with the value after every secret-looking name redacted: `Authorization: Basic …`
/// up to the end of the line, `"x-api-key": "…"` up to the closing quote, `token=…` up to
/// the next separator.
fn redact_fields(text: &str, fragments: &[String]) -> String {
    let fixed: Vec<String> = CREDENTIAL_FIELDS.iter().map(|s| s.to_string()).collect();
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut i = 0;
    while i < b.len() {
        if !is_word_byte(b[i]) || (i > 0 && is_word_byte(b[i - 1])) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && is_word_byte(b[j]) {
            j += 1;
        }
        let word = &text[i..j];
        if !(contains_normalised(word, fragments) || contains_normalised(word, &fixed)) {
            i = j;
            continue;
        }
        // name, optional closing quote, spaces, `:` or `=`, spaces, optional opening quote
        let mut k = j;
        if k < b.len() && (b[k] == b'"' || b[k] == b'\'') {
            k += 1;
        }
        while k < b.len() && b[k] == b' ' {
            k += 1;
        }
        if k >= b.len() || !(b[k] == b':' || b[k] == b'=') {
            i = j;
            continue;
        }
        k += 1;
        while k < b.len() && b[k] == b' ' {
            k += 1;
        }
        let quote = (k < b.len() && (b[k] == b'"' || b[k] == b'\'')).then(|| b[k]);
        if quote.is_some() {
            k += 1;
        }
        let from = k;
        while k < b.len() {
            let c = b[k];
            let stop = match quote {
                Some(q) => c == q && b[k - 1] != b'\\',
                None => matches!(c, b'\r' | b'\n' | b'<' | b'&' | b'"' | b',' | b'}'),
            };
            if stop {
                break;
            }
            k += 1;
        }
        if k > from {
            out.push_str(&text[at..from]);
            out.push_str(REDACTED);
            at = k;
        }
        i = k.max(j);
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_cache_slot_comes_from_its_length_and_its_first_and_last_eight_bytes() {
        let reference = |k: &[u8]| {
            let word = |b: &[u8]| {
                let mut w = [0u8; 8];
                let n = b.len().min(8);
                w[..n].copy_from_slice(&b[..n]);
                u64::from_le_bytes(w)
            };
            let (head, tail) = (word(k), word(&k[k.len().saturating_sub(8)..]));
            let h = (head ^ tail.rotate_left(29) ^ k.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            (h >> 54) as usize & (KEY_SLOTS - 1)
        };
        let text: Vec<u8> = (0..64u8).map(|i| b'a' + i % 26).collect();
        for n in 0..=64 {
            let k = &text[..n];
            assert_eq!(key_slot(n, key_words(k)), reference(k), "{n} bytes");
        }
    }

    #[test]
    fn the_shortest_credentials_are_found() {
        for s in ["Basic abcdefgh", "pk-lf-abcdefgh", "sk-abcdefghijklmnop", "eyJabcdefgh.abcdefghij."] {
            assert_eq!(credential_spans(s, true).len(), 1, "{s}");
            assert!(credential_spans(&s[..s.len() - 1], true).is_empty(), "{s}");
        }
    }

    #[test]
    fn the_one_pass_string_scan_agrees_with_the_searches_it_replaces() {
        let secrets: Vec<String> =
            vec!["pk-lf-bench".into(), "sk-lf-bench-secret".into(), "cGstbGY6c2s=".into(), "plainsecretword".into()];
        let mut texts: Vec<String> = [
            "",
            "short",
            "plain text without anything in it at all",
            "Authorization: Bearer abcdefgh12345678",
            "bearer abcdefg",
            "xbearer abcdefgh12345678",
            "key sk-proj-0123456789abcdef0123 ok",
            "desk-lamp-0123456789abcdefgh",
            "pk-lf-1234abcd-5678",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_X",
            "the pk-lf-bench key",
            "xpk-lf-benchx",
            "pk-lf-benc",
            "sk-lf-bench-secre and more text here",
            "prefix cGstbGY6c2s=",
            "cGstbGY6c2s",
            "ünïcode sk-lf-bench-secret ✓",
            "Basic abcdefgh",
            "Basic abcdefg",
            "plain words with no marker bytes at all in them",
            "the plainsecretword inside",
            "secret!one and secret@two",
            "BEARER ABCDEFGH12345678",
            "text then bearer abcdefgh12345678",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every cut of every text: a pattern at either end, or cut short.
        let cuts: Vec<String> = texts
            .iter()
            .flat_map(|t| {
                (0..=t.len())
                    .filter(|&i| t.is_char_boundary(i))
                    .flat_map(move |i| [t[..i].to_string(), t[i..].to_string()])
            })
            .collect();
        texts.extend(cuts);
        // More secrets than the byte filter takes: the scan goes without it.
        let many: Vec<String> = ["secret!one", "secret@two", "secret#three", "secret$four", "secret%five"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(StrScan::new(&many, true).filter.is_none() && StrScan::new(&secrets, true).filter.is_some());
        for values in [true, false] {
            for secrets in [&secrets[..], &[], &many[..]] {
                let scan = StrScan::new(secrets, values);
                for t in &texts {
                    let want = secrets.iter().any(|x| t.contains(x.as_str()))
                        || (values && !credential_spans(t, true).is_empty());
                    assert_eq!(scan.dirty(t.as_bytes()), want, "{t:?} values={values} secrets={}", secrets.len());
                }
            }
        }
    }

    #[test]
    fn the_key_index_agrees_with_the_plain_search() {
        let keys = [
            "apiKey",
            "x-api-key",
            "customer_tier",
            "description",
            "access_token",
            "tok",
            "ppwd",
            "sessionid",
            "",
            "S.E.C.R.E.T",
            "changed_keys",
            "my_custom_field",
            &"k".repeat(200),
            &format!("{}secret", "x".repeat(130)),
        ];
        let lists: [Vec<String>; 3] = [
            DEFAULT_REDACTED_KEYS.iter().map(|s| normalise(s)).collect(),
            vec!["customfield".into(), "c".into(), "pwd".into()],
            Vec::new(),
        ];
        for list in &lists {
            let ix = KeyIndex::new(list.iter().cloned());
            for k in keys {
                assert_eq!(ix.matches(k), contains_normalised(k, list), "{k:?} in {list:?}");
                // Twice: the second answer comes from the cache.
                assert_eq!(ix.matches_cached(k), contains_normalised(k, list), "{k:?} in {list:?}");
                assert_eq!(ix.matches_cached(k), contains_normalised(k, list), "{k:?} in {list:?}");
            }
        }
        // More keys than the cache has slots: colliding keys replace each other, answers stay right.
        let ix = KeyIndex::new(lists[0].iter().cloned());
        let many: Vec<String> =
            (0..3 * KEY_SLOTS).map(|i| if i % 3 == 0 { format!("k{i}_token") } else { format!("field_{i}") }).collect();
        for _ in 0..2 {
            for k in &many {
                assert_eq!(ix.matches_cached(k), k.ends_with("token"), "{k}");
            }
        }
        // Longer than 16 bytes, alike in their first and last eight (so in one slot): told
        // apart by their bytes.
        let (a, b) = ("abcdefgh_token_12345678", "abcdefgh_tokex_12345678");
        assert_eq!(key_slot(a.len(), key_words(a.as_bytes())), key_slot(b.len(), key_words(b.as_bytes())));
        for _ in 0..2 {
            assert!(ix.matches_cached(a) && !ix.matches_cached(b));
        }
        let p = Privacy::default().with_extra_redacted_keys(["my-custom"]);
        assert!(p.is_secret("MY_CUSTOM_FIELD") && p.is_secret("api_key"));
        let p = Privacy::default().with_redacted_keys(["only"]);
        assert!(p.is_secret("not_only_this") && !p.is_secret("api_key"));
    }

    #[test]
    fn keys_match_whatever_their_spelling() {
        let p = Privacy::default();
        for k in [
            "apiKey",
            "x-api-key",
            "API_KEY",
            "private_key",
            "passwd",
            "pwd",
            "client_secret",
            "access_token",
            "refresh_token",
            "cookie",
            "Set-Cookie",
            "session_token",
            "bearer",
            "Authorization",
        ] {
            assert!(p.is_secret(k), "{k}");
        }
        for k in ["user", "name", "query", "answer"] {
            assert!(!p.is_secret(k), "{k}");
        }
    }

    #[test]
    fn credential_shaped_values_are_found_inside_text() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        for (s, want) in [
            ("Authorization: Bearer abcdefgh12345678", "Authorization: Bearer <redacted>"),
            ("key sk-proj-0123456789abcdef0123 ok", "key <redacted> ok"),
            ("pk-lf-1234abcd-5678", "<redacted>"),
            (&format!("token={jwt};"), "token=<redacted>;"),
        ] {
            assert_eq!(redact_credentials(s).as_deref(), Some(want), "{s}");
        }
        for s in ["scikit sk-learn", "Bearer x", "basic facts", "desk-lamp-0123456789abcdefgh"] {
            assert_eq!(redact_credentials(s), None, "{s}");
        }
    }

    #[test]
    fn echoed_headers_are_redacted_in_text() {
        let p = Privacy::default();
        let body = "{\"headers\":{\"authorization\":\"Basic cGs6c2s=\",\"x-api-key\":\"k123\"}}\nCookie: a=1; b=2\nok";
        let s = p.scrub_text(body, 300);
        assert!(!s.contains("cGs6c2s") && !s.contains("k123") && !s.contains("a=1"), "{s}");
        assert!(s.ends_with("ok"), "{s}");
        assert_eq!(p.scrub_text(&"x".repeat(500), 10), format!("{}…", "x".repeat(10)));
    }

    #[test]
    fn base64_matches_the_rfc() {
        assert_eq!(base64(b"pk:sk"), "cGs6c2s=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn depth_is_capped_without_recursion() {
        let mut v = Value::Null;
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        cap_depth(&mut v, 3);
        assert_eq!(v, serde_json::json!([[[depth_marker(3)]]]));
    }
}
