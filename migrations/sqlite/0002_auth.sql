-- Users, sessions (refresh-token families) and the keys that sign access tokens.

CREATE TABLE users (
    id                 TEXT    NOT NULL PRIMARY KEY,
    email              TEXT    UNIQUE,                -- trimmed, lower-case; NULL for anonymous users
    email_verified     INTEGER NOT NULL DEFAULT 0,
    password_hash      TEXT,                          -- argon2id PHC string; NULL without a password
    anonymous          INTEGER NOT NULL DEFAULT 0,
    disabled           INTEGER NOT NULL DEFAULT 0,
    claims             TEXT    NOT NULL DEFAULT '{}', -- custom claims (JSON object)
    data               TEXT    NOT NULL DEFAULT '{}', -- the user's own profile (JSON object)
    providers          TEXT    NOT NULL DEFAULT '[]', -- JSON array of provider names
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);

-- One row per sign-in; its refresh tokens form one family.
CREATE TABLE sessions (
    id          TEXT    NOT NULL PRIMARY KEY,
    user_id     TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- SHA-256 of each refresh token ever issued; a used one presented again revokes its session.
CREATE TABLE refresh_tokens (
    hash        BLOB    NOT NULL PRIMARY KEY,
    session_id  TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    used_at     INTEGER
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid         TEXT    NOT NULL PRIMARY KEY,
    algorithm   TEXT    NOT NULL,
    private_key BLOB    NOT NULL,                     -- PKCS#8 DER
    public_key  BLOB    NOT NULL,                     -- raw Ed25519 public key
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER                               -- no longer signs; published until its tokens expire
);
