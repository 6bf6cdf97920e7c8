//! cgroup v2: one copy of the `nvbind-device` program per binding, its allowlist in its own
//! rules map, attached to the cgroup through a BPF link pinned in bpffs.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupDevice,
    },
    Ebpf, EbpfLoader,
};
use nvbind_common::device_policy::{BindingRecord, DeviceRuleKey};

use super::{rules::DeviceRule, BindError};

/// The device-policy object built from `nvbind-ebpf/src/device.rs` (see build.rs).
static DEVICE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nvbind-device.o"));

/// The program's name as the kernel shows it (`bpftool prog`): how our programs are told apart.
pub const PROGRAM_NAME: &str = "nvbind_devices";

/// A loaded (not yet attached) copy of the policy: program, rules and record filled in.
pub struct Policy {
    ebpf: Ebpf,
}

impl Policy {
    /// Loads a fresh copy of the object with `rules` in its rules map and `record` in its record
    /// map. With `load_program` false only the maps are created (cgroup v1 keeps its record in
    /// bpffs too, but needs no program).
    pub fn load(
        rules: &[DeviceRule],
        record: &BindingRecord,
        load_program: bool,
    ) -> Result<Policy, BindError> {
        if DEVICE_OBJECT.is_empty() {
            return Err(BindError::MissingObject);
        }
        let mut ebpf = EbpfLoader::new()
            .load(DEVICE_OBJECT)
            .map_err(|e| BindError::Kernel(format!("cannot load the device policy: {e}")))?;
        {
            let map = ebpf.map_mut("DEVICE_RULES").ok_or(BindError::Kernel(
                "the device policy has no DEVICE_RULES map".into(),
            ))?;
            let mut map: HashMap<_, DeviceRuleKey, u32> = HashMap::try_from(map)
                .map_err(|e| BindError::Kernel(format!("DEVICE_RULES: {e}")))?;
            for rule in rules {
                map.insert(rule.key(), rule.access_bits(), 0)
                    .map_err(|e| BindError::Kernel(format!("DEVICE_RULES: {e}")))?;
            }
        }
        {
            let map = ebpf.map_mut("BINDING_RECORD").ok_or(BindError::Kernel(
                "the device policy has no BINDING_RECORD map".into(),
            ))?;
            let mut map: Array<_, BindingRecord> = Array::try_from(map)
                .map_err(|e| BindError::Kernel(format!("BINDING_RECORD: {e}")))?;
            map.set(0, record, 0)
                .map_err(|e| BindError::Kernel(format!("BINDING_RECORD: {e}")))?;
        }
        if load_program {
            let program: &mut CgroupDevice = ebpf
                .program_mut(PROGRAM_NAME)
                .ok_or(BindError::Kernel(format!(
                    "the device policy has no program {PROGRAM_NAME}"
                )))?
                .try_into()
                .map_err(|e| BindError::Kernel(format!("{PROGRAM_NAME}: {e}")))?;
            program.load().map_err(|e| {
                BindError::Kernel(format!("the verifier refused {PROGRAM_NAME}: {e}"))
            })?;
        }
        Ok(Policy { ebpf })
    }

    /// Pins the maps (`rules` only if the program was loaded) into `dir`.
    pub fn pin_maps(&self, dir: &Path, with_rules: bool) -> Result<(), BindError> {
        let mut pins = vec![("BINDING_RECORD", "record")];
        if with_rules {
            pins.insert(0, ("DEVICE_RULES", "rules"));
        }
        for (map, file) in pins {
            let pin = dir.join(file);
            self.ebpf
                .map(map)
                .ok_or(BindError::Kernel(format!(
                    "the device policy has no {map} map"
                )))?
                .pin(&pin)
                .map_err(|e| BindError::pinned(&pin, e))?;
        }
        Ok(())
    }

    /// Attaches the program to the cgroup through a BPF link (alongside whatever is attached
    /// already: the kernel then requires every program to allow an access) and returns the
    /// link, not yet pinned: closing it detaches the program.
    pub fn attach(&mut self, cgroup: &File) -> Result<OwnedFd, BindError> {
        let program: &mut CgroupDevice = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(BindError::Kernel(format!("no program {PROGRAM_NAME}")))?
            .try_into()
            .map_err(|e| BindError::Kernel(format!("{PROGRAM_NAME}: {e}")))?;
        let program = program
            .fd()
            .map_err(|e| BindError::Kernel(format!("{PROGRAM_NAME}: {e}")))?;
        // aya 0.14 cannot turn a cgroup link into a pinnable one, so the link is made here.
        link_create(program.as_fd(), cgroup.as_fd()).map_err(|e| {
            BindError::Kernel(format!(
                "cannot attach {PROGRAM_NAME} to the cgroup (BPF links need kernel 5.7+): {e}"
            ))
        })
    }
}

/// Pins a link at `path`: from then on the attachment outlives this process.
pub fn pin_link(link: OwnedFd, path: &Path) -> Result<(), BindError> {
    obj_pin(link.as_fd(), path).map_err(|e| BindError::pinned(path, e))
}

/// The program id behind a pinned link.
pub fn pinned_program_id(path: &Path) -> Result<u32, BindError> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| BindError::pinned(path, e))?;
    let link = FdLink::from(pinned);
    let info = link.info().map_err(|e| BindError::pinned(path, e))?;
    Ok(info.program_id())
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;

fn bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> std::io::Result<libc::c_long> {
    // SAFETY: callers pass a pointer to a zero-initialised attribute struct of `size` bytes
    // laid out as `union bpf_attr`'s member for `cmd`, valid for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
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

fn link_create(program: BorrowedFd<'_>, cgroup: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    let fd = bpf(
        BPF_LINK_CREATE,
        (&mut attr as *mut LinkCreateAttr).cast(),
        std::mem::size_of::<LinkCreateAttr>(),
    )?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `BPF_OBJ_PIN`.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

fn obj_pin(object: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr = ObjPinAttr {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: object.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(
        BPF_OBJ_PIN,
        (&mut attr as *mut ObjPinAttr).cast(),
        std::mem::size_of::<ObjPinAttr>(),
    )
    .map(|_| ())
}

/// `BPF_PROG_QUERY`'s part of `union bpf_attr` (include/uapi/linux/bpf.h).
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
pub fn device_programs(cgroup: BorrowedFd<'_>, effective: bool) -> std::io::Result<Vec<u32>> {
    // aya's query hands back program fds without their ids; ask the kernel directly.
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
        // prog_ids points at `ids`, which holds prog_cnt u32s and outlives the call.
        let result = bpf(
            BPF_PROG_QUERY,
            (&mut attr as *mut ProgQueryAttr).cast(),
            std::mem::size_of::<ProgQueryAttr>(),
        );
        let err = match result {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            Err(err) => err,
        };
        // ENOSPC: more programs than room; the kernel said how many.
        if err.raw_os_error() == Some(libc::ENOSPC) && (attr.prog_cnt as usize) > ids.len() {
            ids = vec![0; attr.prog_cnt as usize];
            continue;
        }
        return Err(err);
    }
}

/// A program's name (as the kernel keeps it, 15 bytes at most), for messages.
pub fn program_name(id: u32) -> String {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Opens a cgroup directory for attaching and querying.
pub fn open_cgroup(path: &Path) -> Result<File, BindError> {
    File::open(path).map_err(|e| BindError::io(path, e))
}

/// Convenience for callers holding a `File`.
pub fn device_programs_of(cgroup: &File, effective: bool) -> std::io::Result<Vec<u32>> {
    device_programs(cgroup.as_fd(), effective)
}

/// Reads a pinned rules map back (for listing what the kernel enforces).
pub fn read_pinned_rules(path: &Path) -> Result<Vec<(DeviceRuleKey, u32)>, BindError> {
    let data = MapData::from_pin(path).map_err(|e| BindError::pinned(path, e))?;
    let map = aya::maps::Map::from_map_data(data).map_err(|e| BindError::pinned(path, e))?;
    let map: HashMap<MapData, DeviceRuleKey, u32> =
        HashMap::try_from(map).map_err(|e| BindError::pinned(path, e))?;
    let mut rules: Vec<_> = map.iter().flatten().collect();
    rules.sort();
    Ok(rules)
}
