-- Keyhold's PostgreSQL schema, version 2: passkey sign-in ceremonies between their start
-- and their finish. A finish takes its ceremony with DELETE … RETURNING: used once.

CREATE TABLE ceremonies (
    id uuid PRIMARY KEY,
    expires_at bigint NOT NULL,
    data jsonb NOT NULL
);
CREATE INDEX ceremonies_expiry ON ceremonies (expires_at);
