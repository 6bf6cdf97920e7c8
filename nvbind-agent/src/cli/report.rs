//! `report`: a recorded report summarised for people, optionally drawn as an SVG chart; several
//! reports compared side by side.

use anyhow::{bail, Context, Result};

use super::args::ReportArgs;
use crate::report::{self, compare, Report};

pub(super) fn show(args: ReportArgs) -> Result<u8> {
    if args.files.len() > 1 {
        return compare(&args);
    }
    let Some(file) = args.files.first() else {
        bail!("give a report file (written by `nvbind-agent record --out FILE`)");
    };
    let report = report::read_report(file)?;
    if let Some(svg_path) = &args.svg {
        let process = match args.pid {
            Some(pid) => report
                .processes
                .iter()
                .find(|p| p.pid == pid)
                .with_context(|| {
                    format!(
                        "pid {pid} is not in {}: it holds {}",
                        file.display(),
                        pid_list(&report)
                    )
                })?,
            None => report
                .processes
                .iter()
                .find(|p| p.frames.count > 1)
                .with_context(|| {
                    format!("{} holds no process with frames to draw", file.display())
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

/// Several reports: each one's busiest presenting process, side by side against the first.
fn compare(args: &ReportArgs) -> Result<u8> {
    if args.pid.is_some() {
        bail!(
            "--pid picks a process of one report; with several reports each one's busiest \
             presenting process is compared (leave --pid out)"
        );
    }
    let reports: Vec<Report> = args
        .files
        .iter()
        .map(|f| report::read_report(f))
        .collect::<Result<_, _>>()?;
    let mut runs = Vec::new();
    for (file, r) in args.files.iter().zip(&reports) {
        let process = r
            .processes
            .iter()
            .filter(|p| p.frames.count > 1)
            .max_by_key(|p| p.frames.count)
            .with_context(|| {
                format!("{} holds no process with frames to compare", file.display())
            })?;
        let gpu = process
            .gpu
            .as_ref()
            .and_then(|address| r.gpus.iter().find(|g| &g.info.pci_address == address))
            .or(r.gpus.first());
        runs.push(compare::Run {
            label: file.display().to_string(),
            process,
            gpu,
        });
    }
    if let Some(svg_path) = &args.svg {
        report::check_writable(svg_path)?;
        let svg = report::render_comparison_svg(&runs)?;
        report::write_text(svg_path, &svg)?;
        eprintln!("comparison chart written to {}", svg_path.display());
    }
    let table = compare::render(&compare::compare(&runs));
    // Report files are anyone's text: printed terminal-safe.
    print!("{}", crate::identity::terminal_safe(&table));
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
