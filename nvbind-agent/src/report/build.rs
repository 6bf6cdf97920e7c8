//! Building the report and the per-frame rows from a finished capture, one part at a time.

use std::collections::{BTreeMap, HashMap};

use nvbind_common::{display_kind, ioctl_class, present_source, ProcessHistograms, ThreadCounters};

use super::{
    display,
    stutters::{self, StutterReport},
    units::{ms, secs, FrameMs},
    AgentInfo, CaptureInfo, CrtcReport, DrmInfo, FrameRow, FramesReport, HostInfo,
    IoctlClassReport, OtherProcess, OtherProcesses, Preemptor, PresentingThreadReport,
    ProcessReport, Report, SchedReport, SwapchainReport, ThreadReport, Timeline, SCHEMA,
};
use crate::{
    frames::{stats, Capture, Frame, ProcessRecord, Screen, SOURCE_PREFERENCE},
    gpu,
    probes::comm_str,
    stutter::GpuEvidence,
};

/// Threads listed per process (the busiest by CPU time).
const THREADS_LISTED: usize = 16;
/// Preemptors listed per process (the most frequent).
const PREEMPTORS_LISTED: usize = 10;

/// Builds the report and the per-frame rows from a finished capture.
pub fn build(capture: &Capture) -> (Report, Vec<FrameRow>) {
    let mut rows = Vec::new();
    let (mut processes, others): (Vec<ProcessReport>, Vec<ProcessReport>) = capture
        .processes
        .values()
        .map(|p| process_report(capture, p, &mut rows))
        .partition(ProcessReport::presented);
    // The game first: most frames, then most CPU.
    processes.sort_by(|a, b| {
        b.frames
            .count
            .cmp(&a.frames.count)
            .then(b.sched.on_cpu_s.total_cmp(&a.sched.on_cpu_s))
    });
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
        capture: capture_info(capture),
        processes,
        other_processes: OtherProcesses::of(others.iter().map(OtherProcess::of)),
        gpus: capture
            .gpus
            .iter()
            .map(|g| gpu::summarise(g, capture.started_ns))
            .collect(),
        gpu_sample_period_s: (capture.gpu_period_ns > 0).then(|| secs(capture.gpu_period_ns)),
    };
    (report, rows)
}

/// One process's report; its frames' rows go to `rows`.
fn process_report(capture: &Capture, p: &ProcessRecord, rows: &mut Vec<FrameRow>) -> ProcessReport {
    let (source, frames) = chosen_frames(p);
    let stutters = stutters::analyse(capture, p, &frames);
    rows.extend(frame_rows(capture, p, &frames, &stutters));
    let (totals, threads) = threads(capture, p.pid, &frames);
    let hists = capture.histograms.get(&p.pid).copied().unwrap_or_default();
    ProcessReport {
        pid: p.pid,
        ppid: p.ppid,
        name: p.name(),
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        cmdline: p.cmdline.clone(),
        wine: p.identity.wine.clone(),
        steam_app_id: p.identity.steam_app_id,
        exited: p.exited_ns.is_some(),
        frames: frames_report(capture, p, source, &frames),
        sched: sched_report(
            &totals,
            p.departed.count,
            &hists,
            preemptors(capture, p.pid),
        ),
        ioctl: ioctl_classes(&totals, p),
        threads,
        presenting_threads: presenting_threads(capture, &frames),
        shader_compile: super::compile::report(capture, p, &frames, &stutters),
        stutters,
        gpu: p.gpu.clone(),
    }
}

/// The frames of one process: from its chosen source and, when it presents to several windows,
/// to its main one ([`main_target`]). Each carries the evidence of every present of its thread
/// since the previous chosen frame (presents from other sources or to other windows are folded
/// in, not lost).
fn chosen_frames(p: &ProcessRecord) -> (u32, Vec<Frame>) {
    let count = |s: u32| p.frames.iter().filter(|f| f.source == s).count();
    let Some(source) = SOURCE_PREFERENCE.into_iter().find(|&s| count(s) > 0) else {
        return (0, Vec::new());
    };
    let main = main_target(&targets(p, source));
    let mut pending: HashMap<u32, ThreadCounters> = HashMap::new();
    let mut frames = Vec::new();
    // In present order: a frame is sent when its call returns, so a present made inside another
    // (Zink's vkQueuePresentKHR inside eglSwapBuffers) arrives before the one that holds it.
    let mut in_order: Vec<&Frame> = p.frames.iter().collect();
    in_order.sort_by_key(|f| f.ts_ns);
    for f in in_order {
        if f.source == source && f.target == main {
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

/// What one window (swapchain, drawable, surface) of a process was handed, from one source.
struct TargetFrames {
    target: u64,
    first_ns: u64,
    last_ns: u64,
    frames: u64,
}

/// Every target `source`'s presents went to, in the order each was first presented to.
fn targets(p: &ProcessRecord, source: u32) -> Vec<TargetFrames> {
    let mut seen: Vec<TargetFrames> = Vec::new();
    for f in p.frames.iter().filter(|f| f.source == source) {
        match seen.iter_mut().find(|t| t.target == f.target) {
            Some(t) => {
                t.frames += 1;
                t.last_ns = f.ts_ns;
            }
            None => seen.push(TargetFrames {
                target: f.target,
                first_ns: f.ts_ns,
                last_ns: f.ts_ns,
                frames: 1,
            }),
        }
    }
    seen
}

/// The process's main window: the one it presented the most frames to (a game's view over its
/// launcher, a second view, an overlay's window); on a tie, the one presented to first.
fn main_target(targets: &[TargetFrames]) -> u64 {
    targets
        .iter()
        .enumerate()
        .max_by(|(i, a), (j, b)| a.frames.cmp(&b.frames).then(j.cmp(i)))
        .map_or(0, |(_, t)| t.target)
}

/// The windows of a process that presented to more than one (none otherwise).
fn swapchain_reports(p: &ProcessRecord, source: u32) -> Vec<SwapchainReport> {
    let targets = targets(p, source);
    if targets.len() < 2 {
        return Vec::new();
    }
    let main = main_target(&targets);
    targets
        .iter()
        .map(|t| SwapchainReport {
            id: format!("{:#x}", t.target),
            main: t.target == main,
            frames: t.frames,
            fps_avg: (t.frames > 1 && t.last_ns > t.first_ns)
                .then(|| (t.frames - 1) as f64 / secs(t.last_ns - t.first_ns)),
        })
        .collect()
}

/// One CSV row per chosen frame, with its stutter verdict and the GPU's state over it.
fn frame_rows(
    capture: &Capture,
    p: &ProcessRecord,
    frames: &[Frame],
    stutters: &StutterReport,
) -> Vec<FrameRow> {
    let causes: HashMap<u64, &str> = stutters
        .events
        .iter()
        .map(|e| (e.frame, e.cause.name()))
        .collect();
    let on_screen = on_screen(p, frames);
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let c = FrameMs::of(f);
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
            let blamed = super::stutters::ran_instead(capture, &f.culprit);
            FrameRow {
                frame: i as u64,
                pid: p.pid,
                tid: f.tid,
                source: present_source::name(f.source).to_string(),
                present_ns: f.ts_ns,
                t_s: secs(f.ts_ns.saturating_sub(capture.started_ns)),
                frame_time_ms: i.checked_sub(1).map(|j| ms(f.ts_ns - frames[j].ts_ns)),
                on_cpu_ms: c.on_cpu,
                runq_wait_ms: c.runq_wait,
                max_runq_wait_ms: c.max_runq_wait,
                blocked_ms: c.blocked,
                max_blocked_ms: c.max_blocked,
                blocked_in_gpu_ioctl_ms: c.blocked_in_gpu_ioctl,
                blocked_uninterruptible_ms: c.blocked_uninterruptible,
                unseen_ms: c.unseen,
                involuntary_switches: f.delta.involuntary_switches,
                migrations: f.delta.migrations,
                gpu_ioctls: c.gpu_ioctls,
                gpu_ioctl_ms: c.gpu_ioctl,
                last_preemptor_tid: f.last_preemptor_tid,
                ran_instead_tid: f.culprit.tid,
                ran_instead_comm: crate::identity::printable(&comm_str(&f.culprit.comm)),
                stutter_cause: causes
                    .get(&(i as u64))
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                gpu_utilization_ratio: gpu.utilization_ratio,
                gpu_clock_hertz: gpu.graphics_clock_hertz,
                gpu_throttle_reasons: gpu.throttle_reasons.join("+"),
                ran_instead_process_pid: blamed.as_ref().and_then(|r| r.process_pid),
                ran_instead_process: blamed.map(|r| r.process).unwrap_or_default(),
                compile_ms: ms(f.delta.compile_ns),
                compile_calls: f.delta.compile_calls,
                displayed: on_screen.get(i).copied().flatten().map(|at| at.is_some()),
                display_ns: on_screen.get(i).copied().flatten().flatten(),
                present_to_display_ms: on_screen
                    .get(i)
                    .copied()
                    .flatten()
                    .flatten()
                    .map(|at| ms(at.saturating_sub(f.ts_ns))),
            }
        })
        .collect()
}

/// The frames section: count, sources, statistics, timeline and display.
fn frames_report(
    capture: &Capture,
    p: &ProcessRecord,
    source: u32,
    frames: &[Frame],
) -> FramesReport {
    let frame_times: Vec<u64> = frames
        .windows(2)
        .map(|w| w[1].ts_ns.saturating_sub(w[0].ts_ns))
        .collect();
    let summary = stats::summarize(&frame_times);
    let mut sources_seen = BTreeMap::new();
    for f in &p.frames {
        *sources_seen
            .entry(present_source::name(f.source).to_string())
            .or_insert(0u64) += 1;
    }
    FramesReport {
        count: frames.len() as u64,
        over_rate: p.frames_over_rate.get(&source).copied().unwrap_or(0),
        source: if frames.is_empty() {
            "none".into()
        } else {
            present_source::name(source).into()
        },
        sources_seen,
        presenting_tids: presenting_tids(frames),
        swapchains: swapchain_reports(p, source),
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
        display: display::report(
            &p.display,
            frames,
            &capture.crtc_vblanks,
            &capture.compositors,
            &p.shown_by,
        ),
    }
}

/// Per frame: `None` when not known whether it reached the screen, `Some(None)` when it did not,
/// `Some(Some(t))` when it did at `t`. A process's own flips show the last frame presented
/// before each was asked for; a compositor's verdicts are on the frames themselves.
fn on_screen(p: &ProcessRecord, frames: &[Frame]) -> Vec<Option<Option<u64>>> {
    if !p.flips_itself() {
        return frames
            .iter()
            .map(|f| match f.screen {
                Screen::Undecided => None,
                Screen::Replaced => Some(None),
                Screen::Shown { at_ns, .. } => Some(Some(at_ns)),
            })
            .collect();
    }
    let mut out = vec![None; frames.len()];
    for d in p
        .display
        .iter()
        .filter(|d| d.kind == display_kind::FLIP && d.request_ns != 0)
    {
        let i = frames.partition_point(|f| f.ts_ns <= d.request_ns);
        if let Some(slot) = i.checked_sub(1).and_then(|j| out.get_mut(j)) {
            let at = if d.vblank_ns != 0 {
                d.vblank_ns
            } else {
                d.ts_ns
            };
            slot.get_or_insert(Some(at));
        }
    }
    out
}

fn presenting_tids(frames: &[Frame]) -> Vec<u32> {
    let mut tids: Vec<u32> = frames.iter().map(|f| f.tid).collect();
    tids.sort_unstable();
    tids.dedup();
    tids
}

/// The process's counters (all its threads) and its busiest threads.
fn threads(capture: &Capture, pid: u32, frames: &[Frame]) -> (ThreadCounters, Vec<ThreadReport>) {
    let threads: Vec<_> = capture
        .threads
        .iter()
        .filter(|(_, t)| t.tgid == pid)
        .collect();
    // Its threads that exited while it ran were taken out of the kernel's table: their counters
    // are folded in its record, with the busiest of them.
    let departed = capture.processes.get(&pid).map(|p| &p.departed);
    let mut totals = departed.map(|d| d.totals).unwrap_or_default();
    for (_, t) in &threads {
        totals.add(&t.totals);
    }
    let mut reports: Vec<ThreadReport> = threads
        .iter()
        .copied()
        .chain(departed.into_iter().flat_map(|d| d.busiest.iter()))
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
    reports.sort_by(|a, b| b.on_cpu_s.total_cmp(&a.on_cpu_s).then(a.tid.cmp(&b.tid)));
    reports.truncate(THREADS_LISTED);
    (totals, reports)
}

/// Each presenting thread with its own run-queue and off-CPU distributions.
fn presenting_threads(capture: &Capture, frames: &[Frame]) -> Vec<PresentingThreadReport> {
    presenting_tids(frames)
        .into_iter()
        .map(|tid| {
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
        .collect()
}

/// Who preempted the process's threads most often.
fn preemptors(capture: &Capture, pid: u32) -> Vec<Preemptor> {
    let mut preemptors: Vec<Preemptor> = capture
        .preemptors
        .iter()
        .filter(|(k, _)| k.victim_tgid == pid)
        .map(|(k, v)| Preemptor {
            tid: k.preemptor_tid,
            comm: comm_str(&v.comm),
            count: v.count,
        })
        .collect();
    preemptors.sort_by(|a, b| b.count.cmp(&a.count).then(a.tid.cmp(&b.tid)));
    preemptors.truncate(PREEMPTORS_LISTED);
    preemptors
}

fn sched_report(
    totals: &ThreadCounters,
    exited_threads: u64,
    hists: &ProcessHistograms,
    preemptors: Vec<Preemptor>,
) -> SchedReport {
    SchedReport {
        on_cpu_s: secs(totals.on_cpu_ns),
        runq_wait_s: secs(totals.runq_wait_ns),
        blocked_s: secs(totals.blocked_ns),
        blocked_in_gpu_ioctl_s: secs(totals.blocked_in_gpu_ioctl_ns),
        involuntary_switches: totals.involuntary_switches,
        voluntary_switches: totals.voluntary_switches,
        migrations: totals.migrations,
        wakeups: totals.wakeups,
        unseen_s: secs(totals.unseen_ns),
        missed_switches: totals.missed_switches,
        exited_threads,
        runq_wait: stats::summarize_log2(&hists.runq_wait),
        blocked: stats::summarize_log2(&hists.blocked),
        preemptors,
    }
}

/// The process's ioctls by class (DRM with its requests by name).
fn ioctl_classes(totals: &ThreadCounters, p: &ProcessRecord) -> BTreeMap<String, IoctlClassReport> {
    (0..ioctl_class::COUNT)
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
        .collect()
}

/// What was recorded and how: the target, the probes, DRM's counts, the notes.
fn capture_info(capture: &Capture) -> CaptureInfo {
    let drm = capture.drm_counts;
    CaptureInfo {
        started_unix_s: capture.started_unix_s,
        duration_s: secs(capture.ended_ns.saturating_sub(capture.started_ns)),
        end_reason: capture.end_reason.clone(),
        target: capture.target.clone(),
        sources: capture.probe_statuses.clone(),
        dropped_events: capture.dropped_events,
        compiles_not_sent: capture.compiles_not_sent,
        drm: DrmInfo {
            available: capture
                .probe_statuses
                .iter()
                .any(|s| s.family == "drm" && s.attached),
            vblank_events: drm[0],
            queued_events: drm[1],
            delivered_events: drm[2],
            unreadable_events: drm[3],
            unpaired_deliveries: drm[4],
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
        notes: capture
            .notes
            .iter()
            .cloned()
            .chain(
                capture
                    .processes
                    .values()
                    .filter(|p| p.thread_windows_dropped > 0)
                    .map(|p| {
                        format!(
                            "pid {}: the other threads' evidence (busy_threads) was kept for the \
                             {} longest likely stutters only ({} milder ones had theirs dropped \
                             to bound memory)",
                            p.pid,
                            p.thread_windows.len(),
                            p.thread_windows_dropped
                        )
                    }),
            )
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SCHEMA_V1;

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
            target: 0,
            ..Default::default()
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
    fn threads_taken_out_at_their_exit_still_count_and_the_busiest_are_listed() {
        let state = |voluntary, on_cpu_ns| nvbind_common::ThreadState {
            tgid: 2,
            totals: ThreadCounters {
                voluntary_switches: voluntary,
                on_cpu_ns,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut record = ProcessRecord {
            pid: 2,
            comm: "game".into(),
            frames: vec![frame(0, 2, present_source::GLX, 0)],
            ..Default::default()
        };
        // More departed threads than are kept one by one: all are counted, the busiest listed.
        for tid in 100..140 {
            record.departed.add(tid, state(1, u64::from(tid)));
        }
        let mut capture = Capture::default();
        capture.processes.insert(2, record);
        capture.threads = vec![(2, state(5, 1_000)), (7, state(0, 0))];
        let (report, _) = build(&capture);
        let p = &report.processes[0];
        assert_eq!(p.sched.voluntary_switches, 45);
        assert_eq!(p.sched.exited_threads, 40);
        let listed: Vec<u32> = p.threads.iter().map(|t| t.tid).collect();
        let mut busiest: Vec<u32> = (124..140).rev().collect();
        busiest.insert(0, 2);
        busiest.truncate(THREADS_LISTED);
        assert_eq!(listed, busiest);
    }

    #[test]
    fn a_process_without_frames_is_folded_into_the_other_processes() {
        let mut capture = Capture::default();
        capture.processes.insert(
            9,
            ProcessRecord {
                pid: 9,
                comm: "idle".into(),
                ..Default::default()
            },
        );
        capture.processes.insert(
            2,
            ProcessRecord {
                pid: 2,
                comm: "game".into(),
                frames: vec![frame(0, 2, present_source::GLX, 0)],
                ..Default::default()
            },
        );
        let (report, rows) = build(&capture);
        assert_eq!(report.schema, SCHEMA);
        assert_eq!(report.processes.len(), 1);
        assert_eq!(report.processes[0].name, "game");
        assert_eq!(
            report.processes[0].frames.fps_avg, None,
            "one frame: no rate"
        );
        let others = &report.other_processes;
        assert_eq!((others.count, others.processes.len()), (1, 1));
        assert_eq!(
            (others.processes[0].pid, others.processes[0].name.as_str()),
            (9, "idle")
        );
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn a_v1_report_is_upgraded_on_reading() {
        let mut capture = Capture::default();
        for (pid, frames) in [(9, vec![]), (2, vec![frame(0, 2, present_source::GLX, 0)])] {
            capture.processes.insert(
                pid,
                ProcessRecord {
                    pid,
                    comm: "wine64".into(),
                    exe: "/usr/lib/wine/wine64".into(),
                    cmdline: vec![format!("C:\\Games\\game{pid}.exe")],
                    frames,
                    ..Default::default()
                },
            );
        }
        let (report, _) = build(&capture);
        // What a v1 writer wrote: every process in full in `processes`, no names.
        let quiet = process_report(&capture, &capture.processes[&9], &mut Vec::new());
        let mut v1 = serde_json::to_value(&report).expect("encode");
        v1["schema"] = SCHEMA_V1.into();
        v1["processes"] = serde_json::to_value([&report.processes[0], &quiet]).expect("encode");
        for p in v1["processes"].as_array_mut().expect("processes") {
            p.as_object_mut().expect("object").remove("name");
        }
        v1.as_object_mut()
            .expect("object")
            .remove("other_processes");
        let read: Report = serde_json::from_value(v1).expect("a v1 document decodes");
        let upgraded = read.upgrade();
        assert_eq!(upgraded.schema, SCHEMA);
        assert_eq!(upgraded.processes.len(), 1);
        assert_eq!(upgraded.processes[0].name, "game2.exe");
        assert_eq!(upgraded.other_processes.count, 1);
        assert_eq!(upgraded.other_processes.processes[0].name, "game9.exe");
    }

    #[test]
    fn the_main_window_is_the_one_with_the_most_frames() {
        let mut capture = Capture::default();
        let on = |ts_ms: u64, target: u64| Frame {
            target,
            ..frame(ts_ms, 2, present_source::GLX, 1)
        };
        // A launcher window first, then the game's at twice its rate.
        let mut frames: Vec<Frame> = (0..10).map(|i| on(i * 20, 0xa)).collect();
        frames.extend((0..20).map(|i| on(5 + i * 10, 0xb)));
        frames.sort_by_key(|f| f.ts_ns);
        capture.processes.insert(
            2,
            ProcessRecord {
                pid: 2,
                frames,
                ..Default::default()
            },
        );
        let (report, rows) = build(&capture);
        let f = &report.processes[0].frames;
        assert_eq!(f.count, 20, "the game's window");
        assert_eq!(rows.len(), 20);
        assert!(
            (f.fps_avg.expect("fps") - 100.0).abs() < 1e-9,
            "{:?}",
            f.fps_avg
        );
        let windows: Vec<(&str, bool, u64)> = f
            .swapchains
            .iter()
            .map(|w| (w.id.as_str(), w.main, w.frames))
            .collect();
        assert_eq!(windows, [("0xa", false, 10), ("0xb", true, 20)]);
        // Every present's evidence is kept: the launcher's fold into the game's frames.
        let on_cpu: u64 = rows
            .iter()
            .map(|r| (r.on_cpu_ms * 1e6).round() as u64)
            .sum();
        assert_eq!(on_cpu, 30, "{rows:?}");
        // On a tie, the window presented to first.
        let tie = [(0xc, 5), (0xd, 5)].map(|(target, frames)| TargetFrames {
            target,
            first_ns: target,
            last_ns: target,
            frames,
        });
        assert_eq!(main_target(&tie), 0xc);
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
