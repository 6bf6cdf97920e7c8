//! Loading nvbind's eBPF programs, attaching what the running kernel offers, and reading back what
//! they gathered. Everything the capture and `doctor` need from the kernel goes through [`Probes`].

pub mod btf;
pub mod libraries;
pub mod tracefs;
pub mod vulkan;

use std::{
    collections::{HashMap, HashSet},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        BtfTracePoint, KProbe, Program, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader, Pod,
};
use nvbind_common::{
    event_kind, present_source, track_flags, CrtcVblanks, DisplayEvent, DrmFileOwner, DrmIoctlKey,
    EventHeader, PreemptorKey, PreemptorValue, PresentEvent, ProcessEvent, ProcessHistograms,
    ResolvedPresentEvent, ThreadState, TASK_COMM_LEN,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use thiserror::Error;

use self::{
    libraries::{LibraryFile, LIBRARY_KINDS},
    tracefs::Format,
};

/// The eBPF object built from `nvbind-ebpf` (see build.rs).
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nvbind-probes.o"));

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "nvbind-agent needs root to load eBPF programs (CAP_BPF and CAP_PERFMON): run it with sudo"
    )]
    NotRoot,
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error(
        "this nvbind-agent was built without its eBPF programs (the eBPF toolchain was missing): \
         run `cargo xtask setup` and rebuild"
    )]
    MissingObject,
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("required probe {probe} is unavailable: {reason}")]
    Required { probe: String, reason: String },
    #[error("BTF tracepoints were asked for (--kernel-hooks btf) but cannot be used: {0}")]
    BtfUnavailable(String),
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Whether a probe is attached, and if not, why and what would fix it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// What is probed: `sched:sched_switch`, `uprobe:/usr/lib/.../libvulkan.so.1:vkQueuePresentKHR`.
    pub name: String,
    /// Probe family: scheduler, ioctl, process, present, drm.
    pub family: Cow<'static, str>,
    /// The eBPF program.
    pub program: Cow<'static, str>,
    /// How it hooks the kernel: `tp_btf` (a BTF tracepoint), `tracepoint` (a classic one),
    /// `kprobe` or `uprobe`.
    #[serde(default)]
    pub hook: Cow<'static, str>,
    /// Why the preferred hook (a BTF tracepoint) is not the one used, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub attached: bool,
    /// Why it is unavailable (absent when attached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What to do about it, when something can be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Per-program cost from the kernel's bpf_stats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramCost {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub mean_ns_per_run: f64,
    /// Times the kernel skipped the program because another tracing program was running on the
    /// same CPU (its recursion guard): events it never saw.
    #[serde(default)]
    pub recursion_misses: u64,
}

/// A record read from the ring buffer.
// Frames are the common case and each event is moved once from the ring buffer to its handler:
// boxing them would cost an allocation per frame to save a copy of a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy)]
pub enum Event {
    Present(PresentEvent),
    VulkanPresentResolved(ResolvedPresentEvent),
    ProcessTracked(ProcessEvent),
    ProcessExec(ProcessEvent),
    ProcessExit(ProcessEvent),
    Display(DisplayEvent),
}

/// A DRM function nvbind kprobes, and with which program. `functions` are alternatives, newest
/// kernel first: the first that attaches is used.
#[derive(Debug, Clone, Copy)]
pub struct DrmKprobe {
    pub program: &'static str,
    pub functions: &'static [&'static str],
    /// What is lost without it (doctor's fix line).
    pub without: &'static str,
}

/// The DRM kprobes: the request ioctls (third argument the caller's `struct drm_file`), which tell
/// whose a DRM file is, since the delivery itself runs in an interrupt; and the event send that
/// follows each delivery, which tells a completed flip from a vblank event.
pub const DRM_KPROBES: [DrmKprobe; 4] = [
    DrmKprobe {
        program: "nvbind_drm_flip_request",
        functions: &["drm_mode_page_flip_ioctl"],
        without: "display frames are counted but not given to the process that flipped",
    },
    DrmKprobe {
        program: "nvbind_drm_flip_request",
        functions: &["drm_mode_atomic_ioctl"],
        without: "display frames are counted but not given to the process that committed",
    },
    DrmKprobe {
        program: "nvbind_drm_event_request",
        functions: &["drm_crtc_queue_sequence_ioctl"],
        without: "CRTC_QUEUE_SEQUENCE vblank events are not given to the process that asked",
    },
    DrmKprobe {
        program: "nvbind_drm_send_event",
        functions: &["drm_send_event_timestamp_locked", "drm_send_event_locked"],
        without: "no display frames: deliveries cannot be told apart from vblank events",
    },
];

/// A tracepoint and the programs nvbind attaches to it.
#[derive(Debug, Clone, Copy)]
pub struct Tracepoint {
    pub family: &'static str,
    /// The program for the classic tracepoint.
    pub program: &'static str,
    /// The program for the BTF tracepoint of the same name, preferred where there is one: it
    /// costs less per event and has its own recursion guard (a classic tracepoint program is
    /// skipped whenever it fires while another tracing program runs on the same CPU).
    pub btf_program: Option<&'static str>,
    pub category: &'static str,
    pub name: &'static str,
    /// `record` cannot run without it.
    pub required: bool,
}

const fn tp(
    family: &'static str,
    program: &'static str,
    category: &'static str,
    name: &'static str,
    required: bool,
) -> Tracepoint {
    Tracepoint {
        family,
        program,
        btf_program: None,
        category,
        name,
        required,
    }
}

/// A tracepoint with a BTF program besides the classic one.
const fn tp_btf(
    family: &'static str,
    program: &'static str,
    btf_program: &'static str,
    category: &'static str,
    name: &'static str,
) -> Tracepoint {
    Tracepoint {
        btf_program: Some(btf_program),
        ..tp(family, program, category, name, true)
    }
}

/// Which kind of tracepoint the scheduler probes use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KernelHooks {
    /// BTF tracepoints where the kernel has BTF, classic tracepoints otherwise.
    #[default]
    Auto,
    /// BTF tracepoints only: fail if the kernel cannot give them.
    Btf,
    /// Classic tracepoints only (the fallback for kernels without BTF).
    Classic,
}

/// Every tracepoint program, one row each.
#[rustfmt::skip]
pub const TRACEPOINTS: &[Tracepoint] = &[
    tp_btf("scheduler", "nvbind_sched_switch", "nvbind_sched_switch_btf", "sched", "sched_switch"),
    tp_btf("scheduler", "nvbind_sched_wakeup", "nvbind_sched_wakeup_btf", "sched", "sched_wakeup"),
    tp_btf(
        "scheduler", "nvbind_sched_wakeup_new", "nvbind_sched_wakeup_new_btf", "sched",
        "sched_wakeup_new",
    ),
    tp("ioctl", "nvbind_ioctl_enter", "syscalls", "sys_enter_ioctl", false),
    tp("ioctl", "nvbind_ioctl_exit", "syscalls", "sys_exit_ioctl", false),
    tp("process", "nvbind_newtask", "task", "task_newtask", true),
    tp("process", "nvbind_exec", "sched", "sched_process_exec", true),
    tp("process", "nvbind_exit", "sched", "sched_process_exit", true),
    tp("drm", "nvbind_drm_vblank", "drm", "drm_vblank_event", false),
    tp("drm", "nvbind_drm_queued", "drm", "drm_vblank_event_queued", false),
    tp("drm", "nvbind_drm_delivered", "drm", "drm_vblank_event_delivered", false),
];

/// Where in a file a uprobe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ProbeAt {
    /// An exported function.
    Symbol(&'static str),
    /// A file offset (a function learned at run time).
    Offset(u64),
}

/// One uprobe: a program at a place in a file (identified by device and inode, as the kernel does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UprobePoint {
    dev: u64,
    ino: u64,
    at: ProbeAt,
    program: &'static str,
}

/// How to load.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Mount tracefs at /sys/kernel/tracing when it is not mounted.
    pub mount_tracefs: bool,
    /// Fail unless the scheduler and process probes attach (capture needs them; doctor does not).
    pub require_core: bool,
    /// Track every process from its first present (the daemon), not only the ones asked for.
    pub discover_presenters: bool,
    /// BTF or classic tracepoints for the scheduler probes.
    pub kernel_hooks: KernelHooks,
}

/// What the BTF tracepoints need from the running kernel, or why it cannot give it.
type BtfSupport = Result<(aya::Btf, btf::TaskLayout), String>;

/// The loaded programs, their attachments and their maps.
pub struct Probes {
    ebpf: Ebpf,
    statuses: Vec<ProbeStatus>,
    /// Every uprobe placed, so no point is probed twice.
    uprobe_points: HashSet<UprobePoint>,
    /// Files whose exported hooks were attached (by dev, inode).
    hooked_files: HashSet<(u64, u64)>,
    events: RingBuf<MapData>,
    /// Keeps the kernel's bpf_stats collection on while the probes live.
    _stats: Option<OwnedFd>,
    pub tracefs: PathBuf,
}

/// The kernel's BTF and the `task_struct` layout in it, or why the BTF tracepoints cannot be used.
fn btf_support() -> BtfSupport {
    let layout = btf::TaskLayout::from_kernel().map_err(|e| e.to_string())?;
    let btf = aya::Btf::from_sys_fs()
        .map_err(|e| format!("cannot read the kernel's BTF: {}", error_chain(&e)))?;
    Ok((btf, layout))
}

/// Whether the agent runs with root privileges.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the embedded object holds programs (false when the build had no eBPF toolchain).
pub fn object_available() -> bool {
    !PROBES_OBJECT.is_empty()
}

impl Probes {
    /// Loads every program and attaches the kernel tracepoints and the host's graphics libraries.
    pub fn load(options: LoadOptions) -> Result<Probes, ProbeError> {
        if !is_root() {
            return Err(ProbeError::NotRoot);
        }
        if !object_available() {
            return Err(ProbeError::MissingObject);
        }
        let tracefs = if options.mount_tracefs {
            tracefs::ensure_mounted()?
        } else {
            tracefs::find()?
        };
        raise_memlock_limit();

        let formats: Vec<(&str, Option<Format>)> = TRACEPOINTS
            .iter()
            .map(|t| (t.name, Format::read(&tracefs, t.category, t.name)))
            .collect();
        let format = |name: &str| {
            formats
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, f)| f.as_ref())
        };
        let offset =
            |tp: &str, field: &str| format(tp).and_then(|f| f.field(field)).map(|f| f.offset);

        let mut loader = EbpfLoader::new();
        let globals: [(&str, Option<u32>); 18] = [
            (
                "SWITCH_PREV_STATE_OFF",
                offset("sched_switch", "prev_state"),
            ),
            ("SWITCH_NEXT_COMM_OFF", offset("sched_switch", "next_comm")),
            ("SWITCH_NEXT_PID_OFF", offset("sched_switch", "next_pid")),
            ("WAKEUP_PID_OFF", offset("sched_wakeup", "pid")),
            (
                "WAKEUP_TARGET_CPU_OFF",
                offset("sched_wakeup", "target_cpu"),
            ),
            ("IOCTL_CMD_OFF", offset("sys_enter_ioctl", "cmd")),
            ("NEWTASK_PID_OFF", offset("task_newtask", "pid")),
            ("NEWTASK_FLAGS_OFF", offset("task_newtask", "clone_flags")),
            (
                "EXIT_GROUP_DEAD_OFF",
                offset("sched_process_exit", "group_dead"),
            ),
            ("DRM_VBLANK_CRTC_OFF", offset("drm_vblank_event", "crtc")),
            ("DRM_VBLANK_SEQ_OFF", offset("drm_vblank_event", "seq")),
            ("DRM_VBLANK_TIME_OFF", offset("drm_vblank_event", "time")),
            (
                "DRM_QUEUED_FILE_OFF",
                offset("drm_vblank_event_queued", "file"),
            ),
            (
                "DRM_QUEUED_CRTC_OFF",
                offset("drm_vblank_event_queued", "crtc"),
            ),
            (
                "DRM_QUEUED_SEQ_OFF",
                offset("drm_vblank_event_queued", "seq"),
            ),
            (
                "DRM_DELIVERED_FILE_OFF",
                offset("drm_vblank_event_delivered", "file"),
            ),
            (
                "DRM_DELIVERED_CRTC_OFF",
                offset("drm_vblank_event_delivered", "crtc"),
            ),
            (
                "DRM_DELIVERED_SEQ_OFF",
                offset("drm_vblank_event_delivered", "seq"),
            ),
        ];
        let values: Vec<(&str, u32)> = globals
            .iter()
            .filter_map(|(name, v)| v.map(|v| (*name, v)))
            .collect();
        for (name, value) in &values {
            loader.override_global(name, value, true);
        }
        let btf_support = (options.kernel_hooks != KernelHooks::Classic).then(btf_support);
        let task_offsets = match &btf_support {
            Some(Ok((_, layout))) => vec![
                ("TASK_PID_OFF", layout.pid),
                ("TASK_COMM_OFF", layout.comm),
                ("TASK_EXIT_STATE_OFF", layout.exit_state),
                ("TASK_CPU_OFF", layout.cpu),
            ],
            _ => Vec::new(),
        };
        for (name, value) in &task_offsets {
            loader.override_global(name, value, true);
        }
        if let Some(Err(why)) = &btf_support {
            if options.kernel_hooks == KernelHooks::Btf {
                return Err(ProbeError::BtfUnavailable(why.clone()));
            }
        }
        let report_max = format("sched_switch")
            .and_then(Format::task_report_max)
            .unwrap_or(0x100);
        loader.override_global("TASK_REPORT_MAX", &report_max, true);
        let discover = u32::from(options.discover_presenters);
        loader.override_global("DISCOVER_PRESENTERS", &discover, true);
        let mut ebpf = loader
            .load(PROBES_OBJECT)
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;

        // bpf_stats costs ~20 ns per run; the per-program cost it gives is part of every report.
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();

        let events = ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        let events = RingBuf::try_from(events).map_err(|source| ProbeError::Map {
            map: "EVENTS",
            source,
        })?;

        let mut probes = Probes {
            ebpf,
            statuses: Vec::new(),
            uprobe_points: HashSet::new(),
            hooked_files: HashSet::new(),
            events,
            _stats: stats,
            tracefs: tracefs.clone(),
        };
        for tp in TRACEPOINTS {
            let has_format = format(tp.name).is_some();
            let status = match (tp.btf_program, &btf_support) {
                (Some(program), Some(support)) => {
                    probes.attach_preferring_btf(tp, program, support, has_format, &options)
                }
                (Some(_), None) => ProbeStatus {
                    fallback: Some(
                        "classic tracepoints were asked for (--kernel-hooks classic)".into(),
                    ),
                    ..probes.attach_tracepoint(tp, has_format)
                },
                (None, _) => probes.attach_tracepoint(tp, has_format),
            };
            if tp.required && options.require_core && !status.attached {
                return Err(ProbeError::Required {
                    probe: status.name.clone(),
                    reason: status.reason.clone().unwrap_or_default(),
                });
            }
            probes.statuses.push(status);
        }
        probes.attach_drm_kprobes();
        probes.hook_installed_vulkan_drivers();
        let host_libraries = libraries::host_libraries();
        for lib in &host_libraries {
            probes.attach_library(lib);
        }
        for kind in LIBRARY_KINDS {
            if host_libraries.iter().any(|lib| lib.kind.name == kind.name) {
                continue;
            }
            probes.statuses.push(ProbeStatus {
                name: format!("uprobe:{}", kind.sonames[0]),
                family: "present".into(),
                program: "nvbind_present".into(),
                hook: "uprobe".into(),
                fallback: None,
                attached: false,
                reason: Some(format!("{} is not installed on the host", kind.sonames[0])),
                fix: Some(
                    "none needed unless games use it; copies inside containers and runtimes \
                     are hooked when a tracked process maps them"
                        .into(),
                ),
            });
        }
        Ok(probes)
    }

    /// Attaches a tracepoint's BTF program, or (unless BTF was insisted on) its classic one,
    /// saying why.
    fn attach_preferring_btf(
        &mut self,
        tp: &Tracepoint,
        program: &'static str,
        support: &BtfSupport,
        has_format: bool,
        options: &LoadOptions,
    ) -> ProbeStatus {
        let result = support.as_ref().map_err(Clone::clone).and_then(|(btf, _)| {
            let prog: &mut BtfTracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or("program missing from the object")?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            prog.load(tp.name, btf).map_err(|e| error_chain(&e))?;
            prog.attach().map_err(|e| error_chain(&e))?;
            Ok(())
        });
        let why = match result {
            Ok(()) => {
                return ProbeStatus {
                    name: format!("{}:{}", tp.category, tp.name),
                    family: tp.family.into(),
                    program: program.into(),
                    hook: "tp_btf".into(),
                    fallback: None,
                    attached: true,
                    reason: None,
                    fix: None,
                }
            }
            Err(why) => why,
        };
        if options.kernel_hooks == KernelHooks::Btf {
            return ProbeStatus {
                name: format!("{}:{}", tp.category, tp.name),
                family: tp.family.into(),
                program: program.into(),
                hook: "tp_btf".into(),
                fallback: None,
                attached: false,
                reason: Some(why),
                fix: Some("use --kernel-hooks auto to fall back to classic tracepoints".into()),
            };
        }
        ProbeStatus {
            fallback: Some(why),
            ..self.attach_tracepoint(tp, has_format)
        }
    }

    fn attach_tracepoint(&mut self, tp: &Tracepoint, has_format: bool) -> ProbeStatus {
        let &Tracepoint {
            family,
            program,
            category,
            name,
            ..
        } = tp;
        let mut status = ProbeStatus {
            name: format!("{category}:{name}"),
            family: family.into(),
            program: program.into(),
            hook: "tracepoint".into(),
            fallback: None,
            attached: false,
            reason: None,
            fix: None,
        };
        if !has_format {
            status.reason = Some(if category == "drm" {
                "this kernel has no DRM tracepoints (no DRM driver loaded or built)".into()
            } else {
                format!("this kernel has no {category}:{name} tracepoint")
            });
            status.fix = (category == "drm").then(|| {
                "load a DRM driver (amdgpu, i915, nvidia-drm with modeset=1, vkms)".into()
            });
            return status;
        }
        let result = (|| -> Result<(), String> {
            let prog: &mut TracePoint = self
                .ebpf
                .program_mut(program)
                .ok_or("program missing from the object")?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            prog.load().map_err(|e| error_chain(&e))?;
            prog.attach(category, name).map_err(|e| error_chain(&e))?;
            Ok(())
        })();
        match result {
            Ok(()) => status.attached = true,
            Err(e) => status.reason = Some(e),
        }
        status
    }

    /// Attaches the DRM kprobes (see [`DRM_KPROBES`]), where the kernel has DRM and kprobes; one
    /// status line each either way.
    fn attach_drm_kprobes(&mut self) {
        let drm_loaded = self
            .statuses
            .iter()
            .any(|s| s.family == "drm" && s.attached);
        let mut loaded: HashSet<&str> = HashSet::new();
        for probe in DRM_KPROBES {
            let mut status = ProbeStatus {
                name: format!("kprobe:{}", probe.functions[0]),
                family: "drm".into(),
                program: probe.program.into(),
                hook: "kprobe".into(),
                fallback: None,
                attached: false,
                reason: None,
                fix: None,
            };
            if !drm_loaded {
                status.reason =
                    Some("this kernel has no DRM (no DRM driver loaded or built)".into());
                status.fix = Some(
                    "load a DRM driver (amdgpu, i915, nvidia-drm with modeset=1, vkms)".into(),
                );
                self.statuses.push(status);
                continue;
            }
            let result = (|| -> Result<&str, String> {
                let prog: &mut KProbe = self
                    .ebpf
                    .program_mut(probe.program)
                    .ok_or("program missing from the object")?
                    .try_into()
                    .map_err(|e| format!("{e}"))?;
                if loaded.insert(probe.program) {
                    prog.load().map_err(|e| error_chain(&e))?;
                }
                let mut first_error = None;
                for function in probe.functions {
                    match prog.attach(*function, 0) {
                        Ok(_) => return Ok(*function),
                        Err(e) => {
                            first_error.get_or_insert_with(|| error_chain(&e));
                        }
                    }
                }
                Err(first_error.unwrap_or_default())
            })();
            match result {
                Ok(function) => {
                    status.name = format!("kprobe:{function}");
                    status.attached = true;
                }
                Err(e) => {
                    status.reason = Some(e);
                    status.fix = Some(format!(
                        "a kernel with kprobes (CONFIG_KPROBES); without it {}",
                        probe.without
                    ));
                }
            }
            self.statuses.push(status);
        }
    }

    /// Attaches every hook of a library file once (by inode). Returns how many hooks attached.
    pub fn attach_library(&mut self, lib: &LibraryFile) -> usize {
        if !self.hooked_files.insert((lib.dev, lib.ino)) {
            return 0;
        }
        let mut attached = 0;
        for hook in lib.kind.hooks {
            let point = UprobePoint {
                dev: lib.dev,
                ino: lib.ino,
                at: ProbeAt::Symbol(hook.symbol),
                program: hook.program,
            };
            let result = self.attach_uprobe(point, &lib.path, hook.cookie);
            // Only the frame hooks are worth a line each in doctor.
            if hook.program != "nvbind_present" && result.is_ok() {
                attached += 1;
                continue;
            }
            let ok = result.is_ok();
            attached += ok as usize;
            self.statuses.push(ProbeStatus {
                name: format!("uprobe:{}:{}", lib.display, hook.symbol),
                family: "present".into(),
                program: hook.program.into(),
                hook: "uprobe".into(),
                fallback: None,
                attached: ok,
                reason: result.err(),
                fix: None,
            });
        }
        attached
    }

    /// Hooks every installed Vulkan driver's `vkQueuePresentKHR` (see [`vulkan`]).
    fn hook_installed_vulkan_drivers(&mut self) {
        let found = match vulkan::resolve_with_helper(std::time::Duration::from_secs(15)) {
            Ok(found) => found,
            Err(e) => {
                self.statuses.push(ProbeStatus {
                    name: "uprobe:vkQueuePresentKHR (installed Vulkan drivers)".into(),
                    family: "present".into(),
                    program: "nvbind_present".into(),
                    hook: "uprobe".into(),
                    fallback: None,
                    attached: false,
                    reason: Some(format!(
                        "cannot resolve the drivers' present functions: {e}"
                    )),
                    fix: Some(
                        "install the Vulkan loader and a driver; games are still hooked when \
                         they resolve vkQueuePresentKHR, minus their first frames"
                            .into(),
                    ),
                });
                return;
            }
        };
        for f in found {
            let Ok(meta) = std::fs::metadata(&f.path) else {
                continue;
            };
            use std::os::unix::fs::MetadataExt;
            let result = self.attach_vulkan_present(&f.path, meta.dev(), meta.ino(), f.offset);
            self.statuses.push(ProbeStatus {
                name: format!(
                    "uprobe:{}+{:#x}:vkQueuePresentKHR ({})",
                    f.path.display(),
                    f.offset,
                    f.device
                ),
                family: "present".into(),
                program: "nvbind_present".into(),
                hook: "uprobe".into(),
                fallback: None,
                attached: result.is_ok(),
                reason: result.err(),
                fix: None,
            });
        }
    }

    /// Hooks a `vkQueuePresentKHR` implementation at a file offset: return probe first, so an
    /// entry is never counted without its return (see `in_vulkan_present` in the kernel).
    fn attach_vulkan_present(
        &mut self,
        file: &Path,
        dev: u64,
        ino: u64,
        offset: u64,
    ) -> Result<(), String> {
        let at = |program| UprobePoint {
            dev,
            ino,
            at: ProbeAt::Offset(offset),
            program,
        };
        self.attach_uprobe(at("nvbind_present_vk_ret"), file, 0)?;
        self.attach_uprobe(
            at("nvbind_present"),
            file,
            present_source::VULKAN_RESOLVED as u64,
        )
    }

    /// Probes a `vkQueuePresentKHR` implementation that `pid` learned at `address`.
    /// Returns the mapped file's name when a new probe was placed.
    pub fn attach_resolved_present(
        &mut self,
        pid: u32,
        address: u64,
    ) -> Result<Option<String>, String> {
        let (mapping, offset) = libraries::locate(pid, address)
            .ok_or_else(|| format!("address {address:#x} is not in a file mapping of pid {pid}"))?;
        let key = UprobePoint {
            dev: mapping.dev,
            ino: mapping.ino,
            at: ProbeAt::Offset(offset),
            program: "nvbind_present",
        };
        if self.uprobe_points.contains(&key) {
            return Ok(None);
        }
        self.attach_vulkan_present(&mapping.open_path(pid), mapping.dev, mapping.ino, offset)?;
        self.statuses.push(ProbeStatus {
            name: format!("uprobe:{}+{offset:#x}:vkQueuePresentKHR", mapping.path),
            family: "present".into(),
            program: "nvbind_present".into(),
            hook: "uprobe".into(),
            fallback: None,
            attached: true,
            reason: None,
            fix: None,
        });
        Ok(Some(format!("{}+{offset:#x}", mapping.path)))
    }

    /// Places one uprobe (once: a point already probed is left alone). `target` is a path the
    /// kernel can open to reach the file named by `point`.
    fn attach_uprobe(
        &mut self,
        point: UprobePoint,
        target: &Path,
        cookie: u64,
    ) -> Result<(), String> {
        if self.uprobe_points.contains(&point) {
            return Ok(());
        }
        let program = point.program;
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| format!("program {program} missing from the object"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| error_chain(&e))?;
        }
        let location = match point.at {
            ProbeAt::Symbol(symbol) => UProbeAttachLocation::Symbol(symbol),
            ProbeAt::Offset(offset) => UProbeAttachLocation::AbsoluteOffset(offset),
        };
        let attach_point = UProbeAttachPoint {
            location,
            cookie: (cookie != 0).then_some(cookie),
        };
        prog.attach(attach_point, target, UProbeScope::AllProcesses)
            .map_err(|e| error_chain(&e))?;
        self.uprobe_points.insert(point);
        Ok(())
    }

    /// Attaches hooks in every not-yet-hooked graphics library `pid` has mapped.
    /// Returns the names of the newly hooked files.
    pub fn attach_process_libraries(&mut self, pid: u32) -> Vec<String> {
        let mut hooked = Vec::new();
        for lib in libraries::process_libraries(pid) {
            if self.attach_library(&lib) > 0 {
                hooked.push(lib.display);
            }
        }
        hooked
    }

    pub fn statuses(&self) -> &[ProbeStatus] {
        &self.statuses
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, ProbeError> {
        self.ebpf.map(name).ok_or(ProbeError::MissingMap(name))
    }

    /// A hash map of the object, read-only.
    fn hash_map<K: Pod, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<BpfHashMap<&MapData, K, V>, ProbeError> {
        BpfHashMap::try_from(self.map(name)?)
            .map_err(|source| ProbeError::Map { map: name, source })
    }

    /// A hash map of the object, writable.
    fn hash_map_mut<K: Pod, V: Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { map: name, source })
    }

    /// Wraps a map operation's error with the map's name.
    fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
        move |source| ProbeError::Map { map: name, source }
    }

    /// Starts tracking a process and the threads it has now (new ones are tracked by the kernel).
    pub fn track_process(&mut self, pid: u32, follow_children: bool) -> Result<(), ProbeError> {
        let flags = if follow_children {
            track_flags::FOLLOW_CHILDREN
        } else {
            0
        };
        {
            let mut hists = self.hash_map_mut::<u32, ProcessHistograms>("PROC_HISTS")?;
            if hists.get(&pid, 0).is_err() {
                hists
                    .insert(pid, ProcessHistograms::default(), 0)
                    .map_err(Self::map_err("PROC_HISTS"))?;
            }
        }
        // The process first, so threads it creates from now on are caught by the kernel...
        self.hash_map_mut::<u32, u32>("TRACKED_PROCESSES")?
            .insert(pid, flags, 0)
            .map_err(Self::map_err("TRACKED_PROCESSES"))?;
        // ...then the threads it already has.
        let now = crate::clock::monotonic_ns();
        let mut threads = self.hash_map_mut::<u32, ThreadState>("THREADS")?;
        for tid in thread_ids(pid) {
            if threads.get(&tid, 0).is_ok() {
                continue;
            }
            let state = ThreadState {
                tgid: pid,
                since_ns: now,
                last_cpu: u32::MAX,
                ..Default::default()
            };
            // BPF_NOEXIST: the kernel may have added it meanwhile.
            let _ = threads.insert(tid, state, 1);
        }
        Ok(())
    }

    /// Stops tracking a process and forgets its kernel state (threads, histograms). In discovery
    /// mode `ignore` also keeps its next presents from tracking it again, until
    /// [`Self::forget_ignored`].
    pub fn untrack_process(&mut self, pid: u32, ignore: bool) -> Result<(), ProbeError> {
        if ignore {
            self.hash_map_mut::<u32, u32>("IGNORED_PROCESSES")?
                .insert(pid, 1, 0)
                .map_err(Self::map_err("IGNORED_PROCESSES"))?;
        }
        // Removing a missing key fails with ENOENT: nothing to undo then.
        let _ = self
            .hash_map_mut::<u32, u32>("TRACKED_PROCESSES")?
            .remove(&pid);
        let _ = self
            .hash_map_mut::<u32, ProcessHistograms>("PROC_HISTS")?
            .remove(&pid);
        let tids: Vec<u32> = self
            .threads()?
            .into_iter()
            .filter(|(_, t)| t.tgid == pid)
            .map(|(tid, _)| tid)
            .collect();
        let mut threads = self.hash_map_mut::<u32, ThreadState>("THREADS")?;
        for tid in &tids {
            let _ = threads.remove(tid);
        }
        let mut presenters = self.hash_map_mut::<u32, ProcessHistograms>("PRESENTER_HISTS")?;
        for tid in &tids {
            let _ = presenters.remove(tid);
        }
        // Its DRM requests and files: a daemon runs for days, and a reused pid is another game.
        // (Maps whose program was never loaded, without DRM, are simply absent.)
        if let Ok(mut counts) = self.hash_map_mut::<DrmIoctlKey, u64>("DRM_IOCTL_COUNTS") {
            let keys: Vec<DrmIoctlKey> = counts
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.tgid == pid)
                .collect();
            for key in keys {
                let _ = counts.remove(&key);
            }
        }
        if let Ok(mut owners) = self.hash_map_mut::<u64, DrmFileOwner>("DRM_FILE_OWNERS") {
            let files: Vec<u64> = owners
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, o)| o.tgid == pid)
                .map(|(file, _)| file)
                .collect();
            for file in files {
                let _ = owners.remove(&file);
            }
        }
        Ok(())
    }

    /// Drops ignored processes that no longer exist (their pid may be reused by a game).
    pub fn forget_ignored(&mut self, is_alive: impl Fn(u32) -> bool) -> Result<(), ProbeError> {
        let mut ignored = self.hash_map_mut::<u32, u32>("IGNORED_PROCESSES")?;
        let gone: Vec<u32> = ignored
            .keys()
            .filter_map(Result::ok)
            .filter(|&pid| !is_alive(pid))
            .collect();
        for pid in gone {
            let _ = ignored.remove(&pid);
        }
        Ok(())
    }

    /// Tracks every process whose `execve` gives it this name (comm, at most 15 bytes).
    pub fn watch_comm(&mut self, name: &str, follow_children: bool) -> Result<(), ProbeError> {
        let flags = if follow_children {
            track_flags::FOLLOW_CHILDREN
        } else {
            0
        };
        self.hash_map_mut::<[u8; TASK_COMM_LEN], u32>("WATCHED_COMMS")?
            .insert(comm_key(name), flags, 0)
            .map_err(Self::map_err("WATCHED_COMMS"))
    }

    /// Declares ioctl type bytes (`_IOC_TYPE`) as GPU driver calls, for drivers nvbind does not know
    /// by name: time blocked inside them counts as a GPU driver wait.
    pub fn declare_gpu_ioctl_types(&mut self, types: &[u8]) -> Result<(), ProbeError> {
        const MAP: &str = "DECLARED_GPU_IOCTL_TYPES";
        let map = self.ebpf.map_mut(MAP).ok_or(ProbeError::MissingMap(MAP))?;
        let mut array = aya::maps::Array::<_, u32>::try_from(map).map_err(Self::map_err(MAP))?;
        for &t in types {
            array.set(u32::from(t), 1, 0).map_err(Self::map_err(MAP))?;
        }
        Ok(())
    }

    /// The state of the given threads now (threads no longer tracked are left out). One map
    /// lookup per thread: cheaper than walking the whole map when several processes are tracked.
    pub fn thread_states(&self, tids: &[u32]) -> Result<Vec<(u32, ThreadState)>, ProbeError> {
        let threads = self.hash_map::<u32, ThreadState>("THREADS")?;
        Ok(tids
            .iter()
            .filter_map(|&tid| Some((tid, threads.get(&tid, 0).ok()?)))
            .collect())
    }

    /// Reads every record waiting in the ring buffer.
    pub fn drain_events(&mut self, mut on_event: impl FnMut(Event)) {
        while let Some(item) = self.events.next() {
            if let Some(event) = decode(&item) {
                on_event(event);
            }
        }
    }

    /// The ring buffer's descriptor: readable when a record that asked for a wakeup (a resolved
    /// Vulkan present function, a new process) is waiting. Frames never wake it.
    pub fn events_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.events.as_raw_fd()
    }

    /// Every tracked thread's state, by tid.
    pub fn threads(&self) -> Result<Vec<(u32, ThreadState)>, ProbeError> {
        let threads = self.hash_map::<u32, ThreadState>("THREADS")?;
        Ok(threads.iter().filter_map(Result::ok).collect())
    }

    /// The in-kernel run-queue and blocked-time histograms of a tracked process.
    pub fn histograms(&self, tgid: u32) -> Result<Option<ProcessHistograms>, ProbeError> {
        let hists = self.hash_map::<u32, ProcessHistograms>("PROC_HISTS")?;
        Ok(hists.get(&tgid, 0).ok())
    }

    /// The run-queue and blocked-time histograms of a thread that presented frames.
    pub fn presenter_histograms(&self, tid: u32) -> Result<Option<ProcessHistograms>, ProbeError> {
        let hists = self.hash_map::<u32, ProcessHistograms>("PRESENTER_HISTS")?;
        Ok(hists.get(&tid, 0).ok())
    }

    /// Who preempted tracked processes: (victim tgid, preemptor tid, count, preemptor comm).
    pub fn preemptors(&self) -> Result<Vec<(PreemptorKey, PreemptorValue)>, ProbeError> {
        let map = self.hash_map::<PreemptorKey, PreemptorValue>("PREEMPTORS")?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Ring-buffer records lost because the buffer was full.
    pub fn dropped_events(&self) -> u64 {
        self.sum_per_cpu("DROPPED_EVENTS", 0)
    }

    /// DRM events seen: vblanks, queued, delivered, and deliveries whose event was unreadable.
    pub fn drm_event_counts(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.sum_per_cpu("DRM_EVENT_COUNTS", i))
    }

    /// The vblank cadence of each CRTC that had vblanks: (CRTC index, its record).
    pub fn crtc_vblanks(&self) -> Vec<(u32, CrtcVblanks)> {
        let Ok(map) = self.map("CRTC_VBLANKS") else {
            return Vec::new();
        };
        let Ok(array) = aya::maps::Array::<_, CrtcVblanks>::try_from(map) else {
            return Vec::new();
        };
        (0..nvbind_common::MAX_CRTCS)
            .filter_map(|i| Some((i, array.get(&i, 0).ok()?)))
            .filter(|(_, v)| v.count > 0)
            .collect()
    }

    /// DRM ioctl calls by ioctl number (`_IOC_NR`) of each of `tgids` that made any, from one
    /// walk of the map.
    pub fn drm_ioctl_counts(&self, tgids: &HashSet<u32>) -> HashMap<u32, Vec<(u32, u64)>> {
        let mut by_process: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
        let Ok(map) = self.hash_map::<DrmIoctlKey, u64>("DRM_IOCTL_COUNTS") else {
            return by_process;
        };
        for (key, n) in map.iter().filter_map(Result::ok) {
            if tgids.contains(&key.tgid) {
                by_process.entry(key.tgid).or_default().push((key.nr, n));
            }
        }
        for counts in by_process.values_mut() {
            counts.sort_unstable();
        }
        by_process
    }

    fn sum_per_cpu(&self, map: &'static str, index: u32) -> u64 {
        let Ok(map) = self.map(map) else { return 0 };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        array
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Run count and time of every loaded program (bpf_stats).
    pub fn program_costs(&self) -> Vec<ProgramCost> {
        let mut costs: Vec<ProgramCost> = self
            .ebpf
            .programs()
            .filter_map(|(name, prog): (&str, &Program)| {
                let info = prog.info().ok()?;
                let run_count = info.run_count();
                let run_time_ns = info.run_time().as_nanos() as u64;
                Some(ProgramCost {
                    program: name.to_string(),
                    run_count,
                    run_time_ns,
                    mean_ns_per_run: if run_count > 0 {
                        run_time_ns as f64 / run_count as f64
                    } else {
                        0.0
                    },
                    recursion_misses: prog
                        .fd()
                        .ok()
                        .and_then(|fd| recursion_misses(std::os::fd::AsFd::as_fd(fd)).ok())
                        .unwrap_or(0),
                })
            })
            .collect();
        costs.sort_by(|a, b| a.program.cmp(&b.program));
        costs
    }
}

/// The kernel's count of runs it skipped for the program behind `fd` (`bpf_prog_info`'s
/// `recursion_misses`, which aya's `ProgramInfo` does not expose).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
    use std::os::fd::AsRawFd;
    // SAFETY: both are plain C structs for which all-zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info_len = size_of::<bpf_prog_info>() as u32;
    attr.info.info = &mut info as *mut bpf_prog_info as u64;
    // SAFETY: `attr.info` describes `info`, which outlives the call; the kernel writes at most
    // `info_len` bytes into it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}

/// The NUL-padded `comm` key for a process name (the kernel keeps 15 bytes).
pub fn comm_key(name: &str) -> [u8; TASK_COMM_LEN] {
    let mut key = [0u8; TASK_COMM_LEN];
    let bytes = name.as_bytes();
    let n = bytes.len().min(TASK_COMM_LEN - 1);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

/// A `comm` array as text.
pub fn comm_str(comm: &[u8; TASK_COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn decode(bytes: &[u8]) -> Option<Event> {
    fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
        (bytes.len() >= size_of::<T>())
            // SAFETY: length checked; T is a plain-old-data record (see nvbind-common).
            .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
    let header: EventHeader = read(bytes)?;
    Some(match header.kind {
        event_kind::PRESENT => Event::Present(read(bytes)?),
        event_kind::VULKAN_PRESENT_RESOLVED => Event::VulkanPresentResolved(read(bytes)?),
        event_kind::PROCESS_TRACKED => Event::ProcessTracked(read(bytes)?),
        event_kind::PROCESS_EXEC => Event::ProcessExec(read(bytes)?),
        event_kind::PROCESS_EXIT => Event::ProcessExit(read(bytes)?),
        event_kind::DISPLAY => Event::Display(read(bytes)?),
        _ => return None,
    })
}

/// The threads of a process now (empty if it is gone).
pub fn thread_ids(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn raise_memlock_limit() {
    // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_keys_are_truncated_like_the_kernel() {
        assert_eq!(comm_str(&comm_key("vkcube")), "vkcube");
        assert_eq!(
            comm_str(&comm_key("a-very-long-game-name")),
            "a-very-long-gam"
        );
    }

    #[test]
    fn decodes_records_by_kind() {
        let mut e = PresentEvent::default();
        e.header.kind = event_kind::PRESENT;
        e.header.tgid = 7;
        e.delta.on_cpu_ns = 5;
        // SAFETY: reading the bytes of a plain-old-data value.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const PresentEvent).cast::<u8>(),
                size_of::<PresentEvent>(),
            )
        };
        match decode(bytes) {
            Some(Event::Present(p)) => {
                assert_eq!(p.header.tgid, 7);
                assert_eq!(p.delta.on_cpu_ns, 5);
            }
            other => panic!("decoded {other:?}"),
        }
        assert!(decode(&bytes[..10]).is_none(), "a short record is rejected");
    }
}
