//! Kernel struct layouts from the running kernel's BTF, for the BTF tracepoints (`tp_btf`).
//!
//! A BTF tracepoint hands its program the kernel's own arguments (`struct task_struct *`), not a
//! record with a stable format. Rust eBPF has no CO-RE relocations, so the field offsets the
//! programs read at are looked up here, at load time, and passed in as globals; when a field is
//! missing or not the expected size the BTF programs are not used (the classic tracepoints are).

use std::path::Path;

use btf_rs::{Btf, Type};
use thiserror::Error;

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum LayoutError {
    #[error(
        "cannot read the kernel's BTF at {path}: {reason} (kernels built with \
         CONFIG_DEBUG_INFO_BTF=y have it)"
    )]
    Unreadable { path: String, reason: String },
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
    #[error("{what} is {found} in the kernel's BTF, {expected} expected")]
    Unexpected {
        what: String,
        found: String,
        expected: String,
    },
}

/// Byte offsets of the `task_struct` fields the scheduler's BTF programs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLayout {
    /// `pid` (the thread id), `pid_t`.
    pub pid: u32,
    /// `tgid` (the process id), `pid_t`. Not read by the programs; it lets the layout be checked
    /// against the kernel's own ids.
    pub tgid: u32,
    /// `comm`, `char[TASK_COMM_LEN]`.
    pub comm: u32,
    /// `exit_state` (`EXIT_ZOMBIE`, `EXIT_DEAD`), `int`.
    pub exit_state: u32,
    /// The CPU the task is on or queued for (`task_cpu()`): `cpu`, or `thread_info.cpu` on
    /// kernels that keep it there.
    pub cpu: u32,
    /// Whether the BTF `sched_process_exit` passes `group_dead` (recent kernels; Linux 6.1's
    /// passes the task only).
    pub exit_group_dead_arg: bool,
}

impl TaskLayout {
    /// The running kernel's layout.
    pub fn from_kernel() -> Result<TaskLayout, LayoutError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// The layout described by a BTF file (a kernel's `vmlinux` BTF).
    pub fn from_file(path: &Path) -> Result<TaskLayout, LayoutError> {
        let btf = Btf::from_file(path).map_err(|e| LayoutError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::resolve(&btf)
    }

    fn resolve(btf: &Btf) -> Result<TaskLayout, LayoutError> {
        let task = named_struct(btf, "task_struct")?;
        let field = |name: &str, size: usize| sized_member(btf, &task, "task_struct", name, size);
        let cpu = match member(btf, &task, "cpu") {
            Some(_) => field("cpu", 4)?,
            None => {
                let (info_offset, info) = member(btf, &task, "thread_info")
                    .ok_or_else(|| LayoutError::Missing("task_struct.cpu".into()))?;
                let Type::Struct(info) = strip(btf, info)? else {
                    return Err(LayoutError::Missing("task_struct.thread_info".into()));
                };
                info_offset + sized_member(btf, &info, "thread_info", "cpu", 4)?
            }
        };
        // The BTF sched_switch must carry prev_state (kernel 5.18): the task's state, read in the
        // task, would already be TASK_RUNNING again for a task woken while it switched out.
        let params = tracepoint_params(btf, "sched_switch")?;
        if params != 4 {
            return Err(LayoutError::Unexpected {
                what: "the sched_switch tracepoint's argument count".into(),
                found: params.to_string(),
                expected: "4 (preempt, prev, next, prev_state: kernel 5.18 or later)".into(),
            });
        }
        Ok(TaskLayout {
            pid: field("pid", 4)?,
            tgid: field("tgid", 4)?,
            comm: field("comm", 16)?,
            exit_state: field("exit_state", 4)?,
            cpu,
            exit_group_dead_arg: tracepoint_params(btf, "sched_process_exit")
                .is_ok_and(|params| params >= 2),
        })
    }
}

/// Byte offsets of the `task_struct` fields that name the process a task's CPU time is blamed on:
/// its process id, its main thread (whose name the process goes by), its parent, when its
/// process started, and whether it is a kernel thread. Needs no BTF tracepoint, only BTF: the
/// scheduler programs read these from the current task whichever hooks they are attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineageLayout {
    /// `tgid`, `pid_t`.
    pub tgid: u32,
    /// `group_leader`, a pointer.
    pub group_leader: u32,
    /// `real_parent`, a pointer.
    pub real_parent: u32,
    /// `start_time`, `u64`: CLOCK_MONOTONIC nanoseconds (the clock of `bpf_ktime_get_ns`).
    pub start_time: u32,
    /// `flags`, `unsigned int` (`PF_KTHREAD`).
    pub flags: u32,
    /// `comm`, `char[TASK_COMM_LEN]`.
    pub comm: u32,
}

impl LineageLayout {
    /// The running kernel's layout.
    pub fn from_kernel() -> Result<LineageLayout, LayoutError> {
        let path = Path::new(VMLINUX_BTF);
        let btf = Btf::from_file(path).map_err(|e| LayoutError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let task = named_struct(&btf, "task_struct")?;
        let field = |name: &str, size: usize| sized_member(&btf, &task, "task_struct", name, size);
        let pointer = std::mem::size_of::<usize>();
        Ok(LineageLayout {
            tgid: field("tgid", 4)?,
            group_leader: field("group_leader", pointer)?,
            real_parent: field("real_parent", pointer)?,
            start_time: field("start_time", 8)?,
            flags: field("flags", 4)?,
            comm: field("comm", 16)?,
        })
    }
}

fn named_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct, LayoutError> {
    btf.resolve_types_by_name(name)
        .ok()
        .into_iter()
        .flatten()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| LayoutError::Missing(format!("struct {name}")))
}

/// A member's byte offset and type, looking inside anonymous structs and unions (the kernel
/// wraps some `task_struct` fields in them).
fn member(btf: &Btf, s: &btf_rs::Struct, name: &str) -> Option<(u32, Type)> {
    for m in &s.members {
        // A bitfield has no byte address to read at.
        if m.bitfield_size().is_some_and(|bits| bits != 0) {
            continue;
        }
        let offset = m.bit_offset() / 8;
        let member_name = btf.resolve_name(m).unwrap_or_default();
        let ty = btf.resolve_chained_type(m).ok()?;
        if member_name == name {
            return Some((offset, ty));
        }
        if member_name.is_empty() {
            if let Type::Struct(inner) | Type::Union(inner) = &ty {
                if let Some((inner_offset, ty)) = member(btf, inner, name) {
                    return Some((offset + inner_offset, ty));
                }
            }
        }
    }
    None
}

/// A member's byte offset, checked to be `size` bytes.
fn sized_member(
    btf: &Btf,
    s: &btf_rs::Struct,
    struct_name: &str,
    name: &str,
    size: usize,
) -> Result<u32, LayoutError> {
    let what = format!("{struct_name}.{name}");
    let (offset, ty) = member(btf, s, name).ok_or_else(|| LayoutError::Missing(what.clone()))?;
    let found = type_size(btf, ty)?;
    if found != size {
        return Err(LayoutError::Unexpected {
            what,
            found: format!("{found} bytes"),
            expected: format!("{size} bytes"),
        });
    }
    Ok(offset)
}

/// Follows typedefs and qualifiers to the type they name.
fn strip(btf: &Btf, mut ty: Type) -> Result<Type, LayoutError> {
    // Bounded: a BTF chain this long is malformed.
    for _ in 0..32 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            _ => return Ok(ty),
        };
        ty = next.map_err(|e| LayoutError::Missing(e.to_string()))?;
    }
    Err(LayoutError::Missing("the end of a type chain".into()))
}

fn type_size(btf: &Btf, ty: Type) -> Result<usize, LayoutError> {
    Ok(match strip(btf, ty)? {
        Type::Int(t) => t.size(),
        Type::Enum(t) => t.size(),
        Type::Enum64(t) => t.size(),
        Type::Struct(t) | Type::Union(t) => t.size(),
        Type::Ptr(_) => std::mem::size_of::<usize>(),
        Type::Array(a) => {
            let element = btf
                .resolve_chained_type(&a)
                .map_err(|e| LayoutError::Missing(e.to_string()))?;
            a.len() * type_size(btf, element)?
        }
        other => {
            return Err(LayoutError::Unexpected {
                what: "a field's type".into(),
                found: other.name().into(),
                expected: "an integer, array, pointer or struct".into(),
            })
        }
    })
}

/// How many arguments a tracepoint passes its BTF programs (the kernel's `btf_trace_<name>`
/// typedef, a pointer to a function taking a context pointer, then the arguments).
fn tracepoint_params(btf: &Btf, tracepoint: &str) -> Result<usize, LayoutError> {
    let name = format!("btf_trace_{tracepoint}");
    let missing = || LayoutError::Missing(format!("typedef {name}"));
    let typedef = btf
        .resolve_types_by_name(&name)
        .ok()
        .and_then(|types| types.into_iter().next())
        .ok_or_else(missing)?;
    let Type::Ptr(ptr) = strip(btf, typedef)? else {
        return Err(missing());
    };
    match btf.resolve_chained_type(&ptr) {
        Ok(Type::FuncProto(proto)) => Ok(proto.parameters.len().saturating_sub(1)),
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's layout, checked against what the kernel itself says about its fields
    /// where user space can see it: the offsets are distinct, inside one `task_struct`, and `pid`
    /// and `tgid` sit side by side (they have since 2.6). The values read through them are
    /// checked against the kernel's own ids by the integration tests, which load the programs.
    #[test]
    fn the_running_kernels_task_layout_is_found() {
        if !Path::new(VMLINUX_BTF).exists() {
            panic!(
                "{VMLINUX_BTF} is missing: this kernel has no BTF, so the BTF tracepoints cannot \
                 be used or tested here"
            );
        }
        let layout = TaskLayout::from_kernel().expect("the kernel's task_struct layout");
        assert_eq!(layout.tgid, layout.pid + 4, "{layout:?}");
        let mut offsets = [
            layout.pid,
            layout.comm,
            layout.exit_state,
            layout.cpu,
            layout.tgid,
        ];
        offsets.sort_unstable();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{layout:?}");
        // task_struct is several kilobytes; thread_info (and its cpu) comes first when present.
        assert!(layout.comm > 64 && layout.comm < 16384, "{layout:?}");
    }

    /// The lineage fields are distinct, inside `task_struct`, and agree with the tracepoint
    /// layout where they overlap.
    #[test]
    fn the_running_kernels_lineage_layout_is_found() {
        let lineage = LineageLayout::from_kernel().expect("the kernel's task_struct lineage");
        let task = TaskLayout::from_kernel().expect("the kernel's task_struct layout");
        assert_eq!((lineage.tgid, lineage.comm), (task.tgid, task.comm));
        let mut offsets = [
            lineage.tgid,
            lineage.group_leader,
            lineage.real_parent,
            lineage.start_time,
            lineage.flags,
            lineage.comm,
        ];
        offsets.sort_unstable();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{lineage:?}");
        assert!(offsets[5] < 16384, "{lineage:?}");
    }

    #[test]
    fn a_file_that_is_not_btf_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, b"not BTF").expect("write");
        let err = TaskLayout::from_file(&path).expect_err("garbage is not BTF");
        assert!(
            err.to_string().contains("cannot read the kernel's BTF"),
            "{err}"
        );
    }
}
