//! GPUs: which ones the host has ([`discover`]), what each one is doing ([`GpuBackend`], one per
//! vendor) and a sampler that records their state beside the frames ([`Sampler`]).
//!
//! Every quantity is in base units (ratios 0–1, hertz, bytes, watts, degrees Celsius), named the way
//! Prometheus names them. A counter a GPU does not offer is `None`, never zero.

mod amd;
mod discover;
mod intel;
mod nvidia;
mod sampler;
pub mod show;
mod summary;
pub mod sysfs;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use discover::{char_device, discover, Discovery, NvmlState};
pub use sampler::{GpuSeries, Sampler, SamplerConfig};
pub use summary::{evidence_for, summarise, GpuReport, GpuSummary, Interval};
pub use sysfs::Warnings;

/// Where to read the host from: the real roots, or copies (a container with the host's `/sys`
/// mounted elsewhere; test fixtures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub proc: PathBuf,
    /// Whether to ask NVML about NVIDIA GPUs. NVML only describes the running system, so by
    /// default it is asked only when `sys` is the real `/sys`.
    pub nvml: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Nvidia,
    Amd,
    Intel,
    Other,
}

impl Vendor {
    pub fn from_pci_id(vendor: u32) -> Vendor {
        match vendor {
            0x10de => Vendor::Nvidia,
            0x1002 => Vendor::Amd,
            0x8086 => Vendor::Intel,
            _ => Vendor::Other,
        }
    }

    /// The vendor as people write it.
    pub fn label(self) -> &'static str {
        match self {
            Vendor::Nvidia => "NVIDIA",
            Vendor::Amd => "AMD",
            Vendor::Intel => "Intel",
            Vendor::Other => "other",
        }
    }
}

/// What a device node is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// `/dev/dri/cardN`: the DRM primary node (modesetting and rendering).
    DrmCard,
    /// `/dev/dri/renderD*`: the DRM render node (rendering only).
    DrmRender,
    /// `/dev/nvidiaN`: one NVIDIA GPU.
    NvidiaGpu,
    /// `/dev/nvidiactl`: NVIDIA's control node, needed by every NVIDIA GPU user.
    NvidiaCtl,
    /// `/dev/nvidia-modeset`.
    NvidiaModeset,
    /// `/dev/nvidia-uvm`: unified memory (CUDA).
    NvidiaUvm,
    /// `/dev/nvidia-uvm-tools`.
    NvidiaUvmTools,
    /// `/dev/kfd`: AMD's compute (ROCm) node, shared by every AMD GPU.
    AmdKfd,
}

/// A device node with the numbers `stat` gave for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub kind: NodeKind,
    pub major: u32,
    pub minor: u32,
    /// Whether the node is shared with the vendor's other GPUs (`nvidiactl`, `kfd`, ...).
    pub shared: bool,
}

/// One GPU as discovered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Position in PCI address order.
    pub index: usize,
    pub vendor: Vendor,
    pub name: String,
    /// Domain:bus:device.function, as sysfs names it (`0000:03:00.0`).
    pub pci_address: String,
    /// `vendor:device` PCI ids (`1002:73bf`).
    pub pci_id: String,
    /// The bound kernel driver (`amdgpu`, `i915`, `xe`, `nvidia`, ...), or `none`.
    pub driver: String,
    pub driver_version: Option<String>,
    /// The vendor's unique id (NVIDIA `GPU-…`; AMD `unique_id` where the card has one).
    pub uuid: Option<String>,
    pub device_nodes: Vec<DeviceNode>,
    /// Whether runtime power management had the device asleep when it was discovered.
    pub runtime_suspended: bool,
    /// The device's sysfs directory (resolved), where its counters live.
    pub sysfs_path: PathBuf,
}

/// The state of one GPU at one instant. Utilisations are averaged by the hardware or driver over
/// its own recent window; the rest are instantaneous readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// CLOCK_MONOTONIC nanoseconds: the clock frames are stamped with.
    pub t_ns: u64,
    /// The device was runtime-suspended, so nothing was read (reading would wake it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_utilization_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphics_clock_hertz: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sm_clock_hertz: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_clock_hertz: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_used_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_celsius: Option<f64>,
    /// The hottest spot the GPU reports (AMD junction/hotspot), when it differs from the above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotspot_temperature_celsius: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_rpm: Option<f64>,
    /// Why clocks are held down right now (`power`, `thermal`, `current`, ...); empty when they
    /// are not; `None` when the GPU does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_reasons: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_utilization_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_utilization_ratio: Option<f64>,
}

impl GpuSample {
    /// A sample of a runtime-suspended GPU: nothing was read.
    pub fn suspended(t_ns: u64) -> GpuSample {
        GpuSample {
            t_ns,
            suspended: true,
            ..GpuSample::default()
        }
    }

    /// VRAM in use over VRAM installed.
    pub fn vram_used_ratio(&self) -> Option<f64> {
        match (self.vram_used_bytes, self.vram_total_bytes) {
            (Some(used), Some(total)) if total > 0 => Some(used as f64 / total as f64),
            _ => None,
        }
    }
}

/// Bytes in GiB, for people.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Reads one GPU's counters. Implementations must be cheap (a handful of small file reads or
/// NVML calls), never block on the GPU, and never panic on what the driver returns.
pub trait GpuBackend: Send {
    /// The counters now, stamped `t_ns`.
    fn sample(&mut self, t_ns: u64) -> GpuSample;
}

/// A sampler for `gpu`, or why there is none (a GPU nvbind cannot read).
pub fn backend_for(
    gpu: &GpuInfo,
    discovery: &Discovery,
    warnings: &Warnings,
) -> Result<Box<dyn GpuBackend>, String> {
    match (gpu.vendor, gpu.driver.as_str()) {
        (Vendor::Amd, "amdgpu") => Ok(Box::new(amd::AmdBackend::new(gpu, warnings))),
        (Vendor::Intel, "i915" | "xe") => Ok(Box::new(intel::IntelBackend::new(gpu, warnings))),
        (Vendor::Nvidia, _) => {
            nvidia::NvidiaBackend::new(gpu, discovery).map(|b| Box::new(b) as Box<dyn GpuBackend>)
        }
        (_, driver) => Err(format!(
            "no counters for a {:?} GPU on the {driver} driver",
            gpu.vendor
        )),
    }
}

/// A GPU description for unit tests of the backends and the summary.
#[cfg(test)]
pub(crate) fn test_gpu(sysfs_path: &std::path::Path, vendor: Vendor, driver: &str) -> GpuInfo {
    GpuInfo {
        index: 0,
        vendor,
        name: "test".into(),
        pci_address: "0000:03:00.0".into(),
        pci_id: "1002:73bf".into(),
        driver: driver.into(),
        driver_version: None,
        uuid: None,
        device_nodes: Vec::new(),
        runtime_suspended: false,
        sysfs_path: sysfs_path.to_path_buf(),
    }
}

/// A fixture file from `tests/fixtures`.
#[cfg(test)]
pub(crate) fn fixture(rel: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel)
}
