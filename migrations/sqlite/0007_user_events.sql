-- Users as they were created, for `onUserCreated` functions: each follows this log from
-- a durable cursor, as document triggers follow `changes`. Written in the transaction
-- that inserts the user, so no new user is missed across a crash.

CREATE TABLE user_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    user        TEXT    NOT NULL,               -- the user in the contract's shape, JSON
    created_at  INTEGER NOT NULL                -- microseconds since the epoch
);

CREATE TABLE user_event_cursors (
    name        TEXT    NOT NULL PRIMARY KEY,   -- the function's export name
    seq         INTEGER NOT NULL                -- the last user event it is done with
);
