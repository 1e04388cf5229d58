//! `/v1/admin/rules`: read and replace the access rules while the server runs.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hearth_types::ErrorBody;

use super::error::ApiError;
use super::extract::Caller;
use super::state::AppState;
use crate::rules::RulesError;

/// Largest rules file accepted.
pub const MAX_RULES_BYTES: usize = 256 * 1024;

/// The rules in force, as TOML text.
#[utoipa::path(get, path = "/v1/admin/rules", tag = "rules",
    responses((status = 200, description = "the rules file", content_type = "application/toml")),
    security(("service_key" = [])))]
pub async fn get_rules(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require_service()?;
    let source = state.rules().current().source.clone();
    Ok(([(header::CONTENT_TYPE, "application/toml")], source).into_response())
}

/// Replace the rules: compiled first, then written to `rules.toml` and put in force at
/// once; a file that does not compile changes nothing.
#[utoipa::path(put, path = "/v1/admin/rules", tag = "rules",
    request_body(content = String, content_type = "application/toml", description = "the new rules file"),
    responses((status = 204, description = "in force"),
              (status = 400, description = "does not compile; `details` has `line`, `pattern`, `key`", body = ErrorBody)),
    security(("service_key" = [])))]
pub async fn put_rules(State(state): State<AppState>, caller: Caller, body: Bytes) -> Result<StatusCode, ApiError> {
    caller.require_service()?;
    let source = std::str::from_utf8(&body).map_err(|_| ApiError::invalid("the rules file must be UTF-8"))?;
    state.rules().replace(source).await.map_err(refused)?;
    Ok(StatusCode::NO_CONTENT)
}

fn refused(error: RulesError) -> ApiError {
    let mut answer = ApiError::invalid(format!("rules refused: {error}"));
    if let Some(line) = error.line {
        answer = answer.with_detail("line", line);
    }
    if let Some(pattern) = &error.pattern {
        answer = answer.with_detail("pattern", pattern.as_str());
    }
    if let Some(key) = &error.key {
        answer = answer.with_detail("key", key.as_str());
    }
    answer.with_detail("reason", error.reason)
}
