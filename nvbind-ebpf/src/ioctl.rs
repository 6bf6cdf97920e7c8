//! ioctl probes: count and time inside ioctls per class (DRM, NVIDIA, amdkfd, other) for tracked
//! threads, and mark a thread that blocks inside a GPU driver ioctl (see `sched`).
//!
//! Two ways in, the same work: fentry/fexit on the kernel's ioctl syscall function (the agent
//! names it for the architecture at load, from BTF), which cost nothing to any other syscall;
//! and the classic `syscalls` tracepoints (the fallback), whose mere enabling sends every
//! syscall of every task through the kernel's syscall tracing path (a pipe storm loses about
//! 4 % to it even when the ioctl programs return at once).

use aya_ebpf::{
    bindings::pt_regs,
    macros::{fentry, fexit, map, tracepoint},
    maps::HashMap,
    programs::{FEntryContext, FExitContext, TracePointContext},
};
use nvbind_common::{ioctl_class, DrmIoctlKey};

use crate::state::{current_thread, field, now_ns, DECLARED_GPU_IOCTL_TYPES, IOCTL_CMD_OFF};

/// Calls per tracked process and DRM ioctl number (`_IOC_NR` of a `'d'` ioctl): which DRM
/// requests a process makes (page flips, atomic commits, vblank waits, buffer and GEM calls).
#[map]
pub static DRM_IOCTL_COUNTS: HashMap<DrmIoctlKey, u64> = HashMap::with_max_entries(8192, 0);

#[tracepoint]
pub fn nvbind_ioctl_enter(ctx: TracePointContext) -> u32 {
    entered(|| field(&ctx, &IOCTL_CMD_OFF).unwrap_or(0));
    0
}

#[tracepoint]
pub fn nvbind_ioctl_exit(_ctx: TracePointContext) -> u32 {
    exited();
    0
}

/// `long __x64_sys_ioctl(const struct pt_regs *regs)`: the syscall's arguments are the user's
/// registers (x86-64: fd in rdi, cmd in rsi).
#[fentry(function = "__x64_sys_ioctl")]
pub fn nvbind_ioctl_enter_btf(ctx: FEntryContext) -> u32 {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: a BTF-typed argument: the verifier checks the field load and makes it fault-safe.
    entered(|| unsafe { (*regs).rsi });
    0
}

#[fexit(function = "__x64_sys_ioctl")]
pub fn nvbind_ioctl_exit_btf(_ctx: FExitContext) -> u32 {
    exited();
    0
}

/// A tracked thread enters an ioctl: its class (and DRM request) counted, its start stamped.
/// `cmd` is read only for tracked threads.
#[inline(always)]
fn entered(cmd: impl FnOnce() -> u64) {
    let Some((tgid, _, t)) = current_thread() else {
        return;
    };
    let cmd = cmd();
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
}

/// A tracked thread leaves an ioctl: the time inside added to its class.
#[inline(always)]
fn exited() {
    let Some((_, _, t)) = current_thread() else {
        return;
    };
    if t.ioctl_start_ns == 0 {
        // Entered before tracking began.
        return;
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
