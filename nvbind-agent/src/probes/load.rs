//! Loading the eBPF object: the load-time settings (tracepoint field offsets from tracefs,
//! `task_struct` offsets from BTF), the load itself, and attaching everything the kernel offers.

use std::collections::HashSet;

use aya::{maps::RingBuf, Ebpf, EbpfLoader};

use super::{
    btf, cost, error_chain, is_root,
    libraries::{self, LIBRARY_KINDS},
    marks, object_available, steps, tracefs,
    tracefs::Format,
    BpfStats, KernelHooks, MissingObject, ProbeError, ProbeStatus, Probes, PROBES_OBJECT,
    TRACEPOINTS,
};

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
    /// When the kernel times the programs (their costs in reports and /metrics).
    pub bpf_stats: BpfStats,
    /// How the scheduler programs tell untracked tasks from tracked ones.
    pub untracked_check: marks::UntrackedCheck,
    /// Steps of the tracked scheduler path left out (the benchmark's breakdown; empty otherwise).
    pub left_out: steps::LeftOut,
}

/// What the BTF tracepoints need from the running kernel, or why it cannot give it.
pub(super) type BtfSupport = Result<(aya::Btf, btf::TaskLayout), String>;

/// The kernel's BTF and the `task_struct` layout in it, or why the BTF tracepoints cannot be used.
fn btf_support() -> BtfSupport {
    let layout = btf::TaskLayout::from_kernel().map_err(|e| e.to_string())?;
    let btf = aya::Btf::from_sys_fs()
        .map_err(|e| format!("cannot read the kernel's BTF: {}", error_chain(&e)))?;
    Ok((btf, layout))
}

/// Record fields of `RECORD_FIELDS` that older kernels lack: set to `FIELD_ABSENT` there rather
/// than left at the compiled-in offset.
const RECENT_FIELDS: [(&str, &str, &str); 1] =
    [("EXIT_GROUP_DEAD_OFF", "sched_process_exit", "group_dead")];

/// Classic tracepoint record fields the programs read, as (global in the object, tracepoint,
/// field): each offset comes from the tracepoint's tracefs format (a field missing there keeps
/// the object's compiled-in default).
const RECORD_FIELDS: [(&str, &str, &str); 21] = [
    ("SWITCH_PREV_STATE_OFF", "sched_switch", "prev_state"),
    ("SWITCH_NEXT_COMM_OFF", "sched_switch", "next_comm"),
    ("SWITCH_NEXT_PID_OFF", "sched_switch", "next_pid"),
    ("WAKEUP_PID_OFF", "sched_wakeup", "pid"),
    ("WAKEUP_TARGET_CPU_OFF", "sched_wakeup", "target_cpu"),
    ("IOCTL_CMD_OFF", "sys_enter_ioctl", "cmd"),
    ("NEWTASK_PID_OFF", "task_newtask", "pid"),
    ("NEWTASK_FLAGS_OFF", "task_newtask", "clone_flags"),
    ("EXIT_GROUP_DEAD_OFF", "sched_process_exit", "group_dead"),
    ("FREE_PID_OFF", "sched_process_free", "pid"),
    ("RENAME_PID_OFF", "task_rename", "pid"),
    ("RENAME_NEWCOMM_OFF", "task_rename", "newcomm"),
    ("DRM_VBLANK_CRTC_OFF", "drm_vblank_event", "crtc"),
    ("DRM_VBLANK_SEQ_OFF", "drm_vblank_event", "seq"),
    ("DRM_VBLANK_TIME_OFF", "drm_vblank_event", "time"),
    ("DRM_QUEUED_FILE_OFF", "drm_vblank_event_queued", "file"),
    ("DRM_QUEUED_CRTC_OFF", "drm_vblank_event_queued", "crtc"),
    ("DRM_QUEUED_SEQ_OFF", "drm_vblank_event_queued", "seq"),
    (
        "DRM_DELIVERED_FILE_OFF",
        "drm_vblank_event_delivered",
        "file",
    ),
    (
        "DRM_DELIVERED_CRTC_OFF",
        "drm_vblank_event_delivered",
        "crtc",
    ),
    ("DRM_DELIVERED_SEQ_OFF", "drm_vblank_event_delivered", "seq"),
];

/// The tracefs formats of every tracepoint nvbind attaches (`None` where the kernel has none).
struct Formats(Vec<(&'static str, Option<Format>)>);

impl Formats {
    fn read(tracefs: &std::path::Path) -> Formats {
        Formats(
            TRACEPOINTS
                .iter()
                .map(|t| (t.name, Format::read(tracefs, t.category, t.name)))
                .collect(),
        )
    }

    fn get(&self, tracepoint: &str) -> Option<&Format> {
        self.0
            .iter()
            .find(|(n, _)| *n == tracepoint)
            .and_then(|(_, f)| f.as_ref())
    }

    fn offset(&self, tracepoint: &str, field: &str) -> Option<u32> {
        self.get(tracepoint)
            .and_then(|f| f.field(field))
            .map(|f| f.offset)
    }
}

/// Everything written into the object's globals before the verifier sees it.
struct Settings {
    globals: Vec<(&'static str, u32)>,
    task_report_max: u64,
    /// Words of `TID_MARKS` (1 where it is not used).
    tid_mark_words: u32,
}

impl Settings {
    fn new(options: &LoadOptions, formats: &Formats, btf: Option<&BtfSupport>) -> Settings {
        let mut globals: Vec<(&'static str, u32)> = RECORD_FIELDS
            .iter()
            .filter_map(|&(global, tp, field)| formats.offset(tp, field).map(|v| (global, v)))
            .collect();
        // A field only recent kernels have: where the record lacks it, the program must not read
        // whatever follows the record (Linux 6.1's `sched_process_exit` has no `group_dead`).
        for (global, tp, field) in RECENT_FIELDS {
            if formats.get(tp).is_some() && formats.offset(tp, field).is_none() {
                globals.push((global, nvbind_common::FIELD_ABSENT));
            }
        }
        if let Some(Ok((_, layout))) = btf {
            globals.extend([
                ("TASK_PID_OFF", layout.pid),
                ("TASK_COMM_OFF", layout.comm),
                ("TASK_EXIT_STATE_OFF", layout.exit_state),
                ("TASK_CPU_OFF", layout.cpu),
                ("EXIT_GROUP_DEAD_ARG", u32::from(layout.exit_group_dead_arg)),
            ]);
        }
        // Naming the process a culprit task belongs to needs only BTF, not the BTF hooks: with
        // classic hooks the layout is still read, and without BTF each task answers for itself.
        match btf::LineageLayout::from_kernel() {
            Ok(l) => globals.extend([
                ("TASK_TGID_OFF", l.tgid),
                ("TASK_GROUP_LEADER_OFF", l.group_leader),
                ("TASK_REAL_PARENT_OFF", l.real_parent),
                ("TASK_START_TIME_OFF", l.start_time),
                ("TASK_FLAGS_OFF", l.flags),
                ("TASK_COMM_OFF", l.comm),
            ]),
            Err(why) => log::debug!("culprits are named by their own process only: {why}"),
        }
        globals.push((
            "DISCOVER_PRESENTERS",
            u32::from(options.discover_presenters),
        ));
        let marks_on = options.untracked_check == marks::UntrackedCheck::Marks;
        globals.push(("TID_MARKS_ON", u32::from(marks_on)));
        globals.push(("LEFT_OUT", options.left_out.bits()));
        Settings {
            globals,
            tid_mark_words: if marks_on {
                marks::words_for(marks::pid_max())
            } else {
                1
            },
            task_report_max: formats
                .get("sched_switch")
                .and_then(Format::task_report_max)
                .unwrap_or(0x100),
        }
    }

    /// Loads the object with these settings.
    fn load(&self) -> Result<Ebpf, ProbeError> {
        let mut loader = EbpfLoader::new();
        for (name, value) in &self.globals {
            loader.override_global(name, value, true);
        }
        loader.override_global("TASK_REPORT_MAX", &self.task_report_max, true);
        // One CPU watch per possible CPU (each is over a kilobyte: the object's 1024 would lock
        // a megabyte on a 2-CPU machine); a CPU past the end just goes unwatched.
        if let Ok(cpus) = aya::util::nr_cpus() {
            loader.map_max_entries("CPU_WATCH", cpus.clamp(1, 1024) as u32);
        }
        // A byte for every tid the kernel can give (4 MiB at the largest pid_max).
        loader.map_max_entries(marks::MAP, self.tid_mark_words);
        loader
            .load(PROBES_OBJECT)
            .map_err(|e| ProbeError::Load(error_chain(&e)))
    }
}

impl Probes {
    /// Loads every program and attaches the kernel tracepoints and the host's graphics libraries.
    pub fn load(options: LoadOptions) -> Result<Probes, ProbeError> {
        if !is_root() {
            return Err(ProbeError::NotRoot);
        }
        if !object_available() {
            return Err(MissingObject.into());
        }
        let tracefs = if options.mount_tracefs {
            tracefs::ensure_mounted()?
        } else {
            tracefs::find()?
        };
        raise_memlock_limit();
        let formats = Formats::read(&tracefs);
        let btf_support = (options.kernel_hooks != KernelHooks::Classic).then(btf_support);
        if let Some(Err(why)) = &btf_support {
            if options.kernel_hooks == KernelHooks::Btf {
                return Err(ProbeError::BtfUnavailable(why.clone()));
            }
        }
        let mut ebpf = Settings::new(&options, &formats, btf_support.as_ref()).load()?;

        let mut ring = |name: &'static str| {
            let map = ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))?;
            RingBuf::try_from(map).map_err(|source| ProbeError::Map { map: name, source })
        };
        let events = ring("EVENTS")?;
        let thread_exits = ring("THREAD_EXITS")?;
        let exec_notices = ring("EXEC_NOTICES")?;
        let tid_marks = match options.untracked_check {
            marks::UntrackedCheck::Marks => Some(marks::TidMarks::map(&ebpf)?),
            marks::UntrackedCheck::Table => None,
        };
        let mut probes = Probes {
            ebpf,
            statuses: Vec::new(),
            uprobe_points: Default::default(),
            copies_by_uid: Default::default(),
            copies: Default::default(),
            budget_warned_at: None,
            hooked_files: HashSet::new(),
            events,
            thread_exits,
            exec_notices,
            cost_windows: cost::CostWindows::new(options.bpf_stats),
            tid_marks,
            tracefs: tracefs.clone(),
        };
        probes.attach_tracepoints(&formats, btf_support.as_ref(), &options)?;
        probes.attach_drm_kprobes();
        probes.attach_present_hooks();
        // The first cost window opens now, so even a short recording has its programs' costs.
        probes.tick_cost_windows();
        Ok(probes)
    }

    /// Attaches every tracepoint (see [`TRACEPOINTS`]); fails when a required one does not
    /// attach and the caller requires them.
    fn attach_tracepoints(
        &mut self,
        formats: &Formats,
        btf_support: Option<&BtfSupport>,
        options: &LoadOptions,
    ) -> Result<(), ProbeError> {
        for tp in TRACEPOINTS {
            let has_format = formats.get(tp.name).is_some();
            let status = match (tp.btf_program, btf_support) {
                (Some(program), Some(support)) => {
                    self.attach_preferring_btf(tp, program, support, has_format, options)
                }
                (Some(_), None) => ProbeStatus {
                    fallback: Some(
                        "classic tracepoints were asked for (--kernel-hooks classic)".into(),
                    ),
                    ..self.attach_tracepoint(tp, has_format)
                },
                (None, _) => self.attach_tracepoint(tp, has_format),
            };
            if tp.required && options.require_core && !status.attached {
                return Err(ProbeError::Required {
                    probe: status.name.clone(),
                    reason: status.reason.clone().unwrap_or_default(),
                });
            }
            self.statuses.push(status);
        }
        Ok(())
    }

    /// Hooks the installed Vulkan drivers' present functions and the host's graphics libraries,
    /// and says which library kinds the host lacks.
    fn attach_present_hooks(&mut self) {
        self.hook_installed_vulkan_drivers();
        let host_libraries = libraries::host_libraries();
        for lib in &host_libraries {
            self.attach_library(lib);
        }
        for kind in LIBRARY_KINDS {
            if host_libraries.iter().any(|lib| lib.kind.name == kind.name) {
                continue;
            }
            self.statuses.push(ProbeStatus {
                name: format!("uprobe:{}", kind.sonames[0]),
                family: kind.family.into(),
                program: kind.main_program.into(),
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
    }
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
