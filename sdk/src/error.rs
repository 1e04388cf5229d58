//! One error type for every SDK call.

use hearth_types::{ErrorBody, ErrorCode};
use serde_json::{Map, Value};

/// What went wrong. [`Error::code`] gives the contract's code for every kind, so an app
/// can match on codes whether the server or the network failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The server answered with an error of the contract.
    #[error("{code:?}: {message}")]
    Api {
        /// The contract's error code.
        code: ErrorCode,
        /// For people, not for matching.
        message: String,
        /// Structured context (e.g. `index` of the failing write of a batch).
        details: Map<String, Value>,
    },
    /// The server could not be reached, or the connection broke.
    #[error("cannot reach the server: {0}")]
    Network(String),
    /// The server's answer was not what the contract says (a proxy in the way, or a
    /// server of another version).
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// A call that needs a signed-in user made without one.
    #[error("not signed in")]
    SignedOut,
}

impl Error {
    /// The contract's code: `unavailable` for network faults, `internal` for answers
    /// that do not follow the contract, `unauthenticated` when signed out.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Api { code, .. } => *code,
            Error::Network(_) => ErrorCode::Unavailable,
            Error::Protocol(_) => ErrorCode::Internal,
            Error::SignedOut => ErrorCode::Unauthenticated,
        }
    }

    /// The error of a non-2xx answer.
    pub(crate) fn from_answer(status: u16, body: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => Error::Api { code: error.code, message: error.message, details: error.details },
            Err(_) => Error::Api {
                code: ErrorCode::from_http_status(status),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
                details: Map::new(),
            },
        }
    }
}

/// What SDK calls return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_without_a_contract_body_still_get_a_code() {
        let proxy = Error::from_answer(502, b"<html>Bad Gateway</html>");
        assert_eq!(proxy.code(), ErrorCode::Unavailable);
        let ours = Error::from_answer(404, br#"{"error":{"code":"not-found","message":"no such document"}}"#);
        assert_eq!(
            ours,
            Error::Api { code: ErrorCode::NotFound, message: "no such document".into(), details: Map::new() }
        );
        assert_eq!(Error::Network("refused".into()).code(), ErrorCode::Unavailable);
    }
}
