//! Maps and load-time settings shared by the probe families.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{
        BPF_EXIST, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA,
        BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use nvbind_common::{
    event_kind, map_full, over_rate_key, thread_status, CpuWatch, Culprit, EventHeader,
    PreemptorKey, PreemptorValue, PresentEvent, ProcessEvent, ProcessHistograms, ThreadState,
    TASK_COMM_LEN,
};

/// CPUs covered by `CPU_WATCH`.
pub const MAX_CPUS: u32 = 1024;

/// Tracked threads, by tid. Presence means "tracked".
#[map]
pub static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(16384, 0);

/// The cheap "is this one of ours" check in front of `THREADS`: one byte per tid, eight to a
/// word, nonzero where `THREADS` may hold the tid. Every context switch and wakeup of the host
/// asks it for tasks that are almost never tracked; an array lookup is a bounds check and a load
/// (the verifier inlines it), where the hash table hashes the key and walks a bucket.
///
/// Marked after each insert into `THREADS` (here and by the agent, which maps the array:
/// `BPF_F_MMAPABLE`), unmarked only by the agent, after it removed the entry (it then looks the
/// tid up again and marks it back if a new thread took it meanwhile). A byte, not a bit: the base
/// BPF instruction set has an atomic add but no atomic or, and two racing adds of 1 to a byte
/// make 2, still nonzero, where two adds of one bit would carry into the next tid's. Sized by the
/// agent to the kernel's `pid_max`; a tid beyond it (pid_max raised since) is looked up.
#[map]
pub static TID_MARKS: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Steps of the tracked scheduler path left out (`nvbind_common::sched_step` bits; 0 but in the
/// benchmark, which measures each step's cost). A constant to the verifier, which drops the
/// branches of a step left in.
#[unsafe(no_mangle)]
pub static LEFT_OUT: Global<u32> = Global::new(0);

/// Whether `step` (a `sched_step` bit) runs.
#[inline(always)]
pub fn runs(step: u32) -> bool {
    LEFT_OUT.load() & step == 0
}

/// Whether `TID_MARKS` is used (set at load; the benchmark compares both ways).
#[unsafe(no_mangle)]
pub static TID_MARKS_ON: Global<u32> = Global::new(0);

/// Whether `THREADS` may hold `tid`: false only where it certainly does not.
#[inline(always)]
pub fn maybe_tracked(tid: u32) -> bool {
    if TID_MARKS_ON.load() == 0 {
        return true;
    }
    match TID_MARKS.get(tid / 8) {
        Some(word) => (*word >> ((tid % 8) * 8)) & 0xff != 0,
        None => true,
    }
}

/// Marks `tid` as possibly tracked (after its entry was inserted into `THREADS`).
#[inline(always)]
fn mark_tracked(tid: u32) {
    if let Some(word) = TID_MARKS.get_ptr_mut(tid / 8) {
        let shift = (tid % 8) * 8;
        // SAFETY: `word` points at a live u64 map value.
        if (unsafe { core::ptr::read_volatile(word) } >> shift) & 0xff == 0 {
            atomic_add(word, 1 << shift);
        }
    }
}

/// Per-CPU watches armed by tracked threads' wakeups (see `CpuWatch`); an array, not a per-CPU
/// map, because the waker arms the slot of the CPU the wakee will run on.
#[map]
pub static CPU_WATCH: Array<CpuWatch> = Array::with_max_entries(MAX_CPUS, 0);

/// Where the scheduler programs put together the culprit of a wait (a `Culprit` does not fit the
/// BPF stack beside everything else `sched_switch` holds). Per CPU: only `sched_switch` uses it,
/// and it never runs nested on one CPU.
#[map]
pub static CULPRIT_SCRATCH: PerCpuArray<Culprit> = PerCpuArray::with_max_entries(1, 0);

/// One zeroed thread record to insert from.
#[map]
pub static ZERO_THREAD: Array<ThreadState> = Array::with_max_entries(1, 0);

/// Frames whose present call has not returned yet, by `nvbind_common::pending_present_key`
/// (tid and kind: an `eglSwapBuffers` may present through Vulkan on the same thread, as Zink
/// does): made at the call's entry (its time and the evidence since the previous frame), sent at
/// its return if the call succeeded. Only threads inside a present call hold one.
#[map]
pub static PENDING_PRESENTS: HashMap<u64, PresentEvent> =
    HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// One zeroed frame record to insert from: a `PresentEvent` does not fit the BPF stack beside
/// the rest.
#[map]
pub static ZERO_PRESENT: Array<PresentEvent> = Array::with_max_entries(1, 0);

/// Tracked processes, by tgid; the value holds `track_flags`.
#[map]
pub static TRACKED_PROCESSES: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Discovery mode's cap on the presenting processes one user may have tracked at once (index 0;
/// 0: no cap), set by the agent: one user's processes must not fill `TRACKED_PROCESSES` for
/// everyone else's games. Root is not capped.
#[map]
pub static DISCOVERY_CAP: Array<u32> = Array::with_max_entries(1, 0);

/// Processes discovery mode tracked, charged to the real uid that ran them, by uid. Written only
/// by the kernel, atomically (discoveries on several CPUs at once): a charge is taken before a
/// process is tracked and given back here when the process is gone. Entries stay (a user with
/// nothing tracked has equal charges and releases): the table has room for 65,536 users.
#[map]
pub static DISCOVERY_CHARGED: HashMap<u32, u64> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Charges the agent gave back, by uid: when it stops tracking a discovered process itself (the
/// process exited and the agent saw it first, or the daemon's config excludes it). Written only
/// by the agent, so neither side ever overwrites the other's count; a user's tracked processes
/// are `DISCOVERY_CHARGED - DISCOVERY_RELEASED`.
#[map]
pub static DISCOVERY_RELEASED: HashMap<u32, u64> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// The uid each discovered process's charge was taken from, by tgid. Whoever deletes the entry
/// (the kernel at the process's exit, the agent when it untracks it) gives the charge back: a
/// delete succeeds once, so a charge is never given back twice.
#[map]
pub static DISCOVERED_BY: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Who owns each range of subordinate uids (`/etc/subuid`: a user's rootless containers run as
/// them), as prefixes of the uid's big-endian bytes → the owner's uid, set by the agent: a
/// user's containers are charged to that user, not to as many users as they have uids.
#[map]
pub static SUBUID_OWNERS: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// The most frames per second one user's processes may have stored (index 0; 0: no cap), set by
/// the agent; root is not capped. Frames beyond it are counted (`FRAMES_OVER_RATE`), not sent:
/// one user presenting as fast as a pbuffer swaps (a microsecond each) must not fill the ring
/// buffer the frames of everyone else's games go through.
#[map]
pub static FRAME_RATE_CAP: Array<u32> = Array::with_max_entries(1, 0);

/// Frames each process sent in the current window, by tgid: up to `FAIR_FRAMES_PER_WINDOW` go
/// through whatever its user's other processes do. LRU: an evicted window is an expired one.
#[map]
pub static FRAME_RATE_PROCESSES: LruHashMap<u32, RateWindow> =
    LruHashMap::with_max_entries(4096, 0);

/// Frames each capped user's processes sent beyond their fair shares in the current window, by
/// uid (the owner's, for subordinate uids).
#[map]
pub static FRAME_RATE_USERS: LruHashMap<u32, RateWindow> = LruHashMap::with_max_entries(4096, 0);

/// Frames presented beyond `FRAME_RATE_CAP`, by `nvbind_common::over_rate_key` (process and
/// present source): counted, not stored. The agent reads a process's entries when its session
/// is written, and removes them when it stops tracking it.
#[map]
pub static FRAMES_OVER_RATE: HashMap<u64, u64> = HashMap::with_max_entries(8192, 0);

/// Every frame counted in `FRAMES_OVER_RATE` (index 0), for the daemon's counter.
#[map]
pub static FRAMES_OVER_RATE_TOTAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Frames sent since `start_ns`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RateWindow {
    pub start_ns: u64,
    pub sent: u64,
}

/// The window frame rates are counted over: short, so that what one window lets through at
/// once is a small part of the ring buffer (20,000 a second is 200 frames, 64 KiB, a window).
const RATE_WINDOW_NS: u64 = 10_000_000;

/// Frames a process may send per window whatever its user's other processes do (500 a second):
/// a game beside its own user's flood keeps its frames.
const FAIR_FRAMES_PER_WINDOW: u64 = 5;

/// Presents of untracked processes that discovery did not track because their user had
/// `DISCOVERY_CAP` processes tracked already (index 0).
#[map]
pub static DISCOVERY_REFUSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Processes the agent decided not to track (excluded by the daemon's config), by tgid: in
/// discovery mode their presents must not track them again.
#[map]
pub static IGNORED_PROCESSES: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Untracked threads inside a `vkGet*ProcAddr` call for a followed function (discovery mode), by
/// tid, with what they asked for (`nvbind_common::resolving`): the return probe reports the
/// pointer for them too.
#[map]
pub static RESOLVING_PRESENT: LruHashMap<u32, u32> = LruHashMap::with_max_entries(1024, 0);

/// Process names (as `comm`, NUL-padded) whose next `execve` starts tracking; value = flags.
#[map]
pub static WATCHED_COMMS: HashMap<[u8; TASK_COMM_LEN], u32> = HashMap::with_max_entries(64, 0);

/// Run-queue and blocked-time histograms per tracked process.
#[map]
pub static PROC_HISTS: HashMap<u32, ProcessHistograms> =
    HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// The same histograms for each thread that presented frames, by tid: the render thread's own
/// distributions, apart from its process's worker threads.
#[map]
pub static PRESENTER_HISTS: HashMap<u32, ProcessHistograms> =
    HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// One zeroed histogram to insert from: a `ProcessHistograms` does not fit on the BPF stack.
#[map]
pub static ZERO_HISTS: Array<ProcessHistograms> = Array::with_max_entries(1, 0);

/// Who preempted tracked processes' threads, and how often.
#[map]
pub static PREEMPTORS: LruHashMap<PreemptorKey, PreemptorValue> =
    LruHashMap::with_max_entries(8192, 0);

/// ioctl type bytes (`_IOC_TYPE`) the user declared to be GPU driver calls: index = type byte,
/// non-zero = declared. Filled by the agent after load.
#[map]
pub static DECLARED_GPU_IOCTL_TYPES: Array<u32> = Array::with_max_entries(256, 0);

/// Frames and process events. Producers never wake the reader: the agent drains it on a timer.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES as u32, 0);

/// The size of `EVENTS`.
pub const EVENTS_BYTES: u64 = 512 * 1024;

/// Threads of tracked processes that exited (`ThreadExitRecord`): apart from `EVENTS`, so a
/// process that churns through threads fills only this one. Never wakes the reader.
#[map]
pub static THREAD_EXITS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Records that did not fit in `THREAD_EXITS` (index 0): the agent then sweeps `THREADS` for
/// exited entries itself.
#[map]
pub static THREAD_EXITS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Execs of untracked processes, for the daemon (`ExecNotice`): apart from `EVENTS`, so an
/// exec storm (a build, a hostile user) fills only this one. A lost notice is not lost for
/// good: the daemon still lists /proc now and then.
#[map]
pub static EXEC_NOTICES: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// Notices that did not fit in `EXEC_NOTICES` (index 0): the daemon lists /proc at once.
#[map]
pub static EXEC_NOTICES_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// When an exec notice last woke the daemon (index 0, CLOCK_MONOTONIC ns).
#[map]
pub static EXEC_NOTICE_WOKEN: Array<u64> = Array::with_max_entries(1, 0);

/// Records that did not fit in `EVENTS` (index 0), so the report can say what was lost.
#[map]
pub static DROPPED_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Inserts refused because a tracking map was full, per `nvbind_common::map_full` slot.
#[map]
pub static MAP_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(map_full::COUNT, 0);

/// `-E2BIG`: what a map insert returns when the map is full.
const E2BIG: i64 = -7;

#[inline(always)]
fn count_map_full(slot: u32) {
    if let Some(p) = MAP_FULL.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *p += 1 };
    }
}

/// Field offsets of classic tracepoints, read from tracefs `format` files by the agent at load time
/// (Rust eBPF has no CO-RE; these formats are the kernel's stable ABI for the records).
#[unsafe(no_mangle)]
pub static SWITCH_PREV_STATE_OFF: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
pub static SWITCH_NEXT_COMM_OFF: Global<u32> = Global::new(40);
#[unsafe(no_mangle)]
pub static SWITCH_NEXT_PID_OFF: Global<u32> = Global::new(56);
#[unsafe(no_mangle)]
pub static WAKEUP_PID_OFF: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
pub static WAKEUP_TARGET_CPU_OFF: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
pub static IOCTL_CMD_OFF: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
pub static NEWTASK_PID_OFF: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
pub static NEWTASK_FLAGS_OFF: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
pub static EXIT_GROUP_DEAD_OFF: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
pub static FREE_PID_OFF: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
pub static RENAME_PID_OFF: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
pub static RENAME_NEWCOMM_OFF: Global<u32> = Global::new(28);
#[unsafe(no_mangle)]
pub static DRM_VBLANK_CRTC_OFF: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
pub static DRM_VBLANK_SEQ_OFF: Global<u32> = Global::new(12);
#[unsafe(no_mangle)]
pub static DRM_VBLANK_TIME_OFF: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
pub static DRM_QUEUED_FILE_OFF: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
pub static DRM_QUEUED_CRTC_OFF: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
pub static DRM_QUEUED_SEQ_OFF: Global<u32> = Global::new(20);
#[unsafe(no_mangle)]
pub static DRM_DELIVERED_FILE_OFF: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
pub static DRM_DELIVERED_CRTC_OFF: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
pub static DRM_DELIVERED_SEQ_OFF: Global<u32> = Global::new(20);
/// `task_struct` field offsets for the BTF tracepoints (`tp_btf`), which receive task pointers
/// instead of records: read by the agent from the running kernel's BTF at load time, and only
/// then are those programs loaded.
#[unsafe(no_mangle)]
pub static TASK_PID_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_COMM_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_EXIT_STATE_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_CPU_OFF: Global<u32> = Global::new(0);
/// Non-zero where the BTF `sched_process_exit` passes `group_dead` as its second argument
/// (recent kernels; set by the agent from the kernel's BTF).
#[unsafe(no_mangle)]
pub static EXIT_GROUP_DEAD_ARG: Global<u32> = Global::new(0);
/// `task_struct` offsets for naming the process a task's CPU time is blamed on (see
/// `culprit::blamed_for`), with `TASK_COMM_OFF`: read from the kernel's BTF whatever the hooks;
/// 0 when the kernel has no BTF, and then each task counts under its own process.
#[unsafe(no_mangle)]
pub static TASK_TGID_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_GROUP_LEADER_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_REAL_PARENT_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_START_TIME_OFF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub static TASK_FLAGS_OFF: Global<u32> = Global::new(0);
/// Non-zero (set by the daemon at load): any process that presents a frame starts being tracked
/// from that frame on, unless it is in `IGNORED_PROCESSES`; and every exec of an untracked
/// process is noted in `EXEC_NOTICES`.
#[unsafe(no_mangle)]
pub static DISCOVER_PRESENTERS: Global<u32> = Global::new(0);
/// `TASK_REPORT_MAX`: what `sched_switch` reports as `prev_state` for a preempted task.
#[unsafe(no_mangle)]
pub static TASK_REPORT_MAX: Global<u64> = Global::new(0x100);

/// Reads a field of a classic tracepoint record at an offset set at load time.
#[inline(always)]
pub fn field<T>(ctx: &aya_ebpf::programs::TracePointContext, offset: &Global<u32>) -> Option<T> {
    let offset = offset.load();
    if offset == nvbind_common::FIELD_ABSENT {
        return None;
    }
    // SAFETY: the offset comes from the tracepoint's own format file; the read is a checked
    // bpf_probe_read_kernel, which fails instead of faulting.
    unsafe { ctx.read_at::<T>(offset as usize).ok() }
}

/// Reads a field of a kernel object (a `task_struct` a BTF tracepoint handed over) at an offset
/// set at load time from the kernel's BTF.
#[inline(always)]
pub fn kernel_field<T>(object: *const u8, offset: &Global<u32>) -> Option<T> {
    // SAFETY: the offset comes from the running kernel's BTF for this object's type; the read is
    // a checked bpf_probe_read_kernel, which fails instead of faulting.
    unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel(object.add(offset.load() as usize) as *const T)
            .ok()
    }
}

/// A field of a kernel object that a BTF tracepoint handed over as an argument, read with a plain
/// load: the verifier knows the object's type and the offset (a constant: `.rodata` is frozen
/// before the programs load), checks that a field of `T`'s size lies there, and turns the load
/// into one that cannot fault. No helper call, unlike [`kernel_field`]; and an offset that is not
/// a field of that size is refused at load time (the classic tracepoints are then used).
/// For the arguments themselves, and for the objects their pointer fields lead to when those
/// were read with this function too (the verifier types a pointer loaded from a BTF object by
/// its field's type: `culprit`'s walk up a task's ancestors). A pointer that came any other way
/// (a helper's result, a `bpf_probe_read_kernel`) is a plain number to the verifier: read what
/// it points at with [`kernel_field`].
#[inline(always)]
pub fn argument_field<T: Copy>(object: *const u8, offset: &Global<u32>) -> T {
    // SAFETY: see above; the verifier refuses the program unless the load is a checked read
    // of a field of the object's BTF type.
    unsafe { core::ptr::read_volatile(object.add(offset.load() as usize) as *const T) }
}

/// A task's `comm` where a BTF tracepoint handed the task over: two plain loads (the verifier
/// lets a load of any size inside a `char` array of a BTF type), no helper call.
#[inline(always)]
pub fn argument_comm(task: *const u8) -> [u8; TASK_COMM_LEN] {
    let offset = TASK_COMM_OFF.load() as usize;
    // SAFETY: as `argument_field`: checked by the verifier against the task's BTF type.
    let words: [u64; 2] = unsafe {
        [
            core::ptr::read_volatile(task.add(offset) as *const u64),
            core::ptr::read_volatile(task.add(offset + 8) as *const u64),
        ]
    };
    // SAFETY: two u64 are sixteen bytes, any bit pattern a valid byte array.
    unsafe { core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>(words) }
}

/// The task a `sched_switch` switches out (the current task).
#[derive(Clone, Copy)]
pub struct Outgoing {
    pub tgid: u32,
    pub tid: u32,
    /// Its `task_struct` where a BTF tracepoint handed it over, for plain loads (see
    /// [`argument_field`]); null on classic tracepoints.
    pub task: *const u8,
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// (tgid, tid) of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// The tracked-thread record of `tid`, if the thread is tracked.
#[inline(always)]
pub fn thread(tid: u32) -> Option<&'static mut ThreadState> {
    if !maybe_tracked(tid) {
        return None;
    }
    // SAFETY: the pointer is to a live, preallocated map value; concurrent updates of one thread's
    // record from two CPUs can lose an increment, which costs accuracy, never memory safety.
    THREADS.get_ptr_mut(tid).map(|p| unsafe { &mut *p })
}

/// Charges the stretch of `t` since its last known change to `unseen_ns`: a switch that would
/// have told what it was never reached the probes. On some kernels a context switch now and then
/// reaches no tracepoint consumer at all (the kernel's own `sched_switch` trace event is missing
/// too, and no recursion miss is counted; see docs/probes.md).
#[inline(always)]
pub fn unseen(t: &mut ThreadState, now: u64) {
    if t.status != thread_status::UNKNOWN {
        t.totals.missed_switches += 1;
    }
    t.totals.unseen_ns += now.saturating_sub(t.since_ns);
}

/// The current thread's record: tracked already, or belonging to a tracked process (a thread
/// that appeared before tracking began and was not seen by the agent's /proc scan).
#[inline(always)]
pub fn current_thread() -> Option<(u32, u32, &'static mut ThreadState)> {
    let (tgid, tid) = current_ids();
    if let Some(t) = thread(tid) {
        // An exited thread never runs again: a running task with its tid is another one (the tid
        // was reused), whose calls are not the dead thread's.
        if t.status != thread_status::EXITED {
            return Some((tgid, tid, t));
        }
    }
    // SAFETY: plain lookup of a u32 value.
    unsafe { TRACKED_PROCESSES.get(tgid) }?;
    start_tracking_thread(tgid, tid, thread_status::RUNNING);
    thread(tid)
        .filter(|t| t.status != thread_status::EXITED)
        .map(|t| (tgid, tid, t))
}

/// Adds a thread to the tracked set (no-op if it is there already).
#[inline(always)]
pub fn start_tracking_thread(tgid: u32, tid: u32, status: u32) {
    // A ThreadState does not fit the BPF stack: insert the zeroed template, then fill it in.
    let Some(zero) = ZERO_THREAD.get_ptr(0) else {
        return;
    };
    // SAFETY: `zero` points at a map value, which the helper may read from.
    let zero = unsafe { &*zero };
    // A new entry, or a fresh start over the entry of a thread that has exited or is exiting: a
    // thread that execs in a multi-threaded process takes its leader's tid, whose entry the
    // leader's exit marked (possibly before the leader's last switch closed it), and a tid can be
    // reused. A live thread's tid is never another live task's, so an entry marked exiting that a
    // live thread asks for is the dead leader's. (Its last counters go; a live one's are worth
    // more.)
    let inserted = THREADS.insert(tid, zero, BPF_NOEXIST as u64);
    if inserted.is_err_and(|e| i64::from(e) == E2BIG) {
        count_map_full(map_full::THREADS);
        return;
    }
    // Marked whether this insert made the entry or the agent's did (which marks it only after
    // its insert): the entry is there now.
    mark_tracked(tid);
    // SAFETY: plain lookup; the mark may not be seen yet, so `thread` is not asked.
    let entry = THREADS.get_ptr_mut(tid).map(|p| unsafe { &mut *p });
    let fresh = inserted.is_ok()
        || (entry.is_some_and(|t| t.status == thread_status::EXITED || t.exiting != 0)
            && THREADS.insert(tid, zero, BPF_EXIST as u64).is_ok());
    if !fresh {
        return;
    }
    if let Some(t) = thread(tid) {
        t.tgid = tgid;
        t.status = status;
        t.since_ns = now_ns();
        t.last_cpu = u32::MAX;
    }
}

/// Discovery mode: starts tracking the current process because it presents, unless discovery is
/// off, the agent excluded it, or its user has as many processes tracked as `DISCOVERY_CAP`
/// allows. Tells the agent (before the frame's own record).
#[inline(always)]
pub fn discover_current_thread() -> Option<(u32, u32, &'static mut ThreadState)> {
    if DISCOVER_PRESENTERS.load() == 0 {
        return None;
    }
    let (tgid, tid) = current_ids();
    // SAFETY: plain lookup of a u32 value.
    if unsafe { IGNORED_PROCESSES.get(tgid) }.is_some() {
        return None;
    }
    let uid = bpf_get_current_uid_gid() as u32;
    let uid = if uid == 0 { 0 } else { account_of(uid) };
    let charged = match charge_discovery(uid) {
        Charge::Refused => {
            if let Some(p) = DISCOVERY_REFUSED.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, no concurrent writer.
                unsafe { *p += 1 };
            }
            return None;
        }
        Charge::Taken(counter) => Some(counter),
        Charge::NotCapped => None,
    };
    let started = start_tracking_process(tgid, 0);
    if let Some(counter) = charged {
        // The charge stays with the process only if this call tracked it, and its owner is
        // written down for whoever gives it back.
        if started != Started::New || !record_discovered(tgid, uid) {
            give_back_charge(counter);
        }
    }
    start_tracking_thread(tgid, tid, thread_status::RUNNING);
    emit(event_kind::PROCESS_TRACKED, tgid, tid, 0);
    thread(tid).map(|t| (tgid, tid, t))
}

/// What a discovery cost its user.
enum Charge {
    /// Root, or no cap set: nothing charged.
    NotCapped,
    /// One process charged to this counter (`DISCOVERY_CHARGED`'s value for the user).
    Taken(*mut u64),
    /// The user is at the cap (or no counter could be made for it).
    Refused,
}

/// The user non-root `uid` is charged to: the owner of its subordinate range, or itself. A
/// range root owns (the containers of LXD, Incus, rootful podman's userns mode) is not root's
/// to be uncapped for: each of its uids counts as its own user.
#[inline(always)]
fn account_of(uid: u32) -> u32 {
    match SUBUID_OWNERS.get(Key::new(32, uid.to_be_bytes())) {
        Some(&owner) if owner != 0 => owner,
        _ => uid,
    }
}

/// Takes one process's charge from `uid`'s count, unless that makes it more than the cap.
#[inline(always)]
fn charge_discovery(uid: u32) -> Charge {
    let cap = DISCOVERY_CAP.get(0).copied().unwrap_or(0);
    if uid == 0 || cap == 0 {
        return Charge::NotCapped;
    }
    let counter = match DISCOVERY_CHARGED.get_ptr_mut(&uid) {
        Some(counter) => counter,
        None => {
            // Racing with another CPU's first charge of this user is fine: NOEXIST keeps one.
            let _ = DISCOVERY_CHARGED.insert(&uid, &0u64, BPF_NOEXIST as u64);
            match DISCOVERY_CHARGED.get_ptr_mut(&uid) {
                Some(counter) => counter,
                // No room to count another user (65,536 uids have presented): this one is not
                // capped rather than never tracked. Counted, and said by the agent.
                None => {
                    count_map_full(map_full::USERS);
                    return Charge::NotCapped;
                }
            }
        }
    };
    // SAFETY: plain lookup of a u64 value.
    let released = unsafe { DISCOVERY_RELEASED.get(&uid) }
        .copied()
        .unwrap_or(0);
    // An atomic add, then a read: BPF's base instruction set (which the object is built for) has
    // an atomic add but cannot return the value it replaced. Two of one user's discoveries
    // racing at the cap may then both see the other's charge and both be refused (each is tried
    // again at its process's next present); none is ever let past the cap.
    atomic_add(counter, 1);
    // SAFETY: `counter` points at a live u64 map value.
    let now = unsafe { core::ptr::read_volatile(counter) };
    if now.wrapping_sub(released) > u64::from(cap) {
        give_back_charge(counter);
        return Charge::Refused;
    }
    Charge::Taken(counter)
}

#[inline(always)]
fn give_back_charge(counter: *mut u64) {
    atomic_add(counter, u64::MAX);
}

/// Adds `n` (wrapping: `u64::MAX` takes one away) to a counter in a map value, atomically: every
/// CPU changes these counters.
#[inline(always)]
fn atomic_add(counter: *mut u64, n: u64) {
    // SAFETY: `counter` points at a live u64 map value; the add is one atomic instruction.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Writes down that `tgid`'s charge is `uid`'s. An entry there already is a charge nobody gave
/// back (an exit the probes missed, of a process the agent never knew): it is given back now.
#[inline(always)]
fn record_discovered(tgid: u32, uid: u32) -> bool {
    // SAFETY: plain lookup of a u32 value.
    if let Some(stale) = unsafe { DISCOVERED_BY.get(&tgid) }.copied() {
        release_discovered(tgid, stale);
    }
    DISCOVERED_BY
        .insert(&tgid, &uid, BPF_NOEXIST as u64)
        .is_ok()
}

/// Gives back the charge of discovered process `tgid`, taken from `uid`, if nobody did yet.
#[inline(always)]
pub fn release_discovered(tgid: u32, uid: u32) {
    if DISCOVERED_BY.remove(&tgid).is_ok() {
        if let Some(counter) = DISCOVERY_CHARGED.get_ptr_mut(&uid) {
            give_back_charge(counter);
        }
    }
}

/// Whether a frame of process `tgid` from present `source`, presented now by the current task,
/// may be sent: it is within the process's fair share (`FAIR_FRAMES_PER_WINDOW`), or else within
/// what its user may send beyond the fair shares (a hundredth of `FRAME_RATE_CAP` per window).
/// A frame that may not is counted in `FRAMES_OVER_RATE`. Two CPUs may both start a new window
/// or both count one frame: the cap bounds a flood, it is not an exact figure.
#[inline(always)]
pub fn frame_within_rate(tgid: u32, source: u32) -> bool {
    let cap = FRAME_RATE_CAP.get(0).copied().unwrap_or(0);
    if cap == 0 {
        return true;
    }
    let uid = bpf_get_current_uid_gid() as u32;
    if uid == 0 {
        return true;
    }
    let now = now_ns();
    match rate_window(&FRAME_RATE_PROCESSES, tgid, now) {
        Some(w) if w.sent < FAIR_FRAMES_PER_WINDOW => {
            w.sent += 1;
            return true;
        }
        Some(_) => {}
        // No window could be made: not capped rather than never stored.
        None => return true,
    }
    // Beyond its fair share, a frame goes through only while the ring buffer has room to spare:
    // an agent that cannot keep up (starved of CPU) then still gets every fair frame.
    let congested = EVENTS.query(BPF_RB_AVAIL_DATA as u64) > EVENTS_BYTES / 4;
    match rate_window(&FRAME_RATE_USERS, account_of(uid), now) {
        Some(w) if !congested && w.sent < u64::from(cap / 100).max(1) => {
            w.sent += 1;
            return true;
        }
        Some(_) => {}
        None => return true,
    }
    if let Some(total) = FRAMES_OVER_RATE_TOTAL.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *total += 1 };
    }
    let key = over_rate_key(tgid, source);
    match FRAMES_OVER_RATE.get_ptr_mut(&key) {
        Some(count) => atomic_add(count, 1),
        None => {
            if FRAMES_OVER_RATE
                .insert(&key, &1u64, BPF_NOEXIST as u64)
                .is_err()
            {
                // Another CPU made it meanwhile (or the table is full: counted in the total).
                if let Some(count) = FRAMES_OVER_RATE.get_ptr_mut(&key) {
                    atomic_add(count, 1);
                }
            }
        }
    }
    false
}

/// `key`'s window in `map` now: a fresh one when it had none or its window has passed.
#[inline(always)]
fn rate_window(
    map: &'static LruHashMap<u32, RateWindow>,
    key: u32,
    now: u64,
) -> Option<&'static mut RateWindow> {
    let window = match map.get_ptr_mut(&key) {
        Some(w) => w,
        None => {
            let fresh = RateWindow {
                start_ns: now,
                sent: 0,
            };
            let _ = map.insert(&key, &fresh, BPF_NOEXIST as u64);
            map.get_ptr_mut(&key)?
        }
    };
    // SAFETY: a live map value; concurrent updates from two CPUs lose at most a count.
    let w = unsafe { &mut *window };
    if now.saturating_sub(w.start_ns) >= RATE_WINDOW_NS {
        w.start_ns = now;
        w.sent = 0;
    }
    Some(w)
}

/// The flag a frame record is submitted with: none (the agent drains on its timer) unless the
/// ring buffer is a quarter full, when the agent is woken to drain it at once.
#[inline(always)]
pub fn frame_wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > EVENTS_BYTES / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// How `start_tracking_process` went.
#[derive(PartialEq, Eq)]
pub enum Started {
    /// Tracked from now on.
    New,
    /// It was tracked already (another of its threads got there first).
    Already,
    /// `TRACKED_PROCESSES` is full (counted).
    Full,
}

/// Adds a process to the tracked set with its histograms.
#[inline(always)]
pub fn start_tracking_process(tgid: u32, flags: u32) -> Started {
    let started = match TRACKED_PROCESSES.insert(tgid, flags, BPF_NOEXIST as u64) {
        Ok(()) => Started::New,
        Err(e) if i64::from(e) == E2BIG => {
            count_map_full(map_full::PROCESSES);
            Started::Full
        }
        Err(_) => Started::Already,
    };
    if let Some(zero) = ZERO_HISTS.get_ptr(0) {
        // SAFETY: `zero` points at a map value, which the helper may read from.
        let _ = PROC_HISTS.insert(tgid, unsafe { &*zero }, BPF_NOEXIST as u64);
    }
    started
}

/// Marks `t` (thread `tid`) as a presenting thread, with its own histograms.
#[inline(always)]
pub fn mark_presenter(t: &mut ThreadState, tid: u32) {
    if t.presenter != 0 {
        return;
    }
    t.presenter = 1;
    if let Some(zero) = ZERO_HISTS.get_ptr(0) {
        // SAFETY: `zero` points at a map value, which the helper may read from.
        let _ = PRESENTER_HISTS.insert(tid, unsafe { &*zero }, BPF_NOEXIST as u64);
    }
}

/// Counts a ring-buffer record that could not be reserved.
#[inline(always)]
pub fn count_drop() {
    if let Some(p) = DROPPED_EVENTS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *p += 1 };
    }
}

/// Sends a process lifecycle record to the agent. Here, beside the ring buffer and drop counter
/// it uses, because the process tracepoints and `discover_current_thread` both send these: state
/// imports no probe family, so the imports run one way.
#[inline(always)]
pub fn emit(kind: u32, tgid: u32, tid: u32, aux: u32) {
    let comm = bpf_get_current_comm().unwrap_or([0u8; TASK_COMM_LEN]);
    let event = ProcessEvent {
        header: EventHeader {
            kind,
            tgid,
            tid,
            aux,
            ts_ns: now_ns(),
        },
        comm,
    };
    // New and exec'd processes wake the agent at once (it hooks their graphics libraries before
    // the first frame); exits can wait for the next drain.
    // (Forced: the kernel's adaptive wakeup stays silent while earlier no-wakeup records wait.)
    let flags = if kind == event_kind::PROCESS_EXIT {
        BPF_RB_NO_WAKEUP as u64
    } else {
        BPF_RB_FORCE_WAKEUP as u64
    };
    if EVENTS.output::<ProcessEvent>(&event, flags).is_err() {
        count_drop();
    }
}
