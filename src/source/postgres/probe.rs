//! What the exporter learns of the table and the server before each start-up load (and what
//! `check` reports): column types, the zone a zone-less `created_at` was written in, row level
//! security and privileges, the encoding, hot standby.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use super::db::SourceError;
use super::queries::{ContextColumn, Shape, SourceMatch};
use crate::config::TableSpec;

/// One column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Always-quoted name, as `TableSpec` holds it.
    pub name: String,
    /// `format_type`: `timestamp with time zone`, `text`, `event_kind`, ...
    pub type_name: String,
    /// `pg_type.typtype`: `b` base, `e` enum, `d` domain.
    pub kind: String,
    /// `pg_type.typcategory`: `S` string, `D` date/time, `U` user (json, jsonb), `E` enum.
    pub category: String,
    /// For an enum: whether it has the `--source` value.
    pub has_source_value: Option<bool>,
}

/// Where the zone of a zone-less `created_at` came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    /// `--created-at-time-zone`, `ALTER ROLE ... IN DATABASE`, `ALTER ROLE`, `ALTER DATABASE`, or
    /// the server's configured zone (`log_timezone`, which initdb sets with `timezone`).
    pub source: &'static str,
}

/// Row level security as it applies to the exporter's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rls {
    pub enabled: bool,
    pub forced: bool,
    pub owner: bool,
    pub bypass: bool,
    /// A permissive SELECT (or ALL) policy applies to the role (directly, through membership or PUBLIC).
    pub policy: bool,
}

impl Rls {
    /// Every row is hidden from the role: RLS applies and no policy lets it read.
    pub fn hides_everything(&self) -> bool {
        self.enabled && !self.bypass && (!self.owner || self.forced) && !self.policy
    }
}

/// The probe's findings.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, ...
    pub relkind: String,
    pub columns: Vec<Column>,
    pub rls: Rls,
    pub can_select: bool,
    pub can_write: bool,
    /// `quote_ident(current_user)`.
    pub role: String,
    pub server_encoding: String,
    pub in_recovery: bool,
    pub zone: Zone,
    /// A valid B-tree or BRIN index of the table (for a partitioned table, its partitioned index)
    /// leads with `created_at`.
    pub index_on_created_at: bool,
    /// ... or leads with the source column and then `created_at` (deploy/sql/index.sql's).
    pub index_on_source_created_at: bool,
}

/// The table's class, the role's rights on it, and the zone settings, in one statement. $1 is the
/// quoted table name (`to_regclass` resolves it as psql would).
const PROBE_TABLE: &str = "\
SELECT c.relkind::text, c.relrowsecurity, c.relforcerowsecurity, pg_has_role(c.relowner, 'USAGE'), \
       (SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user), \
       EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polcmd IN ('r', '*') AND p.polpermissive \
               AND (0::oid = ANY (p.polroles) \
                    OR EXISTS (SELECT 1 FROM unnest(p.polroles) AS r(o) WHERE r.o <> 0 AND pg_has_role(r.o, 'USAGE')))), \
       has_table_privilege(c.oid, 'SELECT'), \
       has_table_privilege(c.oid, 'INSERT') OR has_table_privilege(c.oid, 'UPDATE') OR has_table_privilege(c.oid, 'DELETE'), \
       quote_ident(current_user), current_setting('server_encoding'), pg_is_in_recovery(), \
       (SELECT substr(s, 10) FROM pg_db_role_setting d, unnest(d.setconfig) AS s \
         WHERE d.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND d.setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user) AND lower(s) LIKE 'timezone=%' LIMIT 1), \
       (SELECT substr(s, 10) FROM pg_db_role_setting d, unnest(d.setconfig) AS s \
         WHERE d.setdatabase = 0 AND d.setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
           AND lower(s) LIKE 'timezone=%' LIMIT 1), \
       (SELECT substr(s, 10) FROM pg_db_role_setting d, unnest(d.setconfig) AS s \
         WHERE d.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) AND d.setrole = 0 \
           AND lower(s) LIKE 'timezone=%' LIMIT 1), \
       current_setting('log_timezone') \
FROM pg_class c WHERE c.oid = to_regclass($1)";

/// The table's columns with their types; $2 is `--source` (is it a value of an enum column?).
const PROBE_COLUMNS: &str = "\
SELECT '\"' || replace(a.attname, '\"', '\"\"') || '\"', format_type(a.atttypid, a.atttypmod), t.typtype::text, \
       t.typcategory::text, \
       CASE WHEN t.typtype = 'e' THEN EXISTS (SELECT 1 FROM pg_enum e WHERE e.enumtypid = t.oid AND e.enumlabel = $2) END \
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";

/// Which indexes serve ranges of `created_at`: one leading with it, and one leading with the source
/// column and then `created_at`. $1 the table, $2 the quoted source column, $3 the quoted
/// `created_at`. Only valid B-tree and BRIN indexes without a predicate count (the planner may not
/// use a partial index for every range).
const PROBE_INDEX: &str = "\
SELECT coalesce(bool_or(c0 = $3), false), coalesce(bool_or(c0 = $2 AND c1 = $3), false) \
FROM (SELECT '\"' || replace(a0.attname, '\"', '\"\"') || '\"' AS c0, \
             '\"' || replace(a1.attname, '\"', '\"\"') || '\"' AS c1 \
      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam \
      LEFT JOIN pg_attribute a0 ON a0.attrelid = i.indrelid AND a0.attnum = i.indkey[0] \
      LEFT JOIN pg_attribute a1 ON a1.attrelid = i.indrelid AND a1.attnum = i.indkey[1] \
      WHERE i.indrelid = to_regclass($1) AND i.indisvalid AND i.indpred IS NULL \
        AND am.amname IN ('btree', 'brin')) AS keys";

fn decode_column(r: &PgRow) -> Result<Column, sqlx::Error> {
    Ok(Column {
        name: r.try_get(0)?,
        type_name: r.try_get(1)?,
        kind: r.try_get(2)?,
        category: r.try_get(3)?,
        has_source_value: r.try_get(4)?,
    })
}

/// Runs the probe inside the caller's transaction. `zone_flag` is `--created-at-time-zone`.
pub async fn probe(conn: &mut PgConnection, spec: &TableSpec, zone_flag: Option<&str>) -> Result<Probe, SourceError> {
    let table = sqlx::query(PROBE_TABLE).persistent(false).bind(&spec.table).fetch_optional(&mut *conn).await?;
    let Some(t) = table else {
        return Err(SourceError::Schema(format!(
            "table {} not found (as psql resolves the name, in the role's search_path); check --table",
            spec.table
        )));
    };
    let columns = sqlx::query(PROBE_COLUMNS)
        .persistent(false)
        .bind(&spec.table)
        .bind(&spec.source)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(decode_column)
        .collect::<Result<Vec<_>, _>>()?;
    let (index_on_created_at, index_on_source_created_at): (bool, bool) = sqlx::query_as(PROBE_INDEX)
        .persistent(false)
        .bind(&spec.table)
        .bind(&spec.source_column)
        .bind(&spec.created_at)
        .fetch_one(&mut *conn)
        .await?;
    let setting = |i: usize| t.try_get::<Option<String>, _>(i);
    let zone = match zone_flag {
        Some(z) => Zone { name: z.to_string(), source: "--created-at-time-zone" },
        None => {
            let found = [
                (setting(11)?, "ALTER ROLE ... IN DATABASE"),
                (setting(12)?, "ALTER ROLE"),
                (setting(13)?, "ALTER DATABASE"),
                (setting(14)?, "the server's configured zone (log_timezone)"),
            ];
            let (name, source) =
                found.into_iter().find_map(|(v, s)| v.map(|v| (v, s))).unwrap_or(("UTC".into(), "default"));
            Zone { name: name.trim_matches('\'').to_string(), source }
        }
    };
    Ok(Probe {
        relkind: t.try_get(0)?,
        rls: Rls {
            enabled: t.try_get(1)?,
            forced: t.try_get(2)?,
            owner: t.try_get(3)?,
            bypass: t.try_get::<Option<bool>, _>(4)?.unwrap_or(false),
            policy: t.try_get(5)?,
        },
        can_select: t.try_get(6)?,
        can_write: t.try_get(7)?,
        role: t.try_get(8)?,
        server_encoding: t.try_get(9)?,
        in_recovery: t.try_get(10)?,
        zone,
        columns,
        index_on_created_at,
        index_on_source_created_at,
    })
}

impl Probe {
    fn column(&self, name: &str) -> Result<&Column, SourceError> {
        self.columns.iter().find(|c| c.name == name).ok_or_else(|| {
            let have: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
            SourceError::Schema(format!(
                "column {name} not found (the table has {}); check the column flags",
                have.join(", ")
            ))
        })
    }

    /// The statements' shape, or why the table cannot be followed (with the statement that fixes it).
    pub fn shape(&self, spec: &TableSpec) -> Result<Shape, SourceError> {
        if !self.can_select {
            return Err(SourceError::Schema(format!(
                "role {} may not SELECT from {}; fix (as the table owner): GRANT SELECT ON {} TO {};",
                self.role, spec.table, spec.table, self.role
            )));
        }
        if self.rls.hides_everything() {
            return Err(SourceError::Schema(format!(
                "row level security on {} hides every row from role {}: it neither owns the table nor has BYPASSRLS, \
                 and no SELECT policy applies to it (zeros would look healthy); fix (as the table owner): \
                 CREATE POLICY rollout_exporter_read ON {} FOR SELECT TO {} USING (true);",
                spec.table, self.role, spec.table, self.role
            )));
        }
        for name in [&spec.id, &spec.event_type] {
            self.column(name)?;
        }
        let source = self.column(&spec.source_column)?;
        let source = match (source.kind.as_str(), source.category.as_str(), source.has_source_value) {
            ("e", _, Some(true)) => SourceMatch::Enum(quote_type(&source.type_name)),
            ("e", _, _) => {
                tracing::warn!(
                    column = %spec.source_column, enum_type = %source.type_name, source = %spec.source,
                    "the source column's enum has no such value: no row can match --source"
                );
                SourceMatch::AsText
            }
            (_, "S", _) => SourceMatch::Text,
            _ => SourceMatch::AsText,
        };
        let context = match self.column(&spec.context)?.type_name.as_str() {
            "jsonb" => ContextColumn::Jsonb,
            "json" => ContextColumn::Json,
            _ => ContextColumn::Text,
        };
        let created = self.column(&spec.created_at)?;
        let timestamp_without_zone = match created.type_name.as_str() {
            "timestamp with time zone" => false,
            "timestamp without time zone" => true,
            other => {
                return Err(SourceError::Schema(format!(
                    "column {} is {other}; it must be timestamptz or timestamp",
                    spec.created_at
                )))
            }
        };
        // Ranges of created_at are index scans (the source compared as text or as its enum, which
        // the (source, created_at) index serves; as `source::text` it cannot).
        let created_at_index =
            self.index_on_created_at || (self.index_on_source_created_at && source != SourceMatch::AsText);
        Ok(Shape {
            source,
            context,
            timestamp_without_zone,
            raw_text: self.server_encoding == "SQL_ASCII",
            created_at_index,
        })
    }
}

/// `format_type` output as a type name to splice after `::` (it is already quoted where needed,
/// e.g. `"Event Kind"` or `public.event_source`).
fn quote_type(t: &str) -> String {
    t.to_string()
}
