//! The few `bpf(2)` commands binding needs, called directly.
//!
//! aya 0.14 covers most of them, but its loader parses the kernel's whole BTF (several MB) on
//! every load — two thirds of a bind's time for a 33-instruction program that needs no
//! relocation against it — and it cannot pin a cgroup link. Each attribute struct below is the
//! member of `union bpf_attr` (include/uapi/linux/bpf.h) for its command, zero-filled; the kernel
//! accepts a shorter attribute than its own and requires unknown trailing bytes to be zero.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_MAP_FREEZE: libc::c_long = 22;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `enum bpf_prog_type` / `enum bpf_attach_type` values for device programs.
pub const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
pub const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-initialised `union bpf_attr` member for `cmd` whose pointer
    // fields point at buffers that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn new_fd(raw: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw as RawFd) }
}

/// A kernel object name: at most 15 bytes and NUL.
fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, byte) in out.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    out
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// A map described by a legacy `maps` section definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

pub fn map_create(spec: MapSpec, name: &str) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: spec.map_type,
        key_size: spec.key_size,
        value_size: spec.value_size,
        max_entries: spec.max_entries,
        map_flags: spec.flags,
        map_name: object_name(name),
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(new_fd)
}

#[repr(C)]
#[derive(Default)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Inserts or replaces `key` → `value`. Both must have the map's key and value sizes.
pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> io::Result<()> {
    let mut attr = MapUpdateAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// Makes a map read-only for user space (the program still reads it): a pinned allowlist can
/// then only be replaced by a new binding, never edited in place.
pub fn map_freeze(map: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr: [u32; 1] = [map.as_raw_fd() as u32];
    bpf(BPF_MAP_FREEZE, &mut attr).map(|_| ())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (newer ones ignore it): lift it so a
/// 16 KiB record and the rules fit under a small default.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct. Failure leaves the old limit, and map creation then says so.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// A hint for an errno from loading or attaching.
pub fn hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM) => {
            " (not permitted: root needs CAP_BPF and CAP_SYS_ADMIN, which a container may drop; \
             or an ancestor cgroup's device program was attached without multi mode)"
        }
        Some(libc::EINVAL) => " (the kernel is too old for cgroup device links: 5.7+ is needed)",
        _ => "",
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads a cgroup device program; on refusal the error carries the verifier's log.
pub fn prog_load_cgroup_device(insns: &[u8], name: &str) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: (insns.len() / 8) as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: object_name(name),
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(new_fd(fd)),
        Err(first) => {
            // Load again with a log, only to say why.
            let mut log = vec![0u8; 64 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            match bpf(BPF_PROG_LOAD, &mut attr) {
                Ok(fd) => Ok(new_fd(fd)),
                Err(_) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    let last = text.lines().rev().find(|l| !l.trim().is_empty());
                    Err(io::Error::new(
                        first.kind(),
                        format!("{first} (verifier: {})", last.unwrap_or("no log")),
                    ))
                }
            }
        }
    }
}

/// `BPF_LINK_CREATE` for a cgroup device program; the trailing words (the cgroup member's
/// relative_fd and expected_revision on new kernels) stay zero.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    rest: [u64; 4],
}

/// Attaches `program` to `cgroup` through a new BPF link (in "multi" mode, beside any other
/// device programs). Closing the link, unless it is pinned, detaches the program.
pub fn link_create_cgroup_device(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(new_fd)
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Pins a map, program or link at `path` (in a BPF filesystem).
pub fn obj_pin(object: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjPinAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: object.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjPinAttr {
        pathname: c_path.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_OBJ_GET, &mut attr).map(new_fd)
}

#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// Detaches a link's program now (kernel 5.9+), whoever else holds the link.
///
/// Removing a link's last pin detaches it too, but not now: bpffs frees the inode after an RCU
/// grace period and the link is put from there, so a process started right after the unpin
/// could still meet the old policy.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The ids of the device programs attached to a cgroup: directly (`effective` false), or all
/// that apply to it, its ancestors' included (`effective` true).
pub fn device_programs(cgroup: BorrowedFd<'_>, effective: bool) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = ProgQueryAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            query_flags: if effective { BPF_F_QUERY_EFFECTIVE } else { 0 },
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
            ..Default::default()
        };
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            // More programs than room: the kernel said how many.
            Err(e)
                if e.raw_os_error() == Some(libc::ENOSPC) && attr.prog_cnt as usize > ids.len() =>
            {
                ids = vec![0; attr.prog_cnt as usize];
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layouts must match `union bpf_attr`'s members up to the fields we set.
    #[test]
    fn attribute_layouts_match_the_kernel_abi() {
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(std::mem::offset_of!(MapUpdateAttr, key), 8);
        assert_eq!(std::mem::offset_of!(MapUpdateAttr, flags), 24);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, flags), 12);
        assert_eq!(std::mem::offset_of!(ObjPinAttr, file_flags), 12);
        assert_eq!(std::mem::offset_of!(ProgQueryAttr, prog_ids), 16);
        assert_eq!(std::mem::offset_of!(ProgQueryAttr, prog_cnt), 24);
        assert_eq!(std::mem::offset_of!(ProgQueryAttr, revision), 56);
    }

    #[test]
    fn names_are_cut_to_fifteen_bytes() {
        assert_eq!(&object_name("nvbind_devices")[..15], b"nvbind_devices\0");
        assert_eq!(object_name("a_very_long_program_name")[15], 0);
    }
}
