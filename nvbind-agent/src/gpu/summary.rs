//! What a capture's GPU samples say: a summary per GPU, the intervals it throttled or ran short of
//! VRAM, and the GPU's state over any one frame (the evidence a stutter verdict uses).

use serde::{Deserialize, Serialize};

use super::{GpuInfo, GpuSample, GpuSeries};
use crate::stutter::{GpuEvidence, VRAM_PRESSURE_RATIO};

/// One GPU in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuReport {
    #[serde(flatten)]
    pub info: GpuInfo,
    pub sampled: bool,
    /// Why there are no counters for this GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_sampled: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<GpuSummary>,
    /// When clocks were held down, and why.
    pub throttle_intervals: Vec<Interval>,
    /// When VRAM use was at or above 95 % of VRAM installed.
    pub vram_pressure_intervals: Vec<Interval>,
    /// Every sample, for joining with frames (`t_s` is on the frames' clock).
    pub samples: Vec<TimedSample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedSample {
    /// Seconds since the capture started.
    pub t_s: f64,
    #[serde(flatten)]
    pub sample: GpuSample,
}

/// Over the whole capture. Fields the GPU never reported are absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSummary {
    pub samples: u64,
    /// Samples skipped because the GPU was runtime-suspended (asleep; not woken to be read).
    pub suspended_samples: u64,
    /// Mean cost of reading this GPU once, in microseconds.
    pub read_cost_us: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_p50_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_p95_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_max_celsius: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotspot_temperature_max_celsius: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphics_clock_min_hertz: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphics_clock_max_hertz: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_mean_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_max_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_peak_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_total_bytes: Option<u64>,
    /// Share of samples (that say) in which clocks were throttled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Seconds since the capture started: the first sample showing it.
    pub start_s: f64,
    /// The first sample no longer showing it (or the last sample, at the end of the capture).
    pub end_s: f64,
    /// Why (throttle reasons); empty for VRAM pressure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

fn seconds(t_ns: u64, started_ns: u64) -> f64 {
    (t_ns.saturating_sub(started_ns) as f64 / 1e9 * 1e6).round() / 1e6
}

/// The report section for one sampled (or unsampled) GPU.
pub fn summarise(series: &GpuSeries, started_ns: u64) -> GpuReport {
    let samples = &series.samples;
    let awake: Vec<&GpuSample> = samples.iter().filter(|s| !s.suspended).collect();
    let summary = (!samples.is_empty()).then(|| {
        let values = |f: &dyn Fn(&GpuSample) -> Option<f64>| -> Vec<f64> {
            awake.iter().filter_map(|s| f(s)).collect()
        };
        let utilization = values(&|s| s.utilization_ratio);
        let clocks = values(&|s| s.graphics_clock_hertz);
        let power = values(&|s| s.power_watts);
        let throttle_known: Vec<bool> = awake
            .iter()
            .filter_map(|s| s.throttle_reasons.as_ref().map(|r| !r.is_empty()))
            .collect();
        GpuSummary {
            samples: samples.len() as u64,
            suspended_samples: (samples.len() - awake.len()) as u64,
            read_cost_us: series.read_ns as f64 / samples.len() as f64 / 1e3,
            utilization_p50_ratio: percentile(&utilization, 0.50),
            utilization_p95_ratio: percentile(&utilization, 0.95),
            temperature_max_celsius: max(&values(&|s| s.temperature_celsius)),
            hotspot_temperature_max_celsius: max(&values(&|s| s.hotspot_temperature_celsius)),
            graphics_clock_min_hertz: min(&clocks),
            graphics_clock_max_hertz: max(&clocks),
            power_mean_watts: (!power.is_empty())
                .then(|| power.iter().sum::<f64>() / power.len() as f64),
            power_max_watts: max(&power),
            power_limit_watts: max(&values(&|s| s.power_limit_watts)),
            vram_peak_bytes: awake.iter().filter_map(|s| s.vram_used_bytes).max(),
            vram_total_bytes: awake.iter().filter_map(|s| s.vram_total_bytes).max(),
            throttled_ratio: (!throttle_known.is_empty()).then(|| {
                throttle_known.iter().filter(|&&t| t).count() as f64 / throttle_known.len() as f64
            }),
        }
    });
    GpuReport {
        info: series.info.clone(),
        sampled: series.not_sampled.is_none(),
        not_sampled: series.not_sampled.clone(),
        summary,
        throttle_intervals: intervals(samples, started_ns, |s| {
            s.throttle_reasons.clone().filter(|r| !r.is_empty())
        }),
        vram_pressure_intervals: intervals(samples, started_ns, |s| {
            s.vram_used_ratio()
                .filter(|&r| r >= VRAM_PRESSURE_RATIO)
                .map(|_| Vec::new())
        }),
        samples: samples
            .iter()
            .map(|s| TimedSample {
                t_s: seconds(s.t_ns, started_ns),
                sample: s.clone(),
            })
            .collect(),
    }
}

/// Runs of consecutive samples for which `during` says yes, with the union of what it returned.
fn intervals(
    samples: &[GpuSample],
    started_ns: u64,
    during: impl Fn(&GpuSample) -> Option<Vec<String>>,
) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    let mut open: Option<Interval> = None;
    for s in samples {
        match (during(s), open.as_mut()) {
            (Some(reasons), Some(current)) => {
                for r in reasons {
                    if !current.reasons.contains(&r) {
                        current.reasons.push(r);
                    }
                }
                current.end_s = seconds(s.t_ns, started_ns);
            }
            (Some(reasons), None) => {
                let t = seconds(s.t_ns, started_ns);
                open = Some(Interval {
                    start_s: t,
                    end_s: t,
                    reasons,
                });
            }
            (None, Some(_)) => {
                if let Some(mut done) = open.take() {
                    done.end_s = seconds(s.t_ns, started_ns);
                    out.push(done);
                }
            }
            (None, None) => {}
        }
    }
    out.extend(open);
    out
}

fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn max(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::max)
}

fn min(values: &[f64]) -> Option<f64> {
    values.iter().copied().reduce(f64::min)
}

/// The GPU's state over the frame `[from_ns, to_ns]`: samples from its start to one sampling
/// period after its end (a utilisation reading describes the time just before it). `gpu` names the
/// process's GPU by PCI address when known; otherwise the only sampled GPU is used.
pub fn evidence_for(
    series: &[GpuSeries],
    gpu: Option<&str>,
    from_ns: u64,
    to_ns: u64,
    period_ns: u64,
) -> GpuEvidence {
    let missing = |why: String| GpuEvidence {
        sampled: false,
        missing: Some(why),
        ..GpuEvidence::default()
    };
    if series.is_empty() {
        return missing("no GPU was found on this host".into());
    }
    let sampled: Vec<&GpuSeries> = series.iter().filter(|s| s.not_sampled.is_none()).collect();
    let chosen = match gpu {
        Some(address) => series.iter().find(|s| s.info.pci_address == address),
        None if sampled.len() == 1 => sampled.first().copied(),
        None if sampled.is_empty() => {
            let why: Vec<String> = series
                .iter()
                .filter_map(|s| {
                    s.not_sampled
                        .as_ref()
                        .map(|w| format!("{} ({}): {w}", s.info.name, s.info.pci_address))
                })
                .collect();
            return missing(format!("no GPU counters: {}", why.join("; ")));
        }
        None => {
            return missing(
                "several GPUs were sampled and which one this process renders on is unknown".into(),
            )
        }
    };
    let Some(chosen) = chosen else {
        return missing("the process's GPU was not found among the sampled GPUs".into());
    };
    if let Some(why) = &chosen.not_sampled {
        return missing(format!("no GPU counters for {}: {why}", chosen.info.name));
    }
    // Samples are in time order: find the window by bisection (this runs once per frame).
    let samples = &chosen.samples;
    let first = samples.partition_point(|s| s.t_ns < from_ns);
    let end = samples.partition_point(|s| s.t_ns <= to_ns.saturating_add(period_ns));
    let window: Vec<&GpuSample> = samples[first..end.max(first)].iter().collect();
    if window.is_empty() {
        return missing("no GPU sample fell within this frame".into());
    }
    let awake: Vec<&GpuSample> = window.iter().copied().filter(|s| !s.suspended).collect();
    if awake.is_empty() {
        return missing("the GPU was runtime-suspended (idle) and was not woken to be read".into());
    }
    let fold = |f: &dyn Fn(&GpuSample) -> Option<f64>, pick: fn(f64, f64) -> f64| {
        awake.iter().filter_map(|s| f(s)).reduce(pick)
    };
    let mut reasons: Vec<String> = Vec::new();
    for r in awake
        .iter()
        .filter_map(|s| s.throttle_reasons.as_ref())
        .flatten()
    {
        if !reasons.contains(r) {
            reasons.push(r.clone());
        }
    }
    GpuEvidence {
        sampled: true,
        missing: None,
        utilization_ratio: fold(&|s| s.utilization_ratio, f64::max),
        throttle_reasons: reasons,
        vram_used_ratio: fold(&|s| s.vram_used_ratio(), f64::max),
        pci_address: Some(chosen.info.pci_address.clone()),
        samples: awake.len() as u32,
        graphics_clock_hertz: fold(&|s| s.graphics_clock_hertz, f64::min),
        temperature_celsius: fold(&|s| s.temperature_celsius, f64::max),
        power_watts: fold(&|s| s.power_watts, f64::max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{test_gpu, Vendor};

    fn sample(t_ms: u64, util: f64, throttle: &[&str], vram: u64) -> GpuSample {
        GpuSample {
            t_ns: t_ms * 1_000_000,
            utilization_ratio: Some(util),
            throttle_reasons: Some(throttle.iter().map(|s| s.to_string()).collect()),
            vram_used_bytes: Some(vram),
            vram_total_bytes: Some(100),
            graphics_clock_hertz: Some(2e9 - util * 1e9),
            ..GpuSample::default()
        }
    }

    fn series() -> GpuSeries {
        GpuSeries {
            info: test_gpu(std::path::Path::new("/nonexistent"), Vendor::Amd, "amdgpu"),
            not_sampled: None,
            samples: vec![
                sample(100, 0.5, &[], 50),
                sample(200, 0.9, &["thermal"], 96),
                sample(300, 1.0, &["thermal", "power"], 97),
                sample(400, 0.6, &[], 60),
                sample(500, 0.7, &["power"], 50),
            ],
            read_ns: 5_000,
        }
    }

    #[test]
    fn throttle_and_vram_pressure_become_intervals() {
        let r = summarise(&series(), 0);
        assert_eq!(
            r.throttle_intervals,
            [
                Interval {
                    start_s: 0.2,
                    end_s: 0.4,
                    reasons: vec!["thermal".into(), "power".into()]
                },
                Interval {
                    start_s: 0.5,
                    end_s: 0.5,
                    reasons: vec!["power".into()]
                }
            ]
        );
        assert_eq!(r.vram_pressure_intervals.len(), 1);
        assert_eq!(r.vram_pressure_intervals[0].start_s, 0.2);
        let s = r.summary.expect("summary");
        assert_eq!(s.utilization_p50_ratio, Some(0.7));
        assert_eq!(s.utilization_p95_ratio, Some(1.0));
        assert_eq!(s.vram_peak_bytes, Some(97));
        assert_eq!(s.throttled_ratio, Some(0.6));
        assert_eq!(s.read_cost_us, 1.0);
    }

    #[test]
    fn a_frame_sees_the_samples_within_it() {
        let all = [series()];
        let e = evidence_for(&all, None, 150_000_000, 250_000_000, 100_000_000);
        assert!(e.sampled);
        assert_eq!(e.samples, 2);
        assert_eq!(e.throttle_reasons, ["thermal", "power"]);
        assert_eq!(e.utilization_ratio, Some(1.0));
        assert_eq!(e.vram_used_ratio, Some(0.97));
        let none = evidence_for(&all, None, 600_000_000, 610_000_000, 1);
        assert!(!none.sampled && none.missing.is_some());
        let absent = evidence_for(&[], None, 0, 1, 1);
        assert_eq!(
            absent.missing.as_deref(),
            Some("no GPU was found on this host")
        );
    }
}
