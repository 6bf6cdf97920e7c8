//! Accuracy against an in-process logger: MangoHud logs every frame of vkcube (and of glxgears)
//! from inside the process while nvbind records the same process from the kernel, at the same
//! time. The two frame-time series are aligned on their frame intervals, then nvbind's frames are
//! counted over the time span MangoHud logged, and mean, p50 and p99 compared.
//!
//! MangoHud logs whole microseconds from its present hook; nvbind stamps the probed present
//! function's entry. Both see the same presents, so the same intervals within microseconds.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::util::step;

/// MangoHud starts logging this long after the app starts (its `autostart_log`), for this long.
const LOG_AFTER_S: u32 = 2;
const LOG_FOR_S: u32 = 5;
/// The recording outlasts MangoHud's log and the writing of it.
const RECORD_S: &str = "9";

/// One app's comparison.
pub struct Comparison {
    pub app: &'static str,
    /// Frames MangoHud logged, and nvbind's frames over the same span.
    pub mangohud_frames: usize,
    pub nvbind_frames: usize,
    pub mangohud: Stats,
    pub nvbind: Stats,
    /// Median |MangoHud − nvbind| over the aligned frame intervals, µs.
    pub alignment_error_us: f64,
    /// The largest such difference, µs.
    pub largest_difference_us: f64,
    /// Frames paired frame by frame (all but the first and the last logged) whose times differ
    /// by more than half MangoHud's: a frame missed or counted twice anywhere (even where the
    /// alignment itself looked) shows here.
    pub mismatched_frames: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Stats {
    fn of(frame_times_ms: &[f64]) -> Stats {
        let mut sorted = frame_times_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        Stats {
            mean_ms: sorted.iter().sum::<f64>() / sorted.len().max(1) as f64,
            p50_ms: nearest_rank(&sorted, 0.50),
            p99_ms: nearest_rank(&sorted, 0.99),
        }
    }
}

/// The nearest-rank percentile of sorted values (what both tools' numbers are compared with).
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// MangoHud's log: (frame time µs, elapsed ns) per frame, after its two header lines and the
/// column line.
fn parse_mangohud_log(text: &str) -> Result<Vec<(f64, f64)>> {
    let mut lines = text.lines();
    let columns = lines.nth(2).context("MangoHud's log has no column line")?;
    let cols: Vec<&str> = columns.split(',').collect();
    let at = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .with_context(|| format!("MangoHud's log has no `{name}` column: {columns}"))
    };
    let (ft, el) = (at("frametime")?, at("elapsed")?);
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let num = |i: usize| -> Result<f64> {
                f.get(i)
                    .and_then(|v| v.trim().parse().ok())
                    .with_context(|| format!("bad MangoHud log line: {l}"))
            };
            Ok((num(ft)?, num(el)?))
        })
        .collect()
}

/// nvbind's frames CSV: present times (ns) of the process with the most frames.
fn parse_nvbind_frames(text: &str) -> Result<Vec<u64>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty frames CSV")?
        .split(',')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .with_context(|| format!("frames CSV has no `{name}` column"))
    };
    let (pid_col, ts_col) = (col("pid")?, col("present_ns")?);
    let mut by_pid: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(pid), Some(ts)) = (f.get(pid_col), f.get(ts_col)) else {
            continue;
        };
        let ts = ts
            .parse()
            .with_context(|| format!("bad present_ns: {line}"))?;
        by_pid.entry(pid.to_string()).or_default().push(ts);
    }
    by_pid
        .into_values()
        .max_by_key(Vec::len)
        .context("nvbind recorded no frames")
}

/// Frames compared when aligning the two series (fewer when the log is short).
const ALIGN_WINDOW: usize = 1000;

/// The offset into `intervals_us` where `pattern_us` fits best (least summed |difference|),
/// searched over `range`.
fn best_fit(
    pattern_us: &[f64],
    intervals_us: &[f64],
    range: std::ops::Range<usize>,
) -> Option<usize> {
    let score = |k: usize| -> f64 {
        pattern_us
            .iter()
            .zip(&intervals_us[k..k + pattern_us.len()])
            .map(|(a, b)| (a - b).abs())
            .sum()
    };
    let last = intervals_us.len().checked_sub(pattern_us.len())?;
    range
        .filter(|&k| k <= last)
        .min_by(|&a, &b| score(a).total_cmp(&score(b)))
}

/// Where MangoHud's log lies among nvbind's frame intervals: its first frame's and its last
/// frame's offsets into `intervals_us`, each found independently from the shape of the frame
/// times around it. A frame nvbind missed or counted twice between them shifts the end by one.
fn align(mangohud_us: &[f64], intervals_us: &[f64]) -> Option<(usize, usize)> {
    let window = ALIGN_WINDOW.min(mangohud_us.len() / 2).max(1);
    let start = best_fit(&mangohud_us[..window], intervals_us, 0..intervals_us.len())?;
    let tail = &mangohud_us[mangohud_us.len() - window..];
    let expected = start + mangohud_us.len() - window;
    let slack = 50;
    // Never before the start: a short log's tail could otherwise fit ahead of its head.
    let end = best_fit(
        tail,
        intervals_us,
        expected.saturating_sub(slack).max(start)..expected + slack + 1,
    )? + window
        - 1;
    Some((start, end))
}

/// Pairs whose frame times differ by more than half of MangoHud's.
fn mismatches(mangohud_us: &[f64], ours_us: &[f64]) -> usize {
    mangohud_us
        .iter()
        .zip(ours_us)
        .filter(|(theirs, ours)| (*theirs - *ours).abs() > 0.5 * *theirs)
        .count()
}

/// The median and largest |a − b| over pairs.
fn abs_differences(a: &[f64], b: &[f64]) -> (f64, f64) {
    let mut diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    diffs.sort_by(f64::total_cmp);
    (nearest_rank(&diffs, 0.5), nearest_rank(&diffs, 1.0))
}

/// Compares MangoHud's log with nvbind's present times of the same run. Statistics leave out the
/// first logged frame on both sides: MangoHud's first OpenGL frame time counts from its own
/// initialisation, not from a present.
fn compare(app: &'static str, log: &[(f64, f64)], presents: &[u64]) -> Result<Comparison> {
    if log.len() < 10 {
        bail!("{app}: MangoHud logged only {} frames", log.len());
    }
    let intervals_us: Vec<f64> = presents
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e3)
        .collect();
    let mangohud_us: Vec<f64> = log.iter().map(|(ft, _)| *ft).collect();
    let (start, end) = align(&mangohud_us, &intervals_us)
        .with_context(|| format!("{app}: nvbind has fewer frames than MangoHud logged"))?;
    let ours_us = &intervals_us[start..=end];
    let n = mangohud_us.len().min(ours_us.len());
    let (alignment_error_us, largest_difference_us) =
        abs_differences(&mangohud_us[..n], &ours_us[..n]);
    // The first logged frame is left out (below), and so is the last: MangoHud measures at its
    // hook's entry, and in the frame where its log ends it writes the file before calling the
    // real present function, which nvbind's probe is on (glxgears: 0.9 ms logged, 7.3 ms
    // between the presents the driver got). A count that differs is a mismatch of its own.
    let inner = 1..n.saturating_sub(1).max(1);
    let mismatched_frames = mismatches(&mangohud_us[inner.clone()], &ours_us[inner])
        + mangohud_us.len().abs_diff(ours_us.len());
    let theirs: Vec<f64> = mangohud_us[1..].iter().map(|us| us / 1e3).collect();
    let ours: Vec<f64> = ours_us[1..].iter().map(|us| us / 1e3).collect();
    Ok(Comparison {
        app,
        mangohud_frames: mangohud_us.len(),
        nvbind_frames: ours_us.len(),
        mangohud: Stats::of(&theirs),
        nvbind: Stats::of(&ours),
        alignment_error_us,
        largest_difference_us,
        mismatched_frames,
    })
}

/// Runs `app` under MangoHud (`mangohud APP`, as a user would) inside `nvbind-agent record`.
fn run_one(agent: &Path, app: &'static str, display: &OsStr, dir: &Path) -> Result<Comparison> {
    step(&format!(
        "accuracy: {app} under MangoHud and nvbind at once"
    ));
    let logs = dir.join(format!("mangohud-{app}"));
    if logs.exists() {
        fs::remove_dir_all(&logs)?;
    }
    fs::create_dir_all(&logs)?;
    let frames = dir.join(format!("{app}-frames.csv"));
    let report = dir.join(format!("{app}-accuracy.json"));
    let out = Command::new(agent)
        .args(["record", "--duration", RECORD_S, "--out"])
        .arg(&report)
        .arg("--frames-csv")
        .arg(&frames)
        .args(["--", "mangohud", app])
        .env("DISPLAY", display)
        .env(
            "MANGOHUD_CONFIG",
            format!(
                "output_folder={},autostart_log={LOG_AFTER_S},log_duration={LOG_FOR_S},log_interval=0",
                logs.display()
            ),
        )
        .stdout(Stdio::null())
        .output()
        .context("run the agent")?;
    if !out.status.success() {
        bail!(
            "recording {app} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let log: PathBuf = fs::read_dir(&logs)?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".csv") && !name.ends_with("_summary.csv")
        })
        .with_context(|| {
            format!(
                "MangoHud wrote no log into {} (is mangohud installed? cargo xtask setup --bench)",
                logs.display()
            )
        })?;
    let log = parse_mangohud_log(&fs::read_to_string(&log)?)?;
    let presents = parse_nvbind_frames(&fs::read_to_string(&frames)?)?;
    compare(app, &log, &presents)
}

pub fn bench(agent: &Path, dir: &Path) -> Result<()> {
    let (display, _xvfb) = crate::demo::x_display(dir)?;
    let results = ["vkcube", "glxgears"]
        .into_iter()
        .map(|app| run_one(agent, app, &display, dir))
        .collect::<Result<Vec<_>>>()?;
    println!("\n### Accuracy against MangoHud, both logging the same run ({LOG_FOR_S} s of MangoHud's log)\n");
    println!("Frame times of the frames both logged, the first logged frame left out (MangoHud's first OpenGL frame time counts from its own start). Δ: MangoHud's frame time minus nvbind's, frame by frame.\n");
    println!("| app | frames MangoHud / nvbind | mean ms MangoHud / nvbind (ratio) | p50 ms (ratio) | p99 ms (ratio) | median / largest \\|Δ\\| | frames off by > ½ frame |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for c in &results {
        let cell = |a: f64, b: f64| format!("{a:.3} / {b:.3} ({:.4})", b / a);
        println!(
            "| {} | {} / {} | {} | {} | {} | {:.1} / {:.0} µs | {} |",
            c.app,
            c.mangohud_frames,
            c.nvbind_frames,
            cell(c.mangohud.mean_ms, c.nvbind.mean_ms),
            cell(c.mangohud.p50_ms, c.nvbind.p50_ms),
            cell(c.mangohud.p99_ms, c.nvbind.p99_ms),
            c.alignment_error_us,
            c.largest_difference_us,
            c.mismatched_frames
        );
    }
    println!("\nGoal (issue 7): counts equal, p50 within 1 %, p99 within 3 %; frame by frame (first and last logged frame aside), no frame off by more than half a frame.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_where_mangohuds_log_begins() {
        // nvbind saw 2 presents before MangoHud's log began and 1 after it ended; MangoHud logged
        // the presents at 21..=66 ms (intervals 11, 12, 10, 15, 8 ms).
        let presents: Vec<u64> = [0u64, 10, 21, 33, 43, 58, 66, 80]
            .iter()
            .map(|ms| ms * 1_000_000)
            .collect();
        let intervals: Vec<f64> = presents
            .windows(2)
            .map(|w| (w[1] - w[0]) as f64 / 1e3)
            .collect();
        let logged = [11_000.0, 12_000.0, 10_000.0, 15_000.0, 8_000.0];
        let (start, end) = align(&logged, &intervals).expect("aligned");
        assert_eq!(start, 1, "interval 1 ends at the first logged present");
        assert_eq!(end, 5);
    }

    #[test]
    fn a_missed_or_doubled_frame_shows_in_the_count() {
        // Irregular frame times (as a real game's), 2 frames before MangoHud's log and 3 after.
        let (mut t, mut seed) = (0u64, 12345u64);
        let presents: Vec<u64> = (0..40)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                t += 8_000_000 + (seed >> 40) % 4_000_000;
                t
            })
            .collect();
        let log: Vec<(f64, f64)> = (3..37)
            .map(|i| {
                (
                    (presents[i] - presents[i - 1]) as f64 / 1e3,
                    presents[i] as f64,
                )
            })
            .collect();
        let exact = compare("test", &log, &presents).expect("compared");
        assert_eq!((exact.mangohud_frames, exact.nvbind_frames), (34, 34));
        assert_eq!(exact.alignment_error_us, 0.0);
        assert!((exact.nvbind.p50_ms - exact.mangohud.p50_ms).abs() < 1e-9);

        assert_eq!(exact.mismatched_frames, 0);

        let mut missed = presents.clone();
        missed.remove(20);
        let c = compare("test", &log, &missed).expect("compared");
        assert_eq!(c.nvbind_frames, 33, "one frame missed");
        assert!(c.mismatched_frames > 0);

        let mut doubled = presents.clone();
        doubled.insert(20, presents[19] + 1_000_000);
        let c = compare("test", &log, &doubled).expect("compared");
        assert_eq!(c.nvbind_frames, 35, "one frame counted twice");
        assert!(c.mismatched_frames > 0);

        // Missed where the alignment looks (the first and the last frames of the log): the count may be
        // absorbed by where the head fits, the frame-by-frame pairing is not.
        for at in [4, 6, 8, 30, 35] {
            let mut missed = presents.clone();
            missed.remove(at);
            let c = compare("test", &log, &missed).expect("compared");
            assert!(c.mismatched_frames > 0, "frame {at} missed went unseen");
        }
    }

    #[test]
    fn a_short_log_is_compared_without_panicking() {
        let presents: Vec<u64> = (0..200)
            .map(|i| i * 10_000_000 + (i * i) % 7 * 100_000)
            .collect();
        let log: Vec<(f64, f64)> = (100..112)
            .map(|i| ((presents[i] - presents[i - 1]) as f64 / 1e3, 0.0))
            .collect();
        let c = compare("test", &log, &presents).expect("compared");
        assert_eq!(c.mismatched_frames, 0);
        assert_eq!(c.nvbind_frames, 12);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.5), 50.0);
        assert_eq!(nearest_rank(&v, 0.99), 99.0);
        assert_eq!(nearest_rank(&v[..1], 0.99), 1.0);
    }

    #[test]
    fn parses_mangohuds_log_by_column_name() {
        let text = "os,cpu\nDebian,x\nfps,frametime,cpu_load,elapsed\n100,10000,5,0\n50,20000,5,20000000\n";
        let rows = parse_mangohud_log(text).expect("parsed");
        assert_eq!(rows, vec![(10000.0, 0.0), (20000.0, 20e6)]);
        assert!(parse_mangohud_log("a\nb\nfps,frametime\n1,2\n").is_err());
    }
}
