//! Outgoing mail: through an SMTP relay when `[mail.smtp]` is configured, otherwise to the
//! outbox table that admins read at `GET /v1/admin/outbox`, so flows that need a mailed
//! code work on a laptop and in tests.
//!
//! SMTP mail goes through a queue: `send` checks the address and returns at once, and a
//! background task delivers, retrying a relay that is down or answers "try later" (4xx)
//! with a growing pause, so a caller waits on no relay, and every caller gets the same
//! answer in the same time whether or not the relay is up.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::sync::Semaphore;

use super::repo::Repo;
use crate::config::{MailConfig, SmtpTls};
use crate::store::now_micros;

/// One message.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Mails waiting for the relay at once; past this, new mail is dropped (and logged)
/// rather than letting a dead relay grow the server's memory without bound.
const QUEUE_CAPACITY: usize = 1_000;

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    Outbox(Repo),
    Smtp(Arc<SmtpQueue>),
}

/// The SMTP relay and the mails on their way to it.
pub struct SmtpQueue {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    room: Arc<Semaphore>,
    attempts: u32,
    first_retry: Duration,
}

impl Mailer {
    /// The mailer `config` asks for.
    pub fn from_config(config: &MailConfig, repo: Repo) -> anyhow::Result<Mailer> {
        let Some(smtp) = &config.smtp else {
            return Ok(Mailer::Outbox(repo));
        };
        let from: Mailbox = config.from.parse().map_err(|error| anyhow::anyhow!("mail.from: {error}"))?;
        let mut builder = match smtp.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)?,
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        };
        if let Some(port) = smtp.port {
            builder = builder.port(port);
        }
        if let (Some(username), Some(password)) = (&smtp.username, &smtp.password) {
            builder = builder.credentials(Credentials::new(username.clone(), password.expose().to_owned()));
        }
        Ok(Mailer::Smtp(Arc::new(SmtpQueue {
            transport: builder.timeout(Some(Duration::from_secs(30))).build(),
            from,
            room: Arc::new(Semaphore::new(QUEUE_CAPACITY)),
            attempts: smtp.attempts.max(1),
            first_retry: Duration::from_millis(smtp.first_retry_ms),
        })))
    }

    /// Places `mail` in the outbox, or queues it for the relay; fails only when the mail
    /// cannot be made (an address the relay could never take).
    pub async fn send(&self, mail: Mail) -> Result<(), super::Error> {
        // The body carries a secret code: log that a mail went out, never its body.
        match self {
            Mailer::Outbox(repo) => {
                tracing::info!(subject = %mail.subject, "mail placed in the outbox");
                repo.add_to_outbox(mail.to, mail.subject, mail.body, now_micros()).await?;
            }
            Mailer::Smtp(queue) => queue.enqueue(mail)?,
        }
        Ok(())
    }
}

impl SmtpQueue {
    fn enqueue(self: &Arc<Self>, mail: Mail) -> Result<(), super::Error> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|error| super::Error::InvalidArgument(format!("cannot mail this address: {error}")))?;
        let subject = mail.subject.clone();
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .body(mail.body)
            .map_err(|error| super::Error::Internal(format!("building a mail: {error}")))?;
        let Ok(place) = self.room.clone().try_acquire_owned() else {
            tracing::error!(%subject, capacity = QUEUE_CAPACITY, "the mail queue is full (is the relay down?): mail dropped");
            return Ok(());
        };
        let queue = self.clone();
        tokio::spawn(async move {
            queue.deliver(message, &subject).await;
            drop(place);
        });
        Ok(())
    }

    /// Tries up to `attempts` times, pausing `first_retry`, then twice as long each time
    /// (at most ten minutes); a permanent refusal (5xx) ends the tries at once.
    async fn deliver(&self, message: Message, subject: &str) {
        let mut pause = self.first_retry;
        for attempt in 1..=self.attempts {
            match self.transport.send(message.clone()).await {
                Ok(_) => {
                    tracing::info!(%subject, attempt, "mail sent over SMTP");
                    return;
                }
                Err(error) if error.is_permanent() => {
                    tracing::error!(%subject, attempt, %error, "the relay refused a mail for good");
                    return;
                }
                Err(error) if attempt < self.attempts => {
                    tracing::warn!(%subject, attempt, %error, retry_in_ms = pause.as_millis() as u64, "SMTP delivery failed; will retry");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(600));
                }
                Err(error) => tracing::error!(%subject, attempt, %error, "SMTP delivery failed; giving up"),
            }
        }
    }
}
