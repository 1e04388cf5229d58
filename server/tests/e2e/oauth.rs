//! OAuth2/OIDC sign-in end to end against a small OIDC provider this test runs on
//! loopback: discovery, authorization code with PKCE, state and nonce, ID-token
//! verification through the provider's JWKS, and account linking by verified e-mail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{App, Options, assert_error, free_addr, mailed_code, totp_code};

const CLIENT_ID: &str = "hearth-client";
const CLIENT_SECRET: &str = "provider-secret";

/// Who the provider says signs in next, and whether it lies about the nonce.
#[derive(Clone)]
struct Next {
    subject: String,
    email: Option<String>,
    email_verified: bool,
    wrong_nonce: bool,
}

/// What the provider remembers of a code it gave out: the nonce, the PKCE challenge and
/// who signed in.
type Grants = Arc<Mutex<HashMap<String, (String, String, Next)>>>;

#[derive(Clone)]
struct Provider {
    issuer: String,
    key: Arc<SigningKey>,
    codes: Grants,
    next: Arc<Mutex<Next>>,
}

async fn discovery(State(provider): State<Provider>) -> axum::Json<Value> {
    let issuer = &provider.issuer;
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
    }))
}

async fn jwks(State(provider): State<Provider>) -> axum::Json<Value> {
    let x = URL_SAFE_NO_PAD.encode(provider.key.verifying_key().to_bytes());
    axum::Json(json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]}))
}

/// The user consents at once: back to the client with a code.
async fn authorize(State(provider): State<Provider>, Query(query): Query<HashMap<String, String>>) -> Response {
    let field = |name: &str| query.get(name).cloned().unwrap_or_default();
    if field("response_type") != "code" || field("client_id") != CLIENT_ID || field("code_challenge_method") != "S256" {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let code = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
    let next = provider.next.lock().expect("lock").clone();
    provider.codes.lock().expect("lock").insert(code.clone(), (field("nonce"), field("code_challenge"), next));
    let target = format!("{}?code={code}&state={}", field("redirect_uri"), field("state"));
    (StatusCode::FOUND, [(header::LOCATION, target)]).into_response()
}

async fn token(
    State(provider): State<Provider>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"}))).into_response();
    }
    let Some((nonce, challenge, next)) =
        form.get("code").and_then(|code| provider.codes.lock().expect("lock").remove(code))
    else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant"}))).into_response();
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant", "why": "PKCE"}))).into_response();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = json!({
        "iss": provider.issuer, "aud": CLIENT_ID, "sub": next.subject, "iat": now, "exp": now + 300,
        "nonce": if next.wrong_nonce { "not-the-nonce".to_owned() } else { nonce },
        "email": next.email, "email_verified": next.email_verified,
    });
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"});
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let id_token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(provider.key.sign(input.as_bytes()).to_bytes()));
    axum::Json(json!({"access_token": "opaque", "token_type": "Bearer", "expires_in": 300, "id_token": id_token}))
        .into_response()
}

async fn start_provider() -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    let provider = Provider {
        issuer,
        key: Arc::new(SigningKey::from_bytes(&rand::random())),
        codes: Arc::default(),
        next: Arc::new(Mutex::new(Next {
            subject: "sub-1".into(),
            email: Some("oidc@example.com".into()),
            email_verified: true,
            wrong_nonce: false,
        })),
    };
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .with_state(provider.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    provider
}

/// The provider's answer to a started sign-in: the callback URL and the cookie Hearth set
/// on the browser that started it.
struct Begun {
    callback: String,
    cookie: String,
}

/// Hearth → provider: starts a sign-in and consents at the provider.
async fn begin(app: &App, client: &reqwest::Client, query: &str) -> Begun {
    let start = client.get(app.url(&format!("/v1/auth/oauth/test{query}"))).send().await.expect("start");
    assert_eq!(start.status(), 302, "{:?}", start.text().await);
    let set_cookie = start.headers()[header::SET_COOKIE].to_str().expect("ascii").to_owned();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/v1/auth/oauth", "Max-Age="] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();
    let to_provider = start.headers()[header::LOCATION].to_str().expect("ascii").to_owned();
    let consent = client.get(&to_provider).send().await.expect("authorize");
    assert_eq!(consent.status(), 302);
    let callback = consent.headers()[header::LOCATION].to_str().expect("ascii").to_owned();
    Begun { callback, cookie }
}

/// Follows the dance by hand in one browser: Hearth → provider → Hearth's callback.
/// Answers the last response.
async fn sign_in(app: &App, client: &reqwest::Client, query: &str) -> reqwest::Response {
    let begun = begin(app, client, query).await;
    client.get(&begun.callback).header(header::COOKIE, &begun.cookie).send().await.expect("callback")
}

/// A server that signs in with the test provider, reachable at the `public_url` its
/// config names.
async fn spawn_with_provider(provider: &Provider) -> App {
    let addr = free_addr();
    let config = format!(
        "[auth.oauth]\npublic_url = \"http://{addr}\"\nallowed_redirects = [\"myapp://signed-in\", \"https://app.example.com/done\"]\n\n[auth.oauth.providers.test]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n",
        provider.issuer
    );
    App::spawn_with(Options { config: Some(config), addr: Some(addr), ..Options::default() }).await
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

fn next(subject: &str, email: &str, email_verified: bool) -> Next {
    Next { subject: subject.into(), email: Some(email.into()), email_verified, wrong_nonce: false }
}

async fn password_signup(app: &App, email: &str, password: &str) -> Value {
    let (status, session) = app
        .send(app.client.post(app.url("/v1/auth/signup")).json(&json!({"email": email, "password": password})))
        .await;
    assert_eq!(status, 200, "{session}");
    session
}

/// Verifies the e-mail of a signed-in user through the mailed code.
async fn verify_email(app: &App, session: &Value, email: &str) {
    let token = session["access_token"].as_str().expect("token");
    let (status, _) = app.send(app.client.post(app.url("/v1/auth/verify/request")).bearer_auth(token)).await;
    assert_eq!(status, 204);
    let code = mailed_code(app, email).await;
    let (status, user) =
        app.send(app.client.post(app.url("/v1/auth/verify/confirm")).json(&json!({"token": code}))).await;
    assert_eq!((status.as_u16(), user["email_verified"].clone()), (200, json!(true)), "{user}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_creates_finds_and_links_users() {
    let provider = start_provider().await;
    let app = spawn_with_provider(&provider).await;
    let client = browser();

    let answer = sign_in(&app, &client, "").await;
    assert_eq!(answer.status(), 200);
    let session: Value = answer.json().await.expect("session");
    assert_eq!(session["user"]["email"], "oidc@example.com");
    assert_eq!(session["user"]["email_verified"], true);
    assert_eq!(session["user"]["providers"], json!(["test"]));
    let first_id = session["user"]["id"].clone();
    let (status, me) = app
        .send(app.client.get(app.url("/v1/auth/user")).bearer_auth(session["access_token"].as_str().expect("token")))
        .await;
    assert_eq!((status.as_u16(), me["id"].clone()), (200, first_id.clone()));

    let again: Value = sign_in(&app, &client, "").await.json().await.expect("session");
    assert_eq!(again["user"]["id"], first_id, "the same identity signs in as the same user");

    // A password user with a verified address the provider also verifies is linked,
    // keeping its id.
    let password_user = password_signup(&app, "pw@example.com", "a long password").await;
    verify_email(&app, &password_user, "pw@example.com").await;
    *provider.next.lock().expect("lock") = Next {
        subject: "sub-2".into(),
        email: Some("PW@example.com".into()),
        email_verified: true,
        wrong_nonce: false,
    };
    let linked: Value = sign_in(&app, &client, "").await.json().await.expect("session");
    assert_eq!(linked["user"]["id"], password_user["user"]["id"]);
    assert_eq!(linked["user"]["providers"], json!(["password", "test"]));

    // An address the provider does not vouch for is never linked.
    *provider.next.lock().expect("lock") = Next {
        subject: "sub-3".into(),
        email: Some("pw@example.com".into()),
        email_verified: false,
        wrong_nonce: false,
    };
    let refused = sign_in(&app, &client, "").await;
    let status = refused.status();
    assert_error(status, &refused.json().await.expect("error"), 409, "already-exists");

    // A token whose nonce is not ours is refused.
    *provider.next.lock().expect("lock") =
        Next { subject: "sub-4".into(), email: None, email_verified: false, wrong_nonce: true };
    let refused = sign_in(&app, &client, "").await;
    let status = refused.status();
    assert_error(status, &refused.json().await.expect("error"), 401, "unauthenticated");

    // The app gets its tokens in the fragment of an allowed redirect, and only there.
    *provider.next.lock().expect("lock") = Next {
        subject: "sub-1".into(),
        email: Some("oidc@example.com".into()),
        email_verified: true,
        wrong_nonce: false,
    };
    let redirected = sign_in(&app, &client, "?redirect_to=myapp://signed-in").await;
    assert_eq!(redirected.status(), 302);
    let location = redirected.headers()[header::LOCATION].to_str().expect("ascii").to_owned();
    assert!(location.starts_with("myapp://signed-in#access_token="), "{location}");
    assert!(location.contains("refresh_token="));
    let (status, body) =
        app.send(app.client.get(app.url("/v1/auth/oauth/test?redirect_to=https://evil.example/"))).await;
    assert_error(status, &body, 400, "invalid-argument");

    // A forged or replayed state is refused, and so is an unknown provider.
    let (status, body) = app.send(client.get(app.url("/v1/auth/oauth/test/callback?code=x&state=forged"))).await;
    assert_error(status, &body, 400, "invalid-argument");
    let begun = begin(&app, &client, "").await;
    let callback = || client.get(&begun.callback).header(header::COOKIE, &begun.cookie).send();
    assert_eq!(callback().await.expect("first").status(), 200);
    let replay = callback().await.expect("replay");
    let status = replay.status();
    assert_error(status, &replay.json().await.expect("error"), 400, "invalid-argument");
    let (status, body) = app.send(app.client.get(app.url("/v1/auth/oauth/nope"))).await;
    assert_error(status, &body, 404, "not-found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_account_never_captures_a_provider_identity() {
    let provider = start_provider().await;
    let app = spawn_with_provider(&provider).await;
    let client = browser();

    // The attacker signs up with the victim's address and never verifies it; another
    // moves their own account's e-mail onto a second victim address.
    let squatter = password_signup(&app, "victim@example.com", "the attacker's password").await;
    let mover = password_signup(&app, "mover@example.com", "another attacker password").await;
    let (status, moved) = app
        .send(
            app.client
                .patch(app.url("/v1/auth/user"))
                .bearer_auth(mover["access_token"].as_str().expect("token"))
                .json(&json!({"email": "victim2@example.com"})),
        )
        .await;
    assert_eq!((status.as_u16(), moved["email_verified"].clone()), (200, json!(false)), "{moved}");

    for (subject, email) in [("victim-1", "victim@example.com"), ("victim-2", "victim2@example.com")] {
        *provider.next.lock().expect("lock") = next(subject, email, true);
        let refused = sign_in(&app, &client, "").await;
        let status = refused.status();
        let message = assert_error(status, &refused.json().await.expect("error"), 409, "already-exists");
        assert!(message.contains("verif"), "{message}");
    }
    // The attacker's accounts gained nothing: no provider, still unverified.
    for session in [&squatter, &mover] {
        let (_, me) = app
            .send(app.client.get(app.url("/v1/auth/user")).bearer_auth(session["access_token"].as_str().expect("t")))
            .await;
        assert_eq!((me["providers"].clone(), me["email_verified"].clone()), (json!(["password"]), json!(false)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_sign_in_asks_for_the_second_factor() {
    let provider = start_provider().await;
    let app = spawn_with_provider(&provider).await;
    let client = browser();
    let session = password_signup(&app, "two@example.com", "a long password").await;
    verify_email(&app, &session, "two@example.com").await;
    let token = session["access_token"].as_str().expect("token");
    let (_, enrolment) =
        app.send(app.client.post(app.url("/v1/auth/mfa/totp/enroll")).bearer_auth(token).json(&json!({}))).await;
    let secret = enrolment["secret"].as_str().expect("secret").to_owned();
    let (status, _) = app
        .send(
            app.client
                .post(app.url("/v1/auth/mfa/totp/confirm"))
                .bearer_auth(token)
                .json(&json!({"code": totp_code(&secret, 0)})),
        )
        .await;
    assert_eq!(status, 200);

    *provider.next.lock().expect("lock") = next("two-sub", "two@example.com", true);
    let challenge: Value = sign_in(&app, &client, "").await.json().await.expect("answer");
    assert_eq!(challenge["mfa_required"], true, "{challenge}");
    assert!(challenge.get("access_token").is_none() && challenge.get("refresh_token").is_none(), "{challenge}");
    let (status, signed_in) = app
        .send(
            app.client
                .post(app.url("/v1/auth/mfa/verify"))
                .json(&json!({"ticket": challenge["ticket"], "code": totp_code(&secret, 30)})),
        )
        .await;
    assert_eq!((status.as_u16(), signed_in["user"]["id"].clone()), (200, session["user"]["id"].clone()));

    // Through an app redirect, the fragment carries the ticket and no tokens.
    let redirected = sign_in(&app, &client, "?redirect_to=myapp://signed-in").await;
    assert_eq!(redirected.status(), 302);
    let location = redirected.headers()[header::LOCATION].to_str().expect("ascii").to_owned();
    assert!(location.starts_with("myapp://signed-in#mfa_required=true&ticket="), "{location}");
    assert!(!location.contains("access_token") && !location.contains("refresh_token"), "{location}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_only_finishes_in_the_browser_that_started_it() {
    let provider = start_provider().await;
    let app = spawn_with_provider(&provider).await;
    *provider.next.lock().expect("lock") = next("attacker-sub", "attacker@example.com", true);

    // The attacker starts a sign-in, stops at the callback and sends that link to the
    // victim, whose browser has no cookie, or the cookie of its own sign-in.
    let attacker = browser();
    let victim = browser();
    let planted = begin(&app, &attacker, "").await;
    let answer = victim.get(&planted.callback).send().await.expect("callback");
    let status = answer.status();
    let message = assert_error(status, &answer.json().await.expect("error"), 400, "invalid-argument");
    assert!(message.contains("browser"), "{message}");
    let planted = begin(&app, &attacker, "").await;
    let own = begin(&app, &victim, "").await;
    let answer = victim.get(&planted.callback).header(header::COOKIE, &own.cookie).send().await.expect("callback");
    let status = answer.status();
    assert_error(status, &answer.json().await.expect("error"), 400, "invalid-argument");
    // A refused callback spends its state: the planted link is dead for everyone.
    let answer = attacker.get(&planted.callback).header(header::COOKIE, &planted.cookie).send().await.expect("again");
    assert_eq!(answer.status(), 400);
    // The victim's own sign-in still works.
    let answer = victim.get(&own.callback).header(header::COOKIE, &own.cookie).send().await.expect("own");
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_match_the_allowed_origin_and_path_not_a_prefix() {
    let provider = start_provider().await;
    let app = spawn_with_provider(&provider).await;
    for refused in [
        "https://app.example.com.evil.tld/done",
        "https://app.example.com/donex",
        "https://evil@app.example.com/done",
        "https://app.example.com:8443/done",
        "http://app.example.com/done",
        "myapp://signed-in.evil",
    ] {
        let (status, body) = app.send(app.client.get(start_url(&app, refused))).await;
        assert_error(status, &body, 400, "invalid-argument");
    }
    let client = browser();
    for allowed in ["https://app.example.com/done", "https://app.example.com/done/step?x=1", "myapp://signed-in"] {
        let start = client.get(start_url(&app, allowed)).send().await.expect("start");
        assert_eq!(start.status(), 302, "{allowed}");
        // The callback URL the provider is told is under public_url.
        assert_eq!(told_redirect_uri(&start), app.url("/v1/auth/oauth/test/callback"));
    }
    let spoofed =
        client.get(app.url("/v1/auth/oauth/test")).header(header::HOST, "evil.example").send().await.expect("start");
    assert_eq!(told_redirect_uri(&spoofed), app.url("/v1/auth/oauth/test/callback"), "never from Host");
}

fn start_url(app: &App, redirect_to: &str) -> reqwest::Url {
    reqwest::Url::parse_with_params(&app.url("/v1/auth/oauth/test"), [("redirect_to", redirect_to)]).expect("url")
}

/// The `redirect_uri` a start response sends to the provider.
fn told_redirect_uri(start: &reqwest::Response) -> String {
    let location = reqwest::Url::parse(start.headers()[header::LOCATION].to_str().expect("ascii")).expect("url");
    location.query_pairs().find(|(name, _)| name == "redirect_uri").expect("redirect_uri").1.into_owned()
}

#[test]
fn a_provider_without_public_url_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let config =
        "[auth.oauth.providers.test]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"c\"\nclient_secret = \"s\"\n";
    std::fs::write(dir.path().join("hearth.toml"), config).expect("config");
    let stderr = crate::support::refused_start(dir.path());
    assert!(stderr.contains("public_url"), "{stderr}");
}
