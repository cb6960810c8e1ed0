-- Admin settings: AdTarget's own event type for a channel (from GET /channels),
-- and who promoted the bot (they get the onboarding message).
ALTER TABLE channels ADD COLUMN adtarget_event_type TEXT;
ALTER TABLE channels ADD COLUMN promoted_by INTEGER;
