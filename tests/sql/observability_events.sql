-- The events table the suite and the benchmark build (bigint ids), shared by tests/suite (Rust,
-- include_str!) and bench/harness.py, so neither parses the other's source.
CREATE TABLE observability_events (
    id bigserial PRIMARY KEY,
    source text NOT NULL,
    event_type text,
    context jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    note text
);
