//! Who kept a tracked thread off the CPU: the culprit the scheduler programs record, and the
//! per-CPU watch they measure it with.

use crate::TASK_COMM_LEN;

/// How long a thread's `recent_wait` is kept against shorter waits: long enough for the agent's
/// next snapshot (every 20 ms) to see it, short enough that last second's wait does not hide this
/// frame's.
pub const RECENT_WAIT_NS: u64 = 250_000_000;

/// Who kept a tracked thread off the CPU within one frame interval (`frame_culprit`) or in its
/// longest recent wait (`recent_wait`): a *process*, and the one of its tasks that held the CPU
/// longest in one stretch.
///
/// A wait is charged to the process whose tasks held the thread's CPU longest in total during it
/// (`CpuWatch`, `HeldBy`): a task counts under its own process, or, when its process is young
/// (started less than `YOUNG_NS` before the wait began: a short-lived child, a shell loop's
/// commands, `make -j`'s compilers), under its nearest ancestor process that is not. Without a
/// watch, the wait goes to the preempting task when it began with a preemption, else to the task
/// that had the CPU until the thread got it. Several waits behind the same process add up; a
/// wait behind another process that weighs more (`weight`: held the CPU longer) replaces it (a
/// one-slot heavy-hitter sketch: cheap, and exact when one process dominates, which is the case
/// worth naming).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Culprit {
    /// Run-queue wait attributed to this process, in the frame interval.
    pub wait_ns: u64,
    /// How long its tasks held the CPU during those waits (measured by the watch); 0 when the
    /// culprit was not measured but inferred (the preemptor, or the task that ran last).
    pub held_ns: u64,
    /// The longest single stretch `tid` held the CPU for during those waits (0: not measured).
    pub longest_ns: u64,
    /// When the (last) wait behind it ended (`bpf_ktime_get_ns`).
    pub at_ns: u64,
    /// The cgroup v2 id of `tid` (the inode number of its cgroup directory), 0 when unknown.
    pub cgroup_id: u64,
    /// The task that held the CPU longest in one stretch, 0 when none.
    pub tid: u32,
    /// Its process id, 0 when unknown.
    pub tgid: u32,
    /// The process blamed: `tgid`, or, when that is young, its nearest ancestor that is not
    /// (`YOUNG_NS`); 0 when unknown.
    pub pid: u32,
    /// [`culprit_flags`].
    pub flags: u32,
    /// `tid`'s name.
    pub comm: [u8; TASK_COMM_LEN],
    /// `pid`'s name (its main thread's `comm`) as read at its longest stretch in a wait charged
    /// to it: written when the process takes its place in the wait's account and again with
    /// each new longest stretch (for an inferred culprit, when the wait ended), and taken from
    /// the latest wait when several behind it add up. A name taken by an `execve` during a wait
    /// comes with the process's next longest stretch. Empty when unknown (a thread other than
    /// the main one, whose main thread could not be read: no BTF, or the read failed); the agent
    /// then names it from /proc.
    pub process_comm: [u8; TASK_COMM_LEN],
}

impl Culprit {
    /// What it counts for against another culprit of the same frame: the time its tasks held the
    /// CPU when that was measured, else the wait charged to it.
    #[inline(always)]
    pub fn weight(&self) -> u64 {
        if self.held_ns != 0 {
            self.held_ns
        } else {
            self.wait_ns
        }
    }

    /// Whether `other` blames the same process (the same task when the process is unknown).
    #[inline(always)]
    pub fn same_as(&self, other: &Culprit) -> bool {
        if self.pid != 0 && other.pid != 0 {
            self.pid == other.pid
        } else {
            self.tid == other.tid
        }
    }
}

/// What a [`Culprit`] is, beyond its ids.
pub mod culprit_flags {
    /// The process is a kernel thread (`PF_KTHREAD`).
    pub const KERNEL_THREAD: u32 = 1;
    /// Some of its time was its young descendants' (see `YOUNG_NS`).
    pub const CHILDREN: u32 = 2;
}

/// Tracked threads' waits one CPU's watch follows at once.
pub const WATCH_WAITS: usize = 4;
/// Processes one wait's accounting keeps apart (`WatchedWait::held`, a Space-Saving table): a
/// stretch goes to its process's slot; a process without one takes a free slot, else the slot
/// that counts least (`HeldBy::held_ns + HeldBy::error_ns`, the first on a tie), and what that
/// slot counted becomes its `error_ns`. A process that held the CPU for more than a
/// `HELD_SLOTS`th of the time counted in the wait therefore always has a slot; the wait is
/// charged to the slot with the most `held_ns`.
pub const HELD_SLOTS: usize = 4;
/// A followed wait this old gives its place to a new one when the watch is full (its thread
/// stopped being tracked, or the wait was lost).
pub const STALE_WAIT_NS: u64 = 2_000_000_000;
/// A task's CPU time counts under its own process when that process had been running this long
/// when the wait began (it was alive for the whole stutter: longer than a frame worth explaining
/// in detail); a younger process's (a shell loop's command, a build's compiler) counts under its
/// nearest ancestor that had.
pub const YOUNG_NS: u64 = 250_000_000;
/// Ancestors looked at above a task whose process is young.
pub const MAX_ANCESTORS: usize = 4;

/// One process whose tasks held a CPU while a tracked thread waited for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HeldBy {
    /// Time its tasks held the CPU during the wait since it took the slot (0: the slot is free).
    pub held_ns: u64,
    /// What the slot counted (`held_ns + error_ns`) when the process took it from another: time
    /// it may have held the CPU before, unmeasured (Space-Saving's overestimate); 0 when it took
    /// a free slot. It only decides which slot makes room next.
    pub error_ns: u64,
    /// The longest single stretch among them, and whose it was (`tid`, `tgid`, `cgroup_id`,
    /// `task_comm`).
    pub longest_ns: u64,
    pub cgroup_id: u64,
    /// The process blamed (see [`Culprit::pid`]).
    pub pid: u32,
    /// [`culprit_flags`].
    pub flags: u32,
    pub tid: u32,
    pub tgid: u32,
    /// `pid`'s name as read at its longest stretch (written with `longest_ns`).
    pub comm: [u8; TASK_COMM_LEN],
    pub task_comm: [u8; TASK_COMM_LEN],
}

/// A tracked thread's wait for a CPU, followed by that CPU's watch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchedWait {
    /// When the wait began (the thread's `since_ns`); 0: the place is free.
    pub since_ns: u64,
    /// The waiting thread.
    pub tid: u32,
    /// Non-zero when it presents frames: its wait may take the place of another thread's when
    /// the watch is full.
    pub presenter: u32,
    /// Who held the CPU meanwhile, by process.
    pub held: [HeldBy; HELD_SLOTS],
}

/// Per CPU (`CPU_WATCH`, indexed by CPU): the waits of tracked threads woken onto or preempted on
/// this CPU, each with who held the CPU while it lasted. Every context switch on the CPU adds
/// the stretch that ends to each wait it overlaps, under the process blamed for it; the wait is
/// charged to the process with the most time, not to whoever happened to run last before the
/// thread got the CPU, nor to a preemptor that ran only a moment, nor to one of a shell loop's
/// many short-lived children.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuWatch {
    /// When a tracked thread first waited for this CPU (0: never; switches here are ignored).
    pub armed_ns: u64,
    /// The last context switch on this CPU since it was armed.
    pub last_switch_ns: u64,
    pub waits: [WatchedWait; WATCH_WAITS],
}
