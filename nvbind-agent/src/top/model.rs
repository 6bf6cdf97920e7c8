//! What `top` reads from the API: the fields of `/api/processes?frames=N` and
//! `/api/gpu/status` it shows (a daemon of another version may lack some: all are optional).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Processes {
    pub window_s: f64,
    pub processes: Vec<Process>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub comm: String,
    pub source: String,
    pub container_id: Option<String>,
    pub wine_version: Option<String>,
    pub fps: f64,
    pub frame_time_ms: Option<FrameTimes>,
    pub low_fps: Option<Lows>,
    pub frames_total: u64,
    pub stutters_in_window: u64,
    pub stutters_total: u64,
    pub stutters_by_cause: BTreeMap<String, u64>,
    pub last_stutter: Option<Stutter>,
    pub recent_stutters: Option<Vec<Stutter>>,
    pub recent_frames: Option<Vec<Frame>>,
    pub gpu_pci_address: Option<String>,
    pub gpu: Option<Gpu>,
    pub display: Option<Display>,
}

/// Its frames on the screen through a compositor.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Display {
    pub displayed_total: u64,
    pub dropped_total: u64,
    pub present_to_display_ms: Option<FrameTimes>,
}

impl Process {
    /// The name shown: the one a person knows it by.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            &self.comm
        } else {
            &self.name
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FrameTimes {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Lows {
    pub p1_percentile: f64,
    pub p1_average: f64,
    pub p0_1_percentile: f64,
    pub p0_1_average: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Stutter {
    pub t_unix_ms: f64,
    pub frame_time_ms: f64,
    pub cause: String,
    pub summary: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct Frame {
    pub frame_time_ms: f64,
    pub stutter: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Gpus {
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Gpu {
    pub index: usize,
    pub vendor: String,
    pub name: String,
    pub pci_address: String,
    pub driver: String,
    pub not_sampled: Option<String>,
    /// As the daemon serves it (the agent's own type).
    pub sample: Option<crate::gpu::GpuSample>,
}

/// One refresh: the games and the GPUs.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub processes: Vec<Process>,
    pub gpus: Vec<Gpu>,
    pub window_s: f64,
}
