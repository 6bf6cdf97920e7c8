//! `nvbind-agent top`: a live terminal monitor of the games the daemon tracks. It reads the
//! daemon's API (as any local user may), or, with `--standalone` as root, runs the capture in
//! this process and reads that. A reader thread fetches the games and GPUs at each interval and
//! hands them over; the terminal thread draws and answers keys, so a slow or gone daemon never
//! freezes the keys.

mod app;
mod client;
mod model;
mod ui;

use std::{
    io::IsTerminal,
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use crossterm::event::{self, Event};

pub use client::Endpoint;

use self::{
    app::App,
    client::Client,
    model::{Gpus, Processes, Snapshot},
};
use crate::daemon::DaemonOptions;

/// Frames of each game asked for: more than the widest sparkline.
const FRAMES_ASKED: usize = 512;
/// How often a lost daemon is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// How long a key waits at most before the screen is redrawn.
const KEY_POLL: Duration = Duration::from_millis(100);

/// What `top` was asked for.
pub struct TopOptions {
    /// The daemon's API; None with `standalone`.
    pub endpoint: Endpoint,
    /// Run the capture in this process (`daemon` is its options).
    pub standalone: Option<DaemonOptions>,
    pub interval: Duration,
}

pub fn run(options: TopOptions) -> Result<u8> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "top draws on a terminal and stdout is not one: run it in a terminal (for numbers \
             in a script, read the API: curl http://127.0.0.1:9090/api/processes)"
        );
    }
    match options.standalone {
        Some(daemon) => run_standalone(daemon, options.interval),
        None => {
            let source = options.endpoint.to_string();
            // SIGTERM and SIGHUP (a closed SSH session) end top as `q` does, so the terminal
            // is put back. (With --standalone the capture's own handlers take them, and top
            // ends with the capture.)
            let stop = termination::install();
            monitor(
                Client::new(options.endpoint),
                source,
                false,
                options.interval,
                stop,
            )
        }
    }
}

/// A flag raised by SIGTERM or SIGHUP.
mod termination {
    use std::sync::atomic::{AtomicBool, Ordering};

    static RAISED: AtomicBool = AtomicBool::new(false);

    extern "C" fn raise(_signal: libc::c_int) {
        // Async-signal-safe: one atomic store.
        RAISED.store(true, Ordering::Relaxed);
    }

    /// Catches SIGTERM and SIGHUP from now on; the returned check says whether one came.
    pub fn install() -> impl Fn() -> bool {
        for signal in [libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: `raise` only stores to an atomic, which is async-signal-safe.
            unsafe { libc::signal(signal, raise as *const () as libc::sighandler_t) };
        }
        || RAISED.load(Ordering::Relaxed)
    }
}

/// Runs the daemon on a thread of this process, with the API on a private Unix socket only,
/// and monitors it; stops it (writing its sessions) on quit.
fn run_standalone(mut daemon: DaemonOptions, interval: Duration) -> Result<u8> {
    if !crate::probes::is_root() {
        anyhow::bail!(
            "--standalone loads the eBPF programs and needs root: run `sudo nvbind-agent top \
             --standalone`, or start the daemon and run `nvbind-agent top`"
        );
    }
    let socket = PathBuf::from(format!("/run/nvbind/top-{}.sock", std::process::id()));
    daemon.overrides.listen = Some(String::new());
    daemon.overrides.socket = Some(socket.clone());
    // The daemon's log would draw over the screen: it goes to a file, named at the end.
    let log_path = PathBuf::from(format!("/run/nvbind/top-{}.log", std::process::id()));
    let stderr = redirect_stderr(&log_path)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let capture = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || crate::daemon::run_embedded(daemon, stopped))
        .context("cannot start the capture thread")?;
    // Until the socket answers (the probes load first), or the daemon failed to start.
    let started = Instant::now();
    while !socket.exists() && !capture.is_finished() && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcome = if capture.is_finished() {
        Err(anyhow::anyhow!("the capture did not start"))
    } else {
        // A SIGTERM or SIGINT stops the capture (it writes its sessions): top ends with it.
        monitor(
            Client::new(Endpoint::Unix(socket)),
            "in-process capture".into(),
            true,
            interval,
            || capture.is_finished(),
        )
    };
    let _ = stop.send(true);
    let capture_result = capture.join();
    restore_stderr(stderr);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_file(&log_path);
    // The capture's own failure explains a failed start better than "did not start".
    match capture_result {
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!("the capture thread panicked")),
        Ok(Ok(code)) => {
            let warnings: Vec<&str> = log
                .lines()
                .filter(|l| l.starts_with("[WARN") || l.starts_with("[ERROR"))
                .collect();
            for line in warnings.iter().take(20) {
                eprintln!("{line}");
            }
            outcome.map(|top| top.max(code))
        }
    }
}

/// Points fd 2 at `path` (created 0600, never through a symlink); returns the old stderr to
/// put back.
fn redirect_stderr(path: &std::path::Path) -> Result<std::os::fd::OwnedFd> {
    use std::os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::OpenOptionsExt,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: duplicating fd 2 (always open) to a new descriptor this function then owns.
    let saved = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if saved < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot keep stderr");
    }
    // SAFETY: `saved` was just created and nothing else owns it.
    let saved = unsafe { std::os::fd::OwnedFd::from_raw_fd(saved) };
    // SAFETY: dup2 onto fd 2 replaces what stderr writes to; both descriptors are open.
    if unsafe { libc::dup2(log.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot redirect stderr");
    }
    Ok(saved)
}

fn restore_stderr(saved: std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: as in redirect_stderr.
    unsafe { libc::dup2(saved.as_raw_fd(), libc::STDERR_FILENO) };
}

/// Draws until the user quits (or `ended` says the source is gone for good). The terminal is
/// put back however this ends.
fn monitor(
    client: Client,
    source: String,
    standalone: bool,
    interval: Duration,
    ended: impl Fn() -> bool,
) -> Result<u8> {
    let updates = start_reader(client, interval)?;
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let mut app = App::new(source, standalone);
    let outcome = (|| -> Result<()> {
        loop {
            while let Ok(update) = updates.try_recv() {
                app.on_update(update);
            }
            terminal
                .draw(|frame| ui::draw(frame, &app))
                .context("cannot draw on the terminal")?;
            if event::poll(KEY_POLL).context("cannot read the terminal")? {
                // A resize redraws at the next turn, at the new size.
                if let Event::Key(key) = event::read().context("cannot read the terminal")? {
                    app.on_key(key);
                }
            }
            if app.quit || ended() {
                return Ok(());
            }
        }
    })();
    ratatui::try_restore().context("cannot restore the terminal")?;
    outcome.map(|()| 0)
}

/// The reader thread: fetches a snapshot every `interval` (every RETRY_INTERVAL while the
/// daemon cannot be read) until the receiver is gone.
fn start_reader(
    client: Client,
    interval: Duration,
) -> Result<mpsc::Receiver<Result<Snapshot, (String, bool)>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("top-reader".into())
        .spawn(move || loop {
            let update = runtime.block_on(fetch(&client));
            let wait = if update.is_ok() {
                interval
            } else {
                RETRY_INTERVAL
            };
            if tx.send(update).is_err() {
                return;
            }
            std::thread::sleep(wait);
        })
        .context("cannot start the reader thread")?;
    Ok(rx)
}

async fn fetch(client: &Client) -> Result<Snapshot, (String, bool)> {
    let failed = |e: client::ClientError| (e.to_string(), e.is_unreachable());
    let processes: Processes = client
        .get(&format!("/api/processes?frames={FRAMES_ASKED}"))
        .await
        .map_err(failed)?;
    let gpus: Gpus = client.get("/api/gpu/status").await.map_err(failed)?;
    Ok(Snapshot {
        processes: processes.processes,
        gpus: gpus.gpus,
        window_s: processes.window_s,
    })
}
