//! The HTTP side: /metrics, /healthz, /readyz, /gate, /verdict and the landing page.
//!
//! Handlers read snapshots from [`State`]; none of them touches the database.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::Registry;

use crate::config::HttpConfig;
use crate::rollout::Decision;
use crate::state::State;
use crate::web::{require_auth, AuthLayer};

/// Exposition content type of the text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Ctx {
    state: State,
    registry: Arc<Registry>,
    cache: Arc<Mutex<Option<Rendered>>>,
}

/// The last rendering of /metrics. It is served again while the state's generation is unchanged
/// and it is younger than [`RENDER_REUSE`]: data metrics change only when the source publishes
/// (every poll), and process metrics may be a second old. Scrapes stay cheap under load.
struct Rendered {
    generation: u64,
    at: Instant,
    body: Bytes,
}

const RENDER_REUSE: Duration = Duration::from_secs(1);

/// The router, without a listener and without access control (tests drive it with `oneshot`).
pub fn router(state: State) -> Router {
    let registry = Arc::new(crate::metrics::registry(&state).expect("metric names are valid and unique"));
    Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/gate", get(gate).post(gate))
        .route("/verdict", get(verdict))
        .with_state(Ctx { state, registry, cache: Arc::new(Mutex::new(None)) })
}

/// The router with the web configuration applied: basic auth (except on the open paths) and
/// extra response headers.
pub fn router_with(state: State, http: &HttpConfig) -> Router {
    let mut router = router(state);
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

async fn metrics(AxumState(cx): AxumState<Ctx>) -> Response {
    let generation = cx.state.generation();
    let cached = cx
        .cache
        .lock()
        .expect("render cache lock")
        .as_ref()
        .and_then(|r| (r.generation == generation && r.at.elapsed() < RENDER_REUSE).then(|| r.body.clone()));
    let body = match cached {
        Some(body) => body,
        None => {
            let body = Bytes::from(crate::metrics::render(&cx.registry));
            *cx.cache.lock().expect("render cache lock") =
                Some(Rendered { generation, at: Instant::now(), body: body.clone() });
            body
        }
    };
    ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(AxumState(cx): AxumState<Ctx>) -> Response {
    if cx.state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: the first load from the database has not finished\n")
            .into_response()
    }
}

/// Flagger confirm-promotion gate: 200 when go, 412 otherwise (pending or no_go).
async fn gate(AxumState(cx): AxumState<Ctx>) -> Response {
    let v = cx.state.rollout().verdict;
    let status = if v.decision == Decision::Go { StatusCode::OK } else { StatusCode::PRECONDITION_FAILED };
    (status, Json(v)).into_response()
}

/// Argo Rollouts web metric: always 200, judge with `result.decision == "go"`.
async fn verdict(AxumState(cx): AxumState<Ctx>) -> Response {
    Json(cx.state.rollout().verdict).into_response()
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

async fn landing(AxumState(cx): AxumState<Ctx>) -> Html<String> {
    let r = cx.state.rollout();
    let h = cx.state.health();
    let cfg = cx.state.rollout_config();
    let rows: String = r
        .verdict
        .criteria
        .iter()
        .map(|c| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
                c.name,
                c.observed.map_or("n/a".to_string(), |v| format!("{v:.6}")),
                escape_html(c.comparison),
                c.threshold,
                if c.pass { "pass" } else { "<b>FAIL</b>" }
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>rollout-exporter</title></head><body>\
         <h1>rollout-exporter {version}</h1>\
         <p>Environment <b>{env}</b>, phase <b>{phase}</b> since {since}, decision <b>{decision}</b> \
         over the {window} soak. Database up: {up}. Ready: {ready}.</p>\
         <table border=\"1\" cellpadding=\"4\"><tr><th>criterion</th><th>observed</th><th>threshold</th><th>result</th></tr>{rows}</table>\
         <ul><li><a href=\"metrics\">metrics</a></li><li><a href=\"gate\">gate</a> (200 go, 412 otherwise)</li>\
         <li><a href=\"verdict\">verdict</a> (JSON, always 200)</li><li><a href=\"healthz\">healthz</a></li>\
         <li><a href=\"readyz\">readyz</a></li></ul></body></html>",
        version = env!("CARGO_PKG_VERSION"),
        env = escape_html(&cfg.environment),
        phase = r.phase.state.phase.label(),
        since = crate::rollout::rfc3339(r.phase.started_at),
        decision = r.verdict.decision.label(),
        window = escape_html(&cfg.soak.label),
        up = h.database_up,
        ready = cx.state.is_ready(),
    ))
}
