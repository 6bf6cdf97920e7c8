//! `GET /metrics`: OpenMetrics text from `prometheus-client`. Frame times are histograms fed as
//! frames arrive; stutters and frames are counters; GPU gauges and the agent's own cost are read
//! from the live state at each scrape. Base units throughout (seconds, bytes, watts, ratios).

use std::sync::{atomic::AtomicU64, Arc, RwLock};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
        MetricType,
    },
    registry::{Registry, Unit},
};

use super::live::{GpuStatus, Live};
use crate::{gpu::GpuSample, probes::ProgramCost};

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
    /// The name a person knows the process by (`crate::identity`).
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CauseLabels {
    pub pid: String,
    pub comm: String,
    pub name: String,
    pub cause: String,
}

fn frame_time_histogram() -> Histogram {
    Histogram::new(FRAME_TIME_BUCKETS)
}

/// Present-to-display buckets in seconds: from one short refresh to several long ones (a
/// compositor adds one or two refreshes to a game's own queue).
const PRESENT_TO_DISPLAY_BUCKETS: [f64; 14] = [
    0.002, 0.004, 0.006, 0.008, 0.010, 0.0125, 0.016667, 0.020, 0.025, 0.033333, 0.05, 0.066667,
    0.1, 0.25,
];

fn present_to_display_histogram() -> Histogram {
    Histogram::new(PRESENT_TO_DISPLAY_BUCKETS)
}

/// The registry and the metrics the capture loop feeds.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub frame_time: Family<ProcessLabels, Histogram, fn() -> Histogram>,
    pub frames: Family<ProcessLabels, Counter>,
    pub stutters: Family<CauseLabels, Counter>,
    pub shader_compiles: Family<ProcessLabels, Counter>,
    pub shader_compile_time: Family<ProcessLabels, Counter<f64, AtomicU64>>,
    pub present_to_display: Family<ProcessLabels, Histogram, fn() -> Histogram>,
    pub frames_displayed: Family<ProcessLabels, Counter>,
    pub frames_dropped: Family<ProcessLabels, Counter>,
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
        let shader_compiles = Family::<ProcessLabels, Counter>::default();
        registry.register(
            "shader_compiles",
            "Shader and pipeline compile calls of 0.5 ms or longer by a tracked game's threads",
            shader_compiles.clone(),
        );
        let shader_compile_time = Family::<ProcessLabels, Counter<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "shader_compile",
            "Time a tracked game's threads spent in those calls",
            Unit::Seconds,
            shader_compile_time.clone(),
        );
        let present_to_display =
            Family::<ProcessLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                present_to_display_histogram,
            );
        registry.register_with_unit(
            "present_to_display",
            "From a tracked game's present to the compositor's flip that showed the frame",
            Unit::Seconds,
            present_to_display.clone(),
        );
        let frames_displayed = Family::<ProcessLabels, Counter>::default();
        registry.register(
            "frames_displayed",
            "Frames of a tracked game a compositor's flip showed",
            frames_displayed.clone(),
        );
        let frames_dropped = Family::<ProcessLabels, Counter>::default();
        registry.register(
            "frames_dropped",
            "Frames of a tracked game replaced by a later one before any flip showed them",
            frames_dropped.clone(),
        );
        registry.register_collector(Box::new(StateCollector { live }));
        Metrics {
            registry,
            frame_time,
            frames,
            stutters,
            shader_compiles,
            shader_compile_time,
            present_to_display,
            frames_displayed,
            frames_dropped,
        }
    }

    /// Drops the series of a process that is no longer tracked.
    pub fn forget(&self, labels: &ProcessLabels) {
        self.frame_time.remove(labels);
        self.frames.remove(labels);
        self.shader_compiles.remove(labels);
        self.shader_compile_time.remove(labels);
        self.present_to_display.remove(labels);
        self.frames_displayed.remove(labels);
        self.frames_dropped.remove(labels);
        for cause in crate::stutter::Cause::ALL {
            self.stutters.remove(&CauseLabels {
                pid: labels.pid.clone(),
                comm: labels.comm.clone(),
                name: labels.name.clone(),
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

/// GPU gauges and the agent's own cost, from the live state at scrape time.
#[derive(Debug)]
struct StateCollector {
    live: Arc<RwLock<Live>>,
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self
            .live
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for family in STATE_FAMILIES {
            family.encode(&live, &mut encoder)?;
        }
        Ok(())
    }
}

/// The families read from the live state, in the order they are exported.
const STATE_FAMILIES: &[StateFamily] = &[
    StateFamily {
        name: "gpu_sampled",
        help: "1 when the GPU's counters are read, 0 when nvbind cannot read them",
        kind: Kind::Gauge,
        unit: None,
        read: Read::Each(|live| {
            live.gpus
                .iter()
                .map(|g| (gpu_labels(g), Number::Int(u64::from(g.sample.is_some()))))
                .collect()
        }),
    },
    StateFamily {
        name: "gpu_utilization",
        help: "Share of time the GPU was busy",
        kind: Kind::Gauge,
        unit: Some("ratio"),
        read: Read::Sample(|s| s.utilization_ratio.map(Number::Float)),
    },
    StateFamily {
        name: "gpu_memory_used",
        help: "VRAM in use",
        kind: Kind::Gauge,
        unit: Some("bytes"),
        read: Read::Sample(|s| s.vram_used_bytes.map(|b| Number::Float(b as f64))),
    },
    StateFamily {
        name: "gpu_memory_total",
        help: "VRAM installed",
        kind: Kind::Gauge,
        unit: Some("bytes"),
        read: Read::Sample(|s| s.vram_total_bytes.map(|b| Number::Float(b as f64))),
    },
    StateFamily {
        name: "gpu_power",
        help: "Board power draw",
        kind: Kind::Gauge,
        unit: Some("watts"),
        read: Read::Sample(|s| s.power_watts.map(Number::Float)),
    },
    StateFamily {
        name: "gpu_temperature",
        help: "GPU temperature",
        kind: Kind::Gauge,
        unit: Some("celsius"),
        read: Read::Sample(|s| s.temperature_celsius.map(Number::Float)),
    },
    StateFamily {
        name: "gpu_fan_speed",
        help: "Fan speed in revolutions per minute",
        kind: Kind::Gauge,
        unit: Some("rpm"),
        read: Read::Sample(|s| s.fan_rpm.map(Number::Float)),
    },
    StateFamily {
        name: "gpu_clock",
        help: "Clock frequency",
        kind: Kind::Gauge,
        unit: Some("hertz"),
        read: Read::Each(gpu_clocks),
    },
    StateFamily {
        name: "gpu_throttled",
        help: "1 for each reason the GPU's clocks are held down now",
        kind: Kind::Gauge,
        unit: None,
        read: Read::Each(gpu_throttle_reasons),
    },
    StateFamily {
        name: "bpf_program_runs",
        help: "Runs of each of nvbind's eBPF programs while the kernel timed them \
               (bpf_stats, nvbind_bpf_stats_measured_seconds)",
        kind: Kind::Counter,
        unit: None,
        read: Read::Program(|p| Number::Int(p.run_count)),
    },
    StateFamily {
        name: "bpf_program_run",
        help: "Time spent in each of nvbind's eBPF programs while the kernel timed them \
               (bpf_stats, nvbind_bpf_stats_measured_seconds)",
        kind: Kind::Counter,
        unit: Some("seconds"),
        read: Read::Program(|p| Number::Float(p.run_time_ns as f64 / 1e9)),
    },
    StateFamily {
        name: "bpf_stats_measured",
        help: "Time during which the kernel timed nvbind's eBPF programs (by default 2 s a \
               minute: the global bpf_stats switch taxes every BPF program on the host)",
        kind: Kind::Counter,
        unit: Some("seconds"),
        read: Read::One(|live| {
            Number::Float(live.agent.bpf.first().map_or(0.0, |p| p.measured_s))
        }),
    },
    StateFamily {
        name: "bpf_program_skipped_runs",
        help: "Times the kernel skipped each of nvbind's eBPF programs because another tracing \
               program was running on that CPU: events it never saw",
        kind: Kind::Counter,
        unit: None,
        read: Read::Program(|p| Number::Int(p.recursion_misses)),
    },
    StateFamily {
        name: "agent_cpu",
        help: "CPU time the agent used",
        kind: Kind::Counter,
        unit: Some("seconds"),
        read: Read::One(|live| Number::Float(live.agent.cpu_seconds)),
    },
    StateFamily {
        name: "agent_resident_memory",
        help: "The agent's resident memory",
        kind: Kind::Gauge,
        unit: Some("bytes"),
        read: Read::One(|live| Number::Float(live.agent.resident_bytes as f64)),
    },
    StateFamily {
        name: "dropped_events",
        help: "Kernel records lost because the ring buffer was full",
        kind: Kind::Counter,
        unit: None,
        read: Read::One(|live| Number::Int(live.agent.dropped_events)),
    },
    StateFamily {
        name: "discovery_refused",
        help: "Presents of processes not tracked because their user had games.max_per_user presenting processes tracked",
        kind: Kind::Counter,
        unit: None,
        read: Read::One(|live| Number::Int(live.agent.discovery_refused)),
    },
    StateFamily {
        name: "frames_over_rate",
        help: "Frames presented beyond games.max_fps_per_user: counted, not stored",
        kind: Kind::Counter,
        unit: None,
        read: Read::One(|live| Number::Int(live.agent.frames_over_rate)),
    },
    StateFamily {
        name: "kernel_map_full",
        help: "Threads, processes or users the kernel's tables had no room for (users: not capped by games.max_per_user)",
        kind: Kind::Counter,
        unit: None,
        read: Read::Each(|live| {
            nvbind_common::map_full::NAMES
                .iter()
                .zip(live.agent.map_full)
                .map(|(map, n)| (vec![("map", (*map).to_string())], Number::Int(n)))
                .collect()
        }),
    },
    StateFamily {
        name: "tracked_processes",
        help: "Games tracked now",
        kind: Kind::Gauge,
        unit: None,
        read: Read::One(|live| Number::Int(live.processes.len() as u64)),
    },
    StateFamily {
        name: "reports_written",
        help: "Session reports written",
        kind: Kind::Counter,
        unit: None,
        read: Read::One(|live| Number::Int(live.agent.reports_written)),
    },
    StateFamily {
        name: "reports_failed",
        help: "Session reports that could not be written",
        kind: Kind::Counter,
        unit: None,
        read: Read::One(|live| Number::Int(live.agent.reports_failed)),
    },
    StateFamily {
        name: "reports_lost",
        help: "Unwritten session reports given up because too many were waiting to be written",
        kind: Kind::Counter,
        unit: None,
        read: Read::One(|live| Number::Int(live.agent.reports_lost)),
    },
];

/// One metric family read from the live state.
struct StateFamily {
    /// The name after `nvbind_` and before the unit (and a counter's `_total`).
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// The base unit, which the exposition appends to the name.
    unit: Option<&'static str>,
    read: Read,
}

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// How a family's series are read from the live state.
enum Read {
    /// One value without labels; always exported.
    One(fn(&Live) -> Number),
    /// One series per GPU with a sample that is not `suspended`, where the sample has the value.
    Sample(fn(&GpuSample) -> Option<Number>),
    /// One series per eBPF program.
    Program(fn(&ProgramCost) -> Number),
    /// Any labelled series.
    Each(fn(&Live) -> Vec<(Labels, Number)>),
}

/// A series' labels, in order.
type Labels = Vec<(&'static str, String)>;

/// A value as the exposition writes it: an integer stays an integer (`3`, not `3.0`).
#[derive(Clone, Copy)]
enum Number {
    Int(u64),
    Float(f64),
}

impl StateFamily {
    /// Encodes the family; one whose labelled series are all absent is left out.
    fn encode(&self, live: &Live, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let unit = self.unit.map(unit);
        let metric_type = match self.kind {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
        };
        let series = match self.read {
            Read::One(read) => {
                let value = read(live);
                let metric =
                    encoder.encode_descriptor(self.name, self.help, unit.as_ref(), metric_type)?;
                return self.encode_value(value, metric);
            }
            Read::Sample(read) => live
                .gpus
                .iter()
                .filter_map(|g| Some((g, g.sample.as_ref()?)))
                .filter(|(_, s)| !s.suspended)
                .filter_map(|(g, s)| Some((gpu_labels(g), read(s)?)))
                .collect(),
            Read::Program(read) => live
                .agent
                .bpf
                .iter()
                .map(|p| (vec![("program", p.program.clone())], read(p)))
                .collect(),
            Read::Each(read) => read(live),
        };
        if series.is_empty() {
            return Ok(());
        }
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, unit.as_ref(), metric_type)?;
        for (labels, value) in &series {
            self.encode_value(*value, metric.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn encode_value(&self, value: Number, metric: MetricEncoder) -> Result<(), std::fmt::Error> {
        match (self.kind, value) {
            (Kind::Gauge, Number::Int(v)) => ConstGauge::new(v).encode(metric),
            (Kind::Gauge, Number::Float(v)) => ConstGauge::new(v).encode(metric),
            (Kind::Counter, Number::Int(v)) => ConstCounter::new(v).encode(metric),
            (Kind::Counter, Number::Float(v)) => ConstCounter::new(v).encode(metric),
        }
    }
}

/// The unit of a family, as `prometheus-client` names it.
fn unit(name: &'static str) -> Unit {
    match name {
        "seconds" => Unit::Seconds,
        "bytes" => Unit::Bytes,
        "celsius" => Unit::Celsius,
        other => Unit::Other(other.into()),
    }
}

fn gpu_labels(g: &GpuStatus) -> Labels {
    vec![
        ("gpu", g.info.index.to_string()),
        ("pci_address", g.info.pci_address.clone()),
        ("vendor", g.info.vendor.label().to_string()),
        ("name", g.info.name.clone()),
    ]
}

/// Labels naming a GPU by index and address, and one more.
fn gpu_and(g: &GpuStatus, key: &'static str, value: &str) -> Labels {
    vec![
        ("gpu", g.info.index.to_string()),
        ("pci_address", g.info.pci_address.clone()),
        (key, value.to_string()),
    ]
}

/// Each clock of each GPU with a sample that is not `suspended`.
fn gpu_clocks(live: &Live) -> Vec<(Labels, Number)> {
    let mut series = Vec::new();
    for g in &live.gpus {
        let Some(s) = g.sample.as_ref().filter(|s| !s.suspended) else {
            continue;
        };
        for (clock, hertz) in [
            ("graphics", s.graphics_clock_hertz),
            ("sm", s.sm_clock_hertz),
            ("memory", s.memory_clock_hertz),
        ] {
            if let Some(hertz) = hertz {
                series.push((gpu_and(g, "clock", clock), Number::Float(hertz)));
            }
        }
    }
    series
}

/// Each reason each sampled GPU gives for holding its clocks down (a suspended one's too).
fn gpu_throttle_reasons(live: &Live) -> Vec<(Labels, Number)> {
    live.gpus
        .iter()
        .filter_map(|g| Some((g, g.sample.as_ref()?)))
        .flat_map(|(g, s)| {
            s.throttle_reasons
                .iter()
                .flatten()
                .map(move |reason| (gpu_and(g, "reason", reason), Number::Int(1)))
        })
        .collect()
}

#[cfg(test)]
mod tests;
