//! Recent counters of every thread of the processes that present frames, so a stutter's evidence
//! can cover the game's other threads too (the kernel's per-frame record covers only the thread
//! that presented). Read on every drain, kept for a short while.

use std::collections::{HashMap, VecDeque};

use nvbind_common::{ThreadCounters, ThreadState};

use crate::frames::{ThreadDelta, ThreadWindow};

/// How long snapshots are kept: longer than any frame worth explaining in detail.
const KEEP_NS: u64 = 2_000_000_000;

/// Waits shorter than this are not worth naming who caused them.
const MIN_NAMED_WAIT_NS: u64 = 1_000_000;

/// The counters of one process's threads at one moment.
#[derive(Debug, Clone)]
struct Snapshot {
    ts_ns: u64,
    threads: Vec<(u32, ThreadState)>,
}

/// Per process, the snapshots of the last [`KEEP_NS`].
#[derive(Debug, Default)]
pub struct ThreadSnapshots {
    by_process: HashMap<u32, VecDeque<Snapshot>>,
}

impl ThreadSnapshots {
    /// Adds a snapshot of `pid`'s threads taken at `ts_ns`, forgetting old ones.
    pub fn push(&mut self, pid: u32, ts_ns: u64, threads: Vec<(u32, ThreadState)>) {
        let ring = self.by_process.entry(pid).or_default();
        ring.push_back(Snapshot { ts_ns, threads });
        while ring
            .front()
            .is_some_and(|s| ts_ns.saturating_sub(s.ts_ns) > KEEP_NS)
        {
            ring.pop_front();
        }
    }

    /// Forgets a process.
    pub fn forget(&mut self, pid: u32) {
        self.by_process.remove(&pid);
    }

    /// Each thread's counters over the smallest snapshot span that encloses `[from_ns, to_ns]`
    /// (or as much of it as is still kept). `None` without two snapshots.
    pub fn window(&self, pid: u32, from_ns: u64, to_ns: u64) -> Option<ThreadWindow> {
        let ring = self.by_process.get(&pid)?;
        let before = ring
            .iter()
            .rev()
            .find(|s| s.ts_ns <= from_ns)
            .or(ring.front())?;
        let after = ring.iter().find(|s| s.ts_ns >= to_ns).or(ring.back())?;
        if after.ts_ns <= before.ts_ns {
            return None;
        }
        let earlier: HashMap<u32, &ThreadCounters> = before
            .threads
            .iter()
            .map(|(tid, t)| (*tid, &t.totals))
            .collect();
        let threads = after
            .threads
            .iter()
            .map(|(tid, now)| {
                let counters = match earlier.get(tid) {
                    Some(then) => now.totals.since(then),
                    // A thread born inside the window: everything it did is in it.
                    None => now.totals,
                };
                let w = now.recent_wait;
                let waited_behind = (w.tid != 0
                    && w.wait_ns >= MIN_NAMED_WAIT_NS
                    && (before.ts_ns..=after.ts_ns).contains(&w.at_ns))
                .then_some(w);
                ThreadDelta {
                    tid: *tid,
                    counters,
                    waited_behind,
                }
            })
            // A thread that did nothing in the window tells nothing about it: a game's hundreds
            // of sleeping threads would cost memory with every stutter kept.
            .filter(|d| d.counters != ThreadCounters::default() || d.waited_behind.is_some())
            .collect();
        Some(ThreadWindow {
            from_ns: before.ts_ns,
            to_ns: after.ts_ns,
            threads,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(on_cpu_ns: u64) -> ThreadState {
        ThreadState {
            totals: ThreadCounters {
                on_cpu_ns,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_window_encloses_the_interval() {
        let mut s = ThreadSnapshots::default();
        for i in 0..10u64 {
            s.push(1, i * 20, vec![(5, counters(i * 3)), (6, counters(i))]);
        }
        s.push(
            1,
            200,
            vec![(5, counters(30)), (6, counters(10)), (7, counters(4))],
        );
        let w = s.window(1, 45, 85).expect("a window");
        assert_eq!((w.from_ns, w.to_ns), (40, 100));
        let of = |tid| {
            w.threads
                .iter()
                .find(|t| t.tid == tid)
                .map(|t| t.counters.on_cpu_ns)
        };
        assert_eq!(of(5), Some(15 - 6));
        assert_eq!(of(6), Some(5 - 2));
        let w = s.window(1, 150, 190).expect("a window");
        assert_eq!(
            w.threads
                .iter()
                .find(|t| t.tid == 7)
                .map(|t| t.counters.on_cpu_ns),
            Some(4),
            "a new thread counts from zero"
        );
        assert!(s.window(2, 0, 10).is_none());
        s.push(1, 220, vec![(5, counters(31)), (6, counters(10))]);
        let w = s.window(1, 205, 215).expect("a window");
        let tids: Vec<u32> = w.threads.iter().map(|t| t.tid).collect();
        assert_eq!(
            tids,
            [5],
            "thread 6 did nothing, and 7 is gone: neither is kept"
        );
    }

    #[test]
    fn old_snapshots_are_dropped() {
        let mut s = ThreadSnapshots::default();
        s.push(1, 0, vec![]);
        s.push(1, KEEP_NS + 1, vec![]);
        assert_eq!(s.by_process[&1].len(), 1);
    }
}
