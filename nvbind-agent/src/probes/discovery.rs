//! Discovery mode's per-user cap: how many presenting processes of one user the kernel tracks
//! at once, so that one user's processes cannot fill the kernel's process table for everyone
//! else's games (see `DISCOVERY_CAP` in the eBPF crate's `state.rs`).
//!
//! The kernel takes a charge from the process's real uid when it discovers it, and gives it back
//! at the process's exit. The agent gives it back when it stops tracking a process itself; it
//! counts what it gave back in a map only it writes, so no count is ever overwritten by the other
//! side.

use std::collections::BTreeMap;

use aya::maps::lpm_trie::{Key, LpmTrie};
use nvbind_common::{over_rate_key, present_source};

use super::{ProbeError, Probes};

/// A range of subordinate uids and the user who owns it (a line of `/etc/subuid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubordinateUids {
    pub owner: u32,
    pub start: u32,
    pub count: u32,
}

/// The frame-rate cap per user when none is configured: far above any game, far below what one
/// user presenting pbuffers in a loop could push through the ring buffer.
pub const DEFAULT_MAX_FPS_PER_USER: u32 = 20_000;

/// The least cap a configuration may set.
pub const MIN_MAX_FPS_PER_USER: u32 = 5_000;

/// The most: what one user's window (a hundredth of it) lets through at once stays under a
/// third of the kernel's 512 KiB ring buffer.
pub const MAX_MAX_FPS_PER_USER: u32 = 50_000;

/// The most prefixes `SUBUID_OWNERS` holds (its size in the eBPF crate).
const SUBUID_PREFIXES_MAX: usize = 4096;

/// One user's discovered processes, as the kernel counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserDiscoveries {
    pub uid: u32,
    /// Processes tracked now.
    pub tracked: u64,
}

impl Probes {
    /// Sets the cap (0: none). Root's processes are never capped.
    pub fn set_discovery_cap(&mut self, cap: u32) -> Result<(), ProbeError> {
        const MAP: &str = "DISCOVERY_CAP";
        let map = self.ebpf.map_mut(MAP).ok_or(ProbeError::MissingMap(MAP))?;
        let mut array = aya::maps::Array::<_, u32>::try_from(map).map_err(Self::map_err(MAP))?;
        array.set(0, cap, 0).map_err(Self::map_err(MAP))
    }

    /// Gives back the charge of discovered process `pid`, if the kernel has not already (at its
    /// exit). Called before the process leaves `TRACKED_PROCESSES`, so that the kernel cannot
    /// discover it again, and charge it again, in between.
    pub(super) fn release_discovery(&mut self, pid: u32) -> Result<(), ProbeError> {
        let mut by = self.hash_map_mut::<u32, u32>("DISCOVERED_BY")?;
        let Ok(uid) = by.get(&pid, 0) else {
            return Ok(());
        };
        // The kernel deletes the entry when it gives the charge back itself: only the side whose
        // delete succeeds gives it back.
        if by.remove(&pid).is_err() {
            return Ok(());
        }
        let mut released = self.hash_map_mut::<u32, u64>("DISCOVERY_RELEASED")?;
        let before = released.get(&uid, 0).unwrap_or(0);
        released
            .insert(uid, before.wrapping_add(1), 0)
            .map_err(Self::map_err("DISCOVERY_RELEASED"))
    }

    /// Tells the kernel who owns which subordinate uids, replacing what it was told before, so
    /// that a user's rootless containers are charged to that user. Ranges beyond the map's room
    /// are left out, and their number returned.
    pub fn set_subuid_owners(&mut self, ranges: &[SubordinateUids]) -> Result<usize, ProbeError> {
        const MAP: &str = "SUBUID_OWNERS";
        let map = self.ebpf.map_mut(MAP).ok_or(ProbeError::MissingMap(MAP))?;
        let mut trie = LpmTrie::<_, [u8; 4], u32>::try_from(map).map_err(Self::map_err(MAP))?;
        let old: Vec<Key<[u8; 4]>> = trie.keys().filter_map(Result::ok).collect();
        for key in &old {
            let _ = trie.remove(key);
        }
        let mut prefixes = 0;
        let mut left_out = 0;
        for range in ranges {
            let blocks = uid_prefixes(range.start, range.count);
            if prefixes + blocks.len() > SUBUID_PREFIXES_MAX {
                left_out += 1;
                continue;
            }
            prefixes += blocks.len();
            for (first, len) in blocks {
                trie.insert(&Key::new(len, first.to_be_bytes()), range.owner, 0)
                    .map_err(Self::map_err(MAP))?;
            }
        }
        Ok(left_out)
    }

    /// Sets the most frames per second one user's processes may have stored (0: no cap); frames
    /// beyond it are counted per process ([`Self::frames_over_rate`]). Root is never capped.
    pub fn set_frame_rate_cap(&mut self, fps: u32) -> Result<(), ProbeError> {
        const MAP: &str = "FRAME_RATE_CAP";
        let map = self.ebpf.map_mut(MAP).ok_or(ProbeError::MissingMap(MAP))?;
        let mut array = aya::maps::Array::<_, u32>::try_from(map).map_err(Self::map_err(MAP))?;
        array.set(0, fps, 0).map_err(Self::map_err(MAP))
    }

    /// Frames `pid` presented beyond its user's frame-rate cap since it was tracked, per present
    /// source (sources without any left out).
    pub fn frames_over_rate(&self, pid: u32) -> BTreeMap<u32, u64> {
        let Ok(map) = self.hash_map::<u64, u64>("FRAMES_OVER_RATE") else {
            return BTreeMap::new();
        };
        (1..=present_source::MAX)
            .filter_map(|source| {
                let n = map.get(&over_rate_key(pid, source), 0).ok()?;
                Some((source, n))
            })
            .collect()
    }

    /// Frames presented beyond a frame-rate cap since the probes were loaded, all processes.
    pub fn frames_over_rate_total(&self) -> u64 {
        self.sum_per_cpu("FRAMES_OVER_RATE_TOTAL", 0)
    }

    /// Forgets `pid`'s counts of frames over the rate (it is no longer tracked).
    pub(super) fn forget_frames_over_rate(&mut self, pid: u32) {
        if let Ok(mut map) = self.hash_map_mut::<u64, u64>("FRAMES_OVER_RATE") {
            for source in 1..=present_source::MAX {
                let _ = map.remove(&over_rate_key(pid, source));
            }
        }
    }

    /// Presents the kernel did not track because their user was at the cap.
    pub fn discovery_refused(&self) -> u64 {
        self.sum_per_cpu("DISCOVERY_REFUSED", 0)
    }

    /// Every user with processes discovered now, and how many.
    pub fn user_discoveries(&self) -> Result<Vec<UserDiscoveries>, ProbeError> {
        let charged = self.hash_map::<u32, u64>("DISCOVERY_CHARGED")?;
        let released = self.hash_map::<u32, u64>("DISCOVERY_RELEASED")?;
        let mut users: Vec<UserDiscoveries> = charged
            .iter()
            .filter_map(Result::ok)
            .map(|(uid, charged)| UserDiscoveries {
                uid,
                tracked: charged.wrapping_sub(released.get(&uid, 0).unwrap_or(0)),
            })
            .filter(|u| u.tracked > 0)
            .collect();
        users.sort_by_key(|u| u.uid);
        Ok(users)
    }
}

/// `[start, start + count)` as the fewest (first uid, prefix length) blocks that cover exactly
/// it: the form a longest-prefix-match map takes. A range past the last uid is cut there.
fn uid_prefixes(start: u32, count: u32) -> Vec<(u32, u32)> {
    let mut blocks = Vec::new();
    let mut next = u64::from(start);
    let end = (u64::from(start) + u64::from(count)).min(1 << 32);
    while next < end {
        // The largest aligned block at `next` that does not pass `end`.
        let aligned = if next == 0 {
            1u64 << 32
        } else {
            1u64 << next.trailing_zeros()
        };
        let mut size = aligned;
        while size > end - next {
            size >>= 1;
        }
        blocks.push((next as u32, 32 - size.trailing_zeros()));
        next += size;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::uid_prefixes;

    /// Checks that the blocks of `[start, start + count)` are aligned prefixes covering exactly
    /// it (cut at the last uid), in order, every uid once; returns how many there are.
    fn check_exact(start: u32, count: u32) -> usize {
        let blocks = uid_prefixes(start, count);
        let mut next = u64::from(start);
        for &(first, len) in &blocks {
            assert!(
                (1..=32).contains(&len) || (len == 0 && first == 0),
                "{blocks:?}"
            );
            let size = 1u64 << (32 - len);
            assert_eq!(u64::from(first), next, "a gap or overlap: {blocks:?}");
            assert_eq!(u64::from(first) % size, 0, "not a prefix: {blocks:?}");
            next += size;
        }
        let end = (u64::from(start) + u64::from(count)).min(1 << 32);
        assert_eq!(
            next.max(u64::from(start)),
            end,
            "{start}+{count}: {blocks:?}"
        );
        blocks.len()
    }

    #[test]
    fn subordinate_ranges_become_exact_prefixes() {
        // Debian's first user: 100000 (0x186a0) and 65536 more; at most two blocks per bit.
        assert!(check_exact(100_000, 65_536) <= 32);
        assert!(check_exact(165_536, 65_536) <= 32);
        // An aligned range is one block.
        assert_eq!(uid_prefixes(65_536, 65_536), vec![(65_536, 16)]);
        assert_eq!(uid_prefixes(7, 1), vec![(7, 32)]);
        assert_eq!(check_exact(0, 0), 0);
        check_exact(1, 3);
        check_exact(0, u32::MAX);
        // A range past the last uid is cut there.
        assert_eq!(uid_prefixes(u32::MAX - 1, 10), vec![(u32::MAX - 1, 31)]);
    }
}
