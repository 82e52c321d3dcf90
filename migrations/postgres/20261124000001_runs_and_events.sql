-- Runs and their event logs (DESIGN §2); the same schema as migrations/sqlite. The events are the
-- source of truth; a `runs` row is the fold of its run's events (RunSummary::fold), updated in
-- the same transaction as each append. Times are RFC 3339 UTC text with nanoseconds (fixed
-- width, so they sort as text) because timestamptz would drop the nanoseconds that
-- chrono::Utc::now() carries and events would not read back equal; cast with ::timestamptz.
-- Ids use the C collation so that `id < cursor` and ORDER BY id agree with byte order.

CREATE TABLE runs (
    id               TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    task             TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN
                         ('planning', 'awaiting_approval', 'running', 'completed', 'failed', 'cancelled')),
    created_at       TEXT    NOT NULL,
    finished_at      TEXT,
    last_seq         BIGINT  NOT NULL CHECK (last_seq >= 1),
    require_approval BOOLEAN NOT NULL
);

CREATE INDEX runs_status_id ON runs (status, id);
CREATE INDEX runs_unfinished ON runs (id) WHERE status NOT IN ('completed', 'failed', 'cancelled');

CREATE TABLE events (
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    BIGINT NOT NULL CHECK (seq >= 1),
    at     TEXT   NOT NULL,
    type   TEXT   NOT NULL,
    body   JSONB  NOT NULL,  -- the whole RunEvent (what is decoded)
    PRIMARY KEY (run_id, seq)
);
