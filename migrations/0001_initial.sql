-- Keyhold's PostgreSQL schema, version 1. Records are the JSON of `domain::records` (the
-- same shape the sled backend writes); the columns beside them are what is looked up,
-- locked, ordered or swept by.

CREATE TABLE users (
    id uuid PRIMARY KEY,
    -- Normalised (lower case), as in the record.
    email text NOT NULL CONSTRAINT users_email_key UNIQUE,
    -- The username in lower case: usernames are unique whatever their case.
    username_key text NOT NULL CONSTRAINT users_username_key UNIQUE,
    data jsonb NOT NULL
);

CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    device_id text NOT NULL,
    created_at bigint NOT NULL,
    refresh_expires_at bigint NOT NULL,
    data jsonb NOT NULL,
    -- One session per device of a user: a new sign-in on it replaces the old one.
    CONSTRAINT sessions_device_key UNIQUE (user_id, device_id)
);
CREATE INDEX sessions_expiry ON sessions (refresh_expires_at);

CREATE TABLE challenges (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    -- Set for a step-up code: the one live code of its user and reason.
    step_up_reason text,
    last_sent_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    -- Moves on with every write: what a compare-and-swap compares.
    revision bigint NOT NULL,
    data jsonb NOT NULL,
    CONSTRAINT challenges_step_up_key UNIQUE (user_id, step_up_reason)
);
CREATE INDEX challenges_by_user ON challenges (user_id, last_sent_at, expires_at);
CREATE INDEX challenges_expiry ON challenges (expires_at);

CREATE TABLE factor_failures (
    user_id uuid PRIMARY KEY,
    window_start bigint NOT NULL,
    failures bigint NOT NULL
);

CREATE TABLE email_codes (
    -- The code's keyed hash.
    hash bytea PRIMARY KEY,
    user_id uuid NOT NULL,
    expires_at bigint NOT NULL,
    data jsonb NOT NULL
);
CREATE INDEX email_codes_by_user ON email_codes (user_id);
CREATE INDEX email_codes_expiry ON email_codes (expires_at);

CREATE TABLE reset_codes (
    hash bytea PRIMARY KEY,
    -- A user has one reset code at most.
    user_id uuid NOT NULL CONSTRAINT reset_codes_user_key UNIQUE,
    expires_at bigint NOT NULL,
    data jsonb NOT NULL
);
CREATE INDEX reset_codes_expiry ON reset_codes (expires_at);

CREATE TABLE signing_keys (
    kid text PRIMARY KEY,
    data jsonb NOT NULL
);

CREATE TABLE mail_queue (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attempts bigint NOT NULL,
    next_attempt_at bigint NOT NULL,
    created_at bigint NOT NULL,
    -- The rendered message, sealed: a copy of the database reads no code or link.
    sealed text NOT NULL
);
CREATE INDEX mail_queue_due ON mail_queue (next_attempt_at, id);

CREATE TABLE audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at bigint NOT NULL,
    email text,
    user_id uuid,
    data jsonb NOT NULL
);
CREATE INDEX audit_by_time ON audit (at, id);

-- The abuse limits, shared by every instance. Keys are SHA-256 digests of the limit and
-- the address or network, not the text.
CREATE TABLE limit_windows (
    key bytea PRIMARY KEY,
    window_start bigint NOT NULL,
    count bigint NOT NULL,
    refused bigint NOT NULL,
    keep_until bigint NOT NULL
);
CREATE INDEX limit_windows_expiry ON limit_windows (keep_until);

CREATE TABLE sign_in_failures (
    key bytea PRIMARY KEY,
    last_at bigint NOT NULL,
    count bigint NOT NULL,
    locked_until bigint NOT NULL,
    refused bigint NOT NULL,
    keep_until bigint NOT NULL
);
CREATE INDEX sign_in_failures_expiry ON sign_in_failures (keep_until);

-- Flags and probes: `secrets_sealed`, `probe` (what /readyz writes).
CREATE TABLE meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
