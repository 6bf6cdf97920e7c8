//! `nvbind-agent doctor`: every probe, attached or unavailable, with the reason and the fix.
//! It attaches for real (and detaches on exit), so what it says is what `record` would get.

use std::{path::Path, time::Duration};

use serde::Serialize;

use crate::probes::{
    self, libraries::LIBRARY_KINDS, tracefs, BpfStats, BtfHook, KernelHooks, LeftOut, LoadOptions,
    OffsetsChecked, ProbeError, ProbeStatus, Probes, UntrackedCheck, TRACEPOINTS,
};

/// How long the `task_struct` offsets are checked on live switches: thousands of them even on
/// an idle machine.
const OFFSETS_CHECK_SPAN: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize)]
pub struct Diagnosis {
    /// Whether `record` can run: the scheduler and process probes attach.
    pub ready: bool,
    pub root: bool,
    pub kernel: String,
    /// Kernel BTF (/sys/kernel/btf/vmlinux): the scheduler probes use BTF tracepoints with it,
    /// classic tracepoints without.
    pub btf: bool,
    pub tracefs: Option<String>,
    /// Why loading failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub probes: Vec<ProbeStatus>,
    /// The `task_struct` offsets the BTF programs read, checked by value on live switches
    /// (only where the scheduler programs are on BTF tracepoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_offsets: Option<OffsetsChecked>,
    /// Why they were not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_offsets_not_checked: Option<String>,
}

/// Probes the machine.
pub fn diagnose(mount_tracefs: bool, kernel_hooks: KernelHooks) -> Diagnosis {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let loaded = Probes::load(LoadOptions {
        mount_tracefs,
        require_core: false,
        discover_presenters: false,
        kernel_hooks,
        // doctor's load lasts a moment: nothing to measure.
        bpf_stats: BpfStats::Off,
        untracked_check: UntrackedCheck::Marks,
        left_out: LeftOut::default(),
    });
    let tracefs = tracefs::find().ok().map(|p| p.display().to_string());
    match loaded {
        Ok(mut p) => {
            let statuses = p.statuses().to_vec();
            let attached = TRACEPOINTS.iter().filter(|t| t.required).all(|t| {
                let name = format!("{}:{}", t.category, t.name);
                statuses.iter().any(|s| s.name == name && s.attached)
            });
            let on_btf = statuses.iter().any(|s| {
                s.name == "sched:sched_switch" && s.attached && s.hook == BtfHook::Tracepoint.name()
            });
            let (task_offsets, task_offsets_not_checked) = if on_btf {
                match p.check_task_offsets(OFFSETS_CHECK_SPAN) {
                    Ok(checked) => (Some(checked), None),
                    Err(why) => (None, Some(why)),
                }
            } else {
                (
                    None,
                    Some("the scheduler programs are not on BTF tracepoints".into()),
                )
            };
            Diagnosis {
                // Offsets that read other fields would make every number wrong.
                ready: attached && task_offsets.as_ref().is_none_or(OffsetsChecked::holds),
                root: true,
                kernel,
                btf,
                tracefs,
                error: None,
                probes: statuses,
                task_offsets,
                task_offsets_not_checked,
            }
        }
        Err(e) => {
            let fix = match &e {
                ProbeError::NotRoot => Some("run it with sudo".to_string()),
                ProbeError::Tracefs(_) => Some(
                    "mount -t tracefs nodev /sys/kernel/tracing (or pass --mount-tracefs)".into(),
                ),
                ProbeError::MissingObject(_) => Some("cargo xtask setup, then rebuild".into()),
                _ => None,
            };
            let reason = e.to_string();
            let unavailable =
                |name: String, family: &'static str, program: &'static str| ProbeStatus {
                    name,
                    family: family.into(),
                    program: program.into(),
                    hook: if family == "present" {
                        "uprobe"
                    } else {
                        "tracepoint"
                    }
                    .into(),
                    fallback: None,
                    attached: false,
                    reason: Some(reason.clone()),
                    fix: fix.clone(),
                };
            let mut statuses: Vec<ProbeStatus> = TRACEPOINTS
                .iter()
                .map(|t| unavailable(format!("{}:{}", t.category, t.name), t.family, t.program))
                .collect();
            statuses.extend(LIBRARY_KINDS.iter().map(|k| {
                unavailable(format!("uprobe:{}", k.sonames[0]), k.family, k.main_program)
            }));
            Diagnosis {
                ready: false,
                root: probes::is_root(),
                kernel,
                btf,
                tracefs,
                error: Some(reason),
                probes: statuses,
                task_offsets: None,
                task_offsets_not_checked: Some("the probes did not load".into()),
            }
        }
    }
}

/// The human-readable table.
pub fn render(d: &Diagnosis) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "kernel {}  root: {}  BTF: {}  tracefs: {}\n",
        d.kernel,
        if d.root { "yes" } else { "no" },
        if d.btf { "yes" } else { "no" },
        d.tracefs.as_deref().unwrap_or("not mounted"),
    ));
    if let Some(e) = &d.error {
        out.push_str(&format!("error: {e}\n"));
    }
    let width = d
        .probes
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(10)
        .min(90);
    for p in &d.probes {
        let state = if p.attached {
            "attached"
        } else {
            "unavailable"
        };
        out.push_str(&format!(
            "{:<10} {:<width$}  {:<10} {state}",
            p.family, p.name, p.hook
        ));
        if let Some(why) = &p.fallback {
            out.push_str(&format!(" (not on its BTF hook: {why})"));
        }
        if let Some(r) = &p.reason {
            out.push_str(&format!(": {r}"));
        }
        if let Some(f) = &p.fix {
            out.push_str(&format!(" (fix: {f})"));
        }
        out.push('\n');
    }
    match (&d.task_offsets, &d.task_offsets_not_checked) {
        (Some(checked), _) => out.push_str(&render_offsets(checked)),
        (None, Some(why)) => out.push_str(&format!("task_struct offsets not checked: {why}\n")),
        (None, None) => {}
    }
    out.push_str(if d.ready {
        "ready: record can run\n"
    } else {
        "not ready: record cannot run until the errors above are fixed\n"
    });
    out
}

/// The offsets check in one line: each field's equal comparisons of all.
fn render_offsets(checked: &OffsetsChecked) -> String {
    let fields: Vec<String> = checked
        .fields
        .iter()
        .map(|f| format!("{} {}/{}", f.field, f.equal, f.compared))
        .collect();
    if checked.holds() {
        format!(
            "task_struct offsets from BTF checked by value on {} switches, equal to the kernel's \
             own: {}\n",
            checked.switches,
            fields.join(", ")
        )
    } else {
        format!(
            "error: task_struct offsets from BTF read other values than the kernel's own on {} \
             switches: {} (fix: --kernel-hooks classic, and report this kernel)\n",
            checked.switches,
            fields.join(", ")
        )
    }
}
