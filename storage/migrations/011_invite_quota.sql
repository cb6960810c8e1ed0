-- Personal links per client (INVITE_LINKS_PER_CLIENT_HOUR) and the channel's
-- fallback link: strangers cannot drain a pool, and a visitor refused a personal
-- link is sent to the fallback link instead (a campaign link named 'fallback').

-- The client a visitor link was handed to: the tracker's rate-limit key (the IP,
-- an IPv6 /64). Only the last hour's matter to the quota; the pool's upkeep clears
-- older ones, so this index holds about an hour of links and no address stays.
ALTER TABLE invite_links ADD COLUMN client_key TEXT;
CREATE INDEX invite_links_client
    ON invite_links(client_key, chat_id, coalesce(assigned_at, created_at))
    WHERE client_key IS NOT NULL;

-- Campaign links by channel and name: the fallback link is read for every visitor
-- past the quota, and a channel's visitor links (the bulk of the table) are not.
CREATE INDEX invite_links_campaign ON invite_links(chat_id, campaign) WHERE kind = 'campaign';
