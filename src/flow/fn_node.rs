//! Nodes from closures, with JSON values between the phases: the terse form for small steps,
//! tests and prototypes.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use super::action::Action;
use super::context::{Context, ExecContext};
use super::graph::NodeRef;
use super::node::Node;
use crate::error::{BoxError, NodeResult};

type PrepFn = dyn Fn(&Context<'_>) -> NodeResult<Value> + Send + Sync;
type ExecFn = dyn Fn(Value, ExecContext) -> BoxFuture<'static, NodeResult<Value>> + Send + Sync;
type FallbackFn = dyn Fn(Value, BoxError, ExecContext) -> BoxFuture<'static, NodeResult<Value>> + Send + Sync;
type PostFn = dyn Fn(&Context<'_>, Value, Value) -> NodeResult<Action> + Send + Sync;

/// A node built from closures. Every phase is optional: by default `prep` and `exec` give
/// `null` and `post` returns no action, as PocketFlow's defaults do.
///
/// `prep` and `post` are plain closures (they only touch the store); `exec` is async and gets
/// owned values, so it can await anything.
///
/// ```
/// use flowtrace::prelude::*;
/// let add = FnNode::new("Add")
///     .prep(|ctx| Ok(ctx.shared().get_json("current").unwrap_or(0.into())))
///     .exec(|v, _cx| async move { Ok((v.as_i64().unwrap_or(0) + 3).into()) })
///     .post(|ctx, _prep, sum| {
///         ctx.shared().insert("current", sum);
///         Ok(Action::none())
///     });
/// # let _ = add;
/// ```
#[derive(Clone)]
pub struct FnNode {
    name: Arc<str>,
    prep: Option<Arc<PrepFn>>,
    exec: Option<Arc<ExecFn>>,
    fallback: Option<Arc<FallbackFn>>,
    post: Option<Arc<PostFn>>,
}

impl std::fmt::Debug for FnNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnNode").field("name", &self.name).finish()
    }
}

impl FnNode {
    /// A node named `name` that does nothing yet.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        FnNode { name: name.into(), prep: None, exec: None, fallback: None, post: None }
    }

    /// Sets `prep`.
    pub fn prep(mut self, f: impl Fn(&Context<'_>) -> NodeResult<Value> + Send + Sync + 'static) -> Self {
        self.prep = Some(Arc::new(f));
        self
    }

    /// Sets `exec`, an async closure over the prep result.
    pub fn exec<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Value, ExecContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = NodeResult<Value>> + Send + 'static,
    {
        self.exec = Some(Arc::new(move |v, cx| Box::pin(f(v, cx))));
        self
    }

    /// Sets `exec_fallback`, called with the last attempt's error.
    pub fn fallback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Value, BoxError, ExecContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = NodeResult<Value>> + Send + 'static,
    {
        self.fallback = Some(Arc::new(move |v, e, cx| Box::pin(f(v, e, cx))));
        self
    }

    /// Sets `post`.
    pub fn post(
        mut self,
        f: impl Fn(&Context<'_>, Value, Value) -> NodeResult<Action> + Send + Sync + 'static,
    ) -> Self {
        self.post = Some(Arc::new(f));
        self
    }
}

impl Node for FnNode {
    type Prep = Value;
    type Exec = Value;

    fn name(&self) -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Owned(self.name.to_string())
    }

    async fn prep(&self, ctx: &Context<'_>) -> NodeResult<Value> {
        match &self.prep {
            Some(f) => f(ctx),
            None => Ok(Value::Null),
        }
    }

    async fn exec(&self, prep: &Value, cx: &ExecContext) -> NodeResult<Value> {
        match &self.exec {
            Some(f) => f(prep.clone(), cx.clone()).await,
            None => Ok(Value::Null),
        }
    }

    async fn exec_fallback(&self, prep: &Value, error: BoxError, cx: &ExecContext) -> NodeResult<Value> {
        match &self.fallback {
            Some(f) => f(prep.clone(), error, cx.clone()).await,
            None => Err(error),
        }
    }

    async fn post(&self, ctx: &Context<'_>, prep: Value, exec: Value) -> NodeResult<Action> {
        match &self.post {
            Some(f) => f(ctx, prep, exec),
            None => Ok(Action::none()),
        }
    }

    fn exec_skipped(&self) -> Option<Value> {
        Some(Value::Null)
    }

    fn into_node(self) -> NodeRef {
        let name = Arc::clone(&self.name);
        NodeRef::from_kind(name, "FnNode", super::graph::NodeKind::Node(Arc::new(super::node::NodeAdapter(self))))
    }
}
