//! `hearth-server` as a library: functions in Rust registered on `Server::builder` run
//! at the same hook points as JavaScript ones (this server runs in the test's process).

use std::time::Duration;

use hearth_server::functions::{FunctionError, NativeContext};
use hearth_server::store::{DocPath, Write, WriteOp};
use hearth_server::{Config, Server};
use hearth_types::ErrorCode;
use serde_json::{Value, json};

async fn bump(ctx: &NativeContext, path: &str) -> Result<(), FunctionError> {
    let path = DocPath::parse(path).map_err(|error| FunctionError::new(ErrorCode::Internal, error.0))?;
    let data = json!({"n": {"$increment": 1}}).as_object().cloned().unwrap_or_default();
    ctx.store
        .write_one(Write { path, op: WriteOp::Set(data), if_version: None })
        .await
        .map_err(|error| FunctionError::new(error.code(), error.to_string()))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_functions_run_at_every_hook_point() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config { dir: dir.path().to_owned(), addr: "127.0.0.1:0".into(), ..Config::default() };
    let mut server = Server::builder(config)
        .on_call("add", |data, ctx| async move {
            assert!(ctx.auth.is_none(), "no caller");
            Ok(json!(data["a"].as_i64().unwrap_or(0) + data["b"].as_i64().unwrap_or(0)))
        })
        .on_call("panics", |_, _| async move { panic!("a bug") })
        .before_document_write("tidy", "posts/{post}", |event, _| async move {
            let Some(data) = event["after"]["data"].as_object() else { return Ok(Value::Null) };
            match data.get("title").and_then(Value::as_str).map(str::trim) {
                Some(title) if !title.is_empty() => {
                    let mut data = data.clone();
                    data.insert("title".into(), json!(title));
                    Ok(Value::Object(data))
                }
                _ => Err(FunctionError::new(ErrorCode::InvalidArgument, "a post needs a title")),
            }
        })
        .on_document_written("count", "posts/{post}", |_, ctx| async move {
            bump(&ctx, "stats/posts").await.map(|()| Value::Null)
        })
        .on_user_created("welcome", |user, ctx| async move {
            bump(&ctx, &format!("welcomed/{}", user["id"].as_str().unwrap_or("none"))).await.map(|()| Value::Null)
        })
        .build()
        .await
        .expect("server");
    let key = server.take_new_service_key().expect("first start makes a key");
    let base = format!("http://{}", server.local_addr());
    tokio::spawn(server.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::new();
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap_or(Value::Null))
    };

    let (status, body) =
        send(client.post(format!("{base}/v1/functions/add")).json(&json!({"data": {"a": 2, "b": 3}}))).await;
    assert_eq!((status, body), (200, json!({"result": 5})));
    let (status, body) = send(client.post(format!("{base}/v1/functions/panics")).json(&json!({}))).await;
    assert_eq!((status, &body["error"]["code"]), (500, &json!("internal")), "a panic fails the call alone: {body}");

    let put = |path: &str, data: Value| client.put(format!("{base}/v1/docs/{path}")).bearer_auth(&key).json(&data);
    let (status, body) = send(put("posts/p1", json!({"title": "  Hello  "}))).await;
    assert_eq!((status, &body["data"]["title"]), (201, &json!("Hello")), "{body}");
    let (status, body) = send(put("posts/p2", json!({"title": "   "}))).await;
    assert_eq!((status, &body["error"]["message"]), (400, &json!("a post needs a title")), "{body}");

    let (status, _) = send(client.post(format!("{base}/v1/auth/anonymous")).json(&json!({}))).await;
    assert_eq!(status, 200);
    // The trigger and the user function run from their logs, shortly after.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, stats) = send(client.get(format!("{base}/v1/docs/stats/posts")).bearer_auth(&key)).await;
        let (_, welcomed) = send(client.get(format!("{base}/v1/docs/welcomed")).bearer_auth(&key)).await;
        if stats["data"]["n"] == 1 && welcomed["docs"].as_array().map(Vec::len) == Some(1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not run: {stats} {welcomed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A deployed module may not take a Rust function's name.
    let module = "import { onCall } from \"hearth\";\nexport const add = onCall(() => 0);\n";
    let (status, body) =
        send(client.put(format!("{base}/v1/admin/functions/add.js")).bearer_auth(&key).body(module)).await;
    assert_eq!(status, 400, "{body}");
    let (_, list) = send(client.get(format!("{base}/v1/admin/functions")).bearer_auth(&key)).await;
    let add = list["functions"].as_array().expect("list").iter().find(|f| f["name"] == "add").cloned().expect("add");
    assert_eq!((&add["file"], &add["invocations"]), (&json!("(rust)"), &json!(1)), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_refuses_clashing_names_and_bad_patterns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = || Config { dir: dir.path().to_owned(), addr: "127.0.0.1:0".into(), ..Config::default() };
    let noop = |_: Value, _: NativeContext| async { Ok::<_, FunctionError>(Value::Null) };
    let twice = Server::builder(config()).on_call("f", noop).on_call("f", noop).build().await;
    assert!(twice.err().is_some_and(|error| error.to_string().contains("two Rust functions are named `f`")));
    let pattern = Server::builder(config()).before_document_write("g", "posts//x", noop).build().await;
    assert!(pattern.err().is_some_and(|error| error.to_string().contains("pattern")));
    let cron = Server::builder(config()).schedule("h", "every day", noop).build().await;
    assert!(cron.err().is_some_and(|error| error.to_string().contains("cron")));
}
