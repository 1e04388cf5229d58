//! Auth's tables on PostgreSQL, on the read pool (auth's statements are short and each
//! stands alone or in its own transaction).

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};

use super::{PgBackend, SqlQuery, pg_error};
use crate::auth::oauth::Pending;
use crate::auth::repo::{
    AuthStore, KeyRecord, OutboxMail, Purpose, Refreshed, SECRETS, Sessions, TICKET_FAILURES, Totp, UserKey,
    UserRecord, resealed,
};
use crate::seal::Keyring;
use crate::store::Error as StoreError;

const USER_COLUMNS: &str = "id, email, email_verified, password_hash, anonymous, disabled, claims, data, providers, created_at, updated_at, mfa";

fn user_from_row(row: &PgRow) -> Result<UserRecord, StoreError> {
    let json_map = |text: String| serde_json::from_str::<Map<String, Value>>(&text).unwrap_or_default();
    let get = |index: usize| row.try_get::<String, _>(index).map_err(pg_error);
    Ok(UserRecord {
        id: get(0)?,
        email: row.try_get(1).map_err(pg_error)?,
        email_verified: row.try_get(2).map_err(pg_error)?,
        password_hash: row.try_get(3).map_err(pg_error)?,
        anonymous: row.try_get(4).map_err(pg_error)?,
        disabled: row.try_get(5).map_err(pg_error)?,
        claims: json_map(get(6)?),
        data: json_map(get(7)?),
        providers: serde_json::from_str(&get(8)?).unwrap_or_default(),
        created_at: row.try_get(9).map_err(pg_error)?,
        updated_at: row.try_get(10).map_err(pg_error)?,
        mfa: row.try_get(11).map_err(pg_error)?,
    })
}

/// Binds the user's columns in `USER_COLUMNS` order.
fn bind_user(query: SqlQuery<'_>, user: UserRecord) -> SqlQuery<'_> {
    query
        .bind(user.id)
        .bind(user.email)
        .bind(user.email_verified)
        .bind(user.password_hash)
        .bind(user.anonymous)
        .bind(user.disabled)
        .bind(Value::Object(user.claims).to_string())
        .bind(Value::Object(user.data).to_string())
        .bind(serde_json::to_string(&user.providers).unwrap_or_else(|_| "[]".into()))
        .bind(user.created_at)
        .bind(user.updated_at)
        .bind(user.mfa)
}

/// A taken e-mail, as the contract says it.
fn unique_to_exists(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            StoreError::AlreadyExists("a user with this e-mail exists".into())
        }
        _ => pg_error(error),
    }
}

fn hash_bytes(hash: [u8; 32]) -> Vec<u8> {
    hash.to_vec()
}

impl PgBackend {
    async fn changed(
        &self,
        sql: &'static str,
        binds: impl FnOnce(SqlQuery<'_>) -> SqlQuery<'_>,
    ) -> Result<bool, StoreError> {
        self.execute(sql, binds).await.map(|rows| rows > 0)
    }

    async fn one<T>(
        &self,
        sql: &'static str,
        binds: impl FnOnce(SqlQuery<'_>) -> SqlQuery<'_>,
    ) -> Result<Option<T>, StoreError>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        let row = binds(sqlx::query(sql)).fetch_optional(self.pool()).await.map_err(pg_error)?;
        row.map(|row| row.try_get(0).map_err(pg_error)).transpose()
    }
}

/// Rate limits in the database, shared by every node on it.
struct PgLimits {
    pool: sqlx::postgres::PgPool,
}

impl crate::auth::limits::SharedLimits for PgLimits {
    fn bucket(
        &self,
        key: String,
        capacity: f64,
        per_second: f64,
        take: bool,
    ) -> BoxFuture<'_, Result<f64, StoreError>> {
        async move {
            let row = sqlx::query("SELECT hearth_bucket($1, $2, $3, $4)")
                .bind(key)
                .bind(capacity)
                .bind(per_second)
                .bind(take)
                .fetch_one(&self.pool)
                .await
                .map_err(pg_error)?;
            row.try_get(0).map_err(pg_error)
        }
        .boxed()
    }

    fn known(
        &self,
        account: String,
        address: String,
        within: std::time::Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            let row = sqlx::query(
                "SELECT 1 FROM sign_in_addresses WHERE account = $1 AND address = $2 \
                 AND at > clock_timestamp() - make_interval(secs => $3)",
            )
            .bind(account)
            .bind(address)
            .bind(within.as_secs_f64())
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(row.is_some())
        }
        .boxed()
    }

    fn remember(&self, account: String, address: String) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            sqlx::query(
                "INSERT INTO sign_in_addresses (account, address, at) VALUES ($1, $2, clock_timestamp()) \
                 ON CONFLICT (account, address) DO UPDATE SET at = excluded.at",
            )
            .bind(account)
            .bind(address)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
            Ok(())
        }
        .boxed()
    }
}

impl AuthStore for PgBackend {
    fn shared_limits(&self) -> Option<std::sync::Arc<dyn crate::auth::limits::SharedLimits>> {
        Some(std::sync::Arc::new(PgLimits { pool: self.pool().clone() }))
    }

    fn reseal_secrets(&self, secrets: Keyring) -> BoxFuture<'_, Result<usize, StoreError>> {
        async move {
            let mut tx = self.pool().begin().await.map_err(pg_error)?;
            // One node at a time, and no value changes under it.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(super::MIGRATION_LOCK + 1)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            let sealed_before = sqlx::query("SELECT 1 FROM meta WHERE key = 'secrets_sealed'")
                .fetch_optional(&mut *tx)
                .await
                .map_err(pg_error)?
                .is_some();
            let mut count = 0;
            for secret in SECRETS {
                let select = format!("SELECT {}, {} FROM {} FOR UPDATE", secret.owner, secret.column, secret.table);
                let rows = sqlx::query(AssertSqlSafe(select)).fetch_all(&mut *tx).await.map_err(pg_error)?;
                for row in rows {
                    let id: String = row.try_get(0).map_err(pg_error)?;
                    let stored: Vec<u8> = row.try_get(1).map_err(pg_error)?;
                    if let Some(sealed) = resealed(&secrets, sealed_before, &(secret.context)(&id), stored)? {
                        let update =
                            format!("UPDATE {} SET {} = $2 WHERE {} = $1", secret.table, secret.column, secret.owner);
                        sqlx::query(AssertSqlSafe(update))
                            .bind(id)
                            .bind(sealed)
                            .execute(&mut *tx)
                            .await
                            .map_err(pg_error)?;
                        count += 1;
                    }
                }
            }
            sqlx::query("INSERT INTO meta (key, value) VALUES ('secrets_sealed', '\\x01') ON CONFLICT DO NOTHING")
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(count)
        }
        .boxed()
    }

    fn insert_user(&self, user: UserRecord, event: String) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let created_at = user.created_at;
            let mut tx = self.pool().begin().await.map_err(pg_error)?;
            let insert = format!(
                "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            );
            bind_user(sqlx::query(AssertSqlSafe(insert)), user).execute(&mut *tx).await.map_err(unique_to_exists)?;
            sqlx::query(
                "WITH next AS (UPDATE user_event_head SET seq = seq + 1 RETURNING seq) \
                 INSERT INTO user_events (seq, \"user\", created_at) SELECT seq, $1, $2 FROM next",
            )
            .bind(event)
            .bind(created_at)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        }
        .boxed()
    }

    fn save_user(&self, user: UserRecord) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            let sql = "UPDATE users SET email = $2, email_verified = $3, password_hash = $4, anonymous = $5, \
                       disabled = $6, claims = $7, data = $8, providers = $9, updated_at = $11, mfa = $12 \
                       WHERE id = $1 AND $10::bigint IS NOT NULL";
            let done = bind_user(sqlx::query(sql), user).execute(self.pool()).await.map_err(unique_to_exists)?;
            Ok(done.rows_affected() > 0)
        }
        .boxed()
    }

    fn user_events_since(&self, after: i64, limit: usize) -> BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>> {
        async move {
            let rows = sqlx::query("SELECT seq, \"user\" FROM user_events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit as i64)
                .fetch_all(self.pool())
                .await
                .map_err(pg_error)?;
            rows.iter().map(|row| Ok((row.try_get(0).map_err(pg_error)?, row.try_get(1).map_err(pg_error)?))).collect()
        }
        .boxed()
    }

    fn last_user_event(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        async move { Ok(self.one::<i64>("SELECT seq FROM user_event_head", |query| query).await?.unwrap_or(0)) }.boxed()
    }

    fn user_event_cursor(&self, name: String) -> BoxFuture<'_, Result<Option<i64>, StoreError>> {
        async move { self.one("SELECT seq FROM user_event_cursors WHERE name = $1", |query| query.bind(name)).await }
            .boxed()
    }

    fn set_user_event_cursor(&self, name: String, seq: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.execute(
                "INSERT INTO user_event_cursors (name, seq) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
                |query| query.bind(name).bind(seq),
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn retain_user_event_cursors(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.execute("DELETE FROM user_event_cursors WHERE NOT (name = ANY($1))", |query| query.bind(names))
                .await
                .map(drop)
        }
        .boxed()
    }

    fn user_by(&self, key: UserKey, value: String) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>> {
        async move {
            let column = match key {
                UserKey::Id => "id",
                UserKey::Email => "email",
            };
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {column} = $1");
            let row =
                sqlx::query(AssertSqlSafe(sql)).bind(value).fetch_optional(self.pool()).await.map_err(pg_error)?;
            row.as_ref().map(user_from_row).transpose()
        }
        .boxed()
    }

    fn list_users(&self, after: Option<String>, limit: usize) -> BoxFuture<'_, Result<Vec<UserRecord>, StoreError>> {
        async move {
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id COLLATE \"C\" LIMIT $2");
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(after.unwrap_or_default())
                .bind(limit as i64 + 1)
                .fetch_all(self.pool())
                .await
                .map_err(pg_error)?;
            rows.iter().map(user_from_row).collect()
        }
        .boxed()
    }

    fn delete_user(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move { self.changed("DELETE FROM users WHERE id = $1", |query| query.bind(id)).await }.boxed()
    }

    fn create_session(
        &self,
        session_id: String,
        user_id: String,
        refresh_hash: [u8; 32],
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut tx = self.pool().begin().await.map_err(pg_error)?;
            sqlx::query("INSERT INTO sessions (id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(&session_id)
                .bind(user_id)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            sqlx::query("INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES ($1, $2, $3)")
                .bind(hash_bytes(refresh_hash))
                .bind(session_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        }
        .boxed()
    }

    fn refresh(&self, hash: [u8; 32], new_hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<Refreshed, StoreError>> {
        async move {
            let mut tx = self.pool().begin().await.map_err(pg_error)?;
            // The token row stays locked to the end: two nodes presenting it at once
            // cannot both rotate it.
            let found = sqlx::query(
                "SELECT t.session_id, t.used_at, s.user_id, s.expires_at, s.revoked_at, s.created_at \
                 FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id WHERE t.hash = $1 FOR UPDATE OF t",
            )
            .bind(hash_bytes(hash))
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg_error)?;
            let Some(row) = found else { return Ok(Refreshed::Refused) };
            let session_id: String = row.try_get(0).map_err(pg_error)?;
            let used_at: Option<i64> = row.try_get(1).map_err(pg_error)?;
            let user_id: String = row.try_get(2).map_err(pg_error)?;
            let expires_at: i64 = row.try_get(3).map_err(pg_error)?;
            let revoked_at: Option<i64> = row.try_get(4).map_err(pg_error)?;
            let created_at: i64 = row.try_get(5).map_err(pg_error)?;
            if used_at.is_some() {
                sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(&session_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)?;
                return Ok(Refreshed::Reused { session_id });
            }
            if revoked_at.is_some() || expires_at <= now {
                return Ok(Refreshed::Refused);
            }
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
            let user =
                sqlx::query(AssertSqlSafe(sql)).bind(user_id).fetch_optional(&mut *tx).await.map_err(pg_error)?;
            let Some(user) = user.as_ref().map(user_from_row).transpose()?.filter(|user| !user.disabled) else {
                return Ok(Refreshed::Refused);
            };
            sqlx::query("UPDATE refresh_tokens SET used_at = $2 WHERE hash = $1")
                .bind(hash_bytes(hash))
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            sqlx::query("INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES ($1, $2, $3)")
                .bind(hash_bytes(new_hash))
                .bind(&session_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(Refreshed::Rotated { session_id, user, signed_in_at: created_at })
        }
        .boxed()
    }

    fn revoke(&self, user_id: String, which: Sessions, now: i64) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        async move {
            let (condition, session) = match which {
                Sessions::One(id) => ("id = $3", Some(id)),
                Sessions::AllBut(id) => ("id <> $3", Some(id)),
                Sessions::All => ("$3::text IS NULL", None),
            };
            let sql = format!(
                "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL AND {condition} RETURNING id"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(user_id)
                .bind(now)
                .bind(session)
                .fetch_all(self.pool())
                .await
                .map_err(pg_error)?;
            rows.iter().map(|row| row.try_get(0).map_err(pg_error)).collect()
        }
        .boxed()
    }

    fn revoked_since(&self, since: i64) -> BoxFuture<'_, Result<Vec<(String, i64)>, StoreError>> {
        async move {
            let rows = sqlx::query("SELECT session_id, at FROM revocations WHERE at >= $1")
                .bind(since)
                .fetch_all(self.pool())
                .await
                .map_err(pg_error)?;
            rows.iter().map(|row| Ok((row.try_get(0).map_err(pg_error)?, row.try_get(1).map_err(pg_error)?))).collect()
        }
        .boxed()
    }

    fn signing_keys(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>> {
        async move {
            let rows = sqlx::query(
                "SELECT kid, private_key, public_key, created_at, retired_at FROM signing_keys ORDER BY created_at",
            )
            .fetch_all(self.pool())
            .await
            .map_err(pg_error)?;
            rows.iter()
                .map(|row| {
                    Ok(KeyRecord {
                        kid: row.try_get(0).map_err(pg_error)?,
                        private_key: row.try_get(1).map_err(pg_error)?,
                        public_key: row.try_get(2).map_err(pg_error)?,
                        created_at: row.try_get(3).map_err(pg_error)?,
                        retired_at: row.try_get(4).map_err(pg_error)?,
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn add_signing_key(&self, key: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut tx = self.pool().begin().await.map_err(pg_error)?;
            sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                .bind(key.created_at)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            sqlx::query(
                "INSERT INTO signing_keys (kid, algorithm, private_key, public_key, created_at) \
                 VALUES ($1, 'EdDSA', $2, $3, $4)",
            )
            .bind(key.kid)
            .bind(key.private_key)
            .bind(key.public_key)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        }
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
        async move {
            self.execute(
                "INSERT INTO mail_tokens (hash, user_id, purpose, email, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                |query| {
                    query
                        .bind(hash_bytes(hash))
                        .bind(user_id)
                        .bind(purpose.as_str())
                        .bind(email)
                        .bind(now)
                        .bind(expires_at)
                },
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn consume_mail_token(
        &self,
        hash: [u8; 32],
        purpose: Purpose,
        now: i64,
    ) -> BoxFuture<'_, Result<Option<(String, String)>, StoreError>> {
        async move {
            let row = sqlx::query(
                "UPDATE mail_tokens SET used_at = $3 WHERE hash = $1 AND purpose = $2 AND used_at IS NULL \
                 AND expires_at > $3 RETURNING user_id, email",
            )
            .bind(hash_bytes(hash))
            .bind(purpose.as_str())
            .bind(now)
            .fetch_optional(self.pool())
            .await
            .map_err(pg_error)?;
            row.map(|row| Ok((row.try_get(0).map_err(pg_error)?, row.try_get(1).map_err(pg_error)?))).transpose()
        }
        .boxed()
    }

    fn add_to_outbox(
        &self,
        to: String,
        subject: String,
        body: String,
        now: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.execute("INSERT INTO outbox (recipient, subject, body, sent_at) VALUES ($1, $2, $3, $4)", |query| {
                query.bind(to).bind(subject).bind(body).bind(now)
            })
            .await
            .map(drop)
        }
        .boxed()
    }

    fn outbox(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxMail>, StoreError>> {
        async move {
            let rows = sqlx::query("SELECT recipient, subject, body, sent_at FROM outbox ORDER BY id DESC LIMIT $1")
                .bind(limit as i64)
                .fetch_all(self.pool())
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|row| {
                    Ok(OutboxMail {
                        to: row.try_get(0).map_err(pg_error)?,
                        subject: row.try_get(1).map_err(pg_error)?,
                        body: row.try_get(2).map_err(pg_error)?,
                        sent_at: crate::store::format_time(row.try_get(3).map_err(pg_error)?),
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn totp(&self, user_id: String) -> BoxFuture<'_, Result<Option<Totp>, StoreError>> {
        async move {
            let row = sqlx::query("SELECT secret, confirmed_at IS NOT NULL FROM mfa_totp WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(self.pool())
                .await
                .map_err(pg_error)?;
            row.map(|row| {
                Ok(Totp { secret: row.try_get(0).map_err(pg_error)?, confirmed: row.try_get(1).map_err(pg_error)? })
            })
            .transpose()
        }
        .boxed()
    }

    fn enrol_totp(&self, user_id: String, sealed: Vec<u8>, now: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            self.changed(
                "INSERT INTO mfa_totp (user_id, secret, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, created_at = excluded.created_at \
                 WHERE mfa_totp.confirmed_at IS NULL",
                |query| query.bind(user_id).bind(sealed).bind(now),
            )
            .await
        }
        .boxed()
    }

    fn use_totp_step(&self, user_id: String, step: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            self.changed("UPDATE mfa_totp SET last_step = $2 WHERE user_id = $1 AND last_step < $2", |query| {
                query.bind(user_id).bind(step)
            })
            .await
        }
        .boxed()
    }

    fn confirm_totp(
        &self,
        user_id: String,
        recovery: Vec<[u8; 32]>,
        now: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut tx = self.pool().begin().await.map_err(pg_error)?;
            sqlx::query("UPDATE mfa_totp SET confirmed_at = $2 WHERE user_id = $1")
                .bind(&user_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
                .bind(&user_id)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            let hashes: Vec<Vec<u8>> = recovery.into_iter().map(hash_bytes).collect();
            sqlx::query("INSERT INTO mfa_recovery_codes (hash, user_id) SELECT unnest($1::bytea[]), $2")
                .bind(hashes)
                .bind(&user_id)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            sqlx::query("UPDATE users SET mfa = TRUE, updated_at = $2 WHERE id = $1")
                .bind(&user_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        }
        .boxed()
    }

    fn use_recovery_code(&self, user_id: String, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            self.changed(
                "UPDATE mfa_recovery_codes SET used_at = $3 WHERE hash = $1 AND user_id = $2 AND used_at IS NULL",
                |query| query.bind(hash_bytes(hash)).bind(user_id).bind(now),
            )
            .await
        }
        .boxed()
    }

    fn remove_totp(&self, user_id: String, now: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut tx = self.pool().begin().await.map_err(pg_error)?;
            for sql in ["DELETE FROM mfa_totp WHERE user_id = $1", "DELETE FROM mfa_recovery_codes WHERE user_id = $1"]
            {
                sqlx::query(sql).bind(&user_id).execute(&mut *tx).await.map_err(pg_error)?;
            }
            sqlx::query("UPDATE users SET mfa = FALSE, updated_at = $2 WHERE id = $1")
                .bind(&user_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        }
        .boxed()
    }

    fn insert_ticket(&self, hash: [u8; 32], user_id: String, expires_at: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.execute("INSERT INTO mfa_tickets (hash, user_id, expires_at) VALUES ($1, $2, $3)", |query| {
                query.bind(hash_bytes(hash)).bind(user_id).bind(expires_at)
            })
            .await
            .map(drop)
        }
        .boxed()
    }

    fn ticket_user(&self, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        async move {
            self.one(
                "SELECT user_id FROM mfa_tickets WHERE hash = $1 AND used_at IS NULL AND expires_at > $2",
                |query| query.bind(hash_bytes(hash)).bind(now),
            )
            .await
        }
        .boxed()
    }

    fn fail_ticket(&self, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.execute(
                "UPDATE mfa_tickets SET failures = failures + 1, \
                 used_at = CASE WHEN failures + 1 >= $3 THEN $2 ELSE used_at END \
                 WHERE hash = $1 AND used_at IS NULL",
                |query| query.bind(hash_bytes(hash)).bind(now).bind(TICKET_FAILURES as i32),
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn spend_ticket(&self, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<bool, StoreError>> {
        async move {
            self.changed("UPDATE mfa_tickets SET used_at = $2 WHERE hash = $1 AND used_at IS NULL", |query| {
                query.bind(hash_bytes(hash)).bind(now)
            })
            .await
        }
        .boxed()
    }

    fn save_pending(
        &self,
        state_hash: [u8; 32],
        pending: Pending,
        expires_at: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.execute(
                "INSERT INTO oauth_states (hash, provider, verifier, nonce, redirect_uri, redirect_to, expires_at, binding) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                |query| {
                    query
                        .bind(hash_bytes(state_hash))
                        .bind(pending.provider)
                        .bind(pending.verifier)
                        .bind(pending.nonce)
                        .bind(pending.redirect_uri)
                        .bind(pending.redirect_to)
                        .bind(expires_at)
                        .bind(pending.binding.to_vec())
                },
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn take_pending(&self, state_hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<Option<Pending>, StoreError>> {
        async move {
            let row = sqlx::query(
                "DELETE FROM oauth_states WHERE hash = $1 AND expires_at > $2 \
                 RETURNING provider, verifier, nonce, redirect_uri, redirect_to, binding",
            )
            .bind(hash_bytes(state_hash))
            .bind(now)
            .fetch_optional(self.pool())
            .await
            .map_err(pg_error)?;
            self.execute("DELETE FROM oauth_states WHERE expires_at <= $1", |query| query.bind(now)).await?;
            row.map(|row| {
                let binding: Option<Vec<u8>> = row.try_get(5).map_err(pg_error)?;
                Ok(Pending {
                    provider: row.try_get(0).map_err(pg_error)?,
                    verifier: row.try_get(1).map_err(pg_error)?,
                    nonce: row.try_get(2).map_err(pg_error)?,
                    redirect_uri: row.try_get(3).map_err(pg_error)?,
                    redirect_to: row.try_get(4).map_err(pg_error)?,
                    binding: binding.and_then(|b| b.try_into().ok()).unwrap_or([0; 32]),
                })
            })
            .transpose()
        }
        .boxed()
    }

    fn identity_user(&self, provider: String, subject: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        async move {
            self.one("SELECT user_id FROM identities WHERE provider = $1 AND subject = $2", |query| {
                query.bind(provider).bind(subject)
            })
            .await
        }
        .boxed()
    }

    fn add_identity(
        &self,
        provider: String,
        subject: String,
        user_id: String,
        now: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.execute(
                "INSERT INTO identities (provider, subject, user_id, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                |query| query.bind(provider).bind(subject).bind(user_id).bind(now),
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn prune(&self, now: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            let day_ago = now - 86_400 * 1_000_000;
            let week_ago = now - 7 * 86_400 * 1_000_000;
            let mut tx = self.pool().begin().await.map_err(pg_error)?;
            let statements: [(&'static str, i64); 10] = [
                (
                    "DELETE FROM refresh_tokens WHERE session_id IN (SELECT id FROM sessions \
                     WHERE expires_at < $1 OR revoked_at < $1)",
                    day_ago,
                ),
                ("DELETE FROM sessions WHERE expires_at < $1 OR revoked_at < $1", day_ago),
                ("DELETE FROM mail_tokens WHERE expires_at < $1 OR used_at IS NOT NULL", now),
                ("DELETE FROM revocations WHERE at < $1", day_ago),
                // A bucket untouched for a day is full again under any window of a day or less.
                ("DELETE FROM rate_buckets WHERE updated_at < to_timestamp($1 / 1e6)", day_ago),
                ("DELETE FROM sign_in_addresses WHERE at < to_timestamp($1 / 1e6) - interval '30 days'", day_ago),
                ("DELETE FROM mfa_tickets WHERE expires_at < $1 OR used_at IS NOT NULL", now),
                ("DELETE FROM oauth_states WHERE expires_at < $1", now),
                // The outbox holds mailed codes in the clear: a day is enough to read them.
                ("DELETE FROM outbox WHERE sent_at < $1", day_ago),
                // User events a week old that every `onUserCreated` function is done with.
                (
                    "DELETE FROM user_events WHERE created_at < $1 \
                     AND seq <= COALESCE((SELECT MIN(seq) FROM user_event_cursors), seq)",
                    week_ago,
                ),
            ];
            let mut pruned = 0;
            for (sql, at) in statements {
                pruned += sqlx::query(sql).bind(at).execute(&mut *tx).await.map_err(pg_error)?.rows_affected();
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(pruned)
        }
        .boxed()
    }
}
