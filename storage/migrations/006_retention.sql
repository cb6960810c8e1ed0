-- The retention signal (/retention): an attributed joiner still in the channel after
-- `retention_signal_days` gets the follow-up event `retention_signal_event`. Off (NULL)
-- by default. (Not RETENTION_DAYS, which is how long personal data is kept.)
ALTER TABLE channels ADD COLUMN retention_signal_days INTEGER;
ALTER TABLE channels ADD COLUMN retention_signal_event TEXT;
-- A change applies to joins recorded after it: the highest join id when it was made.
ALTER TABLE channels ADD COLUMN retention_signal_after INTEGER NOT NULL DEFAULT 0;

-- One check per attributed join of a channel with retention on, scheduled by a sweep
-- over joins newer than the sweep's cursor (no work on the poller's commit path).
-- The days and event are copied from the channel when scheduled: a later change of
-- the setting leaves checks already scheduled as they were.
CREATE TABLE retention_checks (
    id         INTEGER PRIMARY KEY,
    join_id    INTEGER NOT NULL UNIQUE REFERENCES joins(id),
    chat_id    INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    days       INTEGER NOT NULL,
    event_type TEXT NOT NULL,              -- as /retention took it: Lead, Custom:Name, ...
    due_at     REAL NOT NULL,              -- joined_at + days; later after a transient error
    state      TEXT NOT NULL DEFAULT 'pending'
               CHECK (state IN ('pending', 'sent', 'left', 'failed')),
    attempts   INTEGER NOT NULL DEFAULT 0, -- transient getChatMember failures so far
    checked_at REAL,
    status     TEXT,                       -- Telegram's member status at the check
    detail     TEXT,                       -- why it failed, or the last transient error
    outbox_id  INTEGER,                    -- the follow-up event's row, once queued
    created_at REAL NOT NULL
);
-- The scheduler's question: which pending checks are due, earliest first.
CREATE INDEX retention_due ON retention_checks(due_at) WHERE state = 'pending';
-- /retention's counts per channel and state.
CREATE INDEX retention_chat_state ON retention_checks(chat_id, state);

-- The sweep's cursor (one row): joins up to this id have been considered. Existing
-- joins are skipped (no channel had retention on before this migration).
CREATE TABLE retention_sweep (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    last_join_id INTEGER NOT NULL,
    swept_at     REAL
);
INSERT INTO retention_sweep (id, last_join_id) SELECT 1, coalesce(max(id), 0) FROM joins;

-- Join ids are max(id) + 1: deleting the newest join (a person forgotten on request)
-- frees its id for the next join. Move the cursor and the channels' watermarks back
-- to the new newest join, so that next join is still swept and still counts as
-- recorded after the setting.
-- sqlite only: PostgreSQL never reuses an id (storage/dialect.py)
CREATE TRIGGER joins_deleted_retention_marks AFTER DELETE ON joins
WHEN OLD.id > (SELECT coalesce(max(id), 0) FROM joins)
BEGIN
    UPDATE retention_sweep SET last_join_id = (SELECT coalesce(max(id), 0) FROM joins)
    WHERE last_join_id > (SELECT coalesce(max(id), 0) FROM joins);
    UPDATE channels SET retention_signal_after = (SELECT coalesce(max(id), 0) FROM joins)
    WHERE retention_signal_after > (SELECT coalesce(max(id), 0) FROM joins);
END;
