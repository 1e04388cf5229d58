//! Health, readiness, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_types::ErrorCode;
use serde_json::json;
use utoipa::OpenApi;

use super::error::ApiError;
use super::extract::Caller;
use super::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, description = "up")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The database answers and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, description = "ready"), (status = 503, description = "not ready", body = hearth_types::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.is_stopping() {
        return Err(ApiError::new(ErrorCode::Unavailable, "shutting down"));
    }
    state
        .store()
        .ping()
        .await
        .map_err(|error| ApiError::new(ErrorCode::Unavailable, format!("database unreachable: {error}")))?;
    Ok(Json(json!({"status": "ready"})))
}

/// Prometheus metrics; needs the service key unless `metrics.public`.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")),
    security(("service_key" = [])))]
pub async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    if !state.config().metrics.public {
        caller.require_service()?;
    }
    let body = state.metrics().render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system", responses((status = 200, description = "OpenAPI 3")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::ApiDoc::openapi())
}

/// Answers routes that do not exist.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route `{}`", uri.path()))
}

/// The answer for a panic caught in a handler.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let mut response = ApiError::internal("a handler panicked").into_response();
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}
