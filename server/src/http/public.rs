//! The web app of `hearth serve --public DIR`, served beside the API on the same origin
//! (as PocketBase's `pb_public`): a path names a file of the dir (a dir its
//! `index.html`); a path that names no file and has no extension gets `index.html`, so
//! client-side routes load the app. API routes never reach here.
//!
//! Every file carries an `ETag` (from its size and modification time) and answers
//! `If-None-Match` with 304. HTML and files with plain names are revalidated on every
//! load (`no-cache`); files whose names carry a content hash (`index-BMx3aTJq.js`, as
//! bundlers write them) are cached for a year. A `NAME.br` or `NAME.gz` beside a file
//! is sent instead when the browser accepts it. Names starting with `.` are never
//! served.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// The fallback of the router: a file of the web app, or the API's 404.
pub async fn serve(State(state): State<AppState>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let head = method == Method::HEAD;
    let wanted = state.config().public_dir().filter(|_| (head || method == Method::GET) && !is_api(uri.path()));
    let file = match (wanted, relative_path(uri.path())) {
        (Some(root), Some(relative)) => find(&root, &relative).await,
        _ => None,
    };
    let answer = match &file {
        Some(file) => send(file, &headers, head).await,
        None => Err(std::io::ErrorKind::NotFound.into()),
    };
    match answer {
        Ok(response) => response,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            super::system::not_found(uri).await.into_response()
        }
        Err(error) => {
            let file = file.unwrap_or_default();
            tracing::error!(file = %file.display(), %error, "cannot read a public file");
            ApiError::internal("cannot read a public file").into_response()
        }
    }
}

/// Paths that belong to the API, whose unknown routes answer in the error shape.
fn is_api(path: &str) -> bool {
    ["/v1/", "/_/", "/.well-known/"].iter().any(|prefix| path.starts_with(prefix)) || path == "/v1"
}

/// The decoded segments of `path` as a relative path, or `None` when one is empty after
/// the first, `.`, `..`, hidden, or holds a separator or NUL once decoded.
fn relative_path(path: &str) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    let trimmed = path.trim_start_matches('/');
    let segments: Vec<&str> = trimmed.split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        if segment.is_empty() && index + 1 == segments.len() {
            break; // a trailing slash: the dir's index
        }
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8().ok()?;
        if decoded.is_empty() || decoded.starts_with('.') || decoded.contains(['/', '\\', '\0']) {
            return None;
        }
        relative.push(decoded.as_ref());
    }
    Some(relative)
}

/// The file to send for `relative`: the file, a dir's `index.html`, or, for a path
/// without an extension that names nothing, the app's `index.html`.
async fn find(root: &Path, relative: &Path) -> Option<PathBuf> {
    let candidate = root.join(relative);
    match tokio::fs::metadata(&candidate).await {
        Ok(meta) if meta.is_file() => return Some(candidate),
        Ok(meta) if meta.is_dir() => {
            let index = candidate.join("index.html");
            return tokio::fs::metadata(&index).await.is_ok_and(|meta| meta.is_file()).then_some(index);
        }
        _ => {}
    }
    let has_extension = relative.extension().is_some();
    let index = root.join("index.html");
    (!has_extension && tokio::fs::metadata(&index).await.is_ok_and(|meta| meta.is_file())).then_some(index)
}

/// Sends `file` (or its precompressed form), or 304 when the browser holds it already.
async fn send(file: &Path, headers: &HeaderMap, head: bool) -> std::io::Result<Response> {
    let (path, encoding) = precompressed(file, headers).await;
    let opened = tokio::fs::File::open(&path).await?;
    let meta = opened.metadata().await?;
    let modified = meta.modified().ok().and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok());
    let etag = format!(
        "\"{:x}-{:x}{}\"",
        meta.len(),
        modified.map(|time| time.as_nanos()).unwrap_or_default(),
        encoding.map(|encoding| format!("-{encoding}")).unwrap_or_default()
    );
    let name = file.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    let mut response = if matches_etag(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = if head { Body::empty() } else { Body::from_stream(tokio_util::io::ReaderStream::new(opened)) };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(name)));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
        if let Some(encoding) = encoding {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("an ETag is ASCII"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control(name)));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    Ok(response)
}

/// `NAME.br` or `NAME.gz` when the browser accepts that encoding and the file is there.
async fn precompressed(file: &Path, headers: &HeaderMap) -> (PathBuf, Option<&'static str>) {
    let accepted = headers.get(header::ACCEPT_ENCODING).and_then(|value| value.to_str().ok()).unwrap_or_default();
    for (encoding, suffix) in [("br", "br"), ("gzip", "gz")] {
        if !accepts(accepted, encoding) {
            continue;
        }
        let mut name = file.as_os_str().to_owned();
        name.push(".");
        name.push(suffix);
        let path = PathBuf::from(name);
        if tokio::fs::metadata(&path).await.is_ok_and(|meta| meta.is_file()) {
            return (path, Some(encoding));
        }
    }
    (file.to_owned(), None)
}

/// Whether an `Accept-Encoding` value accepts `encoding` (named, not with `q=0`).
fn accepts(accepted: &str, encoding: &str) -> bool {
    accepted.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        parts.next().is_some_and(|name| name.eq_ignore_ascii_case(encoding))
            && !parts.any(|parameter| {
                parameter.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()).is_some_and(|q| q == 0.0)
            })
    })
}

fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    let Some(wanted) = headers.get(header::IF_NONE_MATCH).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    wanted.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

fn cache_control(name: &str) -> &'static str {
    if !name.ends_with(".html") && has_content_hash(name) { "public, max-age=31536000, immutable" } else { "no-cache" }
}

/// Whether a file name carries a bundler's content hash: a part between `-` or `.` of 8
/// or more letters and digits with at least one digit (`index-BMx3aTJq.js`,
/// `main.3f2a1b9c.css`), before the extension.
fn has_content_hash(name: &str) -> bool {
    let stem = name.rsplit_once('.').map(|(stem, _)| stem).unwrap_or(name);
    stem.split(['-', '.']).skip(1).any(|part| {
        part.len() >= 8
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && part.chars().any(|c| c.is_ascii_digit())
    })
}

fn content_type(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map(|(_, extension)| extension.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_dir() {
        assert_eq!(relative_path("/app/main.js"), Some(PathBuf::from("app/main.js")));
        assert_eq!(relative_path("/"), Some(PathBuf::new()));
        assert_eq!(relative_path("/docs/"), Some(PathBuf::from("docs")));
        assert_eq!(relative_path("/caf%C3%A9.txt"), Some(PathBuf::from("café.txt")));
        for bad in ["/../secret", "/a/%2e%2e/b", "/a%2fb", "/a%5cb", "/%00", "/.env", "/a//b", "/.git/config"] {
            assert_eq!(relative_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn hashed_names_are_cached_for_a_year_and_others_revalidate() {
        assert_eq!(cache_control("index-BMx3aTJq.js"), "public, max-age=31536000, immutable");
        assert_eq!(cache_control("main.3f2a1b9c.css"), "public, max-age=31536000, immutable");
        assert_eq!(cache_control("index.html"), "no-cache");
        assert_eq!(cache_control("app.js"), "no-cache");
        assert_eq!(cache_control("favicon.ico"), "no-cache");
        assert_eq!(cache_control("hearth-client.js"), "no-cache");
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("br;q=0.5", "br"));
        assert!(!accepts("br;q=0, gzip", "br"));
        assert!(!accepts("identity", "gzip"));
    }
}
