//! Process tracking: threads and children of tracked processes are tracked from their creation,
//! processes whose name is watched are tracked from their `execve` or from the moment they take
//! the name, and exits are reported.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP, helpers::bpf_get_current_comm, macros::tracepoint,
    programs::TracePointContext,
};
use nvbind_common::{
    event_kind, process_tracked, thread_status, track_flags, ThreadExitRecord, TASK_COMM_LEN,
};

use crate::state::{
    current_ids, emit, field, now_ns, release_discovered, start_tracking_process,
    start_tracking_thread, thread, DISCOVERED_BY, EXIT_GROUP_DEAD_OFF, FREE_PID_OFF,
    NEWTASK_FLAGS_OFF, NEWTASK_PID_OFF, RENAME_NEWCOMM_OFF, RENAME_PID_OFF, THREAD_EXITS,
    THREAD_EXITS_LOST, TRACKED_PROCESSES, WATCHED_COMMS,
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

/// `task:task_rename` runs when a task is renamed (`prctl(PR_SET_NAME)`, a write to
/// `/proc/self/comm`), before the new name is stored. A process that takes a watched name after
/// its `execve` is tracked from then: Wine names its process after the Windows program it runs
/// (`game.exe`) during start-up, long before the first frame. Only the process's own name
/// counts: the main thread's (a render thread calling itself `game.exe` is not the process).
#[tracepoint]
pub fn nvbind_rename(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    let Some(renamed) = field::<i32>(&ctx, &RENAME_PID_OFF) else {
        return 0;
    };
    if renamed as u32 != tgid {
        return 0;
    }
    // SAFETY: plain lookup of a u32 value.
    if unsafe { TRACKED_PROCESSES.get(tgid) }.is_some() {
        // The agent reads who it is now: a Wine process has loaded Wine's ntdll by the time it
        // names itself after the Windows program, long before its first frame.
        emit(event_kind::PROCESS_RENAMED, tgid, tid, 0);
        return 0;
    }
    let Some(mut comm) = field::<[u8; TASK_COMM_LEN]>(&ctx, &RENAME_NEWCOMM_OFF) else {
        return 0;
    };
    // The kernel copies the new name with `strscpy`, which does not clear the record's bytes
    // after its NUL: whatever the trace buffer held there would make the name a different key.
    let mut ended = false;
    for byte in comm.iter_mut() {
        ended |= *byte == 0;
        if ended {
            *byte = 0;
        }
    }
    // SAFETY: plain lookup of a u32 value.
    let Some(flags) = (unsafe { WATCHED_COMMS.get(&comm) }).copied() else {
        return 0;
    };
    start_tracking_process(tgid, flags);
    start_tracking_thread(tgid, tid, thread_status::RUNNING);
    // The process's other threads already run: the agent adopts them (`aux` RENAMED).
    emit(
        event_kind::PROCESS_TRACKED,
        tgid,
        tid,
        process_tracked::RENAMED,
    );
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
    } else {
        // The agent frees its entry once its last switch has made it final: a game that churns
        // through threads must not fill the table for the games after it.
        let record = ThreadExitRecord {
            tgid,
            tid,
            ts_ns: now_ns(),
            comm: bpf_get_current_comm().unwrap_or([0u8; TASK_COMM_LEN]),
        };
        if THREAD_EXITS
            .output::<ThreadExitRecord>(&record, BPF_RB_NO_WAKEUP as u64)
            .is_err()
        {
            if let Some(lost) = THREAD_EXITS_LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, no concurrent writer.
                unsafe { *lost += 1 };
            }
        }
    }
    0
}

/// `sched:sched_process_free` runs when a task's last reference is dropped, after it was reaped.
/// A thread group's leader is reaped only once every other thread is gone, so the free of a
/// discovered process's leader (its pid is the process's) is the end of the process: its user's
/// discovery charge is given back here, whether or not the agent has noticed yet (or ever will:
/// its record may have been lost), on every kernel (`sched_process_exit`'s `group_dead` field
/// is recent). A non-leader that execs takes the leader's pid, and the old leader is freed
/// under the thread's former one.
#[tracepoint]
pub fn nvbind_process_free(ctx: TracePointContext) -> u32 {
    let Some(pid) = field::<i32>(&ctx, &FREE_PID_OFF) else {
        return 0;
    };
    let pid = pid as u32;
    // SAFETY: plain lookup of a u32 value.
    if let Some(uid) = unsafe { DISCOVERED_BY.get(&pid) }.copied() {
        release_discovered(pid, uid);
    }
    0
}
