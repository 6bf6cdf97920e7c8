//! DRM display events, where the kernel has them: when a frame reached the screen.
//!
//! - `drm_vblank_event` (every vblank of every CRTC): the refresh cadence, per CRTC.
//! - kprobes on the DRM ioctls that ask for something to happen at a vblank
//!   (`drm_mode_page_flip_ioctl`, `drm_mode_atomic_ioctl`, `drm_wait_vblank_ioctl`, whose third
//!   argument is the caller's `struct drm_file`): who owns each DRM file, and when it last asked.
//! - `drm_vblank_event_queued` (in the thread calling `WAIT_VBLANK` with an event) and
//!   `drm_vblank_event_delivered` (at the vblank, with the DRM file): a delivery whose
//!   (file, CRTC, sequence) was queued is that vblank event; any other delivery to a file is a
//!   completed flip or commit, a frame on screen. Either goes to the file's owner when the owner
//!   is tracked.
//!
//! Each kind is also counted in a per-CPU array for the report's totals.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{ProbeContext, TracePointContext},
};
use nvbind_common::{
    display_kind, event_kind, CrtcVblanks, DisplayEvent, DrmEventKey, DrmFileOwner, EventHeader,
};

use crate::state::{
    count_drop, field, now_ns, DRM_DELIVERED_CRTC_OFF, DRM_DELIVERED_FILE_OFF,
    DRM_DELIVERED_SEQ_OFF, DRM_QUEUED_CRTC_OFF, DRM_QUEUED_FILE_OFF, DRM_QUEUED_SEQ_OFF,
    DRM_VBLANK_CRTC_OFF, DRM_VBLANK_SEQ_OFF, DRM_VBLANK_TIME_OFF, EVENTS, TRACKED_PROCESSES,
};

/// Index 0: `drm_vblank_event`, 1: `drm_vblank_event_queued`, 2: `drm_vblank_event_delivered`.
#[map]
pub static DRM_EVENT_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// `struct drm_file` pointer → the tracked process that last made a display request on it.
#[map]
pub static DRM_FILE_OWNERS: LruHashMap<u64, DrmFileOwner> = LruHashMap::with_max_entries(1024, 0);

/// `WAIT_VBLANK` events queued by tracked processes and not delivered yet.
#[map]
pub static DRM_PENDING_VBLANK_EVENTS: LruHashMap<DrmEventKey, u64> =
    LruHashMap::with_max_entries(1024, 0);

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

#[inline(always)]
fn emit(kind: u32, owner: &DrmFileOwner, crtc: u32, seq: u32, now: u64) {
    let event = DisplayEvent {
        header: EventHeader {
            kind: event_kind::DISPLAY,
            tgid: owner.tgid,
            tid: owner.tid,
            aux: kind,
            ts_ns: now,
        },
        crtc,
        seq,
        request_ns: owner.request_ns,
    };
    // A refresh rate's worth a second: drained with the frames, no wakeup of its own.
    if EVENTS
        .output::<DisplayEvent>(&event, BPF_RB_NO_WAKEUP as u64)
        .is_err()
    {
        count_drop();
    }
}

/// Attached to `drm_mode_page_flip_ioctl`, `drm_mode_atomic_ioctl` and `drm_wait_vblank_ioctl`
/// (all `(struct drm_device *, void *data, struct drm_file *)`).
#[kprobe]
pub fn nvbind_drm_request(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid)) = tracked_current() else {
        return 0;
    };
    let Some(file) = ctx.arg::<u64>(2) else {
        return 0;
    };
    let owner = DrmFileOwner {
        tgid,
        tid,
        request_ns: now_ns(),
    };
    let _ = DRM_FILE_OWNERS.insert(&file, &owner, 0);
    0
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
        if v.count == 0 {
            v.first_ns = time as u64;
            v.first_seq = seq;
        }
        v.count += 1;
        v.last_ns = time as u64;
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
    let key = DrmEventKey {
        file: field(&ctx, &DRM_QUEUED_FILE_OFF).unwrap_or(0),
        crtc: field::<i32>(&ctx, &DRM_QUEUED_CRTC_OFF).unwrap_or(0) as u32,
        seq: field(&ctx, &DRM_QUEUED_SEQ_OFF).unwrap_or(0),
    };
    let now = now_ns();
    let owner = DrmFileOwner {
        tgid,
        tid,
        request_ns: now,
    };
    let _ = DRM_FILE_OWNERS.insert(&key.file, &owner, 0);
    let _ = DRM_PENDING_VBLANK_EVENTS.insert(&key, &now, 0);
    emit(display_kind::VBLANK_QUEUED, &owner, key.crtc, key.seq, now);
    0
}

#[tracepoint]
pub fn nvbind_drm_delivered(ctx: TracePointContext) -> u32 {
    count(2);
    let key = DrmEventKey {
        file: field(&ctx, &DRM_DELIVERED_FILE_OFF).unwrap_or(0),
        crtc: field::<i32>(&ctx, &DRM_DELIVERED_CRTC_OFF).unwrap_or(0) as u32,
        seq: field(&ctx, &DRM_DELIVERED_SEQ_OFF).unwrap_or(0),
    };
    // file 0: the kernel's own events.
    if key.file == 0 {
        return 0;
    }
    // SAFETY: plain lookup of a plain value, copied out at once.
    let Some(owner) = (unsafe { DRM_FILE_OWNERS.get(&key.file) }).copied() else {
        return 0;
    };
    let kind = if DRM_PENDING_VBLANK_EVENTS.remove(&key).is_ok() {
        display_kind::VBLANK_DELIVERED
    } else {
        display_kind::FLIP
    };
    emit(kind, &owner, key.crtc, key.seq, now_ns());
    0
}
