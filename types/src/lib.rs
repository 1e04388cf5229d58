//! Wire types of the Hearth API (v1): the one place the server and the SDK take them from,
//! so the two cannot drift. Field names and spellings follow `API.md`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod eval;
pub mod id;
pub mod realtime;
pub mod time;
pub mod value;

/// A JSON object: the body of every document.
pub type Object = Map<String, Value>;

/// The error codes of the contract, each tied to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PayloadTooLarge,
    ResourceExhausted,
    DeadlineExceeded,
    Internal,
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists => 409,
            ErrorCode::FailedPrecondition => 412,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The code for an HTTP status, for answers that did not come with a body of ours.
    pub fn from_http_status(status: u16) -> ErrorCode {
        match status {
            400 | 405 | 411 | 415 | 422 => ErrorCode::InvalidArgument,
            401 => ErrorCode::Unauthenticated,
            403 => ErrorCode::PermissionDenied,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::AlreadyExists,
            412 => ErrorCode::FailedPrecondition,
            413 => ErrorCode::PayloadTooLarge,
            429 => ErrorCode::ResourceExhausted,
            504 | 408 => ErrorCode::DeadlineExceeded,
            502 | 503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        }
    }

    /// The kebab-case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission-denied",
            ErrorCode::NotFound => "not-found",
            ErrorCode::AlreadyExists => "already-exists",
            ErrorCode::FailedPrecondition => "failed-precondition",
            ErrorCode::PayloadTooLarge => "payload-too-large",
            ErrorCode::ResourceExhausted => "resource-exhausted",
            ErrorCode::DeadlineExceeded => "deadline-exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest error message sent: messages quote the input they refuse (a field name, an
/// unknown key), and a refused megabyte should not come back in the answer.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// `message` cut to [`MAX_ERROR_MESSAGE_BYTES`] at a character boundary, marked with `…`.
pub fn bounded_error_message(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut cut = MAX_ERROR_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// The body of every non-2xx answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, without secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: Object,
}

/// A stored document, as every route returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Document {
    /// Full path, e.g. `rooms/r1/messages/m1`.
    pub path: String,
    /// The last segment of `path`.
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Object,
    /// Starts at 1 and grows by one on every write; also the `ETag`.
    pub version: i64,
    /// RFC 3339 UTC with microseconds.
    pub created_at: String,
    pub updated_at: String,
}

/// A query over one collection or a collection group (`POST /v1/query`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Query {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection_group: Option<String>,
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order_by: Vec<OrderBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// One `where` clause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// A dotted path (`address.city`) or `__id__`.
    pub field: String,
    pub op: Op,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub value: Value,
}

/// The ten filter operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Op {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "in")]
    In,
    #[serde(rename = "not-in")]
    NotIn,
    #[serde(rename = "array-contains")]
    ArrayContains,
    #[serde(rename = "array-contains-any")]
    ArrayContainsAny,
}

impl Op {
    /// Every operator, for tests and tools that enumerate them.
    pub const ALL: [Op; 10] =
        [Op::Eq, Op::Ne, Op::Lt, Op::Le, Op::Gt, Op::Ge, Op::In, Op::NotIn, Op::ArrayContains, Op::ArrayContainsAny];
}

/// One `order_by` clause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrderBy {
    pub field: String,
    #[serde(default)]
    pub dir: Direction,
}

/// Sort direction; ascending by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Asc,
    Desc,
}

/// A page of query results; `cursor` resumes right after the last document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueryPage {
    pub docs: Vec<Document>,
    pub cursor: Option<String>,
}

/// `POST /v1/aggregate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AggregateRequest {
    pub query: Query,
    #[serde(default)]
    pub count: bool,
    #[serde(default)]
    pub sum: Vec<String>,
    #[serde(default)]
    pub avg: Vec<String>,
}

/// The answer to an aggregate; only the parts asked for are present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AggregateResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub sum: Option<Map<String, Value>>,
    /// `null` for a field no matching document holds a number in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub avg: Option<Map<String, Value>>,
}

/// `POST /v1/batch`: up to 500 writes that commit together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub writes: Vec<BatchWrite>,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchWrite {
    pub op: BatchOp,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<i64>,
}

/// What a batch write does: `create` fails if the document exists, `set` creates or
/// replaces, `update` deep-merges into an existing one, `delete` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BatchOp {
    Create,
    Set,
    Update,
    Delete,
}

/// The answer to a batch, one result per write in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// The version a batch write left; `0` for a delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchResult {
    pub path: String,
    pub version: i64,
}

/// A user, as the auth routes return it. `data` is the user's own profile object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub anonymous: bool,
    pub disabled: bool,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub claims: Object,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Object,
    /// Whether TOTP multi-factor sign-in is on.
    pub mfa: bool,
    pub created_at: String,
    pub providers: Vec<String>,
}

/// The answer of every route that signs someone in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until `access_token` expires.
    pub expires_in: u64,
    pub refresh_token: String,
    pub user: User,
}

/// The second step a login asks for when the user has TOTP on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MfaChallenge {
    /// Always `true`.
    pub mfa_required: bool,
    /// Give it to `POST /v1/auth/mfa/verify` with a code.
    pub ticket: String,
    pub expires_in: u64,
}

/// The answer of `POST /v1/auth/login`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum LoginAnswer {
    Session(Session),
    MfaRequired(MfaChallenge),
}

/// `POST /v1/auth/mfa/totp/enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TotpEnrollment {
    /// Base32, for typing into an authenticator.
    pub secret: String,
    /// `otpauth://totp/...`, for a QR code.
    pub otpauth_uri: String,
}

/// Single-use codes that stand in for the authenticator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

/// `{code}`: a TOTP code (or, where allowed, a recovery code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub code: String,
    /// Turning TOTP on or off is a sensitive change: it needs the current password unless
    /// the caller signed in within the last minutes (see [`Reauth`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_password: Option<String>,
}

/// Proof that the caller is the account's owner, not someone holding a stolen access
/// token, for a sensitive change (e-mail, password, turning TOTP on or off, deleting the
/// account): the current password, with a TOTP or recovery `code` when TOTP is on. Not
/// needed within `auth.reauth_seconds` of a sign-in, nor for anonymous users.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Reauth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `POST /v1/auth/mfa/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MfaVerifyRequest {
    pub ticket: String,
    pub code: String,
}

/// `{email, password}`: signup, login, link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

/// `POST /v1/auth/refresh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// `POST /v1/auth/logout`: this session, or with `all` every session of the user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogoutRequest {
    #[serde(default)]
    pub all: bool,
}

/// `PATCH /v1/auth/user`: any of a new e-mail, a new password, a new profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Replaces the profile object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub data: Option<Object>,
    /// With `email` or `password`: see [`Reauth`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_password: Option<String>,
    /// With `email` or `password`, when TOTP is on: see [`Reauth`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// `POST /v1/admin/users`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AdminUserCreate {
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub claims: Object,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Object,
}

/// `PATCH /v1/admin/users/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AdminUserUpdate {
    /// Replaces the custom claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub claims: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
}

/// A page of users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserPage {
    pub users: Vec<User>,
    pub cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_error_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_error_message("short".into()), "short");
        let cut = bounded_error_message(format!("a{}", "é".repeat(1000)));
        assert_eq!(cut.len(), MAX_ERROR_MESSAGE_BYTES - 1 + '…'.len_utf8());
        assert!(cut.ends_with("é…"));
    }

    #[test]
    fn every_code_round_trips_through_its_http_status() {
        for code in [
            ErrorCode::InvalidArgument,
            ErrorCode::Unauthenticated,
            ErrorCode::PermissionDenied,
            ErrorCode::NotFound,
            ErrorCode::AlreadyExists,
            ErrorCode::FailedPrecondition,
            ErrorCode::PayloadTooLarge,
            ErrorCode::ResourceExhausted,
            ErrorCode::DeadlineExceeded,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
        ] {
            assert_eq!(ErrorCode::from_http_status(code.http_status()), code);
            let json = serde_json::to_string(&code).expect("serializes");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn query_parses_the_contract_example_and_refuses_unknown_fields() {
        let q: Query = serde_json::from_str(
            r#"{"collection": "rooms/r1/messages",
                "where": [{"field": "score", "op": ">=", "value": 10},
                          {"field": "tags", "op": "array-contains", "value": "rust"}],
                "order_by": [{"field": "score", "dir": "desc"}], "limit": 20}"#,
        )
        .expect("parses");
        assert_eq!(q.filters[1].op, Op::ArrayContains);
        assert_eq!(q.order_by[0].dir, Direction::Desc);
        assert!(serde_json::from_str::<Query>(r#"{"collection": "a", "bogus": 1}"#).is_err());
        assert!(
            serde_json::from_str::<Query>(r#"{"collection": "a", "where": [{"field": "x", "op": "~", "value": 1}]}"#)
                .is_err()
        );
    }
}
