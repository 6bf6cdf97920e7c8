//! cgroup-scoped GPU device binding: "this cgroup gets these GPUs and nothing else", enforced by
//! the kernel and kept in force when the agent exits or is killed.
//!
//! - cgroup v2: a copy of the `nvbind-device` eBPF program per binding, attached through a BPF
//!   link pinned in bpffs ([`v2`]).
//! - cgroup v1: the devices controller's `devices.deny` / `devices.allow` ([`v1`]).
//!
//! Both keep a description of the binding in bpffs ([`registry`]), so that a later agent lists,
//! replaces and removes what an earlier one set. The kernel checks the policy when a device node
//! is opened (or created): descriptors opened before the binding stay usable.

mod bpf;
pub mod cdi;
mod cgroup;
pub mod containers;
mod registry;
mod rules;
mod target;
mod v1;
mod v2;

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use self::registry::{Entry, Registry};
pub use self::{
    cgroup::{cgroup2_mount, Cgroup, CgroupError, Hierarchy},
    registry::is_bpffs,
    rules::{allowlist, DeviceKind, DeviceRule},
    target::{Resolved, Target},
};
use crate::gpu::{GpuInfo, Vendor};

#[derive(Debug, Error)]
pub enum BindError {
    #[error(
        "binding devices needs root (CAP_SYS_ADMIN and CAP_BPF, and write access to cgroupfs): \
         run it with sudo"
    )]
    NotRoot,
    #[error(
        "{0} is not a mounted BPF filesystem, where bindings are pinned: mount it with \
         `mount -t bpf bpf {0}` (or pass --bpffs DIR)"
    )]
    NoBpffs(PathBuf),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Container(#[from] containers::ContainerError),
    #[error(
        "{target} was started with {given}, and a binding to GPU {asked} would take {pronoun} \
         away: add --gpu {keep}, {restart}or pass --force to bind it anyway"
    )]
    TakesAwayGivenGpus {
        target: String,
        given: String,
        asked: String,
        pronoun: &'static str,
        keep: usize,
        restart: String,
    },
    #[error("no binding of a container whose id starts {0} (see `nvbind-agent bindings`)")]
    NoContainerBinding(String),
    #[error("no GPU found on this host (see `nvbind-agent gpus`): nothing to bind")]
    NoGpus,
    #[error("no GPU matches '{selector}'; the GPUs are: {available} (see `nvbind-agent gpus`)")]
    UnknownGpu { selector: String, available: String },
    #[error(
        "GPU {index} ({pci}) has no device nodes (no driver bound, or --dev-root is wrong): \
         there is nothing to allow"
    )]
    NoNodes { index: usize, pci: String },
    #[error(
        "{cgroup} already has a device policy that nvbind did not set ({detail}); refusing to \
         change it: remove that policy with the tool that set it, or bind a child cgroup"
    )]
    Foreign { cgroup: PathBuf, detail: String },
    #[error(
        "{cgroup}'s devices.list no longer matches what nvbind set (changed by another tool?): \
         run `nvbind-agent unbind --cgroup {cgroup}` first"
    )]
    Drifted { cgroup: PathBuf },
    #[error("{0} is not bound by nvbind (see `nvbind-agent bindings`)")]
    NotBound(PathBuf),
    #[error(transparent)]
    MissingObject(#[from] crate::probes::MissingObject),
    #[error("{0}")]
    Kernel(String),
    #[error("binding record: {0}")]
    Record(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

impl BindError {
    /// A failure on a file: cgroupfs, bpffs or a pin.
    fn io(path: &Path, error: impl std::fmt::Display) -> BindError {
        BindError::Io {
            path: path.into(),
            message: error.to_string(),
        }
    }
}

/// A GPU a binding gives access to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundGpu {
    pub index: usize,
    pub vendor: Vendor,
    pub name: String,
    pub pci_address: String,
    pub uuid: Option<String>,
}

/// What a binding is: the cgroup, the GPUs and the exact rules. Kept in bpffs beside the
/// policy (see [`registry`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub cgroup: PathBuf,
    pub hierarchy: Hierarchy,
    /// The cgroup directory's inode (the cgroup id on v2).
    pub cgroup_id: u64,
    pub gpus: Vec<BoundGpu>,
    pub rules: Vec<DeviceRule>,
    pub bound_at_unix_s: u64,
    pub agent_version: String,
}

/// How a listed binding stands, checked against the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindingState {
    /// The policy is attached (v2) or `devices.list` shows exactly its rules (v1).
    Enforced,
    /// An agent died while replacing the policy. v2: the old and the new program are both
    /// attached, so the cgroup gets only what both allow; v1: `devices.list` holds part of the
    /// way between them. Binding or unbinding again settles it. (An agent killed during a
    /// cgroup's *first* v1 binding leaves it `drifted`: `unbind` clears it.)
    Replacing,
    /// The pinned link no longer holds the program on the cgroup.
    Detached,
    /// The rules in force differ from the recorded ones: `devices.list` (v1) or the pinned
    /// rules map (v2) was changed by someone else.
    Drifted,
    /// The cgroup was removed; the pins are left over (`unbind` removes them).
    CgroupRemoved,
}

/// One binding as `bindings` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingStatus {
    #[serde(flatten)]
    pub binding: Binding,
    pub state: BindingState,
    /// Where its pins are.
    pub pinned_at: PathBuf,
    /// The v2 program's id (`bpftool prog show id N`).
    pub program_id: Option<u32>,
    /// Device programs of ancestor cgroups that also apply (v2): the cgroup can only be
    /// stricter than its ancestors.
    pub ancestor_device_programs: Option<usize>,
    /// The container the cgroup is named after, if it is a container's (Docker, Podman,
    /// containerd, CRI-O).
    pub container_id: Option<String>,
}

/// What `bind` did.
#[derive(Debug, Clone, Serialize)]
pub struct BindOutcome {
    pub binding: Binding,
    /// The binding this one replaced, if the cgroup was bound already.
    pub replaced: Option<Binding>,
    pub pinned_at: PathBuf,
    /// The container engine's own device programs the binding was attached beside (v2, a
    /// container's cgroup): the container gets what both allow.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub beside_engine_programs: Vec<String>,
    /// Time from the start of `bind` (waiting for the registry lock included) to the old
    /// policy's removal: loading, filling, attaching and pinning the new policy (what
    /// `cargo xtask bench` reports).
    pub kernel_work_ms: f64,
}

/// The GPUs `selectors` name (`all`, an index, a UUID, a PCI address with or without its
/// domain), in index order, each once.
pub fn select_gpus<'a>(
    gpus: &'a [GpuInfo],
    selectors: &[String],
) -> Result<Vec<&'a GpuInfo>, BindError> {
    if gpus.is_empty() {
        return Err(BindError::NoGpus);
    }
    let mut chosen: Vec<&GpuInfo> = Vec::new();
    for selector in selectors {
        let wanted = selector.trim().to_ascii_lowercase();
        let matches: Vec<&GpuInfo> = if wanted == "all" {
            let with_nodes: Vec<&GpuInfo> =
                gpus.iter().filter(|g| !g.device_nodes.is_empty()).collect();
            if with_nodes.is_empty() {
                return Err(BindError::NoNodes {
                    index: gpus[0].index,
                    pci: gpus[0].pci_address.clone(),
                });
            }
            with_nodes
        } else {
            let pci = if wanted.matches(':').count() == 1 {
                format!("0000:{wanted}")
            } else {
                wanted.clone()
            };
            gpus.iter()
                .filter(|g| {
                    wanted.parse::<usize>() == Ok(g.index)
                        || g.uuid
                            .as_deref()
                            .is_some_and(|u| u.eq_ignore_ascii_case(&wanted))
                        || g.pci_address.eq_ignore_ascii_case(&pci)
                })
                .collect()
        };
        if matches.is_empty() {
            return Err(BindError::UnknownGpu {
                selector: selector.clone(),
                available: gpus
                    .iter()
                    .map(|g| {
                        let uuid = g
                            .uuid
                            .as_deref()
                            .map(|u| format!(", {u}"))
                            .unwrap_or_default();
                        format!("{} ({}{uuid})", g.index, g.pci_address)
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        for gpu in matches {
            if gpu.device_nodes.is_empty() {
                return Err(BindError::NoNodes {
                    index: gpu.index,
                    pci: gpu.pci_address.clone(),
                });
            }
            if !chosen.iter().any(|c| c.index == gpu.index) {
                chosen.push(gpu);
            }
        }
    }
    chosen.sort_by_key(|g| g.index);
    Ok(chosen)
}

/// Refuses to bind `chosen` to a target whose container, seen through a process in it, was
/// started with GPUs of which `chosen` has none: the container would lose the GPU it was given
/// (narrowing a container started with several GPUs is allowed). `all` are the host's GPUs.
pub fn check_keeps_given_gpus(
    target: &Resolved,
    all: &[GpuInfo],
    chosen: &[&GpuInfo],
) -> Result<(), BindError> {
    let Some(pid) = target.pid else {
        return Ok(());
    };
    let spec_dirs: Vec<&Path> = cdi::SPEC_DIRS.iter().map(Path::new).collect();
    let Some(given) = containers::given_gpus(pid, all, &spec_dirs) else {
        return Ok(());
    };
    if chosen.iter().any(|g| given.gpus.contains(&g.index)) {
        return Ok(());
    }
    let indices = |list: &mut dyn Iterator<Item = usize>| {
        list.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    };
    let nodes = given.nodes.join(", ");
    let gpus_given = format!("GPU {}", indices(&mut given.gpus.iter().copied()));
    let described = match given.cdi_devices.as_slice() {
        [] => format!("{gpus_given} ({nodes})"),
        names => format!("CDI device {} ({gpus_given}: {nodes})", names.join(" and ")),
    };
    // "--device nvbind.io/gpu=1": the installed device with exactly the first GPU asked for's
    // own nodes, of the kind the container was started with where there is one.
    let wanted: std::collections::BTreeSet<(u32, u32)> = chosen
        .first()
        .map(|gpu| {
            gpu.device_nodes
                .iter()
                .filter(|n| !n.shared)
                .map(|n| (n.major, n.minor))
                .collect()
        })
        .unwrap_or_default();
    let kind = given
        .cdi_devices
        .first()
        .and_then(|q| q.split_once('='))
        .map(|(kind, _)| kind);
    let restart = cdi::device_with_nodes(&cdi::installed_devices(&spec_dirs), &wanted, kind)
        .map(|device| format!("start it again with --device {device}, "))
        .unwrap_or_default();
    Err(BindError::TakesAwayGivenGpus {
        target: target.described.clone(),
        given: described,
        asked: indices(&mut chosen.iter().map(|g| g.index)),
        pronoun: if given.gpus.len() == 1 { "it" } else { "them" },
        keep: given.gpus[0],
        restart,
    })
}

/// The binding of `gpus` to `cgroup`: what `bind` would enforce (and `--dry-run` prints).
pub fn plan(cgroup: &Cgroup, gpus: &[&GpuInfo], dev_root: &Path) -> Binding {
    Binding {
        cgroup: cgroup.path.clone(),
        hierarchy: cgroup.hierarchy,
        cgroup_id: cgroup.id,
        gpus: gpus
            .iter()
            .map(|g| BoundGpu {
                index: g.index,
                vendor: g.vendor,
                name: g.name.clone(),
                pci_address: g.pci_address.clone(),
                uuid: g.uuid.clone(),
            })
            .collect(),
        rules: allowlist(gpus, dev_root),
        bound_at_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Root is needed to load programs, pin in bpffs and write cgroupfs.
pub fn require_root() -> Result<(), BindError> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BindError::NotRoot);
    }
    Ok(())
}

/// The `statfs` magic number of the filesystem `path` is on (cgroupfs, bpffs, ...).
fn filesystem_magic(path: &Path) -> std::io::Result<i64> {
    let info = rustix::fs::statfs(path)?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    Ok(info.f_type as i64)
}

fn key_for(hierarchy: Hierarchy, id: u64) -> String {
    match hierarchy {
        Hierarchy::V1 => format!("v1-{id}"),
        Hierarchy::V2 => format!("v2-{id}"),
    }
}

/// Enforces `binding` on `cgroup`, replacing nvbind's earlier binding of it if there is one.
/// On any error the cgroup keeps the policy it had.
pub fn bind(binding: &Binding, cgroup: &Cgroup, bpffs: &Path) -> Result<BindOutcome, BindError> {
    require_root()?;
    let started = std::time::Instant::now();
    let registry = Registry::open(bpffs)?;
    let entry = registry.entry(&key_for(cgroup.hierarchy, cgroup.id))?;
    // Every committed generation's record, oldest first: the newest is the binding in force.
    let records = entry
        .committed()
        .map(|generation| registry::read_record(&generation.dir))
        .collect::<Result<Vec<_>, _>>()?;
    let record = registry::encode_record(binding)?;
    let (generation, beside_engine_programs) = match cgroup.hierarchy {
        Hierarchy::V2 => bind_v2(&registry, &entry, cgroup, binding, &record)?,
        Hierarchy::V1 => (
            bind_v1(&registry, &entry, cgroup, binding, &records, &record)?,
            Vec::new(),
        ),
    };
    // The new policy is committed: the old generations (and any an earlier agent left half
    // made) go now. Removing an old link pin detaches the old program.
    for old in &entry.generations {
        if let Err(e) = registry::remove_generation(&old.dir) {
            // The new policy is in force; a left-over generation is settled by the next
            // bind or unbind (until then `bindings` shows the cgroup as replacing).
            log::warn!("could not remove the previous policy's pins: {e}");
        }
    }
    Ok(BindOutcome {
        binding: binding.clone(),
        replaced: records.last().cloned(),
        pinned_at: generation,
        beside_engine_programs,
        kernel_work_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Binds on cgroup v2; returns the new generation's directory and the engine programs it was
/// attached beside.
fn bind_v2(
    registry: &Registry,
    entry: &Entry,
    cgroup: &Cgroup,
    binding: &Binding,
    record: &nvbind_common::device_policy::BindingRecord,
) -> Result<(PathBuf, Vec<String>), BindError> {
    let cgroup_file = v2::open_cgroup(&cgroup.path)?;
    let ours: Vec<u32> = entry
        .generations
        .iter()
        .filter(|g| g.has_link)
        .map(|g| v2::pinned_program_id(&g.dir.join("link")))
        .collect::<Result<_, _>>()?;
    let attached = bpf::device_programs(cgroup_file.as_fd(), false)
        .map_err(|e| BindError::Kernel(format!("cannot query {}: {e}", cgroup.path.display())))?;
    let foreign: Vec<String> = attached
        .iter()
        .filter(|id| !ours.contains(id))
        .map(|id| format!("device program id {id} '{}'", v2::program_name(*id)))
        .collect();
    // A container's engine (runc, crun, systemd for it) attaches a device program of its own
    // to the container's cgroup, with BPF_F_ALLOW_MULTI: nvbind's is attached beside it, and
    // the kernel lets through only what every attached program allows, so the binding can only
    // narrow what the engine gave. Any other cgroup's policy is left to the tool that set it.
    let is_container = cgroup
        .path
        .file_name()
        .and_then(|name| crate::identity::container_id_of_component(&name.to_string_lossy()))
        .is_some();
    if !foreign.is_empty() && !is_container {
        return Err(BindError::Foreign {
            cgroup: cgroup.path.clone(),
            detail: foreign.join(", "),
        });
    }
    let policy = v2::Policy::load(record, Some(&binding.rules))?;
    // From here the new program is enforced (together with the old one, if any).
    let link = policy.attach(&cgroup_file)?;
    let dir = registry.new_generation(entry)?;
    let committed = policy
        .pin_maps(&dir)
        .and_then(|()| v2::pin_link(link, &dir.join("link")));
    if let Err(error) = committed {
        // The unpinned link closes with this process: the new program detaches, the old stays.
        let _ = registry::remove_generation(&dir);
        return Err(error);
    }
    Ok((dir, foreign))
}

fn bind_v1(
    registry: &Registry,
    entry: &Entry,
    cgroup: &Cgroup,
    binding: &Binding,
    records: &[Binding],
    record: &nvbind_common::device_policy::BindingRecord,
) -> Result<PathBuf, BindError> {
    if !v1::supported(cgroup) {
        return Err(BindError::Kernel(format!(
            "{} has no devices.allow: the v1 devices controller is not enabled there",
            cgroup.path.display()
        )));
    }
    let list = v1::read_list(cgroup)?;
    let mut earlier_rules: Vec<DeviceRule> = Vec::new();
    for rule in records.iter().flat_map(|r| &r.rules) {
        if !earlier_rules.iter().any(|r| r.same_grant(rule)) {
            earlier_rules.push(rule.clone());
        }
    }
    let start = match records.last() {
        None if v1::is_unrestricted(&list) => v1::Start::Unrestricted,
        None => {
            return Err(BindError::Foreign {
                cgroup: cgroup.path.clone(),
                detail: format!(
                    "devices.list has {} rule(s) and is not 'a *:* rwm'",
                    list.lines().count()
                ),
            })
        }
        Some(previous) if rules::v1_list_matches(&list, &previous.rules) => {
            v1::Start::Exactly(&previous.rules)
        }
        // Two committed generations: an agent died between recording a replacement and
        // finishing its writes, so the list is somewhere between their rules.
        Some(_) if records.len() > 1 => v1::Start::Interrupted(&earlier_rules),
        Some(_) => {
            return Err(BindError::Drifted {
                cgroup: cgroup.path.clone(),
            })
        }
    };
    // The record goes first: if this agent dies while writing rules, the next one finds the
    // cgroup recorded as ours (and drifted), and `unbind` can clear it.
    let policy = v2::Policy::load(record, None)?;
    let dir = registry.new_generation(entry)?;
    if let Err(error) = policy.pin_maps(&dir) {
        let _ = registry::remove_generation(&dir);
        return Err(error);
    }
    if let Err(error) = v1::apply(cgroup, start, &binding.rules) {
        let _ = registry::remove_generation(&dir);
        return Err(error);
    }
    Ok(dir)
}

/// The bindings nvbind holds in `bpffs`, each checked against the kernel.
pub fn list(bpffs: &Path) -> Result<Vec<BindingStatus>, BindError> {
    require_root()?;
    // Read-only: creates nothing, and takes the registry's lock shared.
    let Some(registry) = Registry::open_to_read(bpffs)? else {
        return Ok(Vec::new());
    };
    let mut listed = Vec::new();
    for entry in registry.entries()? {
        // One unreadable entry must not hide the others.
        match status_of(&entry) {
            Ok(Some(status)) => listed.push(status),
            Ok(None) => {}
            Err(e) => log::warn!("{}: {e} (`unbind --all` removes it)", entry.dir.display()),
        }
    }
    Ok(listed)
}

/// The binding of one cgroup (by its path), if nvbind holds one.
pub fn binding_of(cgroup: &Path, bpffs: &Path) -> Result<Option<BindingStatus>, BindError> {
    let wanted = std::fs::canonicalize(cgroup).unwrap_or_else(|_| cgroup.to_path_buf());
    Ok(list(bpffs)?
        .into_iter()
        .find(|s| s.binding.cgroup == wanted))
}

fn status_of(entry: &Entry) -> Result<Option<BindingStatus>, BindError> {
    let Some(newest) = entry.newest_committed() else {
        return Ok(None);
    };
    let binding = registry::read_record(&newest.dir)?;
    let cgroup = Cgroup::recorded(&binding);
    let mut status = BindingStatus {
        state: BindingState::Enforced,
        pinned_at: newest.dir.clone(),
        program_id: None,
        ancestor_device_programs: None,
        container_id: crate::identity::container_id(&binding.cgroup.to_string_lossy()),
        binding,
    };
    if !cgroup.still_exists() {
        status.state = BindingState::CgroupRemoved;
        return Ok(Some(status));
    }
    match cgroup.hierarchy {
        Hierarchy::V2 => {
            let program = v2::pinned_program_id(&newest.dir.join("link")).ok();
            status.program_id = program;
            let file = v2::open_cgroup(&cgroup.path)?;
            let query = |effective| {
                bpf::device_programs(file.as_fd(), effective).map_err(|e| {
                    BindError::Kernel(format!("cannot query {}: {e}", cgroup.path.display()))
                })
            };
            let direct = query(false)?;
            let effective = query(true)?;
            status.ancestor_device_programs =
                Some(effective.iter().filter(|id| !direct.contains(id)).count());
            // The rules the kernel holds must be the ones recorded.
            let mut recorded: Vec<_> = status
                .binding
                .rules
                .iter()
                .map(|r| (r.key(), r.access_bits()))
                .collect();
            recorded.sort();
            let pinned = v2::read_pinned_rules(&newest.dir.join("rules")).ok();
            status.state = if program.is_none_or(|id| !direct.contains(&id)) {
                BindingState::Detached
            } else if pinned.as_ref() != Some(&recorded) {
                BindingState::Drifted
            } else if entry.committed().count() > 1 {
                BindingState::Replacing
            } else {
                BindingState::Enforced
            };
        }
        Hierarchy::V1 => {
            let list = v1::read_list(&cgroup)?;
            if !rules::v1_list_matches(&list, &status.binding.rules) {
                status.state = if entry.committed().count() > 1 {
                    BindingState::Replacing
                } else {
                    BindingState::Drifted
                };
            }
        }
    }
    Ok(Some(status))
}

/// Which bindings `unbind` removes.
pub enum UnbindTarget {
    /// The binding of this cgroup (matched by the path it was bound with, so that a removed
    /// cgroup's left-over pins can be cleared too).
    Cgroup(PathBuf),
    /// The bindings of the container whose id starts with this (lower-case hexadecimal): its
    /// cgroups in either hierarchy, found by the recorded paths (so a container that has
    /// exited can be unbound too).
    Container(String),
    All,
}

/// Removes nvbind's bindings: the v2 program is detached, the v1 cgroup is unrestricted again.
/// Returns what was removed.
pub fn unbind(target: &UnbindTarget, bpffs: &Path) -> Result<Vec<Binding>, BindError> {
    require_root()?;
    let wanted = match target {
        UnbindTarget::Cgroup(path) => Some(std::fs::canonicalize(path).unwrap_or(path.clone())),
        // Before the registry is opened here: finding the container's cgroups reads it.
        UnbindTarget::Container(prefix) => return unbind_container(prefix, bpffs),
        UnbindTarget::All => None,
    };
    let registry = Registry::open(bpffs)?;
    let mut removed = Vec::new();
    for entry in registry.entries()? {
        // Half-made entries (no committed generation) are cleared along the way.
        let binding = match entry.newest_committed() {
            Some(generation) => match registry::read_record(&generation.dir) {
                Ok(binding) => Some(binding),
                // Unreadable: only `--all` removes it (its cgroup is unknown).
                Err(e) if wanted.is_some() => {
                    log::warn!("{}: {e}", entry.dir.display());
                    continue;
                }
                Err(_) => None,
            },
            None => None,
        };
        let selected = match (&wanted, &binding) {
            (None, _) => true,
            (Some(path), Some(b)) => b.cgroup == *path,
            (Some(_), None) => false,
        };
        if !selected {
            continue;
        }
        if let Some(b) = &binding {
            if b.hierarchy == Hierarchy::V1 {
                let cgroup = Cgroup::recorded(b);
                if cgroup.still_exists() {
                    v1::release(&cgroup)?;
                }
            }
        }
        for generation in &entry.generations {
            registry::remove_generation(&generation.dir)?;
        }
        registry::remove_entry_if_empty(&entry.dir);
        removed.extend(binding);
    }
    if removed.is_empty() {
        if let Some(path) = wanted {
            return Err(BindError::NotBound(path));
        }
    }
    Ok(removed)
}

/// Unbinds every cgroup of the one container whose id starts with `prefix`.
fn unbind_container(prefix: &str, bpffs: &Path) -> Result<Vec<Binding>, BindError> {
    let bound: Vec<(String, PathBuf)> = list(bpffs)?
        .into_iter()
        .filter_map(|s| Some((s.container_id?, s.binding.cgroup)))
        .filter(|(id, _)| id.starts_with(prefix))
        .collect();
    let ids: std::collections::BTreeSet<&str> = bound.iter().map(|(id, _)| id.as_str()).collect();
    if ids.len() > 1 {
        return Err(containers::ContainerError::Ambiguous {
            prefix: prefix.to_string(),
            ids: ids
                .iter()
                .map(|id| &id[..12])
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into());
    }
    if bound.is_empty() {
        return Err(BindError::NoContainerBinding(prefix.to_string()));
    }
    let mut removed = Vec::new();
    for (_, cgroup) in bound {
        removed.extend(unbind(&UnbindTarget::Cgroup(cgroup), bpffs)?);
    }
    Ok(removed)
}

/// "0 (0000:01:00.0), 2 (0000:03:00.0)".
pub fn gpu_list(gpus: &[BoundGpu]) -> String {
    gpus.iter()
        .map(|g| format!("{} ({})", g.index, g.pci_address))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A binding for people: the cgroup, the GPUs, then one rule per line.
pub fn render_plan(binding: &Binding, verb: &str) -> String {
    let mut out = format!(
        "{} ({}) {verb} GPU {}:\n",
        binding.cgroup.display(),
        binding.hierarchy,
        binding
            .gpus
            .iter()
            .map(|g| format!("{} {} ({})", g.index, g.name, g.pci_address))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for rule in &binding.rules {
        out.push_str(&format!("  {rule}\n"));
    }
    out.push_str("  everything else: denied at open()\n");
    out
}

/// The `bindings` listing for people.
pub fn render_list(listed: &[BindingStatus]) -> String {
    if listed.is_empty() {
        return "no bindings\n".into();
    }
    let mut out = String::new();
    for status in listed {
        let state = serde_json::to_value(status.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}  [{}]  {}  GPUs {}  {} rules",
            status.binding.cgroup.display(),
            state,
            status.binding.hierarchy,
            gpu_list(&status.binding.gpus),
            status.binding.rules.len()
        ));
        if let Some(id) = status.program_id {
            out.push_str(&format!("  program {id}"));
        }
        if let Some(id) = &status.container_id {
            out.push_str(&format!("  container {}", &id[..12]));
        }
        out.push('\n');
    }
    out
}
