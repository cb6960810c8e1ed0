-- Conversions go before visit forwards: both share AdTarget's per-key rate limit,
-- and a busy landing page must not delay the joins an advertiser pays for.
ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox(state, priority, next_attempt_at);
