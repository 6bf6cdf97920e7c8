//! What a recording gathered: tracked processes, their frames as the kernel reported them, their
//! display events, and the kernel's per-thread evidence. `capture` fills it, `report` reads it.

use std::collections::{BTreeMap, HashMap};

use nvbind_common::{
    CrtcVblanks, Culprit, PreemptorKey, PreemptorValue, ProcessHistograms, ThreadCounters,
    ThreadState,
};

use super::{Screen, ThreadWindow};
use crate::{
    gpu,
    identity::{display_name, ProcessIdentity},
    probes::{ProbeStatus, ProgramCost},
    stutter::DetectorConfig,
};

/// A frame as the kernel reported it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Frame {
    pub ts_ns: u64,
    pub tid: u32,
    pub source: u32,
    pub cpu: u32,
    pub delta: ThreadCounters,
    pub max_runq_wait_ns: u64,
    pub max_blocked_ns: u64,
    pub last_preemptor_tid: u32,
    /// Who ran while the presenting thread waited for a CPU in this interval.
    pub culprit: Culprit,
    /// What it was handed to: a GLX drawable, an EGL surface, a Vulkan swapchain (0: unknown).
    pub target: u64,
    /// When the present call returned (0: not known, as for `glXSwapBuffers`).
    pub end_ns: u64,
    /// When the call sent the frame's commit to a Wayland compositor (0: not seen).
    pub commit_ns: u64,
    /// What became of it on the screen, where a compositor showed it (`super::screen`).
    pub screen: Screen,
}

/// The most stutters whose thread windows one process record keeps (a window holds a few
/// hundred bytes per thread that did something in it).
pub const MAX_THREAD_WINDOWS: usize = 1024;

/// The most compile calls one process record keeps (a game that builds pipelines for hours
/// makes tens of thousands; each record is a few dozen bytes).
pub const MAX_COMPILES_KEPT: usize = 65_536;

/// One long shader or pipeline compile call of a thread (see `nvbind_common::CompileEvent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileRecord {
    pub tid: u32,
    /// Which call (`nvbind_common::compile_call`).
    pub call: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Pipelines it was asked to create (0 for a call that creates none).
    pub pipelines: u32,
    pub cache_given: bool,
    /// Its `VkResult`.
    pub result: i32,
    /// The driver's creation feedback, where the game chained one to its create infos: of the
    /// first `nvbind_common::FEEDBACK_PIPELINES_READ` pipelines, those the driver filled in...
    pub feedback_pipelines: u16,
    /// ...and of them, those it says came from the pipeline cache.
    pub cache_hits: u16,
}

/// What a driver said of a call's pipelines through its creation feedback: the only source of
/// "the cache held it" nvbind reports (a short call is not taken for a hit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverFeedback {
    /// Pipelines whose feedback the driver filled in.
    pub pipelines: u32,
    /// Of them, those it says came from the game's pipeline cache.
    pub cache_hits: u32,
}

/// The sum of two calls' feedback.
impl std::ops::Add for DriverFeedback {
    type Output = DriverFeedback;

    fn add(self, other: DriverFeedback) -> DriverFeedback {
        DriverFeedback {
            pipelines: self.pipelines + other.pipelines,
            cache_hits: self.cache_hits + other.cache_hits,
        }
    }
}

/// Notes on hooks a process asked for and could not get, at most this many in one capture: any
/// process can ask again and again, under as many pids as it likes.
pub const MAX_REFUSAL_NOTES: usize = 32;

/// Marks a refusal note (`Capture::note_refusal`).
const REFUSAL_MARK: &str = ": cannot hook its ";

impl Capture {
    /// Notes that `pid` could not get its `function` hooked, and why: once per process and
    /// function, and no more than [`MAX_REFUSAL_NOTES`] in all (then one line says the rest
    /// went unlisted). Returns whether the note is new (worth a log line).
    pub fn note_refusal(&mut self, pid: u32, function: &str, why: &str) -> bool {
        let note = format!("pid {pid}{REFUSAL_MARK}{function}: {why}");
        if self.notes.contains(&note) {
            return false;
        }
        let refusals = self
            .notes
            .iter()
            .filter(|n| n.contains(REFUSAL_MARK))
            .count();
        if refusals < MAX_REFUSAL_NOTES {
            self.notes.push(note);
            return true;
        }
        let more = "more processes could not get the functions they asked for hooked: \
                    not listed (the agent's log has them)";
        if !self.notes.iter().any(|n| n == more) {
            self.notes.push(more.to_string());
        }
        false
    }
}

impl CompileRecord {
    /// The driver's feedback on the call, if the game asked for it and the driver gave it.
    pub fn driver_feedback(&self) -> Option<DriverFeedback> {
        (self.feedback_pipelines > 0).then_some(DriverFeedback {
            pipelines: u32::from(self.feedback_pipelines),
            cache_hits: u32::from(self.cache_hits),
        })
    }

    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// How much of `from..to` it spent in the call.
    pub fn overlap_ns(&self, from: u64, to: u64) -> u64 {
        self.end_ns.min(to).saturating_sub(self.start_ns.max(from))
    }
}

/// A tracked process and its frames.
#[derive(Debug, Clone, Default)]
pub struct ProcessRecord {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: String,
    pub cmdline: Vec<String>,
    /// Its name as a person knows it, its Wine build and Steam app id (read with the above).
    pub identity: ProcessIdentity,
    pub tracked_at_ns: u64,
    /// The kernel's count of lost records (all processes') when tracking started, or when the
    /// last part of its session was cut: a session's report says how many were lost during it.
    pub dropped_events_at_start: u64,
    /// The same for the kernel's count of long compile calls not sent (`COMPILES_NOT_SENT`).
    pub compiles_not_sent_at_start: u64,
    /// Frames presented beyond its user's frame-rate cap (the kernel counted them but did not
    /// send them) in this session or part, per present source; `over_rate_at_start` is the
    /// kernel's count when the last part was cut.
    pub frames_over_rate: BTreeMap<u32, u64>,
    pub over_rate_at_start: BTreeMap<u32, u64>,
    pub exited_ns: Option<u64>,
    pub frames: Vec<Frame>,
    /// Files (and offsets) of learned `vkQueuePresentKHR` implementations.
    pub resolved_present: Vec<String>,
    /// Whether it was already running when tracking began (not launched or exec'd under us).
    pub preexisting: bool,
    /// For frames that looked like stutters while recording (by present time): what every
    /// thread of the process did around them. At most [`MAX_THREAD_WINDOWS`] (see
    /// [`ProcessRecord::keep_window`]).
    pub thread_windows: HashMap<u64, ThreadWindow>,
    /// Windows given up to keep within that bound (the shortest went first).
    pub thread_windows_dropped: u64,
    /// PCI address of the GPU whose device node the process had open (its render GPU).
    pub gpu: Option<String>,
    /// DRM display events of the DRM files it flipped or waited on, in time order.
    pub display: Vec<DisplayRecord>,
    /// Its threads' shader and pipeline compile calls of `COMPILE_EVENT_MIN_NS` or longer, in
    /// the order they returned; at most [`MAX_COMPILES_KEPT`] (see
    /// [`ProcessRecord::keep_compile`]).
    pub compiles: Vec<CompileRecord>,
    /// Compile calls given up to keep within that bound (the shortest went first).
    pub compiles_dropped: u64,
    /// Every long compile call kept since it was first tracked, and their time: counts that
    /// only grow, whatever the bound or the session's parts take away (the daemon's counters).
    pub compile_calls_seen: u64,
    pub compile_ns_seen: u64,
    /// Its DRM ioctls by number (`_IOC_NR`), read at the end.
    pub drm_requests: Vec<(u32, u64)>,
    /// The first of `frames` no compositor flip has decided yet (`ProcessRecord::join_flip`).
    pub screen_from: usize,
    /// The processes whose flips showed its frames (compositors), by pid.
    pub shown_by: Vec<u32>,
    /// Its threads that exited while it ran, taken out of the kernel's table.
    pub departed: DepartedThreads,
}

/// The threads of a process that exited while it went on: their final counters, folded together,
/// and the busiest of them as they ended. Taken out of the kernel's `THREADS` table as they exit
/// (a game that churns through threads would otherwise fill it for every game after it), kept here
/// in a bounded space whatever the churn.
#[derive(Debug, Clone, Default)]
pub struct DepartedThreads {
    /// How many.
    pub count: u64,
    /// Their counters, added up.
    pub totals: ThreadCounters,
    /// The [`DepartedThreads::BUSIEST_KEPT`] that spent the most time on a CPU, by tid.
    pub busiest: Vec<(u32, ThreadState)>,
}

impl DepartedThreads {
    /// As many as a report lists threads.
    pub const BUSIEST_KEPT: usize = 16;

    /// Adds a thread whose counters are final.
    pub fn add(&mut self, tid: u32, state: ThreadState) {
        self.count += 1;
        self.totals.add(&state.totals);
        self.busiest.push((tid, state));
        if self.busiest.len() > Self::BUSIEST_KEPT {
            self.busiest.sort_by(|a, b| {
                b.1.totals
                    .on_cpu_ns
                    .cmp(&a.1.totals.on_cpu_ns)
                    .then(a.0.cmp(&b.0))
            });
            self.busiest.truncate(Self::BUSIEST_KEPT);
        }
    }
}

impl ProcessRecord {
    /// Keeps the thread window of the likely stutter presented at `frame_ns`. A process that
    /// stutters on every third frame for hours would otherwise keep every one; beyond
    /// [`MAX_THREAD_WINDOWS`] the window that spans the least time (the mildest stutter) goes.
    pub fn keep_window(&mut self, frame_ns: u64, window: ThreadWindow) {
        self.thread_windows.insert(frame_ns, window);
        while self.thread_windows.len() > MAX_THREAD_WINDOWS {
            let mildest = self
                .thread_windows
                .iter()
                .min_by_key(|(at, w)| (w.to_ns.saturating_sub(w.from_ns), **at))
                .map(|(at, _)| *at);
            let Some(mildest) = mildest else { break };
            self.thread_windows.remove(&mildest);
            self.thread_windows_dropped += 1;
        }
    }

    /// Keeps a compile call. Beyond [`MAX_COMPILES_KEPT`] the shorter half goes (a stutter is
    /// made of the long ones), and the rest stay in time order.
    pub fn keep_compile(&mut self, record: CompileRecord) {
        self.compile_calls_seen += 1;
        self.compile_ns_seen += record.duration_ns();
        self.compiles.push(record);
        if self.compiles.len() > MAX_COMPILES_KEPT {
            let before = self.compiles.len();
            self.compiles.sort_by(|a, b| {
                b.duration_ns()
                    .cmp(&a.duration_ns())
                    .then(a.end_ns.cmp(&b.end_ns))
            });
            self.compiles.truncate(MAX_COMPILES_KEPT / 2);
            self.compiles.sort_by_key(|c| c.end_ns);
            self.compiles_dropped += (before - self.compiles.len()) as u64;
        }
    }

    /// The name a person knows it by: as read from /proc, or by the same rule from what the
    /// kernel reported when /proc was never read (a process gone before the first read).
    pub fn name(&self) -> String {
        if self.identity.name.is_empty() {
            display_name(&self.comm, &self.exe, &self.cmdline)
        } else {
            self.identity.name.clone()
        }
    }
}

/// One DRM display event of a process (see `nvbind_common::display_kind`).
#[derive(Debug, Clone, Copy)]
pub struct DisplayRecord {
    pub ts_ns: u64,
    pub kind: u32,
    pub crtc: u32,
    pub seq: u32,
    /// When the process last asked for a flip, a commit or a vblank event (0: unknown).
    pub request_ns: u64,
    /// When the thread that asked for the flip had last been woken before asking (0: not known).
    pub woke_ns: u64,
    /// The time of the vblank the event went out at (0: not seen).
    pub vblank_ns: u64,
}

/// A process blamed for keeping tracked threads waiting, as /proc showed it while it ran (read
/// again when the kernel reports it under a new name, it exec'd, at most once a second). Any
/// process can be one: its text was read bounded and made printable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CulpritProcess {
    pub comm: String,
    /// Its command line, words joined by spaces; empty for a kernel thread.
    pub cmdline: String,
    pub ppid: u32,
    pub kernel_thread: bool,
    /// Its cgroup v2 path (or its cgroup v1 `cpu` path).
    pub cgroup: Option<String>,
}

/// Everything a recording gathered.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    pub target: String,
    pub started_ns: u64,
    pub ended_ns: u64,
    pub started_unix_s: f64,
    pub end_reason: String,
    pub processes: BTreeMap<u32, ProcessRecord>,
    pub threads: Vec<(u32, ThreadState)>,
    pub thread_names: HashMap<u32, String>,
    pub histograms: HashMap<u32, ProcessHistograms>,
    pub preemptors: Vec<(PreemptorKey, PreemptorValue)>,
    /// Run-queue and blocked histograms of each thread that presented, by tid.
    pub presenter_histograms: HashMap<u32, ProcessHistograms>,
    /// Cgroups of the tasks that kept tracked threads waiting, by tid.
    pub culprit_cgroups: HashMap<u32, String>,
    /// Process ids of those tasks, by tid.
    pub culprit_pids: HashMap<u32, u32>,
    /// The processes blamed for those waits, by pid, as /proc showed them while they ran.
    pub culprit_processes: HashMap<u32, CulpritProcess>,
    /// The stutter thresholds the capture was recorded with.
    pub stutter: DetectorConfig,
    pub dropped_events: u64,
    /// Long compile calls the kernel counted but did not send while this capture's processes
    /// were tracked (the ring buffer was a quarter full; frames come first).
    pub compiles_not_sent: u64,
    pub program_costs: Vec<ProgramCost>,
    pub probe_statuses: Vec<ProbeStatus>,
    pub drm_counts: [u64; 5],
    /// Vblank cadence per CRTC index.
    pub crtc_vblanks: Vec<(u32, CrtcVblanks)>,
    /// The processes whose flips showed other processes' frames (compositors): pid → name.
    pub compositors: BTreeMap<u32, String>,
    pub notes: Vec<String>,
    pub agent_cpu_s: f64,
    pub agent_peak_rss_bytes: u64,
    pub kernel: String,
    pub hostname: String,
    pub cpus: usize,
    /// Every GPU found, with its samples (none when sampling was off or impossible).
    pub gpus: Vec<gpu::GpuSeries>,
    /// Time between GPU samples; 0 when GPUs were not sampled.
    pub gpu_period_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_windows_are_bounded_and_the_mildest_go_first() {
        let mut p = ProcessRecord::default();
        let window = |span: u64| ThreadWindow {
            from_ns: 0,
            to_ns: span,
            threads: Vec::new(),
        };
        // Spans 1.. in order, and one long stutter early on.
        p.keep_window(0, window(1_000_000));
        for at in 1..(MAX_THREAD_WINDOWS as u64 + 10) {
            p.keep_window(at, window(at));
        }
        assert_eq!(p.thread_windows.len(), MAX_THREAD_WINDOWS);
        assert_eq!(p.thread_windows_dropped, 10);
        assert!(p.thread_windows.contains_key(&0), "the longest is kept");
        assert!(!p.thread_windows.contains_key(&1), "the shortest went");
        assert!(p
            .thread_windows
            .contains_key(&(MAX_THREAD_WINDOWS as u64 + 9)));
    }

    #[test]
    fn compile_calls_are_bounded_the_longest_kept_in_time_order() {
        let mut p = ProcessRecord::default();
        let call = |end: u64, took: u64| CompileRecord {
            tid: 1,
            call: 1,
            start_ns: end - took,
            end_ns: end,
            ..Default::default()
        };
        // One long call early on, then short ones of growing length.
        p.keep_compile(call(1_000_000_000, 80_000_000));
        for i in 1..=MAX_COMPILES_KEPT as u64 {
            p.keep_compile(call(2_000_000_000 + i * 10_000, 1_000 + i));
        }
        assert_eq!(p.compiles.len(), MAX_COMPILES_KEPT / 2);
        assert_eq!(p.compiles_dropped, MAX_COMPILES_KEPT as u64 / 2 + 1);
        assert_eq!(p.compiles[0].duration_ns(), 80_000_000, "the longest stays");
        assert!(p.compiles.windows(2).all(|w| w[0].end_ns <= w[1].end_ns));
        // The shortest went: what is left is the longer half.
        assert!(p.compiles[1..]
            .iter()
            .all(|c| c.duration_ns() > 1_000 + MAX_COMPILES_KEPT as u64 / 2));
    }

    #[test]
    fn refusal_notes_are_said_once_each_and_bounded() {
        let mut c = Capture::default();
        assert!(c.note_refusal(7, "glLinkProgram", "full"));
        assert!(!c.note_refusal(7, "glLinkProgram", "full"), "said once");
        for pid in 8..1000 {
            c.note_refusal(pid, "glLinkProgram", "full");
        }
        assert_eq!(c.notes.len(), MAX_REFUSAL_NOTES + 1, "{:?}", c.notes.last());
        assert!(c.notes.last().is_some_and(|n| n.contains("not listed")));
    }

    #[test]
    fn a_compile_overlaps_a_frame_by_the_time_it_shares_with_it() {
        let c = CompileRecord {
            start_ns: 100,
            end_ns: 200,
            ..Default::default()
        };
        assert_eq!(c.overlap_ns(0, 1000), 100);
        assert_eq!(c.overlap_ns(150, 1000), 50);
        assert_eq!(c.overlap_ns(0, 120), 20);
        assert_eq!(c.overlap_ns(200, 300), 0);
        assert_eq!(c.overlap_ns(0, 100), 0);
    }
}
