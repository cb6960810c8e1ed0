-- Statistics (/stats): covering indexes so every figure is read from an index alone,
-- and the join's attribution copied onto the join so "top sources" needs no joins.

-- Copied at join time: the visit's utm_source / utm_campaign (attributed joins) and
-- the link's campaign name (campaign joins). NULL for organic joins.
ALTER TABLE joins ADD COLUMN utm_source TEXT;
ALTER TABLE joins ADD COLUMN utm_campaign TEXT;
ALTER TABLE joins ADD COLUMN campaign TEXT;

-- Joins recorded before this migration: fill from their link and visit.
UPDATE joins SET
    utm_source = (SELECT v.utm_source FROM invite_links l JOIN visits v ON v.id = l.visit_id
                  WHERE l.id = joins.link_id),
    utm_campaign = (SELECT v.utm_campaign FROM invite_links l JOIN visits v ON v.id = l.visit_id
                    WHERE l.id = joins.link_id)
WHERE kind = 'attributed' AND link_id IS NOT NULL;
UPDATE joins SET campaign = (SELECT l.campaign FROM invite_links l WHERE l.id = joins.link_id)
WHERE kind = 'campaign' AND link_id IS NOT NULL;

-- Joins per kind, who is still present, and top sources: one covering scan per
-- channel, read in GROUP BY order (no sort of the period's joins).
CREATE INDEX joins_sources
    ON joins(chat_id, kind, utm_source, utm_campaign, campaign, joined_at, left_at);

-- Visitor links given to a visitor, by the time they were given (pool links: assigned_at).
CREATE INDEX invite_links_issued
    ON invite_links(chat_id, coalesce(assigned_at, created_at), visit_id)
    WHERE kind = 'visitor' AND visit_id IS NOT NULL;

-- Conversions per channel and state, by join time: a range count per state.
CREATE INDEX outbox_conversions ON outbox(chat_id, state, event_time_ms)
    WHERE kind = 'conversion';
