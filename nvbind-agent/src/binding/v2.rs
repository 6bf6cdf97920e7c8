//! cgroup v2: one copy of the `nvbind-device` program per binding, its allowlist in its own
//! rules map, attached to the cgroup through a BPF link pinned in bpffs.

use std::{
    fs::File,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    maps::{HashMap, MapData},
    programs::links::{FdLink, PinnedLink},
};
use nvbind_common::device_policy::{BindingRecord, DeviceRuleKey};
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};

use super::{bpf, rules::DeviceRule, BindError};

/// The device-policy object built from `nvbind-ebpf/src/device.rs` (see build.rs).
static DEVICE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nvbind-device.o"));

/// The program's name as the kernel shows it (`bpftool prog`): how our programs are told apart.
pub const PROGRAM_NAME: &str = "nvbind_devices";
const PROGRAM_SECTION: &str = "cgroup/dev";
const RULES_MAP: &str = "DEVICE_RULES";
const RECORD_MAP: &str = "BINDING_RECORD";
/// `struct bpf_map_def` as aya-ebpf lays out the `maps` section: seven u32s.
const MAP_DEF_BYTES: usize = 28;

fn kernel(what: &str, error: impl std::fmt::Display) -> BindError {
    BindError::Kernel(format!("{what}: {error}"))
}

/// A loaded (not yet attached) copy of the policy: its record map filled in, and for cgroup v2
/// the program with its rules map.
pub struct Policy {
    record: OwnedFd,
    enforcer: Option<Enforcer>,
}

/// The program and the allowlist it reads.
struct Enforcer {
    program: OwnedFd,
    rules: OwnedFd,
}

impl Policy {
    /// Creates a fresh record map holding `record` and, given `rules`, a frozen rules map
    /// holding them and the program reading it. Without rules only the record is made (cgroup
    /// v1 keeps its record in bpffs too, but needs no program).
    ///
    /// The object is small and fixed (one program, two maps, two map relocations), so it is
    /// loaded here from its ELF sections rather than through aya (see [`bpf`] for why).
    pub fn load(record: &BindingRecord, rules: Option<&[DeviceRule]>) -> Result<Policy, BindError> {
        if DEVICE_OBJECT.is_empty() {
            return Err(crate::probes::MissingObject.into());
        }
        bpf::raise_memlock_limit();
        let elf = object::File::parse(DEVICE_OBJECT)
            .map_err(|e| kernel("the device policy object is not ELF", e))?;
        let record_map = create_map(&elf, RECORD_MAP)?;
        // SAFETY: BindingRecord is repr(C) plain data (u32 + bytes) without padding.
        let record_bytes = unsafe {
            std::slice::from_raw_parts(
                (record as *const BindingRecord).cast::<u8>(),
                std::mem::size_of::<BindingRecord>(),
            )
        };
        bpf::map_update(record_map.as_fd(), &0u32.to_ne_bytes(), record_bytes)
            .map_err(|e| kernel(RECORD_MAP, e))?;
        let enforcer = match rules {
            Some(rules) => Some(load_enforcer(&elf, rules, &record_map)?),
            None => None,
        };
        Ok(Policy {
            record: record_map,
            enforcer,
        })
    }

    /// Pins the maps into `dir`: `record`, and `rules` for cgroup v2.
    pub fn pin_maps(&self, dir: &Path) -> Result<(), BindError> {
        if let Some(enforcer) = &self.enforcer {
            let pin = dir.join("rules");
            bpf::obj_pin(enforcer.rules.as_fd(), &pin).map_err(|e| BindError::io(&pin, e))?;
        }
        let pin = dir.join("record");
        bpf::obj_pin(self.record.as_fd(), &pin).map_err(|e| BindError::io(&pin, e))
    }

    /// Attaches the program to the cgroup through a BPF link (alongside whatever is attached
    /// already: the kernel then requires every program to allow an access) and returns the
    /// link, not yet pinned: closing it detaches the program.
    pub fn attach(&self, cgroup: &File) -> Result<OwnedFd, BindError> {
        let enforcer = self
            .enforcer
            .as_ref()
            .ok_or(BindError::Kernel(format!("{PROGRAM_NAME} was not loaded")))?;
        bpf::link_create_cgroup_device(enforcer.program.as_fd(), cgroup.as_fd()).map_err(|e| {
            BindError::Kernel(format!(
                "cannot attach {PROGRAM_NAME} to the cgroup: {e}{}",
                bpf::hint(&e)
            ))
        })
    }
}

/// Creates the rules map, fills and freezes it, and loads the program against it.
fn load_enforcer(
    elf: &object::File<'_>,
    rules: &[DeviceRule],
    record_map: &OwnedFd,
) -> Result<Enforcer, BindError> {
    let rules_map = create_map(elf, RULES_MAP)?;
    for rule in rules {
        let key = rule.key();
        let key = [key.kind, key.major, key.minor];
        bpf::map_update(
            rules_map.as_fd(),
            as_bytes(&key),
            &rule.access_bits().to_ne_bytes(),
        )
        .map_err(|e| kernel(RULES_MAP, e))?;
    }
    bpf::map_freeze(rules_map.as_fd()).map_err(|e| kernel(RULES_MAP, e))?;
    let insns = relocated_program(elf, &[(RULES_MAP, &rules_map), (RECORD_MAP, record_map)])?;
    let program = bpf::prog_load_cgroup_device(&insns, PROGRAM_NAME).map_err(|e| {
        BindError::Kernel(format!(
            "the kernel refused {PROGRAM_NAME}: {e}{}",
            bpf::hint(&e)
        ))
    })?;
    Ok(Enforcer {
        program,
        rules: rules_map,
    })
}

fn as_bytes(words: &[u32; 3]) -> &[u8] {
    // SAFETY: three u32s are 12 initialised bytes: DeviceRuleKey's layout.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), 12) }
}

/// Creates the map `name` as the object's `maps` section defines it.
fn create_map(elf: &object::File<'_>, name: &str) -> Result<OwnedFd, BindError> {
    let maps = elf
        .section_by_name("maps")
        .ok_or_else(|| kernel("the device policy object", "no maps section"))?;
    let data = maps.data().map_err(|e| kernel("maps section", e))?;
    let symbol = elf
        .symbols()
        .find(|s| s.name() == Ok(name) && s.section_index() == Some(maps.index()))
        .ok_or_else(|| kernel("the device policy object", format!("no map {name}")))?;
    let at = (symbol.address() - maps.address()) as usize;
    let def = data
        .get(at..at + MAP_DEF_BYTES)
        .ok_or_else(|| kernel(name, "truncated map definition"))?;
    let word =
        |i: usize| u32::from_le_bytes([def[4 * i], def[4 * i + 1], def[4 * i + 2], def[4 * i + 3]]);
    let spec = bpf::MapSpec {
        map_type: word(0),
        key_size: word(1),
        value_size: word(2),
        max_entries: word(3),
        flags: word(4),
    };
    bpf::map_create(spec, name).map_err(|e| kernel(&format!("cannot create map {name}"), e))
}

/// The program's instructions with each map reference (a 64-bit immediate load relocated
/// against a map symbol) pointed at the map's descriptor (`BPF_PSEUDO_MAP_FD`).
fn relocated_program(
    elf: &object::File<'_>,
    maps: &[(&str, &OwnedFd)],
) -> Result<Vec<u8>, BindError> {
    use std::os::fd::AsRawFd;
    const BPF_PSEUDO_MAP_FD: u8 = 1;
    let section = elf.section_by_name(PROGRAM_SECTION).ok_or_else(|| {
        kernel(
            "the device policy object",
            format!("no {PROGRAM_SECTION} section"),
        )
    })?;
    let mut insns = section
        .data()
        .map_err(|e| kernel(PROGRAM_SECTION, e))?
        .to_vec();
    for (offset, relocation) in section.relocations() {
        let RelocationTarget::Symbol(index) = relocation.target() else {
            return Err(kernel(PROGRAM_SECTION, "unexpected relocation"));
        };
        let symbol = elf
            .symbol_by_index(index)
            .map_err(|e| kernel(PROGRAM_SECTION, e))?;
        let name = symbol.name().unwrap_or("?");
        let fd = maps
            .iter()
            .find(|(map, _)| *map == name)
            .map(|(_, fd)| fd.as_raw_fd())
            .ok_or_else(|| {
                kernel(
                    PROGRAM_SECTION,
                    format!("relocation against {name}, not a map"),
                )
            })?;
        let at = offset as usize;
        let insn = insns
            .get_mut(at..at + 8)
            .ok_or_else(|| kernel(PROGRAM_SECTION, "relocation outside the program"))?;
        // Byte 1 holds dst_reg (low nibble) and src_reg (high nibble); bytes 4..8 the immediate.
        insn[1] = (insn[1] & 0x0f) | (BPF_PSEUDO_MAP_FD << 4);
        insn[4..8].copy_from_slice(&fd.to_le_bytes());
    }
    Ok(insns)
}

/// Pins a link at `path`: from then on the attachment outlives this process.
pub fn pin_link(link: OwnedFd, path: &Path) -> Result<(), BindError> {
    bpf::obj_pin(link.as_fd(), path).map_err(|e| BindError::io(path, e))
}

/// The program id behind a pinned link.
pub fn pinned_program_id(path: &Path) -> Result<u32, BindError> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| BindError::io(path, e))?;
    let link = FdLink::from(pinned);
    let info = link.info().map_err(|e| BindError::io(path, e))?;
    Ok(info.program_id())
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

/// Reads a pinned rules map back (for listing what the kernel enforces).
pub fn read_pinned_rules(path: &Path) -> Result<Vec<(DeviceRuleKey, u32)>, BindError> {
    let data = MapData::from_pin(path).map_err(|e| BindError::io(path, e))?;
    let map = aya::maps::Map::from_map_data(data).map_err(|e| BindError::io(path, e))?;
    let map: HashMap<MapData, DeviceRuleKey, u32> =
        HashMap::try_from(map).map_err(|e| BindError::io(path, e))?;
    let mut rules: Vec<_> = map.iter().flatten().collect();
    rules.sort();
    Ok(rules)
}
