//! How it runs: a supervisor actor per run, the visiting of nodes, the tracer actor that
//! assembles span trees, the [`Runtime`](crate::Runtime) for services, and the entry points
//! (`Flow::run`, `traced`) that start runs.
//!
//! ractor stays inside this module: users see [`crate::Flow::run`], run handles and
//! [`crate::Tracer`], never an `ActorRef`.

#[cfg(feature = "durable")]
pub mod durable;
pub(crate) mod runtime;
pub(crate) mod supervisor;
pub(crate) mod traced;
pub(crate) mod tracer;
pub(crate) mod visit;

impl crate::trace::TracingConfig {
    /// Builds the tracer this configuration describes: the Langfuse exporter when keys are set,
    /// the local JSON Lines file when they are not (or when a trace file is set), debug output
    /// when on. Same as [`Tracer::from_config`](crate::Tracer::from_config).
    pub fn build_tracer(&self) -> Result<tracer::Tracer, tracer::TracerError> {
        tracer::Tracer::from_config(self)
    }
}
