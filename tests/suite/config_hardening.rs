//! The connection string and the table names from the outside: a password never shows in an
//! error, a log line or a `Debug`, whatever shape it comes in (URL with unencoded delimiters,
//! libpq key=value, environment, file); key=value strings connect; table and column names follow
//! psql's case folding against real PostgreSQL.

use std::cell::RefCell;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use rollout_exporter::config::{redact_url, Cli, Validated};
use sqlx::postgres::PgConnectOptions;

use crate::helpers::*;

/// Characters that break naive URL and key=value handling, and markers (non-ASCII) that no message
/// of the exporter contains, so that any window of the password holding one is a leak.
const PW_CHARS: &[char] =
    &['?', '#', '@', '/', '%', ':', '=', ' ', '\'', '\\', '&', '"', '+', '\t', 'Q', 'z', '7', 'é', 'Ж', '密', '🔑'];
const MARKERS: &[char] = &['é', 'Ж', '密', '🔑'];

/// Everything but `A-Z a-z 0-9 - . _ ~` as `%XX`.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The forms in which `s` could show: as is, escaped by `{:?}`, percent-encoded.
fn shapes(s: &str) -> [String; 3] {
    [s.to_string(), s.escape_debug().to_string(), enc(s)]
}

/// Some part of `password` that `text` shows: the whole password, or any run of 3 or more of its
/// characters that holds a marker (or any run of 3 or more, when `all_windows`).
fn leak(text: &str, password: &str, all_windows: bool) -> Option<String> {
    let chars: Vec<char> = password.chars().collect();
    let mut candidates = vec![password.to_string()];
    for len in 3..=chars.len() {
        for w in chars.windows(len) {
            if all_windows || w.iter().any(|c| MARKERS.contains(c)) {
                candidates.push(w.iter().collect());
            }
        }
    }
    candidates.into_iter().flat_map(|c| shapes(&c)).find(|shape| text.contains(shape.as_str()))
}

/// `Cli::try_parse_from(["rollout-exporter", <command>, <args>...]).command.validate()`: the error
/// message, or the whole validated configuration as `{:?}` with its URL's `Display` and `Debug`
/// and sqlx's error if sqlx cannot parse the URL.
fn validate(command: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["rollout-exporter", command];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(&all).map_err(|e| format!("clap: {e}"))?;
    match cli.command.validate() {
        Err(e) => Err(e.to_string()),
        Ok(v) => {
            let url = match &v {
                Validated::Serve(cfg) => cfg.db.url.clone(),
                Validated::Verdict(cfg) => cfg.db.url.clone(),
                Validated::Check(cfg) => cfg.db.url.clone(),
                Validated::Backtest(cfg) => cfg.db.url.clone(),
                Validated::Backfill(cfg) => cfg.db.url.clone(),
                Validated::Demo(_) => unreachable!(),
            };
            let mut shown = format!("{v:?}\n{url}\n{url:?}\n");
            // What Db::new reports when sqlx refuses the URL.
            if let Err(e) = PgConnectOptions::from_str(url.expose_secret()) {
                shown.push_str(&format!("invalid database URL {}: {e}", url.redacted()));
            }
            Ok(shown)
        }
    }
}

/// libpq's quoting of a value: `'...'` with `\'` and `\\`.
fn libpq_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Malformed and well-formed connection strings around a password.
fn form(i: usize, pw: &str) -> String {
    match i {
        0 => format!("postgres://u:{pw}@127.0.0.1:5432/db"),
        1 => format!("postgres://u:{pw}@h/db?sslmode=disable"),
        2 => format!("postgresql://u:{pw}@h:5432/db?application_name=x"),
        3 => format!("postgres://u@h/db?password={pw}"),
        4 => format!("postgres://u@h/db?password={pw}&sslmode=disable"),
        5 => format!("postgres://u:{pw}@h/db?password={pw}"),
        6 => format!("host=h port=5432 user=u password={pw} dbname=d"),
        7 => format!("host=h user=u password={} dbname=d", libpq_quote(pw)),
        8 => format!("host=h user=u password='{pw}' dbname=d"),
        9 => format!("host=h password='{pw}"),
        10 => format!("u:{pw}@h/db"),
        11 => format!("mysql://u:{pw}@h/db"),
        // Without '@' no parser reads a password; what follows ':' is a port, so the password
        // starts with a marker here (one that starts with digits shows as the port), and an '@'
        // in it would make a well-formed URL with a host.
        12 => format!("postgres://u:{pw}"),
        13 => format!("postgres://u:{}@h/db", enc(pw)),
        14 => format!("password={pw}"),
        15 => format!("  postgres://u:{pw}@h:5432/db?sslmode=require  "),
        16 => format!("postgres://u:{pw}@h:5432/db?sslmode=disable&application_name=a"),
        17 => format!("user=u password = {pw}"),
        _ => format!("postgres://u:{pw}@h/db?password={pw}&x={pw}"),
    }
}
const FORMS: usize = 19;

fn password() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(PW_CHARS), 2..14),
        prop::sample::select(MARKERS),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut v, marker, at)| {
            let i = at.index(v.len() + 1);
            v.insert(i, marker);
            v.into_iter().collect()
        })
}

#[test]
fn config_the_password_never_shows_whatever_the_connection_string_looks_like() {
    let dir = TempDir::new("rex_url_prop");
    let file = dir.path().join("url");
    let mut runner = TestRunner::new(proptest_config(2000));
    let accepted = RefCell::new(0usize);
    let result = runner.run(&(0..FORMS, password(), any::<bool>(), any::<bool>()), |(i, pw, verdict, via_file)| {
        // Form 12 has no host: an '@' in its password makes a well-formed URL of another password.
        let pw = if i == 12 { format!("Ж{}", pw.replace('@', "")) } else { pw };
        let raw = form(i, &pw);
        let command = if verdict { "verdict" } else { "serve" };
        let path = file.to_str().unwrap();
        let args: Vec<&str> = if via_file {
            std::fs::write(&file, &raw).unwrap();
            vec!["--database-url-file", path]
        } else {
            vec![&raw]
        };
        let args: Vec<&str> = if via_file { args } else { vec!["--database-url", args[0]] }
            .into_iter()
            .chain(["--log-format", "json"])
            .collect();
        let shown = match validate(command, &args) {
            Ok(shown) => {
                *accepted.borrow_mut() += 1;
                shown
            }
            Err(e) => e,
        };
        if let Some(l) = leak(&shown, &pw, false) {
            return Err(TestCaseError::fail(format!("{raw:?}: {shown:?} shows {l:?}")));
        }
        let r = redact_url(&raw);
        if let Some(l) = leak(&r, &pw, false) {
            return Err(TestCaseError::fail(format!("redact_url({raw:?}) = {r:?} shows {l:?}")));
        }
        // Well-formed: the canonical URL keeps the password exactly (checked through sqlx's parser
        // by the connection tests below; here: it is accepted at all).
        if i == 7 || i == 13 {
            prop_assert!(validate(command, &args).is_ok(), "{raw:?} refused: {:?}", validate(command, &args));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(*accepted.borrow() > 100, "the well-formed forms are accepted");
}

/// The URL `serve` would connect with.
fn accepted_url(raw: &str) -> Result<rollout_exporter::config::DatabaseUrl, String> {
    let cli = Cli::try_parse_from(["rollout-exporter", "serve", "--database-url", raw]).map_err(|e| e.to_string())?;
    match cli.command.validate().map_err(|e| e.to_string())? {
        Validated::Serve(cfg) => Ok(cfg.db.url),
        _ => unreachable!(),
    }
}

/// What is meant is what sqlx reads: a value in a quoted key=value string or percent-encoded in a
/// URL reaches sqlx's parser unchanged. sqlx has no getter for the password, so the user name and
/// the database name, which go through the same encoding here and the same decoding in sqlx, stand
/// for it.
#[test]
fn config_sqlx_reads_exactly_the_value_that_was_meant() {
    let mut runner = TestRunner::new(proptest_config(500));
    let result = runner.run(&(password(), password()), |(user, db)| {
        for raw in [
            format!("host=h user={} password={} dbname={}", libpq_quote(&user), libpq_quote(&db), libpq_quote(&db)),
            format!("postgres://{}:{}@h:5432/{}?sslmode=disable", enc(&user), enc(&db), enc(&db)),
        ] {
            let url = accepted_url(&raw).map_err(|e| TestCaseError::fail(format!("{raw:?}: {e}")))?;
            let options = PgConnectOptions::from_str(url.expose_secret())
                .map_err(|e| TestCaseError::fail(format!("{raw:?}: sqlx: {e}")))?;
            prop_assert_eq!(options.get_username(), user.as_str(), "{:?}", raw);
            prop_assert_eq!(options.get_database(), Some(db.as_str()), "{:?}", raw);
            prop_assert_eq!(options.get_host(), "h");
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The forms the issue lists, and more: each refused (or accepted) without any 3 characters of the
/// password in the message.
#[test]
fn config_each_malformed_form_is_refused_without_any_part_of_the_password() {
    let refused: &[(&str, &str)] = &[
        ("postgres://u:pa?ss@h:5432/db", "pa?ss"),
        ("postgres://u:p#w@h/db", "p#w"),
        ("postgres://u:p@w@h/db", "p@w"),
        ("postgres://u:p/w@h/db", "p/w"),
        ("postgres://u:p%zz@h/db", "p%zz"), // pragma: allowlist secret (a made-up test value)
        ("postgres://u:s3cr?t#x/y@h/db", "s3cr?t#x/y"),
        ("postgres://u:hunter2%@h/db", "hunter2%"), // pragma: allowlist secret (a made-up test value)
        ("postgres://u:sec/ret", "sec/ret"),
        ("postgres://u:secret", "secret"),
        ("postgres://u@h/db?password=sec@ret", "sec@ret"),
        ("postgres://u@h/db?password=sec#ret", "sec#ret"),
        ("postgres://u@h/db?password=sec&ret=1", "sec&ret=1"),
        ("postgres://u@h/db?password=sec&sslmode=ret", "sec&sslmode=ret"),
        ("host=h user=u password=sec ret dbname=d", "sec ret"),
        ("host=h user=u password=sec ret=x dbname=d", "sec ret=x"),
        ("host=h user=u password='sec\\'ret dbname=d", "'sec\\'ret dbname=d"), // pragma: allowlist secret (a made-up test value)
        ("host=h user=u password=secret port=x5", "secret port=x5"),
        ("u:secret@h/db", "secret"),
        ("mysql://u:secret@h/db", "secret"), // pragma: allowlist secret (a made-up test value)
        ("secret", "secret"),
    ];
    let mut seen = Vec::new();
    for (raw, pw) in refused {
        for command in ["serve", "verdict"] {
            let e = validate(command, &["--database-url", raw]).expect_err(raw);
            assert!(e.contains("--database-url"), "{e}");
            if let Some(l) = leak(&e, pw, true) {
                panic!("{raw:?}: {e:?} shows {l:?}");
            }
            seen.push(e);
        }
        let r = redact_url(raw);
        if let Some(l) = leak(&r, pw, true) {
            panic!("redact_url({raw:?}) = {r:?} shows {l:?}");
        }
    }
    // The ambiguous URLs are named as such, redacted.
    let e = validate("serve", &["--database-url", "postgres://u:pa?ss@h:5432/db"]).unwrap_err();
    assert!(e.contains("percent-encode") && e.contains("postgres://u:***@h:5432/db"), "{e}");
    // Encoded, the same passwords are accepted, and nothing shows them either.
    for (raw, pw) in [
        ("postgres://u:pa%3Fss@h:5432/db", "pa?ss"), // pragma: allowlist secret (a made-up test value)
        ("postgres://u:p%23w@h/db", "p#w"),          // pragma: allowlist secret (a made-up test value)
        ("postgres://u:p%40w@h/db", "p@w"),          // pragma: allowlist secret (a made-up test value)
        ("postgres://u:p%2Fw@h/db", "p/w"),          // pragma: allowlist secret (a made-up test value)
        ("postgres://u:p%25zz@h/db", "p%zz"),        // pragma: allowlist secret (a made-up test value)
        ("host=h user=u password='Qz\\'Vx #@/?' dbname=d", "Qz'Vx #@/?"), // pragma: allowlist secret (a made-up test value)
    ] {
        let shown = validate("verdict", &["--database-url", raw]).unwrap_or_else(|e| panic!("{raw}: {e}"));
        if let Some(l) = leak(&shown, pw, true) {
            panic!("{raw:?}: {shown:?} shows {l:?}");
        }
    }
}

/// The binary, with the URL on the command line, in DATABASE_URL and in a file, and JSON logs:
/// exit 2 and nothing of the password on stdout or stderr.
#[test]
fn config_the_binary_refuses_malformed_urls_without_the_password() {
    let dir = TempDir::new("rex_url_bin");
    let file = dir.path().join("url");
    for (raw, pw) in [
        ("postgres://u:Qz?Vx#Kj@127.0.0.1:5432/db", "Qz?Vx#Kj"),
        ("postgres://u:Qz3@V/Kj@127.0.0.1/db", "Qz3@V/Kj"), // pragma: allowlist secret (a made-up test value)
        ("host=127.0.0.1 user=u password=Qz Vx-Kj dbname=d", "Qz Vx-Kj"),
    ] {
        let mut outputs = Vec::new();
        for command in ["verdict", "serve"] {
            let (code, out, err) = run_bin(&["--log-format", "json", command, "--database-url", raw]);
            outputs.push((format!("{command} --database-url"), code, out + &err));
            let o = std::process::Command::new(bin())
                .args(["--log-format", "json", command])
                .env("DATABASE_URL", raw)
                .env_remove("DATABASE_URL_FILE")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
            outputs.push((format!("{command} DATABASE_URL"), o.status.code().unwrap_or(-1), text));
            std::fs::write(&file, format!("{raw}\n")).unwrap();
            let (code, out, err) =
                run_bin(&["--log-format", "json", command, "--database-url-file", file.to_str().unwrap()]);
            outputs.push((format!("{command} --database-url-file"), code, out + &err));
        }
        for (how, code, text) in outputs {
            assert_eq!(code, 2, "{how} {raw:?}: {text}");
            assert!(text.contains("--database-url"), "{how}: the flag is named: {text}");
            if let Some(l) = leak(&text, pw, true) {
                panic!("{how} {raw:?}: {text:?} shows {l:?}");
            }
        }
    }
}

/// A libpq key=value string (with a password that needs quoting, which trust auth ignores) is
/// converted and connects: the verdict runs, the exporter counts.
#[tokio::test]
async fn config_a_key_value_connection_string_connects() {
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(3).insert().await;
    let kv =
        format!("host=127.0.0.1 port=5432 user=postgres password='it\\'s #@/? 密' dbname={} sslmode=disable", db.name); // pragma: allowlist secret (a made-up test value)
    let (code, out, err) = run_bin(&["verdict", "--database-url", &kv, "--format", "json"]);
    assert!([0, 1, 3].contains(&code), "verdict ran: {code} {err}");
    assert!(out.contains("\"decision\""), "{out}");
    assert!(!err.contains("it's") && !out.contains("it's"), "{err}");
    let app = spawn_app(serve_config(&kv, &[])).await;
    app.ready().await;
    app.wait_totals_match(&db).await;
    app.stop().await;
}

/// Names as psql reads them: `"Observability_Events"` and `"CreatedAt"` keep their case, an
/// unquoted `Observability_Events` folds to `observability_events`.
#[tokio::test]
async fn config_quoted_table_and_column_names_keep_their_case() {
    let db = TestDb::builder()
        .schema(&format!(
            "{SCHEMA_BIGINT};
             CREATE TABLE \"Observability_Events\" (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 source text NOT NULL,
                 event_type text,
                 context jsonb,
                 \"CreatedAt\" timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .build()
        .await;
    sqlx::raw_sql(
        "INSERT INTO \"Observability_Events\" (source, event_type, context)
         SELECT 'assignment.coordinator', t, jsonb_build_object('booking_id', 'b' || g, 'reason', 'r' || (g % 3))
         FROM generate_series(1, 40) g,
              LATERAL (SELECT (ARRAY['coordinator.start', 'coordinator.retry', 'coordinator.success'])[1 + g % 3] AS t) x;
         INSERT INTO \"Observability_Events\" (source, event_type) VALUES ('other.source', 'coordinator.start');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let truth = totals_of(&db, "\"Observability_Events\"").await;
    assert_eq!(truth.values().sum::<u64>(), 40);
    let app = spawn_app(serve_config(
        &db.url,
        &["--table", "\"Observability_Events\"", "--created-at-column", "\"CreatedAt\""],
    ))
    .await;
    app.ready().await;
    wait_totals(&app, &truth).await;
    app.stop().await;
    // Unquoted, the same flag finds the lower-case table (the shipped schema).
    let db = TestDb::new().await;
    db.events().event_type("coordinator.start").count(5).insert().await;
    db.events().event_type("coordinator.retry").reason("upstream_timeout").count(2).insert().await;
    let app = spawn_app(serve_config(
        &db.url,
        &["--table", "Observability_Events", "--created-at-column", "Created_At", "--id-column", "ID"],
    ))
    .await;
    app.ready().await;
    let totals = app.wait_totals_match(&db).await;
    assert_eq!(totals.values().sum::<u64>(), 7);
    app.stop().await;
    // Schema-qualified, quoted and unquoted mixed.
    let db = TestDb::builder()
        .schema(&format!(
            "{SCHEMA_BIGINT};
             CREATE SCHEMA \"Rollout\";
             CREATE TABLE \"Rollout\".\"My \"\"Events\"\"\" (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 source text NOT NULL, event_type text, context jsonb,
                 created_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO \"Rollout\".\"My \"\"Events\"\"\" (source, event_type, context)
             SELECT 'assignment.coordinator', 'coordinator.start', '{{}}' FROM generate_series(1, 4);"
        ))
        .build()
        .await;
    let truth = totals_of(&db, "\"Rollout\".\"My \"\"Events\"\"\"").await;
    assert_eq!(truth.values().sum::<u64>(), 4);
    let app = spawn_app(serve_config(&db.url, &["--table", "\"Rollout\".\"My \"\"Events\"\"\""])).await;
    app.ready().await;
    wait_totals(&app, &truth).await;
    app.stop().await;
}

/// events_total as SQL computes it from `table` (quoted as given), with the documented label rules.
async fn totals_of(db: &TestDb, table: &str) -> Totals {
    let created = if table.contains("Observability") { "\"CreatedAt\"" } else { "created_at" };
    let rows: Vec<(String, String, i64)> = sqlx::query_as(&format!(
        "SELECT coalesce(event_type, '(null)'),
                CASE WHEN context->>'reason' IS NULL THEN ''
                     WHEN context->>'reason' = '' THEN '(empty)'
                     ELSE context->>'reason' END,
                count(*)
         FROM {table} WHERE source = $1 AND {created} IS NOT NULL GROUP BY 1, 2"
    ))
    .bind(SOURCE)
    .fetch_all(&db.pool)
    .await
    .expect("sql totals");
    rows.into_iter().map(|(e, r, n)| ((e, r), n as u64)).collect()
}

async fn wait_totals(app: &TestApp, truth: &Totals) {
    let mut last = Totals::new();
    for _ in 0..200 {
        last = app.scrape().await.totals();
        if &last == truth {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("events_total never matched SQL\nexporter: {last:#?}\nsql: {truth:#?}");
}

#[test]
fn config_injection_through_names_is_still_refused() {
    let url = "postgres://u@127.0.0.1:1/x";
    for (flag, value) in [
        ("--table", "events; drop table x"),
        ("--table", "events\"; drop table x; --"),
        ("--table", "\"a\"b"),
        ("--table", "a.b.c"),
        ("--created-at-column", "\"x\0y\""),
        ("--id-column", "s.id"),
    ] {
        let e = validate("serve", &["--database-url", url, flag, value]).expect_err(value);
        assert!(e.contains(flag), "{e}");
    }
}

#[test]
fn min_starts_zero_is_refused_because_no_booking_would_pass_the_gate() {
    let (code, _out, err) = crate::helpers::run_bin(&[
        "verdict",
        "--database-url",
        "postgres://postgres@127.0.0.1:5432/postgres",
        "--min-starts",
        "0",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--min-starts") && err.lines().count() == 1, "{err}");
}

#[test]
fn a_max_staleness_no_longer_than_a_poll_and_the_timestamp_delay_is_refused() {
    let (code, _out, err) = crate::helpers::run_bin(&[
        "serve",
        "--database-url",
        "postgres://postgres@127.0.0.1:5432/postgres",
        "--poll-interval",
        "2s",
        "--max-staleness",
        "3s",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-staleness") && err.contains("--timestamp-delay"), "{err}");
}
