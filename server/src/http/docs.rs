//! Document routes: get, create, put, patch, delete, list, query, aggregate, batch.
//! Handlers parse, authorize, call the store and shape the answer.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hearth_types::{
    AggregateRequest, AggregateResult, BatchRequest, BatchResponse, BatchResult, Document, ErrorBody, Query, QueryPage,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::extract::{Caller, JsonBody, Preconditions, QueryParams};
use super::state::AppState;
use crate::rules::{Access, Filtered, Op};
use crate::store::query::Field;
use crate::store::{
    Aggregation, AnyPath, DocJson, DocPath, QuerySpec, RawDoc, StoredDoc, Write, WriteGuard, WriteOp, WriteResult,
    path::new_id,
};

/// Most writes in one batch.
pub const MAX_BATCH_WRITES: usize = 500;

fn parse_path(path: &str) -> Result<AnyPath, ApiError> {
    AnyPath::parse(path).map_err(|error| ApiError::invalid(error.0))
}

fn doc_path(path: &str) -> Result<DocPath, ApiError> {
    DocPath::parse(path).map_err(|error| ApiError::invalid(error.0))
}

fn object(value: Value, what: &str) -> Result<Map<String, Value>, ApiError> {
    Ok(crate::store::value::object(value, what)?)
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The answer for one document, with its `ETag`.
fn doc_response(doc: &DocJson<'_>, status: StatusCode) -> Response {
    let mut body = String::with_capacity(doc.data.len() + 160);
    doc.write_to(&mut body);
    let mut response = json_body(status, body);
    response.headers_mut().insert(header::ETAG, etag(doc.version));
    response
}

/// Commits a client's writes: through the before-write hooks, then the store, each write
/// passing `caller`'s rules (none for the service key).
async fn write(
    state: &AppState,
    caller: &Caller,
    writes: Vec<Write>,
    batch: bool,
) -> Result<Vec<WriteResult>, crate::store::Error> {
    let guard: Option<Arc<dyn WriteGuard>> = caller.principal().map(|principal| state.rules().guard(&principal));
    state.functions().write(writes, batch, guard, caller.function_auth()).await
}

/// The one document a write left, or an internal error if it left none.
async fn write_one(state: &AppState, caller: &Caller, write: Write) -> Result<(Arc<StoredDoc>, Arc<str>), ApiError> {
    let mut results = self::write(state, caller, vec![write], false).await?;
    let result = results.pop().ok_or_else(|| ApiError::internal("a write gave no result"))?;
    match (result.doc, result.data_json) {
        (Some(doc), Some(json)) => Ok((doc, json)),
        _ => Err(ApiError::internal("a write that stores a document stored none")),
    }
}

fn json_body(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Runs a query as `caller`: through the rules, or straight for the service key.
async fn run_query(state: &AppState, caller: &Caller, spec: &QuerySpec) -> Result<Filtered, ApiError> {
    match caller.principal() {
        Some(principal) => Ok(state.rules().query(&principal, spec.clone()).await?),
        None => {
            let page = state.store().query(spec.clone()).await?;
            let resume = match (page.more, page.docs.last()) {
                (true, Some(last)) => Some(spec.position_of(&last.parse()?)),
                _ => None,
            };
            Ok(Filtered { docs: page.docs, resume })
        }
    }
}

/// A page of a query or list (`QueryPage` on the wire).
fn page_response(page: Filtered, spec: &QuerySpec, state: &AppState) -> Result<Response, ApiError> {
    let cursor = page.resume.as_ref().map(|position| spec.cursor_at(position, state.store().cursors()));
    let mut body = String::with_capacity(page.docs.iter().map(|doc| doc.data.len() + 160).sum::<usize>() + 64);
    body.push_str("{\"docs\":[");
    for (index, doc) in page.docs.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        DocJson::read(doc).write_to(&mut body);
    }
    body.push_str("],\"cursor\":");
    body.push_str(&serde_json::to_string(&cursor).unwrap_or_else(|_| "null".into()));
    body.push('}');
    Ok(json_body(StatusCode::OK, body))
}

/// `/v1/docs` and `/v1/docs/` name no collection.
pub async fn empty_path() -> ApiError {
    ApiError::invalid("path is empty: name a collection (`rooms`) or a document (`rooms/r1`)")
}

/// `?limit=&cursor=` of the list route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Read a document, or list a collection in id order.
#[utoipa::path(get, path = "/v1/docs/{path}", tag = "documents",
    params(("path" = String, Path, description = "document path (`rooms/r1`) or collection path (`rooms`)"),
           ("limit" = Option<u32>, Query, description = "collections: page size, default 100, max 1000"),
           ("cursor" = Option<String>, Query, description = "collections: from a previous page")),
    responses((status = 200, description = "the document (with ETag), or a page of the collection", body = Document),
              (status = 404, description = "no such document", body = ErrorBody)))]
pub async fn get_path(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Response, ApiError> {
    match parse_path(&path)? {
        AnyPath::Doc(doc) => {
            if params.limit.is_some() || params.cursor.is_some() {
                return Err(ApiError::invalid("`limit` and `cursor` apply to collections, not documents"));
            }
            let stored = state.store().get_raw(doc.clone()).await?;
            if let Some(principal) = caller.principal() {
                // Decided before answering 404 too, so a denied caller cannot probe for ids.
                let parsed = stored.as_ref().map(RawDoc::parse).transpose()?;
                state.rules().check(&principal, &Access::read(Op::Get, &doc, parsed.as_ref())).await?;
            }
            match stored {
                Some(stored) => Ok(doc_response(&DocJson::read(&stored), StatusCode::OK)),
                None => Err(ApiError::not_found(format!("no document at `{doc}`"))),
            }
        }
        AnyPath::Collection(collection) => {
            let spec = QuerySpec::list(collection, params.limit, params.cursor, state.store().cursors())?;
            let page = run_query(&state, &caller, &spec).await?;
            page_response(page, &spec, &state)
        }
    }
}

/// Create a document with a server-made id in a collection.
#[utoipa::path(post, path = "/v1/docs/{path}", tag = "documents",
    params(("path" = String, Path, description = "collection path")),
    request_body(content = Object, description = "the document data"),
    responses((status = 201, description = "created; `Location` names it", body = Document),
              (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let collection = match parse_path(&path)? {
        AnyPath::Collection(collection) => collection,
        AnyPath::Doc(_) => {
            return Err(ApiError::invalid(format!(
                "`{path}` is a document path; POST creates in a collection (use PUT to write a known id)"
            )));
        }
    };
    let data = object(body, "the document")?;
    let doc = collection.doc(&new_id()).map_err(|e| ApiError::internal(e.0))?;
    let write = Write { path: doc, op: WriteOp::Create(data), if_version: None };
    let (stored, json) = write_one(&state, &caller, write).await?;
    let mut response = doc_response(&DocJson::written(&stored, &json), StatusCode::CREATED);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/docs/{}", stored.path)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Create or replace a document (`If-None-Match: *` = create only, `If-Match` = that version only).
#[utoipa::path(put, path = "/v1/docs/{path}", tag = "documents",
    params(("path" = String, Path, description = "document path"),
           ("If-Match" = Option<String>, Header, description = "replace only this version"),
           ("If-None-Match" = Option<String>, Header, description = "`*`: create only")),
    request_body(content = Object, description = "the document data"),
    responses((status = 201, description = "created", body = Document), (status = 200, description = "replaced", body = Document),
              (status = 409, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    preconditions: Preconditions,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let path = doc_path(&path)?;
    let data = object(body, "the document")?;
    let op = match preconditions {
        Preconditions { if_none_match_any: true, if_match: Some(_) } => {
            return Err(ApiError::invalid("If-Match and If-None-Match together can never both hold"));
        }
        Preconditions { if_none_match_any: true, .. } => WriteOp::Create(data),
        _ => WriteOp::Set(data),
    };
    let (stored, json) = write_one(&state, &caller, Write { path, op, if_version: preconditions.if_match }).await?;
    // Versions start at 1, so version 1 is a document this PUT created.
    let status = if stored.version == 1 { StatusCode::CREATED } else { StatusCode::OK };
    Ok(doc_response(&DocJson::written(&stored, &json), status))
}

/// Deep-merge into a document, with transforms.
#[utoipa::path(patch, path = "/v1/docs/{path}", tag = "documents",
    params(("path" = String, Path, description = "document path"),
           ("If-Match" = Option<String>, Header, description = "only if at this version")),
    request_body(content = Object, description = "partial data (RFC 7396; `null` removes) with `$increment`, `$server_time`, `$array_union`, `$array_remove`"),
    responses((status = 200, body = Document), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    preconditions: Preconditions,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, ApiError> {
    let path = doc_path(&path)?;
    if preconditions.if_none_match_any {
        return Err(ApiError::invalid("PATCH changes an existing document; If-None-Match does not apply"));
    }
    let data = object(body, "the patch")?;
    let write = Write { path, op: WriteOp::Update(data), if_version: preconditions.if_match };
    let (stored, json) = write_one(&state, &caller, write).await?;
    Ok(doc_response(&DocJson::written(&stored, &json), StatusCode::OK))
}

/// Delete a document; deleting an absent one is fine.
#[utoipa::path(delete, path = "/v1/docs/{path}", tag = "documents",
    params(("path" = String, Path, description = "document path"),
           ("If-Match" = Option<String>, Header, description = "only if at this version")),
    responses((status = 204, description = "gone"), (status = 412, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<String>,
    preconditions: Preconditions,
) -> Result<StatusCode, ApiError> {
    let path = doc_path(&path)?;
    if preconditions.if_none_match_any {
        return Err(ApiError::invalid("If-None-Match does not apply to DELETE"));
    }
    let write = Write { path, op: WriteOp::Delete, if_version: preconditions.if_match };
    self::write(&state, &caller, vec![write], false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run a query.
#[utoipa::path(post, path = "/v1/query", tag = "documents", request_body = Query,
    responses((status = 200, body = QueryPage), (status = 400, body = ErrorBody)))]
pub async fn query(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(query): JsonBody<Query>,
) -> Result<Response, ApiError> {
    let spec = QuerySpec::parse(&query, state.store().cursors())?;
    let page = run_query(&state, &caller, &spec).await?;
    page_response(page, &spec, &state)
}

/// Count, sum and average over a query's documents (all of them unless `limit` is set).
#[utoipa::path(post, path = "/v1/aggregate", tag = "documents", request_body = AggregateRequest,
    responses((status = 200, body = AggregateResult), (status = 400, body = ErrorBody)))]
pub async fn aggregate(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<AggregateRequest>,
) -> Result<Json<AggregateResult>, ApiError> {
    if !request.count && request.sum.is_empty() && request.avg.is_empty() {
        return Err(ApiError::invalid("ask for at least one of `count`, `sum`, `avg`"));
    }
    let mut spec = QuerySpec::parse(&request.query, state.store().cursors())?;
    if let Some(principal) = caller.principal() {
        spec.restriction = state.rules().aggregate_restriction(&principal, &spec.target).await?;
    }
    let fields = |names: &[String]| names.iter().map(|name| Field::parse(name)).collect::<Result<Vec<_>, _>>();
    let aggregation = Aggregation {
        count: request.count,
        sum: fields(&request.sum)?,
        avg: fields(&request.avg)?,
        limit: request.query.limit.map(|limit| limit as usize),
    };
    let values = state.store().aggregate(spec, aggregation).await?;
    let named = |names: &[String], values: Vec<Value>| -> Option<Map<String, Value>> {
        (!names.is_empty()).then(|| names.iter().cloned().zip(values).collect())
    };
    Ok(Json(AggregateResult {
        count: request.count.then_some(values.count),
        sum: named(&request.sum, values.sum),
        avg: named(&request.avg, values.avg),
    }))
}

/// Up to 500 writes that all commit or none do.
#[utoipa::path(post, path = "/v1/batch", tag = "documents", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse),
              (status = 400, description = "`details.index` names the bad write", body = ErrorBody),
              (status = 412, description = "a precondition failed; `details.index` names it", body = ErrorBody)))]
pub async fn batch(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(request): JsonBody<BatchRequest>,
) -> Result<Json<BatchResponse>, ApiError> {
    if request.writes.is_empty() || request.writes.len() > MAX_BATCH_WRITES {
        return Err(ApiError::invalid(format!(
            "a batch holds 1 to {MAX_BATCH_WRITES} writes, not {}",
            request.writes.len()
        )));
    }
    let writes = request
        .writes
        .into_iter()
        .enumerate()
        .map(|(index, write)| {
            Write::from_batch(write).map_err(|error| crate::store::Error::InBatch { index, error: Box::new(error) })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let results = self::write(&state, &caller, writes, true).await?;
    Ok(Json(BatchResponse {
        results: results
            .iter()
            .map(|result| BatchResult { path: result.path.as_str().to_owned(), version: result.version() })
            .collect(),
    }))
}
