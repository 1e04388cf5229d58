-- Hearth's own tables on SQLite. Document data is JSONB; times are microseconds since
-- the epoch. Never edit a shipped migration: add the next one.

CREATE TABLE documents (
    path       TEXT    NOT NULL PRIMARY KEY,
    collection TEXT    NOT NULL,          -- path of the parent collection
    coll_id    TEXT    NOT NULL,          -- last segment of `collection` (collection groups)
    id         TEXT    NOT NULL,
    data       BLOB    NOT NULL,          -- JSONB
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX documents_by_collection ON documents (collection, path);
CREATE INDEX documents_by_group ON documents (coll_id, path);

-- The change log: one row per changed document, appended in the write transaction.
-- AUTOINCREMENT so a seq is never reused after pruning.
CREATE TABLE changes (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    path         TEXT    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('create', 'update', 'delete')),
    doc          TEXT,                    -- after the write, NULL for a delete
    old          TEXT,                    -- before the write, NULL for a create
    committed_at INTEGER NOT NULL
);
CREATE INDEX changes_by_time ON changes (committed_at);

CREATE TABLE meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL
);

-- SHA-256 of each service key; the keys themselves are never stored.
CREATE TABLE service_keys (
    hash       BLOB    NOT NULL PRIMARY KEY,
    created_at INTEGER NOT NULL
);
