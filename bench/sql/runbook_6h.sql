-- The rollout runbook's "Quick Health Check (Phase 2 Full Mode)" (rollout-quick-start.md, section 5),
-- verbatim. The peers export it; bench/run.sh times it in psql.
SELECT
  event_type,
  count(*) AS total,
  ROUND(100.0 * count(*) FILTER (WHERE context->>'reason' IS NULL) / NULLIF(count(*), 0), 2) AS success_rate_percent
FROM observability_events
WHERE source = 'assignment.coordinator'
  AND created_at >= now() - INTERVAL '6 hours'
GROUP BY 1
ORDER BY 1;
