CREATE TABLE profiles (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    display_name TEXT NOT NULL,
    -- JSON array of addresses.
    addresses TEXT NOT NULL,
    -- JSON object.
    preferences TEXT NOT NULL,
    -- Bumped on every change; the ETag.
    version BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE outbox_lease (
    id INTEGER PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
INSERT INTO outbox_lease (id, holder, until_ms) VALUES (1, '', 0);

CREATE TABLE processed_events (
    grp TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at_ms BIGINT NOT NULL,
    PRIMARY KEY (grp, event_id)
);
