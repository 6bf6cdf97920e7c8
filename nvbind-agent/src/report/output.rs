//! The one way a report leaves the agent, for `record` and the daemon alike. The report's bytes
//! go to disk first (on a full disk the per-frame logs, the bulk, must not take the space the
//! report needs: it holds every summary), then the per-frame logs, and the report takes its name
//! last: its presence means everything else was tried, so a reader (the daemon's pruning, a
//! script watching the directory) that sees it finds the logs beside it.

use std::path::{Path, PathBuf};

use super::{export, write, FrameRow, Report, WriteError};

/// Where one capture's files go. The MangoHud and PresentMon logs are one file per process with
/// frames (see [`export::outputs`]).
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub report: PathBuf,
    pub frames_csv: Option<PathBuf>,
    pub mangohud_csv: Option<PathBuf>,
    pub presentmon_csv: Option<PathBuf>,
}

/// A per-frame log that could not be written.
#[derive(Debug)]
pub struct ExportFailure {
    /// `frames.csv`, `mangohud.csv` or `presentmon.csv`.
    pub export: &'static str,
    pub error: WriteError,
}

/// Writes every output of `outputs`: the report's bytes, whose failure is the error (and then
/// nothing else is written: a log without its report is of no use), then the per-frame logs (a
/// failure is returned, and the rest go on), then the report's name.
pub fn write_outputs(
    outputs: &Outputs,
    report: &Report,
    rows: &[FrameRow],
) -> Result<Vec<ExportFailure>, WriteError> {
    let report_file = write::prepare_report_json(&outputs.report, report)?;
    let mut failed = Vec::new();
    let mut note = |export: &'static str, result: Result<(), WriteError>| {
        if let Err(error) = result {
            failed.push(ExportFailure { export, error });
        }
    };
    if let Some(path) = &outputs.frames_csv {
        note("frames.csv", write::frames_csv(path, rows));
    }
    if let Some(path) = &outputs.mangohud_csv {
        note(
            "mangohud.csv",
            per_process(path, report, |file, pid| {
                export::mangohud_csv(file, report, rows, pid)
            }),
        );
    }
    if let Some(path) = &outputs.presentmon_csv {
        note(
            "presentmon.csv",
            per_process(path, report, |file, pid| {
                export::presentmon_csv(file, report, rows, pid)
            }),
        );
    }
    report_file.commit()?;
    Ok(failed)
}

/// Writes one file per process with frames (the first failure stops that export).
fn per_process(
    path: &Path,
    report: &Report,
    mut write_one: impl FnMut(&Path, u32) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    for (pid, file) in export::outputs(path, report) {
        write_one(&file, pid)?;
    }
    Ok(())
}
