//! Loading nvbind's eBPF programs, attaching what the running kernel offers, and reading back what
//! they gathered. Everything the capture and `doctor` need from the kernel goes through [`Probes`].
//!
//! Split along the eBPF crate's own files: [`load`](self::load) (the object and its load-time
//! settings), the tracepoints (scheduler, process, ioctl, DRM), the DRM kprobes, the present
//! uprobes, the maps, the ring buffer's events, and the programs' costs.

pub mod btf;
mod cost;
mod discovery;
mod drm;
mod events;
pub mod libraries;
mod load;
mod maps;
mod marks;
pub mod opengl;
mod present;
mod selfcheck;
mod steps;
pub mod tracefs;
mod tracepoints;
pub mod vulkan;

use std::{collections::HashSet, path::PathBuf};

use aya::{maps::MapData, maps::RingBuf, Ebpf};
use nvbind_common::TASK_COMM_LEN;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use thiserror::Error;

pub use cost::{BpfStats, ProgramCost};
pub use discovery::{
    SubordinateUids, UserDiscoveries, DEFAULT_MAX_FPS_PER_USER, MAX_MAX_FPS_PER_USER,
    MIN_MAX_FPS_PER_USER,
};
pub use drm::{DrmKprobe, DRM_KPROBES};
pub use events::Event;
pub use load::LoadOptions;
pub use maps::{thread_ids, ExitedThread};
pub use marks::UntrackedCheck;
pub use selfcheck::{FieldCheck, OffsetsChecked};
pub use steps::{LeftOut, SchedStep};
pub use tracepoints::{BtfHook, KernelHooks, Tracepoint, TRACEPOINTS};

use present::UprobePoint;

/// The eBPF object built from `nvbind-ebpf` (see build.rs).
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nvbind-probes.o"));

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error(
        "nvbind-agent needs root to load eBPF programs (CAP_BPF and CAP_PERFMON): run it with sudo"
    )]
    NotRoot,
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error(transparent)]
    MissingObject(#[from] MissingObject),
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("required probe {probe} is unavailable: {reason}")]
    Required { probe: String, reason: String },
    #[error("BTF tracepoints were asked for (--kernel-hooks btf) but cannot be used: {0}")]
    BtfUnavailable(String),
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// This agent was built without its eBPF objects (the probes', and the device policy `bind`
/// loads): said the same way wherever one is needed.
#[derive(Debug, Clone, Copy, Error)]
#[error(
    "this nvbind-agent was built without its eBPF programs (the eBPF toolchain was missing): \
     run `cargo xtask setup` and rebuild"
)]
pub struct MissingObject;

/// Whether a probe is attached, and if not, why and what would fix it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// What is probed: `sched:sched_switch`, `uprobe:/usr/lib/.../libvulkan.so.1:vkQueuePresentKHR`.
    pub name: String,
    /// Probe family: scheduler, ioctl, process, present, drm.
    pub family: Cow<'static, str>,
    /// The eBPF program.
    pub program: Cow<'static, str>,
    /// How it hooks the kernel: `tp_btf` (a BTF tracepoint), `tracepoint` (a classic one),
    /// `kprobe` or `uprobe`.
    #[serde(default)]
    pub hook: Cow<'static, str>,
    /// Why the preferred hook (a BTF tracepoint) is not the one used, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub attached: bool,
    /// Why it is unavailable (absent when attached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What to do about it, when something can be done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The loaded programs, their attachments and their maps.
pub struct Probes {
    ebpf: Ebpf,
    statuses: Vec<ProbeStatus>,
    /// Every uprobe placed, so no point is probed twice.
    uprobe_points: std::collections::HashMap<UprobePoint, aya::programs::uprobe::UProbeLinkId>,
    /// Files whose exported hooks were attached (by dev, inode).
    hooked_files: HashSet<(u64, u64)>,
    /// Library copies hooked because a process of this uid mapped them (see
    /// `attach_process_libraries`: a user's budget).
    copies_by_uid: std::collections::HashMap<u32, usize>,
    /// Library copies hooked for the processes that map them, by (dev, inode): released when
    /// the last of them is gone.
    copies: std::collections::HashMap<(u64, u64), present::HookedCopy>,
    /// When a copy was last refused for the budget, loudly.
    budget_warned_at: Option<std::time::Instant>,
    events: RingBuf<MapData>,
    /// Exited threads of tracked processes (`ThreadExitRecord`s).
    thread_exits: RingBuf<MapData>,
    /// Execs of untracked processes, for the daemon (`ExecNotice`s).
    exec_notices: RingBuf<MapData>,
    /// When the kernel times the programs, and what they cost in that time.
    cost_windows: cost::CostWindows,
    /// The kernel's marks of tracked tids, mapped (`None` when the programs do not use them).
    tid_marks: Option<marks::TidMarks>,
    pub tracefs: PathBuf,
}

/// Whether the agent runs with root privileges.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the embedded object holds programs (false when the build had no eBPF toolchain).
pub fn object_available() -> bool {
    !PROBES_OBJECT.is_empty()
}

/// The NUL-padded `comm` key for a process name (the kernel keeps 15 bytes).
pub fn comm_key(name: &str) -> [u8; TASK_COMM_LEN] {
    let mut key = [0u8; TASK_COMM_LEN];
    let bytes = name.as_bytes();
    let n = bytes.len().min(TASK_COMM_LEN - 1);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

/// A `comm` array as text.
pub fn comm_str(comm: &[u8; TASK_COMM_LEN]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(TASK_COMM_LEN);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl Probes {
    /// A program of the object, as its type (`TracePoint`, `KProbe`, ...).
    fn program<'a, T>(&'a mut self, name: &str) -> Result<&'a mut T, String>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} missing from the object"))?
            .try_into()
            .map_err(|e| format!("{e}"))
    }

    pub fn statuses(&self) -> &[ProbeStatus] {
        &self.statuses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_keys_are_truncated_like_the_kernel() {
        assert_eq!(comm_str(&comm_key("vkcube")), "vkcube");
        assert_eq!(
            comm_str(&comm_key("a-very-long-game-name")),
            "a-very-long-gam"
        );
    }
}
