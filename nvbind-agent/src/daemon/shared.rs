//! What the API's handlers (`api`, `page`, `origin`) share: the daemon's state they read,
//! shared with the capture loop, and the JSON error every one of them answers with.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use tokio::sync::{watch, Notify};

use super::{config::Config, history::History, live::Live, metrics::Metrics};
use crate::gpu;

/// How long a stream waits for the capture loop to read the kernel's newest frames before it
/// sends what it has.
const FRESH_FRAMES_WAIT: Duration = Duration::from_millis(15);

/// What the handlers share with the capture loop.
pub struct Shared {
    pub live: Arc<RwLock<Live>>,
    pub metrics: Metrics,
    pub config: RwLock<Config>,
    /// The GPUs found at start (binding selects among them).
    pub gpus: Vec<gpu::GpuInfo>,
    pub gpu_roots: gpu::Roots,
    /// Streams ask the capture loop to read the ring buffer now...
    pub drain_request: Notify,
    /// ...and wait for this counter of completed reads to move.
    pub drained: watch::Sender<u64>,
    /// The sessions this daemon wrote, for the page.
    pub history: std::sync::Mutex<History>,
}

impl Shared {
    pub(super) fn live(&self) -> std::sync::RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Names the TCP API answers to besides addresses, `localhost` and the host name.
    pub(super) fn allowed_hosts(&self) -> Vec<String> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .api
            .allowed_hosts
            .clone()
    }

    /// Asks for a fresh read of the kernel's records and waits for it (briefly).
    pub(super) async fn fresh(&self) {
        let mut drained = self.drained.subscribe();
        drained.borrow_and_update();
        self.drain_request.notify_one();
        let _ = tokio::time::timeout(FRESH_FRAMES_WAIT, drained.changed()).await;
    }
}

/// An API error: a status and a one-line message, sent as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
            status: u16,
        }
        let body = Body {
            error: self.message,
            status: self.status.as_u16(),
        };
        (self.status, Json(body)).into_response()
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;
