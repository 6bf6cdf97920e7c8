//! Process tracking: threads and children of tracked processes are tracked from their creation,
//! processes whose name is watched are tracked from their `execve` or from the moment they take
//! the name, and exits are reported.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_uid_gid, bpf_probe_read_kernel_str_bytes},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use nvbind_common::{
    event_kind, process_tracked, thread_status, track_flags, ExecNotice, ThreadExitRecord,
    EXEC_WAKE_GAP_NS, TASK_COMM_LEN,
};

use crate::state::{
    argument_field, current_ids, emit, field, now_ns, release_discovered, start_tracking_process,
    start_tracking_thread, thread, DISCOVERED_BY, DISCOVER_PRESENTERS, EXEC_NOTICES,
    EXEC_NOTICES_LOST, EXEC_NOTICE_WOKEN, EXIT_GROUP_DEAD_ARG, EXIT_GROUP_DEAD_OFF, FREE_PID_OFF,
    NEWTASK_FLAGS_OFF, NEWTASK_PID_OFF, RENAME_NEWCOMM_OFF, RENAME_PID_OFF, TASK_PID_OFF,
    THREAD_EXITS, THREAD_EXITS_LOST, TRACKED_PROCESSES, WATCHED_COMMS,
};

const CLONE_THREAD: u64 = 0x0001_0000;

/// `task:task_newtask` runs in the parent while the child is being created.
#[tracepoint]
pub fn nvbind_newtask(ctx: TracePointContext) -> u32 {
    new_task(
        || field::<i32>(&ctx, &NEWTASK_PID_OFF),
        || field(&ctx, &NEWTASK_FLAGS_OFF).unwrap_or(0),
    );
    0
}

/// task_newtask(struct task_struct *task, u64 clone_flags)
#[btf_tracepoint(function = "task_newtask")]
pub fn nvbind_newtask_btf(ctx: BtfTracePointContext) -> u32 {
    new_task(
        || Some(argument_field(ctx.arg::<*const u8>(0), &TASK_PID_OFF)),
        || ctx.arg(1),
    );
    0
}

/// The hooks' arguments are read only for the children of tracked processes.
#[inline(always)]
fn new_task(child: impl FnOnce() -> Option<i32>, clone_flags: impl FnOnce() -> u64) {
    let (tgid, _) = current_ids();
    // SAFETY: plain lookup of a u32 value.
    let Some(flags) = (unsafe { TRACKED_PROCESSES.get(tgid) }).copied() else {
        return;
    };
    let Some(child) = child() else {
        return;
    };
    if child <= 0 {
        return;
    }
    let child = child as u32;
    let clone_flags = clone_flags();
    if clone_flags & CLONE_THREAD != 0 {
        start_tracking_thread(tgid, child, thread_status::UNKNOWN);
    } else if flags & track_flags::FOLLOW_CHILDREN != 0 {
        start_tracking_process(child, flags);
        start_tracking_thread(child, child, thread_status::UNKNOWN);
        emit(event_kind::PROCESS_TRACKED, child, child, tgid);
    }
}

/// `sched:sched_process_exec` runs in the task after a successful `execve`.
#[tracepoint]
pub fn nvbind_exec(_ctx: TracePointContext) -> u32 {
    exec();
    0
}

/// sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm): only
/// the current task matters, as on the classic hook.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn nvbind_exec_btf(_ctx: BtfTracePointContext) -> u32 {
    exec();
    0
}

#[inline(always)]
fn exec() {
    let (tgid, tid) = current_ids();
    // SAFETY: plain lookup of a u32 value.
    if unsafe { TRACKED_PROCESSES.get(tgid) }.is_some() {
        start_tracking_thread(tgid, tid, thread_status::RUNNING);
        emit(event_kind::PROCESS_EXEC, tgid, tid, 0);
        return;
    }
    let watched = match bpf_get_current_comm() {
        // SAFETY: plain lookup of a u32 value.
        Ok(comm) => unsafe { WATCHED_COMMS.get(comm) }.copied(),
        Err(_) => None,
    };
    let Some(flags) = watched else {
        note_exec(tgid);
        return;
    };
    start_tracking_process(tgid, flags);
    start_tracking_thread(tgid, tid, thread_status::RUNNING);
    emit(event_kind::PROCESS_TRACKED, tgid, tid, 0);
}

/// Tells the daemon that an untracked process exec'd, so that it searches the new image's
/// graphics libraries (in place of listing /proc several times a second). Waking it at most
/// every `EXEC_WAKE_GAP_NS`.
#[inline(always)]
fn note_exec(tgid: u32) {
    if DISCOVER_PRESENTERS.load() == 0 {
        return;
    }
    let now = now_ns();
    let flags = match EXEC_NOTICE_WOKEN.get_ptr_mut(0) {
        // SAFETY: a live map value; two CPUs racing here both wake the daemon, which is harmless.
        Some(woken) if now.saturating_sub(unsafe { *woken }) >= EXEC_WAKE_GAP_NS => {
            // SAFETY: as above.
            unsafe { *woken = now };
            BPF_RB_FORCE_WAKEUP
        }
        _ => BPF_RB_NO_WAKEUP,
    };
    let notice = ExecNotice {
        tgid,
        uid: bpf_get_current_uid_gid() as u32,
        ts_ns: now,
    };
    if EXEC_NOTICES
        .output::<ExecNotice>(&notice, flags as u64)
        .is_err()
    {
        if let Some(lost) = EXEC_NOTICES_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer.
            unsafe { *lost += 1 };
        }
    }
}

/// `task:task_rename` runs when a task is renamed (`prctl(PR_SET_NAME)`, a write to
/// `/proc/self/comm`), before the new name is stored. A process that takes a watched name after
/// its `execve` is tracked from then: Wine names its process after the Windows program it runs
/// (`game.exe`) during start-up, long before the first frame. Only the process's own name
/// counts: the main thread's (a render thread calling itself `game.exe` is not the process).
#[tracepoint]
pub fn nvbind_rename(ctx: TracePointContext) -> u32 {
    renamed(
        || field::<i32>(&ctx, &RENAME_PID_OFF),
        || {
            let mut comm = field::<[u8; TASK_COMM_LEN]>(&ctx, &RENAME_NEWCOMM_OFF)?;
            // The kernel copies the new name with `strscpy`, which does not clear the record's
            // bytes after its NUL: whatever the trace buffer held there would make the name a
            // different key.
            let mut ended = false;
            for byte in comm.iter_mut() {
                ended |= *byte == 0;
                if ended {
                    *byte = 0;
                }
            }
            Some(comm)
        },
    );
    0
}

/// task_rename(struct task_struct *task, const char *comm)
#[btf_tracepoint(function = "task_rename")]
pub fn nvbind_rename_btf(ctx: BtfTracePointContext) -> u32 {
    renamed(
        || Some(argument_field(ctx.arg::<*const u8>(0), &TASK_PID_OFF)),
        || {
            // Read up to the NUL: the bytes after it stay 0, so the name is the key it reads.
            let mut comm = [0u8; TASK_COMM_LEN];
            // SAFETY: a checked read of a kernel string, which fails instead of faulting.
            unsafe { bpf_probe_read_kernel_str_bytes(ctx.arg::<*const u8>(1), &mut comm) }.ok()?;
            Some(comm)
        },
    );
    0
}

/// The new name is read only for a process that is not tracked yet.
#[inline(always)]
fn renamed(
    renamed_pid: impl FnOnce() -> Option<i32>,
    new_comm: impl FnOnce() -> Option<[u8; TASK_COMM_LEN]>,
) {
    let (tgid, tid) = current_ids();
    let Some(renamed) = renamed_pid() else {
        return;
    };
    if renamed as u32 != tgid {
        return;
    }
    // SAFETY: plain lookup of a u32 value.
    if unsafe { TRACKED_PROCESSES.get(tgid) }.is_some() {
        // The agent reads who it is now: a Wine process has loaded Wine's ntdll by the time it
        // names itself after the Windows program, long before its first frame.
        emit(event_kind::PROCESS_RENAMED, tgid, tid, 0);
        return;
    }
    let Some(comm) = new_comm() else {
        return;
    };
    // SAFETY: plain lookup of a u32 value.
    let Some(flags) = (unsafe { WATCHED_COMMS.get(&comm) }).copied() else {
        return;
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
}

/// `sched:sched_process_exit` runs in each exiting thread; `group_dead` is set for the last one.
#[tracepoint]
pub fn nvbind_exit(ctx: TracePointContext) -> u32 {
    exited(|| field::<u8>(&ctx, &EXIT_GROUP_DEAD_OFF).unwrap_or(0) != 0);
    0
}

/// sched_process_exit(struct task_struct *p[, bool group_dead]): `group_dead` is an argument
/// on recent kernels only (`EXIT_GROUP_DEAD_ARG`, from the kernel's BTF); without it, as on the
/// classic hook without the field, every exit is a thread's and the process's end is found by
/// the agent.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn nvbind_exit_btf(ctx: BtfTracePointContext) -> u32 {
    // The global is a constant to the verifier: on a kernel without the argument this read is
    // dead code, never checked against the tracepoint's argument count.
    exited(|| EXIT_GROUP_DEAD_ARG.load() != 0 && ctx.arg::<u64>(1) & 0xff != 0);
    0
}

#[inline(always)]
fn exited(group_dead: impl FnOnce() -> bool) {
    let (tgid, tid) = current_ids();
    // The thread still runs its exit path, and may sleep in it (getrusage() counts those
    // switches): its counters close at its last context switch (see `sched::switched_out`).
    let Some(t) = thread(tid) else {
        return;
    };
    t.exiting = 1;
    if group_dead() {
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
    if let Some(pid) = field::<i32>(&ctx, &FREE_PID_OFF) {
        freed(pid as u32);
    }
    0
}

/// sched_process_free(struct task_struct *p)
#[btf_tracepoint(function = "sched_process_free")]
pub fn nvbind_process_free_btf(ctx: BtfTracePointContext) -> u32 {
    freed(argument_field::<i32>(ctx.arg::<*const u8>(0), &TASK_PID_OFF) as u32);
    0
}

#[inline(always)]
fn freed(pid: u32) {
    // SAFETY: plain lookup of a u32 value.
    if let Some(uid) = unsafe { DISCOVERED_BY.get(&pid) }.copied() {
        release_discovered(pid, uid);
    }
}
