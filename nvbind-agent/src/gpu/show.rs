//! `nvbind-agent gpus`: the discovered GPUs and their state now, as a table or as JSON.

use std::{fmt::Write, time::Duration};

use serde::Serialize;

use super::{backend_for, Discovery, GpuInfo, GpuSample, NvmlState};

#[derive(Debug, Serialize)]
pub struct GpuListing {
    pub nvml: NvmlState,
    pub gpus: Vec<ListedGpu>,
}

#[derive(Debug, Serialize)]
pub struct ListedGpu {
    #[serde(flatten)]
    pub info: GpuInfo,
    /// The counters now, or why there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub now: Option<GpuSample>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_sampled: Option<String>,
}

/// Reads each GPU twice, `gap` apart (counters such as Intel's energy need two readings), and
/// keeps the second.
pub fn listing(discovery: &Discovery, gap: Duration) -> GpuListing {
    let mut gpus: Vec<ListedGpu> = Vec::new();
    let mut backends = Vec::new();
    for gpu in &discovery.gpus {
        match backend_for(gpu, discovery, &discovery.warnings) {
            Ok(mut backend) => {
                backend.sample(crate::clock::monotonic_ns());
                backends.push((gpus.len(), backend));
                gpus.push(ListedGpu {
                    info: gpu.clone(),
                    now: None,
                    not_sampled: None,
                });
            }
            Err(why) => gpus.push(ListedGpu {
                info: gpu.clone(),
                now: None,
                not_sampled: Some(why),
            }),
        }
    }
    if !backends.is_empty() {
        std::thread::sleep(gap);
    }
    for (i, mut backend) in backends {
        gpus[i].now = Some(backend.sample(crate::clock::monotonic_ns()));
    }
    GpuListing {
        nvml: discovery.nvml_state.clone(),
        gpus,
    }
}

/// The listing as text for people.
pub fn render(listing: &GpuListing) -> String {
    let mut out = String::new();
    if listing.gpus.is_empty() {
        out.push_str("no GPU found (no PCI display controller in sysfs)\n");
    }
    for g in &listing.gpus {
        let i = &g.info;
        let _ = writeln!(
            out,
            "GPU {}  {}  [{} {}]  driver {} {}",
            i.index,
            i.name,
            i.pci_address,
            i.pci_id,
            i.driver,
            i.driver_version.as_deref().unwrap_or("(version unknown)")
        );
        if let Some(uuid) = &i.uuid {
            let _ = writeln!(out, "  uuid     {uuid}");
        }
        for n in &i.device_nodes {
            let _ = writeln!(
                out,
                "  node     {:<24} {:>3}:{:<3} {}{}",
                n.path.display(),
                n.major,
                n.minor,
                serde_json::to_value(n.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                if n.shared { " (shared)" } else { "" }
            );
        }
        match (&g.now, &g.not_sampled) {
            (_, Some(why)) => {
                let _ = writeln!(out, "  counters none: {why}");
            }
            (Some(s), _) if s.suspended => {
                let _ = writeln!(
                    out,
                    "  counters none: runtime-suspended (asleep; not woken to be read)"
                );
            }
            (Some(s), _) => {
                let _ = writeln!(out, "  now      {}", describe(s));
            }
            (None, None) => {}
        }
    }
    if let NvmlState::NoDriver { reason } = &listing.nvml {
        let _ = writeln!(out, "NVML: {reason}");
    }
    out
}

/// One sample's counters in a line (`gpus`, `top`).
pub fn describe(s: &GpuSample) -> String {
    let mut parts = Vec::new();
    if let Some(u) = s.utilization_ratio {
        parts.push(format!("busy {:.0}%", u * 100.0));
    }
    if let Some(hz) = s.graphics_clock_hertz {
        parts.push(format!("{:.0} MHz", hz / 1e6));
    }
    if let Some(t) = s.temperature_celsius {
        parts.push(format!("{t:.1} °C"));
    }
    match (s.power_watts, s.power_limit_watts) {
        (Some(p), Some(l)) => parts.push(format!("{p:.1}/{l:.0} W")),
        (Some(p), None) => parts.push(format!("{p:.1} W")),
        _ => {}
    }
    if let (Some(used), Some(total)) = (s.vram_used_bytes, s.vram_total_bytes) {
        parts.push(format!(
            "VRAM {:.2}/{:.2} GiB",
            super::gib(used),
            super::gib(total)
        ));
    }
    match &s.throttle_reasons {
        Some(r) if r.is_empty() => parts.push("not throttled".into()),
        Some(r) => parts.push(format!("THROTTLED: {}", r.join(", "))),
        None => {}
    }
    if parts.is_empty() {
        "no counters readable".into()
    } else {
        parts.join(", ")
    }
}
