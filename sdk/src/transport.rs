//! How the SDK reaches the server: HTTP requests and one WebSocket. Behind a trait so a
//! platform without `reqwest`/`tokio-tungstenite` (a browser through wasm, a test
//! double) can bring its own; [`NativeTransport`] is the default.

use std::pin::Pin;

use futures::future::BoxFuture;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::error::{Error, Result};

/// One HTTP request.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: &'static str,
    /// The whole URL.
    pub url: String,
    /// Header names in lower case, with their values.
    pub headers: Vec<(&'static str, String)>,
    /// JSON, or the raw body of a deploy.
    pub body: Option<Vec<u8>>,
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The whole body (the SDK's answers are small JSON documents).
    pub body: Vec<u8>,
}

/// Text frames to the server.
pub type SocketSink = Pin<Box<dyn Sink<String, Error = Error> + Send>>;
/// Text frames from the server, until the connection ends.
pub type SocketStream = Pin<Box<dyn Stream<Item = Result<String>> + Send>>;

/// What the SDK needs from the platform.
pub trait Transport: Send + Sync + 'static {
    /// Sends one request; `Error::Network` if no answer came.
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse>>;
    /// Opens a WebSocket to `url` (`ws://` or `wss://`).
    fn connect(&self, url: String) -> BoxFuture<'_, Result<(SocketSink, SocketStream)>>;
}

/// `reqwest` for HTTP and `tokio-tungstenite` for the WebSocket (rustls for TLS).
#[derive(Clone, Default)]
pub struct NativeTransport {
    http: reqwest::Client,
}

impl NativeTransport {
    /// A transport with its own connection pool.
    pub fn new() -> NativeTransport {
        NativeTransport::default()
    }
}

impl Transport for NativeTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse>> {
        Box::pin(async move {
            let method = reqwest::Method::from_bytes(request.method.as_bytes())
                .map_err(|_| Error::Protocol(format!("bad method {}", request.method)))?;
            let mut builder = self.http.request(method, &request.url);
            for (name, value) in request.headers {
                builder = builder.header(name, value);
            }
            if let Some(body) = request.body {
                builder = builder.body(body);
            }
            let response = builder.send().await.map_err(|error| Error::Network(error.to_string()))?;
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|error| Error::Network(error.to_string()))?;
            Ok(HttpResponse { status, body: body.to_vec() })
        })
    }

    fn connect(&self, url: String) -> BoxFuture<'_, Result<(SocketSink, SocketStream)>> {
        Box::pin(async move {
            let (socket, _) =
                tokio_tungstenite::connect_async(url).await.map_err(|error| Error::Network(error.to_string()))?;
            let (sink, stream) = socket.split();
            let sink = sink
                .sink_map_err(|error| Error::Network(error.to_string()))
                .with(|text: String| futures::future::ready(Ok::<_, Error>(Message::Text(text.into()))));
            let stream = stream.filter_map(|frame| {
                futures::future::ready(match frame {
                    Ok(Message::Text(text)) => Some(Ok(text.as_str().to_owned())),
                    Ok(Message::Close(_)) => Some(Err(Error::Network("the server closed the connection".into()))),
                    Ok(_) => None,
                    Err(error) => Some(Err(Error::Network(error.to_string()))),
                })
            });
            Ok((Box::pin(sink) as SocketSink, Box::pin(stream) as SocketStream))
        })
    }
}
