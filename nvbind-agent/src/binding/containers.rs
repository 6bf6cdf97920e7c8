//! Binding by container: the cgroup a container id names, the process to look into, and the
//! GPUs the container was started with (so that a binding does not take them all away).
//!
//! Engines name a container's cgroup after its id (see [`crate::identity::container_id`]), in
//! the unified hierarchy and in the v1 devices hierarchy alike, so a container is found by
//! walking the hierarchies that can restrict devices, without asking its engine: Docker,
//! Podman, containerd and CRI-O are found the same way, running or not.

use std::{
    collections::BTreeSet,
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use thiserror::Error;

use super::{cdi, cgroup, Cgroup, CgroupError, Hierarchy};
use crate::{
    gpu::GpuInfo,
    identity::{container_id_of_component, container_id_prefix},
};

/// How deep below a hierarchy's root a container's cgroup may be: Kubernetes' systemd layout
/// (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podX.slice/cri-containerd-ID.scope`)
/// is 4 deep, rootless Podman's 5, a kind node's pods (Kubernetes inside a Docker container) 7.
const MAX_DEPTH: usize = 12;
/// At most this many cgroup directories are visited in one search (a busy Kubernetes node has
/// thousands): a tree beyond it is an error, not a partial answer.
const MAX_DIRS: usize = 100_000;
/// At most this many entries of a container's `/dev` (or `/dev/dri`) are looked at.
const MAX_DEV_ENTRIES: usize = 4096;
/// `statfs` magic numbers (linux/magic.h) of the filesystems a container's `/dev` is made of
/// (devtmpfs is a tmpfs).
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("{0}")]
    BadId(String),
    #[error(
        "no container with id {0}: give the id `podman ps --no-trunc` or `docker ps --no-trunc` \
         shows (a container's cgroup is named after it; is the container running?)"
    )]
    NotFound(String),
    #[error("container id {prefix} is ambiguous: it starts {ids}; give more of it")]
    Ambiguous { prefix: String, ids: String },
    #[error(
        "container {id} has no cgroup in {hierarchy} (it is in {found}): leave --hierarchy out, \
         or bind its cgroup by path"
    )]
    NotInHierarchy {
        id: String,
        hierarchy: Hierarchy,
        found: String,
    },
    #[error(
        "container {id} has {count} cgroups in {hierarchy} ({paths}): one of them was made to \
         look like it; bind the right one by path with --cgroup"
    )]
    SeveralCgroups {
        id: String,
        hierarchy: Hierarchy,
        count: usize,
        paths: String,
    },
    #[error(
        "{0} has more than {MAX_DIRS} cgroups: the container search gave up (bind the \
         container's cgroup by path with --cgroup)"
    )]
    TooManyCgroups(PathBuf),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// A container's own cgroup directory in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The whole container id (lower case).
    pub id: String,
    pub hierarchy: Hierarchy,
    /// The cgroup directory.
    pub dir: PathBuf,
    /// Its path below the hierarchy's root, as `/proc/PID/cgroup` shows it.
    pub rel: String,
}

/// Every container whose id starts with `prefix` (lower-case hexadecimal), in every
/// hierarchy that can restrict devices: a container usually appears twice on a hybrid host.
/// Containers inside containers (Docker in Docker, a kind node's pods) are found too.
pub fn search(prefix: &str) -> Result<Vec<Found>, ContainerError> {
    let mut found = Vec::new();
    for (hierarchy, root) in cgroup::device_hierarchies()? {
        search_below(&root, hierarchy, prefix, &mut found)?;
    }
    Ok(found)
}

/// [`search`] in one hierarchy mounted at `root`.
fn search_below(
    root: &Path,
    hierarchy: Hierarchy,
    prefix: &str,
    found: &mut Vec<Found>,
) -> Result<(), ContainerError> {
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            // cgroupfs has no symlinks; a directory entry's type needs no stat.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            visited += 1;
            if visited > MAX_DIRS {
                return Err(ContainerError::TooManyCgroups(root.to_path_buf()));
            }
            let path = entry.path();
            if let Some(id) = container_id_of_component(&entry.file_name().to_string_lossy()) {
                if id.starts_with(prefix) {
                    let rel = path.strip_prefix(root).unwrap_or(&path);
                    found.push(Found {
                        id,
                        hierarchy,
                        rel: format!("/{}", rel.display()),
                        dir: path.clone(),
                    });
                }
            }
            if depth + 1 < MAX_DEPTH {
                stack.push((path, depth + 1));
            }
        }
    }
    Ok(())
}

/// A container found for binding.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub cgroup: Cgroup,
}

/// The one container `given` (an id or a prefix of one) names, and its cgroup in `prefer`'s
/// hierarchy; without a preference, its unified (v2) cgroup where it has one, as for a
/// process (`Cgroup::of_pid`).
pub fn find(given: &str, prefer: Option<Hierarchy>) -> Result<Container, ContainerError> {
    let prefix = container_id_prefix(given).map_err(ContainerError::BadId)?;
    let found = search(&prefix)?;
    let ids: BTreeSet<&str> = found.iter().map(|f| f.id.as_str()).collect();
    match ids.len() {
        0 => return Err(ContainerError::NotFound(prefix)),
        1 => {}
        _ => {
            return Err(ContainerError::Ambiguous {
                prefix,
                ids: ids
                    .iter()
                    .map(|id| &id[..12])
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
    // One container has one cgroup per hierarchy. Another directory named after the same id
    // (a user can make one in a cgroup subtree delegated to them) must not be taken for it.
    for hierarchy in [Hierarchy::V2, Hierarchy::V1] {
        let same: Vec<&Found> = found.iter().filter(|f| f.hierarchy == hierarchy).collect();
        if same.len() > 1 {
            return Err(ContainerError::SeveralCgroups {
                id: same[0].id[..12].to_string(),
                hierarchy,
                count: same.len(),
                paths: same
                    .iter()
                    .map(|f| crate::identity::printable_within(&f.rel, 200))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let pick = |h: Hierarchy| found.iter().find(|f| f.hierarchy == h);
    let chosen = match prefer {
        Some(h) => pick(h).ok_or_else(|| ContainerError::NotInHierarchy {
            id: found[0].id.clone(),
            hierarchy: h,
            found: found
                .iter()
                .map(|f| f.hierarchy.to_string())
                .collect::<Vec<_>>()
                .join(" and "),
        })?,
        None => pick(Hierarchy::V2).unwrap_or(&found[0]),
    };
    Ok(Container {
        id: chosen.id.clone(),
        cgroup: Cgroup::from_path(&chosen.dir)?,
    })
}

/// Whether a cgroup directory is a container's own (its name holds the container's id).
pub fn names_a_container(dir: &Path) -> bool {
    dir.file_name()
        .is_some_and(|name| container_id_of_component(&name.to_string_lossy()).is_some())
}

/// A process directly in the cgroup `dir`.
pub fn a_process_directly_in(dir: &Path) -> Option<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .ok()?
        .lines()
        .find_map(|l| l.trim().parse::<u32>().ok())
}

/// A process in the cgroup `dir` or below it (Podman's systemd layout keeps the container's
/// processes in a `container` child), to look into the container through.
pub fn a_process_in(dir: &Path) -> Option<u32> {
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > 1024 {
            return None;
        }
        if let Some(pid) = a_process_directly_in(&dir) {
            return Some(pid);
        }
        if depth < MAX_DEPTH {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
    }
    None
}

/// What a container was given of the host's GPUs when it started: the GPU device nodes in its
/// own `/dev`, the GPUs they belong to, and the CDI devices (from the specs the engines read)
/// whose nodes it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenGpus {
    /// Indices of the GPUs with an own node in the container's `/dev`, sorted.
    pub gpus: Vec<usize>,
    /// Those nodes, as paths inside the container.
    pub nodes: Vec<String>,
    /// `kind=name` of the CDI devices that describe what it has (the largest that fit).
    pub cdi_devices: Vec<String>,
}

/// The GPUs the container process `pid` lives in was started with, or `None` when `pid` is
/// not in a container of its own (it shares the host's root, whose `/dev` has every node) or
/// has no GPU node. The container's files are hostile: nothing in it is followed through a
/// symlink, and at most [`MAX_DEV_ENTRIES`] entries are read per directory.
pub fn given_gpus(pid: u32, gpus: &[GpuInfo], cdi_dirs: &[&Path]) -> Option<GivenGpus> {
    let namespace = |who: &str, kind: &str| fs::read_link(format!("/proc/{who}/ns/{kind}")).ok();
    let theirs = |kind: &str| namespace(&pid.to_string(), kind);
    let (Some(their_mounts), Some(their_users)) = (theirs("mnt"), theirs("user")) else {
        // Gone: nothing can be said.
        return None;
    };
    if Some(&their_mounts) == namespace("self", "mnt").as_ref() {
        // It sees the host's mounts: its /dev is the host's, not one it was given.
        return None;
    }
    if Some(&their_users) != namespace("self", "user").as_ref() {
        // A user namespace of its own (a rootless container): its owner can serve its files
        // (FUSE) and make any look-up hang, so nvbind does not look into them.
        log::debug!("process {pid} is in a user namespace of its own: its /dev is not read");
        return None;
    }
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    let present = match container_dev_nodes(&proc_root) {
        Ok(nodes) => nodes,
        Err(e) => {
            log::debug!("cannot read the /dev of process {pid}: {e}");
            return None;
        }
    };
    let mut given_gpus = Vec::new();
    let mut nodes = Vec::new();
    for gpu in gpus {
        for own in gpu.device_nodes.iter().filter(|n| !n.shared) {
            if let Some((path, _)) = present
                .iter()
                .find(|(_, numbers)| *numbers == (own.major, own.minor))
            {
                if !given_gpus.contains(&gpu.index) {
                    given_gpus.push(gpu.index);
                }
                nodes.push(path.clone());
            }
        }
    }
    if given_gpus.is_empty() {
        return None;
    }
    given_gpus.sort_unstable();
    nodes.sort();
    let numbers: BTreeSet<(u32, u32)> = present.iter().map(|(_, n)| *n).collect();
    Some(GivenGpus {
        gpus: given_gpus,
        nodes,
        cdi_devices: cdi::devices_within(&cdi::installed_devices(cdi_dirs), &numbers),
    })
}

/// The character devices in `/dev` and `/dev/dri` below a process's root (`/proc/PID/root`):
/// (path inside the container, (major, minor)).
fn container_dev_nodes(proc_root: &Path) -> std::io::Result<Vec<(String, (u32, u32))>> {
    // The magic link to the process's root is the kernel's, and is followed; below it nothing
    // is (a container's `/dev` could be a symlink to anywhere on the host).
    let root = rustix::fs::open(
        proc_root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dev = open_dir_below(&root, "dev")?;
    // Engines give a container a tmpfs /dev; anything else is not read.
    let kind = rustix::fs::fstatfs(&dev)?.f_type;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    if !matches!(kind as i64, TMPFS_MAGIC | RAMFS_MAGIC) {
        return Err(std::io::Error::other(format!(
            "its /dev is not a tmpfs (filesystem magic {kind:#x})"
        )));
    }
    let mut found = char_devices(&dev, "/dev")?;
    if let Ok(dri) = open_dir_below(&dev, "dri") {
        found.extend(char_devices(&dri, "/dev/dri")?);
    }
    Ok(found)
}

fn open_dir_below(dir: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The character devices directly in `dir` (shown as under `shown_as`).
fn char_devices(dir: &OwnedFd, shown_as: &str) -> std::io::Result<Vec<(String, (u32, u32))>> {
    let mut found = Vec::new();
    for entry in Dir::read_from(dir)?.take(MAX_DEV_ENTRIES) {
        let entry = entry?;
        // Device nodes have plain ASCII names; anything else is not a GPU's node, and is
        // not printed.
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name == "." || name == ".." || !name.bytes().all(|b| b.is_ascii_graphic()) {
            continue;
        }
        let name = name.to_string();
        let Ok(stat) = rustix::fs::statat(dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice {
            let rdev = stat.st_rdev;
            found.push((
                format!(
                    "{shown_as}/{}",
                    crate::identity::printable_within(&name, 64)
                ),
                (rustix::fs::major(rdev), rustix::fs::minor(rdev)),
            ));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_on_the_hosts_root_has_no_container_gpus() {
        // This test's own process shares the host's root: whatever /dev holds, it was not
        // given GPUs as a container.
        let gpus = [crate::gpu::test_gpu(
            Path::new("/sys/x"),
            crate::gpu::Vendor::Amd,
            "amdgpu",
        )];
        assert_eq!(given_gpus(std::process::id(), &gpus, &[]), None);
        assert_eq!(given_gpus(u32::MAX, &gpus, &[]), None);
    }

    #[test]
    fn the_search_finds_nothing_for_an_id_no_container_has() {
        // 64 digits no engine would pick; the hierarchies of this machine are walked.
        let found = search(&"f".repeat(64)).expect("search");
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn bad_ids_are_refused_before_any_search() {
        let err = find("my-game", None).expect_err("a name");
        assert!(matches!(err, ContainerError::BadId(_)), "{err:?}");
    }
}
