//! Session reports: when a tracked game exits (or the agent stops, or a session reaches its
//! frame limit), its capture becomes an `nvbind.report/v2` file in the reports directory, named
//! so that names sort by start time, with the configured per-frame logs beside it. Old sessions
//! are pruned beyond the configured count.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use thiserror::Error;

use super::config::{Export, ReportsConfig};
use crate::{frames::Capture, report};

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("cannot create the reports directory {path}: {source}: create it or set reports.dir")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] report::WriteError),
}

/// What writing one session produced.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// The report (None: too few frames to be worth one).
    pub report: Option<PathBuf>,
    /// Per-frame logs that could not be written (the report was).
    pub failed_exports: Vec<String>,
}

/// Makes sure the reports directory exists and can be written.
pub fn prepare_dir(dir: &Path) -> Result<(), SessionError> {
    fs::create_dir_all(dir).map_err(|source| SessionError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    report::check_writable(&dir.join(".nvbind-write-check"))?;
    Ok(())
}

/// The file stem of a session: UTC start time (sortable), name, pid, part.
pub fn stem(capture: &Capture, pid: u32, name: &str, part: u32) -> String {
    let started = UNIX_EPOCH + Duration::from_secs_f64(capture.started_unix_s.max(0.0));
    // 2026-11-22T08:39:02.123Z, with ':' (awkward in file names on other systems) as '-'.
    let time = humantime::format_rfc3339_millis(started)
        .to_string()
        .replace(':', "-");
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if name.is_empty() { "process" } else { &name };
    if part == 0 {
        format!("{time}-{name}-{pid}")
    } else {
        format!("{time}-{name}-{pid}-part{part}")
    }
}

/// Writes a finished session: per-frame logs first, the report last (its presence means the
/// session is complete; pruning counts reports).
pub fn write(
    capture: &Capture,
    config: &ReportsConfig,
    part: u32,
) -> Result<Written, SessionError> {
    let (report, rows) = report::build(capture);
    let Some(process) = report.processes.first() else {
        return Ok(Written::default());
    };
    if process.frames.count < config.min_frames {
        log::info!(
            "pid {} ({}): {} frames, fewer than reports.min_frames ({}): no report",
            process.pid,
            process.name,
            process.frames.count,
            config.min_frames
        );
        return Ok(Written::default());
    }
    let stem = stem(capture, process.pid, &process.name, part);
    let path_of = |suffix: &str| config.dir.join(format!("{stem}.{suffix}"));
    let wanted = |export: Export| config.exports.contains(&export).then_some(());
    let outputs = report::Outputs {
        report: path_of("json"),
        frames_csv: wanted(Export::Frames).map(|()| path_of("frames.csv")),
        mangohud_csv: wanted(Export::Mangohud).map(|()| path_of("mangohud.csv")),
        presentmon_csv: wanted(Export::Presentmon).map(|()| path_of("presentmon.csv")),
    };
    let mut written = Written::default();
    for failure in report::write_outputs(&outputs, &report, &rows)? {
        log::warn!("{}", failure.error);
        written.failed_exports.push(failure.export.to_string());
    }
    let path = outputs.report;
    written.report = Some(path);
    Ok(written)
}

/// Deletes the oldest sessions (report and per-frame logs, oldest by when the report was
/// written) beyond `keep` (0: keep all).
/// Returns the stems removed.
pub fn prune(dir: &Path, keep: usize) -> Vec<String> {
    if keep == 0 {
        return Vec::new();
    }
    // One pruner at a time (sessions are written by several blocking tasks), and the directory is
    // listed under the lock so a pruner never works from a listing older than another's removals.
    static PRUNING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PRUNING.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    // Oldest by when the session ended (its report was written), not by when it started: a long
    // game that ends after many short sessions is the newest, never pruned as it is written.
    let mut stems: Vec<(std::time::SystemTime, &str)> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".json"))
        .filter(|s| is_session_stem(s))
        .map(|s| {
            let written = fs::metadata(dir.join(format!("{s}.json")))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (written, s)
        })
        .collect();
    stems.sort_unstable();
    let stems: Vec<&str> = stems.into_iter().map(|(_, s)| s).collect();
    let excess = stems.len().saturating_sub(keep);
    let doomed: Vec<String> = stems[..excess].iter().map(|s| s.to_string()).collect();
    for stem in &doomed {
        for name in &names {
            if name
                .strip_prefix(stem.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
            {
                if let Err(e) = fs::remove_file(dir.join(name)) {
                    log::warn!("cannot prune {}: {e}", dir.join(name).display());
                }
            }
        }
    }
    doomed
}

/// Whether a file stem is one of ours (starts with a UTC time as `stem` writes it), so that
/// pruning never touches anything else in the directory.
fn is_session_stem(stem: &str) -> bool {
    let b = stem.as_bytes();
    b.len() > 25
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && b[24] == b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture_at(unix_s: f64) -> Capture {
        Capture {
            started_unix_s: unix_s,
            ..Default::default()
        }
    }

    #[test]
    fn stems_sort_by_time_and_are_safe_file_names() {
        let a = stem(&capture_at(1_795_000_000.25), 42, "vk cube/x", 0);
        assert_eq!(a, "2026-11-18T11-06-40.250Z-vk_cube_x-42");
        assert!(is_session_stem(&a));
        let b = stem(&capture_at(1_795_000_001.0), 7, "a", 2);
        assert!(b.ends_with("-a-7-part2"));
        assert!(a < b);
        assert!(!is_session_stem("notes"));
        assert!(!is_session_stem("2026-11-18-my-own-file"));
    }

    #[test]
    fn pruning_removes_the_oldest_sessions_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let mut stems = Vec::new();
        for i in 0..5 {
            let s = stem(&capture_at(1_795_000_000.0 + i as f64), 100 + i, "game", 0);
            fs::write(dir.path().join(format!("{s}.json")), "{}").unwrap();
            fs::write(dir.path().join(format!("{s}.mangohud.csv")), "").unwrap();
            stems.push(s);
        }
        fs::write(dir.path().join("README.json"), "{}").unwrap();
        let removed = prune(dir.path(), 2);
        assert_eq!(removed, stems[..3].to_vec());
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                format!("{}.json", stems[3]),
                format!("{}.mangohud.csv", stems[3]),
                format!("{}.json", stems[4]),
                format!("{}.mangohud.csv", stems[4]),
                "README.json".to_string(),
            ]
        );
        assert!(prune(dir.path(), 0).is_empty());
    }
}
