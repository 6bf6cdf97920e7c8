//! Intel GPUs on i915 and xe, through sysfs: the actual GPU frequency, the reasons firmware holds
//! it down (PL1/PL2/PL4 power limits, thermal, PROCHOT, RATL, VR), and hwmon power where the driver
//! has it (discrete cards). Neither driver publishes a busy percentage in sysfs (that needs the
//! perf PMU), so utilisation stays `None` and is said to be missing rather than guessed.

use super::{sysfs::SysfsDir, GpuBackend, GpuInfo, GpuSample, Warnings};

/// Where one driver keeps a GT's frequency and throttle files, relative to the PCI device.
struct Layout {
    act_freq_mhz: String,
    throttle_dir: String,
    /// File name prefix of the reason flags inside `throttle_dir`.
    reason_prefix: &'static str,
    status: String,
}

impl Layout {
    fn i915(card: &str) -> Layout {
        let gt = format!("drm/{card}/gt/gt0");
        Layout {
            act_freq_mhz: format!("{gt}/rps_act_freq_mhz"),
            throttle_dir: gt.clone(),
            reason_prefix: "throttle_reason_",
            status: format!("{gt}/throttle_reason_status"),
        }
    }

    fn xe() -> Layout {
        let freq = "tile0/gt0/freq0";
        Layout {
            act_freq_mhz: format!("{freq}/act_freq"),
            throttle_dir: format!("{freq}/throttle"),
            reason_prefix: "reason_",
            status: format!("{freq}/throttle/status"),
        }
    }
}

/// Throttle reason files and the name a user reads.
const REASONS: [(&str, &str); 8] = [
    ("pl1", "power"),
    ("pl2", "power"),
    ("pl4", "current"),
    ("thermal", "thermal"),
    ("ratl", "thermal"),
    ("prochot", "prochot"),
    ("vr_thermalert", "vr-hot"),
    ("vr_tdc", "current"),
];

pub struct IntelBackend {
    device: SysfsDir,
    layout: Layout,
    /// The i915 card-level frequency file, for kernels without per-GT directories.
    legacy_act_freq: Option<String>,
    /// Last hwmon energy reading (µJ) and when: power is the energy used between two samples.
    last_energy: Option<(u64, u64)>,
}

impl IntelBackend {
    pub fn new(gpu: &GpuInfo, warnings: &Warnings) -> IntelBackend {
        let device = SysfsDir::new(&gpu.sysfs_path, warnings.clone());
        let card = std::fs::read_dir(device.path.join("drm"))
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("card") && !n.contains('-'))
            .min()
            .unwrap_or_else(|| "card0".into());
        let layout = if gpu.driver == "xe" {
            Layout::xe()
        } else {
            Layout::i915(&card)
        };
        IntelBackend {
            legacy_act_freq: (gpu.driver == "i915").then(|| format!("drm/{card}/gt_act_freq_mhz")),
            device,
            layout,
            last_energy: None,
        }
    }

    fn throttle_reasons(&self) -> Option<Vec<String>> {
        let d = &self.device;
        let throttled = d.flag(&self.layout.status)?;
        let mut reasons: Vec<String> = Vec::new();
        if throttled {
            for (file, name) in REASONS {
                let path = format!(
                    "{}/{}{file}",
                    self.layout.throttle_dir, self.layout.reason_prefix
                );
                if d.flag(&path) == Some(true) && !reasons.iter().any(|r| r == name) {
                    reasons.push(name.to_string());
                }
            }
            if reasons.is_empty() {
                // The status bit is set but no reason file says why (a reason newer than this
                // list): say so rather than drop the fact.
                reasons.push("unspecified".into());
            }
        }
        Some(reasons)
    }
}

impl GpuBackend for IntelBackend {
    fn sample(&mut self, t_ns: u64) -> GpuSample {
        let d = &self.device;
        if d.runtime_suspended() {
            return GpuSample {
                t_ns,
                suspended: true,
                ..GpuSample::default()
            };
        }
        let mhz = d
            .u64(&self.layout.act_freq_mhz)
            .or_else(|| self.legacy_act_freq.as_deref().and_then(|f| d.u64(f)));
        let mut s = GpuSample {
            t_ns,
            graphics_clock_hertz: mhz.map(|m| m as f64 * 1e6),
            throttle_reasons: self.throttle_reasons(),
            ..GpuSample::default()
        };
        if let Some(h) = d.hwmon() {
            // Energy is a running µJ counter; the first sample has nothing to difference with.
            if let Some(uj) = h.u64("energy1_input") {
                if let Some((last_uj, last_t)) = self.last_energy {
                    let dt_s = t_ns.saturating_sub(last_t) as f64 / 1e9;
                    if dt_s > 0.0 && uj >= last_uj {
                        s.power_watts = Some((uj - last_uj) as f64 * 1e-6 / dt_s);
                    }
                }
                self.last_energy = Some((uj, t_ns));
            }
            s.power_limit_watts = h
                .u64("power1_max")
                .filter(|&uw| uw > 0)
                .map(|uw| uw as f64 * 1e-6);
            s.temperature_celsius = (1..=4).find_map(|i| {
                let label = h.text(&format!("temp{i}_label"));
                if !matches!(label.as_deref(), Some("pkg") | None) {
                    return None;
                }
                h.i64(&format!("temp{i}_input")).map(|m| m as f64 * 1e-3)
            });
            s.fan_rpm = h.u64("fan1_input").map(|r| r as f64);
        }
        s
    }
}
