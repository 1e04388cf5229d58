//! The client SDK against the real binary: every API area, live listeners across a
//! server restart, and the session kept in a token store.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hearth_sdk::{
    ChangeType, ChannelEvent, Client, ClientOptions, Direction, DocumentExt, ErrorCode, FileTokenStore, Op, SignIn,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{App, KEY, Options, totp_code};

const RULES: &str = r#"
["notes/{note}"]
read = "auth != null && resource.data.owner == auth.uid"
create = "auth != null && request.data.owner == auth.uid"
update = "auth != null && resource.data.owner == auth.uid && request.data.owner == auth.uid"
delete = "auth != null && resource.data.owner == auth.uid"

["counters/{id}"]
read = "auth != null"
write = "auth != null"

["@channels/{name}"]
join = "auth != null"
broadcast = "auth != null"
"#;

const GREET: &str = r#"
import { onCall, HearthError } from "hearth";
export const greet = onCall((data, ctx) => {
  if (!data.name) throw new HearthError("invalid-argument", "who shall I greet?");
  return { hello: data.name, uid: ctx.auth && ctx.auth.uid };
});
"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    owner: String,
    text: String,
    n: i64,
}

fn url(app: &App) -> String {
    format!("http://{}", app.addr)
}

fn admin(app: &App) -> Client {
    let options = ClientOptions { service_key: Some(KEY.to_owned()), ..ClientOptions::default() };
    Client::with_options(&url(app), options).expect("client")
}

#[tokio::test]
async fn every_api_area_through_the_sdk() {
    let app = App::spawn().await;
    let admin = admin(&app);
    admin.set_rules(RULES).await.expect("rules");
    admin.deploy_function("greet.js", GREET).await.expect("deployed");

    let dir = tempfile::tempdir().expect("temp dir");
    let store_path = dir.path().join("session.json");
    let options = ClientOptions { token_store: Arc::new(FileTokenStore::new(&store_path)), ..ClientOptions::default() };
    let ada = Client::with_options(&url(&app), options).expect("client");
    let mut states = Box::pin(ada.auth_state());
    assert_eq!(states.next().await, Some(None), "signed out at first");
    let user = ada.sign_up("ada@example.com", "correct horse battery staple").await.expect("signed up");
    assert_eq!(states.next().await.flatten().map(|user| user.id), Some(user.id.clone()));
    let uid = user.id.clone();

    // Documents: typed set and get, transforms, preconditions.
    let note = Note { owner: uid.clone(), text: "hello".into(), n: 1 };
    let doc = ada.doc("notes/n1").set(&note).await.expect("set");
    assert_eq!(doc.version, 1);
    assert_eq!(ada.doc("notes/n1").get_as::<Note>().await.expect("get"), Some(note.clone()));
    let doc = ada.doc("notes/n1").update(json!({"n": {"$increment": 2}})).await.expect("update");
    assert_eq!((doc.version, doc.data_as::<Note>().expect("typed").n), (2, 3));
    let stale = ada.doc("notes/n1").if_version(1).update(json!({"text": "late"})).await.expect_err("stale");
    assert_eq!(stale.code(), ErrorCode::FailedPrecondition);
    let taken = ada.doc("notes/n1").create(&note).await.expect_err("exists");
    assert_eq!(taken.code(), ErrorCode::AlreadyExists);
    let someone_else = ada.doc("notes/x").set(json!({"owner": "bob", "text": "", "n": 0})).await.expect_err("rules");
    assert_eq!(someone_else.code(), ErrorCode::PermissionDenied);
    assert_eq!(ada.doc("counters/absent").get().await.expect("absent"), None);

    // Collections, queries over several pages, aggregates.
    let notes = ada.collection("notes");
    for n in 2..=12 {
        notes.add(Note { owner: uid.clone(), text: format!("note {n}"), n }).await.expect("added");
    }
    let query = notes.query().filter("owner", Op::Eq, &uid).filter("n", Op::Ge, 5).order_by("n", Direction::Desc);
    let page = query.clone().limit(3).get().await.expect("page");
    let ns: Vec<i64> = page.docs.iter().map(|doc| doc.data["n"].as_i64().unwrap_or(0)).collect();
    assert_eq!((ns, page.cursor.is_some()), (vec![12, 11, 10], true));
    let all = query.clone().limit(3).get_all().await.expect("all pages");
    assert_eq!(all.len(), 8, "n = 5..=12");
    assert_eq!(query.count().await.expect("count"), 8);
    let sums = notes.query().filter("owner", Op::Eq, &uid).aggregate(false, &["n"], &[]).await.expect("sum");
    let sum = sums.sum.and_then(|sum| sum.get("n").and_then(serde_json::Value::as_f64));
    assert_eq!(sum, Some(f64::from(3 + (2..=12).sum::<i32>())));

    // A batch commits together; a failing write names its index and nothing lands.
    let versions = ada
        .batch()
        .set("counters/a", json!({"n": 0}))
        .set("counters/b", json!({"n": 0}))
        .commit()
        .await
        .expect("batch");
    assert_eq!(versions, vec![1, 1]);
    let failed = ada.batch().set("counters/c", json!({"n": 0})).update("counters/none", json!({"n": 1})).commit().await;
    match failed {
        Err(hearth_sdk::Error::Api { code: ErrorCode::NotFound, details, .. }) => assert_eq!(details["index"], 1),
        other => panic!("expected not-found at index 1: {other:?}"),
    }
    assert_eq!(ada.doc("counters/c").get().await.expect("read"), None);

    // Transactions retry on conflict: concurrent read-modify-writes all land.
    let bumps = (0..8).map(|_| {
        let ada = ada.clone();
        async move {
            ada.run_transaction(|tx| async move {
                let n = tx.get("counters/a").await?.map_or(0, |doc| doc.data["n"].as_i64().unwrap_or(0));
                tx.set("counters/a", json!({"n": n + 1}));
                Ok(n + 1)
            })
            .await
        }
    });
    for bumped in futures::future::join_all(bumps).await {
        bumped.expect("transaction");
    }
    assert_eq!(ada.doc("counters/a").get().await.expect("read").map(|doc| doc.data["n"].clone()), Some(json!(8)));

    // Functions.
    let greeting = ada.call("greet", json!({"name": "Ada"})).await.expect("called");
    assert_eq!(greeting, json!({"hello": "Ada", "uid": uid}));
    let refused = ada.call("greet", json!({})).await.expect_err("refused");
    assert_eq!(
        (refused.code(), refused.to_string().contains("who shall I greet?")),
        (ErrorCode::InvalidArgument, true)
    );

    // The session survives a restart of the app through its token store.
    let again = Client::with_options(
        &url(&app),
        ClientOptions { token_store: Arc::new(FileTokenStore::new(&store_path)), ..ClientOptions::default() },
    )
    .expect("client");
    assert_eq!(again.current_user().map(|user| user.id), Some(uid.clone()));
    assert!(again.doc("notes/n1").get().await.expect("read as the stored session").is_some());

    // Signing out forgets the session here and on the server.
    ada.sign_out().await.expect("signed out");
    assert_eq!(ada.current_user(), None);
    assert!(!store_path.exists(), "the stored session is gone");
    let signed_out = ada.doc("notes/n1").get().await.expect_err("no longer readable");
    assert_eq!(signed_out.code(), ErrorCode::PermissionDenied);
    match ada.sign_in("ada@example.com", "correct horse battery staple").await.expect("signed in") {
        SignIn::Done(user) => assert_eq!(user.id, uid),
        other => panic!("no MFA here: {other:?}"),
    }
    let wrong = ada.sign_in("ada@example.com", "wrong").await.expect_err("wrong password");
    assert_eq!(wrong.code(), ErrorCode::Unauthenticated);
}

#[tokio::test]
async fn listeners_see_every_change_once_across_a_server_restart() {
    let options = Options { addr: Some(free_addr()), ..Options::default() };
    let mut app = App::spawn_with(options.clone()).await;
    let admin = admin(&app);
    admin.set_rules(RULES).await.expect("rules");
    let ada = Client::new(&url(&app)).expect("client");
    let uid = ada.sign_in_anonymously().await.expect("anonymous").id;

    let mut feed = ada.collection("counters").query().order_by("n", Direction::Asc).listen();
    let first = tokio::time::timeout(Duration::from_secs(10), feed.next()).await.expect("snapshot").expect("open");
    assert!(first.expect("snapshot").docs.is_empty());
    let mut doc = ada.doc("counters/watched").listen();
    let first = tokio::time::timeout(Duration::from_secs(10), doc.next()).await.expect("snapshot").expect("open");
    assert!(first.expect("doc snapshot").docs.is_empty(), "absent at first");

    let mut seen: Vec<i64> = Vec::new();
    let mut collect = async |feed: &mut hearth_sdk::Listener, until: usize| {
        while seen.len() < until {
            let snapshot = tokio::time::timeout(Duration::from_secs(20), feed.next())
                .await
                .expect("a change within 20 s")
                .expect("still open")
                .expect("no error");
            for change in &snapshot.changes {
                assert_eq!(change.kind, ChangeType::Added, "{change:?}");
                seen.push(change.doc.data["n"].as_i64().unwrap_or(-1));
            }
            let ns: Vec<i64> = snapshot.docs.iter().map(|doc| doc.data["n"].as_i64().unwrap_or(-1)).collect();
            assert!(ns.windows(2).all(|pair| pair[0] < pair[1]), "kept in query order: {ns:?}");
        }
    };
    for n in 0..30 {
        ada.doc(&format!("counters/c{n:03}")).set(json!({"n": n})).await.expect("write");
    }
    collect(&mut feed, 30).await;

    // The server dies; writes land while the client is cut off, others after the restart.
    app.kill_hard();
    let dir = app.dir();
    let app = App::start_in(&dir, &options);
    let admin = self::admin(&app);
    for n in 30..60 {
        admin.doc(&format!("counters/c{n:03}")).set(json!({"n": n})).await.expect("write");
    }
    admin.doc("counters/watched").set(json!({"n": 1000, "by": uid})).await.expect("write");
    collect(&mut feed, 61).await;
    let mut expected: Vec<i64> = (0..60).collect();
    expected.push(1000);
    assert_eq!(seen, expected, "every change once, in order");
    let watched = tokio::time::timeout(Duration::from_secs(20), doc.next()).await.expect("doc change").expect("open");
    let watched = watched.expect("no error");
    assert_eq!((watched.docs.len(), watched.changes[0].kind), (1, ChangeType::Added));

    // Presence through the same socket.
    let bob = Client::new(&url(&app)).expect("client");
    bob.sign_in_anonymously().await.expect("anonymous");
    let mut ada_room = ada.channel("room:1").join(json!({"typing": false}));
    let mut bob_room = bob.channel("room:1").join(json!({"typing": true}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, ada_room.next()).await.expect("presence").expect("open");
        if let ChannelEvent::Presence { joins, .. } = event.expect("no error")
            && joins.values().any(|member| member["state"] == json!({"typing": true}))
        {
            break;
        }
    }
    ada.channel("room:1").broadcast("wave", json!({"from": "ada"}));
    loop {
        let event = tokio::time::timeout_at(deadline, bob_room.next()).await.expect("broadcast").expect("open");
        if let ChannelEvent::Broadcast { event, payload } = event.expect("no error") {
            assert_eq!((event.as_str(), payload), ("wave", json!({"from": "ada"})));
            break;
        }
    }
}

#[tokio::test]
async fn a_listener_over_the_subscription_cap_fails_alone() {
    let app =
        App::spawn_with(Options { config: Some("[realtime]\nmax_subscriptions = 2\n".into()), ..Options::default() })
            .await;
    let admin = admin(&app);
    let mut first = admin.doc("counters/a").listen();
    let mut second = admin.doc("counters/b").listen();
    let mut third = admin.doc("counters/c").listen();
    assert!(next(&mut first).await.is_ok() && next(&mut second).await.is_ok());
    let refused = next(&mut third).await.expect_err("over the cap");
    assert_eq!(refused.code(), ErrorCode::ResourceExhausted);
    assert!(third.next().await.is_none(), "a refused listener ends");
    admin.doc("counters/a").set(json!({"n": 1})).await.expect("write");
    let change = next(&mut first).await.expect("still live");
    assert_eq!(change.changes[0].kind, ChangeType::Added);
}

/// A loopback address with a port free now, for a server restarted on the same port.
fn free_addr() -> String {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    probe.local_addr().expect("addr").to_string()
}

/// The next item of a listener, within 10 s.
async fn next(listener: &mut hearth_sdk::Listener) -> hearth_sdk::Result<hearth_sdk::Snapshot> {
    tokio::time::timeout(Duration::from_secs(10), listener.next()).await.expect("in time").expect("open")
}

#[tokio::test]
async fn totp_sign_in_and_linking_an_anonymous_user_through_the_sdk() {
    let app = App::spawn().await;
    let client = Client::new(&url(&app)).expect("client");
    let carol = client.sign_up("carol@example.com", "correct horse battery staple").await.expect("signed up");
    let enrollment = client.enroll_totp().await.expect("enrolled");
    let recovery = client.confirm_totp(&totp_code(&enrollment.secret, 0)).await.expect("confirmed");
    assert_eq!(recovery.len(), 10, "{recovery:?}");
    client.sign_out().await.expect("signed out");

    let ticket = match client.sign_in("carol@example.com", "correct horse battery staple").await.expect("first step") {
        SignIn::MfaRequired { ticket } => ticket,
        other => panic!("TOTP is on: {other:?}"),
    };
    assert_eq!(client.current_user(), None, "not signed in before the second step");
    let wrong = client.verify_mfa(&ticket, "000000").await.expect_err("a wrong code");
    assert_eq!(wrong.code(), ErrorCode::Unauthenticated);
    let user = client.verify_mfa(&ticket, &recovery[0]).await.expect("a recovery code works");
    assert_eq!((user.id, user.mfa), (carol.id, true));

    // An anonymous user keeps their id when they link an e-mail and password.
    let guest = Client::new(&url(&app)).expect("client");
    let anonymous = guest.sign_in_anonymously().await.expect("anonymous");
    assert!(anonymous.anonymous);
    let linked = guest.link("dave@example.com", "another long password").await.expect("linked");
    assert_eq!((linked.id.as_str(), linked.anonymous), (anonymous.id.as_str(), false));
    assert_eq!(guest.current_user().map(|user| user.email), Some(Some("dave@example.com".to_owned())));
}

#[tokio::test]
async fn after_sign_out_listeners_no_longer_speak_for_the_user() {
    let app = App::spawn().await;
    admin(&app).set_rules(RULES).await.expect("rules");
    let ada = Client::new(&url(&app)).expect("client");
    let uid = ada.sign_up("ada@example.com", "correct horse battery staple").await.expect("signed up").id;
    ada.doc("notes/mine").set(json!({"owner": uid, "text": "secret", "n": 1})).await.expect("written");
    let mut mine = ada.doc("notes/mine").listen();
    assert_eq!(next(&mut mine).await.expect("snapshot").docs.len(), 1);
    ada.sign_out().await.expect("signed out");
    // Reconnected as no one: the rules no longer let this listener see the note.
    let after = tokio::time::timeout(Duration::from_secs(10), mine.next()).await.expect("in time");
    match after {
        Some(Ok(snapshot)) => assert!(snapshot.docs.is_empty(), "{snapshot:?}"),
        Some(Err(error)) => assert_eq!(error.code(), ErrorCode::PermissionDenied),
        None => {}
    }
    admin(&app).doc("notes/mine").update(json!({"text": "still secret"})).await.expect("written");
    let leaked = tokio::time::timeout(Duration::from_millis(500), mine.next()).await;
    assert!(
        !matches!(&leaked, Ok(Some(Ok(snapshot))) if !snapshot.docs.is_empty()),
        "a signed-out client got {leaked:?}"
    );
}

#[tokio::test]
async fn with_a_cache_documents_seen_before_answer_while_the_server_is_down() {
    let mut app = App::spawn().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cache.db");
    let options =
        || ClientOptions { service_key: Some(KEY.to_owned()), cache: Some(path.clone()), ..ClientOptions::default() };
    let client = Client::with_options(&url(&app), options()).expect("client");
    client.doc("notes/a").set(json!({"text": "kept"})).await.expect("written");
    let added = client.collection("notes").add(json!({"text": "added"})).await.expect("added");
    client.doc("notes/gone").set(json!({"text": "deleted later"})).await.expect("written");
    client.doc("notes/gone").delete().await.expect("deleted");
    app.kill_hard();

    let kept = client.doc("notes/a").get().await.expect("from the cache").expect("cached");
    assert_eq!((kept.data["text"].as_str(), kept.version), (Some("kept"), 1));
    assert!(client.doc(&added.path).get().await.expect("from the cache").is_some());
    let never = client.doc("notes/never").get().await.expect_err("never seen, server down");
    assert_eq!(never.code(), ErrorCode::Unavailable);
    let gone = client.doc("notes/gone").get().await.expect_err("a deleted document is not kept");
    assert_eq!(gone.code(), ErrorCode::Unavailable);

    // After an app restart, from the same file, reads and listeners answer offline.
    let again = Client::with_options(&url(&app), options()).expect("client");
    assert_eq!(again.doc("notes/a").get().await.expect("cached").map(|doc| doc.version), Some(1));
    let mut live = again.doc("notes/a").listen();
    let snapshot = next(&mut live).await.expect("a snapshot from the cache");
    assert_eq!((snapshot.docs.len(), snapshot.changes[0].kind), (1, ChangeType::Added));
}

/// Snapshots of `listener` until one meets `done`, within 30 s.
async fn until(
    listener: &mut hearth_sdk::Listener,
    done: impl Fn(&hearth_sdk::Snapshot) -> bool,
) -> hearth_sdk::Snapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let snapshot = tokio::time::timeout_at(deadline, listener.next()).await.expect("in time").expect("open");
        let snapshot = snapshot.expect("no error");
        if done(&snapshot) {
            return snapshot;
        }
    }
}

fn n_of(snapshot: &hearth_sdk::Snapshot, id: &str) -> Option<i64> {
    snapshot.docs.iter().find(|doc| doc.id == id).and_then(|doc| doc.data["n"].as_i64())
}

#[tokio::test]
async fn writes_made_offline_survive_an_app_restart_and_are_sent_in_order() {
    let options = Options { addr: Some(free_addr()), ..Options::default() };
    let mut app = App::spawn_with(options.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cache.db");
    let offline_first =
        || ClientOptions { service_key: Some(KEY.to_owned()), cache: Some(path.clone()), ..ClientOptions::default() };
    let client = Client::with_options(&url(&app), offline_first()).expect("client");
    client.doc("todos/t1").set(json!({"n": 1, "title": "milk"})).await.expect("online write");
    let mut todos = client.collection("todos").query().order_by("n", Direction::Asc).listen();
    let first = next(&mut todos).await.expect("snapshot");
    assert!(!first.has_pending_writes);
    app.kill_hard();

    // Offline: every write answers at once from the local view and is queued.
    let t2 = client.doc("todos/t2").set(json!({"n": 2, "title": "eggs"})).await.expect("queued");
    assert_eq!(t2.version, 1);
    let t2 = client.doc("todos/t2").update(json!({"n": {"$increment": 5}})).await.expect("queued");
    assert_eq!((t2.data["n"].clone(), t2.version), (json!(7), 2), "applied over the queued set");
    let t1 = client.doc("todos/t1").update(json!({"n": {"$increment": 10}})).await.expect("queued");
    assert_eq!(t1.data["n"], json!(11));
    let added = client.collection("todos").add(json!({"n": 3, "title": "bread"})).await.expect("queued");
    assert_eq!(added.id.len(), 20);
    let refused = client.doc("todos/t1").create(json!({"n": 0})).await.expect_err("exists in the local view");
    assert_eq!(refused.code(), ErrorCode::AlreadyExists);
    assert_eq!(client.pending_writes(), 4);
    let local = until(&mut todos, |snapshot| snapshot.has_pending_writes && snapshot.docs.len() == 3).await;
    let order: Vec<&str> = local.docs.iter().map(|doc| doc.id.as_str()).collect();
    assert_eq!(order, [added.id.as_str(), "t2", "t1"], "in query order over the local view (n: 3, 7, 11)");
    let page = client.collection("todos").query().filter("n", Op::Gt, 5).get().await.expect("from the cache");
    assert_eq!(page.docs.len(), 2);
    let read = client.doc("todos/t2").get().await.expect("local view").expect("queued document");
    assert_eq!(read.data["title"], json!("eggs"));
    drop(todos);
    drop(client);

    // The app restarts while the server is still down; then the server comes back.
    let client = Client::with_options(&url(&app), offline_first()).expect("client");
    assert_eq!(client.pending_writes(), 4, "the queue is in the cache file");
    let mut todos = client.collection("todos").query().order_by("n", Direction::Asc).listen();
    let from_cache = next(&mut todos).await.expect("answered from the cache");
    assert!(from_cache.has_pending_writes);
    assert_eq!((n_of(&from_cache, "t1"), n_of(&from_cache, "t2")), (Some(11), Some(7)));
    let dir_of_server = app.dir();
    let app = App::start_in(&dir_of_server, &options);
    tokio::time::timeout(Duration::from_secs(30), client.wait_for_pending_writes()).await.expect("synced in time");
    let admin = admin(&app);
    let on_server = admin.collection("todos").query().order_by("n", Direction::Asc).get().await.expect("query");
    let ns: Vec<(String, i64)> =
        on_server.docs.iter().map(|doc| (doc.id.clone(), doc.data["n"].as_i64().unwrap_or(-1))).collect();
    assert_eq!(ns, [(added.id.clone(), 3), ("t2".into(), 7), ("t1".into(), 11)], "each write once, in order");
    // While the queue drains, no queued document blinks out of the list.
    let synced = until(&mut todos, |snapshot| {
        assert_eq!(snapshot.docs.len(), 3, "{snapshot:?}");
        !snapshot.has_pending_writes
    })
    .await;
    assert_eq!((n_of(&synced, "t1"), n_of(&synced, "t2")), (Some(11), Some(7)));
}

#[tokio::test]
async fn an_offline_write_the_server_refuses_is_rolled_back_and_reported() {
    let addr = free_addr();
    let options = Options { addr: Some(addr.clone()), ..Options::default() };
    let mut app = App::spawn_with(options.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let offline_first = ClientOptions {
        service_key: Some(KEY.to_owned()),
        cache: Some(dir.path().join("cache.db")),
        ..ClientOptions::default()
    };
    let client = Client::with_options(&url(&app), offline_first).expect("client");
    let mut rejected = client.rejected_writes();
    let seen = client.doc("todos/x").set(json!({"n": 1, "title": "a"})).await.expect("online write");
    let mut x = client.doc("todos/x").listen();
    next(&mut x).await.expect("snapshot");
    app.kill_hard();

    client.doc("todos/x").if_version(seen.version).update(json!({"title": "mine"})).await.expect("queued");
    client.doc("todos/y").set(json!({"n": 2})).await.expect("queued behind it");
    let mine = until(&mut x, |snapshot| snapshot.has_pending_writes).await;
    assert_eq!(mine.docs[0].data["title"], json!("mine"));

    // Meanwhile someone else changes the document (the server runs on another port,
    // out of this client's reach), then the server comes back where the client looks.
    let project = app.dir();
    let other = Options { addr: Some(free_addr()), ..Options::default() };
    let mut elsewhere = App::start_in(&project, &other);
    admin(&elsewhere).doc("todos/x").update(json!({"title": "theirs"})).await.expect("their write");
    elsewhere.terminate();
    let app = App::start_in(&project, &options);

    let refused =
        tokio::time::timeout(Duration::from_secs(30), rejected.next()).await.expect("reported").expect("open");
    assert_eq!(refused.error.code(), ErrorCode::FailedPrecondition);
    assert_eq!((refused.writes.len(), refused.writes[0].path.as_str()), (1, "todos/x"));
    tokio::time::timeout(Duration::from_secs(30), client.wait_for_pending_writes()).await.expect("synced in time");
    let rolled_back =
        until(&mut x, |snapshot| !snapshot.has_pending_writes && snapshot.docs[0].data["title"] == json!("theirs"))
            .await;
    assert_eq!(rolled_back.docs[0].version, 2);
    let x_now = client.doc("todos/x").get().await.expect("read").expect("exists");
    assert_eq!(x_now.data["title"], json!("theirs"));
    let y = admin(&app).doc("todos/y").get().await.expect("read").expect("the write behind it went through");
    assert_eq!(y.data["n"], json!(2));
}
