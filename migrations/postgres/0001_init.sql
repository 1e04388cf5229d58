-- Hearth's own tables on PostgreSQL: the document store, its change log and the small
-- tables beside them. Times are microseconds since the epoch. Never edit a shipped
-- migration: add the next one.

CREATE TABLE documents (
    path       TEXT   NOT NULL PRIMARY KEY,
    collection TEXT   NOT NULL,             -- path of the parent collection
    coll_id    TEXT   NOT NULL,             -- last segment of `collection` (collection groups)
    id         TEXT   NOT NULL,
    data       JSONB  NOT NULL,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX documents_by_collection ON documents (collection, path COLLATE "C");
CREATE INDEX documents_by_group ON documents (coll_id, path COLLATE "C");

-- The change log. `seq` is not a sequence: it is taken from `log_head` at the end of the
-- writing transaction, whose row lock is held until commit, so `seq` order is commit
-- order across every node (see ARCHITECTURE.md, "The change log on PostgreSQL").
CREATE TABLE changes (
    seq          BIGINT NOT NULL PRIMARY KEY,
    path         TEXT   NOT NULL,
    kind         TEXT   NOT NULL CHECK (kind IN ('create', 'update', 'delete')),
    doc          TEXT,                      -- after the write (logged form), NULL for a delete
    old          TEXT,                      -- before the write, NULL for a create
    committed_at BIGINT NOT NULL,
    depth        SMALLINT NOT NULL DEFAULT 0 -- trigger runs in a row that led to it (0: a client's write)
);

CREATE TABLE log_head (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    seq BIGINT  NOT NULL
);
INSERT INTO log_head (seq) VALUES (0);

CREATE TABLE meta (
    key   TEXT  NOT NULL PRIMARY KEY,
    value BYTEA NOT NULL
);

-- SHA-256 of each service key; the keys themselves are never stored.
CREATE TABLE service_keys (
    hash       BYTEA  NOT NULL PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE trigger_cursors (
    name TEXT   NOT NULL PRIMARY KEY,           -- the trigger's export name
    seq  BIGINT NOT NULL                        -- the last change it is done with
);

CREATE TABLE dead_letters (
    id        BIGSERIAL PRIMARY KEY,
    name      TEXT    NOT NULL,
    seq       BIGINT  NOT NULL,
    path      TEXT    NOT NULL,
    attempts  INTEGER NOT NULL,
    error     TEXT    NOT NULL,
    failed_at BIGINT  NOT NULL
);

CREATE TABLE schedule_ticks (
    name TEXT   NOT NULL PRIMARY KEY,
    tick BIGINT NOT NULL
);

-- Channel events too large for a NOTIFY payload, read by id by the other nodes and
-- deleted after a minute (see store::postgres::relay).
CREATE TABLE channel_messages (
    id   BIGSERIAL PRIMARY KEY,
    body TEXT   NOT NULL,
    at   BIGINT NOT NULL
);

-- Work one node at a time does (following a trigger's log), held until `expires_at`
-- unless renewed; the database's clock decides.
CREATE TABLE leases (
    name       TEXT        NOT NULL PRIMARY KEY,
    holder     TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- The project's deployed files (`rules.toml`, `functions/<file>.js`; NULL: deleted), so
-- every node runs the same rules and functions; each node polls for versions it has not
-- applied (see server/src/cluster.rs).
CREATE TABLE deployments (
    name        TEXT   NOT NULL PRIMARY KEY,
    source      TEXT,
    version     BIGINT NOT NULL UNIQUE,
    deployed_at BIGINT NOT NULL
);
