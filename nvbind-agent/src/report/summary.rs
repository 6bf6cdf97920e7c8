//! `nvbind-agent report FILE`: the report as a person reads it: how smooth, when it stuttered, why.

use std::fmt::Write;

use super::{OtherProcesses, ProcessReport, Report};
use crate::frames::stats::Log2Summary;
use crate::gpu::GpuReport;

/// The human summary of a report, listing at most `worst` stutters per process.
pub fn render(report: &Report, worst: usize) -> String {
    let mut out = String::new();
    let c = &report.capture;
    let _ = writeln!(
        out,
        "nvbind report: {} for {:.1} s ({}), kernel {}, {} CPUs",
        c.target, c.duration_s, c.end_reason, report.host.kernel, report.host.cpus
    );
    let others = &report.other_processes;
    if report.processes.is_empty() {
        let _ = writeln!(
            out,
            "\nno frames were captured ({} processes tracked); see the notes below",
            others.count
        );
    }
    for p in &report.processes {
        process(&mut out, p, worst);
    }
    if others.count > 0 && !report.processes.is_empty() {
        other_processes(&mut out, others);
    }
    for g in &report.gpus {
        gpu(&mut out, g);
    }
    if c.dropped_events > 0 {
        let _ = writeln!(
            out,
            "\n{} kernel records were lost: counts are lower bounds",
            c.dropped_events
        );
    }
    for note in &c.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// One line for the processes that made no frame: how many, their CPU time, the busiest names.
fn other_processes(out: &mut String, others: &OtherProcesses) {
    const NAMED: usize = 3;
    let mut names: Vec<String> = others
        .processes
        .iter()
        .take(NAMED)
        .map(|p| format!("{} {:.2} s", p.name, p.on_cpu_s))
        .collect();
    if others.count > NAMED {
        names.push(format!("{} more", others.count - NAMED));
    }
    let _ = writeln!(
        out,
        "\n{} other processes made no frames: {:.2} s on CPU, {:.2} s waiting for a CPU ({})",
        others.count,
        others.on_cpu_s,
        others.runq_wait_s,
        names.join(", ")
    );
}

fn gpu(out: &mut String, g: &GpuReport) {
    let i = &g.info;
    let _ = writeln!(out, "\nGPU {} {} [{}]", i.index, i.name, i.pci_address);
    let Some(s) = g.summary.as_ref().filter(|_| g.sampled) else {
        let why = g.not_sampled.as_deref().unwrap_or("no samples");
        let _ = writeln!(out, "  not sampled: {why}");
        return;
    };
    let mut parts = vec![format!("{} samples", s.samples)];
    if let (Some(p50), Some(p95)) = (s.utilization_p50_ratio, s.utilization_p95_ratio) {
        parts.push(format!(
            "busy p50 {:.0}% p95 {:.0}%",
            p50 * 100.0,
            p95 * 100.0
        ));
    }
    if let (Some(lo), Some(hi)) = (s.graphics_clock_min_hertz, s.graphics_clock_max_hertz) {
        parts.push(format!("clock {:.0}-{:.0} MHz", lo / 1e6, hi / 1e6));
    }
    if let Some(t) = s.temperature_max_celsius {
        parts.push(format!("max {t:.0} °C"));
    }
    if let Some(w) = s.power_mean_watts {
        parts.push(format!("{w:.0} W mean"));
    }
    if let (Some(peak), Some(total)) = (s.vram_peak_bytes, s.vram_total_bytes) {
        parts.push(format!(
            "VRAM peak {:.1}/{:.1} GiB",
            crate::gpu::gib(peak),
            crate::gpu::gib(total)
        ));
    }
    if s.suspended_samples > 0 {
        parts.push(format!("asleep in {} samples", s.suspended_samples));
    }
    let _ = writeln!(out, "  {}", parts.join(", "));
    for t in &g.throttle_intervals {
        let _ = writeln!(
            out,
            "  throttled {:.1}-{:.1} s: {}",
            t.start_s,
            t.end_s,
            t.reasons.join(", ")
        );
    }
    for v in &g.vram_pressure_intervals {
        let _ = writeln!(out, "  VRAM ≥ 95% full {:.1}-{:.1} s", v.start_s, v.end_s);
    }
}

fn process(out: &mut String, p: &ProcessReport, worst: usize) {
    let f = &p.frames;
    if let Some(d) = &f.display {
        let _ = writeln!(out, "\n{}: {}", p.label(), super::display::one_line(d));
        if f.count == 0 {
            return;
        }
    }
    let _ = writeln!(
        out,
        "\n{}: {} frames from {} over {:.1} s, {:.1} fps average",
        p.label(),
        f.count,
        f.source,
        f.duration_s,
        f.fps_avg.unwrap_or(0.0)
    );
    if !f.swapchains.is_empty() {
        let windows: Vec<String> = f
            .swapchains
            .iter()
            .map(|w| {
                let main = if w.main { ", its frames above" } else { "" };
                format!("{} {} frames{main}", w.id, w.frames)
            })
            .collect();
        let _ = writeln!(
            out,
            "  presented to {} windows: {}",
            f.swapchains.len(),
            windows.join("; ")
        );
    }
    if let Some(t) = &f.frame_time_ms {
        let _ = writeln!(
            out,
            "  frame time (ms): p50 {:.2}  p90 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  \
             (mean {:.2}, stdev {:.2})",
            t.p50, t.p90, t.p95, t.p99, t.p99_9, t.max, t.mean, t.stdev
        );
    }
    if let Some(l) = &f.low_fps {
        let _ = writeln!(
            out,
            "  1% low {:.1} fps (p99) / {:.1} fps (worst-1% average); 0.1% low {:.1} / {:.1} fps",
            l.p1_percentile, l.p1_average, l.p0_1_percentile, l.p0_1_average
        );
    }
    let s = &p.stutters;
    if s.count == 0 {
        let _ = writeln!(
            out,
            "  no stutters (no frame above {}× the trailing average and {} ms)",
            s.thresholds.factor, s.thresholds.floor_ms
        );
    } else {
        let causes: Vec<String> = s
            .by_cause
            .iter()
            .map(|(cause, n)| format!("{n} {}", cause.name()))
            .collect();
        let _ = writeln!(
            out,
            "  stutters: {} ({:.1} per minute, {:.1}% of the time): {}",
            s.count,
            s.per_minute,
            s.share_of_time * 100.0,
            causes.join(", ")
        );
        let mut events: Vec<_> = s.events.iter().collect();
        events.sort_by(|a, b| b.frame_time_ms.total_cmp(&a.frame_time_ms));
        let _ = writeln!(out, "  worst stutters:");
        for e in events.iter().take(worst) {
            let _ = writeln!(
                out,
                "    at {:.2} s: {} [{}, confidence {:.2}]",
                e.t_s,
                e.summary,
                e.cause.name(),
                e.confidence
            );
        }
        if events.len() > worst {
            let _ = writeln!(
                out,
                "    ... and {} more (all are in the JSON report)",
                events.len() - worst
            );
        }
    }
    for t in &p.presenting_threads {
        let _ = writeln!(
            out,
            "  presenting thread {} ({}): CPU waits {}; off-CPU periods {}",
            t.tid,
            if t.comm.is_empty() { "?" } else { &t.comm },
            distribution(&t.runq_wait),
            distribution(&t.off_cpu)
        );
    }
    let preemptors: Vec<String> = p
        .sched
        .preemptors
        .iter()
        .take(3)
        .map(|x| format!("{} (tid {}) ×{}", x.comm, x.tid, x.count))
        .collect();
    if !preemptors.is_empty() {
        let _ = writeln!(out, "  preempted most by: {}", preemptors.join(", "));
    }
}

fn distribution(h: &Log2Summary) -> String {
    if h.count == 0 {
        return "none".into();
    }
    format!(
        "{} (p50 ≤ {}, p99 ≤ {}, max ≤ {})",
        h.count,
        micros(h.p50_us_at_most),
        micros(h.p99_us_at_most),
        micros(h.max_us_at_most)
    )
}

fn micros(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}
