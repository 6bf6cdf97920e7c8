//! Which cgroup a path or a process names, and in which hierarchy it lives.
//!
//! Nothing here assumes where cgroupfs is mounted: a path is classified by `statfs` (cgroup2 or a
//! v1 hierarchy) and by the mount table, and a process's cgroup comes from `/proc/PID/cgroup`
//! joined to the mount point of the matching hierarchy: hybrid hosts mount cgroup2 at
//! `/sys/fs/cgroup/unified`, a typical systemd host at `/sys/fs/cgroup`, a container somewhere
//! else again.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `statfs` magic numbers (linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// The cgroup hierarchy a binding is enforced in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Hierarchy {
    /// The v1 `devices` controller (`devices.allow` / `devices.deny`).
    V1,
    /// The unified hierarchy (a `cgroup_device` eBPF program).
    V2,
}

impl std::fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hierarchy::V1 => "cgroup v1 (devices controller)",
            Hierarchy::V2 => "cgroup v2",
        })
    }
}

/// A cgroup that can be bound: a directory below the root of its hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// The cgroup's directory, canonical.
    pub path: PathBuf,
    pub hierarchy: Hierarchy,
    /// Where the hierarchy is mounted.
    pub mount_point: PathBuf,
    /// The directory's inode number: for cgroup v2 this is the kernel's cgroup id.
    pub id: u64,
}

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cgroup {0}: no such directory (create it with mkdir, or check the path)")]
    Missing(PathBuf),
    #[error(
        "{0} is not a cgroup: it is not on a cgroup filesystem (cgroup2 is usually mounted at \
         /sys/fs/cgroup or /sys/fs/cgroup/unified; see `findmnt -t cgroup2,cgroup`)"
    )]
    NotCgroupfs(PathBuf),
    #[error("{0} is not a cgroup directory (it has no cgroup.procs)")]
    NotCgroupDir(PathBuf),
    #[error(
        "{path} is in the cgroup v1 '{controllers}' hierarchy, which cannot restrict devices: use \
         the cgroup under the devices hierarchy{hint}"
    )]
    NotDevicesHierarchy {
        path: PathBuf,
        controllers: String,
        hint: String,
    },
    #[error(
        "refusing to bind the root cgroup {0}: it would restrict every process on the host; bind \
         a child cgroup (for example a systemd scope: systemd-run --scope ...)"
    )]
    Root(PathBuf),
    #[error(
        "process {pid} is in the root cgroup {root}, which nvbind will not restrict: start it \
         in a cgroup of its own (for example with systemd-run --scope) and bind that"
    )]
    PidInRoot { pid: u32, root: PathBuf },
    #[error("no process with pid {0} (is it still running?)")]
    NoProcess(u32),
    #[error("process {pid} is not in any {hierarchy} cgroup on this host{why}")]
    NoCgroupForPid {
        pid: u32,
        hierarchy: String,
        why: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One cgroup mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
struct CgroupMount {
    /// The directory of the hierarchy shown at the mount point (`/` unless a subtree is mounted).
    root: PathBuf,
    mount_point: PathBuf,
    hierarchy: Hierarchy,
    /// For v1: the controllers (`devices`, `cpu,cpuacct`, `name=systemd`).
    controllers: Vec<String>,
}

impl CgroupMount {
    fn has_devices(&self) -> bool {
        self.hierarchy == Hierarchy::V2 || self.controllers.iter().any(|c| c == "devices")
    }
}

fn cgroup_mounts() -> Result<Vec<CgroupMount>, CgroupError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// Where the whole cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on systemd hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), if it is.
pub fn cgroup2_mount() -> Option<PathBuf> {
    cgroup_mounts()
        .ok()?
        .into_iter()
        .find(|m| m.hierarchy == Hierarchy::V2 && m.root == Path::new("/"))
        .map(|m| m.mount_point)
}

/// Where each hierarchy that can restrict devices is mounted whole (the unified hierarchy, and
/// the v1 hierarchy with the devices controller), v2 first.
pub(super) fn device_hierarchies() -> Result<Vec<(Hierarchy, PathBuf)>, CgroupError> {
    let mut found: Vec<(Hierarchy, PathBuf)> = cgroup_mounts()?
        .into_iter()
        .filter(|m| m.has_devices() && m.root == Path::new("/"))
        .map(|m| (m.hierarchy, m.mount_point))
        .collect();
    found.sort_by_key(|(h, _)| *h == Hierarchy::V1);
    found.dedup_by(|a, b| a.0 == b.0);
    Ok(found)
}

/// A cgroup mount from one mountinfo line (`proc(5)`): `id parent maj:min root mount_point opts
/// [optional...] - fstype source super_opts`.
fn parse_mountinfo_line(line: &str) -> Option<CgroupMount> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let mut after = after.split(' ');
    let fstype = after.next()?;
    let _source = after.next()?;
    let super_opts = after.next().unwrap_or("");
    let hierarchy = match fstype {
        "cgroup2" => Hierarchy::V2,
        "cgroup" => Hierarchy::V1,
        _ => return None,
    };
    let controllers = super_opts
        .split(',')
        .filter(|o| {
            !matches!(
                *o,
                "rw" | "ro" | "relatime" | "noatime" | "nosuid" | "nodev" | "noexec"
            )
        })
        .map(str::to_string)
        .collect();
    Some(CgroupMount {
        root: PathBuf::from(unescape_mountinfo(fields.get(3)?)),
        mount_point: PathBuf::from(unescape_mountinfo(fields.get(4)?)),
        hierarchy,
        controllers,
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(code) = u8::from_str_radix(digits, 8) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cgroup {
    /// The cgroup a path names. Refuses the root of a hierarchy and v1 hierarchies without the
    /// devices controller.
    pub fn from_path(path: &Path) -> Result<Cgroup, CgroupError> {
        let path = fs::canonicalize(path).map_err(|_| CgroupError::Missing(path.into()))?;
        let meta = fs::metadata(&path).map_err(|source| CgroupError::Read {
            path: path.clone(),
            source,
        })?;
        let magic = super::filesystem_magic(&path).map_err(|source| CgroupError::Read {
            path: path.clone(),
            source,
        })?;
        let hierarchy = match magic {
            CGROUP2_SUPER_MAGIC => Hierarchy::V2,
            CGROUP_SUPER_MAGIC => Hierarchy::V1,
            _ => return Err(CgroupError::NotCgroupfs(path)),
        };
        if !meta.is_dir() || !path.join("cgroup.procs").exists() {
            return Err(CgroupError::NotCgroupDir(path));
        }
        let mounts = cgroup_mounts()?;
        // The mount the path lives under: the longest mount point that is a prefix of it.
        let mount = mounts
            .iter()
            .filter(|m| m.hierarchy == hierarchy && path.starts_with(&m.mount_point))
            .max_by_key(|m| m.mount_point.components().count())
            .ok_or_else(|| CgroupError::NotCgroupfs(path.clone()))?;
        if !mount.has_devices() {
            let devices_mount = mounts
                .iter()
                .find(|m| m.has_devices() && m.hierarchy == Hierarchy::V1);
            let hint = match (devices_mount, path.strip_prefix(&mount.mount_point)) {
                (Some(d), Ok(rel)) => format!(" ({})", d.mount_point.join(rel).display()),
                _ => String::new(),
            };
            return Err(CgroupError::NotDevicesHierarchy {
                controllers: mount.controllers.join(","),
                path,
                hint,
            });
        }
        if path == mount.mount_point {
            return Err(CgroupError::Root(path));
        }
        Ok(Cgroup {
            id: meta.ino(),
            hierarchy,
            mount_point: mount.mount_point.clone(),
            path,
        })
    }

    /// The cgroup a process is in. `prefer` picks the hierarchy on hybrid hosts; without it,
    /// the v2 cgroup when the process is in one below the root, else its v1 devices cgroup.
    pub fn of_pid(pid: u32, prefer: Option<Hierarchy>) -> Result<Cgroup, CgroupError> {
        let proc_path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = match fs::read_to_string(&proc_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CgroupError::NoProcess(pid))
            }
            Err(source) => {
                return Err(CgroupError::Read {
                    path: proc_path,
                    source,
                })
            }
        };
        let mounts = cgroup_mounts()?;
        let candidates: Vec<(Hierarchy, PathBuf)> = text
            .lines()
            .filter_map(|line| {
                // `hierarchy-id:controllers:path`; the path may itself contain ':'.
                let mut parts = line.splitn(3, ':');
                let id = parts.next()?;
                let controllers = parts.next()?;
                let path = parts.next()?;
                let (hierarchy, mount) = if id == "0" && controllers.is_empty() {
                    (
                        Hierarchy::V2,
                        mounts.iter().find(|m| m.hierarchy == Hierarchy::V2)?,
                    )
                } else if controllers.split(',').any(|c| c == "devices") {
                    (
                        Hierarchy::V1,
                        mounts
                            .iter()
                            .find(|m| m.hierarchy == Hierarchy::V1 && m.has_devices())?,
                    )
                } else {
                    return None;
                };
                Some((hierarchy, join_below_mount(mount, Path::new(path))?))
            })
            .collect();
        let pick = |h: Hierarchy| candidates.iter().find(|(ch, _)| *ch == h);
        let chosen = match prefer {
            Some(h) => pick(h),
            None => candidates
                .iter()
                .find(|(h, p)| {
                    *h == Hierarchy::V2
                        && mounts
                            .iter()
                            .all(|m| m.hierarchy != Hierarchy::V2 || m.mount_point != *p)
                })
                .or_else(|| pick(Hierarchy::V1))
                .or_else(|| pick(Hierarchy::V2)),
        };
        match chosen {
            Some((_, path)) => Cgroup::from_path(path).map_err(|e| match e {
                CgroupError::Root(root) => CgroupError::PidInRoot { pid, root },
                other => other,
            }),
            None => Err(CgroupError::NoCgroupForPid {
                pid,
                hierarchy: prefer.map_or("device-capable".into(), |h| h.to_string()),
                why: if candidates.is_empty() {
                    " (neither cgroup2 nor the v1 devices controller is mounted where this \
                     process can see it)"
                        .into()
                } else {
                    String::new()
                },
            }),
        }
    }

    /// `devices.list` etc. for v1; a file of this cgroup.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The cgroup a binding was made for, as its record names it (which may since have been
    /// removed: see [`Cgroup::still_exists`]).
    pub(super) fn recorded(binding: &super::Binding) -> Cgroup {
        Cgroup {
            path: binding.cgroup.clone(),
            hierarchy: binding.hierarchy,
            mount_point: PathBuf::new(),
            id: binding.cgroup_id,
        }
    }

    /// Whether the directory still exists and is still the same cgroup (not removed and
    /// recreated under the same name).
    pub fn still_exists(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.id)
    }
}

/// A `/proc/PID/cgroup` path joined to where its hierarchy is mounted (accounting for a mount
/// that shows only a subtree, as inside a container).
fn join_below_mount(mount: &CgroupMount, cgroup: &Path) -> Option<PathBuf> {
    let rel = cgroup.strip_prefix(&mount.root).ok()?;
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return None;
    }
    Some(mount.mount_point.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_cgroup_mounts() {
        let v1 = parse_mountinfo_line(
            "35 25 0:31 / /sys/fs/cgroup/devices rw,relatime shared:14 - cgroup cgroup rw,devices",
        )
        .expect("a v1 mount");
        assert_eq!(v1.hierarchy, Hierarchy::V1);
        assert_eq!(v1.mount_point, Path::new("/sys/fs/cgroup/devices"));
        assert!(v1.has_devices());
        let cpu = parse_mountinfo_line(
            "33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        )
        .expect("a v1 mount");
        assert!(!cpu.has_devices());
        assert_eq!(cpu.controllers, ["cpu", "cpuacct"]);
        let v2 = parse_mountinfo_line(
            "40 25 0:35 /kubepods /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
        )
        .expect("a v2 mount");
        assert_eq!(v2.hierarchy, Hierarchy::V2);
        assert_eq!(v2.root, Path::new("/kubepods"));
        assert!(parse_mountinfo_line("22 1 0:21 / /proc rw - proc proc rw").is_none());
    }

    #[test]
    fn escaped_mount_points_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/mnt/my\040cgroups"), "/mnt/my cgroups");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn proc_paths_join_below_a_subtree_mount() {
        let mount = CgroupMount {
            root: "/kubepods".into(),
            mount_point: "/sys/fs/cgroup".into(),
            hierarchy: Hierarchy::V2,
            controllers: vec![],
        };
        assert_eq!(
            join_below_mount(&mount, Path::new("/kubepods/pod1/ctr")),
            Some(PathBuf::from("/sys/fs/cgroup/pod1/ctr"))
        );
        assert_eq!(join_below_mount(&mount, Path::new("/elsewhere")), None);
    }

    #[test]
    fn a_path_outside_cgroupfs_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        match Cgroup::from_path(dir.path()) {
            Err(CgroupError::NotCgroupfs(_)) => {}
            other => panic!("expected NotCgroupfs, got {other:?}"),
        }
        match Cgroup::from_path(&dir.path().join("nope")) {
            Err(CgroupError::Missing(_)) => {}
            other => panic!("expected Missing, got {other:?}"),
        }
    }
}
