//! `nvbind-agent report FILE`: the report as a person reads it: how smooth, when it stuttered, why.

use std::fmt::Write;

use super::{stats::Log2Summary, ProcessReport, Report};

/// The human summary of a report, listing at most `worst` stutters per process.
pub fn render(report: &Report, worst: usize) -> String {
    let mut out = String::new();
    let c = &report.capture;
    let _ = writeln!(
        out,
        "nvbind report: {} for {:.1} s ({}), kernel {}, {} CPUs",
        c.target, c.duration_s, c.end_reason, report.host.kernel, report.host.cpus
    );
    let presenting: Vec<&ProcessReport> = report
        .processes
        .iter()
        .filter(|p| p.frames.count > 0)
        .collect();
    if presenting.is_empty() {
        let _ = writeln!(
            out,
            "\nno frames were captured ({} processes tracked); see the notes below",
            report.processes.len()
        );
    }
    for p in presenting {
        process(&mut out, p, worst);
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

fn process(out: &mut String, p: &ProcessReport, worst: usize) {
    let f = &p.frames;
    let _ = writeln!(
        out,
        "\n{} (pid {}): {} frames from {} over {:.1} s, {:.1} fps average",
        p.comm,
        p.pid,
        f.count,
        f.source,
        f.duration_s,
        f.fps_avg.unwrap_or(0.0)
    );
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
