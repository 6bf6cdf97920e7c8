//! The kernel tracepoints nvbind attaches (scheduler, process, ioctl, DRM), each on its BTF hook
//! (a BTF tracepoint, or fentry/fexit on the kernel function) where it has one and the kernel
//! allows (see [`KernelHooks`]), else its classic tracepoint.

use aya::programs::{BtfTracePoint, FEntry, FExit, TracePoint};
use serde::{Deserialize, Serialize};

use super::{error_chain, load::BtfSupport, LoadOptions, ProbeStatus, Probes};

/// A tracepoint and the programs nvbind attaches to it.
#[derive(Debug, Clone, Copy)]
pub struct Tracepoint {
    pub family: &'static str,
    /// The program for the classic tracepoint.
    pub program: &'static str,
    /// The program on the BTF hook, preferred where there is one: it costs less per event and
    /// has its own recursion guard (a classic tracepoint program is skipped whenever it fires
    /// while another tracing program runs on the same CPU).
    pub btf_program: Option<&'static str>,
    /// What the BTF program hooks.
    pub btf_hook: BtfHook,
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
        btf_hook: BtfHook::Tracepoint,
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
    required: bool,
) -> Tracepoint {
    Tracepoint {
        btf_program: Some(btf_program),
        ..tp(family, program, category, name, required)
    }
}

/// A tracepoint whose BTF program is on a kernel function instead (fentry or fexit).
const fn on_function(
    family: &'static str,
    program: &'static str,
    btf_program: &'static str,
    btf_hook: BtfHook,
    category: &'static str,
    name: &'static str,
) -> Tracepoint {
    Tracepoint {
        btf_program: Some(btf_program),
        btf_hook,
        ..tp(family, program, category, name, false)
    }
}

/// Where a BTF program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtfHook {
    /// The BTF tracepoint of the tracepoint's name.
    Tracepoint,
    /// The entry of a kernel function.
    FEntry(&'static str),
    /// The return of a kernel function.
    FExit(&'static str),
}

impl BtfHook {
    pub fn name(self) -> &'static str {
        match self {
            BtfHook::Tracepoint => "tp_btf",
            BtfHook::FEntry(_) => "fentry",
            BtfHook::FExit(_) => "fexit",
        }
    }
}

/// The kernel's ioctl syscall function on this architecture: the ioctl programs' fentry/fexit.
#[cfg(target_arch = "x86_64")]
const IOCTL_SYSCALL: &str = "__x64_sys_ioctl";
#[cfg(target_arch = "aarch64")]
const IOCTL_SYSCALL: &str = "__arm64_sys_ioctl";
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const IOCTL_SYSCALL: &str = "__sys_ioctl_unknown_architecture";

/// Which kind of hook the scheduler, process and ioctl probes use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KernelHooks {
    /// BTF hooks (BTF tracepoints, fentry/fexit) where the kernel has BTF, classic tracepoints
    /// otherwise.
    #[default]
    Auto,
    /// BTF hooks only: a probe whose BTF hook the kernel refuses stays off, with the reason
    /// (`record` fails when that is a scheduler probe).
    Btf,
    /// Classic tracepoints only (the fallback for kernels without BTF).
    Classic,
}

/// Every tracepoint program, one row each.
#[rustfmt::skip]
pub const TRACEPOINTS: &[Tracepoint] = &[
    tp_btf(
        "scheduler", "nvbind_sched_switch", "nvbind_sched_switch_btf", "sched", "sched_switch",
        true,
    ),
    tp_btf(
        "scheduler", "nvbind_sched_wakeup", "nvbind_sched_wakeup_btf", "sched", "sched_wakeup",
        true,
    ),
    tp_btf(
        "scheduler", "nvbind_sched_wakeup_new", "nvbind_sched_wakeup_new_btf", "sched",
        "sched_wakeup_new", true,
    ),
    on_function(
        "ioctl", "nvbind_ioctl_enter", "nvbind_ioctl_enter_btf", BtfHook::FEntry(IOCTL_SYSCALL),
        "syscalls", "sys_enter_ioctl",
    ),
    on_function(
        "ioctl", "nvbind_ioctl_exit", "nvbind_ioctl_exit_btf", BtfHook::FExit(IOCTL_SYSCALL),
        "syscalls", "sys_exit_ioctl",
    ),
    tp_btf("process", "nvbind_newtask", "nvbind_newtask_btf", "task", "task_newtask", true),
    tp_btf("process", "nvbind_exec", "nvbind_exec_btf", "sched", "sched_process_exec", true),
    tp_btf("process", "nvbind_rename", "nvbind_rename_btf", "task", "task_rename", false),
    tp_btf("process", "nvbind_exit", "nvbind_exit_btf", "sched", "sched_process_exit", true),
    tp_btf(
        "process", "nvbind_process_free", "nvbind_process_free_btf", "sched",
        "sched_process_free", false,
    ),
    tp("drm", "nvbind_drm_vblank", "drm", "drm_vblank_event", false),
    tp("drm", "nvbind_drm_queued", "drm", "drm_vblank_event_queued", false),
    tp("drm", "nvbind_drm_delivered", "drm", "drm_vblank_event_delivered", false),
];

impl Probes {
    /// Attaches a tracepoint's BTF program, or (unless BTF was insisted on) its classic one,
    /// saying why.
    pub(super) fn attach_preferring_btf(
        &mut self,
        tp: &Tracepoint,
        program: &'static str,
        support: &BtfSupport,
        has_format: bool,
        options: &LoadOptions,
    ) -> ProbeStatus {
        let result = support.as_ref().map_err(Clone::clone).and_then(|(btf, _)| {
            let failed = |e: aya::programs::ProgramError| error_chain(&e);
            match tp.btf_hook {
                BtfHook::Tracepoint => {
                    let prog: &mut BtfTracePoint = self.program(program)?;
                    prog.load(tp.name, btf).map_err(failed)?;
                    prog.attach().map_err(failed)?;
                }
                // Kernels without ftrace's function hooks (or that keep them from BPF) refuse
                // these at load: the reason names the function.
                BtfHook::FEntry(function) => {
                    let on = |e| format!("fentry on {function}: {}", failed(e));
                    let prog: &mut FEntry = self.program(program)?;
                    prog.load(function, btf).map_err(on)?;
                    prog.attach().map_err(on)?;
                }
                BtfHook::FExit(function) => {
                    let on = |e| format!("fexit on {function}: {}", failed(e));
                    let prog: &mut FExit = self.program(program)?;
                    prog.load(function, btf).map_err(on)?;
                    prog.attach().map_err(on)?;
                }
            }
            Ok(())
        });
        let status = ProbeStatus {
            name: format!("{}:{}", tp.category, tp.name),
            family: tp.family.into(),
            program: program.into(),
            hook: tp.btf_hook.name().into(),
            fallback: None,
            attached: result.is_ok(),
            reason: None,
            fix: None,
        };
        let why = match result {
            Ok(()) => return status,
            Err(why) => why,
        };
        if options.kernel_hooks == KernelHooks::Btf {
            return ProbeStatus {
                reason: Some(why),
                fix: Some("use --kernel-hooks auto to fall back to classic tracepoints".into()),
                ..status
            };
        }
        ProbeStatus {
            fallback: Some(why),
            ..self.attach_tracepoint(tp, has_format)
        }
    }
    pub(super) fn attach_tracepoint(&mut self, tp: &Tracepoint, has_format: bool) -> ProbeStatus {
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
            let prog: &mut TracePoint = self.program(program)?;
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
}
