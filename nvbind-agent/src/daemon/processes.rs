//! New processes: /proc listed now and then, the graphics libraries of young processes hooked
//! where they are copies the probes do not cover yet, and copies no process maps any more
//! released.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use super::tracking::Daemon;

/// How often /proc is listed for new processes, whose graphics libraries may be copies the
/// probes do not cover yet (a game in a container or the Steam runtime).
pub(super) const NEW_PROCESS_SCAN_INTERVAL: Duration = Duration::from_millis(250);
/// Ages at which a new process's memory map is searched for graphics libraries: games map
/// their loader early and present seconds later; a process that lives past the last age and
/// maps one later is hooked only if it is tracked some other way.
const LIBRARY_SCAN_AGES_MS: [u64; 5] = [200, 1_000, 3_000, 10_000, 30_000];

impl Daemon {
    /// Hooks graphics libraries that new processes map from files the probes do not cover yet,
    /// so a game in a container or the Steam runtime is seen from its first frame too.
    pub(super) fn scan_new_processes(&mut self) {
        let now = Instant::now();
        // A /proc that cannot be listed now (out of fds, say) says nothing about who is gone.
        let Some(pids) = list_pids() else {
            return;
        };
        for &pid in pids.difference(&self.known) {
            self.young.insert(pid, (now, 0));
        }
        self.known = pids;
        // A copy whose last mapper is gone gives its uprobes' fds and its user's budget back.
        self.tracker.release_unmapped_copies(&self.known);
        let known = &self.known;
        self.young
            .retain(|pid, (_, done)| known.contains(pid) && *done < LIBRARY_SCAN_AGES_MS.len());
        let due: Vec<u32> = self
            .young
            .iter()
            .filter(|(_, (seen, done))| {
                now.duration_since(*seen) >= Duration::from_millis(LIBRARY_SCAN_AGES_MS[*done])
            })
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            if let Some((seen, done)) = self.young.get_mut(&pid) {
                // Skip ages already passed (a slow tick): one scan covers them.
                let age = now.duration_since(*seen);
                while *done < LIBRARY_SCAN_AGES_MS.len()
                    && age >= Duration::from_millis(LIBRARY_SCAN_AGES_MS[*done])
                {
                    *done += 1;
                }
            }
            for lib in self.tracker.hook_libraries_of(pid) {
                log::info!("pid {pid}: hooked {lib} (a copy the host's hooks do not cover)");
            }
        }
    }
}

/// Every process id in /proc now; None when /proc could not be listed whole.
pub(super) fn list_pids() -> Option<HashSet<u32>> {
    let mut pids = HashSet::new();
    for entry in std::fs::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.insert(pid);
        }
    }
    Some(pids)
}
