//! `nvbind-agent report A.json B.json [...]`: runs side by side, CapFrameX's most used view.
//!
//! Each report's busiest presenting process is one run. Every row is a number per run, its
//! change against the first run, and a verdict that accounts for run-to-run noise where the
//! frames allow: a 95 % interval of the difference from a moving-block bootstrap of both runs'
//! frame times (blocks keep the short-range correlation of frame times, which an i.i.d.
//! resampling would hide). A difference whose interval holds zero is "no change"; a run compared
//! with itself always is. GPU rows have one summary per run and no test.

use std::fmt::Write as _;

use crate::stutter::Cause;

use super::ProcessReport;

/// Resamples per bootstrap, at most (fewer for very long runs: the work is resamples × frames).
const MAX_RESAMPLES: usize = 1000;
const MIN_RESAMPLES: usize = 200;
/// Frames × resamples the bootstrap of one row may touch.
const WORK_BUDGET: usize = 20_000_000;
/// Fewer frames than this in either run: no verdict (too little to tell noise from change).
const MIN_FRAMES_TESTED: usize = 30;
/// Two-sided level of the intervals.
const LEVEL: f64 = 0.95;

/// One run: a report's busiest presenting process.
pub struct Run<'a> {
    /// How the run is named in the table (its file).
    pub label: String,
    pub process: &'a ProcessReport,
    /// The summary of the GPU the process used, if the report sampled one.
    pub gpu: Option<&'a crate::gpu::GpuReport>,
}

/// Which way is better for a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// The verdict on one run against the first.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Better {
        low: f64,
        high: f64,
    },
    Worse {
        low: f64,
        high: f64,
    },
    NoChange {
        low: f64,
        high: f64,
    },
    /// No test: why.
    NotTested(&'static str),
}

impl Verdict {
    fn text(&self, unit: &str) -> String {
        let interval = |low: f64, high: f64| format!("{low:+.2} … {high:+.2}{unit}");
        match self {
            Verdict::Better { low, high } => format!("better ({})", interval(*low, *high)),
            Verdict::Worse { low, high } => format!("worse ({})", interval(*low, *high)),
            Verdict::NoChange { low, high } => format!("no change ({})", interval(*low, *high)),
            Verdict::NotTested(why) => format!("— ({why})"),
        }
    }
}

/// A number derived from a run's frames (times in ms, and which frames were stutters of which
/// cause), recomputed on each resample.
type Statistic<'a> = &'a dyn Fn(&[FrameSample]) -> Option<f64>;

/// A frame as the bootstrap resamples it: its time, and its stutter cause if it was one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameSample {
    pub ms: f64,
    pub stutter: Option<Cause>,
}

/// One line of the table.
pub struct Row {
    pub metric: String,
    pub unit: &'static str,
    pub values: Vec<Option<f64>>,
    /// Against the first run, for runs 2.. (empty for the first).
    pub verdicts: Vec<Verdict>,
}

/// The whole comparison.
pub struct Comparison {
    pub labels: Vec<String>,
    pub headers: Vec<String>,
    pub rows: Vec<Row>,
    /// How the verdicts were reached, in a sentence.
    pub method: String,
}

/// A run's frames for the bootstrap: `timeline.frame_times_ms[i]` is frame `i + 1`, whose
/// stutter (if any) the report lists under that frame index.
pub fn samples(p: &ProcessReport) -> Vec<FrameSample> {
    let Some(timeline) = &p.frames.timeline else {
        return Vec::new();
    };
    let mut out: Vec<FrameSample> = timeline
        .frame_times_ms
        .iter()
        .map(|&ms| FrameSample { ms, stutter: None })
        .collect();
    for e in &p.stutters.events {
        if let Some(s) = (e.frame as usize)
            .checked_sub(1)
            .and_then(|i| out.get_mut(i))
        {
            s.stutter = Some(e.cause);
        }
    }
    out
}

fn total_s(frames: &[FrameSample]) -> f64 {
    frames.iter().map(|f| f.ms).sum::<f64>() / 1e3
}

fn fps(frames: &[FrameSample]) -> Option<f64> {
    let t = total_s(frames);
    (t > 0.0).then(|| frames.len() as f64 / t)
}

/// The `q` quantile of the frame times (nearest rank).
fn quantile(frames: &[FrameSample], q: f64) -> Option<f64> {
    if frames.is_empty() {
        return None;
    }
    let mut times: Vec<f64> = frames.iter().map(|f| f.ms).collect();
    let rank = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1;
    let (_, v, _) = times.select_nth_unstable_by(rank, f64::total_cmp);
    Some(*v)
}

/// 1000 / the mean of the worst `share` of frame times (CapFrameX's "1 % low").
fn low(frames: &[FrameSample], share: f64) -> Option<f64> {
    if frames.is_empty() {
        return None;
    }
    let mut times: Vec<f64> = frames.iter().map(|f| f.ms).collect();
    let k = ((times.len() as f64 * share).ceil() as usize).clamp(1, times.len());
    times.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let mean = times[..k].iter().sum::<f64>() / k as f64;
    (mean > 0.0).then(|| 1000.0 / mean)
}

fn stutters_per_minute(frames: &[FrameSample], cause: Option<Cause>) -> Option<f64> {
    let t = total_s(frames);
    let n = frames
        .iter()
        .filter(|f| f.stutter.is_some() && (cause.is_none() || f.stutter == cause))
        .count();
    (t > 0.0).then(|| n as f64 / (t / 60.0))
}

fn stutter_share_percent(frames: &[FrameSample]) -> Option<f64> {
    let t = total_s(frames);
    let in_stutters: f64 = frames
        .iter()
        .filter(|f| f.stutter.is_some())
        .map(|f| f.ms)
        .sum::<f64>()
        / 1e3;
    (t > 0.0).then(|| 100.0 * in_stutters / t)
}

/// A small, fixed-seed generator: the same reports always give the same verdicts.
fn generator() -> fastrand::Rng {
    fastrand::Rng::with_seed(0x6e76_6269_6e64)
}

/// Frames per block: about √n, at least 1 (blocks of one would be the i.i.d. bootstrap).
fn block_length(n: usize) -> usize {
    ((n as f64).sqrt().round() as usize).clamp(1, n.max(1))
}

/// A moving-block resample of `frames` into `out` (same length).
fn resample(frames: &[FrameSample], rng: &mut fastrand::Rng, out: &mut Vec<FrameSample>) {
    out.clear();
    let n = frames.len();
    let block = block_length(n);
    while out.len() < n {
        let start = rng.usize(0..=n - block);
        let take = block.min(n - out.len());
        out.extend_from_slice(&frames[start..start + take]);
    }
}

/// The verdict on `b` against `a` for a statistic, from the bootstrap interval of `stat(b) −
/// stat(a)`.
fn verdict(a: &[FrameSample], b: &[FrameSample], stat: Statistic, better: Better) -> Verdict {
    if a.len() < MIN_FRAMES_TESTED || b.len() < MIN_FRAMES_TESTED {
        return Verdict::NotTested("too few frames");
    }
    let (Some(sa), Some(sb)) = (stat(a), stat(b)) else {
        return Verdict::NotTested("no value");
    };
    if a == b {
        // The same frames: no resampling can tell them apart, and none is needed.
        return Verdict::NoChange {
            low: 0.0,
            high: 0.0,
        };
    }
    let resamples = (WORK_BUDGET / (a.len() + b.len())).clamp(MIN_RESAMPLES, MAX_RESAMPLES);
    let mut rng = generator();
    let (mut ra, mut rb) = (Vec::with_capacity(a.len()), Vec::with_capacity(b.len()));
    let mut diffs: Vec<f64> = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        resample(a, &mut rng, &mut ra);
        resample(b, &mut rng, &mut rb);
        if let (Some(x), Some(y)) = (stat(&ra), stat(&rb)) {
            diffs.push(y - x);
        }
    }
    if diffs.len() < resamples / 2 {
        return Verdict::NotTested("the statistic is undefined in most resamples");
    }
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((q * (diffs.len() - 1) as f64).round() as usize).min(diffs.len() - 1)];
    let (low, high) = (at((1.0 - LEVEL) / 2.0), at(1.0 - (1.0 - LEVEL) / 2.0));
    let observed = sb - sa;
    if low <= 0.0 && high >= 0.0 {
        return Verdict::NoChange { low, high };
    }
    let up = observed > 0.0;
    match (up, better) {
        (true, Better::Higher) | (false, Better::Lower) => Verdict::Better { low, high },
        _ => Verdict::Worse { low, high },
    }
}

/// Builds the comparison of `runs` (the first is the baseline).
pub fn compare(runs: &[Run]) -> Comparison {
    let frames: Vec<Vec<FrameSample>> = runs.iter().map(|r| samples(r.process)).collect();
    let mut rows = Vec::new();
    let mut tested = |metric: &str, unit: &'static str, stat: Statistic, better: Better| {
        let values = frames.iter().map(|f| stat(f)).collect();
        let verdicts = frames
            .iter()
            .skip(1)
            .map(|b| verdict(&frames[0], b, stat, better))
            .collect();
        rows.push(Row {
            metric: metric.to_string(),
            unit,
            values,
            verdicts,
        });
    };
    tested("fps (average)", " fps", &fps, Better::Higher);
    tested(
        "frame time p50",
        " ms",
        &|f| quantile(f, 0.50),
        Better::Lower,
    );
    tested(
        "frame time p95",
        " ms",
        &|f| quantile(f, 0.95),
        Better::Lower,
    );
    tested(
        "frame time p99",
        " ms",
        &|f| quantile(f, 0.99),
        Better::Lower,
    );
    tested(
        "frame time p99.9",
        " ms",
        &|f| quantile(f, 0.999),
        Better::Lower,
    );
    tested(
        "1 % low (worst 1 % avg)",
        " fps",
        &|f| low(f, 0.01),
        Better::Higher,
    );
    tested(
        "0.1 % low (worst 0.1 % avg)",
        " fps",
        &|f| low(f, 0.001),
        Better::Higher,
    );
    tested(
        "stutters per minute",
        "/min",
        &|f| stutters_per_minute(f, None),
        Better::Lower,
    );
    tested(
        "time in stutters",
        " %",
        &stutter_share_percent,
        Better::Lower,
    );
    // A row per cause any run has.
    for cause in Cause::ALL {
        if frames.iter().flatten().any(|f| f.stutter == Some(cause)) {
            tested(
                &format!("  {} stutters per minute", cause.name()),
                "/min",
                &|f| stutters_per_minute(f, Some(cause)),
                Better::Lower,
            );
        }
    }
    rows.extend(gpu_rows(runs));
    let block = frames.first().map_or(1, |f| block_length(f.len()));
    Comparison {
        labels: runs.iter().map(|r| r.label.clone()).collect(),
        headers: runs
            .iter()
            .zip(&frames)
            .map(|(r, f)| {
                format!(
                    "{} (pid {}), {} frames, {:.1} s",
                    r.process.name,
                    r.process.pid,
                    f.len(),
                    total_s(f)
                )
            })
            .collect(),
        rows,
        method: format!(
            "verdicts: {:.0} % interval of the difference from a moving-block bootstrap of both \
             runs' frames (blocks of about √frames, {block} frames for the first run; up to \
             {MAX_RESAMPLES} resamples, fixed seed); \"no change\" when it holds zero",
            LEVEL * 100.0
        ),
    }
}

/// The GPU summary rows (one sample set per run: no test).
fn gpu_rows(runs: &[Run]) -> Vec<Row> {
    type Pick = fn(&crate::gpu::GpuSummary) -> Option<f64>;
    let picks: [(&str, &'static str, Pick); 5] = [
        ("GPU utilisation p50", " %", |s| {
            s.utilization_p50_ratio.map(|r| r * 100.0)
        }),
        ("GPU clock max", " MHz", |s| {
            s.graphics_clock_max_hertz.map(|h| h / 1e6)
        }),
        ("GPU temperature max", " °C", |s| s.temperature_max_celsius),
        ("GPU power mean", " W", |s| s.power_mean_watts),
        ("VRAM peak", " MiB", |s| {
            s.vram_peak_bytes.map(|b| b as f64 / (1 << 20) as f64)
        }),
    ];
    let summaries: Vec<Option<&crate::gpu::GpuSummary>> = runs
        .iter()
        .map(|r| r.gpu.and_then(|g| g.summary.as_ref()))
        .collect();
    picks
        .iter()
        .filter_map(|(metric, unit, pick)| {
            let values: Vec<Option<f64>> = summaries.iter().map(|s| s.and_then(pick)).collect();
            values.iter().any(Option::is_some).then(|| Row {
                metric: metric.to_string(),
                unit,
                values,
                verdicts: (1..runs.len())
                    .map(|_| Verdict::NotTested("one summary per run"))
                    .collect(),
            })
        })
        .collect()
}

/// The change of `b` against `a`, in percent.
fn change_percent(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => format!("{:+.1} %", 100.0 * (b - a) / a),
        (Some(a), Some(b)) if a == b => "+0.0 %".into(),
        _ => "—".into(),
    }
}

fn value(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) => format!("{v:.2}{unit}"),
        None => "—".into(),
    }
}

/// The table for people.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    let letter = |i: usize| char::from(b'A' + (i % 26) as u8);
    let _ = writeln!(out, "Comparing {} runs:", c.labels.len());
    for (i, (label, header)) in c.labels.iter().zip(&c.headers).enumerate() {
        let _ = writeln!(out, "  {}: {label}: {header}", letter(i));
    }
    let _ = writeln!(out, "({})\n", c.method);
    // Columns: metric, A, then per other run its value, change and verdict.
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["".to_string(), "A".to_string()];
    for i in 1..c.labels.len() {
        let l = letter(i);
        head.extend([format!("{l}"), format!("{l} vs A"), "verdict".to_string()]);
    }
    table.push(head);
    for row in &c.rows {
        let mut line = vec![row.metric.clone(), value(row.values[0], row.unit)];
        for (i, v) in row.verdicts.iter().enumerate() {
            line.push(value(row.values[i + 1], row.unit));
            line.push(change_percent(row.values[0], row.values[i + 1]));
            line.push(v.text(row.unit));
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|col| {
            table
                .iter()
                .map(|l| l.get(col).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for line in &table {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(col, s)| {
                let pad = widths[col].saturating_sub(s.chars().count());
                if col == 0 || col + 1 == line.len() {
                    format!("{s}{}", " ".repeat(pad))
                } else {
                    format!("{}{s}", " ".repeat(pad))
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(times: impl IntoIterator<Item = f64>) -> Vec<FrameSample> {
        times
            .into_iter()
            .map(|ms| FrameSample { ms, stutter: None })
            .collect()
    }

    /// A noisy 60 fps run: 16.7 ms ± 1.5 (deterministic).
    fn noisy(n: usize, seed: u64, scale: f64) -> Vec<FrameSample> {
        let mut rng = fastrand::Rng::with_seed(seed);
        frames((0..n).map(|_| scale * (16.7 + 3.0 * (rng.f64() - 0.5))))
    }

    #[test]
    fn a_run_against_itself_is_no_change_on_every_row() {
        let a = noisy(600, 1, 1.0);
        for stat in [&fps as Statistic, &stutter_share_percent] {
            assert_eq!(
                verdict(&a, &a, stat, Better::Higher),
                Verdict::NoChange {
                    low: 0.0,
                    high: 0.0
                }
            );
        }
    }

    #[test]
    fn two_runs_of_the_same_pace_are_no_change_and_a_slower_one_is_worse() {
        let a = noisy(600, 1, 1.0);
        let same = noisy(600, 2, 1.0);
        assert!(matches!(
            verdict(&a, &same, &fps, Better::Higher),
            Verdict::NoChange { .. }
        ));
        assert!(matches!(
            verdict(&a, &same, &|f| quantile(f, 0.5), Better::Lower),
            Verdict::NoChange { .. }
        ));
        // 10 % longer frames: fewer fps, a longer median.
        let slower = noisy(600, 3, 1.1);
        assert!(matches!(
            verdict(&a, &slower, &fps, Better::Higher),
            Verdict::Worse { high, .. } if high < 0.0
        ));
        assert!(matches!(
            verdict(&a, &slower, &|f| quantile(f, 0.5), Better::Lower),
            Verdict::Worse { low, .. } if low > 0.0
        ));
        assert!(matches!(
            verdict(&slower, &a, &fps, Better::Higher),
            Verdict::Better { .. }
        ));
    }

    #[test]
    fn too_few_frames_get_no_verdict() {
        let a = noisy(10, 1, 1.0);
        let b = noisy(600, 1, 1.0);
        assert_eq!(
            verdict(&a, &b, &fps, Better::Higher),
            Verdict::NotTested("too few frames")
        );
    }

    #[test]
    fn statistics_follow_their_definitions() {
        let f = frames((1..=100).map(f64::from));
        assert_eq!(quantile(&f, 0.5), Some(50.0));
        assert_eq!(quantile(&f, 0.99), Some(99.0));
        // The worst 1 % of 100 frames is the 100 ms one.
        assert_eq!(low(&f, 0.01), Some(10.0));
        let total_s = 5050.0 / 1e3;
        assert!((fps(&f).expect("fps") - 100.0 / total_s).abs() < 1e-9);
        let mut with_stutter = f.clone();
        with_stutter[99].stutter = Some(Cause::Blocked);
        let per_minute = stutters_per_minute(&with_stutter, Some(Cause::Blocked)).expect("rate");
        assert!((per_minute - 60.0 / total_s).abs() < 1e-9);
        assert_eq!(
            stutters_per_minute(&with_stutter, Some(Cause::Unknown)),
            Some(0.0)
        );
        let share = stutter_share_percent(&with_stutter).expect("share");
        assert!((share - 100.0 * 100.0 / 5050.0).abs() < 1e-9);
    }

    #[test]
    fn a_resample_keeps_the_length_and_whole_blocks() {
        let f = frames((0..100).map(f64::from));
        let mut rng = generator();
        let mut out = Vec::new();
        resample(&f, &mut rng, &mut out);
        assert_eq!(out.len(), 100);
        // Blocks of 10 consecutive frames.
        for chunk in out.chunks(10) {
            assert!(
                chunk.windows(2).all(|w| w[1].ms == w[0].ms + 1.0),
                "{chunk:?}"
            );
        }
    }
}
