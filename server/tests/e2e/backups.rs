//! Backups while the server runs, and `hearth restore` with it stopped.

use std::process::Output;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{App, Options, assert_error};

fn hearth(args: &[&str], dir: &std::path::Path) -> Output {
    crate::support::hearth_bin().args(args).arg("--dir").arg(dir).output().expect("hearth runs")
}

async fn put(app: &App, path: &str) {
    let (status, body) = app.call(Method::PUT, &format!("/v1/docs/{path}"), Some(json!({"at": path}))).await;
    assert!(status.is_success(), "{body}");
}

async fn backup(app: &App) -> Value {
    let (status, made) = app.call(Method::POST, "/v1/admin/backups", None).await;
    assert_eq!(status, 201, "{made}");
    made
}

async fn ids(app: &App) -> Vec<String> {
    let (status, page) = app.call(Method::GET, "/v1/docs/notes", None).await;
    assert_eq!(status, 200, "{page}");
    page["docs"].as_array().expect("docs").iter().map(|doc| doc["id"].as_str().expect("id").to_owned()).collect()
}

#[tokio::test]
async fn a_backup_made_while_serving_restores_to_exactly_its_moment() {
    if !crate::support::sqlite_only("backups are copies of the SQLite file") {
        return;
    }
    let mut app = App::spawn().await;
    for id in ["a1", "a2", "a3"] {
        put(&app, &format!("notes/{id}")).await;
    }
    let made = backup(&app).await;
    let name = made["name"].as_str().expect("name").to_owned();
    assert!(made["bytes"].as_u64().expect("bytes") > 0, "{made}");
    assert_eq!(made["seq"], json!(3), "three changes before the backup: {made}");

    // Listed, and downloadable as the SQLite file it names.
    let (status, list) = app.call(Method::GET, "/v1/admin/backups", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["backups"], json!([made.clone()]));
    let response = app.admin(Method::GET, &format!("/v1/admin/backups/{name}")).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/vnd.sqlite3");
    let file = response.bytes().await.expect("body");
    assert_eq!(file.len() as u64, made["bytes"].as_u64().expect("bytes"));
    assert!(file.starts_with(b"SQLite format 3\0"));

    // Writes after the backup; the last seq the live log gave out is the next backup's.
    put(&app, "notes/b1").await;
    put(&app, "notes/a1").await;
    let later = backup(&app).await;
    assert_eq!(later["seq"], json!(5), "{later}");

    // While the server runs, neither a second server nor a restore may touch its database.
    let second = crate::support::hearth_bin()
        .args(["serve", "--addr", "127.0.0.1:0", "--dir"])
        .arg(app.dir())
        .output()
        .expect("a second server runs");
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("a Hearth server is running"), "{second:?}");
    let backup_file = app.dir().join("hearth_data/backups").join(&name);
    let refused = hearth(&["restore", backup_file.to_str().expect("utf-8")], &app.dir());
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot restore: a Hearth server is running"));

    assert_eq!(app.terminate(), Some(0));
    let dir = app.keep_dir().expect("dir");

    // A file that is not a Hearth backup is refused and changes nothing.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not a database at all").expect("write junk");
    let junked = hearth(&["restore", junk.to_str().expect("utf-8")], dir.path());
    assert!(!junked.status.success(), "{junked:?}");

    let restored = hearth(&["restore", backup_file.to_str().expect("utf-8")], dir.path());
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    assert!(String::from_utf8_lossy(&restored.stdout).contains("changes up to seq 3"), "{restored:?}");

    let again = App::start_in(dir.path(), &Options::default());
    assert_eq!(ids(&again).await, ["a1", "a2", "a3"], "exactly what the backup held");
    let (_, a1) = again.call(Method::GET, "/v1/docs/notes/a1", None).await;
    assert_eq!(a1["version"], json!(1), "the update after the backup is gone: {a1}");
    // Changes go on past every seq the old log gave out (5), with a gap, so no client's
    // resume token from before the restore reaches them.
    put(&again, "notes/c1").await;
    let after = backup(&again).await;
    assert_eq!(after["seq"], json!(7), "{after}");

    // Both earlier backups are still there; deleting one removes it.
    let (_, list) = again.call(Method::GET, "/v1/admin/backups", None).await;
    let names: Vec<&str> =
        list["backups"].as_array().expect("list").iter().map(|b| b["name"].as_str().expect("name")).collect();
    assert_eq!(names.len(), 3, "{list}");
    assert!(names.windows(2).all(|pair| pair[0] > pair[1]), "newest first: {names:?}");
    let (status, _) = again.call(Method::DELETE, &format!("/v1/admin/backups/{name}"), None).await;
    assert_eq!(status, 204);
    let (status, body) = again.call(Method::GET, &format!("/v1/admin/backups/{name}"), None).await;
    assert_error(status, &body, 404, "not-found");
    let (_, list) = again.call(Method::GET, "/v1/admin/backups", None).await;
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn backups_answer_only_the_service_key_and_only_their_own_names() {
    if !crate::support::sqlite_only("backups are copies of the SQLite file") {
        return;
    }
    let app = App::spawn().await;
    let (status, body) = app.send(app.client.post(app.url("/v1/admin/backups"))).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = app.send(app.client.get(app.url("/v1/admin/backups")).bearer_auth("not-a-key")).await;
    assert_error(status, &body, 401, "unauthenticated");
    for name in ["hearth.db", "..%2Fhearth.db", "%2E%2E", "hearth-20261128T153012.345Z.db", ".hearth.lock"] {
        let (status, body) = app.call(Method::GET, &format!("/v1/admin/backups/{name}"), None).await;
        assert_error(status, &body, 404, "not-found");
        let (status, body) = app.call(Method::DELETE, &format!("/v1/admin/backups/{name}"), None).await;
        assert_error(status, &body, 404, "not-found");
    }
    assert!(app.dir().join("hearth_data/hearth.db").exists(), "nothing outside backups/ was touched");
}

/// The backups the server lists: (name, scheduled), newest first.
async fn listed(app: &App) -> Vec<(String, bool)> {
    let (status, list) = app.call(Method::GET, "/v1/admin/backups", None).await;
    assert_eq!(status, 200, "{list}");
    let backups = list["backups"].as_array().expect("backups");
    backups.iter().map(|b| (b["name"].as_str().expect("name").to_owned(), b["scheduled"] == json!(true))).collect()
}

#[tokio::test]
async fn scheduled_backups_come_at_each_tick_and_only_the_newest_are_kept() {
    if !crate::support::sqlite_only("backups are copies of the SQLite file") {
        return;
    }
    let config = "[backups]\nschedule = \"* * * * * *\"\nkeep = 2\n";
    let app = App::spawn_with(Options { config: Some(config.into()), ..Options::default() }).await;
    put(&app, "notes/a1").await;
    let manual = backup(&app).await;
    assert_eq!(manual["scheduled"], json!(false), "{manual}");
    let manual = manual["name"].as_str().expect("name").to_owned();

    // A backup every second; watch until five scheduled ones have come.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let kept = loop {
        let list = listed(&app).await;
        assert!(list.contains(&(manual.clone(), false)), "the schedule never deletes a manual backup: {list:?}");
        let scheduled: Vec<String> =
            list.into_iter().filter(|(_, scheduled)| *scheduled).map(|(name, _)| name).collect();
        // Between a new backup and the clean-up after it, three may be there.
        assert!(scheduled.len() <= 3, "{scheduled:?}");
        seen.extend(scheduled.iter().cloned());
        if seen.len() >= 5 && scheduled.len() == 2 {
            break scheduled;
        }
        assert!(std::time::Instant::now() < deadline, "scheduled backups: {seen:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // The two kept are the newest made.
    let newest: Vec<String> = seen.iter().rev().take(2).cloned().collect();
    assert_eq!(kept, newest);
    assert!(kept.iter().all(|name| name.starts_with("hearth-auto-")), "{kept:?}");
}

#[tokio::test]
async fn a_scheduled_backup_missed_while_stopped_is_made_at_start() {
    if !crate::support::sqlite_only("backups are copies of the SQLite file") {
        return;
    }
    let mut app = App::spawn().await;
    put(&app, "notes/a1").await;
    let made = backup(&app).await;
    assert_eq!(app.terminate(), Some(0));
    // A scheduled backup from before this year's first tick: the yearly one was missed.
    let backups = app.dir().join("hearth_data/backups");
    let old = "hearth-auto-20250101T000000.000Z.db";
    std::fs::copy(backups.join(made["name"].as_str().expect("name")), backups.join(old)).expect("copied");
    // And the hidden file of a backup a stop cut short.
    let unfinished = backups.join(".hearth-auto-20250102T000000.000Z.db.partial");
    std::fs::write(&unfinished, b"SQLite format 3\0 and then nothing").expect("partial");

    let config = "[backups]\nschedule = \"0 0 1 1 *\"\nkeep = 1\n";
    std::fs::write(app.dir().join("hearth.toml"), config).expect("config");
    let again = App::start_in(&app.dir(), &Options::default());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let list = loop {
        let list = listed(&again).await;
        let scheduled: Vec<&String> = list.iter().filter(|(_, scheduled)| *scheduled).map(|(name, _)| name).collect();
        if scheduled.len() == 1 && scheduled[0] != old {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "no make-up backup: {list:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(list.len(), 2, "the manual backup and the new scheduled one: {list:?}");
    assert!(list.contains(&(made["name"].as_str().expect("name").to_owned(), false)), "{list:?}");
    assert!(!backups.join(old).exists(), "keep = 1 deleted the older scheduled backup");
    assert!(!unfinished.exists(), "the next backup removed the unfinished one");
}

#[tokio::test]
async fn on_postgres_a_backup_request_says_what_to_use_instead() {
    if crate::support::on_postgres() {
        let app = App::spawn().await;
        let (status, body) = app.call(Method::POST, "/v1/admin/backups", None).await;
        let message = assert_error(status, &body, 412, "failed-precondition");
        assert!(message.contains("pg_dump"), "{message}");
    }
}
