//! `backfill` against real Prometheus: the OpenMetrics file goes through `promtool tsdb
//! create-blocks-from openmetrics` into a throwaway server's data directory, the server then scrapes
//! the live exporter, and the backfilled history equals SQL at past instants and joins the live
//! series without a counter reset (docs/backfill.md).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

const START: &str = "coordinator.start";
const CONFIRMED: &str = "coordinator.confirmed";
const MANUAL: &str = "coordinator.manual_review";
const PHASE_STARTED_AT: &str = "2000-01-01T00:00:00Z";

fn rfc(t: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t as u64)).to_string()
}

/// The database's `now()` floored to the minute (Unix seconds).
async fn db_minute(db: &TestDb) -> i64 {
    let (t,): (i64,) = sqlx::query_as("SELECT (floor(extract(epoch FROM now()) / 60) * 60)::int8")
        .fetch_one(&db.pool)
        .await
        .expect("now");
    t
}

/// 8 hours of traffic ending one minute before `base` (nothing newer than now): a start at :10 of
/// every minute, a confirmation at :20 of four minutes in five but none from 350 to 320 minutes
/// ago, and 20 manual reviews between 5 and 6 hours ago.
async fn eight_hours(db: &TestDb, base: i64) {
    let at = |offset: i64, minutes: &str| {
        format!("to_timestamp({base}) - make_interval(mins => ({minutes})::int) + make_interval(secs => {offset})")
    };
    db.events().event_type(START).at(&at(10, "g")).count(480).insert().await;
    db.events().event_type(CONFIRMED).at(&at(20, "g")).count(480).insert().await;
    sqlx::query("DELETE FROM observability_events WHERE event_type = $1 AND (extract(epoch FROM created_at)::int8 / 60) % 5 = 0")
        .bind(CONFIRMED)
        .execute(&db.pool)
        .await
        .expect("thin out confirmations");
    sqlx::query("DELETE FROM observability_events WHERE event_type = $1 AND created_at >= to_timestamp($2 - 350 * 60) AND created_at < to_timestamp($2 - 320 * 60)")
        .bind(CONFIRMED)
        .bind(base)
        .execute(&db.pool)
        .await
        .expect("a stretch without confirmations");
    db.events().event_type(MANUAL).reason("ambiguous_address").at(&at(30, "300 + 3 * g")).count(20).insert().await;
}

/// Rows of `event_type` with `created_at` in [`from`, `to`) (Unix seconds).
async fn sql_count(db: &TestDb, event_type: &str, from: Option<i64>, to: i64) -> f64 {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM observability_events
         WHERE source = $1 AND event_type = $2
           AND ($3::int8 IS NULL OR created_at >= to_timestamp($3)) AND created_at < to_timestamp($4)",
    )
    .bind(SOURCE)
    .bind(event_type)
    .bind(from)
    .bind(to)
    .fetch_one(&db.pool)
    .await
    .expect("sql count");
    n as f64
}

/// `numerator / coordinator.start` over window `w` seconds at `t`, as docs/metrics.md "Window
/// edges" defines the window (minute-aligned start), capped at 1.
async fn sql_ratio(db: &TestDb, numerator: &str, t: i64, w: i64) -> f64 {
    let from = (t - w).div_euclid(60) * 60;
    let starts = sql_count(db, START, Some(from), t).await;
    (sql_count(db, numerator, Some(from), t).await / starts).min(1.0)
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `result` of `/api/v1/query` (at `time`, or the server's now).
async fn prom_query(port: u16, query: &str, time: Option<i64>) -> Vec<serde_json::Value> {
    let mut path = format!("/api/v1/query?query={}", encode(query));
    if let Some(t) = time {
        path.push_str(&format!("&time={t}"));
    }
    let (status, body) = http_get(port, &path).await;
    assert_eq!(status, 200, "{query}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}"));
    v["data"]["result"].as_array().cloned().unwrap_or_else(|| panic!("{query}: no result: {body}"))
}

/// The single value of an instant query (panics unless exactly one series answers).
async fn prom_value(port: u16, query: &str, time: i64) -> f64 {
    let r = prom_query(port, query, Some(time)).await;
    assert_eq!(r.len(), 1, "{query} at {time} ({}): exactly one series expected: {r:?}", rfc(time));
    r[0]["value"][1].as_str().expect("value").parse().expect("numeric value")
}

/// `rollout-exporter backfill` on `db` over [`from`, `to`] with step 1m; returns (code, stderr).
fn backfill(db: &TestDb, from: i64, to: i64, labels: &[&str], output: &Path) -> (i32, String) {
    let (from, to, output) = (rfc(from), rfc(to), output.display().to_string());
    let mut args = vec!["backfill", "--database-url", &db.url, "--from", &from, "--to", &to, "--step", "1m"];
    for l in labels {
        args.extend_from_slice(&["--label", l]);
    }
    args.extend_from_slice(&["--output", &output, "--phase-started-at", PHASE_STARTED_AT]);
    let (code, _, stderr) = run_bin(&args);
    (code, stderr)
}

#[tokio::test]
async fn backfill_then_live_scrape_join_without_a_counter_reset() {
    if !require_tool("promtool") || !require_tool("prometheus") {
        return;
    }
    let dir = TempDir::new("rex_backfill");
    let db = TestDb::new().await;
    let base = db_minute(&db).await;
    eight_hours(&db, base).await;

    // The live exporter first: its port is the `instance` label the backfill must carry.
    let exporter = Exporter::serve(&db.url, &["--phase-started-at", PHASE_STARTED_AT], &[]);
    exporter.ready().await;
    let instance = format!("instance=127.0.0.1:{}", exporter.port);

    let (from, to) = (base - 8 * 3600, base - 3 * 3600 - 5 * 60);
    let file = dir.path().join("backfill.om");
    let (code, stderr) = backfill(&db, from, to, &["job=rollout-exporter", &instance], &file);
    assert_eq!(code, 0, "backfill failed: {stderr}");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    run_ok(Command::new("promtool").args(["tsdb", "create-blocks-from", "openmetrics"]).arg(&file).arg(&data));

    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: rollout-exporter\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            exporter.port
        ),
    )
    .unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--storage.tsdb.retention.time=30d")
        .current_dir(dir.path());
    let mut prometheus = Process::spawn(cmd);
    wait_for("prometheus /-/ready", Duration::from_secs(60), || async {
        try_get(prom_port, "/-/ready").await.filter(|r| r.0 == 200).map(|_| ())
    })
    .await;
    assert!(prometheus.is_running(), "prometheus exited: {}", prometheus.stderr());

    // The backfilled history equals SQL at past instants (whole minutes inside the range).
    let started = "assignment_coordinator_events_total{event_type=\"coordinator.start\"}";
    let mut ratios_1h = Vec::new();
    for t in [base - 7 * 3600, base - 5 * 3600 - 30 * 60, base - 3 * 3600 - 10 * 60] {
        let got = prom_value(prom_port, &format!("sum({started})"), t).await;
        let want = sql_count(&db, START, None, t).await;
        assert_eq!(got, want, "starts at {}", rfc(t));
        for (window, w) in [("48h", 48 * 3600), ("6h", 6 * 3600), ("1h", 3600)] {
            let q = format!("assignment_coordinator_success_ratio{{window=\"{window}\"}}");
            let (got, want) = (prom_value(prom_port, &q, t).await, sql_ratio(&db, CONFIRMED, t, w).await);
            assert!((got - want).abs() < 1e-9, "{q} at {}: prometheus {got}, SQL {want}", rfc(t));
            let q = format!("assignment_coordinator_manual_review_ratio{{window=\"{window}\"}}");
            let (got, want) = (prom_value(prom_port, &q, t).await, sql_ratio(&db, MANUAL, t, w).await);
            assert!((got - want).abs() < 1e-9, "{q} at {}: prometheus {got}, SQL {want}", rfc(t));
        }
        let q = "assignment_coordinator_success_ratio{window=\"1h\"}";
        ratios_1h.push(prom_value(prom_port, q, t).await);
        eprintln!(
            "{}: starts {got}, success_ratio 1h/6h/48h {}/{}/{}, manual_review_ratio 6h {}",
            rfc(t),
            ratios_1h[ratios_1h.len() - 1],
            sql_ratio(&db, CONFIRMED, t, 6 * 3600).await,
            sql_ratio(&db, CONFIRMED, t, 48 * 3600).await,
            sql_ratio(&db, MANUAL, t, 6 * 3600).await,
        );
    }
    assert!(
        ratios_1h[1] < ratios_1h[0] && ratios_1h[1] < ratios_1h[2],
        "the stretch without confirmations shows: {ratios_1h:?}"
    );

    // A few live scrapes, then one series from the backfill's first step to now, without a reset.
    let live_from = base;
    let range = format!("{started}[12h]");
    let samples = wait_for("3 live samples of the start counter", Duration::from_secs(60), || async {
        let r = prom_query(prom_port, &range, None).await;
        let values = r.first()?["values"].as_array()?.clone();
        let live = values.iter().filter(|v| v[0].as_f64().unwrap_or(0.0) >= live_from as f64).count();
        (r.len() == 1 && live >= 3).then_some(values)
    })
    .await;
    let series = prom_query(prom_port, &range, None).await;
    assert_eq!(
        series.len(),
        1,
        "backfilled and live samples are one series: {:?}",
        series.iter().map(|s| &s["metric"]).collect::<Vec<_>>()
    );
    let points: Vec<(f64, f64)> =
        samples.iter().map(|v| (v[0].as_f64().unwrap(), v[1].as_str().unwrap().parse().unwrap())).collect();
    let backfilled: Vec<&(f64, f64)> = points.iter().filter(|p| p.0 <= to as f64).collect();
    let live: Vec<&(f64, f64)> = points.iter().filter(|p| p.0 >= live_from as f64).collect();
    assert!(!backfilled.is_empty() && !live.is_empty(), "samples from both: {points:?}");
    assert!(
        backfilled.iter().all(|p| p.0 >= from as f64 && (p.0 as i64 - from) % 60 == 0),
        "backfill steps: {backfilled:?}"
    );
    let (last_backfilled, first_live) = (backfilled.last().unwrap(), live.first().unwrap());
    assert_eq!(last_backfilled.1, sql_count(&db, START, None, to).await, "the last backfilled step");
    assert_eq!(first_live.1, sql_count(&db, START, None, i64::MAX / 4_000_000).await, "live: every start");
    assert!(first_live.1 >= last_backfilled.1, "live {first_live:?} after backfilled {last_backfilled:?}");
    let resets = prom_value(prom_port, &format!("resets({range})"), now_secs()).await;
    assert_eq!(resets, 0.0, "the backfilled history and the live series join without a reset");
    eprintln!(
        "start counter: {} backfilled samples ({} at {}), {} live ({} at {}), resets {resets}",
        backfilled.len(),
        last_backfilled.1,
        rfc(last_backfilled.0 as i64),
        live.len(),
        first_live.1,
        rfc(first_live.0 as i64)
    );
    assert!(prometheus.is_running(), "prometheus exited: {}", prometheus.stderr());
    drop(prometheus);
    drop(exporter);
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn backfill_refuses_the_head_block_and_writes_families_whole() {
    let dir = TempDir::new("rex_backfill_file");
    let db = TestDb::new().await;
    let base = db_minute(&db).await;
    eight_hours(&db, base).await;
    let file = dir.path().join("out.om");

    // The last 3 hours belong to Prometheus' head block: a usage error, nothing written.
    let (code, stderr) = backfill(&db, base - 4 * 3600, base - 2 * 3600, &["job=rollout-exporter"], &file);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("head block") && stderr.contains("--to"), "{stderr}");
    assert!(!file.exists(), "nothing written on a usage error");

    let (from, to) = (base - 6 * 3600, base - 5 * 3600);
    let (code, stderr) = backfill(&db, from, to, &["job=rollout-exporter", "instance=127.0.0.1:9187"], &file);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().last(), Some("# EOF"), "ends with # EOF");
    assert!(text.ends_with("# EOF\n"));
    let (mut seen, mut current): (BTreeSet<String>, Option<(String, String)>) = (BTreeSet::new(), None);
    let mut steps = BTreeSet::new();
    for line in text.lines().filter(|l| *l != "# EOF") {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(seen.insert(name.to_string()), "# TYPE {name} appears twice: the family is interleaved");
            current = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected line {line}");
        let (family, kind) = current.as_ref().unwrap_or_else(|| panic!("sample before any # TYPE: {line}"));
        let name = &line[..line.find(['{', ' ']).unwrap()];
        let expected = if kind == "counter" { format!("{family}_total") } else { family.clone() };
        assert_eq!(name, expected, "sample outside its family's block: {line}");
        assert!(
            name.starts_with("assignment_coordinator_") || name.starts_with("assignment_rollout_"),
            "only the coordinator's and the rollout's families: {line}"
        );
        assert!(line.contains("job=\"rollout-exporter\"") && line.contains("instance=\"127.0.0.1:9187\""), "{line}");
        let ts: i64 =
            line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("timestamp in seconds: {line}"));
        assert!((from..=to).contains(&ts) && ts % 60 == 0, "timestamp {ts} outside the steps: {line}");
        steps.insert(ts);
    }
    assert_eq!(steps.len(), 61, "every step from {} to {} (both included)", rfc(from), rfc(to));
    for f in
        ["assignment_coordinator_events", "assignment_coordinator_success_ratio", "assignment_rollout_gate_passing"]
    {
        assert!(seen.contains(f), "{f} is backfilled: {seen:?}");
    }
    for f in ["assignment_coordinator_stuck_bookings", "rollout_exporter_database_up"] {
        assert!(!seen.iter().any(|s| s.starts_with(f)), "{f} is not backfilled: {seen:?}");
    }
}
