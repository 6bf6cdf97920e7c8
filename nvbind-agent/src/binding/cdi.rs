//! CDI (Container Device Interface) specs for the host's GPUs.
//!
//! A container runtime (Podman, containerd, CRI-O, Docker) reads specs from `/etc/cdi` and
//! `/var/run/cdi`; `--device nvbind.io/gpu=0` then adds device `0`'s edits, and the spec's own
//! top-level edits, to the container. [`generate`] describes what discovery found:
//!
//! * one device per GPU named by its index (`"0"`, `"1"`, ...), and one more named by its UUID
//!   where the GPU has a UUID that is a valid CDI device name;
//! * a device `"all"` with every GPU's own nodes;
//! * the nodes a vendor's GPUs share (`nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`,
//!   `nvidia-modeset`, `kfd`) once, in the spec's top-level edits, since every user of one of
//!   those GPUs needs them.
//!
//! Only the fields nvbind emits are modelled, named and omitted exactly as the CDI spec
//! (`SPEC.md`, `schema/schema.json` and `specs-go` at tag v1.1.0 of
//! github.com/cncf-tags/container-device-interface) requires.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::gpu::{self, GpuInfo};

/// The CDI spec versions a runtime's CDI library may know, oldest first: 0.3.0 is the oldest the
/// reference library still reads (`vEarliest` in its `specs-go/version.go`), 1.1.0 the newest
/// released (tag v1.1.0, December 2025). A library refuses a version newer than it knows
/// ("invalid version") and one older than the features the spec uses ("the spec version must be
/// at least ..."), so [`generate`] writes the lowest version the spec's contents need: Debian
/// 12's Podman 4.3, for one, vendors a library that knows nothing after 0.5.0.
pub const CDI_VERSIONS: &[&str] = &[
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// The kind (`vendor/class`) used unless the user names another.
pub const DEFAULT_KIND: &str = "nvbind.io/gpu";

/// The device holding every GPU.
pub const ALL_DEVICE: &str = "all";

/// Where device nodes appear inside the container, whatever the host's dev root is.
const CONTAINER_DEV: &str = "/dev";

/// A CDI spec: one kind of device and the edits each needs.
///
/// Unknown fields are refused when reading one back, as the reference CDI parser refuses them:
/// a spec with fields nvbind does not model must not lose them silently on a round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// Required.
    pub cdi_version: String,
    /// Required: `vendor/class`, as in `--device vendor/class=name`.
    pub kind: String,
    /// Required, and a runtime refuses a spec without any.
    pub devices: Vec<Device>,
    /// Made whenever any of the spec's devices is requested. Optional: omitted when empty.
    #[serde(default, skip_serializing_if = "ContainerEdits::is_empty")]
    pub container_edits: ContainerEdits,
}

/// One device a user can request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// Required; see [`validate_device_name`].
    pub name: String,
    /// Required by the schema, and a runtime refuses a device whose edits are empty.
    pub container_edits: ContainerEdits,
}

/// Edits to the container's OCI spec. Of the spec's edits (`env`, `deviceNodes`, `mounts`,
/// `hooks`, ...) nvbind only adds device nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerEdits {
    /// Optional: omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
}

impl ContainerEdits {
    pub fn is_empty(&self) -> bool {
        self.device_nodes.is_empty()
    }
}

/// A device node to create in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    /// Required: the node's path inside the container.
    pub path: String,
    /// The node on the host, when it is not at `path` (a dev root other than `/dev`). Optional:
    /// a runtime uses `path` when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// Optional.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub node_type: Option<NodeType>,
    /// Optional, but always written: `stat` gave it, and with type and major set a runtime need
    /// not `stat` the host node itself. Minor 0 is written too: it is a real minor (`nvidia0`,
    /// `card0`, `kfd`), not "unset".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
}

/// A device node's type. Discovery only collects character devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeType {
    #[serde(rename = "c")]
    Char,
}

#[derive(Debug, Error)]
pub enum CdiError {
    #[error(
        "invalid CDI kind {kind:?}: {reason} (a kind is VENDOR/CLASS, such as {example})",
        example = DEFAULT_KIND
    )]
    InvalidKind { kind: String, reason: String },
    #[error("no GPU found: the sysfs root lists no PCI display controller (check --sysfs-root)")]
    NoGpus,
    #[error(
        "{count} GPU(s) found, but none has a device node of its own under {} (check --dev-root, \
         and that the GPU driver is loaded and created /dev/dri or /dev/nvidia* nodes)",
        dev_root.display()
    )]
    NoDeviceNodes { count: usize, dev_root: PathBuf },
    #[error(
        "device node {} is not under the dev root {} (check --dev-root)",
        node.display(),
        dev_root.display()
    )]
    OutsideDevRoot { node: PathBuf, dev_root: PathBuf },
    #[error("device node path {} is not UTF-8, which a CDI spec (JSON) cannot hold", .0.display())]
    NotUtf8(PathBuf),
    #[error("cannot make the device node path {} absolute: {source}", path.display())]
    Absolute {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("two GPUs would both be CDI device {0:?} (GPU indices must be unique)")]
    DuplicateDevice(String),
    #[error(
        "unknown CDI version {0:?}: the released versions are {versions}",
        versions = CDI_VERSIONS.join(", ")
    )]
    UnknownVersion(String),
    #[error(
        "CDI version {asked} cannot describe this spec: {why}; ask for {needed} or later (or \
         leave --cdi-version out to get the lowest that can)"
    )]
    VersionTooOld {
        asked: String,
        needed: String,
        why: String,
    },
    #[error(
        "device node {path} is listed twice with different host paths or numbers ({first} and \
         {second}); check the dev root for stale nodes"
    )]
    ConflictingNode {
        path: String,
        first: String,
        second: String,
    },
}

/// A spec, and what was left out of it and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub spec: Spec,
    /// One sentence per GPU or UUID that got no device.
    pub skipped: Vec<String>,
}

/// The CDI spec of `kind` for `gpus`, whose device nodes were found under `dev_root`. What is
/// left out (a GPU without nodes of its own, a UUID that cannot be a device name) is logged as a
/// warning; [`generate_detailed`] returns it instead.
pub fn generate(gpus: &[GpuInfo], dev_root: &Path, kind: &str) -> Result<Spec, CdiError> {
    let generated = generate_detailed(gpus, dev_root, kind)?;
    for note in &generated.skipped {
        log::warn!("{note}");
    }
    Ok(generated.spec)
}

/// [`generate`], returning what was left out instead of logging it.
pub fn generate_detailed(
    gpus: &[GpuInfo],
    dev_root: &Path,
    kind: &str,
) -> Result<Generated, CdiError> {
    validate_kind(kind)?;
    if gpus.is_empty() {
        return Err(CdiError::NoGpus);
    }
    let mut skipped = Vec::new();

    // Each GPU's own nodes and the nodes it shares, in the container's terms.
    let mut described: Vec<(&GpuInfo, Vec<DeviceNode>)> = Vec::new();
    let mut shared: BTreeMap<String, DeviceNode> = BTreeMap::new();
    for gpu in gpus {
        let (own, companions): (Vec<&gpu::DeviceNode>, Vec<&gpu::DeviceNode>) =
            gpu.device_nodes.iter().partition(|n| !n.shared);
        if own.is_empty() {
            // Shared nodes alone give no access to this GPU, and a device with no edits is
            // refused by runtimes: no device, and its companions are not needed for it.
            skipped.push(format!(
                "{}: no device node of its own under {} (is its driver loaded?), so it has no \
                 CDI device",
                describe(gpu),
                dev_root.display()
            ));
            continue;
        }
        let own = own
            .into_iter()
            .map(|n| container_node(n, dev_root))
            .collect::<Result<Vec<_>, _>>()?;
        for node in companions {
            let node = container_node(node, dev_root)?;
            insert_shared(&mut shared, node)?;
        }
        described.push((gpu, own));
    }
    if described.is_empty() {
        return Err(CdiError::NoDeviceNodes {
            count: gpus.len(),
            dev_root: dev_root.to_path_buf(),
        });
    }

    // Index names are taken first so that no UUID can shadow one.
    let mut taken: BTreeSet<String> = BTreeSet::from([ALL_DEVICE.to_string()]);
    for gpu in gpus {
        if !taken.insert(gpu.index.to_string()) {
            return Err(CdiError::DuplicateDevice(gpu.index.to_string()));
        }
    }
    let mut uuid_count: BTreeMap<&str, usize> = BTreeMap::new();
    for (gpu, _) in &described {
        if let Some(uuid) = gpu.uuid.as_deref() {
            *uuid_count.entry(uuid).or_default() += 1;
        }
    }

    let mut devices = Vec::new();
    let mut all: Vec<DeviceNode> = Vec::new();
    for (gpu, own) in &described {
        let edits = ContainerEdits {
            device_nodes: own.clone(),
        };
        devices.push(Device {
            name: gpu.index.to_string(),
            container_edits: edits.clone(),
        });
        if let Some(uuid) = gpu.uuid.as_deref() {
            let refusal = if let Err(reason) = validate_device_name(uuid) {
                Some(format!("is not a valid CDI device name ({reason})"))
            } else if uuid_count.get(uuid).copied().unwrap_or(0) > 1 {
                Some("is also another GPU's UUID".to_string())
            } else if taken.contains(uuid) {
                Some("is already the name of another device".to_string())
            } else {
                None
            };
            match refusal {
                Some(why) => skipped.push(format!(
                    "{}: its UUID {uuid:?} {why}, so the GPU is only device {:?}",
                    describe(gpu),
                    gpu.index.to_string()
                )),
                None => {
                    taken.insert(uuid.to_string());
                    devices.push(Device {
                        name: uuid.to_string(),
                        container_edits: edits,
                    });
                }
            }
        }
        for node in own {
            if !all.iter().any(|n| n.path == node.path) {
                all.push(node.clone());
            }
        }
    }
    devices.push(Device {
        name: ALL_DEVICE.to_string(),
        container_edits: ContainerEdits { device_nodes: all },
    });

    Ok(Generated {
        spec: Spec::lowest_version(Spec {
            cdi_version: String::new(),
            kind: kind.to_string(),
            devices,
            container_edits: ContainerEdits {
                device_nodes: shared.into_values().collect(),
            },
        }),
        skipped,
    })
}

/// A released CDI spec version, comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u32, u32, u32);

impl Version {
    /// One of [`CDI_VERSIONS`], with or without a leading `v`.
    fn parse(text: &str) -> Result<Version, CdiError> {
        let unknown = || CdiError::UnknownVersion(text.to_string());
        let bare = text.strip_prefix('v').unwrap_or(text);
        if !CDI_VERSIONS.contains(&bare) {
            return Err(unknown());
        }
        let mut parts = bare.split('.').map(str::parse::<u32>);
        match (parts.next(), parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch))) => Ok(Version(major, minor, patch)),
            _ => Err(unknown()),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The oldest version every runtime's CDI library reads.
const OLDEST: Version = Version(0, 3, 0);

/// Refuses a version that is not one of [`CDI_VERSIONS`] (before any work is done for it).
pub fn check_version(text: &str) -> Result<(), CdiError> {
    Version::parse(text).map(|_| ())
}

impl Spec {
    /// The features of the spec that need a version newer than 0.3.0: (the version, why), the
    /// rules of the reference library's `MinimumRequiredVersion` for the fields nvbind writes.
    fn needs(&self) -> Vec<(Version, String)> {
        let mut needs = Vec::new();
        if let Some(d) = self
            .devices
            .iter()
            .find(|d| d.name.starts_with(|c: char| c.is_ascii_digit()))
        {
            needs.push((
                Version(0, 5, 0),
                format!("device {:?} starts with a digit (0.5.0 and later)", d.name),
            ));
        }
        let edits = self
            .devices
            .iter()
            .map(|d| &d.container_edits)
            .chain([&self.container_edits]);
        if let Some(node) = edits
            .flat_map(|e| &e.device_nodes)
            .find(|n| n.host_path.is_some())
        {
            needs.push((
                Version(0, 5, 0),
                format!(
                    "node {} has a hostPath, as a dev root other than /dev needs (0.5.0 and \
                     later)",
                    node.path
                ),
            ));
        }
        if let Some((_, class)) = self.kind.split_once('/') {
            if class.contains('.') {
                needs.push((
                    Version(0, 6, 0),
                    format!("the class {class:?} of the kind has a dot (0.6.0 and later)"),
                ));
            }
        }
        needs
    }

    /// The lowest version that can describe the spec.
    fn required_version(&self) -> Version {
        self.needs()
            .into_iter()
            .map(|(v, _)| v)
            .max()
            .unwrap_or(OLDEST)
    }

    /// The spec with `cdiVersion` set to the lowest version its contents need.
    fn lowest_version(mut self) -> Spec {
        self.cdi_version = self.required_version().to_string();
        self
    }

    /// Sets `cdiVersion` to `asked`, one of [`CDI_VERSIONS`] (a leading `v` is accepted), if the
    /// spec's contents can be described in that version.
    pub fn set_version(&mut self, asked: &str) -> Result<(), CdiError> {
        let version = Version::parse(asked)?;
        let too_new: Vec<String> = self
            .needs()
            .into_iter()
            .filter(|(needed, _)| *needed > version)
            .map(|(_, why)| why)
            .collect();
        if !too_new.is_empty() {
            return Err(CdiError::VersionTooOld {
                asked: version.to_string(),
                needed: self.required_version().to_string(),
                why: too_new.join(", and "),
            });
        }
        self.cdi_version = version.to_string();
        Ok(())
    }
}

/// Where container engines read CDI specs from: the defaults of Podman, containerd, CRI-O and
/// Docker.
pub const SPEC_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

/// At most this many spec files are read per directory, each at most this large.
const MAX_SPEC_FILES: usize = 256;
const MAX_SPEC_BYTES: u64 = 1 << 20;

/// A device of a spec installed for the engines: `kind=name` (what `--device` is given) and the
/// numbers of its own device nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledDevice {
    pub qualified: String,
    pub nodes: BTreeSet<(u32, u32)>,
}

/// Only what naming a device by its nodes needs, from any vendor's spec: unknown fields are
/// ignored here (another tool's spec may use edits nvbind does not model).
#[derive(Deserialize)]
struct AnySpec {
    kind: String,
    #[serde(default)]
    devices: Vec<AnyDevice>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyDevice {
    name: String,
    #[serde(default)]
    container_edits: AnyEdits,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyEdits {
    #[serde(default)]
    device_nodes: Vec<AnyNode>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyNode {
    path: String,
    host_path: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
}

/// The devices of the JSON specs in `dirs` (YAML specs are skipped), in directory order and
/// then file-name order. A spec that cannot be read is skipped with a debug message: this only
/// names devices in messages.
pub fn installed_devices(dirs: &[&Path]) -> Vec<InstalledDevice> {
    let mut devices = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files.into_iter().take(MAX_SPEC_FILES) {
            match read_installed(&file) {
                Ok(found) => devices.extend(found),
                Err(e) => log::debug!("CDI spec {}: {e}", file.display()),
            }
        }
    }
    devices
}

fn read_installed(file: &Path) -> Result<Vec<InstalledDevice>, String> {
    use std::io::Read;
    // A regular file only: no link is followed, and a FIFO cannot block the read.
    let fd = rustix::fs::open(
        file,
        rustix::fs::OFlags::RDONLY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| e.to_string())?;
    let file = std::fs::File::from(fd);
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_SPEC_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    let spec: AnySpec = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(spec
        .devices
        .into_iter()
        .map(|device| InstalledDevice {
            qualified: format!("{}={}", spec.kind, device.name),
            nodes: device
                .container_edits
                .device_nodes
                .iter()
                .filter_map(node_numbers)
                .collect(),
        })
        .collect())
}

/// A spec node's numbers: as written, or those of the host node it names.
fn node_numbers(node: &AnyNode) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    match (node.major, node.minor) {
        (Some(major), Some(minor)) => {
            Some((u32::try_from(major).ok()?, u32::try_from(minor).ok()?))
        }
        _ => {
            let host = node.host_path.as_deref().unwrap_or(&node.path);
            let rdev = std::fs::metadata(host).ok()?.rdev();
            Some((rustix::fs::major(rdev), rustix::fs::minor(rdev)))
        }
    }
}

/// The installed devices that describe a container holding the device nodes `present`: those
/// whose every node it has, largest first, each adding nodes the ones before did not cover (a
/// container given `gpu=0` and `gpu=1` is described by `gpu=all`, if the spec has it; one given
/// both another way, by both). One name per set of nodes: the first (a GPU's index before its
/// UUID).
pub fn devices_within(devices: &[InstalledDevice], present: &BTreeSet<(u32, u32)>) -> Vec<String> {
    let mut fitting: Vec<&InstalledDevice> = devices
        .iter()
        .filter(|d| !d.nodes.is_empty() && d.nodes.is_subset(present))
        .collect();
    // Stable: among devices of one size, the spec's order.
    fitting.sort_by_key(|d| std::cmp::Reverse(d.nodes.len()));
    let mut covered: BTreeSet<(u32, u32)> = BTreeSet::new();
    let mut named = Vec::new();
    for device in fitting {
        if !device.nodes.is_subset(&covered) {
            covered.extend(device.nodes.iter().copied());
            named.push(device.qualified.clone());
        }
    }
    named
}

/// The installed device whose nodes are exactly `nodes`, preferring one of `kind`: what to
/// ask an engine for to get those nodes.
pub fn device_with_nodes(
    devices: &[InstalledDevice],
    nodes: &BTreeSet<(u32, u32)>,
    kind: Option<&str>,
) -> Option<String> {
    let exact = || devices.iter().filter(|d| d.nodes == *nodes);
    kind.and_then(|kind| {
        exact().find(|d| d.qualified.split_once('=').is_some_and(|(k, _)| k == kind))
    })
    .or_else(|| exact().next())
    .map(|d| d.qualified.clone())
}

/// The spec as pretty-printed JSON, with a final newline.
pub fn to_json(spec: &Spec) -> String {
    // serde_json fails only on maps with non-string keys and on Serialize impls that report
    // errors; a Spec is strings, integers, a unit enum, Options and Vecs of those, so this
    // cannot fail.
    let mut json = serde_json::to_string_pretty(spec).expect("a CDI spec always serialises");
    json.push('\n');
    json
}

/// "GPU 1 (0000:0c:00.0, AMD Radeon RX 6600)", for messages.
fn describe(gpu: &GpuInfo) -> String {
    format!("GPU {} ({}, {})", gpu.index, gpu.pci_address, gpu.name)
}

/// A discovered node as the container sees it: its path relative to the dev root, re-rooted at
/// `/dev`; the host path (made absolute: a runtime resolves it, not nvbind's working directory)
/// only when it differs.
fn container_node(node: &gpu::DeviceNode, dev_root: &Path) -> Result<DeviceNode, CdiError> {
    let outside = || CdiError::OutsideDevRoot {
        node: node.path.clone(),
        dev_root: dev_root.to_path_buf(),
    };
    let rel = node.path.strip_prefix(dev_root).map_err(|_| outside())?;
    // `..` (or nothing at all) would put the node outside the container's /dev.
    let mut path = String::from(CONTAINER_DEV);
    let mut parts = 0;
    for component in rel.components() {
        match component {
            Component::Normal(part) => {
                let part = part
                    .to_str()
                    .ok_or_else(|| CdiError::NotUtf8(node.path.clone()))?;
                path.push('/');
                path.push_str(part);
                parts += 1;
            }
            Component::CurDir => {}
            _ => return Err(outside()),
        }
    }
    if parts == 0 {
        return Err(outside());
    }
    let host = std::path::absolute(&node.path).map_err(|source| CdiError::Absolute {
        path: node.path.clone(),
        source,
    })?;
    let host = host
        .to_str()
        .ok_or_else(|| CdiError::NotUtf8(node.path.clone()))?;
    Ok(DeviceNode {
        host_path: (host != path).then(|| host.to_string()),
        path,
        node_type: Some(NodeType::Char),
        major: Some(i64::from(node.major)),
        minor: Some(i64::from(node.minor)),
    })
}

/// Adds a shared node once: two GPUs of one vendor list the same `nvidiactl`.
fn insert_shared(
    shared: &mut BTreeMap<String, DeviceNode>,
    node: DeviceNode,
) -> Result<(), CdiError> {
    match shared.get(&node.path) {
        None => {
            shared.insert(node.path.clone(), node);
            Ok(())
        }
        Some(known) if *known == node => Ok(()),
        Some(known) => Err(CdiError::ConflictingNode {
            path: node.path.clone(),
            first: summary(known),
            second: summary(&node),
        }),
    }
}

/// "/host/dev/nvidiactl 195:255", for messages.
fn summary(node: &DeviceNode) -> String {
    format!(
        "{} {}:{}",
        node.host_path.as_deref().unwrap_or(&node.path),
        node.major.unwrap_or(0),
        node.minor.unwrap_or(0)
    )
}

/// Checks a kind (`vendor/class`) as both the CDI spec and the reference parser
/// (`pkg/parser` in the CDI repository) require, so that every runtime accepts it:
///
/// * exactly one `/`, with a vendor before it and a class after it;
/// * the vendor is a DNS subdomain (spec) starting with a letter (parser): dot-separated labels
///   of 1–63 ASCII letters, digits and `-`, each starting and ending with a letter or digit, at
///   most 253 characters in all;
/// * the class is at most 63 characters (spec), starts with a letter (parser), ends with a
///   letter or digit, and has only ASCII letters, digits, `-`, `_` and `.` (a dot makes the
///   spec's version 0.6.0 or later).
pub fn validate_kind(kind: &str) -> Result<(), CdiError> {
    let invalid = |reason: String| CdiError::InvalidKind {
        kind: kind.to_string(),
        reason,
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return Err(invalid("no '/' between vendor and class".into()));
    };
    validate_vendor(vendor).map_err(|r| invalid(format!("the vendor {vendor:?} {r}")))?;
    validate_class(class).map_err(|r| invalid(format!("the class {class:?} {r}")))?;
    Ok(())
}

fn validate_vendor(vendor: &str) -> Result<(), String> {
    if vendor.is_empty() {
        return Err("is empty".into());
    }
    if !vendor.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("must start with a letter".into());
    }
    for label in vendor.split('.') {
        if label.is_empty() {
            return Err("has an empty DNS label (a dot at either end, or two in a row)".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "has {c:?}, which a DNS name cannot (letters, digits, '-' and '.')"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "has the DNS label {label:?}, which must start and end with a letter or digit"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "has a DNS label longer than 63 characters ({label:?})"
            ));
        }
    }
    if vendor.len() > 253 {
        return Err("is longer than 253 characters".into());
    }
    Ok(())
}

fn validate_class(class: &str) -> Result<(), String> {
    if class.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = class
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "has {c:?} (only letters, digits, '-', '_' and '.' are allowed)"
        ));
    }
    if !class.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("must start with a letter".into());
    }
    if !class.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must end with a letter or digit".into());
    }
    if class.len() > 63 {
        return Err("is longer than 63 characters".into());
    }
    Ok(())
}

/// Checks a device name as both the CDI spec and the reference parser require: it starts and
/// ends with an ASCII letter or digit (a leading digit makes the spec's version 0.5.0 or later)
/// and has only ASCII letters, digits, `-`, `_` and `.` between. The parser
/// also allows `:`, but the spec does not, so it is refused. The error is the reason, for a
/// message.
pub fn validate_device_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "it has {c:?}; only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{test_gpu, NodeKind, Vendor};
    use serde_json::json;

    const NV_UUID: &str = "GPU-6c7f1e3a-9b2d-4f8e-a1c3-5d7e9f0b2a48";
    const AMD_UUID: &str = "a4c1f2e9b3d87065";

    fn node(dev: &Path, rel: &str, kind: NodeKind, major: u32, minor: u32) -> gpu::DeviceNode {
        let shared = matches!(
            kind,
            NodeKind::NvidiaCtl
                | NodeKind::NvidiaModeset
                | NodeKind::NvidiaUvm
                | NodeKind::NvidiaUvmTools
                | NodeKind::AmdKfd
        );
        gpu::DeviceNode {
            path: dev.join(rel),
            kind,
            major,
            minor,
            shared,
        }
    }

    fn nvidia(dev: &Path, index: usize, card: u32, minor: u32, uuid: Option<&str>) -> GpuInfo {
        let mut g = test_gpu(Path::new("/sys/x"), Vendor::Nvidia, "nvidia");
        g.index = index;
        g.name = "NVIDIA GeForce RTX 4070".into();
        g.pci_address = format!("0000:0{}:00.0", index + 1);
        g.uuid = uuid.map(str::to_string);
        g.device_nodes = vec![
            node(
                dev,
                &format!("dri/card{card}"),
                NodeKind::DrmCard,
                226,
                card,
            ),
            node(
                dev,
                &format!("dri/renderD{}", 128 + card),
                NodeKind::DrmRender,
                226,
                128 + card,
            ),
            node(
                dev,
                &format!("nvidia{minor}"),
                NodeKind::NvidiaGpu,
                195,
                minor,
            ),
            node(dev, "nvidiactl", NodeKind::NvidiaCtl, 195, 255),
            node(dev, "nvidia-modeset", NodeKind::NvidiaModeset, 195, 254),
            node(dev, "nvidia-uvm", NodeKind::NvidiaUvm, 509, 0),
            node(dev, "nvidia-uvm-tools", NodeKind::NvidiaUvmTools, 509, 1),
        ];
        g
    }

    fn amd(dev: &Path, index: usize, uuid: Option<&str>) -> GpuInfo {
        let mut g = test_gpu(Path::new("/sys/y"), Vendor::Amd, "amdgpu");
        g.index = index;
        g.name = "AMD Radeon RX 6600".into();
        g.pci_address = "0000:0c:00.0".into();
        g.uuid = uuid.map(str::to_string);
        g.device_nodes = vec![
            node(dev, "dri/card0", NodeKind::DrmCard, 226, 0),
            node(dev, "dri/renderD128", NodeKind::DrmRender, 226, 128),
            node(dev, "kfd", NodeKind::AmdKfd, 235, 0),
        ];
        g
    }

    /// The mixed-nvidia-amd fixture host, as discovery describes it.
    fn mixed(dev: &Path) -> Vec<GpuInfo> {
        vec![
            nvidia(dev, 0, 1, 0, Some(NV_UUID)),
            amd(dev, 1, Some(AMD_UUID)),
        ]
    }

    fn names(spec: &Spec) -> Vec<&str> {
        spec.devices.iter().map(|d| d.name.as_str()).collect()
    }

    fn device<'a>(spec: &'a Spec, name: &str) -> &'a Device {
        spec.devices
            .iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no device {name:?} in {:?}", names(spec)))
    }

    fn paths(edits: &ContainerEdits) -> Vec<&str> {
        edits.device_nodes.iter().map(|n| n.path.as_str()).collect()
    }

    #[test]
    fn the_default_kind_is_valid_and_the_versions_are_in_order() {
        assert!(validate_kind(DEFAULT_KIND).is_ok());
        let versions: Vec<Version> = CDI_VERSIONS
            .iter()
            .map(|v| Version::parse(v).expect("a known version"))
            .collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(versions[0], OLDEST);
        assert_eq!(
            versions.last().map(Version::to_string).as_deref(),
            Some("1.1.0")
        );
    }

    #[test]
    fn the_version_written_is_the_lowest_the_contents_need() {
        let dev = Path::new("/dev");
        // Devices named by index need 0.5.0: the usual spec.
        let spec = generate(&[amd(dev, 0, None)], dev, DEFAULT_KIND).expect("spec");
        assert_eq!(spec.cdi_version, "0.5.0");
        // A dot in the class needs 0.6.0.
        let spec = generate(&[amd(dev, 0, None)], dev, "example.com/gpu.v2").expect("spec");
        assert_eq!(spec.cdi_version, "0.6.0");
        // Without index names and host paths, the oldest version there is.
        let mut spec = generate(&[amd(dev, 0, None)], dev, DEFAULT_KIND).expect("spec");
        spec.devices.retain(|d| d.name == ALL_DEVICE);
        assert_eq!(spec.clone().lowest_version().cdi_version, "0.3.0");
        // Only a host path: 0.5.0 again.
        spec.devices[0].container_edits.device_nodes[0].host_path = Some("/host/dev/x".into());
        assert_eq!(spec.lowest_version().cdi_version, "0.5.0");
    }

    #[test]
    fn another_version_can_be_asked_for_if_it_can_describe_the_spec() {
        let dev = Path::new("/tmp/host/dev");
        let spec = generate(&[amd(dev, 0, None)], dev, "example.com/gpu.v2").expect("spec");
        for (asked, written) in [("1.1.0", "1.1.0"), ("v0.7.0", "0.7.0"), ("0.6.0", "0.6.0")] {
            let mut s = spec.clone();
            s.set_version(asked).expect(asked);
            assert_eq!(s.cdi_version, written);
        }
        let mut s = spec.clone();
        let err = s
            .set_version("0.5.0")
            .expect_err("too old for a dotted class");
        let text = err.to_string();
        assert!(
            text.starts_with("CDI version 0.5.0 cannot describe this spec: the class \"gpu.v2\""),
            "{text}"
        );
        assert!(text.contains("ask for 0.6.0 or later"), "{text}");
        let err = s.set_version("0.4.0").expect_err("too old");
        let text = err.to_string();
        for why in ["device \"0\" starts with a digit", "hostPath", "has a dot"] {
            assert!(text.contains(why), "{text}");
        }
        assert_eq!(text.lines().count(), 1);
        assert_eq!(s.cdi_version, "0.6.0", "a refused version changes nothing");
        for unknown in ["2.0.0", "0.5", "latest", "", "0.2.0"] {
            let err = s.set_version(unknown).expect_err(unknown);
            assert!(matches!(err, CdiError::UnknownVersion(_)), "{err:?}");
            assert!(err.to_string().contains("0.3.0, 0.4.0"), "{err}");
        }
    }

    #[test]
    fn a_mixed_host_gets_index_uuid_and_all_devices() {
        let dev = Path::new("/tmp/host/dev");
        let spec = generate(&mixed(dev), dev, DEFAULT_KIND).expect("spec");
        assert_eq!(spec.cdi_version, "0.5.0");
        assert_eq!(spec.kind, DEFAULT_KIND);
        assert_eq!(names(&spec), ["0", NV_UUID, "1", AMD_UUID, "all"]);

        let nv = &device(&spec, "0").container_edits;
        assert_eq!(
            paths(nv),
            ["/dev/dri/card1", "/dev/dri/renderD129", "/dev/nvidia0"]
        );
        assert_eq!(&device(&spec, NV_UUID).container_edits, nv);
        assert_eq!(
            nv.device_nodes[2],
            DeviceNode {
                path: "/dev/nvidia0".into(),
                host_path: Some("/tmp/host/dev/nvidia0".into()),
                node_type: Some(NodeType::Char),
                major: Some(195),
                minor: Some(0),
            }
        );
        let amd = &device(&spec, "1").container_edits;
        assert_eq!(paths(amd), ["/dev/dri/card0", "/dev/dri/renderD128"]);
        assert_eq!(&device(&spec, AMD_UUID).container_edits, amd);
        assert_eq!(
            paths(&device(&spec, "all").container_edits),
            [
                "/dev/dri/card1",
                "/dev/dri/renderD129",
                "/dev/nvidia0",
                "/dev/dri/card0",
                "/dev/dri/renderD128"
            ]
        );
        // Companions once, sorted, at the top level; never in a device.
        assert_eq!(
            paths(&spec.container_edits),
            [
                "/dev/kfd",
                "/dev/nvidia-modeset",
                "/dev/nvidia-uvm",
                "/dev/nvidia-uvm-tools",
                "/dev/nvidiactl"
            ]
        );
        let kfd = &spec.container_edits.device_nodes[0];
        assert_eq!(
            (kfd.host_path.as_deref(), kfd.major, kfd.minor),
            (Some("/tmp/host/dev/kfd"), Some(235), Some(0))
        );
    }

    #[test]
    fn the_json_uses_the_spec_names_and_omits_what_is_empty() {
        // Nodes in the real /dev need no hostPath.
        let dev = Path::new("/dev");
        let gpus = [amd(dev, 0, None)];
        let spec = generate(&gpus, dev, "example.com/gpu").expect("spec");
        let value: serde_json::Value = serde_json::from_str(&to_json(&spec)).expect("json");
        fn node(path: &str, major: u32, minor: u32) -> serde_json::Value {
            json!({"path": path, "type": "c", "major": major, "minor": minor})
        }
        let own = json!({"deviceNodes": [
            node("/dev/dri/card0", 226, 0),
            node("/dev/dri/renderD128", 226, 128),
        ]});
        assert_eq!(
            value,
            json!({
                "cdiVersion": "0.5.0",
                "kind": "example.com/gpu",
                "devices": [
                    {"name": "0", "containerEdits": own},
                    {"name": "all", "containerEdits": own},
                ],
                "containerEdits": {"deviceNodes": [node("/dev/kfd", 235, 0)]},
            })
        );
        assert!(to_json(&spec).ends_with("}\n"));
    }

    #[test]
    fn without_shared_nodes_the_top_level_edits_are_omitted() {
        let dev = Path::new("/dev");
        let mut gpu = amd(dev, 0, None);
        gpu.device_nodes.retain(|n| !n.shared);
        let spec = generate(&[gpu], dev, DEFAULT_KIND).expect("spec");
        assert!(spec.container_edits.is_empty());
        let value: serde_json::Value = serde_json::from_str(&to_json(&spec)).expect("json");
        assert!(value.get("containerEdits").is_none(), "{value:#}");
    }

    #[test]
    fn specs_read_back_unchanged_and_unknown_fields_are_refused() {
        let dev = Path::new("/tmp/host/dev");
        let spec = generate(&mixed(dev), dev, DEFAULT_KIND).expect("spec");
        let back: Spec = serde_json::from_str(&to_json(&spec)).expect("parse");
        assert_eq!(back, spec);
        let with_env = r#"{"cdiVersion":"1.1.0","kind":"a.io/b","devices":[
            {"name":"0","containerEdits":{"env":["A=1"]}}]}"#;
        assert!(serde_json::from_str::<Spec>(with_env).is_err());
    }

    #[test]
    fn two_gpus_of_one_vendor_share_their_companions_once() {
        let dev = Path::new("/dev");
        let gpus = [
            nvidia(dev, 0, 0, 0, Some("GPU-aaaa")),
            nvidia(dev, 1, 1, 1, Some("GPU-bbbb")),
        ];
        let spec = generate(&gpus, dev, DEFAULT_KIND).expect("spec");
        assert_eq!(
            paths(&spec.container_edits),
            [
                "/dev/nvidia-modeset",
                "/dev/nvidia-uvm",
                "/dev/nvidia-uvm-tools",
                "/dev/nvidiactl"
            ]
        );
        assert_eq!(names(&spec), ["0", "GPU-aaaa", "1", "GPU-bbbb", "all"]);
        assert_eq!(device(&spec, "all").container_edits.device_nodes.len(), 6);
    }

    #[test]
    fn a_gpu_without_nodes_of_its_own_gets_no_device() {
        let dev = Path::new("/dev");
        // NVML saw this GPU but its /dev/nvidiaN is missing: only the shared nodes.
        let mut lost = nvidia(dev, 0, 1, 0, Some(NV_UUID));
        lost.device_nodes.retain(|n| n.shared);
        let gpus = [lost, amd(dev, 1, None)];
        let out = generate_detailed(&gpus, dev, DEFAULT_KIND).expect("spec");
        assert_eq!(names(&out.spec), ["1", "all"]);
        // Its companions are not needed for any device.
        assert_eq!(paths(&out.spec.container_edits), ["/dev/kfd"]);
        assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
        let expected = "GPU 0 (0000:01:00.0, NVIDIA GeForce RTX 4070): no device node of its own \
                        under /dev";
        assert!(out.skipped[0].starts_with(expected), "{:?}", out.skipped);
    }

    #[test]
    fn no_gpus_or_no_nodes_is_a_one_line_error() {
        let dev = Path::new("/tmp/host/dev");
        let err = generate(&[], dev, DEFAULT_KIND).expect_err("no GPUs");
        assert!(matches!(err, CdiError::NoGpus), "{err:?}");
        assert!(err.to_string().contains("--sysfs-root"), "{err}");

        let mut bare = amd(dev, 0, None);
        bare.device_nodes.clear();
        let mut shared_only = nvidia(dev, 1, 1, 0, None);
        shared_only.device_nodes.retain(|n| n.shared);
        let err = generate(&[bare, shared_only], dev, DEFAULT_KIND).expect_err("no nodes");
        let text = err.to_string();
        assert!(
            matches!(err, CdiError::NoDeviceNodes { count: 2, .. }),
            "{err:?}"
        );
        assert!(text.starts_with("2 GPU(s) found, but none"), "{text}");
        assert!(
            text.contains("/tmp/host/dev") && text.contains("--dev-root"),
            "{text}"
        );
        for e in [text, CdiError::NoGpus.to_string()] {
            assert_eq!(e.lines().count(), 1, "{e:?}");
        }
    }

    #[test]
    fn uuids_that_cannot_be_device_names_are_skipped_with_a_reason() {
        let dev = Path::new("/dev");
        let gpus = [
            // A MIG-style id has slashes.
            nvidia(dev, 0, 0, 0, Some("MIG-GPU-6c7f/1/0")),
            // Shadowing a device name.
            nvidia(dev, 1, 1, 1, Some("all")),
            nvidia(dev, 2, 2, 2, Some("0")),
            // The same id twice (firmware that does not fill it in).
            nvidia(dev, 3, 3, 3, Some("0000000000000000")),
            nvidia(dev, 4, 4, 4, Some("0000000000000000")),
            nvidia(dev, 5, 5, 5, Some("GPU-ok")),
        ];
        let out = generate_detailed(&gpus, dev, DEFAULT_KIND).expect("spec");
        assert_eq!(
            names(&out.spec),
            ["0", "1", "2", "3", "4", "5", "GPU-ok", "all"]
        );
        assert_eq!(out.skipped.len(), 5, "{:#?}", out.skipped);
        assert!(
            out.skipped[0].contains(
                "its UUID \"MIG-GPU-6c7f/1/0\" is not a valid CDI device name (it has '/'"
            ),
            "{}",
            out.skipped[0]
        );
        assert!(out.skipped[0].ends_with("so the GPU is only device \"0\""));
        assert!(out.skipped[1].contains("is already the name of another device"));
        assert!(out.skipped[2].contains("is already the name of another device"));
        assert!(out.skipped[3].contains("is also another GPU's UUID"));
        assert!(out.skipped[4].contains("is also another GPU's UUID"));
    }

    #[test]
    fn duplicate_indices_are_refused() {
        let dev = Path::new("/dev");
        let gpus = [amd(dev, 0, None), amd(dev, 0, None)];
        let err = generate(&gpus, dev, DEFAULT_KIND).expect_err("duplicate");
        assert!(
            matches!(err, CdiError::DuplicateDevice(ref n) if n == "0"),
            "{err:?}"
        );
    }

    #[test]
    fn nodes_outside_the_dev_root_are_refused() {
        let dev = Path::new("/tmp/host/dev");
        let mut gpu = amd(dev, 0, None);
        gpu.device_nodes[0].path = PathBuf::from("/elsewhere/dri/card0");
        let err = generate(&[gpu.clone()], dev, DEFAULT_KIND).expect_err("outside");
        assert!(matches!(err, CdiError::OutsideDevRoot { .. }), "{err:?}");
        gpu.device_nodes[0].path = dev.join("../etc/passwd");
        let err = generate(&[gpu.clone()], dev, DEFAULT_KIND).expect_err("dotdot");
        assert!(matches!(err, CdiError::OutsideDevRoot { .. }), "{err:?}");
        gpu.device_nodes[0].path = dev.to_path_buf();
        let err = generate(&[gpu], dev, DEFAULT_KIND).expect_err("the root itself");
        assert!(matches!(err, CdiError::OutsideDevRoot { .. }), "{err:?}");
    }

    #[test]
    fn a_relative_dev_root_gives_absolute_host_paths() {
        let dev = Path::new("fixture/dev");
        let spec = generate(&[amd(dev, 0, None)], dev, DEFAULT_KIND).expect("spec");
        let node = &device(&spec, "0").container_edits.device_nodes[0];
        assert_eq!(node.path, "/dev/dri/card0");
        let host = node.host_path.as_deref().expect("hostPath");
        assert!(host.starts_with('/'), "{host}");
        assert!(host.ends_with("/fixture/dev/dri/card0"), "{host}");
    }

    #[test]
    fn conflicting_shared_nodes_are_refused() {
        let dev = Path::new("/dev");
        let mut second = nvidia(dev, 1, 1, 1, None);
        for n in &mut second.device_nodes {
            if n.kind == NodeKind::NvidiaCtl {
                n.minor = 254;
            }
        }
        let gpus = [nvidia(dev, 0, 0, 0, None), second];
        let err = generate(&gpus, dev, DEFAULT_KIND).expect_err("conflict");
        let expected = "/dev/nvidiactl is listed twice with different host paths or numbers \
                        (/dev/nvidiactl 195:255 and /dev/nvidiactl 195:254)";
        assert!(err.to_string().contains(expected), "{err}");
    }

    #[test]
    fn kinds_follow_the_spec_and_the_reference_parser() {
        for good in [
            "nvbind.io/gpu",
            "vendor.com/foo",
            "foo.bar.baz/foo-bar123.B_az",
            "a/b",
            "Vendor-1.example/Class9",
        ] {
            assert!(
                validate_kind(good).is_ok(),
                "{good}: {:?}",
                validate_kind(good)
            );
        }
        let long_class = format!("a.io/{}", "c".repeat(64));
        let long_label = format!("{}.io/gpu", "v".repeat(64));
        let long_vendor = format!("{}/gpu", vec!["v".repeat(60); 5].join("."));
        for (bad, why) in [
            ("foo", "no '/'"),
            ("vendor.com/foo/", "has '/'"),
            ("vendor.com/foo/bar", "has '/'"),
            ("/gpu", "the vendor \"\" is empty"),
            ("nvbind.io/", "the class \"\" is empty"),
            ("1vendor.io/gpu", "must start with a letter"),
            ("vendor..io/gpu", "empty DNS label"),
            ("vendor.io./gpu", "empty DNS label"),
            ("ven_dor.io/gpu", "has '_'"),
            (
                "vendor-.io/gpu",
                "must start and end with a letter or digit",
            ),
            ("vendor.io/-gpu", "must start with a letter"),
            ("vendor.io/9gpu", "must start with a letter"),
            ("vendor.io/gpu-", "must end with a letter or digit"),
            ("vendor.io/g=pu", "has '='"),
            ("vendör.io/gpu", "has 'ö'"),
            (long_class.as_str(), "longer than 63"),
            (long_label.as_str(), "longer than 63"),
            (long_vendor.as_str(), "longer than 253"),
        ] {
            let err = validate_kind(bad).expect_err(bad);
            let text = err.to_string();
            assert!(matches!(err, CdiError::InvalidKind { .. }));
            assert!(text.contains(why), "{bad}: {text}");
            assert!(text.ends_with("(a kind is VENDOR/CLASS, such as nvbind.io/gpu)"));
        }
        // A bad kind is reported before anything else.
        let err = generate(&[], Path::new("/dev"), "nope").expect_err("kind");
        assert!(matches!(err, CdiError::InvalidKind { .. }), "{err:?}");
    }

    #[test]
    fn installed_specs_name_the_devices_a_container_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = Path::new("/dev");
        let ours = generate(&mixed(dev), dev, DEFAULT_KIND).expect("spec");
        std::fs::write(dir.path().join("nvbind.json"), to_json(&ours)).expect("write");
        // Another vendor's spec, with fields nvbind does not model and a node without numbers
        // (/dev/null's are looked up: 1:3).
        std::fs::write(
            dir.path().join("other.json"),
            r#"{"cdiVersion":"0.6.0","kind":"example.com/null","annotations":{"a":"b"},
               "devices":[{"name":"n","containerEdits":{"env":["A=1"],
               "deviceNodes":[{"path":"/dev/null"}]}}]}"#,
        )
        .expect("write");
        std::fs::write(dir.path().join("broken.json"), "{").expect("write");
        std::fs::write(dir.path().join("ignored.yaml"), "kind: x/y").expect("write");
        let installed = installed_devices(&[dir.path(), Path::new("/no/such/dir")]);
        let names: Vec<&str> = installed.iter().map(|d| d.qualified.as_str()).collect();
        assert_eq!(
            names,
            [
                "nvbind.io/gpu=0",
                &format!("nvbind.io/gpu={NV_UUID}"),
                "nvbind.io/gpu=1",
                &format!("nvbind.io/gpu={AMD_UUID}"),
                "nvbind.io/gpu=all",
                "example.com/null=n",
            ]
        );
        assert_eq!(installed[5].nodes, BTreeSet::from([(1, 3)]));

        let holds = |nodes: &[(u32, u32)]| {
            let present: BTreeSet<(u32, u32)> = nodes.iter().copied().collect();
            devices_within(&installed, &present)
        };
        // GPU 0's nodes (and the shared ones, and a tty): device 0, not its UUID alias.
        assert_eq!(
            holds(&[(226, 1), (226, 129), (195, 0), (195, 255), (5, 0)]),
            ["nvbind.io/gpu=0"]
        );
        // Every GPU: "all", the largest that fits.
        assert_eq!(
            holds(&[(226, 1), (226, 129), (195, 0), (226, 0), (226, 128)]),
            ["nvbind.io/gpu=all"]
        );
        // Part of a device is not the device.
        assert_eq!(holds(&[(226, 1), (226, 129)]), Vec::<String>::new());
        assert_eq!(holds(&[(1, 3)]), ["example.com/null=n"]);
        // Two devices, neither covering the other: both named.
        assert_eq!(
            holds(&[(226, 1), (226, 129), (195, 0), (1, 3)]),
            ["nvbind.io/gpu=0", "example.com/null=n"]
        );

        // What to ask for to get GPU 1's nodes: its index device, not its UUID alias.
        let gpu1 = BTreeSet::from([(226, 0), (226, 128)]);
        assert_eq!(
            device_with_nodes(&installed, &gpu1, Some("nvbind.io/gpu")).as_deref(),
            Some("nvbind.io/gpu=1")
        );
        assert_eq!(
            device_with_nodes(&installed, &gpu1, Some("other.io/gpu")).as_deref(),
            Some("nvbind.io/gpu=1")
        );
        assert_eq!(
            device_with_nodes(&installed, &BTreeSet::from([(226, 0)]), None),
            None
        );
    }

    #[test]
    fn device_names_follow_the_spec() {
        for good in ["0", "17", "a", "all", NV_UUID, AMD_UUID, "a.b_c-d"] {
            assert!(
                validate_device_name(good).is_ok(),
                "{good}: {:?}",
                validate_device_name(good)
            );
        }
        for bad in ["", "-a", "a-", ".a", "a_", "a:b", "a/b", "a b", "é"] {
            assert!(validate_device_name(bad).is_err(), "{bad:?}");
        }
    }
}
