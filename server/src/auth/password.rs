//! Password hashing with argon2id, off the async runtime and bounded, so a flood of
//! logins waits its turn instead of starving every other request.

use std::sync::Arc;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::config::PasswordConfig;

/// Shortest and longest password accepted, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 256;

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of nothing anyone knows, verified when the e-mail is unknown so that an
    /// unknown e-mail and a wrong password take the same time.
    decoy: Arc<String>,
}

impl Passwords {
    pub fn new(config: &PasswordConfig) -> anyhow::Result<Passwords> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|error| anyhow::anyhow!("auth.password: {error}"))?;
        let concurrent = if config.max_concurrent == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            config.max_concurrent
        };
        let secret: [u8; 16] = rand::random();
        let decoy = hash_with(&params, &secret)?;
        Ok(Passwords { params, permits: Arc::new(Semaphore::new(concurrent)), decoy: Arc::new(decoy) })
    }

    /// The PHC string of `password`.
    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let params = self.params.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash_with(&params, password.as_bytes())).await?
    }

    /// Whether `password` matches `hash`; with no hash (unknown user), spends the same
    /// time on the decoy and answers false.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let (hash, known) = match hash {
            Some(hash) => (hash.to_owned(), true),
            None => (self.decoy.as_str().to_owned(), false),
        };
        let params = self.params.clone();
        let password = password.to_owned();
        let matched = tokio::task::spawn_blocking(move || {
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false);
        matched && known
    }
}

fn hash_with(params: &Params, password: &[u8]) -> anyhow::Result<String> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|error| anyhow::anyhow!("hashing a password: {error}"))
}
