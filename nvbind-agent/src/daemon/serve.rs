//! The daemon's start-up, main loop and stop.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::{watch, Notify},
};

use super::{
    config::Config,
    housekeeping::HOUSEKEEPING_INTERVAL,
    listeners::start_servers,
    live::{AgentStatus, GpuStatus, Live},
    metrics::Metrics,
    options::DaemonOptions,
    processes::{list_pids, YoungProcesses, LISTING_GAP, PROCESS_LISTING_INTERVAL},
    sessions,
    shared::Shared,
    tracking::{Daemon, RETRY_INTERVAL},
};
use crate::{
    capture::{
        pump::{EventPump, StopSignals, Wake},
        Tracker,
    },
    clock::monotonic_ns,
    gpu,
    probes::{LeftOut, LoadOptions, Probes, UntrackedCheck},
};

/// How long the agent's stop waits for API connections (WebSockets) to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Runs the daemon until SIGTERM or SIGINT. Returns the exit code.
pub fn run(options: DaemonOptions) -> Result<u8> {
    run_until(options, None)
}

/// Runs the daemon in this process (on the calling thread) until SIGTERM, SIGINT or `stop`
/// turns true: `top --standalone`. Returns the exit code.
pub fn run_embedded(options: DaemonOptions, stop: watch::Receiver<bool>) -> Result<u8> {
    run_until(options, Some(stop))
}

fn run_until(options: DaemonOptions, stop: Option<watch::Receiver<bool>>) -> Result<u8> {
    let config = options.load_config()?;
    if !crate::probes::is_root() {
        anyhow::bail!(
            "the daemon loads eBPF programs and needs root: run `sudo nvbind-agent` (or the \
             systemd service in dist/)"
        );
    }
    let gpu_roots = options.gpu_roots(&config)?;
    // Held until the daemon exits: a second daemon on the same socket refuses to start rather
    // than unlinking the first one's socket.
    let _one_daemon = super::listeners::lock_socket(&config.api.socket)?;
    // The reports directory first (its parents, if the daemon makes them, as any directory:
    // the reports group must be able to reach it), then everything the daemon creates is root's
    // and, for reports, the reports group's: files 0640. The API's socket sets its own mode.
    let notes = sessions::prepare_dir(&config.reports, true)?;
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o027) };
    // Before the runtime's threads start, so they inherit it.
    crate::capture::yield_to_games();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(options, config, gpu_roots, notes, stop))
}

/// `notes`: what the start-up found worth saying, said once the daemon serves (so that a
/// failure to start stays one line).
async fn serve(
    options: DaemonOptions,
    config: Config,
    gpu_roots: gpu::Roots,
    notes: Vec<String>,
    requested_stop: Option<watch::Receiver<bool>>,
) -> Result<u8> {
    let mut stop_signals = StopSignals::install()?;
    if let Some(requested) = requested_stop {
        stop_signals = stop_signals.or_when(requested);
    }
    let sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let mut probes = Probes::load(LoadOptions {
        mount_tracefs: options.mount_tracefs,
        require_core: true,
        discover_presenters: true,
        kernel_hooks: config.probes.kernel_hooks,
        bpf_stats: config.probes.bpf_stats,
        untracked_check: UntrackedCheck::Marks,
        left_out: LeftOut::default(),
    })?;
    probes
        .set_discovery_cap(config.games.max_per_user)
        .context("cannot set games.max_per_user in the kernel")?;
    super::subuids::apply(&mut probes, &config.games.subuid_file);
    let discovery = gpu::discover(&gpu_roots, &gpu::Warnings::default());
    let sampler = config
        .gpu_period()
        .map(|period| gpu::Sampler::start(&discovery, gpu::SamplerConfig { period }));
    let shared = shared_state(&config, &discovery, sampler.is_some(), gpu_roots);
    let (stop, stopped) = watch::channel(false);
    let servers = start_servers(&config, &shared, stopped).await?;
    for note in notes {
        log::info!("{note}");
    }
    // What `doctor` would say, once, for the journal (after the start, which fails in one line):
    // a probe this kernel refused is found here.
    for status in probes.statuses() {
        match &status.reason {
            None if status.attached => log::info!("probe {}: attached", status.name),
            reason => log::info!(
                "probe {}: unavailable: {}",
                status.name,
                reason.as_deref().unwrap_or("no reason given")
            ),
        }
    }

    let mut tracker = Tracker::new(probes, config.detector(), false, &discovery.gpus);
    tracker.set_frame_rate_cap(config.games.max_fps_per_user);
    let mut daemon = Daemon::new(tracker, Arc::clone(&shared), config, options, sampler);
    // Processes running now were covered by the host's libraries at load; only new ones are
    // searched for copies.
    daemon.young = YoungProcesses::new(list_pids().unwrap_or_default());
    daemon.housekeeping();
    log::info!(
        "tracking every process that presents frames; reports go to {}",
        daemon.config.reports.dir.display()
    );

    let pump = EventPump::new(daemon.tracker.probes(), stop_signals)?;
    let signal_name = run_until_stopped(&mut daemon, pump, sighup).await;
    log::info!("{signal_name}: writing open sessions and stopping");
    let _ = stop.send(true);
    EventPump::settle().await;
    write_open_sessions(&mut daemon).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, servers).await;
    if !daemon.config.api.socket.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&daemon.config.api.socket);
    }
    Ok(if daemon.failed.is_empty() { 0 } else { 1 })
}

/// What the API reads: the live state, with every GPU found (not sampled yet, or never when
/// sampling is off), and the metrics.
fn shared_state(
    config: &Config,
    discovery: &gpu::Discovery,
    sampling: bool,
    gpu_roots: gpu::Roots,
) -> Arc<Shared> {
    let live = Arc::new(RwLock::new(Live {
        window: config.window(),
        agent: AgentStatus {
            version: env!("CARGO_PKG_VERSION"),
            started_unix_s: crate::clock::unix_time_at(monotonic_ns()),
            ..Default::default()
        },
        gpus: discovery
            .gpus
            .iter()
            .map(|g| GpuStatus {
                info: g.clone(),
                sample: None,
                not_sampled: (!sampling)
                    .then(|| "GPU sampling is off (gpu.sample_hz = 0)".to_string()),
            })
            .collect(),
        ..Default::default()
    }));
    let (drained, _) = watch::channel(0u64);
    Arc::new(Shared {
        metrics: Metrics::new(Arc::clone(&live)),
        live,
        config: RwLock::new(config.clone()),
        gpus: discovery.gpus.clone(),
        gpu_roots,
        drain_request: Notify::new(),
        drained,
        history: Default::default(),
    })
}

/// The main loop: reads the kernel's records when the pump wakes, a stream asks or a young
/// process reaches an age to be searched at, and after each read keeps house, searches new
/// processes and retries failed writes when they are due; a finished write or SIGHUP is handled
/// on its own. Returns the name of the signal that stopped it.
async fn run_until_stopped(
    daemon: &mut Daemon,
    mut pump: EventPump,
    mut sighup: Signal,
) -> &'static str {
    let shared = Arc::clone(&daemon.shared);
    let mut last_housekeeping = Instant::now();
    let mut last_retry = Instant::now();
    let mut last_listing = Instant::now();
    loop {
        let next_library_scan = daemon.young.next_due();
        tokio::select! {
            wake = pump.next() => {
                if let Wake::Stop(signal) = wake {
                    break signal.name();
                }
            }
            _ = shared.drain_request.notified() => {}
            _ = tokio::time::sleep_until(
                next_library_scan.map_or_else(tokio::time::Instant::now, Into::into)
            ), if next_library_scan.is_some() => {}
            Some(done) = daemon.writes.join_next(), if !daemon.writes.is_empty() => {
                daemon.written(done);
                continue;
            }
            _ = sighup.recv() => {
                daemon.reload();
                continue;
            }
        }
        daemon.tracker.step();
        daemon.sync();
        shared.drained.send_modify(|n| *n += 1);
        if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
            last_housekeeping = Instant::now();
            daemon.housekeeping();
        }
        daemon.take_exec_notices();
        let since_listing = last_listing.elapsed();
        if since_listing >= PROCESS_LISTING_INTERVAL
            || (daemon.list_soon && since_listing >= LISTING_GAP)
        {
            last_listing = Instant::now();
            daemon.list_processes();
        }
        daemon.scan_young_processes();
        // Nothing tracked: every record that matters wakes the daemon by itself, and the GPUs'
        // status is for the live view only.
        let idle = daemon.tracker.processes().is_empty();
        pump.set_idle(idle);
        if let Some(sampler) = &daemon.sampler {
            sampler.set_idle(idle);
        }
        if last_retry.elapsed() >= RETRY_INTERVAL {
            last_retry = Instant::now();
            daemon.retry_failed();
        }
    }
}

/// After the stop: reads what the kernel still holds, ends every open session and waits for
/// the reports (each failed one tried once more); what still fails is reported lost.
async fn write_open_sessions(daemon: &mut Daemon) {
    daemon.tracker.step();
    daemon.sync();
    let open: Vec<u32> = daemon.tracker.processes().keys().copied().collect();
    for pid in open {
        daemon.finish(pid, "agent-stopped");
    }
    while let Some(done) = daemon.writes.join_next().await {
        daemon.written(done);
    }
    daemon.retry_failed();
    while let Some(done) = daemon.writes.join_next().await {
        daemon.written(done);
    }
    for lost in &daemon.failed {
        log::error!(
            "the session report of {} could not be written and is lost: see the errors above",
            lost.capture.target
        );
    }
}
