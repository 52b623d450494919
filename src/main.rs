use std::process::ExitCode;

use clap::Parser;
use rollout_exporter::app::App;
use rollout_exporter::config::{Cli, Validated};
use rollout_exporter::init_logging;
use rollout_exporter::outputs::verdict;

/// Usage and configuration errors.
const EXIT_CONFIG: u8 = 2;
/// `verdict` could not reach a decision (the database failed).
const EXIT_UNAVAILABLE: u8 = 4;

/// glibc gives each thread that allocates its own malloc arena (up to 8 per core), so the few
/// threads of the runtime keep freed memory in several arenas and RSS creeps up under a steady
/// scrape and ingest load (tests/suite/hardening/load.rs: 14 -> 22 MiB in 30 s with the default,
/// flat with two arenas). Two arenas are plenty for two worker threads.
///
/// Blocks of 256 KiB and more (a page of rows, the booking table, the load's groups) are mapped
/// on their own and unmapped when freed. glibc's default threshold rises to the size of each
/// mapped block that is freed (up to 32 MiB), after which such blocks come from the arenas and
/// stay resident among live ones: after a 300,000-row burst RSS stayed 9 MiB above the live heap
/// (heaptrack against /proc/PID/smaps, bench/harness.py's burst).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or("invalid arguments").to_string();
            eprintln!("rollout-exporter: {}", first.trim_start_matches("error: "));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let validated = match cli.command.validate() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("rollout-exporter: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollout-exporter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match validated {
            Validated::Serve(cfg) => serve(App::build_serve(cfg).await).await,
            Validated::Demo(cfg) => serve(App::build_demo(cfg).await).await,
            Validated::Backtest(cfg) => match rollout_exporter::outputs::backtest::run(&cfg).await {
                Ok(verdicts) => {
                    print!("{}", rollout_exporter::outputs::backtest::render(&verdicts, cfg.format));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rollout-exporter: backtest unavailable: {e}");
                    ExitCode::from(EXIT_UNAVAILABLE)
                }
            },
            Validated::Backfill(cfg) => match rollout_exporter::outputs::backfill::run(&cfg).await {
                Ok(steps) => {
                    eprintln!("rollout-exporter: wrote {steps} steps to {}", cfg.output.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rollout-exporter: backfill failed: {e}");
                    ExitCode::from(EXIT_UNAVAILABLE)
                }
            },
            Validated::Check(cfg) => {
                let report = rollout_exporter::outputs::check::run(&cfg).await;
                print!("{}", rollout_exporter::outputs::check::render(&report, cfg.format));
                ExitCode::from(report.exit_code())
            }
            Validated::Verdict(cfg) => match verdict::compute(&cfg).await {
                Ok(v) => {
                    print!("{}", verdict::render(&v, cfg.format));
                    ExitCode::from(v.decision.exit_code())
                }
                Err(e) => {
                    eprintln!("rollout-exporter: verdict unavailable: {e}");
                    ExitCode::from(EXIT_UNAVAILABLE)
                }
            },
        }
    })
}

async fn serve(app: Result<App, rollout_exporter::app::AppError>) -> ExitCode {
    let app = match app {
        Ok(app) => app,
        Err(e) => {
            eprintln!("rollout-exporter: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollout-exporter: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
