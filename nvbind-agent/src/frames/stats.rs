//! Frame-time statistics, with the definitions the report documents (docs/report-schema.md):
//! percentiles from an hdrhistogram (3 significant digits), min/max/mean/stdev exact, average FPS
//! as frames over elapsed time (never a mean of per-frame FPS), and both "1% low" definitions.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Frame-time distribution in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameTimeStats {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub stdev: f64,
}

/// "Low" frame rates, in frames per second, by both definitions in use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LowFps {
    /// 1000 / p99 frame time (MangoHud, PresentMon).
    pub p1_percentile: f64,
    /// 1000 / p99.9 frame time.
    pub p0_1_percentile: f64,
    /// 1000 / mean of the worst 1% of frame times (CapFrameX).
    pub p1_average: f64,
    /// 1000 / mean of the worst 0.1% of frame times.
    pub p0_1_average: f64,
}

/// Everything derived from a sequence of frame times.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSummary {
    pub fps_avg: f64,
    pub frame_time_ms: FrameTimeStats,
    pub low_fps: LowFps,
}

const NS_PER_MS: f64 = 1e6;

/// Summarises frame times (ns). `None` without at least one interval.
pub fn summarize(frame_times_ns: &[u64]) -> Option<FrameSummary> {
    if frame_times_ns.is_empty() {
        return None;
    }
    // 1 ns .. 1 hour at 3 significant digits: 0.1% resolution at any frame time.
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).ok()?;
    for &ft in frame_times_ns {
        hist.saturating_record(ft.max(1));
    }
    let n = frame_times_ns.len() as f64;
    let total: u128 = frame_times_ns.iter().map(|&v| v as u128).sum();
    let mean_ns = total as f64 / n;
    let var = frame_times_ns
        .iter()
        .map(|&v| {
            let d = v as f64 - mean_ns;
            d * d
        })
        .sum::<f64>()
        / n;
    let q = |quantile: f64| hist.value_at_quantile(quantile) as f64 / NS_PER_MS;
    let stats = FrameTimeStats {
        min: *frame_times_ns.iter().min()? as f64 / NS_PER_MS,
        mean: mean_ns / NS_PER_MS,
        p50: q(0.50),
        p90: q(0.90),
        p95: q(0.95),
        p99: q(0.99),
        p99_9: q(0.999),
        max: *frame_times_ns.iter().max()? as f64 / NS_PER_MS,
        stdev: var.sqrt() / NS_PER_MS,
    };
    let mut worst = frame_times_ns.to_vec();
    worst.sort_unstable_by(|a, b| b.cmp(a));
    let worst_mean_ms = |share: f64| {
        let k = ((n * share).ceil() as usize).clamp(1, worst.len());
        worst[..k].iter().map(|&v| v as f64).sum::<f64>() / k as f64 / NS_PER_MS
    };
    let low_fps = LowFps {
        p1_percentile: 1000.0 / stats.p99,
        p0_1_percentile: 1000.0 / stats.p99_9,
        p1_average: 1000.0 / worst_mean_ms(0.01),
        p0_1_average: 1000.0 / worst_mean_ms(0.001),
    };
    Some(FrameSummary {
        // Frames over elapsed time: n intervals took `total` ns.
        fps_avg: n / (total as f64 / 1e9),
        frame_time_ms: stats,
        low_fps,
    })
}

/// Summary of an in-kernel log2 histogram (bucket i = [2^i, 2^(i+1)) ns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Log2Summary {
    pub count: u64,
    /// Upper bounds of the buckets holding these quantiles, in microseconds.
    pub p50_us_at_most: f64,
    pub p90_us_at_most: f64,
    pub p99_us_at_most: f64,
    pub max_us_at_most: f64,
    /// The raw buckets, trailing empty ones trimmed.
    pub buckets_log2_ns: Vec<u64>,
}

pub fn summarize_log2(buckets: &[u64]) -> Log2Summary {
    let count: u64 = buckets.iter().sum();
    let upper_us = |i: usize| (1u128 << (i + 1)) as f64 / 1000.0;
    let quantile = |q: f64| {
        if count == 0 {
            return 0.0;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_us(i);
            }
        }
        upper_us(buckets.len().saturating_sub(1))
    };
    let last = buckets.iter().rposition(|&c| c > 0);
    Log2Summary {
        count,
        p50_us_at_most: quantile(0.5),
        p90_us_at_most: quantile(0.9),
        p99_us_at_most: quantile(0.99),
        max_us_at_most: last.map(upper_us).unwrap_or(0.0),
        buckets_log2_ns: buckets[..last.map_or(0, |i| i + 1)].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn steady_pacing() {
        let times = vec![10_000_000u64; 1000];
        let s = summarize(&times).expect("summary");
        assert!(close(s.fps_avg, 100.0, 1e-9));
        assert!(close(s.frame_time_ms.p50, 10.0, 0.001));
        assert!(close(s.frame_time_ms.p99, 10.0, 0.001));
        assert_eq!(s.frame_time_ms.stdev, 0.0);
        assert!(close(s.low_fps.p1_average, 100.0, 0.001));
    }

    #[test]
    fn spikes_show_in_tail_and_lows() {
        // 990 frames of 10 ms and 10 of 50 ms: exactly the worst 1% are the spikes.
        let mut times = vec![10_000_000u64; 990];
        times.extend(std::iter::repeat_n(50_000_000u64, 10));
        let s = summarize(&times).expect("summary");
        assert!(close(s.frame_time_ms.p50, 10.0, 0.001));
        assert!(close(s.frame_time_ms.p99_9, 50.0, 0.001));
        assert_eq!(s.frame_time_ms.max, 50.0);
        assert!(
            close(s.low_fps.p1_average, 20.0, 0.001),
            "{}",
            s.low_fps.p1_average
        );
        // Average FPS is frames over time, not a mean of per-frame FPS.
        let total_s = (990.0 * 10.0 + 10.0 * 50.0) / 1000.0;
        assert!(close(s.fps_avg, 1000.0 / total_s, 1e-9));
    }

    #[test]
    fn no_intervals_no_summary() {
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn log2_quantiles_are_bucket_bounds() {
        let mut b = vec![0u64; 40];
        b[10] = 90; // [1024, 2048) ns
        b[20] = 10; // [~1 ms, ~2 ms)
        let s = summarize_log2(&b);
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_us_at_most, 2.048);
        assert_eq!(s.p99_us_at_most, 2097.152);
        assert_eq!(s.buckets_log2_ns.len(), 21);
        assert_eq!(summarize_log2(&[0; 40]).count, 0);
    }
}
