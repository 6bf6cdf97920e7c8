//! Scheduler probes: on-CPU time, run-queue latency, blocked time, preemptions and migrations of
//! tracked threads.
//!
//! The run-queue algorithm is the classic one (bcc's runqlat): a thread becomes runnable when it
//! is woken (`sched_wakeup`, `sched_wakeup_new`) or preempted (`sched_switch` with the previous task
//! still runnable), and the wait ends when `sched_switch` puts it on a CPU. Per-thread state lives
//! in `THREADS`; nothing is sent to userspace from here. Who kept a waiting thread off its CPU
//! is `culprit`'s.

use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use nvbind_common::{
    blocked_kind, hist_bucket, ioctl_class, sched_step, task_state, thread_status, PreemptorKey,
    PreemptorValue, ProcessHistograms, ThreadState, TASK_COMM_LEN,
};

use crate::{
    culprit::{arm_watch, blame, scratch, take_wait, watch_armed, watch_switch},
    state::{
        argument_comm, argument_field, current_ids, field, maybe_tracked, now_ns, runs, thread,
        unseen, Outgoing, PREEMPTORS, PRESENTER_HISTS, PROC_HISTS, SWITCH_NEXT_COMM_OFF,
        SWITCH_NEXT_PID_OFF, SWITCH_PREV_STATE_OFF, TASK_COMM_OFF, TASK_CPU_OFF,
        TASK_EXIT_STATE_OFF, TASK_PID_OFF, TASK_REPORT_MAX, WAKEUP_PID_OFF, WAKEUP_TARGET_CPU_OFF,
    },
};

/// What a `sched_switch` hook tells about one switch; each hook reads a value only when the
/// switch concerns a tracked thread and needs it.
trait Switch {
    /// The next task's tid (the kernel's `pid`), as the kernel gives it.
    fn next_pid(&self) -> Option<i32>;
    /// The previous task's state as the classic tracepoint reports it (`prev_state`).
    fn prev_state(&self) -> u64;
    fn next_comm(&self) -> [u8; TASK_COMM_LEN];
    /// The previous (current) task's `task_struct`, for plain loads; null where the hook does
    /// not hand it over.
    fn prev_task(&self) -> *const u8;
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
    fn prev_task(&self) -> *const u8 {
        core::ptr::null()
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
        Some(argument_field(self.next, &TASK_PID_OFF))
    }
    fn prev_state(&self) -> u64 {
        let exit_state = if self.preempt {
            0
        } else {
            argument_field::<u32>(self.prev, &TASK_EXIT_STATE_OFF)
        };
        task_state::classic_prev_state(
            self.preempt,
            self.raw_state,
            exit_state,
            TASK_REPORT_MAX.load(),
        )
    }
    fn next_comm(&self) -> [u8; TASK_COMM_LEN] {
        argument_comm(self.next)
    }
    fn prev_task(&self) -> *const u8 {
        self.prev
    }
}

/// A `sched_wakeup`/`sched_wakeup_new` BTF tracepoint's task.
struct WokenTask(*const u8);

impl Wakeup for WokenTask {
    fn pid(&self) -> Option<i32> {
        Some(argument_field(self.0, &TASK_PID_OFF))
    }
    fn target_cpu(&self) -> Option<u32> {
        Some(argument_field(self.0, &TASK_CPU_OFF))
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
    // pid 0 is every CPU's idle task: never tracked, never a preemptor worth naming. (0 also
    // where the pid could not be read: a plain integer, not an Option, whose payload the compiler
    // may leave unset on the None path, which the verifier refuses to see read.)
    let next_raw = args
        .next_pid()
        .filter(|&pid| pid > 0)
        .map_or(0, |pid| pid as u32);
    // The tracepoint runs in the context of the task being switched out.
    let (prev_tgid, prev_tid) = current_ids();
    let outgoing = Outgoing {
        tgid: prev_tgid,
        tid: prev_tid,
        task: args.prev_task(),
    };
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // Almost every switch of the host is between untracked tasks on a CPU no tracked wait is
    // watching: done before even reading the clock. (Only the marks are asked here, inline:
    // holding both threads' entries from here on, or asking in a BPF function of its own, makes
    // the verifier of some kernels walk the rest many times over: minutes at each load on a slow
    // machine, measured on Linux 6.1.)
    let ours = |tid: u32| tid != 0 && maybe_tracked(tid);
    if !ours(prev_tid) && !ours(next_raw) && !watch_armed(cpu) {
        return;
    }
    let next_tid = (next_raw != 0).then_some(next_raw);
    let now = now_ns();
    if runs(sched_step::CULPRIT_WATCH) {
        watch_switch(cpu, now, prev_tgid, prev_tid, outgoing.task);
    }
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
                switched_in(next, next_tid, now, cpu, outgoing);
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
    } else {
        // It ran, yet its switch-in never reached us: the stretch since its last known change
        // (blocked, waiting, running: which, the kernel did not say) is unseen, not lost.
        unseen(prev, now);
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
fn switched_in(next: &mut ThreadState, next_tid: u32, now: u64, cpu: u32, prev: Outgoing) {
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
            if runs(sched_step::CULPRIT_NAMING) {
                blame(next, next_tid, waited, now, cpu, prev);
            }
        }
        // Only our own switch-out makes a thread BLOCKED, and the kernel wakes every sleeper
        // before it runs again: this wakeup never reached us (a classic program skipped by the
        // shared recursion guard, or the kernel's own lapse, docs/probes.md). Where the sleep
        // ended and the wait for a CPU began is not known: the stretch is unseen, not blocked
        // (a frame that waited 80 ms behind a hog must not read as 96 ms asleep).
        //
        // RUNNING: switched in while it was, by our account, running: its switch-out never
        // reached us. UNKNOWN: tracked by the agent's scan, state unknown until now.
        _ => unseen(next, now),
    }
    if next.last_cpu != u32::MAX && next.last_cpu != cpu {
        next.totals.migrations += 1;
    }
    next.last_cpu = cpu;
    next.totals.switches_in += 1;
    next.status = thread_status::RUNNING;
    next.since_ns = now;
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
    if !runs(sched_step::HISTOGRAMS) {
        return;
    }
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
    crate::drm::note_flipper_woken(tid as u32);
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
                if runs(sched_step::CULPRIT_WATCH) {
                    arm_watch(t, tid as u32, cpu, now);
                }
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
