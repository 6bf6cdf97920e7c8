//! What `bind` is asked to bind, as the command line and the daemon's API name it: a cgroup
//! path, a process, or a container id.

use std::path::PathBuf;

use super::{containers, BindError, Cgroup, Hierarchy};

/// A binding's target as given.
#[derive(Debug, Clone)]
pub enum Target {
    Cgroup(PathBuf),
    Pid(u32),
    /// A container id or a prefix of one.
    Container(String),
}

/// The cgroup a target names, what to call it in messages, and a process in it to look into
/// the container through (if it has one).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub cgroup: Cgroup,
    pub described: String,
    pub pid: Option<u32>,
}

impl Target {
    /// Finds the cgroup; `prefer` picks the hierarchy for a process or container on a hybrid
    /// host (a cgroup path names its own).
    pub fn resolve(&self, prefer: Option<Hierarchy>) -> Result<Resolved, BindError> {
        Ok(match self {
            Target::Cgroup(path) => {
                let cgroup = Cgroup::from_path(path)?;
                Resolved {
                    // A container's cgroup: a process anywhere in it (Podman keeps them in a
                    // child). Any other: one of its own, not of some container below it.
                    pid: if containers::names_a_container(&cgroup.path) {
                        containers::a_process_in(&cgroup.path)
                    } else {
                        containers::a_process_directly_in(&cgroup.path)
                    },
                    described: format!("cgroup {}", cgroup.path.display()),
                    cgroup,
                }
            }
            Target::Pid(pid) => Resolved {
                cgroup: Cgroup::of_pid(*pid, prefer)?,
                described: format!("process {pid}"),
                pid: Some(*pid),
            },
            Target::Container(id) => {
                let container = containers::find(id, prefer)?;
                Resolved {
                    pid: containers::a_process_in(&container.cgroup.path),
                    described: format!("container {}", &container.id[..12]),
                    cgroup: container.cgroup,
                }
            }
        })
    }
}
