//! Finding the host's GPUs: PCI display controllers in sysfs, their drivers, names, ids and every
//! device node that belongs to each, paired through sysfs (DRM) or the driver's own procfs
//! (NVIDIA) and numbered by `stat`, never by assumption.

use std::{
    collections::BTreeMap,
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
};

use nvml_wrapper::{error::NvmlError, Nvml};
use serde::Serialize;

use super::{sysfs::SysfsDir, DeviceNode, GpuInfo, NodeKind, Roots, Vendor, Warnings};

/// Whether NVIDIA's management library could be used, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum NvmlState {
    /// No NVIDIA GPU on the host: NVML was not loaded.
    NotNeeded,
    /// Not asked: the roots are not the running system's (the only one NVML can describe), or
    /// `--nvml never`.
    NotConsulted,
    /// NVIDIA GPUs exist but NVML cannot be used (no driver, no library, ...).
    NoDriver { reason: String },
    Ready {
        driver_version: String,
        nvml_version: String,
    },
}

/// The host's GPUs, and what could be learned about NVIDIA's library.
pub struct Discovery {
    pub gpus: Vec<GpuInfo>,
    pub nvml_state: NvmlState,
    /// Loaded once and kept for the life of the agent (NVML handles borrow it).
    pub nvml: Option<&'static Nvml>,
    pub warnings: Warnings,
}

/// PCI class 0x03xxxx: display controllers (VGA, 3D, other).
const PCI_CLASS_DISPLAY: u32 = 0x03;

/// Discovers every GPU under `roots`.
pub fn discover(roots: &Roots, warnings: &Warnings) -> Discovery {
    let dev_nodes = DevNodes::scan(&roots.dev);
    let kernel = super::sysfs::read_text(&roots.proc.join("sys/kernel/osrelease"))
        .ok()
        .map(|s| s.trim().to_string());
    let mut gpus: Vec<GpuInfo> = pci_display_devices(roots, warnings)
        .into_iter()
        .map(|(address, dir)| describe(roots, &address, &dir, &dev_nodes, kernel.as_deref()))
        .collect();

    let has_nvidia = gpus.iter().any(|g| g.vendor == Vendor::Nvidia)
        || roots.proc.join("driver/nvidia").exists();
    let (nvml_state, nvml) = if !has_nvidia {
        (NvmlState::NotNeeded, None)
    } else if !roots.nvml {
        (NvmlState::NotConsulted, None)
    } else {
        match Nvml::init() {
            Ok(nvml) => {
                let nvml: &'static Nvml = Box::leak(Box::new(nvml));
                let driver_version = nvml.sys_driver_version().unwrap_or_default();
                enrich_from_nvml(nvml, &driver_version, &mut gpus, &dev_nodes, roots);
                let state = NvmlState::Ready {
                    driver_version,
                    nvml_version: nvml.sys_nvml_version().unwrap_or_default(),
                };
                (state, Some(nvml))
            }
            Err(e) => (
                NvmlState::NoDriver {
                    reason: nvml_failure(&e),
                },
                None,
            ),
        }
    };
    for (index, gpu) in gpus.iter_mut().enumerate() {
        gpu.index = index;
    }
    Discovery {
        gpus,
        nvml_state,
        nvml,
        warnings: warnings.clone(),
    }
}

/// "no NVIDIA driver: ..." in words a user can act on.
fn nvml_failure(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => {
            "no NVIDIA driver: libnvidia-ml.so.1 cannot be loaded (install the NVIDIA driver, or in a \
             container use the NVIDIA container toolkit so the library is mounted)"
                .into()
        }
        NvmlError::DriverNotLoaded => {
            "no NVIDIA driver: the nvidia kernel module is not loaded (modprobe nvidia)".into()
        }
        NvmlError::NoPermission => {
            "no NVIDIA driver access: permission denied opening /dev/nvidiactl (run as root)".into()
        }
        other => format!("no NVIDIA driver: NVML failed to start: {other}"),
    }
}

/// `(pci address, resolved sysfs dir)` of every display controller, in address order.
fn pci_display_devices(roots: &Roots, warnings: &Warnings) -> BTreeMap<String, SysfsDir> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(roots.sys.join("bus/pci/devices")) else {
        return found;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let address = entry.file_name().to_string_lossy().to_string();
        let path = std::fs::canonicalize(entry.path()).unwrap_or_else(|_| entry.path());
        let dir = SysfsDir::new(path, warnings.clone());
        if dir
            .hex("class")
            .is_some_and(|c| c >> 16 == PCI_CLASS_DISPLAY)
        {
            found.insert(address, dir);
        }
    }
    found
}

fn describe(
    roots: &Roots,
    address: &str,
    dir: &SysfsDir,
    dev_nodes: &DevNodes,
    kernel: Option<&str>,
) -> GpuInfo {
    let vendor_id = dir.hex("vendor").unwrap_or(0);
    let device_id = dir.hex("device").unwrap_or(0);
    let vendor = Vendor::from_pci_id(vendor_id);
    let driver = std::fs::read_link(dir.path.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| "none".into());
    // Out-of-tree drivers (nvidia) publish a module version; in-tree ones are the kernel's.
    let driver_version =
        super::sysfs::read_text(&roots.sys.join("module").join(&driver).join("version"))
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .or_else(|| match (driver.as_str(), kernel) {
                ("none", _) | (_, None) => None,
                (_, Some(k)) => Some(format!("in-tree (kernel {k})")),
            });

    let mut nodes = drm_nodes(dir, dev_nodes);
    let mut name = None;
    let mut uuid = None;
    match vendor {
        Vendor::Nvidia => {
            let info = nvidia_proc_information(&roots.proc, address);
            name = info.get("Model").cloned();
            uuid = info.get("GPU UUID").cloned();
            if let Some(minor) = info.get("Device Minor") {
                nodes.extend(dev_nodes.named(
                    &format!("nvidia{minor}"),
                    NodeKind::NvidiaGpu,
                    false,
                ));
            }
            nodes.extend(nvidia_shared_nodes(dev_nodes));
        }
        Vendor::Amd => {
            name = dir.text("product_name");
            uuid = dir.text("unique_id");
            if driver == "amdgpu" {
                nodes.extend(dev_nodes.named("kfd", NodeKind::AmdKfd, true));
            }
        }
        Vendor::Intel | Vendor::Other => {}
    }
    let subsystem = (dir.hex("subsystem_vendor"), dir.hex("subsystem_device"));
    let name = name.unwrap_or_else(|| pci_name(vendor_id, device_id, subsystem));
    GpuInfo {
        index: 0,
        vendor,
        name,
        pci_address: address.to_string(),
        pci_id: format!("{vendor_id:04x}:{device_id:04x}"),
        driver,
        driver_version,
        uuid,
        device_nodes: nodes,
        runtime_suspended: dir.runtime_suspended(),
        sysfs_path: dir.path.clone(),
    }
}

/// The PCI database's name for a device: the board (subsystem) name where the database has one,
/// else the chip's.
fn pci_name(vendor: u32, device: u32, subsystem: (Option<u32>, Option<u32>)) -> String {
    let (Ok(vid), Ok(pid)) = (u16::try_from(vendor), u16::try_from(device)) else {
        return format!("PCI device {vendor:04x}:{device:04x}");
    };
    let Some(chip) = pci_ids::Device::from_vid_pid(vid, pid) else {
        return format!("PCI device {vid:04x}:{pid:04x}");
    };
    let board = match subsystem {
        (Some(sv), Some(sd)) => chip
            .subsystems()
            .find(|s| u32::from(s.subvendor()) == sv && u32::from(s.subdevice()) == sd)
            .map(|s| s.name()),
        _ => None,
    };
    format!(
        "{} {}",
        short_vendor(chip.vendor().name()),
        board.unwrap_or(chip.name())
    )
}

/// "Advanced Micro Devices, Inc. [AMD/ATI]" → "AMD/ATI": the bracketed short name where given.
fn short_vendor(name: &str) -> &str {
    name.rsplit_once('[')
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .unwrap_or(name)
}

/// The DRM nodes sysfs lists under the device (`drm/cardN`, `drm/renderDN`), each found in the
/// dev root by the major:minor sysfs gives for it.
fn drm_nodes(dir: &SysfsDir, dev_nodes: &DevNodes) -> Vec<DeviceNode> {
    let Ok(entries) = std::fs::read_dir(dir.path.join("drm")) else {
        return Vec::new();
    };
    let mut children: Vec<(String, NodeKind)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let kind = if name.starts_with("renderD") {
                NodeKind::DrmRender
            } else if name.starts_with("card") && !name.contains('-') {
                // card0-DP-1 and friends are connectors, not nodes.
                NodeKind::DrmCard
            } else {
                return None;
            };
            Some((name, kind))
        })
        .collect();
    children.sort();
    let mut nodes = Vec::new();
    for (name, kind) in children {
        let Some(numbers) = dir.text(&format!("drm/{name}/dev")) else {
            continue;
        };
        let Some((major, minor)) = parse_major_minor(&numbers) else {
            dir.warnings.once(
                &dir.path.join(format!("drm/{name}/dev")),
                &format!("expected MAJOR:MINOR, found {numbers:?}"),
            );
            continue;
        };
        match dev_nodes.by_number(major, minor, "dri/") {
            Some(path) => nodes.push(DeviceNode {
                path,
                kind,
                major,
                minor,
                shared: false,
            }),
            None => log::info!(
                "{}: sysfs lists {name} ({major}:{minor}) but no such device node exists under the dev root",
                dir.path.display()
            ),
        }
    }
    nodes
}

fn parse_major_minor(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn nvidia_shared_nodes(dev_nodes: &DevNodes) -> Vec<DeviceNode> {
    [
        ("nvidiactl", NodeKind::NvidiaCtl),
        ("nvidia-modeset", NodeKind::NvidiaModeset),
        ("nvidia-uvm", NodeKind::NvidiaUvm),
        ("nvidia-uvm-tools", NodeKind::NvidiaUvmTools),
    ]
    .into_iter()
    .filter_map(|(name, kind)| dev_nodes.named(name, kind, true))
    .collect()
}

/// `Key: value` pairs of `/proc/driver/nvidia/gpus/<address>/information`.
fn nvidia_proc_information(proc_root: &Path, address: &str) -> BTreeMap<String, String> {
    let path = proc_root
        .join("driver/nvidia/gpus")
        .join(address)
        .join("information");
    super::sysfs::read_text(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Fills names and UUIDs from NVML (authoritative on a live host) and adds NVIDIA GPUs that NVML
/// sees but this sysfs does not (a container with a partial `/sys`).
fn enrich_from_nvml(
    nvml: &'static Nvml,
    driver_version: &str,
    gpus: &mut Vec<GpuInfo>,
    dev_nodes: &DevNodes,
    roots: &Roots,
) {
    for i in 0..nvml.device_count().unwrap_or(0) {
        let Ok(device) = nvml.device_by_index(i) else {
            continue;
        };
        let Ok(pci) = device.pci_info() else { continue };
        let address = normalise_nvml_bus_id(&pci.bus_id);
        if !gpus.iter().any(|g| g.pci_address == address) {
            gpus.push(GpuInfo {
                index: 0,
                vendor: Vendor::Nvidia,
                name: String::new(),
                pci_id: format!(
                    "{:04x}:{:04x}",
                    pci.pci_device_id & 0xffff,
                    pci.pci_device_id >> 16
                ),
                driver: "nvidia".into(),
                driver_version: None,
                uuid: None,
                device_nodes: nvidia_shared_nodes(dev_nodes),
                runtime_suspended: false,
                sysfs_path: roots.sys.join("bus/pci/devices").join(&address),
                pci_address: address.clone(),
            });
        }
        let Some(gpu) = gpus.iter_mut().find(|g| g.pci_address == address) else {
            continue;
        };
        if let Ok(name) = device.name() {
            gpu.name = name;
        }
        if let Ok(uuid) = device.uuid() {
            gpu.uuid = Some(uuid);
        }
        if !driver_version.is_empty() {
            gpu.driver_version = Some(driver_version.to_string());
        }
        let has_gpu_node = gpu
            .device_nodes
            .iter()
            .any(|n| n.kind == NodeKind::NvidiaGpu);
        if let (false, Ok(minor)) = (has_gpu_node, device.minor_number()) {
            gpu.device_nodes.extend(dev_nodes.named(
                &format!("nvidia{minor}"),
                NodeKind::NvidiaGpu,
                false,
            ));
        }
    }
    // GPUs only NVML saw were appended: back to address order.
    gpus.sort_by(|a, b| a.pci_address.cmp(&b.pci_address));
}

/// NVML's `00000000:01:00.0` (32-bit domain, upper case) → sysfs's `0000:01:00.0`.
fn normalise_nvml_bus_id(bus_id: &str) -> String {
    let lower = bus_id.trim().to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => lower,
    }
}

/// The major:minor of a character device (following links, as `/proc/PID/fd` entries need), by
/// `stat`; `None` for anything else.
pub fn char_device(path: &Path) -> Option<(u32, u32)> {
    let meta = std::fs::metadata(path).ok()?;
    meta.file_type()
        .is_char_device()
        .then(|| (libc::major(meta.rdev()), libc::minor(meta.rdev())))
}

/// The character devices under a dev root (and its `dri/`), with their `stat` numbers.
struct DevNodes {
    root: PathBuf,
    /// (relative path, major, minor)
    nodes: Vec<(String, u32, u32)>,
}

impl DevNodes {
    fn scan(root: &Path) -> DevNodes {
        let mut nodes = Vec::new();
        for sub in ["", "dri/"] {
            let Ok(entries) = std::fs::read_dir(root.join(sub)) else {
                continue;
            };
            for entry in entries.filter_map(|e| e.ok()) {
                let Some((major, minor)) = char_device(&entry.path()) else {
                    continue;
                };
                let name = format!("{sub}{}", entry.file_name().to_string_lossy());
                nodes.push((name, major, minor));
            }
        }
        nodes.sort();
        DevNodes {
            root: root.to_path_buf(),
            nodes,
        }
    }

    fn by_number(&self, major: u32, minor: u32, prefix: &str) -> Option<PathBuf> {
        self.nodes
            .iter()
            .find(|(name, ma, mi)| *ma == major && *mi == minor && name.starts_with(prefix))
            .map(|(name, _, _)| self.root.join(name))
    }

    fn named(&self, name: &str, kind: NodeKind, shared: bool) -> Option<DeviceNode> {
        self.nodes
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(n, major, minor)| DeviceNode {
                path: self.root.join(n),
                kind,
                major: *major,
                minor: *minor,
                shared,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_bus_ids_become_sysfs_addresses() {
        assert_eq!(normalise_nvml_bus_id("00000000:01:00.0"), "0000:01:00.0");
        assert_eq!(normalise_nvml_bus_id("0000:C1:00.0"), "0000:c1:00.0");
    }

    #[test]
    fn pci_names_come_from_the_database() {
        assert!(pci_name(0x1002, 0x73bf, (None, None)).starts_with("AMD/ATI Navi 21"));
        assert_eq!(
            pci_name(0x1234, 0x5678, (None, None)),
            "PCI device 1234:5678"
        );
    }

    #[test]
    fn a_host_without_gpus_discovers_none() {
        let empty = tempfile::tempdir().expect("tempdir");
        let roots = Roots {
            sys: empty.path().join("sys"),
            dev: empty.path().join("dev"),
            proc: empty.path().join("proc"),
            nvml: false,
        };
        let d = discover(&roots, &Warnings::default());
        assert!(d.gpus.is_empty());
        assert_eq!(d.nvml_state, NvmlState::NotNeeded);
    }
}
