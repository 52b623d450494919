-- The runbook's health check over the 48 h soak window: section 5 of rollout-quick-start.md with the
-- interval set to 48 hours (the soak the runbook monitors). bench/run.sh times it in psql.
SELECT
  event_type,
  count(*) AS total,
  ROUND(100.0 * count(*) FILTER (WHERE context->>'reason' IS NULL) / NULLIF(count(*), 0), 2) AS success_rate_percent
FROM observability_events
WHERE source = 'assignment.coordinator'
  AND created_at >= now() - INTERVAL '48 hours'
GROUP BY 1
ORDER BY 1;
