//! The agent's side of `TID_MARKS`, the cheap check in front of the kernel's `THREADS` table
//! (see `nvbind-ebpf/src/state.rs`): one byte per tid, nonzero where the table may hold it.
//!
//! The agent marks a tid after inserting its entry, and unmarks it after removing the entry,
//! then looks the tid up again and marks it back if the kernel made a new entry meanwhile (the
//! kernel marks only after its insert, so a mark is never missing from an entry for longer than
//! the kernel's own insert takes). The array is mapped into the agent (`BPF_F_MMAPABLE`) so that
//! both sides change a word with one atomic instruction: the kernel adds, the agent ors and ands.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{maps::Map, Ebpf};

use super::ProbeError;

/// The map's name in the object.
pub(super) const MAP: &str = "TID_MARKS";

/// How the scheduler programs tell an untracked task from a tracked one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UntrackedCheck {
    /// A byte per tid in an array the verifier inlines (the default).
    #[default]
    Marks,
    /// The `THREADS` hash table alone (what nvbind did before; kept for the benchmark).
    Table,
}

/// Words of the array for a kernel whose tids are below `pid_max`.
pub(super) fn words_for(pid_max: u32) -> u32 {
    pid_max.div_ceil(8).max(1)
}

/// The kernel's `pid_max` (tids are below it), or the most it can be where it cannot be read.
pub(super) fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 22)
}

/// `TID_MARKS`, mapped into the agent.
pub(super) struct TidMarks {
    words: NonNull<AtomicU64>,
    count: usize,
}

// SAFETY: the mapping is shared memory used only through atomics; it lives until drop.
unsafe impl Send for TidMarks {}
// SAFETY: as above.
unsafe impl Sync for TidMarks {}

impl TidMarks {
    /// Maps the loaded object's array.
    pub(super) fn map(ebpf: &Ebpf) -> Result<TidMarks, ProbeError> {
        let Some(Map::Array(data)) = ebpf.map(MAP) else {
            return Err(ProbeError::MissingMap(MAP));
        };
        let count = data
            .info()
            .map_err(|source| ProbeError::Map { map: MAP, source })?
            .max_entries() as usize;
        let len = count * size_of::<u64>();
        // SAFETY: a shared mapping of the map's fd, of its size; checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ProbeError::Load(format!(
                "cannot map {MAP} into the agent: {}",
                std::io::Error::last_os_error()
            )));
        }
        let words = NonNull::new(ptr.cast::<AtomicU64>())
            .ok_or_else(|| ProbeError::Load(format!("{MAP} was mapped at address 0")))?;
        Ok(TidMarks { words, count })
    }

    /// The word holding `tid`'s byte, and the byte's shift, if the array covers `tid`.
    fn slot(&self, tid: u32) -> Option<(&AtomicU64, u32)> {
        let index = (tid / 8) as usize;
        if index >= self.count {
            return None;
        }
        // SAFETY: `index` is within the mapping, which lives as long as `self`; AtomicU64 has
        // the layout of the u64 the kernel changes atomically.
        let word = unsafe { &*self.words.as_ptr().add(index) };
        Some((word, (tid % 8) * 8))
    }

    /// Marks `tid` (after its entry was inserted).
    pub(super) fn mark(&self, tid: u32) {
        if let Some((word, shift)) = self.slot(tid) {
            word.fetch_or(1 << shift, Ordering::SeqCst);
        }
    }

    /// Unmarks `tid` (after its entry was removed); the caller then looks it up again.
    pub(super) fn unmark(&self, tid: u32) {
        if let Some((word, shift)) = self.slot(tid) {
            word.fetch_and(!(0xff << shift), Ordering::SeqCst);
        }
    }
}

impl Drop for TidMarks {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of this length, unmapped once.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.count * size_of::<u64>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tid_below_pid_max_has_a_byte() {
        assert_eq!(words_for(1), 1);
        assert_eq!(words_for(8), 1);
        assert_eq!(words_for(9), 2);
        assert_eq!(words_for(4_194_304), 524_288);
        assert_eq!(words_for(0), 1);
    }
}
