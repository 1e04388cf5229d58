//! Outgoing mail: through an SMTP relay when `[mail.smtp]` is configured, otherwise to the
//! outbox table that admins read at `GET /v1/admin/outbox`, so flows that need a mailed
//! code work on a laptop and in tests.

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

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

/// Where mail goes.
#[derive(Clone)]
pub enum Mailer {
    Outbox(Repo),
    Smtp { transport: AsyncSmtpTransport<Tokio1Executor>, from: Mailbox },
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
        Ok(Mailer::Smtp { transport: builder.build(), from })
    }

    pub async fn send(&self, mail: Mail) -> Result<(), super::Error> {
        // The body carries a secret code: log that a mail went out, never its body.
        match self {
            Mailer::Outbox(repo) => {
                tracing::info!(subject = %mail.subject, "mail placed in the outbox");
                repo.add_to_outbox(mail.to, mail.subject, mail.body, now_micros()).await?;
            }
            Mailer::Smtp { transport, from } => {
                let to: Mailbox = mail
                    .to
                    .parse()
                    .map_err(|error| super::Error::InvalidArgument(format!("cannot mail this address: {error}")))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(mail.subject.clone())
                    .body(mail.body)
                    .map_err(|error| super::Error::Internal(format!("building a mail: {error}")))?;
                transport
                    .send(message)
                    .await
                    .map_err(|error| super::Error::Internal(format!("SMTP delivery failed: {error}")))?;
                tracing::info!(subject = %mail.subject, "mail sent over SMTP");
            }
        }
        Ok(())
    }
}
