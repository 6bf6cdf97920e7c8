//! A tracked game as it is now: its recent frames and the stutters among them, counted as the
//! frames arrive. The daemon's API and `/metrics` and `record`'s progress line read it.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use nvbind_common::present_source;

use super::{stats, Frame, ProcessRecord, Screen, SOURCE_PREFERENCE};
use crate::{
    clock,
    stutter::{Cause, Detector, DetectorConfig, Verdict},
};

/// Frames kept per process for the live window, whatever the window: bounds memory at
/// ~16 bytes × this.
const MAX_RECENT_FRAMES: usize = 65_536;
/// Stutters kept per process with their verdicts, for the live views (the newest last).
const MAX_RECENT_STUTTERS: usize = 32;

/// A stutter as the live views show it: when, how long, and the verdict made as it happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveStutter {
    /// CLOCK_MONOTONIC nanoseconds of the late frame's present.
    pub ts_ns: u64,
    /// The same instant in wall-clock milliseconds since the Unix epoch (what a page plots).
    pub t_unix_ms: f64,
    pub frame_time_ms: f64,
    pub cause: &'static str,
    /// The verdict's sentence, as any local user may read it (`stutter::public_summary`).
    pub summary: String,
    /// The sentence with the culprit's command line, for root.
    #[serde(skip)]
    pub root_summary: String,
}

#[derive(Debug, Clone, Copy)]
struct RecentFrame {
    ts_ns: u64,
    frame_time_ns: u64,
    stutter: bool,
}

/// One tracked game, as it is now.
#[derive(Debug)]
pub struct LiveProcess {
    pub pid: u32,
    /// The name a person knows it by (`crate::identity`).
    pub name: String,
    pub comm: String,
    pub exe: String,
    pub cgroup: String,
    pub container_id: Option<String>,
    pub steam_app_id: Option<u32>,
    pub wine_version: Option<String>,
    /// PCI address of the GPU it renders on, once known.
    pub gpu: Option<String>,
    pub tracked_since_unix_s: f64,
    /// The frame source counted (the best seen so far; see `report::SOURCE_PREFERENCE`).
    source: u32,
    last_present_ns: u64,
    /// The first frame counted from the current source.
    first_present_ns: u64,
    pub frames_total: u64,
    pub stutters_total: u64,
    pub stutters_by_cause: BTreeMap<Cause, u64>,
    /// The newest stutters with their verdicts (at most `MAX_RECENT_STUTTERS`).
    pub recent_stutters: VecDeque<LiveStutter>,
    recent: VecDeque<RecentFrame>,
    detector: Detector,
    /// Session part (a long session is written in parts of `reports.max_session_frames`).
    pub part: u32,
    /// Frames of the tracker's record already counted.
    seen: usize,
    /// The record's `compile_calls_seen` and `compile_ns_seen` already counted.
    compiles_counted: (u64, u64),
    /// Frames of the tracker's record whose fate on the screen was already counted.
    screen_seen: usize,
    /// Frames of the counted source a compositor's flip showed, and those replaced before any.
    pub displayed_total: u64,
    pub dropped_total: u64,
    /// The newest shown frames: (present, present-to-display ns), at most `MAX_RECENT_FRAMES`.
    recent_shown: VecDeque<(u64, u64)>,
}

/// What one new frame meant, for the caller's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FrameOutcome {
    /// A frame from a source that is not the one counted.
    Ignored,
    /// The first frame counted: no frame time yet.
    First,
    /// A frame time, with the trailing average when it was a stutter.
    Timed {
        frame_time_ns: u64,
        stutter_baseline_ms: Option<f64>,
    },
}

impl LiveProcess {
    pub fn new(pid: u32, identity: Identity, stutter: DetectorConfig) -> LiveProcess {
        LiveProcess {
            pid,
            name: identity.name,
            comm: identity.comm,
            exe: identity.exe,
            steam_app_id: identity.steam_app_id,
            wine_version: identity.wine_version,
            container_id: crate::identity::container_id(&identity.cgroup),
            cgroup: identity.cgroup,
            gpu: None,
            tracked_since_unix_s: identity.tracked_since_unix_s,
            source: 0,
            last_present_ns: 0,
            first_present_ns: 0,
            frames_total: 0,
            stutters_total: 0,
            stutters_by_cause: BTreeMap::new(),
            recent_stutters: VecDeque::new(),
            recent: VecDeque::new(),
            detector: Detector::new(stutter),
            part: 0,
            seen: 0,
            compiles_counted: (0, 0),
            screen_seen: 0,
            displayed_total: 0,
            dropped_total: 0,
            recent_shown: VecDeque::new(),
        }
    }

    /// The long compile calls (and their nanoseconds) the record has seen since the last call.
    pub fn new_compiles(&mut self, calls_seen: u64, ns_seen: u64) -> (u64, u64) {
        let (calls, ns) = self.compiles_counted;
        self.compiles_counted = (calls_seen.max(calls), ns_seen.max(ns));
        (calls_seen.saturating_sub(calls), ns_seen.saturating_sub(ns))
    }

    /// Counts the frames of `frames` (the tracker's record of this process) not counted yet.
    /// Returns each new frame's index in `frames` and what it meant.
    pub fn catch_up(&mut self, frames: &[Frame]) -> Vec<(usize, FrameOutcome)> {
        let start = self.seen.min(frames.len());
        self.seen = frames.len();
        frames[start..]
            .iter()
            .enumerate()
            .map(|(i, f)| (start + i, self.push(f.ts_ns, f.source)))
            .collect()
    }

    /// The tracker's record now holds only its last frame (a session part was taken out);
    /// `screen_from` is the record's first undecided frame now (0: that last frame).
    pub fn restart_record(&mut self, screen_from: usize) {
        self.seen = 1;
        self.screen_seen = screen_from;
    }

    /// Counts the frames of `frames` (the tracker's record) a compositor's flip decided since
    /// the last call (`decided`: the record's `screen_from`). Returns the present-to-display
    /// time of each newly shown frame of the counted source, ns.
    pub fn catch_up_screen(&mut self, frames: &[Frame], decided: usize) -> Vec<u64> {
        let end = decided.min(frames.len());
        let start = self.screen_seen.min(end);
        self.screen_seen = end;
        let mut latencies = Vec::new();
        for f in frames[start..end]
            .iter()
            .filter(|f| f.source == self.source)
        {
            match f.screen {
                Screen::Shown { at_ns, .. } => {
                    let latency = at_ns.saturating_sub(f.ts_ns);
                    self.displayed_total += 1;
                    if self.recent_shown.len() == MAX_RECENT_FRAMES {
                        self.recent_shown.pop_front();
                    }
                    self.recent_shown.push_back((f.ts_ns, latency));
                    latencies.push(latency);
                }
                Screen::Replaced => self.dropped_total += 1,
                Screen::Undecided => {}
            }
        }
        latencies
    }

    /// Counts a present. Frames from a source better than the counted one switch the count to
    /// it (a Vulkan game seen first through the loader's export, then through its driver's
    /// function); frames from worse sources are ignored, as in reports.
    pub fn push(&mut self, ts_ns: u64, source: u32) -> FrameOutcome {
        let rank = |s: u32| SOURCE_PREFERENCE.iter().position(|&p| p == s);
        match (rank(source), rank(self.source)) {
            (None, _) => return FrameOutcome::Ignored,
            (Some(new), Some(old)) if new > old => return FrameOutcome::Ignored,
            (Some(new), old) if old != Some(new) => {
                self.source = source;
                self.last_present_ns = 0;
                self.recent.clear();
            }
            _ => {}
        }
        self.frames_total += 1;
        let previous = std::mem::replace(&mut self.last_present_ns, ts_ns);
        if previous == 0 || ts_ns <= previous {
            self.first_present_ns = ts_ns;
            return FrameOutcome::First;
        }
        let frame_time_ns = ts_ns - previous;
        let stutter_baseline_ms = self.detector.push(frame_time_ns as f64 / 1e6);
        if self.recent.len() == MAX_RECENT_FRAMES {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentFrame {
            ts_ns,
            frame_time_ns,
            stutter: stutter_baseline_ms.is_some(),
        });
        FrameOutcome::Timed {
            frame_time_ns,
            stutter_baseline_ms,
        }
    }

    /// Counts a stutter with its verdict: the late frame presented at `ts_ns` after
    /// `frame_time_ms`.
    pub fn count_stutter(&mut self, ts_ns: u64, frame_time_ms: f64, verdict: &Verdict) {
        self.stutters_total += 1;
        *self.stutters_by_cause.entry(verdict.cause).or_insert(0) += 1;
        if self.recent_stutters.len() == MAX_RECENT_STUTTERS {
            self.recent_stutters.pop_front();
        }
        self.recent_stutters.push_back(LiveStutter {
            ts_ns,
            t_unix_ms: clock::unix_time_at(ts_ns) * 1e3,
            frame_time_ms,
            cause: verdict.cause.name(),
            summary: crate::stutter::public_summary(verdict),
            root_summary: verdict.summary.clone(),
        });
    }

    /// The newest `n` frames presented after `after_ns` (oldest first): when each was
    /// presented, its frame time and whether it was a stutter.
    pub fn last_frames(&self, n: usize, after_ns: u64) -> Vec<RecentFrameView> {
        // Wall-clock time of monotonic 0, read once: every frame's is that plus its own.
        let unix_at_zero_s = clock::unix_time_at(0);
        let newer = self.recent.iter().rev().take_while(|f| f.ts_ns > after_ns);
        let mut frames: Vec<RecentFrameView> = newer
            .take(n)
            .map(|f| RecentFrameView {
                ts_ns: f.ts_ns,
                t_unix_ms: (unix_at_zero_s + f.ts_ns as f64 / 1e9) * 1e3,
                frame_time_ms: f.frame_time_ns as f64 / 1e6,
                stutter: f.stutter,
            })
            .collect();
        frames.reverse();
        frames
    }

    /// Forgets frames older than the window (the caller's clock).
    pub fn trim(&mut self, window: Duration, now_ns: u64) {
        let from = now_ns.saturating_sub(window.as_nanos() as u64);
        while self.recent.front().is_some_and(|f| f.ts_ns < from) {
            self.recent.pop_front();
        }
    }

    pub fn source_name(&self) -> &'static str {
        present_source::name(self.source)
    }

    /// The frames of the last `window` before `now_ns` (CLOCK_MONOTONIC).
    pub fn window(&self, window: Duration, now_ns: u64) -> LiveWindow {
        let from = now_ns.saturating_sub(window.as_nanos() as u64);
        let in_window: Vec<&RecentFrame> = self.recent.iter().filter(|f| f.ts_ns >= from).collect();
        let frame_times: Vec<u64> = in_window.iter().map(|f| f.frame_time_ns).collect();
        // Frames over the window (or the time since the first frame, when that is shorter): the
        // FPS a player saw. A game that stopped presenting goes down to 0 as the window passes,
        // rather than showing its last rate.
        let span_ns = now_ns
            .saturating_sub(from.max(self.first_present_ns))
            .max(1);
        let fps = if self.first_present_ns == 0 {
            0.0
        } else {
            in_window.len() as f64 / (span_ns as f64 / 1e9)
        };
        let latencies: Vec<u64> = self
            .recent_shown
            .iter()
            .filter(|(ts, _)| *ts >= from)
            .map(|(_, latency)| *latency)
            .collect();
        LiveWindow {
            present_to_display: stats::summarize(&latencies).map(|s| s.frame_time_ms),
            frames: in_window.len() as u64,
            fps,
            summary: stats::summarize(&frame_times),
            stutters: in_window.iter().filter(|f| f.stutter).count() as u64,
            last_frame_ns: (self.last_present_ns != 0).then_some(self.last_present_ns),
        }
    }
}

/// One recent frame, for a live chart.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RecentFrameView {
    /// When it was presented: CLOCK_MONOTONIC nanoseconds (exact: what a client orders and
    /// de-duplicates frames by)...
    pub ts_ns: u64,
    /// ...and wall-clock milliseconds since the Unix epoch (what a chart plots).
    pub t_unix_ms: f64,
    pub frame_time_ms: f64,
    pub stutter: bool,
}

/// A live process's frames over a recent window.
#[derive(Debug, Clone)]
pub struct LiveWindow {
    pub frames: u64,
    /// Frames presented in the window over its length.
    pub fps: f64,
    /// Frame-time distribution and lows (absent before two frames).
    pub summary: Option<stats::FrameSummary>,
    pub stutters: u64,
    /// CLOCK_MONOTONIC nanoseconds of the newest frame.
    pub last_frame_ns: Option<u64>,
    /// From present to display of the frames a compositor showed in the window, ms.
    pub present_to_display: Option<stats::FrameTimeStats>,
}

/// Who a process is, read from /proc when it is first tracked.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub name: String,
    pub comm: String,
    pub exe: String,
    pub cgroup: String,
    pub steam_app_id: Option<u32>,
    pub wine_version: Option<String>,
    pub tracked_since_unix_s: f64,
}

impl Identity {
    /// `record`'s names, with its cgroup v2 path read now (empty where unreadable: it may have
    /// exited).
    pub fn of(record: &ProcessRecord) -> Identity {
        let pid = record.pid;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_string))
            })
            .unwrap_or_default();
        Identity {
            name: record.name(),
            comm: record.comm.clone(),
            exe: record.exe.clone(),
            steam_app_id: record.identity.steam_app_id,
            wine_version: record
                .identity
                .wine
                .as_ref()
                .and_then(|w| w.version.clone()),
            cgroup,
            tracked_since_unix_s: clock::unix_time_at(clock::monotonic_ns()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> LiveProcess {
        LiveProcess::new(7, Identity::default(), DetectorConfig::default())
    }

    #[test]
    fn compiles_are_counted_once_whatever_the_record_gives_up() {
        let mut p = process();
        assert_eq!(p.new_compiles(0, 0), (0, 0));
        assert_eq!(p.new_compiles(3, 90), (3, 90));
        assert_eq!(p.new_compiles(3, 90), (0, 0), "nothing new");
        assert_eq!(p.new_compiles(5, 140), (2, 50));
        // The record's counts only grow; were they ever lower, nothing is counted twice.
        assert_eq!(p.new_compiles(4, 100), (0, 0));
        assert_eq!(p.new_compiles(6, 150), (1, 10));
    }

    #[test]
    fn better_sources_take_over_and_worse_ones_are_ignored() {
        let mut p = process();
        assert_eq!(
            p.push(1_000_000, present_source::VULKAN_LOADER),
            FrameOutcome::First
        );
        assert!(matches!(
            p.push(17_000_000, present_source::VULKAN_LOADER),
            FrameOutcome::Timed {
                frame_time_ns: 16_000_000,
                ..
            }
        ));
        // The driver's function is found: counting starts over from it.
        assert_eq!(
            p.push(18_000_000, present_source::VULKAN_RESOLVED),
            FrameOutcome::First
        );
        assert_eq!(
            p.push(33_000_000, present_source::VULKAN_LOADER),
            FrameOutcome::Ignored
        );
        assert!(matches!(
            p.push(34_000_000, present_source::VULKAN_RESOLVED),
            FrameOutcome::Timed {
                frame_time_ns: 16_000_000,
                ..
            }
        ));
        assert_eq!(p.source_name(), "vulkan");
        assert_eq!(p.frames_total, 4);
    }

    #[test]
    fn a_long_frame_is_a_stutter() {
        let mut p = process();
        let mut t = 0;
        let mut stutters = 0;
        for i in 0..200u64 {
            t += if i == 150 { 100_000_000 } else { 16_000_000 };
            if let FrameOutcome::Timed {
                stutter_baseline_ms: Some(_),
                ..
            } = p.push(t, present_source::GLX)
            {
                stutters += 1;
            }
        }
        assert_eq!(stutters, 1);
    }
}
