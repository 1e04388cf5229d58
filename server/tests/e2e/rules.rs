//! The Rules section of the contract through the real binary: every document route tried
//! by an owner, another user, an anonymous user and a caller without credentials; rules
//! that read other documents; pages that stay full; rules replaced and reloaded at run time.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{App, assert_error};

/// A signed-in caller: their uid and access token.
struct Who {
    uid: String,
    token: Option<String>,
}

impl Who {
    fn nobody() -> Who {
        Who { uid: String::new(), token: None }
    }
}

async fn signup(app: &App, email: &str) -> Who {
    let body = json!({"email": email, "password": "correct horse battery staple"});
    let (status, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&body)).await;
    assert_eq!(status, 200, "{session}");
    Who {
        uid: session["user"]["id"].as_str().expect("uid").to_owned(),
        token: session["access_token"].as_str().map(str::to_owned),
    }
}

async fn anonymous(app: &App) -> Who {
    let (status, session) = app.send(app.client.post(app.url("/v1/auth/anonymous")).json(&json!({}))).await;
    assert_eq!(status, 200, "{session}");
    Who {
        uid: session["user"]["id"].as_str().expect("uid").to_owned(),
        token: session["access_token"].as_str().map(str::to_owned),
    }
}

async fn put_rules(app: &App, rules: &str) -> (StatusCode, Value) {
    app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules.to_owned())).await
}

async fn as_who(app: &App, who: &Who, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(token) = &who.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    app.send(request).await
}

fn ids(page: &Value) -> BTreeSet<String> {
    page["docs"].as_array().expect("docs").iter().map(|doc| doc["id"].as_str().expect("id").to_owned()).collect()
}

const NOTES: &str = r#"
["notes/{id}"]
read = "auth != null && resource.data.owner == auth.uid"
create = "auth != null && request.data.owner == auth.uid"
update = "auth != null && resource.data.owner == auth.uid && request.data.owner == auth.uid"
delete = "auth != null && resource.data.owner == auth.uid"
"#;

#[tokio::test]
async fn no_route_reads_or_writes_what_the_rules_deny() {
    let app = App::spawn().await;
    assert_eq!(put_rules(&app, NOTES).await.0, 204);
    let alice = signup(&app, "alice@example.com").await;
    let bob = signup(&app, "bob@example.com").await;
    let anon = anonymous(&app).await;
    let nobody = Who::nobody();

    // Create: only as yourself, by PUT and by POST.
    let mine = json!({"owner": alice.uid, "title": "a1", "n": 1});
    assert_eq!(as_who(&app, &alice, Method::PUT, "/v1/docs/notes/a1", Some(mine)).await.0, 201);
    let (status, created) =
        as_who(&app, &alice, Method::POST, "/v1/docs/notes", Some(json!({"owner": alice.uid, "title": "a2"}))).await;
    assert_eq!(status, 201, "{created}");
    let a2 = created["id"].as_str().expect("id").to_owned();
    assert_eq!(as_who(&app, &bob, Method::PUT, "/v1/docs/notes/b1", Some(json!({"owner": bob.uid}))).await.0, 201);
    for who in [&bob, &anon, &nobody] {
        let forged = json!({"owner": alice.uid});
        let (status, body) = as_who(&app, who, Method::PUT, "/v1/docs/notes/forged", Some(forged.clone())).await;
        assert_error(status, &body, 403, "permission-denied");
        let (status, body) = as_who(&app, who, Method::POST, "/v1/docs/notes", Some(forged)).await;
        assert_error(status, &body, 403, "permission-denied");
    }

    // Get: the owner only; a denied caller learns nothing about whether it exists.
    let (status, note) = as_who(&app, &alice, Method::GET, "/v1/docs/notes/a1", None).await;
    assert_eq!((status.as_u16(), note["data"]["title"].clone()), (200, json!("a1")));
    for who in [&bob, &anon, &nobody] {
        for path in ["/v1/docs/notes/a1", "/v1/docs/notes/absent"] {
            let (status, body) = as_who(&app, who, Method::GET, path, None).await;
            assert_error(status, &body, 403, "permission-denied");
        }
    }

    // Update (PUT, PATCH, transforms) and delete: the owner only, and not to give it away.
    for who in [&bob, &anon, &nobody] {
        let (status, body) =
            as_who(&app, who, Method::PATCH, "/v1/docs/notes/a1", Some(json!({"n": {"$increment": 1}}))).await;
        assert_error(status, &body, 403, "permission-denied");
        let (status, body) =
            as_who(&app, who, Method::PUT, "/v1/docs/notes/a1", Some(json!({"owner": who.uid.clone()}))).await;
        assert_error(status, &body, 403, "permission-denied");
        let (status, body) = as_who(&app, who, Method::DELETE, "/v1/docs/notes/a1", None).await;
        assert_error(status, &body, 403, "permission-denied");
    }
    let (status, body) = as_who(&app, &alice, Method::PATCH, "/v1/docs/notes/a1", Some(json!({"owner": null}))).await;
    assert_error(status, &body, 403, "permission-denied");
    let (status, body) =
        as_who(&app, &alice, Method::PATCH, "/v1/docs/notes/a1", Some(json!({"owner": bob.uid.clone()}))).await;
    assert_error(status, &body, 403, "permission-denied");
    let (status, note) =
        as_who(&app, &alice, Method::PATCH, "/v1/docs/notes/a1", Some(json!({"n": {"$increment": 1}}))).await;
    assert_eq!((status.as_u16(), note["data"]["n"].clone(), note["version"].clone()), (200, json!(2), json!(2)));

    // List, query and aggregate: only your own, and no caller may not list at all.
    let (status, page) = as_who(&app, &alice, Method::GET, "/v1/docs/notes", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids(&page), BTreeSet::from(["a1".to_owned(), a2.clone()]));
    let (_, page) = as_who(&app, &bob, Method::GET, "/v1/docs/notes", None).await;
    assert_eq!(ids(&page), BTreeSet::from(["b1".to_owned()]));
    let (_, page) = as_who(&app, &anon, Method::GET, "/v1/docs/notes", None).await;
    assert_eq!(ids(&page), BTreeSet::new());
    let (status, body) = as_who(&app, &nobody, Method::GET, "/v1/docs/notes", None).await;
    assert_error(status, &body, 403, "permission-denied");
    let query = json!({"collection": "notes", "where": [{"field": "title", "op": "!=", "value": "zzz"}]});
    let (_, page) = as_who(&app, &bob, Method::POST, "/v1/query", Some(query.clone())).await;
    assert_eq!(ids(&page), BTreeSet::new(), "bob's note has no title");
    let (_, page) = as_who(&app, &alice, Method::POST, "/v1/query", Some(query)).await;
    assert_eq!(ids(&page).len(), 2);
    let group = json!({"collection_group": "notes"});
    let (status, page) = as_who(&app, &bob, Method::POST, "/v1/query", Some(group.clone())).await;
    assert_eq!((status.as_u16(), ids(&page)), (200, BTreeSet::from(["b1".to_owned()])), "{page}");
    let (status, body) = as_who(&app, &nobody, Method::POST, "/v1/query", Some(json!({"collection": "notes"}))).await;
    assert_error(status, &body, 403, "permission-denied");
    let count = json!({"query": {"collection": "notes"}, "count": true});
    let (_, counted) = as_who(&app, &alice, Method::POST, "/v1/aggregate", Some(count.clone())).await;
    assert_eq!(counted["count"], 2, "{counted}");
    let (_, counted) = as_who(&app, &bob, Method::POST, "/v1/aggregate", Some(count.clone())).await;
    assert_eq!(counted["count"], 1, "{counted}");
    let (status, body) = as_who(&app, &nobody, Method::POST, "/v1/aggregate", Some(count.clone())).await;
    assert_error(status, &body, 403, "permission-denied");
    let (_, counted) = app.call(Method::POST, "/v1/aggregate", Some(count)).await;
    assert_eq!(counted["count"], 3, "the service key bypasses the rules: {counted}");

    // Batch: one denied write denies the batch, and nothing of it is written.
    let batch = json!({"writes": [
        {"op": "create", "path": "notes/b2", "data": {"owner": bob.uid}},
        {"op": "update", "path": "notes/a1", "data": {"title": "mine now"}},
    ]});
    let (status, body) = as_who(&app, &bob, Method::POST, "/v1/batch", Some(batch)).await;
    assert_error(status, &body, 403, "permission-denied");
    assert_eq!(body["error"]["details"]["index"], 1, "{body}");
    let (status, _) = app.call(Method::GET, "/v1/docs/notes/b2", None).await;
    assert_eq!(status, 404, "the allowed write of a denied batch is not written");

    // Delete: the owner only; what others tried left everything in place.
    assert_eq!(as_who(&app, &alice, Method::DELETE, "/v1/docs/notes/a1", None).await.0, 204);
    let (_, all) = app.call(Method::GET, "/v1/docs/notes", None).await;
    assert_eq!(ids(&all), BTreeSet::from([a2, "b1".to_owned()]));
}

const CHAT: &str = r#"
["rooms/{room}"]
read = "auth != null && auth.uid in resource.data.members"
create = "auth != null && request.data.owner == auth.uid && auth.uid in request.data.members"

["rooms/{room}/messages/{msg}"]
read = "auth != null && auth.uid in get('rooms/' + room).data.members"
create = "auth != null && auth.uid in get('rooms/' + room).data.members && request.data.author == auth.uid"
"#;

#[tokio::test]
async fn rules_read_other_documents_as_the_write_sees_them() {
    let app = App::spawn().await;
    assert_eq!(put_rules(&app, CHAT).await.0, 204);
    let alice = signup(&app, "alice@example.com").await;
    let bob = signup(&app, "bob@example.com").await;
    // The room and its first message in one batch: `get()` sees the room the batch made.
    let batch = json!({"writes": [
        {"op": "create", "path": "rooms/r1", "data": {"owner": alice.uid, "members": [alice.uid]}},
        {"op": "create", "path": "rooms/r1/messages/m1", "data": {"author": alice.uid, "text": "first"}},
    ]});
    let (status, body) = as_who(&app, &alice, Method::POST, "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    let message = json!({"author": bob.uid, "text": "let me in"});
    let (status, body) = as_who(&app, &bob, Method::POST, "/v1/docs/rooms/r1/messages", Some(message.clone())).await;
    assert_error(status, &body, 403, "permission-denied");
    let (status, body) = as_who(&app, &bob, Method::GET, "/v1/docs/rooms/r1/messages", None).await;
    assert_error(status, &body, 403, "permission-denied");
    let (status, page) = as_who(&app, &alice, Method::GET, "/v1/docs/rooms/r1/messages", None).await;
    assert_eq!((status.as_u16(), ids(&page)), (200, BTreeSet::from(["m1".to_owned()])));
    // Alice adds bob (with the service key: rooms have no update rule); now bob posts.
    let (status, _) =
        app.call(Method::PATCH, "/v1/docs/rooms/r1", Some(json!({"members": [alice.uid, bob.uid]}))).await;
    assert_eq!(status, 200);
    let (status, body) = as_who(&app, &bob, Method::POST, "/v1/docs/rooms/r1/messages", Some(message)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = as_who(&app, &bob, Method::GET, "/v1/docs/rooms/r1/messages/m1", None).await;
    assert_eq!(status, 200, "{body}");
    // Messages of a room that does not exist: nobody reads them.
    let (status, body) = as_who(&app, &bob, Method::GET, "/v1/docs/rooms/nope/messages/m1", None).await;
    assert_error(status, &body, 403, "permission-denied");
}

#[tokio::test]
async fn rules_checked_per_document_keep_pages_full() {
    let app = App::spawn().await;
    // `%` cannot be pushed into the query: every document is checked.
    let rules = "[\"nums/{id}\"]\nread = \"auth != null && resource.data.n % 2 == 0 && resource.data.n >= 1190\"\n";
    assert_eq!(put_rules(&app, rules).await.0, 204);
    let user = signup(&app, "carol@example.com").await;
    for start in (0..1200).step_by(400) {
        let writes: Vec<Value> = (start..start + 400)
            .map(|n| json!({"op": "set", "path": format!("nums/{n:05}"), "data": {"n": n}}))
            .collect();
        let (status, body) = app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes}))).await;
        assert_eq!(status, 200, "{body}");
    }
    // The first 1000 documents are all unreadable: the scan budget ends the page early,
    // and its cursor carries on where the scan stopped.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = json!({"collection": "nums", "limit": 3, "cursor": cursor});
        let (status, page) = as_who(&app, &user, Method::POST, "/v1/query", Some(query)).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let docs = page["docs"].as_array().expect("docs");
        seen.extend(docs.iter().map(|doc| doc["data"]["n"].as_i64().expect("n")));
        match page["cursor"].as_str() {
            Some(next) => {
                assert!(docs.len() == 3 || pages == 1, "a short page only when the budget ran out: {page}");
                cursor = Some(next.to_owned());
            }
            None => break,
        }
        assert!(pages < 20, "pages keep coming");
    }
    assert_eq!(seen, vec![1190, 1192, 1194, 1196, 1198]);
}

#[tokio::test]
async fn rules_are_replaced_and_reloaded_without_a_restart() {
    let app = App::spawn().await;
    let user = signup(&app, "dave@example.com").await;
    let open = "[\"open/{id}\"]\nread = \"true\"\n";
    assert_eq!(put_rules(&app, open).await.0, 204);
    let response = app.admin(Method::GET, "/v1/admin/rules").send().await.expect("sent");
    assert_eq!(response.headers()["content-type"], "application/toml");
    assert_eq!(response.text().await.expect("text"), open);
    assert_eq!(std::fs::read_to_string(app.dir().join("rules.toml")).expect("persisted"), open);
    assert_eq!(as_who(&app, &user, Method::GET, "/v1/docs/open/x", None).await.0, 404, "allowed, absent");

    // Refused whole, naming the place; the old rules stay.
    for (bad, key, reason) in [
        ("[\"open/{id}\"]\nread = \"auth.uid ==\"\n", Some("read"), "syntax error"),
        ("[\"open/{id}\"]\nread = \"user == null\"\n", Some("read"), "unknown variable `user`"),
        ("[\"open/{id}\"]\nreed = \"true\"\n", Some("reed"), "unknown key"),
        ("[\"open//{id}\"]\nread = \"true\"\n", None, "neither a valid id"),
        ("[\"open/{id}\"]\nread = \"'yes'\"\n", Some("read"), "not a bool"),
        ("[\"open/{id}\"]\nread = \"exists('a/b/c')\"\n", Some("read"), "not a document path"),
        ("[\"open/{id}\"\nread = 1\n", None, ""),
    ] {
        let (status, body) = put_rules(&app, bad).await;
        let message = assert_error(status, &body, 400, "invalid-argument");
        assert!(message.contains(reason), "{message}");
        if let Some(key) = key {
            assert_eq!(body["error"]["details"]["key"], key, "{body}");
            assert_eq!(body["error"]["details"]["pattern"], "open/{id}", "{body}");
        }
        assert!(body["error"]["details"]["line"].is_u64(), "{body}");
    }
    assert_eq!(std::fs::read_to_string(app.dir().join("rules.toml")).expect("kept"), open);
    assert_eq!(as_who(&app, &user, Method::GET, "/v1/docs/open/x", None).await.0, 404, "old rules in force");

    // Only the service key reads or replaces rules.
    let (status, body) = as_who(&app, &user, Method::PUT, "/v1/admin/rules", None).await;
    assert_error(status, &body, 403, "permission-denied");
    let (status, body) = as_who(&app, &Who::nobody(), Method::GET, "/v1/admin/rules", None).await;
    assert_error(status, &body, 401, "unauthenticated");

    // An edit of the file takes effect within seconds; a broken edit is ignored.
    std::fs::write(app.dir().join("rules.toml"), "[\"open/{id}\"]\nread = \"false\"\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while as_who(&app, &user, Method::GET, "/v1/docs/open/x", None).await.0 != 403 {
        assert!(Instant::now() < deadline, "the edited rules never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(app.dir().join("rules.toml"), "[\"open/{id}\"]\nread = \"tru e\"\n").expect("write");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(as_who(&app, &user, Method::GET, "/v1/docs/open/x", None).await.0, 403, "the last good rules stay");
    assert!(app.logs("rules file refused"), "the refusal is logged");
}

#[test]
fn the_rules_command_tests_and_checks_rules_files() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let run = |args: &[&std::ffi::OsStr]| crate::support::hearth_bin().args(args).output().expect("hearth runs");
    for app in ["chat", "todo"] {
        let tests = examples.join(app).join("rules.test.toml");
        let output = run(&["rules".as_ref(), "test".as_ref(), tests.as_os_str()]);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{app}: {text}");
        assert!(text.contains(" 0 failed"), "{text}");
        let rules = examples.join(app).join("rules.toml");
        assert!(run(&["rules".as_ref(), "check".as_ref(), rules.as_os_str()]).status.success());
    }
    // The chat cases against the todo rules: failures, each with what was expected and why.
    let tests = examples.join("chat/rules.test.toml");
    let todo = examples.join("todo/rules.toml");
    let output = run(&["rules".as_ref(), "test".as_ref(), tests.as_os_str(), "--rules".as_ref(), todo.as_os_str()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED  a member reads the room"), "{text}");
    assert!(text.contains("expected allow, got deny (no rule for `get` matches `rooms/r1`)"), "{text}");
    let broken = tempfile::tempdir().expect("temp dir");
    let file = broken.path().join("rules.toml");
    std::fs::write(&file, "[\"a/{b}\"]\nread = \"auth.uid ==\"\n").expect("write");
    let output = run(&["rules".as_ref(), "check".as_ref(), file.as_os_str()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("line 2: [\"a/{b}\"] read: syntax error"));
}
