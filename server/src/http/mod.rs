//! HTTP: the router, the middleware stack and the mapping of every failure to the
//! contract's error shape. The only module that knows axum and tower.

pub mod auth;
pub mod backups;
pub mod docs;
pub mod error;
pub mod extract;
pub mod functions;
pub mod observe;
pub mod public;
pub mod realtime;
pub mod rules;
pub mod state;
pub mod system;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowMethods, AllowOrigin, CorsLayer};
use utoipa::OpenApi;

pub use state::{AppState, Services};

/// The OpenAPI 3 document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "Hearth", description = "A self-hosted Firebase-style backend: auth, documents, realtime, rules, functions."),
    paths(
        docs::get_path, docs::create, docs::put, docs::patch, docs::delete,
        docs::query, docs::aggregate, docs::batch,
        system::healthz, system::readyz, system::metrics, system::openapi,
        auth::signup, auth::login, auth::anonymous, auth::refresh, auth::logout,
        auth::get_user, auth::update_user, auth::delete_user, auth::link, auth::jwks,
        auth::admin_list, auth::admin_create, auth::admin_get, auth::admin_update, auth::admin_delete,
        auth::admin_revoke, auth::verify_request, auth::verify_confirm, auth::recover, auth::reset, auth::outbox,
        auth::totp_enroll, auth::totp_confirm, auth::totp_disable, auth::mfa_verify,
        auth::oauth_start, auth::oauth_callback,
        rules::get_rules, rules::put_rules, realtime::realtime,
        functions::call, functions::list, functions::deploy, functions::dead,
        backups::create, backups::list, backups::download, backups::delete,
    ),
    components(schemas(
        hearth_types::Document, hearth_types::Query, hearth_types::Filter, hearth_types::Op,
        hearth_types::OrderBy, hearth_types::Direction, hearth_types::QueryPage,
        hearth_types::AggregateRequest, hearth_types::AggregateResult,
        hearth_types::BatchRequest, hearth_types::BatchWrite, hearth_types::BatchOp,
        hearth_types::BatchResponse, hearth_types::BatchResult,
        hearth_types::ErrorBody, hearth_types::ErrorDetail, hearth_types::ErrorCode,
        hearth_types::User, hearth_types::Session, hearth_types::Credentials, hearth_types::RefreshRequest,
        hearth_types::LogoutRequest, hearth_types::UserUpdate, hearth_types::AdminUserCreate,
        hearth_types::AdminUserUpdate, hearth_types::UserPage, hearth_types::Reauth,
        auth::TokenRequest, auth::RecoverRequest, auth::ResetRequest,
        hearth_types::LoginAnswer, hearth_types::MfaChallenge, hearth_types::TotpEnrollment,
        hearth_types::RecoveryCodes, hearth_types::CodeRequest, hearth_types::MfaVerifyRequest,
        functions::CallRequest, functions::CallResponse, functions::FunctionList, functions::FunctionStatusList, functions::DeadLetters,
        crate::backup::BackupInfo, backups::BackupList,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("service_key", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Auth bodies are small; a profile is at most 64 KiB.
const AUTH_BODY_LIMIT: usize = 128 * 1024;

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let limits = &state.config().limits;
    let documents = Router::new()
        .route(
            "/v1/docs/{*path}",
            get(docs::get_path).post(docs::create).put(docs::put).patch(docs::patch).delete(docs::delete),
        )
        .route("/v1/docs", axum::routing::any(docs::empty_path))
        .route("/v1/docs/", axum::routing::any(docs::empty_path))
        .route("/v1/query", post(docs::query))
        .route("/v1/aggregate", post(docs::aggregate))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes));
    let batch =
        Router::new().route("/v1/batch", post(docs::batch)).layer(DefaultBodyLimit::max(limits.max_batch_body_bytes));
    // The routes that sign someone in share one per-IP budget.
    let sign_in = Router::new()
        .route("/v1/auth/signup", post(auth::signup))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/anonymous", post(auth::anonymous))
        .route("/v1/auth/refresh", post(auth::refresh))
        .route("/v1/auth/recover", post(auth::recover))
        .route("/v1/auth/reset", post(auth::reset))
        .route("/v1/auth/mfa/verify", post(auth::mfa_verify))
        .route("/v1/auth/oauth/{provider}", get(auth::oauth_start))
        .route("/v1/auth/oauth/{provider}/callback", get(auth::oauth_callback))
        .route("/v1/auth/mfa/totp/enroll", post(auth::totp_enroll))
        .route("/v1/auth/mfa/totp/confirm", post(auth::totp_confirm))
        .route("/v1/auth/mfa/totp", axum::routing::delete(auth::totp_disable))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::limit_by_ip));
    let accounts = Router::new()
        .merge(sign_in)
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/auth/verify/request", post(auth::verify_request))
        .route("/v1/auth/verify/confirm", post(auth::verify_confirm))
        .route("/v1/admin/outbox", get(auth::outbox))
        .route("/v1/auth/user", get(auth::get_user).patch(auth::update_user).delete(auth::delete_user))
        .route("/v1/auth/link", post(auth::link))
        .route("/v1/admin/users", get(auth::admin_list).post(auth::admin_create))
        .route("/v1/admin/users/{id}", get(auth::admin_get).patch(auth::admin_update).delete(auth::admin_delete))
        .route("/v1/admin/users/{id}/revoke", post(auth::admin_revoke))
        .route("/.well-known/jwks.json", get(auth::jwks))
        .layer(DefaultBodyLimit::max(AUTH_BODY_LIMIT));
    let rules = Router::new()
        .route("/v1/admin/rules", get(rules::get_rules).put(rules::put_rules))
        .layer(DefaultBodyLimit::max(rules::MAX_RULES_BYTES));
    let functions = Router::new()
        .route("/v1/functions/{name}", post(functions::call))
        .route("/v1/admin/functions", get(functions::list))
        .route("/v1/admin/functions/dead", get(functions::dead))
        .route("/v1/admin/functions/{file}", axum::routing::put(functions::deploy))
        .layer(DefaultBodyLimit::max(functions::MAX_CALL_BYTES.max(crate::functions::MAX_FILE_BYTES)));
    let backups = Router::new()
        .route("/v1/admin/backups", get(backups::list).post(backups::create))
        .route("/v1/admin/backups/{name}", get(backups::download).delete(backups::delete));
    Router::new()
        .route("/v1/realtime", get(realtime::realtime))
        .merge(backups)
        .merge(functions)
        .merge(documents)
        .merge(rules)
        .merge(batch)
        .merge(accounts)
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route("/v1/openapi.json", get(system::openapi))
        .fallback(public::serve)
        .layer(CatchPanicLayer::custom(system::panic_response))
        .layer(cors())
        .layer(middleware::from_fn(security_headers))
        .layer(observe::ObserveLayer)
        .with_state(state)
}

/// Headers every answer carries unless its handler set its own: no MIME sniffing of a
/// stored document into HTML, no framing (clickjacking), no URLs (which may hold codes
/// or tickets) in `Referer`, and nothing kept in shared or browser caches.
const SECURITY_HEADERS: [(axum::http::HeaderName, &str); 4] = [
    (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (axum::http::header::X_FRAME_OPTIONS, "DENY"),
    (axum::http::header::REFERRER_POLICY, "no-referrer"),
    (axum::http::header::CACHE_CONTROL, "no-store"),
];

async fn security_headers(request: axum::extract::Request, next: middleware::Next) -> axum::response::Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.entry(name).or_insert(axum::http::HeaderValue::from_static(value));
    }
    response
}

/// Browsers may call Hearth from any origin: credentials travel in the `Authorization`
/// header and CORS never allows credentials, so there is nothing for another origin to
/// ride on (the one cookie, of an OAuth sign-in in progress, is SameSite=Lax and
/// scoped to `/v1/auth/oauth`).
fn cors() -> CorsLayer {
    use axum::http::header;
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods(AllowMethods::any())
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::IF_MATCH, header::IF_NONE_MATCH])
        .expose_headers([header::ETAG, header::LOCATION, observe::REQUEST_ID, header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(3600))
}
