//! NVIDIA GPUs through NVML (`nvml-wrapper`).
//!
//! Only device-wide getters are called from the sampler: utilisation, clocks, memory, power,
//! temperature, clock-event (throttle) reasons and the encoder/decoder. NVML's per-process queries
//! (`nvmlDeviceGetProcessUtilization`, running-process lists) walk the driver's process tables
//! under locks a game's own driver calls need, which is how MangoHud-style polling causes the
//! stutters it then displays; nvbind never calls them periodically.

use nvml_wrapper::{
    bitmasks::device::ThrottleReasons,
    enum_wrappers::device::{Clock, TemperatureSensor},
    Device,
};

use super::{Discovery, GpuBackend, GpuInfo, GpuSample, NvmlState};

pub struct NvidiaBackend {
    device: Device<'static>,
}

impl NvidiaBackend {
    pub fn new(gpu: &GpuInfo, discovery: &Discovery) -> Result<NvidiaBackend, String> {
        let Some(nvml) = discovery.nvml else {
            return Err(match &discovery.nvml_state {
                NvmlState::NoDriver { reason } => reason.clone(),
                NvmlState::NotConsulted => {
                    "NVML describes only the running system, not another sysfs root".into()
                }
                _ => "no NVIDIA driver".into(),
            });
        };
        let bus_id = format!("0000{}", gpu.pci_address);
        nvml.device_by_pci_bus_id(bus_id)
            .or_else(|_| nvml.device_by_pci_bus_id(gpu.pci_address.clone()))
            .map(|device| NvidiaBackend { device })
            .map_err(|e| format!("NVML does not know the GPU at {}: {e}", gpu.pci_address))
    }
}

/// Clock-event reasons that mean the GPU is held below the clocks it wants, by name. Idle,
/// application clocks and display clock settings are choices, not throttling.
const THROTTLES: [(ThrottleReasons, &str); 6] = [
    (ThrottleReasons::SW_POWER_CAP, "power"),
    (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "power-brake"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "thermal"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "thermal"),
    (ThrottleReasons::HW_SLOWDOWN, "hw-slowdown"),
    (ThrottleReasons::SYNC_BOOST, "sync-boost"),
];

pub fn throttle_names(reasons: ThrottleReasons) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (flag, name) in THROTTLES {
        if reasons.contains(flag) && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

impl GpuBackend for NvidiaBackend {
    fn sample(&mut self, t_ns: u64) -> GpuSample {
        let d = &self.device;
        let ratio = |p: u32| (f64::from(p) / 100.0).clamp(0.0, 1.0);
        let clock = |c: Clock| d.clock_info(c).ok().map(|mhz| f64::from(mhz) * 1e6);
        let utilization = d.utilization_rates().ok();
        let memory = d.memory_info().ok();
        GpuSample {
            t_ns,
            utilization_ratio: utilization.as_ref().map(|u| ratio(u.gpu)),
            memory_utilization_ratio: utilization.as_ref().map(|u| ratio(u.memory)),
            graphics_clock_hertz: clock(Clock::Graphics),
            sm_clock_hertz: clock(Clock::SM),
            memory_clock_hertz: clock(Clock::Memory),
            vram_used_bytes: memory.as_ref().map(|m| m.used),
            vram_total_bytes: memory.as_ref().map(|m| m.total),
            power_watts: d.power_usage().ok().map(|mw| f64::from(mw) / 1e3),
            power_limit_watts: d.enforced_power_limit().ok().map(|mw| f64::from(mw) / 1e3),
            temperature_celsius: d.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
            throttle_reasons: d.current_throttle_reasons().ok().map(throttle_names),
            encoder_utilization_ratio: d.encoder_utilization().ok().map(|u| ratio(u.utilization)),
            decoder_utilization_ratio: d.decoder_utilization().ok().map(|u| ratio(u.utilization)),
            ..GpuSample::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_throttling_is_named() {
        assert!(throttle_names(ThrottleReasons::GPU_IDLE).is_empty());
        assert_eq!(
            throttle_names(
                ThrottleReasons::SW_THERMAL_SLOWDOWN
                    | ThrottleReasons::HW_THERMAL_SLOWDOWN
                    | ThrottleReasons::SW_POWER_CAP
            ),
            ["power", "thermal"]
        );
    }
}
