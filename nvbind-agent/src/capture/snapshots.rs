//! Recent counters of every thread of the processes that present frames, so a stutter's evidence
//! can cover the game's other threads too (the kernel's per-frame record covers only the thread
//! that presented). Read on every drain, kept for a short while.

use std::collections::{HashMap, VecDeque};

use nvbind_common::{Culprit, ThreadCounters, ThreadState};

use crate::frames::{ThreadDelta, ThreadWindow};

/// How long snapshots are kept: longer than any frame worth explaining in detail.
const KEEP_NS: u64 = 2_000_000_000;

/// The least time between two snapshots of one process kept: the capture drains every 20 ms,
/// and more often when woken (new processes, API streams), which must not multiply the memory
/// a process's snapshots take (at most `KEEP_NS / MIN_SPACING_NS` of them).
const MIN_SPACING_NS: u64 = 10_000_000;

/// Waits shorter than this are not worth naming who caused them.
const MIN_NAMED_WAIT_NS: u64 = 1_000_000;

/// The threads a window keeps: the busiest by CPU time plus run-queue wait, the order the
/// report's `busy_threads` (3 of them, the presenting thread left out) and its verdicts read
/// them in. A game's hundreds of busy threads would otherwise cost memory with every stutter kept.
pub const WINDOW_THREADS: usize = 8;

/// What a window needs of one thread's kernel record: its counters and the last wait it had
/// (about a third of the whole record, kept ~100 times a thread).
#[derive(Debug, Clone)]
struct ThreadMark {
    totals: ThreadCounters,
    recent_wait: Culprit,
}

/// The counters of one process's threads at one moment.
#[derive(Debug, Clone)]
struct Snapshot {
    ts_ns: u64,
    threads: Vec<(u32, ThreadMark)>,
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
        if ring
            .back()
            .is_some_and(|last| ts_ns.saturating_sub(last.ts_ns) < MIN_SPACING_NS)
        {
            return;
        }
        let threads = threads
            .into_iter()
            .map(|(tid, t)| {
                (
                    tid,
                    ThreadMark {
                        totals: t.totals,
                        recent_wait: t.recent_wait,
                    },
                )
            })
            .collect();
        ring.push_back(Snapshot { ts_ns, threads });
        while ring
            .front()
            .is_some_and(|s| ts_ns.saturating_sub(s.ts_ns) > KEEP_NS)
        {
            ring.pop_front();
        }
    }

    /// When the newest snapshot of `pid` kept was taken.
    pub fn newest(&self, pid: u32) -> Option<u64> {
        self.by_process.get(&pid)?.back().map(|s| s.ts_ns)
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
        let mut threads: Vec<ThreadDelta> = after
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
        if threads.len() > WINDOW_THREADS {
            let busy = |d: &ThreadDelta| d.counters.on_cpu_ns + d.counters.runq_wait_ns;
            threads.sort_by(|a, b| busy(b).cmp(&busy(a)).then(a.tid.cmp(&b.tid)));
            threads.truncate(WINDOW_THREADS);
        }
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

    const MS: u64 = 1_000_000;

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
            s.push(1, i * 20 * MS, vec![(5, counters(i * 3)), (6, counters(i))]);
        }
        s.push(
            1,
            200 * MS,
            vec![(5, counters(30)), (6, counters(10)), (7, counters(4))],
        );
        let w = s.window(1, 45 * MS, 85 * MS).expect("a window");
        assert_eq!((w.from_ns, w.to_ns), (40 * MS, 100 * MS));
        let of = |tid| {
            w.threads
                .iter()
                .find(|t| t.tid == tid)
                .map(|t| t.counters.on_cpu_ns)
        };
        assert_eq!(of(5), Some(15 - 6));
        assert_eq!(of(6), Some(5 - 2));
        let w = s.window(1, 150 * MS, 190 * MS).expect("a window");
        assert_eq!(
            w.threads
                .iter()
                .find(|t| t.tid == 7)
                .map(|t| t.counters.on_cpu_ns),
            Some(4),
            "a new thread counts from zero"
        );
        assert!(s.window(2, 0, 10).is_none());
        s.push(1, 220 * MS, vec![(5, counters(31)), (6, counters(10))]);
        let w = s.window(1, 205 * MS, 215 * MS).expect("a window");
        let tids: Vec<u32> = w.threads.iter().map(|t| t.tid).collect();
        assert_eq!(
            tids,
            [5],
            "thread 6 did nothing, and 7 is gone: neither is kept"
        );
    }

    #[test]
    fn a_window_keeps_the_busiest_threads_only() {
        let mut s = ThreadSnapshots::default();
        s.push(1, 0, (1..=40).map(|tid| (tid, counters(0))).collect());
        // Thread t ran t ns; thread 3 also waited 100 ns for a CPU.
        let mut later: Vec<(u32, ThreadState)> = (1..=40)
            .map(|tid| (tid, counters(u64::from(tid))))
            .collect();
        later[2].1.totals.runq_wait_ns = 100;
        s.push(1, 20 * MS, later);
        let w = s.window(1, 5 * MS, 15 * MS).expect("a window");
        let tids: Vec<u32> = w.threads.iter().map(|t| t.tid).collect();
        assert_eq!(tids, [3, 40, 39, 38, 37, 36, 35, 34]);
    }

    #[test]
    fn old_snapshots_are_dropped_and_close_ones_not_kept() {
        let mut s = ThreadSnapshots::default();
        s.push(1, 0, vec![]);
        s.push(1, KEEP_NS + 1, vec![]);
        assert_eq!(s.by_process[&1].len(), 1);
        s.push(1, KEEP_NS + MIN_SPACING_NS, vec![]);
        assert_eq!(s.by_process[&1].len(), 1, "a drain right after another");
        s.push(1, KEEP_NS + 1 + MIN_SPACING_NS, vec![]);
        assert_eq!(s.by_process[&1].len(), 2);
    }
}
