//! `report`: a recorded report summarised for people, optionally drawn as an SVG chart.

use anyhow::{Context, Result};

use super::args::ReportArgs;
use crate::report::{self, Report};

pub(super) fn show(args: ReportArgs) -> Result<u8> {
    let report = report::read_report(&args.file)?;
    if let Some(svg_path) = &args.svg {
        let process = match args.pid {
            Some(pid) => report
                .processes
                .iter()
                .find(|p| p.pid == pid)
                .with_context(|| {
                    format!(
                        "pid {pid} is not in {}: it holds {}",
                        args.file.display(),
                        pid_list(&report)
                    )
                })?,
            None => report
                .processes
                .iter()
                .find(|p| p.frames.count > 1)
                .with_context(|| {
                    format!(
                        "{} holds no process with frames to draw",
                        args.file.display()
                    )
                })?,
        };
        report::check_writable(svg_path)?;
        let svg = report::render_svg(process)?;
        report::write_text(svg_path, &svg)?;
        eprintln!(
            "chart of pid {} written to {}",
            process.pid,
            svg_path.display()
        );
    }
    // A report file is anyone's text: printed terminal-safe.
    print!(
        "{}",
        crate::identity::terminal_safe(&report::render_summary(&report, args.worst))
    );
    Ok(0)
}

fn pid_list(report: &Report) -> String {
    let pids: Vec<String> = report
        .processes
        .iter()
        .map(|p| format!("{} ({})", p.pid, p.comm))
        .collect();
    if pids.is_empty() {
        "no processes".into()
    } else {
        pids.join(", ")
    }
}
