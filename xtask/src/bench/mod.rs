//! `cargo xtask bench`: the capture pipeline's cost, measured in one run, side by side.
//!
//! 1. Kernel cost per event: bpf_stats mean ns per run of each scheduler program during a
//!    context-switch storm (`perf bench sched pipe`), when the switching tasks are untracked
//!    (the agent tracks an idle `sleep`) and when they are tracked (the agent launched the storm).
//! 2. System cost: the storm's throughput in each case as a ratio to a bare run, interleaved.
//! 3. Agent footprint: CPU share and peak RSS while recording vkcube at several hundred fps.
//! 4. GPU sampler: the cost of one sample per backend (over the sysfs fixture hosts; NVML where a
//!    driver exists), and the synthetic game's p99 frame time with the sampler off and at 10 Hz,
//!    interleaved.
//! 5. Device binding: time to bind and to replace, and the cost added to `open()` of a device
//!    node with 1 versus 100 bound cgroups ([`binding`]).
//! 6. The daemon: frame-to-WebSocket latency, and its CPU and memory with two tracked games and
//!    ten streams versus idle ([`daemon`]).
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

mod binding;
mod daemon;
mod peers;

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
}

const STORM_LOOPS: &str = "40000";
const ROUNDS: usize = 3;

fn storm_ops_per_sec(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.contains("ops/sec"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn bare_storm() -> Result<f64> {
    let out = Command::new("perf")
        .args(["bench", "sched", "pipe", "-l", STORM_LOOPS])
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
fn cost(report: &Value, program: &str) -> (u64, f64) {
    report["agent"]["bpf"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["program"] == program))
        .map(|b| {
            (
                b["run_count"].as_u64().unwrap_or(0),
                b["mean_ns_per_run"].as_f64().unwrap_or(0.0),
            )
        })
        .unwrap_or((0, 0.0))
}

/// The storm while the agent tracks only an idle process.
fn untracked_storm(agent: &Path, out: &Path) -> Result<(f64, Value)> {
    let mut idle = Command::new("sleep")
        .arg("600")
        .spawn()
        .context("start sleep")?;
    let mut rec = Command::new(agent)
        .args(["record", "--pid", &idle.id().to_string(), "--out"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start the agent")?;
    sleep(Duration::from_millis(1500)); // load and attach
    let ops = bare_storm();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(rec.id() as i32, libc::SIGINT) };
    let status = rec.wait()?;
    let _ = idle.kill();
    let _ = idle.wait();
    if !status.success() {
        bail!("the agent failed during the untracked storm ({status})");
    }
    Ok((ops?, read_report(out)?))
}

/// The storm launched and tracked by the agent.
fn tracked_storm(agent: &Path, out: &Path) -> Result<(f64, Value)> {
    let rec = Command::new(agent)
        .args(["record", "--out"])
        .arg(out)
        .args(["--", "perf", "bench", "sched", "pipe", "-l", STORM_LOOPS])
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

pub fn bench(root: &Path, agent: &Path, target: &Path, only: &[Part]) -> Result<()> {
    let dir: PathBuf = target.join("nvbind-bench");
    fs::create_dir_all(&dir)?;
    let wanted = |part| only.is_empty() || only.contains(&part);
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
        daemon::bench(agent, &game, &dir)?;
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

fn capture(root: &Path, agent: &Path, dir: &Path) -> Result<()> {
    let programs = [
        "nvbind_sched_switch",
        "nvbind_sched_wakeup",
        "nvbind_ioctl_enter",
        "nvbind_ioctl_exit",
    ];

    let mut bare = Vec::new();
    let mut untracked = Vec::new();
    let mut tracked = Vec::new();
    let mut untracked_costs: Vec<Vec<(u64, f64)>> = vec![Vec::new(); programs.len()];
    let mut tracked_costs: Vec<Vec<(u64, f64)>> = vec![Vec::new(); programs.len()];
    let mut tracked_per_switch = Vec::new();
    let mut peer_runs: Vec<Vec<peers::PeerRun>> = vec![Vec::new(); peers::Peer::ALL.len()];
    // A peer that cannot run here (bcc without kernel headers) is reported, not fatal.
    let mut peer_failures: Vec<Option<String>> = vec![None; peers::Peer::ALL.len()];
    for round in 1..=ROUNDS {
        step(&format!(
            "round {round}/{ROUNDS}: bare, untracked, tracked storms, then under bpftrace and bcc"
        ));
        bare.push(bare_storm()?);
        let (ops, report) = untracked_storm(agent, &dir.join("untracked.json"))?;
        untracked.push(ops);
        for (i, p) in programs.iter().enumerate() {
            untracked_costs[i].push(cost(&report, p));
        }
        let (ops, report) = tracked_storm(agent, &dir.join("tracked.json"))?;
        tracked.push(ops);
        for (i, p) in programs.iter().enumerate() {
            tracked_costs[i].push(cost(&report, p));
        }
        tracked_per_switch.push(ns_per_switch(&report));
        for (i, peer) in peers::Peer::ALL.into_iter().enumerate() {
            if peer_failures[i].is_some() {
                continue;
            }
            match peers::run(peer, dir, bare_storm) {
                Ok(run) => peer_runs[i].push(run),
                Err(e) => {
                    eprintln!("    NOT RUN: {}: {e:#}", peer.name());
                    peer_failures[i] = Some(format!("{e:#}"));
                }
            }
        }
    }

    step("agent footprint: recording vkcube for 10 s");
    let (display, _xvfb) = x_display(dir)?;
    let vk_report = dir.join("vkcube.json");
    let status = Command::new(agent)
        .args(["record", "--duration", "10", "--out"])
        .arg(&vk_report)
        .args(["--", "vkcube"])
        .env("DISPLAY", &display)
        .current_dir(root)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("recording vkcube failed ({status})");
    }
    let vk = read_report(&vk_report)?;

    let b = median(bare.clone());
    println!("\n### Context-switch storm (`perf bench sched pipe -l {STORM_LOOPS}`), medians of {ROUNDS} interleaved rounds\n");
    println!("| case | storm ops/s | ratio to bare |");
    println!("|---|---:|---:|");
    println!("| bare (no agent) | {b:.0} | 1.000 |");
    let u = median(untracked);
    let t = median(tracked);
    println!("| agent running, storm untracked | {u:.0} | {:.3} |", u / b);
    println!("| agent tracking the storm | {t:.0} | {:.3} |", t / b);
    println!("\n### Kernel cost per event (bpf_stats), median of {ROUNDS} rounds\n");
    println!("| program | untracked: runs | untracked: ns/run | tracked: runs | tracked: ns/run |");
    println!("|---|---:|---:|---:|---:|");
    for (i, p) in programs.iter().enumerate() {
        let runs = |c: &[(u64, f64)]| median(c.iter().map(|x| x.0 as f64).collect());
        let ns = |c: &[(u64, f64)]| median(c.iter().map(|x| x.1).collect());
        println!(
            "| {p} | {:.0} | {:.1} | {:.0} | {:.1} |",
            runs(&untracked_costs[i]),
            ns(&untracked_costs[i]),
            runs(&tracked_costs[i]),
            ns(&tracked_costs[i])
        );
    }
    println!("\n### Kernel cost per context switch: nvbind against bpftrace and bcc, medians of {ROUNDS} interleaved rounds\n");
    println!("Same storm; the peers' programs' cost read with `bpftool prog show` while bpf_stats is on. \"All programs per switch\" is every scheduler program's time (switch and wakeups) over the sched_switch runs.\n");
    println!("| tool | sched_switch runs | sched_switch ns/run | all programs, ns per switch | ratio to bpftrace | storm ops/s ratio to bare |");
    println!("|---|---:|---:|---:|---:|---:|");
    let switch = programs
        .iter()
        .position(|p| *p == "nvbind_sched_switch")
        .unwrap_or(0);
    let bpftrace_per_switch = if peer_runs[0].is_empty() {
        f64::NAN
    } else {
        median(peer_runs[0].iter().map(|r| r.ns_per_switch).collect())
    };
    let nvbind_per_switch = median(tracked_per_switch);
    println!(
        "| nvbind (tracking the storm) | {:.0} | {:.1} | {:.1} | {:.2} | {:.3} |",
        median(tracked_costs[switch].iter().map(|x| x.0 as f64).collect()),
        median(tracked_costs[switch].iter().map(|x| x.1).collect()),
        nvbind_per_switch,
        nvbind_per_switch / bpftrace_per_switch,
        t / b
    );
    for (i, peer) in peers::Peer::ALL.into_iter().enumerate() {
        let runs = &peer_runs[i];
        if let Some(why) = &peer_failures[i] {
            println!(
                "| {} | not run: {} | | | | |",
                peer.name(),
                why.lines().next().unwrap_or("").replace('|', "/")
            );
            continue;
        }
        let per_switch = median(runs.iter().map(|r| r.ns_per_switch).collect());
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.2} | {:.3} |",
            peer.name(),
            median(runs.iter().map(|r| r.switch_runs as f64).collect()),
            median(runs.iter().map(|r| r.switch_ns).collect()),
            per_switch,
            per_switch / bpftrace_per_switch,
            median(runs.iter().map(|r| r.ops_per_sec).collect()) / b
        );
    }
    println!("\nGoal (issue 7): nvbind at most half of bpftrace's cost per event (ratio ≤ 0.50).");
    let duration = vk["capture"]["duration_s"].as_f64().unwrap_or(0.0);
    let cpu = vk["agent"]["cpu_s"].as_f64().unwrap_or(0.0);
    let rss = vk["agent"]["peak_rss_bytes"].as_f64().unwrap_or(0.0);
    let p = &vk["processes"][0];
    let (present_runs, present_ns) = cost(&vk, "nvbind_present");
    println!("\n### Agent footprint while recording vkcube (lavapipe, Xvfb)\n");
    println!("| metric | value | goal |");
    println!("|---|---:|---:|");
    println!(
        "| vkcube frames / fps | {} / {:.0} | several hundred fps |",
        p["frames"]["count"],
        p["frames"]["fps_avg"].as_f64().unwrap_or(0.0)
    );
    println!(
        "| agent CPU, share of one core | {:.2}% | ≤ 2% |",
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
    cmd.args(["record", "--gpu-sample-hz", hz, "--out"])
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
