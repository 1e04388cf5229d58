//! The Realtime section of the contract over real sockets: snapshots then ordered changes,
//! windows that stay equal to a fresh query, rules on every delivery, resume after a cut,
//! and a slow reader cut with 4008.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{App, Client, KEY};

/// The server process's resident memory.
fn rss_kib(app: &App) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.child.id())).expect("process status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number of KiB")
}

fn kinds(message: &Value) -> Vec<(String, String)> {
    message["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|change| {
            (change["type"].as_str().expect("type").to_owned(), change["doc"]["id"].as_str().expect("id").to_owned())
        })
        .collect()
}

fn pair(kind: &str, id: &str) -> (String, String) {
    (kind.to_owned(), id.to_owned())
}

#[tokio::test]
async fn subscriptions_get_a_snapshot_then_every_change_in_commit_order() {
    let app = App::spawn().await;
    for (id, score) in [("a", 5), ("b", 3), ("c", 1)] {
        app.call(Method::PUT, &format!("/v1/docs/scores/{id}"), Some(json!({"score": score}))).await;
    }
    let mut client = Client::connect(&app, Some(KEY)).await;
    client.send(json!({"op": "sub", "id": "doc", "doc": "scores/a"})).await;
    let snapshot = client.next().await;
    assert_eq!((snapshot["op"].clone(), snapshot["id"].clone()), (json!("snapshot"), json!("doc")));
    assert_eq!(snapshot["docs"][0]["data"]["score"], 5);
    // The top two by score: a window that must stay equal to a fresh query.
    let top = json!({"collection": "scores", "order_by": [{"field": "score", "dir": "desc"}], "limit": 2});
    client.send(json!({"op": "sub", "id": "top", "query": top})).await;
    // A ping right behind the sub is answered after its snapshot.
    let answered = client.until_pong().await;
    assert_eq!(answered.len(), 1, "{answered:?}");
    let snapshot = &answered[0];
    let ids: Vec<&str> =
        snapshot["docs"].as_array().expect("docs").iter().map(|d| d["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["a", "b"]);

    // A new leader enters and pushes `b` out of the window.
    app.call(Method::PUT, "/v1/docs/scores/d", Some(json!({"score": 9}))).await;
    let changes = client.next().await;
    assert_eq!(changes["id"], "top");
    let mut got = kinds(&changes);
    got.sort();
    assert_eq!(got, vec![pair("added", "d"), pair("removed", "b")]);
    // The leader leaves: the next one (`b`, read from the store) comes back in.
    app.call(Method::DELETE, "/v1/docs/scores/d", None).await;
    let mut got = kinds(&client.next().await);
    got.sort();
    assert_eq!(got, vec![pair("added", "b"), pair("removed", "d")]);
    // A change to the watched document reaches both subscriptions, in order.
    app.call(Method::PATCH, "/v1/docs/scores/a", Some(json!({"score": {"$increment": 1}}))).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let message = client.next().await;
        assert_eq!(kinds(&message), vec![pair("modified", "a")], "{message}");
        assert_eq!(message["changes"][0]["doc"]["data"]["score"], 6);
        seen.push(message["id"].as_str().expect("id").to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["doc", "top"]);
    // A change outside the window and the document: nothing.
    app.call(Method::PATCH, "/v1/docs/scores/c", Some(json!({"score": 0}))).await;
    client.quiet().await;
    // Unsubscribed: nothing more.
    client.send(json!({"op": "unsub", "id": "doc"})).await;
    client.send(json!({"op": "ping"})).await;
    assert_eq!(client.next().await["op"], "pong");
    app.call(Method::DELETE, "/v1/docs/scores/a", None).await;
    let message = client.next().await;
    assert_eq!(message["id"], "top", "{message}");
    client.quiet().await;

    // Bad frames get an error op, and the socket stays open.
    for bad in [json!({"op": "nope"}), json!({"op": "sub", "id": "x"}), json!({"op": "sub", "id": "x", "doc": "a/b/c"})]
    {
        client.send(bad.clone()).await;
        let answer = client.next().await;
        assert_eq!(
            (answer["op"].clone(), answer["code"].clone()),
            (json!("error"), json!("invalid-argument")),
            "{bad}"
        );
    }
    client.socket.send(Message::text("{not json")).await.expect("sent");
    assert_eq!(client.next().await["code"], "invalid-argument");
    client.send(json!({"op": "ping"})).await;
    assert_eq!(client.next().await["op"], "pong");
}

#[tokio::test]
async fn rules_decide_every_delivery() {
    let app = App::spawn().await;
    let rules = "[\"notes/{id}\"]\nread = \"auth != null && resource.data.owner == auth.uid\"\n";
    let (status, _) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await;
    assert_eq!(status, 204);
    let signup = |email: &'static str| {
        let body = json!({"email": email, "password": "correct horse battery staple"});
        app.send(app.client.post(app.url("/v1/auth/signup")).json(&body))
    };
    let (_, alice) = signup("alice@example.com").await;
    let (_, bob) = signup("bob@example.com").await;
    let (alice_id, alice_token) =
        (alice["user"]["id"].clone(), alice["access_token"].as_str().expect("token").to_owned());
    let bob_id = bob["user"]["id"].clone();
    app.call(Method::PUT, "/v1/docs/notes/a1", Some(json!({"owner": alice_id}))).await;
    app.call(Method::PUT, "/v1/docs/notes/b1", Some(json!({"owner": bob_id}))).await;

    let mut alice_socket = Client::connect(&app, None).await;
    alice_socket.send(json!({"op": "auth", "token": alice_token})).await;
    alice_socket.send(json!({"op": "sub", "id": "mine", "query": {"collection": "notes"}})).await;
    let snapshot = alice_socket.next().await;
    assert_eq!(snapshot["docs"].as_array().expect("docs").len(), 1, "{snapshot}");
    assert_eq!(snapshot["docs"][0]["id"], "a1");
    alice_socket.send(json!({"op": "sub", "id": "bobs", "doc": "notes/b1"})).await;
    let snapshot = alice_socket.next().await;
    assert_eq!((snapshot["id"].clone(), snapshot["docs"].clone()), (json!("bobs"), json!([])), "unreadable: empty");

    // Bob's notes never reach Alice; hers do; one given away leaves her view.
    app.call(Method::PUT, "/v1/docs/notes/b2", Some(json!({"owner": bob_id}))).await;
    app.call(Method::PATCH, "/v1/docs/notes/b1", Some(json!({"n": 1}))).await;
    app.call(Method::PUT, "/v1/docs/notes/a2", Some(json!({"owner": alice_id}))).await;
    assert_eq!(kinds(&alice_socket.next().await), vec![pair("added", "a2")]);
    app.call(Method::PATCH, "/v1/docs/notes/a1", Some(json!({"owner": bob_id}))).await;
    assert_eq!(kinds(&alice_socket.next().await), vec![pair("removed", "a1")]);
    // Given to her: it appears, on the doc subscription too.
    app.call(Method::PATCH, "/v1/docs/notes/b1", Some(json!({"owner": alice_id}))).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let message = alice_socket.next().await;
        got.push((message["id"].as_str().expect("id").to_owned(), kinds(&message)));
    }
    got.sort();
    assert_eq!(
        got,
        vec![("bobs".to_owned(), vec![pair("added", "b1")]), ("mine".to_owned(), vec![pair("added", "b1")])]
    );
    alice_socket.quiet().await;

    // New rules: each subscription starts over from a fresh snapshot under them.
    let open = "[\"notes/{id}\"]\nread = \"auth != null\"\n";
    let (status, _) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(open)).await;
    assert_eq!(status, 204);
    let mut fresh = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let snapshot = alice_socket.next().await;
        assert_eq!(snapshot["op"], "snapshot", "{snapshot}");
        fresh.insert(snapshot["id"].as_str().expect("id").to_owned(), snapshot["docs"].as_array().expect("docs").len());
    }
    assert_eq!(fresh.get("mine"), Some(&4), "every note, Bob's too");
    assert_eq!(fresh.get("bobs"), Some(&1));

    // No credentials: no rule could allow the list.
    let mut nobody = Client::connect(&app, None).await;
    nobody.send(json!({"op": "sub", "id": "all", "query": {"collection": "notes"}})).await;
    let answer = nobody.next().await;
    assert_eq!(
        (answer["op"].clone(), answer["code"].clone()),
        (json!("error"), json!("permission-denied")),
        "{answer}"
    );
    // A bad token in an `auth` message is an error op, not a closed socket.
    nobody.send(json!({"op": "auth", "token": "not.a.token"})).await;
    assert_eq!(nobody.next().await["code"], "unauthenticated");
    nobody.send(json!({"op": "ping"})).await;
    assert_eq!(nobody.next().await["op"], "pong");
}

#[tokio::test]
async fn a_cut_subscriber_resumes_with_every_change_once_in_order() {
    let app = App::spawn().await;
    let writes_per_writer = 250;
    let docs = 100;
    let writes: Vec<Value> =
        (0..docs).map(|doc| json!({"op": "set", "path": format!("log/d{doc}"), "data": {"n": 0}})).collect();
    app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes}))).await;
    let mut client = Client::connect(&app, Some(KEY)).await;
    let query = json!({"collection": "log", "limit": 1000});
    client.send(json!({"op": "sub", "id": "log", "query": query})).await;
    let snapshot = client.next().await;
    let mut resume = snapshot["resume"].as_str().expect("token").to_owned();
    let start: i64 = resume.parse().expect("seq");

    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let client = app.client.clone();
            let url = app.url("");
            tokio::spawn(async move {
                for i in 0..writes_per_writer {
                    let doc = (writer * writes_per_writer + i) % docs;
                    let response = client
                        .patch(format!("{url}/v1/docs/log/d{doc}"))
                        .bearer_auth(KEY)
                        .json(&json!({"n": {"$increment": 1}}))
                        .send()
                        .await
                        .expect("sent");
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();

    // Every document's counter must arrive as 1, 2, 3, ... with no gap and no repeat,
    // and the tokens must only grow.
    let mut counters = vec![0i64; docs];
    let mut received = 0;
    let mut last_seq = start;
    let mut cuts = 0;
    let total = 8 * writes_per_writer;
    while received < total {
        let message = client.next().await;
        if message["op"] != "changes" {
            panic!("unexpected {message}");
        }
        let seq: i64 = message["resume"].as_str().expect("token").parse().expect("seq");
        assert!(seq >= last_seq, "tokens only grow: {seq} after {last_seq}");
        last_seq = seq;
        for change in message["changes"].as_array().expect("changes") {
            assert_eq!(change["type"], "modified", "{change}");
            let doc: usize = change["doc"]["id"].as_str().expect("id")[1..].parse().expect("doc number");
            let n = change["doc"]["data"]["n"].as_i64().expect("n");
            assert_eq!(n, counters[doc] + 1, "d{doc}: each change once, in order");
            counters[doc] = n;
            received += 1;
        }
        resume = seq.to_string();
        // Cut the socket every 300 changes and come back with the token.
        if received / 300 > cuts && received < total {
            cuts += 1;
            drop(client);
            client = Client::connect(&app, Some(KEY)).await;
            client.send(json!({"op": "sub", "id": "log", "query": query, "resume": resume})).await;
        }
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(cuts >= 5, "cut {cuts} times");
    assert_eq!(last_seq, start + total as i64, "the last token is the last write");
    client.quiet().await;
    // And the view ends equal to a fresh query.
    let (_, page) = app.call(Method::POST, "/v1/query", Some(json!({"collection": "log", "limit": 1000}))).await;
    let sum: i64 = page["docs"].as_array().expect("docs").iter().map(|doc| doc["data"]["n"].as_i64().expect("n")).sum();
    assert_eq!(sum, total as i64);
}

#[tokio::test]
async fn a_pong_follows_the_snapshots_asked_for_before_it() {
    let app = App::spawn().await;
    for batch in 0..4 {
        let writes: Vec<Value> = (0..500)
            .map(|i| json!({"op": "set", "path": format!("many/d{batch}-{i}"), "data": {"n": i, "text": "x".repeat(200)}}))
            .collect();
        let (status, _) = app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes}))).await;
        assert_eq!(status, 200);
    }
    let mut client = Client::connect(&app, Some(KEY)).await;
    // Snapshots of a thousand documents take a while to read; the ping right behind the
    // subs is answered after both.
    for id in ["first", "second"] {
        let query = json!({"collection": "many", "order_by": [{"field": "n", "dir": "desc"}], "limit": 1000});
        client.send(json!({"op": "sub", "id": id, "query": query})).await;
    }
    let answered = client.until_pong().await;
    let got: Vec<(&str, usize)> = answered
        .iter()
        .map(|message| (message["op"].as_str().expect("op"), message["docs"].as_array().map_or(0, Vec::len)))
        .collect();
    assert_eq!(got, [("snapshot", 1000), ("snapshot", 1000)]);
}

#[tokio::test]
async fn a_reader_that_falls_a_queue_behind_is_cut_with_4008() {
    use crate::support::Options;
    let config = "[realtime]\nqueue_bytes = 1048576\n";
    let app = App::spawn_with(Options { config: Some(config.into()), ..Options::default() }).await;
    let mut request = format!("ws://{}/v1/realtime", app.addr).into_client_request().expect("request");
    request.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().expect("header"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("opens");
    let body = "x".repeat(16 * 1024);
    let write_64_mib = |collection: &'static str| {
        let body = &body;
        let app = &app;
        async move {
            // Many small batches rather than a few large ones: what the allocator keeps
            // after a request grows with the request, and would blur what is measured.
            for batch in 0..80 {
                let writes: Vec<Value> = (0..50)
                    .map(|i| json!({"op": "set", "path": format!("{collection}/d{i}"), "data": {"body": body, "batch": batch}}))
                    .collect();
                let (status, _) = app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes}))).await;
                assert_eq!(status, 200);
            }
        }
    };
    // The same writes once elsewhere before, so what the store, the change bus and the
    // allocator keep for them is there before memory is measured.
    write_64_mib("warm").await;
    let before = rss_kib(&app);
    let sub = json!({"op": "sub", "id": "big", "query": {"collection": "big", "limit": 1000}});
    socket.send(Message::text(sub.to_string())).await.expect("sent");
    // Write far more than a queue and the socket buffers hold, without reading.
    write_64_mib("big").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, socket.next()).await else {
            panic!("not closed in time; server said:\n{}", app.output_text());
        };
        match frame {
            Some(Ok(Message::Close(Some(close)))) => {
                assert_eq!(u16::from(close.code), 4008);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a 4008 close, got {other:?}"),
        }
    }
    // The server is fine and serves others; their `pong` also means the hub has taken
    // every change written (on a loaded machine it may have fallen behind the bus).
    let mut other = Client::connect(&app, Some(KEY)).await;
    other.send(json!({"op": "ping"})).await;
    assert_eq!(other.next().await["op"], "pong");
    // 64 MiB of changes went by; a server that kept them for the reader would have grown
    // by more than that. This one keeps a queue's worth (1 MiB); the rest of the margin is
    // what the allocator holds on to, which varies with how the threads were scheduled.
    let grown = rss_kib(&app).saturating_sub(before);
    assert!(grown < 48 * 1024, "the server grew by {grown} KiB for a reader that never read");
}

#[tokio::test]
async fn presence_and_broadcast_reach_the_members_the_rules_admit() {
    let app = App::spawn().await;
    let rules =
        "[\"@channels/{name}\"]\njoin = \"auth != null && name.startsWith('room:')\"\nbroadcast = \"auth != null\"\n";
    let (status, _) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await;
    assert_eq!(status, 204);
    let mut sessions = Vec::new();
    for email in ["ann@example.com", "ben@example.com"] {
        let body = json!({"email": email, "password": "correct horse battery staple"});
        let (_, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&body)).await;
        sessions.push(session);
    }
    let token = |i: usize| sessions[i]["access_token"].as_str().expect("token").to_owned();
    let uid = |i: usize| sessions[i]["user"]["id"].clone();
    let mut ann = Client::connect(&app, Some(&token(0))).await;
    let mut ben = Client::connect(&app, Some(&token(1))).await;

    ann.send(json!({"op": "join", "channel": "room:1", "presence": {"status": "here"}})).await;
    let first = ann.next().await;
    assert_eq!(first["op"], "presence");
    let members: Vec<&Value> = first["joins"].as_object().expect("joins").values().collect();
    assert_eq!(members.len(), 1);
    assert_eq!((members[0]["uid"].clone(), members[0]["state"]["status"].clone()), (uid(0), json!("here")));

    ben.send(json!({"op": "join", "channel": "room:1", "presence": {"status": "typing"}})).await;
    let everyone = ben.next().await;
    assert_eq!(everyone["joins"].as_object().expect("joins").len(), 2, "{everyone}");
    let joined = ann.next().await;
    let (ben_member, entry) = joined["joins"].as_object().expect("joins").iter().next().expect("one join");
    assert_eq!(entry["uid"], uid(1));
    let ben_member = ben_member.clone();

    // Broadcasts reach the other members, not the sender.
    ben.send(json!({"op": "broadcast", "channel": "room:1", "event": "typing", "payload": {"on": true}})).await;
    let heard = ann.next().await;
    assert_eq!(
        (heard["op"].clone(), heard["event"].clone(), heard["payload"]["on"].clone()),
        (json!("broadcast"), json!("typing"), json!(true))
    );
    ben.quiet().await;

    // A new state is a join; a disconnect is a leave.
    ben.send(json!({"op": "join", "channel": "room:1", "presence": {"status": "idle"}})).await;
    assert_eq!(ann.next().await["joins"][&ben_member]["state"]["status"], "idle");
    assert_eq!(ben.next().await["joins"][&ben_member]["state"]["status"], "idle");
    drop(ben);
    let left = ann.next().await;
    assert_eq!(left["leaves"][&ben_member]["uid"], uid(1), "{left}");

    // The rules guard joining; a bad name is refused.
    for (channel, code) in [("lobby", "permission-denied"), ("room 1", "invalid-argument")] {
        ann.send(json!({"op": "join", "channel": channel})).await;
        let answer = ann.next().await;
        assert_eq!((answer["op"].clone(), answer["code"].clone()), (json!("error"), json!(code)), "{answer}");
    }
    let mut nobody = Client::connect(&app, None).await;
    nobody.send(json!({"op": "join", "channel": "room:1"})).await;
    assert_eq!(nobody.next().await["code"], "permission-denied");
    ann.send(json!({"op": "leave", "channel": "room:1"})).await;
    ann.send(json!({"op": "ping"})).await;
    assert_eq!(ann.next().await["op"], "pong");
}

/// A client's copy of one subscription: path → version.
type View = std::collections::BTreeMap<String, i64>;

fn apply_message(view: &mut View, message: &Value) {
    match message["op"].as_str() {
        Some("snapshot") => {
            view.clear();
            for doc in message["docs"].as_array().expect("docs") {
                view.insert(doc["path"].as_str().expect("path").to_owned(), doc["version"].as_i64().expect("version"));
            }
        }
        Some("changes") => {
            for change in message["changes"].as_array().expect("changes") {
                let path = change["doc"]["path"].as_str().expect("path").to_owned();
                match change["type"].as_str() {
                    Some("removed") => {
                        view.remove(&path);
                    }
                    _ => {
                        view.insert(path, change["doc"]["version"].as_i64().expect("version"));
                    }
                }
            }
        }
        _ => panic!("unexpected {message}"),
    }
}

#[tokio::test]
async fn random_live_queries_end_equal_to_fresh_queries_and_never_see_an_unreadable_document() {
    use rand::{Rng, SeedableRng};
    let app = App::spawn().await;
    let rules = r#"
["items/{id}"]
read = "auth != null && (resource.data.owner == auth.uid || resource.data.public == true)"
["others/{id}"]
read = "auth != null && resource.data.n % 2 == 0"
"#;
    let (status, _) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await;
    assert_eq!(status, 204);
    let mut users = Vec::new();
    for name in ["ana", "bo", "cy"] {
        let body = json!({"email": format!("{name}@example.com"), "password": "correct horse battery staple"});
        let (_, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&body)).await;
        users.push((
            session["user"]["id"].as_str().expect("uid").to_owned(),
            session["access_token"].as_str().expect("token").to_owned(),
        ));
    }
    // `SEED=n` replays another random run.
    let seed = std::env::var("SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or(5);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Each user holds four random live queries.
    let mut clients = Vec::new();
    for (uid, token) in &users {
        let mut client = Client::connect(&app, Some(token)).await;
        let mut queries = Vec::new();
        for s in 0..4 {
            let collection = if rng.random_bool(0.6) { "items" } else { "others" };
            let mut query = json!({"collection": collection, "limit": rng.random_range(2..8)});
            if rng.random_bool(0.5) {
                query["where"] = json!([{"field": "n", "op": ">=", "value": rng.random_range(0..10)}]);
            }
            if rng.random_bool(0.7) {
                let dir = if rng.random_bool(0.5) { "asc" } else { "desc" };
                query["order_by"] = json!([{"field": "n", "dir": dir}]);
            }
            let id = format!("q{s}");
            client.send(json!({"op": "sub", "id": id, "query": query})).await;
            queries.push((id, query));
        }
        let mut views = std::collections::HashMap::new();
        for _ in 0..queries.len() {
            let snapshot = client.next().await;
            apply_message(views.entry(snapshot["id"].as_str().expect("id").to_owned()).or_default(), &snapshot);
        }
        clients.push((uid.clone(), token.clone(), client, queries, views));
    }
    // Random writes, deletes, and changes of owner and visibility.
    for _ in 0..300 {
        let collection = if rng.random_bool(0.6) { "items" } else { "others" };
        let path = format!("/v1/docs/{collection}/d{}", rng.random_range(0..25));
        let owner = users[rng.random_range(0..users.len())].0.clone();
        match rng.random_range(0..10) {
            0..=5 => {
                let data = json!({"owner": owner, "public": rng.random_bool(0.3), "n": rng.random_range(0..20)});
                app.call(Method::PUT, &path, Some(data)).await;
            }
            6..=7 => {
                app.call(Method::PATCH, &path, Some(json!({"n": rng.random_range(0..20), "owner": owner}))).await;
            }
            _ => {
                app.call(Method::DELETE, &path, None).await;
            }
        }
    }
    // Every view ends equal to a fresh run of its query (the deliveries of the last writes
    // may still be on their way), and every document delivered was readable when sent.
    for (uid, token, client, queries, views) in &mut clients {
        let mut fresh = std::collections::HashMap::new();
        for (id, query) in queries.iter() {
            let response =
                app.client.post(app.url("/v1/query")).bearer_auth(&*token).json(query).send().await.expect("sent");
            let page: Value = response.json().await.expect("json");
            let mut view = View::new();
            apply_message(&mut view, &json!({"op": "snapshot", "docs": page["docs"]}));
            fresh.insert(id.clone(), view);
        }
        let apply = |views: &mut std::collections::HashMap<String, View>, message: &Value| {
            if message["op"] == "changes" {
                for change in message["changes"].as_array().expect("changes") {
                    if change["type"] == "removed" {
                        continue;
                    }
                    let doc = &change["doc"];
                    let readable = if doc["path"].as_str().expect("path").starts_with("items/") {
                        doc["data"]["owner"] == json!(uid) || doc["data"]["public"] == json!(true)
                    } else {
                        doc["data"]["n"].as_i64().expect("n") % 2 == 0
                    };
                    assert!(readable, "{uid} received a document it may not read: {doc}");
                }
            }
            apply_message(views.entry(message["id"].as_str().expect("id").to_owned()).or_default(), message);
        };
        client.settle(views, apply, |views| queries.iter().all(|(id, _)| views.get(id) == fresh.get(id))).await;
        for (id, query) in queries.iter() {
            assert_eq!(views.get(id), fresh.get(id), "{uid} {id} {query}");
        }
    }
}

#[tokio::test]
async fn an_expired_token_pauses_deliveries_until_a_new_auth() {
    use crate::support::Options;
    let config = "[auth]\naccess_token_seconds = 5\n";
    let app = App::spawn_with(Options { config: Some(config.into()), ..Options::default() }).await;
    let rules = "[\"notes/{id}\"]\nread = \"auth != null\"\n";
    let (status, _) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await;
    assert_eq!(status, 204);
    let credentials = json!({"email": "eve@example.com", "password": "correct horse battery staple"});
    let (_, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&credentials)).await;
    let token = session["access_token"].as_str().expect("token").to_owned();
    let mut client = Client::connect(&app, None).await;
    client.send(json!({"op": "auth", "token": token})).await;
    client.send(json!({"op": "sub", "id": "n", "query": {"collection": "notes"}})).await;
    assert_eq!(client.next().await["op"], "snapshot");
    app.call(Method::PUT, "/v1/docs/notes/before", Some(json!({"n": 1}))).await;
    assert_eq!(kinds(&client.next().await), vec![pair("added", "before")]);

    // The token runs out: an error, no close, and no deliveries.
    let expired = client.next().await;
    assert_eq!(
        (expired["op"].clone(), expired["code"].clone()),
        (json!("error"), json!("unauthenticated")),
        "{expired}"
    );
    app.call(Method::PUT, "/v1/docs/notes/during", Some(json!({"n": 2}))).await;
    client.quiet().await;
    client.send(json!({"op": "ping"})).await;
    assert_eq!(client.next().await["op"], "pong");

    // A new token resumes: a fresh snapshot holds what was missed.
    let (_, session) = app.send(app.client.post(app.url("/v1/auth/login")).json(&credentials)).await;
    client.send(json!({"op": "auth", "token": session["access_token"]})).await;
    let snapshot = client.next().await;
    assert_eq!(snapshot["op"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["docs"].as_array().expect("docs").len(), 2);
}

#[tokio::test]
async fn a_change_to_a_document_the_rules_read_decides_subscriptions_again() {
    let app = App::spawn().await;
    let rules =
        "[\"rooms/{room}/messages/{msg}\"]\nread = \"auth != null && auth.uid in get('rooms/' + room).data.members\"\n";
    let (status, _) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await;
    assert_eq!(status, 204);
    let body = json!({"email": "mo@example.com", "password": "correct horse battery staple"});
    let (_, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&body)).await;
    let uid = session["user"]["id"].clone();
    app.call(Method::PUT, "/v1/docs/rooms/r1", Some(json!({"members": [uid]}))).await;
    app.call(Method::PUT, "/v1/docs/rooms/r1/messages/m1", Some(json!({"text": "hi"}))).await;
    let mut client = Client::connect(&app, session["access_token"].as_str()).await;
    client.send(json!({"op": "sub", "id": "chat", "query": {"collection": "rooms/r1/messages"}})).await;
    let snapshot = client.next().await;
    assert_eq!(snapshot["docs"].as_array().expect("docs").len(), 1, "{snapshot}");
    app.call(Method::PUT, "/v1/docs/rooms/r1/messages/m2", Some(json!({"text": "still here"}))).await;
    assert_eq!(kinds(&client.next().await), vec![pair("added", "m2")]);
    // Removed from the room: the subscription is decided again, and now denied.
    app.call(Method::PATCH, "/v1/docs/rooms/r1", Some(json!({"members": []}))).await;
    let answer = client.next().await;
    assert_eq!(
        (answer["op"].clone(), answer["code"].clone(), answer["id"].clone()),
        (json!("error"), json!("permission-denied"), json!("chat")),
        "{answer}"
    );
    app.call(Method::PUT, "/v1/docs/rooms/r1/messages/m3", Some(json!({"text": "not for you"}))).await;
    client.quiet().await;
}

#[tokio::test]
async fn subscribers_joining_a_shared_query_while_it_changes_all_end_equal_to_a_fresh_run() {
    use rand::{Rng, SeedableRng};
    let app = App::spawn().await;
    let (status, _) =
        app.send(app.admin(Method::PUT, "/v1/admin/rules").body("[\"scores/{id}\"]\nread = \"auth != null\"\n")).await;
    assert_eq!(status, 204);
    let mut tokens = Vec::new();
    for name in ["ana", "bo"] {
        let body = json!({"email": format!("{name}@example.com"), "password": "correct horse battery staple"});
        let (_, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&body)).await;
        tokens.push(session["access_token"].as_str().expect("token").to_owned());
    }
    let query = json!({"collection": "scores", "order_by": [{"field": "n", "dir": "desc"}], "limit": 5});
    // Writes run while the subscribers arrive, leave and come back.
    let writer = {
        let (addr, client) = (app.addr.clone(), app.client.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(11);
            for _ in 0..250 {
                let url = format!("http://{addr}/v1/docs/scores/s{}", rng.random_range(0..20));
                let request = if rng.random_bool(0.8) {
                    client.put(url).json(&json!({"n": rng.random_range(0..100)}))
                } else {
                    client.delete(url)
                };
                request.bearer_auth(KEY).send().await.expect("write sent");
            }
        })
    };
    let mut clients = Vec::new();
    for index in 0..8 {
        let mut client = Client::connect(&app, Some(&tokens[index % 2])).await;
        client.send(json!({"op": "sub", "id": "top", "query": query})).await;
        clients.push((client, View::new(), "top".to_owned()));
        tokio::time::sleep(Duration::from_millis(30)).await;
        if index == 4 {
            // One leaves the group and joins again under another id.
            let (client, view, id) = &mut clients[1];
            client.send(json!({"op": "unsub", "id": "top"})).await;
            client.send(json!({"op": "sub", "id": "again", "query": query})).await;
            *view = View::new();
            *id = "again".to_owned();
        }
    }
    writer.await.expect("writer");
    let response = app.client.post(app.url("/v1/query")).bearer_auth(&tokens[0]).json(&query).send().await;
    let page: Value = response.expect("sent").json().await.expect("json");
    let mut fresh = View::new();
    apply_message(&mut fresh, &json!({"op": "snapshot", "docs": page["docs"]}));
    assert_eq!(fresh.len(), 5);
    for (index, (client, view, id)) in clients.iter_mut().enumerate() {
        let mut snapshot = false;
        for message in client.until_pong().await {
            if message["id"] == json!(id) {
                snapshot |= message["op"] == "snapshot";
                apply_message(view, &message);
            }
        }
        assert!(snapshot, "subscriber {index} got its snapshot before the pong");
        let apply = |view: &mut View, message: &Value| {
            if message["id"] == json!(id) {
                apply_message(view, message);
            }
        };
        client.settle(view, apply, |view| *view == fresh).await;
        assert_eq!(view, &fresh, "subscriber {index}");
    }
}

/// After `hearth restore`, a resume token from before it — from before the backup, or
/// from the history the restore undid — gets a fresh snapshot, never a silent gap.
#[tokio::test]
async fn resuming_across_a_restore_starts_over_and_never_misses_the_rewind() {
    if !crate::support::sqlite_only("restore rewinds an SQLite file") {
        return;
    }
    let mut app = App::spawn().await;
    app.call(Method::PUT, "/v1/docs/notes/a1", Some(json!({"n": 1}))).await;
    let (status, backup) = app.call(Method::POST, "/v1/admin/backups", None).await;
    assert_eq!(status, 201, "{backup}");
    let query = json!({"collection": "notes"});
    let mut client = Client::connect(&app, Some(KEY)).await;
    client.send(json!({"op": "sub", "id": "n", "query": query})).await;
    let before = client.next().await["resume"].as_str().expect("token").to_owned();
    app.call(Method::PUT, "/v1/docs/notes/b1", Some(json!({"n": 2}))).await;
    let between = client.next().await;
    assert_eq!(kinds(&between), [pair("added", "b1")]);
    let between = between["resume"].as_str().expect("token").to_owned();
    drop(client);

    assert_eq!(app.terminate(), Some(0));
    let dir = app.keep_dir().expect("dir");
    let file = dir.path().join("hearth_data/backups").join(backup["name"].as_str().expect("name"));
    let restored = crate::support::hearth_bin()
        .arg("restore")
        .arg(&file)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("hearth restore runs");
    assert!(restored.status.success(), "{restored:?}");
    let app = App::start_in(dir.path(), &crate::support::Options::default());
    app.call(Method::PUT, "/v1/docs/notes/c1", Some(json!({"n": 3}))).await;

    let mut client = Client::connect(&app, Some(KEY)).await;
    for (id, token) in [("old", before), ("undone", between)] {
        client.send(json!({"op": "sub", "id": id, "query": query, "resume": token})).await;
        let fresh = client.next().await;
        assert_eq!(fresh["op"], "snapshot", "{fresh}");
        let ids: Vec<&str> =
            fresh["docs"].as_array().expect("docs").iter().map(|doc| doc["id"].as_str().expect("id")).collect();
        assert_eq!(ids, ["a1", "c1"], "b1 was undone by the restore, c1 came after it");
    }
}

async fn signed_up(app: &App, email: &str) -> Value {
    let body = json!({"email": email, "password": "correct horse battery staple"});
    let (status, session) = app.send(app.client.post(app.url("/v1/auth/signup")).json(&body)).await;
    assert_eq!(status, 200, "{session}");
    session
}

fn access(session: &Value) -> String {
    session["access_token"].as_str().expect("token").to_owned()
}

/// Messages until one matches `wanted`, which it answers; `skipped` gets the others.
async fn next_matching(client: &mut Client, wanted: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..20 {
        let message = client.next().await;
        if wanted(&message) {
            return message;
        }
    }
    panic!("no matching message among 20");
}

fn is_leave(message: &Value) -> bool {
    message["op"] == "presence" && message["leaves"].as_object().is_some_and(|leaves| !leaves.is_empty())
}

#[tokio::test]
async fn channel_members_are_evicted_when_they_may_no_longer_be_there() {
    let app = App::spawn().await;
    let rules =
        "[\"@channels/{name}\"]\njoin = \"auth != null && name.startsWith('room:')\"\nbroadcast = \"auth != null\"\n";
    assert_eq!(app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await.0, 204);
    let (ann, ben, carol) = (
        signed_up(&app, "ann@example.com").await,
        signed_up(&app, "ben@example.com").await,
        signed_up(&app, "carol@example.com").await,
    );
    let mut watcher = Client::connect(&app, Some(&access(&ann))).await;
    watcher.send(json!({"op": "join", "channel": "room:1"})).await;
    watcher.next().await;

    // A revoked session is out at once: its socket pauses and leaves, and it can neither
    // join nor broadcast nor come back with the same token.
    let mut revoked = Client::connect(&app, Some(&access(&ben))).await;
    revoked.send(json!({"op": "join", "channel": "room:1"})).await;
    revoked.next().await;
    watcher.next().await; // ben's join
    let ben_id = ben["user"]["id"].as_str().expect("uid");
    let (status, body) = app.call(Method::POST, &format!("/v1/admin/users/{ben_id}/revoke"), None).await;
    assert!(status.is_success(), "{body}");
    let evicted = next_matching(&mut revoked, |m| m["channel"] == "room:1").await;
    assert_eq!(
        (evicted["op"].clone(), evicted["code"].clone()),
        (json!("error"), json!("unauthenticated")),
        "{evicted}"
    );
    let left = next_matching(&mut watcher, is_leave).await;
    assert_eq!(left["leaves"].as_object().expect("leaves").values().next().expect("one")["uid"], ben["user"]["id"]);
    revoked.until_pong().await;
    for refused in [
        json!({"op": "join", "channel": "room:1"}),
        json!({"op": "broadcast", "channel": "room:1", "event": "x", "payload": {}}),
    ] {
        revoked.send(refused).await;
        let answer = revoked.next().await;
        assert_eq!(
            (answer["op"].clone(), answer["code"].clone()),
            (json!("error"), json!("unauthenticated")),
            "{answer}"
        );
    }
    revoked.send(json!({"op": "auth", "token": access(&ben)})).await;
    assert_eq!(revoked.next().await["code"], "unauthenticated", "the revoked token does not come back");
    let (status, _) = app.send(app.client.get(app.url("/v1/auth/user")).bearer_auth(access(&ben))).await;
    assert_eq!(status, 401, "nor over HTTP");
    watcher.quiet().await;

    // A socket that signs in as someone else leaves the channels it joined as the first.
    let mut switcher = Client::connect(&app, Some(&access(&carol))).await;
    switcher.send(json!({"op": "join", "channel": "room:1"})).await;
    switcher.next().await;
    watcher.next().await;
    let other = signed_up(&app, "dora@example.com").await;
    switcher.send(json!({"op": "auth", "token": access(&other)})).await;
    let evicted = next_matching(&mut switcher, |m| m["channel"] == "room:1").await;
    assert_eq!(evicted["code"], "permission-denied", "{evicted}");
    let left = next_matching(&mut watcher, is_leave).await;
    assert_eq!(left["leaves"].as_object().expect("leaves").values().next().expect("one")["uid"], carol["user"]["id"]);

    // New rules are decided again for every member: room:2 is closed now, room:1 is not.
    switcher.send(json!({"op": "join", "channel": "room:2"})).await;
    switcher.next().await;
    let narrower =
        "[\"@channels/{name}\"]\njoin = \"auth != null && name == 'room:1'\"\nbroadcast = \"auth != null\"\n";
    assert_eq!(app.send(app.admin(Method::PUT, "/v1/admin/rules").body(narrower)).await.0, 204);
    let evicted = next_matching(&mut switcher, |m| m["channel"] == "room:2").await;
    assert_eq!(evicted["code"], "permission-denied", "{evicted}");
    watcher.send(json!({"op": "broadcast", "channel": "room:1", "event": "still", "payload": {}})).await;
    watcher.until_pong().await;
    watcher.quiet().await;

    // A user an admin disables is out at once too.
    switcher.send(json!({"op": "join", "channel": "room:1"})).await;
    switcher.next().await;
    watcher.next().await;
    let dora_id = other["user"]["id"].as_str().expect("uid");
    let (status, body) =
        app.call(Method::PATCH, &format!("/v1/admin/users/{dora_id}"), Some(json!({"disabled": true}))).await;
    assert!(status.is_success(), "{body}");
    let evicted = next_matching(&mut switcher, |m| m["channel"] == "room:1").await;
    assert_eq!(evicted["code"], "unauthenticated", "{evicted}");
    let left = next_matching(&mut watcher, is_leave).await;
    assert_eq!(left["leaves"].as_object().expect("leaves").values().next().expect("one")["uid"], other["user"]["id"]);
}

#[tokio::test]
async fn a_member_whose_token_expires_leaves_and_may_not_join_until_it_signs_in_again() {
    let app = App::spawn_with(crate::support::Options {
        config: Some("[auth]\naccess_token_seconds = 5\n".into()),
        ..Default::default()
    })
    .await;
    let rules = "[\"@channels/{name}\"]\njoin = \"auth != null\"\nbroadcast = \"auth != null\"\n";
    assert_eq!(app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await.0, 204);
    let ben = signed_up(&app, "ben@example.com").await;
    let mut member = Client::connect(&app, Some(&access(&ben))).await;
    member.send(json!({"op": "join", "channel": "lobby"})).await;
    member.next().await;
    // The expiry comes within the token's 5 s (and the 10 s a message may take).
    let paused = next_matching(&mut member, |m| m["op"] == "error").await;
    assert_eq!(paused["code"], "unauthenticated", "{paused}");
    let evicted = next_matching(&mut member, |m| m["channel"] == "lobby").await;
    assert_eq!(evicted["code"], "unauthenticated", "{evicted}");
    member.send(json!({"op": "join", "channel": "lobby"})).await;
    assert_eq!(member.next().await["code"], "unauthenticated");
    // Fresh credentials let it back in; the others hear it.
    let ann = signed_up(&app, "ann@example.com").await;
    let mut watcher = Client::connect(&app, Some(&access(&ann))).await;
    watcher.send(json!({"op": "join", "channel": "lobby"})).await;
    let everyone = watcher.next().await;
    assert_eq!(everyone["joins"].as_object().expect("joins").len(), 1, "the expired member is gone: {everyone}");
    let (_, fresh) = app
        .send(app.client.post(app.url("/v1/auth/refresh")).json(&json!({"refresh_token": ben["refresh_token"]})))
        .await;
    member.send(json!({"op": "auth", "token": access(&fresh)})).await;
    member.send(json!({"op": "join", "channel": "lobby"})).await;
    let back = member.next().await;
    assert_eq!(back["op"], "presence", "{back}");
    assert_eq!(watcher.next().await["op"], "presence");
}

/// A socket from `ip` (any of 127.0.0.0/8), or the HTTP status that refused it.
async fn connect_from(app: &App, ip: &str) -> Result<Client, u16> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{ip}:0").parse().expect("address")).expect("bind");
    let stream = socket.connect(app.addr.parse().expect("server address")).await.expect("connect");
    let request = format!("ws://{}/v1/realtime", app.addr).into_client_request().expect("request");
    match tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await {
        Ok((socket, _)) => Ok(Client { socket }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(error) => panic!("{error}"),
    }
}

#[tokio::test]
async fn one_client_cannot_take_every_connection_or_subscribe_without_end() {
    let config = "[realtime]\nmax_connections_per_address = 3\nsubscribe_burst = 5\nsubscribes_per_second = 1\n";
    let app = App::spawn_with(crate::support::Options { config: Some(config.into()), ..Default::default() }).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(&app, "127.0.0.1").await.expect("within the cap"));
    }
    assert_eq!(connect_from(&app, "127.0.0.1").await.err(), Some(429), "a fourth from one address is refused");
    let mut other = connect_from(&app, "127.0.0.2").await.expect("another address has its own cap");
    drop(held.pop());
    // The place comes back once the server has seen the close.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(client) = connect_from(&app, "127.0.0.1").await {
            again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a closed connection frees its place");

    // A burst of 5 subscriptions, then about one a second.
    for i in 0..6 {
        other.send(json!({"op": "sub", "id": format!("s{i}"), "doc": format!("open/d{i}")})).await;
    }
    let answers = other.until_pong().await;
    let refused: Vec<&Value> = answers.iter().filter(|m| m["code"] == "resource-exhausted").collect();
    assert_eq!(refused.len(), 1, "{answers:?}");
    assert_eq!(refused[0]["id"], "s5");
}

#[tokio::test]
async fn a_resume_from_far_back_costs_no_more_rule_checks_than_a_snapshot() {
    let app = App::spawn().await;
    // `%` keeps the rules per document: every replayed change would be checked.
    let rules = "[\"feed/{id}\"]\nread = \"auth != null && resource.data.n % 2 == 0\"\n";
    assert_eq!(app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await.0, 204);
    let reader = access(&signed_up(&app, "reader@example.com").await);
    let query = json!({"collection": "feed", "limit": 10});
    let mut client = Client::connect(&app, Some(&reader)).await;
    client.send(json!({"op": "sub", "id": "f", "query": query})).await;
    let token = client.next().await["resume"].as_str().expect("token").to_owned();
    drop(client);
    let write = |from: usize, to: usize| {
        let writes: Vec<Value> =
            (from..to).map(|n| json!({"op": "set", "path": format!("feed/f{n:05}"), "data": {"n": n}})).collect();
        app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes})))
    };
    // A few changes since the token: they are replayed.
    assert_eq!(write(0, 10).await.0, 200);
    let mut client = Client::connect(&app, Some(&reader)).await;
    client.send(json!({"op": "sub", "id": "f", "query": query, "resume": token})).await;
    assert_eq!(client.next().await["op"], "changes", "a near resume replays");
    drop(client);
    // More than a thousand: a fresh snapshot instead.
    for start in (10..1210).step_by(400) {
        assert_eq!(write(start, start + 400).await.0, 200);
    }
    let mut client = Client::connect(&app, Some(&reader)).await;
    client.send(json!({"op": "sub", "id": "f", "query": query, "resume": token})).await;
    let answer = client.next().await;
    assert_eq!(answer["op"], "snapshot", "a far resume starts over: {answer}");
    assert_eq!(answer["docs"].as_array().expect("docs").len(), 10);
}
