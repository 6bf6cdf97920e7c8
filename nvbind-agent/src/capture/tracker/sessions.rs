//! Taking frames and whole processes out of the tracker (the daemon's sessions, `record`'s end),
//! with the kernel's state of their threads.

use std::collections::HashSet;

use anyhow::Result;
use nvbind_common::present_source;

use super::Tracker;
use crate::{
    capture::host::describe_host,
    clock::{monotonic_ns, unix_time_at},
    frames::{Capture, ProcessRecord},
    gpu,
    probes::libraries,
};

impl Tracker {
    /// Takes the frames of a still-running process out as a capture of its own (a long
    /// session's part), keeping it tracked. The last frame stays, so the next part's first frame
    /// time is measured from it (and counted once, in the next part).
    pub fn take_frames(
        &mut self,
        pid: u32,
        gpus: Vec<gpu::GpuSeries>,
        gpu_period_ns: u64,
    ) -> Option<Capture> {
        let dropped_now = self.probes.dropped_events();
        let compiles_not_sent_now = self.probes.compiles_not_sent();
        let record = self.capture.processes.get_mut(&pid)?;
        let last = *record.frames.last()?;
        // The last frame stays undecided in the record if no flip decided it yet.
        let last_decided = record.screen_from >= record.frames.len();
        let mut part = ProcessRecord {
            frames: std::mem::replace(&mut record.frames, vec![last]),
            thread_windows: std::mem::take(&mut record.thread_windows),
            // Display events go with the part too (a compositor's flips would otherwise pile up
            // for the whole session and be written again in every part).
            display: std::mem::take(&mut record.display),
            compiles: std::mem::take(&mut record.compiles),
            compiles_dropped: std::mem::take(&mut record.compiles_dropped),
            resolved_present: record.resolved_present.clone(),
            ..record.clone()
        };
        part.exited_ns = None;
        record.screen_from = usize::from(last_decided);
        record.tracked_at_ns = last.ts_ns;
        record.dropped_events_at_start = dropped_now;
        record.compiles_not_sent_at_start = compiles_not_sent_now;
        let over_rate_before = record.over_rate_at_start.clone();
        let started_ns = part.frames.first().map_or(part.tracked_at_ns, |f| f.ts_ns);
        let mut capture = self.session_capture(
            part,
            (started_ns, last.ts_ns),
            gpus,
            gpu_period_ns,
            "session-frame-limit",
        );
        // The next part counts frames over the rate from where this one's count ended.
        let counted = capture
            .processes
            .get(&pid)
            .map(|p| p.frames_over_rate.clone())
            .unwrap_or_default();
        if let Some(record) = self.capture.processes.get_mut(&pid) {
            let mut at = over_rate_before;
            for (source, n) in counted {
                *at.entry(source).or_default() += n;
            }
            record.over_rate_at_start = at;
        }
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
            culprit_processes: self.capture.culprit_processes.clone(),
            compositors: self
                .capture
                .compositors
                .iter()
                .filter(|(c, _)| record.shown_by.contains(c))
                .map(|(c, name)| (*c, name.clone()))
                .collect(),
            thread_names: self
                .capture
                .thread_names
                .iter()
                .filter(|(tid, _)| tids.contains(tid) || self.names_thread_of(**tid, pid))
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
        self.tids.remove(&pid);
        self.exited_threads.retain(|(_, p, _)| *p != pid);
        self.exited_names.remove(&pid);
        self.forget_thread_names(pid);
        if self.capture.processes.is_empty() {
            // Names of other processes' tasks that kept tracked threads waiting: only needed
            // while someone is tracked.
            self.capture.culprit_cgroups.clear();
            self.capture.culprit_pids.clear();
            self.capture.culprit_processes.clear();
            self.culprit_reads.clear();
            self.culprit_seen.clear();
            self.culprit_pid_seen.clear();
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
                    record.keep_window(to, window);
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
    pub(in crate::capture) fn collect_kernel_state(&mut self, capture: &mut Capture) -> Result<()> {
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
        let cap_note = format!(
            "frames presented beyond {} per second by one user's processes were counted, not \
             stored (frames.over_rate): their frame times are not in this report",
            self.frame_rate_cap
        );
        let mut over_rate_any = false;
        for p in capture.processes.values_mut() {
            p.frames_over_rate = self
                .probes
                .frames_over_rate(p.pid)
                .into_iter()
                .map(|(source, n)| {
                    let before = p.over_rate_at_start.get(&source).copied().unwrap_or(0);
                    (source, n.saturating_sub(before))
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            over_rate_any |= !p.frames_over_rate.is_empty();
        }
        if over_rate_any {
            capture.notes.push(cap_note);
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
        // Lost while these processes were tracked (the ring buffer is shared: some may have
        // been other processes' records), not since the agent started.
        let dropped_before = capture
            .processes
            .values()
            .map(|p| p.dropped_events_at_start)
            .min()
            .unwrap_or(0);
        capture.dropped_events = self.probes.dropped_events().saturating_sub(dropped_before);
        let not_sent_before = capture
            .processes
            .values()
            .map(|p| p.compiles_not_sent_at_start)
            .min()
            .unwrap_or(0);
        capture.compiles_not_sent = self
            .probes
            .compiles_not_sent()
            .saturating_sub(not_sent_before);
        capture.program_costs = self.probes.program_costs();
        capture.probe_statuses = self.probes.statuses().to_vec();
        capture.drm_counts = self.probes.drm_event_counts();
        if capture.drm_counts[3] > 0 {
            capture.notes.push(format!(
                "{} DRM event(s) delivered to a tracked process could not be read as this \
                 kernel's struct drm_pending_event was expected to be laid out: counted as flips \
                 (please report the kernel version)",
                capture.drm_counts[3]
            ));
        }
        let send_probe_attached = capture
            .probe_statuses
            .iter()
            .any(|s| s.program == "nvbind_drm_send_event" && s.attached);
        if capture.drm_counts[4] > 0 && send_probe_attached {
            capture.notes.push(format!(
                "{} DRM event(s) delivered to a tracked process were not followed by their send \
                 in the probes (a run the kernel skipped): not counted",
                capture.drm_counts[4]
            ));
        }
        capture.crtc_vblanks = self.probes.crtc_vblanks();
        for (pid, requests) in self.probes.drm_ioctl_counts(&pids) {
            if let Some(p) = capture.processes.get_mut(&pid) {
                p.drm_requests = requests;
            }
        }
        explain_sources(capture);
        for (slot, full) in self
            .probes
            .map_full_counts()
            .into_iter()
            .enumerate()
            .filter(|(_, n)| *n > 0)
        {
            let map = nvbind_common::map_full::NAMES[slot];
            capture
                .notes
                .push(if slot as u32 == nvbind_common::map_full::USERS {
                    format!(
                    "the kernel's {map} table was full {full} time(s) since the agent started: \
                     those users' presenting processes were tracked without games.max_per_user"
                )
                } else {
                    format!(
                    "the kernel's {map} table was full {full} time(s) since the agent started: \
                     {map} started then were not tracked, and their frames and evidence are \
                     missing"
                )
                });
        }
        if capture.dropped_events > 0 {
            capture.notes.push(format!(
                "{} kernel records were lost (ring buffer full) while this capture ran: frame \
                 counts are lower bounds",
                capture.dropped_events
            ));
        }
        if capture.compiles_not_sent > 0 {
            capture.notes.push(format!(
                "{} long shader or pipeline compile call(s) were not sent (the ring buffer was a \
                 quarter full, and frames come first): their time is in the frames' compile_ms, \
                 but the shader_compile sections and stutter evidence lack them",
                capture.compiles_not_sent
            ));
        }
        Ok(())
    }
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
