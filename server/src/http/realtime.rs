//! `GET /v1/realtime`: the WebSocket, its frames and heartbeats; the protocol itself is
//! `realtime::Session`'s.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use hearth_types::ErrorCode;
use tokio::time::Instant;

use super::error::ApiError;
use super::extract::{Caller, bearer_token, caller_from_token};
use super::state::AppState;
use crate::realtime::hub::error_message;
use crate::realtime::presence::channel_error;
use crate::realtime::{Admitted, CLOSE_TOO_SLOW, ClientMessage, MAX_FRAME_BYTES};
use crate::rules::set::is_channel_name;
use crate::rules::{Op, Principal};
use serde_json::json;

/// How often the server pings, and how long a silent client is kept.
const HEARTBEAT: Duration = Duration::from_secs(30);
const IDLE: Duration = Duration::from_secs(90);
/// How long one frame may wait for the client to take it.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Most queued messages written out together.
const MAX_BATCH: usize = 64;

/// Live documents and queries over a WebSocket (see the Realtime section of the contract).
/// Credentials come from the `Authorization` header or an `auth` message.
#[utoipa::path(get, path = "/v1/realtime", tag = "realtime",
    responses((status = 101, description = "switching to the WebSocket protocol"),
              (status = 401, description = "invalid credentials in the header", body = hearth_types::ErrorBody)))]
pub async fn realtime(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let token = bearer_token(&parts.headers)?;
    let caller = match token {
        None => Caller::Anonymous,
        Some(token) => caller_from_token(token, &state)?,
    };
    let expires = token.and_then(token_expiry);
    let address = super::extract::client_address(&parts, &state);
    let admitted =
        state.realtime().admit(&address).map_err(|message| ApiError::new(ErrorCode::ResourceExhausted, message))?;
    // Small buffers: most connections are idle most of the time, and tungstenite's
    // defaults (128 KiB each way) would be most of their memory.
    Ok(upgrade
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| async move {
            let realtime = state.realtime().clone();
            realtime.run(serve(socket, state, caller, expires, admitted)).await;
        }))
}

/// The `exp` (seconds) of an access token already verified; `None` for service keys.
fn token_expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_i64()
}

fn deadline(expires: Option<i64>) -> Option<Instant> {
    let expires = expires?;
    let left = expires - chrono::Utc::now().timestamp();
    Some(Instant::now() + Duration::from_secs(left.max(0) as u64))
}

/// Why deliveries pause.
const EXPIRED: &str = "the access token expired; send a new `auth` to resume deliveries";
const REVOKED: &str = "this session was revoked; sign in again and send a new `auth`";

/// The session a caller's token belongs to, if it has one.
fn session_of(caller: &Caller) -> Option<String> {
    match caller {
        Caller::User(user) => Some(user.session_id.clone()),
        Caller::Service | Caller::Anonymous => None,
    }
}

async fn serve(socket: WebSocket, state: AppState, caller: Caller, expires: Option<i64>, admitted: Admitted) {
    let _admitted = admitted;
    let mut principal = caller.principal();
    let mut session_id = session_of(&caller);
    let mut revocations = state.auth().revocations();
    let service = principal.is_none();
    let (session, mut outgoing, overflow) = state.realtime().open(principal.clone());
    let (mut sink, mut stream) = socket.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let mut heard = Instant::now();
    let mut expiry = if service { None } else { deadline(expires) };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let expired = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // An overflow is seen before anything else queued.
            biased;
            () = overflow.notified() => {
                let close = CloseFrame { code: CLOSE_TOO_SLOW, reason: "reading too slowly; resume with your token".into() };
                let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Close(Some(close)))).await;
                break;
            }
            taken = outgoing.recv_many(&mut batch, MAX_BATCH) => {
                if taken == 0 {
                    break;
                }
                // Every message queued by now goes out in one write: under load that is
                // one syscall for many messages instead of one each.
                let written = async {
                    for text in batch.drain(..) {
                        sink.feed(Message::Text(text.as_ref().into())).await?;
                    }
                    sink.flush().await
                };
                // A client that takes no bytes at all for this long is gone.
                match tokio::time::timeout(SEND_TIMEOUT, written).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            frame = stream.next() => {
                heard = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientMessage>(text.as_str()) {
                        Ok(ClientMessage::Auth { token }) => match caller_from_token(&token, &state) {
                            Ok(caller) => {
                                principal = caller.principal();
                                session_id = session_of(&caller);
                                expiry = if principal.is_some() { deadline(token_expiry(&token)) } else { None };
                                session.set_principal(principal.clone(), None);
                            }
                            Err(error) => session.reply(error_message("", "unauthenticated", &error.message)),
                        },
                        Ok(ClientMessage::Join { channel, presence }) => {
                            match channel_allowed(&state, principal.as_ref(), Op::Join, &channel).await {
                                Ok(()) => session.join(channel, uid_of(principal.as_ref()), presence.unwrap_or_else(|| json!({}))),
                                Err((code, message)) => session.reply(channel_error(&channel, code, &message)),
                            }
                        }
                        Ok(ClientMessage::Broadcast { channel, event, payload }) => {
                            match channel_allowed(&state, principal.as_ref(), Op::Broadcast, &channel).await {
                                Ok(()) => session.broadcast(channel, event, payload),
                                Err((code, message)) => session.reply(channel_error(&channel, code, &message)),
                            }
                        }
                        Ok(message) => session.handle(message, state.store().cursors()),
                        Err(error) => session.reply(error_message("", "invalid-argument", &format!("bad message: {error}"))),
                    },
                    Some(Ok(Message::Binary(_))) => session.reply(error_message("", "invalid-argument", "frames are JSON text")),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                }
            }
            () = expired => {
                expiry = None;
                session.set_principal(principal.clone(), Some(EXPIRED));
            }
            revoked = revocations.recv(), if session_id.is_some() => {
                let ours = match &revoked {
                    Ok(ids) => ids.iter().any(|id| Some(id) == session_id.as_ref()),
                    // Fell behind the events: ask directly.
                    Err(_) => session_id.as_deref().is_some_and(|id| state.auth().session_revoked(id)),
                };
                if ours {
                    expiry = None;
                    session_id = None;
                    session.set_principal(principal.clone(), Some(REVOKED));
                }
            }
            _ = heartbeat.tick() => {
                if heard.elapsed() > IDLE {
                    let close = CloseFrame { code: 1001, reason: "idle".into() };
                    let _ = sink.send(Message::Close(Some(close))).await;
                    break;
                }
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Whether the caller may join or broadcast on `channel` (the service key may).
async fn channel_allowed(
    state: &AppState,
    principal: Option<&Principal>,
    op: Op,
    channel: &str,
) -> Result<(), (&'static str, String)> {
    if !is_channel_name(channel) {
        return Err(("invalid-argument", "a channel name is 1 to 128 of A-Z a-z 0-9 _ . : -".into()));
    }
    let Some(principal) = principal else { return Ok(()) };
    match state.rules().check_channel(principal, op, channel).await {
        Ok(()) => Ok(()),
        Err(crate::store::Error::PermissionDenied(message)) => Err(("permission-denied", message)),
        Err(error) => {
            tracing::error!(%error, "checking a channel rule failed");
            Err(("internal", "internal error".into()))
        }
    }
}

/// The uid presence shows for a caller: null for the service key or no session.
fn uid_of(principal: Option<&Principal>) -> serde_json::Value {
    principal.and_then(Principal::uid).map_or(serde_json::Value::Null, serde_json::Value::String)
}
