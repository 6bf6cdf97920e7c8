//! The report's types: what `nvbind.report/v1` holds (docs/report-schema.md) and the per-frame
//! CSV row.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{display, stutters::StutterReport};
use crate::{
    frames::stats::{FrameTimeStats, Log2Summary, LowFps},
    gpu::GpuReport,
    probes::{ProbeStatus, ProgramCost},
};

pub const SCHEMA: &str = "nvbind.report/v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub agent: AgentInfo,
    pub host: HostInfo,
    pub capture: CaptureInfo,
    pub processes: Vec<ProcessReport>,
    /// Every GPU found, with what was sampled from it.
    #[serde(default)]
    pub gpus: Vec<GpuReport>,
    /// Time between GPU samples in seconds (absent: not sampled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_sample_period_s: Option<f64>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: String,
    pub cmdline: Vec<String>,
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
    /// The frame source used: vulkan, vulkan-loader, glx, egl, or none.
    pub source: String,
    /// Presents seen per source (a process can use more than one API).
    pub sources_seen: BTreeMap<String, u64>,
    /// Threads that presented.
    pub presenting_tids: Vec<u32>,
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
pub const FRAME_CSV_COLUMNS: [&str; 27] = [
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
    "ran_instead_pid",
    "ran_instead_process",
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
    /// task's own, or the nearest ancestor of a young child that is not young (empty: none or unknown).
    pub ran_instead_pid: Option<u32>,
    /// Its name (after any `execve`).
    pub ran_instead_process: String,
}
