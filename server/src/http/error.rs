//! The contract's error shape: every non-2xx answer is `{"error": {code, message, details}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hearth_types::{ErrorBody, ErrorCode, ErrorDetail, Object};
use serde_json::Value;

use crate::store;

/// An error answer. Internal causes travel in a response extension to the logging
/// middleware and never into the body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Object,
    /// What the log gets for `internal` errors.
    pub cause: Option<String>,
}

/// Marks a response whose body is already in the contract's shape.
#[derive(Debug, Clone)]
pub struct Shaped;

/// The cause of an internal error, for the log.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), details: Object::new(), cause: None }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// A bug: the client sees only "internal error"; the cause goes to the log.
    pub fn internal(cause: impl Into<String>) -> ApiError {
        ApiError { cause: Some(cause.into()), ..ApiError::new(ErrorCode::Internal, "internal error") }
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

impl From<store::Error> for ApiError {
    fn from(error: store::Error) -> ApiError {
        match error {
            store::Error::Internal(cause) => ApiError::internal(cause),
            store::Error::InBatch { index, error } => {
                let inner = ApiError::from(*error);
                ApiError { message: format!("write {index}: {}", inner.message), ..inner }.with_detail("index", index)
            }
            other => ApiError::new(other.code(), other.to_string()),
        }
    }
}

impl From<crate::auth::Error> for ApiError {
    fn from(error: crate::auth::Error) -> ApiError {
        use crate::auth::Error as E;
        match error {
            E::InvalidArgument(message) => ApiError::new(ErrorCode::InvalidArgument, message),
            E::Unauthenticated(message) => ApiError::new(ErrorCode::Unauthenticated, message),
            E::PermissionDenied(message) => ApiError::new(ErrorCode::PermissionDenied, message),
            E::ReauthenticationRequired(message) => {
                ApiError::new(ErrorCode::PermissionDenied, message).with_detail("reason", "reauthentication-required")
            }
            E::NotFound(message) => ApiError::new(ErrorCode::NotFound, message),
            E::AlreadyExists(message) => ApiError::new(ErrorCode::AlreadyExists, message),
            E::Store(error) => ApiError::from(error),
            E::RateLimited { message, retry_after_seconds } => ApiError::new(ErrorCode::ResourceExhausted, message)
                .with_detail("retry_after_seconds", retry_after_seconds),
            E::Internal(cause) => ApiError::internal(cause),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.details.get("retry_after_seconds").and_then(Value::as_u64).unwrap_or(1);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: hearth_types::bounded_error_message(self.message),
                details: self.details,
            },
        };
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(Shaped);
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(InternalCause(cause));
        }
        if self.code == ErrorCode::ResourceExhausted {
            response.headers_mut().insert("retry-after", HeaderValue::from(retry_after));
        }
        response
    }
}
