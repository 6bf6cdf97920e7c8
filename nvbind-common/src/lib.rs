//! Types shared by nvbind's kernel programs (`nvbind-ebpf`) and its userspace agent.
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of pointers so the same bytes mean the same thing
//! on both sides of a BPF map or ring buffer. The `user` feature adds `aya::Pod` impls.
#![no_std]

/// Length of a kernel task name (`TASK_COMM_LEN`), including the NUL.
pub const TASK_COMM_LEN: usize = 16;

/// Buckets of the in-kernel latency histograms: bucket `i` counts values in `[2^i, 2^(i+1))` ns
/// (bucket 0 also holds 0 and 1 ns); the last bucket holds everything above ~9 minutes.
pub const HIST_BUCKETS: usize = 40;

mod culprit;
pub use culprit::*;

/// Classes of ioctl the probes separate, by the ioctl's "type" byte (`_IOC_TYPE(cmd)`).
pub mod ioctl_class {
    /// DRM core and every DRM driver (`DRM_IOCTL_BASE` is `'d'`).
    pub const DRM: usize = 0;
    /// NVIDIA's proprietary driver (`NV_IOCTL_MAGIC` is `'F'`).
    pub const NVIDIA: usize = 1;
    /// AMD's compute driver `/dev/kfd` (`AMDKFD_IOCTL_BASE` is `'K'`).
    pub const AMDKFD: usize = 2;
    /// Type bytes the user declared to be GPU driver calls (`record --gpu-ioctl-type`): drivers
    /// nvbind does not know by name.
    pub const DECLARED_GPU: usize = 3;
    /// Anything else (terminals, sockets, input devices, ...).
    pub const OTHER: usize = 4;
    /// Number of classes.
    pub const COUNT: usize = 5;
    /// Names in index order, as they appear in reports.
    pub const NAMES: [&str; COUNT] = ["drm", "nvidia", "amdkfd", "declared-gpu", "other"];

    /// The class of an ioctl request number by the type bytes nvbind knows; the probes then look
    /// `OTHER` up in the declared-GPU table.
    #[inline(always)]
    pub const fn of(cmd: u32) -> usize {
        match (cmd >> 8) & 0xff {
            0x64 => DRM,    // 'd'
            0x46 => NVIDIA, // 'F'
            0x4b => AMDKFD, // 'K'
            _ => OTHER,
        }
    }

    /// Whether an ioctl of this class talks to a GPU driver.
    #[inline(always)]
    pub const fn is_gpu(class: usize) -> bool {
        class < OTHER
    }
}

/// Where a frame event came from: the attach cookie of the present uprobe.
pub mod present_source {
    /// The Vulkan loader's exported `vkQueuePresentKHR` trampoline.
    pub const VULKAN_LOADER: u32 = 1;
    /// A `vkQueuePresentKHR` implementation learned from `vkGet{Device,Instance}ProcAddr`
    /// (driver or layer code that apps such as DXVK, volk and vkcube call through a pointer).
    pub const VULKAN_RESOLVED: u32 = 2;
    /// `glXSwapBuffers` (libglvnd's libGLX or a legacy libGL).
    pub const GLX: u32 = 3;
    /// `eglSwapBuffers` (libglvnd's libEGL).
    pub const EGL: u32 = 4;
    /// Largest valid value.
    pub const MAX: u32 = EGL;

    /// Stable names used in reports and CSVs.
    pub const fn name(source: u32) -> &'static str {
        match source {
            VULKAN_LOADER => "vulkan-loader",
            VULKAN_RESOLVED => "vulkan",
            GLX => "glx",
            EGL => "egl",
            _ => "unknown",
        }
    }
}

/// The shader and pipeline compile calls nvbind times (the cookie of `nvbind_compile`), and how
/// their arguments say how many pipelines and whether a pipeline cache was given.
pub mod compile_call {
    /// `vkCreateGraphicsPipelines(device, cache, count, infos, allocator, pipelines)`.
    pub const GRAPHICS_PIPELINES: u32 = 1;
    /// `vkCreateComputePipelines`, the same arguments.
    pub const COMPUTE_PIPELINES: u32 = 2;
    /// `vkCreateRayTracingPipelinesKHR(device, deferred, cache, count, infos, allocator, pipelines)`.
    pub const RAY_TRACING_PIPELINES: u32 = 3;
    /// `vkCreateShaderModule(device, info, allocator, module)`.
    pub const SHADER_MODULE: u32 = 4;
    /// `vkCreatePipelineCache(device, info, allocator, cache)`: loading a saved cache.
    pub const PIPELINE_CACHE: u32 = 5;
    /// `vkMergePipelineCaches(device, dst, count, srcs)`.
    pub const MERGE_PIPELINE_CACHES: u32 = 6;
    /// `vkGetPipelineCacheData(device, cache, size, data)`: saving a cache.
    pub const PIPELINE_CACHE_DATA: u32 = 7;
    /// OpenGL's `glCompileShader(shader)` (and `glCompileShaderARB`): GLSL to the driver's IR.
    pub const GL_COMPILE_SHADER: u32 = 8;
    /// OpenGL's `glLinkProgram(program)` (and `glLinkProgramARB`): where Mesa does most of its
    /// work (linking, optimisation, the driver's own compile of a default variant).
    pub const GL_LINK_PROGRAM: u32 = 9;
    /// Largest valid value.
    pub const MAX: u32 = GL_LINK_PROGRAM;

    /// Every call, by the names a program asks for it, in cookie order; a call's first name is
    /// the one reports use (the ARB names are older aliases of the same GL calls).
    pub const NAMES: [(u32, &str); 11] = [
        (GRAPHICS_PIPELINES, "vkCreateGraphicsPipelines"),
        (COMPUTE_PIPELINES, "vkCreateComputePipelines"),
        (RAY_TRACING_PIPELINES, "vkCreateRayTracingPipelinesKHR"),
        (SHADER_MODULE, "vkCreateShaderModule"),
        (PIPELINE_CACHE, "vkCreatePipelineCache"),
        (MERGE_PIPELINE_CACHES, "vkMergePipelineCaches"),
        (PIPELINE_CACHE_DATA, "vkGetPipelineCacheData"),
        (GL_COMPILE_SHADER, "glCompileShader"),
        (GL_LINK_PROGRAM, "glLinkProgram"),
        (GL_COMPILE_SHADER, "glCompileShaderARB"),
        (GL_LINK_PROGRAM, "glLinkProgramARB"),
    ];

    /// Whether the call is OpenGL's (else Vulkan's).
    pub const fn is_gl(call: u32) -> bool {
        matches!(call, GL_COMPILE_SHADER | GL_LINK_PROGRAM)
    }

    /// The name a report uses for a call (`unknown` for a value that is none).
    pub fn name(call: u32) -> &'static str {
        NAMES
            .iter()
            .find(|(c, _)| *c == call)
            .map_or("unknown", |(_, name)| name)
    }

    /// The call a Vulkan name is, if it is one nvbind times.
    pub fn from_name(name: &str) -> Option<u32> {
        NAMES.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
    }

    /// Whether the call creates pipelines (and so has a count and a cache argument).
    pub const fn creates_pipelines(call: u32) -> bool {
        matches!(
            call,
            GRAPHICS_PIPELINES | COMPUTE_PIPELINES | RAY_TRACING_PIPELINES
        )
    }
}

/// Compile calls at least this long are sent to the agent one by one (`CompileEvent`); every
/// call, however short, is counted in the thread's counters. A stutter worth naming is several
/// milliseconds; a game makes thousands of calls far shorter.
pub const COMPILE_EVENT_MIN_NS: u64 = 500_000;

/// One compile call of a tracked thread that took at least [`COMPILE_EVENT_MIN_NS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileEvent {
    /// `kind` = [`event_kind::COMPILE`], `aux` = [`compile_call`], `ts_ns` = the call's return.
    pub header: EventHeader,
    /// When the call was entered.
    pub start_ns: u64,
    /// Pipelines it was asked to create (0 for calls that create none).
    pub pipelines: u32,
    /// Whether a pipeline cache was given (1) or not (0).
    pub cache_given: u32,
    /// The call's `VkResult` (0 for OpenGL's calls, which return nothing).
    pub result: i32,
    /// Of the first [`FEEDBACK_PIPELINES_READ`] pipelines, those whose creation feedback the
    /// driver filled in (`VK_EXT_pipeline_creation_feedback`, chained by the game)...
    pub feedback_pipelines: u16,
    /// ...and of them, those the driver says came from the given pipeline cache.
    pub cache_hits: u16,
}

/// Pipelines of a call whose creation feedback the probes read (at the return of a long call).
pub const FEEDBACK_PIPELINES_READ: u32 = 8;

/// [`present_source`] as a type: what user space decodes a frame's source into.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PresentSource {
    VulkanLoader = present_source::VULKAN_LOADER,
    VulkanResolved = present_source::VULKAN_RESOLVED,
    Glx = present_source::GLX,
    Egl = present_source::EGL,
}

impl PresentSource {
    /// The source a record's value names, if any.
    pub const fn from_u32(value: u32) -> Option<PresentSource> {
        Some(match value {
            present_source::VULKAN_LOADER => PresentSource::VulkanLoader,
            present_source::VULKAN_RESOLVED => PresentSource::VulkanResolved,
            present_source::GLX => PresentSource::Glx,
            present_source::EGL => PresentSource::Egl,
            _ => return None,
        })
    }

    /// The stable name used in reports and CSVs.
    pub const fn name(self) -> &'static str {
        present_source::name(self as u32)
    }
}

/// Scheduler state of a tracked thread, as the probes last saw it.
/// Steps of the tracked scheduler path that `--leave-out` (a benchmark option) skips, as bits of
/// the object's `LEFT_OUT` global: the benchmark measures what each costs per switch.
pub mod sched_step {
    /// Who held a watched CPU: the holder's process (its lineage) and names.
    pub const HOLDER_DETAILS: u32 = 1;
    /// The CPU watch itself (arming it at wakeups and preemptions, following it at switches).
    pub const CULPRIT_WATCH: u32 = 2;
    /// Naming a culprit for a run-queue wait (the watch's, or the preemptor or previous task).
    pub const CULPRIT_NAMING: u32 = 4;
    /// The per-process and per-presenter run-queue and blocked histograms.
    pub const HISTOGRAMS: u32 = 8;
}

pub mod thread_status {
    /// Tracked, but no scheduler event seen yet.
    pub const UNKNOWN: u32 = 0;
    /// On a CPU since `ThreadState::since_ns`.
    pub const RUNNING: u32 = 1;
    /// Runnable, waiting for a CPU since `since_ns` (woken or preempted).
    pub const RUNNABLE: u32 = 2;
    /// Off-CPU and not runnable (sleeping, waiting on I/O, a lock or a fence) since `since_ns`.
    pub const BLOCKED: u32 = 3;
    /// The thread has exited; its counters are final.
    pub const EXITED: u32 = 4;
}

/// Flags stored as the value of the tracked-process map.
pub mod track_flags {
    /// New processes forked by this one are tracked too (Proton/Wine spawn chains, launchers).
    pub const FOLLOW_CHILDREN: u32 = 1;
}

/// The `aux` of a `PROCESS_TRACKED` record that is not a parent's pid.
pub mod process_tracked {
    /// The process took a watched name (`task:task_rename`) while it already ran: its other
    /// threads are not tracked yet. A pid never reaches this value (`pid_max` ≤ 2^22).
    pub const RENAMED: u32 = u32::MAX;
}

/// Kinds of ring-buffer records; every record starts with an [`EventHeader`].
pub mod event_kind {
    /// [`crate::PresentEvent`]: a frame was handed over.
    pub const PRESENT: u32 = 1;
    /// [`crate::ResolvedPresentEvent`]: a process learned a `vkQueuePresentKHR` address (or a
    /// compile call's: `aux`).
    pub const VULKAN_PRESENT_RESOLVED: u32 = 2;
    /// [`crate::ProcessEvent`]: a process started being tracked (child of a tracked one, or an exec
    /// or a rename to a watched name).
    pub const PROCESS_TRACKED: u32 = 3;
    /// [`crate::ProcessEvent`]: a tracked process called `execve` (its name and binary changed).
    pub const PROCESS_EXEC: u32 = 4;
    /// [`crate::ProcessEvent`]: the last thread of a tracked process exited.
    pub const PROCESS_EXIT: u32 = 5;
    /// [`crate::DisplayEvent`]: a DRM event of a tracked process's DRM file (`aux` =
    /// [`crate::display_kind`]).
    pub const DISPLAY: u32 = 6;
    /// [`crate::ProcessEvent`]: a tracked process renamed itself (its main thread's name; the
    /// record's `comm` is the name before).
    pub const PROCESS_RENAMED: u32 = 7;
    /// [`crate::CompileEvent`]: a tracked thread's long shader or pipeline compile call.
    pub const COMPILE: u32 = 8;
}

/// [`event_kind`] as a type: what user space decodes a record's header into.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Present = event_kind::PRESENT,
    VulkanPresentResolved = event_kind::VULKAN_PRESENT_RESOLVED,
    ProcessTracked = event_kind::PROCESS_TRACKED,
    ProcessExec = event_kind::PROCESS_EXEC,
    ProcessExit = event_kind::PROCESS_EXIT,
    Display = event_kind::DISPLAY,
    ProcessRenamed = event_kind::PROCESS_RENAMED,
    Compile = event_kind::COMPILE,
}

impl EventKind {
    /// The kind a record header's value names, if any (a newer kernel side may send more).
    pub const fn from_u32(value: u32) -> Option<EventKind> {
        Some(match value {
            event_kind::PRESENT => EventKind::Present,
            event_kind::VULKAN_PRESENT_RESOLVED => EventKind::VulkanPresentResolved,
            event_kind::PROCESS_TRACKED => EventKind::ProcessTracked,
            event_kind::PROCESS_EXEC => EventKind::ProcessExec,
            event_kind::PROCESS_EXIT => EventKind::ProcessExit,
            event_kind::DISPLAY => EventKind::Display,
            event_kind::PROCESS_RENAMED => EventKind::ProcessRenamed,
            event_kind::COMPILE => EventKind::Compile,
            _ => return None,
        })
    }
}

/// What a [`DisplayEvent`] reports.
pub mod display_kind {
    /// A page flip (or atomic commit) completed: the frame is on the screen from this vblank
    /// (a `DRM_EVENT_FLIP_COMPLETE` delivered to the process's DRM file).
    pub const FLIP: u32 = 1;
    /// A vblank event the process asked for with `DRM_IOCTL_WAIT_VBLANK` was queued
    /// (`drm_vblank_event_queued`, in the asking thread).
    pub const VBLANK_QUEUED: u32 = 2;
    /// A vblank event the process asked for (`WAIT_VBLANK` or `CRTC_QUEUE_SEQUENCE`) was
    /// delivered (`DRM_EVENT_VBLANK` or `DRM_EVENT_CRTC_SEQUENCE`).
    pub const VBLANK_DELIVERED: u32 = 3;
}

/// A DRM display event of a tracked process: the header's tgid/tid are the owner of the DRM file
/// (the thread that last made a display request on it), `ts_ns` when the kernel delivered or
/// queued it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DisplayEvent {
    /// `kind` = [`event_kind::DISPLAY`], `aux` = [`display_kind`].
    pub header: EventHeader,
    /// The CRTC (display pipe) index.
    pub crtc: u32,
    /// The vblank sequence number of the event.
    pub seq: u32,
    /// When the owner last asked for a flip or commit on this file (0: unknown or never).
    pub request_ns: u64,
    /// When the thread that asked had last been woken before (0: not known).
    pub woke_ns: u64,
    /// The time of the vblank the event went out at (the timestamp DRM writes into the event for
    /// the process: what a compositor passes on as the presentation time); 0 where the kernel's
    /// send does not say (before Linux 5.12).
    pub vblank_ns: u64,
}

/// The last process to make a display request on a DRM file (`DRM_FILE_OWNERS`, keyed by the
/// kernel's `struct drm_file` pointer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DrmFileOwner {
    pub tgid: u32,
    pub tid: u32,
    /// When it last asked for a flip or an atomic commit (`bpf_ktime_get_ns`; 0: never). A
    /// vblank-event request does not move it: the next completed flip is still that request's.
    pub flip_request_ns: u64,
    /// When the thread that asked for it had last been woken before asking (0: not known): a
    /// compositor wakes to repaint, and what its clients committed before that is in the flip.
    pub flip_woke_ns: u64,
}

/// Threads that asked for flips (compositors), whose wakeups `sched_wakeup` notes for
/// [`DrmFileOwner::flip_woke_ns`] (`FLIPPERS`, one entry). A few slots, compared on every wakeup
/// of the host: a display has one compositor thread flipping, a host a few.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Flippers {
    pub tids: [u32; FLIPPER_SLOTS],
    pub woke_ns: [u64; FLIPPER_SLOTS],
    /// The slot the next new thread takes (round robin).
    pub next: u32,
    pub _pad: u32,
}

/// Slots of [`Flippers`].
pub const FLIPPER_SLOTS: usize = 4;

/// The vblanks of one CRTC (`CRTC_VBLANKS`, indexed by CRTC, at most `MAX_CRTCS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CrtcVblanks {
    pub count: u64,
    /// The first and the last vblank's time (`drm_vblank_event`'s own timestamp, CLOCK_MONOTONIC).
    pub first_ns: u64,
    pub last_ns: u64,
    pub first_seq: u32,
    pub last_seq: u32,
    /// Back-to-back vblanks (sequence numbers one apart) and the time between them in all: the
    /// refresh interval, unaffected by the interrupt being off or a vblank being missed.
    pub pairs: u64,
    pub paired_ns: u64,
}

impl CrtcVblanks {
    /// The refresh rate from back-to-back vblanks, `None` without any.
    pub fn refresh_hz(&self) -> Option<f64> {
        (self.pairs > 0 && self.paired_ns > 0)
            .then(|| self.pairs as f64 / (self.paired_ns as f64 / 1e9))
    }
}

/// CRTCs whose vblank cadence is kept.
pub const MAX_CRTCS: u32 = 16;

/// Per process and DRM ioctl number (`DRM_IOCTL_COUNTS` key): `_IOC_NR` of a `'d'` ioctl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DrmIoctlKey {
    pub tgid: u32,
    pub nr: u32,
}

/// Counters of one thread. They only grow; a frame's evidence is the difference of two snapshots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCounters {
    /// Time spent running on a CPU.
    pub on_cpu_ns: u64,
    /// Time runnable but waiting for a CPU (woken or preempted, until switched in).
    pub runq_wait_ns: u64,
    /// Time off-CPU and not runnable (until woken).
    pub blocked_ns: u64,
    /// The part of `blocked_ns` spent blocked inside an ioctl to a GPU driver (DRM, NVIDIA, amdkfd).
    pub blocked_in_gpu_ioctl_ns: u64,
    /// The part of `blocked_ns` spent in uninterruptible sleep (`D` state: disk I/O, page faults
    /// served from disk, some kernel locks) outside GPU ioctls.
    pub blocked_uninterruptible_ns: u64,
    /// Times the thread was switched in.
    pub switches_in: u64,
    /// Times the thread was preempted while it still wanted to run.
    pub involuntary_switches: u64,
    /// Times the thread gave up the CPU to wait for something.
    pub voluntary_switches: u64,
    /// Times the thread was switched in on a different CPU than last time.
    pub migrations: u64,
    /// Times the thread was woken from a blocked state.
    pub wakeups: u64,
    /// Time the scheduler probes could not place: a stretch that ended in a switch the kernel
    /// never reported (a thread found running with no switch-in seen, or switched in with no
    /// switch-out seen). Time is never lost silently: with this, on-CPU, run-queue and blocked
    /// time add up to the thread's whole interval between two of its presents.
    pub unseen_ns: u64,
    /// How many such unreported switches were detected.
    pub missed_switches: u64,
    /// Completed ioctls, per [`ioctl_class`].
    pub ioctl_count: [u64; ioctl_class::COUNT],
    /// Time spent inside ioctls (entry to return, on or off CPU), per [`ioctl_class`].
    pub ioctl_ns: [u64; ioctl_class::COUNT],
    /// Shader and pipeline compile calls completed ([`compile_call`]; nested calls, a loader's
    /// trampoline and the driver's function, count once).
    pub compile_calls: u64,
    /// Time inside them (entry to return, on or off CPU).
    pub compile_ns: u64,
    /// Pipelines they were asked to create.
    pub compile_pipelines: u64,
}

impl ThreadCounters {
    /// `self - earlier`, counter by counter (saturating: a counter never goes backwards, but a
    /// thread that was re-tracked starts from zero again).
    pub fn since(&self, earlier: &ThreadCounters) -> ThreadCounters {
        let mut d = ThreadCounters::default();
        self.since_into(earlier, &mut d);
        d
    }

    /// [`Self::since`] written into `out` in place: the kernel writes the difference straight into
    /// a ring-buffer record, as two copies of these counters would not fit the BPF stack.
    #[inline(always)]
    pub fn since_into(&self, earlier: &ThreadCounters, out: &mut ThreadCounters) {
        out.on_cpu_ns = self.on_cpu_ns.saturating_sub(earlier.on_cpu_ns);
        out.runq_wait_ns = self.runq_wait_ns.saturating_sub(earlier.runq_wait_ns);
        out.blocked_ns = self.blocked_ns.saturating_sub(earlier.blocked_ns);
        out.blocked_in_gpu_ioctl_ns = self
            .blocked_in_gpu_ioctl_ns
            .saturating_sub(earlier.blocked_in_gpu_ioctl_ns);
        out.blocked_uninterruptible_ns = self
            .blocked_uninterruptible_ns
            .saturating_sub(earlier.blocked_uninterruptible_ns);
        out.switches_in = self.switches_in.saturating_sub(earlier.switches_in);
        out.involuntary_switches = self
            .involuntary_switches
            .saturating_sub(earlier.involuntary_switches);
        out.voluntary_switches = self
            .voluntary_switches
            .saturating_sub(earlier.voluntary_switches);
        out.migrations = self.migrations.saturating_sub(earlier.migrations);
        out.wakeups = self.wakeups.saturating_sub(earlier.wakeups);
        out.unseen_ns = self.unseen_ns.saturating_sub(earlier.unseen_ns);
        out.missed_switches = self.missed_switches.saturating_sub(earlier.missed_switches);
        out.compile_calls = self.compile_calls.saturating_sub(earlier.compile_calls);
        out.compile_ns = self.compile_ns.saturating_sub(earlier.compile_ns);
        out.compile_pipelines = self
            .compile_pipelines
            .saturating_sub(earlier.compile_pipelines);
        let mut i = 0;
        while i < ioctl_class::COUNT {
            out.ioctl_count[i] = self.ioctl_count[i].saturating_sub(earlier.ioctl_count[i]);
            out.ioctl_ns[i] = self.ioctl_ns[i].saturating_sub(earlier.ioctl_ns[i]);
            i += 1;
        }
    }

    /// Adds `other` into `self`, counter by counter.
    #[inline(always)]
    pub fn add(&mut self, other: &ThreadCounters) {
        self.on_cpu_ns += other.on_cpu_ns;
        self.runq_wait_ns += other.runq_wait_ns;
        self.blocked_ns += other.blocked_ns;
        self.blocked_in_gpu_ioctl_ns += other.blocked_in_gpu_ioctl_ns;
        self.blocked_uninterruptible_ns += other.blocked_uninterruptible_ns;
        self.switches_in += other.switches_in;
        self.involuntary_switches += other.involuntary_switches;
        self.voluntary_switches += other.voluntary_switches;
        self.migrations += other.migrations;
        self.wakeups += other.wakeups;
        self.unseen_ns += other.unseen_ns;
        self.missed_switches += other.missed_switches;
        self.compile_calls += other.compile_calls;
        self.compile_ns += other.compile_ns;
        self.compile_pipelines += other.compile_pipelines;
        let mut i = 0;
        while i < ioctl_class::COUNT {
            self.ioctl_count[i] += other.ioctl_count[i];
            self.ioctl_ns[i] += other.ioctl_ns[i];
            i += 1;
        }
    }
}

/// Per-thread state kept by the probes, keyed by tid (the kernel's `pid`) in the `THREADS` map.
/// A thread is tracked exactly when it has an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadState {
    /// The process (thread group) this thread belongs to.
    pub tgid: u32,
    /// One of [`thread_status`].
    pub status: u32,
    /// When the current status began (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub since_ns: u64,
    /// CPU the thread last ran on, `u32::MAX` before the first switch-in.
    pub last_cpu: u32,
    /// Class of the ioctl in flight ([`ioctl_class`]), valid while `ioctl_start_ns != 0`.
    pub ioctl_class: u32,
    /// Entry time of the ioctl in flight, 0 when none.
    pub ioctl_start_ns: u64,
    /// How the current blocked period began: one of [`blocked_kind`].
    pub blocked_kind: u32,
    /// Depth of nested `vkQueuePresentKHR` calls on this thread (loader trampoline, layers, driver):
    /// only the outermost one is a frame.
    pub in_vulkan_present: u32,
    /// tid of the task that last preempted this thread (0: never).
    pub last_preemptor_tid: u32,
    /// What a `vkGet*ProcAddr` call in flight asked for ([`resolving`]), between its entry and
    /// its return.
    pub resolving_present: u32,
    /// Set once the thread has presented a frame: its waits then also go to `PRESENTER_HISTS`.
    pub presenter: u32,
    /// Whether the current run-queue wait began with a preemption (else with a wakeup).
    pub preempted: u32,
    /// The CPU the scheduler chose at the last wakeup (whose `CPU_WATCH` slot this thread armed).
    pub wake_cpu: u32,
    /// Set at `sched_process_exit`: the thread runs its exit path until its last switch.
    pub exiting: u32,
    /// Depth of nested compile calls (a loader's trampoline, a layer, the driver): only the
    /// outermost is timed.
    pub compile_depth: u32,
    /// The outermost compile call in flight ([`compile_call`]), valid while `compile_depth > 0`.
    pub compile_call: u32,
    /// Its entry time.
    pub compile_start_ns: u64,
    /// Pipelines it was asked to create.
    pub compile_pipelines: u32,
    /// Whether it was given a pipeline cache.
    pub compile_cache_given: u32,
    /// Its create infos (`pCreateInfos`, user memory), read at the return for the driver's
    /// creation feedback; 0 for a call that creates no pipeline.
    pub compile_infos: u64,
    /// Longest single run-queue wait since the last present.
    pub frame_max_runq_wait_ns: u64,
    /// Longest single blocked period since the last present.
    pub frame_max_blocked_ns: u64,
    /// Name of the task in `last_preemptor_tid`.
    pub last_preemptor_comm: [u8; TASK_COMM_LEN],
    /// Who ran instead while this thread waited for a CPU since the last present.
    pub frame_culprit: Culprit,
    /// The longest recent run-queue wait and who caused it: replaced by a longer wait, or by any
    /// wait once it is older than `RECENT_WAIT_NS`. Lets the agent name who starved a thread that
    /// does not present (a game's worker) from a snapshot taken shortly after.
    pub recent_wait: Culprit,
    /// Counters since the thread was tracked.
    pub totals: ThreadCounters,
    /// `totals` as of this thread's last present (the base of the next frame's evidence).
    pub at_last_present: ThreadCounters,
    /// The evidence of presents that were refused (or found no room in the ring buffer) since
    /// the last frame sent: the next frame carries it, so frames still cover every interval.
    pub carried: ThreadCounters,
}

/// How a blocked period began, so its time lands in the right counter when it ends.
/// Task states as `sched_switch` reports them, and the mapping from a task's raw `__state` (what
/// the BTF tracepoint receives) to the classic tracepoint's `prev_state`, so both hooks feed the
/// same logic. Values are the kernel's since 5.18 (the first with `prev_state` in the BTF
/// tracepoint's arguments, which is what nvbind requires to use it); see `include/linux/sched.h`,
/// `__task_state_index()` and `__trace_sched_switch_state()`.
pub mod task_state {
    /// `TASK_UNINTERRUPTIBLE` (the `D` of `ps`).
    pub const UNINTERRUPTIBLE: u64 = 0x2;
    /// `EXIT_DEAD | EXIT_ZOMBIE` (`X`, `Z`): a task's last switch.
    pub const EXIT_STATES: u64 = 0x10 | 0x20;
    /// `TASK_REPORT`: the bits of a state the tracepoint reports.
    const REPORT: u32 = 0x7f;
    /// `TASK_IDLE` (`TASK_UNINTERRUPTIBLE | TASK_NOLOAD`): reported as idle, not as `D`.
    const IDLE: u32 = 0x2 | 0x400;
    /// `TASK_RTLOCK_WAIT`: a sleeping spinlock on PREEMPT_RT, reported as `D`.
    const RTLOCK_WAIT: u32 = 0x1000;

    /// The classic `sched_switch` tracepoint's `prev_state` for a switch the BTF tracepoint saw:
    /// `report_max` (`TASK_REPORT_MAX`) for a preemption, else the single bit of the task's
    /// reported state (0 for `TASK_RUNNING`).
    #[inline(always)]
    pub fn classic_prev_state(preempt: bool, raw: u32, exit_state: u32, report_max: u64) -> u64 {
        if preempt {
            return report_max;
        }
        if raw & RTLOCK_WAIT != 0 {
            return UNINTERRUPTIBLE;
        }
        if raw & IDLE == IDLE {
            // TASK_REPORT_IDLE, the bit just below TASK_REPORT_MAX.
            return report_max >> 1;
        }
        let state = (raw | exit_state) & REPORT;
        let mut bit = 0x40;
        while bit != 0 {
            if state & bit != 0 {
                return bit as u64;
            }
            bit >>= 1;
        }
        0
    }
}

pub mod blocked_kind {
    /// Interruptible sleep outside a GPU ioctl (futex, poll, nanosleep, pipe and socket waits).
    pub const SLEEP: u32 = 0;
    /// Inside a GPU driver ioctl (fence waits, submission throttling, memory management).
    pub const GPU_IOCTL: u32 = 1;
    /// Uninterruptible sleep outside a GPU ioctl (`D` state: disk I/O and some kernel locks).
    pub const UNINTERRUPTIBLE: u32 = 2;
}

/// In-kernel histograms of one tracked process (`PROC_HISTS`, keyed by tgid) or of one presenting
/// thread (`PRESENTER_HISTS`, keyed by tid): every run-queue wait and every blocked period, in log2
/// buckets of nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessHistograms {
    /// Run-queue waits (wakeup or preemption until switch-in).
    pub runq_wait: [u64; HIST_BUCKETS],
    /// Blocked periods (switch-out while not runnable until wakeup).
    pub blocked: [u64; HIST_BUCKETS],
}

impl Default for ProcessHistograms {
    fn default() -> Self {
        Self {
            runq_wait: [0; HIST_BUCKETS],
            blocked: [0; HIST_BUCKETS],
        }
    }
}

/// The bucket a nanosecond value falls in: `floor(log2(ns))`, capped to the last bucket.
#[inline(always)]
pub fn hist_bucket(ns: u64) -> usize {
    // Branchy binary search: the BPF backend has no count-leading-zeros instruction.
    let mut v = ns;
    let mut r = 0usize;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    if r >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        r
    }
}

/// Key of the `PREEMPTORS` map: who took the CPU from a tracked process's threads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PreemptorKey {
    /// The tracked process that lost the CPU.
    pub victim_tgid: u32,
    /// The task (tid) that was switched in instead.
    pub preemptor_tid: u32,
}

/// Value of the `PREEMPTORS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PreemptorValue {
    /// Times this task preempted one of the victim's threads.
    pub count: u64,
    /// The preemptor's name at the last preemption.
    pub comm: [u8; TASK_COMM_LEN],
}

/// The start of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// One of [`event_kind`].
    pub kind: u32,
    /// The process concerned.
    pub tgid: u32,
    /// The thread concerned.
    pub tid: u32,
    /// Record-specific small value (the present source for frames, the call for compiles).
    pub aux: u32,
    /// When it happened (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

/// A frame handed over by a tracked thread, with what the kernel saw that thread do since its
/// previous present.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PresentEvent {
    /// `kind` = [`event_kind::PRESENT`], `aux` = [`present_source`].
    pub header: EventHeader,
    /// CPU the present was called on.
    pub cpu: u32,
    /// tid of the task that last preempted the presenting thread (0: never).
    pub last_preemptor_tid: u32,
    /// Longest single run-queue wait of the presenting thread in this frame interval.
    pub max_runq_wait_ns: u64,
    /// Longest single blocked period of the presenting thread in this frame interval.
    pub max_blocked_ns: u64,
    /// Who ran instead while the presenting thread waited for a CPU in this frame interval.
    pub culprit: Culprit,
    /// The presenting thread's counters since its previous present (or since it was tracked).
    pub delta: ThreadCounters,
    /// What the frame was handed to: the GLX drawable, the EGL surface, or the first swapchain
    /// of the Vulkan present (0: unreadable). A process can present to several windows.
    pub target: u64,
    /// When the present call returned (0: not held to its return, as `glXSwapBuffers`): a
    /// Wayland client's commit of the frame reached the compositor by then.
    pub end_ns: u64,
    /// The last `wl_display_flush` of the calling thread inside the present call (0: none): when
    /// a Wayland client sent the frame's commit to the compositor.
    pub commit_ns: u64,
}

/// The `PENDING_PRESENTS` key of thread `tid`'s present call of `source`: Vulkan presents (the
/// loader's or a driver's: only the outermost is held) and EGL presents apart, since one can run
/// inside the other.
pub const fn pending_present_key(tid: u32, source: u32) -> u64 {
    let kind: u64 = if source == present_source::EGL { 2 } else { 1 };
    (kind << 32) | tid as u64
}

/// A `vkGet{Device,Instance}ProcAddr` call for a followed function returned `address` in
/// `tgid`: `header.aux` is 0 for `vkQueuePresentKHR`, else the [`compile_call`] asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ResolvedPresentEvent {
    /// `kind` = [`event_kind::VULKAN_PRESENT_RESOLVED`].
    pub header: EventHeader,
    /// The function pointer handed to the application.
    pub address: u64,
}

/// A process lifecycle record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEvent {
    /// `kind` = one of the `PROCESS_*` [`event_kind`]s; `aux` = parent tgid for `PROCESS_TRACKED`
    /// of a new child, 0 after an exec, [`process_tracked::RENAMED`] after a rename.
    pub header: EventHeader,
    /// The process's name at the time of the record.
    pub comm: [u8; TASK_COMM_LEN],
}

/// A thread of a tracked process exited while others go on: the agent folds its final counters
/// into its process's and frees its `THREADS` entry. Sent on a ring buffer of its own
/// (`THREAD_EXITS`), so a process that churns through threads cannot crowd frames out of
/// `EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadExitRecord {
    pub tgid: u32,
    pub tid: u32,
    /// When it entered its exit path (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    /// Its name as it exited.
    pub comm: [u8; TASK_COMM_LEN],
}

/// What `nvbind_offsets_check` found on one CPU (`doctor` loads it): the `task_struct` fields
/// the BTF programs read at offsets taken from the kernel's BTF, read the same way for the task
/// a `sched_switch` switches out (the current task), and compared with what the kernel's own
/// helpers say of the current task. Every field is a count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OffsetCheck {
    /// Switches seen.
    pub switches: u64,
    /// `prev->pid` equal to `bpf_get_current_pid_tgid()`'s tid.
    pub pid_equal: u64,
    /// `prev->cpu` equal to `bpf_get_smp_processor_id()`.
    pub cpu_equal: u64,
    /// `prev->comm` equal to `bpf_get_current_comm()`.
    pub comm_equal: u64,
    /// `prev->tgid` compared (its offset is known) and equal to the current tgid.
    pub tgid_compared: u64,
    pub tgid_equal: u64,
    /// The `next->pid` of a switch compared with the tid of the task the CPU's next switch
    /// switches out (the same task, now current), and equal.
    pub next_compared: u64,
    pub next_equal: u64,
    /// `1 << 32 | next->pid` of the CPU's last switch (0 before the first).
    pub last_next: u64,
}

/// The least time between two exec notices that wake the daemon: a build's thousands of execs a
/// second must not wake it thousands of times. No notice waits longer for that: the daemon wakes
/// again at the first age it searches a new process at (later than this gap), and reads every
/// notice waiting then.
pub const EXEC_WAKE_GAP_NS: u64 = 100_000_000;

/// A process that was not tracked called `execve` (sent only while the daemon discovers
/// presenters): the daemon searches its memory map, at a few ages, for graphics libraries the
/// probes do not cover yet (a game in a container or the Steam runtime). Sent on a ring buffer
/// of its own (`EXEC_NOTICES`), so an exec storm can fill only that one, never `EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecNotice {
    pub tgid: u32,
    /// Its real uid: the daemon keeps each user's share of its waiting list bounded.
    pub uid: u32,
    /// When it exec'd (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
}

/// Why a present uprobe asked for the name passed to `vkGet*ProcAddr`: the bytes we compare.
/// (The same probes follow OpenGL's `glXGetProcAddress` and `eglGetProcAddress`.)
pub const VK_QUEUE_PRESENT_NAME: &[u8; 18] = b"vkQueuePresentKHR\0";

/// Bytes of a `vkGet*ProcAddr` name the probes read and compare (NUL-padded): every name they
/// look for is shorter.
pub const PROC_NAME_LEN: usize = 32;

/// Where a hooked `*GetProcAddress` function takes the name asked for (the cookie of
/// `nvbind_vk_procaddr`).
pub mod proc_addr_abi {
    /// `vkGetDeviceProcAddr(device, name)`, `vkGetInstanceProcAddr(instance, name)`.
    pub const NAME_SECOND: u64 = 0;
    /// `glXGetProcAddress(name)`, `glXGetProcAddressARB(name)`, `eglGetProcAddress(name)`.
    pub const NAME_FIRST: u64 = 1;
}

/// What a thread asked `vkGet*ProcAddr` for, as the probes keep it between the call's entry and
/// return (`ThreadState::resolving_present`, `RESOLVING_PRESENT`) and send it (`aux` of a
/// `ResolvedPresentEvent`: 0 for the present function, else the [`compile_call`]).
pub mod resolving {
    /// Nothing the probes follow.
    pub const NOTHING: u32 = 0;
    /// `vkQueuePresentKHR`.
    pub const PRESENT: u32 = 1;
    /// A compile call: this plus the [`crate::compile_call`].
    pub const COMPILE: u32 = 0x100;
}

/// `name` NUL-padded to [`PROC_NAME_LEN`] bytes, as eight-byte words (how the probes compare).
pub const fn proc_name_words(name: &str) -> [u64; PROC_NAME_LEN / 8] {
    let bytes = name.as_bytes();
    let mut words = [0u64; PROC_NAME_LEN / 8];
    let mut i = 0;
    while i < bytes.len() && i < PROC_NAME_LEN - 1 {
        words[i / 8] |= (bytes[i] as u64) << (8 * (i % 8));
        i += 1;
    }
    words
}

/// The functions the `vkGet*ProcAddr` probes follow, as compared, with what each is
/// ([`resolving`]): the present function, then every [`compile_call`].
pub const FOLLOWED_PROC_NAMES: [([u64; PROC_NAME_LEN / 8], u32); 1 + compile_call::NAMES.len()] =
    followed_proc_names();

const fn followed_proc_names() -> [([u64; PROC_NAME_LEN / 8], u32); 1 + compile_call::NAMES.len()] {
    let mut names =
        [([0u64; PROC_NAME_LEN / 8], resolving::NOTHING); 1 + compile_call::NAMES.len()];
    names[0] = (proc_name_words("vkQueuePresentKHR"), resolving::PRESENT);
    let mut i = 0;
    while i < compile_call::NAMES.len() {
        let (call, name) = compile_call::NAMES[i];
        names[i + 1] = (proc_name_words(name), resolving::COMPILE + call);
        i += 1;
    }
    names
}

/// The cgroup v2 device policy (`nvbind-device`): an allowlist of device numbers.
pub mod device_policy {
    /// `bpf_cgroup_dev_ctx.access_type & 0xffff` for a block device (`BPF_DEVCG_DEV_BLOCK`).
    pub const KIND_BLOCK: u32 = 1;
    /// ... for a character device (`BPF_DEVCG_DEV_CHAR`).
    pub const KIND_CHAR: u32 = 2;
    /// `access_type >> 16` bits (`BPF_DEVCG_ACC_*`).
    pub const ACCESS_MKNOD: u32 = 1;
    pub const ACCESS_READ: u32 = 2;
    pub const ACCESS_WRITE: u32 = 4;
    /// A rule's minor that matches every minor of its major (`c 136:* rw`).
    pub const ANY_MINOR: u32 = u32::MAX;
    /// Rules one policy can hold: a handful per GPU plus the standard safe devices.
    pub const MAX_RULES: u32 = 512;
    /// Bytes of the binding's description (length-prefixed JSON) kept beside the rules in bpffs,
    /// so that a restarted agent can say what a pinned policy is for.
    pub const RECORD_BYTES: usize = 16384;

    /// One allowlist entry: the key of the rules map; its value is the allowed access bits.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct DeviceRuleKey {
        pub kind: u32,
        pub major: u32,
        pub minor: u32,
    }

    /// The binding's description: `len` bytes of JSON at the start of `bytes`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct BindingRecord {
        pub len: u32,
        pub bytes: [u8; RECORD_BYTES],
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers and integer arrays, and
    // laid out without implicit padding, so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::ThreadCounters {}
    unsafe impl aya::Pod for super::ThreadState {}
    unsafe impl aya::Pod for super::ProcessHistograms {}
    unsafe impl aya::Pod for super::Culprit {}
    unsafe impl aya::Pod for super::CpuWatch {}
    unsafe impl aya::Pod for super::HeldBy {}
    unsafe impl aya::Pod for super::WatchedWait {}
    unsafe impl aya::Pod for super::PreemptorKey {}
    unsafe impl aya::Pod for super::PreemptorValue {}
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::PresentEvent {}
    unsafe impl aya::Pod for super::ResolvedPresentEvent {}
    unsafe impl aya::Pod for super::ThreadExitRecord {}
    unsafe impl aya::Pod for super::ExecNotice {}
    unsafe impl aya::Pod for super::OffsetCheck {}
    unsafe impl aya::Pod for super::ProcessEvent {}
    unsafe impl aya::Pod for super::DisplayEvent {}
    unsafe impl aya::Pod for super::CrtcVblanks {}
    unsafe impl aya::Pod for super::DrmFileOwner {}
    unsafe impl aya::Pod for super::Flippers {}
    unsafe impl aya::Pod for super::DrmIoctlKey {}
    unsafe impl aya::Pod for super::device_policy::DeviceRuleKey {}
    unsafe impl aya::Pod for super::device_policy::BindingRecord {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn kinds_and_sources_decode_from_what_the_kernel_writes() {
        for kind in [
            EventKind::Present,
            EventKind::VulkanPresentResolved,
            EventKind::ProcessTracked,
            EventKind::ProcessExec,
            EventKind::ProcessExit,
            EventKind::Display,
        ] {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(99), None);
        for value in 1..=present_source::MAX {
            let source = PresentSource::from_u32(value).expect("every source up to MAX");
            assert_eq!(source as u32, value);
            assert_eq!(source.name(), present_source::name(value));
        }
        assert_eq!(PresentSource::from_u32(present_source::MAX + 1), None);
    }

    #[test]
    fn raw_task_states_map_to_what_the_classic_tracepoint_reports() {
        use super::task_state::classic_prev_state as state;
        const MAX: u64 = 0x100;
        // A preemption is TASK_REPORT_MAX, whatever the task's state.
        assert_eq!(state(true, 0x1, 0, MAX), MAX);
        assert_eq!(state(true, 0x0, 0, MAX), MAX);
        // Running (a yield, or a preemption on the way back to user space) is 0.
        assert_eq!(state(false, 0x0, 0, MAX), 0);
        // S, D, stopped, traced, parked: their own bit.
        for bit in [0x1, 0x2, 0x4, 0x8, 0x40] {
            assert_eq!(state(false, bit, 0, MAX), bit as u64);
        }
        // TASK_KILLABLE (WAKEKILL | UNINTERRUPTIBLE) is D; TASK_IDLE is I (not D).
        assert_eq!(state(false, 0x100 | 0x2, 0, MAX), 0x2);
        assert_eq!(state(false, 0x400 | 0x2, 0, MAX), 0x80);
        // A task's last switch: TASK_DEAD in its state, EXIT_ZOMBIE or EXIT_DEAD in exit_state.
        assert_eq!(state(false, 0x80, 0x20, MAX), 0x20);
        assert_eq!(state(false, 0x80, 0x10, MAX), 0x10);
        // Preempted after exit_notify(): still running, already a zombie (the tracepoint says Z).
        assert_eq!(state(false, 0x0, 0x20, MAX), 0x20);
        // An rtlock wait is D.
        assert_eq!(state(false, 0x1000 | 0x1, 0, MAX), 0x2);
    }

    use super::*;

    #[test]
    fn buckets_are_floor_log2() {
        assert_eq!(hist_bucket(0), 0);
        assert_eq!(hist_bucket(1), 0);
        assert_eq!(hist_bucket(2), 1);
        assert_eq!(hist_bucket(3), 1);
        assert_eq!(hist_bucket(1023), 9);
        assert_eq!(hist_bucket(1024), 10);
        assert_eq!(hist_bucket(1_000_000), 19);
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn ioctl_classes_follow_the_type_byte() {
        // DRM_IOCTL_MODE_PAGE_FLIP = _IOWR('d', 0xB0, 24 bytes)
        assert_eq!(ioctl_class::of(0xC01864B0), ioctl_class::DRM);
        // NV_ESC_RM_CONTROL = _IOWR('F', 0x2A, ...)
        assert_eq!(ioctl_class::of(0xC020462A), ioctl_class::NVIDIA);
        // AMDKFD_IOC_GET_VERSION = _IOR('K', 0x01, 8 bytes)
        assert_eq!(ioctl_class::of(0x80084B01), ioctl_class::AMDKFD);
        // TCGETS
        assert_eq!(ioctl_class::of(0x5401), ioctl_class::OTHER);
    }

    #[test]
    fn deltas_are_counterwise() {
        let mut a = ThreadCounters {
            on_cpu_ns: 10,
            ..Default::default()
        };
        a.ioctl_count[ioctl_class::DRM] = 3;
        let mut b = a;
        b.on_cpu_ns = 25;
        b.ioctl_count[ioctl_class::DRM] = 7;
        let d = b.since(&a);
        assert_eq!(d.on_cpu_ns, 15);
        assert_eq!(d.ioctl_count[ioctl_class::DRM], 4);
        let mut sum = a;
        sum.add(&d);
        assert_eq!(sum, b);
    }

    #[test]
    fn followed_names_are_the_compile_calls_and_the_present_function_padded() {
        let bytes = |w: [u64; PROC_NAME_LEN / 8]| -> [u8; PROC_NAME_LEN] {
            let mut b = [0u8; PROC_NAME_LEN];
            for (i, word) in w.iter().enumerate() {
                b[8 * i..8 * i + 8].copy_from_slice(&word.to_le_bytes());
            }
            b
        };
        let present = bytes(FOLLOWED_PROC_NAMES[0].0);
        assert_eq!(&present[..18], VK_QUEUE_PRESENT_NAME);
        assert!(present[18..].iter().all(|&b| b == 0));
        for (call, name) in compile_call::NAMES {
            let (words, kind) = FOLLOWED_PROC_NAMES
                .iter()
                .find(|(w, k)| {
                    *k == resolving::COMPILE + call && bytes(*w)[..name.len()] == *name.as_bytes()
                })
                .expect("every compile call's every name is followed");
            let b = bytes(*words);
            assert_eq!(&b[..name.len()], name.as_bytes());
            assert!(b[name.len()..].iter().all(|&x| x == 0), "{name}");
            assert!(name.len() < PROC_NAME_LEN, "{name}: room for its NUL");
            assert!(*kind > resolving::COMPILE);
        }
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        use core::mem::size_of;
        assert_eq!(
            size_of::<ThreadCounters>(),
            8 * (15 + 2 * ioctl_class::COUNT)
        );
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<ExecNotice>(), 16);
        assert_eq!(size_of::<CompileEvent>(), 24 + 8 + 4 * 4);
        assert_eq!(size_of::<Culprit>(), 5 * 8 + 4 * 4 + 2 * TASK_COMM_LEN);
        assert_eq!(size_of::<HeldBy>(), 4 * 8 + 4 * 4 + 2 * TASK_COMM_LEN);
        assert_eq!(
            size_of::<WatchedWait>(),
            16 + HELD_SLOTS * size_of::<HeldBy>()
        );
        assert_eq!(
            size_of::<CpuWatch>(),
            16 + WATCH_WAITS * size_of::<WatchedWait>()
        );
        assert_eq!(
            size_of::<ThreadState>(),
            // fourteen 8-byte words of scalars, the preemptor's comm, two culprits, three
            // counter sets (totals, at the last present, carried from refused presents)
            8 * 14 + TASK_COMM_LEN + 2 * size_of::<Culprit>() + 3 * size_of::<ThreadCounters>()
        );
        assert_eq!(
            size_of::<PresentEvent>(),
            24 + 8 + 16 + size_of::<Culprit>() + size_of::<ThreadCounters>() + 8 + 16
        );
    }
}

/// The key of a process's count of frames over its user's rate from one present source
/// (`FRAMES_OVER_RATE`): an EGL present that presents through Vulkan inside (Zink) is counted
/// under each source, as its frames are.
pub const fn over_rate_key(tgid: u32, source: u32) -> u64 {
    ((tgid as u64) << 32) | source as u64
}

/// A tracepoint field offset meaning "this kernel's record has no such field": the programs
/// read nothing there.
pub const FIELD_ABSENT: u32 = u32::MAX;

/// Slots of the kernel's `MAP_FULL` counters: inserts refused because a tracking map was full.
/// A full map must never blind the capture silently: the agent reports these.
pub mod map_full {
    /// `THREADS`: a thread that could not be tracked.
    pub const THREADS: u32 = 0;
    /// `TRACKED_PROCESSES`: a process that could not be tracked.
    pub const PROCESSES: u32 = 1;
    /// `DISCOVERY_CHARGED`: a user whose presenting processes could not be counted, so not
    /// capped (`games.max_per_user`).
    pub const USERS: u32 = 2;
    pub const COUNT: u32 = 3;
    /// The maps' names, by slot.
    pub const NAMES: [&str; COUNT as usize] = ["threads", "processes", "users"];
    /// What a refused insert meant, by slot (after "N more threads/processes/users").
    pub const MEANING: [&str; COUNT as usize] = [
        "could not be tracked",
        "could not be tracked",
        "were not capped by games.max_per_user (their processes could not be counted)",
    ];
}
