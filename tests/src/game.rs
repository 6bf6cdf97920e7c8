//! The synthetic game's own account of a run (its present windows and getrusage counts), and a
//! recording of it by the agent.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Result};

use crate::{game_bin, read_csv, read_json, wait_for_process, WatchedAgent};

/// One present of the synthetic game, as the game itself saw it: CLOCK_MONOTONIC read just
/// before and just after the present call. A probe on the call stamps the frame inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentWindow {
    pub before: u64,
    pub after: u64,
}

impl PresentWindow {
    pub fn contains(&self, t: u64) -> bool {
        self.before <= t && t <= self.after
    }
}

/// The synthetic game's ground truth (`--truth FILE`: a line `BEFORE AFTER` per present).
pub fn read_truth(path: &Path) -> Vec<PresentWindow> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("ground truth {}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let mut f = l.split(' ').map(|n| {
                n.parse::<u64>()
                    .unwrap_or_else(|e| panic!("ground truth line {l:?}: {e}"))
            });
            match (f.next(), f.next(), f.next()) {
                (Some(before), Some(after), None) if before <= after => {
                    PresentWindow { before, after }
                }
                _ => panic!("ground truth line {l:?} is not `BEFORE AFTER`"),
            }
        })
        .collect()
}

/// What the kernel counted for a thread or a process (getrusage): the ground truth for the
/// scheduler evidence nvbind reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rusage {
    /// Voluntary context switches (the task blocked or slept).
    pub voluntary: u64,
    /// Involuntary context switches (preempted).
    pub involuntary: u64,
    /// User + system CPU time, ns.
    pub cpu_ns: u64,
}

impl Rusage {
    /// `getrusage(who)` (`RUSAGE_SELF` or `RUSAGE_THREAD`).
    pub fn of(who: libc::c_int) -> Result<Rusage> {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointer.
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            bail!("getrusage: {}", std::io::Error::last_os_error());
        }
        let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
        Ok(Rusage {
            voluntary: usage.ru_nvcsw as u64,
            involuntary: usage.ru_nivcsw as u64,
            cpu_ns: ns(usage.ru_utime) + ns(usage.ru_stime),
        })
    }

    /// What was counted since `earlier` (of the same thread or process).
    pub fn since(&self, earlier: &Rusage) -> Rusage {
        Rusage {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
        }
    }

    /// `VOLUNTARY INVOLUNTARY CPU_NS`.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.voluntary, self.involuntary, self.cpu_ns)
    }

    fn parse(line: &str) -> Option<Rusage> {
        let mut f = line.split(' ').map(|n| n.parse::<u64>().ok());
        match (f.next()??, f.next()??, f.next()??, f.next()) {
            (voluntary, involuntary, cpu_ns, None) => Some(Rusage {
                voluntary,
                involuntary,
                cpu_ns,
            }),
            _ => None,
        }
    }
}

/// The synthetic game's getrusage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GameRusage {
    /// The frame thread's, at the end of the frame loop (its whole life so far: for a thread
    /// that exec'd, also what it did before).
    pub thread: Rusage,
    /// The frame thread's during the frame loop only (from just before its first frame to just
    /// after its last).
    pub frame_loop: Rusage,
    /// The whole process's, just before it exits.
    pub process: Rusage,
}

/// Where the synthetic game writes its getrusage counts (beside its `--truth` file).
pub fn rusage_path(truth: &Path) -> PathBuf {
    let mut name = truth.as_os_str().to_owned();
    name.push(".rusage");
    PathBuf::from(name)
}

/// Where the synthetic game counts its presents as it goes (beside its truth file): 8 bytes, a
/// native-endian u64 in a shared file mapping, updated after every present, so a test can wait
/// for presents that really happened.
pub fn progress_path(truth: &Path) -> PathBuf {
    let mut name = truth.as_os_str().to_owned();
    name.push(".progress");
    PathBuf::from(name)
}

/// The presents the synthetic game with truth file `truth` has made so far (0 before it starts).
pub fn presents_so_far(truth: &Path) -> u64 {
    std::fs::read(progress_path(truth))
        .ok()
        .and_then(|bytes| bytes.get(..8)?.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Reads what the synthetic game wrote to [`rusage_path`].
pub fn read_rusage(truth: &Path) -> GameRusage {
    let path = rusage_path(truth);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("game rusage {}: {e}", path.display()));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| Rusage::parse(l.strip_prefix(name)?.strip_prefix(' ')?))
            .unwrap_or_else(|| panic!("{} has no `{name}` line: {text:?}", path.display()))
    };
    GameRusage {
        thread: field("thread"),
        frame_loop: field("frame_loop"),
        process: field("process"),
    }
}

/// A recording of the synthetic game (see [`record_game`]).
pub struct GameRun {
    /// The report's path (`DIR/report.json`) and its content.
    pub out: PathBuf,
    pub report: serde_json::Value,
    /// The per-frame CSV's rows.
    pub rows: Vec<std::collections::HashMap<String, String>>,
    /// Each present's [before, after] window, in the same order.
    pub windows: Vec<PresentWindow>,
    /// What the kernel counted for the game's frame thread and process.
    pub rusage: GameRusage,
    /// What the agent printed on stderr.
    pub stderr: String,
}

/// `nvbind-agent record --out DIR/report.json --frames-csv DIR/frames.csv AGENT_ARGS --
/// synthetic-game --truth DIR/truth.txt GAME_ARGS`; `during` runs once the game is up (to start
/// a competitor, or change a fixture). Panics unless the recording succeeds.
/// Each frame's record covers its whole interval: the presenting thread's time on a CPU, waiting
/// for one, blocked, and what the kernel did not report (`unseen_ms`) add up to the time since
/// its previous present, to the nanosecond. Every state change closes one stretch and opens the
/// next, so this holds on any machine however loaded; it fails when time drops out of a thread's
/// record (a transition that forgets to close its stretch, a switch missed without being
/// counted as unseen) or is counted twice.
pub fn assert_frames_accounted(rows: &[std::collections::HashMap<String, String>]) {
    let num = |row: &std::collections::HashMap<String, String>, name: &str| -> f64 {
        row[name]
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {row:?}"))
    };
    for pair in rows.windows(2) {
        let (previous, row) = (&pair[0], &pair[1]);
        if previous["tid"] != row["tid"] {
            continue;
        }
        let frame = num(row, "frame_time_ms");
        if num(row, "unseen_ms") > 0.0 {
            eprintln!(
                "note: frame {}: the kernel did not report {} ms of its thread's switches",
                row["frame"], row["unseen_ms"]
            );
        }
        let covered = num(row, "on_cpu_ms")
            + num(row, "runq_wait_ms")
            + num(row, "blocked_ms")
            + num(row, "unseen_ms");
        // The CSV prints nanoseconds as milliseconds; sums of four such values agree to well
        // under a nanosecond.
        assert!(
            (covered - frame).abs() < 1e-5,
            "frame {}: its record covers {covered:.6} ms of its {frame:.6} ms: {row:?}",
            row["frame"]
        );
    }
}

pub fn record_game(
    dir: &Path,
    agent_args: &[&str],
    game_args: &[&str],
    during: impl FnOnce(),
) -> GameRun {
    let out = dir.join("report.json");
    let csv = dir.join("frames.csv");
    let truth = dir.join("truth.txt");
    let mut args: Vec<String> = vec![
        "record".into(),
        "--out".into(),
        out.display().to_string(),
        "--frames-csv".into(),
        csv.display().to_string(),
    ];
    args.extend(agent_args.iter().map(|s| s.to_string()));
    args.extend([
        "--".to_string(),
        game_bin().display().to_string(),
        "--truth".into(),
        truth.display().to_string(),
    ]);
    args.extend(game_args.iter().map(|s| s.to_string()));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // Stopped (with the game it launched) if the test fails midway; `record`'s own log level.
    let agent = WatchedAgent::spawn(&arg_refs, &[("RUST_LOG", "warn")]);
    wait_for_process("synthetic-game", Duration::from_secs(60));
    during();
    let (status, err) = agent.finish(Duration::from_secs(120));
    assert!(status.success(), "record failed: {err}");
    let windows = read_truth(&truth);
    let rows = read_csv(&csv);
    assert_frames_accounted(&rows);
    // Whatever the scenario: a thread is never the one that kept itself off the CPU.
    for row in &rows {
        let (tid, culprit) = (&row["tid"], &row["ran_instead_tid"]);
        assert!(
            culprit == "0" || culprit != tid,
            "a frame blames its own thread for its wait: {row:?}"
        );
    }
    GameRun {
        report: read_json(&out),
        rows,
        windows,
        rusage: read_rusage(&truth),
        stderr: err,
        out,
    }
}
