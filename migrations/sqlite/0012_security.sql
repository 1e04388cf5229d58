-- Hardening of sign-in: wrong codes use up an MFA ticket (it is burnt after five), and an
-- OAuth sign-in in flight is bound to the browser that started it (the SHA-256 of a
-- cookie set at the start, checked at the callback).

ALTER TABLE mfa_tickets ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE oauth_states ADD COLUMN binding BLOB;
