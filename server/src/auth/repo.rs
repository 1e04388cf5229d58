//! Users, sessions, refresh tokens and signing keys in SQLite, through the backend's
//! writer (so auth writes are serialised with document writes) and read pool.

use std::sync::Arc;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

use crate::seal::{Keyring, Opened, WrongKey};
use crate::store::Error as StoreError;
use crate::store::sqlite::SqliteBackend;

/// A user row.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub password_hash: Option<String>,
    pub anonymous: bool,
    pub disabled: bool,
    pub claims: Map<String, Value>,
    pub data: Map<String, Value>,
    pub providers: Vec<String>,
    /// TOTP sign-in is on.
    pub mfa: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

impl UserRecord {
    /// A new enabled user without a password, claims or profile, made `now`.
    pub fn new(email: Option<String>, providers: &[&str], now: i64) -> UserRecord {
        UserRecord {
            id: crate::store::path::new_id(),
            email,
            email_verified: false,
            password_hash: None,
            anonymous: false,
            disabled: false,
            claims: Map::new(),
            data: Map::new(),
            providers: providers.iter().map(|provider| (*provider).to_owned()).collect(),
            mfa: false,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A signing key row.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub kid: String,
    pub private_key: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

/// Which sessions of a user to revoke.
#[derive(Debug, Clone)]
pub enum Sessions {
    One(String),
    AllBut(String),
    All,
}

/// What presenting a refresh token found.
#[derive(Debug)]
pub enum Refreshed {
    /// Rotated: the old token is spent and `new_hash` now stands for the session.
    Rotated { session_id: String, user: UserRecord, signed_in_at: i64 },
    /// A token already spent was presented again: the session is now revoked.
    Reused { session_id: String },
    /// Unknown, expired or revoked session, or a disabled user.
    Refused,
}

/// A refresh token with its session.
struct TokenRow {
    session_id: String,
    used_at: Option<i64>,
    user_id: String,
    expires_at: i64,
    revoked_at: Option<i64>,
    created_at: i64,
}

/// A text parameter.
fn text(value: &str) -> SqlValue {
    SqlValue::Text(value.to_owned())
}

const USER_COLUMNS: &str = "id, email, email_verified, password_hash, anonymous, disabled, claims, data, providers, created_at, updated_at, mfa";

fn user_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    let json_map = |text: String| serde_json::from_str::<Map<String, Value>>(&text).unwrap_or_default();
    Ok(UserRecord {
        id: row.get(0)?,
        email: row.get(1)?,
        email_verified: row.get(2)?,
        password_hash: row.get(3)?,
        anonymous: row.get(4)?,
        disabled: row.get(5)?,
        claims: json_map(row.get(6)?),
        data: json_map(row.get(7)?),
        providers: serde_json::from_str(&row.get::<_, String>(8)?).unwrap_or_default(),
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
        mfa: row.get(11)?,
    })
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(failure, _)
        if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// Storage for auth. Signing keys and TOTP secrets are sealed with `secrets` on their
/// way in and opened on their way out: the database never holds them in the clear.
#[derive(Clone)]
pub struct Repo {
    db: Arc<SqliteBackend>,
    secrets: Keyring,
}

/// What a sealed secret is bound to: it opens only as this kind of secret of this owner.
pub fn signing_key_context(kid: &str) -> String {
    format!("signing-key:{kid}")
}

fn totp_context(user_id: &str) -> String {
    format!("totp-secret:{user_id}")
}

fn wrong_key(error: WrongKey) -> StoreError {
    StoreError::Internal(error.to_string())
}

impl Repo {
    pub fn new(db: Arc<SqliteBackend>, secrets: Keyring) -> Repo {
        Repo { db, secrets }
    }

    /// Seals every secret still in the clear (written before sealing was on) and seals
    /// again with the current key every one a previous key opened, in one transaction;
    /// how many it sealed. Fails, changing nothing, if a secret opens with no known key.
    pub async fn reseal(&self) -> Result<usize, StoreError> {
        let secrets = self.secrets.clone();
        self.db
            .write_with(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let sealed_before = tx
                    .query_row("SELECT 1 FROM meta WHERE key = 'secrets_sealed'", [], |_| Ok(()))
                    .optional()?
                    .is_some();
                let mut resealed = 0;
                for (table, owner, column, context) in [
                    ("signing_keys", "kid", "private_key", signing_key_context as fn(&str) -> String),
                    ("mfa_totp", "user_id", "secret", totp_context),
                ] {
                    let rows: Vec<(String, Vec<u8>)> = tx
                        .prepare(&format!("SELECT {owner}, {column} FROM {table}"))?
                        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                        .collect::<Result<_, _>>()?;
                    for (id, stored) in rows {
                        let context = context(&id);
                        let plain = if sealed_before {
                            match secrets.open(&stored, &context).map_err(wrong_key)? {
                                Opened::Current(_) => continue,
                                Opened::Stale(plain) => plain,
                            }
                        } else {
                            stored
                        };
                        tx.execute(
                            &format!("UPDATE {table} SET {column} = ?2 WHERE {owner} = ?1"),
                            params![id, secrets.seal(&plain, &context)],
                        )?;
                        resealed += 1;
                    }
                }
                tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('secrets_sealed', 1)", [])?;
                tx.commit()?;
                Ok(resealed)
            })
            .await
    }

    /// Runs one statement on the writer; how many rows it changed.
    async fn execute(&self, sql: impl Into<String>, params: Vec<SqlValue>) -> Result<usize, StoreError> {
        let sql = sql.into();
        self.db
            .write_with(move |conn| Ok(conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(params))?))
            .await
    }

    /// Inserts a user and, in the same transaction, its `user_events` row (what
    /// `onUserCreated` functions follow); `AlreadyExists` when the e-mail is taken.
    pub async fn insert_user(&self, user: UserRecord) -> Result<(), StoreError> {
        let sql =
            format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
        let event = serde_json::to_string(&super::wire_user(&user)).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.write_user(sql, user, Some(event)).await.map(drop)
    }

    /// Saves every column of an existing user but `created_at`; `AlreadyExists` when a new
    /// e-mail is taken, `NotFound` when the user is gone.
    pub async fn save_user(&self, user: UserRecord) -> Result<(), StoreError> {
        let sql = "UPDATE users SET email = ?2, email_verified = ?3, password_hash = ?4, anonymous = ?5, \
                   disabled = ?6, claims = ?7, data = ?8, providers = ?9, updated_at = ?11, mfa = ?12 WHERE id = ?1";
        match self.write_user(sql.to_owned(), user, None).await? {
            0 => Err(StoreError::NotFound("no such user".into())),
            _ => Ok(()),
        }
    }

    /// Runs `sql` with the user's columns bound in `USER_COLUMNS` order, and logs `event`
    /// in the same transaction.
    async fn write_user(&self, sql: String, user: UserRecord, event: Option<String>) -> Result<usize, StoreError> {
        let created_at = user.created_at;
        let params: Vec<SqlValue> = vec![
            user.id.into(),
            user.email.into(),
            user.email_verified.into(),
            user.password_hash.into(),
            user.anonymous.into(),
            user.disabled.into(),
            Value::Object(user.claims).to_string().into(),
            Value::Object(user.data).to_string().into(),
            serde_json::to_string(&user.providers).unwrap_or_else(|_| "[]".into()).into(),
            user.created_at.into(),
            user.updated_at.into(),
            user.mfa.into(),
        ];
        self.db
            .write_with(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let changed = match tx.execute(&sql, rusqlite::params_from_iter(params)) {
                    Ok(changed) => changed,
                    Err(error) if is_unique_violation(&error) => {
                        return Err(StoreError::AlreadyExists("a user with this e-mail exists".into()));
                    }
                    Err(error) => return Err(error.into()),
                };
                if let Some(event) = event {
                    tx.execute(
                        "INSERT INTO user_events (user, created_at) VALUES (?1, ?2)",
                        params![event, created_at],
                    )?;
                }
                tx.commit()?;
                Ok(changed)
            })
            .await
    }

    /// Users created after the event `after`, oldest first, at most `limit`: `(seq, user JSON)`.
    pub async fn user_events_since(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        self.db
            .read_with(move |conn| {
                let mut statement =
                    conn.prepare_cached("SELECT seq, user FROM user_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
                let rows = statement.query_map(params![after, limit as i64], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// The `seq` of the last user event (0 if none).
    pub async fn last_user_event(&self) -> Result<i64, StoreError> {
        self.db
            .read_with(
                |conn| Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM user_events", [], |row| row.get(0))?),
            )
            .await
    }

    /// The last user event the function `name` is done with, if it ever started.
    pub async fn user_event_cursor(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let name = name.to_owned();
        self.db
            .read_with(move |conn| {
                Ok(conn
                    .query_row("SELECT seq FROM user_event_cursors WHERE name = ?1", [name], |row| row.get(0))
                    .optional()?)
            })
            .await
    }

    pub async fn set_user_event_cursor(&self, name: &str, seq: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO user_event_cursors (name, seq) VALUES (?1, ?2) \
                   ON CONFLICT (name) DO UPDATE SET seq = excluded.seq";
        self.execute(sql, vec![name.to_owned().into(), seq.into()]).await.map(drop)
    }

    /// Forgets the cursors of functions not in `names` (undeployed).
    pub async fn retain_user_event_cursors(&self, names: Vec<String>) -> Result<(), StoreError> {
        let names = serde_json::to_string(&names).map_err(|error| StoreError::Internal(error.to_string()))?;
        let sql = "DELETE FROM user_event_cursors WHERE name NOT IN (SELECT value FROM json_each(?1))";
        self.execute(sql, vec![names.into()]).await.map(drop)
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.user_where("id", id).await
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.user_where("email", email).await
    }

    /// The user whose unique `column` holds `value`.
    async fn user_where(&self, column: &'static str, value: &str) -> Result<Option<UserRecord>, StoreError> {
        let value = value.to_owned();
        self.db
            .read_with(move |conn| {
                Ok(conn
                    .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = ?1"))?
                    .query_row([value], user_from_row)
                    .optional()?)
            })
            .await
    }

    /// Users with ids after `after`, in id order; one more than `limit` tells whether more follow.
    pub async fn list_users(&self, after: Option<String>, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        self.db
            .read_with(move |conn| {
                let mut statement = conn
                    .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id > ?1 ORDER BY id LIMIT ?2"))?;
                let rows = statement.query_map(params![after.unwrap_or_default(), limit as i64 + 1], user_from_row)?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Deletes a user and, by cascade, its sessions; whether it existed.
    pub async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.execute("DELETE FROM users WHERE id = ?1", vec![text(id)]).await? > 0)
    }

    /// Starts a session with its first refresh token.
    pub async fn create_session(
        &self,
        session_id: String,
        user_id: String,
        refresh_hash: [u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.db
            .write_with(move |conn| {
                let tx = conn.unchecked_transaction()?;
                tx.execute(
                    "INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    params![session_id, user_id, now, expires_at],
                )?;
                tx.execute(
                    "INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES (?1, ?2, ?3)",
                    params![refresh_hash.to_vec(), session_id, now],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// Spends a refresh token and issues `new_hash` in its place, in one transaction;
    /// a spent token presented again revokes its whole session.
    pub async fn refresh(&self, hash: [u8; 32], new_hash: [u8; 32], now: i64) -> Result<Refreshed, StoreError> {
        self.db
            .write_with(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let found = tx
                    .query_row(
                        "SELECT t.session_id, t.used_at, s.user_id, s.expires_at, s.revoked_at, s.created_at \
                         FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = ?1",
                        [hash.to_vec()],
                        |row| {
                            Ok(TokenRow {
                                session_id: row.get(0)?,
                                used_at: row.get(1)?,
                                user_id: row.get(2)?,
                                expires_at: row.get(3)?,
                                revoked_at: row.get(4)?,
                                created_at: row.get(5)?,
                            })
                        },
                    )
                    .optional()?;
                let Some(TokenRow { session_id, used_at, user_id, expires_at, revoked_at, created_at }) = found else {
                    return Ok(Refreshed::Refused);
                };
                if used_at.is_some() {
                    tx.execute(
                        "UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                        params![session_id, now],
                    )?;
                    tx.commit()?;
                    return Ok(Refreshed::Reused { session_id });
                }
                if revoked_at.is_some() || expires_at <= now {
                    return Ok(Refreshed::Refused);
                }
                let user = tx
                    .query_row(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"), [user_id], user_from_row)
                    .optional()?;
                let Some(user) = user.filter(|user| !user.disabled) else {
                    return Ok(Refreshed::Refused);
                };
                tx.execute("UPDATE refresh_tokens SET used_at = ?2 WHERE hash = ?1", params![hash.to_vec(), now])?;
                tx.execute(
                    "INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES (?1, ?2, ?3)",
                    params![new_hash.to_vec(), session_id, now],
                )?;
                tx.commit()?;
                Ok(Refreshed::Rotated { session_id, user, signed_in_at: created_at })
            })
            .await
    }

    /// Revokes sessions of a user: their refresh tokens fail from now on.
    /// Revokes sessions of a user; the ids of those it revoked.
    pub async fn revoke(&self, user_id: &str, which: Sessions, now: i64) -> Result<Vec<String>, StoreError> {
        let (condition, session) = match which {
            Sessions::One(id) => ("id = ?3", Some(id)),
            Sessions::AllBut(id) => ("id != ?3", Some(id)),
            // Always bind ?3, so every form takes the same parameters.
            Sessions::All => ("?3 IS NULL", None),
        };
        let sql = format!(
            "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL AND {condition} RETURNING id"
        );
        let user_id = user_id.to_owned();
        self.db
            .write_with(move |conn| {
                let mut statement = conn.prepare_cached(&sql)?;
                let ids = statement.query_map(params![user_id, now, session], |row| row.get(0))?;
                Ok(ids.collect::<Result<Vec<String>, _>>()?)
            })
            .await
    }

    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys = self.db.read_with(load_keys).await?;
        for key in &mut keys {
            key.private_key =
                self.secrets.open(&key.private_key, &signing_key_context(&key.kid)).map_err(wrong_key)?.into_inner();
        }
        Ok(keys)
    }

    /// Adds a signing key and retires every other one (they stay published until their
    /// tokens have expired).
    pub async fn add_key(&self, mut key: KeyRecord) -> Result<(), StoreError> {
        key.private_key = self.secrets.seal(&key.private_key, &signing_key_context(&key.kid));
        self.db
            .write_with(move |conn| {
                let tx = conn.unchecked_transaction()?;
                tx.execute(
                    "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL",
                    [key.created_at],
                )?;
                tx.execute(
                    "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at) VALUES (?1, 'EdDSA', ?2, ?3, ?4)",
                    params![key.kid, key.private_key, key.public_key, key.created_at],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await
    }
}

fn load_keys(conn: &Connection) -> Result<Vec<KeyRecord>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT kid, private_key, public_key, created_at, retired_at FROM signing_keys ORDER BY created_at",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(KeyRecord {
            kid: row.get(0)?,
            private_key: row.get(1)?,
            public_key: row.get(2)?,
            created_at: row.get(3)?,
            retired_at: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Wrong codes that burn an MFA ticket.
pub const TICKET_FAILURES: u32 = 5;

/// What a mailed token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Verify,
    Reset,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Verify => "verify",
            Purpose::Reset => "reset",
        }
    }
}

/// A mail kept in the outbox.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxMail {
    pub to: String,
    pub subject: String,
    pub body: String,
    pub sent_at: String,
}

impl Repo {
    pub async fn insert_mail_token(
        &self,
        hash: [u8; 32],
        user_id: &str,
        purpose: Purpose,
        email: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let sql = "INSERT INTO mail_tokens (hash, user_id, purpose, email, created_at, expires_at) \
                   VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
        let params = vec![
            hash.to_vec().into(),
            text(user_id),
            text(purpose.as_str()),
            text(email),
            now.into(),
            expires_at.into(),
        ];
        self.execute(sql, params).await.map(drop)
    }

    /// Spends a mailed token: the user and address it was sent for, if it is unused,
    /// unexpired and of this purpose.
    pub async fn consume_mail_token(
        &self,
        hash: [u8; 32],
        purpose: Purpose,
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.db
            .write_with(move |conn| {
                let spent = conn
                    .query_row(
                        "UPDATE mail_tokens SET used_at = ?3 WHERE hash = ?1 AND purpose = ?2 AND used_at IS NULL \
                         AND expires_at > ?3 RETURNING user_id, email",
                        params![hash.to_vec(), purpose.as_str(), now],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                Ok(spent)
            })
            .await
    }

    pub async fn add_to_outbox(&self, to: String, subject: String, body: String, now: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO outbox (recipient, subject, body, sent_at) VALUES (?1, ?2, ?3, ?4)";
        self.execute(sql, vec![to.into(), subject.into(), body.into(), now.into()]).await.map(drop)
    }

    /// The newest mails first, at most `limit`.
    pub async fn outbox(&self, limit: usize) -> Result<Vec<OutboxMail>, StoreError> {
        self.db
            .read_with(move |conn| {
                let mut statement = conn
                    .prepare_cached("SELECT recipient, subject, body, sent_at FROM outbox ORDER BY id DESC LIMIT ?1")?;
                let rows = statement.query_map([limit as i64], |row| {
                    Ok(OutboxMail {
                        to: row.get(0)?,
                        subject: row.get(1)?,
                        body: row.get(2)?,
                        sent_at: crate::store::format_time(row.get(3)?),
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }
}

/// A user's authenticator.
#[derive(Debug, Clone)]
pub struct Totp {
    pub secret: Vec<u8>,
    pub confirmed: bool,
}

impl Repo {
    pub async fn totp(&self, user_id: &str) -> Result<Option<Totp>, StoreError> {
        let owner = user_id.to_owned();
        let stored = self
            .db
            .read_with(move |conn| {
                Ok(conn
                    .prepare_cached("SELECT secret, confirmed_at IS NOT NULL FROM mfa_totp WHERE user_id = ?1")?
                    .query_row([owner], |row| Ok(Totp { secret: row.get(0)?, confirmed: row.get(1)? }))
                    .optional()?)
            })
            .await?;
        stored
            .map(|totp| {
                let secret = self.secrets.open(&totp.secret, &totp_context(user_id)).map_err(wrong_key)?.into_inner();
                Ok(Totp { secret, ..totp })
            })
            .transpose()
    }

    /// Starts (or restarts) an enrolment; false if TOTP is already confirmed.
    pub async fn enrol_totp(&self, user_id: &str, secret: Vec<u8>, now: i64) -> Result<bool, StoreError> {
        let sql = "INSERT INTO mfa_totp (user_id, secret, created_at) VALUES (?1, ?2, ?3) \
                   ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at \
                   WHERE mfa_totp.confirmed_at IS NULL";
        let sealed = self.secrets.seal(&secret, &totp_context(user_id));
        Ok(self.execute(sql, vec![text(user_id), sealed.into(), now.into()]).await? > 0)
    }

    /// Accepts time step `step` for this user once: false if it (or a later one) was used.
    pub async fn use_totp_step(&self, user_id: &str, step: i64) -> Result<bool, StoreError> {
        let sql = "UPDATE mfa_totp SET last_step = ?2 WHERE user_id = ?1 AND last_step < ?2";
        Ok(self.execute(sql, vec![text(user_id), step.into()]).await? > 0)
    }

    /// Confirms an enrolment: TOTP is on, with these recovery codes (hashed).
    pub async fn confirm_totp(&self, user_id: &str, recovery: Vec<[u8; 32]>, now: i64) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.db
            .write_with(move |conn| {
                let tx = conn.unchecked_transaction()?;
                tx.execute("UPDATE mfa_totp SET confirmed_at = ?2 WHERE user_id = ?1", params![user_id, now])?;
                tx.execute("DELETE FROM mfa_recovery_codes WHERE user_id = ?1", [&user_id])?;
                for hash in recovery {
                    tx.execute(
                        "INSERT INTO mfa_recovery_codes (hash, user_id) VALUES (?1, ?2)",
                        params![hash.to_vec(), user_id],
                    )?;
                }
                tx.execute("UPDATE users SET mfa = 1, updated_at = ?2 WHERE id = ?1", params![user_id, now])?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    /// Spends a recovery code of this user; false if unknown or used.
    pub async fn use_recovery_code(&self, user_id: &str, hash: [u8; 32], now: i64) -> Result<bool, StoreError> {
        let sql = "UPDATE mfa_recovery_codes SET used_at = ?3 WHERE hash = ?1 AND user_id = ?2 AND used_at IS NULL";
        Ok(self.execute(sql, vec![hash.to_vec().into(), text(user_id), now.into()]).await? > 0)
    }

    /// Turns TOTP off.
    pub async fn remove_totp(&self, user_id: &str, now: i64) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.db
            .write_with(move |conn| {
                let tx = conn.unchecked_transaction()?;
                tx.execute("DELETE FROM mfa_totp WHERE user_id = ?1", [&user_id])?;
                tx.execute("DELETE FROM mfa_recovery_codes WHERE user_id = ?1", [&user_id])?;
                tx.execute("UPDATE users SET mfa = 0, updated_at = ?2 WHERE id = ?1", params![user_id, now])?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    pub async fn insert_ticket(&self, hash: [u8; 32], user_id: &str, expires_at: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO mfa_tickets (hash, user_id, expires_at) VALUES (?1, ?2, ?3)";
        self.execute(sql, vec![hash.to_vec().into(), text(user_id), expires_at.into()]).await.map(drop)
    }

    /// The user of an unused, unexpired ticket.
    pub async fn ticket_user(&self, hash: [u8; 32], now: i64) -> Result<Option<String>, StoreError> {
        self.db
            .read_with(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT user_id FROM mfa_tickets WHERE hash = ?1 AND used_at IS NULL AND expires_at > ?2",
                    )?
                    .query_row(params![hash.to_vec(), now], |row| row.get(0))
                    .optional()?)
            })
            .await
    }

    /// Counts a wrong code against a ticket; the one that makes [`TICKET_FAILURES`] burns it.
    pub async fn fail_ticket(&self, hash: [u8; 32], now: i64) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE mfa_tickets SET failures = failures + 1, \
             used_at = CASE WHEN failures + 1 >= {TICKET_FAILURES} THEN ?2 ELSE used_at END \
             WHERE hash = ?1 AND used_at IS NULL"
        );
        self.execute(sql, vec![hash.to_vec().into(), now.into()]).await.map(drop)
    }

    /// Spends a ticket; false if someone else spent it first.
    pub async fn spend_ticket(&self, hash: [u8; 32], now: i64) -> Result<bool, StoreError> {
        let sql = "UPDATE mfa_tickets SET used_at = ?2 WHERE hash = ?1 AND used_at IS NULL";
        Ok(self.execute(sql, vec![hash.to_vec().into(), now.into()]).await? > 0)
    }
}

impl Repo {
    pub async fn save_pending(
        &self,
        state_hash: [u8; 32],
        pending: super::oauth::Pending,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.db
            .write_with(move |conn| {
                conn.execute(
                    "INSERT INTO oauth_states (hash, provider, verifier, nonce, redirect_uri, redirect_to, expires_at, binding) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        state_hash.to_vec(),
                        pending.provider,
                        pending.verifier,
                        pending.nonce,
                        pending.redirect_uri,
                        pending.redirect_to,
                        expires_at,
                        pending.binding.to_vec()
                    ],
                )?;
                Ok(())
            })
            .await
    }

    /// Takes (and forgets) a sign-in in flight, if its state is known and fresh.
    pub async fn take_pending(
        &self,
        state_hash: [u8; 32],
        now: i64,
    ) -> Result<Option<super::oauth::Pending>, StoreError> {
        self.db
            .write_with(move |conn| {
                let pending = conn
                    .query_row(
                        "DELETE FROM oauth_states WHERE hash = ?1 AND expires_at > ?2 \
                         RETURNING provider, verifier, nonce, redirect_uri, redirect_to, binding",
                        params![state_hash.to_vec(), now],
                        |row| {
                            // A sign-in started before bindings existed has none, and
                            // matches no cookie.
                            let binding: Option<Vec<u8>> = row.get(5)?;
                            Ok(super::oauth::Pending {
                                provider: row.get(0)?,
                                verifier: row.get(1)?,
                                nonce: row.get(2)?,
                                redirect_uri: row.get(3)?,
                                redirect_to: row.get(4)?,
                                binding: binding.and_then(|b| b.try_into().ok()).unwrap_or([0; 32]),
                            })
                        },
                    )
                    .optional()?;
                conn.execute("DELETE FROM oauth_states WHERE expires_at <= ?1", [now])?;
                Ok(pending)
            })
            .await
    }

    /// The user who signed in with this provider identity before.
    pub async fn identity_user(&self, provider: &str, subject: &str) -> Result<Option<String>, StoreError> {
        let (provider, subject) = (provider.to_owned(), subject.to_owned());
        self.db
            .read_with(move |conn| {
                Ok(conn
                    .prepare_cached("SELECT user_id FROM identities WHERE provider = ?1 AND subject = ?2")?
                    .query_row([provider, subject], |row| row.get(0))
                    .optional()?)
            })
            .await
    }

    pub async fn add_identity(&self, provider: &str, subject: &str, user_id: &str, now: i64) -> Result<(), StoreError> {
        let sql = "INSERT OR IGNORE INTO identities (provider, subject, user_id, created_at) VALUES (?1, ?2, ?3, ?4)";
        self.execute(sql, vec![text(provider), text(subject), text(user_id), now.into()]).await.map(drop)
    }
}

impl Repo {
    /// The user linked to a provider identity, if any.
    pub async fn user_by_id_for_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        match self.identity_user(provider, subject).await? {
            Some(user_id) => self.user_by_id(&user_id).await,
            None => Ok(None),
        }
    }
}

impl Repo {
    /// Forgets what can no longer be used: tokens and sessions that expired or were
    /// revoked a day ago or more, spent or expired codes, tickets and OAuth states, mail
    /// of the outbox a day old.
    /// Returns how many rows went.
    pub async fn prune(&self, now: i64) -> Result<u64, StoreError> {
        let day_ago = now - 86_400 * 1_000_000;
        self.db
            .write_with(move |conn| {
                let tx = conn.unchecked_transaction()?;
                let mut pruned = tx.execute(
                    "DELETE FROM refresh_tokens WHERE session_id IN (SELECT id FROM sessions \
                     WHERE expires_at < ?1 OR revoked_at < ?1)",
                    [day_ago],
                )?;
                pruned += tx.execute("DELETE FROM sessions WHERE expires_at < ?1 OR revoked_at < ?1", [day_ago])?;
                pruned += tx.execute("DELETE FROM mail_tokens WHERE expires_at < ?1 OR used_at IS NOT NULL", [now])?;
                pruned += tx.execute("DELETE FROM mfa_tickets WHERE expires_at < ?1 OR used_at IS NOT NULL", [now])?;
                pruned += tx.execute("DELETE FROM oauth_states WHERE expires_at < ?1", [now])?;
                // The outbox holds mailed codes in the clear: a day is enough to read them.
                pruned += tx.execute("DELETE FROM outbox WHERE sent_at < ?1", [day_ago])?;
                // User events a week old that every `onUserCreated` function is done with.
                pruned += tx.execute(
                    "DELETE FROM user_events WHERE created_at < ?1 \
                     AND seq <= COALESCE((SELECT MIN(seq) FROM user_event_cursors), seq)",
                    [now - 7 * 86_400 * 1_000_000],
                )?;
                tx.commit()?;
                Ok(pruned as u64)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::ChangeBus;
    use crate::store::sqlite::SqliteOptions;

    fn user(id: &str) -> UserRecord {
        UserRecord { id: id.into(), ..UserRecord::new(Some(format!("{id}@example.com")), &["password"], 0) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruning_forgets_only_what_can_no_longer_be_used() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteOptions::new(dir.path().join("auth.db"), &StoreConfig::default());
        let repo = Repo::new(
            Arc::new(SqliteBackend::open(options, ChangeBus::new(1 << 20)).expect("database")),
            crate::seal::Keyring::new([5; 32], &[]),
        );
        let now = 10 * 86_400 * 1_000_000;
        repo.insert_user(user("u1")).await.expect("user");
        repo.create_session("live".into(), "u1".into(), [1; 32], now, now + 1_000_000).await.expect("session");
        repo.create_session("old".into(), "u1".into(), [2; 32], 0, now - 2 * 86_400 * 1_000_000)
            .await
            .expect("session");
        repo.insert_mail_token([3; 32], "u1", Purpose::Verify, "u1@example.com", 0, now - 1).await.expect("token");
        repo.insert_mail_token([4; 32], "u1", Purpose::Reset, "u1@example.com", 0, now + 1_000_000)
            .await
            .expect("token");
        // A user function has not seen u1's creation yet.
        repo.set_user_event_cursor("welcome", 0).await.expect("cursor");
        // Expired session: its session and refresh token; expired mail token: itself.
        assert_eq!(repo.prune(now).await.expect("pruned"), 3);
        assert_eq!(repo.user_events_since(0, 10).await.expect("events").len(), 1, "an unseen event stays");
        assert!(matches!(repo.refresh([1; 32], [5; 32], now).await.expect("refresh"), Refreshed::Rotated { .. }));
        assert!(repo.consume_mail_token([4; 32], Purpose::Reset, now).await.expect("consume").is_some());
        repo.set_user_event_cursor("welcome", 1).await.expect("cursor");
        assert_eq!(repo.prune(now).await.expect("pruned"), 2, "a spent mail token and a week-old seen event go");
    }
}
