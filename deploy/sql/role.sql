-- rollout-exporter: a read-only login role that can SELECT the events table and nothing else.
-- When row level security is enabled on the table, it also adds the SELECT policy
-- rollout_exporter_read for the role (without one the role would read zero rows, silently).
--
-- Run as a role that may create roles and grant on the table (the table owner or an admin), in the
-- application's database:
--
--   psql "postgresql://admin@db.example.internal:5432/app?sslmode=verify-full" \
--        -v ON_ERROR_STOP=1 -f deploy/sql/role.sql
--   psql ... -c '\password rollout_exporter'      -- prompts; sends a SCRAM hash, never the text
--
-- Optional psql variables (-v name=value):
--   exporter_role  role name                     (default rollout_exporter)
--   events_table   table, may be schema-qualified (default public.observability_events;
--                  must match the exporter's --table)
--   events_schema  schema of that table          (default public)
--   exporter_password  set the password non-interactively. Do not pass it with -v on a shared
--                  machine (it shows in the process list); read it from a file instead:
--                    \set exporter_password `cat /run/secrets/rollout-exporter-password`
--                  No password is written in this file.
--
-- Idempotent: re-running it re-applies the settings and grants.

\if :{?exporter_role}
\else
  \set exporter_role rollout_exporter
\endif
\if :{?events_table}
\else
  \set events_table public.observability_events
\endif
\if :{?events_schema}
\else
  \set events_schema public
\endif

BEGIN;

-- Create the role when it does not exist (CREATE ROLE has no IF NOT EXISTS).
SELECT format('CREATE ROLE %I LOGIN', :'exporter_role')
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'exporter_role')
\gexec

-- A plain login: no superuser, no role or database creation, no replication, no RLS bypass, and
-- only a few connections (the exporter holds one; the rest is room for a restart overlapping and for
-- `rollout-exporter verdict` run by hand).
ALTER ROLE :"exporter_role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION
    NOBYPASSRLS CONNECTION LIMIT 3;

-- Role defaults, applied by the server at every login of this role. Unlike a session SET they also
-- hold behind a transaction-mode pooler, because the pooler's server connection logs in as this role.
-- default_transaction_read_only is a default (a session could turn it off); the privileges below are
-- the real limit. The exporter also sets its own, shorter, SET LOCAL statement_timeout per poll
-- (--statement-timeout, 10s; 10x for the start-up load), which wins inside its transactions: 30s is
-- the ceiling for anything else run as this role.
ALTER ROLE :"exporter_role" SET default_transaction_read_only = on;
ALTER ROLE :"exporter_role" SET statement_timeout = '30s';
ALTER ROLE :"exporter_role" SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE :"exporter_role" SET lock_timeout = '5s';

-- Connect to this database, look into the table's schema, read the one table.
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'exporter_role')
\gexec
GRANT USAGE ON SCHEMA :"events_schema" TO :"exporter_role";
GRANT SELECT ON TABLE :events_table TO :"exporter_role";

-- Row level security. With RLS enabled on the table (Supabase's table editor enables it on every table
-- it creates) a role that neither owns the table nor bypasses RLS sees only the rows some policy lets it
-- see: with policies for other roles only (anon, authenticated), the exporter would read zero rows, with
-- no error, and report a healthy rollout with no events. So, when RLS is on, a permissive SELECT policy
-- for this role that lets it read every row. Idempotent: the policy is created once; when it exists
-- for other roles (another environment's exporter role on the same table), this role is added to it.
-- When RLS is off no policy is made: enable RLS later, then run this script again.
SELECT c.relrowsecurity AS rex_rls
  FROM pg_catalog.pg_class AS c WHERE c.oid = :'events_table'::pg_catalog.regclass
\gset
\if :rex_rls
  SELECT format('CREATE POLICY rollout_exporter_read ON %s FOR SELECT TO %I USING (true)',
                :'events_table'::pg_catalog.regclass, :'exporter_role')
   WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_policy AS p
                      WHERE p.polrelid = :'events_table'::pg_catalog.regclass AND p.polname = 'rollout_exporter_read')
  \gexec
  -- The policy exists (made now or earlier): add this role to it unless it names the role or PUBLIC.
  SELECT format('ALTER POLICY rollout_exporter_read ON %s TO %s', :'events_table'::pg_catalog.regclass,
                string_agg(CASE WHEN r.oid = 0 THEN 'PUBLIC' ELSE quote_ident(pg_catalog.pg_get_userbyid(r.oid)) END,
                           ', ' ORDER BY r.ord) || ', ' || quote_ident(:'exporter_role'))
    FROM pg_catalog.pg_policy AS p, unnest(p.polroles) WITH ORDINALITY AS r(oid, ord)
   WHERE p.polrelid = :'events_table'::pg_catalog.regclass AND p.polname = 'rollout_exporter_read'
  HAVING NOT bool_or(r.oid = 0 OR pg_catalog.pg_get_userbyid(r.oid) = :'exporter_role')
  \gexec
  \echo 'Row level security is enabled on' :events_table ': policy rollout_exporter_read lets' :exporter_role 'read every row.'
  -- Restrictive policies still apply on top of it; list them with \d+ on the table.
\endif

-- Nothing to create anywhere. This revokes a grant made to the role itself; on PostgreSQL 14 and
-- older PUBLIC also has CREATE on schema public (so every role does): revoke it from PUBLIC too if
-- your application does not rely on it (REVOKE CREATE ON SCHEMA public FROM PUBLIC), and consider
-- REVOKE TEMPORARY ON DATABASE ... FROM PUBLIC.
REVOKE CREATE ON SCHEMA public FROM :"exporter_role";
SELECT format('REVOKE CREATE, TEMPORARY ON DATABASE %I FROM %I', current_database(), :'exporter_role')
\gexec

\if :{?exporter_password}
  ALTER ROLE :"exporter_role" PASSWORD :'exporter_password';
  \unset exporter_password
\else
  \echo 'No password set here: run \\password' :exporter_role '(psql prompts for it).'
\endif

COMMIT;

-- Check (as the exporter role): SELECT count(*) FROM observability_events; works,
-- CREATE TABLE t (i int); fails with "cannot execute CREATE TABLE in a read-only transaction".
