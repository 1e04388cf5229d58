//! Running the server: health, metrics, OpenAPI, the service key, shutdown and durability.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{App, KEY, Options, assert_error};

#[tokio::test]
async fn health_readiness_metrics_and_openapi_answer() {
    let app = App::spawn().await;
    let (status, body) = app.send(app.client.get(app.url("/healthz"))).await;
    assert_eq!((status.as_u16(), body["status"].clone()), (200, json!("ok")));
    let (status, _) = app.send(app.client.get(app.url("/readyz"))).await;
    assert_eq!(status, 200);
    app.call(Method::PUT, "/v1/docs/c/d", Some(json!({}))).await;

    let (status, body) = app.send(app.client.get(app.url("/metrics"))).await;
    assert_error(status, &body, 401, "unauthenticated");
    let metrics = app.admin(Method::GET, "/metrics").send().await.expect("sent").text().await.expect("text");
    for name in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "route=\"/v1/docs/{*path}\"",
        "hearth_writer_queue_depth",
        "hearth_group_commit_writes_bucket",
        "hearth_db_readers",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }

    let (status, spec) = app.send(app.client.get(app.url("/v1/openapi.json"))).await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().expect("version").starts_with("3."));
    let paths = spec["paths"].as_object().expect("paths");
    for (path, methods) in [
        ("/v1/docs/{path}", &["get", "post", "put", "patch", "delete"][..]),
        ("/v1/query", &["post"][..]),
        ("/v1/aggregate", &["post"][..]),
        ("/v1/batch", &["post"][..]),
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"][..]),
        ("/metrics", &["get"][..]),
        ("/v1/openapi.json", &["get"][..]),
        ("/v1/admin/backups", &["get", "post"][..]),
        ("/v1/admin/backups/{name}", &["get", "delete"][..]),
    ] {
        for method in methods {
            assert!(paths[path].get(*method).is_some(), "OpenAPI lacks {method} {path}");
        }
    }
    assert!(spec["components"]["schemas"]["Document"].is_object());
}

#[tokio::test]
async fn metrics_can_be_public() {
    let app =
        App::spawn_with(Options { config: Some("[metrics]\npublic = true\n".into()), ..Options::default() }).await;
    let response = app.client.get(app.url("/metrics")).send().await.expect("sent");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_first_start_prints_a_service_key_once_and_it_works() {
    let mut app = App::spawn().await;
    let key = printed_key(&app);
    assert!(accepted(&app, &key).await, "the printed key is accepted");
    assert_eq!(app.terminate(), Some(0));
    let dir = app.keep_dir().expect("dir");
    let again = App::start_in(dir.path(), &Options::default());
    assert!(!again.output_text().contains(&key), "the key is shown only once");
    let stored = if crate::support::on_postgres() {
        crate::support::stored_rows(dir.path(), "SELECT * FROM service_keys").concat().concat().into_bytes()
    } else {
        std::fs::read(dir.path().join("hearth_data/hearth.db")).expect("database file")
    };
    assert!(!stored.is_empty());
    assert!(!stored.windows(key.len()).any(|window| window == key.as_bytes()), "only a hash is stored");
    assert!(accepted(&again, &key).await, "the key still works after a restart");
}

/// The service key a server printed at its first start.
fn printed_key(app: &App) -> String {
    let output = app.output_text();
    let key = output.split_whitespace().find(|word| word.starts_with("hk_") && *word != KEY);
    key.expect("a service key is printed").to_owned()
}

async fn accepted(app: &App, key: &str) -> bool {
    let (status, body) = app.send(app.client.get(app.url("/v1/docs/c/x")).bearer_auth(key)).await;
    match status.as_u16() {
        404 => true,
        401 | 403 => false,
        other => panic!("{other}: {body}"),
    }
}

fn hearth(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    crate::support::hearth_command(dir).args(args).arg("--dir").arg(dir).output().expect("hearth runs")
}

#[tokio::test]
async fn a_first_start_that_cannot_listen_leaves_the_key_for_the_next_one() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let failed = hearth(&["serve", "--addr", &addr], dir.path());
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("cannot listen"), "{failed:?}");
    let app = App::start_in(dir.path(), &Options::default());
    let key = printed_key(&app);
    assert!(accepted(&app, &key).await, "the key made at the start that served works");
}

#[tokio::test]
async fn a_lost_or_leaked_service_key_is_replaced_from_the_command_line() {
    let mut app = App::spawn().await;
    let first = printed_key(&app);
    if !crate::support::on_postgres() {
        // On PostgreSQL nodes run side by side and keys change under them.
        let refused = hearth(&["keys", "service"], &app.dir());
        assert!(!refused.status.success(), "keys are not changed under a running server");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("a Hearth server is running"), "{refused:?}");
    }
    assert_eq!(app.terminate(), Some(0));
    let dir = app.keep_dir().expect("dir");

    let lost = hearth(&["keys", "service"], dir.path());
    assert!(lost.status.success(), "{lost:?}");
    let second =
        String::from_utf8_lossy(&lost.stdout).split_whitespace().find(|w| w.starts_with("hk_")).map(str::to_owned);
    let second = second.expect("the new key is printed");
    let app = App::start_in(dir.path(), &Options::default());
    assert!(!app.output_text().contains("hk_"), "a project with keys makes none at start");
    assert!(accepted(&app, &second).await && accepted(&app, &first).await, "a lost key adds one");
    drop(app);

    let leaked = hearth(&["keys", "service", "--revoke-others"], dir.path());
    assert!(leaked.status.success(), "{leaked:?}");
    let stdout = String::from_utf8_lossy(&leaked.stdout);
    assert!(stdout.contains("revoked: 2"), "{stdout}");
    let third = stdout.split_whitespace().find(|w| w.starts_with("hk_")).expect("printed").to_owned();
    let app = App::start_in(dir.path(), &Options::default());
    assert!(accepted(&app, &third).await, "the new key works");
    assert!(!accepted(&app, &first).await && !accepted(&app, &second).await, "the others are revoked");
    assert!(accepted(&app, KEY).await, "the environment's key is not stored, so it stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_writes_and_exits_cleanly() {
    let mut app = App::spawn().await;
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let client = app.client.clone();
        let base = app.url("/v1/docs/inflight");
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let path = format!("w{writer}-{i}");
                let sent = client.put(format!("{base}/{path}")).bearer_auth(KEY).json(&json!({"i": i})).send().await;
                match sent {
                    Ok(response) if response.status() == 201 => acknowledged.lock().expect("lock").push(path),
                    _ => break, // refused or closed: the server is stopping
                }
            }
        }));
    }
    while acknowledged.lock().expect("lock").len() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let code = tokio::task::block_in_place(|| app.terminate());
    assert_eq!(code, Some(0), "exit code 0 after SIGTERM");
    for writer in writers {
        writer.await.expect("writer task");
    }
    assert!(app.output_text().contains("stopped"));
    let dir = app.keep_dir().expect("dir");
    let again = App::start_in(dir.path(), &Options::default());
    let (_, page) = again.call(Method::POST, "/v1/query", Some(json!({"collection": "inflight", "limit": 1000}))).await;
    let stored: std::collections::HashSet<String> =
        page["docs"].as_array().expect("docs").iter().map(|doc| doc["id"].as_str().expect("id").to_owned()).collect();
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(acknowledged.iter().all(|path| stored.contains(path)), "an acknowledged write was lost");
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let mut app = App::spawn().await;
    let app_ref = &app;
    let mut tasks = Vec::new();
    for writer in 0..10 {
        tasks.push(async move {
            let mut acknowledged = Vec::new();
            for i in 0..50 {
                let path = format!("/v1/docs/durable/w{writer}-{i}");
                let (status, body) = app_ref.call(Method::PUT, &path, Some(json!({"writer": writer, "i": i}))).await;
                assert_eq!(status, 201, "{body}");
                acknowledged.push(body["path"].as_str().expect("path").to_owned());
            }
            acknowledged
        });
    }
    let mut acknowledged: Vec<String> = Vec::new();
    for batch in futures::future::join_all(tasks).await {
        acknowledged.extend(batch);
    }
    assert_eq!(acknowledged.len(), 500);
    app.kill_hard();
    let dir = app.keep_dir().expect("dir");
    let again = App::start_in(dir.path(), &Options::default());
    let mut found = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let (status, page) = again
            .call(Method::POST, "/v1/query", Some(json!({"collection": "durable", "limit": 1000, "cursor": cursor})))
            .await;
        assert_eq!(status, 200);
        found.extend(
            page["docs"].as_array().expect("docs").iter().map(|doc| doc["path"].as_str().expect("path").to_owned()),
        );
        cursor = page["cursor"].clone();
        if cursor.is_null() {
            break;
        }
    }
    acknowledged.sort();
    found.sort();
    assert_eq!(found, acknowledged, "every acknowledged write is there after SIGKILL");
}

#[tokio::test]
async fn json_logs_carry_request_ids() {
    let app =
        App::spawn_with(Options { extra_args: vec!["--log-format".into(), "json".into()], ..Options::default() }).await;
    let response = app.admin(Method::GET, "/v1/docs/c/x").send().await.expect("sent");
    let request_id = response.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    let mut found = false;
    for _ in 0..100 {
        found = app
            .output_text()
            .lines()
            .any(|line| serde_json::from_str::<Value>(line).is_ok_and(|entry| entry.to_string().contains(&request_id)));
        if found {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(found, "no JSON log line with request id {request_id}:\n{}", app.output_text());
    assert!(!app.output_text().contains(KEY), "the service key never reaches the log");
}

/// `store.exclusive`: the server reads and writes as usual, keeps what it acknowledged
/// through a SIGKILL, and no other process opens its database while it runs.
#[tokio::test]
async fn an_exclusive_store_works_and_locks_other_processes_out() {
    if !crate::support::sqlite_only("store.exclusive locks the SQLite file") {
        return;
    }
    let options = Options { config: Some("[store]\nexclusive = true\n".into()), ..Options::default() };
    let mut app = App::spawn_with(options.clone()).await;
    for i in 0..20 {
        let (status, body) = app.call(Method::PUT, &format!("/v1/docs/notes/n{i}"), Some(json!({"i": i}))).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = app.call(Method::GET, "/v1/docs/notes/n7", None).await;
    assert_eq!((status.as_u16(), body["data"]["i"].clone()), (200, json!(7)), "{body}");

    let rotate = |dir: &std::path::Path| hearth(&["keys", "rotate"], dir);
    let locked_out = rotate(&app.dir());
    assert!(!locked_out.status.success(), "another process opened an exclusive database");
    let stderr = String::from_utf8_lossy(&locked_out.stderr);
    assert!(stderr.contains("locked"), "{stderr}");

    app.kill_hard();
    let dir = app.keep_dir().expect("dir");
    let opened = rotate(dir.path());
    assert!(opened.status.success(), "once the server is gone: {}", String::from_utf8_lossy(&opened.stderr));
    let again = App::start_in(dir.path(), &options);
    let (status, page) =
        again.call(Method::POST, "/v1/query", Some(json!({"collection": "notes", "limit": 100}))).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["docs"].as_array().map(Vec::len), Some(20), "every acknowledged write survived SIGKILL");
}

#[tokio::test]
async fn a_bad_or_unreachable_database_url_is_refused_at_start() {
    for (url, expected) in [
        ("mysql://db.example/x", "database_url must start with"),
        // Nothing listens on port 1 of loopback.
        ("postgres://postgres@127.0.0.1:1/x", "PostgreSQL is out of reach"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("hearth.toml"), format!("database_url = \"{url}\"\n")).expect("config");
        let stderr = crate::support::refused_start(dir.path());
        assert!(stderr.contains(expected), "{url}: {stderr}");
    }
}
