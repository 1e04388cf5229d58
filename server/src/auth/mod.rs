//! Auth: users, password and anonymous sign-in, sessions with rotating refresh tokens,
//! and access tokens (EdDSA JWTs) that anyone can verify with the published JWKS.
//!
//! Owns the `users`, `sessions`, `refresh_tokens` and `signing_keys` tables (through
//! `repo`); knows nothing of HTTP. Access tokens are stateless: they are checked by
//! signature and claims only, so revoking a session stops its refresh at once and its
//! access token within `auth.access_token_seconds`.

pub mod keys;
pub mod limits;
pub mod mail;
pub mod mfa;
pub mod oauth;
pub mod password;
pub mod repo;

use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hearth_types::{LoginAnswer, MfaChallenge, RecoveryCodes, Session, TotpEnrollment, User};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::store::{self, format_time, now_micros, path::new_id};
use password::{MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES, Passwords};
use repo::{Refreshed, Repo, Sessions, UserRecord};

/// Claims Hearth puts in every access token; custom claims may not use these names.
pub const RESERVED_CLAIMS: &[&str] = &[
    "sub",
    "iat",
    "exp",
    "nbf",
    "iss",
    "aud",
    "jti",
    "sid",
    "anon",
    "email",
    "email_verified",
    "kid",
    "typ",
    "auth_time",
];

/// Why an auth call failed. Mapped to contract codes in `http`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A sensitive change without fresh proof of the account's credentials.
    #[error("{0}")]
    ReauthenticationRequired(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("{message}")]
    RateLimited { message: String, retry_after_seconds: u64 },
    #[error("{0}")]
    Internal(String),
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthUser {
    pub uid: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub anonymous: bool,
    /// Custom claims.
    pub claims: Map<String, Value>,
    /// The session the token belongs to.
    pub session_id: String,
    /// When that session began (seconds): the sign-in a sensitive change may count as
    /// proof instead of the current password.
    pub signed_in_at: i64,
}

impl AuthUser {
    /// The caller as functions see it in `ctx.auth`: `{uid, email, email_verified,
    /// anonymous, claims}` (what rules see as `auth`).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "uid": self.uid,
            "email": self.email,
            "email_verified": self.email_verified,
            "anonymous": self.anonymous,
            "claims": self.claims,
        })
    }
}

/// The claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    /// When the session began (a sign-in with every factor), in seconds: refreshes keep it.
    #[serde(default)]
    auth_time: i64,
    exp: i64,
    iss: String,
    aud: String,
    sid: String,
    anon: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default)]
    email_verified: bool,
    #[serde(flatten)]
    custom: Map<String, Value>,
}

/// The auth service. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    repo: Repo,
    verified: Arc<VerifiedTokens>,
    oauth: Arc<oauth::OAuth>,
    mailer: mail::Mailer,
    limits: Arc<limits::Limits>,
    passwords: Passwords,
    keys: Arc<RwLock<keys::KeySet>>,
    revoked: Arc<RevokedSessions>,
    config: AuthConfig,
    /// Bumped after each new user, to wake `onUserCreated` functions.
    created: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Auth {
    /// Loads the signing keys, making the first one on a fresh database.
    pub async fn new(repo: Repo, config: AuthConfig, mail: &crate::config::MailConfig) -> anyhow::Result<Auth> {
        let passwords = Passwords::new(&config.password)?;
        if repo.keys().await?.iter().all(|key| key.retired_at.is_some()) {
            repo.add_key(keys::generate(now_micros())).await?;
        }
        let auth = Auth {
            verified: Arc::new(VerifiedTokens::default()),
            oauth: Arc::new(oauth::OAuth::new(config.oauth.clone())?),
            mailer: mail::Mailer::from_config(mail, repo.clone())?,
            limits: Arc::new(limits::Limits::new(&config.rate_limit, repo.shared_limits())),
            repo,
            passwords,
            keys: Arc::new(RwLock::new(keys::KeySet::from_records(&[], 0, 0))),
            revoked: Arc::new(RevokedSessions::new(
                (config.access_token_seconds as i64 + LEEWAY_SECONDS as i64) * 1_000_000,
            )),
            config,
            created: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        auth.reload_keys().await?;
        Ok(auth)
    }

    /// Revokes sessions: their refresh tokens stop at once, and so, on this node, do their
    /// access tokens (and the realtime connections they opened).
    async fn revoke(&self, uid: &str, which: Sessions) -> Result<(), Error> {
        let ids = self.repo.revoke(uid, which, now_micros()).await?;
        self.revoked.forget(ids);
        Ok(())
    }

    /// Takes in the sessions other nodes revoked since `since` (the database's clock); the
    /// time to ask from next. Reads overlap by a few seconds, for revocations stamped
    /// before `since` that committed after the last read; ids already known are skipped.
    pub async fn follow_revocations(&self, since: i64) -> Result<i64, Error> {
        const OVERLAP: i64 = 5_000_000;
        let revoked = self.repo.revoked_since(since - OVERLAP).await?;
        let next = revoked.iter().map(|(_, at)| *at).max().unwrap_or(since).max(since);
        let now = now_micros();
        let new: Vec<String> =
            revoked.into_iter().map(|(id, _)| id).filter(|id| !self.revoked.contains(id, now)).collect();
        self.revoked.forget(new);
        Ok(next)
    }

    /// Sessions revoked since this node started (their ids), for connections that hold
    /// an access token for a long time; a lagging receiver asks [`Auth::session_revoked`].
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<Arc<[String]>> {
        self.revoked.events.subscribe()
    }

    /// Whether this session was revoked while its access tokens may still be unexpired.
    pub fn session_revoked(&self, session_id: &str) -> bool {
        self.revoked.contains(session_id, now_micros())
    }

    fn token_lifetime_micros(&self) -> i64 {
        (self.config.access_token_seconds as i64 + LEEWAY_SECONDS as i64) * 1_000_000
    }

    /// Re-reads the signing keys (after `hearth keys rotate`, or to drop expired ones).
    pub async fn reload_keys(&self) -> Result<(), Error> {
        let records = self.repo.keys().await?;
        let set = keys::KeySet::from_records(&records, now_micros(), self.token_lifetime_micros());
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    /// The users table and its event log.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Changes after each new user (its `user_events` row is committed by then).
    pub fn users_created(&self) -> tokio::sync::watch::Receiver<u64> {
        self.created.subscribe()
    }

    /// Inserts a user with its event, and wakes whoever follows the events.
    async fn insert_user(&self, user: &UserRecord) -> Result<(), crate::store::Error> {
        self.repo.insert_user(user.clone()).await?;
        self.created.send_modify(|count| *count += 1);
        Ok(())
    }

    /// The JWKS document.
    pub fn jwks(&self) -> String {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).jwks().to_owned()
    }

    /// A new password user, signed in; `address` is the client's (see [`limits::Limits`]).
    pub async fn signup(&self, email: &str, password: &str, address: &str) -> Result<Session, Error> {
        let email = normalize_email(email)?;
        check_password(password)?;
        let hash = self.hash(password).await?;
        let now = now_micros();
        let user = UserRecord { password_hash: Some(hash), ..UserRecord::new(Some(email.clone()), &["password"], now) };
        self.insert_user(&user).await.map_err(already_exists)?;
        self.limits.record_sign_in(&email, address).await?;
        self.start_session(user).await
    }

    /// Same answer, and about the same time, for an unknown e-mail and a wrong password.
    /// Failures count per account and client `address`, and per account from addresses
    /// it never signed in from: a stranger's failures lock out only the stranger.
    pub async fn login(&self, email: &str, password: &str, address: &str) -> Result<LoginAnswer, Error> {
        let refused = || Error::Unauthenticated("wrong e-mail or password".into());
        let Ok(email) = normalize_email(email) else {
            self.passwords.verify(password, None).await;
            return Err(refused());
        };
        self.limits.check_login(&email, address).await?;
        let user = self.repo.user_by_email(&email).await?;
        let hash = user.as_ref().and_then(|user| user.password_hash.as_deref());
        if !self.passwords.verify(password, hash).await {
            self.limits.record_login_failure(&email, address).await?;
            return Err(refused());
        }
        let user = user.ok_or_else(refused)?;
        let answer = self.first_factor_passed(user).await?;
        if matches!(answer, LoginAnswer::Session(_)) {
            self.limits.record_sign_in(&email, address).await?;
        }
        Ok(answer)
    }

    /// What a user who proved a first factor (a password, a provider's ID token) gets: a
    /// session, or a ticket for the second factor when TOTP is on.
    async fn first_factor_passed(&self, user: UserRecord) -> Result<LoginAnswer, Error> {
        if user.disabled {
            return Err(Error::PermissionDenied("this account is disabled".into()));
        }
        if user.mfa {
            let ticket = random_token();
            let expires = now_micros() + MFA_TICKET_SECONDS as i64 * 1_000_000;
            self.repo.insert_ticket(hash_token(&ticket), &user.id, expires).await?;
            return Ok(LoginAnswer::MfaRequired(MfaChallenge {
                mfa_required: true,
                ticket,
                expires_in: MFA_TICKET_SECONDS,
            }));
        }
        Ok(LoginAnswer::Session(self.start_session(user).await?))
    }

    /// The second step of a login: a ticket and a TOTP or recovery code. Each wrong code
    /// counts against the ticket (burnt after [`repo::TICKET_FAILURES`]) and against the
    /// account (`auth.rate_limit.failed_mfa_codes`), so codes cannot be guessed through
    /// one ticket or many.
    pub async fn verify_mfa(&self, ticket: &str, code: &str, address: &str) -> Result<Session, Error> {
        let refused = || Error::Unauthenticated("the ticket or the code is not valid".into());
        let ticket_hash = hash_token(ticket);
        let uid = self.repo.ticket_user(ticket_hash, now_micros()).await?.ok_or_else(refused)?;
        if !self.second_factor(&uid, code).await? {
            self.repo.fail_ticket(ticket_hash, now_micros()).await?;
            return Err(refused());
        }
        if !self.repo.spend_ticket(ticket_hash, now_micros()).await? {
            return Err(refused());
        }
        let user = self.existing(&uid).await?;
        if user.disabled {
            return Err(Error::PermissionDenied("this account is disabled".into()));
        }
        if let Some(email) = &user.email {
            self.limits.record_sign_in(email, address).await?;
        }
        self.start_session(user).await
    }

    /// Whether `code` is a TOTP code not used before, or an unused recovery code. A wrong
    /// one counts against the account's budget of codes, which is checked first.
    async fn second_factor(&self, uid: &str, code: &str) -> Result<bool, Error> {
        self.limits.check_code(uid).await?;
        let right = self.code_is_right(uid, code).await?;
        if !right {
            self.limits.record_code_failure(uid).await?;
        }
        Ok(right)
    }

    async fn code_is_right(&self, uid: &str, code: &str) -> Result<bool, Error> {
        let Some(totp) = self.repo.totp(uid).await?.filter(|totp| totp.confirmed) else {
            return Ok(false);
        };
        if let Some(step) = mfa::check(&totp.secret, code) {
            return Ok(self.repo.use_totp_step(uid, step).await?);
        }
        Ok(self.repo.use_recovery_code(uid, hash_token(&code.trim().to_lowercase()), now_micros()).await?)
    }

    /// Starts TOTP enrolment for the caller.
    pub async fn enroll_totp(&self, uid: &str) -> Result<TotpEnrollment, Error> {
        let user = self.existing(uid).await?;
        let account = user.email.clone().unwrap_or_else(|| user.id.clone());
        let (secret, base32, otpauth_uri) = mfa::new_secret(&account)?;
        if !self.repo.enrol_totp(uid, secret, now_micros()).await? {
            return Err(Error::AlreadyExists("TOTP is already on; turn it off first".into()));
        }
        Ok(TotpEnrollment { secret: base32, otpauth_uri })
    }

    /// Confirms enrolment with a first code; answers the recovery codes, shown once. TOTP
    /// on, every other session of the user ends (whoever else held one must now pass
    /// the second factor). A sensitive change: see [`Auth::reauthenticate`].
    pub async fn confirm_totp(
        &self,
        caller: &AuthUser,
        code: &str,
        current_password: Option<&str>,
    ) -> Result<RecoveryCodes, Error> {
        let uid = caller.uid.as_str();
        let user = self.existing(uid).await?;
        self.reauthenticate(caller, &user, current_password, None).await?;
        let totp = self
            .repo
            .totp(uid)
            .await?
            .filter(|totp| !totp.confirmed)
            .ok_or_else(|| Error::InvalidArgument("no TOTP enrolment is waiting; enrol first".into()))?;
        let step = mfa::check(&totp.secret, code).ok_or_else(|| Error::InvalidArgument("wrong code".into()))?;
        if !self.repo.use_totp_step(uid, step).await? {
            return Err(Error::InvalidArgument("this code was already used".into()));
        }
        let codes = mfa::recovery_codes();
        self.repo.confirm_totp(uid, codes.iter().map(|code| hash_token(code)).collect(), now_micros()).await?;
        self.revoke(uid, Sessions::AllBut(caller.session_id.clone())).await?;
        Ok(RecoveryCodes { recovery_codes: codes })
    }

    /// Turns TOTP off, with a current code or a recovery code, and (a sensitive change)
    /// the current password unless the caller signed in just now.
    pub async fn disable_totp(
        &self,
        caller: &AuthUser,
        code: &str,
        current_password: Option<&str>,
    ) -> Result<(), Error> {
        let user = self.existing(&caller.uid).await?;
        let checked = self.reauthenticate(caller, &user, current_password, Some(code)).await?;
        if !checked && !self.second_factor(&caller.uid, code).await? {
            return Err(Error::InvalidArgument("wrong code".into()));
        }
        self.repo.remove_totp(&caller.uid, now_micros()).await?;
        Ok(())
    }

    /// Checks that the caller of a sensitive change (e-mail, password, TOTP on or off,
    /// deleting the account) is the account's owner and not someone holding a stolen
    /// access token: a sign-in within `auth.reauth_seconds` (which passed every factor),
    /// or the current password, with a second-factor `code` when TOTP is on. Anonymous
    /// users have no credential to prove and pass. Wrong passwords count against the
    /// account like failed logins. Answers whether `code` was checked (and so spent).
    async fn reauthenticate(
        &self,
        caller: &AuthUser,
        user: &UserRecord,
        current_password: Option<&str>,
        code: Option<&str>,
    ) -> Result<bool, Error> {
        let now = now_micros() / 1_000_000;
        if user.anonymous || now - caller.signed_in_at <= self.config.reauth_seconds as i64 {
            return Ok(false);
        }
        let needed = || {
            Error::ReauthenticationRequired(format!(
                "this change needs `current_password`{} or a sign-in within the last {} s",
                if user.mfa { " and a `code` from the authenticator" } else { "" },
                self.config.reauth_seconds
            ))
        };
        let (Some(hash), Some(password)) = (user.password_hash.as_deref(), current_password) else {
            return Err(needed());
        };
        let account = user.email.as_deref().unwrap_or(&user.id);
        let address = format!("session:{}", caller.session_id);
        self.limits.check_login(account, &address).await?;
        if !self.passwords.verify(password, Some(hash)).await {
            self.limits.record_login_failure(account, &address).await?;
            return Err(Error::ReauthenticationRequired("the current password is wrong".into()));
        }
        if user.mfa {
            let Some(code) = code else { return Err(needed()) };
            if !self.second_factor(&user.id, code).await? {
                return Err(Error::ReauthenticationRequired("the code is wrong".into()));
            }
            return Ok(true);
        }
        Ok(false)
    }

    pub async fn anonymous(&self) -> Result<Session, Error> {
        let now = now_micros();
        let user = UserRecord { anonymous: true, ..UserRecord::new(None, &["anonymous"], now) };
        self.insert_user(&user).await?;
        self.start_session(user).await
    }

    /// Spends a refresh token for a new session answer; reuse revokes the family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, Error> {
        let (token, new_hash) = new_refresh_token();
        match self.repo.refresh(hash_token(refresh_token), new_hash, now_micros()).await? {
            Refreshed::Rotated { session_id, user, signed_in_at } => {
                self.session_answer(user, session_id, token, signed_in_at / 1_000_000)
            }
            Refreshed::Reused { session_id } => {
                tracing::warn!("a spent refresh token was presented again; its session is revoked");
                self.revoked.forget(vec![session_id]);
                Err(Error::Unauthenticated("refresh token is no longer valid".into()))
            }
            Refreshed::Refused => Err(Error::Unauthenticated("refresh token is no longer valid".into())),
        }
    }

    pub async fn logout(&self, caller: &AuthUser, all: bool) -> Result<(), Error> {
        if all {
            self.revoke(&caller.uid, Sessions::All).await?;
        } else {
            self.revoke(&caller.uid, Sessions::One(caller.session_id.clone())).await?;
        }
        Ok(())
    }

    pub async fn user(&self, uid: &str) -> Result<User, Error> {
        Ok(wire_user(&self.existing(uid).await?))
    }

    async fn existing(&self, uid: &str) -> Result<UserRecord, Error> {
        self.repo.user_by_id(uid).await?.ok_or_else(|| Error::NotFound(format!("no user `{uid}`")))
    }

    /// Changes the caller's e-mail, password or profile. A new password signs out every
    /// other session of the user.
    pub async fn update_self(&self, caller: &AuthUser, update: hearth_types::UserUpdate) -> Result<User, Error> {
        let mut user = self.existing(&caller.uid).await?;
        let new_password = update.password.is_some();
        let new_email = update.email.as_deref().map(normalize_email).transpose()?;
        if new_password || new_email.as_ref().is_some_and(|email| user.email.as_ref() != Some(email)) {
            self.reauthenticate(caller, &user, update.current_password.as_deref(), update.code.as_deref()).await?;
        }
        if let Some(email) = new_email.filter(|email| user.email.as_ref() != Some(email)) {
            user.email = Some(email);
            user.email_verified = false;
        }
        if let Some(password) = update.password {
            if user.anonymous {
                return Err(Error::InvalidArgument(
                    "an anonymous user links an e-mail first (`POST /v1/auth/link`)".into(),
                ));
            }
            check_password(&password)?;
            user.password_hash = Some(self.hash(&password).await?);
            if !user.providers.iter().any(|provider| provider == "password") {
                user.providers.push("password".into());
            }
        }
        if let Some(data) = update.data {
            check_profile(&data)?;
            user.data = data;
        }
        user.updated_at = now_micros();
        self.repo.save_user(user.clone()).await.map_err(already_exists)?;
        if new_password {
            self.revoke(&caller.uid, Sessions::AllBut(caller.session_id.clone())).await?;
        }
        Ok(wire_user(&user))
    }

    /// The caller deletes their own account: a sensitive change.
    pub async fn delete_self(&self, caller: &AuthUser, proof: &hearth_types::Reauth) -> Result<(), Error> {
        let user = self.existing(&caller.uid).await?;
        self.reauthenticate(caller, &user, proof.current_password.as_deref(), proof.code.as_deref()).await?;
        self.delete(&caller.uid).await
    }

    pub async fn delete(&self, uid: &str) -> Result<(), Error> {
        self.revoke(uid, Sessions::All).await?;
        if !self.repo.delete_user(uid).await? {
            return Err(Error::NotFound(format!("no user `{uid}`")));
        }
        Ok(())
    }

    /// Turns the anonymous caller into a password user with the same id.
    pub async fn link(&self, caller: &AuthUser, email: &str, password: &str) -> Result<Session, Error> {
        let email = normalize_email(email)?;
        check_password(password)?;
        let mut user = self.existing(&caller.uid).await?;
        if !user.anonymous {
            return Err(Error::InvalidArgument("only an anonymous user can be linked to an e-mail".into()));
        }
        user.password_hash = Some(self.hash(password).await?);
        user.email = Some(email);
        user.anonymous = false;
        user.providers = vec!["password".into()];
        user.updated_at = now_micros();
        self.repo.save_user(user.clone()).await.map_err(already_exists)?;
        // The old session carried `anon: true`; the caller continues with a fresh one.
        self.revoke(&caller.uid, Sessions::One(caller.session_id.clone())).await?;
        self.start_session(user).await
    }

    /// A page of users in id order.
    pub async fn list(&self, cursor: Option<String>, limit: usize) -> Result<hearth_types::UserPage, Error> {
        let after = match cursor {
            None => None,
            Some(cursor) => Some(
                URL_SAFE_NO_PAD
                    .decode(cursor.as_bytes())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| Error::InvalidArgument("cursor is not one this server issued".into()))?,
            ),
        };
        let mut users = self.repo.list_users(after, limit).await?;
        let more = users.len() > limit;
        users.truncate(limit);
        let cursor = match (more, users.last()) {
            (true, Some(last)) => Some(URL_SAFE_NO_PAD.encode(last.id.as_bytes())),
            _ => None,
        };
        Ok(hearth_types::UserPage { users: users.iter().map(wire_user).collect(), cursor })
    }

    /// An admin makes a password user.
    pub async fn admin_create(&self, request: hearth_types::AdminUserCreate) -> Result<User, Error> {
        let email = normalize_email(&request.email)?;
        check_password(&request.password)?;
        check_claims(&request.claims)?;
        check_profile(&request.data)?;
        let now = now_micros();
        let user = UserRecord {
            email_verified: request.email_verified,
            password_hash: Some(self.hash(&request.password).await?),
            claims: request.claims,
            data: request.data,
            ..UserRecord::new(Some(email), &["password"], now)
        };
        self.insert_user(&user).await.map_err(already_exists)?;
        Ok(wire_user(&user))
    }

    /// An admin sets claims, disables or enables, or marks the e-mail verified. Disabling
    /// revokes every session at once.
    pub async fn admin_update(&self, uid: &str, update: hearth_types::AdminUserUpdate) -> Result<User, Error> {
        let mut user = self.existing(uid).await?;
        if let Some(claims) = update.claims {
            check_claims(&claims)?;
            user.claims = claims;
        }
        if let Some(verified) = update.email_verified {
            user.email_verified = verified;
        }
        if let Some(disabled) = update.disabled {
            user.disabled = disabled;
        }
        user.updated_at = now_micros();
        self.repo.save_user(user.clone()).await?;
        if user.disabled {
            self.revoke(uid, Sessions::All).await?;
        }
        Ok(wire_user(&user))
    }

    /// Revokes every session of a user.
    pub async fn revoke_all(&self, uid: &str) -> Result<(), Error> {
        self.existing(uid).await?;
        self.revoke(uid, Sessions::All).await?;
        Ok(())
    }

    /// Starts an OAuth sign-in: the provider URL to send the browser to. `origin` is this
    /// server's URL as the browser sees it (for the callback), `redirect_to` where the app
    /// wants its tokens in the end (it must be allowed by `auth.oauth.allowed_redirects`).
    ///
    /// `binding` is the value of the cookie the browser gets with the redirect (see
    /// [`OAUTH_COOKIE`]); the callback is refused without it, so a callback URL made
    /// in another browser (login CSRF) signs no one in.
    pub async fn oauth_start(
        &self,
        provider: &str,
        redirect_to: Option<String>,
        binding: &str,
    ) -> Result<String, Error> {
        if let Some(target) = &redirect_to
            && !self.oauth.allows_redirect(target)
        {
            return Err(Error::InvalidArgument("`redirect_to` is not in auth.oauth.allowed_redirects".into()));
        }
        let (url, state, pending) = self.oauth.start(provider, redirect_to, hash_token(binding)).await?;
        let expires = now_micros() + OAUTH_STATE_SECONDS * 1_000_000;
        self.repo.save_pending(hash_token(&state), pending, expires).await?;
        Ok(url)
    }

    /// Whether the OAuth cookie may be sent only over HTTPS (`public_url` is https).
    pub fn oauth_cookie_secure(&self) -> bool {
        self.config.oauth.public_url.as_deref().is_some_and(|url| url.starts_with("https://"))
    }

    /// Finishes an OAuth sign-in: the session (or, with TOTP on, the ticket for the second
    /// factor), and where the app wanted it sent. `binding` is the cookie the browser
    /// came back with.
    ///
    /// The provider identity decides the user: one seen before signs in as its user; a new
    /// one whose e-mail the provider verified is linked to the user with that address only
    /// if that user verified it too (otherwise whoever signed up with the address without
    /// owning it would get the identity, with a password of their own, on the account);
    /// any other makes a new user.
    pub async fn oauth_finish(
        &self,
        state: &str,
        code: &str,
        binding: Option<&str>,
    ) -> Result<(LoginAnswer, Option<String>), Error> {
        let pending = self
            .repo
            .take_pending(hash_token(state), now_micros())
            .await?
            .ok_or_else(|| Error::InvalidArgument("unknown or expired OAuth state".into()))?;
        let bound = binding.is_some_and(|binding| bool::from(hash_token(binding).ct_eq(&pending.binding)));
        if !bound {
            return Err(Error::InvalidArgument(
                "this sign-in was not started in this browser (its cookie is missing or belongs to another sign-in); start again"
                    .into(),
            ));
        }
        let identity = self.oauth.finish(&pending, code).await?;
        let provider = pending.provider.clone();
        let now = now_micros();
        let user = match self.repo.user_by_id_for_identity(&provider, &identity.subject).await? {
            Some(user) => user,
            None => {
                let email = identity.email.as_deref().map(normalize_email).transpose()?;
                let existing = match &email {
                    Some(email) => self.repo.user_by_email(email).await?,
                    None => None,
                };
                match existing {
                    Some(user) if identity.email_verified && !user.email_verified => {
                        return Err(Error::AlreadyExists(
                            "an account with this e-mail exists but has not verified the address; sign in to it and verify the address, then sign in with this provider again"
                                .into(),
                        ));
                    }
                    Some(mut user) if identity.email_verified => {
                        if !user.providers.contains(&provider) {
                            user.providers.push(provider.clone());
                        }
                        user.email_verified = true;
                        user.updated_at = now;
                        self.repo.save_user(user.clone()).await?;
                        user
                    }
                    Some(_) => {
                        return Err(Error::AlreadyExists(
                            "a user with this e-mail exists and the provider did not verify the address; sign in and link instead"
                                .into(),
                        ));
                    }
                    None => {
                        let user = UserRecord {
                            email_verified: identity.email_verified,
                            ..UserRecord::new(email, &[provider.as_str()], now)
                        };
                        self.insert_user(&user).await.map_err(already_exists)?;
                        user
                    }
                }
            }
        };
        if user.disabled {
            return Err(Error::PermissionDenied("this account is disabled".into()));
        }
        self.repo.add_identity(&provider, &identity.subject, &user.id, now).await?;
        Ok((self.first_factor_passed(user).await?, pending.redirect_to))
    }

    /// Forgets expired sessions, spent codes and stale sign-ins.
    pub async fn prune(&self) -> Result<u64, Error> {
        Ok(self.repo.prune(now_micros()).await?)
    }

    /// The per-IP limit of the sign-in routes.
    pub fn limits(&self) -> &limits::Limits {
        &self.limits
    }

    /// Mails the caller a token that confirms their e-mail address.
    pub async fn request_verification(&self, uid: &str) -> Result<(), Error> {
        let user = self.existing(uid).await?;
        let Some(email) = user.email.clone() else {
            return Err(Error::InvalidArgument("this user has no e-mail to verify".into()));
        };
        if user.email_verified {
            return Err(Error::InvalidArgument("this e-mail is already verified".into()));
        }
        let token = self.mail_token(&user.id, repo::Purpose::Verify, &email, self.config.verify_token_seconds).await?;
        self.mailer
            .send(mail::Mail {
                to: email,
                subject: "Confirm your e-mail address".into(),
                body: format!(
                    "Confirm your e-mail address with this code:\n\n{token}\n\n(POST /v1/auth/verify/confirm {{\"token\": \"{token}\"}})\n"
                ),
            })
            .await
    }

    /// Marks the address a verification token was sent to as verified.
    pub async fn confirm_verification(&self, token: &str) -> Result<User, Error> {
        let spent = self.repo.consume_mail_token(hash_token(token), repo::Purpose::Verify, now_micros()).await?;
        let (uid, email) =
            spent.ok_or_else(|| Error::InvalidArgument("the token is unknown, used or expired".into()))?;
        let mut user = self.existing(&uid).await?;
        if user.email.as_deref() != Some(email.as_str()) {
            return Err(Error::InvalidArgument("the e-mail changed since this token was sent".into()));
        }
        user.email_verified = true;
        user.updated_at = now_micros();
        self.repo.save_user(user.clone()).await?;
        Ok(wire_user(&user))
    }

    /// Mails a reset token if a password user has this e-mail; says nothing either way,
    /// not even that the address is malformed.
    pub async fn recover(&self, email: &str) -> Result<(), Error> {
        let Ok(email) = normalize_email(email) else {
            return Ok(());
        };
        let Some(user) = self.repo.user_by_email(&email).await? else {
            return Ok(());
        };
        if user.disabled || user.password_hash.is_none() {
            return Ok(());
        }
        let token = self.mail_token(&user.id, repo::Purpose::Reset, &email, self.config.reset_token_seconds).await?;
        self.mailer
            .send(mail::Mail {
                to: email,
                subject: "Reset your password".into(),
                body: format!(
                    "Someone asked to reset the password of this account. If it was you, use this code:\n\n{token}\n\n\
                     (POST /v1/auth/reset {{\"token\": \"{token}\", \"password\": \"...\"}})\n\
                     If it was not you, ignore this mail.\n"
                ),
            })
            .await
    }

    /// Sets a new password with a mailed reset token; every session of the user ends.
    pub async fn reset(&self, token: &str, password: &str) -> Result<(), Error> {
        check_password(password)?;
        let spent = self.repo.consume_mail_token(hash_token(token), repo::Purpose::Reset, now_micros()).await?;
        let (uid, _) = spent.ok_or_else(|| Error::InvalidArgument("the token is unknown, used or expired".into()))?;
        let mut user = self.existing(&uid).await?;
        user.password_hash = Some(self.hash(password).await?);
        user.updated_at = now_micros();
        self.repo.save_user(user).await?;
        self.revoke(&uid, Sessions::All).await?;
        Ok(())
    }

    /// The newest mails of the outbox.
    pub async fn outbox(&self, limit: usize) -> Result<Vec<repo::OutboxMail>, Error> {
        Ok(self.repo.outbox(limit).await?)
    }

    async fn mail_token(&self, uid: &str, purpose: repo::Purpose, email: &str, seconds: u64) -> Result<String, Error> {
        let token = random_token();
        let now = now_micros();
        let expires = now + seconds as i64 * 1_000_000;
        self.repo.insert_mail_token(hash_token(&token), uid, purpose, email, now, expires).await?;
        Ok(token)
    }

    /// Checks an access token: signature by a published key (EdDSA only), `iss`, `aud`,
    /// `exp` and `nbf`. A token seen before is answered from a cache until it expires: an
    /// app sends the same token with every request for 15 minutes, and an Ed25519
    /// verification costs ~40 µs.
    pub fn verify(&self, token: &str) -> Result<AuthUser, Error> {
        let now = now_micros() / 1_000_000;
        if let Some(user) = self.verified.get(token, now) {
            if self.session_revoked(&user.session_id) {
                return Err(Error::Unauthenticated("this session was revoked; sign in again".into()));
            }
            return Ok(user);
        }
        let (user, expires) = self.verify_signature(token)?;
        self.verified.put(token, user.clone(), expires);
        if self.session_revoked(&user.session_id) {
            return Err(Error::Unauthenticated("this session was revoked; sign in again".into()));
        }
        Ok(user)
    }

    fn verify_signature(&self, token: &str) -> Result<(AuthUser, i64), Error> {
        let invalid = || Error::Unauthenticated("invalid or expired access token".into());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if header.alg != Algorithm::EdDSA {
            return Err(invalid());
        }
        let kid = header.kid.ok_or_else(invalid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.verifying(&kid).ok_or_else(invalid)?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|_| invalid())?.claims;
        let expires = claims.exp + LEEWAY_SECONDS as i64;
        let user = AuthUser {
            uid: claims.sub,
            email: claims.email,
            email_verified: claims.email_verified,
            anonymous: claims.anon,
            claims: claims.custom,
            session_id: claims.sid,
            signed_in_at: claims.auth_time,
        };
        Ok((user, expires))
    }

    async fn hash(&self, password: &str) -> Result<String, Error> {
        self.passwords.hash(password).await.map_err(|error| Error::Internal(error.to_string()))
    }

    async fn start_session(&self, user: UserRecord) -> Result<Session, Error> {
        let session_id = new_id();
        let (token, hash) = new_refresh_token();
        let now = now_micros();
        let expires = now + self.config.session_days as i64 * 86_400 * 1_000_000;
        self.repo.create_session(session_id.clone(), user.id.clone(), hash, now, expires).await?;
        self.session_answer(user, session_id, token, now / 1_000_000)
    }

    /// The session answer; `signed_in_at` (seconds) is when the session began, the
    /// token's `auth_time`.
    fn session_answer(
        &self,
        user: UserRecord,
        session_id: String,
        refresh_token: String,
        signed_in_at: i64,
    ) -> Result<Session, Error> {
        let now = now_micros() / 1_000_000;
        let claims = Claims {
            sub: user.id.clone(),
            iat: now,
            auth_time: signed_in_at,
            exp: now + self.config.access_token_seconds as i64,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sid: session_id,
            anon: user.anonymous,
            email: user.email.clone(),
            email_verified: user.email_verified,
            custom: user.claims.clone(),
        };
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let (kid, key) = keys.signing().ok_or_else(|| Error::Internal("no signing key".into()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        let access_token = jsonwebtoken::encode(&header, &claims, key)
            .map_err(|error| Error::Internal(format!("signing: {error}")))?;
        Ok(Session {
            access_token,
            token_type: "Bearer".into(),
            expires_in: self.config.access_token_seconds,
            refresh_token,
            user: wire_user(&user),
        })
    }
}

/// Tokens whose signature and claims checked out, until they expire. Keyed by the whole
/// token, so any change to it misses. Bounded: when full it starts over.
#[derive(Default)]
struct VerifiedTokens {
    tokens: std::sync::Mutex<std::collections::HashMap<String, (AuthUser, i64)>>,
}

const VERIFIED_TOKENS: usize = 50_000;

impl VerifiedTokens {
    fn get(&self, token: &str, now: i64) -> Option<AuthUser> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(token).filter(|(_, expires)| *expires > now).map(|(user, _)| user.clone())
    }

    fn put(&self, token: &str, user: AuthUser, expires: i64) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= VERIFIED_TOKENS {
            tokens.clear();
        }
        tokens.insert(token.to_owned(), (user, expires));
    }
}

/// Sessions revoked on this node, kept until every access token they issued has expired:
/// an access token is otherwise good until its `exp`, and a revoked session's must not be.
struct RevokedSessions {
    /// Session id → until when (µs) its tokens could still verify.
    until: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    lifetime_micros: i64,
    events: tokio::sync::broadcast::Sender<Arc<[String]>>,
}

impl RevokedSessions {
    fn new(lifetime_micros: i64) -> RevokedSessions {
        RevokedSessions { until: Default::default(), lifetime_micros, events: tokio::sync::broadcast::Sender::new(256) }
    }

    fn forget(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let now = now_micros();
        {
            let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
            until.retain(|_, expires| *expires > now);
            until.extend(ids.iter().map(|id| (id.clone(), now + self.lifetime_micros)));
        }
        let _ = self.events.send(ids.into());
    }

    fn contains(&self, session_id: &str, now: i64) -> bool {
        let until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        until.get(session_id).is_some_and(|expires| *expires > now)
    }
}

/// How long an OAuth sign-in may take between the redirect and the callback.
pub const OAUTH_STATE_SECONDS: i64 = 600;

/// The cookie that binds an OAuth sign-in to the browser that started it.
pub const OAUTH_COOKIE: &str = "hearth_oauth";

/// Lifetime of the ticket between a password and a second factor.
const MFA_TICKET_SECONDS: u64 = 300;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

fn already_exists(error: store::Error) -> Error {
    match error {
        store::Error::AlreadyExists(_) => Error::AlreadyExists("a user with this e-mail exists".into()),
        other => Error::Store(other),
    }
}

/// 256 random bits, base64url: refresh tokens, mailed codes, tickets, OAuth state.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// A fresh refresh token and the hash that is stored for it.
fn new_refresh_token() -> (String, [u8; 32]) {
    let token = random_token();
    let hash = hash_token(&token);
    (token, hash)
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Trims and lower-cases an e-mail and checks its shape.
pub fn normalize_email(email: &str) -> Result<String, Error> {
    let email = email.trim().to_lowercase();
    let malformed = || Error::InvalidArgument("e-mail is malformed".into());
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed());
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(malformed)?;
    let domain_ok = !domain.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain.chars().all(|c| c.is_alphanumeric() || c == '.' || c == '-');
    if local.is_empty() || local.len() > 64 || local.contains('@') || !domain_ok {
        return Err(malformed());
    }
    Ok(email)
}

fn check_password(password: &str) -> Result<(), Error> {
    if password.len() < MIN_PASSWORD_BYTES || password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::InvalidArgument(format!(
            "a password is {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_claims(claims: &Map<String, Value>) -> Result<(), Error> {
    if let Some(reserved) = claims.keys().find(|key| RESERVED_CLAIMS.contains(&key.as_str())) {
        return Err(Error::InvalidArgument(format!("`{reserved}` is a claim Hearth sets itself")));
    }
    if Value::Object(claims.clone()).to_string().len() > 1000 {
        return Err(Error::InvalidArgument("custom claims are at most 1000 bytes of JSON".into()));
    }
    Ok(())
}

fn check_profile(data: &Map<String, Value>) -> Result<(), Error> {
    if Value::Object(data.clone()).to_string().len() > 64 * 1024 {
        return Err(Error::InvalidArgument("a profile is at most 64 KiB of JSON".into()));
    }
    Ok(())
}

/// The contract's shape of a user (never the password hash).
pub fn wire_user(user: &UserRecord) -> User {
    User {
        id: user.id.clone(),
        email: user.email.clone(),
        email_verified: user.email_verified,
        anonymous: user.anonymous,
        disabled: user.disabled,
        claims: user.claims.clone(),
        data: user.data.clone(),
        mfa: user.mfa,
        created_at: format_time(user.created_at),
        providers: user.providers.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(normalize_email("  Ada@Example.COM ").expect("valid"), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "ada@exa mple.com",
            "ada@.com",
            "ada@example..com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(65))).is_err());
    }

    #[test]
    fn passwords_are_8_to_256_bytes() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password(&"x".repeat(256)).is_ok());
        assert!(check_password(&"x".repeat(257)).is_err());
    }

    #[test]
    fn custom_claims_may_not_shadow_hearth_claims() {
        let mut claims = Map::new();
        claims.insert("role".into(), Value::from("admin"));
        assert!(check_claims(&claims).is_ok());
        claims.insert("sub".into(), Value::from("someone"));
        assert!(check_claims(&claims).is_err());
    }
}
