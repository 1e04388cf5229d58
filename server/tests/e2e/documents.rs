//! The document routes of the contract, over HTTP.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{App, assert_error};

#[tokio::test]
async fn create_read_replace_patch_and_delete_a_document() {
    let app = App::spawn().await;
    let response = app.admin(Method::POST, "/v1/docs/rooms").json(&json!({"title": "x"})).send().await.expect("sent");
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().expect("ascii").to_owned();
    assert_eq!(response.headers()["etag"], "\"1\"");
    let created: Value = response.json().await.expect("json");
    let id = created["id"].as_str().expect("id");
    assert_eq!(id.len(), 20);
    assert_eq!(location, format!("/v1/docs/rooms/{id}"));
    assert_eq!(created["path"], format!("rooms/{id}"));
    assert_eq!(created["version"], 1);
    assert!(created["created_at"].as_str().expect("time").ends_with('Z'));
    assert_eq!(created["created_at"].as_str().map(str::len), Some(27), "microsecond RFC 3339");

    let (status, read) = app.call(Method::GET, &location, None).await;
    assert_eq!(status, 200);
    assert_eq!(read, created);

    let (status, put) = app.call(Method::PUT, "/v1/docs/rooms/r1", Some(json!({"title": "a", "n": 1}))).await;
    assert_eq!((status.as_u16(), put["version"].clone()), (201, json!(1)));
    let (status, replaced) = app.call(Method::PUT, "/v1/docs/rooms/r1", Some(json!({"title": "b"}))).await;
    assert_eq!(status, 200);
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["data"], json!({"title": "b"}));
    assert_eq!(replaced["created_at"], put["created_at"]);

    let (status, patched) = app
        .call(
            Method::PATCH,
            "/v1/docs/rooms/r1",
            Some(json!({"meta": {"a": 1, "b": 2}, "title": null, "n": {"$increment": 5}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["data"], json!({"meta": {"a": 1, "b": 2}, "n": 5}));
    let (_, patched) = app
        .call(Method::PATCH, "/v1/docs/rooms/r1", Some(json!({"meta": {"a": null, "c": 3}, "tags": {"$array_union": ["x", "y"]}, "at": {"$server_time": true}})))
        .await;
    assert_eq!(patched["data"]["meta"], json!({"b": 2, "c": 3}));
    assert_eq!(patched["data"]["tags"], json!(["x", "y"]));
    assert_eq!(patched["data"]["at"], patched["updated_at"]);
    let (_, patched) =
        app.call(Method::PATCH, "/v1/docs/rooms/r1", Some(json!({"tags": {"$array_remove": ["x"]}}))).await;
    assert_eq!(patched["data"]["tags"], json!(["y"]));
    assert_eq!(patched["version"], 5);

    let (status, body) = app.call(Method::DELETE, "/v1/docs/rooms/r1", None).await;
    assert_eq!((status.as_u16(), body), (204, Value::Null));
    let (status, body) = app.call(Method::GET, "/v1/docs/rooms/r1", None).await;
    assert_error(status, &body, 404, "not-found");
    let (status, _) = app.call(Method::DELETE, "/v1/docs/rooms/r1", None).await;
    assert_eq!(status, 204, "deleting an absent document is fine");
    let (status, body) = app.call(Method::PATCH, "/v1/docs/rooms/r1", Some(json!({"a": 1}))).await;
    assert_error(status, &body, 404, "not-found");
}

#[tokio::test]
async fn preconditions_guard_put_patch_and_delete() {
    let app = App::spawn().await;
    let put = |header: &'static str, value: &'static str, data: Value| {
        app.admin(Method::PUT, "/v1/docs/c/d").header(header, value).json(&data)
    };
    let (status, _) = app.send(put("if-none-match", "*", json!({"v": 1}))).await;
    assert_eq!(status, 201);
    let (status, body) = app.send(put("if-none-match", "*", json!({"v": 2}))).await;
    assert_error(status, &body, 409, "already-exists");
    let (status, body) = app.send(put("if-match", "\"2\"", json!({"v": 2}))).await;
    assert_error(status, &body, 412, "failed-precondition");
    for (spelling, version) in [("1", 2), ("\"2\"", 3), ("W/\"3\"", 4)] {
        let (status, body) = app.send(put("if-match", spelling, json!({"v": version}))).await;
        assert_eq!((status.as_u16(), body["version"].clone()), (200, json!(version)), "If-Match: {spelling}");
    }
    let (status, body) =
        app.send(app.admin(Method::PATCH, "/v1/docs/c/d").header("if-match", "3").json(&json!({"x": 1}))).await;
    assert_error(status, &body, 412, "failed-precondition");
    let (status, body) = app.send(app.admin(Method::DELETE, "/v1/docs/c/d").header("if-match", "3")).await;
    assert_error(status, &body, 412, "failed-precondition");
    let (status, body) = app.call(Method::GET, "/v1/docs/c/d", None).await;
    assert_eq!((status.as_u16(), body["data"].clone()), (200, json!({"v": 4})), "failed preconditions changed nothing");
    let (status, _) = app.send(app.admin(Method::DELETE, "/v1/docs/c/d").header("if-match", "4")).await;
    assert_eq!(status, 204);
    let (status, body) = app.send(put("if-match", "1", json!({}))).await;
    assert_error(status, &body, 412, "failed-precondition");
}

async fn seed(app: &App, docs: &[(&str, Value)]) {
    let writes: Vec<Value> = docs.iter().map(|(path, data)| json!({"op": "set", "path": path, "data": data})).collect();
    let (status, body) = app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes}))).await;
    assert_eq!(status, 200, "{body}");
}

fn ids(body: &Value) -> Vec<String> {
    body["docs"].as_array().expect("docs").iter().map(|doc| doc["id"].as_str().expect("id").to_owned()).collect()
}

#[tokio::test]
async fn queries_filter_order_and_page_as_the_contract_says() {
    let app = App::spawn().await;
    seed(
        &app,
        &[
            ("items/a", json!({"score": 10, "tags": ["rust", "db"], "city": {"name": "Oslo"}, "kind": "x"})),
            ("items/b", json!({"score": 20, "tags": ["go"], "city": {"name": "Rome"}, "kind": "y"})),
            ("items/c", json!({"score": "30", "tags": [], "kind": "x"})),
            ("items/d", json!({"score": 5.5, "kind": null})),
            ("items/e", json!({"score": 20, "tags": ["rust"], "kind": "z"})),
            ("other/a", json!({"score": 100})),
            ("items/a/items/n", json!({"score": 15})),
        ],
    )
    .await;
    let query = |q: Value| app.call(Method::POST, "/v1/query", Some(q));
    let cases = [
        (json!([{"field": "score", "op": ">=", "value": 10}]), vec!["a", "b", "e"]),
        (json!([{"field": "score", "op": "<", "value": 100}]), vec!["a", "b", "d", "e"]),
        (json!([{"field": "score", "op": "==", "value": 20}]), vec!["b", "e"]),
        (json!([{"field": "score", "op": "!=", "value": 20}]), vec!["a", "c", "d"]),
        (json!([{"field": "kind", "op": "in", "value": ["x", null]}]), vec!["a", "c", "d"]),
        (json!([{"field": "kind", "op": "not-in", "value": ["x", null]}]), vec!["b", "e"]),
        (json!([{"field": "tags", "op": "array-contains", "value": "rust"}]), vec!["a", "e"]),
        (json!([{"field": "tags", "op": "array-contains-any", "value": ["go", "db"]}]), vec!["a", "b"]),
        (json!([{"field": "city.name", "op": ">", "value": "P"}]), vec!["b"]),
        (json!([{"field": "__id__", "op": ">", "value": "c"}]), vec!["d", "e"]),
        (json!([{"field": "score", "op": ">", "value": "1"}]), vec!["c"]),
    ];
    for (filters, expected) in cases {
        let (status, body) = query(json!({"collection": "items", "where": filters})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(ids(&body), expected, "{filters}");
        assert_eq!(body["cursor"], Value::Null);
    }
    let (_, body) =
        query(json!({"collection": "items", "order_by": [{"field": "score", "dir": "desc"}, {"field": "kind"}]})).await;
    assert_eq!(ids(&body), ["c", "b", "e", "a", "d"], "strings sort after numbers; ties break on the next key");
    let (_, body) = query(json!({"collection": "items", "order_by": [{"field": "score"}]})).await;
    assert_eq!(ids(&body), ["d", "a", "b", "e", "c"], "ties break on path ascending");
    let (_, body) = query(json!({"collection_group": "items", "where": [{"field": "score", "op": ">", "value": 12}], "order_by": [{"field": "score"}]})).await;
    assert_eq!(
        body["docs"].as_array().map(|d| d.iter().map(|d| d["path"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("items/a/items/n"), json!("items/b"), json!("items/e")])
    );

    let mut seen = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let (status, body) =
            query(json!({"collection": "items", "order_by": [{"field": "score"}], "limit": 2, "cursor": cursor})).await;
        assert_eq!(status, 200, "{body}");
        seen.extend(ids(&body));
        cursor = body["cursor"].clone();
        if cursor.is_null() {
            break;
        }
        // A document inserted before the cursor is not seen; one after it is.
        if seen.len() == 2 {
            seed(&app, &[("items/aa", json!({"score": 1})), ("items/zz", json!({"score": 25}))]).await;
        }
    }
    assert_eq!(seen, ["d", "a", "b", "e", "zz", "c"]);

    let (_, page) = app.call(Method::GET, "/v1/docs/items?limit=3", None).await;
    assert_eq!(ids(&page), ["a", "aa", "b"]);
    let cursor = page["cursor"].as_str().expect("more pages");
    let (_, page) = app.call(Method::GET, &format!("/v1/docs/items?limit=3&cursor={cursor}"), None).await;
    assert_eq!(ids(&page), ["c", "d", "e"]);
    let cursor = page["cursor"].as_str().expect("zz is left");
    let (_, page) = app.call(Method::GET, &format!("/v1/docs/items?limit=3&cursor={cursor}"), None).await;
    assert_eq!((ids(&page), page["cursor"].clone()), (vec!["zz".to_owned()], Value::Null));
}

#[tokio::test]
async fn aggregates_count_sum_and_average_numbers_only() {
    let app = App::spawn().await;
    seed(
        &app,
        &[
            ("o/1", json!({"total": 10, "owner": "u1"})),
            ("o/2", json!({"total": 2.5, "owner": "u1"})),
            ("o/3", json!({"total": "n/a", "owner": "u1"})),
            ("o/4", json!({"total": 100, "owner": "u2"})),
        ],
    )
    .await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/aggregate",
            Some(json!({
            "query": {"collection": "o", "where": [{"field": "owner", "op": "==", "value": "u1"}]},
            "count": true, "sum": ["total", "missing"], "avg": ["total", "missing"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"count": 3, "sum": {"total": 12.5, "missing": 0}, "avg": {"total": 6.25, "missing": null}})
    );
    let (_, body) =
        app.call(Method::POST, "/v1/aggregate", Some(json!({"query": {"collection": "o"}, "count": true}))).await;
    assert_eq!(body, json!({"count": 4}));
}

#[tokio::test]
async fn a_batch_commits_all_its_writes_or_none() {
    let app = App::spawn().await;
    seed(&app, &[("b/existing", json!({"n": 1}))]).await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/batch",
            Some(json!({"writes": [
                {"op": "create", "path": "b/new", "data": {"n": 0}},
                {"op": "update", "path": "b/existing", "data": {"n": {"$increment": 1}}, "if_version": 1},
                {"op": "set", "path": "b/new", "data": {"n": 9}},
                {"op": "delete", "path": "b/gone"},
            ]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"],
        json!([
        {"path": "b/new", "version": 1}, {"path": "b/existing", "version": 2},
        {"path": "b/new", "version": 2}, {"path": "b/gone", "version": 0}])
    );

    let (status, body) = app
        .call(
            Method::POST,
            "/v1/batch",
            Some(json!({"writes": [
                {"op": "set", "path": "b/other", "data": {"n": 1}},
                {"op": "delete", "path": "b/new"},
                {"op": "update", "path": "b/existing", "data": {"n": 0}, "if_version": 1},
            ]})),
        )
        .await;
    let message = assert_error(status, &body, 412, "failed-precondition");
    assert_eq!(body["error"]["details"]["index"], 2);
    assert!(message.starts_with("write 2"), "{message}");
    let (status, _) = app.call(Method::GET, "/v1/docs/b/other", None).await;
    assert_eq!(status, 404, "nothing of a failed batch is written");
    let (status, _) = app.call(Method::GET, "/v1/docs/b/new", None).await;
    assert_eq!(status, 200, "nothing of a failed batch is deleted");

    let (status, body) = app
        .call(
            Method::POST,
            "/v1/batch",
            Some(json!({"writes": [
            {"op": "create", "path": "b/x", "data": {}}, {"op": "create", "path": "b/existing", "data": {}}]})),
        )
        .await;
    assert_error(status, &body, 409, "already-exists");
    assert_eq!(body["error"]["details"]["index"], 1);
}
