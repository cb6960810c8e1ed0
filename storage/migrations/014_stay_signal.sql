-- Migration 006's "retention signal" is the stay signal (/stay): "retention" now
-- means only RETENTION_DAYS, how long personal data is kept. Renamed in place, rows
-- kept. SQLite has no RENAME for indexes and triggers: they are dropped first and
-- made again under their new names, as 006 made them.
-- sqlite only: 006's trigger (storage/dialect.py)
DROP TRIGGER joins_deleted_retention_marks;
DROP INDEX retention_due;
DROP INDEX retention_chat_state;

ALTER TABLE channels RENAME COLUMN retention_signal_days TO stay_signal_days;
ALTER TABLE channels RENAME COLUMN retention_signal_event TO stay_signal_event;
ALTER TABLE channels RENAME COLUMN retention_signal_after TO stay_signal_after;
ALTER TABLE retention_checks RENAME TO stay_checks;
ALTER TABLE retention_sweep RENAME TO stay_sweep;

-- The scheduler's question: which pending checks are due, earliest first.
CREATE INDEX stay_due ON stay_checks(due_at) WHERE state = 'pending';
-- /stay's counts per channel and state.
CREATE INDEX stay_chat_state ON stay_checks(chat_id, state);

-- As in 006: deleting the newest join (a person forgotten) moves the sweep's cursor
-- and the channels' watermarks back, so the next join is still swept and still
-- counts as recorded after the setting.
-- sqlite only: PostgreSQL never reuses an id (storage/dialect.py)
CREATE TRIGGER joins_deleted_stay_marks AFTER DELETE ON joins
WHEN OLD.id > (SELECT coalesce(max(id), 0) FROM joins)
BEGIN
    UPDATE stay_sweep SET last_join_id = (SELECT coalesce(max(id), 0) FROM joins)
    WHERE last_join_id > (SELECT coalesce(max(id), 0) FROM joins);
    UPDATE channels SET stay_signal_after = (SELECT coalesce(max(id), 0) FROM joins)
    WHERE stay_signal_after > (SELECT coalesce(max(id), 0) FROM joins);
END;
