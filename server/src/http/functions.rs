//! `/v1/functions/{name}` (callables) and `/v1/admin/functions` (list and deploy).

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use hearth_types::ErrorBody;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::extract::{Caller, JsonBody};
use super::state::AppState;
use crate::functions::{FunctionError, FunctionInfo, FunctionStatus, LoadError};

/// Largest body of a call (the data of a callable is at most 1 MiB).
pub const MAX_CALL_BYTES: usize = 1024 * 1024;

/// The body of a call.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    /// Passed to the function as its first argument.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: Value,
}

/// What a callable returned.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallResponse {
    #[schema(value_type = Object)]
    pub result: Value,
}

/// The functions in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FunctionList {
    #[schema(value_type = Vec<Object>)]
    pub functions: Vec<FunctionInfo>,
}

/// The functions in force with what they have done since the server started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FunctionStatusList {
    /// `name`, `kind`, `file`, `pattern`/`cron`, `invocations`, `errors`, `p50_ms`, `p99_ms`.
    #[schema(value_type = Vec<Object>)]
    pub functions: Vec<FunctionStatus>,
}

/// Call a callable function (`onCall`). A `HearthError` it throws is the error answer
/// with its code; any other failure is `internal`.
#[utoipa::path(post, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "the export name")),
    request_body = CallRequest,
    responses((status = 200, body = CallResponse),
              (status = 404, description = "no such callable", body = ErrorBody),
              (status = 504, description = "over the time limit", body = ErrorBody)))]
pub async fn call(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<CallRequest>,
) -> Result<Json<CallResponse>, ApiError> {
    let result = state.functions().call(&name, request.data, caller.function_auth()).await.map_err(failed)?;
    Ok(Json(CallResponse { result }))
}

fn failed(error: FunctionError) -> ApiError {
    ApiError::new(error.code, error.message)
}

/// The functions in force: name, kind, file, and invocations, errors and p50/p99
/// duration since the server started (within 25 %; Prometheus has the same).
#[utoipa::path(get, path = "/v1/admin/functions", tag = "functions",
    responses((status = 200, body = FunctionStatusList)),
    security(("service_key" = [])))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<FunctionStatusList>, ApiError> {
    caller.require_service()?;
    Ok(Json(FunctionStatusList { functions: state.functions().status() }))
}

/// Deploy one module (the JavaScript source as the body): checked with the others
/// first, then written to `functions/` and put in force; a module that does not load
/// changes nothing.
#[utoipa::path(put, path = "/v1/admin/functions/{file}", tag = "functions",
    params(("file" = String, Path, description = "e.g. `greet.js`")),
    request_body(content = String, content_type = "text/javascript"),
    responses((status = 200, body = FunctionList),
              (status = 400, description = "does not load; `details` has `file`, `line`", body = ErrorBody)),
    security(("service_key" = [])))]
pub async fn deploy(
    State(state): State<AppState>,
    caller: Caller,
    Path(file): Path<String>,
    body: Bytes,
) -> Result<Json<FunctionList>, ApiError> {
    caller.require_service()?;
    let source = String::from_utf8(body.to_vec()).map_err(|_| ApiError::invalid("a function file must be UTF-8"))?;
    let functions = state.functions().deploy(&file, source).await.map_err(refused)?;
    Ok(Json(FunctionList { functions }))
}

fn refused(error: LoadError) -> ApiError {
    let mut answer = ApiError::invalid(format!("functions refused: {error}")).with_detail("file", error.file.as_str());
    if let Some(line) = error.line {
        answer = answer.with_detail("line", line);
    }
    answer.with_detail("reason", error.message)
}

/// Trigger events that kept failing, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetters {
    #[schema(value_type = Vec<Object>)]
    pub dead: Vec<crate::store::DeadLetter>,
}

/// The newest 100 trigger events that failed every try (or were stopped as a runaway
/// chain): trigger, `seq`, path, attempts, last error.
#[utoipa::path(get, path = "/v1/admin/functions/dead", tag = "functions",
    responses((status = 200, body = DeadLetters)),
    security(("service_key" = [])))]
pub async fn dead(State(state): State<AppState>, caller: Caller) -> Result<Json<DeadLetters>, ApiError> {
    caller.require_service()?;
    Ok(Json(DeadLetters { dead: state.store().backend().dead_letters(100).await? }))
}
