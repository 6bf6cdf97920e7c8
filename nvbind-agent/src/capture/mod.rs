//! The recording loop: start tracking the target, drain frames and process events from the ring
//! buffer on a timer, hook graphics libraries as tracked processes map them, and stop at the
//! duration, when every tracked process has exited, or on SIGINT/SIGTERM. The result is a
//! [`Capture`], which `report::build` turns into a report.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

mod progress;
mod snapshots;

use anyhow::{bail, Context, Result};
use nvbind_common::{present_source, Culprit};
use snapshots::ThreadSnapshots;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    clock::{monotonic_ns, unix_time_at},
    frames::{Capture, DisplayRecord, Frame, ProcessRecord},
    gpu,
    probes::{comm_str, libraries, Event, KernelHooks, LoadOptions, Probes, ProgramCost},
    stutter::{Detector, DetectorConfig},
    target::{self, Launched, TargetSpec},
};

/// How often the ring buffer is drained. Producers never wake the agent (BPF_RB_NO_WAKEUP): at
/// several hundred frames per second a wakeup per frame would cost more than the frames.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// How often tracked processes are checked for new graphics libraries and for liveness.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// For this long after it is tracked, a process that has not presented yet is checked for new
/// graphics libraries on every drain (see `scan_new_libraries`); afterwards every SCAN_INTERVAL.
const YOUNG_PROCESS: Duration = Duration::from_secs(5);
/// Processes tracked for longer than YOUNG_PROCESS are checked for new graphics libraries this
/// often: reading a game's /proc/PID/maps (thousands of lines with Mesa) is the agent's largest
/// periodic cost, and a settled game rarely maps a new graphics library.
const SETTLED_LIBRARY_SCAN_NS: u64 = 1_000_000_000;
/// A process's /proc files are read again only after 50 times what the last read cost: at most
/// ~2 % of the agent's time per process and kind of scan, however large the process. One with
/// 10,000 threads has a /proc/PID/maps of 20,000 lines and a task directory of 10,000 entries,
/// which take milliseconds to read: every 20 ms, that would be most of a core.
const SCAN_COST_SHARE: u64 = 50;

/// The last scan of one process's /proc files.
#[derive(Debug, Clone, Copy)]
struct LastScan {
    at_ns: u64,
    cost_ns: u64,
}

impl LastScan {
    /// Whether a scan last done as `last` is due again at `now`: at least `min_interval_ns`
    /// after it, and `SCAN_COST_SHARE` times its cost.
    fn due(last: Option<&LastScan>, now: u64, min_interval_ns: u64) -> bool {
        last.is_none_or(|l| {
            let wait = min_interval_ns.max(l.cost_ns.saturating_mul(SCAN_COST_SHARE));
            now.saturating_sub(l.at_ns) >= wait
        })
    }

    fn since(at_ns: u64, started: Instant) -> LastScan {
        LastScan {
            at_ns,
            cost_ns: started.elapsed().as_nanos() as u64,
        }
    }
}

/// The agent's nice value while recording: it yields the CPU to the game it measures, so it does
/// not cause the stutters it reports (it drains a ring buffer that holds seconds of frames).
pub const AGENT_NICE: i32 = 5;
/// Processes that presented within this long get their threads' counters read on every drain
/// (the evidence of stutters beyond the presenting thread).
const PRESENTING_RECENTLY_NS: u64 = 2_000_000_000;
/// Most threads of one process whose counters are read per drain.
const MAX_SNAPSHOT_THREADS: usize = 256;
/// Run-queue waits shorter than this are not worth naming a culprit's cgroup for.
const CULPRIT_CGROUP_MIN_WAIT_NS: u64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    pub wait_timeout: Option<Duration>,
    pub follow_children: bool,
    pub mount_tracefs: bool,
    pub stutter: DetectorConfig,
    /// ioctl type bytes to count as GPU driver calls, beyond the drivers nvbind knows.
    pub gpu_ioctl_types: Vec<u8>,
    /// How often to read GPU counters; `None`: not at all.
    pub gpu_sampling: Option<gpu::SamplerConfig>,
    /// Where to find GPUs.
    pub gpu_roots: gpu::Roots,
    /// Draw a live line (elapsed, FPS, p99, stutters) on stderr when it is a terminal.
    pub progress: bool,
    /// BTF or classic tracepoints for the scheduler probes.
    pub kernel_hooks: KernelHooks,
}

/// A finished recording and the exit code the agent should end with.
pub struct Outcome {
    pub capture: Capture,
    /// The launched command's exit code when it ended by itself, else 0.
    pub exit_code: i32,
}

/// Tracked processes, their frames and the evidence around their stutters, kept up to date by
/// [`Tracker::step`]. `record` runs one for a bounded capture; the daemon runs one for ever and
/// takes each process out with [`Tracker::take_process`] when it exits.
pub struct Tracker {
    probes: Probes,
    capture: Capture,
    follow_children: bool,
    /// Recent counters of the threads of processes that present.
    snapshots: ThreadSnapshots,
    /// A stutter detector per (pid, present source), fed as frames arrive, with the last present.
    detectors: HashMap<(u32, u32), (Detector, u64)>,
    /// Likely stutters waiting for a snapshot after their end: (pid, previous present, present).
    pending_windows: Vec<(u32, u64, u64)>,
    /// Threads of each tracked process, as of the last scan.
    tids: HashMap<u32, Vec<u32>>,
    /// When each process's memory map was last searched for graphics libraries.
    library_scans: HashMap<u32, LastScan>,
    /// When each process's liveness and threads were last read.
    process_scans: HashMap<u32, LastScan>,
    /// GPU device nodes (major, minor) and the PCI address of the GPU each belongs to.
    gpu_nodes: Vec<(u32, u32, String)>,
    /// Processes whose open files were already searched for a GPU node (once, after their first
    /// frame: a process that presents has its GPU open by then).
    gpu_searched: HashSet<u32>,
    last_scan: Instant,
}

impl Tracker {
    /// A tracker over loaded probes. `gpus` are the GPUs found (for each process's render GPU).
    pub fn new(
        probes: Probes,
        stutter: DetectorConfig,
        follow_children: bool,
        gpus: &[gpu::GpuInfo],
    ) -> Tracker {
        Tracker {
            probes,
            capture: Capture {
                stutter,
                ..Default::default()
            },
            follow_children,
            snapshots: ThreadSnapshots::default(),
            detectors: HashMap::new(),
            pending_windows: Vec::new(),
            tids: HashMap::new(),
            library_scans: HashMap::new(),
            process_scans: HashMap::new(),
            gpu_nodes: gpus
                .iter()
                .flat_map(|g| {
                    g.device_nodes
                        .iter()
                        .filter(|n| !n.shared)
                        .map(|n| (n.major, n.minor, g.pci_address.clone()))
                })
                .collect(),
            gpu_searched: HashSet::new(),
            last_scan: Instant::now(),
        }
    }

    /// One round: reads the kernel's records, snapshots the threads of presenting processes,
    /// hooks new graphics libraries, and every SCAN_INTERVAL checks tracked processes.
    pub fn step(&mut self) {
        self.drain();
        self.snapshot_threads();
        self.scan_new_libraries();
        if self.last_scan.elapsed() >= SCAN_INTERVAL {
            self.last_scan = Instant::now();
            self.scan();
        }
    }

    /// The processes tracked so far, by pid.
    pub fn processes(&self) -> &BTreeMap<u32, ProcessRecord> {
        &self.capture.processes
    }

    /// The loaded probes (for their costs and statuses).
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// The stutter thresholds in use.
    pub fn stutter_config(&self) -> DetectorConfig {
        self.capture.stutter
    }

    /// What the tracker holds so far (frames, thread names, culprits), for live verdicts.
    pub fn live_capture(&self) -> &Capture {
        &self.capture
    }

    /// Tracks the threads a process discovered by its first present already has (the kernel adds
    /// the presenting thread and threads created from then on; the scheduler probes see only
    /// tracked threads, so a game's workers would otherwise be missing from stutter evidence).
    pub fn adopt(&mut self, pid: u32) {
        if let Err(e) = self.probes.track_process(pid, self.follow_children) {
            log::debug!("pid {pid}: cannot track its threads: {e}");
        }
    }

    /// Hooks the graphics libraries `pid` maps that are not hooked yet (copies inside containers
    /// and runtimes are other files than the host's). Returns the newly hooked files.
    pub fn hook_libraries_of(&mut self, pid: u32) -> Vec<String> {
        self.probes.attach_process_libraries(pid)
    }

    /// Thresholds for processes tracked from now on.
    pub fn set_stutter_config(&mut self, stutter: DetectorConfig) {
        self.capture.stutter = stutter;
    }

    /// Lets the kernel track ignored processes' pids again once those processes are gone.
    pub fn forget_ignored(&mut self) {
        if let Err(e) = self.probes.forget_ignored(target::is_alive) {
            log::warn!("cannot prune the ignored-process map: {e}");
        }
    }

    /// Takes the frames of a still-running process out as a capture of its own (a long
    /// session's part), keeping it tracked. The last frame stays, so the next part's first frame
    /// time is measured from it (and counted once, in the next part).
    pub fn take_frames(
        &mut self,
        pid: u32,
        gpus: Vec<gpu::GpuSeries>,
        gpu_period_ns: u64,
    ) -> Option<Capture> {
        let record = self.capture.processes.get_mut(&pid)?;
        let last = *record.frames.last()?;
        let mut part = ProcessRecord {
            frames: std::mem::replace(&mut record.frames, vec![last]),
            thread_windows: std::mem::take(&mut record.thread_windows),
            // Display events go with the part too (a compositor's flips would otherwise pile up
            // for the whole session and be written again in every part).
            display: std::mem::take(&mut record.display),
            resolved_present: record.resolved_present.clone(),
            ..record.clone()
        };
        part.exited_ns = None;
        record.tracked_at_ns = last.ts_ns;
        let started_ns = part.frames.first().map_or(part.tracked_at_ns, |f| f.ts_ns);
        let mut capture = self.session_capture(
            part,
            (started_ns, last.ts_ns),
            gpus,
            gpu_period_ns,
            "session-frame-limit",
        );
        capture.notes.push(
            "one part of a long session (reports.max_session_frames): thread totals and \
             histograms count from the start of the session"
                .into(),
        );
        Some(capture)
    }

    /// A capture of one process's session: its record, the names of its threads, the culprits
    /// named so far, the GPU series given, and what the kernel holds about it.
    fn session_capture(
        &mut self,
        record: ProcessRecord,
        (started_ns, ended_ns): (u64, u64),
        gpus: Vec<gpu::GpuSeries>,
        gpu_period_ns: u64,
        end_reason: &str,
    ) -> Capture {
        let pid = record.pid;
        let tids = crate::probes::thread_ids(pid);
        let mut capture = Capture {
            target: format!("pid {pid} ({})", record.comm),
            stutter: self.capture.stutter,
            culprit_cgroups: self.capture.culprit_cgroups.clone(),
            culprit_pids: self.capture.culprit_pids.clone(),
            thread_names: self
                .capture
                .thread_names
                .iter()
                .filter(|(tid, _)| {
                    tids.contains(tid) || self.tids.get(&pid).is_some_and(|t| t.contains(tid))
                })
                .map(|(tid, name)| (*tid, name.clone()))
                .collect(),
            gpus,
            gpu_period_ns,
            started_ns,
            ended_ns,
            started_unix_s: unix_time_at(started_ns),
            end_reason: end_reason.to_string(),
            ..Default::default()
        };
        capture.processes.insert(pid, record);
        if let Err(e) = self.collect_kernel_state(&mut capture) {
            capture.notes.push(format!(
                "the kernel's per-thread state could not be read: {e}"
            ));
        }
        describe_host(&mut capture);
        capture
    }

    /// Stops tracking `pid` and forgets it; `ignore`: its presents must not track it again.
    pub fn drop_process(&mut self, pid: u32, ignore: bool) {
        self.forget(pid);
        if let Err(e) = self.probes.untrack_process(pid, ignore) {
            log::warn!("pid {pid}: cannot stop tracking it in the kernel: {e}");
        }
    }

    fn forget(&mut self, pid: u32) -> Option<ProcessRecord> {
        let record = self.capture.processes.remove(&pid);
        self.detectors.retain(|(p, _), _| *p != pid);
        self.pending_windows.retain(|(p, _, _)| *p != pid);
        self.snapshots.forget(pid);
        self.library_scans.remove(&pid);
        self.process_scans.remove(&pid);
        self.gpu_searched.remove(&pid);
        if let Some(tids) = self.tids.remove(&pid) {
            for tid in tids {
                self.capture.thread_names.remove(&tid);
            }
        }
        if self.capture.processes.is_empty() {
            // Names of other processes' tasks that kept tracked threads waiting: only needed
            // while someone is tracked.
            self.capture.culprit_cgroups.clear();
            self.capture.culprit_pids.clear();
        }
        record
    }

    /// Takes an exited (or abandoned) process out as a capture of its own, with its kernel state
    /// and the GPU series of its lifetime, and stops tracking it.
    pub fn take_process(
        &mut self,
        pid: u32,
        gpus: Vec<gpu::GpuSeries>,
        gpu_period_ns: u64,
        end_reason: &str,
    ) -> Option<Capture> {
        // Evidence for its last likely stutters, with what the snapshots hold now.
        let pending: Vec<(u32, u64, u64)> = self
            .pending_windows
            .iter()
            .copied()
            .filter(|(p, _, _)| *p == pid)
            .collect();
        self.pending_windows.retain(|(p, _, _)| *p != pid);
        for (p, from, to) in pending {
            if let Some(window) = self.snapshots.window(p, from, to) {
                if let Some(record) = self.capture.processes.get_mut(&p) {
                    record.thread_windows.insert(to, window);
                }
            }
        }
        // Out of the map now, but `forget` (which drops its thread list, needed for the
        // names) only after the capture is made.
        let record = self.capture.processes.remove(&pid)?;
        let started_ns = record
            .frames
            .first()
            .map_or(record.tracked_at_ns, |f| f.ts_ns.min(record.tracked_at_ns));
        let ended_ns = record.exited_ns.unwrap_or_else(monotonic_ns);
        let capture = self.session_capture(
            record,
            (started_ns, ended_ns),
            gpus,
            gpu_period_ns,
            end_reason,
        );
        self.forget(pid);
        if let Err(e) = self.probes.untrack_process(pid, false) {
            log::warn!("pid {pid}: cannot stop tracking it in the kernel: {e}");
        }
        Some(capture)
    }

    /// Reads what the kernel holds about the capture's processes: their threads' totals and
    /// names, histograms, preemptors, and the probes' costs and statuses.
    fn collect_kernel_state(&mut self, capture: &mut Capture) -> Result<()> {
        let pids: HashSet<u32> = capture.processes.keys().copied().collect();
        capture.threads = self
            .probes
            .threads()?
            .into_iter()
            .filter(|(_, t)| pids.contains(&t.tgid))
            .collect();
        for (tid, t) in &capture.threads {
            if !capture.thread_names.contains_key(tid) {
                if let Ok(name) =
                    std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", t.tgid))
                {
                    capture
                        .thread_names
                        .insert(*tid, name.trim_end().to_string());
                }
            }
        }
        for pid in &pids {
            if let Some(h) = self.probes.histograms(*pid)? {
                capture.histograms.insert(*pid, h);
            }
        }
        capture.preemptors = self
            .probes
            .preemptors()?
            .into_iter()
            .filter(|(k, _)| pids.contains(&k.victim_tgid))
            .collect();
        let presenters: std::collections::BTreeSet<u32> = capture
            .processes
            .values()
            .flat_map(|p| p.frames.iter().map(|f| f.tid))
            .collect();
        for tid in presenters {
            if let Some(h) = self.probes.presenter_histograms(tid)? {
                capture.presenter_histograms.insert(tid, h);
            }
        }
        capture.dropped_events = self.probes.dropped_events();
        capture.program_costs = self.probes.program_costs();
        capture.probe_statuses = self.probes.statuses().to_vec();
        capture.drm_counts = self.probes.drm_event_counts();
        if capture.drm_counts[3] > 0 {
            capture.notes.push(format!(
                "{} DRM event(s) delivered to a tracked process could not be read as this kernel's                  struct drm_pending_event was expected to be laid out: counted as flips (please                  report the kernel version)",
                capture.drm_counts[3]
            ));
        }
        capture.crtc_vblanks = self.probes.crtc_vblanks();
        for (pid, requests) in self.probes.drm_ioctl_counts(&pids) {
            if let Some(p) = capture.processes.get_mut(&pid) {
                p.drm_requests = requests;
            }
        }
        explain_sources(capture);
        if capture.dropped_events > 0 {
            capture.notes.push(format!(
                "{} kernel records were lost (ring buffer full): frame counts are lower bounds",
                capture.dropped_events
            ));
        }
        Ok(())
    }

    fn track(&mut self, pid: u32, preexisting: bool) -> Result<()> {
        self.probes
            .track_process(pid, self.follow_children)
            .with_context(|| format!("cannot track pid {pid}"))?;
        self.note_process(pid, 0, preexisting);
        Ok(())
    }

    /// Records a process the kernel or we started tracking, and hooks the libraries it has mapped.
    fn note_process(&mut self, pid: u32, ppid: u32, preexisting: bool) {
        self.note_process_named(pid, ppid, preexisting, String::new());
    }

    /// As `note_process`, with the name the kernel reported (kept if the process is already gone
    /// when /proc is read: a fast game can start and exit between two drains).
    fn note_process_named(&mut self, pid: u32, ppid: u32, preexisting: bool, comm: String) {
        let now = monotonic_ns();
        let record = self
            .capture
            .processes
            .entry(pid)
            .or_insert_with(|| ProcessRecord {
                pid,
                ppid,
                tracked_at_ns: now,
                preexisting,
                comm,
                ..Default::default()
            });
        refresh_identity(record);
        for lib in self.probes.attach_process_libraries(pid) {
            log::info!("pid {pid}: hooked {lib}");
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Present(e) => {
                let pid = e.header.tgid;
                if !self.capture.processes.contains_key(&pid) {
                    self.note_process(pid, 0, false);
                }
                if let Some(p) = self.capture.processes.get_mut(&pid) {
                    p.frames.push(Frame {
                        ts_ns: e.header.ts_ns,
                        tid: e.header.tid,
                        source: e.header.aux,
                        cpu: e.cpu,
                        delta: e.delta,
                        max_runq_wait_ns: e.max_runq_wait_ns,
                        max_blocked_ns: e.max_blocked_ns,
                        last_preemptor_tid: e.last_preemptor_tid,
                        culprit: e.culprit,
                    });
                }
                self.note_culprit(&e.culprit);
                self.watch_for_stutter(pid, e.header.aux, e.header.ts_ns);
            }
            Event::VulkanPresentResolved(e) => {
                let pid = e.header.tgid;
                log::debug!(
                    "pid {pid}: vkQueuePresentKHR resolved {} µs ago",
                    monotonic_ns().saturating_sub(e.header.ts_ns) / 1000
                );
                match self.probes.attach_resolved_present(pid, e.address) {
                    Ok(Some(file)) => {
                        log::info!(
                            "pid {pid}: hooked vkQueuePresentKHR at {:#x} in {file}, {} µs after it was resolved",
                            e.address,
                            monotonic_ns().saturating_sub(e.header.ts_ns) / 1000
                        );
                        if let Some(p) = self.capture.processes.get_mut(&pid) {
                            p.resolved_present.push(file);
                        }
                    }
                    Ok(None) => {
                        if let Some(p) = self.capture.processes.get_mut(&pid) {
                            if let Some((m, offset)) = libraries::locate(pid, e.address) {
                                let function = format!("{}+{offset:#x}", m.path);
                                if !p.resolved_present.contains(&function) {
                                    p.resolved_present.push(function);
                                }
                            }
                        }
                    }
                    Err(why) => {
                        let note = format!("pid {pid}: cannot hook its vkQueuePresentKHR: {why}");
                        log::warn!("{note}");
                        self.capture.notes.push(note);
                    }
                }
            }
            Event::ProcessTracked(e) => {
                self.note_process_named(e.header.tgid, e.header.aux, false, comm_str(&e.comm))
            }
            Event::ProcessExec(e) => {
                if let Some(p) = self.capture.processes.get_mut(&e.header.tgid) {
                    p.comm = comm_str(&e.comm);
                    refresh_identity(p);
                }
            }
            Event::ProcessExit(e) => {
                if let Some(p) = self.capture.processes.get_mut(&e.header.tgid) {
                    p.exited_ns.get_or_insert(e.header.ts_ns);
                }
            }
            Event::Display(e) => {
                if let Some(p) = self.capture.processes.get_mut(&e.header.tgid) {
                    p.display.push(DisplayRecord {
                        ts_ns: e.header.ts_ns,
                        kind: e.header.aux,
                        crtc: e.crtc,
                        seq: e.seq,
                        request_ns: e.request_ns,
                    });
                }
            }
        }
    }

    /// Remembers the cgroup and process of a task that kept a tracked thread waiting, while it
    /// still exists.
    fn note_culprit(&mut self, c: &Culprit) {
        if c.tid == 0 || c.wait_ns < CULPRIT_CGROUP_MIN_WAIT_NS {
            return;
        }
        use std::collections::hash_map::Entry;
        if let Entry::Vacant(slot) = self.capture.culprit_pids.entry(c.tid) {
            let pid = if c.tgid != 0 {
                Some(c.tgid)
            } else {
                target::tgid_of(c.tid)
            };
            if let Some(pid) = pid {
                slot.insert(pid);
            }
        }
        if let Entry::Vacant(slot) = self.capture.culprit_cgroups.entry(c.tid) {
            let cgroup = target::cgroup_of(c.tid)
                .or_else(|| (c.cgroup_id != 0).then(|| format!("cgroup id {}", c.cgroup_id)));
            if let Some(cgroup) = cgroup {
                slot.insert(cgroup);
            }
        }
    }

    /// Runs the stutter rule over frames as they arrive, so that likely stutters get the evidence
    /// of the process's other threads before the snapshots covering them are forgotten.
    fn watch_for_stutter(&mut self, pid: u32, source: u32, ts_ns: u64) {
        let config = self.capture.stutter;
        let (detector, last) = self
            .detectors
            .entry((pid, source))
            .or_insert_with(|| (Detector::new(config), 0));
        let previous = std::mem::replace(last, ts_ns);
        if previous == 0 || ts_ns <= previous {
            return;
        }
        if detector.push((ts_ns - previous) as f64 / 1e6).is_some() {
            self.pending_windows.push((pid, previous, ts_ns));
        }
    }

    /// Reads the counters of every thread of the processes that presented recently, then gives
    /// likely stutters whose end is now covered their window.
    fn snapshot_threads(&mut self) {
        let now = monotonic_ns();
        let presenting: Vec<u32> = self
            .capture
            .processes
            .values()
            .filter(|p| {
                p.exited_ns.is_none()
                    && p.frames
                        .last()
                        .is_some_and(|f| now.saturating_sub(f.ts_ns) < PRESENTING_RECENTLY_NS)
            })
            .map(|p| p.pid)
            .collect();
        for pid in presenting {
            let mut tids = self.tids.get(&pid).cloned().unwrap_or_default();
            if let Some(p) = self.capture.processes.get(&pid) {
                tids.extend(p.frames.last().map(|f| f.tid));
            }
            tids.sort_unstable();
            tids.dedup();
            tids.truncate(MAX_SNAPSHOT_THREADS);
            if let Ok(states) = self.probes.thread_states(&tids) {
                self.snapshots.push(pid, monotonic_ns(), states);
            }
        }
        self.resolve_windows(now);
    }

    /// Fills the thread windows of likely stutters that ended before `covered_until`.
    fn resolve_windows(&mut self, covered_until: u64) {
        let pending = std::mem::take(&mut self.pending_windows);
        for (pid, from, to) in pending {
            if to > covered_until {
                self.pending_windows.push((pid, from, to));
                continue;
            }
            let Some(window) = self.snapshots.window(pid, from, to) else {
                continue;
            };
            // Name the cgroups of whoever preempted the game's threads, while they still exist.
            for t in &window.threads {
                if let Some(c) = &t.waited_behind {
                    self.note_culprit(c);
                }
            }
            if let Some(p) = self.capture.processes.get_mut(&pid) {
                p.thread_windows.insert(to, window);
            }
        }
    }

    fn drain(&mut self) {
        let mut events = Vec::new();
        self.probes.drain_events(|e| events.push(e));
        for e in events {
            self.handle(e);
        }
    }

    /// Hooks graphics libraries newly mapped by processes that have not presented yet. Run on every
    /// drain: a game maps its Vulkan loader at startup and resolves vkQueuePresentKHR soon after,
    /// so a copy outside the host's library path (container, Steam runtime) must be hooked fast.
    fn scan_new_libraries(&mut self) {
        let young_since = monotonic_ns().saturating_sub(YOUNG_PROCESS.as_nanos() as u64);
        let pids: Vec<u32> = self
            .capture
            .processes
            .values()
            .filter(|p| {
                p.exited_ns.is_none() && p.frames.is_empty() && p.tracked_at_ns >= young_since
            })
            .map(|p| p.pid)
            .collect();
        let now = monotonic_ns();
        for pid in pids {
            self.scan_libraries(pid, now, 0);
        }
    }

    /// Hooks the graphics libraries `pid` newly mapped, unless its map was read less than
    /// `min_interval_ns` ago or too recently for its size (see `SCAN_COST_SHARE`).
    fn scan_libraries(&mut self, pid: u32, now: u64, min_interval_ns: u64) {
        if !LastScan::due(self.library_scans.get(&pid), now, min_interval_ns) {
            return;
        }
        let started = Instant::now();
        for lib in self.probes.attach_process_libraries(pid) {
            log::info!("pid {pid}: hooked {lib}");
        }
        self.library_scans
            .insert(pid, LastScan::since(now, started));
    }

    /// Hooks newly mapped libraries, remembers thread names, and notices exits.
    fn scan(&mut self) {
        let now = monotonic_ns();
        let young_since = now.saturating_sub(YOUNG_PROCESS.as_nanos() as u64);
        let pids: Vec<u32> = self
            .capture
            .processes
            .values()
            .filter(|p| p.exited_ns.is_none())
            .map(|p| p.pid)
            .collect();
        for pid in pids {
            // Exits also come from the kernel (ProcessExit): this is the fallback, and can wait
            // for a very large process.
            if !LastScan::due(self.process_scans.get(&pid), now, 0) {
                continue;
            }
            let started = Instant::now();
            if !target::is_alive(pid) {
                if let Some(p) = self.capture.processes.get_mut(&pid) {
                    p.exited_ns = Some(now);
                }
                self.tids.remove(&pid);
                self.snapshots.forget(pid);
                continue;
            }
            self.find_gpu(pid);
            let tids = crate::probes::thread_ids(pid);
            for &tid in &tids {
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    self.capture.thread_names.entry(tid)
                {
                    if let Ok(name) =
                        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                    {
                        slot.insert(name.trim_end().to_string());
                    }
                }
            }
            self.tids.insert(pid, tids);
            self.process_scans
                .insert(pid, LastScan::since(now, started));
            let young = self
                .capture
                .processes
                .get(&pid)
                .is_some_and(|p| p.tracked_at_ns >= young_since);
            let min_interval = if young { 0 } else { SETTLED_LIBRARY_SCAN_NS };
            self.scan_libraries(pid, now, min_interval);
        }
    }

    /// Which GPU a presenting process renders on: the one whose device node it has open.
    fn find_gpu(&mut self, pid: u32) {
        let Some(record) = self.capture.processes.get_mut(&pid) else {
            return;
        };
        if record.frames.is_empty() || self.gpu_nodes.is_empty() || !self.gpu_searched.insert(pid) {
            return;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return;
        };
        for fd in fds.filter_map(|e| e.ok()) {
            let Some((major, minor)) = gpu::char_device(&fd.path()) else {
                continue;
            };
            if let Some((_, _, pci)) = self
                .gpu_nodes
                .iter()
                .find(|(ma, mi, _)| *ma == major && *mi == minor)
            {
                record.gpu = Some(pci.clone());
                return;
            }
        }
    }

    fn all_exited(&self) -> bool {
        !self.capture.processes.is_empty()
            && self
                .capture
                .processes
                .values()
                .all(|p| p.exited_ns.is_some())
    }
}

/// Re-reads a process's name, binary, command line and parent from /proc.
fn refresh_identity(record: &mut ProcessRecord) {
    let Ok(proc) = procfs::process::Process::new(record.pid as i32) else {
        return;
    };
    if let Ok(stat) = proc.stat() {
        record.comm = stat.comm;
        record.ppid = stat.ppid as u32;
    }
    if let Ok(exe) = proc.exe() {
        record.exe = exe.display().to_string();
    }
    if let Ok(cmdline) = proc.cmdline() {
        record.cmdline = cmdline;
    }
}

/// The agent's CPU time (user + system, seconds) and peak resident memory (bytes) so far.
pub fn cpu_time_and_peak_rss() -> (f64, u64) {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        tv(usage.ru_utime) + tv(usage.ru_stime),
        usage.ru_maxrss as u64 * 1024,
    )
}

/// Starts the capture's clock (`started_ns` and its wall-clock time): now.
fn start_clock(capture: &mut Capture) -> Instant {
    capture.started_ns = monotonic_ns();
    capture.started_unix_s = unix_time_at(capture.started_ns);
    Instant::now()
}

/// Records until the duration, the targets' exit, or a signal.
pub async fn record(options: RecordOptions) -> Result<Outcome> {
    // Validate the target before loading anything.
    if let TargetSpec::Pid(pid) = options.target {
        target::check_pid(pid)?;
    }
    if let TargetSpec::Command(argv) = &options.target {
        target::resolve_program(&argv[0])?;
    }
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    let mut probes = Probes::load(LoadOptions {
        mount_tracefs: options.mount_tracefs,
        require_core: true,
        discover_presenters: false,
        kernel_hooks: options.kernel_hooks,
    })?;
    probes.declare_gpu_ioctl_types(&options.gpu_ioctl_types)?;
    let (cpu_at_start, _) = cpu_time_and_peak_rss();
    // GPUs are found and sampled from before the first frame, on their own thread.
    let discovery = gpu::discover(&options.gpu_roots, &gpu::Warnings::default());
    let mut session = Tracker::new(
        probes,
        options.stutter,
        options.follow_children,
        &discovery.gpus,
    );
    session.capture.target = options.target.to_string();
    yield_to_games();

    let sampler = options
        .gpu_sampling
        .map(|config| gpu::Sampler::start(&discovery, config));

    let mut launched: Option<Launched> = None;
    let mut started: Option<Instant> = None;
    match &options.target {
        TargetSpec::Pid(pid) => {
            session.track(*pid, true)?;
            for child in target::descendants(*pid) {
                // A child that exits meanwhile is simply not tracked.
                let _ = session.track(child, true);
            }
        }
        TargetSpec::Comm(name) => {
            if name.len() > 15 {
                session.capture.notes.push(format!(
                    "process names are matched on their first 15 bytes (the kernel's limit): {:?}",
                    String::from_utf8_lossy(&name.as_bytes()[..15])
                ));
            }
            session.probes.watch_comm(name, options.follow_children)?;
            for pid in target::processes_named(name) {
                let _ = session.track(pid, true);
            }
        }
        TargetSpec::All => {
            // New processes are children of tracked ones (kthreadd's included) and are followed.
            let mut untracked = 0;
            for pid in target::all_processes() {
                if let Err(e) = session.track(pid, true) {
                    // One that exited meanwhile is no loss; a full map is worth saying.
                    if target::is_alive(pid) {
                        untracked += 1;
                        log::debug!("{e:#}");
                    }
                }
            }
            if untracked > 0 {
                session.capture.notes.push(format!(
                    "{untracked} running processes could not be tracked (the kernel maps are full)"
                ));
            }
        }
        TargetSpec::Command(argv) => {
            let mut child = Launched::spawn(argv)?;
            session.track(child.pid, false)?;
            // The capture's clock starts before the command runs: its first frame is after it.
            started = Some(start_clock(&mut session.capture));
            child.release();
            launched = Some(child);
        }
    }
    // A running target is tracked from here: no frame of it comes before the capture's start.
    if started.is_none() && !session.capture.processes.is_empty() {
        started = Some(start_clock(&mut session.capture));
    }

    // Everything is attached and the targets are tracked: a frame presented from now on is
    // captured. Said at info level, so that a script (or a test) can start its workload then.
    log::info!("probes attached, capturing {}", options.target);
    let waiting_since = Instant::now();
    let mut ticker = tokio::time::interval(DRAIN_INTERVAL);
    // A duplicate of the ring buffer's descriptor (same file description), owned by the poller.
    // SAFETY: the borrowed descriptor is open for as long as `session.probes` lives.
    let events_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(session.probes.events_fd()) }
        .try_clone_to_owned()
        .context("cannot duplicate the eBPF ring buffer descriptor")?;
    // SAFETY: `events_fd` is owned by the AsyncFd, open and unchanged for its whole life.
    let wakeups = unsafe { AsyncFd::register_with_interest(events_fd, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("cannot poll the eBPF ring buffer")?;
    let mut progress = options
        .progress
        .then(|| progress::Progress::new(options.stutter));
    let end_reason: &str = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            ready = wakeups.readable() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
            }
            _ = sigint.recv() => break "signal",
            _ = sigterm.recv() => break "signal",
        }
        session.step();
        if let Some(p) = progress.as_mut() {
            p.update(&session, started.map(|t| t.elapsed()));
        }
        if let Some(child) = launched.as_mut() {
            if child.try_wait().is_some() {
                let now = monotonic_ns();
                if let Some(p) = session.capture.processes.get_mut(&child.pid) {
                    p.exited_ns.get_or_insert(now);
                }
            }
        }
        if started.is_none() && !session.capture.processes.is_empty() {
            started = Some(start_clock(&mut session.capture));
        }
        match started {
            None => {
                if let Some(timeout) = options.wait_timeout {
                    if waiting_since.elapsed() >= timeout {
                        if let TargetSpec::Comm(name) = &options.target {
                            bail!(
                                "no process named {name:?} appeared within {} s: start it, check the \
                                 name with `ps -o comm`, or raise --wait-timeout",
                                timeout.as_secs_f64()
                            );
                        }
                        bail!(
                            "the target did not appear within {} s",
                            timeout.as_secs_f64()
                        );
                    }
                }
            }
            Some(t) => {
                if options.duration.is_some_and(|d| t.elapsed() >= d) {
                    break "duration";
                }
                if session.all_exited() {
                    break "targets-exited";
                }
            }
        }
    };
    if let Some(p) = &progress {
        p.finish();
    }
    // Let in-flight records land, then read everything once more.
    tokio::time::sleep(DRAIN_INTERVAL).await;
    session.drain();
    session.snapshot_threads();
    session.resolve_windows(u64::MAX);
    session.scan();

    let mut capture = std::mem::take(&mut session.capture);
    match sampler {
        Some(sampler) => {
            capture.gpu_period_ns = sampler.config().period.as_nanos() as u64;
            capture.gpus = sampler.finish();
        }
        None => {
            capture.gpus = discovery
                .gpus
                .iter()
                .map(|g| gpu::GpuSeries {
                    info: g.clone(),
                    not_sampled: Some("GPU sampling was off (--gpu-sample-hz 0)".into()),
                    samples: Vec::new(),
                    read_ns: 0,
                })
                .collect();
        }
    }
    capture.ended_ns = monotonic_ns();
    if capture.started_ns == 0 {
        capture.started_ns = capture.ended_ns;
    }
    capture.end_reason = end_reason.to_string();
    session.collect_kernel_state(&mut capture)?;

    let exit_code = match launched.as_mut() {
        Some(child) => match child.try_wait() {
            Some(code) => code,
            None => {
                child.stop(Duration::from_secs(2));
                capture.notes.push(format!(
                    "the launched command (pid {}) was still running when the capture ended and was stopped",
                    child.pid
                ));
                0
            }
        },
        None => 0,
    };
    // The programs were loaded for this capture, so their counts are its own (a daemon's span
    // many sessions: there the counts are on /metrics, not in each session's notes).
    if let Some(note) = skipped_runs_note(&capture.program_costs) {
        capture.notes.push(note);
    }
    let (cpu_at_end, peak_rss) = cpu_time_and_peak_rss();
    capture.agent_cpu_s = cpu_at_end - cpu_at_start;
    capture.agent_peak_rss_bytes = peak_rss;
    describe_host(&mut capture);
    Ok(Outcome { capture, exit_code })
}

/// A note when the kernel skipped runs of the agent's programs (their recursion guard: another
/// tracing program was running on that CPU), so some events, of tracked tasks or others, were
/// never seen: the evidence of frames around them may be incomplete.
fn skipped_runs_note(costs: &[ProgramCost]) -> Option<String> {
    let skipped: Vec<String> = costs
        .iter()
        .filter(|c| c.recursion_misses > 0)
        .map(|c| format!("{} {}", c.program, c.recursion_misses))
        .collect();
    (!skipped.is_empty()).then(|| {
        format!(
            "the kernel skipped runs of these probes while another tracing program ran on the same \
             CPU ({}): events of any task, tracked or not; the evidence of a frame around one may \
             be incomplete",
            skipped.join(", ")
        )
    })
}

/// Lowers the agent's priority (AGENT_NICE), so it does not cause the stutters it measures.
pub fn yield_to_games() {
    // SAFETY: setpriority on this process; failure only leaves the priority as it was.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, AGENT_NICE) } != 0 {
        log::debug!(
            "cannot lower the agent's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Fills in the host's kernel, name and CPU count.
fn describe_host(capture: &mut Capture) {
    let (kernel, hostname) = uname();
    capture.kernel = kernel;
    capture.hostname = hostname;
    capture.cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
}

/// Says, for processes whose frames could not come from the best source, why.
fn explain_sources(capture: &mut Capture) {
    let mut notes = Vec::new();
    for p in capture.processes.values() {
        let has = |s: u32| p.frames.iter().any(|f| f.source == s);
        let uses_vulkan = !p.resolved_present.is_empty()
            || libraries::process_libraries(p.pid)
                .iter()
                .any(|l| l.kind.name == "vulkan");
        if p.preexisting && uses_vulkan && !has(present_source::VULKAN_RESOLVED) {
            notes.push(format!(
                "pid {} ({}) was already running when tracking began and loads Vulkan: its \
                 vkQueuePresentKHR pointer was resolved before nvbind could see it, so its frames \
                 come from {}; start it under the agent (`record -- COMMAND` or `--comm NAME`) to \
                 capture every Vulkan present",
                p.pid,
                p.comm,
                if p.frames.is_empty() {
                    "no source".to_string()
                } else {
                    let mut sources: Vec<&str> = p
                        .frames
                        .iter()
                        .map(|f| present_source::name(f.source))
                        .collect();
                    sources.dedup();
                    sources.join(", ")
                }
            ));
        }
    }
    capture.notes.extend(notes);
}

/// (kernel release, hostname).
fn uname() -> (String, String) {
    // SAFETY: zeroed utsname is a valid out-parameter.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return (String::new(), String::new());
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (text(&uts.release), text(&uts.nodename))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(program: &str, recursion_misses: u64) -> ProgramCost {
        ProgramCost {
            program: program.into(),
            run_count: 10,
            run_time_ns: 1_000,
            mean_ns_per_run: 100.0,
            recursion_misses,
        }
    }

    #[test]
    fn skipped_runs_are_named_with_their_counts() {
        assert_eq!(skipped_runs_note(&[cost("nvbind_sched_switch", 0)]), None);
        let note = skipped_runs_note(&[
            cost("nvbind_sched_switch", 0),
            cost("nvbind_sched_wakeup", 2),
            cost("nvbind_present", 1),
        ])
        .expect("a note");
        assert!(
            note.contains("(nvbind_sched_wakeup 2, nvbind_present 1)"),
            "{note}"
        );
        assert!(!note.contains("nvbind_sched_switch"), "{note}");
    }
}
