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
    /// The hwmon directory and its package temperature file, found on the first awake sample;
    /// `Some(None)`: no hwmon (integrated GPUs on i915).
    hwmon: Option<Option<(SysfsDir, Option<String>)>>,
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
            hwmon: None,
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
            return GpuSample::suspended(t_ns);
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
        let hwmon = self.hwmon.get_or_insert_with(|| {
            d.hwmon().map(|h| {
                // xe labels its channels card/pkg/vram; a lone unlabelled temp1 is the package.
                let pkg = h
                    .labelled_input("temp", 4, "pkg")
                    .or_else(|| h.first_existing(&["temp1_input"]));
                (h, pkg)
            })
        });
        if let Some((h, pkg)) = hwmon {
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
            s.temperature_celsius = pkg
                .as_deref()
                .and_then(|f| h.i64(f))
                .map(|m| m as f64 * 1e-3);
            s.fan_rpm = h.u64("fan1_input").map(|r| r as f64);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{test_gpu, Vendor};

    fn write(dir: &std::path::Path, rel: &str, value: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, format!("{value}\n")).expect("write");
    }

    #[test]
    fn xe_reasons_are_named_and_power_comes_from_energy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(d, "tile0/gt0/freq0/act_freq", "2850");
        write(d, "tile0/gt0/freq0/throttle/status", "1");
        for (reason, on) in [
            ("pl1", "1"),
            ("pl2", "1"),
            ("thermal", "1"),
            ("prochot", "0"),
        ] {
            write(d, &format!("tile0/gt0/freq0/throttle/reason_{reason}"), on);
        }
        write(d, "hwmon/hwmon3/energy1_input", "1000000");
        write(d, "hwmon/hwmon3/power1_max", "190000000");
        let gpu = test_gpu(d, Vendor::Intel, "xe");
        let mut backend = IntelBackend::new(&gpu, &Warnings::default());
        let first = backend.sample(1_000_000_000);
        assert_eq!(first.graphics_clock_hertz, Some(2.85e9));
        assert_eq!(
            first.throttle_reasons,
            Some(vec!["power".to_string(), "thermal".to_string()])
        );
        assert_eq!(first.power_watts, None, "one energy reading gives no power");
        assert_eq!(first.power_limit_watts, Some(190.0));
        // 25 J over half a second.
        write(d, "hwmon/hwmon3/energy1_input", "26000000");
        let second = backend.sample(1_500_000_000);
        assert_eq!(second.power_watts, Some(50.0));
        // A status bit with no reason file set is still throttling, of an unnamed kind.
        for reason in ["pl1", "pl2", "thermal"] {
            write(d, &format!("tile0/gt0/freq0/throttle/reason_{reason}"), "0");
        }
        assert_eq!(
            backend.sample(2_000_000_000).throttle_reasons,
            Some(vec!["unspecified".to_string()])
        );
        write(d, "tile0/gt0/freq0/throttle/status", "0");
        assert_eq!(
            backend.sample(2_500_000_000).throttle_reasons,
            Some(Vec::new())
        );
    }

    #[test]
    fn i915_reads_the_gt_directory_or_the_card_level_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(d, "drm/card0/gt_act_freq_mhz", "900");
        let gpu = test_gpu(d, Vendor::Intel, "i915");
        let mut backend = IntelBackend::new(&gpu, &Warnings::default());
        let s = backend.sample(1);
        assert_eq!(s.graphics_clock_hertz, Some(9e8));
        assert_eq!(
            s.throttle_reasons, None,
            "no throttle files: unknown, not 'none'"
        );
        write(d, "drm/card0/gt/gt0/rps_act_freq_mhz", "1300");
        write(d, "drm/card0/gt/gt0/throttle_reason_status", "1");
        write(d, "drm/card0/gt/gt0/throttle_reason_vr_tdc", "1");
        let s = backend.sample(2);
        assert_eq!(s.graphics_clock_hertz, Some(1.3e9));
        assert_eq!(s.throttle_reasons, Some(vec!["current".to_string()]));
    }
}
