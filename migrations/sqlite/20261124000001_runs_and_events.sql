-- Runs and their event logs (DESIGN §2). The events are the source of truth; a `runs` row is
-- the fold of its run's events (RunSummary::fold), kept in the same transaction as each append.
-- Times are RFC 3339 UTC text with nanoseconds, fixed width, so they sort as text and round-trip
-- exactly.

CREATE TABLE runs (
    id               TEXT    NOT NULL PRIMARY KEY,  -- UUIDv7: sorting by id sorts by creation
    task             TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN
                         ('planning', 'awaiting_approval', 'running', 'completed', 'failed', 'cancelled')),
    created_at       TEXT    NOT NULL,
    finished_at      TEXT,
    last_seq         INTEGER NOT NULL CHECK (last_seq >= 1),
    require_approval INTEGER NOT NULL CHECK (require_approval IN (0, 1))
) STRICT;

-- `list` with a status filter, newest first.
CREATE INDEX runs_status_id ON runs (status, id);
-- `unfinished`: only the live runs are in this index, so it stays small as history grows.
CREATE INDEX runs_unfinished ON runs (id) WHERE status NOT IN ('completed', 'failed', 'cancelled');

CREATE TABLE events (
    run_id TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    INTEGER NOT NULL CHECK (seq >= 1),
    at     TEXT    NOT NULL,
    type   TEXT    NOT NULL,
    body   TEXT    NOT NULL,  -- the whole RunEvent as JSON (what is decoded)
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;
