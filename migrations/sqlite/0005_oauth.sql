-- OAuth2/OIDC sign-in: the identities users signed in with, and the state of sign-ins in
-- flight (PKCE verifier, nonce) between the redirect and the callback.

CREATE TABLE identities (
    provider   TEXT    NOT NULL,
    subject    TEXT    NOT NULL,     -- the provider's `sub`
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE INDEX identities_by_user ON identities (user_id);

CREATE TABLE oauth_states (
    hash        BLOB    NOT NULL PRIMARY KEY,   -- SHA-256 of the `state` parameter
    provider    TEXT    NOT NULL,
    verifier    TEXT    NOT NULL,               -- PKCE code verifier
    nonce       TEXT    NOT NULL,
    redirect_uri TEXT   NOT NULL,
    redirect_to TEXT,                           -- where the app wants the tokens, if anywhere
    expires_at  INTEGER NOT NULL
);
