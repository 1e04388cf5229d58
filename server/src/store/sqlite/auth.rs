//! Users, sessions, refresh tokens, signing keys and the rest of auth's tables in SQLite,
//! through the backend's writer (so auth writes are serialised with document writes) and
//! read pool.

use futures::FutureExt;
use futures::future::BoxFuture;
use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, params};
use serde_json::{Map, Value};

use super::SqliteBackend;
use crate::auth::oauth::Pending;
use crate::auth::repo::{
    AuthStore, KeyRecord, OutboxMail, Purpose, Refreshed, SECRETS, Sessions, TICKET_FAILURES, Totp, UserKey,
    UserRecord, resealed,
};
use crate::seal::Keyring;
use crate::store::Error as StoreError;

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

/// The user's columns in `USER_COLUMNS` order.
fn user_params(user: UserRecord) -> Vec<SqlValue> {
    vec![
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
    ]
}

impl SqliteBackend {
    /// Runs one statement on the writer; how many rows it changed.
    fn execute(&self, sql: impl Into<String>, params: Vec<SqlValue>) -> BoxFuture<'_, Result<usize, StoreError>> {
        let sql = sql.into();
        self.write_with(move |conn| Ok(conn.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(params))?)).boxed()
    }

    /// [`SqliteBackend::execute`], for statements whose count does not matter.
    fn run(&self, sql: impl Into<String>, params: Vec<SqlValue>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.execute(sql, params).map(|done| done.map(drop)).boxed()
    }

    /// [`SqliteBackend::execute`]: whether it changed a row.
    fn changed(&self, sql: impl Into<String>, params: Vec<SqlValue>) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.execute(sql, params).map(|done| done.map(|rows| rows > 0)).boxed()
    }

    /// Runs `sql` with the user's columns, and logs `event` in the same transaction.
    fn write_user(
        &self,
        sql: String,
        user: UserRecord,
        event: Option<String>,
    ) -> BoxFuture<'_, Result<usize, StoreError>> {
        let created_at = user.created_at;
        let params = user_params(user);
        self.write_with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let changed = match tx.execute(&sql, rusqlite::params_from_iter(params)) {
                Ok(changed) => changed,
                Err(error) if is_unique_violation(&error) => {
                    return Err(StoreError::AlreadyExists("a user with this e-mail exists".into()));
                }
                Err(error) => return Err(error.into()),
            };
            if let Some(event) = event {
                tx.execute("INSERT INTO user_events (user, created_at) VALUES (?1, ?2)", params![event, created_at])?;
            }
            tx.commit()?;
            Ok(changed)
        })
        .boxed()
    }
}

impl AuthStore for SqliteBackend {
    fn reseal_secrets(&self, secrets: Keyring) -> BoxFuture<'_, Result<usize, StoreError>> {
        self.write_with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let sealed_before =
                tx.query_row("SELECT 1 FROM meta WHERE key = 'secrets_sealed'", [], |_| Ok(())).optional()?.is_some();
            let mut count = 0;
            for secret in SECRETS {
                let rows: Vec<(String, Vec<u8>)> = tx
                    .prepare(&format!("SELECT {}, {} FROM {}", secret.owner, secret.column, secret.table))?
                    .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                for (id, stored) in rows {
                    if let Some(sealed) = resealed(&secrets, sealed_before, &(secret.context)(&id), stored)? {
                        let sql =
                            format!("UPDATE {} SET {} = ?2 WHERE {} = ?1", secret.table, secret.column, secret.owner);
                        tx.execute(&sql, params![id, sealed])?;
                        count += 1;
                    }
                }
            }
            tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('secrets_sealed', 1)", [])?;
            tx.commit()?;
            Ok(count)
        })
        .boxed()
    }

    fn insert_user(&self, user: UserRecord, event: String) -> BoxFuture<'_, Result<(), StoreError>> {
        let sql =
            format!("INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
        self.write_user(sql, user, Some(event)).map(|done| done.map(drop)).boxed()
    }

    fn save_user(&self, user: UserRecord) -> BoxFuture<'_, Result<bool, StoreError>> {
        let sql = "UPDATE users SET email = ?2, email_verified = ?3, password_hash = ?4, anonymous = ?5, \
                   disabled = ?6, claims = ?7, data = ?8, providers = ?9, updated_at = ?11, mfa = ?12 WHERE id = ?1";
        self.write_user(sql.to_owned(), user, None).map(|done| done.map(|rows| rows > 0)).boxed()
    }

    fn user_events_since(&self, after: i64, limit: usize) -> BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>> {
        self.read_with(move |conn| {
            let mut statement =
                conn.prepare_cached("SELECT seq, user FROM user_events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
            let rows = statement.query_map(params![after, limit as i64], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .boxed()
    }

    fn last_user_event(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        self.read_with(
            |conn| Ok(conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM user_events", [], |row| row.get(0))?),
        )
        .boxed()
    }

    fn user_event_cursor(&self, name: String) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        self.read_with(move |conn| {
            Ok(conn
                .query_row("SELECT seq FROM user_event_cursors WHERE name = ?1", [name], |row| row.get(0))
                .optional()?)
        })
        .boxed()
    }

    fn set_user_event_cursor(&self, name: String, seq: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let sql = "INSERT INTO user_event_cursors (name, seq) VALUES (?1, ?2) \
                   ON CONFLICT (name) DO UPDATE SET seq = excluded.seq";
        self.run(sql, vec![name.into(), seq.into()])
    }

    fn retain_user_event_cursors(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        let names = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
        let sql = "DELETE FROM user_event_cursors WHERE name NOT IN (SELECT value FROM json_each(?1))";
        self.run(sql, vec![names.into()])
    }

    fn user_by(&self, key: UserKey, value: String) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>> {
        let column = match key {
            UserKey::Id => "id",
            UserKey::Email => "email",
        };
        self.read_with(move |conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = ?1"))?
                .query_row([value], user_from_row)
                .optional()?)
        })
        .boxed()
    }

    fn list_users(&self, after: Option<String>, limit: usize) -> BoxFuture<'_, Result<Vec<UserRecord>, StoreError>> {
        self.read_with(move |conn| {
            let mut statement =
                conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id > ?1 ORDER BY id LIMIT ?2"))?;
            let rows = statement.query_map(params![after.unwrap_or_default(), limit as i64 + 1], user_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .boxed()
    }

    fn delete_user(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.changed("DELETE FROM users WHERE id = ?1", vec![id.into()])
    }

    fn create_session(
        &self,
        session_id: String,
        user_id: String,
        refresh_hash: [u8; 32],
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write_with(move |conn| {
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
        .boxed()
    }

    fn refresh(&self, hash: [u8; 32], new_hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<Refreshed, StoreError>> {
        self.write_with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            type Found = (String, Option<i64>, String, i64, Option<i64>, i64);
            let found: Option<Found> = tx
                .query_row(
                    "SELECT t.session_id, t.used_at, s.user_id, s.expires_at, s.revoked_at, s.created_at \
                     FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = ?1",
                    [hash.to_vec()],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?)),
                )
                .optional()?;
            let Some((session_id, used_at, user_id, expires_at, revoked_at, created_at)) = found else {
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
        .boxed()
    }

    fn revoke(&self, user_id: String, which: Sessions, now: i64) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        let (condition, session) = match which {
            Sessions::One(id) => ("id = ?3", Some(id)),
            Sessions::AllBut(id) => ("id != ?3", Some(id)),
            // Always bind ?3, so every form takes the same parameters.
            Sessions::All => ("?3 IS NULL", None),
        };
        let sql = format!(
            "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL AND {condition} RETURNING id"
        );
        self.write_with(move |conn| {
            let mut statement = conn.prepare_cached(&sql)?;
            let ids = statement.query_map(params![user_id, now, session], |row| row.get(0))?;
            Ok(ids.collect::<Result<Vec<String>, _>>()?)
        })
        .boxed()
    }

    fn signing_keys(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>> {
        self.read_with(|conn| {
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
        })
        .boxed()
    }

    fn add_signing_key(&self, key: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write_with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            tx.execute("UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL", [key.created_at])?;
            tx.execute(
                "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at) VALUES (?1, 'EdDSA', ?2, ?3, ?4)",
                params![key.kid, key.private_key, key.public_key, key.created_at],
            )?;
            tx.commit()?;
            Ok(())
        })
        .boxed()
    }

    fn insert_mail_token(
        &self,
        hash: [u8; 32],
        user_id: String,
        purpose: Purpose,
        email: String,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let sql = "INSERT INTO mail_tokens (hash, user_id, purpose, email, created_at, expires_at) \
                   VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
        let params = vec![
            hash.to_vec().into(),
            user_id.into(),
            purpose.as_str().to_owned().into(),
            email.into(),
            now.into(),
            expires_at.into(),
        ];
        self.run(sql, params)
    }

    fn consume_mail_token(
        &self,
        hash: [u8; 32],
        purpose: Purpose,
        now: i64,
    ) -> BoxFuture<'_, Result<Option<(String, String)>, StoreError>> {
        self.write_with(move |conn| {
            Ok(conn
                .query_row(
                    "UPDATE mail_tokens SET used_at = ?3 WHERE hash = ?1 AND purpose = ?2 AND used_at IS NULL \
                     AND expires_at > ?3 RETURNING user_id, email",
                    params![hash.to_vec(), purpose.as_str(), now],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?)
        })
        .boxed()
    }

    fn add_to_outbox(
        &self,
        to: String,
        subject: String,
        body: String,
        now: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let sql = "INSERT INTO outbox (recipient, subject, body, sent_at) VALUES (?1, ?2, ?3, ?4)";
        self.run(sql, vec![to.into(), subject.into(), body.into(), now.into()])
    }

    fn outbox(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxMail>, StoreError>> {
        self.read_with(move |conn| {
            let mut statement =
                conn.prepare_cached("SELECT recipient, subject, body, sent_at FROM outbox ORDER BY id DESC LIMIT ?1")?;
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
        .boxed()
    }

    fn totp(&self, user_id: String) -> BoxFuture<'_, Result<Option<Totp>, StoreError>> {
        self.read_with(move |conn| {
            Ok(conn
                .prepare_cached("SELECT secret, confirmed_at IS NOT NULL FROM mfa_totp WHERE user_id = ?1")?
                .query_row([user_id], |row| Ok(Totp { secret: row.get(0)?, confirmed: row.get(1)? }))
                .optional()?)
        })
        .boxed()
    }

    fn enrol_totp(&self, user_id: String, sealed: Vec<u8>, now: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        let sql = "INSERT INTO mfa_totp (user_id, secret, created_at) VALUES (?1, ?2, ?3) \
                   ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at \
                   WHERE mfa_totp.confirmed_at IS NULL";
        self.changed(sql, vec![user_id.into(), sealed.into(), now.into()])
    }

    fn use_totp_step(&self, user_id: String, step: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        let sql = "UPDATE mfa_totp SET last_step = ?2 WHERE user_id = ?1 AND last_step < ?2";
        self.changed(sql, vec![user_id.into(), step.into()])
    }

    fn confirm_totp(
        &self,
        user_id: String,
        recovery: Vec<[u8; 32]>,
        now: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write_with(move |conn| {
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
        .boxed()
    }

    fn use_recovery_code(&self, user_id: String, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        let sql = "UPDATE mfa_recovery_codes SET used_at = ?3 WHERE hash = ?1 AND user_id = ?2 AND used_at IS NULL";
        self.changed(sql, vec![hash.to_vec().into(), user_id.into(), now.into()])
    }

    fn remove_totp(&self, user_id: String, now: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write_with(move |conn| {
            let tx = conn.unchecked_transaction()?;
            tx.execute("DELETE FROM mfa_totp WHERE user_id = ?1", [&user_id])?;
            tx.execute("DELETE FROM mfa_recovery_codes WHERE user_id = ?1", [&user_id])?;
            tx.execute("UPDATE users SET mfa = 0, updated_at = ?2 WHERE id = ?1", params![user_id, now])?;
            tx.commit()?;
            Ok(())
        })
        .boxed()
    }

    fn insert_ticket(&self, hash: [u8; 32], user_id: String, expires_at: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let sql = "INSERT INTO mfa_tickets (hash, user_id, expires_at) VALUES (?1, ?2, ?3)";
        self.run(sql, vec![hash.to_vec().into(), user_id.into(), expires_at.into()])
    }

    fn ticket_user(&self, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        self.read_with(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT user_id FROM mfa_tickets WHERE hash = ?1 AND used_at IS NULL AND expires_at > ?2",
                )?
                .query_row(params![hash.to_vec(), now], |row| row.get(0))
                .optional()?)
        })
        .boxed()
    }

    fn fail_ticket(&self, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let sql = format!(
            "UPDATE mfa_tickets SET failures = failures + 1, \
             used_at = CASE WHEN failures + 1 >= {TICKET_FAILURES} THEN ?2 ELSE used_at END \
             WHERE hash = ?1 AND used_at IS NULL"
        );
        self.run(sql, vec![hash.to_vec().into(), now.into()])
    }

    fn spend_ticket(&self, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        let sql = "UPDATE mfa_tickets SET used_at = ?2 WHERE hash = ?1 AND used_at IS NULL";
        self.changed(sql, vec![hash.to_vec().into(), now.into()])
    }

    fn save_pending(
        &self,
        state_hash: [u8; 32],
        pending: Pending,
        expires_at: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.write_with(move |conn| {
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
        .boxed()
    }

    fn take_pending(&self, state_hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<Option<Pending>, StoreError>> {
        self.write_with(move |conn| {
            let pending = conn
                .query_row(
                    "DELETE FROM oauth_states WHERE hash = ?1 AND expires_at > ?2 \
                     RETURNING provider, verifier, nonce, redirect_uri, redirect_to, binding",
                    params![state_hash.to_vec(), now],
                    |row| {
                        // A sign-in started before bindings existed has none, and matches
                        // no cookie.
                        let binding: Option<Vec<u8>> = row.get(5)?;
                        Ok(Pending {
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
        .boxed()
    }

    fn identity_user(&self, provider: String, subject: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        self.read_with(move |conn| {
            Ok(conn
                .prepare_cached("SELECT user_id FROM identities WHERE provider = ?1 AND subject = ?2")?
                .query_row([provider, subject], |row| row.get(0))
                .optional()?)
        })
        .boxed()
    }

    fn add_identity(
        &self,
        provider: String,
        subject: String,
        user_id: String,
        now: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let sql = "INSERT OR IGNORE INTO identities (provider, subject, user_id, created_at) VALUES (?1, ?2, ?3, ?4)";
        self.run(sql, vec![provider.into(), subject.into(), user_id.into(), now.into()])
    }

    fn prune(&self, now: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        let day_ago = now - 86_400 * 1_000_000;
        self.write_with(move |conn| {
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
        .boxed()
    }
}
