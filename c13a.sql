-- part A
CREATE TABLE observability_events (id bigserial PRIMARY KEY, source text NOT NULL, event_type text, context jsonb,
                                   created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON observability_events (source, created_at);
INSERT INTO observability_events (source, event_type, context, created_at)
SELECT 'assignment.coordinator', e, jsonb_build_object('booking_id', 'b' || g),
       now() - (g * 8 || ' minutes')::interval + (CASE e WHEN 'coordinator.start' THEN 0 ELSE 2 END || ' seconds')::interval
FROM generate_series(1, 300) g, unnest(ARRAY['coordinator.start', 'coordinator.confirmed']) e;
-- GRANT SELECT ON observability_events TO <exporter_role>;

-- part B
