//! Compile probes: how long a tracked thread spends inside the driver's shader and pipeline
//! creation calls (`compile_call`), counted in its counters (so each frame carries its own
//! compile time) and, for calls of `COMPILE_EVENT_MIN_NS` or longer, sent one by one.
//!
//! The agent attaches `nvbind_compile` (with the call as the cookie) and `nvbind_compile_ret` to
//! the installed Vulkan drivers' functions and to those a process learns from `vkGet*ProcAddr`.
//! A call that passes through more than one hooked function (a layer's, then a driver's) is
//! timed once: only the outermost counts.

use aya_ebpf::{
    bindings::{pt_regs, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_attach_cookie, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::PerCpuArray,
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use nvbind_common::{compile_call, event_kind, CompileEvent, EventHeader, COMPILE_EVENT_MIN_NS};

use crate::{
    present::is_32_bit,
    state::{current_thread, now_ns, EVENTS, EVENTS_BYTES},
};

/// Long compile calls not sent (index 0): the ring buffer was a quarter full, and frames come
/// first. Their time is in the threads' counters all the same.
#[map]
pub static COMPILES_NOT_SENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Argument `index` (0-based) of the probed call at its first instruction, as 64 bits: x86-64
/// passes the first six in registers; i386 (cdecl) on the stack above the return address, four
/// bytes each except 64-bit values (`wide` counts the 8-byte arguments before this one: Vulkan's
/// non-dispatchable handles, such as `VkPipelineCache`, are 64 bits on every ABI).
#[inline(always)]
fn argument(ctx: &ProbeContext, index: usize, wide_before: usize, wide: bool) -> Option<u64> {
    // SAFETY: the context's registers are the program's own.
    let regs: &pt_regs = unsafe { &*ctx.regs };
    if !is_32_bit(regs) {
        return ctx.arg::<u64>(index);
    }
    let at = (regs.rsp & 0xffff_ffff) + 4 + 4 * (index + wide_before) as u64;
    // SAFETY: checked reads of user memory; a fault is an error, not a crash.
    unsafe {
        if wide {
            bpf_probe_read_user(at as *const u64).ok()
        } else {
            bpf_probe_read_user(at as *const u32).ok().map(u64::from)
        }
    }
}

/// (pipelines asked for, whether a cache was given) of a call.
#[inline(always)]
fn what_it_creates(ctx: &ProbeContext, call: u32) -> (u32, u32) {
    let (count, cache) = match call {
        // (device, VkPipelineCache cache, uint32_t count, ...)
        compile_call::GRAPHICS_PIPELINES | compile_call::COMPUTE_PIPELINES => {
            (argument(ctx, 2, 1, false), argument(ctx, 1, 0, true))
        }
        // (device, VkDeferredOperationKHR, VkPipelineCache cache, uint32_t count, ...)
        compile_call::RAY_TRACING_PIPELINES => {
            (argument(ctx, 3, 2, false), argument(ctx, 2, 1, true))
        }
        _ => (Some(0), Some(0)),
    };
    (
        count.unwrap_or(0) as u32,
        u32::from(cache.unwrap_or(0) != 0),
    )
}

#[uprobe]
pub fn nvbind_compile(ctx: ProbeContext) -> u32 {
    let Some((_, _, t)) = current_thread() else {
        return 0;
    };
    t.compile_depth += 1;
    if t.compile_depth > 1 {
        return 0;
    }
    // SAFETY: the context pointer is the program's own.
    let call = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let (pipelines, cache_given) = what_it_creates(&ctx, call);
    t.compile_call = call;
    t.compile_pipelines = pipelines;
    t.compile_cache_given = cache_given;
    t.compile_start_ns = now_ns();
    0
}

#[uretprobe]
pub fn nvbind_compile_ret(ctx: RetProbeContext) -> u32 {
    let Some((tgid, tid, t)) = current_thread() else {
        return 0;
    };
    if t.compile_depth == 0 {
        // Its entry came before the thread was tracked (or before the hook was placed).
        return 0;
    }
    t.compile_depth -= 1;
    if t.compile_depth > 0 || t.compile_start_ns == 0 {
        return 0;
    }
    let now = now_ns();
    let took = now.saturating_sub(t.compile_start_ns);
    t.totals.compile_calls += 1;
    t.totals.compile_ns += took;
    t.totals.compile_pipelines += u64::from(t.compile_pipelines);
    let start = t.compile_start_ns;
    t.compile_start_ns = 0;
    if took < COMPILE_EVENT_MIN_NS {
        return 0;
    }
    let event = CompileEvent {
        header: EventHeader {
            kind: event_kind::COMPILE,
            tgid,
            tid,
            aux: t.compile_call,
            ts_ns: now,
        },
        start_ns: start,
        pipelines: t.compile_pipelines,
        cache_given: t.compile_cache_given,
        // VkResult is 32 bits (eax).
        result: ctx.ret::<u64>() as u32 as i32,
        _pad: 0,
    };
    let sent = EVENTS.query(BPF_RB_AVAIL_DATA as u64) <= EVENTS_BYTES / 4
        && EVENTS
            .output::<CompileEvent>(&event, BPF_RB_NO_WAKEUP as u64)
            .is_ok();
    if !sent {
        if let Some(p) = COMPILES_NOT_SENT.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer.
            unsafe { *p += 1 };
        }
    }
    0
}
