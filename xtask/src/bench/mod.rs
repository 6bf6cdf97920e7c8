//! `cargo xtask bench`: the capture pipeline's cost and accuracy, measured in one run, side by
//! side with the tools it replaces.
//!
//! 1. Kernel cost per event: bpf_stats mean ns per run of each scheduler program during a
//!    context-switch storm (`perf bench sched pipe`, pinned to one CPU), when the switching tasks
//!    are untracked (the agent tracks an idle `sleep`), tracked (the agent launched the storm) and
//!    when the agent tracks every process; and the same for bpftrace running a runqlat script and
//!    bcc's `runqlat-bpfcc` ([`peers`]).
//!    The agent tracking an idle process is run twice: with its tid marks (the default) and with
//!    the tracked threads' hash table as the only check (`--untracked-check table`). Beside them,
//!    the floor ([`floor`]): a BTF tracepoint pair that does one task-storage lookup and nothing
//!    else, the least an "is this task ours" check can cost on this kernel.
//! 2. System cost: the storm's throughput in each of those cases as a ratio to a bare run, the
//!    cases interleaved in a rotated order over several rounds. bpf_stats (global: it times
//!    every program run) is off in these rounds; the costs of 1 come from rounds of their own.
//! 3. Agent footprint: CPU share and peak RSS while recording vkcube at several hundred fps with
//!    the GPU sampler on.
//! 4. GPU sampler: the cost of one sample per backend (over the sysfs fixture hosts; NVML where a
//!    driver exists), and the synthetic game's p99 frame time with the sampler off and at 10 Hz,
//!    interleaved.
//! 5. Device binding: time to bind and to replace, and the cost added to `open()` of a device
//!    node with 1 versus 100 bound cgroups ([`binding`]).
//! 6. The daemon: frame-to-WebSocket latency, and its CPU and memory with two tracked games and
//!    ten streams versus idle ([`daemon`]).
//! 7. Accuracy: frame count, mean, p50 and p99 against MangoHud logging the same run of vkcube
//!    and glxgears ([`accuracy`]).
//! 8. Scaling: cost per event and agent footprint from 10 to 10,000 tracked threads and from 60
//!    to 1,000 fps ([`scaling`]).
//!
//! Prints Markdown tables for BENCHMARKS.md. The machine is small and noisy: compare within one
//! run, never against remembered numbers.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{demo::x_display, util::step};

mod accuracy;
mod binding;
mod daemon;
mod floor;
mod peers;
mod scaling;
mod soak;

/// The parts of the benchmark (`cargo xtask bench --only PART`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Scheduler programs' cost in a context-switch storm, and the agent's footprint.
    Capture,
    /// The GPU sampler.
    Gpu,
    /// Device binding.
    Binding,
    /// The daemon: WebSocket freshness and footprint with two games and ten streams.
    Daemon,
    /// Frames against MangoHud's own log of the same run (vkcube, glxgears).
    Accuracy,
    /// Cost and footprint from 10 to 10,000 tracked threads and from 60 to 1,000 fps.
    Scaling,
    /// The daemon for `--soak-minutes` (30) under games coming and going, thread churn,
    /// streams, SIGHUPs and an unprivileged user's attacks: RSS and fds every 10 s. Only when
    /// asked for (`--only soak`).
    Soak,
}

const STORM_LOOPS: &str = "100000";
/// Capture rounds: each runs every case once, in a rotated order.
const ROUNDS: usize = 5;
/// The storm runs on this CPU (both its tasks: every message is two context switches there);
/// the agent and the peers' user space run on the other, so what the storm loses is the probes'
/// in-kernel cost, not competition for its CPU.
const STORM_CPU: &str = "1";
const TOOL_CPU: &str = "0";

fn storm_ops_per_sec(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.contains("ops/sec"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The storm: `perf bench sched pipe`, both its tasks on `STORM_CPU`.
const STORM: [&str; 9] = [
    "taskset",
    "-c",
    STORM_CPU,
    "perf",
    "bench",
    "sched",
    "pipe",
    "-l",
    STORM_LOOPS,
];

fn bare_storm() -> Result<f64> {
    let out = Command::new(STORM[0])
        .args(&STORM[1..])
        .output()
        .context("run perf bench (cargo xtask setup --bench installs linux-perf)")?;
    storm_ops_per_sec(&String::from_utf8_lossy(&out.stdout))
        .context("perf bench printed no ops/sec")
}

fn read_report(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// (run_count, mean ns) of a program in a report.
///
/// A scheduler program is the classic tracepoint's or the BTF tracepoint's (`…_btf`), whichever
/// the agent attached (only that one is loaded, so only it is in the report).
fn cost(report: &Value, program: &str) -> (u64, f64) {
    let btf = format!("{program}_btf");
    report["agent"]["bpf"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|b| b["program"] == program || b["program"] == btf.as_str())
        })
        .map(|b| {
            (
                b["run_count"].as_u64().unwrap_or(0),
                b["mean_ns_per_run"].as_f64().unwrap_or(0.0),
            )
        })
        .unwrap_or((0, 0.0))
}

/// The agent on the tools' CPU.
fn pinned_agent(agent: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", TOOL_CPU]).arg(agent);
    c
}

/// `--bpf-stats` for a round: on where it measures costs, off where it measures throughput.
fn stats_flag(timed: bool) -> &'static str {
    if timed {
        "on"
    } else {
        "off"
    }
}

/// The storm while the agent records `what` (`--pid` of an idle process, or `--all`).
fn storm_beside_agent(
    agent: &Path,
    timed: bool,
    what: &[&str],
    out: &Path,
) -> Result<(f64, Value)> {
    let mut rec = pinned_agent(agent)
        .args(["record", "--bpf-stats", stats_flag(timed)])
        .args(what)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start the agent")?;
    sleep(Duration::from_millis(2000)); // load and attach (--all also scans every process)
    let ops = bare_storm();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    let status = rec.wait()?;
    if !status.success() {
        bail!("the agent failed beside the storm ({status})");
    }
    Ok((ops?, read_report(out)?))
}

/// The storm while the agent tracks only an idle process, telling untracked tasks from tracked
/// ones with `check` (`--untracked-check`).
fn untracked_storm(agent: &Path, timed: bool, check: &str, out: &Path) -> Result<(f64, Value)> {
    let mut idle = Command::new("sleep")
        .arg("600")
        .spawn()
        .context("start sleep")?;
    let pid = idle.id().to_string();
    let what = ["--untracked-check", check, "--pid", &pid];
    let result = storm_beside_agent(agent, timed, &what, out);
    let _ = idle.kill();
    let _ = idle.wait();
    result
}

/// The storm while the agent tracks every process (the storm is a child of the tracked bench).
fn everything_storm(agent: &Path, timed: bool, out: &Path) -> Result<(f64, Value)> {
    storm_beside_agent(agent, timed, &["--all"], out)
}

/// The storm launched and tracked by the agent, with more `options`.
fn tracked_storm(agent: &Path, timed: bool, options: &[&str], out: &Path) -> Result<(f64, Value)> {
    let rec = pinned_agent(agent)
        .args(["record", "--bpf-stats", stats_flag(timed)])
        .args(options)
        .arg("--out")
        .arg(out)
        .arg("--")
        .args(STORM)
        .output()
        .context("run the agent")?;
    if !rec.status.success() {
        bail!(
            "tracked storm failed: {}",
            String::from_utf8_lossy(&rec.stderr)
        );
    }
    let ops = storm_ops_per_sec(&String::from_utf8_lossy(&rec.stdout)).context("no ops/sec")?;
    Ok((ops, read_report(out)?))
}

/// nvbind's scheduler programs' time over its sched_switch runs, from a report.
fn ns_per_switch(report: &Value) -> f64 {
    let (switch_runs, _) = cost(report, "nvbind_sched_switch");
    let total: f64 = [
        "nvbind_sched_switch",
        "nvbind_sched_wakeup",
        "nvbind_sched_wakeup_new",
    ]
    .iter()
    .map(|p| {
        let (runs, ns) = cost(report, p);
        runs as f64 * ns
    })
    .sum();
    total / (switch_runs.max(1) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn bench(
    root: &Path,
    agent: &Path,
    target: &Path,
    only: &[Part],
    soak_minutes: u64,
) -> Result<()> {
    let dir: PathBuf = target.join("nvbind-bench");
    fs::create_dir_all(&dir)?;
    // The soak takes half an hour: never part of the default run.
    let wanted = |part| only.contains(&part) || (only.is_empty() && part != Part::Soak);
    if wanted(Part::Capture) {
        capture(root, agent, &dir)?;
    }
    if wanted(Part::Gpu) {
        gpu_sampler(root, agent, &dir)?;
    }
    if wanted(Part::Binding) {
        step("binding: build the open-probe helper (release)");
        let probe = release_test_bin(root, "open-probe")?;
        binding::bench(root, agent, &probe, &dir)?;
    }
    if wanted(Part::Daemon) {
        step("daemon: build the synthetic game (release)");
        let game = release_test_bin(root, "synthetic-game")?;
        daemon::bench(
            agent,
            &game,
            &root.join("tests/fixtures/hosts/amd-dgpu"),
            &dir,
        )?;
    }
    if wanted(Part::Accuracy) {
        accuracy::bench(agent, &dir)?;
    }
    if wanted(Part::Scaling) {
        step("scaling: build the thread crowd and the synthetic game (release)");
        let crowd = release_test_bin(root, "thread-crowd")?;
        let game = release_test_bin(root, "synthetic-game")?;
        scaling::bench(agent, &crowd, &game, &dir)?;
    }
    if wanted(Part::Soak) {
        step("soak: build the synthetic game and map-copies (release)");
        let game = release_test_bin(root, "synthetic-game")?;
        let copies = release_test_bin(root, "map-copies")?;
        soak::bench(agent, &game, &copies, &dir, soak_minutes)?;
    }
    Ok(())
}

/// Builds one of the tests crate's helper programs in release mode; returns its path.
fn release_test_bin(root: &Path, bin: &str) -> Result<PathBuf> {
    crate::util::run(
        crate::util::cargo_cmd(root)
            .args(["build", "--release", "-p", "nvbind-tests", "--bin", bin])
            .env("NVBIND_REQUIRE_EBPF", "1"),
    )?;
    Ok(crate::util::target_dir(root).join("release").join(bin))
}

/// The cases of one capture round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Bare,
    /// The floor ([`floor`]): a BTF tracepoint pair doing one task-storage lookup, nothing else.
    Floor,
    /// The agent tracks an idle process: the cost of its probes for untracked tasks.
    Untracked,
    /// As `Untracked`, with the tracked threads' hash table as the only check (no tid marks).
    UntrackedTable,
    /// The agent tracks the storm (one process).
    Tracked,
    /// The agent tracks every process (`record --all`).
    Everything,
    /// The agent tracks the storm with the first `n` steps of [`BREAKDOWN`] left out
    /// (`--leave-out`): where a tracked switch's nanoseconds go. Cost rounds only.
    TrackedLeavingOut(usize),
    Peer(peers::Peer),
}

/// Steps of the tracked scheduler path, left out one more at a time in the breakdown
/// (`record --leave-out STEP`): each row's difference to the one above is that step's cost.
const BREAKDOWN: [(&str, &str); 4] = [
    (
        "holder-details",
        "who held a watched CPU: the holder's process and names",
    ),
    (
        "culprit-watch",
        "the CPU watch: armed at wakeups and preemptions, followed at switches",
    ),
    ("culprit-naming", "naming a culprit for each run-queue wait"),
    ("histograms", "the run-queue and blocked histograms"),
];

const CASES: [Case; 13] = [
    Case::Bare,
    Case::Floor,
    Case::Untracked,
    Case::UntrackedTable,
    Case::Tracked,
    Case::Everything,
    Case::TrackedLeavingOut(1),
    Case::TrackedLeavingOut(2),
    Case::TrackedLeavingOut(3),
    Case::TrackedLeavingOut(4),
    Case::Peer(peers::Peer::Bpftrace),
    Case::Peer(peers::Peer::Bcc),
    Case::Peer(peers::Peer::IoctlTracepoints),
];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Bare => "bare (nothing attached)",
            Case::Floor => "the floor: sched_switch + sched_wakeup on BTF tracepoints, one task-storage lookup each",
            Case::Untracked => "nvbind, storm untracked (tracking one idle process)",
            Case::UntrackedTable => {
                "nvbind, storm untracked, hash-table check only (`--untracked-check table`)"
            }
            Case::Tracked => "nvbind tracking the storm (one process)",
            Case::Everything => "nvbind tracking everything (`record --all`)",
            Case::TrackedLeavingOut(n) => BREAKDOWN[n.clamp(1, BREAKDOWN.len()) - 1].1,
            Case::Peer(p) => p.name(),
        }
    }

    /// Whether its programs' costs are measured (in the rounds with bpf_stats on).
    /// Whether the throughput rounds run it (the breakdown's cases are for costs only).
    fn has_throughput(self) -> bool {
        !matches!(self, Case::TrackedLeavingOut(_))
    }

    fn has_costs(self) -> bool {
        match self {
            Case::Bare => false,
            Case::Peer(p) => p.on_the_scheduler(),
            _ => true,
        }
    }
}

/// What the rounds measured for one case.
#[derive(Default)]
struct CaseRuns {
    ops: Vec<f64>,
    /// nvbind's per-program (runs, ns/run), per round, in `PROGRAMS` order.
    costs: Vec<Vec<(u64, f64)>>,
    /// All scheduler programs' time per sched_switch run, and the switch program's runs and
    /// ns/run, per round.
    per_switch: Vec<(f64, u64, f64)>,
    /// Why the case could not run here (a peer without what it needs).
    not_run: Option<String>,
}

const PROGRAMS: [&str; 4] = [
    "nvbind_sched_switch",
    "nvbind_sched_wakeup",
    "nvbind_ioctl_enter",
    "nvbind_ioctl_exit",
];

/// Runs one case: a throughput round (`timed` false: bpf_stats off, which would tax every
/// program run) records the storm's ops/s; a cost round (bpf_stats on) the programs' costs.
fn run_case(case: Case, timed: bool, agent: &Path, dir: &Path, runs: &mut CaseRuns) -> Result<()> {
    let report = match case {
        Case::Bare => {
            runs.ops.push(bare_storm()?);
            return Ok(());
        }
        Case::Floor | Case::Peer(_) => {
            let run = match case {
                Case::Peer(peer) => peers::run(peer, dir, TOOL_CPU, timed, bare_storm),
                _ => floor::run(timed, bare_storm),
            };
            match run {
                Ok(run) if timed => {
                    runs.per_switch
                        .push((run.ns_per_switch, run.switch_runs, run.switch_ns));
                }
                Ok(run) => runs.ops.push(run.ops_per_sec),
                Err(e) => {
                    eprintln!("    NOT RUN: {}: {e:#}", case.name());
                    runs.not_run = Some(format!("{e:#}"));
                }
            }
            return Ok(());
        }
        Case::Untracked => untracked_storm(agent, timed, "marks", &dir.join("untracked.json"))?,
        Case::UntrackedTable => {
            untracked_storm(agent, timed, "table", &dir.join("untracked-table.json"))?
        }
        Case::Tracked => tracked_storm(agent, timed, &[], &dir.join("tracked.json"))?,
        Case::TrackedLeavingOut(n) => {
            let leave_out: Vec<&str> = BREAKDOWN[..n]
                .iter()
                .flat_map(|(step, _)| ["--leave-out", step])
                .collect();
            tracked_storm(
                agent,
                timed,
                &leave_out,
                &dir.join(format!("tracked-{n}.json")),
            )?
        }
        Case::Everything => everything_storm(agent, timed, &dir.join("everything.json"))?,
    };
    if !timed {
        runs.ops.push(report.0);
        return Ok(());
    }
    let report = report.1;
    runs.costs
        .push(PROGRAMS.iter().map(|p| cost(&report, p)).collect());
    let (switch_runs, switch_ns) = cost(&report, "nvbind_sched_switch");
    runs.per_switch
        .push((ns_per_switch(&report), switch_runs, switch_ns));
    Ok(())
}

fn capture(root: &Path, agent: &Path, dir: &Path) -> Result<()> {
    let mut runs: Vec<CaseRuns> = CASES.iter().map(|_| CaseRuns::default()).collect();
    for round in 0..ROUNDS {
        for timed in [false, true] {
            step(&format!(
                "round {}/{ROUNDS}, {}: the storm bare, beside nvbind (untracked, tracked, everything), under bpftrace and bcc",
                round + 1,
                if timed { "costs (bpf_stats on)" } else { "throughput (bpf_stats off)" }
            ));
            // Rotated order: no case always runs first (after the previous round's last) or last.
            for k in 0..CASES.len() {
                let i = (k + round) % CASES.len();
                let wanted = if timed {
                    CASES[i].has_costs()
                } else {
                    CASES[i].has_throughput()
                };
                if runs[i].not_run.is_some() || !wanted {
                    continue;
                }
                run_case(CASES[i], timed, agent, dir, &mut runs[i])?;
            }
        }
    }
    print_capture(&runs);

    footprint(root, agent, dir)
}

fn print_capture(runs: &[CaseRuns]) {
    let at = |case: Case| CASES.iter().position(|c| *c == case).unwrap_or(0);
    let bare = median(runs[at(Case::Bare)].ops.clone());
    println!("\n### System cost: the storm's throughput (`{}`), medians of {ROUNDS} rounds, cases interleaved in rotated order, bpf_stats off\n", STORM.join(" "));
    println!("The tools' user space runs on CPU {TOOL_CPU}, the storm on CPU {STORM_CPU}.\n");
    println!("| case | storm ops/s | ratio to bare | loss |");
    println!("|---|---:|---:|---:|");
    for (case, r) in CASES.iter().zip(runs) {
        if !case.has_throughput() {
            continue;
        }
        if let Some(why) = &r.not_run {
            println!("| {} | not run: {} | | |", case.name(), first_line(why));
            continue;
        }
        let ops = median(r.ops.clone());
        println!(
            "| {} | {ops:.0} | {:.3} | {:.1} % |",
            case.name(),
            ops / bare,
            100.0 * (1.0 - ops / bare)
        );
    }
    println!("\nGoal (issue 7): ≤ 3 % loss tracking one process.");
    let ratio = |case: Case| median(runs[at(case)].ops.clone()) / bare;
    println!(
        "Goal (issue 18): untracked within 0.02 of the floor: {:.3} against {:.3}, {:.3} apart; tracking the storm ≥ 0.88: {:.3}.",
        ratio(Case::Untracked),
        ratio(Case::Floor),
        ratio(Case::Floor) - ratio(Case::Untracked),
        ratio(Case::Tracked)
    );
    let ioctl_tax = Case::Peer(peers::Peer::IoctlTracepoints);
    if runs[at(ioctl_tax)].not_run.is_none() {
        println!(
            "Where the untracked gap goes: the ioctl syscall tracepoints alone leave the storm at {:.3} of bare; the floor with that tax would be {:.3} (nvbind untracked: {:.3}). Where the kernel allows fentry/fexit, nvbind's ioctl programs are off those tracepoints.",
            ratio(ioctl_tax),
            ratio(Case::Floor) * ratio(ioctl_tax),
            ratio(Case::Untracked)
        );
    }

    println!("\n### nvbind's kernel cost per program (bpf_stats on: separate rounds), medians of {ROUNDS} rounds\n");
    println!("| program | untracked: runs / ns per run | untracked, table check only | tracked: runs / ns per run | everything: runs / ns per run |");
    println!("|---|---:|---:|---:|---:|");
    for (i, program) in PROGRAMS.iter().enumerate() {
        let cell = |case: Case| {
            let c = &runs[at(case)].costs;
            format!(
                "{:.0} / {:.1}",
                median(c.iter().map(|r| r[i].0 as f64).collect()),
                median(c.iter().map(|r| r[i].1).collect())
            )
        };
        println!(
            "| {program} | {} | {} | {} | {} |",
            cell(Case::Untracked),
            cell(Case::UntrackedTable),
            cell(Case::Tracked),
            cell(Case::Everything)
        );
    }

    let untracked_switch = median(
        runs[at(Case::Untracked)]
            .costs
            .iter()
            .map(|r| r[0].1)
            .collect(),
    );
    let floor_switch = median(
        runs[at(Case::Floor)]
            .per_switch
            .iter()
            .map(|p| p.2)
            .collect(),
    );
    println!(
        "\nGoal (issue 18): untracked sched_switch ≤ the floor's + 15 ns per run: {untracked_switch:.1} ns against {floor_switch:.1} + 15 ns ({:+.1} ns).",
        untracked_switch - floor_switch - 15.0
    );

    println!("\n### Kernel cost per context switch against bpftrace and bcc, medians of {ROUNDS} rounds\n");
    println!("Same storm; the peers' programs' cost read with `bpftool prog show` while bpf_stats is on. \"All programs per switch\" is every scheduler program's time (switch and wakeups) over the sched_switch runs.\n");
    println!("| tool | sched_switch runs | sched_switch ns/run | all programs, ns per switch | ratio to bpftrace |");
    println!("|---|---:|---:|---:|---:|");
    let bpftrace = &runs[at(Case::Peer(peers::Peer::Bpftrace))];
    let bpftrace_per_switch = if bpftrace.per_switch.is_empty() {
        f64::NAN
    } else {
        median(bpftrace.per_switch.iter().map(|p| p.0).collect())
    };
    for case in [
        Case::Floor,
        Case::Tracked,
        Case::Everything,
        Case::Peer(peers::Peer::Bpftrace),
        Case::Peer(peers::Peer::Bcc),
    ] {
        let r = &runs[at(case)];
        if let Some(why) = &r.not_run {
            println!("| {} | not run: {} | | | |", case.name(), first_line(why));
            continue;
        }
        let per_switch = median(r.per_switch.iter().map(|p| p.0).collect());
        println!(
            "| {} | {:.0} | {:.1} | {per_switch:.1} | {:.2} |",
            case.name(),
            median(r.per_switch.iter().map(|p| p.1 as f64).collect()),
            median(r.per_switch.iter().map(|p| p.2).collect()),
            per_switch / bpftrace_per_switch
        );
    }
    println!("\nGoal (issue 7): nvbind at most half of bpftrace's cost per event (ratio ≤ 0.50).");
    print_breakdown(runs, bpftrace_per_switch);
}

/// Where a tracked switch's nanoseconds go: the tracked storm's costs with one more step left
/// out per row, down to the untracked path and the floor.
fn print_breakdown(runs: &[CaseRuns], bpftrace_per_switch: f64) {
    let at = |case: Case| CASES.iter().position(|c| *c == case).unwrap_or(0);
    println!("\n### Where a tracked switch's nanoseconds go, medians of {ROUNDS} rounds (bpf_stats on)\n");
    println!("The storm tracked, with one more step of the tracked path left out per row (`record --leave-out STEP`, cumulative): what a step costs is what leaving it out saves, the row above less its own. The last of them is the bookkeeping alone (the tracked threads' records and counters), beside the untracked path (the same programs for tasks not tracked) and the floor.\n");
    println!("| what runs | sched_switch ns/run | sched_wakeup ns/run | all programs, ns per switch | the step left out here, ns per switch | ratio to bpftrace |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(String, Case)> =
        vec![("every step (tracking the storm)".into(), Case::Tracked)];
    for (n, (step, _)) in BREAKDOWN.iter().enumerate() {
        rows.push((
            format!("… without `{step}`"),
            Case::TrackedLeavingOut(n + 1),
        ));
    }
    let medians = |case: Case| {
        let r = &runs[at(case)];
        let switch_ns = median(r.costs.iter().map(|c| c[0].1).collect());
        let wakeup_ns = median(r.costs.iter().map(|c| c[1].1).collect());
        let per_switch = median(r.per_switch.iter().map(|p| p.0).collect());
        (switch_ns, wakeup_ns, per_switch)
    };
    for (i, (label, case)) in rows.iter().enumerate() {
        let (switch_ns, wakeup_ns, per_switch) = medians(*case);
        let step = match i.checked_sub(1).map(|above| rows[above].1) {
            Some(above) => format!("{:.1}", medians(above).2 - per_switch),
            None => String::new(),
        };
        println!(
            "| {label} | {switch_ns:.1} | {wakeup_ns:.1} | {per_switch:.1} | {step} | {:.2} |",
            per_switch / bpftrace_per_switch
        );
    }
    let (untracked_switch, untracked_wakeup, _) = medians(Case::Untracked);
    println!("| untracked (for comparison: the storm not tracked) | {untracked_switch:.1} | {untracked_wakeup:.1} | | | |");
    let floor = &runs[at(Case::Floor)];
    if floor.not_run.is_none() && !floor.per_switch.is_empty() {
        println!(
            "| the floor | {:.1} | | {:.1} | | {:.2} |",
            median(floor.per_switch.iter().map(|p| p.2).collect()),
            median(floor.per_switch.iter().map(|p| p.0).collect()),
            median(floor.per_switch.iter().map(|p| p.0).collect()) / bpftrace_per_switch
        );
    }
    for (step, what) in BREAKDOWN {
        println!("- `{step}`: {what}.");
    }
}

/// The first line of an error, fit for a table cell.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").replace('|', "/")
}

/// The agent's CPU and peak RSS while recording vkcube (several hundred fps on lavapipe) with the
/// GPU sampler on at 10 Hz, reading the amd-dgpu fixture (this machine has no GPU).
fn footprint(root: &Path, agent: &Path, dir: &Path) -> Result<()> {
    step(
        "agent footprint: recording vkcube for 10 s, GPU sampler at 10 Hz on the amd-dgpu fixture",
    );
    let (display, _xvfb) = x_display(dir)?;
    let vk_report = dir.join("vkcube.json");
    let host = root.join("tests/fixtures/hosts/amd-dgpu");
    let empty_dev = dir.join("empty-dev");
    fs::create_dir_all(&empty_dev)?;
    let status = Command::new(agent)
        .args([
            "record",
            "--bpf-stats",
            "on",
            "--duration",
            "10",
            "--gpu-sample-hz",
            "10",
            "--out",
        ])
        .arg(&vk_report)
        .arg("--sysfs-root")
        .arg(host.join("sys"))
        .arg("--proc-root")
        .arg(host.join("proc"))
        .arg("--dev-root")
        .arg(&empty_dev)
        .args(["--", "vkcube"])
        .env("DISPLAY", &display)
        .current_dir(root)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("recording vkcube failed ({status})");
    }
    let vk = read_report(&vk_report)?;
    let duration = vk["capture"]["duration_s"].as_f64().unwrap_or(0.0);
    let cpu = vk["agent"]["cpu_s"].as_f64().unwrap_or(0.0);
    let rss = vk["agent"]["peak_rss_bytes"].as_f64().unwrap_or(0.0);
    let p = &vk["processes"][0];
    let (present_runs, present_ns) = cost(&vk, "nvbind_present");
    let samples: u64 = vk["gpus"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["summary"]["samples"].as_u64())
        .sum();
    println!("\n### Agent footprint while recording vkcube (lavapipe, Xvfb) for 10 s, GPU sampler at 10 Hz\n");
    println!("| metric | value | goal |");
    println!("|---|---:|---:|");
    println!(
        "| vkcube frames / fps | {} / {:.0} | several hundred fps |",
        p["frames"]["count"],
        p["frames"]["fps_avg"].as_f64().unwrap_or(0.0)
    );
    println!("| GPU samples taken (amd-dgpu fixture) | {samples} | |");
    println!(
        "| agent CPU, share of one core | {:.2} % | ≤ 2 % |",
        100.0 * cpu / duration.max(1e-9)
    );
    println!("| agent peak RSS | {:.1} MiB | ≤ 30 MiB |", rss / 1048576.0);
    println!("| nvbind_present runs / ns per run | {present_runs} / {present_ns:.0} | |");
    println!(
        "| dropped events | {} | 0 |",
        vk["capture"]["dropped_events"]
    );
    Ok(())
}

/// The GPU fixture hosts a sampler can read here (no GPU on this machine).
const GPU_HOSTS: [&str; 4] = ["amd-dgpu", "amd-apu", "intel-i915", "intel-xe"];
const GPU_GAME_ARGS: [&str; 6] = ["--frames", "600", "--interval-ms", "8.33", "--work-ms", "1"];

/// Records the synthetic game with GPU sampling at `hz` from `host` (a fixture host, or the real
/// roots when `None`).
fn game_with_sampler(
    agent: &Path,
    game: &Path,
    out: &Path,
    hz: &str,
    host: Option<&Path>,
) -> Result<Value> {
    let mut cmd = Command::new(agent);
    cmd.args([
        "record",
        "--bpf-stats",
        "on",
        "--gpu-sample-hz",
        hz,
        "--out",
    ])
    .arg(out);
    if let Some(host) = host {
        let empty_dev = out.with_extension("dev");
        fs::create_dir_all(&empty_dev)?;
        cmd.arg("--sysfs-root")
            .arg(host.join("sys"))
            .arg("--proc-root")
            .arg(host.join("proc"))
            .arg("--dev-root")
            .arg(&empty_dev);
    }
    let rec = cmd
        .arg("--")
        .arg(game)
        .arg("--truth")
        .arg(out.with_extension("truth"))
        .args(GPU_GAME_ARGS)
        .output()
        .context("run the agent")?;
    if !rec.status.success() {
        bail!(
            "recording the synthetic game failed: {}",
            String::from_utf8_lossy(&rec.stderr)
        );
    }
    read_report(out)
}

fn p99(report: &Value) -> f64 {
    report["processes"][0]["frames"]["frame_time_ms"]["p99"]
        .as_f64()
        .unwrap_or(f64::NAN)
}

fn gpu_sampler(root: &Path, agent: &Path, dir: &Path) -> Result<()> {
    step("GPU sampler: build the synthetic game (release)");
    let game = release_test_bin(root, "synthetic-game")?;
    let fixtures = root.join("tests/fixtures/hosts");
    let out = dir.join("gpu.json");

    step("GPU sampler: cost of one sample per backend");
    let mut costs = Vec::new();
    for host in GPU_HOSTS {
        let report = game_with_sampler(agent, &game, &out, "10", Some(&fixtures.join(host)))?;
        for g in report["gpus"].as_array().into_iter().flatten() {
            costs.push((
                format!(
                    "{} ({host} fixture, {})",
                    g["driver"].as_str().unwrap_or("?"),
                    g["name"].as_str().unwrap_or("?")
                ),
                g["summary"]["samples"].as_u64().unwrap_or(0),
                g["summary"]["read_cost_us"].as_f64(),
            ));
        }
    }
    // The real host: NVML or sysfs, whatever it has.
    let live = game_with_sampler(agent, &game, &out, "10", None)?;
    let live_gpus = live["gpus"].as_array().cloned().unwrap_or_default();
    for g in &live_gpus {
        costs.push((
            format!(
                "{} (this host, {})",
                g["driver"].as_str().unwrap_or("?"),
                g["name"].as_str().unwrap_or("?")
            ),
            g["summary"]["samples"].as_u64().unwrap_or(0),
            g["summary"]["read_cost_us"].as_f64(),
        ));
    }

    step(&format!(
        "GPU sampler: synthetic game off vs 10 Hz, {ROUNDS} interleaved rounds"
    ));
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let dgpu = fixtures.join("amd-dgpu");
    for _ in 0..ROUNDS {
        off.push(p99(&game_with_sampler(agent, &game, &out, "0", None)?));
        on.push(p99(&game_with_sampler(
            agent,
            &game,
            &out,
            "10",
            Some(&dgpu),
        )?));
    }

    println!("\n### GPU sampler: cost of one sample per backend\n");
    println!("| backend | samples | mean µs per sample |");
    println!("|---|---:|---:|");
    for (name, samples, us) in &costs {
        match us {
            Some(us) => println!("| {name} | {samples} | {us:.1} |"),
            None => println!("| {name} | {samples} | not sampled |"),
        }
    }
    if live_gpus.is_empty() {
        println!("| NVML (this host) | 0 | no GPU on this host: not measured |");
    }
    let (off_p99, on_p99) = (median(off), median(on));
    println!("\n### Synthetic game (120 fps target) p99 frame time, sampler off vs on at 10 Hz (amd-dgpu fixture), medians of {ROUNDS} interleaved rounds\n");
    println!("| sampler | p99 frame time ms | ratio to off |");
    println!("|---|---:|---:|");
    println!("| off | {off_p99:.3} | 1.000 |");
    println!("| 10 Hz | {on_p99:.3} | {:.3} |", on_p99 / off_p99);
    Ok(())
}
