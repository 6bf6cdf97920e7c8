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
    /// The session as the dashboard page lists it.
    pub session: Option<super::history::WrittenSession>,
}

/// Makes sure the reports directory exists, is readable by root and `config.group` only, and
/// can be written, and removes what writers killed mid-write left in it. `at_start`: no
/// session of this daemon is being written (its own temporary files are debris too).
///
/// Returns what an administrator should know but that is no failure (the reports group does not
/// exist), for the caller to log once the daemon is up.
pub fn prepare_dir(config: &ReportsConfig, at_start: bool) -> Result<Vec<String>, SessionError> {
    let dir = &config.dir;
    fs::create_dir_all(dir).map_err(|source| SessionError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let notes = restrict(dir, &config.group).map_err(|source| SessionError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    report::check_writable(&dir.join(".nvbind-write-check"))?;
    for name in report::sweep_debris(dir, at_start) {
        log::warn!(
            "removed {}: a temporary file left by a writer killed mid-write",
            dir.join(name).display()
        );
    }
    Ok(notes)
}

/// Root's directory, mode 2750: the setgid bit makes every file written in it the reports
/// group's, and the daemon's umask (027) makes them 0640. A directory someone else owns is theirs
/// (an administrator's choice): it is left as it is, with a warning when others can write it.
fn restrict(dir: &Path, group: &str) -> std::io::Result<Vec<String>> {
    use rustix::fs::{Gid, Mode, OFlags, Uid};
    // Through the directory's own fd, never its path again: whoever can write the parent must
    // not get root to change the mode or owner of what a symlink there points at.
    let fd = match rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            return Ok(vec![format!(
                "reports.dir {} is a symbolic link: its owner and mode are left as they are",
                dir.display()
            )]);
        }
        Err(e) => return Err(e.into()),
    };
    let meta = rustix::fs::fstat(&fd)?;
    if meta.st_uid != 0 {
        return Ok(vec![format!(
            "reports.dir {} belongs to uid {}, not root: its reports are as private as that \
             directory allows",
            dir.display(),
            meta.st_uid
        )]);
    }
    let mut notes = Vec::new();
    let gid = if group.is_empty() {
        0
    } else {
        group_id(group).unwrap_or_else(|| {
            notes.push(format!(
                "reports.group {group:?} does not exist: reports are readable by root only \
                 (create it with `groupadd --system {group}` to let its members read them)"
            ));
            0
        })
    };
    if meta.st_gid != gid {
        rustix::fs::fchown(&fd, Some(Uid::ROOT), Some(Gid::from_raw(gid)))?;
    }
    if meta.st_mode & 0o7777 != 0o2750 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o2750))?;
    }
    Ok(notes)
}

/// The id of the group named `name` (through the system's group database), or None.
fn group_id(name: &str) -> Option<u32> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // A group with many members needs a larger buffer: grow it while the lookup says so.
    for size in [16usize << 10, 256 << 10, 4 << 20] {
        let mut group = std::mem::MaybeUninit::<libc::group>::uninit();
        let mut found: *mut libc::group = std::ptr::null_mut();
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: every pointer is valid for the call: c_name is NUL-terminated, group and found
        // are writable, and buf is writable for buf.len() bytes. The result is read only
        // through `found`, which getgrnam_r sets to &group (initialised) on success, or null.
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                group.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE {
            continue;
        }
        if rc != 0 || found.is_null() {
            return None;
        }
        // SAFETY: found is non-null, so it points at the initialised `group`.
        return Some(unsafe { (*found).gr_gid });
    }
    None
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

/// Writes a finished session: the report's bytes first, then the per-frame logs, then the
/// report's name (its presence means the session is complete; pruning counts reports).
pub fn write(
    capture: &Capture,
    config: &ReportsConfig,
    part: u32,
) -> Result<Written, SessionError> {
    let (report, rows) = report::build(capture);
    let Some(process) = report.processes.first() else {
        // It never presented a frame (every present it made failed, say).
        for p in capture.processes.values() {
            log::info!("pid {} ({}): 0 frames: no report", p.pid, p.name());
        }
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
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    written.session = super::history::WrittenSession::of(&report, file_name);
    written.report = Some(path);
    Ok(written)
}

/// Deletes the oldest sessions (report and per-frame logs, oldest by when the report was
/// written) beyond `keep` (0: keep all).
/// Returns the stems removed.
/// Also removes debris: temporary files of writers killed mid-write, and per-frame logs whose
/// report is gone (older than [`ORPHAN_AGE`], so a session being written is never touched).
pub fn prune(dir: &Path, keep: usize) -> Vec<String> {
    // One pruner at a time (sessions are written by several blocking tasks), and the directory is
    // listed under the lock so a pruner never works from a listing older than another's removals.
    static PRUNING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = PRUNING.lock().unwrap_or_else(|p| p.into_inner());
    for name in report::sweep_debris(dir, false) {
        log::warn!(
            "removed {}: a temporary file left by a writer killed mid-write",
            name
        );
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    remove_orphans(dir, &names);
    if keep == 0 {
        return Vec::new();
    }
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
            if session_stem_of(name) == Some(stem.as_str()) {
                if let Err(e) = fs::remove_file(dir.join(name)) {
                    log::warn!("cannot prune {}: {e}", dir.join(name).display());
                }
            }
        }
    }
    doomed
}

/// How old a per-frame log without its report must be to be debris: a session's logs are
/// written before its report takes its name, within seconds.
const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// Removes the session files (per-frame logs) whose report does not exist, once older than
/// [`ORPHAN_AGE`]: left by a daemon killed mid-write or by an older version that wrote them
/// before the report.
fn remove_orphans(dir: &Path, names: &[String]) {
    let reports: std::collections::HashSet<&str> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".json"))
        .filter(|s| is_session_stem(s))
        .collect();
    for name in names {
        let Some(stem) = session_stem_of(name) else {
            continue;
        };
        if reports.contains(stem) || name.ends_with(".json") {
            continue;
        }
        let path = dir.join(name);
        let old_enough = fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= ORPHAN_AGE);
        if old_enough && fs::remove_file(&path).is_ok() {
            log::warn!("removed {}: a per-frame log whose report is gone", name);
        }
    }
}

/// What follows a session's stem in the names of its files.
const SESSION_SUFFIXES: [&str; 4] = [".json", ".frames.csv", ".mangohud.csv", ".presentmon.csv"];

/// The session stem a file of a session is named after (`STEM.json`, `STEM.frames.csv`, ...).
/// By its known suffixes: a stem may hold dots of its own (`Game.exe`).
fn session_stem_of(name: &str) -> Option<&str> {
    SESSION_SUFFIXES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|stem| is_session_stem(stem))
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

    /// The names of the files in `dir`, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

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
        let left = names_in(dir.path());
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

    #[test]
    fn logs_without_their_report_are_removed_once_old() {
        let dir = tempfile::tempdir().unwrap();
        let kept = stem(&capture_at(1_795_000_000.0), 1, "game", 0);
        let orphan = stem(&capture_at(1_795_000_001.0), 2, "game", 0);
        let fresh = stem(&capture_at(1_795_000_002.0), 3, "game", 0);
        assert_eq!(
            session_stem_of(&format!("{orphan}.frames.csv")),
            Some(orphan.as_str())
        );
        assert_eq!(session_stem_of("notes.frames.csv"), None);
        let wine = stem(&capture_at(1_795_000_003.0), 4, "Game.exe", 0);
        assert_eq!(
            session_stem_of(&format!("{wine}.presentmon.csv")),
            Some(wine.as_str()),
            "a stem with dots of its own"
        );
        for name in [
            format!("{wine}.json"),
            format!("{wine}.frames.csv"),
            format!("{kept}.json"),
            format!("{kept}.frames.csv"),
            format!("{orphan}.frames.csv"),
            format!("{orphan}.mangohud.csv"),
            format!("{fresh}.frames.csv"),
        ] {
            fs::write(dir.path().join(&name), "").unwrap();
            if name.starts_with(&orphan) || name.starts_with(&kept) || name.starts_with(&wine) {
                let old = std::time::SystemTime::now() - 2 * ORPHAN_AGE;
                fs::File::options()
                    .write(true)
                    .open(dir.path().join(&name))
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        assert!(prune(dir.path(), 0).is_empty());
        let left = names_in(dir.path());
        assert_eq!(
            left,
            [
                format!("{kept}.frames.csv"),
                format!("{kept}.json"),
                format!("{fresh}.frames.csv"),
                format!("{wine}.frames.csv"),
                format!("{wine}.json"),
            ]
        );
    }
}
