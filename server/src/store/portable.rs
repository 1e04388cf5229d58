//! What `hearth export` and `hearth import` move between databases, table by table, in
//! terms both backends share: each backend reads and writes these tables with its own
//! SQL ([`super::Backend::export_rows`], [`super::Backend::import_rows`]); the file
//! format around them lives in `crate::export`.
//!
//! Only what a project is made of travels: documents, users and what signs them in,
//! keys. The change log, trigger cursors, mail tokens, rate limits and other working
//! state start afresh in the target.

/// How a column is stored and written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    /// SQLite `INTEGER` 0/1, PostgreSQL `BOOLEAN`.
    Bool,
    /// `BLOB` / `BYTEA`; base64 in the file.
    Bytes,
    /// JSON held as text in both databases (claims, profile data).
    Json,
    /// A document's data: SQLite's binary JSONB, PostgreSQL's `jsonb`; as JSON text here.
    Document,
}

#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub nullable: bool,
    /// Worked out from other columns on import (a document's collection from its path),
    /// so not in the file.
    pub derived: bool,
}

#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// Keys: rows are added to those the target already has (a target started once has
    /// its own), skipping any it holds. Other tables must be empty in the target.
    pub merge: bool,
    /// Moved only when asked (sessions: users stay signed in across the move).
    pub sessions: bool,
}

/// A value of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Bool(bool),
    /// Text, and JSON as its text ([`Kind::Json`], [`Kind::Document`]).
    Text(String),
    Bytes(Vec<u8>),
}

/// Rows as they flow from the file to a backend's import, in table order.
#[derive(Debug)]
pub enum Batch {
    /// Rows of one table, each with a cell per column of [`Table::columns`].
    Rows(&'static Table, Vec<Vec<Cell>>),
    /// The whole file was read and checked: commit. An import that ends without it
    /// commits nothing.
    Done,
}

const fn column(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, nullable: false, derived: false }
}

const fn nullable(name: &'static str, kind: Kind) -> Column {
    Column { name, kind, nullable: true, derived: false }
}

const fn derived(name: &'static str) -> Column {
    Column { name, kind: Kind::Text, nullable: false, derived: true }
}

pub static DOCUMENTS: Table = Table {
    name: "documents",
    columns: &[
        column("path", Kind::Text),
        derived("collection"),
        derived("coll_id"),
        derived("id"),
        column("data", Kind::Document),
        column("version", Kind::Int),
        column("created_at", Kind::Int),
        column("updated_at", Kind::Int),
    ],
    merge: false,
    sessions: false,
};

pub static USERS: Table = Table {
    name: "users",
    columns: &[
        column("id", Kind::Text),
        nullable("email", Kind::Text),
        column("email_verified", Kind::Bool),
        nullable("password_hash", Kind::Text),
        column("anonymous", Kind::Bool),
        column("disabled", Kind::Bool),
        column("claims", Kind::Json),
        column("data", Kind::Json),
        column("providers", Kind::Json),
        column("created_at", Kind::Int),
        column("updated_at", Kind::Int),
        column("mfa", Kind::Bool),
    ],
    merge: false,
    sessions: false,
};

pub static IDENTITIES: Table = Table {
    name: "identities",
    columns: &[
        column("provider", Kind::Text),
        column("subject", Kind::Text),
        column("user_id", Kind::Text),
        column("created_at", Kind::Int),
    ],
    merge: false,
    sessions: false,
};

/// `secret` is sealed at rest with the project's key (see [`crate::auth::repo::SECRETS`]).
pub static MFA_TOTP: Table = Table {
    name: "mfa_totp",
    columns: &[
        column("user_id", Kind::Text),
        column("secret", Kind::Bytes),
        nullable("confirmed_at", Kind::Int),
        column("last_step", Kind::Int),
        column("created_at", Kind::Int),
    ],
    merge: false,
    sessions: false,
};

pub static MFA_RECOVERY_CODES: Table = Table {
    name: "mfa_recovery_codes",
    columns: &[column("hash", Kind::Bytes), column("user_id", Kind::Text), nullable("used_at", Kind::Int)],
    merge: false,
    sessions: false,
};

/// `private_key` is sealed at rest with the project's key.
pub static SIGNING_KEYS: Table = Table {
    name: "signing_keys",
    columns: &[
        column("kid", Kind::Text),
        column("algorithm", Kind::Text),
        column("private_key", Kind::Bytes),
        column("public_key", Kind::Bytes),
        column("created_at", Kind::Int),
        nullable("retired_at", Kind::Int),
    ],
    merge: true,
    sessions: false,
};

pub static SERVICE_KEYS: Table = Table {
    name: "service_keys",
    columns: &[column("hash", Kind::Bytes), column("created_at", Kind::Int)],
    merge: true,
    sessions: false,
};

pub static SESSIONS: Table = Table {
    name: "sessions",
    columns: &[
        column("id", Kind::Text),
        column("user_id", Kind::Text),
        column("created_at", Kind::Int),
        column("expires_at", Kind::Int),
        nullable("revoked_at", Kind::Int),
    ],
    merge: false,
    sessions: true,
};

pub static REFRESH_TOKENS: Table = Table {
    name: "refresh_tokens",
    columns: &[
        column("hash", Kind::Bytes),
        column("session_id", Kind::Text),
        column("created_at", Kind::Int),
        nullable("used_at", Kind::Int),
    ],
    merge: false,
    sessions: true,
};

/// Every portable table, each after the tables its rows refer to.
pub static TABLES: [&Table; 9] = [
    &DOCUMENTS,
    &USERS,
    &IDENTITIES,
    &MFA_TOTP,
    &MFA_RECOVERY_CODES,
    &SIGNING_KEYS,
    &SERVICE_KEYS,
    &SESSIONS,
    &REFRESH_TOKENS,
];

/// The table called `name`.
pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().copied().find(|table| table.name == name)
}

/// The number of a column in a table's rows.
pub fn position(table: &Table, column: &str) -> Option<usize> {
    table.columns.iter().position(|c| c.name == column)
}

/// Rows of a table sent at a time.
pub const BATCH_ROWS: usize = 512;

/// Why an import into a database that already holds a project is refused.
pub fn not_empty(table: &Table) -> super::Error {
    super::Error::FailedPrecondition(format!(
        "the target database already holds {}: import loads into a new, empty database",
        table.name
    ))
}

/// Why an import whose rows stopped coming commits nothing.
pub fn cut_short() -> super::Error {
    super::Error::InvalidArgument("the import stopped before the end of the file; nothing was imported".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_come_after_those_they_refer_to_and_sealed_columns_are_portable() {
        let at = |name| TABLES.iter().position(|t| t.name == name).expect(name);
        for dependent in ["identities", "mfa_totp", "mfa_recovery_codes", "sessions"] {
            assert!(at("users") < at(dependent), "{dependent}");
        }
        assert!(at("sessions") < at("refresh_tokens"));
        for secret in crate::auth::repo::SECRETS {
            let table = table(secret.table).expect(secret.table);
            assert_eq!(table.columns[position(table, secret.column).expect(secret.column)].kind, Kind::Bytes);
            assert!(position(table, secret.owner).is_some(), "{}", secret.owner);
        }
    }
}
