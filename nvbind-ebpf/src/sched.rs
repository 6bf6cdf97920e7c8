//! Scheduler probes: on-CPU time, run-queue latency, blocked time, preemptions and migrations of
//! tracked threads.
//!
//! The run-queue algorithm is the classic one (bcc's runqlat): a thread becomes runnable when it
//! is woken (`sched_wakeup`, `sched_wakeup_new`) or preempted (`sched_switch` with the previous task
//! still runnable), and the wait ends when `sched_switch` puts it on a CPU. Per-thread state lives
//! in `THREADS`; nothing is sent to userspace from here.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_smp_processor_id, bpf_probe_read_kernel_buf,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task},
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use nvbind_common::{
    blocked_kind, culprit_flags, hist_bucket, ioctl_class, task_state, thread_status, Culprit,
    HeldBy, PreemptorKey, PreemptorValue, ProcessHistograms, ThreadState, WatchedWait, HELD_SLOTS,
    MAX_ANCESTORS, RECENT_WAIT_NS, STALE_WAIT_NS, TASK_COMM_LEN, YOUNG_NS,
};

use crate::state::{
    current_ids, field, kernel_field, now_ns, thread, CPU_WATCH, CULPRIT_SCRATCH, PREEMPTORS,
    PRESENTER_HISTS, PROC_HISTS, SWITCH_NEXT_COMM_OFF, SWITCH_NEXT_PID_OFF, SWITCH_PREV_STATE_OFF,
    TASK_COMM_OFF, TASK_CPU_OFF, TASK_EXIT_STATE_OFF, TASK_FLAGS_OFF, TASK_GROUP_LEADER_OFF,
    TASK_PID_OFF, TASK_REAL_PARENT_OFF, TASK_REPORT_MAX, TASK_START_TIME_OFF, TASK_TGID_OFF,
    WAKEUP_PID_OFF, WAKEUP_TARGET_CPU_OFF,
};

/// `PF_KTHREAD` in `task_struct.flags`: a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// What a `sched_switch` hook tells about one switch; each hook reads a value only when the
/// switch concerns a tracked thread and needs it.
trait Switch {
    /// The next task's tid (the kernel's `pid`), as the kernel gives it.
    fn next_pid(&self) -> Option<i32>;
    /// The previous task's state as the classic tracepoint reports it (`prev_state`).
    fn prev_state(&self) -> u64;
    fn next_comm(&self) -> [u8; TASK_COMM_LEN];
}

/// What a `sched_wakeup` hook tells about one wakeup.
trait Wakeup {
    fn pid(&self) -> Option<i32>;
    /// The CPU the task will run on.
    fn target_cpu(&self) -> Option<u32>;
}

/// The classic tracepoints: fields of a record, at offsets from tracefs.
struct Record<'a>(&'a TracePointContext);

impl Switch for Record<'_> {
    fn next_pid(&self) -> Option<i32> {
        field(self.0, &SWITCH_NEXT_PID_OFF)
    }
    fn prev_state(&self) -> u64 {
        field::<i64>(self.0, &SWITCH_PREV_STATE_OFF).unwrap_or(0) as u64
    }
    fn next_comm(&self) -> [u8; TASK_COMM_LEN] {
        field(self.0, &SWITCH_NEXT_COMM_OFF).unwrap_or_default()
    }
}

impl Wakeup for Record<'_> {
    fn pid(&self) -> Option<i32> {
        field(self.0, &WAKEUP_PID_OFF)
    }
    fn target_cpu(&self) -> Option<u32> {
        field::<i32>(self.0, &WAKEUP_TARGET_CPU_OFF).map(|cpu| cpu as u32)
    }
}

/// The BTF tracepoints: the kernel's own arguments (task pointers), read at `task_struct`
/// offsets from the kernel's BTF. Unlike classic tracepoints, each has its own recursion guard:
/// a wakeup from an interrupt that lands while another tracing program runs on the CPU is still
/// seen (the classic ones share one per-CPU guard and skip it).
struct SwitchArgs {
    preempt: bool,
    prev: *const u8,
    next: *const u8,
    /// The previous task's raw `__state` (`prev_state` argument, kernel 5.18 and later).
    raw_state: u32,
}

impl Switch for SwitchArgs {
    fn next_pid(&self) -> Option<i32> {
        kernel_field(self.next, &TASK_PID_OFF)
    }
    fn prev_state(&self) -> u64 {
        let exit_state = if self.preempt {
            0
        } else {
            kernel_field::<u32>(self.prev, &TASK_EXIT_STATE_OFF).unwrap_or(0)
        };
        task_state::classic_prev_state(
            self.preempt,
            self.raw_state,
            exit_state,
            TASK_REPORT_MAX.load(),
        )
    }
    fn next_comm(&self) -> [u8; TASK_COMM_LEN] {
        kernel_field(self.next, &TASK_COMM_OFF).unwrap_or_default()
    }
}

/// A `sched_wakeup`/`sched_wakeup_new` BTF tracepoint's task.
struct WokenTask(*const u8);

impl Wakeup for WokenTask {
    fn pid(&self) -> Option<i32> {
        kernel_field(self.0, &TASK_PID_OFF)
    }
    fn target_cpu(&self) -> Option<u32> {
        kernel_field(self.0, &TASK_CPU_OFF)
    }
}

#[tracepoint]
pub fn nvbind_sched_switch(ctx: TracePointContext) -> u32 {
    switched(&Record(&ctx));
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn nvbind_sched_switch_btf(ctx: BtfTracePointContext) -> u32 {
    // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
    //              unsigned int prev_state)
    let args = SwitchArgs {
        preempt: ctx.arg::<u64>(0) & 0xff != 0,
        prev: ctx.arg(1),
        next: ctx.arg(2),
        raw_state: ctx.arg::<u64>(3) as u32,
    };
    switched(&args);
    0
}

#[inline(always)]
fn switched(args: &impl Switch) {
    let now = now_ns();
    // pid 0 is every CPU's idle task: never tracked, never a preemptor worth naming.
    let next_tid = args.next_pid().filter(|&pid| pid > 0).map(|pid| pid as u32);
    // The tracepoint runs in the context of the task being switched out.
    let (prev_tgid, prev_tid) = current_ids();
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    watch_switch(cpu, now, prev_tgid, prev_tid);
    if prev_tid != 0 {
        if let Some(prev) = thread(prev_tid) {
            // An exited thread's counters are final (its last switch closed them).
            if prev.status != thread_status::EXITED {
                switched_out(args, prev, prev_tid, now, cpu, next_tid);
            }
        }
    }
    if let Some(next_tid) = next_tid {
        if let Some(next) = thread(next_tid) {
            // A thread is never switched in after its last switch; a tid reused meanwhile by a
            // new task is not this thread.
            if next.status != thread_status::EXITED {
                switched_in(next, next_tid, now, cpu, prev_tgid, prev_tid);
            }
        }
    }
}

#[inline(always)]
fn switched_out(
    args: &impl Switch,
    prev: &mut ThreadState,
    prev_tid: u32,
    now: u64,
    cpu: u32,
    next_tid: Option<u32>,
) {
    if prev.status == thread_status::RUNNING {
        prev.totals.on_cpu_ns += now.saturating_sub(prev.since_ns);
    }
    let state = args.prev_state();
    prev.since_ns = now;
    if state & task_state::EXIT_STATES != 0 {
        // Its last switch: the counters are final, and this one is not a sleep (getrusage()
        // does not count it either).
        prev.status = thread_status::EXITED;
        return;
    }
    let report_max = TASK_REPORT_MAX.load();
    // A task preempted in the kernel is reported as TASK_REPORT_MAX (not its real state); one
    // preempted on its way back to user space, or that yielded, reports 0 (TASK_RUNNING). Either
    // way it still wanted the CPU: runnable, and an involuntary switch (the kernel's nivcsw).
    // Anything else is a sleep.
    let preempted = state & report_max != 0 || state == 0;
    if preempted && prev.exiting != 0 {
        // Preemptions in the exit path are not counted: most come after the kernel has folded
        // the thread's counters into its process (release_task), where getrusage() cannot
        // see them, and none says anything about the game.
        prev.status = thread_status::RUNNABLE;
        return;
    }
    if preempted {
        prev.status = thread_status::RUNNABLE;
        prev.preempted = 1;
        prev.totals.involuntary_switches += 1;
        if let Some(next_tid) = next_tid {
            note_preemptor(args, prev, next_tid);
        }
        // The preemptor may run only a moment (the game's own worker it woke, a kworker) before a
        // hog takes the CPU for the rest of the wait: watch the CPU as for a wakeup.
        arm_watch(prev, prev_tid, cpu, now);
    } else {
        prev.status = thread_status::BLOCKED;
        prev.totals.voluntary_switches += 1;
        prev.blocked_kind =
            if prev.ioctl_start_ns != 0 && ioctl_class::is_gpu(prev.ioctl_class as usize) {
                blocked_kind::GPU_IOCTL
            } else if state & task_state::UNINTERRUPTIBLE != 0 {
                blocked_kind::UNINTERRUPTIBLE
            } else {
                blocked_kind::SLEEP
            };
    }
}

#[inline(always)]
fn note_preemptor(args: &impl Switch, victim: &mut ThreadState, next_tid: u32) {
    let comm = args.next_comm();
    victim.last_preemptor_tid = next_tid;
    victim.last_preemptor_comm = comm;
    let key = PreemptorKey {
        victim_tgid: victim.tgid,
        preemptor_tid: next_tid,
    };
    match PREEMPTORS.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: live map value; a racing update can at worst lose one count.
            let v = unsafe { &mut *v };
            v.count += 1;
            v.comm = comm;
        }
        None => {
            let _ = PREEMPTORS.insert(key, PreemptorValue { count: 1, comm }, 0);
        }
    }
}

/// `next` gets a CPU; `prev` (the current task) is the one that had it.
#[inline(always)]
fn switched_in(
    next: &mut ThreadState,
    next_tid: u32,
    now: u64,
    cpu: u32,
    prev_tgid: u32,
    prev_tid: u32,
) {
    let waited = now.saturating_sub(next.since_ns);
    match next.status {
        // An exiting thread's waits say nothing about the game (and its preemptions were not
        // counted either, see `switched_out`); its watched wait ends all the same.
        thread_status::RUNNABLE if next.exiting != 0 => {
            if let Some(c) = scratch() {
                take_wait(next, next_tid, waited, cpu, c);
            }
        }
        thread_status::RUNNABLE => {
            next.totals.runq_wait_ns += waited;
            if waited > next.frame_max_runq_wait_ns {
                next.frame_max_runq_wait_ns = waited;
            }
            record(next, next_tid, waited, true);
            blame(next, next_tid, waited, now, cpu, prev_tgid, prev_tid);
        }
        // Woken without us seeing the wakeup (tracking began mid-sleep): count it as blocked.
        thread_status::BLOCKED => end_blocked(next, next_tid, now),
        _ => {}
    }
    if next.last_cpu != u32::MAX && next.last_cpu != cpu {
        next.totals.migrations += 1;
    }
    next.last_cpu = cpu;
    next.totals.switches_in += 1;
    next.status = thread_status::RUNNING;
    next.since_ns = now;
}

/// The task whose stretch on a CPU just ended (the current task at a switch).
struct Stretch {
    cgroup_id: u64,
    tid: u32,
    tgid: u32,
    comm: [u8; TASK_COMM_LEN],
}

/// The process a stretch of the current task is blamed on: its id, its main thread (whose name
/// the process goes by; a kernel address, 0 when unknown) and [`culprit_flags`].
struct Blamed {
    leader: u64,
    pid: u32,
    flags: u32,
}

/// The process the current task's CPU time is blamed on in a wait that began at `since`: its
/// own process (`tgid`) when that had been running for `YOUNG_NS` by then, else the nearest
/// ancestor that had (at most `MAX_ANCESTORS` up, else the furthest looked at), never init or
/// kthreadd (an orphan, or a process the kernel started, answers for itself), and a kernel thread
/// always for itself. Without the kernel's `task_struct` layout (no BTF), the current process.
#[inline(always)]
fn blamed_for(tgid: u32, since: u64) -> Blamed {
    let settled_by = since.saturating_sub(YOUNG_NS);
    let mut b = Blamed {
        leader: 0,
        pid: tgid,
        flags: 0,
    };
    if TASK_GROUP_LEADER_OFF.load() == 0 {
        return b;
    }
    // SAFETY: a helper without arguments; the pointer is only read through checked
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mut leader = kernel_field::<u64>(task, &TASK_GROUP_LEADER_OFF).unwrap_or(0);
    for depth in 0..=MAX_ANCESTORS {
        let at = leader as *const u8;
        let pid = kernel_field::<u32>(at, &TASK_TGID_OFF).unwrap_or(0);
        if leader == 0 || pid == 0 {
            break;
        }
        let start_ns = kernel_field::<u64>(at, &TASK_START_TIME_OFF).unwrap_or(0);
        let kernel_thread = kernel_field::<u32>(at, &TASK_FLAGS_OFF).unwrap_or(0) & PF_KTHREAD != 0;
        b.leader = leader;
        b.pid = pid;
        b.flags = match (kernel_thread, depth) {
            (true, _) => culprit_flags::KERNEL_THREAD,
            (false, 0) => 0,
            (false, _) => culprit_flags::CHILDREN,
        };
        if kernel_thread || start_ns <= settled_by {
            break;
        }
        let parent = kernel_field::<u64>(at, &TASK_REAL_PARENT_OFF).unwrap_or(0);
        let ppid = kernel_field::<u32>(parent as *const u8, &TASK_TGID_OFF).unwrap_or(0);
        if parent == 0 || ppid <= 2 {
            break;
        }
        leader = kernel_field::<u64>(parent as *const u8, &TASK_GROUP_LEADER_OFF).unwrap_or(0);
    }
    b
}

/// Writes the name of `who` (its main thread's, so the name after an `execve`) into `dst`; the
/// current task's `comm` when the kernel's layout is unknown.
#[inline(always)]
fn process_comm(who: &Blamed, current: &[u8; TASK_COMM_LEN], dst: &mut [u8; TASK_COMM_LEN]) {
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
    *dst = *current;
}

/// A context switch on a watched CPU: the stretch that ends (the current task's) is added to
/// every tracked wait it overlapped, under the process blamed for it.
///
/// A BPF function of its own, not inlined: its frame and the rest of `sched_switch`'s would not
/// fit the 512-byte BPF stack together.
#[inline(never)]
fn watch_switch(cpu: u32, now: u64, prev_tgid: u32, prev_tid: u32) {
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
    for ww in w.waits.iter() {
        if followed(ww, now) && ww.tid != prev_tid && (oldest == 0 || ww.since_ns < oldest) {
            oldest = ww.since_ns;
        }
    }
    if oldest == 0 {
        return;
    }
    let who = blamed_for(prev_tgid, oldest);
    let task = Stretch {
        // SAFETY: helper without arguments; the current task is `prev`.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tid: prev_tid,
        tgid: prev_tgid,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    for ww in w.waits.iter_mut() {
        // A waiter never holds up its own wait.
        if !followed(ww, now) || ww.tid == prev_tid {
            continue;
        }
        let from = if start > ww.since_ns {
            start
        } else {
            ww.since_ns
        };
        add_held(ww, &who, now.saturating_sub(from), &task);
    }
}

/// Whether a place in a watch holds a wait still worth following at `now` (not free, not stale).
#[inline(always)]
fn followed(ww: &WatchedWait, now: u64) -> bool {
    ww.since_ns != 0 && ww.since_ns < now && now - ww.since_ns <= STALE_WAIT_NS
}

/// Adds a stretch of `task` to the wait's account of `who`. Each process has one slot, chosen
/// by its id (cheap enough for every switch); a process that would take the slot of another
/// with more time than this stretch is not counted.
#[inline(always)]
fn add_held(ww: &mut WatchedWait, who: &Blamed, stretch: u64, task: &Stretch) {
    if stretch == 0 {
        return;
    }
    let Some(h) = ww.held.get_mut(who.pid as usize % HELD_SLOTS) else {
        return;
    };
    if h.held_ns == 0 || h.pid != who.pid {
        if h.held_ns > stretch {
            return;
        }
        h.held_ns = 0;
        h.longest_ns = 0;
        h.flags = 0;
        h.pid = who.pid;
    }
    h.held_ns += stretch;
    h.flags |= who.flags;
    process_comm(who, &task.comm, &mut h.comm);
    if stretch > h.longest_ns {
        h.longest_ns = stretch;
        h.tid = task.tid;
        h.tgid = task.tgid;
        h.task_comm = task.comm;
        h.cgroup_id = task.cgroup_id;
    }
}

/// Follows the wait of tracked thread `t` (`tid`) for `cpu`, which begins `now` (woken onto it or
/// preempted on it): a place in the CPU's watch, unless the watch already follows as many waits
/// as it can.
#[inline(always)]
fn arm_watch(t: &mut ThreadState, tid: u32, cpu: u32, now: u64) {
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
    for ww in w.waits.iter_mut() {
        if ww.since_ns != 0 && ww.tid == tid {
            place = ww;
            break;
        }
    }
    if place.is_null() {
        for ww in w.waits.iter_mut() {
            if ww.since_ns == 0 || now.saturating_sub(ww.since_ns) > STALE_WAIT_NS {
                place = ww;
                break;
            }
        }
    }
    // Full: a presenting thread's wait (a frame's) goes before a worker's.
    if place.is_null() && t.presenter != 0 {
        for ww in w.waits.iter_mut() {
            if ww.presenter == 0 {
                place = ww;
                break;
            }
        }
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
    for h in ww.held.iter_mut() {
        h.held_ns = 0;
        h.longest_ns = 0;
        h.pid = 0;
        h.flags = 0;
    }
    ww.since_ns = now;
}

/// The per-CPU culprit being put together (see `CULPRIT_SCRATCH`).
#[inline(always)]
fn scratch() -> Option<&'static mut Culprit> {
    // SAFETY: this CPU's own slot; `sched_switch`, its only user, never runs nested on a CPU.
    CULPRIT_SCRATCH.get_ptr_mut(0).map(|c| unsafe { &mut *c })
}

/// Ends the followed wait of `t` (`tid`), which got `cpu` after `waited`; true, with the culprit
/// in `c`, when the watch followed the wait and someone held the CPU: the process whose tasks
/// held the CPU it waited for longest.
#[inline(always)]
fn take_wait(t: &ThreadState, tid: u32, waited: u64, cpu: u32, c: &mut Culprit) -> bool {
    let Some(w) = CPU_WATCH.get_ptr_mut(t.wake_cpu) else {
        return false;
    };
    // SAFETY: live map value.
    let w = unsafe { &mut *w };
    let mut found: *mut WatchedWait = core::ptr::null_mut();
    for ww in w.waits.iter_mut() {
        if ww.since_ns != 0 && ww.since_ns == t.since_ns && ww.tid == tid {
            found = ww;
            break;
        }
    }
    if found.is_null() {
        return false;
    }
    // SAFETY: points into the live map value.
    let ww = unsafe { &mut *found };
    let mut best: *const HeldBy = core::ptr::null();
    let mut most = 0;
    for h in ww.held.iter() {
        if h.held_ns > most {
            most = h.held_ns;
            best = h;
        }
    }
    // A thread the scheduler moved to another CPU before it ran waited first on this one: this
    // CPU's holder is its culprit when it held the CPU for at least half the wait (else the wait
    // was mostly spent elsewhere).
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
fn blame(
    t: &mut ThreadState,
    waiter_tid: u32,
    waited: u64,
    now: u64,
    cpu: u32,
    prev_tgid: u32,
    prev_tid: u32,
) {
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
        c.comm = bpf_get_current_comm().unwrap_or_default();
        // SAFETY: helper without arguments; the current task is `prev`.
        c.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        let who = blamed_for(prev_tgid, t.since_ns);
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
    (frame.tid != tid && waited > frame.wait_ns) || replaces_recent(t, waited, now)
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
/// same process (whose longest stretch, and latest name, it keeps), else replacing it when longer.
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
    } else if waited > f.wait_ns {
        *f = *c;
    }
}

/// Whether a wait of `waited` ending `now` replaces the thread's recent longest wait.
#[inline(always)]
fn replaces_recent(t: &ThreadState, waited: u64, now: u64) -> bool {
    waited >= t.recent_wait.wait_ns || now.saturating_sub(t.recent_wait.at_ns) > RECENT_WAIT_NS
}

/// Ends a blocked period of `t` at `now`.
#[inline(always)]
fn end_blocked(t: &mut ThreadState, tid: u32, now: u64) {
    let blocked = now.saturating_sub(t.since_ns);
    t.totals.blocked_ns += blocked;
    match t.blocked_kind {
        blocked_kind::GPU_IOCTL => t.totals.blocked_in_gpu_ioctl_ns += blocked,
        blocked_kind::UNINTERRUPTIBLE => t.totals.blocked_uninterruptible_ns += blocked,
        _ => {}
    }
    t.blocked_kind = blocked_kind::SLEEP;
    if blocked > t.frame_max_blocked_ns {
        t.frame_max_blocked_ns = blocked;
    }
    record(t, tid, blocked, false);
}

/// Adds one value to the run-queue or blocked histogram of `t`'s process, and of `t` itself
/// when it presents frames.
#[inline(always)]
fn record(t: &ThreadState, tid: u32, ns: u64, runq: bool) {
    let bucket = hist_bucket(ns);
    add_to(PROC_HISTS.get_ptr_mut(t.tgid), bucket, runq);
    if t.presenter != 0 {
        add_to(PRESENTER_HISTS.get_ptr_mut(tid), bucket, runq);
    }
}

#[inline(always)]
fn add_to(h: Option<*mut ProcessHistograms>, bucket: usize, runq: bool) {
    let Some(h) = h else {
        return;
    };
    // SAFETY: live map value; the bucket index is bounded by hist_bucket.
    unsafe {
        let h = &mut *h;
        let slot = if runq {
            h.runq_wait.get_mut(bucket)
        } else {
            h.blocked.get_mut(bucket)
        };
        if let Some(slot) = slot {
            *slot += 1;
        }
    }
}

#[inline(always)]
fn woken(args: &impl Wakeup, new_task: bool) {
    let Some(tid) = args.pid() else {
        return;
    };
    if tid <= 0 {
        return;
    }
    let Some(t) = thread(tid as u32) else {
        return;
    };
    let now = now_ns();
    match t.status {
        thread_status::BLOCKED => {
            end_blocked(t, tid as u32, now);
            t.totals.wakeups += 1;
            t.preempted = 0;
            if let Some(cpu) = args.target_cpu() {
                arm_watch(t, tid as u32, cpu, now);
            }
        }
        // A new thread's first run-queue wait starts at wake_up_new_task.
        thread_status::UNKNOWN if new_task => {}
        _ => return,
    }
    t.status = thread_status::RUNNABLE;
    t.since_ns = now;
}

#[tracepoint]
pub fn nvbind_sched_wakeup(ctx: TracePointContext) -> u32 {
    woken(&Record(&ctx), false);
    0
}

#[tracepoint]
pub fn nvbind_sched_wakeup_new(ctx: TracePointContext) -> u32 {
    woken(&Record(&ctx), true);
    0
}

/// sched_wakeup(struct task_struct *p)
#[btf_tracepoint(function = "sched_wakeup")]
pub fn nvbind_sched_wakeup_btf(ctx: BtfTracePointContext) -> u32 {
    woken(&WokenTask(ctx.arg(0)), false);
    0
}

/// sched_wakeup_new(struct task_struct *p)
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn nvbind_sched_wakeup_new_btf(ctx: BtfTracePointContext) -> u32 {
    woken(&WokenTask(ctx.arg(0)), true);
    0
}
