-- The value and currency (ISO 4217) of a channel's join event, set with its
-- event type by /event: a Purchase needs both, since ad platforms drop a
-- Purchase without a value. A Purchase set before this column existed has none:
-- the bridge reports such a channel's joins as its next event setting
-- (AdTarget's, else DEFAULT_EVENT_TYPE), and doctor names it.
ALTER TABLE channels ADD COLUMN event_value REAL;
ALTER TABLE channels ADD COLUMN event_currency TEXT;
