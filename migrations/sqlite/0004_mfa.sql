-- TOTP multi-factor sign-in (RFC 6238): one authenticator per user, single-use recovery
-- codes, and the short-lived tickets between a password and a code.

ALTER TABLE users ADD COLUMN mfa INTEGER NOT NULL DEFAULT 0;

CREATE TABLE mfa_totp (
    user_id      TEXT    NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret       BLOB    NOT NULL,
    confirmed_at INTEGER,                      -- NULL while enrolment awaits its first code
    last_step    INTEGER NOT NULL DEFAULT 0,   -- newest time step accepted: a code works once
    created_at   INTEGER NOT NULL
);

CREATE TABLE mfa_recovery_codes (
    hash     BLOB    NOT NULL PRIMARY KEY,     -- SHA-256 of the code
    user_id  TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    used_at  INTEGER
);
CREATE INDEX mfa_recovery_codes_by_user ON mfa_recovery_codes (user_id);

CREATE TABLE mfa_tickets (
    hash       BLOB    NOT NULL PRIMARY KEY,   -- SHA-256 of the ticket
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
