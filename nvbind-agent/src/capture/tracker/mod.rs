//! [`Tracker`]: the tracked processes, their frames and the evidence around their stutters, kept
//! up to date from the kernel's records. `record` runs one for a bounded capture; the daemon runs
//! one for ever and takes each process out when it exits.

mod compositor;
mod scan;
mod sessions;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Instant,
};

use anyhow::{Context, Result};
use nvbind_common::{display_kind, process_tracked, Culprit};
use procfs::FromRead;

use self::scan::{LastScan, SCAN_INTERVAL};
use super::snapshots::ThreadSnapshots;
use crate::{
    clock::monotonic_ns,
    frames::{Capture, CompileRecord, CulpritProcess, DisplayRecord, Frame, ProcessRecord},
    gpu,
    identity::{printable, printable_within, read_bounded, ProcessIdentity},
    probes::{comm_str, libraries, Event, ExitedThread, Probes},
    stutter::{Detector, DetectorConfig},
    target,
};

/// Processes that presented within this long get their threads' counters read on every drain
/// (the evidence of stutters beyond the presenting thread).
const PRESENTING_RECENTLY_NS: u64 = 2_000_000_000;
/// Most threads of one process whose counters are read per drain.
const MAX_SNAPSHOT_THREADS: usize = 256;
/// Names of a process's exited threads kept (besides its 16 busiest): a stutter's evidence can
/// name a thread that exited since, but a game that churns through threads must not grow the
/// names without bound.
const EXITED_NAMES_KEPT: usize = 1024;
/// How long after its exit a thread's entry is waited for to become final (its last switch):
/// its exit path can sleep on locks other exiting threads hold, but not for this long.
const EXIT_FINAL_WAIT_NS: u64 = 10_000_000_000;
/// How often culprits no held frame can name are forgotten.
const CULPRIT_PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Run-queue waits shorter than this are not worth naming a culprit's cgroup for.
const CULPRIT_CGROUP_MIN_WAIT_NS: u64 = 1_000_000;
/// A culprit process's /proc entries are read again at most this often: the kernel naming it
/// otherwise than /proc did means it exec'd, but a process that renames itself (`prctl`) in a
/// loop must not make the agent read /proc at every present.
const CULPRIT_REREAD_NS: u64 = 1_000_000_000;
/// How much of a culprit's /proc/PID/stat is read (a few hundred bytes: numbers and a name the
/// kernel cuts to 15 bytes).
const CULPRIT_STAT_MAX_BYTES: u64 = 4096;
/// How much of a culprit's command line is read and kept: enough to tell a shell loop or a build
/// by it, while any process can make its own as large as it likes.
const CULPRIT_CMDLINE_MAX_BYTES: usize = 4096;

/// Tracked processes, their frames and the evidence around their stutters, kept up to date by
/// [`Tracker::step`]. `record` runs one for a bounded capture; the daemon runs one for ever and
/// takes each process out with [`Tracker::take_process`] when it exits.
pub struct Tracker {
    pub(in crate::capture) probes: Probes,
    pub(in crate::capture) capture: Capture,
    follow_children: bool,
    /// Recent counters of the threads of processes that present.
    snapshots: ThreadSnapshots,
    /// A stutter detector per (pid, present source), fed as frames arrive, with the last present.
    detectors: HashMap<(u32, u32), (Detector, u64)>,
    /// Likely stutters waiting for a snapshot after their end: (pid, previous present, present).
    pending_windows: Vec<(u32, u64, u64)>,
    /// Threads of each tracked process, as of the last scan.
    tids: HashMap<u32, Vec<u32>>,
    /// The process each name in `capture.thread_names` was read for, by tid: a report keeps its
    /// own process's names (threads that exited between scans included), and a tid the kernel
    /// reuses in another process gets its new name.
    name_owners: HashMap<u32, u32>,
    /// When each process's memory map was last searched for graphics libraries.
    library_scans: HashMap<u32, LastScan>,
    /// When each process's liveness and threads were last read.
    process_scans: HashMap<u32, LastScan>,
    /// GPU device nodes (major, minor) and the PCI address of the GPU each belongs to.
    gpu_nodes: Vec<(u32, u32, String)>,
    /// Processes whose open files were already searched for a GPU node (once, after their first
    /// frame: a process that presents has its GPU open by then).
    gpu_searched: HashSet<u32>,
    /// When each culprit process's /proc entries were last read (monotonic ns), by pid.
    culprit_reads: HashMap<u32, u64>,
    /// When each culprit task (by tid) and each process blamed (by pid) was last noted: what no
    /// frame still held can name is forgotten (`prune_culprits`).
    culprit_seen: HashMap<u32, u64>,
    culprit_pid_seen: HashMap<u32, u64>,
    last_culprit_prune: Instant,
    /// Threads of tracked processes that exited, whose kernel entries are to be taken out once
    /// final: (tid, tgid, exit time).
    exited_threads: Vec<(u32, u32, u64)>,
    /// The kernel's count of exited-thread records it could not send, when last read.
    thread_exits_lost: u64,
    /// Each process's exited threads whose names are kept, oldest first: at most
    /// `EXITED_NAMES_KEPT` (besides its busiest), however many threads it goes through.
    exited_names: HashMap<u32, std::collections::VecDeque<u32>>,
    last_scan: Instant,
    /// The most frames per second one user's processes may have stored (0: no cap).
    frame_rate_cap: u32,
    /// The kernel's count of lost records when the current drain began.
    dropped_before_drain: u64,
    /// Processes the last scan found gone, and when: ended after the next drain.
    found_gone: Vec<(u32, u64)>,
}

impl Tracker {
    /// A tracker over loaded probes. `gpus` are the GPUs found (for each process's render GPU).
    pub fn new(
        probes: Probes,
        stutter: DetectorConfig,
        follow_children: bool,
        gpus: &[gpu::GpuInfo],
    ) -> Tracker {
        let mut tracker = Tracker {
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
            name_owners: HashMap::new(),
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
            culprit_reads: HashMap::new(),
            culprit_seen: HashMap::new(),
            culprit_pid_seen: HashMap::new(),
            last_culprit_prune: Instant::now(),
            exited_threads: Vec::new(),
            thread_exits_lost: 0,
            exited_names: HashMap::new(),
            last_scan: Instant::now(),
            frame_rate_cap: 0,
            dropped_before_drain: 0,
            found_gone: Vec::new(),
        };
        tracker.set_frame_rate_cap(crate::probes::DEFAULT_MAX_FPS_PER_USER);
        tracker
    }

    /// Sets the most frames per second one user's processes may have stored (0: none); the
    /// rest are counted, not stored. A cap the kernel could not be given is logged, and the
    /// previous one stays.
    pub fn set_frame_rate_cap(&mut self, fps: u32) {
        match self.probes.set_frame_rate_cap(fps) {
            Ok(()) => self.frame_rate_cap = fps,
            Err(e) => log::warn!("the frame-rate cap per user could not be set: {e}"),
        }
    }

    /// One round: reads the kernel's records, snapshots the threads of presenting processes,
    /// hooks new graphics libraries, and every SCAN_INTERVAL checks tracked processes.
    pub fn step(&mut self) {
        self.drain();
        self.end_processes_found_gone();
        self.take_exited_threads();
        self.snapshot_threads();
        self.scan_new_libraries();
        self.probes.tick_cost_windows();
        if self.last_scan.elapsed() >= SCAN_INTERVAL {
            self.last_scan = Instant::now();
            self.scan();
        }
        if self.last_culprit_prune.elapsed() >= CULPRIT_PRUNE_INTERVAL {
            self.last_culprit_prune = Instant::now();
            self.prune_culprits();
        }
    }

    /// Forgets the culprits (their cgroups, pids and /proc text) last noted before the oldest
    /// frame any tracked process still holds: no report can name them any more. A daemon whose
    /// games follow one another for weeks, never leaving it without one, would otherwise keep
    /// every task that ever kept a game waiting.
    pub(in crate::capture) fn prune_culprits(&mut self) {
        let Some(oldest) = self
            .capture
            .processes
            .values()
            .map(|p| {
                p.frames
                    .first()
                    .map_or(p.tracked_at_ns, |f| f.ts_ns.min(p.tracked_at_ns))
            })
            .min()
        else {
            return;
        };
        let capture = &mut self.capture;
        self.culprit_seen.retain(|tid, at| {
            let keep = *at >= oldest;
            if !keep {
                capture.culprit_cgroups.remove(tid);
                capture.culprit_pids.remove(tid);
            }
            keep
        });
        self.culprit_pid_seen.retain(|pid, at| {
            let keep = *at >= oldest;
            if !keep {
                capture.culprit_processes.remove(pid);
            }
            keep
        });
        let pids = &self.culprit_pid_seen;
        self.culprit_reads.retain(|pid, _| pids.contains_key(pid));
    }

    /// The processes tracked so far, by pid.
    pub fn processes(&self) -> &BTreeMap<u32, ProcessRecord> {
        &self.capture.processes
    }

    /// Ends the processes the last scan found gone, now that a drain after that scan has brought
    /// in every record they made (they made them before they died). Ended at the scan itself, a
    /// game that presented and exited between a drain and the scan was taken out without its
    /// last frames, which came in after its session was written.
    pub(in crate::capture) fn end_processes_found_gone(&mut self) {
        for (pid, at) in std::mem::take(&mut self.found_gone) {
            if let Some(p) = self.capture.processes.get_mut(&pid) {
                p.exited_ns.get_or_insert(at);
            }
            self.snapshots.forget(pid);
        }
    }

    /// The loaded probes (for their costs and statuses).
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// The loaded probes, to change what they are told (the daemon's per-user cap).
    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
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
        // Their names now, while they live: a short-lived process may be gone by the next scan.
        self.learn_thread_names(pid, &crate::probes::thread_ids(pid));
    }

    /// Reads the names of `pid`'s threads `tids` not named yet (a thread that has exited is
    /// skipped: its name is gone with it).
    pub(in crate::capture) fn learn_thread_names(&mut self, pid: u32, tids: &[u32]) {
        for &tid in tids {
            let known = self.name_owners.get(&tid) == Some(&pid)
                && self.capture.thread_names.contains_key(&tid);
            if known {
                continue;
            }
            if let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) {
                self.capture
                    .thread_names
                    .insert(tid, name.trim_end().to_string());
                self.name_owners.insert(tid, pid);
            }
        }
    }

    /// Whether `tid`'s name was read for process `pid`.
    pub(in crate::capture) fn names_thread_of(&self, tid: u32, pid: u32) -> bool {
        self.name_owners.get(&tid) == Some(&pid)
    }

    /// Forgets the names read for `pid`'s threads.
    pub(in crate::capture) fn forget_thread_names(&mut self, pid: u32) {
        let names = &mut self.capture.thread_names;
        self.name_owners.retain(|tid, owner| {
            let mine = *owner == pid;
            if mine {
                names.remove(tid);
            }
            !mine
        });
    }

    /// Hooks the graphics libraries `pid` maps that are not hooked yet (copies inside containers
    /// and runtimes are other files than the host's). Returns the newly hooked files.
    pub fn hook_libraries_of(&mut self, pid: u32) -> Vec<String> {
        self.probes.attach_process_libraries(pid)
    }

    /// Releases the hooks of library copies that no process in `alive` (every pid now) maps.
    pub fn release_unmapped_copies(&mut self, alive: &HashSet<u32>) {
        self.probes.release_unmapped_copies(alive);
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

    pub(in crate::capture) fn track(&mut self, pid: u32, preexisting: bool) -> Result<()> {
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
        // Records lost from before this drain on count as the new process's: its own first
        // records may be among them (a new process is known from its first record).
        let dropped_now = self.dropped_before_drain;
        let compiles_not_sent_now = self.probes.compiles_not_sent();
        let record = self
            .capture
            .processes
            .entry(pid)
            .or_insert_with(|| ProcessRecord {
                pid,
                ppid,
                tracked_at_ns: now,
                dropped_events_at_start: dropped_now,
                compiles_not_sent_at_start: compiles_not_sent_now,
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
                    if p.frames.is_empty() {
                        // A program may rename itself after exec (Wine names the process after
                        // the Windows program and rewrites its command line): by its first frame
                        // it is who it will be.
                        refresh_identity(p);
                    }
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
                        target: e.target,
                        end_ns: e.end_ns,
                        commit_ns: e.commit_ns,
                        screen: Default::default(),
                    });
                }
                self.note_culprit(&e.culprit);
                self.watch_for_stutter(pid, e.header.aux, e.header.ts_ns);
            }
            Event::VulkanPresentResolved(e) if e.header.aux != 0 => {
                let pid = e.header.tgid;
                let function = nvbind_common::compile_call::name(e.header.aux);
                match self
                    .probes
                    .attach_resolved_compile(pid, e.address, e.header.aux)
                {
                    Ok(Some(file)) => {
                        log::info!("pid {pid}: hooked {function} at {:#x} in {file}", e.address)
                    }
                    Ok(None) => {}
                    Err(why) => {
                        // Said once per process and function, however often it asks, and
                        // bounded in all (any process can ask under many pids).
                        if self.capture.note_refusal(pid, function, &why) {
                            log::warn!("pid {pid}: cannot hook its {function}: {why}");
                        }
                    }
                }
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
            Event::ProcessTracked(e) if e.header.aux == process_tracked::RENAMED => {
                // It took a watched name while running: the kernel tracks it from now, and its
                // threads that already exist are adopted here.
                let pid = e.header.tgid;
                if let Err(why) = self.probes.track_process(pid, self.follow_children) {
                    log::warn!("pid {pid}: cannot adopt its threads: {why}");
                }
                self.note_process_named(pid, 0, false, comm_str(&e.comm))
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
            Event::ProcessRenamed(e) => {
                if let Some(p) = self.capture.processes.get_mut(&e.header.tgid) {
                    refresh_identity(p);
                }
            }
            Event::ProcessExit(e) => {
                if let Some(p) = self.capture.processes.get_mut(&e.header.tgid) {
                    p.exited_ns.get_or_insert(e.header.ts_ns);
                }
            }

            Event::Compile(e) => {
                if let Some(p) = self.capture.processes.get_mut(&e.header.tgid) {
                    p.keep_compile(CompileRecord {
                        tid: e.header.tid,
                        call: e.header.aux,
                        start_ns: e.start_ns,
                        end_ns: e.header.ts_ns,
                        pipelines: e.pipelines,
                        cache_given: e.cache_given != 0,
                        result: e.result,
                        feedback_pipelines: e.feedback_pipelines,
                        cache_hits: e.cache_hits,
                    });
                }
            }
            Event::Display(e) => {
                let record = DisplayRecord {
                    ts_ns: e.header.ts_ns,
                    kind: e.header.aux,
                    crtc: e.crtc,
                    seq: e.seq,
                    request_ns: e.request_ns,
                    woke_ns: e.woke_ns,
                    vblank_ns: e.vblank_ns,
                };
                if record.kind == display_kind::FLIP {
                    self.join_compositor_flip(e.header.tgid, &record);
                }
                if let Some(p) = self.capture.processes.get_mut(&e.header.tgid) {
                    p.display.push(record);
                }
            }
        }
    }

    /// Remembers the cgroup and process of a task that kept a tracked thread waiting, and what
    /// the process blamed is (name, command line, parent, cgroup), while they still exist: a
    /// shell loop's children and a build's compilers are gone by the end of the capture.
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
        let now = monotonic_ns();
        self.culprit_seen.insert(c.tid, now);
        let pid = match c.pid {
            0 => self.capture.culprit_pids.get(&c.tid).copied(),
            pid => Some(pid),
        };
        let Some(pid) = pid else {
            return;
        };
        self.culprit_pid_seen.insert(pid, now);
        let due = culprit_read_due(
            self.capture.culprit_processes.get(&pid),
            &printable(&comm_str(&c.process_comm)),
            self.culprit_reads.get(&pid).copied(),
            now,
        );
        if due {
            self.culprit_reads.insert(pid, now);
            if let Some(p) = read_culprit_process(pid) {
                self.capture.culprit_processes.insert(pid, p);
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
    pub(in crate::capture) fn snapshot_threads(&mut self) {
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

    /// Fills the thread windows of likely stutters that ended before `covered_until`
    /// (`u64::MAX`: the capture ends, and every window is filled with what is kept).
    pub(in crate::capture) fn resolve_windows(&mut self, covered_until: u64) {
        let pending = std::mem::take(&mut self.pending_windows);
        for (pid, from, to) in pending {
            // A drain too soon after the last one keeps no snapshot: the window waits for one
            // taken after its end, rather than end early and miss the end of the stutter.
            let covered = covered_until == u64::MAX
                || self
                    .snapshots
                    .newest(pid)
                    .is_some_and(|newest| newest >= to);
            if to > covered_until || !covered {
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
                p.keep_window(to, window);
            }
        }
    }

    /// Takes the kernel entries of exited threads out of its table once their last switch has
    /// made them final, folding their counters into their process's record. One that has not
    /// made it yet is asked for again at the next step (for a while: an entry whose thread never
    /// got there goes when its process is untracked).
    pub(in crate::capture) fn take_exited_threads(&mut self) {
        let mut exits = Vec::new();
        self.probes.drain_thread_exits(|e| exits.push(e));
        for e in exits {
            let (tid, pid) = (e.tid, e.tgid);
            if !self.capture.processes.contains_key(&pid) {
                continue;
            }
            // Its name as it ended: a thread that lived between two scans has no other.
            if !self.names_thread_of(tid, pid) {
                self.capture.thread_names.insert(tid, comm_str(&e.comm));
                self.name_owners.insert(tid, pid);
            }
            self.exited_threads.push((tid, pid, e.ts_ns));
        }
        // Records the kernel could not send: find those threads in its table instead (a walk of
        // the whole table, only when records were lost).
        let lost = self.probes.thread_exits_lost();
        if lost != self.thread_exits_lost {
            self.thread_exits_lost = lost;
            let pids: HashSet<u32> = self.capture.processes.keys().copied().collect();
            match self.probes.exited_threads_of(&pids) {
                Ok(found) => {
                    let now = monotonic_ns();
                    let pending: HashSet<u32> =
                        self.exited_threads.iter().map(|(tid, _, _)| *tid).collect();
                    self.exited_threads.extend(
                        found
                            .into_iter()
                            .filter(|(tid, _)| !pending.contains(tid))
                            .map(|(tid, pid)| (tid, pid, now)),
                    );
                }
                Err(e) => log::debug!("cannot read the kernel's thread table: {e}"),
            }
        }
        if self.exited_threads.is_empty() {
            return;
        }
        let now = monotonic_ns();
        let pending = std::mem::take(&mut self.exited_threads);
        for (tid, pid, exited_ns) in pending {
            if !self.capture.processes.contains_key(&pid) {
                continue;
            }
            match self.probes.take_exited_thread(tid, pid) {
                Ok(ExitedThread::Taken(state)) => {
                    if let Some(p) = self.capture.processes.get_mut(&pid) {
                        p.departed.add(tid, *state);
                    }
                    self.keep_exited_name(pid, tid);
                }
                Ok(ExitedThread::NotYet) if now.saturating_sub(exited_ns) < EXIT_FINAL_WAIT_NS => {
                    self.exited_threads.push((tid, pid, exited_ns));
                }
                Ok(_) => {}
                Err(e) => log::debug!("tid {tid} of pid {pid}: cannot take its entry: {e}"),
            }
        }
    }

    /// Keeps the name of `pid`'s exited thread `tid` among the last `EXITED_NAMES_KEPT`; the
    /// oldest one's goes unless it is among the process's busiest departed threads (the report
    /// lists those).
    fn keep_exited_name(&mut self, pid: u32, tid: u32) {
        let kept = self.exited_names.entry(pid).or_default();
        kept.push_back(tid);
        if kept.len() <= EXITED_NAMES_KEPT {
            return;
        }
        let Some(oldest) = kept.pop_front() else {
            return;
        };
        let busiest = self
            .capture
            .processes
            .get(&pid)
            .is_some_and(|p| p.departed.busiest.iter().any(|(t, _)| *t == oldest));
        if !busiest && self.name_owners.get(&oldest) == Some(&pid) {
            self.name_owners.remove(&oldest);
            self.capture.thread_names.remove(&oldest);
        }
    }

    pub(in crate::capture) fn drain(&mut self) {
        self.dropped_before_drain = self.probes.dropped_events();
        let mut events = Vec::new();
        self.probes.drain_events(|e| events.push(e));
        for e in events {
            self.handle(e);
        }
    }
}

/// `PF_KTHREAD` in /proc/PID/stat's flags: a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// Whether a culprit process's /proc entries are to be read now (`now`, monotonic ns): it was
/// never read (`known` is `None`: first seen, or gone at the last try), or the kernel names it
/// `named`, otherwise than /proc did (it exec'd since); and not within `CULPRIT_REREAD_NS` of the
/// last read (`last_read`).
fn culprit_read_due(
    known: Option<&CulpritProcess>,
    named: &str,
    last_read: Option<u64>,
    now: u64,
) -> bool {
    let stale = known.is_none_or(|p| !named.is_empty() && p.comm != named);
    stale && last_read.is_none_or(|at| now.saturating_sub(at) >= CULPRIT_REREAD_NS)
}

/// What /proc says of a process blamed for a wait; `None` once it is gone. Any process on the
/// host can be one, so everything is read bounded and kept printable: it goes into reports and
/// the verdicts' sentences.
fn read_culprit_process(pid: u32) -> Option<CulpritProcess> {
    let stat = read_bounded(&format!("/proc/{pid}/stat"), CULPRIT_STAT_MAX_BYTES)?;
    let stat = procfs::process::Stat::from_read(stat.as_slice()).ok()?;
    let kernel_thread = stat.flags & PF_KTHREAD != 0;
    Some(CulpritProcess {
        comm: printable(&stat.comm),
        // A kernel thread has none; a process that exited meanwhile neither.
        cmdline: read_bounded(
            &format!("/proc/{pid}/cmdline"),
            CULPRIT_CMDLINE_MAX_BYTES as u64,
        )
        .map(|raw| command_line(&raw))
        .unwrap_or_default(),
        ppid: stat.ppid as u32,
        kernel_thread,
        cgroup: target::cgroup_of(pid),
    })
}

/// A /proc/PID/cmdline (arguments separated by NULs) as one printable line: the words joined by
/// spaces, a word's own line breaks and tabs (a shell script given with `-c`) as spaces, any
/// other control character (an escape sequence meant for a terminal) as `?`, cut to
/// `CULPRIT_CMDLINE_MAX_BYTES`.
fn command_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut words: Vec<&str> = text.split('\0').collect();
    // The NUL after the last argument, and what a program that rewrites its command line in
    // place (Wine, `setproctitle`) leaves as empty arguments.
    while words.last().is_some_and(|w| w.is_empty()) {
        words.pop();
    }
    let line: String = words
        .join(" ")
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    printable_within(&line, CULPRIT_CMDLINE_MAX_BYTES)
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
    if let Ok(mut cmdline) = proc.cmdline() {
        // A program that rewrites its command line in place (Wine does) leaves the rest of the
        // original area as empty arguments.
        while cmdline.last().is_some_and(String::is_empty) {
            cmdline.pop();
        }
        // An exited process (a zombie) has none left: what was read before stays.
        if !cmdline.is_empty() {
            record.cmdline = cmdline;
        }
    }
    let mut identity =
        ProcessIdentity::read(record.pid, &record.comm, &record.exe, &record.cmdline);
    // What can only be read while the process lives is kept from an earlier read (the Wine
    // build of a process that has since exited).
    if let (Some(now), Some(before)) = (identity.wine.as_mut(), record.identity.wine.as_ref()) {
        if now.version.is_none() {
            now.version = before.version.clone();
        }
    }
    identity.steam_app_id = identity.steam_app_id.or(record.identity.steam_app_id);
    if identity.name != record.identity.name || identity.wine != record.identity.wine {
        let wine = identity
            .wine
            .as_ref()
            .map(|w| {
                format!(
                    " under Wine ({})",
                    w.version.as_deref().unwrap_or("build unread")
                )
            })
            .unwrap_or_default();
        // At info level for a Windows program (its name is not its comm's, and `--all` tracks
        // every process: naming each would flood the log).
        let level = if identity.wine.is_some() {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        log::log!(level, "pid {} is {}{wine}", record.pid, identity.name);
    }
    record.identity = identity;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_command_line_comes_out_printable_on_one_line() {
        let raw = b"sh\0-c\0while :;\n\tdo tick; done\x1b]0;owned\x07\r\0\0\0";
        let line = command_line(raw);
        assert_eq!(line, "sh -c while :;  do tick; done?]0;owned? ");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }

    #[test]
    fn an_over_long_command_line_is_cut_at_the_cap() {
        let mut raw = b"cc1\0".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 3 * CULPRIT_CMDLINE_MAX_BYTES));
        let line = command_line(&raw);
        assert_eq!(line.len(), CULPRIT_CMDLINE_MAX_BYTES);
        assert!(line.starts_with("cc1 xxx"));
        // A cut never splits a character, and bytes that are not UTF-8 are replaced.
        let mut raw = vec![b'a'; CULPRIT_CMDLINE_MAX_BYTES - 1];
        raw.extend("é\u{ff}".as_bytes());
        raw.push(0xff);
        let line = command_line(&raw);
        assert_eq!(line.len(), CULPRIT_CMDLINE_MAX_BYTES - 1);
        assert!(line.chars().all(|c| c == 'a'));
    }

    #[test]
    fn a_culprit_is_read_at_first_sight_and_again_at_most_once_a_second() {
        let known = CulpritProcess {
            comm: "chrt".into(),
            ..Default::default()
        };
        let second = CULPRIT_REREAD_NS;
        assert!(culprit_read_due(None, "sh", None, 5));
        // Gone at the last try: tried again only a second later.
        assert!(!culprit_read_due(None, "sh", Some(5), 5 + second - 1));
        assert!(culprit_read_due(None, "sh", Some(5), 5 + second));
        // The kernel's name is /proc's, or unknown: never read again.
        assert!(!culprit_read_due(
            Some(&known),
            "chrt",
            Some(5),
            10 * second
        ));
        assert!(!culprit_read_due(Some(&known), "", Some(5), 10 * second));
        // Renamed (an exec, or prctl in a loop): once a second.
        assert!(!culprit_read_due(
            Some(&known),
            "sh",
            Some(5),
            5 + second / 2
        ));
        assert!(culprit_read_due(Some(&known), "sh", Some(5), 5 + second));
    }

    #[test]
    fn a_culprit_process_is_read_from_proc() {
        let me = read_culprit_process(std::process::id()).expect("this process");
        assert!(!me.kernel_thread && !me.comm.is_empty(), "{me:?}");
        assert!(me.ppid != 0 && !me.cmdline.is_empty(), "{me:?}");
    }
}
