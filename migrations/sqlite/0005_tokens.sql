-- API tokens. Only a token's SHA-256 is kept: the token itself is shown once, when it is
-- created. Scopes are a JSON list; a revoked token keeps its row (who had access, and
-- until when) but grants nothing.
CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    hash        TEXT    NOT NULL UNIQUE,
    scopes      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- Which token a worker id belongs to: the first token that used it. Another token
-- cannot register, claim, heartbeat or report under that id.
CREATE TABLE worker_owners (
    worker_id TEXT    PRIMARY KEY,
    token_id  INTEGER NOT NULL
);
