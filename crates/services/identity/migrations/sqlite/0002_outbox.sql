-- Events leave through the transactional outbox (bus::outbox) and are
-- consumed idempotently (bus::idempotency).
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
