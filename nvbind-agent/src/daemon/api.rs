//! The local API (axum). The TCP listener (127.0.0.1:9090 by default) serves reads only: GPU
//! status, tracked games, containers, `/metrics` and the WebSocket streams. Requests that change
//! state (GPU binding) are served only on the root-only Unix socket, which also serves the reads.
//! Every error is JSON: `{"error": "..."}` with a 4xx or 5xx status.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        ws::{Message, WebSocket, WebSocketUpgrade},
        Extension, Path as UrlPath, Query, State,
    },
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::{Deserialize, Serialize};

use super::{
    live::{self, Audience, ProcessView},
    shared::{ApiError, ApiResult, Shared},
};
use crate::{binding, identity::container_id};

/// Bounds of `?interval_ms=` on the WebSocket streams.
const MIN_INTERVAL_MS: u64 = 10;
const MAX_INTERVAL_MS: u64 = 60_000;
const DEFAULT_INTERVAL_MS: u64 = 1_000;

/// The read-only routes, served on both listeners.
fn reads() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/gpu/status", get(gpu_status))
        .route("/api/processes", get(processes))
        .route("/api/processes/{pid}", get(process))
        .route("/api/containers/{id}/gpu", get(container_gpu))
        .route("/metrics", get(metrics))
        .route("/metrics/{target}", get(stream))
        .merge(super::page::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The TCP API: reads only; binding requests are told where to go.
pub fn read_routes(shared: Arc<Shared>) -> Router {
    reads()
        .route("/api/bindings", axum::routing::any(binding_not_here))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            super::origin::same_host_only,
        ))
        .with_state(shared)
        .layer(Extension(Audience::AnyLocalUser))
}

/// Everything, binding included: served only on the root-only Unix socket.
pub fn admin_routes(shared: Arc<Shared>) -> Router {
    reads()
        .route(
            "/api/bindings",
            get(list_bindings).post(bind).delete(unbind),
        )
        .with_state(shared)
        .layer(Extension(Audience::Root))
}

/// The answer to a request over its user's rate (see `guard::RequestRates`).
pub fn too_many_requests(why: String) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("{why}: slow down, or ask over the root-only Unix socket"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "no such endpoint: see docs/daemon.md for /api/gpu/status, /api/processes, \
         /api/processes/{pid}, /api/containers/{id}/gpu, /metrics and /metrics/{pid-or-container}",
    )
}

async fn binding_not_here() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "binding is not served on the TCP API: use the agent's root-only Unix socket \
         (api.socket, /run/nvbind/agent.sock by default)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed here (the TCP API is read-only: binding is on the agent's Unix socket)",
    )
}

#[derive(Serialize)]
struct GpuStatusBody {
    gpus: Vec<super::live::GpuView>,
}

async fn gpu_status(State(shared): State<Arc<Shared>>) -> Json<GpuStatusBody> {
    Json(GpuStatusBody {
        gpus: shared.live().gpu_views(),
    })
}

#[derive(Serialize)]
struct ProcessesBody {
    window_s: f64,
    processes: Vec<ProcessView>,
}

/// `?frames=N`: the newest N frames and the recent stutters with each process (a chart's data).
#[derive(Debug, Deserialize)]
struct ViewQuery {
    frames: Option<usize>,
}

impl ViewQuery {
    fn parse(query: Result<Query<ViewQuery>, QueryRejection>) -> ApiResult<usize> {
        let Query(query) = query.map_err(|e| {
            ApiError::bad_request(format!(
                "{}: frames is a whole number of frames",
                e.body_text()
            ))
        })?;
        frames_asked(query.frames)
    }
}

/// The most frames `/api/processes?frames=N` carries over all its processes together.
const MAX_LIST_FRAMES: usize = 20_000;

/// `?frames=N` checked: how many recent frames a view carries (0 when not asked).
fn frames_asked(frames: Option<usize>) -> ApiResult<usize> {
    let frames = frames.unwrap_or(0);
    if frames > live::MAX_VIEW_FRAMES {
        return Err(ApiError::bad_request(format!(
            "frames must be at most {}, not {frames}",
            live::MAX_VIEW_FRAMES
        )));
    }
    Ok(frames)
}

async fn processes(
    State(shared): State<Arc<Shared>>,
    Extension(audience): Extension<Audience>,
    query: Result<Query<ViewQuery>, QueryRejection>,
) -> ApiResult<Json<ProcessesBody>> {
    let frames = ViewQuery::parse(query)?;
    let live = shared.live();
    // The frames of all the processes together are bounded, however many there are.
    let each = frames.min(MAX_LIST_FRAMES / live.processes.len().max(1));
    let frames = live::FramesAsked {
        newest: each,
        after_ns: 0,
    };
    Ok(Json(ProcessesBody {
        window_s: live.window.as_secs_f64(),
        processes: live
            .processes
            .values()
            .map(|p| live::process_view(p, live.window, &live.gpus, audience, frames))
            .collect(),
    }))
}

fn parse_pid(text: &str) -> ApiResult<u32> {
    text.parse::<u32>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| ApiError::bad_request(format!("{text:?} is not a process id")))
}

fn process_view(
    shared: &Shared,
    pid: u32,
    audience: Audience,
    frames: live::FramesAsked,
) -> ApiResult<ProcessView> {
    let live = shared.live();
    live.processes
        .get(&pid)
        .map(|p| live::process_view(p, live.window, &live.gpus, audience, frames))
        .ok_or_else(|| {
            let why = if crate::target::is_alive(pid) {
                "runs but has not presented a frame (or is excluded by the config)"
            } else {
                "does not exist"
            };
            ApiError::not_found(format!("pid {pid} is not tracked: it {why}"))
        })
}

async fn process(
    State(shared): State<Arc<Shared>>,
    Extension(audience): Extension<Audience>,
    pid: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<ViewQuery>, QueryRejection>,
) -> ApiResult<Json<ProcessView>> {
    let UrlPath(pid) = pid.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let frames = live::FramesAsked {
        newest: ViewQuery::parse(query)?,
        after_ns: 0,
    };
    Ok(Json(process_view(
        &shared,
        parse_pid(&pid)?,
        audience,
        frames,
    )?))
}

/// A container's GPUs and games.
#[derive(Debug, Serialize)]
struct ContainerBody {
    /// What was asked for.
    id: String,
    /// The cgroup found (v2 path, as in /proc/PID/cgroup).
    cgroup: String,
    container_id: Option<String>,
    /// Tracked games inside it.
    processes: Vec<ProcessView>,
    /// GPUs: the ones its games render on, and the ones bound to it.
    gpus: Vec<super::live::GpuView>,
    /// nvbind's binding of the cgroup, if any.
    binding: Option<binding::BindingStatus>,
}

/// Finds a container by cgroup path (starting with `/`) or by container id (full or a prefix of
/// at least 4 characters, as Docker accepts), among tracked games and then in the cgroup tree.
fn find_container(shared: &Shared, id: &str) -> ApiResult<(String, Option<String>)> {
    if id.starts_with('/') {
        // The answer says whether a directory exists: keep it to the cgroup tree.
        if id.split('/').any(|part| part == ".." || part == ".") {
            return Err(ApiError::bad_request(format!(
                "{id:?}: a cgroup path may not contain . or .. components"
            )));
        }
        return Ok((id.trim_end_matches('/').to_string(), container_id(id)));
    }
    if crate::identity::container_id_prefix(id).is_err() {
        return Err(ApiError::bad_request(format!(
            "{id:?} is neither a cgroup path (starting with /) nor a container id (hexadecimal, \
             4 to 64 digits)"
        )));
    }
    let id = id.to_ascii_lowercase();
    let id = id.as_str();
    let mut found: Vec<(String, String)> = shared
        .live()
        .processes
        .values()
        .filter_map(|p| {
            let cid = p.container_id.clone()?;
            cid.starts_with(id).then(|| (p.cgroup.clone(), cid))
        })
        .collect();
    if found.is_empty() {
        found = cgroup_tree_containers(id)?;
    }
    let mut found: Vec<(String, String)> = found
        .into_iter()
        .map(|(cgroup, cid)| (container_cgroup(&cgroup, &cid), cid))
        .collect();
    found.sort();
    found.dedup();
    let ids: std::collections::BTreeSet<&str> = found.iter().map(|(_, c)| c.as_str()).collect();
    match (ids.len(), found.len()) {
        (0, _) => Err(ApiError::not_found(format!(
            "no container with id {id}: give the id `docker ps` or `podman ps` shows, or the \
             container's cgroup path"
        ))),
        (1, 1) => {
            let (cgroup, cid) = found.remove(0);
            Ok((cgroup, Some(cid)))
        }
        // Another directory named after the same id (a user can make one in a subtree
        // delegated to them) must not be taken for the container.
        (1, _) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "container {id} has {} cgroups ({}): ask by cgroup path",
                found.len(),
                found
                    .iter()
                    .map(|(p, _)| crate::identity::printable_within(p, 200))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "container id {id} is ambiguous: it starts {}",
                ids.iter().map(|c| &c[..12]).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The cgroup named by the container id itself (a game's own cgroup may be a child of it).
fn container_cgroup(cgroup: &str, cid: &str) -> String {
    let mut path = String::new();
    for part in cgroup.split('/').filter(|p| !p.is_empty()) {
        path.push('/');
        path.push_str(part);
        if part.contains(cid) {
            break;
        }
    }
    path
}

/// Containers in the cgroup v2 tree whose id starts with `id`: (cgroup path, container id).
fn cgroup_tree_containers(id: &str) -> ApiResult<Vec<(String, String)>> {
    let found = binding::containers::search(id)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(found
        .into_iter()
        .filter(|f| f.hierarchy == binding::Hierarchy::V2)
        .map(|f| (f.rel, f.id))
        .collect())
}

async fn container_gpu(
    State(shared): State<Arc<Shared>>,
    Extension(audience): Extension<Audience>,
    id: Result<UrlPath<String>, PathRejection>,
) -> ApiResult<Json<ContainerBody>> {
    let UrlPath(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(container_body(shared, id, audience).await?))
}

/// Finds a container and makes its view, off the async workers: the search may walk the whole
/// cgroup tree (thousands of directories on a busy host) and the binding is read from bpffs, and
/// the workers also serve every other client and the frame streams.
async fn container_body(
    shared: Arc<Shared>,
    id: String,
    audience: Audience,
) -> ApiResult<ContainerBody> {
    tokio::task::spawn_blocking(move || {
        let (cgroup, cid) = find_container(&shared, &id)?;
        container_body_of(&shared, &id, cgroup, cid, audience)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the container lookup failed: {e}"),
        )
    })?
}

/// The view of a container already found (streams find it once, not at every message).
fn container_body_of(
    shared: &Shared,
    id: &str,
    cgroup: String,
    cid: Option<String>,
    audience: Audience,
) -> ApiResult<ContainerBody> {
    let bpffs = shared.config().api.bpffs;
    let binding = binding::cgroup2_mount()
        .map(|root| root.join(cgroup.trim_start_matches('/')))
        .and_then(|path| binding::binding_of(&path, &bpffs).ok().flatten());
    let live = shared.live();
    let inside = |p: &str| {
        p == cgroup
            || p.strip_prefix(cgroup.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let processes: Vec<ProcessView> = live
        .processes
        .values()
        .filter(|p| inside(&p.cgroup))
        .map(|p| live::process_view(p, live.window, &live.gpus, audience, Default::default()))
        .collect();
    if processes.is_empty() && binding.is_none() && id.starts_with('/') {
        let exists = binding::cgroup2_mount()
            .is_some_and(|root| root.join(cgroup.trim_start_matches('/')).is_dir());
        if !exists {
            return Err(ApiError::not_found(format!(
                "no cgroup {cgroup} in the cgroup v2 hierarchy"
            )));
        }
    }
    let mut wanted: Vec<String> = processes
        .iter()
        .filter_map(|p| p.gpu_pci_address.clone())
        .collect();
    if let Some(b) = &binding {
        wanted.extend(b.binding.gpus.iter().map(|g| g.pci_address.clone()));
    }
    let gpus = live
        .gpus
        .iter()
        .filter(|g| wanted.contains(&g.info.pci_address))
        .map(|g| g.view())
        .collect();
    Ok(ContainerBody {
        id: id.to_string(),
        cgroup,
        container_id: cid,
        processes,
        gpus,
        binding,
    })
}

/// `GET /metrics`: OpenMetrics when the client asks for it (Prometheus does), else the classic
/// Prometheus text format.
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (content_type, text) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.encode_openmetrics(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.encode_prometheus(),
        )
    };
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
        .into_response(),
    }
}

/// What a stream follows.
#[derive(Debug, Clone)]
enum StreamTarget {
    Process(u32),
    Container {
        id: String,
        cgroup: String,
        container_id: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    interval_ms: Option<u64>,
    /// Each message of a process's stream carries its newest N frames and recent stutters.
    frames: Option<usize>,
}

/// `GET /metrics/{pid-or-container-id}?interval_ms=N&frames=M`: a WebSocket of JSON messages,
/// one per interval: the process view (as `/api/processes/{pid}?frames=M`) or the container
/// view.
async fn stream(
    State(shared): State<Arc<Shared>>,
    Extension(audience): Extension<Audience>,
    target: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let UrlPath(target) = target.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(format!(
            "{}: interval_ms and frames are whole numbers",
            e.body_text()
        ))
    })?;
    let frames = frames_asked(query.frames)?;
    let interval_ms = query.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
        return Err(ApiError::bad_request(format!(
            "interval_ms must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS}, not {interval_ms}"
        )));
    }
    // Resolve the target before upgrading, so a bad one is a plain 4xx.
    let target = if target.bytes().all(|b| b.is_ascii_digit()) && target.len() < 10 {
        let pid = parse_pid(&target)?;
        process_view(&shared, pid, audience, Default::default())?;
        StreamTarget::Process(pid)
    } else {
        let body = container_body(Arc::clone(&shared), target.clone(), audience).await?;
        StreamTarget::Container {
            id: body.id,
            cgroup: body.cgroup,
            container_id: body.container_id,
        }
    };
    let upgrade = upgrade.map_err(|e| {
        ApiError::bad_request(format!(
            "{}: /metrics/{{target}} is a WebSocket stream; connect with a WebSocket client \
             (plain /metrics is the Prometheus exposition)",
            e.body_text()
        ))
    })?;
    let interval = Duration::from_millis(interval_ms);
    // A client has nothing to send but pings and a close: a message is never buffered beyond
    // a few KiB (unbounded, 30 clients each sending an unfinished 60 MiB message took the
    // daemon to 2 GB).
    Ok(upgrade
        .max_message_size(WS_MAX_INCOMING_BYTES)
        .max_frame_size(WS_MAX_INCOMING_BYTES)
        .on_upgrade(move |socket| run_stream(socket, shared, target, interval, audience, frames)))
}

/// The largest message or frame a WebSocket client may send (a close with its reason, a ping).
const WS_MAX_INCOMING_BYTES: usize = 4096;

#[derive(Serialize)]
struct StreamMessage<T: Serialize> {
    seq: u64,
    /// Wall-clock time the message was made, seconds since the Unix epoch.
    sent_unix_s: f64,
    /// CLOCK_MONOTONIC nanoseconds the message was made (compare with `last_frame_ns`).
    sent_ns: u64,
    /// False once the process exited (or the container has no games left and no binding):
    /// the last message.
    live: bool,
    #[serde(flatten)]
    body: Option<T>,
}

async fn run_stream(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    target: StreamTarget,
    interval: Duration,
    audience: Audience,
    frames: usize,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    // Each message carries only the frames presented since the previous one's newest.
    let mut frames = live::FramesAsked {
        newest: frames,
        after_ns: 0,
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            incoming = socket.recv() => match incoming {
                // Clients may ping or send anything; only a close (or an error) ends the stream.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        }
        shared.fresh().await;
        let (text, live) = match &target {
            StreamTarget::Process(pid) => {
                let view = process_view(&shared, *pid, audience, frames).ok();
                if let Some(newest) = view.as_ref().and_then(|v| v.recent_frames.as_ref()?.last()) {
                    frames.after_ns = newest.ts_ns;
                }
                let live = view.is_some();
                (message(seq, live, view), live)
            }
            StreamTarget::Container {
                id,
                cgroup,
                container_id,
            } => {
                // Off the async workers, as every container lookup (it reads bpffs).
                let (shared, id, cgroup, container_id) = (
                    Arc::clone(&shared),
                    id.clone(),
                    cgroup.clone(),
                    container_id.clone(),
                );
                let view = tokio::task::spawn_blocking(move || {
                    container_body_of(&shared, &id, cgroup, container_id, audience).ok()
                })
                .await
                .ok()
                .flatten();
                let live = view.is_some();
                (message(seq, live, view), live)
            }
        };
        seq += 1;
        let Ok(text) = text else { return };
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
        if !live {
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    }
}

fn message<T: Serialize>(seq: u64, live: bool, body: Option<T>) -> serde_json::Result<String> {
    serde_json::to_string(&StreamMessage {
        seq,
        sent_unix_s: crate::clock::unix_time_at(crate::clock::monotonic_ns()),
        sent_ns: crate::clock::monotonic_ns(),
        live,
        body,
    })
}

// ---- binding, on the Unix socket only ----

fn bind_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
}

async fn list_bindings(
    State(shared): State<Arc<Shared>>,
) -> ApiResult<Json<Vec<binding::BindingStatus>>> {
    let bpffs = shared.config().api.bpffs;
    let listed = tokio::task::spawn_blocking(move || binding::list(&bpffs))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(bind_error)?;
    Ok(Json(listed))
}

/// `POST /api/bindings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindRequest {
    cgroup: Option<PathBuf>,
    pid: Option<u32>,
    /// A container id (or its first 4 or more digits).
    container: Option<String>,
    hierarchy: Option<binding::Hierarchy>,
    gpus: Vec<String>,
    #[serde(default)]
    dry_run: bool,
    /// Bind even if the container was started with other GPUs.
    #[serde(default)]
    force: bool,
}

async fn bind(
    State(shared): State<Arc<Shared>>,
    request: Result<Json<BindRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(request) = request.map_err(|e| {
        ApiError::bad_request(format!(
            "{}: send {{\"cgroup\": PATH, \"pid\": N or \"container\": ID, \"gpus\": \
             [SELECTOR, ...]}}",
            e.body_text()
        ))
    })?;
    if request.gpus.is_empty() {
        return Err(ApiError::bad_request(
            "gpus is empty: name at least one GPU (index, UUID, PCI address or \"all\")",
        ));
    }
    let bpffs = shared.config().api.bpffs;
    let worker = Arc::clone(&shared);
    let result = tokio::task::spawn_blocking(move || -> Result<Response, ApiError> {
        let target = match (&request.cgroup, request.pid, &request.container) {
            (Some(path), None, None) => binding::Target::Cgroup(path.clone()),
            (None, Some(pid), None) => binding::Target::Pid(pid),
            (None, None, Some(id)) => binding::Target::Container(id.clone()),
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of cgroup (a path), pid and container (an id)",
                ))
            }
        };
        let target = target.resolve(request.hierarchy).map_err(bind_error)?;
        let gpus = binding::select_gpus(&worker.gpus, &request.gpus).map_err(bind_error)?;
        if !request.force {
            binding::check_keeps_given_gpus(&target, &worker.gpus, &gpus).map_err(bind_error)?;
        }
        let plan = binding::plan(&target.cgroup, &gpus, &worker.gpu_roots.dev);
        if request.dry_run {
            return Ok(Json(plan).into_response());
        }
        let outcome = binding::bind(&plan, &target.cgroup, &bpffs).map_err(bind_error)?;
        Ok(Json(outcome).into_response())
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    result
}

async fn unbind(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Json<Vec<binding::Binding>>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let target = match (
        query.get("cgroup"),
        query.get("container"),
        query.get("all").map(String::as_str),
    ) {
        (Some(path), None, None) => binding::UnbindTarget::Cgroup(PathBuf::from(path)),
        (None, Some(id), None) => binding::UnbindTarget::Container(
            crate::identity::container_id_prefix(id).map_err(ApiError::bad_request)?,
        ),
        (None, None, Some("true")) => binding::UnbindTarget::All,
        _ => {
            return Err(ApiError::bad_request(
                "give ?cgroup=PATH, ?container=ID or ?all=true",
            ))
        }
    };
    let bpffs = shared.config().api.bpffs;
    let removed = tokio::task::spawn_blocking(move || binding::unbind(&target, &bpffs))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(bind_error)?;
    Ok(Json(removed))
}
