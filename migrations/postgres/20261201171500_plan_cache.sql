-- The plan cache (src/store/plan_cache.rs): the plan of a completed run, keyed on its normalised
-- task, tool set, planner model and planner prompt, reused by later runs with the same key. The
-- component digests are kept so that `stepwise cache list` can show what differs. Times are
-- RFC 3339 UTC text like the runs' (they sort as text).

CREATE TABLE plan_cache (
    key           TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    task_digest   TEXT NOT NULL,
    tools_digest  TEXT NOT NULL,
    model_digest  TEXT NOT NULL,
    prompt_digest TEXT NOT NULL,
    model         TEXT NOT NULL,
    task          TEXT NOT NULL,
    plan          TEXT NOT NULL,  -- the PlanSpec as JSON
    source_run    TEXT NOT NULL,  -- the completed run it comes from (not a foreign key: runs may go)
    created_at    TEXT NOT NULL
);

-- Expiry and eviction of the oldest.
CREATE INDEX plan_cache_created ON plan_cache (created_at);
