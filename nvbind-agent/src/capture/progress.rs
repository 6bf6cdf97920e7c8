//! `record`'s live line on a terminal: elapsed time, and for the busiest tracked process its
//! FPS and p99 frame time over the last seconds and its stutters so far. Nothing is drawn when
//! stderr is not a terminal (logs, CI, pipes).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Tracker;
use crate::{
    clock::monotonic_ns,
    frames::{FrameOutcome, Identity, LiveProcess},
    stutter::DetectorConfig,
};

/// The window FPS and p99 are computed over.
const WINDOW: Duration = Duration::from_secs(5);
/// How often the line is redrawn.
const REDRAW: Duration = Duration::from_millis(250);

pub struct Progress {
    bar: ProgressBar,
    processes: HashMap<u32, LiveProcess>,
    stutter: DetectorConfig,
    last_draw: Option<Instant>,
}

impl Progress {
    pub fn new(stutter: DetectorConfig) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        Progress {
            bar,
            processes: HashMap::new(),
            stutter,
            last_draw: None,
        }
    }

    /// Whether anything is drawn (stderr is a terminal).
    pub fn visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Counts new frames and redraws the line (at most every REDRAW).
    pub fn update(&mut self, tracker: &Tracker, elapsed: Option<Duration>) {
        if !self.visible() || self.last_draw.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        self.last_draw = Some(Instant::now());
        for (&pid, record) in tracker.processes() {
            let p = self.processes.entry(pid).or_insert_with(|| {
                LiveProcess::new(
                    pid,
                    Identity {
                        comm: record.comm.clone(),
                        ..Identity::default()
                    },
                    self.stutter,
                )
            });
            // A launched command is tracked from before its exec: keep the name current.
            p.comm.clone_from(&record.comm);
            for (_, outcome) in p.catch_up(&record.frames) {
                if let FrameOutcome::Timed {
                    stutter_baseline_ms: Some(_),
                    ..
                } = outcome
                {
                    p.stutters_total += 1;
                }
            }
        }
        let busiest = self.processes.values().max_by_key(|p| p.frames_total);
        let message = match (elapsed, busiest) {
            (None, _) => "waiting for the target to start".to_string(),
            (Some(e), None) => format!("{:.1} s · no frames yet", e.as_secs_f64()),
            (Some(e), Some(p)) => {
                let window = p.window(WINDOW, monotonic_ns());
                let p99 = window.summary.as_ref().map_or("–".to_string(), |s| {
                    format!("{:.2} ms", s.frame_time_ms.p99)
                });
                format!(
                    "{:.1} s · {} (pid {}) · {:.1} fps · p99 {p99} · {} stutters · {} frames",
                    e.as_secs_f64(),
                    p.comm,
                    p.pid,
                    window.fps,
                    p.stutters_total,
                    p.frames_total
                )
            }
        };
        self.bar.set_message(message);
        self.bar.tick();
    }

    /// Removes the line (the summary follows).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
