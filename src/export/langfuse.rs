//! The Langfuse exporter (OTLP, or legacy batch ingestion for self-hosted v2) and the generic
//! OTLP/HTTP exporter, both on the same delivery core.

use std::path::PathBuf;
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::delivery::{Compression, DeliveryOptions, Endpoint, HttpExporter, Target};
use super::privacy::Privacy;
use super::{otlp, ExportReport, Exporter};
use crate::error::ConfigError;
use crate::trace::TraceRecord;

/// Which Langfuse ingestion protocol to use (`LANGFUSE_INGESTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Ingestion {
    /// OTLP first; once, on a 404 from the OTLP path, switch to legacy (logged).
    #[default]
    Auto,
    /// OTLP/HTTP protobuf at `{host}/api/public/otel/v1/traces` (Langfuse Cloud, v3+).
    Otel,
    /// Batch JSON at `{host}/api/public/ingestion` (self-hosted v2).
    Legacy,
}

impl Ingestion {
    /// Parses `auto`, `otel` (or `otlp`) and `legacy`, any case.
    pub fn parse(v: &str) -> Result<Ingestion, ConfigError> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Ingestion::Auto),
            "otel" | "otlp" => Ok(Ingestion::Otel),
            "legacy" => Ok(Ingestion::Legacy),
            _ => Err(ConfigError::new("LANGFUSE_INGESTION", v, "expected auto, otel or legacy")),
        }
    }
}

/// The default spool folder of an exporter.
fn default_spool(name: &str) -> PathBuf {
    PathBuf::from(".flowtrace/spool").join(name)
}

/// Sends traces to Langfuse, over OTLP or the legacy batch API.
///
/// ```no_run
/// use flowtrace::export::{Ingestion, LangfuseExporter};
/// let lf = LangfuseExporter::builder()
///     .host("http://127.0.0.1:3000")
///     .keys("pk-lf-1", "sk-lf-1")
///     .ingestion(Ingestion::Auto)
///     .spool_dir("/tmp/flowtrace-spool")
///     .build()
///     .unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct LangfuseExporter {
    inner: Arc<HttpExporter>,
}

/// Builds a [`LangfuseExporter`].
#[derive(Debug, Clone, Default)]
pub struct LangfuseExporterBuilder {
    host: Option<String>,
    keys: Option<(String, String)>,
    ingestion: Ingestion,
    options: DeliveryOptions,
    spool: Option<Option<PathBuf>>,
    privacy: Privacy,
    environment: Option<String>,
    service: Option<String>,
    resource: Vec<(String, String)>,
    compression: Option<Compression>,
}

/// Whether `url`'s host is this machine (`localhost`, `127.x.x.x`, `[::1]`).
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `OTEL_EXPORTER_OTLP_TRACES_COMPRESSION`, else `OTEL_EXPORTER_OTLP_COMPRESSION`.
fn compression_from(get: &impl Fn(&str) -> Option<String>) -> Result<Option<Compression>, ConfigError> {
    for var in ["OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"] {
        if let Some(v) = get(var) {
            return Compression::parse(var, &v).map(Some);
        }
    }
    Ok(None)
}

/// The environment to send: the one given, else `deployment.environment.name` (or the older
/// `deployment.environment`) among the resource attributes; checked like Langfuse's SDKs do.
fn resolve_environment(explicit: Option<String>, resource: &[(String, String)]) -> Result<Option<String>, ConfigError> {
    let from_resource = || {
        ["deployment.environment.name", "deployment.environment"]
            .iter()
            .find_map(|k| resource.iter().rev().find(|(rk, _)| rk == k).map(|(_, v)| v.clone()))
    };
    match explicit.or_else(from_resource) {
        None => Ok(None),
        Some(e) => super::observation::check_environment(&e)
            .map(Some)
            .map_err(|why| ConfigError::new("LANGFUSE_TRACING_ENVIRONMENT", e.trim(), why)),
    }
}

/// Reads `OTEL_RESOURCE_ATTRIBUTES` (`k1=v1,k2=v2`, percent-decoded).
fn resource_from(get: &impl Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>, ConfigError> {
    match get("OTEL_RESOURCE_ATTRIBUTES") {
        None => Ok(Vec::new()),
        Some(spec) => {
            parse_headers(&spec).map_err(|e| ConfigError { variable: "OTEL_RESOURCE_ATTRIBUTES".into(), ..e })
        }
    }
}

/// The resource of a request: `service.name`, the SDK, the given attributes, and the
/// environment as `deployment.environment.name` when it is known.
fn build_resource(
    service: &str,
    attrs: &[(String, String)],
    environment: Option<&str>,
) -> opentelemetry_proto::tonic::resource::v1::Resource {
    let mut r = otlp::resource(service);
    otlp::add_resource_attributes(&mut r, attrs);
    if let Some(e) = environment {
        if !attrs.iter().any(|(k, _)| k.starts_with("deployment.environment")) {
            otlp::add_resource_attributes(&mut r, &[("deployment.environment.name".to_owned(), e.to_owned())]);
        }
    }
    r
}

impl LangfuseExporterBuilder {
    /// The Langfuse environment of every trace and observation (`production`, `staging`, …;
    /// as `LANGFUSE_TRACING_ENVIRONMENT`). Without it, `deployment.environment.name` from the
    /// resource attributes is used; without either, Langfuse shows `default`.
    pub fn environment(mut self, env: impl Into<String>) -> Self {
        self.environment = Some(env.into());
        self
    }
    /// Adds a resource attribute (as `OTEL_RESOURCE_ATTRIBUTES`); Langfuse shows resource
    /// attributes in the trace's metadata.
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.resource.push((key.into(), value.into()));
        self
    }
    /// `service.name` of the resource (default `flowtrace`, or `OTEL_SERVICE_NAME`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }
    /// The Langfuse base URL (`https://cloud.langfuse.com`, `http://localhost:3000`).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
    /// The project's public and secret keys.
    pub fn keys(mut self, public: impl Into<String>, secret: impl Into<String>) -> Self {
        self.keys = Some((public.into(), secret.into()));
        self
    }
    /// The protocol (default [`Ingestion::Auto`]).
    pub fn ingestion(mut self, i: Ingestion) -> Self {
        self.ingestion = i;
        self
    }
    /// The spool folder (default `.flowtrace/spool/langfuse`).
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool = Some(Some(dir.into()));
        self
    }
    /// No spool: what cannot be delivered is dropped (and counted).
    pub fn no_spool(mut self) -> Self {
        self.spool = Some(None);
        self
    }
    /// Batching, retry and spool settings (its `spool_dir` is overridden by
    /// [`spool_dir`](Self::spool_dir) / [`no_spool`](Self::no_spool) when those are called).
    pub fn options(mut self, o: DeliveryOptions) -> Self {
        self.options = o;
        self
    }
    /// Masking, redaction, value size limit and sampling.
    pub fn privacy(mut self, p: Privacy) -> Self {
        self.privacy = p;
        self
    }
    /// How OTLP request bodies are compressed (as `OTEL_EXPORTER_OTLP_COMPRESSION`). The
    /// default is [`Compression::Gzip`] (Langfuse's OTLP route takes it, and traces shrink
    /// about tenfold on the way), except for a host on this machine (`localhost`,
    /// `127.0.0.1`, `[::1]`), where sending costs less than compressing. Legacy batch
    /// requests are always plain JSON: Langfuse's batch route does not read gzip.
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = Some(c);
        self
    }

    /// Starts the exporter's worker thread.
    pub fn build(self) -> Result<LangfuseExporter, ConfigError> {
        let host = self.host.ok_or_else(|| ConfigError::new("LANGFUSE_HOST", "", "no Langfuse host given"))?;
        let host = host.trim_end_matches('/').to_owned();
        if !(host.starts_with("http://") || host.starts_with("https://")) {
            return Err(ConfigError::new("LANGFUSE_HOST", host, "expected an http:// or https:// URL"));
        }
        let (pk, sk) =
            self.keys.ok_or_else(|| ConfigError::new("LANGFUSE_PUBLIC_KEY", "", "no Langfuse keys given"))?;
        let sdk = vec![
            ("x-langfuse-sdk-name".to_owned(), "flowtrace".to_owned()),
            ("x-langfuse-sdk-version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
            ("x-langfuse-public-key".to_owned(), pk.clone()),
        ];
        let mut otlp_headers = sdk.clone();
        otlp_headers.push(("x-langfuse-ingestion-version".into(), "4".into()));
        let basic = Some((pk.clone(), sk));
        let gzip = match self.compression {
            Some(c) => c == Compression::Gzip,
            None => !is_loopback(&host),
        };
        let otlp_ep = Endpoint {
            url: format!("{host}/api/public/otel/v1/traces"),
            headers: otlp_headers,
            basic: basic.clone(),
            gzip,
        };
        let legacy_ep = Endpoint { url: format!("{host}/api/public/ingestion"), headers: sdk, basic, gzip: false };
        let (otlp, legacy, mode) = match self.ingestion {
            Ingestion::Auto => (Some(otlp_ep), Some(legacy_ep), 0),
            Ingestion::Otel => (Some(otlp_ep), None, 0),
            Ingestion::Legacy => (None, Some(legacy_ep), 1),
        };
        let environment = resolve_environment(self.environment, &self.resource)?;
        let service = self.service.as_deref().unwrap_or("flowtrace");
        let target = Target {
            otlp,
            legacy,
            auto: self.ingestion == Ingestion::Auto,
            mode: AtomicU8::new(mode),
            resource: build_resource(service, &self.resource, environment.as_deref()),
            public_key: pk,
            environment,
        };
        let mut options = self.options;
        match self.spool {
            Some(s) => options.spool_dir = s,
            None if options.spool_dir.is_none() => options.spool_dir = Some(default_spool("langfuse")),
            None => {}
        }
        let inner = HttpExporter::start("langfuse", target, options, self.privacy)
            .map_err(|e| ConfigError::new("LANGFUSE_HOST", host, format!("the exporter could not start: {e}")))?;
        Ok(LangfuseExporter { inner: Arc::new(inner) })
    }
}

impl LangfuseExporterBuilder {
    /// `LANGFUSE_TRACING_ENVIRONMENT`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME` and
    /// `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION`.
    fn deployment_from(mut self, get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        self.resource.extend(resource_from(get)?);
        if let Some(c) = compression_from(get)? {
            self.compression = Some(c);
        }
        if let Some(e) = get("LANGFUSE_TRACING_ENVIRONMENT") {
            self.environment = Some(e);
        }
        if let Some(s) = get("OTEL_SERVICE_NAME") {
            self.service = Some(s);
        }
        Ok(self)
    }
}

impl LangfuseExporter {
    /// A builder with the defaults (auto ingestion, 512 spans / 1 s batches, spool in
    /// `.flowtrace/spool/langfuse`).
    pub fn builder() -> LangfuseExporterBuilder {
        LangfuseExporterBuilder::default()
    }

    /// From `LANGFUSE_HOST`, `LANGFUSE_PUBLIC_KEY`, `LANGFUSE_SECRET_KEY`,
    /// `LANGFUSE_INGESTION`, `LANGFUSE_TRACING_ENVIRONMENT`, `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` and
    /// `FLOWTRACE_SPOOL_DIR` in the process environment.
    pub fn from_env() -> Result<LangfuseExporter, ConfigError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self::from_lookup(get)
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<LangfuseExporter, ConfigError> {
        let host = get("LANGFUSE_HOST").unwrap_or_else(|| crate::trace::DEFAULT_LANGFUSE_HOST.to_owned());
        let pk = get("LANGFUSE_PUBLIC_KEY").ok_or_else(|| ConfigError::new("LANGFUSE_PUBLIC_KEY", "", "not set"))?;
        let sk = get("LANGFUSE_SECRET_KEY").ok_or_else(|| ConfigError::new("LANGFUSE_SECRET_KEY", "", "not set"))?;
        let ingestion = Ingestion::parse(&get("LANGFUSE_INGESTION").unwrap_or_default())?;
        let mut b = Self::builder().host(host).keys(pk, sk).ingestion(ingestion).deployment_from(&get)?;
        if let Some(dir) = get("FLOWTRACE_SPOOL_DIR") {
            b = b.spool_dir(PathBuf::from(dir).join("langfuse"));
        }
        b.build()
    }

    /// From a tracing configuration (its keys and host, its value size limit, and
    /// `LANGFUSE_INGESTION` / `FLOWTRACE_SPOOL_DIR` among its variables). Sampling stays with
    /// the tracer.
    pub fn from_config(cfg: &crate::trace::TracingConfig) -> Result<LangfuseExporter, ConfigError> {
        let host = cfg.host().unwrap_or(crate::trace::DEFAULT_LANGFUSE_HOST);
        let (Some(pk), Some(sk)) = (cfg.public_key(), cfg.secret_key()) else {
            let missing = if cfg.public_key().is_none() { "LANGFUSE_PUBLIC_KEY" } else { "LANGFUSE_SECRET_KEY" };
            return Err(ConfigError::new(missing, "", "not set"));
        };
        let ingestion = Ingestion::parse(cfg.var("LANGFUSE_INGESTION").unwrap_or(""))?;
        let mut b = Self::builder()
            .host(host)
            .keys(pk, sk)
            .ingestion(ingestion)
            .privacy(Privacy::from_config(cfg))
            .deployment_from(&|k: &str| cfg.var(k).map(str::to_owned))?;
        if let Some(dir) = cfg.var("FLOWTRACE_SPOOL_DIR") {
            b = b.spool_dir(PathBuf::from(dir).join("langfuse"));
        }
        b.build()
    }
}

impl Exporter for LangfuseExporter {
    fn name(&self) -> &str {
        "langfuse"
    }
    fn export(&self, trace: Arc<TraceRecord>) {
        self.inner.export(trace)
    }
    fn takes_parts(&self) -> bool {
        self.inner.takes_parts()
    }
    fn export_part(&self, part: Arc<TraceRecord>) {
        self.inner.export_part(part)
    }
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.inner.flush(timeout)
    }
    fn shutdown(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.inner.shutdown(timeout)
    }
}

/// Sends traces to any OTLP/HTTP receiver (Jaeger, Tempo, Phoenix, a Collector) as protobuf.
///
/// ```no_run
/// use flowtrace::export::OtlpExporter;
/// let otlp = OtlpExporter::builder()
///     .endpoint("http://127.0.0.1:4318")
///     .header("x-api-key", "k")
///     .build()
///     .unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct OtlpExporter {
    inner: Arc<HttpExporter>,
}

/// Builds an [`OtlpExporter`].
#[derive(Debug, Clone, Default)]
pub struct OtlpExporterBuilder {
    endpoint: Option<String>,
    traces_endpoint: Option<String>,
    headers: Vec<(String, String)>,
    service: Option<String>,
    resource: Vec<(String, String)>,
    options: DeliveryOptions,
    spool: Option<Option<PathBuf>>,
    privacy: Privacy,
    environment: Option<String>,
    compression: Option<Compression>,
}

impl OtlpExporterBuilder {
    /// How request bodies are compressed (as `OTEL_EXPORTER_OTLP_COMPRESSION`; default
    /// [`Compression::None`], as the OpenTelemetry SDKs).
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = Some(c);
        self
    }
    /// The environment (as `LANGFUSE_TRACING_ENVIRONMENT`): sent as `langfuse.environment`
    /// on every span and as the resource's `deployment.environment.name`. Without it,
    /// `deployment.environment.name` from the resource attributes is used.
    pub fn environment(mut self, env: impl Into<String>) -> Self {
        self.environment = Some(env.into());
        self
    }
    /// Adds a resource attribute (as `OTEL_RESOURCE_ATTRIBUTES`), e.g.
    /// `openinference.project.name` to pick a Phoenix project.
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.resource.push((key.into(), value.into()));
        self
    }
    /// The base endpoint; `/v1/traces` is appended (as `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }
    /// The full traces URL, used as is (as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
    pub fn traces_endpoint(mut self, url: impl Into<String>) -> Self {
        self.traces_endpoint = Some(url.into());
        self
    }
    /// Adds a header sent with every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// Adds headers in `OTEL_EXPORTER_OTLP_HEADERS` form: `k1=v1,k2=v2` (percent-decoded).
    pub fn headers(mut self, spec: &str) -> Result<Self, ConfigError> {
        self.headers.extend(parse_headers(spec)?);
        Ok(self)
    }
    /// `service.name` of the resource (default `flowtrace`, or `OTEL_SERVICE_NAME`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }
    /// The spool folder (default `.flowtrace/spool/otlp`).
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool = Some(Some(dir.into()));
        self
    }
    /// No spool: what cannot be delivered is dropped (and counted).
    pub fn no_spool(mut self) -> Self {
        self.spool = Some(None);
        self
    }
    /// Batching, retry and spool settings.
    pub fn options(mut self, o: DeliveryOptions) -> Self {
        self.options = o;
        self
    }
    /// Masking, redaction, value size limit and sampling.
    pub fn privacy(mut self, p: Privacy) -> Self {
        self.privacy = p;
        self
    }

    /// Starts the exporter's worker thread.
    pub fn build(self) -> Result<OtlpExporter, ConfigError> {
        let url = match (self.traces_endpoint, self.endpoint) {
            (Some(t), _) => t,
            (None, Some(e)) => format!("{}/v1/traces", e.trim_end_matches('/')),
            (None, None) => return Err(ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", "", "no OTLP endpoint given")),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", url, "expected an http:// or https:// URL"));
        }
        let service = self.service.unwrap_or_else(|| "flowtrace".into());
        let environment = resolve_environment(self.environment, &self.resource)?;
        let gzip = self.compression == Some(Compression::Gzip);
        let mut target = Target::otlp(Endpoint { url, headers: self.headers, basic: None, gzip }, &service);
        target.resource = build_resource(&service, &self.resource, environment.as_deref());
        target.environment = environment;
        let mut options = self.options;
        match self.spool {
            Some(s) => options.spool_dir = s,
            None if options.spool_dir.is_none() => options.spool_dir = Some(default_spool("otlp")),
            None => {}
        }
        let endpoint = target.otlp.as_ref().map(|e| e.url.clone()).unwrap_or_default();
        let inner = HttpExporter::start("otlp", target, options, self.privacy).map_err(|e| {
            ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint, format!("the exporter could not start: {e}"))
        })?;
        Ok(OtlpExporter { inner: Arc::new(inner) })
    }
}

/// Parses `k1=v1,k2=v2` with percent-encoded values, as the OpenTelemetry spec defines.
pub fn parse_headers(spec: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(ConfigError::new(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "<redacted>",
                format!("a part is not key=value ({} characters)", part.len()),
            ));
        };
        out.push((percent_decode(k.trim()), percent_decode(v.trim())));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl OtlpExporter {
    /// A builder with the defaults.
    pub fn builder() -> OtlpExporterBuilder {
        OtlpExporterBuilder::default()
    }

    /// From `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (and `_TRACES_HEADERS`), `OTEL_SERVICE_NAME`,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION`,
    /// `LANGFUSE_TRACING_ENVIRONMENT` and `FLOWTRACE_SPOOL_DIR`; `Ok(None)` when no
    /// endpoint is set.
    pub fn from_env() -> Result<Option<OtlpExporter>, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<OtlpExporter>, ConfigError> {
        Self::from_lookup_with(get, Privacy::default())
    }

    pub(crate) fn from_lookup_with(
        get: impl Fn(&str) -> Option<String>,
        privacy: Privacy,
    ) -> Result<Option<OtlpExporter>, ConfigError> {
        let traces = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        if traces.is_none() && base.is_none() {
            return Ok(None);
        }
        for var in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(p) = get(var) {
                if p.trim() != "http/protobuf" {
                    tracing::warn!(target: "flowtrace::export", "{var}={p:?}: only http/protobuf is supported; sending http/protobuf");
                }
                break;
            }
        }
        let mut b = OtlpExporter::builder().privacy(privacy);
        if let Some(t) = traces {
            b = b.traces_endpoint(t);
        } else if let Some(e) = base {
            b = b.endpoint(e);
        }
        for var in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            if let Some(h) = get(var) {
                b = b.headers(&h).map_err(|e| ConfigError { variable: var.into(), ..e })?;
            }
        }
        if let Some(s) = get("OTEL_SERVICE_NAME") {
            b = b.service_name(s);
        }
        for (k, v) in resource_from(&get)? {
            b = b.resource_attribute(k, v);
        }
        if let Some(e) = get("LANGFUSE_TRACING_ENVIRONMENT") {
            b = b.environment(e);
        }
        if let Some(c) = compression_from(&get)? {
            b = b.compression(c);
        }
        if let Some(dir) = get("FLOWTRACE_SPOOL_DIR") {
            b = b.spool_dir(PathBuf::from(dir).join("otlp"));
        }
        b.build().map(Some)
    }
}

impl Exporter for OtlpExporter {
    fn name(&self) -> &str {
        "otlp"
    }
    fn export(&self, trace: Arc<TraceRecord>) {
        self.inner.export(trace)
    }
    fn takes_parts(&self) -> bool {
        self.inner.takes_parts()
    }
    fn export_part(&self, part: Arc<TraceRecord>) {
        self.inner.export_part(part)
    }
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.inner.flush(timeout)
    }
    fn shutdown(&self, timeout: Duration) -> BoxFuture<'_, ExportReport> {
        self.inner.shutdown(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_like_the_otel_spec() {
        let h = parse_headers("api-key=abc%20def, x=1").unwrap();
        assert_eq!(h, vec![("api-key".into(), "abc def".into()), ("x".into(), "1".into())]);
        let err = parse_headers("token-without-equals-sign").unwrap_err();
        assert_eq!(err.variable, "OTEL_EXPORTER_OTLP_HEADERS");
        assert!(!err.to_string().contains("token-without"), "a header's text may be a secret: {err}");
    }

    #[test]
    fn loopback_hosts_are_told_apart() {
        for url in ["http://localhost:3000", "http://127.0.0.1:1/x", "http://[::1]:4318", "https://u:p@LOCALHOST"] {
            assert!(is_loopback(url), "{url}");
        }
        for url in
            ["https://cloud.langfuse.com", "http://10.0.0.1:3000", "http://localhost.example.com", "http://[::2]"]
        {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn compression_comes_from_the_otel_variables() {
        let get = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(compression_from(&get(&[])).unwrap(), None);
        assert_eq!(
            compression_from(&get(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP")])).unwrap(),
            Some(Compression::Gzip)
        );
        let both =
            get(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"), ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none")]);
        assert_eq!(compression_from(&both).unwrap(), Some(Compression::None));
        let err = compression_from(&get(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")])).unwrap_err();
        assert_eq!((err.variable.as_str(), err.value.as_str()), ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"));
    }

    #[test]
    fn ingestion_values() {
        assert_eq!(Ingestion::parse("LEGACY").unwrap(), Ingestion::Legacy);
        assert_eq!(Ingestion::parse("").unwrap(), Ingestion::Auto);
        let err = Ingestion::parse("grpc").unwrap_err();
        assert_eq!((err.variable.as_str(), err.value.as_str()), ("LANGFUSE_INGESTION", "grpc"));
    }
}
