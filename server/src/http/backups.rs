//! Backups over HTTP (service key only): make one while the server runs, list them,
//! download one, delete one.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use super::extract::Caller;
use super::state::AppState;
use crate::backup::BackupInfo;

/// The backups on disk, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackupList {
    pub backups: Vec<BackupInfo>,
}

/// Make a backup: a consistent copy of the whole database as of now, written to
/// `backups/` beside the database file while writes go on. One runs at a time.
#[utoipa::path(post, path = "/v1/admin/backups", tag = "backups",
    responses((status = 201, body = BackupInfo)),
    security(("service_key" = [])))]
pub async fn create(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require_service()?;
    let backup = state.backups().create(state.store()).await?;
    Ok((StatusCode::CREATED, Json(backup)).into_response())
}

/// The backups kept, newest first.
#[utoipa::path(get, path = "/v1/admin/backups", tag = "backups",
    responses((status = 200, body = BackupList)),
    security(("service_key" = [])))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<BackupList>, ApiError> {
    caller.require_service()?;
    Ok(Json(BackupList { backups: state.backups().list().await? }))
}

/// Download a backup: an SQLite database file, ready for `hearth restore`.
#[utoipa::path(get, path = "/v1/admin/backups/{name}", tag = "backups",
    params(("name" = String, Path, description = "a name from the list")),
    responses((status = 200, description = "the database file", content_type = "application/vnd.sqlite3"),
              (status = 404, body = hearth_types::ErrorBody)),
    security(("service_key" = [])))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_service()?;
    let path = state.backups().file(&name)?;
    let file =
        tokio::fs::File::open(&path).await.map_err(|_| ApiError::not_found(format!("no backup named `{name}`")))?;
    let bytes = file.metadata().await.map(|meta| meta.len()).ok();
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.sqlite3"));
    // The name is one `file` accepted: ASCII letters, digits, `-` and `.` only.
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    if let Some(bytes) = bytes {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes));
    }
    Ok(response)
}

/// Delete a backup.
#[utoipa::path(delete, path = "/v1/admin/backups/{name}", tag = "backups",
    params(("name" = String, Path, description = "a name from the list")),
    responses((status = 204, description = "deleted"), (status = 404, body = hearth_types::ErrorBody)),
    security(("service_key" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_service()?;
    state.backups().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
