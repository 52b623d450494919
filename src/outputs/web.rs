//! The exporter-toolkit web layer at serving time: basic auth as middleware and a TLS listener.
//! The configuration itself is parsed in [`crate::config::web`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::BasicAuth;

/// What the auth middleware needs.
#[derive(Clone)]
pub struct AuthLayer {
    pub auth: Arc<BasicAuth>,
    /// Paths served without credentials (e.g. the probes).
    pub open_paths: Arc<Vec<String>>,
}

pub async fn require_auth(
    axum::extract::State(layer): axum::extract::State<AuthLayer>,
    req: Request,
    next: Next,
) -> Response {
    if layer.open_paths.iter().any(|p| p == req.uri().path()) {
        return next.run(req).await;
    }
    let auth = layer.auth.clone();
    // bcrypt takes tens of milliseconds: keep it off the async workers.
    let (ok, req) = tokio::task::spawn_blocking(move || {
        let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        (auth.allows(header), req)
    })
    .await
    .expect("auth task");
    if ok {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"rollout-exporter\"")], "Unauthorized\n")
            .into_response()
    }
}

/// A listener that hands axum only connections whose TLS handshake finished; handshakes run in
/// their own tasks (with a deadline) so a slow client cannot stall the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
