//! Who kept a tracked thread off the CPU (`Culprit`), for the scheduler programs: each CPU's
//! watch follows the waits of tracked threads for it, adds every stretch another task held the CPU
//! to them under the process blamed for that task (its own, or a young process's nearest older
//! ancestor), and charges each wait to the process with the most time; without a watch, to the
//! preemptor or the task that ran last. Several waits behind one process add up per frame.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_probe_read_kernel_buf,
    generated::{bpf_get_current_cgroup_id, bpf_get_current_task},
};
use aya_ebpf::Global;
use nvbind_common::{
    culprit_flags, sched_step, Culprit, HeldBy, ThreadState, WatchedWait, HELD_SLOTS,
    MAX_ANCESTORS, RECENT_WAIT_NS, STALE_WAIT_NS, TASK_COMM_LEN, WATCH_WAITS, YOUNG_NS,
};

use crate::state::{
    argument_comm, argument_field, kernel_field, runs, Outgoing, CPU_WATCH, CULPRIT_SCRATCH,
    TASK_COMM_OFF, TASK_FLAGS_OFF, TASK_GROUP_LEADER_OFF, TASK_REAL_PARENT_OFF,
    TASK_START_TIME_OFF, TASK_TGID_OFF,
};

/// `PF_KTHREAD` in `task_struct.flags`: a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// Expands `$body` four times with `$i` = 0, 1, 2, 3: the loops over a watch's waits and over a
/// wait's slots are written out. Left to LLVM, they become a pointer walk whose bound Linux 6.1's
/// verifier loses track of (it then rejects the map access one past the end); newer verifiers
/// follow it.
macro_rules! each_of_four {
    ($i:ident => $body:block) => {{
        {
            let $i: usize = 0;
            $body
        }
        {
            let $i: usize = 1;
            $body
        }
        {
            let $i: usize = 2;
            $body
        }
        {
            let $i: usize = 3;
            $body
        }
    }};
}

const _: () = assert!(
    WATCH_WAITS == 4 && HELD_SLOTS == 4,
    "the loops over a watch's waits and a wait's slots are written out for four"
);

/// The task whose stretch on a CPU just ended (the current task at a switch); its name and cgroup
/// are read only when a wait's account needs them (`fill`).
struct Stretch {
    /// The task itself where a BTF tracepoint handed it over (null on classic tracepoints).
    task: *const u8,
    cgroup_id: u64,
    tid: u32,
    tgid: u32,
    filled: bool,
    comm: [u8; TASK_COMM_LEN],
}

impl Stretch {
    #[inline(always)]
    fn fill(&mut self) {
        if !self.filled && runs(sched_step::HOLDER_DETAILS) {
            self.filled = true;
            self.comm = if self.task.is_null() {
                bpf_get_current_comm().unwrap_or_default()
            } else {
                argument_comm(self.task)
            };
            // SAFETY: helper without arguments; the current task is the one whose stretch ended.
            self.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        }
    }
}

/// The process a stretch of the current task is blamed on: its id, its main thread (whose name
/// the process goes by; a kernel address, 0 when unknown), whether that main thread is the
/// current task (known without the address: the current task is its process's main thread), and
/// [`culprit_flags`].
struct Blamed {
    leader: u64,
    pid: u32,
    flags: u32,
    current: bool,
}

/// The process the current task (`tid` of `tgid`) is blamed for in a wait that began at `since`:
/// its own process when that had been running for `YOUNG_NS` by then, else the nearest ancestor
/// that had (at most `MAX_ANCESTORS` up, else the furthest looked at), never init or kthreadd (an
/// orphan, or a process the kernel started, answers for itself); a kernel thread always for
/// itself. Without the kernel's `task_struct` layout (no BTF), the current process.
///
/// This runs at every switch that ends a stretch inside a followed wait, so the common case (an
/// old process's main thread) costs two reads: its start time and its flags. Where a BTF
/// tracepoint handed the current task over (`task`, else null) every read is a plain load, the
/// walk up a young process's ancestors included; else each is a helper call (measured in the
/// tracked storm, whose processes are young for its first 250 ms: 160 ns of a switch's 720).
#[inline(always)]
fn blamed_for(tgid: u32, tid: u32, since: u64, task: *const u8) -> Blamed {
    let settled_by = since.saturating_sub(YOUNG_NS);
    // Until the main thread is read: only a main thread is known to be its process's.
    let mut b = Blamed {
        leader: 0,
        pid: tgid,
        flags: 0,
        current: tid == tgid,
    };
    if TASK_GROUP_LEADER_OFF.load() == 0 {
        return b;
    }
    if task.is_null() {
        // SAFETY: a helper without arguments; the pointer is only read through checked
        // bpf_probe_read_kernel.
        let current = unsafe { bpf_get_current_task() };
        lineage::<HelperReads>(&mut b, current, tgid, tid, settled_by);
    } else {
        lineage::<PlainLoads>(&mut b, task as u64, tgid, tid, settled_by);
    }
    b
}

/// How [`lineage`] reads a field of a task at an offset from the kernel's BTF (0 where the
/// read fails).
trait TaskReads {
    fn at<T: Copy + Default>(task: u64, offset: &Global<u32>) -> T;
}

/// Plain loads: the walk starts at a task a BTF tracepoint handed over, and the verifier types
/// every task pointer read out of one as well (see [`argument_field`]).
struct PlainLoads;

impl TaskReads for PlainLoads {
    #[inline(always)]
    fn at<T: Copy + Default>(task: u64, offset: &Global<u32>) -> T {
        argument_field(task as *const u8, offset)
    }
}

/// Checked `bpf_probe_read_kernel` calls: a task pointer the verifier knows only as a number.
struct HelperReads;

impl TaskReads for HelperReads {
    #[inline(always)]
    fn at<T: Copy + Default>(task: u64, offset: &Global<u32>) -> T {
        kernel_field(task as *const u8, offset).unwrap_or_default()
    }
}

/// Fills `b` for the current task `task` (`tid` of `tgid`): see [`blamed_for`].
#[inline(always)]
fn lineage<R: TaskReads>(b: &mut Blamed, task: u64, tgid: u32, tid: u32, settled_by: u64) {
    // A main thread is its own leader.
    let mut leader = if tid == tgid {
        task
    } else {
        R::at::<u64>(task, &TASK_GROUP_LEADER_OFF)
    };
    let mut pid = tgid;
    for depth in 0..=MAX_ANCESTORS {
        if leader == 0 || pid == 0 {
            break;
        }
        b.leader = leader;
        b.pid = pid;
        b.current = leader == task;
        if depth == 0 {
            if R::at::<u32>(leader, &TASK_FLAGS_OFF) & PF_KTHREAD != 0 {
                b.flags = culprit_flags::KERNEL_THREAD;
                break;
            }
        } else {
            b.flags = culprit_flags::CHILDREN;
        }
        if R::at::<u64>(leader, &TASK_START_TIME_OFF) <= settled_by {
            break;
        }
        let parent = R::at::<u64>(leader, &TASK_REAL_PARENT_OFF);
        if parent == 0 {
            break;
        }
        pid = R::at::<u32>(parent, &TASK_TGID_OFF);
        if pid <= 2 {
            break;
        }
        leader = R::at::<u64>(parent, &TASK_GROUP_LEADER_OFF);
    }
}

/// Writes the name of `who` (its main thread's, so the name after an `execve`) into `dst`: the
/// current task's `comm` when that is its main thread, else the main thread's read through the
/// kernel's layout. Empty when neither is known (no BTF, or the read failed): another thread's
/// own name is not its process's (a game's `llvmpipe-0`, a browser's `Compositor`), and the agent
/// then names the process from /proc.
#[inline(always)]
fn process_comm(who: &Blamed, current: &[u8; TASK_COMM_LEN], dst: &mut [u8; TASK_COMM_LEN]) {
    if who.current {
        *dst = *current;
        return;
    }
    let offset = TASK_COMM_OFF.load();
    if who.leader != 0 && offset != 0 {
        // SAFETY: a checked read of the kernel's task name, at its offset from BTF.
        let read = unsafe {
            bpf_probe_read_kernel_buf((who.leader as *const u8).add(offset as usize), dst)
        };
        if read.is_ok() {
            return;
        }
    }
    *dst = [0; TASK_COMM_LEN];
}

/// Whether a tracked wait is being watched on `cpu` (see [`watch_switch`]).
#[inline(always)]
pub(crate) fn watch_armed(cpu: u32) -> bool {
    CPU_WATCH.get(cpu).is_some_and(|w| w.armed_ns != 0)
}

/// A context switch on a watched CPU: the stretch that ends (the current task's) is added to
/// every tracked wait it overlapped, under the process blamed for it.
///
/// A BPF function of its own, not inlined: its frame and the rest of `sched_switch`'s would not
/// fit the 512-byte BPF stack together.
#[inline(never)]
pub(crate) fn watch_switch(cpu: u32, now: u64, prev_tgid: u32, prev_tid: u32, prev: *const u8) {
    let Some(w) = CPU_WATCH.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: live map value; a racing update from another CPU (a waker following a new wait)
    // can at worst lose part of one stretch.
    let w = unsafe { &mut *w };
    if w.armed_ns == 0 {
        return;
    }
    let start = w.last_switch_ns;
    w.last_switch_ns = now;
    if prev_tid == 0 {
        return;
    }
    // The earliest wait this stretch held up: the holder's process counts as itself only if it
    // was not young when that wait began (one lineage for all the waits: the earliest is the
    // strictest).
    let mut oldest = 0;
    each_of_four!(i => {
        let ww = &w.waits[i];
        if followed(ww, now) && ww.tid != prev_tid && (oldest == 0 || ww.since_ns < oldest) {
            oldest = ww.since_ns;
        }
    });
    if oldest == 0 {
        return;
    }
    let who = if runs(sched_step::HOLDER_DETAILS) {
        blamed_for(prev_tgid, prev_tid, oldest, prev)
    } else {
        Blamed {
            leader: 0,
            pid: prev_tgid,
            flags: 0,
            current: true,
        }
    };
    let mut task = Stretch {
        task: prev,
        cgroup_id: 0,
        tid: prev_tid,
        tgid: prev_tgid,
        filled: false,
        comm: [0; TASK_COMM_LEN],
    };
    each_of_four!(i => {
        let ww = &mut w.waits[i];
        // A waiter never holds up its own wait.
        if followed(ww, now) && ww.tid != prev_tid {
            let from = if start > ww.since_ns {
                start
            } else {
                ww.since_ns
            };
            add_held(ww, &who, now.saturating_sub(from), &mut task);
        }
    });
}

/// Whether a place in a watch holds a wait still worth following at `now` (not free, not stale).
#[inline(always)]
fn followed(ww: &WatchedWait, now: u64) -> bool {
    ww.since_ns != 0 && ww.since_ns < now && now - ww.since_ns <= STALE_WAIT_NS
}

/// Adds a stretch of `task` to the wait's account of `who`: a Space-Saving table of
/// `HELD_SLOTS` processes. The stretch goes to the process's own slot when it has one; else it
/// takes the slot that counts least (`held_ns + error_ns`; a free slot counts 0), and what that
/// slot counted becomes its `error_ns` (the most it may have held before, unmeasured). So a
/// process made of many short stretches (a shell loop's children, a build's compilers) is not
/// shut out by one longer stretch of another, and a process that held the CPU for more than
/// a `HELD_SLOTS`th of the time counted in the wait always has a slot. The names and the task's
/// cgroup are written when the slot is taken and with each new longest stretch (the process's
/// name after an `execve` during the wait comes with its next longest stretch; the agent reads
/// /proc too).
#[inline(always)]
fn add_held(ww: &mut WatchedWait, who: &Blamed, stretch: u64, task: &mut Stretch) {
    if stretch == 0 {
        return;
    }
    // One pass over the slots, written out with constant indices (see `each_of_four`): the
    // process's own slot, and the one that counts least (the first, on a tie).
    let mut own: *mut HeldBy = core::ptr::null_mut();
    let mut least: *mut HeldBy = core::ptr::null_mut();
    let mut least_ns = u64::MAX;
    each_of_four!(i => {
        let h = &mut ww.held[i];
        if h.held_ns != 0 && h.pid == who.pid {
            own = h;
        }
        let counts = h.held_ns + h.error_ns;
        if counts < least_ns {
            least_ns = counts;
            least = h;
        }
    });
    let taken = own.is_null();
    let h = if taken { least } else { own };
    if h.is_null() {
        return;
    }
    // SAFETY: points into the live map value `ww` is part of.
    let h = unsafe { &mut *h };
    if taken {
        h.error_ns = least_ns;
        h.held_ns = 0;
        h.longest_ns = 0;
        h.flags = 0;
        h.pid = who.pid;
    }
    h.held_ns += stretch;
    h.flags |= who.flags;
    if stretch > h.longest_ns {
        task.fill();
        h.longest_ns = stretch;
        h.tid = task.tid;
        h.tgid = task.tgid;
        h.task_comm = task.comm;
        h.cgroup_id = task.cgroup_id;
        process_comm(who, &task.comm, &mut h.comm);
    }
}

/// Follows the wait of tracked thread `t` (`tid`) for `cpu`, which begins `now` (woken onto it or
/// preempted on it): a place in the CPU's watch, unless the watch already follows as many waits
/// as it can.
#[inline(always)]
pub(crate) fn arm_watch(t: &mut ThreadState, tid: u32, cpu: u32, now: u64) {
    t.wake_cpu = cpu;
    let Some(w) = CPU_WATCH.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: live map value.
    let w = unsafe { &mut *w };
    if w.armed_ns == 0 {
        w.armed_ns = now;
        w.last_switch_ns = now;
    }
    // The thread's own earlier wait here if it was never taken (it ran elsewhere), else a free
    // place, else one whose thread is long gone.
    let mut place: *mut WatchedWait = core::ptr::null_mut();
    each_of_four!(i => {
        let ww = &mut w.waits[i];
        if place.is_null() && ww.since_ns != 0 && ww.tid == tid {
            place = ww;
        }
    });
    each_of_four!(i => {
        let ww = &mut w.waits[i];
        let free = ww.since_ns == 0 || now.saturating_sub(ww.since_ns) > STALE_WAIT_NS;
        if place.is_null() && free {
            place = ww;
        }
    });
    // Full: a presenting thread's wait (a frame's) goes before a worker's.
    if t.presenter != 0 {
        each_of_four!(i => {
            let ww = &mut w.waits[i];
            if place.is_null() && ww.presenter == 0 {
                place = ww;
            }
        });
    }
    if place.is_null() {
        return;
    }
    // SAFETY: points into the live map value.
    let ww = unsafe { &mut *place };
    // Closed while it is filled in: the CPU's own switches skip it meanwhile.
    ww.since_ns = 0;
    ww.tid = tid;
    ww.presenter = t.presenter;
    each_of_four!(i => {
        let h = &mut ww.held[i];
        h.held_ns = 0;
        h.error_ns = 0;
        h.longest_ns = 0;
        h.pid = 0;
        h.flags = 0;
    });
    ww.since_ns = now;
}

/// The per-CPU culprit being put together (see `CULPRIT_SCRATCH`).
#[inline(always)]
pub(crate) fn scratch() -> Option<&'static mut Culprit> {
    // SAFETY: this CPU's own slot; `sched_switch`, its only user, never runs nested on a CPU.
    CULPRIT_SCRATCH.get_ptr_mut(0).map(|c| unsafe { &mut *c })
}

/// Ends the followed wait of `t` (`tid`), which got `cpu` after `waited`; true, with the culprit
/// in `c`, when the watch followed the wait and someone held the CPU: the process whose tasks
/// held the CPU it waited for longest.
#[inline(always)]
pub(crate) fn take_wait(t: &ThreadState, tid: u32, waited: u64, cpu: u32, c: &mut Culprit) -> bool {
    let Some(w) = CPU_WATCH.get_ptr_mut(t.wake_cpu) else {
        return false;
    };
    // SAFETY: live map value.
    let w = unsafe { &mut *w };
    let mut found: *mut WatchedWait = core::ptr::null_mut();
    each_of_four!(i => {
        let ww = &mut w.waits[i];
        if found.is_null() && ww.since_ns != 0 && ww.since_ns == t.since_ns && ww.tid == tid {
            found = ww;
        }
    });
    if found.is_null() {
        return false;
    }
    // SAFETY: points into the live map value.
    let ww = unsafe { &mut *found };
    // Named by the time measured in its slot (`held_ns`), not by what the slot inherited
    // (`error_ns`): a process is blamed for what it was seen to hold.
    let mut best: *const HeldBy = core::ptr::null();
    let mut most = 0;
    each_of_four!(i => {
        let h = &ww.held[i];
        if h.held_ns > most {
            most = h.held_ns;
            best = h;
        }
    });
    // A thread the scheduler moved to another CPU before it ran waited first on this one: this
    // CPU's holder is its culprit when it held the CPU for at least half the wait (else the wait
    // was mostly spent elsewhere). Only stretches that ended count: a task still running here
    // is not seen (docs/stutter.md states the limit).
    let named = !best.is_null() && (t.wake_cpu == cpu || most.saturating_mul(2) >= waited);
    if named {
        // SAFETY: points into the live map value.
        let h = unsafe { &*best };
        c.wait_ns = 0;
        c.held_ns = h.held_ns;
        c.longest_ns = h.longest_ns;
        c.cgroup_id = h.cgroup_id;
        c.tid = h.tid;
        c.tgid = h.tgid;
        c.pid = h.pid;
        c.flags = h.flags;
        c.comm = h.task_comm;
        c.process_comm = h.comm;
    }
    ww.since_ns = 0;
    ww.tid = 0;
    named
}

/// Credits a run-queue wait of `t` to who kept it off the CPU (see `Culprit`): the process whose
/// tasks held the CPU longest while it waited (the watch), else the preempting task when the wait
/// began with a preemption, else the previous task.
#[inline(always)]
pub(crate) fn blame(
    t: &mut ThreadState,
    waiter_tid: u32,
    waited: u64,
    now: u64,
    cpu: u32,
    prev: Outgoing,
) {
    let (prev_tgid, prev_tid) = (prev.tgid, prev.tid);
    let by_preemptor = t.preempted != 0 && t.last_preemptor_tid != 0;
    t.preempted = 0;
    let Some(c) = scratch() else {
        return;
    };
    if take_wait(t, waiter_tid, waited, cpu, c) {
        credit(t, c, waited, now);
        return;
    }
    let tid = if by_preemptor {
        t.last_preemptor_tid
    } else {
        prev_tid
    };
    if tid == 0 {
        return;
    }
    if !credit_needs_details(t, tid, waited, now) {
        credit_same(t, tid, waited, now);
        return;
    }
    // Only now pay for the culprit's details. A preemptor is known by its tid and name alone
    // (the agent finds its process); the previous task is the current one.
    c.held_ns = 0;
    c.longest_ns = 0;
    c.cgroup_id = 0;
    c.tid = tid;
    c.tgid = 0;
    c.pid = 0;
    c.flags = 0;
    c.comm = t.last_preemptor_comm;
    c.process_comm = [0; TASK_COMM_LEN];
    if !by_preemptor {
        c.tgid = prev_tgid;
        c.comm = if prev.task.is_null() {
            bpf_get_current_comm().unwrap_or_default()
        } else {
            argument_comm(prev.task)
        };
        // SAFETY: helper without arguments; the current task is `prev`.
        c.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        let who = blamed_for(prev_tgid, prev_tid, t.since_ns, prev.task);
        c.pid = who.pid;
        c.flags = who.flags;
        process_comm(&who, &c.comm, &mut c.process_comm);
    }
    credit(t, c, waited, now);
}

/// Whether charging `waited` to task `tid` replaces the frame's culprit or the recent wait (and
/// so needs the task's name and cgroup), rather than only adding to the same culprit.
#[inline(always)]
fn credit_needs_details(t: &ThreadState, tid: u32, waited: u64, now: u64) -> bool {
    let frame = &t.frame_culprit;
    (frame.tid != tid && waited > frame.weight()) || replaces_recent(t, waited, now)
}

/// Adds `waited` to the frame's culprit when it is task `tid`.
#[inline(always)]
fn credit_same(t: &mut ThreadState, tid: u32, waited: u64, now: u64) {
    if t.frame_culprit.tid == tid {
        t.frame_culprit.wait_ns += waited;
        t.frame_culprit.at_ns = now;
    }
}

/// Charges a wait of `waited` to a known culprit `c`: added to the frame's culprit when it is the
/// same process (whose longest stretch, and latest name, it keeps), else replacing it when it
/// weighs more (`Culprit::weight`: it held the CPU longer in this wait than the frame's culprit
/// did in all of its own).
#[inline(always)]
fn credit(t: &mut ThreadState, c: &mut Culprit, waited: u64, now: u64) {
    c.wait_ns = waited;
    c.at_ns = now;
    if replaces_recent(t, waited, now) {
        t.recent_wait = *c;
    }
    let f = &mut t.frame_culprit;
    if f.tid != 0 && f.same_as(&c) {
        f.wait_ns += waited;
        f.held_ns += c.held_ns;
        f.at_ns = now;
        f.flags |= c.flags;
        if c.process_comm[0] != 0 {
            f.process_comm = c.process_comm;
        }
        if c.longest_ns > f.longest_ns {
            f.longest_ns = c.longest_ns;
            f.tid = c.tid;
            f.tgid = c.tgid;
            f.comm = c.comm;
            f.cgroup_id = c.cgroup_id;
        }
    } else if c.weight() > f.weight() {
        *f = *c;
    }
}

/// Whether a wait of `waited` ending `now` replaces the thread's recent longest wait.
#[inline(always)]
fn replaces_recent(t: &ThreadState, waited: u64, now: u64) -> bool {
    waited >= t.recent_wait.wait_ns || now.saturating_sub(t.recent_wait.at_ns) > RECENT_WAIT_NS
}
