//! The `stutters` section of a process's report: detection over the chosen frames and a verdict
//! with evidence for each stutter.

use std::collections::BTreeMap;

use nvbind_common::{compile_call, culprit_flags, Culprit};
use serde::{Deserialize, Serialize};

use super::units::{ms, FrameMs};
use crate::{
    frames::{Capture, CompileRecord, Frame, ProcessRecord},
    gpu,
    identity::printable,
    probes::comm_str,
    stutter::{
        attribute, Blame, BusyThread, Cause, CompileEvidence, Detector, DetectorConfig, Evidence,
        RanInstead, ThreadEvidence,
    },
};

/// Busy threads listed per stutter, besides the presenting one.
const BUSY_THREADS: usize = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StutterReport {
    pub count: u64,
    /// Stutters per minute of frames (first to last present).
    pub per_minute: f64,
    /// Time spent in stutter frames over the total frame time (0–1).
    pub share_of_time: f64,
    /// The thresholds used.
    pub thresholds: DetectorConfig,
    /// Stutters per verdict.
    pub by_cause: BTreeMap<Cause, u64>,
    /// Every stutter, in frame order.
    pub events: Vec<StutterEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StutterEvent {
    /// Index of the frame in the process's frames (as in the per-frame CSV).
    pub frame: u64,
    /// When the frame was presented, seconds since the capture started.
    pub t_s: f64,
    pub frame_time_ms: f64,
    /// The trailing average it was compared with.
    pub baseline_ms: f64,
    pub cause: Cause,
    /// How well the evidence supports the cause (0–1; see docs/stutter.md).
    pub confidence: f64,
    /// The verdict in a sentence.
    pub summary: String,
    /// The process a person would blame, when the verdict names one (`cpu-contention`): the one
    /// that kept the presenting thread waiting for a CPU, or kept the game's own thread it
    /// waited for waiting (then `via` is that thread).
    #[serde(default)]
    pub culprit: Option<Blame>,
    pub evidence: Evidence,
}

/// Detects and explains the stutters among `frames` (a process's chosen frames, in order).
pub fn analyse(capture: &Capture, p: &ProcessRecord, frames: &[Frame]) -> StutterReport {
    let config = capture.stutter;
    let mut detector = Detector::new(config);
    let mut events = Vec::new();
    let mut total_ns: u64 = 0;
    let mut stutter_ns: u64 = 0;
    for (i, pair) in frames.windows(2).enumerate() {
        let (prev, frame) = (&pair[0], &pair[1]);
        let ft_ns = frame.ts_ns.saturating_sub(prev.ts_ns);
        total_ns += ft_ns;
        let frame_time_ms = ms(ft_ns);
        let Some(baseline_ms) = detector.push(frame_time_ms) else {
            continue;
        };
        stutter_ns += ft_ns;
        let index = i as u64 + 1;
        let evidence = evidence(capture, p, prev, frame);
        let verdict = attribute(index, frame_time_ms, baseline_ms, &evidence);
        events.push(StutterEvent {
            frame: index,
            t_s: ms(frame.ts_ns.saturating_sub(capture.started_ns)) / 1e3,
            frame_time_ms: round3(frame_time_ms),
            baseline_ms: round3(baseline_ms),
            cause: verdict.cause,
            confidence: verdict.confidence,
            summary: verdict.summary,
            culprit: verdict.culprit,
            evidence,
        });
    }
    let mut by_cause = BTreeMap::new();
    for e in &events {
        *by_cause.entry(e.cause).or_insert(0) += 1;
    }
    let minutes = total_ns as f64 / 60e9;
    StutterReport {
        count: events.len() as u64,
        per_minute: if minutes > 0.0 {
            events.len() as f64 / minutes
        } else {
            0.0
        },
        share_of_time: if total_ns > 0 {
            stutter_ns as f64 / total_ns as f64
        } else {
            0.0
        },
        thresholds: config,
        by_cause,
        events,
    }
}

/// The verdict on one stutter while the game still runs (the daemon's live counters), with the
/// evidence available now: the presenting thread's, and GPU samples from `gpus`; `index` is the
/// frame's place in the record (of the session part). The session report, made with every
/// thread's snapshots, can differ.
pub fn verdict_now(
    capture: &Capture,
    p: &ProcessRecord,
    previous: &Frame,
    (index, frame): (usize, &Frame),
    baseline_ms: f64,
    gpus: &[gpu::GpuSeries],
    gpu_period_ns: u64,
) -> crate::stutter::Verdict {
    let mut e = evidence(capture, p, previous, frame);
    e.gpu = gpu::evidence_for(
        gpus,
        p.gpu.as_deref(),
        previous.ts_ns,
        frame.ts_ns,
        gpu_period_ns,
    );
    let frame_time_ms = ms(frame.ts_ns.saturating_sub(previous.ts_ns));
    attribute(index as u64, frame_time_ms, baseline_ms, &e)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn thread_name(capture: &Capture, tid: u32) -> String {
    capture.thread_names.get(&tid).cloned().unwrap_or_default()
}

fn evidence(capture: &Capture, p: &ProcessRecord, previous: &Frame, frame: &Frame) -> Evidence {
    let d = &frame.delta;
    let c = FrameMs::of(frame);
    let presenting_thread = ThreadEvidence {
        tid: frame.tid,
        comm: thread_name(capture, frame.tid),
        on_cpu_ms: c.on_cpu,
        runq_wait_ms: c.runq_wait,
        max_runq_wait_ms: c.max_runq_wait,
        blocked_ms: c.blocked,
        max_blocked_ms: c.max_blocked,
        blocked_in_gpu_ioctl_ms: c.blocked_in_gpu_ioctl,
        blocked_uninterruptible_ms: c.blocked_uninterruptible,
        blocked_sleeping_ms: ms(d
            .blocked_ns
            .saturating_sub(d.blocked_in_gpu_ioctl_ns)
            .saturating_sub(d.blocked_uninterruptible_ns)),
        unseen_ms: c.unseen,
        missed_switches: d.missed_switches,
        involuntary_switches: d.involuntary_switches,
        migrations: d.migrations,
        gpu_ioctls: c.gpu_ioctls,
        gpu_ioctl_ms: c.gpu_ioctl,
        compile_ms: ms(d.compile_ns),
        compile_calls: d.compile_calls,
    };
    let window = p.thread_windows.get(&frame.ts_ns);
    let mut busy_threads: Vec<BusyThread> = window
        .map(|w| {
            w.threads
                .iter()
                .filter(|t| t.tid != frame.tid)
                .map(|t| {
                    let c = &t.counters;
                    BusyThread {
                        tid: t.tid,
                        comm: thread_name(capture, t.tid),
                        on_cpu_ms: ms(c.on_cpu_ns),
                        runq_wait_ms: ms(c.runq_wait_ns),
                        blocked_ms: ms(c.blocked_ns),
                        blocked_in_gpu_ioctl_ms: ms(c.blocked_in_gpu_ioctl_ns),
                        unseen_ms: ms(c.unseen_ns),
                        involuntary_switches: c.involuntary_switches,
                        migrations: c.migrations,
                        waited_behind: t
                            .waited_behind
                            .as_ref()
                            .and_then(|c| ran_instead(capture, c)),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    busy_threads.sort_by(|a, b| {
        (b.on_cpu_ms + b.runq_wait_ms)
            .total_cmp(&(a.on_cpu_ms + a.runq_wait_ms))
            .then(a.tid.cmp(&b.tid))
    });
    busy_threads.truncate(BUSY_THREADS);
    Evidence {
        presenting_thread,
        ran_instead: ran_instead(capture, &frame.culprit),
        busy_threads,
        busy_threads_window_ms: window.map(|w| ms(w.to_ns.saturating_sub(w.from_ns))),
        gpu: gpu::evidence_for(
            &capture.gpus,
            p.gpu.as_deref(),
            previous.ts_ns,
            frame.ts_ns,
            capture.gpu_period_ns,
        ),
        compiles: compiles_in(capture, p, previous.ts_ns, frame.ts_ns, frame.tid),
    }
}

/// Compile calls listed per stutter.
const COMPILES_LISTED: usize = 5;

/// The process's compile calls that overlapped the interval `from..to`, the longest share of it
/// first (at most [`COMPILES_LISTED`]); `presenting` is the presenting thread.
fn compiles_in(
    capture: &Capture,
    p: &ProcessRecord,
    from: u64,
    to: u64,
    presenting: u32,
) -> Vec<CompileEvidence> {
    let mut found: Vec<(u64, &CompileRecord)> = p
        .compiles
        .iter()
        .map(|c| (c.overlap_ns(from, to), c))
        .filter(|(overlap, _)| *overlap > 0)
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.start_ns.cmp(&b.1.start_ns)));
    found
        .into_iter()
        .take(COMPILES_LISTED)
        .map(|(overlap, c)| CompileEvidence {
            tid: c.tid,
            thread: thread_name(capture, c.tid),
            call: compile_call::name(c.call).to_string(),
            in_frame_ms: round3(ms(overlap)),
            duration_ms: round3(ms(c.duration_ns())),
            pipelines: c.pipelines,
            cache_given: c.cache_given,
            driver_feedback: c.driver_feedback(),
            presenting_thread: c.tid == presenting,
        })
        .collect()
}

/// Who kept a thread waiting, as the report names it: the task that held the CPU longest in one
/// stretch (its tid, process, name and cgroup, as report v2 always named them), and the process
/// blamed (the kernel's name for it, else /proc's, and what /proc said of it while it
/// ran).
pub(super) fn ran_instead(capture: &Capture, c: &Culprit) -> Option<RanInstead> {
    if c.tid == 0 || c.wait_ns == 0 {
        return None;
    }
    let pid = (c.tgid != 0)
        .then_some(c.tgid)
        .or_else(|| capture.culprit_pids.get(&c.tid).copied());
    let process_pid = (c.pid != 0).then_some(c.pid).or(pid);
    let process = process_pid.and_then(|p| capture.culprit_processes.get(&p));
    // Names any process can give itself (`prctl`): printable before they reach a report.
    let comm = printable(&comm_str(&c.comm));
    // The task's own name is its process's only when it is that process's main thread: a
    // worker's (`llvmpipe-0`) is not.
    let main_thread = process_pid == Some(c.tid);
    let process_name = Some(printable(&comm_str(&c.process_comm)))
        .filter(|name| !name.is_empty())
        .or_else(|| {
            process
                .map(|p| p.comm.clone())
                .filter(|name| !name.is_empty())
        })
        .or_else(|| main_thread.then(|| comm.clone()))
        .unwrap_or_default();
    Some(RanInstead {
        tid: c.tid,
        pid,
        comm,
        cgroup: capture
            .culprit_cgroups
            .get(&c.tid)
            .cloned()
            .or_else(|| (c.cgroup_id != 0).then(|| format!("cgroup id {}", c.cgroup_id))),
        wait_ms: ms(c.wait_ns),
        process_pid,
        process: process_name,
        cmdline: process
            .map(|p| p.cmdline.clone())
            .filter(|cmdline| !cmdline.is_empty()),
        process_cgroup: process.and_then(|p| p.cgroup.clone()),
        kernel_thread: c.flags & culprit_flags::KERNEL_THREAD != 0
            || process.is_some_and(|p| p.kernel_thread),
        children: c.flags & culprit_flags::CHILDREN != 0,
        held_ms: (c.held_ns != 0).then(|| ms(c.held_ns)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvbind_common::{present_source, ThreadCounters};

    fn frame(ts_ms: u64, runq_ms: u64) -> Frame {
        let mut culprit = Culprit {
            tid: 812,
            tgid: 812,
            wait_ns: runq_ms * 1_000_000,
            ..Default::default()
        };
        culprit.comm[..3].copy_from_slice(b"hog");
        Frame {
            ts_ns: ts_ms * 1_000_000,
            tid: 5,
            source: present_source::EGL,
            delta: ThreadCounters {
                on_cpu_ns: 3_000_000,
                runq_wait_ns: runq_ms * 1_000_000,
                blocked_ns: 13_000_000,
                ..Default::default()
            },
            culprit,
            ..Default::default()
        }
    }

    #[test]
    fn stutters_are_counted_timed_and_explained() {
        let mut t = 0;
        let mut frames = Vec::new();
        for i in 0..600u64 {
            let stall = if i % 100 == 50 { 80 } else { 0 };
            t += 16 + stall;
            frames.push(frame(t, stall));
        }
        let mut capture = Capture {
            stutter: DetectorConfig::default(),
            ..Default::default()
        };
        capture.culprit_cgroups.insert(812, "/hogs".into());
        let p = ProcessRecord::default();
        let r = analyse(&capture, &p, &frames);
        assert_eq!(r.count, 6);
        assert_eq!(r.by_cause.get(&Cause::CpuContention), Some(&6));
        let total_ms = (t - 16) as f64;
        assert!((r.share_of_time - 6.0 * 96.0 / total_ms).abs() < 1e-9);
        assert!((r.per_minute - 6.0 / (total_ms / 60_000.0)).abs() < 1e-9);
        let e = &r.events[0];
        assert_eq!(e.frame, 50);
        assert_eq!(e.frame_time_ms, 96.0);
        assert_eq!(e.baseline_ms, 16.0);
        let who = e.evidence.ran_instead.as_ref().expect("culprit");
        assert_eq!(
            (who.comm.as_str(), who.cgroup.as_deref()),
            ("hog", Some("/hogs"))
        );
        // The hog's own main thread: its name is its process's.
        assert_eq!((who.process_pid, who.process.as_str()), (Some(812), "hog"));
        assert!(!e.evidence.gpu.sampled && e.evidence.gpu.missing.is_some());
    }

    fn comm(name: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    /// A shell loop's child held the CPU: the report keeps the child as the task (`tid`, `pid`,
    /// `comm`, `cgroup`, their meanings in report v2) and names the shell as the process blamed,
    /// by the name the kernel gave it last (after its exec, whatever /proc said at first sight),
    /// with its command line.
    #[test]
    fn the_process_blamed_is_named_as_it_ran_with_what_proc_said() {
        let mut capture = Capture::default();
        capture.culprit_processes.insert(
            700,
            crate::frames::CulpritProcess {
                comm: "chrt".into(),
                cmdline: "sh -c while :; do tick; done".into(),
                ppid: 1,
                kernel_thread: false,
                cgroup: Some("/hogs".into()),
            },
        );
        capture.culprit_cgroups.insert(901, "/hogs/child".into());
        let c = Culprit {
            wait_ns: 150_000_000,
            held_ns: 148_000_000,
            tid: 901,
            tgid: 901,
            pid: 700,
            flags: culprit_flags::CHILDREN,
            comm: comm("tick"),
            process_comm: comm("sh"),
            ..Default::default()
        };
        let r = ran_instead(&capture, &c).expect("named");
        assert_eq!(
            (r.tid, r.pid, r.comm.as_str(), r.cgroup.as_deref()),
            (901, Some(901), "tick", Some("/hogs/child"))
        );
        assert_eq!(
            (r.process_pid, r.process.as_str(), r.cmdline.as_deref()),
            (Some(700), "sh", Some("sh -c while :; do tick; done"))
        );
        assert!(r.children && !r.kernel_thread);
        assert_eq!(
            (r.held_ms, r.process_cgroup.as_deref()),
            (Some(148.0), Some("/hogs"))
        );
        // Without the kernel's name, /proc's.
        let c = Culprit {
            process_comm: [0; 16],
            ..c
        };
        assert_eq!(ran_instead(&capture, &c).expect("named").process, "chrt");
        // A preemptor known by its tid alone gets its process from what the agent read while it
        // ran; a thread that is not its process's main one does not lend it its name.
        capture.culprit_pids.insert(42, 40);
        let preemptor = Culprit {
            wait_ns: 1_000_000,
            tid: 42,
            comm: comm("worker"),
            ..Default::default()
        };
        let r = ran_instead(&capture, &preemptor).expect("named");
        assert_eq!(
            (r.pid, r.process_pid, r.comm.as_str(), r.process.as_str()),
            (Some(40), Some(40), "worker", "")
        );
        assert_eq!(r.held_ms, None);
        // A main thread does.
        capture.culprit_pids.insert(40, 40);
        let main = Culprit {
            tid: 40,
            ..preemptor
        };
        assert_eq!(
            ran_instead(&capture, &main).expect("named").process,
            "worker"
        );
    }

    /// Names a process gave itself reach the report printable.
    #[test]
    fn hostile_names_are_printable() {
        let c = Culprit {
            wait_ns: 1_000_000,
            tid: 7,
            tgid: 7,
            pid: 7,
            comm: comm("a\x1b[2Jb\n"),
            process_comm: comm("c\x07d"),
            ..Default::default()
        };
        let r = ran_instead(&Capture::default(), &c).expect("named");
        assert_eq!((r.comm.as_str(), r.process.as_str()), ("a?[2Jb?", "c?d"));
    }
}
