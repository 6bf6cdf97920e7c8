//! `nvbind-agent` with no subcommand: the daemon. Every process that presents a frame is tracked
//! from that frame (unless the config excludes it); its live numbers are served on the local API
//! and `/metrics`; when it exits its session report is written to the reports directory.
//! SIGHUP reloads the configuration; SIGTERM and SIGINT write every open session and exit.

pub mod api;
pub mod config;
pub mod live;
pub mod metrics;
pub mod sessions;

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use std::future::IntoFuture;

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{watch, Notify},
    task::JoinSet,
};

use self::{
    api::Shared,
    config::{Candidate, Config},
    live::{AgentStatus, GpuStatus, Live},
    metrics::{CauseLabels, Metrics, ProcessLabels},
};
use crate::{
    capture::{
        cpu_time_and_peak_rss,
        pump::{EventPump, StopSignals, Wake},
        Tracker,
    },
    clock::monotonic_ns,
    frames::{Capture, FrameOutcome, Identity, LiveProcess},
    gpu,
    probes::{KernelHooks, LoadOptions, Probes},
    report,
};

/// How often GPU status, the agent's cost and the live windows are refreshed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// How often a session report that could not be written is tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// GPU samples kept for live verdicts when no session is open.
const GPU_HISTORY: Duration = Duration::from_secs(10);
/// How often /proc is listed for new processes, whose graphics libraries may be copies the
/// probes do not cover yet (a game in a container or the Steam runtime).
const NEW_PROCESS_SCAN_INTERVAL: Duration = Duration::from_millis(250);
/// Ages at which a new process's memory map is searched for graphics libraries: games map
/// their loader early and present seconds later; a process that lives past the last age and
/// maps one later is hooked only if it is tracked some other way.
const LIBRARY_SCAN_AGES_MS: [u64; 5] = [200, 1_000, 3_000, 10_000, 30_000];
/// The most GPU history kept for open sessions (at 10 Hz about 10 MiB per GPU); a longer
/// session's report has GPU samples for its last GPU_SESSION_HISTORY only.
const GPU_SESSION_HISTORY: Duration = Duration::from_secs(4 * 3600);
/// How long a finished session's pid is remembered, so that frames the kernel recorded just
/// before the exit and delivered after it do not open a second, nameless session.
const TOMBSTONE: Duration = Duration::from_secs(5);
/// How long the agent's stop waits for API connections (WebSockets) to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Command-line settings that override the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub socket: Option<PathBuf>,
    pub reports_dir: Option<PathBuf>,
    pub keep_reports: Option<usize>,
    pub gpu_sample_hz: Option<f64>,
    pub kernel_hooks: Option<KernelHooks>,
    pub sysfs_root: Option<PathBuf>,
    pub dev_root: Option<PathBuf>,
    pub proc_root: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
}

impl Overrides {
    fn apply(&self, c: &mut Config) {
        if let Some(v) = &self.listen {
            c.api.listen = v.clone();
        }
        if let Some(v) = &self.socket {
            c.api.socket = v.clone();
        }
        if let Some(v) = &self.reports_dir {
            c.reports.dir = v.clone();
        }
        if let Some(v) = self.keep_reports {
            c.reports.keep = v;
        }
        if let Some(v) = self.gpu_sample_hz {
            c.gpu.sample_hz = v;
        }
        if let Some(v) = self.kernel_hooks {
            c.probes.kernel_hooks = v;
        }
        if let Some(v) = &self.sysfs_root {
            c.gpu.sysfs_root = v.clone();
        }
        if let Some(v) = &self.dev_root {
            c.gpu.dev_root = v.clone();
        }
        if let Some(v) = &self.proc_root {
            c.gpu.proc_root = v.clone();
        }
        if let Some(v) = &self.bpffs {
            c.api.bpffs = v.clone();
        }
    }
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config_path: PathBuf,
    /// The path was given on the command line (a missing file is then an error).
    pub config_explicit: bool,
    pub overrides: Overrides,
    pub mount_tracefs: bool,
    /// Ask NVML about NVIDIA GPUs (None: only when reading the real /sys).
    pub nvml: Option<bool>,
}

impl DaemonOptions {
    /// The configuration file with the command line's overrides, checked.
    pub fn load_config(&self) -> Result<Config> {
        let mut config = Config::load(&self.config_path, self.config_explicit)?;
        self.overrides.apply(&mut config);
        config.validate().map_err(|message| {
            anyhow::anyhow!(
                "{message} (from {} and the command line)",
                self.config_path.display()
            )
        })?;
        Ok(config)
    }

    fn gpu_roots(&self, config: &Config) -> Result<gpu::Roots> {
        for (dir, key) in [
            (&config.gpu.sysfs_root, "gpu.sysfs_root"),
            (&config.gpu.dev_root, "gpu.dev_root"),
            (&config.gpu.proc_root, "gpu.proc_root"),
        ] {
            if !dir.is_dir() {
                anyhow::bail!("{key} {}: no such directory", dir.display());
            }
        }
        Ok(gpu::Roots {
            sys: config.gpu.sysfs_root.clone(),
            dev: config.gpu.dev_root.clone(),
            proc: config.gpu.proc_root.clone(),
            nvml: self
                .nvml
                .unwrap_or(config.gpu.sysfs_root == std::path::Path::new("/sys")),
        })
    }
}

/// Runs the daemon until SIGTERM or SIGINT. Returns the exit code.
pub fn run(options: DaemonOptions) -> Result<u8> {
    let config = options.load_config()?;
    if !crate::probes::is_root() {
        anyhow::bail!(
            "the daemon loads eBPF programs and needs root: run `sudo nvbind-agent` (or the \
             systemd service in dist/)"
        );
    }
    let gpu_roots = options.gpu_roots(&config)?;
    sessions::prepare_dir(&config.reports.dir)?;
    // Before the runtime's threads start, so they inherit it.
    crate::capture::yield_to_games();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(options, config, gpu_roots))
}

/// A session on its way to disk.
struct PendingWrite {
    capture: Capture,
    part: u32,
    attempts: u32,
}

struct Daemon {
    tracker: Tracker,
    shared: Arc<Shared>,
    config: Config,
    options: DaemonOptions,
    sampler: Option<gpu::Sampler>,
    gpu_period_ns: u64,
    /// Processes the config excluded (not re-examined while they live).
    rejected: HashSet<u32>,
    /// The agent's CPU time when each session started.
    cpu_at_start: HashMap<u32, f64>,
    writes: JoinSet<(PendingWrite, Result<sessions::Written, String>)>,
    failed: Vec<PendingWrite>,
    /// Sessions ended recently, by pid (see TOMBSTONE).
    ended: HashMap<u32, Instant>,
    /// Processes seen in /proc: when first seen, and how many library scans they had.
    young: HashMap<u32, (Instant, usize)>,
    /// Every pid seen in /proc at the last listing.
    known: HashSet<u32>,
}

async fn serve(options: DaemonOptions, config: Config, gpu_roots: gpu::Roots) -> Result<u8> {
    let stop_signals = StopSignals::install()?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let probes = Probes::load(LoadOptions {
        mount_tracefs: options.mount_tracefs,
        require_core: true,
        discover_presenters: true,
        kernel_hooks: config.probes.kernel_hooks,
    })?;
    let discovery = gpu::discover(&gpu_roots, &gpu::Warnings::default());
    let sampler = config
        .gpu_period()
        .map(|period| gpu::Sampler::start(&discovery, gpu::SamplerConfig { period }));
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
                not_sampled: sampler
                    .is_none()
                    .then(|| "GPU sampling is off (gpu.sample_hz = 0)".to_string()),
            })
            .collect(),
        ..Default::default()
    }));
    let (drained, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        metrics: Metrics::new(Arc::clone(&live)),
        live,
        config: RwLock::new(config.clone()),
        gpus: discovery.gpus.clone(),
        gpu_roots,
        drain_request: Notify::new(),
        drained,
    });
    let (stop, stopped) = watch::channel(false);
    let servers = start_servers(&config, &shared, stopped).await?;

    let tracker = Tracker::new(probes, config.detector(), false, &discovery.gpus);
    let mut daemon = Daemon {
        tracker,
        shared: Arc::clone(&shared),
        gpu_period_ns: config.gpu_period().map_or(0, |p| p.as_nanos() as u64),
        config,
        options,
        sampler,
        rejected: HashSet::new(),
        cpu_at_start: HashMap::new(),
        writes: JoinSet::new(),
        failed: Vec::new(),
        young: HashMap::new(),
        known: HashSet::new(),
        ended: HashMap::new(),
    };
    // Processes running now were covered by the host's libraries at load; only new ones are
    // searched for copies.
    daemon.known = list_pids();
    daemon.housekeeping();
    log::info!(
        "tracking every process that presents frames; reports go to {}",
        daemon.config.reports.dir.display()
    );

    let mut pump = EventPump::new(daemon.tracker.probes(), stop_signals)?;
    let mut last_housekeeping = Instant::now();
    let mut last_retry = Instant::now();
    let mut last_process_scan = Instant::now();
    let signal_name = loop {
        tokio::select! {
            wake = pump.next() => {
                if let Wake::Stop(signal) = wake {
                    break signal.name();
                }
            }
            _ = shared.drain_request.notified() => {}
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
        if last_process_scan.elapsed() >= NEW_PROCESS_SCAN_INTERVAL {
            last_process_scan = Instant::now();
            daemon.scan_new_processes();
        }
        if last_retry.elapsed() >= RETRY_INTERVAL {
            last_retry = Instant::now();
            daemon.retry_failed();
        }
    };
    log::info!("{signal_name}: writing open sessions and stopping");
    let _ = stop.send(true);
    EventPump::settle().await;
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
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, servers).await;
    if !daemon.config.api.socket.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&daemon.config.api.socket);
    }
    Ok(if daemon.failed.is_empty() { 0 } else { 1 })
}

/// Binds the TCP API and the Unix socket (errors here are fatal: a daemon that cannot serve
/// its API must say so at start), and serves them until `stopped` turns true.
async fn start_servers(
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
        tasks.spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(until_stopped(stopped.clone()))
                .into_future(),
        );
    }
    let socket = config.api.socket.clone();
    if !socket.as_os_str().is_empty() {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // A socket left by an agent that did not stop cleanly; anything else is not ours.
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

impl Daemon {
    fn live(&self) -> std::sync::RwLockWriteGuard<'_, Live> {
        self.shared.live.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the live state up to date with the tracker: admits or rejects new processes,
    /// counts new frames, and ends the sessions of processes that exited.
    fn sync(&mut self) {
        let mut admitted = Vec::new();
        let mut late = Vec::new();
        let mut reject = Vec::new();
        let mut finished = Vec::new();
        let mut full = Vec::new();
        let mut stutters = Vec::new();
        {
            let shared = Arc::clone(&self.shared);
            let mut live = shared.live.write().unwrap_or_else(|p| p.into_inner());
            for (&pid, record) in self.tracker.processes() {
                // Late records of a session just written: drop them, unless the pid now belongs
                // to a new process.
                if self.ended.contains_key(&pid)
                    && (record.exited_ns.is_some() || !crate::target::is_alive(pid))
                {
                    late.push(pid);
                    continue;
                }
                if self.rejected.contains(&pid) {
                    reject.push(pid);
                    continue;
                }
                let lp = match live.processes.entry(pid) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        let identity = Identity::of(pid, &record.comm, &record.exe);
                        let candidate = Candidate {
                            comm: &identity.comm,
                            exe: &identity.exe,
                            cgroup: &identity.cgroup,
                        };
                        if !self.config.games.admits(&candidate) {
                            log::info!(
                                "pid {pid} ({}) presents frames but the config excludes it",
                                identity.comm
                            );
                            self.rejected.insert(pid);
                            reject.push(pid);
                            continue;
                        }
                        log::info!(
                            "tracking pid {pid} ({}, {}) from its first frame",
                            identity.comm,
                            identity.exe
                        );
                        self.cpu_at_start.insert(pid, cpu_time_and_peak_rss().0);
                        admitted.push(pid);
                        slot.insert(LiveProcess::new(
                            pid,
                            identity,
                            self.tracker.stutter_config(),
                        ))
                    }
                };
                let labels = ProcessLabels {
                    pid: pid.to_string(),
                    comm: lp.comm.clone(),
                };
                for (i, outcome) in lp.catch_up(&record.frames) {
                    match outcome {
                        FrameOutcome::Ignored => {}
                        FrameOutcome::First => {
                            self.shared.metrics.frames.get_or_create(&labels).inc();
                        }
                        FrameOutcome::Timed {
                            frame_time_ns,
                            stutter_baseline_ms,
                        } => {
                            self.shared.metrics.frames.get_or_create(&labels).inc();
                            self.shared
                                .metrics
                                .frame_time
                                .get_or_create(&labels)
                                .observe(frame_time_ns as f64 / 1e9);
                            if let Some(baseline) = stutter_baseline_ms {
                                stutters.push((pid, i, baseline));
                            }
                        }
                    }
                }
                lp.gpu.clone_from(&record.gpu);
                if record.exited_ns.is_some() {
                    finished.push(pid);
                } else if record.frames.len().max(record.display.len())
                    >= self.config.reports.max_session_frames
                {
                    full.push(pid);
                }
            }
        }
        for (pid, index, baseline) in stutters {
            self.count_stutter(pid, index, baseline);
        }
        for pid in admitted {
            self.tracker.adopt(pid);
        }
        for pid in late {
            self.tracker.drop_process(pid, false);
        }
        for pid in reject {
            self.tracker.drop_process(pid, true);
        }
        for pid in finished {
            self.finish(pid, "process-exited");
        }
        for pid in full {
            self.split(pid);
        }
    }

    /// Every GPU's samples from `from_ns` on (none when sampling is off).
    fn gpu_series_since(&self, from_ns: u64) -> Vec<gpu::GpuSeries> {
        self.sampler
            .as_ref()
            .map(|s| s.since(from_ns))
            .unwrap_or_default()
    }

    /// Gives a live stutter its verdict and counts it.
    fn count_stutter(&mut self, pid: u32, index: usize, baseline_ms: f64) {
        let capture = self.tracker.live_capture();
        let Some(record) = capture.processes.get(&pid) else {
            return;
        };
        let Some(frame) = record.frames.get(index) else {
            return;
        };
        let Some(previous) = record.frames[..index]
            .iter()
            .rev()
            .find(|f| f.source == frame.source)
        else {
            return;
        };
        let gpus = self.gpu_series_since(previous.ts_ns.saturating_sub(2 * self.gpu_period_ns));
        let verdict = report::verdict_now(
            capture,
            record,
            previous,
            frame,
            baseline_ms,
            &gpus,
            self.gpu_period_ns,
        );
        let mut live = self.live();
        if let Some(lp) = live.processes.get_mut(&pid) {
            lp.count_stutter(verdict.cause);
            self.shared
                .metrics
                .stutters
                .get_or_create(&CauseLabels {
                    pid: pid.to_string(),
                    comm: lp.comm.clone(),
                    cause: verdict.cause.name().into(),
                })
                .inc();
        }
    }

    /// Ends a session: takes the process out of the tracker and writes its report.
    fn finish(&mut self, pid: u32, reason: &str) {
        let started = self
            .tracker
            .processes()
            .get(&pid)
            .map_or(0, |p| p.tracked_at_ns);
        let gpus = self.gpu_series_since(started);
        let part = {
            let mut live = self.live();
            let removed = live.processes.remove(&pid);
            if let Some(lp) = &removed {
                self.shared.metrics.forget(&ProcessLabels {
                    pid: pid.to_string(),
                    comm: lp.comm.clone(),
                });
            }
            removed.map(|p| p.part)
        };
        let Some(mut capture) = self
            .tracker
            .take_process(pid, gpus, self.gpu_period_ns, reason)
        else {
            return;
        };
        self.ended.insert(pid, Instant::now());
        let Some(part) = part else {
            // Never admitted (excluded, or gone before the first sync): no session.
            return;
        };
        self.annotate(pid, &mut capture);
        self.write(PendingWrite {
            capture,
            part,
            attempts: 0,
        });
    }

    /// Writes the frames so far of a session that reached its frame limit, and goes on.
    fn split(&mut self, pid: u32) {
        let started = self
            .tracker
            .processes()
            .get(&pid)
            .and_then(|p| p.frames.first())
            .map_or(0, |f| f.ts_ns);
        let gpus = self.gpu_series_since(started);
        let Some(mut capture) = self.tracker.take_frames(pid, gpus, self.gpu_period_ns) else {
            return;
        };
        // A split session's parts are numbered from 1; a session never split has no number.
        let part = {
            let mut live = self.live();
            let Some(lp) = live.processes.get_mut(&pid) else {
                return;
            };
            let written = lp.part.max(1);
            lp.part = written + 1;
            lp.restart_record();
            written
        };
        self.annotate(pid, &mut capture);
        self.write(PendingWrite {
            capture,
            part,
            attempts: 0,
        });
    }

    /// The agent's cost over the session, and how it was found.
    fn annotate(&mut self, pid: u32, capture: &mut Capture) {
        let (cpu_now, peak_rss) = cpu_time_and_peak_rss();
        capture.agent_cpu_s = cpu_now - self.cpu_at_start.remove(&pid).unwrap_or(cpu_now);
        capture.agent_peak_rss_bytes = peak_rss;
        capture.notes.push(
            "recorded by the nvbind daemon: tracked from its first present; agent CPU and memory \
             are the daemon's, which may have tracked other games at the same time"
                .into(),
        );
    }

    fn write(&mut self, pending: PendingWrite) {
        let config = self.config.reports.clone();
        self.writes.spawn_blocking(move || {
            let result = sessions::write(&pending.capture, &config, pending.part)
                .map_err(|e| e.to_string())
                .inspect(|_| {
                    for stem in sessions::prune(&config.dir, config.keep) {
                        log::info!("pruned session {stem} (reports.keep = {})", config.keep);
                    }
                });
            (pending, result)
        });
    }

    fn written(
        &mut self,
        done: Result<(PendingWrite, Result<sessions::Written, String>), tokio::task::JoinError>,
    ) {
        let Ok((mut pending, result)) = done else {
            log::error!("a session report writer panicked");
            self.live().agent.reports_failed += 1;
            return;
        };
        match result {
            Ok(written) => {
                if let Some(path) = written.report {
                    log::info!(
                        "session of {} written to {}",
                        pending.capture.target,
                        path.display()
                    );
                    self.live().agent.reports_written += 1;
                }
            }
            Err(e) => {
                pending.attempts += 1;
                log::error!(
                    "cannot write the session report of {} (attempt {}): {e}; kept in memory, \
                     retried every {} s",
                    pending.capture.target,
                    pending.attempts,
                    RETRY_INTERVAL.as_secs()
                );
                self.live().agent.reports_failed += 1;
                self.failed.push(pending);
            }
        }
    }

    fn retry_failed(&mut self) {
        for pending in std::mem::take(&mut self.failed) {
            self.write(pending);
        }
    }

    /// Hooks graphics libraries that new processes map from files the probes do not cover yet,
    /// so a game in a container or the Steam runtime is seen from its first frame too.
    fn scan_new_processes(&mut self) {
        let now = Instant::now();
        let pids = list_pids();
        for &pid in pids.difference(&self.known) {
            self.young.insert(pid, (now, 0));
        }
        self.known = pids;
        let known = &self.known;
        self.young
            .retain(|pid, (_, done)| known.contains(pid) && *done < LIBRARY_SCAN_AGES_MS.len());
        let due: Vec<u32> = self
            .young
            .iter()
            .filter(|(_, (seen, done))| {
                now.duration_since(*seen) >= Duration::from_millis(LIBRARY_SCAN_AGES_MS[*done])
            })
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            if let Some((seen, done)) = self.young.get_mut(&pid) {
                // Skip ages already passed (a slow tick): one scan covers them.
                let age = now.duration_since(*seen);
                while *done < LIBRARY_SCAN_AGES_MS.len()
                    && age >= Duration::from_millis(LIBRARY_SCAN_AGES_MS[*done])
                {
                    *done += 1;
                }
            }
            for lib in self.tracker.hook_libraries_of(pid) {
                log::info!("pid {pid}: hooked {lib} (a copy the host's hooks do not cover)");
            }
        }
    }

    /// Refreshes GPU status and the agent's cost; trims live windows and old GPU samples.
    fn housekeeping(&mut self) {
        let (cpu, _) = cpu_time_and_peak_rss();
        let costs = self.tracker.probes().program_costs();
        let dropped = self.tracker.probes().dropped_events();
        let latest = self.sampler.as_ref().map(gpu::Sampler::latest);
        let now = monotonic_ns();
        let oldest_session = self
            .tracker
            .processes()
            .values()
            .map(|p| p.tracked_at_ns)
            .min()
            .unwrap_or(now);
        if let Some(sampler) = &self.sampler {
            // Samples back to the oldest open session, but never more than GPU_SESSION_HISTORY:
            // a desktop program that presents now and then can stay tracked for days.
            sampler.forget_before(
                oldest_session
                    .max(now.saturating_sub(GPU_SESSION_HISTORY.as_nanos() as u64))
                    .min(now.saturating_sub(GPU_HISTORY.as_nanos() as u64)),
            );
        }
        {
            let mut live = self.live();
            live.agent.cpu_seconds = cpu;
            live.agent.resident_bytes = resident_bytes();
            live.agent.dropped_events = dropped;
            live.agent.bpf = costs;
            if let Some(latest) = latest {
                live.gpus = latest
                    .into_iter()
                    .map(|(info, sample, not_sampled)| GpuStatus {
                        info,
                        sample,
                        not_sampled,
                    })
                    .collect();
            }
            let window = live.window;
            for p in live.processes.values_mut() {
                p.trim(window, now);
            }
        }
        let now_instant = Instant::now();
        let ended = &mut self.ended;
        self.rejected.retain(|&pid| {
            let alive = crate::target::is_alive(pid);
            if !alive {
                // Its late records must not open a nameless session either.
                ended.insert(pid, now_instant);
            }
            alive
        });
        self.ended.retain(|_, at| at.elapsed() < TOMBSTONE);
        self.tracker.forget_ignored();
    }

    /// SIGHUP: re-reads the configuration. A bad file is reported and the running one kept.
    fn reload(&mut self) {
        let config = match self.options.load_config() {
            Ok(c) => c,
            Err(e) => {
                log::error!("SIGHUP: configuration not reloaded, the running one stays: {e:#}");
                return;
            }
        };
        if let Err(e) = sessions::prepare_dir(&config.reports.dir) {
            log::error!("SIGHUP: configuration not reloaded, the running one stays: {e}");
            return;
        }
        let needs_restart: Vec<&str> = [
            ("api.listen", config.api.listen != self.config.api.listen),
            ("api.socket", config.api.socket != self.config.api.socket),
            ("gpu", config.gpu != self.config.gpu),
            ("probes", config.probes != self.config.probes),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !needs_restart.is_empty() {
            log::warn!(
                "SIGHUP: {} changed and take effect only after a restart",
                needs_restart.join(", ")
            );
        }
        self.tracker.set_stutter_config(config.detector());
        self.live().window = config.window();
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = config.clone();
        // Keep what cannot change without a restart as it runs.
        let mut applied = config;
        applied.api.listen = self.config.api.listen.clone();
        applied.api.socket = self.config.api.socket.clone();
        applied.gpu = self.config.gpu.clone();
        applied.probes = self.config.probes.clone();
        self.config = applied;
        // Processes excluded under the old lists are looked at again under the new ones.
        self.rejected.clear();
        log::info!(
            "SIGHUP: configuration reloaded from {}",
            self.options.config_path.display()
        );
    }
}

/// Every process id in /proc now.
fn list_pids() -> HashSet<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The agent's resident memory now (the kernel's `statm`).
fn resident_bytes() -> u64 {
    let page = rustix::param::page_size() as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}
