-- Single-use tokens mailed for e-mail verification and password reset, and the outbox
-- that holds mail when no SMTP server is configured.

CREATE TABLE mail_tokens (
    hash        BLOB    NOT NULL PRIMARY KEY,   -- SHA-256 of the token; the token itself is only mailed
    user_id     TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     TEXT    NOT NULL CHECK (purpose IN ('verify', 'reset')),
    email       TEXT    NOT NULL,               -- the address it was sent to
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX mail_tokens_by_user ON mail_tokens (user_id);

CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    sent_at     INTEGER NOT NULL
);
