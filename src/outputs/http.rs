//! The HTTP side: /metrics, /healthz, /readyz, /gate, /gate/rollback, /verdict and the status page
//! (and its icon).
//!
//! Every handler is a function of [`Live::current`]; none touches the database or takes a lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::Registry;
use tower_http::compression::CompressionLayer;

use super::web::{require_auth, AuthLayer};
use super::Live;
use crate::config::HttpConfig;
use crate::rollout::{Decision, PhaseView};
use crate::snapshot::Snapshot;

/// Exposition content type of the text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Ctx {
    live: Live,
    registry: Arc<Registry>,
    /// Swapped atomically: a scrape never waits for another.
    cache: Arc<ArcSwapOption<Rendered>>,
}

/// The last rendering of /metrics. It is served again while the snapshot and the phase are the
/// same ones and it is younger than [`RENDER_REUSE`]: data metrics change only when the source
/// publishes (every poll), and process metrics may be a second old. Scrapes stay cheap under load.
struct Rendered {
    snapshot: Arc<Snapshot>,
    phase: Arc<PhaseView>,
    at: Instant,
    body: Bytes,
}

const RENDER_REUSE: Duration = Duration::from_secs(1);

/// The router, without a listener and without access control (tests drive it with `oneshot`).
/// `/metrics` is gzip-compressed when the scraper sends `Accept-Encoding: gzip`, as Prometheus does.
pub fn router(live: Live) -> Router {
    let registry = Arc::new(super::metrics::registry(&live).expect("metric names are valid and unique"));
    Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics).layer(CompressionLayer::new().gzip(true)))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/gate", get(gate).post(gate))
        .route("/gate/rollback", get(rollback).post(rollback))
        .route("/verdict", get(verdict))
        .route("/favicon.ico", get(favicon))
        .route("/runbook", get(runbook))
        .with_state(Ctx { live, registry, cache: Arc::new(ArcSwapOption::empty()) })
}

/// The router with the web configuration applied: basic auth (except on the open paths) and
/// extra response headers.
pub fn router_with(live: Live, http: &HttpConfig) -> Router {
    let mut router = router(live);
    if let Some(web) = &http.web {
        if let Some(auth) = &web.auth {
            let layer = AuthLayer { auth: auth.clone(), open_paths: Arc::new(http.open_paths.clone()) };
            router = router.layer(axum::middleware::from_fn_with_state(layer, require_auth));
        }
        for (name, value) in web.headers.clone() {
            router = router.layer(axum::middleware::map_response(move |mut res: Response| {
                let (name, value) = (name.clone(), value.clone());
                async move {
                    res.headers_mut().insert(name, value);
                    res
                }
            }));
        }
    }
    router
}

async fn metrics(State(cx): State<Ctx>) -> Response {
    let (snapshot, phase) = cx.live.latest();
    let cached = cx.cache.load().as_ref().and_then(|r| {
        let same = Arc::ptr_eq(&r.snapshot, &snapshot) && Arc::ptr_eq(&r.phase, &phase);
        (same && r.at.elapsed() < RENDER_REUSE).then(|| r.body.clone())
    });
    let body = match cached {
        Some(body) => body,
        None => {
            let body = Bytes::from(super::metrics::render(&cx.registry));
            cx.cache.store(Some(Arc::new(Rendered { snapshot, phase, at: Instant::now(), body: body.clone() })));
            body
        }
    };
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(cx): State<Ctx>) -> Response {
    if cx.live.snapshots.borrow().ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the first load from the database has not finished\n")
            .into_response()
    }
}

/// Flagger confirm-promotion gate: 200 when go, 412 otherwise (pending or no_go).
async fn gate(State(cx): State<Ctx>) -> Response {
    let v = cx.live.current().rollout.verdict;
    let status = if v.decision == Decision::Go { StatusCode::OK } else { StatusCode::PRECONDITION_FAILED };
    (status, Json(v)).into_response()
}

/// Flagger rollback webhook: 200 only for a decided `no_go` (a 2xx stops the analysis and rolls
/// back), 412 otherwise: a `no_go` that more data could still undo, `pending` and `go` never roll
/// back, nor does a gate that fails closed (stale or not-ready data is never decided).
async fn rollback(State(cx): State<Ctx>) -> Response {
    let v = cx.live.current().rollout.verdict;
    let roll_back = v.decided && v.decision == Decision::NoGo;
    let status = if roll_back { StatusCode::OK } else { StatusCode::PRECONDITION_FAILED };
    (status, Json(v)).into_response()
}

/// Argo Rollouts web metric: always 200, judge with `result.decision == "go"`.
async fn verdict(State(cx): State<Ctx>) -> Response {
    Json(cx.live.current().rollout.verdict).into_response()
}

/// The status page, with a policy that forbids loading anything from elsewhere and caching.
async fn landing(State(cx): State<Ctx>) -> Response {
    let page = super::landing::page(&cx.live.current());
    (
        [
            (header::CONTENT_SECURITY_POLICY, super::landing::CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(page),
    )
        .into_response()
}

/// docs/runbook.md as built in, as HTML, under the status page's policy.
async fn runbook() -> Response {
    (
        [
            (header::CONTENT_SECURITY_POLICY, super::landing::CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        Html(super::runbook::PAGE.as_str()),
    )
        .into_response()
}

/// The page's icon also at the path browsers try on their own (e.g. when showing /metrics).
async fn favicon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "max-age=86400")], super::landing::FAVICON_SVG)
        .into_response()
}
