//! Auth's storage: the records it keeps, the [`AuthStore`] each backend implements
//! (`store::sqlite::auth`, `store::postgres::auth`), and [`Repo`], which auth uses. Signing
//! keys and TOTP secrets are sealed in `Repo` on their way in and opened on their way out,
//! the same for every backend: no database holds them in the clear.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::oauth::Pending;
use crate::seal::{Keyring, Opened, WrongKey};
use crate::store::Error as StoreError;

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

/// Wrong codes that burn an MFA ticket.
pub const TICKET_FAILURES: u32 = 5;

/// What a mailed token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Verify,
    Reset,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
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

/// A user's authenticator.
#[derive(Debug, Clone)]
pub struct Totp {
    pub secret: Vec<u8>,
    pub confirmed: bool,
}

/// Which unique column finds a user.
#[derive(Debug, Clone, Copy)]
pub enum UserKey {
    Id,
    Email,
}

/// The statements auth needs, per backend. Secrets pass through sealed.
pub trait AuthStore: Send + Sync + 'static {
    /// In one transaction, stores again every secret of [`SECRETS`] that [`resealed`]
    /// says to, and notes that secrets are sealed; how many it stored.
    fn reseal_secrets(&self, secrets: Keyring) -> BoxFuture<'_, Result<usize, StoreError>>;
    /// Inserts a user and, in the same transaction, its `user_events` row (`event`, the
    /// user as JSON); `AlreadyExists` when the e-mail is taken.
    fn insert_user(&self, user: UserRecord, event: String) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Saves every column but `created_at`; false when the user is gone, `AlreadyExists`
    /// when a new e-mail is taken.
    fn save_user(&self, user: UserRecord) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Users created after the event `after`, oldest first: `(seq, user JSON)`.
    fn user_events_since(&self, after: i64, limit: usize) -> BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>>;
    /// The `seq` of the last user event (0 if none).
    fn last_user_event(&self) -> BoxFuture<'_, Result<i64, StoreError>>;
    fn user_event_cursor(&self, name: String) -> BoxFuture<'_, Result<Option<i64>, StoreError>>;
    fn set_user_event_cursor(&self, name: String, seq: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Forgets the cursors of functions not in `names` (undeployed).
    fn retain_user_event_cursors(&self, names: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>>;
    fn user_by(&self, key: UserKey, value: String) -> BoxFuture<'_, Result<Option<UserRecord>, StoreError>>;
    /// Users with ids after `after`, in id order, `limit + 1` of them at most.
    fn list_users(&self, after: Option<String>, limit: usize) -> BoxFuture<'_, Result<Vec<UserRecord>, StoreError>>;
    /// Deletes a user and, by cascade, what is its; whether it existed.
    fn delete_user(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Starts a session with its first refresh token.
    fn create_session(
        &self,
        session_id: String,
        user_id: String,
        refresh_hash: [u8; 32],
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Spends a refresh token and issues `new_hash` in its place, in one transaction; a
    /// spent token presented again revokes its whole session.
    fn refresh(&self, hash: [u8; 32], new_hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<Refreshed, StoreError>>;
    /// Revokes sessions of a user; the ids of those it revoked.
    fn revoke(&self, user_id: String, which: Sessions, now: i64) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
    /// Sessions revoked at or after `since` (µs, the database's clock), with when: how a
    /// node learns of revocations made on the others. A database one node has alone
    /// (SQLite) has none to tell.
    fn revoked_since(&self, since: i64) -> BoxFuture<'_, Result<Vec<(String, i64)>, StoreError>> {
        let _ = since;
        futures::FutureExt::boxed(async { Ok(Vec::new()) })
    }
    /// Where rate limits live when several nodes share this database; `None`: in each
    /// node's memory.
    fn shared_limits(&self) -> Option<Arc<dyn crate::auth::limits::SharedLimits>> {
        None
    }
    /// Every signing key, oldest first, private keys sealed.
    fn signing_keys(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>>;
    /// Adds a signing key (sealed) and retires every other one.
    fn add_signing_key(&self, key: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    fn insert_mail_token(
        &self,
        hash: [u8; 32],
        user_id: String,
        purpose: Purpose,
        email: String,
        now: i64,
        expires_at: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Spends a mailed token: the user and address it was sent for, if it is unused,
    /// unexpired and of this purpose.
    fn consume_mail_token(
        &self,
        hash: [u8; 32],
        purpose: Purpose,
        now: i64,
    ) -> BoxFuture<'_, Result<Option<(String, String)>, StoreError>>;
    fn add_to_outbox(
        &self,
        to: String,
        subject: String,
        body: String,
        now: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The newest mails first, at most `limit`.
    fn outbox(&self, limit: usize) -> BoxFuture<'_, Result<Vec<OutboxMail>, StoreError>>;
    /// The user's authenticator, its secret sealed.
    fn totp(&self, user_id: String) -> BoxFuture<'_, Result<Option<Totp>, StoreError>>;
    /// Starts (or restarts) an enrolment with a sealed secret; false if TOTP is already on.
    fn enrol_totp(&self, user_id: String, sealed: Vec<u8>, now: i64) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Accepts time step `step` once: false if it (or a later one) was used.
    fn use_totp_step(&self, user_id: String, step: i64) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// TOTP is on, with these recovery codes (hashed).
    fn confirm_totp(&self, user_id: String, recovery: Vec<[u8; 32]>, now: i64)
    -> BoxFuture<'_, Result<(), StoreError>>;
    /// Spends a recovery code of this user; false if unknown or used.
    fn use_recovery_code(&self, user_id: String, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<bool, StoreError>>;
    fn remove_totp(&self, user_id: String, now: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    fn insert_ticket(&self, hash: [u8; 32], user_id: String, expires_at: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The user of an unused, unexpired ticket.
    fn ticket_user(&self, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
    /// Counts a wrong code against a ticket; the one that makes [`TICKET_FAILURES`] burns it.
    fn fail_ticket(&self, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Spends a ticket; false if someone else spent it first.
    fn spend_ticket(&self, hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<bool, StoreError>>;
    fn save_pending(
        &self,
        state_hash: [u8; 32],
        pending: Pending,
        expires_at: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Takes (and forgets) a sign-in in flight, if its state is known and fresh.
    fn take_pending(&self, state_hash: [u8; 32], now: i64) -> BoxFuture<'_, Result<Option<Pending>, StoreError>>;
    /// The user who signed in with this provider identity before.
    fn identity_user(&self, provider: String, subject: String) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
    fn add_identity(
        &self,
        provider: String,
        subject: String,
        user_id: String,
        now: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Forgets what can no longer be used: tokens and sessions that expired or were
    /// revoked a day ago or more, spent or expired codes, tickets and OAuth states, mail
    /// of the outbox a day old, user events a week old every function is done with.
    /// Returns how many rows went.
    fn prune(&self, now: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// A secret column sealed at rest.
pub struct SecretColumn {
    pub table: &'static str,
    pub owner: &'static str,
    pub column: &'static str,
    /// What a value of this column is bound to, from its owner.
    pub context: fn(&str) -> String,
}

/// Every column that holds a secret sealed at rest.
pub const SECRETS: [SecretColumn; 2] = [
    SecretColumn { table: "signing_keys", owner: "kid", column: "private_key", context: signing_key_context },
    SecretColumn { table: "mfa_totp", owner: "user_id", column: "secret", context: totp_context },
];

/// What sealing at start does to one stored value: `Some` to store instead, `None` to
/// leave it. Values from before sealing (`sealed_before` false) are sealed; sealed ones
/// are sealed again when a previous key opened them; one no key opens fails the start.
pub fn resealed(
    secrets: &Keyring,
    sealed_before: bool,
    context: &str,
    stored: Vec<u8>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let plain = if sealed_before {
        match secrets.open(&stored, context).map_err(wrong_key)? {
            Opened::Current(_) => return Ok(None),
            Opened::Stale(plain) => plain,
        }
    } else {
        stored
    };
    Ok(Some(secrets.seal(&plain, context)))
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

/// Storage for auth, on whichever backend the server runs.
#[derive(Clone)]
pub struct Repo {
    store: Arc<dyn AuthStore>,
    secrets: Keyring,
}

impl Repo {
    pub fn new(store: Arc<dyn AuthStore>, secrets: Keyring) -> Repo {
        Repo { store, secrets }
    }

    /// Seals every secret still in the clear (written before sealing was on) and seals
    /// again with the current key every one a previous key opened, in one transaction;
    /// how many it sealed. Fails, changing nothing, if a secret opens with no known key.
    pub async fn reseal(&self) -> Result<usize, StoreError> {
        self.store.reseal_secrets(self.secrets.clone()).await
    }

    /// Inserts a user and its `user_events` row (what `onUserCreated` functions follow);
    /// `AlreadyExists` when the e-mail is taken.
    pub async fn insert_user(&self, user: UserRecord) -> Result<(), StoreError> {
        let event = serde_json::to_string(&super::wire_user(&user)).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.store.insert_user(user, event).await
    }

    /// Saves every column of an existing user but `created_at`; `AlreadyExists` when a new
    /// e-mail is taken, `NotFound` when the user is gone.
    pub async fn save_user(&self, user: UserRecord) -> Result<(), StoreError> {
        match self.store.save_user(user).await? {
            false => Err(StoreError::NotFound("no such user".into())),
            true => Ok(()),
        }
    }

    pub async fn user_events_since(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>, StoreError> {
        self.store.user_events_since(after, limit).await
    }

    pub async fn last_user_event(&self) -> Result<i64, StoreError> {
        self.store.last_user_event().await
    }

    pub async fn user_event_cursor(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.store.user_event_cursor(name.to_owned()).await
    }

    pub async fn set_user_event_cursor(&self, name: &str, seq: i64) -> Result<(), StoreError> {
        self.store.set_user_event_cursor(name.to_owned(), seq).await
    }

    pub async fn retain_user_event_cursors(&self, names: Vec<String>) -> Result<(), StoreError> {
        self.store.retain_user_event_cursors(names).await
    }

    pub async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        self.store.user_by(UserKey::Id, id.to_owned()).await
    }

    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.store.user_by(UserKey::Email, email.to_owned()).await
    }

    /// Users with ids after `after`, in id order; one more than `limit` tells whether more follow.
    pub async fn list_users(&self, after: Option<String>, limit: usize) -> Result<Vec<UserRecord>, StoreError> {
        self.store.list_users(after, limit).await
    }

    /// Deletes a user and, by cascade, its sessions; whether it existed.
    pub async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        self.store.delete_user(id.to_owned()).await
    }

    pub async fn create_session(
        &self,
        session_id: String,
        user_id: String,
        refresh_hash: [u8; 32],
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.store.create_session(session_id, user_id, refresh_hash, now, expires_at).await
    }

    pub async fn refresh(&self, hash: [u8; 32], new_hash: [u8; 32], now: i64) -> Result<Refreshed, StoreError> {
        self.store.refresh(hash, new_hash, now).await
    }

    pub async fn revoke(&self, user_id: &str, which: Sessions, now: i64) -> Result<Vec<String>, StoreError> {
        self.store.revoke(user_id.to_owned(), which, now).await
    }

    pub fn shared_limits(&self) -> Option<Arc<dyn crate::auth::limits::SharedLimits>> {
        self.store.shared_limits()
    }

    pub async fn revoked_since(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        self.store.revoked_since(since).await
    }

    /// Every signing key, opened.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys = self.store.signing_keys().await?;
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
        self.store.add_signing_key(key).await
    }

    pub async fn insert_mail_token(
        &self,
        hash: [u8; 32],
        user_id: &str,
        purpose: Purpose,
        email: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.store.insert_mail_token(hash, user_id.to_owned(), purpose, email.to_owned(), now, expires_at).await
    }

    pub async fn consume_mail_token(
        &self,
        hash: [u8; 32],
        purpose: Purpose,
        now: i64,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.store.consume_mail_token(hash, purpose, now).await
    }

    pub async fn add_to_outbox(&self, to: String, subject: String, body: String, now: i64) -> Result<(), StoreError> {
        self.store.add_to_outbox(to, subject, body, now).await
    }

    pub async fn outbox(&self, limit: usize) -> Result<Vec<OutboxMail>, StoreError> {
        self.store.outbox(limit).await
    }

    /// The user's authenticator, its secret opened.
    pub async fn totp(&self, user_id: &str) -> Result<Option<Totp>, StoreError> {
        let stored = self.store.totp(user_id.to_owned()).await?;
        stored
            .map(|totp| {
                let secret = self.secrets.open(&totp.secret, &totp_context(user_id)).map_err(wrong_key)?.into_inner();
                Ok(Totp { secret, ..totp })
            })
            .transpose()
    }

    /// Starts (or restarts) an enrolment; false if TOTP is already confirmed.
    pub async fn enrol_totp(&self, user_id: &str, secret: Vec<u8>, now: i64) -> Result<bool, StoreError> {
        let sealed = self.secrets.seal(&secret, &totp_context(user_id));
        self.store.enrol_totp(user_id.to_owned(), sealed, now).await
    }

    pub async fn use_totp_step(&self, user_id: &str, step: i64) -> Result<bool, StoreError> {
        self.store.use_totp_step(user_id.to_owned(), step).await
    }

    pub async fn confirm_totp(&self, user_id: &str, recovery: Vec<[u8; 32]>, now: i64) -> Result<(), StoreError> {
        self.store.confirm_totp(user_id.to_owned(), recovery, now).await
    }

    pub async fn use_recovery_code(&self, user_id: &str, hash: [u8; 32], now: i64) -> Result<bool, StoreError> {
        self.store.use_recovery_code(user_id.to_owned(), hash, now).await
    }

    pub async fn remove_totp(&self, user_id: &str, now: i64) -> Result<(), StoreError> {
        self.store.remove_totp(user_id.to_owned(), now).await
    }

    pub async fn insert_ticket(&self, hash: [u8; 32], user_id: &str, expires_at: i64) -> Result<(), StoreError> {
        self.store.insert_ticket(hash, user_id.to_owned(), expires_at).await
    }

    pub async fn ticket_user(&self, hash: [u8; 32], now: i64) -> Result<Option<String>, StoreError> {
        self.store.ticket_user(hash, now).await
    }

    pub async fn fail_ticket(&self, hash: [u8; 32], now: i64) -> Result<(), StoreError> {
        self.store.fail_ticket(hash, now).await
    }

    pub async fn spend_ticket(&self, hash: [u8; 32], now: i64) -> Result<bool, StoreError> {
        self.store.spend_ticket(hash, now).await
    }

    pub async fn save_pending(
        &self,
        state_hash: [u8; 32],
        pending: Pending,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.store.save_pending(state_hash, pending, expires_at).await
    }

    pub async fn take_pending(&self, state_hash: [u8; 32], now: i64) -> Result<Option<Pending>, StoreError> {
        self.store.take_pending(state_hash, now).await
    }

    pub async fn identity_user(&self, provider: &str, subject: &str) -> Result<Option<String>, StoreError> {
        self.store.identity_user(provider.to_owned(), subject.to_owned()).await
    }

    pub async fn add_identity(&self, provider: &str, subject: &str, user_id: &str, now: i64) -> Result<(), StoreError> {
        self.store.add_identity(provider.to_owned(), subject.to_owned(), user_id.to_owned(), now).await
    }

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

    pub async fn prune(&self, now: i64) -> Result<u64, StoreError> {
        self.store.prune(now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;
    use crate::store::ChangeBus;
    use crate::store::sqlite::{SqliteBackend, SqliteOptions};

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
