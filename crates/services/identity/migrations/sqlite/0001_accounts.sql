CREATE TABLE accounts (
    id TEXT PRIMARY KEY NOT NULL,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    -- JSON array of role names.
    roles TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
