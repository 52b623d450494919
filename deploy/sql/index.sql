-- The index rollout-exporter's polls need: each poll reads
--   WHERE source = $1 AND created_at >= $2 ORDER BY created_at
-- which this index serves as a range scan proportional to the new rows (the test suite checks the
-- plan with EXPLAIN). CONCURRENTLY builds it without blocking the application's writes; run it
-- outside a transaction block, as the table owner:
--   psql "$DATABASE_URL" -f deploy/sql/index.sql
CREATE INDEX CONCURRENTLY IF NOT EXISTS observability_events_source_created_at_idx
    ON observability_events (source, created_at);
