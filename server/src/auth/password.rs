//! Password hashing with argon2id on a few dedicated low-priority threads: a flood of
//! logins queues for them, and the scheduler keeps serving every other request first.

use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{mpsc, oneshot};

use crate::config::PasswordConfig;

/// Shortest and longest password accepted, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 256;

/// Hashing jobs that may wait; past that, callers wait to enqueue.
const QUEUE: usize = 1024;

type Job = Box<dyn FnOnce(&Params) + Send>;

#[derive(Clone)]
pub struct Passwords {
    jobs: mpsc::Sender<Job>,
    /// A hash of nothing anyone knows, verified when the e-mail is unknown so that an
    /// unknown e-mail and a wrong password take the same time.
    decoy: Arc<String>,
}

impl Passwords {
    pub fn new(config: &PasswordConfig) -> anyhow::Result<Passwords> {
        let params = Params::new(config.memory_kib, config.iterations, config.parallelism, None)
            .map_err(|error| anyhow::anyhow!("auth.password: {error}"))?;
        let threads = if config.max_concurrent == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            config.max_concurrent
        };
        let (jobs, receiver) = mpsc::channel::<Job>(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
            let receiver = receiver.clone();
            let params = params.clone();
            std::thread::Builder::new().name(format!("hearth-hash-{index}")).spawn(move || {
                // Lowest priority: hashing runs on what the rest of the server leaves.
                if let Err(error) = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min) {
                    tracing::debug!(?error, "could not lower the priority of a hashing thread");
                }
                loop {
                    let job = receiver.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                    match job {
                        Some(job) => job(&params),
                        None => return,
                    }
                }
            })?;
        }
        let secret: [u8; 16] = rand::random();
        let decoy = hash_with(&params, &secret)?;
        Ok(Passwords { jobs, decoy: Arc::new(decoy) })
    }

    async fn run<R: Send + 'static>(&self, work: impl FnOnce(&Params) -> R + Send + 'static) -> anyhow::Result<R> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |params| {
            let _ = reply.send(work(params));
        });
        self.jobs.send(job).await.map_err(|_| anyhow::anyhow!("the hashing threads stopped"))?;
        Ok(answer.await?)
    }

    /// The PHC string of `password`.
    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let password = password.to_owned();
        self.run(move |params| hash_with(params, password.as_bytes())).await?
    }

    /// Whether `password` matches `hash`; with no hash (unknown user), spends the same
    /// time on the decoy and answers false.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> bool {
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.decoy.as_str().to_owned(), str::to_owned);
        let password = password.to_owned();
        let matched = self
            .run(move |params| {
                Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
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
