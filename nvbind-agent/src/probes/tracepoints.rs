//! The kernel tracepoints nvbind attaches (scheduler, process, ioctl, DRM), each on its BTF
//! tracepoint where it has one and the kernel allows (see [`KernelHooks`]), else its classic one.

use aya::programs::{BtfTracePoint, TracePoint};
use serde::{Deserialize, Serialize};

use super::{error_chain, load::BtfSupport, LoadOptions, ProbeStatus, Probes};

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
    tp("process", "nvbind_rename", "task", "task_rename", false),
    tp("process", "nvbind_exit", "sched", "sched_process_exit", true),
    tp("process", "nvbind_process_free", "sched", "sched_process_free", false),
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
            let prog: &mut BtfTracePoint = self.program(program)?;
            prog.load(tp.name, btf).map_err(|e| error_chain(&e))?;
            prog.attach().map_err(|e| error_chain(&e))?;
            Ok(())
        });
        let status = ProbeStatus {
            name: format!("{}:{}", tp.category, tp.name),
            family: tp.family.into(),
            program: program.into(),
            hook: "tp_btf".into(),
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
