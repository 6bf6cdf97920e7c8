//! Giving containers and cgroups their GPUs: `bind`, `unbind`, `bindings` and `cdi generate`.

use crate::identity::terminal_safe;
use std::path::PathBuf;

use anyhow::Result;

use super::args::{BindArgs, BpffsArg, RootArgs, UnbindArgs};
use crate::{binding, gpu, report};

pub(super) fn bind(args: BindArgs) -> Result<u8> {
    let cgroup = match (&args.target.cgroup, args.target.pid) {
        (Some(path), _) => binding::Cgroup::from_path(path)?,
        (None, Some(pid)) => binding::Cgroup::of_pid(pid, args.hierarchy)?,
        (None, None) => anyhow::bail!("give --cgroup PATH or --pid PID"),
    };
    let roots = args.roots.roots()?;
    let discovery = gpu::discover(&roots, &gpu::Warnings::default());
    let gpus = binding::select_gpus(&discovery.gpus, &args.gpus)?;
    let plan = binding::plan(&cgroup, &gpus, &roots.dev);
    if args.dry_run {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print!(
                "{}",
                terminal_safe(&binding::render_plan(&plan, "would allow"))
            );
        }
        return Ok(0);
    }
    let outcome = binding::bind(&plan, &cgroup, &args.bpffs.bpffs)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        if let Some(old) = &outcome.replaced {
            println!(
                "replaced the binding of {} (GPUs {})",
                terminal_safe(&old.cgroup.to_string_lossy()),
                binding::gpu_list(&old.gpus)
            );
        }
        print!(
            "{}",
            terminal_safe(&binding::render_plan(&outcome.binding, "allows"))
        );
        println!("pinned at {}", outcome.pinned_at.display());
    }
    Ok(0)
}

pub(super) fn unbind(args: UnbindArgs) -> Result<u8> {
    let target = match (&args.cgroup, args.pid, args.all) {
        (_, _, true) => binding::UnbindTarget::All,
        (Some(path), _, _) => binding::UnbindTarget::Cgroup(path.clone()),
        (None, Some(pid), _) => {
            binding::UnbindTarget::Cgroup(binding::Cgroup::of_pid(pid, args.hierarchy)?.path)
        }
        (None, None, false) => anyhow::bail!("give --cgroup PATH, --pid PID or --all"),
    };
    let removed = binding::unbind(&target, &args.bpffs.bpffs)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&removed)?);
    } else if removed.is_empty() {
        println!("no bindings");
    } else {
        for b in &removed {
            println!(
                "unbound {} ({}; GPUs {})",
                terminal_safe(&b.cgroup.to_string_lossy()),
                b.hierarchy,
                binding::gpu_list(&b.gpus)
            );
        }
    }
    Ok(0)
}

/// `bindings`: the bindings in force.
pub(super) fn list(json: bool, bpffs: &BpffsArg) -> Result<u8> {
    let listed = binding::list(&bpffs.bpffs)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else {
        print!("{}", terminal_safe(&binding::render_list(&listed)));
    }
    Ok(0)
}

/// `cdi generate`: a CDI spec for the GPUs found, to `output` or standard output.
pub(super) fn cdi_generate(output: Option<PathBuf>, kind: &str, roots: &RootArgs) -> Result<u8> {
    let roots = roots.roots()?;
    let discovery = gpu::discover(&roots, &gpu::Warnings::default());
    let spec = binding::cdi::generate(&discovery.gpus, &roots.dev, kind)?;
    let json = binding::cdi::to_json(&spec);
    match output {
        Some(path) => report::write_text(&path, &json)?,
        None => print!("{json}"),
    }
    Ok(0)
}
