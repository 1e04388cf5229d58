//! The Auth section of the contract through the real binary: sign-up and sign-in,
//! refresh rotation and reuse detection, anonymous users, profiles, admin management,
//! tokens anyone can verify with the JWKS, and every forged or stale token refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{App, KEY, Options, assert_error, mailed_code, mailed_code_about, totp_code};

const PASSWORD: &str = "correct horse battery staple";

async fn post(app: &App, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
    app.send(app.client.post(app.url(path)).json(&body)).await
}

async fn signup(app: &App, email: &str) -> Value {
    let (status, session) = post(app, "/v1/auth/signup", json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(status, 200, "{session}");
    session
}

fn bearer(app: &App, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path)).bearer_auth(token)
}

#[tokio::test]
async fn sign_up_sign_in_refresh_and_sign_out() {
    let app = App::spawn().await;
    let session = signup(&app, "  Ada@Example.com ").await;
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900);
    let user = &session["user"];
    assert_eq!(user["email"], "ada@example.com", "e-mails are stored normalised");
    assert_eq!((user["anonymous"].clone(), user["email_verified"].clone()), (json!(false), json!(false)));
    assert_eq!(user["providers"], json!(["password"]));
    assert!(user.get("password_hash").is_none());

    let token = session["access_token"].as_str().expect("token");
    let (status, me) = app.send(bearer(&app, Method::GET, "/v1/auth/user", token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], user["id"]);

    let (status, body) = post(&app, "/v1/auth/signup", json!({"email": "ADA@example.com", "password": PASSWORD})).await;
    assert_error(status, &body, 409, "already-exists");

    let (status, wrong) =
        post(&app, "/v1/auth/login", json!({"email": "ada@example.com", "password": "not the password"})).await;
    let wrong_message = assert_error(status, &wrong, 401, "unauthenticated");
    let (status, unknown) =
        post(&app, "/v1/auth/login", json!({"email": "nobody@example.com", "password": PASSWORD})).await;
    assert_eq!(assert_error(status, &unknown, 401, "unauthenticated"), wrong_message, "same answer for both");
    let (status, login) = post(&app, "/v1/auth/login", json!({"email": "Ada@example.com", "password": PASSWORD})).await;
    assert_eq!(status, 200, "{login}");

    // Rotation: each refresh token works once; presenting a spent one revokes the family.
    let first = login["refresh_token"].as_str().expect("refresh token").to_owned();
    let (status, rotated) = post(&app, "/v1/auth/refresh", json!({"refresh_token": first})).await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["refresh_token"].as_str().expect("refresh token").to_owned();
    assert_ne!(first, second);
    let (status, body) = post(&app, "/v1/auth/refresh", json!({"refresh_token": first})).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = post(&app, "/v1/auth/refresh", json!({"refresh_token": second})).await;
    assert_error(status, &body, 401, "unauthenticated");

    // The other session (from signup) is untouched by that; logout ends it.
    let signup_refresh = session["refresh_token"].as_str().expect("refresh token");
    let (status, again) = post(&app, "/v1/auth/refresh", json!({"refresh_token": signup_refresh})).await;
    assert_eq!(status, 200, "{again}");
    let access = again["access_token"].as_str().expect("token");
    let (status, _) = app.send(bearer(&app, Method::POST, "/v1/auth/logout", access)).await;
    assert_eq!(status, 204);
    let (status, body) =
        post(&app, "/v1/auth/refresh", json!({"refresh_token": again["refresh_token"].as_str().expect("token")})).await;
    assert_error(status, &body, 401, "unauthenticated");

    // Secrets never reach the log.
    let log = app.output_text();
    for secret in [PASSWORD, first.as_str(), second.as_str(), token] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

#[tokio::test]
async fn logout_everywhere_ends_every_session() {
    let app = App::spawn().await;
    let one = signup(&app, "grace@example.com").await;
    let (_, two) = post(&app, "/v1/auth/login", json!({"email": "grace@example.com", "password": PASSWORD})).await;
    let token = one["access_token"].as_str().expect("token");
    let (status, _) = app.send(bearer(&app, Method::POST, "/v1/auth/logout", token).json(&json!({"all": true}))).await;
    assert_eq!(status, 204);
    for session in [&one, &two] {
        let (status, body) = post(&app, "/v1/auth/refresh", json!({"refresh_token": session["refresh_token"]})).await;
        assert_error(status, &body, 401, "unauthenticated");
    }
}

#[tokio::test]
async fn an_anonymous_user_links_an_email_and_keeps_its_id() {
    let app = App::spawn().await;
    let (status, anonymous) = post(&app, "/v1/auth/anonymous", json!({})).await;
    assert_eq!(status, 200, "{anonymous}");
    assert_eq!(anonymous["user"]["anonymous"], true);
    assert_eq!(anonymous["user"]["email"], Value::Null);
    let token = anonymous["access_token"].as_str().expect("token");
    let (status, linked) = app
        .send(
            bearer(&app, Method::POST, "/v1/auth/link", token)
                .json(&json!({"email": "lin@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 200, "{linked}");
    assert_eq!(linked["user"]["id"], anonymous["user"]["id"]);
    assert_eq!(linked["user"]["anonymous"], false);
    let (status, login) = post(&app, "/v1/auth/login", json!({"email": "lin@example.com", "password": PASSWORD})).await;
    assert_eq!(status, 200);
    assert_eq!(login["user"]["id"], anonymous["user"]["id"]);
    let token = linked["access_token"].as_str().expect("token");
    let (status, body) = app
        .send(
            bearer(&app, Method::POST, "/v1/auth/link", token)
                .json(&json!({"email": "x@example.com", "password": PASSWORD})),
        )
        .await;
    assert_error(status, &body, 400, "invalid-argument");
}

#[tokio::test]
async fn users_change_and_delete_their_own_account() {
    let app = App::spawn().await;
    let session = signup(&app, "ken@example.com").await;
    signup(&app, "taken@example.com").await;
    let token = session["access_token"].as_str().expect("token");
    let (status, user) = app
        .send(
            bearer(&app, Method::PATCH, "/v1/auth/user", token)
                .json(&json!({"data": {"name": "Ken"}, "email": "Ken2@Example.com"})),
        )
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!((user["data"].clone(), user["email"].clone()), (json!({"name": "Ken"}), json!("ken2@example.com")));
    let (status, body) = app
        .send(bearer(&app, Method::PATCH, "/v1/auth/user", token).json(&json!({"email": "taken@example.com"})))
        .await;
    assert_error(status, &body, 409, "already-exists");
    let (_, elsewhere) = post(&app, "/v1/auth/login", json!({"email": "ken2@example.com", "password": PASSWORD})).await;
    let (status, _) = app
        .send(bearer(&app, Method::PATCH, "/v1/auth/user", token).json(&json!({"password": "a new password"})))
        .await;
    assert_eq!(status, 200);
    // A new password signs out the other sessions, not this one.
    let (status, body) = post(&app, "/v1/auth/refresh", json!({"refresh_token": elsewhere["refresh_token"]})).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, _) =
        post(&app, "/v1/auth/login", json!({"email": "ken2@example.com", "password": "a new password"})).await;
    assert_eq!(status, 200);
    let (status, body) =
        app.send(bearer(&app, Method::PATCH, "/v1/auth/user", token).json(&json!({"nickname": "x"}))).await;
    assert_error(status, &body, 400, "invalid-argument");
    let (status, _) = app.send(bearer(&app, Method::DELETE, "/v1/auth/user", token)).await;
    assert_eq!(status, 204);
    let (status, body) = post(&app, "/v1/auth/refresh", json!({"refresh_token": session["refresh_token"]})).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) =
        post(&app, "/v1/auth/login", json!({"email": "ken2@example.com", "password": "a new password"})).await;
    assert_error(status, &body, 401, "unauthenticated");
}

#[tokio::test]
async fn admins_list_create_change_disable_revoke_and_delete_users() {
    let app = App::spawn().await;
    for i in 0..5 {
        signup(&app, &format!("u{i}@example.com")).await;
    }
    let (status, created) = app
        .call(Method::POST, "/v1/admin/users", Some(json!({"email": "boss@example.com", "password": PASSWORD, "claims": {"role": "admin"}, "email_verified": true})))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["claims"], json!({"role": "admin"}));
    let mut seen = Vec::new();
    let mut path = "/v1/admin/users?limit=2".to_owned();
    loop {
        let (status, page) = app.call(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["users"].as_array().expect("users").iter().map(|user| user["id"].clone()));
        match page["cursor"].as_str() {
            Some(cursor) => path = format!("/v1/admin/users?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);

    let (_, session) = post(&app, "/v1/auth/login", json!({"email": "boss@example.com", "password": PASSWORD})).await;
    let claims = decode_claims(session["access_token"].as_str().expect("token"));
    assert_eq!((claims["role"].clone(), claims["email_verified"].clone()), (json!("admin"), json!(true)));

    let id = created["id"].as_str().expect("id");
    let (status, body) =
        app.call(Method::PATCH, &format!("/v1/admin/users/{id}"), Some(json!({"claims": {"sub": "x"}}))).await;
    assert_error(status, &body, 400, "invalid-argument");
    let (status, user) =
        app.call(Method::PATCH, &format!("/v1/admin/users/{id}"), Some(json!({"disabled": true}))).await;
    assert_eq!((status.as_u16(), user["disabled"].clone()), (200, json!(true)));
    let (status, body) = post(&app, "/v1/auth/refresh", json!({"refresh_token": session["refresh_token"]})).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = post(&app, "/v1/auth/login", json!({"email": "boss@example.com", "password": PASSWORD})).await;
    assert_error(status, &body, 403, "permission-denied");
    app.call(Method::PATCH, &format!("/v1/admin/users/{id}"), Some(json!({"disabled": false}))).await;
    let (_, session) = post(&app, "/v1/auth/login", json!({"email": "boss@example.com", "password": PASSWORD})).await;
    let (status, _) = app.call(Method::POST, &format!("/v1/admin/users/{id}/revoke"), None).await;
    assert_eq!(status, 204);
    let (status, body) = post(&app, "/v1/auth/refresh", json!({"refresh_token": session["refresh_token"]})).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, _) = app.call(Method::DELETE, &format!("/v1/admin/users/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, body) = app.call(Method::GET, &format!("/v1/admin/users/{id}"), None).await;
    assert_error(status, &body, 404, "not-found");

    // Bad admin input is refused with its reason.
    for path in [
        "/v1/admin/users?limit=0",
        "/v1/admin/users?limit=1001",
        "/v1/admin/users?cursor=%%%",
        "/v1/admin/users?bogus=1",
    ] {
        let (status, body) = app.call(Method::GET, path, None).await;
        assert_error(status, &body, 400, "invalid-argument");
    }
    let (status, body) = app.call(Method::PATCH, "/v1/admin/users/nobody", Some(json!({"disabled": true}))).await;
    assert_error(status, &body, 404, "not-found");
    let (status, body) = app.call(Method::PATCH, "/v1/admin/users/nobody", Some(json!({"role": "x"}))).await;
    assert_error(status, &body, 400, "invalid-argument");
    let (status, body) =
        app.call(Method::POST, "/v1/admin/users", Some(json!({"email": "u0@example.com", "password": PASSWORD}))).await;
    assert_error(status, &body, 409, "already-exists");

    // Admin routes are for the service key only.
    let user_token = signup(&app, "nosy@example.com").await;
    let (status, body) = app
        .send(bearer(&app, Method::GET, "/v1/admin/users", user_token["access_token"].as_str().expect("token")))
        .await;
    assert_error(status, &body, 403, "permission-denied");
    let (status, body) = app.send(app.client.get(app.url("/v1/admin/users"))).await;
    assert_error(status, &body, 401, "unauthenticated");
}

#[tokio::test]
async fn bad_emails_and_passwords_are_invalid_arguments() {
    let app = App::spawn().await;
    for (email, password) in [
        ("ada@example.com", "short"),
        ("ada@example.com", &"x".repeat(257)[..]),
        ("not-an-email", PASSWORD),
        ("ada@", PASSWORD),
        ("a b@example.com", PASSWORD),
    ] {
        let (status, body) = post(&app, "/v1/auth/signup", json!({"email": email, "password": password})).await;
        assert_error(status, &body, 400, "invalid-argument");
    }
    let (status, body) = post(&app, "/v1/auth/signup", json!({"email": "ada@example.com"})).await;
    assert_error(status, &body, 400, "invalid-argument");
    let (status, body) = app.send(app.client.post(app.url("/v1/auth/login")).body("{nope")).await;
    assert_error(status, &body, 400, "invalid-argument");
}

fn decode_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

fn encode_part(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A token signed with `key`.
fn sign(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", encode_part(header), encode_part(claims));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// The server's own signing key and its id, read from its database.
fn server_key(app: &App) -> (String, SigningKey) {
    let rows =
        crate::support::stored_rows(&app.dir(), "SELECT kid, private_key FROM signing_keys WHERE retired_at IS NULL");
    let [kid, der] = &rows[0][..] else { panic!("a signing key: {rows:?}") };
    let (kid, der) = (kid.clone(), crate::support::unhex(der));
    // Sealed at rest: opened here with the project's key file, as the server does.
    let key_text = std::fs::read_to_string(app.dir().join("hearth.key")).expect("hearth.key");
    let keyring = hearth_server::seal::Keyring::new(hearth_server::seal::parse_key(&key_text).expect("key"), &[]);
    let context = hearth_server::auth::repo::signing_key_context(&kid);
    let der = keyring.open(&der, &context).expect("sealed with the key file").into_inner();
    let seed: [u8; 32] = der[16..48].try_into().expect("32-byte seed");
    (kid, SigningKey::from_bytes(&seed))
}

#[tokio::test]
async fn access_tokens_verify_with_nothing_but_the_jwks() {
    let app = App::spawn().await;
    let session = signup(&app, "verify@example.com").await;
    let token = session["access_token"].as_str().expect("token");
    let (status, jwks) = app.send(app.client.get(app.url("/.well-known/jwks.json"))).await;
    assert_eq!(status, 200);
    // Independent of the server's JWT library: split, look up `kid`, check Ed25519.
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next().expect("h"), parts.next().expect("p"), parts.next().expect("s"));
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("json");
    assert_eq!(header["alg"], "EdDSA");
    let jwk =
        jwks["keys"].as_array().expect("keys").iter().find(|key| key["kid"] == header["kid"]).expect("kid in JWKS");
    assert_eq!((jwk["kty"].clone(), jwk["crv"].clone()), (json!("OKP"), json!("Ed25519")));
    let x: [u8; 32] = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().expect("x")).expect("b64").try_into().expect("32 bytes");
    let signature: [u8; 64] = URL_SAFE_NO_PAD.decode(signature).expect("b64").try_into().expect("64 bytes");
    VerifyingKey::from_bytes(&x)
        .expect("public key")
        .verify(
            format!("{}.{payload}", token.split('.').next().expect("h")).as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .expect("the JWKS verifies the token");
    let claims = decode_claims(token);
    assert_eq!(claims["sub"], session["user"]["id"]);
    for claim in ["iat", "exp", "iss", "aud", "sid", "anon", "email", "email_verified"] {
        assert!(claims.get(claim).is_some(), "claim {claim} missing: {claims}");
    }
    assert_eq!(claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"), 900);
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused() {
    let app = App::spawn().await;
    let session = signup(&app, "target@example.com").await;
    let good = session["access_token"].as_str().expect("token").to_owned();
    let claims = decode_claims(&good);
    let (kid, key) = server_key(&app);
    let now = claims["iat"].as_i64().expect("iat");
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let with = |change: Value| {
        let mut claims = claims.clone();
        for (name, value) in change.as_object().expect("object") {
            claims[name] = value.clone();
        }
        claims
    };
    // The server's key itself signs a valid token (the harness is right)...
    let control = sign(&key, &header, &claims);
    let (status, _) = app.send(bearer(&app, Method::GET, "/v1/auth/user", &control)).await;
    assert_eq!(status, 200, "a token made with the server's key and claims is accepted");

    let other_key = SigningKey::from_bytes(&[7; 32]);
    let public_key = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    let hs256 = {
        use hmac::{Hmac, Mac};
        let input =
            format!("{}.{}", encode_part(&json!({"alg": "HS256", "typ": "JWT", "kid": kid})), encode_part(&claims));
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(public_key.as_bytes()).expect("key");
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    };
    let tampered = {
        let mut parts: Vec<&str> = good.split('.').collect();
        let payload = encode_part(&with(json!({"sub": "someone-else"})));
        parts[1] = &payload;
        parts.join(".")
    };
    let forged = [
        ("alg none", format!("{}.{}.", encode_part(&json!({"alg": "none", "typ": "JWT"})), encode_part(&claims))),
        ("HS256 with the public key", hs256),
        ("another key", sign(&other_key, &header, &claims)),
        ("unknown kid", sign(&key, &json!({"alg": "EdDSA", "kid": "nope"}), &claims)),
        ("no kid", sign(&key, &json!({"alg": "EdDSA"}), &claims)),
        ("expired", sign(&key, &header, &with(json!({"iat": now - 3600, "exp": now - 600})))),
        ("not yet valid", sign(&key, &header, &with(json!({"nbf": now + 3600})))),
        ("wrong issuer", sign(&key, &header, &with(json!({"iss": "someone-else"})))),
        ("wrong audience", sign(&key, &header, &with(json!({"aud": "another-app"})))),
        ("tampered payload", tampered),
        ("garbage", "not.a.token".to_owned()),
        ("empty parts", "..".to_owned()),
        ("random", "eyJhbGciOiJFZERTQSJ9".to_owned()),
    ];
    for (what, token) in forged {
        let (status, body) = app.send(bearer(&app, Method::GET, "/v1/auth/user", &token)).await;
        assert_error(status, &body, 401, "unauthenticated");
        let (status, body) = app.send(bearer(&app, Method::GET, "/v1/docs/c/d", &token)).await;
        assert_eq!(status, 401, "{what} on documents: {body}");
    }
    // A valid user token is a known caller, but documents stay admin-only until rules land.
    let (status, body) = app.send(bearer(&app, Method::GET, "/v1/docs/c/d", &good)).await;
    assert_error(status, &body, 403, "permission-denied");
    // The service key is no user.
    let (status, body) = app.send(app.client.get(app.url("/v1/auth/user")).bearer_auth(KEY)).await;
    assert_error(status, &body, 401, "unauthenticated");
}

#[tokio::test]
async fn rotated_keys_keep_old_tokens_valid_and_sign_new_ones() {
    let mut app = App::spawn().await;
    let session = signup(&app, "rot@example.com").await;
    let old_token = session["access_token"].as_str().expect("token").to_owned();
    assert_eq!(app.terminate(), Some(0));
    let dir = app.keep_dir().expect("dir");
    let rotated = crate::support::hearth_command(dir.path())
        .args(["keys", "rotate", "--dir"])
        .arg(dir.path())
        .output()
        .expect("hearth keys rotate runs");
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let again = App::start_in(dir.path(), &Options::default());
    let (status, jwks) = again.send(again.client.get(again.url("/.well-known/jwks.json"))).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2), "old and new key are both published");
    let (status, _) = again.send(bearer(&again, Method::GET, "/v1/auth/user", &old_token)).await;
    assert_eq!(status, 200, "a token signed before the rotation still verifies");
    let (_, fresh) = post(&again, "/v1/auth/login", json!({"email": "rot@example.com", "password": PASSWORD})).await;
    let kid = |token: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().expect("h")).expect("b64"))
            .expect("json")
    };
    assert_ne!(kid(fresh["access_token"].as_str().expect("token"))["kid"], kid(&old_token)["kid"]);
}

#[tokio::test]
async fn email_verification_and_password_reset_use_single_use_mailed_codes() {
    let app = App::spawn().await;
    let session = signup(&app, "mail@example.com").await;
    let token = session["access_token"].as_str().expect("token");
    let (status, _) = app.send(bearer(&app, Method::POST, "/v1/auth/verify/request", token)).await;
    assert_eq!(status, 204);
    let code = mailed_code(&app, "mail@example.com").await;
    let (status, body) = post(&app, "/v1/auth/reset", json!({"token": code, "password": "another password"})).await;
    assert_error(status, &body, 400, "invalid-argument");
    let (status, user) = post(&app, "/v1/auth/verify/confirm", json!({"token": code})).await;
    assert_eq!((status.as_u16(), user["email_verified"].clone()), (200, json!(true)), "{user}");
    let (status, body) = post(&app, "/v1/auth/verify/confirm", json!({"token": code})).await;
    assert_error(status, &body, 400, "invalid-argument");

    // Recover answers 204 whether or not the account exists, and mails only real ones.
    let (status, _) = post(&app, "/v1/auth/recover", json!({"email": "nobody@example.com"})).await;
    assert_eq!(status, 204);
    let (status, _) = post(&app, "/v1/auth/recover", json!({"email": "not an address"})).await;
    assert_eq!(status, 204);
    let (status, _) = post(&app, "/v1/auth/recover", json!({"email": "MAIL@example.com"})).await;
    assert_eq!(status, 204);
    let (_, outbox) = app.call(Method::GET, "/v1/admin/outbox", None).await;
    assert!(outbox.as_array().expect("mails").iter().all(|mail| mail["to"] != "nobody@example.com"));
    let reset = mailed_code_about(&app, "mail@example.com", "Reset").await;
    assert_ne!(reset, code);
    let (status, body) = post(&app, "/v1/auth/reset", json!({"token": reset, "password": "short"})).await;
    assert_error(status, &body, 400, "invalid-argument");
    let (status, _) = post(&app, "/v1/auth/reset", json!({"token": reset, "password": "a brand new password"})).await;
    assert_eq!(status, 204);
    let (status, body) =
        post(&app, "/v1/auth/reset", json!({"token": reset, "password": "yet another password"})).await;
    assert_error(status, &body, 400, "invalid-argument");
    let (status, body) = post(&app, "/v1/auth/refresh", json!({"refresh_token": session["refresh_token"]})).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, _) =
        post(&app, "/v1/auth/login", json!({"email": "mail@example.com", "password": "a brand new password"})).await;
    assert_eq!(status, 200);
    assert!(!app.output_text().contains(&reset), "mailed codes never reach the log");
}

#[tokio::test]
async fn mailed_codes_expire() {
    let app =
        App::spawn_with(Options { config: Some("[auth]\nreset_token_seconds = 1\n".into()), ..Options::default() })
            .await;
    signup(&app, "late@example.com").await;
    post(&app, "/v1/auth/recover", json!({"email": "late@example.com"})).await;
    let code = mailed_code_about(&app, "late@example.com", "Reset").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, body) = post(&app, "/v1/auth/reset", json!({"token": code, "password": "a brand new password"})).await;
    assert_error(status, &body, 400, "invalid-argument");
}

#[tokio::test]
async fn sign_in_routes_are_rate_limited_per_ip_and_per_account() {
    let app = App::spawn_with(Options {
        config: Some("[auth.rate_limit]\nper_ip_per_minute = 6\nper_ip_burst = 4\nfailed_logins = 2\n".into()),
        ..Options::default()
    })
    .await;
    signup(&app, "limited@example.com").await;
    for _ in 0..2 {
        let (status, _) =
            post(&app, "/v1/auth/login", json!({"email": "limited@example.com", "password": "wrong password"})).await;
        assert_eq!(status, 401);
    }
    // The account is locked for now, even with the right password.
    let (status, body) =
        post(&app, "/v1/auth/login", json!({"email": "limited@example.com", "password": PASSWORD})).await;
    assert_error(status, &body, 429, "resource-exhausted");
    // The address has spent its burst of 4: the next request waits.
    let response = app.client.post(app.url("/v1/auth/anonymous")).send().await.expect("sent");
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Other routes are not limited.
    let (status, _) = app.send(app.client.get(app.url("/.well-known/jwks.json"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn totp_guards_the_login_and_each_code_works_once() {
    let app = App::spawn().await;
    let session = signup(&app, "mfa@example.com").await;
    let token = session["access_token"].as_str().expect("token").to_owned();
    let call = |method: Method, path: &str, body: Value| bearer(&app, method, path, &token).json(&body);

    let (status, enrolment) = app.send(call(Method::POST, "/v1/auth/mfa/totp/enroll", json!({}))).await;
    assert_eq!(status, 200, "{enrolment}");
    let secret = enrolment["secret"].as_str().expect("secret").to_owned();
    assert!(enrolment["otpauth_uri"].as_str().expect("uri").starts_with("otpauth://totp/"));
    let (status, body) = app.send(call(Method::POST, "/v1/auth/mfa/totp/confirm", json!({"code": "000000"}))).await;
    assert_error(status, &body, 400, "invalid-argument");
    let first = totp_code(&secret, 0);
    let (status, codes) = app.send(call(Method::POST, "/v1/auth/mfa/totp/confirm", json!({"code": first}))).await;
    assert_eq!(status, 200, "{codes}");
    let recovery: Vec<String> = codes["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|code| code.as_str().expect("code").to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);
    let (_, me) = app.send(bearer(&app, Method::GET, "/v1/auth/user", &token)).await;
    assert_eq!(me["mfa"], true);
    let (status, body) = app.send(call(Method::POST, "/v1/auth/mfa/totp/enroll", json!({}))).await;
    assert_error(status, &body, 409, "already-exists");

    let login = || post(&app, "/v1/auth/login", json!({"email": "mfa@example.com", "password": PASSWORD}));
    let (status, challenge) = login().await;
    assert_eq!(status, 200);
    assert_eq!(challenge["mfa_required"], true);
    assert!(challenge.get("access_token").is_none(), "no session before the second factor");
    let ticket = challenge["ticket"].as_str().expect("ticket").to_owned();
    let verify = |ticket: &str, code: &str| post(&app, "/v1/auth/mfa/verify", json!({"ticket": ticket, "code": code}));
    let (status, body) = verify(&ticket, &first).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, body) = verify("not-a-ticket", &totp_code(&secret, 30)).await;
    assert_error(status, &body, 401, "unauthenticated");
    let next = totp_code(&secret, 30);
    let (status, signed_in) = verify(&ticket, &next).await;
    assert_eq!(status, 200, "{signed_in}");
    assert_eq!(signed_in["user"]["email"], "mfa@example.com");
    let (status, body) = verify(&ticket, &recovery[0]).await;
    assert_error(status, &body, 401, "unauthenticated");

    let (_, challenge) = login().await;
    let ticket = challenge["ticket"].as_str().expect("ticket").to_owned();
    let (status, body) = verify(&ticket, &next).await;
    assert_error(status, &body, 401, "unauthenticated");
    let (status, _) = verify(&ticket, &recovery[0].to_uppercase()).await;
    assert_eq!(status, 200, "a recovery code stands in for the authenticator");
    let (_, challenge) = login().await;
    let (status, body) = verify(challenge["ticket"].as_str().expect("ticket"), &recovery[0]).await;
    assert_error(status, &body, 401, "unauthenticated");

    let (status, _) = app.send(call(Method::DELETE, "/v1/auth/mfa/totp", json!({"code": recovery[1]}))).await;
    assert_eq!(status, 204);
    let (status, session) = login().await;
    assert_eq!(status, 200);
    assert!(session["access_token"].is_string(), "without TOTP a login signs in directly");
    assert!(!app.output_text().contains(&secret), "the TOTP secret never reaches the log");
}

#[tokio::test]
async fn mail_goes_out_over_smtp_when_a_relay_is_configured() {
    let (port, received) = crate::support::fake_smtp(0);
    let config = format!(
        "[mail]\nfrom = \"Test App <noreply@example.com>\"\n\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n"
    );
    let app = App::spawn_with(Options { config: Some(config), ..Options::default() }).await;
    let session = signup(&app, "smtp@example.com").await;
    let token = session["access_token"].as_str().expect("token");
    let (status, body) = app.send(bearer(&app, Method::POST, "/v1/auth/verify/request", token)).await;
    assert_eq!(status, 204, "{body}");
    let mail = tokio::task::spawn_blocking(move || received.recv_timeout(std::time::Duration::from_secs(10)))
        .await
        .expect("task")
        .expect("a mail reached the SMTP server");
    assert!(mail.contains("To: smtp@example.com"), "{mail}");
    assert!(
        mail.contains("From: \"Test App\" <noreply@example.com>")
            || mail.contains("From: Test App <noreply@example.com>"),
        "{mail}"
    );
    let code = mail
        .lines()
        .map(str::trim)
        .find(|line| line.len() == 43 && !line.contains(' ') && !line.contains(':'))
        .expect("the code is in the mail")
        .to_owned();
    let (status, user) = post(&app, "/v1/auth/verify/confirm", json!({"token": code})).await;
    assert_eq!((status.as_u16(), user["email_verified"].clone()), (200, json!(true)), "{user}");
    let (_, outbox) = app.call(Method::GET, "/v1/admin/outbox", None).await;
    assert_eq!(outbox, json!([]), "with a relay, nothing goes to the outbox");
}

#[tokio::test]
async fn a_mailed_code_acts_only_on_the_user_it_was_sent_to() {
    let app = App::spawn().await;
    let alice = signup(&app, "alice@example.com").await;
    let bob = signup(&app, "bob@example.com").await;
    let (status, _) = app
        .send(bearer(&app, Method::POST, "/v1/auth/verify/request", alice["access_token"].as_str().expect("token")))
        .await;
    assert_eq!(status, 204);
    let code = mailed_code(&app, "alice@example.com").await;
    // Bob presents Alice's code: it verifies Alice, never Bob.
    let (status, user) = app
        .send(
            bearer(&app, Method::POST, "/v1/auth/verify/confirm", bob["access_token"].as_str().expect("token"))
                .json(&json!({"token": code})),
        )
        .await;
    assert_eq!((status.as_u16(), user["id"].clone()), (200, alice["user"]["id"].clone()));
    let (_, bob_now) =
        app.send(bearer(&app, Method::GET, "/v1/auth/user", bob["access_token"].as_str().expect("token"))).await;
    assert_eq!(bob_now["email_verified"], false);
    // A code sent to an address the user has since left verifies nothing.
    let token = alice["access_token"].as_str().expect("token");
    app.send(bearer(&app, Method::PATCH, "/v1/auth/user", token).json(&json!({"email": "alice2@example.com"}))).await;
    app.send(bearer(&app, Method::POST, "/v1/auth/verify/request", token)).await;
    let second = mailed_code(&app, "alice2@example.com").await;
    app.send(bearer(&app, Method::PATCH, "/v1/auth/user", token).json(&json!({"email": "alice3@example.com"}))).await;
    let (status, body) = post(&app, "/v1/auth/verify/confirm", json!({"token": second})).await;
    assert_error(status, &body, 400, "invalid-argument");
}
