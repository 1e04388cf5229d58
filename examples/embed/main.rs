//! Hearth embedded in a Rust program, with functions written in Rust at the same hook
//! points as JavaScript ones. Run it with
//!
//! ```text
//! cargo run -p hearth-server --example embed -- [PROJECT_DIR] [HOST:PORT]
//! ```
//!
//! then, with the service key it prints on the first start:
//!
//! ```text
//! curl -s -X POST localhost:8080/v1/functions/quote -H "content-type: application/json" \
//!   -d '{"data": {"items": [{"price": 3, "qty": 2}, {"price": 5, "qty": 1}]}}'
//! curl -s -X PUT localhost:8080/v1/docs/posts/p1 -H "authorization: Bearer $KEY" \
//!   -H "content-type: application/json" -d '{"title": "  Hello  "}'
//! ```

use std::path::PathBuf;

use hearth_server::functions::{FunctionError, NativeContext};
use hearth_server::store::{DocPath, Write, WriteOp};
use hearth_server::{Config, Overrides, Server};
use hearth_types::ErrorCode;
use serde_json::{Value, json};

/// A callable: prices a cart (what a client must not be trusted to compute).
async fn quote(data: Value, _ctx: NativeContext) -> Result<Value, FunctionError> {
    let items =
        data["items"].as_array().ok_or_else(|| FunctionError::new(ErrorCode::InvalidArgument, "`items` is a list"))?;
    let total: f64 =
        items.iter().map(|item| item["price"].as_f64().unwrap_or(0.0) * item["qty"].as_f64().unwrap_or(0.0)).sum();
    Ok(json!({ "total": total, "items": items.len() }))
}

/// Before each client write to a post: a title is required and stored trimmed.
async fn tidy_post(event: Value, _ctx: NativeContext) -> Result<Value, FunctionError> {
    let Some(data) = event["after"]["data"].as_object() else { return Ok(Value::Null) };
    let title = data.get("title").and_then(Value::as_str).map(str::trim).unwrap_or_default();
    if title.is_empty() {
        return Err(FunctionError::new(ErrorCode::InvalidArgument, "a post needs a title"));
    }
    let mut data = data.clone();
    data.insert("title".into(), json!(title));
    Ok(Value::Object(data))
}

/// After each write to a post: keeps a count of posts in `stats/posts`.
async fn count_posts(event: Value, ctx: NativeContext) -> Result<Value, FunctionError> {
    let step = match event["kind"].as_str() {
        Some("create") => 1,
        Some("delete") => -1,
        _ => return Ok(Value::Null),
    };
    let path = DocPath::parse("stats/posts").map_err(|error| FunctionError::new(ErrorCode::Internal, error.0))?;
    let data = json!({ "count": { "$increment": step } });
    let op = WriteOp::Set(data.as_object().cloned().unwrap_or_default());
    // `$increment` in a set counts from the stored value, or from 0 without one.
    // `ctx.write` (not `ctx.store`) so that triggers feeding each other are stopped.
    ctx.write(vec![Write { path, op, if_version: None }])
        .await
        .map_err(|error| FunctionError::new(error.code(), error.to_string()))?;
    Ok(Value::Null)
}

/// After each new user: a profile document they can fill in.
async fn make_profile(user: Value, ctx: NativeContext) -> Result<Value, FunctionError> {
    let id = user["id"].as_str().unwrap_or_default();
    let path =
        DocPath::parse(&format!("profiles/{id}")).map_err(|error| FunctionError::new(ErrorCode::Internal, error.0))?;
    let data = json!({ "email": user["email"], "bio": "" }).as_object().cloned().unwrap_or_default();
    ctx.store
        .write_one(Write { path, op: WriteOp::Set(data), if_version: None })
        .await
        .map_err(|error| FunctionError::new(error.code(), error.to_string()))?;
    Ok(Value::Null)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let overrides = Overrides { addr: args.next(), ..Overrides::default() };
    let mut server = Server::builder(Config::load(&dir, overrides)?)
        .on_call("quote", quote)
        .before_document_write("tidyPost", "posts/{post}", tidy_post)
        .on_document_written("countPosts", "posts/{post}", count_posts)
        .on_user_created("makeProfile", make_profile)
        .schedule("heartbeat", "0 * * * *", |tick, _ctx| async move {
            tracing::info!(%tick, "hourly");
            Ok(Value::Null)
        })
        .build()
        .await?;
    if let Some(key) = server.take_new_service_key() {
        println!("service key (shown once): {key}");
    }
    server.run_until_stopped(async { drop(tokio::signal::ctrl_c().await) }).await
}
