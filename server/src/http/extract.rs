//! Extractors that answer in the contract's error shape: JSON bodies, query strings,
//! the caller's credentials and `If-Match` / `If-None-Match`.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use bytes::Bytes;
use hearth_types::ErrorCode;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;
use crate::auth::AuthUser;
use crate::rules::Principal;

/// A JSON body parsed with the contract's errors: malformed JSON and wrong shapes are
/// invalid-argument, a body over the route's limit is payload-too-large.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body is over the size limit")
            } else {
                ApiError::invalid(format!("cannot read the body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses JSON with the contract's error messages.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| {
        use serde_json::error::Category;
        let message = error.to_string();
        match error.classify() {
            Category::Syntax | Category::Eof if message.contains("recursion limit") => {
                ApiError::invalid("body nests deeper than 32 levels")
            }
            Category::Syntax | Category::Eof | Category::Io => ApiError::invalid(format!("malformed JSON: {message}")),
            Category::Data => ApiError::invalid(format!("invalid body: {message}")),
        }
    })
}

/// A query string parsed with the contract's errors.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(QueryParams)
            .map_err(|error| ApiError::invalid(format!("bad query string: {error}")))
    }
}

/// Who is calling, from the `Authorization` header. A header that is present but not a
/// valid credential is an error, never an anonymous caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// A valid service key: admin rights, bypasses rules.
    Service,
    /// No credentials.
    Anonymous,
    /// A valid access token.
    User(AuthUser),
}

impl Caller {
    /// Who the rules judge: `None` for the service key, which bypasses them.
    pub fn principal(&self) -> Option<Principal> {
        match self {
            Caller::Service => None,
            Caller::Anonymous => Some(Principal::anonymous()),
            Caller::User(user) => Some(Principal::user(user)),
        }
    }

    /// The caller as functions see it in `ctx.auth`: `None` without a user.
    pub fn function_auth(&self) -> crate::functions::Auth {
        match self {
            Caller::User(user) => Some(user.to_json()),
            Caller::Service | Caller::Anonymous => None,
        }
    }

    /// Admin routes take only the service key.
    pub fn require_service(&self) -> Result<(), ApiError> {
        match self {
            Caller::Service => Ok(()),
            Caller::Anonymous => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this route needs credentials: `Authorization: Bearer <service key>`",
            )),
            Caller::User(_) => Err(ApiError::new(ErrorCode::PermissionDenied, "this route needs the service key")),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        caller_from_headers(&parts.headers, state)
    }
}

/// A signed-in user: a valid access token is required.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedIn(pub AuthUser);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match caller_from_headers(&parts.headers, state)? {
            Caller::User(user) => Ok(SignedIn(user)),
            Caller::Anonymous | Caller::Service => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this route needs a signed-in user: `Authorization: Bearer <access token>`",
            )),
        }
    }
}

/// The client's address, as the rate limits see it: the peer's, or behind
/// `auth.rate_limit.trusted_proxies` proxies the `X-Forwarded-For` hop the outermost one
/// wrote.
pub struct ClientAddress(pub String);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(client_address(parts, state)))
    }
}

/// See [`ClientAddress`].
pub fn client_address(parts: &Parts, state: &AppState) -> String {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
    let forwarded: Vec<&str> =
        parts.headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok()).collect();
    state.auth().limits().client_address(peer, &forwarded)
}

/// A signed-in user if there is a token; `None` without one. A bad token is still 401.
#[derive(Debug, Clone, PartialEq)]
pub struct MaybeSignedIn(pub Option<AuthUser>);

impl FromRequestParts<AppState> for MaybeSignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match caller_from_headers(&parts.headers, state)? {
            Caller::User(user) => Ok(MaybeSignedIn(Some(user))),
            Caller::Anonymous | Caller::Service => Ok(MaybeSignedIn(None)),
        }
    }
}

/// Decides the caller from the headers.
pub fn caller_from_headers(headers: &HeaderMap, state: &AppState) -> Result<Caller, ApiError> {
    match bearer_token(headers)? {
        None => Ok(Caller::Anonymous),
        Some(token) => caller_from_token(token, state),
    }
}

/// The bearer token of the `Authorization` header, if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let unauthenticated = |message: &str| ApiError::new(ErrorCode::Unauthenticated, message);
    let value = value.to_str().map_err(|_| unauthenticated("malformed Authorization header"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .map(Some)
        .ok_or_else(|| unauthenticated("Authorization must be `Bearer <token>`"))
}

/// The caller a service key or an access token names.
pub fn caller_from_token(token: &str, state: &AppState) -> Result<Caller, ApiError> {
    let unauthenticated = |message: &str| ApiError::new(ErrorCode::Unauthenticated, message);
    if token.starts_with("hk_") {
        return if state.service_keys().verify(token) {
            Ok(Caller::Service)
        } else {
            Err(unauthenticated("invalid service key"))
        };
    }
    state.auth().verify(token).map(Caller::User).map_err(ApiError::from)
}

/// The accepted service keys, as SHA-256 hashes (keys are 256-bit random, so a fast
/// hash is enough); checked in constant time. Those stored in the database are read again
/// when other nodes may change them ([`ServiceKeys::replace_stored`]).
#[derive(Debug, Clone, Default)]
pub struct ServiceKeys {
    stored: std::sync::Arc<std::sync::RwLock<Vec<[u8; 32]>>>,
    /// `HEARTH_SERVICE_KEY`'s, if set.
    configured: Option<[u8; 32]>,
}

impl ServiceKeys {
    pub fn new(stored: Vec<[u8; 32]>, configured: Option<[u8; 32]>) -> ServiceKeys {
        ServiceKeys { stored: std::sync::Arc::new(std::sync::RwLock::new(stored)), configured }
    }

    pub fn replace_stored(&self, stored: Vec<[u8; 32]>) {
        *self.stored.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = stored;
    }

    pub fn hash(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    pub fn verify(&self, key: &str) -> bool {
        let hash = ServiceKeys::hash(key);
        // Every hash is compared, so timing does not tell which one matched.
        let stored = self.stored.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        stored
            .iter()
            .chain(&self.configured)
            .fold(subtle::Choice::from(0), |found, key| found | key.ct_eq(&hash))
            .into()
    }
}

/// A fresh service key: `hk_` and 43 characters of base64url (256 random bits).
pub fn new_service_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!("hk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// `If-Match` / `If-None-Match` of a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub if_match: Option<i64>,
    pub if_none_match_any: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Preconditions {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let if_match = match parts.headers.get(axum::http::header::IF_MATCH) {
            None => None,
            Some(value) => Some(
                parse_version(value.to_str().unwrap_or_default())
                    .ok_or_else(|| ApiError::invalid("If-Match takes a document version: `3`, `\"3\"` or `W/\"3\"`"))?,
            ),
        };
        let if_none_match_any = match parts.headers.get(axum::http::header::IF_NONE_MATCH) {
            None => false,
            Some(value) if value.as_bytes() == b"*" => true,
            Some(_) => return Err(ApiError::invalid("If-None-Match on a write takes only `*`")),
        };
        Ok(Preconditions { if_match, if_none_match_any })
    }
}

/// A version from an ETag-ish header value: `3`, `"3"` or `W/"3"`.
pub fn parse_version(value: &str) -> Option<i64> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    value.parse().ok().filter(|version: &i64| *version >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_in_the_three_spellings() {
        assert_eq!(parse_version("3"), Some(3));
        assert_eq!(parse_version("\"3\""), Some(3));
        assert_eq!(parse_version("W/\"3\""), Some(3));
        assert_eq!(parse_version("abc"), None);
        assert_eq!(parse_version("0"), None);
    }

    #[test]
    fn service_keys_verify_only_themselves() {
        let key = new_service_key();
        let keys = ServiceKeys::new(vec![ServiceKeys::hash("hk_other")], Some(ServiceKeys::hash(&key)));
        assert!(keys.verify(&key));
        assert!(!keys.verify("hk_wrong"));
        assert!(key.starts_with("hk_") && key.len() == 46);
    }
}
