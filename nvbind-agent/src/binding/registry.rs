//! The bindings in force, kept in bpffs so that they outlive the agent.
//!
//! ```text
//! <bpffs>/nvbind/                        locked (flock) while an agent changes bindings
//! <bpffs>/nvbind/bindings/<key>/<gen>/   one generation of one cgroup's binding
//!     record   BPF array map: the binding's description (JSON), read by `bindings`
//!     rules    BPF hash map: the v2 program's allowlist (cgroup v2 only)
//!     link     the v2 program's cgroup link (cgroup v2 only): the pin that keeps it attached
//! ```
//! `<key>` is `v2-<cgroup id>` or `v1-<inode>`. A generation is committed once its last pin is
//! in place (`link` for v2, `record` for v1); a replacement commits a new generation before the
//! old one is removed, so an agent killed in between leaves two committed generations (both
//! enforced, so the cgroup gets the intersection), which the next agent cleans up.

use std::{
    fs,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData};
use nvbind_common::device_policy::{BindingRecord, RECORD_BYTES};

use super::{bpf, BindError, Binding};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The registry under one bpffs mount, locked for the lifetime of this value.
pub struct Registry {
    bindings: PathBuf,
    /// Holds the exclusive lock on `<bpffs>/nvbind` (released when dropped).
    _lock: fs::File,
}

/// One committed or partial generation of a cgroup's binding.
#[derive(Debug)]
pub struct Generation {
    pub number: u64,
    pub dir: PathBuf,
    pub has_link: bool,
    pub has_record: bool,
}

/// All generations of one cgroup's binding, oldest first.
#[derive(Debug)]
pub struct Entry {
    pub key: String,
    pub dir: PathBuf,
    pub generations: Vec<Generation>,
}

impl Generation {
    pub fn committed(&self, v2: bool) -> bool {
        if v2 {
            self.has_link && self.has_record
        } else {
            self.has_record
        }
    }
}

impl Entry {
    pub fn is_v2(&self) -> bool {
        self.key.starts_with("v2-")
    }

    /// Committed generations, oldest first.
    pub fn committed(&self) -> impl Iterator<Item = &Generation> {
        let v2 = self.is_v2();
        self.generations.iter().filter(move |g| g.committed(v2))
    }

    pub fn newest_committed(&self) -> Option<&Generation> {
        self.committed().last()
    }
}

/// Where systemd mounts the BPF filesystem.
const SYSTEM_BPFFS: &str = "/sys/fs/bpf";

/// Mounts a BPF filesystem at [`SYSTEM_BPFFS`] (mode 0700, as systemd does); a failure is left
/// for the caller's check to report.
fn mount_system_bpffs() {
    let (Ok(source), Ok(target), Ok(kind), Ok(options)) = (
        std::ffi::CString::new("bpf"),
        std::ffi::CString::new(SYSTEM_BPFFS),
        std::ffi::CString::new("bpf"),
        std::ffi::CString::new("mode=0700"),
    ) else {
        return;
    };
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        log::info!("mounted the BPF filesystem at {SYSTEM_BPFFS} (it was not mounted)");
    } else {
        log::warn!(
            "cannot mount the BPF filesystem at {SYSTEM_BPFFS}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Whether `path` is the root of a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    super::filesystem_magic(path).is_ok_and(|magic| magic == BPF_FS_MAGIC)
}

impl Registry {
    /// Opens (creating its directories) and locks the registry under the bpffs mount `bpffs`.
    /// The system's own place for it, `/sys/fs/bpf`, is mounted when it is not (as systemd does
    /// at boot); any other directory must be a bpffs already.
    pub fn open(bpffs: &Path) -> Result<Registry, BindError> {
        if !is_bpffs(bpffs) && bpffs == Path::new(SYSTEM_BPFFS) {
            mount_system_bpffs();
        }
        if !is_bpffs(bpffs) {
            return Err(BindError::NoBpffs(bpffs.into()));
        }
        let top = bpffs.join("nvbind");
        let bindings = top.join("bindings");
        fs::create_dir_all(&bindings).map_err(|e| BindError::io(&bindings, e))?;
        let lock = fs::File::open(&top).map_err(|e| BindError::io(&top, e))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(BindError::io(&top, std::io::Error::last_os_error()));
        }
        Ok(Registry {
            bindings,
            _lock: lock,
        })
    }

    /// Opens the registry under `bpffs` to read it: a shared lock (readers never wait for each
    /// other, and never hold up a binding longer than a listing), and nothing created: a
    /// registry that does not exist yet is empty. None when it does not exist.
    pub fn open_to_read(bpffs: &Path) -> Result<Option<Registry>, BindError> {
        if !is_bpffs(bpffs) {
            // Nothing can be pinned where no bpffs is mounted: the system's place, unmounted,
            // holds no bindings (and a read mounts nothing).
            if bpffs == Path::new(SYSTEM_BPFFS) {
                return Ok(None);
            }
            return Err(BindError::NoBpffs(bpffs.into()));
        }
        let top = bpffs.join("nvbind");
        let bindings = top.join("bindings");
        let lock = match fs::File::open(&top) {
            Ok(lock) => lock,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BindError::io(&top, e)),
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH) } != 0 {
            return Err(BindError::io(&top, std::io::Error::last_os_error()));
        }
        if !bindings.is_dir() {
            return Ok(None);
        }
        Ok(Some(Registry {
            bindings,
            _lock: lock,
        }))
    }

    pub fn key_dir(&self, key: &str) -> PathBuf {
        self.bindings.join(key)
    }

    /// Every cgroup's entry, sorted by key.
    pub fn entries(&self) -> Result<Vec<Entry>, BindError> {
        let mut entries = Vec::new();
        let listing = fs::read_dir(&self.bindings).map_err(|e| BindError::io(&self.bindings, e))?;
        for item in listing.flatten() {
            let key = item.file_name().to_string_lossy().into_owned();
            if !(key.starts_with("v1-") || key.starts_with("v2-")) {
                continue;
            }
            entries.push(self.entry(&key)?);
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// One cgroup's entry (no generations if it has none).
    pub fn entry(&self, key: &str) -> Result<Entry, BindError> {
        let dir = self.key_dir(key);
        let mut generations = Vec::new();
        if let Ok(listing) = fs::read_dir(&dir) {
            for item in listing.flatten() {
                let Some(number) = item.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                let gen_dir = item.path();
                generations.push(Generation {
                    number,
                    has_link: gen_dir.join("link").exists(),
                    has_record: gen_dir.join("record").exists(),
                    dir: gen_dir,
                });
            }
        }
        generations.sort_by_key(|g| g.number);
        Ok(Entry {
            key: key.to_string(),
            dir,
            generations,
        })
    }

    /// Creates the directory of the generation after the entry's newest.
    pub fn new_generation(&self, entry: &Entry) -> Result<PathBuf, BindError> {
        let number = entry.generations.last().map_or(1, |g| g.number + 1);
        let dir = entry.dir.join(number.to_string());
        fs::create_dir_all(&dir).map_err(|e| BindError::io(&dir, e))?;
        Ok(dir)
    }
}

/// Removes a generation's pins: removing the `link` pin releases the kernel's last reference to
/// the link, which detaches the program from the cgroup.
pub fn remove_generation(dir: &Path) -> Result<(), BindError> {
    // The link first, so that a failure later never leaves a policy without its record; and
    // detached before it is unpinned, so that the policy is gone when this returns (an unpinned
    // link is released later, from an RCU callback).
    detach_pinned_link(&dir.join("link"));
    for name in ["link", "rules", "record"] {
        let pin = dir.join(name);
        match fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BindError::io(&pin, e)),
        }
    }
    fs::remove_dir(dir).map_err(|e| BindError::io(dir, e))
}

/// Detaches the link pinned at `pin`, if there is one. A failure is not an error: removing the
/// pin still detaches it, only later (kernels before 5.9 have no `BPF_LINK_DETACH`).
fn detach_pinned_link(pin: &Path) {
    let link = match bpf::obj_get(pin) {
        Ok(link) => link,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            log::debug!("{}: cannot open the pinned link: {e}", pin.display());
            return;
        }
    };
    if let Err(e) = bpf::link_detach(link.as_fd()) {
        log::debug!(
            "{}: cannot detach the link now ({e}); it detaches when unpinned",
            pin.display()
        );
    }
}

/// Removes an entry's directory once it has no generations left.
pub fn remove_entry_if_empty(entry_dir: &Path) {
    // Not empty (another generation) or already gone: both fine.
    let _ = fs::remove_dir(entry_dir);
}

/// Encodes a binding into the record map's value.
pub fn encode_record(binding: &Binding) -> Result<BindingRecord, BindError> {
    let json = serde_json::to_vec(binding).map_err(|e| BindError::Record(e.to_string()))?;
    if json.len() > RECORD_BYTES {
        return Err(BindError::Record(format!(
            "the binding's description is {} bytes, over the {RECORD_BYTES} bytes a record holds \
             (is the cgroup path extremely long?)",
            json.len()
        )));
    }
    let mut record = BindingRecord {
        len: json.len() as u32,
        bytes: [0; RECORD_BYTES],
    };
    record.bytes[..json.len()].copy_from_slice(&json);
    Ok(record)
}

/// Reads the binding pinned at `<gen>/record`.
pub fn read_record(gen_dir: &Path) -> Result<Binding, BindError> {
    let pin = gen_dir.join("record");
    let data = MapData::from_pin(&pin).map_err(|e| BindError::io(&pin, e))?;
    let map = Map::from_map_data(data).map_err(|e| BindError::io(&pin, e))?;
    let array: Array<MapData, BindingRecord> =
        Array::try_from(map).map_err(|e| BindError::io(&pin, e))?;
    let record = array.get(&0, 0).map_err(|e| BindError::io(&pin, e))?;
    let len = (record.len as usize).min(RECORD_BYTES);
    serde_json::from_slice(&record.bytes[..len])
        .map_err(|e| BindError::Record(format!("{}: {e}", pin.display())))
}
