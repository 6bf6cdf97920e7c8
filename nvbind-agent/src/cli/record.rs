//! `record`: checks its flags, runs the capture, writes the report and the per-frame files, and
//! prints a summary on the console.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{args::RecordArgs, validate};
use crate::{
    capture::{self, RecordOptions},
    report::{self, FrameRow, Report},
};

/// The files a recording writes.
struct Outputs {
    /// The JSON report.
    out: PathBuf,
    frames_csv: Option<PathBuf>,
    mangohud_csv: Option<PathBuf>,
    presentmon_csv: Option<PathBuf>,
}

pub(super) fn record(args: RecordArgs) -> Result<u8> {
    let (options, outputs) = options(args)?;
    // Refuse early rather than record for an hour and lose it.
    outputs.check_writable()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(capture::record(options))?;
    let (report, rows) = report::build(&outcome.capture);
    outputs.write(&report, &rows)?;
    print_summary(&report, &outputs.out);
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
    };
    let outputs = Outputs {
        out,
        frames_csv,
        mangohud_csv,
        presentmon_csv,
    };
    Ok((options, outputs))
}

impl Outputs {
    fn check_writable(&self) -> Result<()> {
        report::write::check_writable(&self.out)?;
        for csv in [&self.frames_csv, &self.mangohud_csv, &self.presentmon_csv]
            .into_iter()
            .flatten()
        {
            report::write::check_writable(csv)?;
        }
        Ok(())
    }

    fn write(&self, report: &Report, rows: &[FrameRow]) -> Result<()> {
        report::write::report_json(&self.out, report)?;
        if let Some(csv) = &self.frames_csv {
            report::write::frames_csv(csv, rows)?;
        }
        if let Some(path) = &self.mangohud_csv {
            for (pid, file) in report::export::outputs(path, report) {
                report::export::mangohud_csv(&file, report, rows, pid)?;
            }
        }
        if let Some(path) = &self.presentmon_csv {
            for (pid, file) in report::export::outputs(path, report) {
                report::export::presentmon_csv(&file, report, rows, pid)?;
            }
        }
        Ok(())
    }
}

/// One line per process with frames (and per display it drove), the capture's notes, and where
/// the report went; on stderr, so stdout stays free.
fn print_summary(report: &Report, out: &Path) {
    for p in report.processes.iter().filter(|p| p.frames.count > 0) {
        eprintln!(
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
            eprintln!(
                "{} (pid {}): {}",
                p.comm,
                p.pid,
                report::display::one_line(d)
            );
        }
    }
    if report
        .processes
        .iter()
        .all(|p| p.frames.count == 0 && p.frames.display.is_none())
    {
        eprintln!("no frames were captured (see capture.notes and capture.sources in the report)");
    }
    for note in &report.capture.notes {
        eprintln!("note: {note}");
    }
    eprintln!("report written to {}", out.display());
}
