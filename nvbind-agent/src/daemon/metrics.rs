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
    use crate::daemon::live::{AgentStatus, GpuStatus};

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

    /// A live state with something in every family: two games, a GPU fully sampled and
    /// throttled, one partly sampled, one asleep (suspended), one never sampled, and eBPF
    /// program costs with skipped runs.
    fn representative() -> Metrics {
        use crate::{
            frames::{Identity, LiveProcess},
            gpu::{GpuInfo, GpuSample, Vendor},
            probes::ProgramCost,
        };
        let gpu_info = |index: usize, vendor: Vendor, name: &str| GpuInfo {
            index,
            vendor,
            name: name.into(),
            pci_address: format!("0000:0{index}:00.0"),
            pci_id: "10de:2684".into(),
            driver: "nvidia".into(),
            driver_version: None,
            uuid: None,
            device_nodes: Vec::new(),
            runtime_suspended: false,
            sysfs_path: std::path::PathBuf::new(),
        };
        let full = GpuSample {
            t_ns: 1,
            utilization_ratio: Some(0.75),
            memory_utilization_ratio: Some(0.5),
            graphics_clock_hertz: Some(2.52e9),
            sm_clock_hertz: Some(2.52e9),
            memory_clock_hertz: Some(1.05e10),
            vram_used_bytes: Some(6_442_450_944),
            vram_total_bytes: Some(25_769_803_776),
            power_watts: Some(312.5),
            temperature_celsius: Some(71.0),
            fan_rpm: Some(1650.0),
            throttle_reasons: Some(vec!["power".into(), "thermal".into()]),
            ..Default::default()
        };
        let partial = GpuSample {
            t_ns: 2,
            utilization_ratio: Some(0.0),
            graphics_clock_hertz: Some(3e8),
            vram_total_bytes: Some(8_589_934_592),
            temperature_celsius: Some(45.5),
            throttle_reasons: Some(Vec::new()),
            ..Default::default()
        };
        let asleep = GpuSample {
            t_ns: 3,
            suspended: true,
            throttle_reasons: Some(vec!["idle".into()]),
            ..Default::default()
        };
        let gpus = vec![
            (gpu_info(0, Vendor::Nvidia, "RTX 4090"), Some(full)),
            (gpu_info(1, Vendor::Amd, "RX 6800"), Some(partial)),
            (gpu_info(2, Vendor::Intel, "Arc A770"), Some(asleep)),
            (gpu_info(3, Vendor::Other, "virtio"), None),
        ];
        let process = |pid: u32, comm: &str| {
            let identity = Identity {
                comm: comm.into(),
                exe: format!("/usr/bin/{comm}"),
                cgroup: String::new(),
                tracked_since_unix_s: 1.0,
            };
            (pid, LiveProcess::new(pid, identity, Default::default()))
        };
        let bpf = vec![
            ProgramCost {
                program: "present".into(),
                run_count: 123_456,
                run_time_ns: 1_500_000_000,
                mean_ns_per_run: 12_150.0,
                recursion_misses: 0,
            },
            ProgramCost {
                program: "sched_switch".into(),
                run_count: 9_876_543_210,
                run_time_ns: 123_456_789,
                mean_ns_per_run: 12.5,
                recursion_misses: 17,
            },
        ];
        let live = Arc::new(RwLock::new(Live {
            window: std::time::Duration::from_secs(10),
            processes: [process(42, "game"), process(77, "other game")].into(),
            gpus: gpus
                .into_iter()
                .map(|(info, sample)| GpuStatus {
                    info,
                    sample,
                    not_sampled: None,
                })
                .collect(),
            agent: AgentStatus {
                version: "test",
                started_unix_s: 1.0,
                cpu_seconds: 12.25,
                resident_bytes: 41_943_040,
                dropped_events: 5,
                bpf,
                reports_written: 3,
                reports_failed: 1,
            },
        }));
        let metrics = Metrics::new(live);
        let labels = ProcessLabels {
            pid: "42".into(),
            comm: "game".into(),
        };
        for seconds in [0.010, 0.016, 0.120] {
            metrics.frame_time.get_or_create(&labels).observe(seconds);
            metrics.frames.get_or_create(&labels).inc();
        }
        metrics
            .stutters
            .get_or_create(&CauseLabels {
                pid: "42".into(),
                comm: "game".into(),
                cause: "cpu-contention".into(),
            })
            .inc();
        metrics
    }

    #[test]
    fn the_exposition_of_a_representative_state_is_unchanged() {
        let metrics = representative();
        let om = metrics.encode_openmetrics().unwrap();
        assert_eq!(om, EXPECTED_OPENMETRICS, "{om}");
        let prom = metrics.encode_prometheus().unwrap();
        assert_eq!(prom, EXPECTED_PROMETHEUS, "{prom}");
    }

    #[test]
    fn the_exposition_of_an_empty_state_is_unchanged() {
        let metrics = Metrics::new(Arc::new(RwLock::new(Live::default())));
        let om = metrics.encode_openmetrics().unwrap();
        assert_eq!(om, EXPECTED_EMPTY_OPENMETRICS, "{om}");
    }

    const EXPECTED_OPENMETRICS: &str = r##"# HELP nvbind_frame_time_seconds Time between consecutive presents of a tracked game (its counted frame source).
# TYPE nvbind_frame_time_seconds histogram
# UNIT nvbind_frame_time_seconds seconds
nvbind_frame_time_seconds_sum{pid="42",comm="game"} 0.146
nvbind_frame_time_seconds_count{pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="0.002",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.004167",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.006061",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.006944",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.008333",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.011111",pid="42",comm="game"} 1
nvbind_frame_time_seconds_bucket{le="0.016667",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.022222",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.033333",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.05",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.066667",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.1",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.15",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="0.25",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="0.5",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="1.0",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="2.0",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="+Inf",pid="42",comm="game"} 3
# HELP nvbind_frames Frames presented by a tracked game.
# TYPE nvbind_frames counter
nvbind_frames_total{pid="42",comm="game"} 3
# HELP nvbind_stutters Stutters of a tracked game by live verdict (see docs/stutter.md).
# TYPE nvbind_stutters counter
nvbind_stutters_total{pid="42",comm="game",cause="cpu-contention"} 1
# HELP nvbind_gpu_sampled 1 when the GPU's counters are read, 0 when nvbind cannot read them
# TYPE nvbind_gpu_sampled gauge
nvbind_gpu_sampled{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 1
nvbind_gpu_sampled{gpu="1",pci_address="0000:01:00.0",vendor="AMD",name="RX 6800"} 1
nvbind_gpu_sampled{gpu="2",pci_address="0000:02:00.0",vendor="Intel",name="Arc A770"} 1
nvbind_gpu_sampled{gpu="3",pci_address="0000:03:00.0",vendor="other",name="virtio"} 0
# HELP nvbind_gpu_utilization_ratio Share of time the GPU was busy
# TYPE nvbind_gpu_utilization_ratio gauge
# UNIT nvbind_gpu_utilization_ratio ratio
nvbind_gpu_utilization_ratio{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 0.75
nvbind_gpu_utilization_ratio{gpu="1",pci_address="0000:01:00.0",vendor="AMD",name="RX 6800"} 0.0
# HELP nvbind_gpu_memory_used_bytes VRAM in use
# TYPE nvbind_gpu_memory_used_bytes gauge
# UNIT nvbind_gpu_memory_used_bytes bytes
nvbind_gpu_memory_used_bytes{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 6442450944.0
# HELP nvbind_gpu_memory_total_bytes VRAM installed
# TYPE nvbind_gpu_memory_total_bytes gauge
# UNIT nvbind_gpu_memory_total_bytes bytes
nvbind_gpu_memory_total_bytes{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 25769803776.0
nvbind_gpu_memory_total_bytes{gpu="1",pci_address="0000:01:00.0",vendor="AMD",name="RX 6800"} 8589934592.0
# HELP nvbind_gpu_power_watts Board power draw
# TYPE nvbind_gpu_power_watts gauge
# UNIT nvbind_gpu_power_watts watts
nvbind_gpu_power_watts{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 312.5
# HELP nvbind_gpu_temperature_celsius GPU temperature
# TYPE nvbind_gpu_temperature_celsius gauge
# UNIT nvbind_gpu_temperature_celsius celsius
nvbind_gpu_temperature_celsius{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 71.0
nvbind_gpu_temperature_celsius{gpu="1",pci_address="0000:01:00.0",vendor="AMD",name="RX 6800"} 45.5
# HELP nvbind_gpu_fan_speed_rpm Fan speed in revolutions per minute
# TYPE nvbind_gpu_fan_speed_rpm gauge
# UNIT nvbind_gpu_fan_speed_rpm rpm
nvbind_gpu_fan_speed_rpm{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 1650.0
# HELP nvbind_gpu_clock_hertz Clock frequency
# TYPE nvbind_gpu_clock_hertz gauge
# UNIT nvbind_gpu_clock_hertz hertz
nvbind_gpu_clock_hertz{gpu="0",pci_address="0000:00:00.0",clock="graphics"} 2520000000.0
nvbind_gpu_clock_hertz{gpu="0",pci_address="0000:00:00.0",clock="sm"} 2520000000.0
nvbind_gpu_clock_hertz{gpu="0",pci_address="0000:00:00.0",clock="memory"} 10500000000.0
nvbind_gpu_clock_hertz{gpu="1",pci_address="0000:01:00.0",clock="graphics"} 300000000.0
# HELP nvbind_gpu_throttled 1 for each reason the GPU's clocks are held down now
# TYPE nvbind_gpu_throttled gauge
nvbind_gpu_throttled{gpu="0",pci_address="0000:00:00.0",reason="power"} 1
nvbind_gpu_throttled{gpu="0",pci_address="0000:00:00.0",reason="thermal"} 1
nvbind_gpu_throttled{gpu="2",pci_address="0000:02:00.0",reason="idle"} 1
# HELP nvbind_bpf_program_runs Times each of nvbind's eBPF programs ran (kernel bpf_stats)
# TYPE nvbind_bpf_program_runs counter
nvbind_bpf_program_runs_total{program="present"} 123456
nvbind_bpf_program_runs_total{program="sched_switch"} 9876543210
# HELP nvbind_bpf_program_run_seconds Time spent in each of nvbind's eBPF programs (kernel bpf_stats)
# TYPE nvbind_bpf_program_run_seconds counter
# UNIT nvbind_bpf_program_run_seconds seconds
nvbind_bpf_program_run_seconds_total{program="present"} 1.5
nvbind_bpf_program_run_seconds_total{program="sched_switch"} 0.123456789
# HELP nvbind_bpf_program_skipped_runs Times the kernel skipped each of nvbind's eBPF programs because another tracing program was running on that CPU: events it never saw
# TYPE nvbind_bpf_program_skipped_runs counter
nvbind_bpf_program_skipped_runs_total{program="present"} 0
nvbind_bpf_program_skipped_runs_total{program="sched_switch"} 17
# HELP nvbind_agent_cpu_seconds CPU time the agent used
# TYPE nvbind_agent_cpu_seconds counter
# UNIT nvbind_agent_cpu_seconds seconds
nvbind_agent_cpu_seconds_total 12.25
# HELP nvbind_agent_resident_memory_bytes The agent's resident memory
# TYPE nvbind_agent_resident_memory_bytes gauge
# UNIT nvbind_agent_resident_memory_bytes bytes
nvbind_agent_resident_memory_bytes 41943040.0
# HELP nvbind_dropped_events Kernel records lost because the ring buffer was full
# TYPE nvbind_dropped_events counter
nvbind_dropped_events_total 5
# HELP nvbind_tracked_processes Games tracked now
# TYPE nvbind_tracked_processes gauge
nvbind_tracked_processes 2
# HELP nvbind_reports_written Session reports written
# TYPE nvbind_reports_written counter
nvbind_reports_written_total 3
# HELP nvbind_reports_failed Session reports that could not be written
# TYPE nvbind_reports_failed counter
nvbind_reports_failed_total 1
# EOF
"##;
    const EXPECTED_PROMETHEUS: &str = r##"# HELP nvbind_frame_time_seconds Time between consecutive presents of a tracked game (its counted frame source).
# TYPE nvbind_frame_time_seconds histogram
nvbind_frame_time_seconds_sum{pid="42",comm="game"} 0.146
nvbind_frame_time_seconds_count{pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="0.002",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.004167",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.006061",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.006944",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.008333",pid="42",comm="game"} 0
nvbind_frame_time_seconds_bucket{le="0.011111",pid="42",comm="game"} 1
nvbind_frame_time_seconds_bucket{le="0.016667",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.022222",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.033333",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.05",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.066667",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.1",pid="42",comm="game"} 2
nvbind_frame_time_seconds_bucket{le="0.15",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="0.25",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="0.5",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="1.0",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="2.0",pid="42",comm="game"} 3
nvbind_frame_time_seconds_bucket{le="+Inf",pid="42",comm="game"} 3
# HELP nvbind_frames_total Frames presented by a tracked game.
# TYPE nvbind_frames_total counter
nvbind_frames_total{pid="42",comm="game"} 3
# HELP nvbind_stutters_total Stutters of a tracked game by live verdict (see docs/stutter.md).
# TYPE nvbind_stutters_total counter
nvbind_stutters_total{pid="42",comm="game",cause="cpu-contention"} 1
# HELP nvbind_gpu_sampled 1 when the GPU's counters are read, 0 when nvbind cannot read them
# TYPE nvbind_gpu_sampled gauge
nvbind_gpu_sampled{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 1
nvbind_gpu_sampled{gpu="1",pci_address="0000:01:00.0",vendor="AMD",name="RX 6800"} 1
nvbind_gpu_sampled{gpu="2",pci_address="0000:02:00.0",vendor="Intel",name="Arc A770"} 1
nvbind_gpu_sampled{gpu="3",pci_address="0000:03:00.0",vendor="other",name="virtio"} 0
# HELP nvbind_gpu_utilization_ratio Share of time the GPU was busy
# TYPE nvbind_gpu_utilization_ratio gauge
nvbind_gpu_utilization_ratio{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 0.75
nvbind_gpu_utilization_ratio{gpu="1",pci_address="0000:01:00.0",vendor="AMD",name="RX 6800"} 0.0
# HELP nvbind_gpu_memory_used_bytes VRAM in use
# TYPE nvbind_gpu_memory_used_bytes gauge
nvbind_gpu_memory_used_bytes{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 6442450944.0
# HELP nvbind_gpu_memory_total_bytes VRAM installed
# TYPE nvbind_gpu_memory_total_bytes gauge
nvbind_gpu_memory_total_bytes{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 25769803776.0
nvbind_gpu_memory_total_bytes{gpu="1",pci_address="0000:01:00.0",vendor="AMD",name="RX 6800"} 8589934592.0
# HELP nvbind_gpu_power_watts Board power draw
# TYPE nvbind_gpu_power_watts gauge
nvbind_gpu_power_watts{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 312.5
# HELP nvbind_gpu_temperature_celsius GPU temperature
# TYPE nvbind_gpu_temperature_celsius gauge
nvbind_gpu_temperature_celsius{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 71.0
nvbind_gpu_temperature_celsius{gpu="1",pci_address="0000:01:00.0",vendor="AMD",name="RX 6800"} 45.5
# HELP nvbind_gpu_fan_speed_rpm Fan speed in revolutions per minute
# TYPE nvbind_gpu_fan_speed_rpm gauge
nvbind_gpu_fan_speed_rpm{gpu="0",pci_address="0000:00:00.0",vendor="NVIDIA",name="RTX 4090"} 1650.0
# HELP nvbind_gpu_clock_hertz Clock frequency
# TYPE nvbind_gpu_clock_hertz gauge
nvbind_gpu_clock_hertz{gpu="0",pci_address="0000:00:00.0",clock="graphics"} 2520000000.0
nvbind_gpu_clock_hertz{gpu="0",pci_address="0000:00:00.0",clock="sm"} 2520000000.0
nvbind_gpu_clock_hertz{gpu="0",pci_address="0000:00:00.0",clock="memory"} 10500000000.0
nvbind_gpu_clock_hertz{gpu="1",pci_address="0000:01:00.0",clock="graphics"} 300000000.0
# HELP nvbind_gpu_throttled 1 for each reason the GPU's clocks are held down now
# TYPE nvbind_gpu_throttled gauge
nvbind_gpu_throttled{gpu="0",pci_address="0000:00:00.0",reason="power"} 1
nvbind_gpu_throttled{gpu="0",pci_address="0000:00:00.0",reason="thermal"} 1
nvbind_gpu_throttled{gpu="2",pci_address="0000:02:00.0",reason="idle"} 1
# HELP nvbind_bpf_program_runs_total Times each of nvbind's eBPF programs ran (kernel bpf_stats)
# TYPE nvbind_bpf_program_runs_total counter
nvbind_bpf_program_runs_total{program="present"} 123456
nvbind_bpf_program_runs_total{program="sched_switch"} 9876543210
# HELP nvbind_bpf_program_run_seconds_total Time spent in each of nvbind's eBPF programs (kernel bpf_stats)
# TYPE nvbind_bpf_program_run_seconds_total counter
nvbind_bpf_program_run_seconds_total{program="present"} 1.5
nvbind_bpf_program_run_seconds_total{program="sched_switch"} 0.123456789
# HELP nvbind_bpf_program_skipped_runs_total Times the kernel skipped each of nvbind's eBPF programs because another tracing program was running on that CPU: events it never saw
# TYPE nvbind_bpf_program_skipped_runs_total counter
nvbind_bpf_program_skipped_runs_total{program="present"} 0
nvbind_bpf_program_skipped_runs_total{program="sched_switch"} 17
# HELP nvbind_agent_cpu_seconds_total CPU time the agent used
# TYPE nvbind_agent_cpu_seconds_total counter
nvbind_agent_cpu_seconds_total 12.25
# HELP nvbind_agent_resident_memory_bytes The agent's resident memory
# TYPE nvbind_agent_resident_memory_bytes gauge
nvbind_agent_resident_memory_bytes 41943040.0
# HELP nvbind_dropped_events_total Kernel records lost because the ring buffer was full
# TYPE nvbind_dropped_events_total counter
nvbind_dropped_events_total 5
# HELP nvbind_tracked_processes Games tracked now
# TYPE nvbind_tracked_processes gauge
nvbind_tracked_processes 2
# HELP nvbind_reports_written_total Session reports written
# TYPE nvbind_reports_written_total counter
nvbind_reports_written_total 3
# HELP nvbind_reports_failed_total Session reports that could not be written
# TYPE nvbind_reports_failed_total counter
nvbind_reports_failed_total 1
"##;
    const EXPECTED_EMPTY_OPENMETRICS: &str = r##"# HELP nvbind_agent_cpu_seconds CPU time the agent used
# TYPE nvbind_agent_cpu_seconds counter
# UNIT nvbind_agent_cpu_seconds seconds
nvbind_agent_cpu_seconds_total 0.0
# HELP nvbind_agent_resident_memory_bytes The agent's resident memory
# TYPE nvbind_agent_resident_memory_bytes gauge
# UNIT nvbind_agent_resident_memory_bytes bytes
nvbind_agent_resident_memory_bytes 0.0
# HELP nvbind_dropped_events Kernel records lost because the ring buffer was full
# TYPE nvbind_dropped_events counter
nvbind_dropped_events_total 0
# HELP nvbind_tracked_processes Games tracked now
# TYPE nvbind_tracked_processes gauge
nvbind_tracked_processes 0
# HELP nvbind_reports_written Session reports written
# TYPE nvbind_reports_written counter
nvbind_reports_written_total 0
# HELP nvbind_reports_failed Session reports that could not be written
# TYPE nvbind_reports_failed counter
nvbind_reports_failed_total 0
# EOF
"##;
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
