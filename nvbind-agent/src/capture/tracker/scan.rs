//! Periodic checks of the tracked processes' /proc files: new graphics libraries to hook,
//! liveness, threads, and the GPU each renders on. Each is paced by what it cost last time.

use std::time::{Duration, Instant};

use super::Tracker;
use crate::{clock::monotonic_ns, gpu, target};

/// How often tracked processes are checked for new graphics libraries and for liveness.
pub(super) const SCAN_INTERVAL: Duration = Duration::from_millis(100);
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
pub(super) struct LastScan {
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

impl Tracker {
    /// Hooks graphics libraries newly mapped by processes that have not presented yet. Run on every
    /// drain: a game maps its Vulkan loader at startup and resolves vkQueuePresentKHR soon after,
    /// so a copy outside the host's library path (container, Steam runtime) must be hooked fast.
    pub(super) fn scan_new_libraries(&mut self) {
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
    pub(in crate::capture) fn scan(&mut self) {
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
                // Ended after the next drain, which brings in its last records. Its thread list
                // stays until the process is taken out as a capture: the report names its
                // threads from it (their /proc entries are gone now).
                if !self.found_gone.iter().any(|(p, _)| *p == pid) {
                    self.found_gone.push((pid, now));
                }
                continue;
            }
            self.find_gpu(pid);
            let tids = crate::probes::thread_ids(pid);
            self.learn_thread_names(pid, &tids);
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
    pub(in crate::capture) fn all_exited(&self) -> bool {
        !self.capture.processes.is_empty()
            && self
                .capture
                .processes
                .values()
                .all(|p| p.exited_ns.is_some())
    }
}
