//! The `nvbind.report/v1` document (see docs/report-schema.md), built from a finished capture,
//! and the per-frame CSV.

pub mod display;
pub mod export;
pub mod stutters;
pub mod summary;
pub mod svg;
pub mod write;

use std::collections::{BTreeMap, HashMap};

use nvbind_common::{ioctl_class, present_source, ThreadCounters};
use serde::{Deserialize, Serialize};

use crate::{
    frames::{stats, Capture, Frame, ProcessRecord, SOURCE_PREFERENCE},
    gpu::{self, GpuReport},
    probes::{comm_str, ProbeStatus, ProgramCost},
    stutter::GpuEvidence,
};
use stats::{FrameTimeStats, Log2Summary, LowFps};
use stutters::StutterReport;

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
pub const FRAME_CSV_COLUMNS: [&str; 25] = [
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
}

/// The frames of one process from its chosen source, each carrying the evidence of every present
/// of its thread since the previous chosen frame (evidence from other sources is folded in, not lost).
fn chosen_frames(p: &ProcessRecord) -> (u32, Vec<Frame>) {
    let count = |s: u32| p.frames.iter().filter(|f| f.source == s).count();
    let Some(source) = SOURCE_PREFERENCE.into_iter().find(|&s| count(s) > 0) else {
        return (0, Vec::new());
    };
    let mut pending: HashMap<u32, ThreadCounters> = HashMap::new();
    let mut frames = Vec::new();
    for f in &p.frames {
        if f.source == source {
            let mut frame = *f;
            if let Some(extra) = pending.remove(&f.tid) {
                frame.delta.add(&extra);
            }
            frames.push(frame);
        } else {
            pending.entry(f.tid).or_default().add(&f.delta);
        }
    }
    (source, frames)
}

pub(crate) fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

pub(crate) fn gpu_ioctls(c: &ThreadCounters) -> (u64, u64) {
    (0..ioctl_class::COUNT)
        .filter(|&i| ioctl_class::is_gpu(i))
        .fold((0, 0), |(n, t), i| {
            (n + c.ioctl_count[i], t + c.ioctl_ns[i])
        })
}

/// Builds the report and the per-frame rows from a finished capture.
pub fn build(capture: &Capture) -> (Report, Vec<FrameRow>) {
    let mut rows = Vec::new();
    let mut processes = Vec::new();
    for p in capture.processes.values() {
        let (source, frames) = chosen_frames(p);
        let frame_times: Vec<u64> = frames
            .windows(2)
            .map(|w| w[1].ts_ns.saturating_sub(w[0].ts_ns))
            .collect();
        let summary = stats::summarize(&frame_times);
        let stutters = stutters::analyse(capture, p, &frames);
        let causes: HashMap<u64, &str> = stutters
            .events
            .iter()
            .map(|e| (e.frame, e.cause.name()))
            .collect();
        for (i, f) in frames.iter().enumerate() {
            let (n, t) = gpu_ioctls(&f.delta);
            let gpu = match i.checked_sub(1) {
                Some(j) => gpu::evidence_for(
                    &capture.gpus,
                    p.gpu.as_deref(),
                    frames[j].ts_ns,
                    f.ts_ns,
                    capture.gpu_period_ns,
                ),
                None => GpuEvidence::default(),
            };
            rows.push(FrameRow {
                frame: i as u64,
                pid: p.pid,
                tid: f.tid,
                source: present_source::name(f.source).to_string(),
                present_ns: f.ts_ns,
                t_s: secs(f.ts_ns.saturating_sub(capture.started_ns)),
                frame_time_ms: i.checked_sub(1).map(|j| ms(f.ts_ns - frames[j].ts_ns)),
                on_cpu_ms: ms(f.delta.on_cpu_ns),
                runq_wait_ms: ms(f.delta.runq_wait_ns),
                max_runq_wait_ms: ms(f.max_runq_wait_ns),
                blocked_ms: ms(f.delta.blocked_ns),
                max_blocked_ms: ms(f.max_blocked_ns),
                blocked_in_gpu_ioctl_ms: ms(f.delta.blocked_in_gpu_ioctl_ns),
                blocked_uninterruptible_ms: ms(f.delta.blocked_uninterruptible_ns),
                involuntary_switches: f.delta.involuntary_switches,
                migrations: f.delta.migrations,
                gpu_ioctls: n,
                gpu_ioctl_ms: ms(t),
                last_preemptor_tid: f.last_preemptor_tid,
                ran_instead_tid: f.culprit.tid,
                ran_instead_comm: comm_str(&f.culprit.comm),
                stutter_cause: causes
                    .get(&(i as u64))
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                gpu_utilization_ratio: gpu.utilization_ratio,
                gpu_clock_hertz: gpu.graphics_clock_hertz,
                gpu_throttle_reasons: gpu.throttle_reasons.join("+"),
            });
        }
        let mut sources_seen = BTreeMap::new();
        for f in &p.frames {
            *sources_seen
                .entry(present_source::name(f.source).to_string())
                .or_insert(0u64) += 1;
        }
        let mut presenting_tids: Vec<u32> = frames.iter().map(|f| f.tid).collect();
        presenting_tids.sort_unstable();
        presenting_tids.dedup();

        // Threads of this process.
        let threads: Vec<_> = capture
            .threads
            .iter()
            .filter(|(_, t)| t.tgid == p.pid)
            .collect();
        let mut totals = ThreadCounters::default();
        for (_, t) in &threads {
            totals.add(&t.totals);
        }
        let mut thread_reports: Vec<ThreadReport> = threads
            .iter()
            .map(|(tid, t)| ThreadReport {
                tid: *tid,
                comm: capture.thread_names.get(tid).cloned().unwrap_or_default(),
                presents: frames.iter().filter(|f| f.tid == *tid).count() as u64,
                on_cpu_s: secs(t.totals.on_cpu_ns),
                runq_wait_s: secs(t.totals.runq_wait_ns),
                blocked_s: secs(t.totals.blocked_ns),
                involuntary_switches: t.totals.involuntary_switches,
                migrations: t.totals.migrations,
            })
            .collect();
        thread_reports.sort_by(|a, b| b.on_cpu_s.total_cmp(&a.on_cpu_s).then(a.tid.cmp(&b.tid)));
        thread_reports.truncate(16);

        let presenting_threads = presenting_tids
            .iter()
            .map(|&tid| {
                let h = capture
                    .presenter_histograms
                    .get(&tid)
                    .copied()
                    .unwrap_or_default();
                PresentingThreadReport {
                    tid,
                    comm: capture.thread_names.get(&tid).cloned().unwrap_or_default(),
                    frames: frames.iter().filter(|f| f.tid == tid).count() as u64,
                    runq_wait: stats::summarize_log2(&h.runq_wait),
                    off_cpu: stats::summarize_log2(&h.blocked),
                }
            })
            .collect();
        let hists = capture.histograms.get(&p.pid).copied().unwrap_or_default();
        let mut preemptors: Vec<Preemptor> = capture
            .preemptors
            .iter()
            .filter(|(k, _)| k.victim_tgid == p.pid)
            .map(|(k, v)| Preemptor {
                tid: k.preemptor_tid,
                comm: comm_str(&v.comm),
                count: v.count,
            })
            .collect();
        preemptors.sort_by(|a, b| b.count.cmp(&a.count).then(a.tid.cmp(&b.tid)));
        preemptors.truncate(10);

        let ioctl = (0..ioctl_class::COUNT)
            .map(|i| {
                let count = totals.ioctl_count[i];
                let ns = totals.ioctl_ns[i];
                (
                    ioctl_class::NAMES[i].to_string(),
                    IoctlClassReport {
                        count,
                        total_ms: ms(ns),
                        mean_us: if count > 0 {
                            ns as f64 / count as f64 / 1e3
                        } else {
                            0.0
                        },
                        requests: if i == ioctl_class::DRM {
                            p.drm_requests
                                .iter()
                                .map(|&(nr, n)| (display::drm_request_name(nr), n))
                                .collect()
                        } else {
                            BTreeMap::new()
                        },
                    },
                )
            })
            .collect();

        processes.push(ProcessReport {
            pid: p.pid,
            ppid: p.ppid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
            exited: p.exited_ns.is_some(),
            frames: FramesReport {
                count: frames.len() as u64,
                source: if frames.is_empty() {
                    "none".into()
                } else {
                    present_source::name(source).into()
                },
                sources_seen,
                presenting_tids,
                vulkan_present_functions: p.resolved_present.clone(),
                duration_s: match (frames.first(), frames.last()) {
                    (Some(a), Some(b)) => secs(b.ts_ns - a.ts_ns),
                    _ => 0.0,
                },
                fps_avg: summary.as_ref().map(|s| s.fps_avg),
                frame_time_ms: summary.as_ref().map(|s| s.frame_time_ms.clone()),
                low_fps: summary.map(|s| s.low_fps),
                timeline: frames
                    .first()
                    .filter(|_| frames.len() > 1)
                    .map(|first| Timeline {
                        first_present_t_s: secs(first.ts_ns.saturating_sub(capture.started_ns)),
                        frame_times_ms: frame_times
                            .iter()
                            .map(|&ns| (ns as f64 / 1e3).round() / 1e3)
                            .collect(),
                    }),
                display: display::report(&p.display, &frames, &capture.crtc_vblanks),
            },
            sched: SchedReport {
                on_cpu_s: secs(totals.on_cpu_ns),
                runq_wait_s: secs(totals.runq_wait_ns),
                blocked_s: secs(totals.blocked_ns),
                blocked_in_gpu_ioctl_s: secs(totals.blocked_in_gpu_ioctl_ns),
                involuntary_switches: totals.involuntary_switches,
                voluntary_switches: totals.voluntary_switches,
                migrations: totals.migrations,
                wakeups: totals.wakeups,
                runq_wait: stats::summarize_log2(&hists.runq_wait),
                blocked: stats::summarize_log2(&hists.blocked),
                preemptors,
            },
            ioctl,
            threads: thread_reports,
            presenting_threads,
            stutters,
            gpu: p.gpu.clone(),
        });
    }
    // The game first: most frames, then most CPU.
    processes.sort_by(|a, b| {
        b.frames
            .count
            .cmp(&a.frames.count)
            .then(b.sched.on_cpu_s.total_cmp(&a.sched.on_cpu_s))
    });

    let drm = capture.drm_counts;
    let report = Report {
        schema: SCHEMA.into(),
        agent: AgentInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            bpf: capture.program_costs.clone(),
            cpu_s: capture.agent_cpu_s,
            peak_rss_bytes: capture.agent_peak_rss_bytes,
        },
        host: HostInfo {
            kernel: capture.kernel.clone(),
            hostname: capture.hostname.clone(),
            cpus: capture.cpus,
        },
        capture: CaptureInfo {
            started_unix_s: capture.started_unix_s,
            duration_s: secs(capture.ended_ns.saturating_sub(capture.started_ns)),
            end_reason: capture.end_reason.clone(),
            target: capture.target.clone(),
            sources: capture.probe_statuses.clone(),
            dropped_events: capture.dropped_events,
            drm: DrmInfo {
                available: capture
                    .probe_statuses
                    .iter()
                    .any(|s| s.family == "drm" && s.attached),
                vblank_events: drm[0],
                queued_events: drm[1],
                delivered_events: drm[2],
                unreadable_events: drm[3],
                crtcs: capture
                    .crtc_vblanks
                    .iter()
                    .map(|(crtc, v)| CrtcReport {
                        crtc: *crtc,
                        vblanks: v.count,
                        first_seq: v.first_seq,
                        last_seq: v.last_seq,
                        refresh_hz: v.refresh_hz(),
                    })
                    .collect(),
            },
            notes: capture.notes.clone(),
        },
        processes,
        gpus: capture
            .gpus
            .iter()
            .map(|g| gpu::summarise(g, capture.started_ns))
            .collect(),
        gpu_sample_period_s: (capture.gpu_period_ns > 0).then(|| secs(capture.gpu_period_ns)),
    };
    (report, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ts_ms: u64, tid: u32, source: u32, on_cpu_ns: u64) -> Frame {
        Frame {
            ts_ns: ts_ms * 1_000_000,
            tid,
            source,
            cpu: 0,
            delta: ThreadCounters {
                on_cpu_ns,
                ..Default::default()
            },
            max_runq_wait_ns: 0,
            max_blocked_ns: 0,
            last_preemptor_tid: 0,
            culprit: Default::default(),
        }
    }

    #[test]
    fn prefers_vulkan_and_folds_other_evidence_in() {
        let p = ProcessRecord {
            pid: 1,
            frames: vec![
                frame(0, 1, present_source::VULKAN_RESOLVED, 5),
                frame(5, 1, present_source::EGL, 7),
                frame(10, 1, present_source::VULKAN_RESOLVED, 3),
            ],
            ..Default::default()
        };
        let (source, frames) = chosen_frames(&p);
        assert_eq!(source, present_source::VULKAN_RESOLVED);
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames[1].delta.on_cpu_ns, 10,
            "the EGL present's evidence is kept"
        );
    }

    #[test]
    fn a_capture_without_frames_reports_none() {
        let mut capture = Capture::default();
        capture.processes.insert(
            9,
            ProcessRecord {
                pid: 9,
                comm: "idle".into(),
                ..Default::default()
            },
        );
        let (report, rows) = build(&capture);
        assert_eq!(report.schema, SCHEMA);
        assert_eq!(report.processes[0].frames.source, "none");
        assert_eq!(report.processes[0].frames.fps_avg, None);
        assert!(rows.is_empty());
    }

    #[test]
    fn frame_times_come_from_consecutive_presents() {
        let mut capture = Capture::default();
        capture.processes.insert(
            2,
            ProcessRecord {
                pid: 2,
                frames: (0..11)
                    .map(|i| frame(i * 10, 2, present_source::GLX, 0))
                    .collect(),
                ..Default::default()
            },
        );
        let (report, rows) = build(&capture);
        let f = &report.processes[0].frames;
        assert_eq!(f.count, 11);
        assert_eq!(f.source, "glx");
        assert!((f.fps_avg.expect("fps") - 100.0).abs() < 1e-9);
        assert_eq!(rows.len(), 11);
        assert_eq!(rows[0].frame_time_ms, None);
        assert_eq!(rows[1].frame_time_ms, Some(10.0));
    }
}
