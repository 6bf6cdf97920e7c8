//! The API's listeners: the TCP API and the admin Unix socket.

use std::{future::IntoFuture, os::unix::fs::PermissionsExt, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{sync::watch, task::JoinSet};

use super::{
    api,
    config::Config,
    guard::{GuardedListener, Limits, RequestRates},
    shared::Shared,
};

/// Takes the lock that says one daemon serves `socket` (`SOCKET.lock` beside it, flock'd: the
/// kernel releases it when the daemon dies, however it dies). None when there is no socket.
pub(super) fn lock_socket(socket: &std::path::Path) -> Result<Option<std::fs::File>> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    if socket.as_os_str().is_empty() {
        return Ok(None);
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut lock_path = socket.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = std::path::PathBuf::from(lock_path);
    let fd = rustix::fs::open(
        &lock_path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(std::io::Error::from)
    .with_context(|| {
        format!(
            "cannot open {}: set api.socket in the config or --socket",
            lock_path.display()
        )
    })?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(std::fs::File::from(fd))),
        Err(rustix::io::Errno::WOULDBLOCK) => anyhow::bail!(
            "another nvbind daemon serves {} (it holds {}): stop it first, or give this one \
             another --socket",
            socket.display(),
            lock_path.display()
        ),
        Err(e) => Err(std::io::Error::from(e))
            .with_context(|| format!("cannot lock {}", lock_path.display())),
    }
}

/// Binds the TCP API and the Unix socket (errors here are fatal: a daemon that cannot serve
/// its API must say so at start), and serves them until `stopped` turns true.
pub(super) async fn start_servers(
    config: &Config,
    shared: &Arc<Shared>,
    stopped: watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()>> {
    let mut tasks = JoinSet::new();
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|&s| s).await;
    };
    if !config.api.listen.is_empty() {
        let addr = config.listen_addr().map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr}: set api.listen in the config or --listen")
        })?;
        if !addr.ip().is_loopback() {
            log::warn!(
                "the API listens on {addr}, which is not a loopback address: anyone who can \
                 reach it sees what runs on this host"
            );
        }
        log::info!("API on http://{addr}");
        let app = api::read_routes(Arc::clone(shared));
        let listener = GuardedListener::new(listener, Limits::default());
        tasks.spawn(serve_tcp(listener, app, stopped.clone()));
    }
    let socket = config.api.socket.clone();
    if !socket.as_os_str().is_empty() {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // A socket left by an agent that did not stop cleanly (no live daemon holds the lock,
        // see `lock_socket`); anything else is not ours.
        if let Ok(meta) = std::fs::symlink_metadata(&socket) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(&socket);
            } else {
                anyhow::bail!(
                    "{} exists and is not a socket: remove it or set api.socket",
                    socket.display()
                );
            }
        }
        // Created owner-only from the start (umask), so there is no moment in which another
        // user could connect; nothing else creates files while the daemon starts.
        // SAFETY: umask has no preconditions; the previous mask is restored right after.
        let previous = unsafe { libc::umask(0o177) };
        let bound = tokio::net::UnixListener::bind(&socket);
        // SAFETY: as above.
        unsafe { libc::umask(previous) };
        let listener = bound.with_context(|| {
            format!(
                "cannot listen on {}: set api.socket in the config or --socket",
                socket.display()
            )
        })?;
        // Root only: binding changes what containers may open.
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {} to root", socket.display()))?;
        log::info!("admin API (binding) on unix:{}", socket.display());
        let app = api::admin_routes(Arc::clone(shared));
        tasks.spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(until_stopped(stopped))
                .into_future(),
        );
    }
    Ok(async move {
        while let Some(result) = tasks.join_next().await {
            if let Ok(Err(e)) = result {
                log::warn!("API server: {e}");
            }
        }
    })
}

/// How long open requests on the TCP API get to finish once the daemon stops.
const TCP_DRAIN: Duration = Duration::from_secs(5);

/// Serves the TCP API until `stopped` turns true: each connection within its user's limits
/// ([`GuardedListener`]), each request head within `header_timeout` of its first byte (hyper's
/// own timer: `axum::serve` has none), and each non-root user's requests at most at its rate
/// ([`RequestRates`]: a refused one gets a 429 with a JSON error).
async fn serve_tcp(
    mut listener: GuardedListener,
    app: axum::Router,
    mut stopped: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::serve::Listener;
    let limits = listener.limits();
    let rates = Arc::new(RequestRates::new(limits));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut connections = JoinSet::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|&s| s) => break,
        };
        // Finished connections' tasks, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let uid = stream.uid();
        let (app, rates) = (app.clone(), Arc::clone(&rates));
        let service = hyper::service::service_fn(move |request| {
            let (app, rates) = (app.clone(), Arc::clone(&rates));
            async move {
                match rates.admit(uid, std::time::Instant::now()) {
                    Ok(()) => tower::ServiceExt::oneshot(app, request).await,
                    Err(why) => Ok(api::too_many_requests(why)),
                }
            }
        });
        let connection = http
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stopped.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|&s| s) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    let _ = tokio::time::timeout(TCP_DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}
