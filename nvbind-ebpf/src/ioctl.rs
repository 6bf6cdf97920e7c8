//! ioctl probes: count and time inside ioctls per class (DRM, NVIDIA, amdkfd, other) for tracked
//! threads, and mark a thread that blocks inside a GPU driver ioctl (see `sched`).

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use nvbind_common::{ioctl_class, DrmIoctlKey};

use crate::state::{current_thread, field, now_ns, DECLARED_GPU_IOCTL_TYPES, IOCTL_CMD_OFF};

/// Calls per tracked process and DRM ioctl number (`_IOC_NR` of a `'d'` ioctl): which DRM
/// requests a process makes (page flips, atomic commits, vblank waits, buffer and GEM calls).
#[map]
pub static DRM_IOCTL_COUNTS: HashMap<DrmIoctlKey, u64> = HashMap::with_max_entries(8192, 0);

#[tracepoint]
pub fn nvbind_ioctl_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, _, t)) = current_thread() else {
        return 0;
    };
    let cmd: u64 = field(&ctx, &IOCTL_CMD_OFF).unwrap_or(0);
    let mut class = ioctl_class::of(cmd as u32);
    if class == ioctl_class::DRM {
        count_drm_request(tgid, cmd as u32 & 0xff);
    }
    if class == ioctl_class::OTHER {
        let type_byte = (cmd as u32 >> 8) & 0xff;
        if DECLARED_GPU_IOCTL_TYPES
            .get(type_byte)
            .is_some_and(|&v| v != 0)
        {
            class = ioctl_class::DECLARED_GPU;
        }
    }
    t.ioctl_class = class as u32;
    t.ioctl_start_ns = now_ns();
    0
}

#[tracepoint]
pub fn nvbind_ioctl_exit(_ctx: TracePointContext) -> u32 {
    let Some((_, _, t)) = current_thread() else {
        return 0;
    };
    if t.ioctl_start_ns == 0 {
        // Entered before tracking began.
        return 0;
    }
    let took = now_ns().saturating_sub(t.ioctl_start_ns);
    t.ioctl_start_ns = 0;
    let class = t.ioctl_class as usize;
    if let Some(n) = t.totals.ioctl_count.get_mut(class) {
        *n += 1;
    }
    if let Some(ns) = t.totals.ioctl_ns.get_mut(class) {
        *ns += took;
    }
    0
}

#[inline(always)]
fn count_drm_request(tgid: u32, nr: u32) {
    let key = DrmIoctlKey { tgid, nr };
    match DRM_IOCTL_COUNTS.get_ptr_mut(&key) {
        // SAFETY: live map value; a racing update can at worst lose one count.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = DRM_IOCTL_COUNTS.insert(&key, &1, 0);
        }
    }
}
