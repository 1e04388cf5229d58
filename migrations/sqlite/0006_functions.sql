-- Document triggers: each keeps a durable cursor into the change log, and the events
-- that kept failing wait here for an admin.

CREATE TABLE trigger_cursors (
    name        TEXT    NOT NULL PRIMARY KEY,   -- the trigger's export name
    seq         INTEGER NOT NULL                -- the last change it is done with
);

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,               -- the trigger
    seq         INTEGER NOT NULL,               -- the change it failed on
    path        TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT    NOT NULL,
    failed_at   INTEGER NOT NULL                -- microseconds since the epoch
);

-- Scheduled functions: the last tick each one ran (or skipped at its first deploy).
CREATE TABLE schedule_ticks (
    name        TEXT    NOT NULL PRIMARY KEY,   -- the function's export name
    tick        INTEGER NOT NULL                -- microseconds since the epoch
);
