//! Housekeeping, about once a second: GPU status and the agent's cost refreshed, live windows
//! and old GPU samples trimmed, and pids that ended forgotten after a while.

use std::time::{Duration, Instant};

use super::{live::GpuStatus, tracking::Daemon};
use crate::{capture::cpu_time_and_peak_rss, clock::monotonic_ns, gpu};

/// How often GPU status, the agent's cost and the live windows are refreshed.
pub(super) const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// GPU samples kept for live verdicts when no session is open.
const GPU_HISTORY: Duration = Duration::from_secs(10);
/// The most GPU history kept for open sessions (at 10 Hz about 10 MiB per GPU); a longer
/// session's report has GPU samples for its last GPU_SESSION_HISTORY only.
const GPU_SESSION_HISTORY: Duration = Duration::from_secs(4 * 3600);
/// How long a finished session's pid is remembered, so that frames the kernel recorded just
/// before the exit and delivered after it do not open a second, nameless session.
const TOMBSTONE: Duration = Duration::from_secs(5);

impl Daemon {
    /// Refreshes GPU status and the agent's cost; trims live windows and old GPU samples.
    pub(super) fn housekeeping(&mut self) {
        let (cpu, _) = cpu_time_and_peak_rss();
        let costs = self.tracker.probes().program_costs();
        let dropped = self.tracker.probes().dropped_events();
        let map_full = self.tracker.probes().map_full_counts();
        let discovery_refused = self.tracker.probes().discovery_refused();
        let refused_before;
        let over_rate = self.tracker.probes().frames_over_rate_total();
        let over_rate_before;
        let latest = self.sampler.as_ref().map(gpu::Sampler::latest);
        let now = monotonic_ns();
        let oldest_session = self
            .tracker
            .processes()
            .values()
            .map(|p| p.tracked_at_ns)
            .min()
            .unwrap_or(now);
        if let Some(sampler) = &self.sampler {
            // Samples back to the oldest open session, but never more than GPU_SESSION_HISTORY:
            // a desktop program that presents now and then can stay tracked for days.
            sampler.forget_before(
                oldest_session
                    .max(now.saturating_sub(GPU_SESSION_HISTORY.as_nanos() as u64))
                    .min(now.saturating_sub(GPU_HISTORY.as_nanos() as u64)),
            );
        }
        {
            let mut live = self.live();
            live.agent.cpu_seconds = cpu;
            live.agent.resident_bytes = resident_bytes();
            live.agent.dropped_events = dropped;
            // A full kernel table blinds the capture of whatever it could not take: never silently.
            for (((map, meaning), now), before) in nvbind_common::map_full::NAMES
                .iter()
                .zip(nvbind_common::map_full::MEANING)
                .zip(map_full)
                .zip(live.agent.map_full)
            {
                if now > before {
                    log::warn!(
                        "the kernel's {map} table was full: {} more {map} {meaning} ({now} in all)",
                        now - before
                    );
                }
            }
            live.agent.map_full = map_full;
            refused_before =
                std::mem::replace(&mut live.agent.discovery_refused, discovery_refused);
            over_rate_before = std::mem::replace(&mut live.agent.frames_over_rate, over_rate);
            live.agent.bpf = costs;
            if let Some(latest) = latest {
                live.gpus = latest
                    .into_iter()
                    .map(|(info, sample, not_sampled)| GpuStatus {
                        info,
                        sample,
                        not_sampled,
                    })
                    .collect();
            }
            let window = live.window;
            for p in live.processes.values_mut() {
                p.trim(window, now);
            }
        }
        if discovery_refused > refused_before && self.cap_warnings.ready() {
            self.warn_users_at_cap(discovery_refused - refused_before);
        }
        if over_rate > over_rate_before && self.rate_warnings.ready() {
            log::warn!(
                "{} frames presented beyond games.max_fps_per_user ({} a second for one user's \
                 processes) were counted, not stored (further warnings at most every 10 s)",
                over_rate - over_rate_before,
                self.config.games.max_fps_per_user
            );
        }
        let now_instant = Instant::now();
        let ended = &mut self.ended;
        self.rejected.retain(|&pid| {
            let alive = crate::target::is_alive(pid);
            if !alive {
                // Its late records must not open a nameless session either.
                ended.insert(pid, now_instant);
            }
            alive
        });
        self.ended.retain(|_, at| at.elapsed() < TOMBSTONE);
        self.tracker.forget_ignored();
    }

    /// Says which users' presenting processes go untracked because they are at
    /// `games.max_per_user`: never silently, and at most every 10 s.
    fn warn_users_at_cap(&self, refused: u64) {
        let cap = u64::from(self.config.games.max_per_user);
        let at_cap: Vec<String> = match self.tracker.probes().user_discoveries() {
            Ok(users) => users
                .iter()
                .filter(|u| cap > 0 && u.tracked >= cap)
                .map(|u| format!("uid {} ({} tracked)", u.uid, u.tracked))
                .collect(),
            Err(e) => vec![format!("(users unreadable: {e})")],
        };
        log::warn!(
            "{refused} presents of processes not tracked: their user has games.max_per_user \
             ({cap}) presenting processes tracked already: {}; they are tracked once some of \
             that user's exit (further warnings at most every 10 s)",
            if at_cap.is_empty() {
                "none at the cap now".to_string()
            } else {
                at_cap.join(", ")
            }
        );
    }
}

/// The agent's resident memory now (the kernel's `statm`).
fn resident_bytes() -> u64 {
    let page = rustix::param::page_size() as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}
