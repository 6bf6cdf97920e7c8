//! The dashboard page at `/`: static files compiled into the binary (no CDN, nothing fetched),
//! the sessions this daemon wrote (`/api/sessions`) and their charts. The page draws from the
//! API and the WebSocket streams like any client; it may only talk to its own origin (its
//! Content-Security-Policy), and `origin::same_host_only` keeps other sites' pages out.

use std::sync::Arc;

use axum::{
    extract::{rejection::PathRejection, Path as UrlPath, State},
    http::{header, HeaderName, HeaderValue},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;

use super::{
    history::SessionSummary,
    shared::{ApiError, Shared},
};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// The page loads its own script, style, data and charts, and nothing else; no other page may
/// frame it.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                           img-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                           base-uri 'none'; form-action 'none'";
/// A chart is an image: nothing in it runs, even when it is opened on its own.
const CHART_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/page/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/page/style.css",
            get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }),
        )
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{id}/chart.svg", get(chart))
}

fn with_policy(
    body: impl IntoResponse,
    content_type: &'static str,
    policy: &'static str,
) -> Response {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(policy),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    with_policy(body, content_type, PAGE_POLICY)
}

#[derive(Serialize)]
struct SessionsBody {
    /// Newest first.
    sessions: Vec<SessionSummary>,
}

async fn sessions(State(shared): State<Arc<Shared>>) -> Json<SessionsBody> {
    Json(SessionsBody {
        sessions: shared.history().summaries(),
    })
}

async fn chart(
    State(shared): State<Arc<Shared>>,
    id: Result<UrlPath<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let UrlPath(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a session number")))?;
    let chart = shared.history().chart(id).ok_or_else(|| {
        ApiError::not_found(format!(
            "session {id} has no chart here: it is not among the newest {} sessions, or its \
             chart was dropped to bound the agent's memory (`nvbind-agent report --svg` draws \
             it from the report)",
            super::history::MAX_SESSIONS
        ))
    })?;
    Ok(with_policy(chart, "image/svg+xml", CHART_POLICY))
}
