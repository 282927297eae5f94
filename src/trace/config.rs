//! Tracing configuration: the environment (and a `.env` file), with programmatic overrides.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub(super) use crate::error::ConfigError;

/// The default Langfuse host when keys are set without `LANGFUSE_HOST`.
pub const DEFAULT_LANGFUSE_HOST: &str = "https://cloud.langfuse.com";
/// The default local trace file, used when no Langfuse keys are set.
pub const DEFAULT_TRACE_FILE: &str = ".flowtrace/traces.jsonl";

/// How runs are traced and where traces go.
///
/// Read from the environment with [`from_env`](Self::from_env) (which also loads a `.env`
/// file from the current directory upward, never overriding variables already set), then
/// adjusted with the `with_*` setters.
///
/// | variable | alias (pocketflow-tracing) | default |
/// |---|---|---|
/// | `LANGFUSE_PUBLIC_KEY`, `LANGFUSE_SECRET_KEY` | | unset: traces go to the local file |
/// | `LANGFUSE_HOST` | | `https://cloud.langfuse.com` when keys are set |
/// | `FLOWTRACE_DEBUG` | `POCKETFLOW_TRACING_DEBUG` | `false` |
/// | `FLOWTRACE_TRACE_INPUTS` / `_OUTPUTS` / `_PREP` / `_EXEC` / `_POST` / `_ERRORS` | `POCKETFLOW_TRACE_*` | `true` |
/// | `FLOWTRACE_SAMPLE_RATE` | `LANGFUSE_SAMPLE_RATE` | `1.0` |
/// | `FLOWTRACE_MAX_VALUE_BYTES` | `LANGFUSE_MAX_EVENT_SIZE_BYTES` | `1000000` |
/// | `FLOWTRACE_TRACE_FILE` | | `.flowtrace/traces.jsonl` |
/// | `FLOWTRACE_SESSION_ID` / `FLOWTRACE_USER_ID` | `POCKETFLOW_SESSION_ID` / `POCKETFLOW_USER_ID` | unset |
/// | `FLOWTRACE_REDACT_KEYS` (comma-separated key names, added to the defaults) | | unset |
/// | `FLOWTRACE_REDACT_VALUES` (redact credential-shaped values whatever their key) | | `true` |
///
/// The exporters read theirs from the same variables ([`var`](Self::var)):
/// `LANGFUSE_INGESTION`, `LANGFUSE_TRACING_ENVIRONMENT`, `FLOWTRACE_SPOOL_DIR`,
/// `OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the README's
/// table lists them all).
///
/// Booleans accept `true/false`, `1/0`, `yes/no`, `on/off` (any case); anything else is an
/// error naming the variable, as is a rate outside 0..=1 or a size that is not a number.
///
/// ```
/// use flowtrace::trace::TracingConfig;
/// let cfg = TracingConfig::from_vars([("FLOWTRACE_DEBUG", "yes"), ("POCKETFLOW_TRACE_INPUTS", "false")]).unwrap();
/// assert!(cfg.debug());
/// assert!(!cfg.trace_inputs());
/// let err = TracingConfig::from_vars([("FLOWTRACE_SAMPLE_RATE", "2")]).unwrap_err();
/// assert_eq!(err.variable, "FLOWTRACE_SAMPLE_RATE");
/// ```
#[derive(Clone)]
pub struct TracingConfig {
    public_key: Option<String>,
    secret_key: Option<String>,
    host: Option<String>,
    debug: bool,
    trace_inputs: bool,
    trace_outputs: bool,
    trace_prep: bool,
    trace_exec: bool,
    trace_post: bool,
    trace_errors: bool,
    sample_rate: f64,
    max_value_bytes: usize,
    trace_file: Option<PathBuf>,
    session_id: Option<String>,
    user_id: Option<String>,
    redact_keys: Vec<String>,
    redact_values: bool,
    vars: HashMap<String, String>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            public_key: None,
            secret_key: None,
            host: None,
            debug: false,
            trace_inputs: true,
            trace_outputs: true,
            trace_prep: true,
            trace_exec: true,
            trace_post: true,
            trace_errors: true,
            sample_rate: 1.0,
            max_value_bytes: 1_000_000,
            trace_file: None,
            session_id: None,
            user_id: None,
            redact_keys: Vec::new(),
            redact_values: true,
            vars: HashMap::new(),
        }
    }
}

impl fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingConfig")
            .field("public_key", &self.public_key.as_deref().map(redact))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("debug", &self.debug)
            .field("trace_inputs", &self.trace_inputs)
            .field("trace_outputs", &self.trace_outputs)
            .field("trace_prep", &self.trace_prep)
            .field("trace_exec", &self.trace_exec)
            .field("trace_post", &self.trace_post)
            .field("trace_errors", &self.trace_errors)
            .field("sample_rate", &self.sample_rate)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("trace_file", &self.trace_file)
            .field("session_id", &self.session_id)
            .field("user_id", &self.user_id)
            .field("redact_keys", &self.redact_keys)
            .field("redact_values", &self.redact_values)
            .finish()
    }
}

/// `pk-lf-1234…` → `pk-lf-12…`: enough to recognise a key, never the whole of it.
fn redact(key: &str) -> String {
    let shown: String = key.chars().take(8).collect();
    format!("{shown}…")
}

fn parse_bool(var: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(var, v, "expected true/false (or 1/0, yes/no, on/off)")),
    }
}

impl TracingConfig {
    /// The defaults: local file, everything recorded, no debug output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the process environment, after loading `.env` from the current directory or
    /// the nearest parent that has one (variables already set win).
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_vars(std::env::vars())
    }

    /// Like [`from_env`](Self::from_env), loading the given `.env` file instead; a missing
    /// or unreadable file is an error.
    pub fn from_env_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        dotenvy::from_path(path)
            .map_err(|e| ConfigError::new("env file", path.display().to_string(), e.to_string()))?;
        Self::from_vars(std::env::vars())
    }

    /// Reads the given variables only (for tests and for embedding, without touching the
    /// process environment).
    pub fn from_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let get = |names: &[&str]| -> Option<(String, String)> {
            names.iter().find_map(|n| vars.get(*n).filter(|v| !v.trim().is_empty()).map(|v| (n.to_string(), v.clone())))
        };
        let mut c = TracingConfig::default();
        let boolean = |names: &[&str], default: bool| -> Result<bool, ConfigError> {
            match get(names) {
                Some((n, v)) => parse_bool(&n, &v),
                None => Ok(default),
            }
        };
        c.debug = boolean(&["FLOWTRACE_DEBUG", "POCKETFLOW_TRACING_DEBUG"], false)?;
        c.trace_inputs = boolean(&["FLOWTRACE_TRACE_INPUTS", "POCKETFLOW_TRACE_INPUTS"], true)?;
        c.trace_outputs = boolean(&["FLOWTRACE_TRACE_OUTPUTS", "POCKETFLOW_TRACE_OUTPUTS"], true)?;
        c.trace_prep = boolean(&["FLOWTRACE_TRACE_PREP", "POCKETFLOW_TRACE_PREP"], true)?;
        c.trace_exec = boolean(&["FLOWTRACE_TRACE_EXEC", "POCKETFLOW_TRACE_EXEC"], true)?;
        c.trace_post = boolean(&["FLOWTRACE_TRACE_POST", "POCKETFLOW_TRACE_POST"], true)?;
        c.trace_errors = boolean(&["FLOWTRACE_TRACE_ERRORS", "POCKETFLOW_TRACE_ERRORS"], true)?;
        c.redact_values = boolean(&["FLOWTRACE_REDACT_VALUES"], true)?;
        if let Some((_, v)) = get(&["FLOWTRACE_REDACT_KEYS"]) {
            c.redact_keys = v.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect();
        }
        if let Some((n, v)) = get(&["FLOWTRACE_SAMPLE_RATE", "LANGFUSE_SAMPLE_RATE"]) {
            c.sample_rate = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| ConfigError::new(&n, &v, "expected a number from 0 to 1"))?;
        }
        if let Some((n, v)) = get(&["FLOWTRACE_MAX_VALUE_BYTES", "LANGFUSE_MAX_EVENT_SIZE_BYTES"]) {
            c.max_value_bytes = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|b| *b >= 64)
                .ok_or_else(|| ConfigError::new(&n, &v, "expected a whole number of bytes, at least 64"))?;
        }
        c.trace_file = get(&["FLOWTRACE_TRACE_FILE"]).map(|(_, v)| PathBuf::from(v));
        c.session_id = get(&["FLOWTRACE_SESSION_ID", "POCKETFLOW_SESSION_ID"]).map(|(_, v)| v);
        c.user_id = get(&["FLOWTRACE_USER_ID", "POCKETFLOW_USER_ID"]).map(|(_, v)| v);
        c.public_key = get(&["LANGFUSE_PUBLIC_KEY"]).map(|(_, v)| v.trim().to_owned());
        c.secret_key = get(&["LANGFUSE_SECRET_KEY"]).map(|(_, v)| v.trim().to_owned());
        c.host = get(&["LANGFUSE_HOST"]).map(|(_, v)| v.trim().trim_end_matches('/').to_owned());
        match (&c.public_key, &c.secret_key) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "LANGFUSE_SECRET_KEY",
                    "",
                    "LANGFUSE_PUBLIC_KEY is set, so the secret key is needed too",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "LANGFUSE_PUBLIC_KEY",
                    "",
                    "LANGFUSE_SECRET_KEY is set, so the public key is needed too",
                ))
            }
            _ => {}
        }
        if let Some(h) = &c.host {
            if !(h.starts_with("http://") || h.starts_with("https://")) {
                return Err(ConfigError::new("LANGFUSE_HOST", h, "expected an http:// or https:// URL"));
            }
        }
        c.vars = vars;
        Ok(c)
    }

    /// Sets the Langfuse host and keys.
    pub fn with_langfuse(
        mut self,
        host: impl Into<String>,
        public_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        self.host = Some(host.into().trim_end_matches('/').to_owned());
        self.public_key = Some(public_key.into());
        self.secret_key = Some(secret_key.into());
        self
    }
    /// Turns debug output on or off.
    pub fn with_debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }
    /// Records span inputs or not.
    pub fn with_trace_inputs(mut self, on: bool) -> Self {
        self.trace_inputs = on;
        self
    }
    /// Records span outputs or not.
    pub fn with_trace_outputs(mut self, on: bool) -> Self {
        self.trace_outputs = on;
        self
    }
    /// Records `prep` spans or not.
    pub fn with_trace_prep(mut self, on: bool) -> Self {
        self.trace_prep = on;
        self
    }
    /// Records `exec` spans (with attempts and items) or not.
    pub fn with_trace_exec(mut self, on: bool) -> Self {
        self.trace_exec = on;
        self
    }
    /// Records `post` spans or not.
    pub fn with_trace_post(mut self, on: bool) -> Self {
        self.trace_post = on;
        self
    }
    /// Records error messages or only their kind.
    pub fn with_trace_errors(mut self, on: bool) -> Self {
        self.trace_errors = on;
        self
    }
    /// Traces this fraction of runs (0..=1), chosen by trace id.
    pub fn with_sample_rate(mut self, rate: f64) -> Result<Self, ConfigError> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(ConfigError::new("sample_rate", rate.to_string(), "expected a number from 0 to 1"));
        }
        self.sample_rate = rate;
        Ok(self)
    }
    /// Values larger than this, serialised, are replaced by a truncation marker at export.
    pub fn with_max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes.max(64);
        self
    }
    /// Also redacts values under keys containing these names (compared case-insensitively,
    /// ignoring `_`, `-`, `.` and spaces), on top of
    /// [`DEFAULT_REDACTED_KEYS`](crate::export::DEFAULT_REDACTED_KEYS).
    pub fn with_redact_keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.redact_keys.extend(keys.into_iter().map(Into::into));
        self
    }
    /// Redacts credential-shaped values (`Bearer …`, `sk-…`, `pk-lf-…`, JWTs) whatever their
    /// key, or not (default on).
    pub fn with_redact_values(mut self, on: bool) -> Self {
        self.redact_values = on;
        self
    }
    /// Writes traces to this JSON Lines file (also when Langfuse is configured).
    pub fn with_trace_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trace_file = Some(path.into());
        self
    }

    /// Whether Langfuse keys are set.
    pub fn langfuse_enabled(&self) -> bool {
        self.public_key.is_some() && self.secret_key.is_some()
    }
    /// The Langfuse host (the cloud default when keys are set without one).
    pub fn host(&self) -> Option<&str> {
        match &self.host {
            Some(h) => Some(h),
            None if self.langfuse_enabled() => Some(DEFAULT_LANGFUSE_HOST),
            None => None,
        }
    }
    /// The Langfuse public key.
    pub fn public_key(&self) -> Option<&str> {
        self.public_key.as_deref()
    }
    /// The Langfuse secret key.
    pub fn secret_key(&self) -> Option<&str> {
        self.secret_key.as_deref()
    }
    /// Whether debug output is on.
    pub fn debug(&self) -> bool {
        self.debug
    }
    /// Whether span inputs are recorded.
    pub fn trace_inputs(&self) -> bool {
        self.trace_inputs
    }
    /// Whether span outputs are recorded.
    pub fn trace_outputs(&self) -> bool {
        self.trace_outputs
    }
    /// Whether `prep` spans are recorded.
    pub fn trace_prep(&self) -> bool {
        self.trace_prep
    }
    /// Whether `exec` spans are recorded.
    pub fn trace_exec(&self) -> bool {
        self.trace_exec
    }
    /// Whether `post` spans are recorded.
    pub fn trace_post(&self) -> bool {
        self.trace_post
    }
    /// Whether error details are recorded.
    pub fn trace_errors(&self) -> bool {
        self.trace_errors
    }
    /// The sampled fraction of runs.
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate
    }
    /// The largest recorded value, in serialised bytes.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }
    /// The local trace file: the configured one, or the default when Langfuse is not set.
    pub fn trace_file(&self) -> Option<PathBuf> {
        match &self.trace_file {
            Some(p) => Some(p.clone()),
            None if !self.langfuse_enabled() => Some(PathBuf::from(DEFAULT_TRACE_FILE)),
            None => None,
        }
    }
    /// Key names redacted on top of the defaults (`FLOWTRACE_REDACT_KEYS`).
    pub fn redact_keys(&self) -> &[String] {
        &self.redact_keys
    }
    /// Whether credential-shaped values are redacted whatever their key
    /// (`FLOWTRACE_REDACT_VALUES`).
    pub fn redact_values(&self) -> bool {
        self.redact_values
    }
    /// The default session id for traced runs.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }
    /// The default user id for traced runs.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }
    /// Another variable read at configuration time (exporters read theirs here, so a config
    /// built from explicit variables never consults the process environment).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_is_read_and_aliases_work() {
        let c = TracingConfig::from_vars([
            ("POCKETFLOW_TRACING_DEBUG", "true"),
            ("POCKETFLOW_TRACE_INPUTS", "false"),
            ("POCKETFLOW_TRACE_OUTPUTS", "0"),
            ("POCKETFLOW_TRACE_PREP", "no"),
            ("POCKETFLOW_TRACE_EXEC", "off"),
            ("POCKETFLOW_TRACE_POST", "False"),
            ("POCKETFLOW_TRACE_ERRORS", "FALSE"),
            ("POCKETFLOW_SESSION_ID", "s"),
            ("POCKETFLOW_USER_ID", "u"),
            ("FLOWTRACE_SAMPLE_RATE", "0.25"),
            ("FLOWTRACE_MAX_VALUE_BYTES", "2048"),
            ("FLOWTRACE_TRACE_FILE", "/tmp/t.jsonl"),
            ("FLOWTRACE_REDACT_KEYS", " ssn, Card-Number ,"),
            ("FLOWTRACE_REDACT_VALUES", "false"),
        ])
        .unwrap();
        assert_eq!(c.redact_keys(), ["ssn", "Card-Number"]);
        assert!(!c.redact_values());
        assert!(c.debug());
        assert!(!c.trace_inputs() && !c.trace_outputs() && !c.trace_prep());
        assert!(!c.trace_exec() && !c.trace_post() && !c.trace_errors());
        assert_eq!((c.session_id(), c.user_id()), (Some("s"), Some("u")));
        assert_eq!(c.sample_rate(), 0.25);
        assert_eq!(c.max_value_bytes(), 2048);
        assert_eq!(c.trace_file(), Some(PathBuf::from("/tmp/t.jsonl")));
    }

    #[test]
    fn flowtrace_names_win_over_aliases() {
        let c = TracingConfig::from_vars([("FLOWTRACE_DEBUG", "false"), ("POCKETFLOW_TRACING_DEBUG", "true")]).unwrap();
        assert!(!c.debug());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, val) in [
            ("FLOWTRACE_DEBUG", "maybe"),
            ("POCKETFLOW_TRACE_PREP", "2"),
            ("FLOWTRACE_SAMPLE_RATE", "1.5"),
            ("FLOWTRACE_SAMPLE_RATE", "abc"),
            ("FLOWTRACE_MAX_VALUE_BYTES", "-1"),
            ("FLOWTRACE_REDACT_VALUES", "sometimes"),
            ("LANGFUSE_HOST", "localhost:3000"),
        ] {
            let err = TracingConfig::from_vars([(var, val)]).unwrap_err();
            assert_eq!(err.variable, var);
            assert!(err.to_string().starts_with(&format!("{var}=")), "{err}");
        }
        let err = TracingConfig::from_vars([("LANGFUSE_PUBLIC_KEY", "pk")]).unwrap_err();
        assert_eq!(err.variable, "LANGFUSE_SECRET_KEY");
    }

    #[test]
    fn keys_without_host_use_the_cloud_and_no_keys_use_the_file() {
        let c =
            TracingConfig::from_vars([("LANGFUSE_PUBLIC_KEY", "pk-lf-1"), ("LANGFUSE_SECRET_KEY", "sk-lf-1")]).unwrap();
        assert_eq!(c.host(), Some(DEFAULT_LANGFUSE_HOST));
        assert_eq!(c.trace_file(), None);
        let c = TracingConfig::from_vars(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c.host(), None);
        assert_eq!(c.trace_file(), Some(PathBuf::from(DEFAULT_TRACE_FILE)));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let c = TracingConfig::new().with_langfuse("http://h", "pk-lf-0123456789", "sk-lf-supersecret");
        let shown = format!("{c:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(!shown.contains("0123456789"), "{shown}");
    }
}
