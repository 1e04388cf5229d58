-- Auth's tables on PostgreSQL: users, sessions and their refresh tokens, signing keys,
-- mailed tokens and the outbox, TOTP, MFA tickets, provider identities, OAuth sign-ins in
-- flight, and the user events `onUserCreated` functions follow. Hashes are SHA-256;
-- signing keys and TOTP secrets are sealed (see `auth::repo`).

CREATE TABLE users (
    id             TEXT    NOT NULL PRIMARY KEY,
    email          TEXT    UNIQUE,            -- trimmed, lower-case; NULL for anonymous users
    email_verified BOOLEAN NOT NULL DEFAULT FALSE,
    password_hash  TEXT,                      -- argon2id PHC string; NULL without a password
    anonymous      BOOLEAN NOT NULL DEFAULT FALSE,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    claims         TEXT    NOT NULL DEFAULT '{}',
    data           TEXT    NOT NULL DEFAULT '{}',
    providers      TEXT    NOT NULL DEFAULT '[]',
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL,
    mfa            BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE sessions (
    id         TEXT   NOT NULL PRIMARY KEY,
    user_id    TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    hash       BYTEA  NOT NULL PRIMARY KEY,
    session_id TEXT   NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid         TEXT   NOT NULL PRIMARY KEY,
    algorithm   TEXT   NOT NULL,
    private_key BYTEA  NOT NULL,              -- PKCS#8 DER, sealed
    public_key  BYTEA  NOT NULL,              -- raw Ed25519 public key
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);

CREATE TABLE mail_tokens (
    hash       BYTEA  NOT NULL PRIMARY KEY,
    user_id    TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT   NOT NULL CHECK (purpose IN ('verify', 'reset')),
    email      TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX mail_tokens_by_user ON mail_tokens (user_id);

CREATE TABLE outbox (
    id        BIGSERIAL PRIMARY KEY,
    recipient TEXT   NOT NULL,
    subject   TEXT   NOT NULL,
    body      TEXT   NOT NULL,
    sent_at   BIGINT NOT NULL
);

CREATE TABLE mfa_totp (
    user_id      TEXT   NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret       BYTEA  NOT NULL,              -- sealed
    confirmed_at BIGINT,
    last_step    BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL
);

CREATE TABLE mfa_recovery_codes (
    hash    BYTEA  NOT NULL PRIMARY KEY,
    user_id TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    used_at BIGINT
);
CREATE INDEX mfa_recovery_codes_by_user ON mfa_recovery_codes (user_id);

CREATE TABLE mfa_tickets (
    hash       BYTEA   NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at BIGINT  NOT NULL,
    used_at    BIGINT,
    failures   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE identities (
    provider   TEXT   NOT NULL,
    subject    TEXT   NOT NULL,
    user_id    TEXT   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX identities_by_user ON identities (user_id);

CREATE TABLE oauth_states (
    hash         BYTEA  NOT NULL PRIMARY KEY,
    provider     TEXT   NOT NULL,
    verifier     TEXT   NOT NULL,
    nonce        TEXT   NOT NULL,
    redirect_uri TEXT   NOT NULL,
    redirect_to  TEXT,
    expires_at   BIGINT NOT NULL,
    binding      BYTEA
);

-- `seq` is taken from `user_event_head` in the inserting transaction, like the change
-- log's: its row lock makes `seq` order commit order, so a function that follows the
-- events never skips one that commits late.
CREATE TABLE user_events (
    seq        BIGINT NOT NULL PRIMARY KEY,
    "user"     TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE user_event_head (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    seq BIGINT  NOT NULL
);
INSERT INTO user_event_head (seq) VALUES (0);

CREATE TABLE user_event_cursors (
    name TEXT   NOT NULL PRIMARY KEY,
    seq  BIGINT NOT NULL
);

-- Every session revoked, however (sign-out, a reused refresh token, a disabled or deleted
-- user), stamped by the database's clock: each node reads the new ones every second, so
-- their access tokens stop on every node, not only the one that revoked them. Kept a day.
CREATE TABLE revocations (
    session_id TEXT   NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX revocations_by_time ON revocations (at);

CREATE FUNCTION hearth_note_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO revocations (session_id, at)
    VALUES (NEW.id, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    RETURN NEW;
END
$$;

CREATE TRIGGER sessions_revoked AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION hearth_note_revocation();

-- Rate limits shared by every node (see auth::limits): token buckets by SHA-256 of their
-- key, refilled by the database's clock; and the addresses each account signed in from.
CREATE TABLE rate_buckets (
    key        TEXT             NOT NULL PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at TIMESTAMPTZ      NOT NULL
);

CREATE FUNCTION hearth_bucket(k TEXT, capacity DOUBLE PRECISION, per_second DOUBLE PRECISION, take BOOLEAN)
RETURNS DOUBLE PRECISION LANGUAGE plpgsql AS $$
DECLARE
    t DOUBLE PRECISION;
BEGIN
    INSERT INTO rate_buckets (key, tokens, updated_at) VALUES (k, capacity, clock_timestamp())
    ON CONFLICT (key) DO NOTHING;
    SELECT least(capacity, tokens + extract(epoch FROM clock_timestamp() - updated_at) * per_second)
    INTO t FROM rate_buckets WHERE key = k FOR UPDATE;
    UPDATE rate_buckets SET tokens = CASE WHEN take AND t >= 1 THEN t - 1 ELSE t END, updated_at = clock_timestamp()
    WHERE key = k;
    RETURN t;
END
$$;

CREATE TABLE sign_in_addresses (
    account TEXT        NOT NULL,
    address TEXT        NOT NULL,
    at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account, address)
);
