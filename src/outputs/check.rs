//! `rollout-exporter check`: connects exactly as `serve` would and says, one line per item, what
//! is ok, what deserves a look (`warn`) and what stops the exporter from counting right (`FAIL`),
//! each with the fix in copy-paste form. Exit 0 when nothing fails, 1 when something does.

use std::time::Instant;

use serde::Serialize;

use crate::config::{CheckConfig, CheckFormat};
use crate::source::postgres::db::Inspection;
use crate::source::postgres::probe::Rls;
use crate::source::postgres::queries::{ContextColumn, LOAD_SLICES};
use crate::source::postgres::{FollowConfig, PgSource};
use crate::source::SourceError;

/// How an item came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub item: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to run or change, when something is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn item(item: &'static str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Item {
    Item { item, status, detail: detail.into(), fix }
}

/// The report: every item, and whether any failed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub items: Vec<Item>,
    pub failed: usize,
}

impl Report {
    /// 0 when nothing failed, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.failed > 0)
    }

    /// One line per item: `ok    table: ...`, with ` -- fix: ...` where there is one.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for i in &self.items {
            let status = match i.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            s.push_str(&format!("{status}  {}: {}", i.item, i.detail));
            if let Some(fix) = &i.fix {
                s.push_str(&format!(" -- fix: {fix}"));
            }
            s.push('\n');
        }
        s
    }
}

/// The table, its columns and the zone of `created_at`.
fn table_items(cfg: &CheckConfig, x: &Inspection, out: &mut Vec<Item>) {
    let p = &x.probe;
    let kind = match p.relkind.as_str() {
        "r" => "table",
        "p" => "partitioned table",
        "v" => "view",
        "m" => "materialized view",
        other => other,
    };
    let columns: Vec<String> = p.columns.iter().map(|c| format!("{} {}", c.name, c.type_name)).collect();
    out.push(item("table", Status::Ok, format!("{} ({kind}): {}", cfg.db.spec.table, columns.join(", ")), None));
    if let Err(why) = &x.shape {
        if !why.contains("row level security") && !why.contains("may not SELECT") {
            out.push(item(
                "columns",
                Status::Fail,
                why.clone(),
                Some("set the column flags (--id-column, ...) to the table's names".into()),
            ));
        }
        return;
    }
    let spec = &cfg.db.spec;
    let created = p.columns.iter().find(|c| c.name == spec.created_at).map_or("?", |c| c.type_name.as_str());
    if created == "timestamp without time zone" {
        let guessed = p.zone.source.starts_with("the server");
        let status = if guessed { Status::Warn } else { Status::Ok };
        let fix = guessed.then(|| "--created-at-time-zone <the zone the writers use>".to_string());
        out.push(item(
            "created_at",
            status,
            format!("timestamp without time zone, read in {} (from {})", p.zone.name, p.zone.source),
            fix,
        ));
    } else {
        out.push(item("created_at", Status::Ok, format!("{created}: no zone to guess"), None));
    }
    let source = p.columns.iter().find(|c| c.name == spec.source_column);
    if let Some(s) = source.filter(|s| s.kind == "e" && s.has_source_value != Some(true)) {
        let fix =
            format!("ALTER TYPE {} ADD VALUE '{}';  -- or set --source", s.type_name, spec.source.replace('\'', "''"));
        out.push(item(
            "source",
            Status::Fail,
            format!("enum {} has no value {:?}: no row can match", s.type_name, spec.source),
            Some(fix),
        ));
    }
}

/// Row level security, privileges and the role's statement timeout.
fn access_items(cfg: &CheckConfig, x: &Inspection, out: &mut Vec<Item>) {
    let p = &x.probe;
    let (table, role) = (&cfg.db.spec.table, &p.role);
    let Rls { enabled, forced, owner, bypass, policy } = p.rls;
    let rls = if !enabled {
        item("row level security", Status::Ok, "off", None)
    } else if p.rls.hides_everything() {
        let fix = format!("CREATE POLICY rollout_exporter_read ON {table} FOR SELECT TO {role} USING (true);");
        item(
            "row level security",
            Status::Fail,
            format!("on, and no SELECT policy applies to {role}: every row is hidden"),
            Some(fix),
        )
    } else if policy {
        item(
            "row level security",
            Status::Ok,
            format!("on; a SELECT policy applies to {role} (rows its USING clause hides are not counted)"),
            None,
        )
    } else {
        let why = if bypass {
            "BYPASSRLS"
        } else if owner && !forced {
            "the table owner"
        } else {
            "exempt"
        };
        item("row level security", Status::Ok, format!("on; {role} is {why}"), None)
    };
    out.push(rls);
    let superuser = p.rls.bypass && p.can_write;
    out.push(if !p.can_select {
        item(
            "privileges",
            Status::Fail,
            format!("{role} may not SELECT from {table}"),
            Some(format!("GRANT SELECT ON {table} TO {role};")),
        )
    } else if superuser {
        let fix = "connect as the read-only role of deploy/sql/role.sql".to_string();
        item(
            "privileges",
            Status::Warn,
            format!("{role} may write and bypasses row level security (a superuser?)"),
            Some(fix),
        )
    } else if p.can_write {
        let fix = format!("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {table} FROM {role};  -- deploy/sql/role.sql");
        item("privileges", Status::Warn, format!("{role} may write to {table}; it only needs SELECT"), Some(fix))
    } else {
        item("privileges", Status::Ok, format!("{role} may SELECT and not write"), None)
    });
    let unlimited = x.role_statement_timeout == "0";
    out.push(item(
        "statement_timeout",
        if unlimited { Status::Warn } else { Status::Ok },
        format!(
            "the role's default is {} (the exporter sets its own per transaction)",
            if unlimited { "unlimited" } else { &x.role_statement_timeout }
        ),
        unlimited.then(|| format!("ALTER ROLE {role} SET statement_timeout = '30s';")),
    ));
}

/// The server: version, pooler, encoding, standby, index.
fn server_items(x: &Inspection, out: &mut Vec<Item>) {
    let p = &x.probe;
    out.push(item("connection", Status::Ok, format!("PostgreSQL {} as {}", x.server_version, p.role), None));
    out.push(item(
        "pooler",
        Status::Ok,
        if x.backend_changed {
            "transaction-mode pooler detected (the next transaction ran on another backend): supported"
        } else {
            "one backend per connection (direct, or a session-mode pooler)"
        },
        None,
    ));
    out.push(match p.server_encoding.as_str() {
        "UTF8" => item("encoding", Status::Ok, "UTF8", None),
        "SQL_ASCII" => item(
            "encoding",
            Status::Warn,
            "SQL_ASCII: text is read as raw bytes; bytes that are not UTF-8 become U+FFFD and are counted as not_utf8",
            None,
        ),
        other => item("encoding", Status::Ok, format!("{other}, converted to UTF-8 by the server"), None),
    });
    out.push(match (p.in_recovery, x.lag_us) {
        (false, _) => item("hot standby", Status::Ok, "no: a primary", None),
        (true, lag) => item(
            "hot standby",
            Status::Ok,
            format!(
                "yes, replay lag {:.1} s (the gate says pending past --max-staleness)",
                lag.unwrap_or(0) as f64 / 1e6
            ),
            None,
        ),
    });
    if let Ok(shape) = &x.shape {
        // The scan node the poll's plan reads the table with (an index one when there is any).
        let node = |l: &&str| l.contains("Scan") && !l.contains("Subquery Scan") && !l.contains("Append");
        let scans: Vec<&str> = x.poll_plan.lines().filter(node).collect();
        let scan = scans.iter().find(|l| l.contains("Index")).or(scans.first()).copied().unwrap_or("").trim();
        let first = scan.split("  (cost").next().unwrap_or(scan).trim_start_matches("-> ").to_string();
        // The probe's catalog answer decides; the plan only shows it (with sequential scans off,
        // an index on another column, such as the primary key, still makes an "Index Scan").
        out.push(if !shape.created_at_index || x.poll_plan.contains("Seq Scan") {
            let fix = "psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -f deploy/sql/index.sql".to_string();
            item("index", Status::Fail, format!("no index serves ranges of created_at (the poll: {first})"), Some(fix))
        } else {
            item("index", Status::Ok, format!("an index serves ranges of created_at; the poll: {first}"), None)
        });
    }
}

/// Runs the start-up load as `serve` would: how long it takes and what it finds.
async fn load_items(cfg: &CheckConfig, x: &Inspection, out: &mut Vec<Item>) {
    let started = Instant::now();
    let loaded = async {
        let source = PgSource::new(cfg.db.clone(), FollowConfig::check(cfg))?;
        crate::ingest::snapshot_once(source, cfg.tally.clone()).await
    }
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let size = if x.estimated_rows > 0.0 {
        format!("about {:.0} rows (planner estimate), {:.1} MiB", x.estimated_rows, x.table_bytes as f64 / 1048576.0)
    } else {
        format!("{:.1} MiB (not analyzed yet)", x.table_bytes as f64 / 1048576.0)
    };
    let snapshot = match loaded {
        Ok(s) => s,
        Err(e) => {
            out.push(item("start-up load", Status::Fail, format!("{size}; the load failed: {e}"), None));
            return;
        }
    };
    let rows: u64 = snapshot.tally.totals.iter().map(|t| t.rows).sum();
    let how = match &x.shape {
        Ok(s) if s.created_at_index && s.context != ContextColumn::Text => {
            format!("read in {} time slices over the created_at index", 2 * LOAD_SLICES + 1)
        }
        Ok(s) if s.context == ContextColumn::Text => "read in one scan (a text context is parsed row by row)".into(),
        _ => "read in one scan (no index serves created_at ranges)".into(),
    };
    out.push(item(
        "start-up load",
        Status::Ok,
        format!(
            "{size}; {rows} rows of the source counted in {seconds:.2} s, {how} (serve's start takes about as long)"
        ),
        None,
    ));
    if rows == 0 {
        let fix = format!("SELECT source, count(*) FROM {} GROUP BY 1;  -- then set --source", cfg.db.spec.table);
        out.push(item("source rows", Status::Warn, format!("no row has source = {:?}", cfg.db.spec.source), Some(fix)));
    }
    let odd: Vec<String> = snapshot
        .tally
        .malformed
        .iter()
        .filter(|m| m.rows > 0)
        .map(|m| format!("{} {}", m.kind.label(), m.rows))
        .collect();
    out.push(if odd.is_empty() {
        item("malformed rows", Status::Ok, "none", None)
    } else {
        item(
            "malformed rows",
            Status::Warn,
            format!("{} (counted as docs/metrics.md places them)", odd.join(", ")),
            None,
        )
    });
}

/// The whole report. A database that cannot be reached is one FAIL line.
pub async fn run(cfg: &CheckConfig) -> Report {
    let mut items = Vec::new();
    let inspected = async { PgSource::new(cfg.db.clone(), FollowConfig::check(cfg))?.inspect().await }.await;
    match inspected {
        Err(e) => items.push(failure(e)),
        Ok(x) => {
            server_items(&x, &mut items);
            table_items(cfg, &x, &mut items);
            access_items(cfg, &x, &mut items);
            if x.shape.is_ok() {
                load_items(cfg, &x, &mut items).await;
            } else {
                let detail =
                    "the index, the start-up load and the malformed rows are checked once the FAIL above is fixed";
                items.push(item("skipped", Status::Warn, detail, None));
            }
        }
    }
    let failed = items.iter().filter(|i| i.status == Status::Fail).count();
    Report { items, failed }
}

fn failure(e: SourceError) -> Item {
    let fix = match &e {
        SourceError::Connect(_) => Some("check the host, port, TLS settings and credentials of the URL".to_string()),
        _ => None,
    };
    item("connection", Status::Fail, e.to_string(), fix)
}

/// Renders the report in the requested format.
pub fn render(report: &Report, format: CheckFormat) -> String {
    match format {
        CheckFormat::Text => report.to_text(),
        CheckFormat::Json => {
            let mut s = serde_json::to_string_pretty(report).expect("a report always serialises");
            s.push('\n');
            s
        }
    }
}
