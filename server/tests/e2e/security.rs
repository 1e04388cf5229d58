//! The attacks a review of auth found, each made as a client would make it: stale tokens
//! changing credentials, guessing second-factor codes, locking strangers out, and
//! forging `X-Forwarded-For`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{App, Options, assert_error, refused_start, totp_code};

const PASSWORD: &str = "correct horse battery";

/// A client whose requests come from `address` (any of 127.0.0.0/8 reaches the server).
fn client_at(address: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(address.parse::<std::net::IpAddr>().expect("ip")).build().expect("client")
}

async fn post_from(app: &App, client: &reqwest::Client, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
    app.send(client.post(app.url(path)).json(&body)).await
}

async fn signup(app: &App, email: &str) -> Value {
    let (status, session) =
        post_from(app, &app.client, "/v1/auth/signup", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(status, 200, "{session}");
    session
}

async fn login_from(app: &App, client: &reqwest::Client, email: &str, password: &str) -> (reqwest::StatusCode, Value) {
    post_from(app, client, "/v1/auth/login", json!({"email": email, "password": password})).await
}

fn token(session: &Value) -> String {
    session["access_token"].as_str().expect("access token").to_owned()
}

fn bearer(app: &App, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path)).bearer_auth(token)
}

fn assert_reauth_required(status: reqwest::StatusCode, body: &Value) {
    assert_error(status, body, 403, "permission-denied");
    assert_eq!(body["error"]["details"]["reason"], "reauthentication-required", "{body}");
}

/// Turns TOTP on for a freshly signed-in user; answers the authenticator's secret.
async fn enable_totp(app: &App, token: &str) -> String {
    let (status, enrolment) =
        app.send(bearer(app, Method::POST, "/v1/auth/mfa/totp/enroll", token).json(&json!({}))).await;
    assert_eq!(status, 200, "{enrolment}");
    let secret = enrolment["secret"].as_str().expect("secret").to_owned();
    let (status, codes) = app
        .send(
            bearer(app, Method::POST, "/v1/auth/mfa/totp/confirm", token).json(&json!({"code": totp_code(&secret, 0)})),
        )
        .await;
    assert_eq!(status, 200, "{codes}");
    secret
}

#[tokio::test]
async fn a_stolen_old_token_cannot_take_over_the_account() {
    let app =
        App::spawn_with(Options { config: Some("[auth]\nreauth_seconds = 1\n".into()), ..Options::default() }).await;
    let session = signup(&app, "owner@example.com").await;
    let stale = token(&session);
    // A second device, signed in now and kept signed in.
    let (_, other_device) = login_from(&app, &app.client, "owner@example.com", PASSWORD).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // A refreshed token is still as old as its sign-in.
    let (status, refreshed) =
        post_from(&app, &app.client, "/v1/auth/refresh", json!({"refresh_token": session["refresh_token"]})).await;
    assert_eq!(status, 200, "{refreshed}");
    let stale_refreshed = token(&refreshed);

    for token in [&stale, &stale_refreshed] {
        for change in [json!({"email": "thief@example.com"}), json!({"password": "the thief's password"})] {
            let (status, body) = app.send(bearer(&app, Method::PATCH, "/v1/auth/user", token).json(&change)).await;
            assert_reauth_required(status, &body);
        }
        let (status, body) = app.send(bearer(&app, Method::DELETE, "/v1/auth/user", token)).await;
        assert_reauth_required(status, &body);
    }
    let wrong = json!({"email": "thief@example.com", "current_password": "a guess at the password"});
    let (status, body) = app.send(bearer(&app, Method::PATCH, "/v1/auth/user", &stale_refreshed).json(&wrong)).await;
    assert_reauth_required(status, &body);
    let (status, me) = app.send(bearer(&app, Method::GET, "/v1/auth/user", &stale_refreshed)).await;
    assert_eq!((status.as_u16(), me["email"].clone()), (200, json!("owner@example.com")), "nothing changed");

    // With the password the owner may change things from an old session.
    let change = json!({"email": "new@example.com", "current_password": PASSWORD});
    let (status, me) = app.send(bearer(&app, Method::PATCH, "/v1/auth/user", &stale_refreshed).json(&change)).await;
    assert_eq!((status.as_u16(), me["email"].clone()), (200, json!("new@example.com")), "{me}");

    // Turning MFA on (fresh sign-in) signs every other device out.
    let (_, fresh) = login_from(&app, &app.client, "new@example.com", PASSWORD).await;
    let secret = enable_totp(&app, &token(&fresh)).await;
    let (status, body) =
        post_from(&app, &app.client, "/v1/auth/refresh", json!({"refresh_token": other_device["refresh_token"]})).await;
    assert_error(status, &body, 401, "unauthenticated");

    // Turning it off from an old session needs the password as well as a code.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = token(&fresh);
    let (status, body) = app
        .send(bearer(&app, Method::DELETE, "/v1/auth/mfa/totp", &fresh).json(&json!({"code": totp_code(&secret, 30)})))
        .await;
    assert_reauth_required(status, &body);
    let (_, me) = app.send(bearer(&app, Method::GET, "/v1/auth/user", &fresh)).await;
    assert_eq!(me["mfa"], true);
    // Deleting the account from an old session needs password and code.
    let (status, body) = app
        .send(bearer(&app, Method::DELETE, "/v1/auth/user", &fresh).json(&json!({"current_password": PASSWORD})))
        .await;
    assert_reauth_required(status, &body);
    let proof = json!({"current_password": PASSWORD, "code": totp_code(&secret, 30)});
    let (status, _) = app.send(bearer(&app, Method::DELETE, "/v1/auth/user", &fresh).json(&proof)).await;
    assert_eq!(status, 204);
    let (status, _) = login_from(&app, &app.client, "new@example.com", PASSWORD).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn second_factor_codes_cannot_be_guessed() {
    let app = App::spawn_with(Options {
        config: Some("[auth.rate_limit]\nfailed_mfa_codes = 7\n".into()),
        ..Options::default()
    })
    .await;
    let session = signup(&app, "guarded@example.com").await;
    let secret = enable_totp(&app, &token(&session)).await;
    let right = || totp_code(&secret, 30);
    // A wrong code that is surely not the current one (nor an adjacent step's).
    let wrong = || {
        let near: Vec<String> = [0, 30, 60].iter().map(|offset| totp_code(&secret, *offset)).collect();
        (0..1000).map(|n| format!("{n:06}")).find(|code| !near.contains(code)).expect("a wrong code")
    };
    let ticket = || async {
        let (status, challenge) = login_from(&app, &app.client, "guarded@example.com", PASSWORD).await;
        assert_eq!((status.as_u16(), challenge["mfa_required"].clone()), (200, json!(true)), "{challenge}");
        challenge["ticket"].as_str().expect("ticket").to_owned()
    };
    let verify = |ticket: String, code: String| {
        post_from(&app, &app.client, "/v1/auth/mfa/verify", json!({"ticket": ticket, "code": code}))
    };

    // Five wrong codes burn a ticket: even the right code cannot use it afterwards.
    let burnt = ticket().await;
    for _ in 0..5 {
        let (status, body) = verify(burnt.clone(), wrong()).await;
        assert_error(status, &body, 401, "unauthenticated");
    }
    let (status, body) = verify(burnt, right()).await;
    assert_error(status, &body, 401, "unauthenticated");

    // Fresh tickets do not buy fresh guesses: the account's budget of 7 runs out.
    let second = ticket().await;
    for _ in 0..2 {
        let (status, body) = verify(second.clone(), wrong()).await;
        assert_error(status, &body, 401, "unauthenticated");
    }
    let (status, body) = verify(ticket().await, right()).await;
    assert_error(status, &body, 429, "resource-exhausted");
}

#[tokio::test]
async fn a_stranger_cannot_lock_the_owner_out() {
    let app = App::spawn_with(Options {
        config: Some("[auth.rate_limit]\nfailed_logins = 3\nfailed_logins_per_account = 6\n".into()),
        ..Options::default()
    })
    .await;
    let owner = client_at("127.0.0.1");
    let (status, _) =
        post_from(&app, &owner, "/v1/auth/signup", json!({"email": "owner@example.com", "password": PASSWORD})).await;
    assert_eq!(status, 200);

    // One stranger guesses until locked out; the lock-out is theirs alone.
    let stranger = client_at("127.0.0.2");
    for _ in 0..3 {
        let (status, _) = login_from(&app, &stranger, "owner@example.com", "a guess").await;
        assert_eq!(status, 401);
    }
    let (status, body) = login_from(&app, &stranger, "owner@example.com", PASSWORD).await;
    assert_error(status, &body, 429, "resource-exhausted");
    let (status, session) = login_from(&app, &owner, "owner@example.com", PASSWORD).await;
    assert_eq!(status, 200, "{session}");

    // Guesses spread over many addresses (the stranger's 3 and 3 more) run out the
    // account's budget of 6 for every address it has never signed in from, and still
    // not for the owner's.
    for last in 3..=5 {
        let (status, _) =
            login_from(&app, &client_at(&format!("127.0.0.{last}")), "owner@example.com", "a guess").await;
        assert_eq!(status, 401);
    }
    let (status, body) = login_from(&app, &client_at("127.0.0.6"), "owner@example.com", PASSWORD).await;
    assert_error(status, &body, 429, "resource-exhausted");
    let (status, _) = login_from(&app, &owner, "owner@example.com", PASSWORD).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn forged_forwarded_for_entries_do_not_escape_the_limits() {
    let app = App::spawn_with(Options {
        config: Some(
            "[auth.rate_limit]\ntrusted_proxies = 1\nfailed_logins = 2\nfailed_logins_per_account = 100\nper_ip_burst = 8\nper_ip_per_minute = 8\n"
                .into(),
        ),
        ..Options::default()
    })
    .await;
    signup(&app, "owner@example.com").await;
    // The attacker writes a new left-most entry each time; the proxy appends the
    // attacker's real address, which is what counts.
    let through_proxy = |forged: usize, real: &str| {
        app.client
            .post(app.url("/v1/auth/login"))
            .header("x-forwarded-for", format!("10.0.{}.{}, {real}", forged / 256, forged % 256))
    };
    for n in 0..2 {
        let request =
            through_proxy(n, "198.51.100.1").json(&json!({"email": "owner@example.com", "password": "a guess"}));
        assert_eq!(app.send(request).await.0, 401);
    }
    let request = through_proxy(2, "198.51.100.1").json(&json!({"email": "owner@example.com", "password": PASSWORD}));
    let (status, body) = app.send(request).await;
    assert_error(status, &body, 429, "resource-exhausted");
    // The per-address request budget holds too (8 in all for this address).
    let mut limited = 0;
    for n in 3..12 {
        let request = through_proxy(n, "198.51.100.1").json(&json!({"email": "x@example.com", "password": "p"}));
        if app.send(request).await.0 == 429 {
            limited += 1;
        }
    }
    assert!(limited >= 4, "{limited} of 9 limited");
    // Someone else behind the same proxy is not affected.
    let request = through_proxy(0, "198.51.100.2").json(&json!({"email": "owner@example.com", "password": PASSWORD}));
    assert_eq!(app.send(request).await.0, 200);
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let app = App::spawn().await;
    let session = signup(&app, "headers@example.com").await;
    let answers = [
        app.client.get(app.url("/healthz")).send().await.expect("health"),
        app.client.get(app.url("/v1/no/such/route")).send().await.expect("404"),
        bearer(&app, Method::GET, "/v1/auth/user", &token(&session)).send().await.expect("user"),
        app.client.post(app.url("/v1/auth/login")).body("not json").send().await.expect("400"),
    ];
    for answer in answers {
        let headers = answer.headers();
        for (name, value) in [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ] {
            assert_eq!(headers.get(name).and_then(|v| v.to_str().ok()), Some(value), "{name} on {}", answer.url());
        }
    }
}

const OWNED_NOTES: &str = r#"
["notes/{id}"]
read = "auth != null && resource.data.owner == auth.uid"
create = "auth != null && request.data.owner == auth.uid"
update = "auth != null && resource.data.owner == auth.uid && request.data.owner == auth.uid"
delete = "auth != null && resource.data.owner == auth.uid"
"#;

#[tokio::test]
async fn a_denied_write_learns_nothing_about_the_document() {
    let app = App::spawn().await;
    let (status, body) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(OWNED_NOTES)).await;
    assert!(status.is_success(), "{body}");
    let owner = signup(&app, "owner@example.com").await;
    let owner_uid = owner["user"]["id"].as_str().expect("uid").to_owned();
    let stranger = token(&signup(&app, "stranger@example.com").await);
    let note = json!({"owner": owner_uid, "text": "a secret", "count": "not a number"});
    let (status, stored) = app.send(bearer(&app, Method::PUT, "/v1/docs/notes/n1", &token(&owner)).json(&note)).await;
    assert_eq!((status.as_u16(), stored["version"].clone()), (201, json!(1)), "{stored}");

    let stranger_tries = [
        // A version precondition would name the stored version.
        bearer(&app, Method::PATCH, "/v1/docs/notes/n1", &stranger)
            .header("if-match", "\"7\"")
            .json(&json!({"text": "x"})),
        bearer(&app, Method::DELETE, "/v1/docs/notes/n1", &stranger).header("if-match", "\"7\""),
        bearer(&app, Method::PUT, "/v1/docs/notes/n1", &stranger)
            .header("if-match", "\"7\"")
            .json(&json!({"text": "x"})),
        // A transform on a field of another type would name the type.
        bearer(&app, Method::PATCH, "/v1/docs/notes/n1", &stranger).json(&json!({"count": {"$increment": 1}})),
        // An update of a missing document would say it is missing.
        bearer(&app, Method::PATCH, "/v1/docs/notes/missing", &stranger).json(&json!({"text": "x"})),
        bearer(&app, Method::PATCH, "/v1/docs/notes/missing", &stranger)
            .header("if-match", "\"1\"")
            .json(&json!({"text": "x"})),
    ];
    for request in stranger_tries {
        let (status, body) = app.send(request).await;
        let message = assert_error(status, &body, 403, "permission-denied");
        assert!(!message.contains("version") && !message.contains("number"), "{message}");
    }
    // The same failures in a batch: the denied index, never its cause.
    let batch = json!({"writes": [
        {"op": "update", "path": "notes/n1", "data": {"text": "x"}, "if_version": 9},
    ]});
    let (status, body) = app.send(bearer(&app, Method::POST, "/v1/batch", &stranger).json(&batch)).await;
    assert_error(status, &body, 403, "permission-denied");

    // The owner still gets the real reasons.
    let (status, body) = app
        .send(
            bearer(&app, Method::PATCH, "/v1/docs/notes/n1", &token(&owner))
                .header("if-match", "\"7\"")
                .json(&json!({"text": "x"})),
        )
        .await;
    assert_error(status, &body, 412, "failed-precondition");
    let (status, body) = app
        .send(
            bearer(&app, Method::PATCH, "/v1/docs/notes/n1", &token(&owner)).json(&json!({"count": {"$increment": 1}})),
        )
        .await;
    assert_error(status, &body, 400, "invalid-argument");
    let (_, doc) = app.send(bearer(&app, Method::GET, "/v1/docs/notes/n1", &token(&owner))).await;
    assert_eq!((doc["version"].clone(), doc["data"]["text"].clone()), (json!(1), json!("a secret")), "nothing changed");
}

const GATEKEEPER: &str = r#"
import { beforeDocumentWrite, HearthError } from "hearth";

export const gate = beforeDocumentWrite("vault/{id}", async (event, ctx) => {
  // Service rights: a hook may read what the caller may not, and say so.
  const secret = await ctx.db.get("secrets/s1");
  await ctx.db.set("hook_runs/" + event.params.id, { at: event.params.id });
  if (event.after && event.after.data.guess !== secret.data.value) {
    throw new HearthError("invalid-argument", "wrong guess, the secret starts with " + secret.data.value[0]);
  }
  return event.after && { ...event.after.data, checked: true };
});
"#;

const VAULT_RULES: &str = r#"
["vault/{id}"]
read = "auth != null && auth.uid == 'nobody'"
write = "auth != null && request.data.owner == auth.uid"
"#;

/// Every way a client might read a cursor: its base64url parts, decoded.
fn cursor_readings(cursor: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut readings = vec![cursor.as_bytes().to_vec()];
    for part in cursor.split(['.', '~', ':']) {
        for engine in
            [base64::engine::general_purpose::URL_SAFE_NO_PAD, base64::engine::general_purpose::STANDARD_NO_PAD]
        {
            readings.extend(engine.decode(part.trim_end_matches('=')).ok());
        }
    }
    readings
}

#[tokio::test]
async fn a_cursor_shows_nothing_of_the_documents_the_caller_cannot_read() {
    let app = App::spawn().await;
    // `%` is not pushed into SQL: every document is checked, so the first 1,000 (all
    // unreadable) use up the scan budget and the page ends on a document the caller may
    // not read.
    let rules = "[\"vault/{id}\"]\nread = \"auth != null && resource.data.n % 2 == 0 && resource.data.n >= 1040\"\n";
    let (status, body) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(rules)).await;
    assert!(status.is_success(), "{body}");
    for start in (0..1050).step_by(350) {
        let writes: Vec<Value> = (start..start + 350)
            .map(|n| json!({"op": "set", "path": format!("vault/v{n:05}"), "data": {"n": n, "pin": format!("pin-{n:05}")}}))
            .collect();
        let (status, body) = app.call(Method::POST, "/v1/batch", Some(json!({"writes": writes}))).await;
        assert_eq!(status, 200, "{body}");
    }
    let reader = token(&signup(&app, "reader@example.com").await);
    let query = |cursor: Option<&str>| json!({"collection": "vault", "order_by": [{"field": "pin"}], "limit": 5, "cursor": cursor});
    let (status, first) = app.send(bearer(&app, Method::POST, "/v1/query", &reader).json(&query(None))).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["docs"], json!([]), "the budget ran out before a readable document");
    let cursor = first["cursor"].as_str().expect("a budget-stopped page resumes").to_owned();
    for reading in cursor_readings(&cursor) {
        let text = String::from_utf8_lossy(&reading);
        assert!(!text.contains("pin-") && !text.contains("v00"), "the cursor shows a denied document: {text}");
    }
    // The sealed cursor still carries on where the scan stopped.
    let (status, next) = app.send(bearer(&app, Method::POST, "/v1/query", &reader).json(&query(Some(&cursor)))).await;
    assert_eq!(status, 200, "{next}");
    let pins: Vec<&str> =
        next["docs"].as_array().expect("docs").iter().map(|d| d["data"]["pin"].as_str().expect("pin")).collect();
    assert_eq!(pins, ["pin-01040", "pin-01042", "pin-01044", "pin-01046", "pin-01048"]);
    // A cursor altered by the client is refused, not decoded.
    let mut forged = cursor.clone();
    forged.replace_range(10..11, if &cursor[10..11] == "A" { "B" } else { "A" });
    let (status, body) = app.send(bearer(&app, Method::POST, "/v1/query", &reader).json(&query(Some(&forged)))).await;
    assert_error(status, &body, 400, "invalid-argument");
}

#[tokio::test]
async fn before_write_hooks_never_run_for_a_write_the_rules_deny() {
    let app = App::spawn().await;
    let (status, body) = app.send(app.admin(Method::PUT, "/v1/admin/rules").body(VAULT_RULES)).await;
    assert!(status.is_success(), "{body}");
    let (status, body) = app.send(app.admin(Method::PUT, "/v1/admin/functions/gate.js").body(GATEKEEPER)).await;
    assert!(status.is_success(), "{body}");
    let (status, _) = app.call(Method::PUT, "/v1/docs/secrets/s1", Some(json!({"value": "swordfish"}))).await;
    assert!(status.is_success());
    let user = signup(&app, "guesser@example.com").await;
    let uid = user["user"]["id"].as_str().expect("uid").to_owned();

    // Not the caller's to write: refused before the hook reads or writes anything.
    let (status, body) = app
        .send(
            bearer(&app, Method::PUT, "/v1/docs/vault/v1", &token(&user))
                .json(&json!({"owner": "someone else", "guess": "a"})),
        )
        .await;
    let message = assert_error(status, &body, 403, "permission-denied");
    assert!(!message.contains("secret"), "{message}");
    let (status, _) = app.call(Method::GET, "/v1/docs/hook_runs/v1", None).await;
    assert_eq!(status, 404, "the hook never ran");
    let (status, body) = app
        .send(
            bearer(&app, Method::PATCH, "/v1/docs/vault/v1", &token(&user))
                .header("if-match", "\"3\"")
                .json(&json!({"guess": "a"})),
        )
        .await;
    assert_error(status, &body, 403, "permission-denied");
    let (status, _) = app.call(Method::GET, "/v1/docs/hook_runs/v1", None).await;
    assert_eq!(status, 404, "the hook never ran");

    // The caller's own write runs the hook, which still decides.
    let (status, body) = app
        .send(
            bearer(&app, Method::PUT, "/v1/docs/vault/v2", &token(&user))
                .json(&json!({"owner": uid, "guess": "swordfish"})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    assert_eq!(body["data"]["checked"], true);
    let (status, _) = app.call(Method::GET, "/v1/docs/hook_runs/v2", None).await;
    assert_eq!(status, 200);
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_is_for_the_server_user_alone() {
    use std::os::unix::fs::PermissionsExt;
    if !crate::support::sqlite_only("the data dir holds the SQLite database and its backups") {
        return;
    }
    let app = App::spawn().await;
    signup(&app, "files@example.com").await;
    let (status, backup) = app.call(Method::POST, "/v1/admin/backups", None).await;
    assert!(status.is_success(), "{backup}");
    let data = app.dir().join("hearth_data");
    let mode = |path: &std::path::Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("backups")), 0o700);
    let mut files = 0;
    for dir in [data.clone(), data.join("backups")] {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            if path.is_file() && name.contains(".db") {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(files >= 3, "the database, its WAL and a backup: {files}");
}

#[tokio::test]
async fn recovery_answers_alike_for_every_address_even_when_mail_fails() {
    // An SMTP relay that is down: nothing listens on this port.
    let port = crate::support::free_addr().rsplit(':').next().expect("port").to_owned();
    let config = format!(
        "[mail]\nfrom = \"noreply@example.com\"\n\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
    );
    let app = App::spawn_with(Options { config: Some(config), ..Options::default() }).await;
    signup(&app, "exists@example.com").await;
    for email in ["exists@example.com", "nobody@example.com", "not an address"] {
        let (status, body) = post_from(&app, &app.client, "/v1/auth/recover", json!({"email": email})).await;
        assert_eq!((status.as_u16(), body), (204, Value::Null), "{email}");
    }
}

#[tokio::test]
async fn mail_waits_in_a_queue_until_the_relay_takes_it() {
    // A relay that answers "try again later" to the first two tries.
    let (port, received) = crate::support::fake_smtp(2);
    let config = format!(
        "[mail]\nfrom = \"noreply@example.com\"\n\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfirst_retry_ms = 100\n"
    );
    let app = App::spawn_with(Options { config: Some(config), ..Options::default() }).await;
    signup(&app, "patient@example.com").await;
    let (status, body) =
        post_from(&app, &app.client, "/v1/auth/recover", json!({"email": "patient@example.com"})).await;
    assert_eq!((status.as_u16(), body), (204, Value::Null));
    let mail = tokio::task::spawn_blocking(move || received.recv_timeout(Duration::from_secs(20)))
        .await
        .expect("task")
        .expect("the third try reaches the relay");
    assert!(mail.contains("To: patient@example.com") && mail.contains("Reset your password"), "{mail}");
    let log = app.output_text();
    assert_eq!(log.matches("SMTP delivery failed; will retry").count(), 2, "{log}");
    let code = mail.lines().map(str::trim).find(|line| line.len() == 43 && !line.contains(' ')).expect("a code");
    assert!(!log.contains(code), "the mailed code never reaches the log");
}

/// The bytes of the first column of every row a query answers.
fn stored(dir: &std::path::Path, sql: &str) -> Vec<Vec<u8>> {
    crate::support::stored_rows(dir, sql).iter().map(|row| crate::support::unhex(&row[0])).collect()
}

/// RFC 4648 base32 (the authenticator's spelling of a TOTP secret) to bytes.
fn base32_decode(text: &str) -> Vec<u8> {
    let (mut bits, mut count, mut out) = (0u64, 0, Vec::new());
    for c in text.trim_end_matches('=').bytes() {
        let value =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".iter().position(|&a| a == c.to_ascii_uppercase()).expect("base32");
        bits = (bits << 5) | value as u64;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// The DER prefix of every Ed25519 PKCS#8 private key: what a key in the clear starts with.
const PKCS8_ED25519: [u8; 12] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

async fn sign_in_with_code(app: &App, email: &str, code: String) -> (reqwest::StatusCode, Value) {
    let (status, challenge) = login_from(app, &app.client, email, PASSWORD).await;
    assert_eq!((status.as_u16(), challenge["mfa_required"].clone()), (200, json!(true)), "{challenge}");
    let ticket = challenge["ticket"].as_str().expect("ticket");
    post_from(app, &app.client, "/v1/auth/mfa/verify", json!({"ticket": ticket, "code": code})).await
}

#[tokio::test]
async fn signing_keys_and_totp_secrets_are_sealed_at_rest_and_the_key_rotates() {
    let mut app = App::spawn().await;
    let dir = app.dir();
    let _kept = app.keep_dir();
    let alice = signup(&app, "alice@example.com").await;
    let alice_secret = enable_totp(&app, &token(&alice)).await;
    let bob = signup(&app, "bob@example.com").await;
    let bob_secret = enable_totp(&app, &token(&bob)).await;
    let raw = |secret: &str| base32_decode(secret);
    // What the database holds is neither the authenticator's secret nor a private key.
    let totp_rows = || stored(&dir, "SELECT secret FROM mfa_totp ORDER BY user_id");
    let key_rows = || stored(&dir, "SELECT private_key FROM signing_keys ORDER BY kid");
    for row in totp_rows() {
        assert!(!holds(&row, &raw(&alice_secret)) && !holds(&row, &raw(&bob_secret)), "a TOTP secret in the clear");
    }
    assert!(!key_rows().is_empty());
    for row in key_rows() {
        assert!(!holds(&row, &PKCS8_ED25519), "a private key in the clear");
    }
    // The key sits beside the data dir, for the server's user alone.
    use std::os::unix::fs::PermissionsExt as _;
    let key_file = dir.join("hearth.key");
    let mode = std::fs::metadata(&key_file).expect("hearth.key is made").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let old_key = std::fs::read_to_string(&key_file).expect("key").trim().to_owned();
    let new_key = "ab".repeat(32);
    let sealed_before = (totp_rows(), key_rows());
    assert_eq!(app.terminate(), Some(0));

    // Rotation: the new key seals, the old one still opens, and at start every secret is
    // sealed again with the new key.
    let config = |toml: String| std::fs::write(dir.join("hearth.toml"), toml).expect("config");
    config(format!("encryption_key = \"{new_key}\"\nprevious_encryption_keys = [\"{old_key}\"]\n"));
    let mut app = App::start_in(&dir, &Options::default());
    let (status, body) = app.send(bearer(&app, Method::GET, "/v1/auth/user", &token(&alice))).await;
    assert_eq!(status, 200, "the signing key opens after rotation: {body}");
    let (status, body) = sign_in_with_code(&app, "alice@example.com", totp_code(&alice_secret, 30)).await;
    assert_eq!(status, 200, "the TOTP secret opens after rotation: {body}");
    let sealed_after = (totp_rows(), key_rows());
    assert_ne!(sealed_after.0, sealed_before.0);
    assert_ne!(sealed_after.1, sealed_before.1);
    assert_eq!(app.terminate(), Some(0));

    // The old key can go: nothing needs it any more.
    config(format!("encryption_key = \"{new_key}\"\n"));
    let mut app = App::start_in(&dir, &Options::default());
    let (status, body) = app.send(bearer(&app, Method::GET, "/v1/auth/user", &token(&alice))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((totp_rows(), key_rows()), sealed_after, "nothing to seal again");
    assert_eq!(app.terminate(), Some(0));

    // A wrong key is refused at start, and changes nothing.
    config(format!("encryption_key = \"{}\"\n", "cd".repeat(32)));
    let stderr = refused_start(&dir);
    assert!(stderr.contains("previous_encryption_keys"), "{stderr}");
    assert_eq!((totp_rows(), key_rows()), sealed_after);

    // A database from before sealing (secrets in the clear) is sealed at its first start.
    let bob_id = bob["user"]["id"].as_str().expect("uid");
    crate::support::stored_execute(
        &dir,
        &format!(
            "DELETE FROM meta WHERE key = 'secrets_sealed'; DELETE FROM signing_keys; \
             DELETE FROM mfa_totp WHERE user_id != '{bob_id}'; UPDATE mfa_totp SET secret = {};",
            crate::support::blob_literal(&raw(&bob_secret))
        ),
    );
    config(format!("encryption_key = \"{new_key}\"\n"));
    let app = App::start_in(&dir, &Options::default());
    let (status, body) = sign_in_with_code(&app, "bob@example.com", totp_code(&bob_secret, 30)).await;
    assert_eq!(status, 200, "{body}");
    assert!(!holds(&totp_rows()[0], &raw(&bob_secret)), "sealed at start");
    for row in key_rows() {
        assert!(!holds(&row, &PKCS8_ED25519));
    }
}
