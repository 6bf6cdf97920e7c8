//! What the daemon knows right now, for the API, the WebSocket streams and `/metrics`: each
//! tracked game's recent frames, every GPU's newest sample, and the agent's own cost.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use crate::{
    clock::monotonic_ns,
    frames::{
        stats::{FrameTimeStats, LowFps},
        LiveProcess, LiveStutter, RecentFrameView,
    },
    gpu::{GpuInfo, GpuSample},
    probes::ProgramCost,
};

/// Who a view is for. The TCP API answers every local user, so it names an executable by its file
/// name only: a full path can name a user's home and private directories. The root-only Unix
/// socket (and the session files) give the full path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    AnyLocalUser,
    Root,
}

impl Audience {
    /// `exe` as this audience may see it.
    pub fn exe(self, exe: &str) -> String {
        match self {
            Audience::Root => exe.to_string(),
            Audience::AnyLocalUser => exe.rsplit('/').next().unwrap_or_default().to_string(),
        }
    }

    /// A stutter with the sentence this audience may read (root's names the culprit's
    /// command line).
    pub fn stutter(self, s: &LiveStutter) -> LiveStutter {
        let mut s = s.clone();
        if self == Audience::Root {
            s.summary = std::mem::take(&mut s.root_summary);
        }
        s.root_summary.clear();
        s
    }
}

/// The most recent frames a view may carry (`?frames=N`): a chart's width, not a session.
pub const MAX_VIEW_FRAMES: usize = 2_000;

/// The recent frames a view carries: a live chart's data.
#[derive(Debug, Clone, Copy, Default)]
pub struct FramesAsked {
    /// At most this many of the newest frames (0: none, and no recent stutters either)...
    pub newest: usize,
    /// ...presented after this CLOCK_MONOTONIC instant (a stream's previous message).
    pub after_ns: u64,
}

/// A live process's JSON view over the last `window`, for `audience`, with the recent frames
/// and stutters `frames` asks for.
pub fn process_view(
    p: &LiveProcess,
    window: Duration,
    gpus: &[GpuStatus],
    audience: Audience,
    frames: FramesAsked,
) -> ProcessView {
    let now = monotonic_ns();
    let w = p.window(window, now);
    ProcessView {
        pid: p.pid,
        name: p.name.clone(),
        comm: p.comm.clone(),
        exe: audience.exe(&p.exe),
        cgroup: p.cgroup.clone(),
        container_id: p.container_id.clone(),
        steam_app_id: p.steam_app_id,
        wine_version: p.wine_version.clone(),
        tracked_since_unix_s: p.tracked_since_unix_s,
        source: p.source_name(),
        window_s: window.as_secs_f64(),
        frames_in_window: w.frames,
        fps: w.fps,
        frame_time_ms: w.summary.as_ref().map(|s| s.frame_time_ms.clone()),
        low_fps: w.summary.map(|s| s.low_fps),
        stutters_in_window: w.stutters,
        frames_total: p.frames_total,
        stutters_total: p.stutters_total,
        display: (p.displayed_total + p.dropped_total > 0).then(|| DisplayView {
            displayed_total: p.displayed_total,
            dropped_total: p.dropped_total,
            present_to_display_ms: w.present_to_display.clone(),
        }),
        stutters_by_cause: p
            .stutters_by_cause
            .iter()
            .map(|(c, n)| (c.name(), *n))
            .collect(),
        last_stutter: p.recent_stutters.back().map(|s| audience.stutter(s)),
        recent_stutters: (frames.newest > 0).then(|| {
            p.recent_stutters
                .iter()
                .map(|s| audience.stutter(s))
                .collect()
        }),
        recent_frames: (frames.newest > 0)
            .then(|| p.last_frames(frames.newest.min(MAX_VIEW_FRAMES), frames.after_ns)),
        last_frame_ns: w.last_frame_ns,
        last_frame_age_ms: w.last_frame_ns.map(|t| now.saturating_sub(t) as f64 / 1e6),
        gpu: p.gpu.as_ref().and_then(|pci| {
            gpus.iter()
                .find(|g| g.info.pci_address == *pci)
                .map(GpuStatus::view)
        }),
        gpu_pci_address: p.gpu.clone(),
    }
}

/// One GPU now.
#[derive(Debug, Clone)]
pub struct GpuStatus {
    pub info: GpuInfo,
    pub sample: Option<GpuSample>,
    pub not_sampled: Option<String>,
}

impl GpuStatus {
    pub fn view(&self) -> GpuView {
        let now = monotonic_ns();
        GpuView {
            index: self.info.index,
            vendor: self.info.vendor.label(),
            name: self.info.name.clone(),
            pci_address: self.info.pci_address.clone(),
            uuid: self.info.uuid.clone(),
            driver: self.info.driver.clone(),
            sampled: self.sample.is_some(),
            not_sampled: self.not_sampled.clone(),
            sample_age_ms: self
                .sample
                .as_ref()
                .map(|s| now.saturating_sub(s.t_ns) as f64 / 1e6),
            sample: self.sample.clone(),
        }
    }
}

/// The agent's own cost, refreshed about once a second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentStatus {
    pub version: &'static str,
    pub started_unix_s: f64,
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub dropped_events: u64,
    pub bpf: Vec<ProgramCost>,
    pub reports_written: u64,
    pub reports_failed: u64,
    /// Unwritten session reports given up because too many were waiting (a full disk).
    pub reports_lost: u64,
    /// Inserts the kernel refused because a tracking map was full (`nvbind_common::map_full`).
    pub map_full: [u64; nvbind_common::map_full::COUNT as usize],
    /// Presents of processes the kernel did not track because their user had
    /// `games.max_per_user` presenting processes tracked already.
    pub discovery_refused: u64,
    /// Frames presented beyond `games.max_fps_per_user`: counted, not stored.
    pub frames_over_rate: u64,
}

/// Everything the API reads. Written by the capture loop under a short lock.
#[derive(Debug, Default)]
pub struct Live {
    pub window: Duration,
    pub processes: BTreeMap<u32, LiveProcess>,
    pub gpus: Vec<GpuStatus>,
    pub agent: AgentStatus,
}

impl Live {
    pub fn gpu_views(&self) -> Vec<GpuView> {
        self.gpus.iter().map(GpuStatus::view).collect()
    }
}

/// `GET /api/processes/{pid}` and each WebSocket message for a pid.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    pub pid: u32,
    /// The name a person knows it by (a Windows game by its .exe).
    pub name: String,
    pub comm: String,
    pub exe: String,
    pub cgroup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steam_app_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wine_version: Option<String>,
    pub tracked_since_unix_s: f64,
    /// The frame source counted (`vulkan`, `glx`, ...).
    pub source: &'static str,
    pub window_s: f64,
    pub frames_in_window: u64,
    /// Frames presented in the window over its length.
    pub fps: f64,
    /// Frame-time distribution over the window (absent before two frames).
    pub frame_time_ms: Option<FrameTimeStats>,
    pub low_fps: Option<LowFps>,
    pub stutters_in_window: u64,
    pub frames_total: u64,
    pub stutters_total: u64,
    /// What reached the screen, where a compositor's flips showed its frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<DisplayView>,
    /// Live verdicts (the session report's, made with all the evidence, can differ).
    pub stutters_by_cause: BTreeMap<&'static str, u64>,
    /// The newest stutter with its live verdict and sentence.
    pub last_stutter: Option<LiveStutter>,
    /// The newest stutters (up to 32, oldest first), when frames were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_stutters: Option<Vec<LiveStutter>>,
    /// The newest frames (oldest first), when asked for with `?frames=N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_frames: Option<Vec<RecentFrameView>>,
    /// CLOCK_MONOTONIC nanoseconds of the newest frame (the clock of the kernel's timestamps).
    pub last_frame_ns: Option<u64>,
    pub last_frame_age_ms: Option<f64>,
    /// PCI address of the GPU it renders on, once known.
    pub gpu_pci_address: Option<String>,
    /// That GPU now.
    pub gpu: Option<GpuView>,
}

/// A game's frames on the screen through a compositor: counts since it was tracked, latency
/// over the window.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DisplayView {
    pub displayed_total: u64,
    pub dropped_total: u64,
    /// From present to the flip that showed the frame, over the window's shown frames.
    pub present_to_display_ms: Option<FrameTimeStats>,
}

/// A GPU and its newest sample, in base units (ratios, hertz, bytes, watts, degrees Celsius).
#[derive(Debug, Clone, Serialize)]
pub struct GpuView {
    pub index: usize,
    pub vendor: &'static str,
    pub name: String,
    pub pci_address: String,
    pub uuid: Option<String>,
    pub driver: String,
    pub sampled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_sampled: Option<String>,
    pub sample_age_ms: Option<f64>,
    pub sample: Option<GpuSample>,
}
