-- Invite pools (pre-minted links waiting for a visitor), link revocation after
-- use, and join requests for channels in join-request mode.

ALTER TABLE invite_links ADD COLUMN assigned_at REAL;   -- a pool link given to a visitor
ALTER TABLE invite_links ADD COLUMN discarded_at REAL;  -- a pool link dropped (near expiry, mode change)
CREATE INDEX invite_links_pool ON invite_links(chat_id, creates_join_request, expire_date)
    WHERE visit_id IS NULL AND kind = 'visitor' AND discarded_at IS NULL AND revoked_at IS NULL;
CREATE INDEX invite_links_to_revoke ON invite_links(used_at)
    WHERE used_at IS NOT NULL AND revoked_at IS NULL AND kind = 'visitor';

CREATE TABLE join_requests (
    id              INTEGER PRIMARY KEY,
    chat_id         INTEGER NOT NULL REFERENCES channels(chat_id),
    user_id         INTEGER NOT NULL,
    link_id         INTEGER REFERENCES invite_links(id),
    link_url        TEXT,
    requested_at    INTEGER NOT NULL,   -- Telegram's date, seconds
    update_id       INTEGER,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'approved', 'failed', 'manual')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    decided_at      REAL,
    UNIQUE (chat_id, user_id, requested_at)
);
CREATE INDEX join_requests_due ON join_requests(state, next_attempt_at);
