//! Present probes: one ring-buffer record per frame a tracked thread hands over, carrying that
//! thread's scheduler and ioctl counters since its previous present.
//!
//! The agent attaches `nvbind_present` with a cookie naming the source (`present_source`) to
//! `vkQueuePresentKHR`, `glXSwapBuffers` and `eglSwapBuffers`, and to every `vkQueuePresentKHR`
//! implementation it learns about through `nvbind_vk_procaddr{,_ret}`: Vulkan apps (DXVK, volk,
//! vkcube) call the driver's or a layer's function through a pointer from `vkGet*ProcAddr`, never
//! the loader's export.
//!
//! Uprobes fire in 32-bit (i386) processes too; only the two programs that read arguments or a
//! return value (`nvbind_vk_procaddr{,_ret}`) depend on the calling convention, and read the
//! i386 one when the trapped task was running 32-bit code.

use aya_ebpf::{
    bindings::{pt_regs, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_attach_cookie, bpf_get_smp_processor_id, bpf_probe_read_user,
        generated::bpf_probe_read_user_str,
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use nvbind_common::{
    event_kind, pending_present_key, present_source, proc_addr_abi, resolving, thread_status,
    EventHeader, PresentEvent, ResolvedPresentEvent, ThreadState, FOLLOWED_PROC_NAMES,
    PROC_NAME_LEN,
};

use crate::state::{
    count_drop, current_ids, current_thread, discover_current_thread, frame_wakeup,
    frame_within_rate, mark_presenter, now_ns, unseen, DISCOVER_PRESENTERS, EVENTS,
    PENDING_PRESENTS, RESOLVING_PRESENT, ZERO_PRESENT,
};

#[uprobe]
pub fn nvbind_present(ctx: ProbeContext) -> u32 {
    // SAFETY: the context pointer is the program's own.
    let source = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let Some((tgid, tid, t)) = current_thread().or_else(discover_current_thread) else {
        return 0;
    };
    if source == present_source::VULKAN_LOADER || source == present_source::VULKAN_RESOLVED {
        // The loader's trampoline calls the first layer, which calls the next, down to the
        // driver: one frame, however many of them are hooked. Every Vulkan hook also has a
        // return probe (`nvbind_present_vk_ret`), attached before the entry probe.
        t.in_vulkan_present += 1;
        if t.in_vulkan_present > 1 {
            return 0;
        }
    }
    let target = present_target(&ctx, source);
    if source == present_source::GLX {
        // glXSwapBuffers returns nothing (X reports a failure later, as an error event): every
        // call is a frame, but one without a drawable (None), which cannot be.
        if target == 0 {
            return 0;
        }
        mark_presenter(t, tid);
        emit_present(t, tgid, tid, source, target);
    } else {
        // eglSwapBuffers and vkQueuePresentKHR say whether the frame was taken: it is held until
        // the call returns (`finish_present`).
        mark_presenter(t, tid);
        hold_present(t, tgid, tid, source, target);
    }
    0
}

/// Return of a hooked `eglSwapBuffers`: `EGL_TRUE` (1) if the frame was taken.
#[uretprobe]
pub fn nvbind_present_ret(ctx: RetProbeContext) -> u32 {
    // EGLBoolean is 32 bits (eax); the upper half of rax is not part of it.
    let taken = (ctx.ret::<u64>() as u32) != 0;
    finish_present(present_source::EGL, taken);
    0
}

/// `VK_SUBOPTIMAL_KHR`: the frame was presented, though the swapchain no longer matches the
/// surface exactly.
const VK_SUBOPTIMAL_KHR: i32 = 1_000_001_003;

/// The second argument of the probed call, widened to 64 bits, at the function's first
/// instruction: x86-64 passes it in rsi, i386 (cdecl) at `[esp + 8]` (see [`name_argument`]).
#[inline(always)]
fn second_argument(ctx: &ProbeContext) -> Option<u64> {
    // SAFETY: the context's registers are the program's own.
    let regs = unsafe { &*ctx.regs };
    if !is_32_bit(regs) {
        return ctx.arg::<u64>(1);
    }
    let slot = (regs.rsp & 0xffff_ffff).wrapping_add(8) as *const u32;
    // SAFETY: a checked read of user memory; a fault is an error, not a crash.
    unsafe { bpf_probe_read_user(slot) }.ok().map(u64::from)
}

/// What a present hands its frame to: `glXSwapBuffers(dpy, drawable)`'s drawable,
/// `eglSwapBuffers(dpy, surface)`'s surface, or the first swapchain in
/// `vkQueuePresentKHR(queue, VkPresentInfoKHR *)` (0 when unreadable).
#[inline(always)]
fn present_target(ctx: &ProbeContext, source: u32) -> u64 {
    let Some(argument) = second_argument(ctx) else {
        return 0;
    };
    if source != present_source::VULKAN_LOADER && source != present_source::VULKAN_RESOLVED {
        return argument;
    }
    // VkPresentInfoKHR { sType; pNext; waitSemaphoreCount; pWaitSemaphores; swapchainCount;
    // pSwapchains; ... }: pSwapchains is at byte 40 with 8-byte pointers, at 20 on i386. A
    // swapchain handle is 64 bits on both.
    // SAFETY: the context's registers are the program's own.
    let swapchains = if is_32_bit(unsafe { &*ctx.regs }) {
        // SAFETY: a checked read of user memory.
        unsafe { bpf_probe_read_user((argument + 20) as *const u32) }.map(u64::from)
    } else {
        // SAFETY: a checked read of user memory.
        unsafe { bpf_probe_read_user((argument + 40) as *const u64) }
    };
    match swapchains {
        // SAFETY: a checked read of user memory.
        Ok(list) if list != 0 => unsafe { bpf_probe_read_user(list as *const u64) }.unwrap_or(0),
        _ => 0,
    }
}

/// Return of a hooked `vkQueuePresentKHR`: the outermost one (the loader's trampoline, or the
/// first layer) carries the call's `VkResult`; `VK_SUCCESS` or `VK_SUBOPTIMAL_KHR` is a frame.
#[uretprobe]
pub fn nvbind_present_vk_ret(ctx: RetProbeContext) -> u32 {
    let Some((_, _, t)) = current_thread() else {
        return 0;
    };
    t.in_vulkan_present = t.in_vulkan_present.saturating_sub(1);
    if t.in_vulkan_present == 0 {
        // VkResult is 32 bits (eax).
        let result = ctx.ret::<u64>() as u32 as i32;
        finish_present(
            present_source::VULKAN_RESOLVED,
            result == 0 || result == VK_SUBOPTIMAL_KHR,
        );
    }
    0
}

/// Makes the frame of a present call at its entry, as [`emit_present`] would send it, and holds
/// it in `PENDING_PRESENTS` until the call returns. The thread's frame state moves on at once
/// (what happens during the call belongs to the next frame, and a present made inside this one
/// starts from here); if the call fails, [`finish_present`] gives the evidence back.
#[inline(always)]
fn hold_present(t: &mut ThreadState, tgid: u32, tid: u32, source: u32, target: u64) {
    let now = close_running_slice(t);
    let key = pending_present_key(tid, source);
    let Some(zero) = ZERO_PRESENT.get_ptr(0) else {
        return;
    };
    // SAFETY: `zero` points at a map value, which the helper may read from. A leftover of a call
    // that never returned (its thread longjmp'd out, say) is written over.
    if PENDING_PRESENTS.insert(key, unsafe { &*zero }, 0).is_err() {
        // Keep the state: the next frame carries this interval's evidence too.
        count_drop();
        return;
    }
    let Some(e) = PENDING_PRESENTS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a live map value, written only by this thread's own present probes.
    let e = unsafe { &mut *e };
    fill_present(e, t, tgid, tid, source, target, now);
    start_next_frame(t);
}

/// Ends the present call of `source` the current thread holds a frame for: sends it if the call
/// succeeded (`taken`), else gives its evidence back to the thread (`carried`, and its maxima
/// and culprit), so the next frame carries everything since the last frame that was sent.
#[inline(always)]
fn finish_present(source: u32, taken: bool) {
    let Some((_, tid, t)) = current_thread() else {
        return;
    };
    let key = pending_present_key(tid, source);
    let Some(e) = PENDING_PRESENTS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a live map value, written only by this thread's own present probes.
    let e = unsafe { &mut *e };
    e.end_ns = now_ns();
    let sent = taken
        && frame_within_rate(e.header.tgid, source)
        && EVENTS
            .output::<PresentEvent>(&*e, frame_wakeup())
            .map_err(|_| count_drop())
            .is_ok();
    if !sent {
        // Not a frame (or one over its user's rate, or one the ring buffer had no room for): its
        // interval joins the next's.
        t.carried.add(&e.delta);
        if e.max_runq_wait_ns > t.frame_max_runq_wait_ns {
            t.frame_max_runq_wait_ns = e.max_runq_wait_ns;
        }
        if e.max_blocked_ns > t.frame_max_blocked_ns {
            t.frame_max_blocked_ns = e.max_blocked_ns;
        }
        if e.culprit.wait_ns > t.frame_culprit.wait_ns {
            t.frame_culprit = e.culprit;
        }
    }
    let _ = PENDING_PRESENTS.remove(key);
}

/// Starts the thread's next frame interval: its counters' base moves to now, and the maxima,
/// the culprit and what refused presents carried start over.
#[inline(always)]
fn start_next_frame(t: &mut ThreadState) {
    t.at_last_present = t.totals;
    t.carried = Default::default();
    t.frame_max_runq_wait_ns = 0;
    t.frame_max_blocked_ns = 0;
    t.frame_culprit = Default::default();
}

/// Closes the running slice of a thread that is presenting, so the frame's on-CPU time includes
/// it; returns the time.
#[inline(always)]
fn close_running_slice(t: &mut ThreadState) -> u64 {
    let now = now_ns();
    if t.status == thread_status::RUNNING {
        t.totals.on_cpu_ns += now.saturating_sub(t.since_ns);
    } else {
        // It runs (it is presenting), yet no switch-in reached us: unseen, and running from now.
        unseen(t, now);
        t.status = thread_status::RUNNING;
    }
    t.since_ns = now;
    now
}

/// Writes a frame record presented at `now`, with the thread's evidence since its last frame.
#[inline(always)]
fn fill_present(
    e: &mut PresentEvent,
    t: &ThreadState,
    tgid: u32,
    tid: u32,
    source: u32,
    target: u64,
    now: u64,
) {
    e.header = EventHeader {
        kind: event_kind::PRESENT,
        tgid,
        tid,
        aux: source,
        ts_ns: now,
    };
    // SAFETY: a helper without arguments.
    e.cpu = unsafe { bpf_get_smp_processor_id() };
    e.last_preemptor_tid = t.last_preemptor_tid;
    e.max_runq_wait_ns = t.frame_max_runq_wait_ns;
    e.max_blocked_ns = t.frame_max_blocked_ns;
    e.culprit = t.frame_culprit;
    t.totals.since_into(&t.at_last_present, &mut e.delta);
    e.delta.add(&t.carried);
    e.target = target;
    e.end_ns = 0;
    e.commit_ns = 0;
}

/// Entry of libwayland-client's `wl_display_flush` in a tracked thread: inside a held present
/// call (`eglSwapBuffers`, `vkQueuePresentKHR`) this is Mesa sending the frame's commit to the
/// compositor (the last flush of the call; an earlier one is its wait for the compositor's frame
/// callback). The frame records when, for the join to the compositor's flips.
#[uprobe]
pub fn nvbind_wayland_flush(_ctx: ProbeContext) -> u32 {
    let Some((_, tid, _)) = current_thread() else {
        return 0;
    };
    let now = now_ns();
    for source in [present_source::EGL, present_source::VULKAN_LOADER] {
        if let Some(e) = PENDING_PRESENTS.get_ptr_mut(pending_present_key(tid, source)) {
            // SAFETY: a live map value, written only by this thread's own probes.
            unsafe { (*e).commit_ns = now };
        }
    }
    0
}

/// Sends the frame of a present call at its entry (a call that says nothing of its success).
#[inline(always)]
fn emit_present(t: &mut ThreadState, tgid: u32, tid: u32, source: u32, target: u64) {
    let now = close_running_slice(t);
    if !frame_within_rate(tgid, source) {
        // Counted, not sent; the next frame sent carries this interval's evidence too.
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<PresentEvent>(0) else {
        // Keep the snapshot: the next frame's record then carries this interval's evidence too.
        count_drop();
        return;
    };
    // SAFETY: reserved ring-buffer memory large enough for a PresentEvent; every field is
    // written before submit.
    fill_present(
        unsafe { &mut *entry.as_mut_ptr() },
        t,
        tgid,
        tid,
        source,
        target,
        now,
    );
    entry.submit(frame_wakeup());
    start_next_frame(t);
}

/// `__USER32_CS`: the code segment a task runs 32-bit code in (an i386 program on x86-64). The
/// trap that ran the probe saved the task's own `cs`.
const USER32_CS: u64 = 0x23;

/// Whether the probed call was made by 32-bit code.
#[inline(always)]
pub(crate) fn is_32_bit(regs: &pt_regs) -> bool {
    regs.cs == USER32_CS
}

/// The name a `*GetProcAddress` call was asked for, at the function's first instruction: the
/// second argument of `vkGet*ProcAddr`, the first of `glXGetProcAddress`/`eglGetProcAddress`
/// (the cookie says which, `proc_addr_abi`). x86-64 passes it in rsi or rdi; i386 (cdecl) on the
/// stack above the return address, four bytes per argument: `[esp + 8]` or `[esp + 4]`.
#[inline(always)]
fn name_argument(ctx: &ProbeContext) -> Option<*const u8> {
    // SAFETY: the context pointer is the program's own.
    let first = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } == proc_addr_abi::NAME_FIRST;
    // SAFETY: the context's registers are the program's own.
    let regs = unsafe { &*ctx.regs };
    if !is_32_bit(regs) {
        return ctx.arg::<*const u8>(if first { 0 } else { 1 });
    }
    let slot = (regs.rsp & 0xffff_ffff).wrapping_add(if first { 4 } else { 8 }) as *const u32;
    // SAFETY: a checked read of user memory; a fault is an error, not a crash.
    let name = unsafe { bpf_probe_read_user(slot) }.ok()?;
    Some(name as u64 as *const u8)
}

/// Entry of `vkGetDeviceProcAddr(device, name)` / `vkGetInstanceProcAddr(instance, name)`, and
/// of OpenGL's `glXGetProcAddress(name)` / `eglGetProcAddress(name)` (which return libglvnd's
/// dispatch stubs for the GL compile calls: functions no library exports under their names).
/// Tracked threads remember the question (`resolving`) in their record; in discovery mode
/// untracked ones in `RESOLVING_PRESENT` (a game resolves its functions before its first frame).
#[uprobe]
pub fn nvbind_vk_procaddr(ctx: ProbeContext) -> u32 {
    let tracked = current_thread();
    if tracked.is_none() && DISCOVER_PRESENTERS.load() == 0 {
        return 0;
    }
    let Some(name) = name_argument(&ctx) else {
        return 0;
    };
    let asked = followed_function(name);
    match tracked {
        Some((_, _, t)) => t.resolving_present = asked,
        None => {
            // Set or cleared on every call, so an entry never outlives its call (a reused tid
            // must not report another function as the one asked for).
            let (_, tid) = current_ids();
            if asked != resolving::NOTHING {
                let _ = RESOLVING_PRESENT.insert(tid, asked, 0);
            } else {
                let _ = RESOLVING_PRESENT.remove(tid);
            }
        }
    }
    0
}

/// Which followed function (`resolving`) the NUL-terminated name at `name` (user memory) is.
#[inline(always)]
fn followed_function(name: *const u8) -> u32 {
    let mut words = [0u64; PROC_NAME_LEN / 8];
    // SAFETY: a checked read of at most PROC_NAME_LEN bytes of user memory into `words`, NUL
    // included; the rest stays zero, as in the padded names compared with.
    let read = unsafe {
        bpf_probe_read_user_str(words.as_mut_ptr().cast(), PROC_NAME_LEN as u32, name.cast())
    };
    if read <= 0 {
        return resolving::NOTHING;
    }
    let mut i = 0;
    while i < FOLLOWED_PROC_NAMES.len() {
        let (wanted, kind) = FOLLOWED_PROC_NAMES[i];
        if words[0] == wanted[0]
            && words[1] == wanted[1]
            && words[2] == wanted[2]
            && words[3] == wanted[3]
        {
            return kind;
        }
        i += 1;
    }
    resolving::NOTHING
}

/// Return of `vkGet{Device,Instance}ProcAddr` (or a GL `*GetProcAddress`): report the pointer if
/// the name was one followed (the present function, or a compile call for `nvbind_compile`).
#[uretprobe]
pub fn nvbind_vk_procaddr_ret(ctx: RetProbeContext) -> u32 {
    let (tgid, tid, asked) = match current_thread() {
        Some((tgid, tid, t)) => {
            // Tracked between entry and return: the question was asked untracked.
            let asked_untracked = if DISCOVER_PRESENTERS.load() != 0 {
                // SAFETY: plain lookup of a u32 value.
                unsafe { RESOLVING_PRESENT.get(tid) }.copied()
            } else {
                None
            };
            if asked_untracked.is_some() {
                let _ = RESOLVING_PRESENT.remove(tid);
            }
            let asked = match asked_untracked {
                Some(asked) => asked,
                None => t.resolving_present,
            };
            t.resolving_present = resolving::NOTHING;
            if asked == resolving::NOTHING {
                return 0;
            }
            (tgid, tid, asked)
        }
        None => {
            if DISCOVER_PRESENTERS.load() == 0 {
                return 0;
            }
            let (tgid, tid) = current_ids();
            // SAFETY: plain lookup of a u32 value.
            let Some(asked) = (unsafe { RESOLVING_PRESENT.get(tid) }.copied()) else {
                return 0;
            };
            let _ = RESOLVING_PRESENT.remove(tid);
            (tgid, tid, asked)
        }
    };
    let mut address: u64 = ctx.ret();
    // SAFETY: the context's registers are the program's own.
    if is_32_bit(unsafe { &*ctx.regs }) {
        // The i386 ABI returns a pointer in eax; rax's upper half is not part of it.
        address &= 0xffff_ffff;
    }
    if address == 0 {
        return 0;
    }
    let event = ResolvedPresentEvent {
        header: EventHeader {
            kind: event_kind::VULKAN_PRESENT_RESOLVED,
            tgid,
            tid,
            // 0 for the present function, else the compile call.
            aux: asked.saturating_sub(resolving::COMPILE),
            ts_ns: now_ns(),
        },
        address,
    };
    // Wakes the agent at once: the game is about to present through this pointer, and frames
    // before the agent hooks it are lost.
    // Forced: the kernel's adaptive wakeup stays silent while earlier frame records wait.
    if EVENTS
        .output::<ResolvedPresentEvent>(&event, BPF_RB_FORCE_WAKEUP as u64)
        .is_err()
    {
        count_drop();
    }
    0
}
