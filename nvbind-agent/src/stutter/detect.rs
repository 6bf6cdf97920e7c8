//! Which frames are stutters: CapFrameX's rule, streaming.
//!
//! A frame is a stutter when its time exceeds `factor` × the moving average of the frames before it
//! and the absolute floor. The average runs over a trailing window of
//! `round(√baseline_ms · 10)` frames (≈ 41 frames at 60 fps, 26 at 144 fps) and leaves earlier
//! stutters out, so one spike does not hide the next. A run of consecutive stutters longer than
//! [`LEVEL_SHIFT_RUN`] is a change of pace (a heavier scene, a frame cap), not a series of hitches:
//! the window restarts from those frames, so a level shift costs at most that many stutters.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Frames averaged before the first decision: the first frames after loading say little.
const WARMUP_FRAMES: usize = 5;
/// Consecutive stutters after which the baseline is reset to the new pace.
pub const LEVEL_SHIFT_RUN: usize = 3;
/// Bounds of the trailing window, in frames.
const MIN_WINDOW: usize = 10;
const MAX_WINDOW: usize = 200;

/// The detection thresholds (`record --stutter-factor`, `--stutter-floor-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// A stutter is longer than this many times the trailing average (CapFrameX: 2.5).
    pub factor: f64,
    /// ...and longer than this, in milliseconds: below ~50 fps a 2.5× spike is felt at any refresh
    /// rate, while at several hundred fps a 2.5× spike of a 3 ms frame is not.
    pub floor_ms: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            factor: 2.5,
            floor_ms: 20.0,
        }
    }
}

impl DetectorConfig {
    /// Checks the thresholds make sense; the message says which flag to fix.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.factor.is_finite() && self.factor > 1.0) {
            return Err(format!(
                "--stutter-factor must be a number above 1 (a stutter is longer than factor × the \
                 average), got {}",
                self.factor
            ));
        }
        if !(self.floor_ms.is_finite() && self.floor_ms >= 0.0) {
            return Err(format!(
                "--stutter-floor-ms must be a number of milliseconds ≥ 0, got {}",
                self.floor_ms
            ));
        }
        Ok(())
    }
}

/// The streaming detector of one frame sequence.
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectorConfig,
    /// Recent frame times that were not stutters, oldest first.
    window: VecDeque<f64>,
    sum: f64,
    /// The current run of consecutive stutters.
    run: Vec<f64>,
}

impl Detector {
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            window: VecDeque::new(),
            sum: 0.0,
            run: Vec::new(),
        }
    }

    /// The trailing average the next frame is compared with, once warmed up.
    pub fn baseline_ms(&self) -> Option<f64> {
        (self.window.len() >= WARMUP_FRAMES).then(|| self.sum / self.window.len() as f64)
    }

    /// Feeds the next frame time; returns the baseline it was compared with if it is a stutter.
    pub fn push(&mut self, frame_time_ms: f64) -> Option<f64> {
        if !frame_time_ms.is_finite() || frame_time_ms < 0.0 {
            return None;
        }
        let verdict = self.baseline_ms().filter(|&baseline| {
            frame_time_ms > self.config.factor * baseline && frame_time_ms > self.config.floor_ms
        });
        if verdict.is_some() {
            self.run.push(frame_time_ms);
            if self.run.len() > LEVEL_SHIFT_RUN {
                // A new pace, not a hitch: restart the average from it.
                self.window.clear();
                self.sum = 0.0;
                for ft in std::mem::take(&mut self.run) {
                    self.add(ft);
                }
                return None;
            }
        } else {
            self.run.clear();
            self.add(frame_time_ms);
        }
        verdict
    }

    fn add(&mut self, frame_time_ms: f64) {
        self.window.push_back(frame_time_ms);
        self.sum += frame_time_ms;
        let mean = self.sum / self.window.len() as f64;
        let len = ((mean.max(0.0).sqrt() * 10.0).round() as usize).clamp(MIN_WINDOW, MAX_WINDOW);
        while self.window.len() > len {
            if let Some(old) = self.window.pop_front() {
                self.sum -= old;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(frames: &[f64]) -> Vec<usize> {
        let mut d = Detector::new(DetectorConfig::default());
        frames
            .iter()
            .enumerate()
            .filter_map(|(i, &ft)| d.push(ft).map(|_| i))
            .collect()
    }

    #[test]
    fn a_steady_run_has_no_stutters() {
        let frames: Vec<f64> = (0..5000).map(|i| 16.0 + (i % 7) as f64 * 0.4).collect();
        assert!(run(&frames).is_empty());
    }

    #[test]
    fn spikes_above_factor_and_floor_are_stutters() {
        let mut frames = vec![16.7; 100];
        frames[50] = 80.0;
        frames[70] = 40.0; // 2.4× the average: not a stutter
        frames[90] = 45.0; // 2.7×: a stutter
        assert_eq!(run(&frames), vec![50, 90]);
    }

    #[test]
    fn the_floor_keeps_fast_microspikes_out() {
        let mut frames = vec![4.0; 100];
        frames[50] = 15.0; // 3.75× but under the 20 ms floor
        frames[60] = 25.0;
        assert_eq!(run(&frames), vec![60]);
    }

    #[test]
    fn a_spike_does_not_raise_the_baseline_for_the_next_one() {
        let mut frames = vec![16.7; 60];
        frames[30] = 400.0;
        frames[32] = 45.0;
        assert_eq!(run(&frames), vec![30, 32]);
    }

    #[test]
    fn a_change_of_pace_costs_at_most_a_few_stutters() {
        let mut frames = vec![5.0; 100];
        frames.extend(vec![33.0; 300]);
        let found = run(&frames);
        assert_eq!(found, vec![100, 101, 102]);
    }

    #[test]
    fn the_first_frames_are_not_judged() {
        assert!(run(&[16.0, 200.0, 16.0, 16.0]).is_empty());
    }

    #[test]
    fn the_window_follows_the_square_root_rule() {
        let mut d = Detector::new(DetectorConfig::default());
        for _ in 0..500 {
            d.push(16.0);
        }
        assert_eq!(d.window.len(), 40);
        let mut d = Detector::new(DetectorConfig::default());
        for _ in 0..500 {
            d.push(1.0);
        }
        assert_eq!(d.window.len(), MIN_WINDOW);
    }

    #[test]
    fn bad_thresholds_are_refused() {
        let bad = DetectorConfig {
            factor: 0.5,
            floor_ms: 20.0,
        };
        assert!(bad.validate().unwrap_err().contains("--stutter-factor"));
        let bad = DetectorConfig {
            factor: 2.5,
            floor_ms: f64::NAN,
        };
        assert!(bad.validate().unwrap_err().contains("--stutter-floor-ms"));
        assert!(DetectorConfig::default().validate().is_ok());
    }
}
