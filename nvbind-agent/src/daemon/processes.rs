//! New processes: told by the kernel at each exec (and found by a slow /proc listing, for those
//! it did not tell of), the graphics libraries of young processes hooked where they are copies
//! the probes do not cover yet, and copies no process maps any more released.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::tracking::Daemon;
use crate::clock::monotonic_ns;

/// How often /proc is listed. The kernel tells of every exec, so the listing is a safety net:
/// for processes forked without an exec, for notices lost to a full ring buffer (then it is
/// listed soon), and to learn which processes ended (their library copies are released).
pub(super) const PROCESS_LISTING_INTERVAL: Duration = Duration::from_secs(5);
/// The least time between two listings when notices were lost or dropped: an exec storm that
/// keeps losing them must not have /proc listed at every wakeup.
pub(super) const LISTING_GAP: Duration = Duration::from_secs(1);
/// Ages at which a new process's memory map is searched for graphics libraries: games map
/// their loader early and present seconds later; a process that lives past the last age and
/// maps one later is hooked only if it is tracked some other way.
const LIBRARY_SCAN_AGES_MS: [u64; 5] = [200, 1_000, 3_000, 10_000, 30_000];
/// The most young processes one user may have waited on at once, and all users together: an
/// exec storm (a build, a hostile user) must not grow the daemon without bound, nor crowd out
/// another user's game. Beyond a user's share their new processes are left to the next listing;
/// at the total, the user with the most gives one up.
const MAX_YOUNG_PER_USER: usize = 1024;
const MAX_YOUNG: usize = 8192;

/// A young process: since when (its exec, or the listing that found it), how many of its ages
/// have passed, and its user.
#[derive(Debug, Clone, Copy)]
struct Young {
    since: Instant,
    passed: usize,
    uid: u32,
}

/// The processes new since the daemon started, searched at a few ages each.
#[derive(Debug, Default)]
pub(super) struct YoungProcesses {
    young: HashMap<u32, Young>,
    /// The young processes of each user.
    by_user: HashMap<u32, HashSet<u32>>,
    /// Every pid at the last listing, and those exec'd since.
    known: HashSet<u32>,
}

impl YoungProcesses {
    /// `running`: the processes at start, which the host's hooks covered as the probes loaded.
    pub(super) fn new(running: HashSet<u32>) -> YoungProcesses {
        YoungProcesses {
            known: running,
            ..Default::default()
        }
    }

    /// `pid` (of user `uid`) exec'd at `at`: young from then (a new image maps new libraries, so
    /// a process that exec'd again starts its ages over). False when there is no room for it.
    pub(super) fn exec(&mut self, pid: u32, uid: u32, at: Instant) -> bool {
        self.known.insert(pid);
        self.insert(pid, uid, at)
    }

    /// A listing of every process now: those not known are young from `now` (`owner` gives
    /// their user), those gone are forgotten.
    pub(super) fn listed(&mut self, pids: HashSet<u32>, owner: impl Fn(u32) -> u32, now: Instant) {
        let gone: Vec<u32> = self
            .young
            .keys()
            .filter(|pid| !pids.contains(pid))
            .copied()
            .collect();
        for pid in gone {
            self.forget(pid);
        }
        let new: Vec<u32> = pids
            .difference(&self.known)
            .filter(|pid| !self.young.contains_key(pid))
            .copied()
            .collect();
        for pid in new {
            self.insert(pid, owner(pid), now);
        }
        self.known = pids;
    }

    fn insert(&mut self, pid: u32, uid: u32, since: Instant) -> bool {
        let passed = 0;
        if let Some(young) = self.young.get_mut(&pid) {
            if young.uid == uid {
                *young = Young { since, passed, uid };
                return true;
            }
            self.forget(pid);
        }
        if self.by_user.get(&uid).map_or(0, HashSet::len) >= MAX_YOUNG_PER_USER {
            return false;
        }
        if self.young.len() >= MAX_YOUNG && !self.give_up_one_of_the_most(uid) {
            return false;
        }
        self.young.insert(pid, Young { since, passed, uid });
        self.by_user.entry(uid).or_default().insert(pid);
        true
    }

    /// Forgets one young process of the user with the most, unless that is `uid` itself.
    fn give_up_one_of_the_most(&mut self, uid: u32) -> bool {
        let Some((&most, _)) = self.by_user.iter().max_by_key(|(_, pids)| pids.len()) else {
            return false;
        };
        if most == uid {
            return false;
        }
        match self
            .by_user
            .get(&most)
            .and_then(|p| p.iter().next().copied())
        {
            Some(pid) => {
                self.forget(pid);
                true
            }
            None => false,
        }
    }

    /// Every process at the last listing, and those exec'd since.
    pub(super) fn known(&self) -> &HashSet<u32> {
        &self.known
    }

    /// When the next young process reaches its next age (None: no process is young).
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.young
            .values()
            .filter_map(|y| {
                LIBRARY_SCAN_AGES_MS
                    .get(y.passed)
                    .map(|&ms| y.since + Duration::from_millis(ms))
            })
            .min()
    }

    /// The processes that reached their next age by `now`, each moved past every age it
    /// reached (a late wakeup searches once for all of them); those past the last age are no
    /// longer young.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<u32> {
        let mut due = Vec::new();
        let mut done = Vec::new();
        for (&pid, young) in self.young.iter_mut() {
            let age = now.saturating_duration_since(young.since);
            let before = young.passed;
            while LIBRARY_SCAN_AGES_MS
                .get(young.passed)
                .is_some_and(|&ms| age >= Duration::from_millis(ms))
            {
                young.passed += 1;
            }
            if young.passed > before {
                due.push(pid);
            }
            if young.passed >= LIBRARY_SCAN_AGES_MS.len() {
                done.push(pid);
            }
        }
        for pid in done {
            self.forget(pid);
        }
        due
    }

    /// A process that is gone, or no longer young.
    pub(super) fn forget(&mut self, pid: u32) {
        let Some(young) = self.young.remove(&pid) else {
            return;
        };
        if let Some(pids) = self.by_user.get_mut(&young.uid) {
            pids.remove(&pid);
            if pids.is_empty() {
                self.by_user.remove(&young.uid);
            }
        }
    }
}

impl Daemon {
    /// Takes the kernel's exec notices.
    pub(super) fn take_exec_notices(&mut self) {
        let (now, now_ns) = (Instant::now(), monotonic_ns());
        let (young, list_soon) = (&mut self.young, &mut self.list_soon);
        self.tracker.probes_mut().drain_exec_notices(|notice| {
            let age = Duration::from_nanos(now_ns.saturating_sub(notice.ts_ns));
            let at = now.checked_sub(age).unwrap_or(now);
            if !young.exec(notice.tgid, notice.uid, at) {
                *list_soon = true;
            }
        });
        let lost = self.tracker.probes().exec_notices_lost();
        if lost > self.exec_notices_lost {
            log::debug!(
                "{} exec notices did not fit in their ring buffer: listing /proc",
                lost - self.exec_notices_lost
            );
            self.exec_notices_lost = lost;
            self.list_soon = true;
        }
    }

    /// Lists /proc, and releases library copies only processes now gone mapped.
    pub(super) fn list_processes(&mut self) {
        self.list_soon = false;
        // A /proc that cannot be listed now (out of fds, say) says nothing about who is gone.
        let Some(pids) = list_pids() else {
            return;
        };
        self.young.listed(pids, owner, Instant::now());
        // A copy whose last mapper is gone gives its uprobes' fds and its user's budget back.
        self.tracker.release_unmapped_copies(self.young.known());
    }

    /// Searches the memory maps of the young processes that reached their next age, and hooks
    /// graphics libraries they map from files the probes do not cover yet, so a game in a
    /// container or the Steam runtime is seen from its first frame too.
    pub(super) fn scan_young_processes(&mut self) {
        for pid in self.young.take_due(Instant::now()) {
            // Most execs are short-lived commands, gone before their first age.
            if !crate::target::is_alive(pid) {
                self.young.forget(pid);
                continue;
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

/// The user a process runs as (its /proc directory's owner); u32::MAX once it is gone.
fn owner(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}")).map_or(u32::MAX, |m| m.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_notice_sent_without_a_wakeup_is_read_before_its_first_age() {
        assert!(LIBRARY_SCAN_AGES_MS.windows(2).all(|w| w[0] < w[1]));
        // A notice the kernel sent without a wakeup (within the gap after one that woke the
        // daemon) is read when the daemon wakes for that one's first age: before its own.
        assert!(LIBRARY_SCAN_AGES_MS[0] * 1_000_000 > nvbind_common::EXEC_WAKE_GAP_NS);
    }

    #[test]
    fn an_exec_is_searched_at_each_age_counted_from_the_exec() {
        let t0 = Instant::now();
        let mut young = YoungProcesses::new(HashSet::from([1]));
        assert_eq!(young.next_due(), None);
        assert!(young.exec(42, 1000, t0));
        assert_eq!(young.next_due(), Some(t0 + ms(200)));
        assert!(young.take_due(t0 + ms(199)).is_empty());
        assert_eq!(young.take_due(t0 + ms(200)), vec![42]);
        assert_eq!(young.next_due(), Some(t0 + ms(1_000)));
        // Woken late, past two ages: searched once, and on to the next age.
        assert_eq!(young.take_due(t0 + ms(3_500)), vec![42]);
        assert_eq!(young.next_due(), Some(t0 + ms(10_000)));
        assert_eq!(young.take_due(t0 + ms(30_000)), vec![42]);
        assert_eq!(
            young.next_due(),
            None,
            "past its last age it is no longer young"
        );
        assert!(young.by_user.is_empty());
    }

    #[test]
    fn a_second_exec_starts_the_ages_over() {
        let t0 = Instant::now();
        let mut young = YoungProcesses::new(HashSet::new());
        young.exec(7, 1000, t0);
        assert_eq!(young.take_due(t0 + ms(1_000)), vec![7]);
        young.exec(7, 1000, t0 + ms(1_500));
        assert_eq!(young.next_due(), Some(t0 + ms(1_700)));
        // Now another user's (a setuid program's real uid does not change; a new pid's does).
        young.exec(7, 2000, t0 + ms(1_600));
        assert_eq!(young.by_user.keys().collect::<Vec<_>>(), vec![&2000]);
    }

    #[test]
    fn a_listing_adds_the_unknown_and_forgets_the_gone() {
        let t0 = Instant::now();
        let mut young = YoungProcesses::new(HashSet::from([1, 2]));
        young.exec(3, 1000, t0);
        // 2 and 3 are gone; 4 was forked without an exec; 1 ran from the start.
        young.listed(HashSet::from([1, 4]), |_| 1000, t0 + ms(100));
        assert_eq!(young.known(), &HashSet::from([1, 4]));
        assert_eq!(young.next_due(), Some(t0 + ms(300)));
        assert_eq!(young.take_due(t0 + ms(300)), vec![4]);
        // A process exec'd since the listing is known: the next listing does not start it over.
        young.exec(5, 1000, t0 + ms(400));
        young.listed(HashSet::from([1, 4, 5]), |_| 1000, t0 + ms(500));
        assert_eq!(young.next_due(), Some(t0 + ms(600)));
    }

    #[test]
    fn one_users_exec_storm_cannot_crowd_out_another_users_game() {
        let t0 = Instant::now();
        let mut young = YoungProcesses::new(HashSet::new());
        // A user's share is bounded...
        for pid in 0..MAX_YOUNG_PER_USER as u32 {
            assert!(young.exec(pid, 1000, t0));
        }
        assert!(
            !young.exec(100_000, 1000, t0),
            "one more than a user's share"
        );
        assert!(
            young.exec(0, 1000, t0 + ms(5)),
            "a young process may exec again"
        );
        // ...and when many users fill the whole list, the one with the most gives one up for
        // another user's new process; the memory stays bounded.
        let mut pid = 200_000;
        for uid in 2000..2000 + (MAX_YOUNG / MAX_YOUNG_PER_USER) as u32 {
            for _ in 0..MAX_YOUNG_PER_USER {
                pid += 1;
                young.exec(pid, uid, t0);
            }
        }
        assert_eq!(young.young.len(), MAX_YOUNG);
        assert!(
            young.exec(1, 4242, t0 + ms(10)),
            "the game's exec finds room"
        );
        assert_eq!(young.young.len(), MAX_YOUNG);
        assert!(young.young.contains_key(&1));
        let counts: usize = young.by_user.values().map(HashSet::len).sum();
        assert_eq!(counts, young.young.len(), "the per-user index agrees");
    }
}
