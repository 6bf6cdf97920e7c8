//! Giving containers and cgroups their GPUs: `bind`, `unbind`, `bindings` and `cdi generate`.

use crate::identity::{container_id_prefix, terminal_safe};
use std::path::PathBuf;

use anyhow::Result;

use super::args::{BindArgs, BpffsArg, RootArgs, UnbindArgs};
use crate::{binding, gpu, report};

pub(super) fn bind(args: BindArgs) -> Result<u8> {
    let target = match (&args.target.cgroup, args.target.pid, &args.target.container) {
        (Some(path), _, _) => binding::Target::Cgroup(path.clone()),
        (None, Some(pid), _) => binding::Target::Pid(pid),
        (None, None, Some(id)) => binding::Target::Container(id.clone()),
        (None, None, None) => anyhow::bail!("give --cgroup PATH, --pid PID or --container ID"),
    };
    let target = target.resolve(args.hierarchy)?;
    let cgroup = &target.cgroup;
    let roots = args.roots.roots()?;
    let discovery = gpu::discover(&roots, &gpu::Warnings::default());
    let gpus = binding::select_gpus(&discovery.gpus, &args.gpus)?;
    if !args.force {
        binding::check_keeps_given_gpus(&target, &discovery.gpus, &gpus)?;
    }
    let plan = binding::plan(cgroup, &gpus, &roots.dev);
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
    let outcome = binding::bind(&plan, cgroup, &args.bpffs.bpffs)?;
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
        if !outcome.beside_engine_programs.is_empty() {
            println!(
                "attached beside the container engine's own {}: the container gets what both \
                 allow",
                terminal_safe(&outcome.beside_engine_programs.join(", "))
            );
        }
        println!("pinned at {}", outcome.pinned_at.display());
    }
    Ok(0)
}

pub(super) fn unbind(args: UnbindArgs) -> Result<u8> {
    let target = match (&args.cgroup, args.pid, &args.container, args.all) {
        (_, _, _, true) => binding::UnbindTarget::All,
        (Some(path), _, _, _) => binding::UnbindTarget::Cgroup(path.clone()),
        (None, Some(pid), _, _) => {
            binding::UnbindTarget::Cgroup(binding::Cgroup::of_pid(pid, args.hierarchy)?.path)
        }
        (None, None, Some(id), _) => {
            binding::UnbindTarget::Container(container_id_prefix(id).map_err(anyhow::Error::msg)?)
        }
        (None, None, None, false) => {
            anyhow::bail!("give --cgroup PATH, --pid PID, --container ID or --all")
        }
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

/// `bindings`: the bindings in force (of one container, if `container` is given).
pub(super) fn list(json: bool, container: Option<&str>, bpffs: &BpffsArg) -> Result<u8> {
    let prefix = container
        .map(|id| container_id_prefix(id).map_err(anyhow::Error::msg))
        .transpose()?;
    let mut listed = binding::list(&bpffs.bpffs)?;
    if let Some(prefix) = &prefix {
        listed.retain(|s| {
            s.container_id
                .as_ref()
                .is_some_and(|id| id.starts_with(prefix))
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else {
        print!("{}", terminal_safe(&binding::render_list(&listed)));
    }
    Ok(0)
}

/// `cdi generate`: a CDI spec for the GPUs found, to `output` or standard output, in the lowest
/// spec version that can describe it unless `version` asks for another.
pub(super) fn cdi_generate(
    output: Option<PathBuf>,
    kind: &str,
    version: Option<&str>,
    roots: &RootArgs,
) -> Result<u8> {
    if let Some(version) = version {
        binding::cdi::check_version(version)?;
    }
    let roots = roots.roots()?;
    let discovery = gpu::discover(&roots, &gpu::Warnings::default());
    let mut spec = binding::cdi::generate(&discovery.gpus, &roots.dev, kind)?;
    if let Some(version) = version {
        spec.set_version(version)?;
    }
    let json = binding::cdi::to_json(&spec);
    match output {
        Some(path) => report::write_text(&path, &json)?,
        None => print!("{json}"),
    }
    Ok(0)
}
