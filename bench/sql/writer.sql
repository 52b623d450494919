-- pgbench script of the concurrent writer (bench/run.sh): one transaction inserts :batch rows of the
-- realistic mix, created_at = the transaction's now(). Per 10 rows: 3 of other sources, then three
-- bookings (start/confirmed, start/confirmed, start/retry with a reason/confirmed).
\set r random(1, 2000000000)
INSERT INTO observability_events (source, event_type, context)
SELECT CASE WHEN g % 10 < 3 THEN (ARRAY['booking.api', 'legacy.planner', 'payments.webhook'])[1 + g % 3]
            ELSE 'assignment.coordinator' END,
       CASE WHEN g % 10 < 3 THEN 'request'
            WHEN g % 10 IN (3, 5, 7) THEN 'coordinator.start'
            WHEN g % 10 = 8 THEN 'coordinator.retry'
            ELSE 'coordinator.confirmed' END,
       CASE WHEN g % 10 < 3 THEN jsonb_build_object('request_id', :r::text || '-' || g)
            WHEN g % 10 = 8 THEN jsonb_build_object('booking_id', 'w' || :r || '-' || g / 10 || 'c', 'reason', 'upstream_timeout')
            ELSE jsonb_build_object('booking_id', 'w' || :r || '-' || g / 10 || CASE WHEN g % 10 < 5 THEN 'a' WHEN g % 10 < 7 THEN 'b' ELSE 'c' END) END
FROM generate_series(1, :batch) AS g;
