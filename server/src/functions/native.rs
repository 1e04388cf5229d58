//! Functions written in Rust by code that embeds `hearth-server` as a library: the same
//! kinds and hook points as the JavaScript exports, registered on
//! [`crate::ServerBuilder`]. They are invoked, counted, retried and dead-lettered exactly
//! like JavaScript functions; they run on the server's runtime instead of a worker thread.

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;

use super::{Auth, FunctionError, FunctionInfo, Kind};
use crate::store::{Store, Write, WriteResult};

/// What a Rust function gets besides its argument: the store with admin rights (its
/// writes go through the one write path, skip before-write hooks and fire realtime and
/// triggers), and the caller (`None` for the service key, triggers and schedules).
#[derive(Clone)]
pub struct NativeContext {
    pub store: Store,
    pub auth: Auth,
    /// How many function runs in a row led to this one.
    pub depth: u8,
}

impl NativeContext {
    /// Writes through the store as this run's writes: a chain of triggers feeding each
    /// other through them is stopped like one of JavaScript triggers (writes made with
    /// `store` directly count as a client's).
    pub async fn write(&self, writes: Vec<Write>) -> Result<Vec<WriteResult>, crate::store::Error> {
        self.store.write_caused(writes, false, self.depth.saturating_add(1)).await
    }
}

type Handler = Arc<dyn Fn(Value, NativeContext) -> BoxFuture<'static, Result<Value, FunctionError>> + Send + Sync>;

/// One Rust function.
#[derive(Clone)]
pub struct Native {
    pub info: FunctionInfo,
    handler: Handler,
}

impl Native {
    /// A function of `kind` named `name`; `pattern` for document hooks, `cron` for
    /// schedules. The handler's argument is what a JavaScript handler's first one is.
    pub fn new<F, Fut>(kind: Kind, name: &str, pattern: Option<&str>, cron: Option<&str>, handler: F) -> Native
    where
        F: Fn(Value, NativeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, FunctionError>> + Send + 'static,
    {
        let info = FunctionInfo {
            name: name.to_owned(),
            kind,
            file: "(rust)".to_owned(),
            pattern: pattern.map(str::to_owned),
            cron: cron.map(str::to_owned),
        };
        let handler = Arc::new(handler);
        // The handler is called inside the future, so a panic there is caught with the rest.
        let handler: Handler = Arc::new(move |argument, context| {
            let handler = handler.clone();
            Box::pin(async move { handler(argument, context).await })
        });
        Native { info, handler }
    }

    /// Runs the handler; a panic fails this invocation alone, as `internal`.
    pub(super) async fn run(&self, argument: Value, context: NativeContext) -> Result<Value, FunctionError> {
        match std::panic::AssertUnwindSafe((self.handler)(argument, context)).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::error!(function = %self.info.name, "a Rust function panicked");
                Err(FunctionError::new(hearth_types::ErrorCode::Internal, "internal error"))
            }
        }
    }
}
