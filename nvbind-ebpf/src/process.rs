//! Process tracking: threads and children of tracked processes are tracked from their creation,
//! processes whose name is watched are tracked from their `execve`, and exits are reported.

use aya_ebpf::{helpers::bpf_get_current_comm, macros::tracepoint, programs::TracePointContext};
use nvbind_common::{event_kind, thread_status, track_flags};

use crate::state::{
    current_ids, emit, field, start_tracking_process, start_tracking_thread, thread,
    EXIT_GROUP_DEAD_OFF, NEWTASK_FLAGS_OFF, NEWTASK_PID_OFF, TRACKED_PROCESSES, WATCHED_COMMS,
};

const CLONE_THREAD: u64 = 0x0001_0000;

/// `task:task_newtask` runs in the parent while the child is being created.
#[tracepoint]
pub fn nvbind_newtask(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current_ids();
    // SAFETY: plain lookup of a u32 value.
    let Some(flags) = (unsafe { TRACKED_PROCESSES.get(tgid) }).copied() else {
        return 0;
    };
    let Some(child) = field::<i32>(&ctx, &NEWTASK_PID_OFF) else {
        return 0;
    };
    if child <= 0 {
        return 0;
    }
    let child = child as u32;
    let clone_flags: u64 = field(&ctx, &NEWTASK_FLAGS_OFF).unwrap_or(0);
    if clone_flags & CLONE_THREAD != 0 {
        start_tracking_thread(tgid, child, thread_status::UNKNOWN);
    } else if flags & track_flags::FOLLOW_CHILDREN != 0 {
        start_tracking_process(child, flags);
        start_tracking_thread(child, child, thread_status::UNKNOWN);
        emit(event_kind::PROCESS_TRACKED, child, child, tgid);
    }
    0
}

/// `sched:sched_process_exec` runs in the task after a successful `execve`.
#[tracepoint]
pub fn nvbind_exec(_ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    // SAFETY: plain lookup of a u32 value.
    if unsafe { TRACKED_PROCESSES.get(tgid) }.is_some() {
        start_tracking_thread(tgid, tid, thread_status::RUNNING);
        emit(event_kind::PROCESS_EXEC, tgid, tid, 0);
        return 0;
    }
    let Ok(comm) = bpf_get_current_comm() else {
        return 0;
    };
    // SAFETY: plain lookup of a u32 value.
    let Some(flags) = (unsafe { WATCHED_COMMS.get(comm) }).copied() else {
        return 0;
    };
    start_tracking_process(tgid, flags);
    start_tracking_thread(tgid, tid, thread_status::RUNNING);
    emit(event_kind::PROCESS_TRACKED, tgid, tid, 0);
    0
}

/// `sched:sched_process_exit` runs in each exiting thread; `group_dead` is set for the last one.
#[tracepoint]
pub fn nvbind_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    // The thread still runs its exit path, and may sleep in it (getrusage() counts those
    // switches): its counters close at its last context switch (see `sched::switched_out`).
    let Some(t) = thread(tid) else {
        return 0;
    };
    t.exiting = 1;
    let group_dead: u8 = field(&ctx, &EXIT_GROUP_DEAD_OFF).unwrap_or(0);
    if group_dead != 0 {
        emit(event_kind::PROCESS_EXIT, tgid, tid, 0);
    }
    0
}
