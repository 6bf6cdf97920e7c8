//! DRM display events, where the kernel has them: when a frame reached the screen.
//!
//! - `drm_vblank_event` (every vblank of every CRTC): the refresh cadence, per CRTC.
//! - kprobes on `drm_mode_page_flip_ioctl` and `drm_mode_atomic_ioctl` (a flip or commit request)
//!   and `drm_crtc_queue_sequence_ioctl` (a vblank-event request), whose third argument is the
//!   caller's `struct drm_file`: who owns each DRM file, and when it last asked for a flip.
//! - `drm_vblank_event_queued` (in the thread calling `WAIT_VBLANK` with an event): the same for
//!   vblank events, and a record of the request.
//! - `drm_vblank_event_delivered` (at the vblank, with the DRM file, the CRTC and the sequence the
//!   event went out at) followed at once, in the same call and on the same CPU under DRM's event
//!   lock, by `drm_send_event_timestamp_locked(dev, event)` (kprobe), which has the event itself:
//!   its type tells a completed flip or commit (a frame on screen) from a vblank event the process
//!   asked for. The tracepoint stashes what it knows per CPU; the kprobe finishes the record and
//!   sends it to the file's owner: every kind when the owner is tracked, completed flips of any
//!   owner (a compositor's flips show other processes' frames; see `request`).
//!
//! Each kind is also counted in a per-CPU array for the report's totals.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{kprobe, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{ProbeContext, TracePointContext},
};
use nvbind_common::{
    display_kind, event_kind, CrtcVblanks, DisplayEvent, DrmFileOwner, EventHeader, Flippers,
    FLIPPER_SLOTS,
};

use crate::state::{
    count_drop, field, now_ns, DRM_DELIVERED_CRTC_OFF, DRM_DELIVERED_FILE_OFF,
    DRM_DELIVERED_SEQ_OFF, DRM_QUEUED_CRTC_OFF, DRM_QUEUED_FILE_OFF, DRM_QUEUED_SEQ_OFF,
    DRM_VBLANK_CRTC_OFF, DRM_VBLANK_SEQ_OFF, DRM_VBLANK_TIME_OFF, EVENTS, TRACKED_PROCESSES,
};

/// Index 0: `drm_vblank_event`, 1: `drm_vblank_event_queued`, 2: `drm_vblank_event_delivered`,
/// 3: deliveries to a tracked process's file whose event could not be read as DRM lays it out
/// (sent as flips; the agent warns when this is not 0), 4: deliveries to a flipping or tracked
/// process's file whose send never reached the kprobe (not sent; the report counts them).
#[map]
pub static DRM_EVENT_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(5, 0);

/// `struct drm_file` pointer → the tracked process that last made a display request on it.
#[map]
pub static DRM_FILE_OWNERS: LruHashMap<u64, DrmFileOwner> = LruHashMap::with_max_entries(1024, 0);

/// A delivery to an owned DRM file, from `drm_vblank_event_delivered` to the
/// `drm_send_event_timestamp_locked` that follows it on the same CPU.
#[derive(Clone, Copy)]
pub struct PendingDelivery {
    pub file: u64,
    /// When the tracepoint ran; 0 when nothing is pending.
    pub stashed_ns: u64,
    /// Whether the file's owner is tracked (else only a completed flip is sent).
    pub owner_tracked: u32,
    pub event: DisplayEvent,
}

#[map]
pub static PENDING_DELIVERY: PerCpuArray<PendingDelivery> = PerCpuArray::with_max_entries(1, 0);

/// Vblank cadence per CRTC index.
#[map]
pub static CRTC_VBLANKS: Array<CrtcVblanks> = Array::with_max_entries(nvbind_common::MAX_CRTCS, 0);

#[inline(always)]
fn count(kind: u32) {
    if let Some(p) = DRM_EVENT_COUNTS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *p += 1 };
    }
}

/// The current task's (tgid, tid), when its process is tracked.
#[inline(always)]
fn tracked_current() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: plain lookup of a u32 value.
    unsafe { TRACKED_PROCESSES.get(tgid) }?;
    Some((tgid, tid))
}

/// A display record for the owner of a DRM file.
#[inline(always)]
fn display_event(kind: u32, owner: &DrmFileOwner, crtc: u32, seq: u32, now: u64) -> DisplayEvent {
    DisplayEvent {
        header: EventHeader {
            kind: event_kind::DISPLAY,
            tgid: owner.tgid,
            tid: owner.tid,
            aux: kind,
            ts_ns: now,
        },
        crtc,
        seq,
        request_ns: owner.flip_request_ns,
        woke_ns: owner.flip_woke_ns,
        // Filled in by `nvbind_drm_send_event` from the send's timestamp: the vblank's own
        // `drm_vblank_event` is traced after its events are sent, too late to be read here.
        vblank_ns: 0,
    }
}

#[inline(always)]
fn send(event: &DisplayEvent) {
    // A refresh rate's worth a second: drained with the frames, no wakeup of its own.
    if EVENTS
        .output::<DisplayEvent>(event, BPF_RB_NO_WAKEUP as u64)
        .is_err()
    {
        count_drop();
    }
}

/// Attached to `drm_mode_page_flip_ioctl` and `drm_mode_atomic_ioctl` (both
/// `(struct drm_device *, void *data, struct drm_file *)`): the caller owns the file, and the flip
/// it asks for now is the next to complete.
#[kprobe]
pub fn nvbind_drm_flip_request(ctx: ProbeContext) -> u32 {
    request(&ctx, true);
    0
}

/// Attached to `drm_crtc_queue_sequence_ioctl` (same arguments): a vblank event asked for without
/// `drm_vblank_event_queued`. Ownership only: the last flip request keeps its time.
#[kprobe]
pub fn nvbind_drm_event_request(ctx: ProbeContext) -> u32 {
    request(&ctx, false);
    0
}

#[inline(always)]
fn request(ctx: &ProbeContext, flip: bool) {
    let (tgid, tid) = if flip {
        // Any process's: a compositor shows other processes' frames with its flips, and the
        // config's exclusions govern sessions, not evidence. Only completed flips are sent for
        // an untracked owner (`nvbind_drm_send_event`), and only the DRM master can flip, so no
        // process can send more than its display's refresh; a failing request only costs this
        // LRU update.
        let id = bpf_get_current_pid_tgid();
        ((id >> 32) as u32, id as u32)
    } else {
        let Some(ids) = tracked_current() else {
            return;
        };
        ids
    };
    let Some(file) = ctx.arg::<u64>(2) else {
        return;
    };
    own(file, tgid, tid, flip);
}

/// Makes (tgid, tid) the owner of `file`; `flip`: it asked for a flip or commit just now.
#[inline(always)]
fn own(file: u64, tgid: u32, tid: u32, flip: bool) -> DrmFileOwner {
    // SAFETY: plain lookup of a plain value, copied out at once.
    let previous = unsafe { DRM_FILE_OWNERS.get(&file) }.copied();
    let (flip_request_ns, flip_woke_ns) = if flip {
        (now_ns(), last_woken(tid))
    } else {
        previous
            .filter(|p| p.tgid == tgid)
            .map_or((0, 0), |p| (p.flip_request_ns, p.flip_woke_ns))
    };
    let owner = DrmFileOwner {
        tgid,
        tid,
        flip_request_ns,
        flip_woke_ns,
    };
    let _ = DRM_FILE_OWNERS.insert(&file, &owner, 0);
    owner
}

/// Threads that flip, whose wakeups `sched_wakeup` notes (see [`note_flipper_woken`]).
#[map]
pub static FLIPPERS: Array<Flippers> = Array::with_max_entries(1, 0);

/// When flipping thread `tid` was last woken (0: not one of `FLIPPERS`, or not woken since).
#[inline(always)]
fn last_woken(tid: u32) -> u64 {
    let Some(f) = FLIPPERS.get(0) else {
        return 0;
    };
    for i in 0..FLIPPER_SLOTS {
        if f.tids[i] == tid {
            return f.woke_ns[i];
        }
    }
    0
}

/// Makes `tid`, whose flip just completed, one of `FLIPPERS` (replacing the oldest newcomer
/// when all slots are taken). Only completed flips count: only the DRM master flips, so a
/// process issuing failing requests cannot take the compositor's slot.
#[inline(always)]
fn remember_flipper(tid: u32) {
    let Some(f) = FLIPPERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: live map value; racing writers store whole words.
    let f = unsafe { &mut *f };
    for i in 0..FLIPPER_SLOTS {
        if f.tids[i] == tid {
            return;
        }
    }
    let slot = (f.next as usize) % FLIPPER_SLOTS;
    f.tids[slot] = tid;
    f.woke_ns[slot] = 0;
    f.next = f.next.wrapping_add(1);
}

/// From `sched_wakeup`, for every task woken on the host: notes the time when it is a thread
/// that flips. A compositor sleeps until its repaint is due; what its clients committed before it
/// woke is in the flip it asks for next, what came after waits for the one after.
#[inline(always)]
pub fn note_flipper_woken(tid: u32) {
    let Some(f) = FLIPPERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: live map value; a plain store of a whole word.
    let f = unsafe { &mut *f };
    for i in 0..FLIPPER_SLOTS {
        if f.tids[i] == tid && tid != 0 {
            f.woke_ns[i] = now_ns();
        }
    }
}

#[tracepoint]
pub fn nvbind_drm_vblank(ctx: TracePointContext) -> u32 {
    count(0);
    let crtc: i32 = field(&ctx, &DRM_VBLANK_CRTC_OFF).unwrap_or(-1);
    if crtc < 0 {
        return 0;
    }
    let seq: u32 = field(&ctx, &DRM_VBLANK_SEQ_OFF).unwrap_or(0);
    let time: i64 = field(&ctx, &DRM_VBLANK_TIME_OFF).unwrap_or(0);
    if let Some(v) = CRTC_VBLANKS.get_ptr_mut(crtc as u32) {
        // SAFETY: live map value; vblanks of one CRTC come from one interrupt at a time.
        let v = unsafe { &mut *v };
        let time = time as u64;
        if v.count == 0 {
            v.first_ns = time;
            v.first_seq = seq;
        } else if seq == v.last_seq.wrapping_add(1) && time > v.last_ns {
            // Only back-to-back vblanks time the refresh: the interrupt is off while nobody
            // waits for a vblank, and a late or missed one skips sequence numbers.
            v.pairs += 1;
            v.paired_ns += time - v.last_ns;
        }
        v.count += 1;
        v.last_ns = time;
        v.last_seq = seq;
    }
    0
}

#[tracepoint]
pub fn nvbind_drm_queued(ctx: TracePointContext) -> u32 {
    count(1);
    let Some((tgid, tid)) = tracked_current() else {
        return 0;
    };
    let file: u64 = field(&ctx, &DRM_QUEUED_FILE_OFF).unwrap_or(0);
    let crtc = field::<i32>(&ctx, &DRM_QUEUED_CRTC_OFF).unwrap_or(0) as u32;
    let seq: u32 = field(&ctx, &DRM_QUEUED_SEQ_OFF).unwrap_or(0);
    let owner = own(file, tgid, tid, false);
    send(&display_event(
        display_kind::VBLANK_QUEUED,
        &owner,
        crtc,
        seq,
        now_ns(),
    ));
    0
}

#[tracepoint]
pub fn nvbind_drm_delivered(ctx: TracePointContext) -> u32 {
    count(2);
    let Some(pending) = PENDING_DELIVERY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot; DRM holds its event lock with interrupts off until the kprobe.
    let pending = unsafe { &mut *pending };
    if pending.stashed_ns != 0 {
        // The previous delivery's send never reached the kprobe (a run the kernel skipped).
        count(4);
    }
    pending.stashed_ns = 0;
    let file: u64 = field(&ctx, &DRM_DELIVERED_FILE_OFF).unwrap_or(0);
    // file 0: the kernel's own events.
    if file == 0 {
        return 0;
    }
    // SAFETY: plain lookup of a plain value, copied out at once.
    let Some(owner) = (unsafe { DRM_FILE_OWNERS.get(&file) }).copied() else {
        return 0;
    };
    // An untracked owner (a compositor) gets its completed flips only (`nvbind_drm_send_event`).
    // SAFETY: plain lookup of a u32 value.
    let tracked = unsafe { TRACKED_PROCESSES.get(owner.tgid) }.is_some();
    let now = now_ns();
    pending.file = file;
    pending.owner_tracked = tracked as u32;
    pending.stashed_ns = now;
    pending.event = display_event(
        display_kind::FLIP,
        &owner,
        field::<i32>(&ctx, &DRM_DELIVERED_CRTC_OFF).unwrap_or(0) as u32,
        field(&ctx, &DRM_DELIVERED_SEQ_OFF).unwrap_or(0),
        now,
    );
    0
}

/// `struct drm_pending_event` (include/drm/drm_file.h), unchanged since Linux 4.13: `completion`,
/// `completion_release`, then `event` (the `struct drm_event *` whose first field is its type) and,
/// after `fence`, `file_priv`. The file read here must be the one the tracepoint saw, which
/// checks the layout on every event.
const PENDING_EVENT_EVENT_OFF: u64 = 16;
const PENDING_EVENT_FILE_OFF: u64 = 32;
/// `DRM_EVENT_VBLANK`, `DRM_EVENT_FLIP_COMPLETE`, `DRM_EVENT_CRTC_SEQUENCE` (uapi drm.h).
const DRM_EVENT_VBLANK: u32 = 1;
const DRM_EVENT_FLIP_COMPLETE: u32 = 2;
const DRM_EVENT_CRTC_SEQUENCE: u32 = 3;
/// How long a stash is taken by a send whose event cannot be told to be its own (a file or type
/// that does not match, counted as unreadable). A send to the same file with a vblank, sequence
/// or flip-complete event takes it however old: the send follows the tracepoint within a few
/// instructions on real hardware, but a virtual CPU can be descheduled by its host between the
/// two while guest time runs on (lost deliveries in the test VM on a loaded host: 119 of 120, no
/// probe run skipped, with a 1 ms and then a 100 ms limit on every stash). Only a missed kprobe
/// leaves a stash behind, and the next delivery's tracepoint replaces it (counted as unpaired).
const STASH_LIFETIME_NS: u64 = 100_000_000;

/// Attached to `drm_send_event_timestamp_locked(dev, struct drm_pending_event *e, ts)` (or, before
/// Linux 5.12, `drm_send_event_locked(dev, e)`): completes a delivery stashed by
/// `nvbind_drm_delivered` with the event's type.
#[kprobe]
pub fn nvbind_drm_send_event(ctx: ProbeContext) -> u32 {
    let Some(pending) = PENDING_DELIVERY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot (see nvbind_drm_delivered).
    let pending = unsafe { &mut *pending };
    if pending.stashed_ns == 0 {
        return 0;
    }
    let fresh = now_ns().saturating_sub(pending.stashed_ns) < STASH_LIFETIME_NS;
    pending.stashed_ns = 0;
    let Some(e) = ctx.arg::<u64>(1) else {
        count(4);
        return 0;
    };
    // SAFETY: checked reads of kernel memory (they fail instead of faulting).
    let file = unsafe { bpf_probe_read_kernel((e + PENDING_EVENT_FILE_OFF) as *const u64) };
    let event = unsafe { bpf_probe_read_kernel((e + PENDING_EVENT_EVENT_OFF) as *const u64) };
    let kind = match (file, event) {
        (Ok(file), Ok(event)) if file == pending.file && event != 0 => {
            // SAFETY: as above.
            match unsafe { bpf_probe_read_kernel(event as *const u32) } {
                Ok(DRM_EVENT_FLIP_COMPLETE) => Some(display_kind::FLIP),
                Ok(DRM_EVENT_VBLANK) | Ok(DRM_EVENT_CRTC_SEQUENCE) => {
                    Some(display_kind::VBLANK_DELIVERED)
                }
                _ => None,
            }
        }
        _ => None,
    };
    let mut record = pending.event;
    // `drm_send_event_timestamp_locked`'s third argument is the time DRM writes into the event:
    // for a flip, the vblank's. `drm_send_event_locked` (before 5.12) has none: what is in the
    // register then is not a time of the last second, and the delivery's time stands in.
    if let Some(ts) = ctx.arg::<u64>(2) {
        let now = now_ns();
        if ts != 0 && ts <= now && now - ts < 1_000_000_000 {
            record.vblank_ns = ts;
        }
    }
    if kind == Some(display_kind::FLIP) {
        remember_flipper(record.header.tid);
    }
    match kind {
        Some(kind) if kind != display_kind::FLIP && pending.owner_tracked == 0 => return 0,
        Some(kind) => record.header.aux = kind,
        None if pending.owner_tracked == 0 => return 0,
        // Not laid out as expected: still a delivery to the process, counted apart.
        None if fresh => count(3),
        // An old stash and an event that is not its own: its send was missed.
        None => {
            count(4);
            return 0;
        }
    }
    send(&record);
    0
}
