//! The daemon's state and its sessions: the live state kept in step with the tracker, live
//! stutters judged and counted, and each session's report written when it ends (or reaches its
//! frame limit), with failed writes kept and tried again.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;

use super::{
    config::{Candidate, Config},
    guard::RateLimited,
    live::Live,
    metrics::{CauseLabels, ProcessLabels},
    options::DaemonOptions,
    processes::YoungProcesses,
    sessions,
    shared::Shared,
};
use crate::{
    capture::{cpu_time_and_peak_rss, Tracker},
    frames::{Capture, FrameOutcome, Identity, LiveProcess},
    gpu, report,
};

/// How often a session report that could not be written is tried again.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// Session reports kept in memory while they cannot be written (each holds its frames: up to
/// `reports.max_session_frames`); beyond this the oldest is given up, loudly.
pub(super) const MAX_UNWRITTEN_SESSIONS: usize = 8;

/// A session on its way to disk.
pub(super) struct PendingWrite {
    pub(super) capture: Capture,
    pub(super) part: u32,
    pub(super) attempts: u32,
}

/// What the daemon keeps between events.
pub(super) struct Daemon {
    pub(super) tracker: Tracker,
    pub(super) shared: Arc<Shared>,
    pub(super) config: Config,
    pub(super) options: DaemonOptions,
    pub(super) sampler: Option<gpu::Sampler>,
    pub(super) gpu_period_ns: u64,
    /// Processes the config excluded (not re-examined while they live).
    pub(super) rejected: HashSet<u32>,
    /// The agent's CPU time when each session started.
    pub(super) cpu_at_start: HashMap<u32, f64>,
    pub(super) writes: JoinSet<(PendingWrite, Result<sessions::Written, String>)>,
    pub(super) failed: Vec<PendingWrite>,
    /// Sessions ended recently, by pid (see `housekeeping::TOMBSTONE`).
    pub(super) ended: HashMap<u32, Instant>,
    /// Processes new since the agent started, whose memory maps are searched for library
    /// copies at a few ages.
    pub(super) young: YoungProcesses,
    /// Exec notices the kernel could not send, as last read.
    pub(super) exec_notices_lost: u64,
    /// /proc is to be listed at the next wakeup (notices were lost or dropped).
    pub(super) list_soon: bool,
    /// When a user at `games.max_per_user` was last warned about (at most every 10 s: the
    /// refusals go on with every present of that user's untracked processes).
    pub(super) cap_warnings: RateLimited,
    /// The same for frames beyond `games.max_fps_per_user`.
    pub(super) rate_warnings: RateLimited,
}

impl Daemon {
    pub(super) fn new(
        tracker: Tracker,
        shared: Arc<Shared>,
        config: Config,
        options: DaemonOptions,
        sampler: Option<gpu::Sampler>,
    ) -> Daemon {
        Daemon {
            tracker,
            shared,
            gpu_period_ns: config.gpu_period().map_or(0, |p| p.as_nanos() as u64),
            config,
            options,
            sampler,
            rejected: HashSet::new(),
            cpu_at_start: HashMap::new(),
            writes: JoinSet::new(),
            failed: Vec::new(),
            young: YoungProcesses::default(),
            exec_notices_lost: 0,
            list_soon: false,
            ended: HashMap::new(),
            cap_warnings: RateLimited::new(Duration::from_secs(10)),
            rate_warnings: RateLimited::new(Duration::from_secs(10)),
        }
    }

    pub(super) fn live(&self) -> std::sync::RwLockWriteGuard<'_, Live> {
        self.shared.live.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the live state up to date with the tracker: admits or rejects new processes,
    /// counts new frames, and ends the sessions of processes that exited.
    pub(super) fn sync(&mut self) {
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
                        let identity = Identity::of(record);
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
                            identity.name,
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
                    name: lp.name.clone(),
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
                let dropped_before = lp.dropped_total;
                let latencies = lp.catch_up_screen(&record.frames, record.screen_from);
                if !latencies.is_empty() || lp.dropped_total > dropped_before {
                    let metrics = &self.shared.metrics;
                    let histogram = metrics.present_to_display.get_or_create(&labels);
                    for latency in &latencies {
                        histogram.observe(*latency as f64 / 1e9);
                    }
                    metrics
                        .frames_displayed
                        .get_or_create(&labels)
                        .inc_by(latencies.len() as u64);
                    metrics
                        .frames_dropped
                        .get_or_create(&labels)
                        .inc_by(lp.dropped_total - dropped_before);
                }
                let (calls, ns) =
                    lp.new_compiles(record.compile_calls_seen, record.compile_ns_seen);
                if calls > 0 {
                    let metrics = &self.shared.metrics;
                    metrics.shader_compiles.get_or_create(&labels).inc_by(calls);
                    metrics
                        .shader_compile_time
                        .get_or_create(&labels)
                        .inc_by(ns as f64 / 1e9);
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
            (index, frame),
            baseline_ms,
            &gpus,
            self.gpu_period_ns,
        );
        let mut live = self.live();
        if let Some(lp) = live.processes.get_mut(&pid) {
            lp.count_stutter(
                frame.ts_ns,
                frame.ts_ns.saturating_sub(previous.ts_ns) as f64 / 1e6,
                &verdict,
            );
            self.shared
                .metrics
                .stutters
                .get_or_create(&CauseLabels {
                    pid: pid.to_string(),
                    comm: lp.comm.clone(),
                    name: lp.name.clone(),
                    cause: verdict.cause.name().into(),
                })
                .inc();
        }
    }

    /// Ends a session: takes the process out of the tracker and writes its report.
    pub(super) fn finish(&mut self, pid: u32, reason: &str) {
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
                    name: lp.name.clone(),
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
            lp.restart_record(
                self.tracker
                    .processes()
                    .get(&pid)
                    .map_or(0, |r| r.screen_from),
            );
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

    pub(super) fn written(
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
                if let Some(session) = written.session {
                    self.shared.history().add(session);
                }
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
                // Each waiting session holds its frames in memory: on a disk that stays full,
                // the oldest are given up rather than the daemon growing without end.
                while self.failed.len() > MAX_UNWRITTEN_SESSIONS {
                    let lost = self.failed.remove(0);
                    log::error!(
                        "gave up the session report of {} after {} attempts: {} more wait to be \
                         written (free space in reports.dir)",
                        lost.capture.target,
                        lost.attempts,
                        MAX_UNWRITTEN_SESSIONS
                    );
                    self.live().agent.reports_lost += 1;
                }
            }
        }
    }

    pub(super) fn retry_failed(&mut self) {
        for pending in std::mem::take(&mut self.failed) {
            self.write(pending);
        }
    }
}
