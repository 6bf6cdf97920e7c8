//! Scheduler probes: on-CPU time, run-queue latency, blocked time, preemptions and migrations of
//! tracked threads.
//!
//! The run-queue algorithm is the classic one (bcc's runqlat): a thread becomes runnable when it
//! is woken (`sched_wakeup`, `sched_wakeup_new`) or preempted (`sched_switch` with the previous task
//! still runnable), and the wait ends when `sched_switch` puts it on a CPU. Per-thread state lives
//! in `THREADS`; nothing is sent to userspace from here.

use aya_ebpf::{
    helpers::bpf_get_smp_processor_id, macros::tracepoint, programs::TracePointContext,
};
use nvbind_common::{
    hist_bucket, ioctl_class, thread_status, PreemptorKey, PreemptorValue, ThreadState,
    TASK_COMM_LEN,
};

use crate::state::{
    current_ids, field, now_ns, thread, PREEMPTORS, PROC_HISTS, SWITCH_NEXT_COMM_OFF,
    SWITCH_NEXT_PID_OFF, SWITCH_PREV_STATE_OFF, TASK_REPORT_MAX, WAKEUP_PID_OFF,
};

#[tracepoint]
pub fn nvbind_sched_switch(ctx: TracePointContext) -> u32 {
    let now = now_ns();
    // pid 0 is every CPU's idle task: never tracked, never a preemptor worth naming.
    let next_tid = field::<i32>(&ctx, &SWITCH_NEXT_PID_OFF)
        .filter(|&pid| pid > 0)
        .map(|pid| pid as u32);
    // The tracepoint runs in the context of the task being switched out.
    let (_, prev_tid) = current_ids();
    if prev_tid != 0 {
        if let Some(prev) = thread(prev_tid) {
            // An exited thread's counters are final (sched_process_exit closed them).
            if prev.status != thread_status::EXITED {
                switched_out(&ctx, prev, now, next_tid);
            }
        }
    }
    if let Some(next) = next_tid.and_then(thread) {
        switched_in(next, now);
    }
    0
}

#[inline(always)]
fn switched_out(ctx: &TracePointContext, prev: &mut ThreadState, now: u64, next_tid: Option<u32>) {
    if prev.status == thread_status::RUNNING {
        prev.totals.on_cpu_ns += now.saturating_sub(prev.since_ns);
    }
    let state: i64 = field(ctx, &SWITCH_PREV_STATE_OFF).unwrap_or(0);
    let report_max = TASK_REPORT_MAX.load() as i64;
    // A task preempted in the kernel is reported as TASK_REPORT_MAX (not its real state); one
    // preempted on its way back to user space, or that yielded, reports 0 (TASK_RUNNING). Either
    // way it still wanted the CPU: runnable, and an involuntary switch (the kernel's nivcsw).
    // Anything else is a sleep.
    let preempted = state & report_max != 0 || state == 0;
    prev.since_ns = now;
    if preempted {
        prev.status = thread_status::RUNNABLE;
        prev.totals.involuntary_switches += 1;
        if let Some(next_tid) = next_tid {
            note_preemptor(ctx, prev, next_tid);
        }
    } else {
        prev.status = thread_status::BLOCKED;
        prev.totals.voluntary_switches += 1;
        prev.blocked_in_gpu_ioctl =
            (prev.ioctl_start_ns != 0 && ioctl_class::is_gpu(prev.ioctl_class as usize)) as u32;
    }
}

#[inline(always)]
fn note_preemptor(ctx: &TracePointContext, victim: &mut ThreadState, next_tid: u32) {
    victim.last_preemptor_tid = next_tid;
    let key = PreemptorKey {
        victim_tgid: victim.tgid,
        preemptor_tid: next_tid,
    };
    let comm: [u8; TASK_COMM_LEN] = field(ctx, &SWITCH_NEXT_COMM_OFF).unwrap_or_default();
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

#[inline(always)]
fn switched_in(next: &mut ThreadState, now: u64) {
    let waited = now.saturating_sub(next.since_ns);
    match next.status {
        thread_status::RUNNABLE => {
            next.totals.runq_wait_ns += waited;
            if waited > next.frame_max_runq_wait_ns {
                next.frame_max_runq_wait_ns = waited;
            }
            record(next.tgid, waited, true);
        }
        // Woken without us seeing the wakeup (tracking began mid-sleep): count it as blocked.
        thread_status::BLOCKED => end_blocked(next, now),
        _ => {}
    }
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
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
fn end_blocked(t: &mut ThreadState, now: u64) {
    let blocked = now.saturating_sub(t.since_ns);
    t.totals.blocked_ns += blocked;
    if t.blocked_in_gpu_ioctl != 0 {
        t.totals.blocked_in_gpu_ioctl_ns += blocked;
        t.blocked_in_gpu_ioctl = 0;
    }
    if blocked > t.frame_max_blocked_ns {
        t.frame_max_blocked_ns = blocked;
    }
    record(t.tgid, blocked, false);
}

/// Adds one value to the process's run-queue or blocked histogram.
#[inline(always)]
fn record(tgid: u32, ns: u64, runq: bool) {
    let Some(h) = PROC_HISTS.get_ptr_mut(tgid) else {
        return;
    };
    let bucket = hist_bucket(ns);
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
fn woken(ctx: &TracePointContext, new_task: bool) {
    let Some(tid) = field::<i32>(ctx, &WAKEUP_PID_OFF) else {
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
            end_blocked(t, now);
            t.totals.wakeups += 1;
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
    woken(&ctx, false);
    0
}

#[tracepoint]
pub fn nvbind_sched_wakeup_new(ctx: TracePointContext) -> u32 {
    woken(&ctx, true);
    0
}
