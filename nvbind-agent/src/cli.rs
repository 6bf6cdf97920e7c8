//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{
    capture::{self, RecordOptions},
    doctor, report,
    target::TargetSpec,
};

#[derive(Debug, Parser)]
#[command(
    name = "nvbind-agent",
    version,
    about = "Frame-pacing and GPU telemetry for Linux games, from the kernel, without injection",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every probe as attached or unavailable, with the reason and the fix.
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Mount tracefs at /sys/kernel/tracing if it is not mounted.
        #[arg(long)]
        mount_tracefs: bool,
    },
    /// Record a game's frames and what the scheduler and GPU driver did to its threads.
    Record(RecordArgs),
    /// Internal: resolve the installed Vulkan drivers' vkQueuePresentKHR (run by the agent).
    #[command(name = "__resolve-vulkan-present", hide = true)]
    ResolveVulkanPresent,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Record this running process (and its threads and children, present and future).
    #[arg(long, conflicts_with_all = ["comm", "command"])]
    pub pid: Option<u32>,
    /// Record processes with this name (comm), waiting for one to start if none runs yet.
    #[arg(long, conflicts_with = "command")]
    pub comm: Option<String>,
    /// With --comm: give up if no such process appears within this many seconds.
    #[arg(long, value_name = "SECS")]
    pub wait_timeout: Option<f64>,
    /// Stop after this many seconds (counted from when the first target is tracked).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Where to write the JSON report (written atomically).
    #[arg(long, value_name = "FILE", default_value = "nvbind-report.json")]
    pub out: PathBuf,
    /// Also write one CSV row per frame here (written atomically).
    #[arg(long, value_name = "FILE")]
    pub frames_csv: Option<PathBuf>,
    /// Do not track processes the targets start.
    #[arg(long)]
    pub no_follow_children: bool,
    /// Mount tracefs at /sys/kernel/tracing if it is not mounted.
    #[arg(long)]
    pub mount_tracefs: bool,
    /// Launch this command and record it (everything after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn seconds(value: Option<f64>, flag: &str) -> Result<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("{flag} must be a positive number of seconds, not {s}"))
        })
        .transpose()
}

/// Runs a command; returns the process exit code.
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Doctor {
            json,
            mount_tracefs,
        } => {
            let d = doctor::diagnose(mount_tracefs);
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", doctor::render(&d));
            }
            Ok(if d.ready { 0 } else { 1 })
        }
        Command::Record(args) => record(args),
        Command::ResolveVulkanPresent => {
            let found = crate::probes::vulkan::resolve_here()?;
            print!("{}", crate::probes::vulkan::format_lines(&found));
            Ok(0)
        }
    }
}

fn record(args: RecordArgs) -> Result<u8> {
    let target = match (args.pid, args.comm, args.command.is_empty()) {
        (Some(pid), None, true) => TargetSpec::Pid(pid),
        (None, Some(name), true) if !name.is_empty() => TargetSpec::Comm(name),
        (None, None, false) => TargetSpec::Command(args.command),
        _ => anyhow::bail!(
            "nothing to record: give one of --pid PID, --comm NAME or -- COMMAND [ARGS]"
        ),
    };
    let duration = seconds(args.duration, "--duration")?;
    let wait_timeout = seconds(args.wait_timeout, "--wait-timeout")?;
    // Refuse early rather than record for an hour and lose it.
    report::write::check_writable(&args.out)?;
    if let Some(csv) = &args.frames_csv {
        report::write::check_writable(csv)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(capture::record(RecordOptions {
        target,
        duration,
        wait_timeout,
        follow_children: !args.no_follow_children,
        mount_tracefs: args.mount_tracefs,
    }))?;
    let (report, rows) = report::build(&outcome.capture);
    report::write::report_json(&args.out, &report)?;
    if let Some(csv) = &args.frames_csv {
        report::write::frames_csv(csv, &rows)?;
    }
    for p in report.processes.iter().filter(|p| p.frames.count > 0) {
        eprintln!(
            "{} (pid {}): {} frames from {}, {:.1} fps average, p99 frame time {:.2} ms",
            p.comm,
            p.pid,
            p.frames.count,
            p.frames.source,
            p.frames.fps_avg.unwrap_or(0.0),
            p.frames.frame_time_ms.as_ref().map_or(0.0, |f| f.p99),
        );
    }
    if report.processes.iter().all(|p| p.frames.count == 0) {
        eprintln!("no frames were captured (see capture.notes and capture.sources in the report)");
    }
    for note in &report.capture.notes {
        eprintln!("note: {note}");
    }
    eprintln!("report written to {}", args.out.display());
    Ok(outcome.exit_code.clamp(0, 255) as u8)
}
