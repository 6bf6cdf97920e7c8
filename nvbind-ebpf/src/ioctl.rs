//! ioctl probes: count and time inside ioctls per class (DRM, NVIDIA, amdkfd, other) for tracked
//! threads, and mark a thread that blocks inside a GPU driver ioctl (see `sched`).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use nvbind_common::ioctl_class;

use crate::state::{current_thread, field, now_ns, DECLARED_GPU_IOCTL_TYPES, IOCTL_CMD_OFF};

#[tracepoint]
pub fn nvbind_ioctl_enter(ctx: TracePointContext) -> u32 {
    let Some((_, _, t)) = current_thread() else {
        return 0;
    };
    let cmd: u64 = field(&ctx, &IOCTL_CMD_OFF).unwrap_or(0);
    let mut class = ioctl_class::of(cmd as u32);
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
