//! The outermost application layer: the request id (the client's `x-request-id`, or a
//! new one, answered in the same header), the request's span (method, path, id) around
//! everything the request does, one log line per answer (target `hearth::access`),
//! request metrics by route, method and status, the log line of internal errors, and the
//! contract's error shape for every error answer that did not come from an [`ApiError`]
//! (axum's own 405 or 413).
//!
//! One hand-written tower layer rather than tower-http's request-id, propagate and trace
//! layers plus a `middleware::from_fn`: it runs on every request, and this way it costs
//! one future, no boxing, no wrapped body and no labelled-key lookup per request.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hearth_types::ErrorCode;
use tower::{Layer, Service};

use super::error::{ApiError, InternalCause, Shaped};

/// Adds [`Observe`] around a service.
#[derive(Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let id = match request.headers().get(&REQUEST_ID) {
            Some(id) if !id.is_empty() && id.len() <= 200 && id.to_str().is_ok() => id.clone(),
            _ => {
                let id = new_request_id();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let span = tracing::info_span!(
            "request",
            method = %method,
            path = %request.uri().path(),
            request_id = id.to_str().unwrap_or_default(),
        );
        let inner = span.in_scope(|| self.inner.call(request));
        ObserveFuture { inner, started, method, route, id: Some(id), span }
    }
}

/// The header that carries the request id both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request id in UUID v4 form from the thread's userspace RNG (a UUID crate v4 asks
/// the kernel for randomness on every request).
fn new_request_id() -> HeaderValue {
    let bits: u128 = rand::random();
    let bits = (bits & !(0xF000 << 64) & !(0xC << 60)) | (0x4000 << 64) | (0x8 << 60);
    // Hex digits written straight into the 36 bytes (`format!` cost more than the RNG).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 36];
    for (nibble, at) in (0..36).filter(|at| ![8, 13, 18, 23].contains(at)).enumerate() {
        text[at] = HEX[(bits >> (124 - 4 * nibble)) as usize & 0xF];
    }
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

pin_project_lite::pin_project! {
    /// The answer of the inner service, observed.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        method: Method,
        route: Option<MatchedPath>,
        id: Option<HeaderValue>,
        span: tracing::Span,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(InternalCause(cause)) = response.extensions_mut().remove::<InternalCause>() {
            tracing::error!(%cause, "internal error");
        }
        let status = response.status();
        if (status.is_client_error() || status.is_server_error()) && response.extensions().get::<Shaped>().is_none() {
            response = reshape(response);
        }
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        let elapsed = this.started.elapsed();
        let status = response.status().as_u16();
        // Whole microseconds, so the line reads `0.045`, not `0.045200000000000004`.
        let latency_ms = elapsed.as_micros() as f64 / 1000.0;
        tracing::info!(target: "hearth::access", status, latency_ms, "answered");
        let seconds = elapsed.as_secs_f64();
        let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
        REQUEST_METRICS.record(route, this.method, status, seconds);
        Poll::Ready(Ok(response))
    }
}

/// An error answer in the contract's shape, keeping the status and headers.
fn reshape(response: Response) -> Response {
    let status = response.status();
    let code = ErrorCode::from_http_status(status.as_u16());
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => "request body is over the size limit".to_owned(),
        _ if code == ErrorCode::Internal => "internal error".to_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let (parts, _) = response.into_parts();
    let mut shaped = ApiError::new(code, message).into_response();
    *shaped.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

/// Metric handles by route, then method and status: made once per combination, so a
/// request records through handles instead of building and looking up labelled keys.
#[derive(Default)]
struct RequestMetrics {
    routes: RwLock<HashMap<String, Vec<Labelled>>>,
}

/// The handles of one method and status on a route.
struct Labelled {
    method: Method,
    status: u16,
    handles: Handles,
}

struct Handles {
    count: metrics::Counter,
    duration: metrics::Histogram,
}

impl Handles {
    fn record(&self, seconds: f64) {
        self.count.increment(1);
        self.duration.record(seconds);
    }
}

static REQUEST_METRICS: LazyLock<RequestMetrics> = LazyLock::new(RequestMetrics::default);

impl RequestMetrics {
    fn record(&self, route: &str, method: &Method, status: u16, seconds: f64) {
        {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            let known = routes.get(route).and_then(|entries| {
                entries
                    .iter()
                    .find(|entry| entry.method == method && entry.status == status)
                    .map(|entry| &entry.handles)
            });
            if let Some(handles) = known {
                return handles.record(seconds);
            }
        }
        let labels = [("method", method.to_string()), ("route", route.to_owned()), ("status", status.to_string())];
        let handles = Handles {
            count: metrics::counter!("http_requests_total", &labels),
            duration: metrics::histogram!("http_request_duration_seconds", &labels),
        };
        handles.record(seconds);
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.entry(route.to_owned()).or_default().push(Labelled { method: method.clone(), status, handles });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = super::new_request_id();
        let text = id.to_str().expect("ascii").to_owned();
        assert_eq!(text.len(), 36);
        for (at, byte) in text.bytes().enumerate() {
            let dash = [8, 13, 18, 23].contains(&at);
            assert!(if dash { byte == b'-' } else { byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase() }, "{text}");
        }
        assert_eq!(text.as_bytes()[14], b'4', "{text}");
        assert!(matches!(text.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{text}");
        assert_ne!(super::new_request_id(), id);
    }
}
