//! DRM display events, where the kernel has them. Counted per kind in a per-CPU array: the
//! display-side frame path builds on these (vblank cadence, queued and delivered flip events).

use aya_ebpf::{macros::map, macros::tracepoint, maps::PerCpuArray, programs::TracePointContext};

/// Index 0: `drm_vblank_event`, 1: `drm_vblank_event_queued`, 2: `drm_vblank_event_delivered`.
#[map]
pub static DRM_EVENT_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

#[inline(always)]
fn count(kind: u32) -> u32 {
    if let Some(p) = DRM_EVENT_COUNTS.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *p += 1 };
    }
    0
}

#[tracepoint]
pub fn nvbind_drm_vblank(_ctx: TracePointContext) -> u32 {
    count(0)
}

#[tracepoint]
pub fn nvbind_drm_queued(_ctx: TracePointContext) -> u32 {
    count(1)
}

#[tracepoint]
pub fn nvbind_drm_delivered(_ctx: TracePointContext) -> u32 {
    count(2)
}
