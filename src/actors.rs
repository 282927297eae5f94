//! The actors behind a run: a supervisor per run, and the tracer that assembles span trees.
//!
//! ractor stays inside this module: users see [`crate::Flow::run`], run handles and
//! [`crate::Tracer`], never an `ActorRef`.

#[cfg(feature = "durable")]
pub mod durable;
pub(crate) mod runtime;
pub(crate) mod supervisor;
pub(crate) mod tracer;
