//! Scaling: the probes' cost per event and the agent's CPU and memory as the tracked process
//! grows from 10 to 10,000 threads (at the same wakeup rate, so only the thread count changes),
//! and as the frame rate grows from 60 to 1,000 fps.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{cost, read_report};
use crate::util::step;

const THREAD_COUNTS: [u32; 4] = [10, 100, 1_000, 10_000];
/// The crowd's wakeups per second, whatever its thread count.
const CROWD_WAKEUPS_PER_SEC: &str = "20000";
const CROWD_SECONDS: &str = "5";
/// (target fps, frames): about 4 s each.
const FRAME_RATES: [(u32, u32); 4] = [(60, 240), (250, 1_000), (500, 2_000), (1_000, 4_000)];
const ROUNDS: usize = 3;

/// Records `command` until it exits; the report.
fn record(agent: &Path, out: &Path, command: &[&str]) -> Result<(Value, String)> {
    let rec = Command::new(agent)
        .args([
            "record",
            "--bpf-stats",
            "on",
            "--gpu-sample-hz",
            "0",
            "--out",
        ])
        .arg(out)
        .arg("--")
        .args(command)
        .stderr(Stdio::piped())
        .output()
        .context("run the agent")?;
    if !rec.status.success() {
        bail!(
            "recording {} failed: {}",
            command.join(" "),
            String::from_utf8_lossy(&rec.stderr).trim()
        );
    }
    Ok((
        read_report(out)?,
        String::from_utf8_lossy(&rec.stdout).into_owned(),
    ))
}

fn agent_cpu_share(report: &Value) -> f64 {
    let duration = report["capture"]["duration_s"].as_f64().unwrap_or(0.0);
    100.0 * report["agent"]["cpu_s"].as_f64().unwrap_or(0.0) / duration.max(1e-9)
}

fn peak_rss_mib(report: &Value) -> f64 {
    report["agent"]["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
}

/// A `key value` pair from the crowd's summary line.
fn crowd_field(stdout: &str, key: &str) -> Option<f64> {
    let mut words = stdout.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// One crowd run: [switch runs, switch ns/run, wakeup runs, wakeup ns/run, switches counted /
/// the kernel's, agent CPU %, peak RSS MiB].
fn crowd_run(agent: &Path, crowd: &Path, threads: u32, out: &Path) -> Result<[f64; 7]> {
    let (crowd_s, n_s) = (crowd.display().to_string(), threads.to_string());
    let (report, stdout) = record(
        agent,
        out,
        &[
            &crowd_s,
            "--threads",
            &n_s,
            "--wakeups-per-sec",
            CROWD_WAKEUPS_PER_SEC,
            "--seconds",
            CROWD_SECONDS,
        ],
    )?;
    let p = report["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["comm"] == "thread-crowd"))
        .context("the crowd is not in the report")?;
    // Context switches counted against the kernel's own count for the process (getrusage,
    // exited threads included): every one should be seen, whatever the thread count.
    let counted = p["sched"]["voluntary_switches"].as_f64().unwrap_or(0.0)
        + p["sched"]["involuntary_switches"].as_f64().unwrap_or(0.0);
    let made = crowd_field(&stdout, "voluntary_switches").unwrap_or(f64::NAN)
        + crowd_field(&stdout, "involuntary_switches").unwrap_or(f64::NAN);
    let (switch, wakeup) = (
        cost(&report, "nvbind_sched_switch"),
        cost(&report, "nvbind_sched_wakeup"),
    );
    Ok([
        switch.0 as f64,
        switch.1,
        wakeup.0 as f64,
        wakeup.1,
        counted / made,
        agent_cpu_share(&report),
        peak_rss_mib(&report),
    ])
}

/// One game run: [achieved fps, frames captured, frames presented, present ns/run, agent CPU %,
/// peak RSS MiB, dropped events].
fn game_run(agent: &Path, game: &Path, fps: u32, frames: u32, dir: &Path) -> Result<[f64; 7]> {
    let truth = dir.join("scaling.truth");
    let interval = format!("{:.3}", 1000.0 / f64::from(fps));
    let (frames_s, game_s, truth_s) = (
        frames.to_string(),
        game.display().to_string(),
        truth.display().to_string(),
    );
    let (report, _) = record(
        agent,
        &dir.join("scaling.json"),
        &[
            &game_s,
            "--truth",
            &truth_s,
            "--frames",
            &frames_s,
            "--interval-ms",
            &interval,
            "--work-ms",
            "0.2",
        ],
    )?;
    let truth: Vec<u64> = fs::read_to_string(&truth)?
        .lines()
        // A line is `BEFORE AFTER`: the clock just before and after the present call.
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    let achieved = match (truth.first(), truth.last()) {
        (Some(a), Some(b)) if b > a => (truth.len() - 1) as f64 / ((b - a) as f64 / 1e9),
        _ => 0.0,
    };
    Ok([
        achieved,
        report["processes"][0]["frames"]["count"]
            .as_f64()
            .unwrap_or(0.0),
        truth.len() as f64,
        cost(&report, "nvbind_present").1,
        agent_cpu_share(&report),
        peak_rss_mib(&report),
        report["capture"]["dropped_events"].as_f64().unwrap_or(0.0),
    ])
}

/// Each column's median over rounds.
fn medians<const N: usize>(rounds: &[[f64; N]]) -> [f64; N] {
    std::array::from_fn(|i| super::median(rounds.iter().map(|r| r[i]).collect()))
}

pub fn bench(agent: &Path, crowd: &Path, game: &Path, dir: &Path) -> Result<()> {
    let out = dir.join("scaling.json");
    let mut crowd_rounds = vec![Vec::new(); THREAD_COUNTS.len()];
    let mut game_rounds = vec![Vec::new(); FRAME_RATES.len()];
    for round in 1..=ROUNDS {
        for (i, n) in THREAD_COUNTS.into_iter().enumerate() {
            step(&format!(
                "scaling {round}/{ROUNDS}: a process with {n} threads, {CROWD_WAKEUPS_PER_SEC} wakeups/s"
            ));
            crowd_rounds[i].push(crowd_run(agent, crowd, n, &out)?);
        }
        for (i, (fps, frames)) in FRAME_RATES.into_iter().enumerate() {
            step(&format!(
                "scaling {round}/{ROUNDS}: the synthetic game at {fps} fps"
            ));
            game_rounds[i].push(game_run(agent, game, fps, frames, dir)?);
        }
    }

    println!("\n### Scaling with tracked threads (one process, {CROWD_WAKEUPS_PER_SEC} wakeups/s in all, {CROWD_SECONDS} s), medians of {ROUNDS} rounds\n");
    println!("| threads | sched_switch runs / ns per run | sched_wakeup runs / ns per run | switches counted / the kernel's | agent CPU, share of one core | agent peak RSS |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let crowd_rows: Vec<[f64; 7]> = crowd_rounds.iter().map(|r| medians(r)).collect();
    for (n, [switch_runs, switch_ns, wakeup_runs, wakeup_ns, counted, cpu, rss]) in
        THREAD_COUNTS.iter().zip(&crowd_rows)
    {
        println!(
            "| {n} | {switch_runs:.0} / {switch_ns:.1} | {wakeup_runs:.0} / {wakeup_ns:.1} | {counted:.4} | {cpu:.2} % | {rss:.1} MiB |"
        );
    }
    if let (Some(a), Some(b)) = (crowd_rows.first(), crowd_rows.last()) {
        println!(
            "\nFrom {} to {} threads: sched_switch ns/run × {:.2}, sched_wakeup ns/run × {:.2}, agent CPU × {:.1}.",
            THREAD_COUNTS[0],
            THREAD_COUNTS[THREAD_COUNTS.len() - 1],
            b[1] / a[1],
            b[3] / a[3],
            b[5] / a[5]
        );
    }
    println!("\n### Scaling with frame rate (synthetic game, eglSwapBuffers, 0.2 ms of work per frame, about 4 s), medians of {ROUNDS} rounds\n");
    println!("| target fps | achieved fps | frames captured / presented | nvbind_present ns per run | agent CPU, share of one core | agent peak RSS | dropped events |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for ((fps, _), r) in FRAME_RATES.iter().zip(&game_rounds) {
        let [achieved, captured, presented, present_ns, cpu, rss, dropped] = medians(r);
        println!(
            "| {fps} | {achieved:.0} | {captured:.0} / {presented:.0} | {present_ns:.0} | {cpu:.2} % | {rss:.1} MiB | {dropped:.0} |"
        );
    }
    Ok(())
}
