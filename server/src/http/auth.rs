//! Auth routes: sign-up and sign-in, sessions, the caller's own profile, admin user
//! management and the JWKS.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hearth_types::{
    AdminUserCreate, AdminUserUpdate, CodeRequest, Credentials, ErrorBody, LoginAnswer, LogoutRequest,
    MfaVerifyRequest, Reauth, RecoveryCodes, RefreshRequest, Session, TotpEnrollment, User, UserPage, UserUpdate,
};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{Caller, ClientAddress, JsonBody, QueryParams, SignedIn, parse_json};
use super::state::AppState;

/// Create a password user and sign them in.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = Credentials,
    responses((status = 200, body = Session), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn signup(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(state.auth().signup(&body.email, &body.password, &address).await?))
}

/// Sign in with e-mail and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, description = "a session, or `mfa_required` with a ticket", body = LoginAnswer),
              (status = 401, description = "wrong e-mail or password", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Json<LoginAnswer>, ApiError> {
    Ok(Json(state.auth().login(&body.email, &body.password, &address).await?))
}

/// Sign in as a new anonymous user.
#[utoipa::path(post, path = "/v1/auth/anonymous", tag = "auth", responses((status = 200, body = Session)))]
pub async fn anonymous(State(state): State<AppState>) -> Result<Json<Session>, ApiError> {
    Ok(Json(state.auth().anonymous().await?))
}

/// Trade a refresh token for a new session answer; the old token dies.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = Session), (status = 401, body = ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(state.auth().refresh(&body.refresh_token).await?))
}

/// End this session, or with `{"all": true}` every session of the caller.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body(content = LogoutRequest, description = "optional"),
    responses((status = 204, description = "signed out"), (status = 401, body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let request: LogoutRequest = if body.is_empty() { LogoutRequest::default() } else { parse_json(&body)? };
    state.auth().logout(&user, request.all).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller.
#[utoipa::path(get, path = "/v1/auth/user", tag = "auth", responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
pub async fn get_user(State(state): State<AppState>, SignedIn(user): SignedIn) -> Result<Json<User>, ApiError> {
    Ok(Json(state.auth().user(&user.uid).await?))
}

/// Change the caller's e-mail, password or profile. A new e-mail or password needs
/// `current_password` (and `code` with TOTP on) unless the caller signed in within
/// `auth.reauth_seconds`; without it, 403 with `details.reason = "reauthentication-required"`.
#[utoipa::path(patch, path = "/v1/auth/user", tag = "auth", request_body = UserUpdate,
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    JsonBody(update): JsonBody<UserUpdate>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(state.auth().update_self(&user, update).await?))
}

/// Delete the caller's account. Needs `{current_password, code}` as for an e-mail change
/// unless the caller signed in within `auth.reauth_seconds`.
#[utoipa::path(delete, path = "/v1/auth/user", tag = "auth", request_body(content = Reauth, description = "optional"),
    responses((status = 204, description = "deleted"), (status = 403, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let proof: Reauth = if body.is_empty() { Reauth::default() } else { parse_json(&body)? };
    state.auth().delete_self(&user, &proof).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Turn the anonymous caller into a password user with the same id.
#[utoipa::path(post, path = "/v1/auth/link", tag = "auth", request_body = Credentials,
    responses((status = 200, body = Session), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn link(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(state.auth().link(&user, &body.email, &body.password).await?))
}

/// The public keys that verify access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses((status = 200, description = "JWKS (RFC 7517)")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "public, max-age=60")], state.auth().jwks())
        .into_response()
}

/// `?limit=&cursor=` of the user list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserListParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// List users in id order (admin).
#[utoipa::path(get, path = "/v1/admin/users", tag = "admin",
    params(("limit" = Option<usize>, Query, description = "page size, default 100, max 1000"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = UserPage), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("service_key" = [])))]
pub async fn admin_list(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<UserListParams>,
) -> Result<Json<UserPage>, ApiError> {
    caller.require_service()?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid("`limit` is 1 to 1000"));
    }
    Ok(Json(state.auth().list(params.cursor, limit).await?))
}

/// Create a password user (admin).
#[utoipa::path(post, path = "/v1/admin/users", tag = "admin", request_body = AdminUserCreate,
    responses((status = 201, body = User), (status = 409, body = ErrorBody)), security(("service_key" = [])))]
pub async fn admin_create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<AdminUserCreate>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    caller.require_service()?;
    Ok((StatusCode::CREATED, Json(state.auth().admin_create(request).await?)))
}

/// Read a user (admin).
#[utoipa::path(get, path = "/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)), security(("service_key" = [])))]
pub async fn admin_get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    caller.require_service()?;
    Ok(Json(state.auth().user(&id).await?))
}

/// Set custom claims, disable or enable, mark the e-mail verified (admin).
#[utoipa::path(patch, path = "/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)), request_body = AdminUserUpdate,
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("service_key" = [])))]
pub async fn admin_update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(update): JsonBody<AdminUserUpdate>,
) -> Result<Json<User>, ApiError> {
    caller.require_service()?;
    Ok(Json(state.auth().admin_update(&id, update).await?))
}

/// Delete a user and their sessions (admin).
#[utoipa::path(delete, path = "/v1/admin/users/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody)), security(("service_key" = [])))]
pub async fn admin_delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_service()?;
    state.auth().delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke every session of a user (admin).
#[utoipa::path(post, path = "/v1/admin/users/{id}/revoke", tag = "admin", params(("id" = String, Path)),
    responses((status = 204, description = "revoked"), (status = 404, body = ErrorBody)), security(("service_key" = [])))]
pub async fn admin_revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_service()?;
    state.auth().revoke_all(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{token}` of a mailed link.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    token: String,
}

/// `{email}` of a password recovery.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    email: String,
}

/// `{token, password}` of a password reset.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    token: String,
    password: String,
}

/// Mail the caller a code that confirms their e-mail.
#[utoipa::path(post, path = "/v1/auth/verify/request", tag = "auth",
    responses((status = 204, description = "mailed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn verify_request(State(state): State<AppState>, SignedIn(user): SignedIn) -> Result<StatusCode, ApiError> {
    state.auth().request_verification(&user.uid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Confirm an e-mail with the mailed code.
#[utoipa::path(post, path = "/v1/auth/verify/confirm", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = User), (status = 400, description = "unknown, used or expired", body = ErrorBody)))]
pub async fn verify_confirm(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(state.auth().confirm_verification(&body.token).await?))
}

/// Mail a password reset code, if the e-mail belongs to a password user. Always 204.
#[utoipa::path(post, path = "/v1/auth/recover", tag = "auth", request_body = RecoverRequest,
    responses((status = 204, description = "mailed if the account exists")))]
pub async fn recover(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RecoverRequest>,
) -> Result<StatusCode, ApiError> {
    // The answer is the same, and as quick, for every address: whether an account exists
    // and how the mail fared never reach the caller (the log has failures).
    let auth = state.auth().clone();
    tokio::spawn(async move {
        if let Err(error) = auth.recover(&body.email).await {
            tracing::warn!(%error, "a password-reset mail could not be sent");
        }
    });
    Ok(StatusCode::NO_CONTENT)
}

/// Set a new password with the mailed code; every session of the user ends.
#[utoipa::path(post, path = "/v1/auth/reset", tag = "auth", request_body = ResetRequest,
    responses((status = 204, description = "password changed"), (status = 400, body = ErrorBody)))]
pub async fn reset(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<ResetRequest>,
) -> Result<StatusCode, ApiError> {
    state.auth().reset(&body.token, &body.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mail that went to the outbox (no SMTP configured), newest first (admin).
#[utoipa::path(get, path = "/v1/admin/outbox", tag = "admin",
    responses((status = 200, description = "`[{to, subject, body, sent_at}]`")), security(("service_key" = [])))]
pub async fn outbox(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require_service()?;
    Ok(Json(state.auth().outbox(1000).await?).into_response())
}

/// Applies the per-IP limit of the sign-in routes.
pub async fn limit_by_ip(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let address = super::extract::client_address(&parts, &state);
    match state.auth().limits().check_ip(&address).await {
        Ok(()) => next.run(axum::extract::Request::from_parts(parts, body)).await,
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// Start TOTP enrolment: a secret and an `otpauth://` URI for an authenticator app.
#[utoipa::path(post, path = "/v1/auth/mfa/totp/enroll", tag = "auth",
    responses((status = 200, body = TotpEnrollment), (status = 409, description = "TOTP is already on", body = ErrorBody)))]
pub async fn totp_enroll(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
) -> Result<Json<TotpEnrollment>, ApiError> {
    Ok(Json(state.auth().enroll_totp(&user.uid).await?))
}

/// Confirm enrolment with a first code; answers single-use recovery codes, shown once.
#[utoipa::path(post, path = "/v1/auth/mfa/totp/confirm", tag = "auth", request_body = CodeRequest,
    responses((status = 200, body = RecoveryCodes), (status = 400, body = ErrorBody)))]
pub async fn totp_confirm(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    JsonBody(body): JsonBody<CodeRequest>,
) -> Result<Json<RecoveryCodes>, ApiError> {
    Ok(Json(state.auth().confirm_totp(&user, &body.code, body.current_password.as_deref()).await?))
}

/// Turn TOTP off with a current code or a recovery code.
#[utoipa::path(delete, path = "/v1/auth/mfa/totp", tag = "auth", request_body = CodeRequest,
    responses((status = 204, description = "off"), (status = 400, body = ErrorBody)))]
pub async fn totp_disable(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    JsonBody(body): JsonBody<CodeRequest>,
) -> Result<StatusCode, ApiError> {
    state.auth().disable_totp(&user, &body.code, body.current_password.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Second step of a login: the ticket and a TOTP code or an unused recovery code.
#[utoipa::path(post, path = "/v1/auth/mfa/verify", tag = "auth", request_body = MfaVerifyRequest,
    responses((status = 200, body = Session), (status = 401, body = ErrorBody)))]
pub async fn mfa_verify(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    JsonBody(body): JsonBody<MfaVerifyRequest>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(state.auth().verify_mfa(&body.ticket, &body.code, &address).await?))
}

/// `?redirect_to=` of an OAuth sign-in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthStartParams {
    redirect_to: Option<String>,
}

/// `?code=&state=` (or `?error=`) of an OAuth callback.
#[derive(Debug, Deserialize)]
pub struct OAuthCallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// Start an OAuth/OIDC sign-in: redirects to the provider, with a cookie that binds the
/// sign-in to this browser (the callback is refused without it).
#[utoipa::path(get, path = "/v1/auth/oauth/{provider}", tag = "auth",
    params(("provider" = String, Path), ("redirect_to" = Option<String>, Query, description = "where to send the tokens in the end (must be allowed in config)")),
    responses((status = 302, description = "to the provider; sets the `hearth_oauth` cookie"), (status = 404, body = ErrorBody)))]
pub async fn oauth_start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: axum::http::HeaderMap,
    QueryParams(params): QueryParams<OAuthStartParams>,
) -> Result<Response, ApiError> {
    let auth = state.auth();
    // Two sign-ins started in one browser share its binding, so neither breaks the other.
    let binding = oauth_cookie(&headers).filter(|value| value.len() == 43).unwrap_or_else(crate::auth::random_token);
    let url = auth.oauth_start(&provider, params.redirect_to, &binding).await?;
    let secure = if auth.oauth_cookie_secure() { "; Secure" } else { "" };
    let cookie = format!(
        "{}={binding}; Path=/v1/auth/oauth; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        crate::auth::OAUTH_COOKIE,
        crate::auth::OAUTH_STATE_SECONDS
    );
    let mut response = redirect(&url);
    if let Ok(cookie) = axum::http::HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// The value of the OAuth binding cookie the browser sent, if any.
fn oauth_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == crate::auth::OAUTH_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// The provider sends the browser back here: answers the session (or, for a user with
/// TOTP on, `mfa_required` with a ticket), or redirects to the app's `redirect_to` with
/// the same in the fragment. Refused unless the browser carries the cookie set at the
/// start of this sign-in.
#[utoipa::path(get, path = "/v1/auth/oauth/{provider}/callback", tag = "auth",
    params(("provider" = String, Path), ("code" = String, Query), ("state" = String, Query)),
    responses((status = 200, body = LoginAnswer), (status = 302, description = "to `redirect_to`, tokens (or the MFA ticket) in the fragment"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn oauth_callback(
    State(state): State<AppState>,
    Path(_provider): Path<String>,
    headers: axum::http::HeaderMap,
    QueryParams(params): QueryParams<OAuthCallbackParams>,
) -> Result<Response, ApiError> {
    if let Some(error) = params.error {
        return Err(ApiError::new(hearth_types::ErrorCode::Unauthenticated, format!("the provider said: {error}")));
    }
    let (Some(code), Some(oauth_state)) = (params.code, params.state) else {
        return Err(ApiError::invalid("the callback needs `code` and `state`"));
    };
    let binding = oauth_cookie(&headers);
    let (answer, redirect_to) = state.auth().oauth_finish(&oauth_state, &code, binding.as_deref()).await?;
    match redirect_to {
        None => Ok(Json(answer).into_response()),
        Some(target) => {
            let fragment = match &answer {
                LoginAnswer::Session(session) => serde_urlencoded::to_string([
                    ("access_token", session.access_token.as_str()),
                    ("refresh_token", session.refresh_token.as_str()),
                    ("token_type", "Bearer"),
                    ("expires_in", &session.expires_in.to_string()),
                ]),
                LoginAnswer::MfaRequired(challenge) => serde_urlencoded::to_string([
                    ("mfa_required", "true"),
                    ("ticket", challenge.ticket.as_str()),
                    ("expires_in", &challenge.expires_in.to_string()),
                ]),
            }
            .unwrap_or_default();
            Ok(redirect(&format!("{target}#{fragment}")))
        }
    }
}

fn redirect(url: &str) -> Response {
    match axum::http::HeaderValue::from_str(url) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => ApiError::internal("a redirect URL that is not a header value").into_response(),
    }
}
