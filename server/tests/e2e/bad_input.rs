//! Every kind of bad input gets its code in the contract's shape and changes nothing.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{App, KEY, assert_error};

/// Sends raw bytes as a JSON body.
async fn raw(app: &App, method: Method, path: &str, body: impl Into<reqwest::Body>) -> (reqwest::StatusCode, Value) {
    app.send(app.admin(method, path).header("content-type", "application/json").body(body)).await
}

async fn count(app: &App, collection: &str) -> usize {
    let (_, page) = app.call(Method::GET, &format!("/v1/docs/{collection}?limit=1000"), None).await;
    page["docs"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn malformed_bodies_are_invalid_arguments_and_change_nothing() {
    let app = App::spawn().await;
    app.call(Method::PUT, "/v1/docs/c/keep", Some(json!({"n": 1}))).await;
    let nested = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
    let very_nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for (method, path, body) in [
        (Method::POST, "/v1/docs/c", "{bad json".to_owned()),
        (Method::POST, "/v1/docs/c", "[1, 2]".to_owned()),
        (Method::POST, "/v1/docs/c", "\"text\"".to_owned()),
        (Method::POST, "/v1/docs/c", String::new()),
        (Method::PUT, "/v1/docs/c/keep", "null".to_owned()),
        (Method::PUT, "/v1/docs/c/keep", nested),
        (Method::PUT, "/v1/docs/c/keep", very_nested),
        (Method::PATCH, "/v1/docs/c/keep", "{\"n\": {\"$bogus\": 1}}".to_owned()),
        (Method::PATCH, "/v1/docs/c/keep", "{\"s\": {\"$increment\": \"1\"}}".to_owned()),
        (Method::PUT, "/v1/docs/c/keep", "{\"$increment\": 1}".to_owned()),
        // U+0000, in a value or a key, is refused on both backends (PostgreSQL cannot store it).
        (Method::PUT, "/v1/docs/c/keep", "{\"s\": \"a\\u0000b\"}".to_owned()),
        (Method::PATCH, "/v1/docs/c/keep", "{\"k\\u0000\": 1}".to_owned()),
        (
            Method::POST,
            "/v1/query",
            "{\"collection\": \"c\", \"where\": [{\"field\": \"n\", \"op\": \"~=\", \"value\": 1}]}".to_owned(),
        ),
        (Method::POST, "/v1/query", "{\"collection\": \"c\", \"limit\": 1001}".to_owned()),
        (
            Method::POST,
            "/v1/query",
            "{\"collection\": \"c\", \"cursor\": \"eyJrIjpbXSwicCI6ImMva2VlcCJ9.AAAAAAAAAAAAAAAAAAAAAA\"}".to_owned(),
        ),
        (Method::POST, "/v1/query", "{\"collection\": \"c/keep\"}".to_owned()),
        (Method::POST, "/v1/query", "{\"collection\": \"c\", \"unknown\": true}".to_owned()),
        (Method::POST, "/v1/query", "{\"collection\": \"c\", \"limit\": \"ten\"}".to_owned()),
        (Method::POST, "/v1/aggregate", "{\"query\": {\"collection\": \"c\"}}".to_owned()),
        (Method::POST, "/v1/batch", "{\"writes\": []}".to_owned()),
        (Method::POST, "/v1/batch", "{\"writes\": [{\"op\": \"upsert\", \"path\": \"c/x\", \"data\": {}}]}".to_owned()),
        (Method::POST, "/v1/batch", "{\"writes\": [{\"op\": \"set\", \"path\": \"c/x\"}]}".to_owned()),
    ] {
        let (status, body) = raw(&app, method.clone(), path, body.clone()).await;
        assert_error(status, &body, 400, "invalid-argument");
        let _ = (method, path);
    }
    let (_, keep) = app.call(Method::GET, "/v1/docs/c/keep", None).await;
    assert_eq!((keep["version"].clone(), keep["data"].clone()), (json!(1), json!({"n": 1})));
    assert_eq!(count(&app, "c").await, 1);
    // $increment on a string stored in the document.
    app.call(Method::PUT, "/v1/docs/c/s", Some(json!({"s": "text"}))).await;
    let (status, body) = app.call(Method::PATCH, "/v1/docs/c/s", Some(json!({"s": {"$increment": 1}}))).await;
    assert_error(status, &body, 400, "invalid-argument");
}

#[tokio::test]
async fn bad_paths_are_refused_with_a_reason() {
    let app = App::spawn().await;
    for (method, path) in [
        (Method::GET, "/v1/docs/"),
        (Method::GET, "/v1/docs/rooms//r1"),
        (Method::GET, "/v1/docs/rooms/r1/"),
        (Method::GET, "/v1/docs/rooms/r%201"),
        (Method::PUT, "/v1/docs/rooms"),
        (Method::PATCH, "/v1/docs/rooms"),
        (Method::DELETE, "/v1/docs/rooms"),
        (Method::POST, "/v1/docs/rooms/r1"),
        (Method::GET, &format!("/v1/docs/rooms/{}", "x".repeat(129))),
    ] {
        let (status, body) = app.call(method.clone(), path, Some(json!({}))).await;
        let message = assert_error(status, &body, 400, "invalid-argument");
        assert!(!message.is_empty(), "{method} {path}");
    }
    assert_eq!(count(&app, "rooms").await, 0);
    // HTTP clients fold `..` away, so send those requests by hand.
    for path in ["/v1/docs/rooms/..", "/v1/docs/rooms/../x", "/v1/docs/./r"] {
        let answer = raw_request(
            &app.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("\"invalid-argument\""), "{path}: {answer}");
    }
}

#[tokio::test]
async fn refused_input_is_quoted_short_in_the_answer() {
    let app = App::spawn().await;
    let long = "k".repeat(20_000);
    for (method, path, body) in [
        (Method::POST, "/v1/query".to_owned(), json!({"collection": "c", long.as_str(): 1})),
        (Method::POST, "/v1/query".to_owned(), json!({"collection": format!("c/{long}")})),
        (
            Method::POST,
            "/v1/query".to_owned(),
            json!({"collection": "c", "where": [{"field": "n", "op": long, "value": 1}]}),
        ),
        (Method::PUT, "/v1/docs/c/x".to_owned(), json!({"n": {format!("${long}"): 1}})),
        (Method::GET, format!("/v1/docs/c/{}", "x".repeat(4000)), json!({})),
    ] {
        let (status, answer) = app.call(method.clone(), &path, Some(body)).await;
        let message = assert_error(status, &answer, 400, "invalid-argument");
        assert!(message.len() <= 1100, "{method} {path:.40}: {} bytes", message.len());
    }
    assert_eq!(count(&app, "c").await, 0);
}

fn raw_request(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    stream.write_all(request.as_bytes()).expect("sent");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[tokio::test]
async fn oversized_bodies_and_documents_are_payload_too_large() {
    let app = App::spawn().await;
    let big = json!({"blob": "x".repeat(1024 * 1024 + 10)}).to_string();
    let (status, body) = raw(&app, Method::POST, "/v1/docs/c", big.clone()).await;
    assert_error(status, &body, 413, "payload-too-large");
    let (status, body) = raw(&app, Method::PUT, "/v1/docs/c/x", big).await;
    assert_error(status, &body, 413, "payload-too-large");
    // A patch that grows a document past 1 MiB is refused by the store.
    let half = "y".repeat(700 * 1024);
    app.call(Method::PUT, "/v1/docs/c/grow", Some(json!({"a": half}))).await;
    let (status, body) = app.call(Method::PATCH, "/v1/docs/c/grow", Some(json!({"b": half}))).await;
    assert_error(status, &body, 413, "payload-too-large");
    let (_, doc) = app.call(Method::GET, "/v1/docs/c/grow", None).await;
    assert_eq!(doc["version"], 1);
}

#[tokio::test]
async fn a_batch_over_500_writes_is_refused_whole() {
    let app = App::spawn().await;
    let writes: Vec<Value> = (0..501).map(|i| json!({"op": "set", "path": format!("c/d{i}"), "data": {}})).collect();
    let (status, body) = app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes}))).await;
    assert_error(status, &body, 400, "invalid-argument");
    assert_eq!(count(&app, "c").await, 0);
    let writes: Vec<Value> = (0..500).map(|i| json!({"op": "set", "path": format!("c/d{i}"), "data": {}})).collect();
    let (status, _) = app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes}))).await;
    assert_eq!(status, 200);
    let mut bad: Vec<Value> = (0..3).map(|i| json!({"op": "set", "path": format!("d/d{i}"), "data": {}})).collect();
    bad.push(json!({"op": "set", "path": "d/../x", "data": {}}));
    let (status, body) = app.call(Method::POST, "/v1/batch", Some(json!({"writes": bad}))).await;
    assert_error(status, &body, 400, "invalid-argument");
    assert_eq!(body["error"]["details"]["index"], 3);
    assert_eq!(count(&app, "d").await, 0);
}

#[tokio::test]
async fn credentials_decide_before_anything_else() {
    let app = App::spawn().await;
    let url = app.url("/v1/docs/c/x");
    // No credentials is a caller the rules judge (`auth == null`); with no rules, denied.
    let (status, body) = app.send(app.client.get(&url)).await;
    assert_error(status, &body, 403, "permission-denied");
    let (status, body) = app.send(app.client.get(&url).bearer_auth("hk_not_a_real_key_at_all_0000000000")).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = app.send(app.client.get(&url).header("authorization", "Basic abc")).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = app.send(app.client.get(&url).bearer_auth("eyJhbGciOiJub25lIn0.e30.")).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = app.send(app.client.put(&url).json(&json!({"a": 1}))).await;
    assert_error(status, &body, 403, "permission-denied");
    let (status, _) = app.send(app.client.get(&url).bearer_auth(KEY)).await;
    assert_eq!(status, 404, "the service key reads");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = App::spawn().await;
    let response = app.client.get(app.url("/v1/nothing")).send().await.expect("sent");
    assert!(response.headers().contains_key("x-request-id"));
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_error(status, &body, 404, "not-found");
    let (status, body) = app.send(app.admin(Method::DELETE, "/v1/query")).await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "invalid-argument");
}
