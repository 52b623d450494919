//! Wiring: bind, start the flags watcher and the ingest loop over a source, serve the outputs,
//! and stop everything when a shutdown future resolves. Tests call [`App::build_serve`] /
//! [`App::build_demo`] with port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{DemoConfig, HttpConfig, RolloutConfig, ServeConfig, TallyConfig};
use crate::ingest;
use crate::outputs::Live;
use crate::rollout::phase::{read_flags, watch_flags, PhaseTracker};
use crate::rollout::{Flags, PhaseState};
use crate::snapshot::Snapshot;
use crate::source::demo::DemoSource;
use crate::source::postgres::{FollowConfig, PgSource};
use crate::source::{Source, SourceError};
use crate::time::UnixMicros;

/// How long the ingest task may take to stop after shutdown.
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

/// Starts the ingest loop of one source; the app does not care which.
type Starter =
    Box<dyn FnOnce(watch::Sender<Arc<Snapshot>>, watch::Receiver<bool>, ingest::Judge) -> JoinHandle<()> + Send>;

fn starter<S: Source>(source: S, tally: TallyConfig) -> (Starter, &'static str) {
    let start: Starter =
        Box::new(move |tx, stop, judge| tokio::spawn(ingest::run(source, tally, tx, stop, Some(judge))));
    (start, S::NAME)
}

pub struct App {
    listener: TcpListener,
    http: HttpConfig,
    rollout: RolloutConfig,
    phase: PhaseTracker,
    start: Starter,
    source_name: &'static str,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr).await.map_err(|source| AppError::Bind { addr, source })
}

impl App {
    pub async fn build_serve(cfg: ServeConfig) -> Result<App, AppError> {
        let listener = bind(cfg.http.listen).await?;
        let phase = PhaseTracker::new(
            read_flags(cfg.rollout.flags_file.as_ref()),
            cfg.rollout.phase_started_at,
            UnixMicros::now().seconds(),
        );
        let source = PgSource::new(cfg.db.clone(), FollowConfig::serve(&cfg))?;
        let (start, source_name) = starter(source, cfg.tally.clone());
        Ok(App { listener, http: cfg.http, rollout: cfg.rollout, phase, start, source_name })
    }

    /// The demo defaults to phase `full` begun one soak window ago, unless flags are given.
    pub async fn build_demo(cfg: DemoConfig) -> Result<App, AppError> {
        let listener = bind(cfg.http.listen).await?;
        let now = UnixMicros::now().seconds();
        let state: PhaseState = if cfg.rollout.flags_file.is_none() && Flags::from_env() == Flags::default() {
            Flags { v3: Some("true".into()), shadow: Some("false".into()), max_parallel: Some("3".into()) }.phase()
        } else {
            read_flags(cfg.rollout.flags_file.as_ref())
        };
        let mut rollout = cfg.rollout.clone();
        rollout.phase_started_at = Some(rollout.phase_started_at.unwrap_or(now - rollout.soak.seconds as f64));
        let phase = PhaseTracker::new(state, rollout.phase_started_at, now);
        let (start, source_name) = starter(DemoSource::new(cfg.clone()), cfg.tally.clone());
        Ok(App { listener, http: cfg.http, rollout, phase, start, source_name })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` resolves, then stops the server and the source within a few seconds.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), AppError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (snap_tx, snapshots) = watch::channel(Arc::new(Snapshot::empty(UnixMicros::now())));
        let (phase_tx, phases) = watch::channel(Arc::new(self.phase.view().clone()));
        let live = Live { snapshots, phases, rollout: Arc::new(self.rollout.clone()) };
        let judge = ingest::Judge { phases: live.phases.clone(), rollout: live.rollout.clone() };
        let mut ingest = (self.start)(snap_tx, stop_rx.clone(), judge);
        let watcher = tokio::spawn(watch_flags(self.rollout.flags_file.clone(), self.phase, phase_tx, stop_rx.clone()));
        // The source must outlive the server: if it ever stops on its own (a bug), serving frozen
        // numbers as if fresh would be worse than a restart. Stop everything and report it.
        let (died_tx, mut died_rx) = watch::channel(false);
        let watched = tokio::spawn(async move {
            tokio::select! {
                _ = shutdown => {
                    let _ = stop_tx.send(true);
                    let _ = tokio::time::timeout(DRAIN, &mut ingest).await;
                }
                result = &mut ingest => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "the ingest task failed");
                    }
                    let _ = died_tx.send(true);
                    let _ = stop_tx.send(true);
                }
            }
        });
        let served = serve(self.listener, &self.http, live, stop_rx).await;
        let _ = tokio::time::timeout(DRAIN, watched).await;
        watcher.abort();
        served?;
        if *died_rx.borrow_and_update() {
            return Err(AppError::SourceStopped(self.source_name));
        }
        Ok(())
    }
}

/// Serves the outputs on `listener` (TLS when configured) until `stop` turns true.
async fn serve(
    listener: TcpListener,
    http: &HttpConfig,
    live: Live,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let router = crate::outputs::http::router_with(live, http);
    let addr = listener.local_addr().map_err(AppError::Serve)?;
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    let served = match http.web.as_ref().and_then(|w| w.tls.clone()) {
        Some(tls) => {
            tracing::info!(%addr, tls = true, "listening");
            let listener = crate::outputs::web::TlsListener::new(listener, tls).map_err(AppError::Serve)?;
            axum::serve(listener, router).with_graceful_shutdown(stopped).await
        }
        None => {
            tracing::info!(%addr, tls = false, "listening");
            axum::serve(listener, router).with_graceful_shutdown(stopped).await
        }
    };
    served.map_err(AppError::Serve)
}
