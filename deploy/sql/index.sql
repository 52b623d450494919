-- The index rollout-exporter's polls need: each poll reads
--   WHERE source = $1 AND created_at >= $2 ORDER BY created_at
-- which an index on (source, created_at) serves as a range scan proportional to the new rows (the test
-- suite checks the plan with EXPLAIN). CONCURRENTLY builds it without blocking the application's writes.
--
-- A psql script (it uses \gset, \if and \gexec): run it with psql, outside a transaction block, as the
-- table owner, over a direct connection (port 5432 or a session-mode pooler, not a transaction-mode
-- pooler on 6543):
--   psql "$DATABASE_URL" -X -v ON_ERROR_STOP=1 -f deploy/sql/index.sql
--   psql "$DATABASE_URL" -X -v ON_ERROR_STOP=1 -v events_table=app.observability_events -f deploy/sql/index.sql
--
-- Optional psql variable (-v name=value):
--   events_table  the table, may be schema-qualified (default observability_events, found on the
--                 search_path; must be the table of the exporter's --table)
--
-- It works on both kinds of table (deploy/sql/README.md explains):
--   plain table (relkind 'r'): CREATE INDEX CONCURRENTLY IF NOT EXISTS <table>_source_created_at_idx.
--   partitioned table (relkind 'p', e.g. PARTITION BY RANGE (created_at)): CREATE INDEX CONCURRENTLY is
--     refused on a partitioned table, so: an index ON ONLY the parent (and ON ONLY every partitioned
--     sub-level), a CREATE INDEX CONCURRENTLY on every leaf partition, then ALTER INDEX ... ATTACH
--     PARTITION of each partition's index to its parent's, bottom up. The parent's index becomes valid
--     when every partition's index is attached; partitions created later get theirs automatically.
-- Index names are PostgreSQL's own default, <table>_source_created_at_idx, in the table's schema (for a
-- table name longer than 41 bytes: its first 8 characters, '_', 8 hex digits of its md5, then the suffix).
--
-- Idempotent: re-running it creates and attaches only what is missing. An invalid index this script left
-- behind (a CONCURRENTLY build that failed or was cancelled) is dropped and built again. Do not run two
-- copies at once. Leaf partitions that are foreign tables get no index (PostgreSQL cannot index them), so
-- the parent's index then stays invalid; the leaf partitions' own indexes still serve the polls.

\if :{?events_table}
\else
  \set events_table observability_events
\endif

-- What the table is: rex_plain ('r') or rex_partitioned ('p'), and its oid for the queries below.
SELECT coalesce(c.relkind::text, '') AS rex_relkind,
       coalesce(c.relkind = 'r', false) AS rex_plain,
       coalesce(c.relkind = 'p', false) AS rex_partitioned,
       coalesce(c.oid, 0) AS rex_table_oid
  FROM (SELECT pg_catalog.to_regclass(:'events_table') AS oid) AS t
  LEFT JOIN pg_catalog.pg_class AS c ON c.oid = t.oid
\gset

-- The table and, when partitioned, every partition below it (any depth), with the name of each one's
-- index. Kept as query text in rex_tree and used as `WITH tree AS (:rex_tree)` below.
SELECT format($tree$
    SELECT t.relid, t.parentrelid, t.isleaf, t.level, c.relkind, n.nspname, c.relname,
           CASE WHEN octet_length(c.relname) <= 41 THEN c.relname::text
                ELSE left(c.relname, 8) || '_' || left(md5(c.relname), 8)
           END || '_source_created_at_idx' AS idxname
      FROM (SELECT relid, parentrelid, isleaf, level FROM pg_catalog.pg_partition_tree(%1$s::pg_catalog.regclass)
            UNION ALL  -- a plain table that is no partition has no partition tree: just itself
            SELECT %1$s::pg_catalog.regclass, NULL, true, 0
             WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree(%1$s::pg_catalog.regclass))) AS t
      JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
$tree$, :rex_table_oid) AS rex_tree
\gset

-- Indexes this script builds with CONCURRENTLY that a failed or cancelled earlier run left invalid
-- (IF NOT EXISTS would keep them forever): dropped, to be built again below. Attached ones are left.
WITH tree AS (:rex_tree)
SELECT format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I', tree.nspname, tree.idxname)
  FROM tree
  JOIN pg_catalog.pg_index AS x ON x.indexrelid = pg_catalog.to_regclass(format('%I.%I', tree.nspname, tree.idxname))
 WHERE tree.relkind = 'r' AND NOT x.indisvalid AND x.indrelid = tree.relid
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits AS i WHERE i.inhrelid = x.indexrelid)
 ORDER BY tree.level, tree.relid
\gexec

\if :rex_plain

  WITH tree AS (:rex_tree)
  SELECT format('CREATE INDEX CONCURRENTLY IF NOT EXISTS %I ON %I.%I (source, created_at)',
                tree.idxname, tree.nspname, tree.relname)
    FROM tree
   WHERE tree.level = 0
     AND pg_catalog.to_regclass(format('%I.%I', tree.nspname, tree.idxname)) IS NULL
  \gexec

\elif :rex_partitioned

  -- 1. The parent and every partitioned sub-level: an index ON ONLY that table (no recursion, instant,
  --    invalid until all of its partitions' indexes are attached).
  WITH tree AS (:rex_tree)
  SELECT format('CREATE INDEX IF NOT EXISTS %I ON ONLY %I.%I (source, created_at)',
                tree.idxname, tree.nspname, tree.relname)
    FROM tree
   WHERE tree.relkind = 'p'
     AND pg_catalog.to_regclass(format('%I.%I', tree.nspname, tree.idxname)) IS NULL
   ORDER BY tree.level, tree.relid
  \gexec

  -- 2. Every leaf partition without an index attached to its parent's: built CONCURRENTLY, one by one
  --    (each \gexec statement is its own transaction).
  WITH tree AS (:rex_tree)
  SELECT format('CREATE INDEX CONCURRENTLY IF NOT EXISTS %I ON %I.%I (source, created_at)',
                leaf.idxname, leaf.nspname, leaf.relname)
    FROM tree AS leaf
    JOIN tree AS parent ON parent.relid = leaf.parentrelid
   WHERE leaf.relkind = 'r'
     AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits AS i
                       JOIN pg_catalog.pg_index AS x ON x.indexrelid = i.inhrelid
                      WHERE i.inhparent = pg_catalog.to_regclass(format('%I.%I', parent.nspname, parent.idxname))
                        AND x.indrelid = leaf.relid)
   ORDER BY leaf.level, leaf.relid
  \gexec

  -- 3. Attach each partition's index to its parent's, deepest level first, skipping those attached
  --    already (pg_inherits of the parent's index). A sub-level's index turns valid when its last
  --    partition's index is attached, and then the parent's can.
  WITH tree AS (:rex_tree)
  SELECT format('ALTER INDEX %I.%I ATTACH PARTITION %I.%I',
                parent.nspname, parent.idxname, child.nspname, child.idxname)
    FROM tree AS child
    JOIN tree AS parent ON parent.relid = child.parentrelid
   WHERE child.relkind IN ('r', 'p')
     AND pg_catalog.to_regclass(format('%I.%I', child.nspname, child.idxname)) IS NOT NULL
     AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits AS i
                       JOIN pg_catalog.pg_index AS x ON x.indexrelid = i.inhrelid
                      WHERE i.inhparent = pg_catalog.to_regclass(format('%I.%I', parent.nspname, parent.idxname))
                        AND x.indrelid = child.relid)
   ORDER BY child.level DESC, child.relid
  \gexec

  -- The result, for the operator: the parent's index must say valid.
  WITH tree AS (:rex_tree)
  SELECT format('%I.%I', tree.nspname, tree.idxname) AS parent_index, x.indisvalid AS valid
    FROM tree JOIN pg_catalog.pg_index AS x
      ON x.indexrelid = pg_catalog.to_regclass(format('%I.%I', tree.nspname, tree.idxname))
   WHERE tree.level = 0;

\else

  \warn 'index.sql: ' :events_table ' is neither a table nor a partitioned table (relkind "' :rex_relkind '"), or does not exist; set -v events_table=schema.table'
  SELECT :'events_table'::pg_catalog.regclass AS events_table;
  DO $$ BEGIN RAISE EXCEPTION 'index.sql: events_table is not a plain or partitioned table'; END $$;

\endif
