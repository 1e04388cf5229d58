//! `hearth export` and `hearth import`: a project moved to the other backend (SQLite to
//! PostgreSQL on the SQLite run, PostgreSQL to SQLite on the PostgreSQL run) keeps its
//! documents, users, sessions, keys, rules and functions; a bad file changes nothing.

use std::path::{Path, PathBuf};
use std::process::Output;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{App, KEY, SharedProject, assert_error, hearth_command, on_postgres, totp_code};

const PASSWORD: &str = "correct horse battery staple";

/// A new project dir on the backend the suite does not run on.
enum Target {
    Sqlite(tempfile::TempDir),
    Postgres(SharedProject),
}

impl Target {
    fn other_backend() -> Target {
        if on_postgres() {
            Target::Sqlite(tempfile::tempdir().expect("temp dir"))
        } else {
            Target::Postgres(SharedProject::new(""))
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Target::Sqlite(dir) => dir.path(),
            Target::Postgres(project) => project.dir(),
        }
    }
}

fn hearth(dir: &Path, args: &[&str]) -> Output {
    hearth_command(dir).args(args).arg("--dir").arg(dir).output().expect("hearth runs")
}

fn succeeded(output: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{text}");
    text
}

fn failed(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "expected a refusal: {text}");
    text
}

async fn post(app: &App, path: &str, body: Value, token: Option<&str>) -> (StatusCode, Value) {
    let request = app.client.post(app.url(path)).json(&body);
    app.send(match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    })
    .await
}

async fn put(app: &App, path: &str, data: Value) -> Value {
    let (status, doc) = app.call(Method::PUT, &format!("/v1/docs/{path}"), Some(data)).await;
    assert!(status.is_success(), "{doc}");
    doc
}

/// The files under `dir`, for a message.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { found.extend(walk(&path)) } else { found.push(path) }
    }
    found
}

/// Every document of the project, as the API shows it.
async fn documents(app: &App) -> Vec<Value> {
    let mut all = vec![];
    for query in
        [json!({"collection": "rooms"}), json!({"collection_group": "messages"}), json!({"collection": "secrets"})]
    {
        let (status, page) = app.call(Method::POST, "/v1/query", Some(query)).await;
        assert_eq!(status, 200, "{page}");
        all.extend(page["docs"].as_array().expect("docs").iter().cloned());
    }
    all
}

#[tokio::test]
async fn a_project_moved_to_the_other_backend_keeps_its_data_users_sessions_keys_and_code() {
    let source = App::spawn().await;
    let (status, body) = source
        .send(source.admin(Method::PUT, "/v1/admin/rules").body(
            "[\"rooms/{room}\"]\nread = \"true\"\n\n[\"rooms/{room}/messages/{message}\"]\nread = \"auth != null\"\n",
        ))
        .await;
    assert!(status.is_success(), "{body}");
    let function = "import { onCall } from \"hearth\";\nexport const greet = onCall(async (data, ctx) => ({ hello: data.name, uid: ctx.auth.uid }));\n";
    let (status, body) = source.send(source.admin(Method::PUT, "/v1/admin/functions/greet.js").body(function)).await;
    assert!(status.is_success(), "{body}");

    put(&source, "rooms/r1", json!({"title": "Rust", "members": 10})).await;
    put(&source, "rooms/r1", json!({"title": "Rust", "members": 11, "tags": ["a", "ü", "😀"]})).await;
    put(
        &source,
        "rooms/r2",
        json!({"n": 9007199254740993_i64, "x": 0.1234567890123, "empty": {}, "list": [], "deep": {"b": {"a": null}}}),
    )
    .await;
    put(&source, "rooms/r1/messages/m1", json!({"text": "hi"})).await;
    put(&source, "secrets/s1", json!({"pin": 1234})).await;

    let (status, ada) =
        post(&source, "/v1/auth/signup", json!({"email": "ada@example.com", "password": PASSWORD}), None).await;
    assert_eq!(status, 200, "{ada}");
    let ada_token = ada["access_token"].as_str().expect("token").to_owned();
    let ada_refresh = ada["refresh_token"].as_str().expect("refresh").to_owned();
    let ada_id = ada["user"]["id"].as_str().expect("id").to_owned();
    let (status, body) = source
        .call(Method::PATCH, &format!("/v1/admin/users/{ada_id}"), Some(json!({"claims": {"role": "admin"}})))
        .await;
    assert_eq!(status, 200, "{body}");

    // Grace turns on TOTP: her secret is sealed with the source project's key.
    let (_, grace) =
        post(&source, "/v1/auth/signup", json!({"email": "grace@example.com", "password": PASSWORD}), None).await;
    let grace_token = grace["access_token"].as_str().expect("token").to_owned();
    let (status, enrolment) = post(&source, "/v1/auth/mfa/totp/enroll", json!({}), Some(&grace_token)).await;
    assert_eq!(status, 200, "{enrolment}");
    let secret = enrolment["secret"].as_str().expect("secret").to_owned();
    let (status, body) =
        post(&source, "/v1/auth/mfa/totp/confirm", json!({"code": totp_code(&secret, 0)}), Some(&grace_token)).await;
    assert_eq!(status, 200, "{body}");
    let made_key = source
        .output_text()
        .split_whitespace()
        .find(|word| word.starts_with("hk_") && *word != KEY)
        .expect("the service key the source made")
        .to_owned();

    // Exported while the source serves.
    let before = documents(&source).await;
    assert_eq!(before.len(), 4);
    let files = tempfile::tempdir().expect("temp dir");
    let file = files.path().join("project.hearth.jsonl");
    let file_arg = file.to_str().expect("utf-8");
    let exported = succeeded(&hearth(&source.dir(), &["export", file_arg, "--sessions"]));
    assert!(exported.contains("4 documents, 2 users") && exported.contains("2 project files"), "{exported}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("export file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the export holds password hashes");
    }
    let text = std::fs::read_to_string(&file).expect("export");
    assert!(!text.contains(&secret), "the TOTP secret travels as bytes, never as the code text");
    drop(source);

    // Imported into a new project dir, with a key of its own, on the other backend.
    let target = Target::other_backend();
    let imported = succeeded(&hearth(target.dir(), &["import", file_arg]));
    assert!(imported.contains("4 documents, 2 users") && imported.contains("2 project files"), "{imported}");
    for file in ["rules.toml", "functions/greet.js"] {
        let listing: Vec<_> = walk(target.dir());
        assert!(target.dir().join(file).is_file(), "{file} not written by: {imported}; the dir holds {listing:?}");
    }
    let moved = App::start_in(target.dir(), &Default::default());

    assert_eq!(documents(&moved).await, before, "every document, version and time as it was");
    let (status, _) = moved.send(moved.client.get(moved.url("/v1/docs/rooms/r1"))).await;
    assert_eq!(status, 200, "the rules came along: rooms are public");
    let (status, body) = moved.send(moved.client.get(moved.url("/v1/docs/secrets/s1"))).await;
    assert_error(status, &body, 403, "permission-denied");

    // Ada's access token was signed by a key that came along; her session refreshes.
    let (status, me) = moved.send(moved.client.get(moved.url("/v1/auth/user")).bearer_auth(&ada_token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["claims"], json!({"role": "admin"}));
    let (status, refreshed) = post(&moved, "/v1/auth/refresh", json!({"refresh_token": ada_refresh}), None).await;
    assert_eq!(status, 200, "{refreshed}");
    let (status, called) =
        post(&moved, "/v1/functions/greet", json!({"data": {"name": "Ada"}}), refreshed["access_token"].as_str()).await;
    assert_eq!(status, 200, "{called}");
    assert_eq!(called["result"], json!({"hello": "Ada", "uid": ada_id}));
    let (status, body) =
        post(&moved, "/v1/auth/login", json!({"email": "ada@example.com", "password": PASSWORD}), None).await;
    assert_eq!(status, 200, "the password hash came along: {body}");

    // Grace's second factor opens with the target's key.
    let (status, challenge) =
        post(&moved, "/v1/auth/login", json!({"email": "grace@example.com", "password": PASSWORD}), None).await;
    assert_eq!((status, &challenge["mfa_required"]), (StatusCode::OK, &json!(true)), "{challenge}");
    let (status, body) = post(
        &moved,
        "/v1/auth/mfa/verify",
        json!({"ticket": challenge["ticket"], "code": totp_code(&secret, 30)}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The service key the source made works on the target.
    let (status, _) = moved.send(moved.client.get(moved.url("/v1/docs/secrets/s1")).bearer_auth(&made_key)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_import_cut_short_damaged_or_into_a_used_database_changes_nothing() {
    let source = App::spawn().await;
    for id in ["a", "b", "c"] {
        put(&source, &format!("rooms/{id}"), json!({"id": id})).await;
    }
    let (status, body) =
        post(&source, "/v1/auth/signup", json!({"email": "ada@example.com", "password": PASSWORD}), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        source.send(source.admin(Method::PUT, "/v1/admin/rules").body("[\"rooms/{room}\"]\nread = \"true\"\n")).await;
    assert!(status.is_success(), "{body}");
    let file = source.dir().join("export.jsonl");
    succeeded(&hearth(&source.dir(), &["export", file.to_str().expect("utf-8")]));
    let whole = std::fs::read_to_string(&file).expect("export");
    let lines: Vec<&str> = whole.lines().collect();
    assert!(lines[0].contains("\"hearth_export\":1"), "{}", lines[0]);
    assert!(lines.last().expect("end").starts_with("{\"end\":"));

    let target = Target::other_backend();
    let write = |name: &str, text: String| -> PathBuf {
        let path = target.dir().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let import = |path: &Path| hearth(target.dir(), &["import", path.to_str().expect("utf-8")]);

    let cut = write("cut.jsonl", lines[..lines.len() - 2].join("\n"));
    assert!(failed(&import(&cut)).contains("cut short"));

    let damaged_doc = lines.iter().position(|line| line.starts_with("{\"documents\"")).expect("a document") + 1;
    let mut bad: Vec<String> = lines.iter().map(|line| (*line).to_owned()).collect();
    bad[damaged_doc] = bad[damaged_doc].replace("\"path\":\"rooms/", "\"path\":\"rooms/../");
    let bad_path = write("bad-path.jsonl", bad.join("\n"));
    let refused = failed(&import(&bad_path));
    assert!(refused.contains(&format!("line {}", damaged_doc + 1)) && refused.contains("documents.path"), "{refused}");

    let mut miscounted: Vec<String> = lines.iter().map(|line| (*line).to_owned()).collect();
    let end = miscounted.len() - 1;
    miscounted[end] = miscounted[end].replace("\"documents\":3", "\"documents\":4");
    let miscounted = write("miscounted.jsonl", miscounted.join("\n"));
    assert!(failed(&import(&miscounted)).contains("damaged"));

    let not_export = write("other.jsonl", "{\"hello\":1}\n".into());
    assert!(failed(&import(&not_export)).contains("not a Hearth export"));

    // A rules file of the target's own that differs is never overwritten.
    let rules = write("rules.toml", "[\"rooms/{room}\"]\nread = \"false\"\n".into());
    assert!(failed(&import(&file)).contains("rules.toml"));
    std::fs::remove_file(rules).expect("remove");

    // None of the refused imports left anything: the whole file goes in now, once.
    let imported = succeeded(&import(&file));
    assert!(imported.contains("3 documents, 1 users"), "{imported}");
    assert!(failed(&import(&file)).contains("already holds documents"));
    let moved = App::start_in(target.dir(), &Default::default());
    let (status, page) = moved.send(moved.client.get(moved.url("/v1/docs/rooms"))).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["docs"].as_array().expect("docs").len(), 3);
}
