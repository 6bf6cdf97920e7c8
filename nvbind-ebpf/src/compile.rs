//! Compile probes: how long a tracked thread spends inside the driver's shader and pipeline
//! creation calls (`compile_call`), counted in its counters (so each frame carries its own
//! compile time) and, for calls of `COMPILE_EVENT_MIN_NS` or longer, sent one by one.
//!
//! The agent attaches `nvbind_compile` (with the call as the cookie) and `nvbind_compile_ret` to
//! the installed Vulkan drivers' functions and to those a process learns from `vkGet*ProcAddr`,
//! and to OpenGL's `glCompileShader`/`glLinkProgram`: libGL's and libOpenGL's exports, and the
//! libglvnd dispatch stubs `glXGetProcAddress`/`eglGetProcAddress` hand out (a stub jumps to the
//! driver, so the return probe sees the driver's return).
//! A call that passes through more than one hooked function (a layer's, then a driver's) is
//! timed once: only the outermost counts.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{pt_regs, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_attach_cookie, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::PerCpuArray,
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use nvbind_common::{
    compile_call, event_kind, CompileEvent, EventHeader, COMPILE_EVENT_MIN_NS,
    FEEDBACK_PIPELINES_READ,
};

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
        return register_argument(regs, index);
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

/// Argument `index` of an x86-64 call, from its register. All six registers are read, each
/// with a load of its own at a fixed offset of the context, and the value is picked after: the
/// verifier refuses a context read at a computed offset, which the compiler makes of reads in
/// several branches merged into one.
#[inline(always)]
fn register_argument(regs: &pt_regs, index: usize) -> Option<u64> {
    // SAFETY: volatile reads of the program's own context, each at a constant offset.
    let all = unsafe {
        [
            read_volatile(&regs.rdi),
            read_volatile(&regs.rsi),
            read_volatile(&regs.rdx),
            read_volatile(&regs.rcx),
            read_volatile(&regs.r8),
            read_volatile(&regs.r9),
        ]
    };
    all.get(index).copied()
}

/// (pipelines asked for, whether a cache was given, the create infos) of a call.
#[inline(always)]
fn what_it_creates(ctx: &ProbeContext, call: u32) -> (u32, u32, u64) {
    let (count, cache, infos) = match call {
        // (device, VkPipelineCache cache, uint32_t count, const Vk*PipelineCreateInfo* infos,
        // ...)
        compile_call::GRAPHICS_PIPELINES | compile_call::COMPUTE_PIPELINES => (
            argument(ctx, 2, 1, false),
            argument(ctx, 1, 0, true),
            argument(ctx, 3, 1, false),
        ),
        // (device, VkDeferredOperationKHR, VkPipelineCache cache, uint32_t count, infos, ...)
        compile_call::RAY_TRACING_PIPELINES => (
            argument(ctx, 3, 2, false),
            argument(ctx, 2, 1, true),
            argument(ctx, 4, 2, false),
        ),
        _ => (Some(0), Some(0), Some(0)),
    };
    (
        count.unwrap_or(0) as u32,
        u32::from(cache.unwrap_or(0) != 0),
        infos.unwrap_or(0),
    )
}

/// `VK_STRUCTURE_TYPE_PIPELINE_CREATION_FEEDBACK_CREATE_INFO`.
const CREATION_FEEDBACK_CREATE_INFO: u32 = 1_000_192_000;
/// `VkPipelineCreationFeedbackFlagBits`: the driver filled the feedback in...
const FEEDBACK_VALID: u32 = 1;
/// ...and the pipeline came from the application's pipeline cache.
const FEEDBACK_APPLICATION_PIPELINE_CACHE_HIT: u32 = 2;
/// Structures of a `pNext` chain looked at before giving up.
const CHAIN_LINKS_READ: usize = 8;

/// A pointer in user memory: 8 bytes, or 4 in a 32-bit process.
#[inline(always)]
fn read_pointer(at: u64, is32: bool) -> u64 {
    // SAFETY: checked reads of user memory; a fault reads as null.
    unsafe {
        if is32 {
            bpf_probe_read_user(at as *const u32).map_or(0, u64::from)
        } else {
            bpf_probe_read_user(at as *const u64).unwrap_or(0)
        }
    }
}

/// The driver's creation feedback for the first [`FEEDBACK_PIPELINES_READ`] pipelines of a call
/// that returned: (pipelines it filled the feedback of, of them those it took from the pipeline
/// cache). The game chains a `VkPipelineCreationFeedbackCreateInfo` to a pipeline's create info
/// to be told; without one there is nothing to read (0, 0). Layouts: `Vk*PipelineCreateInfo`
/// and the feedback info start with `sType` and `pNext`; the sizes are the C ABI's (x86-64, and
/// i386 where 8-byte handles are 4-byte aligned).
#[inline(always)]
fn creation_feedback(call: u32, infos: u64, count: u32, is32: bool) -> (u16, u16) {
    let stride: u64 = match (call, is32) {
        (compile_call::GRAPHICS_PIPELINES, false) => 144,
        (compile_call::GRAPHICS_PIPELINES, true) => 88,
        (compile_call::COMPUTE_PIPELINES, false) => 96,
        (compile_call::COMPUTE_PIPELINES, true) => 64,
        (compile_call::RAY_TRACING_PIPELINES, false) => 104,
        (compile_call::RAY_TRACING_PIPELINES, true) => 64,
        _ => return (0, 0),
    };
    let word: u64 = if is32 { 4 } else { 8 };
    let (mut filled, mut hits) = (0u16, 0u16);
    if infos == 0 {
        return (0, 0);
    }
    for i in 0..FEEDBACK_PIPELINES_READ as u64 {
        if i >= u64::from(count) {
            break;
        }
        // pNext follows sType (4 bytes, padded to a word).
        let mut link = read_pointer(infos + i * stride + word, is32);
        for _ in 0..CHAIN_LINKS_READ {
            if link == 0 {
                break;
            }
            // SAFETY: a checked read of user memory.
            let s_type = unsafe { bpf_probe_read_user(link as *const u32) }.unwrap_or(0);
            if s_type == CREATION_FEEDBACK_CREATE_INFO {
                // pPipelineCreationFeedback follows sType and pNext; its flags come first.
                let feedback = read_pointer(link + 2 * word, is32);
                // SAFETY: as above.
                let flags = if feedback == 0 {
                    0
                } else {
                    unsafe { bpf_probe_read_user(feedback as *const u32) }.unwrap_or(0)
                };
                if flags & FEEDBACK_VALID != 0 {
                    filled += 1;
                    if flags & FEEDBACK_APPLICATION_PIPELINE_CACHE_HIT != 0 {
                        hits += 1;
                    }
                }
                break;
            }
            link = read_pointer(link + word, is32);
        }
    }
    (filled, hits)
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
    let (pipelines, cache_given, infos) = what_it_creates(&ctx, call);
    t.compile_call = call;
    t.compile_pipelines = pipelines;
    t.compile_cache_given = cache_given;
    t.compile_infos = infos;
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
    // SAFETY: the context's registers are the program's own.
    let is32 = is_32_bit(unsafe { &*ctx.regs });
    let (feedback_pipelines, cache_hits) =
        creation_feedback(t.compile_call, t.compile_infos, t.compile_pipelines, is32);
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
        // VkResult is 32 bits (eax); the GL calls return nothing.
        result: if compile_call::is_gl(t.compile_call) {
            0
        } else {
            ctx.ret::<u64>() as u32 as i32
        },
        feedback_pipelines,
        cache_hits,
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
