-- `documents` was keyed by `path` and indexed on `(collection, path)` too: two b-trees
-- over the same key (a path names its collection), so every write paid for both, and a
-- document with a client-made (random) id landed on a random page of each. The
-- `(collection, path)` index is now the one unique key, and every lookup by path names
-- the collection as well. SQLite cannot drop a primary key, so the table is rebuilt;
-- declared `hx_` indexes go with the old table and are made again at start.
CREATE TABLE documents_new (
    path       TEXT    NOT NULL,
    collection TEXT    NOT NULL,          -- path of the parent collection
    coll_id    TEXT    NOT NULL,          -- last segment of `collection` (collection groups)
    id         TEXT    NOT NULL,
    data       BLOB    NOT NULL,          -- JSONB
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO documents_new (path, collection, coll_id, id, data, version, created_at, updated_at)
    SELECT path, collection, coll_id, id, data, version, created_at, updated_at FROM documents;
DROP TABLE documents;
ALTER TABLE documents_new RENAME TO documents;
CREATE UNIQUE INDEX documents_by_collection ON documents (collection, path);
CREATE INDEX documents_by_group ON documents (coll_id, path);
