//! AMD GPUs on amdgpu, through sysfs: the plain attribute files first (they are what the driver
//! documents in Documentation/gpu/amdgpu/thermal.rst), the binary `gpu_metrics` table for what
//! only it carries (throttle status, hotspot on older kernels' hwmon, fan on APUs).

use nvbind_gpu_metrics::{self as gpu_metrics, GpuMetrics};

use super::{sysfs::SysfsDir, GpuBackend, GpuInfo, GpuSample, Warnings};

pub struct AmdBackend {
    device: SysfsDir,
    /// Found on the first sample taken while the card is awake (looking earlier could touch a
    /// sleeping card's hwmon); `Some(None)`: the card has no hwmon.
    hwmon: Option<Option<Hwmon>>,
}

/// Which hwmon files hold what, resolved once by label.
struct Hwmon {
    dir: SysfsDir,
    edge: Option<String>,
    junction: Option<String>,
    sclk: Option<String>,
    mclk: Option<String>,
    power: Option<String>,
}

impl Hwmon {
    fn find(device: &SysfsDir) -> Option<Hwmon> {
        let dir = device.hwmon()?;
        // amdgpu labels its sensors: temp1 "edge", temp2 "junction", temp3 "mem" on dGPUs;
        // APUs have only "edge". Go by label, not by number.
        let edge = dir
            .labelled_input("temp", 4, "edge")
            .or_else(|| dir.first_existing(&["temp1_input"]));
        Some(Hwmon {
            edge,
            junction: dir.labelled_input("temp", 4, "junction"),
            sclk: dir.labelled_input("freq", 2, "sclk"),
            mclk: dir.labelled_input("freq", 2, "mclk"),
            // RDNA2 and older report an average; newer kernels and RDNA3 report power1_input.
            power: dir.first_existing(&["power1_average", "power1_input"]),
            dir,
        })
    }

    fn read(&self, s: &mut GpuSample) {
        let h = &self.dir;
        let read = |file: &Option<String>| file.as_deref().and_then(|f| h.i64(f));
        s.temperature_celsius = read(&self.edge).map(|m| m as f64 * MILLI);
        s.hotspot_temperature_celsius = read(&self.junction).map(|m| m as f64 * MILLI);
        s.graphics_clock_hertz = read(&self.sclk).map(|hz| hz as f64);
        s.memory_clock_hertz = read(&self.mclk).map(|hz| hz as f64);
        s.power_watts = read(&self.power).map(|uw| uw as f64 * MICRO);
        s.power_limit_watts = h.u64("power1_cap").map(|uw| uw as f64 * MICRO);
        s.fan_rpm = h.u64("fan1_input").map(|r| r as f64);
    }
}

impl AmdBackend {
    pub fn new(gpu: &GpuInfo, warnings: &Warnings) -> AmdBackend {
        AmdBackend {
            device: SysfsDir::new(&gpu.sysfs_path, warnings.clone()),
            hwmon: None,
        }
    }

    fn metrics(&self) -> Option<GpuMetrics> {
        let bytes = self.device.bytes("gpu_metrics")?;
        match gpu_metrics::parse(&bytes) {
            Ok(m) => Some(m),
            // The firmware says it has no table: not a problem worth a warning.
            Err(gpu_metrics::MetricsError::Unsupported) => None,
            Err(e) => {
                self.device
                    .warnings
                    .once(&self.device.path.join("gpu_metrics"), &e.to_string());
                None
            }
        }
    }
}

/// Hwmon reports millidegrees, microwatts and hertz.
const MILLI: f64 = 1e-3;
const MICRO: f64 = 1e-6;

impl GpuBackend for AmdBackend {
    fn sample(&mut self, t_ns: u64) -> GpuSample {
        let d = &self.device;
        if d.runtime_suspended() {
            return GpuSample::suspended(t_ns);
        }
        let percent = |name: &str| d.u64(name).map(|p| (p as f64 / 100.0).clamp(0.0, 1.0));
        let mut s = GpuSample {
            t_ns,
            utilization_ratio: percent("gpu_busy_percent"),
            memory_utilization_ratio: percent("mem_busy_percent"),
            vram_used_bytes: d.u64("mem_info_vram_used"),
            vram_total_bytes: d.u64("mem_info_vram_total"),
            ..GpuSample::default()
        };
        let hwmon = self.hwmon.get_or_insert_with(|| Hwmon::find(d));
        if let Some(hwmon) = hwmon {
            hwmon.read(&mut s);
        }
        if let Some(m) = self.metrics() {
            merge_metrics(&m, &mut s);
        }
        s
    }
}

/// Fills what the attribute files did not give from the metrics table; the throttle status is
/// only there.
fn merge_metrics(m: &GpuMetrics, s: &mut GpuSample) {
    // The table's values are f32: keep the digits it has, not float noise (0.97, not 0.9700000286).
    let f = |v: Option<f32>| v.map(|x| (f64::from(x) * 1e6).round() / 1e6);
    s.utilization_ratio = s.utilization_ratio.or(f(m.gfx_activity_ratio));
    s.memory_utilization_ratio = s.memory_utilization_ratio.or(f(m.memory_activity_ratio));
    s.temperature_celsius = s.temperature_celsius.or(f(m.temperature_edge_celsius));
    s.hotspot_temperature_celsius = s
        .hotspot_temperature_celsius
        .or(f(m.temperature_hotspot_celsius));
    s.power_watts = s.power_watts.or(f(m.socket_power_watts));
    s.graphics_clock_hertz = s.graphics_clock_hertz.or(m.gfx_clock_hz.map(|h| h as f64));
    s.memory_clock_hertz = s.memory_clock_hertz.or(m.memory_clock_hz.map(|h| h as f64));
    s.fan_rpm = s.fan_rpm.or(m.fan_rpm.map(f64::from));
    s.throttle_reasons = match (m.indep_throttle_status, m.throttle_status) {
        (Some(bits), _) => Some(
            gpu_metrics::indep_throttle_reasons(bits)
                .map(str::to_string)
                .collect(),
        ),
        // Older tables only have the ASIC's own bit layout: say that it throttles, not why.
        (None, Some(0)) => Some(Vec::new()),
        (None, Some(bits)) => Some(vec![format!("asic-specific-0x{bits:x}")]),
        (None, None) => None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{fixture, test_gpu, Vendor};

    const NAVI21: &str =
        "hosts/amd-dgpu/sys/devices/pci0000:00/0000:00:01.1/0000:01:00.0/0000:02:00.0/0000:03:00.0";

    #[test]
    fn attribute_files_come_first() {
        let gpu = test_gpu(&fixture(NAVI21), Vendor::Amd, "amdgpu");
        let s = AmdBackend::new(&gpu, &Warnings::default()).sample(7);
        assert_eq!(s.t_ns, 7);
        assert_eq!(s.utilization_ratio, Some(0.97));
        assert_eq!(s.temperature_celsius, Some(62.0));
        assert_eq!(s.hotspot_temperature_celsius, Some(78.0));
        assert_eq!(s.power_watts, Some(255.0));
        assert_eq!(s.graphics_clock_hertz, Some(2.25e9));
        assert_eq!(
            s.throttle_reasons,
            Some(vec!["power".to_string(), "thermal".to_string()])
        );
    }

    #[test]
    fn gpu_metrics_fills_what_the_attribute_files_lack() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(
            fixture("gpu-metrics/v1_3-navi21.bin"),
            dir.path().join("gpu_metrics"),
        )
        .expect("copy");
        let gpu = test_gpu(dir.path(), Vendor::Amd, "amdgpu");
        let s = AmdBackend::new(&gpu, &Warnings::default()).sample(1);
        assert_eq!(s.utilization_ratio, Some(0.97));
        assert_eq!(s.memory_utilization_ratio, Some(0.41));
        assert_eq!(s.temperature_celsius, Some(62.0));
        assert_eq!(s.hotspot_temperature_celsius, Some(78.0));
        assert_eq!(s.power_watts, Some(255.0));
        assert_eq!(s.graphics_clock_hertz, Some(2.25e9));
        assert_eq!(s.memory_clock_hertz, Some(1.0e9));
        assert_eq!(s.fan_rpm, Some(1650.0));
        assert_eq!(s.vram_used_bytes, None);
    }

    #[test]
    fn a_suspended_card_is_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("power")).expect("mkdir");
        std::fs::write(dir.path().join("power/runtime_status"), "suspended\n").expect("write");
        std::fs::write(dir.path().join("gpu_busy_percent"), "50\n").expect("write");
        let gpu = test_gpu(dir.path(), Vendor::Amd, "amdgpu");
        let s = AmdBackend::new(&gpu, &Warnings::default()).sample(1);
        assert!(s.suspended);
        assert_eq!(s.utilization_ratio, None);
    }
}
