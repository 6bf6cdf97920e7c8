//! `GET /metrics`: OpenMetrics text from `prometheus-client`. Frame times are histograms fed as
//! frames arrive; stutters and frames are counters; GPU gauges and the agent's own cost are read
//! from the live state at each scrape. Base units throughout (seconds, bytes, watts, ratios).

use std::sync::{Arc, RwLock};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};

use super::live::Live;

/// Frame-time buckets in seconds: the refresh intervals players know (500, 240, 165, 144, 120,
/// 90, 60, 45, 30, 20, 15 Hz) and the long frames beyond.
const FRAME_TIME_BUCKETS: [f64; 17] = [
    0.002, 0.004167, 0.006061, 0.006944, 0.008333, 0.011111, 0.016667, 0.022222, 0.033333, 0.05,
    0.066667, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProcessLabels {
    pub pid: String,
    pub comm: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CauseLabels {
    pub pid: String,
    pub comm: String,
    pub cause: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GpuLabels {
    gpu: String,
    pci_address: String,
    vendor: String,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClockLabels {
    gpu: String,
    pci_address: String,
    clock: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ThrottleLabels {
    gpu: String,
    pci_address: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProgramLabels {
    program: String,
}

fn frame_time_histogram() -> Histogram {
    Histogram::new(FRAME_TIME_BUCKETS)
}

/// The registry and the metrics the capture loop feeds.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub frame_time: Family<ProcessLabels, Histogram, fn() -> Histogram>,
    pub frames: Family<ProcessLabels, Counter>,
    pub stutters: Family<CauseLabels, Counter>,
}

impl Metrics {
    pub fn new(live: Arc<RwLock<Live>>) -> Metrics {
        let mut registry = Registry::with_prefix("nvbind");
        let frame_time =
            Family::<ProcessLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                frame_time_histogram,
            );
        registry.register_with_unit(
            "frame_time",
            "Time between consecutive presents of a tracked game (its counted frame source)",
            Unit::Seconds,
            frame_time.clone(),
        );
        let frames = Family::<ProcessLabels, Counter>::default();
        registry.register(
            "frames",
            "Frames presented by a tracked game",
            frames.clone(),
        );
        let stutters = Family::<CauseLabels, Counter>::default();
        registry.register(
            "stutters",
            "Stutters of a tracked game by live verdict (see docs/stutter.md)",
            stutters.clone(),
        );
        registry.register_collector(Box::new(StateCollector { live }));
        Metrics {
            registry,
            frame_time,
            frames,
            stutters,
        }
    }

    /// Drops the series of a process that is no longer tracked.
    pub fn forget(&self, labels: &ProcessLabels) {
        self.frame_time.remove(labels);
        self.frames.remove(labels);
        for cause in crate::stutter::Cause::ALL {
            self.stutters.remove(&CauseLabels {
                pid: labels.pid.clone(),
                comm: labels.comm.clone(),
                cause: cause.name().into(),
            });
        }
    }

    /// The exposition in OpenMetrics text.
    pub fn encode_openmetrics(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The exposition in the classic Prometheus text format (0.0.4), for clients that do not
    /// ask for OpenMetrics (curl, promtool, older scrapers).
    pub fn encode_prometheus(&self) -> Result<String, std::fmt::Error> {
        Ok(openmetrics_to_prometheus(&self.encode_openmetrics()?))
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4. The two differ, for what nvbind exports,
/// only in metadata: OpenMetrics names a counter family without its `_total` suffix (its
/// samples carry it), has `# UNIT` lines and ends with `# EOF`; the classic format names the
/// family as its samples and has neither.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gain_their_suffix_and_openmetrics_only_lines_go() {
        let om = "# HELP nvbind_frames Frames.\n# TYPE nvbind_frames counter\n\
                  nvbind_frames_total{pid=\"1\"} 3\n\
                  # HELP nvbind_frame_time_seconds Time.\n# TYPE nvbind_frame_time_seconds histogram\n\
                  # UNIT nvbind_frame_time_seconds seconds\nnvbind_frame_time_seconds_count 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP nvbind_frames_total Frames.\n# TYPE nvbind_frames_total counter\n\
             nvbind_frames_total{pid=\"1\"} 3\n\
             # HELP nvbind_frame_time_seconds Time.\n# TYPE nvbind_frame_time_seconds histogram\n\
             nvbind_frame_time_seconds_count 2\n"
        );
    }

    #[test]
    fn the_live_state_is_exported_in_base_units() {
        let live = Arc::new(RwLock::new(Live::default()));
        let metrics = Metrics::new(Arc::clone(&live));
        let labels = ProcessLabels {
            pid: "42".into(),
            comm: "game".into(),
        };
        metrics.frame_time.get_or_create(&labels).observe(0.010);
        metrics.frames.get_or_create(&labels).inc();
        live.write().unwrap().agent.cpu_seconds = 1.5;
        let text = metrics.encode_openmetrics().unwrap();
        assert!(
            text.contains(
                "nvbind_frame_time_seconds_bucket{le=\"0.011111\",pid=\"42\",comm=\"game\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("nvbind_agent_cpu_seconds_total 1.5"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        metrics.forget(&labels);
        assert!(!metrics.encode_openmetrics().unwrap().contains("pid=\"42\""));
    }
}

/// GPU gauges and the agent's own cost, from the live state at scrape time.
#[derive(Debug)]
struct StateCollector {
    live: Arc<RwLock<Live>>,
}

/// Encodes one family of constant values.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(L, M)],
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, unit, first.metric_type())?;
    for (labels, value) in series {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self
            .live
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let e = &mut encoder;

        let gpu = |g: &super::live::GpuStatus| GpuLabels {
            gpu: g.info.index.to_string(),
            pci_address: g.info.pci_address.clone(),
            vendor: g.info.vendor.label().to_string(),
            name: g.info.name.clone(),
        };
        let info: Vec<_> = live
            .gpus
            .iter()
            .map(|g| (gpu(g), ConstGauge::new(i64::from(g.sample.is_some()))))
            .collect();
        family(
            e,
            "gpu_sampled",
            "1 when the GPU's counters are read, 0 when nvbind cannot read them",
            None,
            &info,
        )?;
        let sampled = || {
            live.gpus
                .iter()
                .filter_map(|g| Some((g, g.sample.as_ref()?)))
        };
        let gauge = |get: &dyn Fn(&crate::gpu::GpuSample) -> Option<f64>| -> Vec<_> {
            sampled()
                .filter(|(_, s)| !s.suspended)
                .filter_map(|(g, s)| Some((gpu(g), ConstGauge::new(get(s)?))))
                .collect()
        };
        family(
            e,
            "gpu_utilization",
            "Share of time the GPU was busy",
            Some(&Unit::Other("ratio".into())),
            &gauge(&|s| s.utilization_ratio),
        )?;
        family(
            e,
            "gpu_memory_used",
            "VRAM in use",
            Some(&Unit::Bytes),
            &gauge(&|s| s.vram_used_bytes.map(|b| b as f64)),
        )?;
        family(
            e,
            "gpu_memory_total",
            "VRAM installed",
            Some(&Unit::Bytes),
            &gauge(&|s| s.vram_total_bytes.map(|b| b as f64)),
        )?;
        family(
            e,
            "gpu_power",
            "Board power draw",
            Some(&Unit::Other("watts".into())),
            &gauge(&|s| s.power_watts),
        )?;
        family(
            e,
            "gpu_temperature",
            "GPU temperature",
            Some(&Unit::Celsius),
            &gauge(&|s| s.temperature_celsius),
        )?;
        family(
            e,
            "gpu_fan_speed",
            "Fan speed in revolutions per minute",
            Some(&Unit::Other("rpm".into())),
            &gauge(&|s| s.fan_rpm),
        )?;
        let clocks: Vec<_> = sampled()
            .filter(|(_, s)| !s.suspended)
            .flat_map(|(g, s)| {
                [
                    ("graphics", s.graphics_clock_hertz),
                    ("sm", s.sm_clock_hertz),
                    ("memory", s.memory_clock_hertz),
                ]
                .into_iter()
                .filter_map(move |(clock, v)| {
                    Some((
                        ClockLabels {
                            gpu: g.info.index.to_string(),
                            pci_address: g.info.pci_address.clone(),
                            clock: clock.into(),
                        },
                        ConstGauge::new(v?),
                    ))
                })
            })
            .collect();
        family(
            e,
            "gpu_clock",
            "Clock frequency",
            Some(&Unit::Other("hertz".into())),
            &clocks,
        )?;
        let throttles: Vec<_> = sampled()
            .flat_map(|(g, s)| {
                s.throttle_reasons.iter().flatten().map(move |reason| {
                    (
                        ThrottleLabels {
                            gpu: g.info.index.to_string(),
                            pci_address: g.info.pci_address.clone(),
                            reason: reason.clone(),
                        },
                        ConstGauge::new(1i64),
                    )
                })
            })
            .collect();
        family(
            e,
            "gpu_throttled",
            "1 for each reason the GPU's clocks are held down now",
            None,
            &throttles,
        )?;

        let program = |p: &crate::probes::ProgramCost| ProgramLabels {
            program: p.program.clone(),
        };
        let runs: Vec<_> = live
            .agent
            .bpf
            .iter()
            .map(|p| (program(p), ConstCounter::new(p.run_count)))
            .collect();
        family(
            e,
            "bpf_program_runs",
            "Times each of nvbind's eBPF programs ran (kernel bpf_stats)",
            None,
            &runs,
        )?;
        let time: Vec<_> = live
            .agent
            .bpf
            .iter()
            .map(|p| (program(p), ConstCounter::new(p.run_time_ns as f64 / 1e9)))
            .collect();
        family(
            e,
            "bpf_program_run",
            "Time spent in each of nvbind's eBPF programs (kernel bpf_stats)",
            Some(&Unit::Seconds),
            &time,
        )?;
        let skipped: Vec<_> = live
            .agent
            .bpf
            .iter()
            .map(|p| (program(p), ConstCounter::new(p.recursion_misses)))
            .collect();
        family(
            e,
            "bpf_program_skipped_runs",
            "Times the kernel skipped each of nvbind's eBPF programs because another tracing \
             program was running on that CPU: events it never saw",
            None,
            &skipped,
        )?;
        let agent = &live.agent;
        single(
            e,
            "agent_cpu",
            "CPU time the agent used",
            Some(&Unit::Seconds),
            ConstCounter::new(agent.cpu_seconds),
        )?;
        single(
            e,
            "agent_resident_memory",
            "The agent's resident memory",
            Some(&Unit::Bytes),
            ConstGauge::new(agent.resident_bytes as f64),
        )?;
        single(
            e,
            "dropped_events",
            "Kernel records lost because the ring buffer was full",
            None,
            ConstCounter::new(agent.dropped_events),
        )?;
        single(
            e,
            "tracked_processes",
            "Games tracked now",
            None,
            ConstGauge::new(live.processes.len() as i64),
        )?;
        single(
            e,
            "reports_written",
            "Session reports written",
            None,
            ConstCounter::new(agent.reports_written),
        )?;
        single(
            e,
            "reports_failed",
            "Session reports that could not be written",
            None,
            ConstCounter::new(agent.reports_failed),
        )?;
        Ok(())
    }
}

/// Encodes one metric without labels.
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: M,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, unit, value.metric_type())?;
    value.encode(metric)
}
