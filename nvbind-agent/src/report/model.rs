//! The report's types: what `nvbind.report/v2` holds (docs/report-schema.md) and the per-frame
//! CSV row.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{display, stutters::StutterReport};
use crate::{
    frames::stats::{FrameTimeStats, Log2Summary, LowFps},
    gpu::GpuReport,
    identity::{display_name, WineInfo},
    probes::{ProbeStatus, ProgramCost},
};

pub const SCHEMA: &str = "nvbind.report/v2";
/// The previous version, still read (`report`, `--svg`, the exports): [`Report::upgrade`].
pub const SCHEMA_V1: &str = "nvbind.report/v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub agent: AgentInfo,
    pub host: HostInfo,
    pub capture: CaptureInfo,
    /// The processes that presented at least one frame, the game first.
    pub processes: Vec<ProcessReport>,
    /// Every other tracked process (launchers, Wine's helpers, shells), folded into one section.
    #[serde(default)]
    pub other_processes: OtherProcesses,
    /// Every GPU found, with what was sampled from it.
    #[serde(default)]
    pub gpus: Vec<GpuReport>,
    /// Time between GPU samples in seconds (absent: not sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_sample_period_s: Option<f64>,
}

impl Report {
    /// Brings a report of an earlier version to this one: a `v1` report listed every tracked
    /// process in `processes` and had no `name`; those without frames move to
    /// `other_processes`, and each is named by today's rule.
    pub fn upgrade(mut self) -> Report {
        if self.schema == SCHEMA_V1 {
            for p in &mut self.processes {
                if p.name.is_empty() {
                    p.name = display_name(&p.comm, &p.exe, &p.cmdline);
                }
            }
            let (presenters, others) = std::mem::take(&mut self.processes)
                .into_iter()
                .partition(ProcessReport::presented);
            self.processes = presenters;
            self.other_processes = OtherProcesses::of(others.iter().map(OtherProcess::of));
            self.schema = SCHEMA.into();
        }
        self
    }
}

impl ProcessReport {
    /// Whether it made frames: presents, or display events of its own (a program that flips
    /// through DRM directly). The report's `processes` holds these; the rest are folded.
    pub fn presented(&self) -> bool {
        self.frames.count > 0 || self.frames.display.is_some()
    }

    /// `name (pid N)`, how the console and the sentences name a process.
    pub fn label(&self) -> String {
        format!("{} (pid {})", self.name, self.pid)
    }
}

impl OtherProcesses {
    /// The section for `processes`, the busiest first.
    pub fn of(processes: impl Iterator<Item = OtherProcess>) -> OtherProcesses {
        let mut processes: Vec<OtherProcess> = processes.collect();
        processes.sort_by(|a, b| b.on_cpu_s.total_cmp(&a.on_cpu_s).then(a.pid.cmp(&b.pid)));
        OtherProcesses {
            count: processes.len(),
            on_cpu_s: processes.iter().map(|p| p.on_cpu_s).sum(),
            runq_wait_s: processes.iter().map(|p| p.runq_wait_s).sum(),
            blocked_s: processes.iter().map(|p| p.blocked_s).sum(),
            processes,
        }
    }
}

impl OtherProcess {
    /// The brief of a full process report.
    pub fn of(p: &ProcessReport) -> OtherProcess {
        OtherProcess {
            pid: p.pid,
            ppid: p.ppid,
            name: p.name.clone(),
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            exited: p.exited,
            on_cpu_s: p.sched.on_cpu_s,
            runq_wait_s: p.sched.runq_wait_s,
            blocked_s: p.sched.blocked_s,
            blocked_in_gpu_ioctl_s: p.sched.blocked_in_gpu_ioctl_s,
            involuntary_switches: p.sched.involuntary_switches,
            voluntary_switches: p.sched.voluntary_switches,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    /// Cost of each eBPF program over the capture (kernel bpf_stats).
    pub bpf: Vec<ProgramCost>,
    /// The agent's own CPU time over the capture.
    pub cpu_s: f64,
    /// The agent's peak resident memory.
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    pub kernel: String,
    pub hostname: String,
    pub cpus: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaptureInfo {
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_unix_s: f64,
    pub duration_s: f64,
    /// Why the capture ended: duration, targets-exited, signal, wait-timeout.
    pub end_reason: String,
    /// What was asked for (`pid 1234`, `comm vkcube`, `command vkcube --c 300`, `all processes`).
    pub target: String,
    /// Every probe, attached or not (the same list `doctor` prints).
    pub sources: Vec<ProbeStatus>,
    /// Ring-buffer records lost because the buffer was full.
    pub dropped_events: u64,
    /// Long compile calls the kernel did not send (the ring buffer was a quarter full).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compiles_not_sent: u64,
    /// DRM display events seen, or why there were none.
    pub drm: DrmInfo,
    /// Things a reader should know about this capture.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrmInfo {
    pub available: bool,
    pub vblank_events: u64,
    pub queued_events: u64,
    pub delivered_events: u64,
    /// Deliveries to a tracked process whose DRM event nvbind could not read (a kernel whose
    /// `struct drm_pending_event` is laid out differently): counted as flips. Should be 0.
    #[serde(default)]
    pub unreadable_events: u64,
    /// Deliveries to a tracked process whose send the kprobe never saw: not counted as frames or
    /// deliveries (a run the kernel skipped).
    #[serde(default)]
    pub unpaired_deliveries: u64,
    /// Every CRTC that had vblanks during the capture, with its refresh rate.
    #[serde(default)]
    pub crtcs: Vec<CrtcReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrtcReport {
    pub crtc: u32,
    pub vblanks: u64,
    /// The vblank sequence numbers of the first and the last (the kernel's own count).
    pub first_seq: u32,
    pub last_seq: u32,
    /// From back-to-back vblanks (sequence numbers one apart): the interrupt is off while nobody
    /// waits for a vblank, so vblanks over the whole capture would understate it.
    pub refresh_hz: Option<f64>,
}

/// The tracked processes that presented no frame: totals, and one line of evidence each.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OtherProcesses {
    pub count: usize,
    pub on_cpu_s: f64,
    pub runq_wait_s: f64,
    pub blocked_s: f64,
    pub processes: Vec<OtherProcess>,
}

/// A tracked process that presented no frame, in brief.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherProcess {
    pub pid: u32,
    pub ppid: u32,
    pub name: String,
    pub comm: String,
    pub exe: String,
    pub exited: bool,
    pub on_cpu_s: f64,
    pub runq_wait_s: f64,
    pub blocked_s: f64,
    pub blocked_in_gpu_ioctl_s: f64,
    pub involuntary_switches: u64,
    pub voluntary_switches: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub ppid: u32,
    /// The name a person knows it by: a Windows game under Wine by its `.exe`, a native program
    /// by its comm (or the executable's name when comm is cut short). See docs/report-schema.md.
    #[serde(default)]
    pub name: String,
    /// The kernel's task name, as is.
    pub comm: String,
    pub exe: String,
    pub cmdline: Vec<String>,
    /// Present when it runs a Windows program under Wine or Proton.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wine: Option<WineInfo>,
    /// Its Steam app id, where the environment or the cgroup says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steam_app_id: Option<u32>,
    /// Whether the process exited during the capture.
    pub exited: bool,
    pub frames: FramesReport,
    pub sched: SchedReport,
    pub ioctl: BTreeMap<String, IoctlClassReport>,
    /// The busiest threads (by on-CPU time), at most 16.
    pub threads: Vec<ThreadReport>,
    /// Run-queue and off-CPU distributions of each thread that presented, over the capture.
    pub presenting_threads: Vec<PresentingThreadReport>,
    /// Stutters, each with a verdict and its evidence.
    pub stutters: StutterReport,
    /// Its long shader and pipeline compile calls, when it made any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shader_compile: Option<super::CompileReport>,
    /// PCI address of the GPU it renders on (the GPU whose device node it had open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresentingThreadReport {
    pub tid: u32,
    pub comm: String,
    /// Frames it presented (from the chosen source).
    pub frames: u64,
    /// Every wait for a CPU (in-kernel log2 histogram).
    pub runq_wait: Log2Summary,
    /// Every period off-CPU and not runnable (in-kernel log2 histogram).
    pub off_cpu: Log2Summary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FramesReport {
    /// Frames handed over (presents) from the chosen source.
    pub count: u64,
    /// Frames presented beyond the frame-rate cap of the process's user (the daemon's
    /// `games.max_fps_per_user`, 20,000 for `record`): counted by the kernel, not stored, so not
    /// in `count` or the frame times.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub over_rate: u64,
    /// The frame source used: vulkan, vulkan-loader, glx, egl, or none.
    pub source: String,
    /// Presents seen per source (a process can use more than one API).
    pub sources_seen: BTreeMap<String, u64>,
    /// Threads that presented.
    pub presenting_tids: Vec<u32>,
    /// When the process presented to several windows (Vulkan swapchains, GLX drawables, EGL
    /// surfaces) from the chosen source: each, and which is the main one whose frames these are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swapchains: Vec<SwapchainReport>,
    /// Vulkan `vkQueuePresentKHR` implementations learned for this process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vulkan_present_functions: Vec<String>,
    /// From the first to the last present.
    pub duration_s: f64,
    /// Frames over elapsed time (intervals / their total), absent with fewer than 2 frames.
    pub fps_avg: Option<f64>,
    pub frame_time_ms: Option<FrameTimeStats>,
    pub low_fps: Option<LowFps>,
    /// Every frame's time, for plots: frame `i + 1` took `timeline.frame_times_ms[i]`.
    pub timeline: Option<Timeline>,
    /// When its frames reached the screen (DRM page flips and commits), where the kernel has DRM
    /// and the process flipped or waited on a display itself; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<display::DisplayReport>,
}

/// One window a process presented to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapchainReport {
    /// The handle the present was given (the Vulkan swapchain, the GLX drawable's XID, the EGL
    /// surface), in hexadecimal; 0x0 when it could not be read.
    pub id: String,
    /// Whether its frames are the process's `frames` (the one with the most frames).
    pub main: bool,
    pub frames: u64,
    /// Frames over the time from its first to its last (absent with fewer than 2 frames).
    pub fps_avg: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeline {
    /// When the first frame was presented, seconds since the capture started.
    pub first_present_t_s: f64,
    /// Time between consecutive presents, in milliseconds (microsecond precision).
    pub frame_times_ms: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedReport {
    pub on_cpu_s: f64,
    pub runq_wait_s: f64,
    pub blocked_s: f64,
    pub blocked_in_gpu_ioctl_s: f64,
    pub involuntary_switches: u64,
    pub voluntary_switches: u64,
    pub migrations: u64,
    pub wakeups: u64,
    /// Time the scheduler probes could not place (switches the kernel did not report; see
    /// docs/probes.md), and how many such switches.
    #[serde(default)]
    pub unseen_s: f64,
    #[serde(default)]
    pub missed_switches: u64,
    /// Threads that exited while the process went on (their counters are in the sums).
    #[serde(default)]
    pub exited_threads: u64,
    /// Every run-queue wait of the process's threads (in-kernel histogram).
    pub runq_wait: Log2Summary,
    /// Every blocked period of the process's threads (in-kernel histogram).
    pub blocked: Log2Summary,
    /// Tasks that preempted the process's threads, most frequent first (at most 10).
    pub preemptors: Vec<Preemptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Preemptor {
    pub tid: u32,
    pub comm: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IoctlClassReport {
    pub count: u64,
    pub total_ms: f64,
    pub mean_us: f64,
    /// `drm` only: calls by DRM request (`MODE_PAGE_FLIP`, `MODE_ATOMIC`, `WAIT_VBLANK`, ...,
    /// driver-private ones as `driver-0xNN`), counted at entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadReport {
    pub tid: u32,
    pub comm: String,
    pub presents: u64,
    pub on_cpu_s: f64,
    pub runq_wait_s: f64,
    pub blocked_s: f64,
    pub involuntary_switches: u64,
    pub migrations: u64,
}

/// The CSV header, in [`FrameRow`] field order.
pub const FRAME_CSV_COLUMNS: [&str; 33] = [
    "frame",
    "pid",
    "tid",
    "source",
    "present_ns",
    "t_s",
    "frame_time_ms",
    "on_cpu_ms",
    "runq_wait_ms",
    "max_runq_wait_ms",
    "blocked_ms",
    "max_blocked_ms",
    "blocked_in_gpu_ioctl_ms",
    "blocked_uninterruptible_ms",
    "unseen_ms",
    "involuntary_switches",
    "migrations",
    "gpu_ioctls",
    "gpu_ioctl_ms",
    "last_preemptor_tid",
    "ran_instead_tid",
    "ran_instead_comm",
    "stutter_cause",
    "gpu_utilization_ratio",
    "gpu_clock_hertz",
    "gpu_throttle_reasons",
    "ran_instead_process_pid",
    "ran_instead_process",
    "compile_ms",
    "compile_calls",
    "displayed",
    "display_ns",
    "present_to_display_ms",
];

/// One frame of the CSV export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameRow {
    pub frame: u64,
    pub pid: u32,
    pub tid: u32,
    pub source: String,
    /// CLOCK_MONOTONIC nanoseconds of the present call.
    pub present_ns: u64,
    /// Seconds since the capture started.
    pub t_s: f64,
    /// Time since the previous present of this process (empty for the first frame).
    pub frame_time_ms: Option<f64>,
    pub on_cpu_ms: f64,
    pub runq_wait_ms: f64,
    pub max_runq_wait_ms: f64,
    pub blocked_ms: f64,
    pub max_blocked_ms: f64,
    pub blocked_in_gpu_ioctl_ms: f64,
    pub blocked_uninterruptible_ms: f64,
    /// Time in this interval the scheduler probes could not place (see `unseen_s`).
    pub unseen_ms: f64,
    pub involuntary_switches: u64,
    pub migrations: u64,
    pub gpu_ioctls: u64,
    pub gpu_ioctl_ms: f64,
    pub last_preemptor_tid: u32,
    /// The task that kept this thread waiting for a CPU longest in this interval (0: none).
    pub ran_instead_tid: u32,
    pub ran_instead_comm: String,
    /// The verdict when this frame is a stutter, else empty.
    pub stutter_cause: String,
    /// The GPU over this frame (its samples; empty without GPU counters): highest utilisation,
    /// lowest graphics clock, and the throttle reasons seen, joined by `+`.
    pub gpu_utilization_ratio: Option<f64>,
    pub gpu_clock_hertz: Option<f64>,
    pub gpu_throttle_reasons: String,
    /// The process blamed for this thread's waits in this interval (see docs/stutter.md): the
    /// task's own (`ran_instead_tid`'s), or the nearest ancestor of a young child that is not
    /// young (empty: none or unknown).
    pub ran_instead_process_pid: Option<u32>,
    /// Its name (after any `execve`; empty when unknown).
    pub ran_instead_process: String,
    /// The presenting thread's time inside shader and pipeline compile calls in this interval
    /// (every call, however short), and how many calls.
    pub compile_ms: f64,
    pub compile_calls: u64,
    /// Whether it reached the screen (empty: not known; see `frames.display`).
    pub displayed: Option<bool>,
    /// When it reached the screen (CLOCK_MONOTONIC ns of the flip's vblank).
    pub display_ns: Option<u64>,
    /// From the entry of its present call to then.
    pub present_to_display_ms: Option<f64>,
}

/// For fields written only when they count something.
pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}
