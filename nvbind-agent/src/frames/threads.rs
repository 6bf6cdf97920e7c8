//! What each thread of a process did around a frame: the evidence beyond the presenting thread.

use nvbind_common::{Culprit, ThreadCounters};

/// What one thread did within a window.
#[derive(Debug, Clone, Default)]
pub struct ThreadDelta {
    pub tid: u32,
    pub counters: ThreadCounters,
    /// Who kept it waiting for a CPU longest, when that wait ended within the window.
    pub waited_behind: Option<Culprit>,
}

/// What each thread of a process did between two snapshots that enclose an interval.
#[derive(Debug, Clone, Default)]
pub struct ThreadWindow {
    pub from_ns: u64,
    pub to_ns: u64,
    pub threads: Vec<ThreadDelta>,
}
