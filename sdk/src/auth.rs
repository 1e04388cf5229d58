//! Signing in, keeping the session fresh, and where it is kept between runs.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hearth_types::{Session, User};
use serde::{Deserialize, Serialize};

/// A signed-in session as the SDK keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSession {
    /// The bearer token of calls (short-lived).
    pub access_token: String,
    /// Buys the next pair of tokens (used once).
    pub refresh_token: String,
    /// Unix seconds when `access_token` expires.
    pub expires_at: u64,
    /// Who is signed in.
    pub user: User,
}

impl StoredSession {
    pub(crate) fn from_session(session: Session) -> StoredSession {
        StoredSession {
            access_token: session.access_token,
            refresh_token: session.refresh_token,
            expires_at: unix_now() + session.expires_in,
            user: session.user,
        }
    }

    /// Whether the access token expires within `margin`.
    pub(crate) fn expires_within(&self, margin: Duration) -> bool {
        unix_now() + margin.as_secs() >= self.expires_at
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

/// Where the session lives between runs of the app. Implement it over the platform's
/// keychain or secure storage; [`MemoryTokenStore`] and [`FileTokenStore`] come with
/// the SDK.
pub trait TokenStore: Send + Sync + 'static {
    /// The saved session, if any.
    fn load(&self) -> Option<StoredSession>;
    /// Saves the session (`None`: signed out).
    fn save(&self, session: Option<&StoredSession>);
}

/// Keeps the session for this run only.
#[derive(Default)]
pub struct MemoryTokenStore {
    session: Mutex<Option<StoredSession>>,
}

impl TokenStore for MemoryTokenStore {
    fn load(&self) -> Option<StoredSession> {
        self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn save(&self, session: Option<&StoredSession>) {
        *self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = session.cloned();
    }
}

/// Keeps the session in a JSON file (written whole and renamed into place, readable by
/// the owner only on Unix). The refresh token in it signs the user in: keep the file
/// where only the app can read it.
pub struct FileTokenStore {
    path: PathBuf,
}

impl FileTokenStore {
    /// A store in the file at `path` (made on the first sign-in).
    pub fn new(path: impl Into<PathBuf>) -> FileTokenStore {
        FileTokenStore { path: path.into() }
    }
}

impl TokenStore for FileTokenStore {
    fn load(&self) -> Option<StoredSession> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save(&self, session: Option<&StoredSession>) {
        let Some(session) = session else {
            let _ = std::fs::remove_file(&self.path);
            return;
        };
        let temporary = self.path.with_extension("tmp");
        let written = serde_json::to_vec(session).map_err(std::io::Error::other).and_then(|bytes| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            std::io::Write::write_all(&mut options.open(&temporary)?, &bytes)?;
            std::fs::rename(&temporary, &self.path)
        });
        if let Err(error) = written {
            tracing::warn!(path = %self.path.display(), %error, "cannot save the session");
        }
    }
}

/// What a sign-in with e-mail and password gives.
#[derive(Debug, Clone, PartialEq)]
pub enum SignIn {
    /// Signed in.
    Done(User),
    /// The user has TOTP on: finish with [`crate::Client::verify_mfa`] and a code.
    MfaRequired {
        /// Names this half-done sign-in for `verify_mfa` (valid for minutes).
        ticket: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_store_keeps_the_session_and_forgets_it_on_sign_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileTokenStore::new(dir.path().join("session.json"));
        assert_eq!(store.load(), None);
        let user: User = serde_json::from_value(serde_json::json!({
            "id": "u1", "email": null, "email_verified": false, "anonymous": true, "disabled": false,
            "claims": {}, "data": {}, "mfa": false, "created_at": "2026-11-28T00:00:00.000000Z", "providers": ["anonymous"]
        }))
        .expect("user");
        let session = StoredSession { access_token: "a".into(), refresh_token: "r".into(), expires_at: 10, user };
        store.save(Some(&session));
        assert_eq!(FileTokenStore::new(dir.path().join("session.json")).load(), Some(session.clone()));
        assert!(session.expires_within(Duration::from_secs(60)), "expired long ago");
        store.save(None);
        assert_eq!(store.load(), None);
    }
}
