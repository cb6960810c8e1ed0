-- Core schema: channels, visits, invite links, joins, the update inbox and the outbox.
-- Times are UTC Unix values: INTEGER seconds for Telegram's dates, REAL seconds for our own clocks.

CREATE TABLE channels (
    chat_id             INTEGER PRIMARY KEY,          -- Telegram's -100... id
    title               TEXT NOT NULL DEFAULT '',
    username            TEXT,                          -- public channels only
    chat_type           TEXT NOT NULL DEFAULT 'channel',
    active              INTEGER NOT NULL DEFAULT 1,    -- 0 once the bot lost admin
    can_invite_users    INTEGER NOT NULL DEFAULT 1,
    event_type          TEXT,                          -- NULL: DEFAULT_EVENT_TYPE
    mode                TEXT NOT NULL DEFAULT 'link' CHECK (mode IN ('link', 'request')),
    adtarget_channel_id TEXT,                          -- NULL: report the Telegram id
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL
);
CREATE UNIQUE INDEX channels_username ON channels(lower(username)) WHERE username IS NOT NULL;

-- One row per landing-page visitor (tempId): the latest non-empty attribution.
CREATE TABLE visits (
    id                INTEGER PRIMARY KEY,
    temp_id           TEXT NOT NULL UNIQUE,
    client_session_id TEXT,
    external_user_id  TEXT,
    href              TEXT,
    referrer          TEXT,
    fbc               TEXT,
    fbp               TEXT,
    gclid             TEXT,
    ttclid            TEXT,
    sccid             TEXT,
    client_ip         TEXT,
    user_agent        TEXT,
    utm_source        TEXT,
    utm_medium        TEXT,
    utm_campaign      TEXT,
    utm_content       TEXT,
    utm_term          TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL
);
CREATE INDEX visits_created ON visits(created_at);

-- Links the bot minted: personal (one visitor) or campaign (an admin's named link).
CREATE TABLE invite_links (
    id                   INTEGER PRIMARY KEY,
    url                  TEXT NOT NULL UNIQUE,
    chat_id              INTEGER NOT NULL REFERENCES channels(chat_id),
    kind                 TEXT NOT NULL CHECK (kind IN ('visitor', 'campaign')),
    name                 TEXT NOT NULL,
    visit_id             INTEGER REFERENCES visits(id),
    campaign             TEXT,
    creates_join_request INTEGER NOT NULL DEFAULT 0,
    expire_date          INTEGER,
    created_at           REAL NOT NULL,
    used_at              REAL,
    revoked_at           REAL
);
CREATE INDEX invite_links_visit ON invite_links(visit_id, chat_id);
CREATE INDEX invite_links_chat_created ON invite_links(chat_id, created_at);

CREATE TABLE joins (
    id               INTEGER PRIMARY KEY,
    chat_id          INTEGER NOT NULL REFERENCES channels(chat_id),
    user_id          INTEGER NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('attributed', 'campaign', 'organic')),
    link_id          INTEGER REFERENCES invite_links(id),
    link_url         TEXT,                 -- as Telegram reported it (masked for others' links)
    via_join_request INTEGER NOT NULL DEFAULT 0,
    joined_at        INTEGER NOT NULL,     -- Telegram's date, seconds
    update_id        INTEGER,
    left_at          INTEGER,
    created_at       REAL NOT NULL
);
-- The natural keys that make a redelivered update, or a second update for the same
-- join, a no-op: one join per (chat, user, link); organic joins per (chat, user, date).
CREATE UNIQUE INDEX joins_by_link ON joins(chat_id, user_id, link_id) WHERE link_id IS NOT NULL;
CREATE UNIQUE INDEX joins_organic ON joins(chat_id, user_id, joined_at) WHERE link_id IS NULL;
CREATE INDEX joins_chat_time ON joins(chat_id, joined_at);
CREATE INDEX joins_user ON joins(user_id, chat_id);

CREATE TABLE leaves (
    id        INTEGER PRIMARY KEY,
    chat_id   INTEGER NOT NULL,
    user_id   INTEGER NOT NULL,
    left_at   INTEGER NOT NULL,
    update_id INTEGER,
    UNIQUE (chat_id, user_id, left_at)
);
CREATE INDEX leaves_chat_time ON leaves(chat_id, left_at);

-- Every update is stored here, in one transaction per getUpdates batch, before the
-- next getUpdates confirms it to Telegram. Done rows are kept for a while so a
-- redelivered update is recognised; failed rows are retried with backoff.
CREATE TABLE updates (
    update_id     INTEGER PRIMARY KEY,
    kind          TEXT NOT NULL,
    raw           TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    next_retry_at REAL,
    received_at   REAL NOT NULL,
    done_at       REAL
);
CREATE INDEX updates_pending ON updates(state, next_retry_at) WHERE state != 'done';
CREATE INDEX updates_done ON updates(done_at) WHERE state = 'done';

-- Everything sent to AdTarget. The attempt is counted when a row is claimed, so a
-- crash mid-send still counts; the idempotency key never changes across retries.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    kind             TEXT NOT NULL,
    path             TEXT NOT NULL,
    body             TEXT NOT NULL,         -- JSON
    headers          TEXT,                  -- JSON object of extra headers, or NULL
    idempotency_key  TEXT NOT NULL UNIQUE,
    join_id          INTEGER UNIQUE REFERENCES joins(id),
    telegram_user_id INTEGER,
    chat_id          INTEGER,
    event_type       TEXT,
    event_time_ms    INTEGER,
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'sending', 'delivered', 'parked')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    lease_until      REAL,
    first_attempt_at REAL,
    created_at       REAL NOT NULL,
    delivered_at     REAL,
    conversion_id    TEXT,
    dispatched       INTEGER,
    warning          TEXT,
    replayed         INTEGER NOT NULL DEFAULT 0,
    parked_reason    TEXT,
    last_error       TEXT,
    errors           TEXT NOT NULL DEFAULT '[]'   -- JSON list, newest last, capped
);
CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
CREATE INDEX outbox_chat ON outbox(chat_id, state);

-- Small durable facts: the courier's pause and its reason, the last poll time.
CREATE TABLE bridge_state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
