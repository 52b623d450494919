//! Wiring: build the app (bind, state, traffic source, flags watcher) and run it until a shutdown
//! future resolves. Tests call [`App::build_serve`] / [`App::build_demo`] with port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{DemoConfig, HttpConfig, RolloutConfig, ServeConfig};
use crate::metrics::ExporterMetrics;
use crate::rollout::{Flags, Phase, PhaseState};
use crate::source::postgres::SourceError;
use crate::source::{demo, sleep_or_shutdown, Follower};
use crate::state::{unix_now, State};

/// How often the flags file is compared with what was last read (changes show within 10 s).
const FLAGS_RECHECK: Duration = Duration::from_secs(2);
/// How long the traffic task may take to stop after shutdown.
const DRAIN: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("the {0} stopped unexpectedly; exiting so that a supervisor restarts the exporter")]
    SourceStopped(&'static str),
}

enum Traffic {
    Postgres(Box<Follower>),
    Demo(Box<DemoConfig>),
}

pub struct App {
    listener: TcpListener,
    http: HttpConfig,
    state: State,
    traffic: Traffic,
    flags_file: Option<PathBuf>,
}

/// Reads the flags: from the file when configured (an unreadable file is an invalid phase, not a
/// crash), else from the environment.
pub fn read_flags(file: Option<&PathBuf>) -> PhaseState {
    match file {
        None => Flags::from_env().phase(),
        Some(path) => match Flags::from_file(path) {
            Ok(flags) => flags.phase(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the flags file");
                PhaseState {
                    phase: Phase::Invalid,
                    invalid_reasons: vec!["flags_file_unreadable"],
                    max_parallel: None,
                    flags: Flags::default(),
                }
            }
        },
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })
}

impl App {
    pub async fn build_serve(cfg: ServeConfig) -> Result<App, AppError> {
        let listener = bind(cfg.http.listen).await?;
        let http = cfg.http.clone();
        let phase = read_flags(cfg.rollout.flags_file.as_ref());
        let state = State::new(cfg.rollout.clone(), phase, ExporterMetrics::new());
        let flags_file = cfg.rollout.flags_file.clone();
        let follower = Follower::new(cfg)?;
        Ok(App { listener, http, state, traffic: Traffic::Postgres(Box::new(follower)), flags_file })
    }

    /// The demo defaults to phase `full` begun one soak window ago, unless flags are given.
    pub async fn build_demo(mut cfg: DemoConfig) -> Result<App, AppError> {
        let listener = bind(cfg.http.listen).await?;
        let http = cfg.http.clone();
        let env_flags = Flags::from_env();
        let phase = if cfg.rollout.flags_file.is_none() && env_flags == Flags::default() {
            Flags { v3: Some("true".into()), shadow: Some("false".into()), max_parallel: Some("3".into()) }.phase()
        } else {
            read_flags(cfg.rollout.flags_file.as_ref())
        };
        if cfg.rollout.phase_started_at.is_none() {
            cfg.rollout.phase_started_at = Some(unix_now() - cfg.rollout.soak.seconds as f64);
        }
        let state = State::new(cfg.rollout.clone(), phase, ExporterMetrics::new());
        let flags_file = cfg.rollout.flags_file.clone();
        Ok(App { listener, http, state, traffic: Traffic::Demo(Box::new(cfg)), flags_file })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> State {
        self.state.clone()
    }

    pub fn rollout_config(&self) -> &RolloutConfig {
        self.state.rollout_config()
    }

    /// Serves until `shutdown` resolves, then stops the server and the source within a few seconds.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), AppError> {
        let (tx, rx) = watch::channel(false);
        let (traffic, what) = match self.traffic {
            Traffic::Postgres(f) => (tokio::spawn(f.run(self.state.clone(), rx.clone())), "database poller"),
            Traffic::Demo(cfg) => (tokio::spawn(demo::run(*cfg, self.state.clone(), rx.clone())), "demo simulator"),
        };
        let watcher = tokio::spawn(watch_flags(self.flags_file.clone(), self.state.clone(), rx.clone()));
        let mut server_rx = rx.clone();
        // The source must outlive the server: if it ever stops on its own (a bug), serving frozen
        // numbers as if fresh would be worse than a restart. Stop everything and report it.
        let (died_tx, mut died_rx) = watch::channel(false);
        let mut traffic = traffic;
        let watched = tokio::spawn(async move {
            tokio::select! {
                _ = shutdown => {
                    let _ = tx.send(true);
                    let _ = tokio::time::timeout(DRAIN, &mut traffic).await;
                }
                result = &mut traffic => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "the source task failed");
                    }
                    let _ = died_tx.send(true);
                    let _ = tx.send(true);
                }
            }
        });
        let router = crate::http::router_with(self.state.clone(), &self.http);
        let addr = self.listener.local_addr().map_err(AppError::Serve)?;
        let stop = async move {
            let _ = server_rx.wait_for(|stop| *stop).await;
        };
        let served = match self.http.web.as_ref().and_then(|w| w.tls.clone()) {
            Some(tls) => {
                tracing::info!(%addr, tls = true, "listening");
                let listener = crate::web::TlsListener::new(self.listener, tls).map_err(AppError::Serve)?;
                axum::serve(listener, router).with_graceful_shutdown(stop).await
            }
            None => {
                tracing::info!(%addr, tls = false, "listening");
                axum::serve(self.listener, router).with_graceful_shutdown(stop).await
            }
        };
        let _ = tokio::time::timeout(DRAIN, watched).await;
        watcher.abort();
        served.map_err(AppError::Serve)?;
        if *died_rx.borrow_and_update() {
            return Err(AppError::SourceStopped(what));
        }
        Ok(())
    }
}

/// Re-reads the flags file when its content changes (checked every 2 s) and on SIGHUP. SIGHUP is
/// handled even without a flags file (then it only logs), so a reload never kills the exporter.
async fn watch_flags(file: Option<PathBuf>, state: State, mut shutdown: watch::Receiver<bool>) {
    let mut last = file.as_ref().and_then(|p| std::fs::read(p).ok());
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup_fired = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fired = std::future::pending::<()>();
        let forced = tokio::select! {
            stop = sleep_or_shutdown(FLAGS_RECHECK, &mut shutdown) => {
                if stop { return; }
                false
            }
            _ = hup_fired => true,
        };
        let Some(path) = &file else {
            if forced {
                tracing::info!("SIGHUP: no --flags-file; the flags come from the environment, which cannot change");
            }
            continue;
        };
        let now = std::fs::read(path).ok();
        if forced || now != last {
            if forced {
                tracing::info!(path = %path.display(), "SIGHUP: re-reading the flags file");
            }
            last = now;
            state.publish_phase(read_flags(Some(path)));
        }
    }
}
