-- Updates the bridge cannot read (a payload aiogram and the tolerant reader both
-- reject) are kept as 'unreadable' with their error, shown to admins and skipped:
-- unlike 'failed' they are not retried, since the same bytes would fail again.
-- SQLite cannot change a CHECK constraint in place, so the table is rebuilt.
CREATE TABLE updates_new (
    update_id     INTEGER PRIMARY KEY,
    kind          TEXT NOT NULL,
    raw           TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'new'
                  CHECK (state IN ('new', 'done', 'failed', 'unreadable')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    next_retry_at REAL,
    received_at   REAL NOT NULL,
    done_at       REAL
);
INSERT INTO updates_new (update_id, kind, raw, state, attempts, last_error, next_retry_at,
                         received_at, done_at)
    SELECT update_id, kind, raw, state, attempts, last_error, next_retry_at, received_at, done_at
    FROM updates;
DROP TABLE updates;
ALTER TABLE updates_new RENAME TO updates;
CREATE INDEX updates_pending ON updates(state, next_retry_at) WHERE state != 'done';
CREATE INDEX updates_done ON updates(done_at) WHERE state = 'done';
CREATE INDEX updates_unreadable ON updates(received_at) WHERE state = 'unreadable';
