//! `record`: checks its flags, runs the capture, writes the report and the per-frame files, and
//! prints a summary on the console.

use std::path::Path;

use anyhow::{Context, Result};

use super::{args::RecordArgs, validate};
use crate::{
    capture::{self, RecordOptions},
    probes::LeftOut,
    report::{self, Outputs, Report},
};

pub(super) fn record(args: RecordArgs) -> Result<u8> {
    let (options, outputs) = options(args)?;
    // Refuse early rather than record for an hour and lose it.
    check_writable(&outputs)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(capture::record(options))?;
    let (report, rows) = report::build(&outcome.capture);
    // Every output is tried; the report is written even when a per-frame log fails, and the
    // first failure is the command's error.
    let failed = report::write_outputs(&outputs, &report, &rows)?;
    if let Some(failure) = failed.into_iter().next() {
        return Err(failure.error.into());
    }
    print_summary(&report, &outputs.report);
    Ok(outcome.exit_code.clamp(0, 255) as u8)
}

/// The capture's options and the files to write, every value checked (in the order the flags'
/// errors have always been reported).
fn options(args: RecordArgs) -> Result<(RecordOptions, Outputs)> {
    let RecordArgs {
        pid,
        all,
        comm,
        wait_timeout,
        duration,
        out,
        frames_csv,
        mangohud_csv,
        presentmon_csv,
        no_follow_children,
        mount_tracefs,
        kernel_hooks,
        bpf_stats,
        untracked_check,
        leave_out,
        stutter_factor,
        stutter_floor_ms,
        gpu_ioctl_type,
        gpu_sample_hz,
        roots,
        command,
    } = args;
    let target = validate::target(pid, comm, command, all)?;
    let stutter = validate::stutter(stutter_factor, stutter_floor_ms)?;
    let duration = validate::seconds(duration, "--duration")?;
    let gpu_sampling = validate::gpu_sampling(gpu_sample_hz)?;
    let gpu_roots = roots.roots()?;
    let wait_timeout = validate::seconds(wait_timeout, "--wait-timeout")?;
    let options = RecordOptions {
        target,
        duration,
        wait_timeout,
        follow_children: !no_follow_children,
        mount_tracefs,
        stutter,
        gpu_ioctl_types: gpu_ioctl_type,
        gpu_sampling,
        gpu_roots,
        progress: true,
        kernel_hooks,
        bpf_stats,
        untracked_check,
        left_out: LeftOut::steps(&leave_out),
    };
    let outputs = Outputs {
        report: out,
        frames_csv,
        mangohud_csv,
        presentmon_csv,
    };
    Ok((options, outputs))
}

/// Checks that every output can be written.
fn check_writable(outputs: &Outputs) -> Result<()> {
    report::check_writable(&outputs.report)?;
    for csv in [
        &outputs.frames_csv,
        &outputs.mangohud_csv,
        &outputs.presentmon_csv,
    ]
    .into_iter()
    .flatten()
    {
        report::check_writable(csv)?;
    }
    Ok(())
}

/// One line per process with frames (and per display it drove), the capture's notes, and where
/// the report went; on stderr, so stdout stays free.
fn print_summary(report: &Report, out: &Path) {
    use std::fmt::Write;
    // Built whole, then printed terminal-safe: names are whatever the processes called themselves.
    let mut text = String::new();
    for p in report.processes.iter().filter(|p| p.frames.count > 0) {
        let _ = writeln!(
            text,
            "{} (pid {}): {} frames from {}, {:.1} fps average, p99 frame time {:.2} ms, {} stutters",
            p.comm,
            p.pid,
            p.frames.count,
            p.frames.source,
            p.frames.fps_avg.unwrap_or(0.0),
            p.frames.frame_time_ms.as_ref().map_or(0.0, |f| f.p99),
            p.stutters.count,
        );
    }
    for p in &report.processes {
        if let Some(d) = &p.frames.display {
            let _ = writeln!(
                text,
                "{} (pid {}): {}",
                p.comm,
                p.pid,
                report::display_line(d)
            );
        }
    }
    if report
        .processes
        .iter()
        .all(|p| p.frames.count == 0 && p.frames.display.is_none())
    {
        let _ = writeln!(
            text,
            "no frames were captured (see capture.notes and capture.sources in the report)"
        );
    }
    for note in &report.capture.notes {
        let _ = writeln!(text, "note: {note}");
    }
    let _ = writeln!(text, "report written to {}", out.display());
    eprint!("{}", crate::identity::terminal_safe(&text));
}
