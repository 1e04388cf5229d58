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

use crate::support::{App, Options, assert_error};

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

/// Follows the dance by hand: Hearth → provider → Hearth's callback. Answers the last
/// response.
async fn sign_in(app: &App, client: &reqwest::Client, query: &str) -> reqwest::Response {
    let start = client.get(app.url(&format!("/v1/auth/oauth/test{query}"))).send().await.expect("start");
    assert_eq!(start.status(), 302, "{:?}", start.text().await);
    let to_provider = start.headers()[header::LOCATION].to_str().expect("ascii").to_owned();
    let consent = client.get(&to_provider).send().await.expect("authorize");
    assert_eq!(consent.status(), 302);
    let callback = consent.headers()[header::LOCATION].to_str().expect("ascii").to_owned();
    client.get(&callback).send().await.expect("callback")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sign_in_creates_finds_and_links_users() {
    let provider = start_provider().await;
    let config = format!(
        "[auth.oauth]\nallowed_redirects = [\"myapp://signed-in\"]\n\n[auth.oauth.providers.test]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n",
        provider.issuer
    );
    let app = App::spawn_with(Options { config: Some(config), ..Options::default() }).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");

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

    // A password user whose address the provider verifies is linked, keeping its id.
    let (_, password_user) = app
        .send(
            app.client
                .post(app.url("/v1/auth/signup"))
                .json(&json!({"email": "pw@example.com", "password": "a long password"})),
        )
        .await;
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
    let start = client.get(app.url("/v1/auth/oauth/test")).send().await.expect("start");
    let consent = client.get(start.headers()[header::LOCATION].to_str().expect("ascii")).send().await.expect("consent");
    let callback = consent.headers()[header::LOCATION].to_str().expect("ascii").to_owned();
    assert_eq!(client.get(&callback).send().await.expect("first").status(), 200);
    let replay = client.get(&callback).send().await.expect("replay");
    let status = replay.status();
    assert_error(status, &replay.json().await.expect("error"), 400, "invalid-argument");
    let (status, body) = app.send(app.client.get(app.url("/v1/auth/oauth/nope"))).await;
    assert_error(status, &body, 404, "not-found");
}
