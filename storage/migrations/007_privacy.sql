-- Privacy (RETENTION_DAYS): visits and finished outbox rows lose their personal
-- fields once old; `scrubbed_at` marks those done. The partial indexes hold only
-- rows not yet scrubbed, so the hourly sweep reads just the rows it changes and
-- never walks the ever-growing history of rows already cleared.
ALTER TABLE visits ADD COLUMN scrubbed_at REAL;
ALTER TABLE outbox ADD COLUMN scrubbed_at REAL;

-- A visit's age is its last activity: a visitor who comes back is fresh again.
CREATE INDEX visits_to_scrub ON visits(updated_at) WHERE scrubbed_at IS NULL;
-- Pending and sending rows are never scrubbed: they still have to be delivered.
CREATE INDEX outbox_to_scrub ON outbox(created_at)
    WHERE scrubbed_at IS NULL AND state IN ('delivered', 'parked');
