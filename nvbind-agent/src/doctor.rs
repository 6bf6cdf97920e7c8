//! `nvbind-agent doctor`: every probe, attached or unavailable, with the reason and the fix.
//! It attaches for real (and detaches on exit), so what it says is what `record` would get.

use std::path::Path;

use serde::Serialize;

use crate::probes::{
    self, libraries::LIBRARY_KINDS, tracefs, BpfStats, KernelHooks, LoadOptions, ProbeError,
    ProbeStatus, Probes, UntrackedCheck, TRACEPOINTS,
};

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
    });
    let tracefs = tracefs::find().ok().map(|p| p.display().to_string());
    match loaded {
        Ok(p) => {
            let statuses = p.statuses().to_vec();
            let ready = TRACEPOINTS.iter().filter(|t| t.required).all(|t| {
                let name = format!("{}:{}", t.category, t.name);
                statuses.iter().any(|s| s.name == name && s.attached)
            });
            Diagnosis {
                ready,
                root: true,
                kernel,
                btf,
                tracefs,
                error: None,
                probes: statuses,
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
                unavailable(
                    format!("uprobe:{}", k.sonames[0]),
                    "present",
                    "nvbind_present",
                )
            }));
            Diagnosis {
                ready: false,
                root: probes::is_root(),
                kernel,
                btf,
                tracefs,
                error: Some(reason),
                probes: statuses,
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
    out.push_str(if d.ready {
        "ready: record can run\n"
    } else {
        "not ready: record cannot run until the errors above are fixed\n"
    });
    out
}
