//! The `shader_compile` section of a process's report: the game's long shader and pipeline
//! compile calls, what they cost its frames, and the frames they hit hardest.

use std::collections::BTreeMap;

use nvbind_common::compile_call;
use serde::{Deserialize, Serialize};

use super::{stutters::StutterReport, units::ms};
use crate::{
    frames::{Capture, CompileRecord, DriverFeedback, Frame, ProcessRecord},
    stutter::Cause,
};

/// Calls listed one by one (the longest, in time order).
const CALLS_LISTED: usize = 1000;
/// Frames listed as the worst.
const WORST_FRAMES: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompileReport {
    /// Calls of half a millisecond or longer (shorter ones are in the per-frame `compile_ms` of
    /// the presenting thread only), by every thread of the process.
    pub calls: u64,
    /// Pipelines those calls were asked to create.
    pub pipelines: u64,
    /// Time inside them, all threads together.
    pub time_ms: f64,
    /// Of them, calls that were given a pipeline cache. Whether the cache held the pipelines is
    /// known only where the driver says so (`driver_feedback`; see docs/stutter.md).
    pub calls_with_cache: u64,
    /// What the driver said of the pipelines it was asked about through creation feedback
    /// (summed over the calls whose game asked); absent when no call had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_feedback: Option<DriverFeedback>,
    /// Calls the agent gave up when the process made more than it keeps (the shortest first).
    #[serde(default, skip_serializing_if = "super::model::is_zero")]
    pub calls_dropped: u64,
    /// The same, per Vulkan function.
    pub by_call: BTreeMap<String, CallTotals>,
    /// Frames during whose interval a thread of the process was inside such a call.
    pub frames_affected: u64,
    /// Their share of the frames (0–1).
    pub share_of_frames_affected: f64,
    /// Stutters whose verdict is `shader-compile`.
    pub stutters: u64,
    /// The frames with the most compile time in them, the most first.
    pub worst_frames: Vec<CompileFrame>,
    /// The calls themselves, in time order (the longest [`CALLS_LISTED`] when there are more).
    pub call_list: Vec<CompileCall>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallTotals {
    pub calls: u64,
    pub pipelines: u64,
    pub time_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompileFrame {
    /// Index of the frame (as in the per-frame CSV and `stutters`).
    pub frame: u64,
    pub frame_time_ms: f64,
    /// Time the game's threads spent in compile calls within the frame (summed over threads).
    pub compile_ms: f64,
    /// The presenting thread's share of it.
    pub presenting_thread_compile_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompileCall {
    pub tid: u32,
    pub thread: String,
    pub call: String,
    /// When it was entered, seconds since the capture started.
    pub t_s: f64,
    /// When it was entered and when it returned, CLOCK_MONOTONIC nanoseconds (as the per-frame
    /// CSV's `present_ns`): to line the call up with a game's own clock.
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_ms: f64,
    pub pipelines: u32,
    pub cache_given: bool,
    /// Its `VkResult` (0: success).
    pub result: i32,
    /// The driver's creation feedback on its pipelines, where the game asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_feedback: Option<DriverFeedback>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The section, absent when the process made no long compile call.
pub fn report(
    capture: &Capture,
    p: &ProcessRecord,
    frames: &[Frame],
    stutters: &StutterReport,
) -> Option<CompileReport> {
    if p.compiles.is_empty() && p.compiles_dropped == 0 {
        return None;
    }
    let mut by_call: BTreeMap<String, CallTotals> = BTreeMap::new();
    for c in &p.compiles {
        let t = by_call
            .entry(compile_call::name(c.call).to_string())
            .or_default();
        t.calls += 1;
        t.pipelines += u64::from(c.pipelines);
        t.time_ms += ms(c.duration_ns());
    }
    for t in by_call.values_mut() {
        t.time_ms = round3(t.time_ms);
    }
    // Per frame (index of its present), the compile time in it: all threads', the presenting
    // thread's. Each call is placed among the frames by its start (they are in present order),
    // so a session of millions of frames is read once per call, not once per frame.
    let mut in_frames: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for c in &p.compiles {
        let mut k = frames.partition_point(|f| f.ts_ns <= c.start_ns).max(1);
        while k < frames.len() && frames[k - 1].ts_ns < c.end_ns {
            let overlap = c.overlap_ns(frames[k - 1].ts_ns, frames[k].ts_ns);
            if overlap > 0 {
                let slot = in_frames.entry(k).or_default();
                slot.0 += overlap;
                if c.tid == frames[k].tid {
                    slot.1 += overlap;
                }
            }
            k += 1;
        }
    }
    let mut affected: Vec<CompileFrame> = in_frames
        .into_iter()
        .map(|(k, (all, presenting))| CompileFrame {
            frame: k as u64,
            frame_time_ms: round3(ms(frames[k].ts_ns - frames[k - 1].ts_ns)),
            compile_ms: round3(ms(all)),
            presenting_thread_compile_ms: round3(ms(presenting)),
        })
        .collect();
    let frames_affected = affected.len() as u64;
    affected.sort_by(|a, b| {
        b.compile_ms
            .total_cmp(&a.compile_ms)
            .then(a.frame.cmp(&b.frame))
    });
    affected.truncate(WORST_FRAMES);
    Some(CompileReport {
        calls: p.compiles.len() as u64,
        pipelines: p.compiles.iter().map(|c| u64::from(c.pipelines)).sum(),
        time_ms: round3(p.compiles.iter().map(|c| ms(c.duration_ns())).sum()),
        calls_with_cache: p.compiles.iter().filter(|c| c.cache_given).count() as u64,
        driver_feedback: p
            .compiles
            .iter()
            .filter_map(CompileRecord::driver_feedback)
            .reduce(|a, b| a + b),
        calls_dropped: p.compiles_dropped,
        by_call,
        frames_affected,
        share_of_frames_affected: if frames.len() > 1 {
            frames_affected as f64 / (frames.len() - 1) as f64
        } else {
            0.0
        },
        stutters: stutters
            .by_cause
            .get(&Cause::ShaderCompile)
            .copied()
            .unwrap_or(0),
        worst_frames: affected,
        call_list: listed(p.compiles.as_slice())
            .into_iter()
            .map(|c| CompileCall {
                tid: c.tid,
                thread: capture
                    .thread_names
                    .get(&c.tid)
                    .cloned()
                    .unwrap_or_default(),
                call: compile_call::name(c.call).to_string(),
                t_s: round3(ms(c.start_ns.saturating_sub(capture.started_ns)) / 1e3),
                start_ns: c.start_ns,
                end_ns: c.end_ns,
                duration_ms: round3(ms(c.duration_ns())),
                pipelines: c.pipelines,
                cache_given: c.cache_given,
                result: c.result,
                driver_feedback: c.driver_feedback(),
            })
            .collect(),
    })
}

/// The calls to list: every one, or the longest [`CALLS_LISTED`], in time order.
fn listed(calls: &[CompileRecord]) -> Vec<CompileRecord> {
    let mut kept = calls.to_vec();
    if kept.len() > CALLS_LISTED {
        kept.sort_by_key(|c| std::cmp::Reverse(c.duration_ns()));
        kept.truncate(CALLS_LISTED);
    }
    kept.sort_by_key(|c| c.start_ns);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stutter::DetectorConfig;

    fn frame(ts_ms: u64, tid: u32) -> Frame {
        Frame {
            ts_ns: ts_ms * 1_000_000,
            tid,
            ..Default::default()
        }
    }

    #[test]
    fn totals_affected_frames_and_worst_frames_come_from_the_calls() {
        let mut p = ProcessRecord::default();
        let call = |tid, start_ms: u64, took_ms: u64, pipelines, cache_given| CompileRecord {
            tid,
            call: compile_call::GRAPHICS_PIPELINES,
            start_ns: start_ms * 1_000_000,
            end_ns: (start_ms + took_ms) * 1_000_000,
            pipelines,
            cache_given,
            ..Default::default()
        };
        // Frames every 10 ms from 0 to 100; the render thread (5) compiles 25..65 (frames 3..7),
        // a worker (9) 82..88 (frame 9).
        p.keep_compile(call(5, 25, 40, 2, false));
        p.keep_compile(call(9, 82, 6, 1, true));
        let frames: Vec<Frame> = (0..=10).map(|i| frame(i * 10, 5)).collect();
        let stutters = StutterReport {
            count: 0,
            per_minute: 0.0,
            share_of_time: 0.0,
            thresholds: DetectorConfig::default(),
            by_cause: BTreeMap::new(),
            events: Vec::new(),
        };
        let r = report(&Capture::default(), &p, &frames, &stutters).expect("a section");
        assert_eq!((r.calls, r.pipelines, r.calls_with_cache), (2, 3, 1));
        assert_eq!(r.time_ms, 46.0);
        assert_eq!(r.by_call["vkCreateGraphicsPipelines"].calls, 2);
        // Frames 3 (20..30), 4, 5, 6, 7 (60..70) and 9 (80..90).
        assert_eq!(r.frames_affected, 6);
        assert!((r.share_of_frames_affected - 0.6).abs() < 1e-9);
        // The three full frames (10 ms each), the worker's 6 ms, then the first 5 ms one.
        let worst: Vec<(u64, f64, f64)> = r
            .worst_frames
            .iter()
            .map(|f| (f.frame, f.compile_ms, f.presenting_thread_compile_ms))
            .collect();
        assert_eq!(
            worst,
            [
                (4, 10.0, 10.0),
                (5, 10.0, 10.0),
                (6, 10.0, 10.0),
                (9, 6.0, 0.0),
                (3, 5.0, 5.0)
            ]
        );
        assert_eq!(r.call_list.len(), 2);
        assert_eq!(r.call_list[0].duration_ms, 40.0);
        assert!(report(
            &Capture::default(),
            &ProcessRecord::default(),
            &frames,
            &stutters
        )
        .is_none());
    }
}
