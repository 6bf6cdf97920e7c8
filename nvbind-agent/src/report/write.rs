//! Writing outputs atomically and safely: a reader (or a crash) never sees a half-written report,
//! and root never writes through a name someone else planted. Each file is created under a fresh
//! temporary name with `O_CREAT | O_EXCL | O_NOFOLLOW` relative to its directory's fd (so a
//! symlink or file planted under that name is refused, not followed or truncated), synced, and
//! renamed over the destination (a rename replaces a symlink there; it never writes through it).
//! Temporary names carry the writer's pid, so debris a killed writer left can be told from a
//! live writer's file ([`sweep_debris`]).

use std::{
    ffi::{OsStr, OsString},
    fs::{self, File},
    io::{self, BufWriter, Write},
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use rustix::fs::{AtFlags, Mode, OFlags};
use thiserror::Error;

use super::{FrameRow, Report};

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("cannot write {path}: {source}: choose a writable path")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode {path}: {message}")]
    Encode { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Marks a temporary file's name: `.NAME.tmp-PID-N`.
const TEMP_MARK: &str = ".tmp-";

/// The sequence number of the next temporary name (with the pid, unique within the system).
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// The directory `path` is in, opened (following what the caller named: the directory is theirs
/// to choose), and the file's name in it.
fn open_parent(path: &Path) -> io::Result<(OwnedFd, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names no file"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((dir, name))
}

/// Creates a new, empty temporary file beside `name` in `dir` that nobody else can have
/// prepared: a name that exists (planted, or another writer's) is skipped, never opened.
fn create_temp(dir: &OwnedFd, name: &OsStr) -> io::Result<(File, OsString)> {
    // Long enough to tell files apart, short enough that the marks fit in NAME_MAX (255).
    // At most 160 bytes of the name, cut at a character boundary.
    let mut stem = String::new();
    for c in String::from_utf8_lossy(name.as_bytes()).chars() {
        if stem.len() + c.len_utf8() > 160 {
            break;
        }
        stem.push(c);
    }
    for _ in 0..64 {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let temp = format!(".{stem}{TEMP_MARK}{}-{n}", std::process::id());
        match rustix::fs::openat(
            dir,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        ) {
            Ok(fd) => return Ok((File::from(fd), OsString::from(temp))),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "every temporary name tried already exists (files planted in the directory?)",
    ))
}

/// Checks, before any work is done, that `path` can be written (its directory exists and is
/// writable), without leaving anything behind.
pub fn check_writable(path: &Path) -> Result<(), WriteError> {
    if path.is_dir() {
        return Err(WriteError::Io {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
        });
    }
    let (dir, name) = open_parent(path).map_err(io_err(path))?;
    let (_, temp) = create_temp(&dir, name).map_err(io_err(path))?;
    rustix::fs::unlinkat(&dir, temp.as_os_str(), AtFlags::empty())
        .map_err(|e| io_err(path)(e.into()))
}

/// Writes `path` atomically with the bytes `fill` produces.
pub(crate) fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    prepare(path, fill)?.commit()
}

/// A file written in full and synced under its temporary name, not yet under its own: the
/// rename is [`Prepared::commit`]; dropped uncommitted, the temporary file is removed.
pub(crate) struct Prepared<'a> {
    path: &'a Path,
    dir: OwnedFd,
    name: &'a OsStr,
    temp: Option<OsString>,
}

/// Writes the bytes `fill` produces to a new temporary file beside `path`, synced.
pub(crate) fn prepare<'a>(
    path: &'a Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> Result<(), WriteError>,
) -> Result<Prepared<'a>, WriteError> {
    let (dir, name) = open_parent(path).map_err(io_err(path))?;
    let (file, temp) = create_temp(&dir, name).map_err(io_err(path))?;
    // From here on, a failure drops `prepared`, which removes the temporary file.
    let prepared = Prepared {
        path,
        dir,
        name,
        temp: Some(temp),
    };
    let mut out = BufWriter::new(&file);
    fill(&mut out)?;
    out.flush().map_err(io_err(path))?;
    drop(out);
    file.sync_all().map_err(io_err(path))?;
    Ok(prepared)
}

impl Prepared<'_> {
    /// Gives the file its name (replacing whatever had it, a symlink included, without
    /// following it), durably.
    pub(crate) fn commit(mut self) -> Result<(), WriteError> {
        let path = self.path;
        let Some(temp) = self.temp.take() else {
            return Ok(());
        };
        if let Err(e) = rustix::fs::renameat(&self.dir, temp.as_os_str(), &self.dir, self.name) {
            self.temp = Some(temp);
            return Err(io_err(path)(e.into()));
        }
        // The rename itself survives a crash only once the directory is synced. The file is in
        // place either way: a failure here is said, not returned (a caller would write it again).
        if let Err(e) = rustix::fs::fsync(&self.dir) {
            log::warn!(
                "{}: written, but its directory could not be synced: {e}",
                path.display()
            );
        }
        Ok(())
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = rustix::fs::unlinkat(&self.dir, temp.as_os_str(), AtFlags::empty());
        }
    }
}

/// Removes the temporary files that writers killed mid-write left in `dir` (those whose pid is
/// not a live process, or is `own_pid_too`'s caller at start-up), never following a link and
/// never touching anything else. Returns the names removed.
pub fn sweep_debris(dir: &Path, own_pid_too: bool) -> Vec<String> {
    // Listed and unlinked through one fd: the directory is resolved once.
    let Ok(dir_fd) = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let Ok(entries) = rustix::fs::Dir::read_from(&dir_fd) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(pid) = temp_writer(&name) else {
            continue;
        };
        let ours = pid == std::process::id();
        let writer_alive = Path::new(&format!("/proc/{pid}")).exists();
        if (ours && !own_pid_too) || (!ours && writer_alive) {
            continue;
        }
        if rustix::fs::unlinkat(&dir_fd, name.as_str(), AtFlags::empty()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// The pid of the writer of a temporary file named as `create_temp` names them, or None.
fn temp_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, marks) = rest.rsplit_once(TEMP_MARK)?;
    let (pid, n) = marks.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Writes the JSON report under its temporary name (see [`Prepared`]).
pub(crate) fn prepare_report_json<'a>(
    path: &'a Path,
    report: &Report,
) -> Result<Prepared<'a>, WriteError> {
    prepare(path, |out| {
        serde_json::to_writer_pretty(&mut *out, report).map_err(|e| WriteError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        out.write_all(b"\n").map_err(io_err(path))
    })
}

/// Writes a text document (the SVG chart).
pub fn text(path: &Path, content: &str) -> Result<(), WriteError> {
    write_atomically(path, |out| {
        out.write_all(content.as_bytes()).map_err(io_err(path))
    })
}

/// Reads a report written by `record` (or the daemon).
pub fn read_report(path: &Path) -> Result<Report, ReadError> {
    let text = fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Only the schema first, without building the whole document as a JSON value (a long
    // session's report is hundreds of MB, and its value tree several times that).
    #[derive(serde::Deserialize)]
    struct Schema {
        schema: Option<serde_json::Value>,
    }
    let schema = serde_json::from_str::<Schema>(&text)
        .map_err(|e| ReadError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .schema
        .and_then(|s| s.as_str().map(str::to_owned));
    if !matches!(schema.as_deref(), Some(super::SCHEMA | super::SCHEMA_V1)) {
        return Err(ReadError::Schema {
            path: path.to_path_buf(),
            found: schema.unwrap_or_else(|| "none".into()),
        });
    }
    serde_json::from_str::<Report>(&text)
        .map(Report::upgrade)
        .map_err(|e| ReadError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid nvbind report: {message}")]
    Json { path: PathBuf, message: String },
    #[error(
        "{path} is not an nvbind.report/v1 or v2 document (schema: {found}); give a file written by \
         `nvbind-agent record`"
    )]
    Schema { path: PathBuf, found: String },
}

/// Writes the per-frame CSV (one row per frame, header first).
pub fn frames_csv(path: &Path, rows: &[FrameRow]) -> Result<(), WriteError> {
    write_atomically(path, |out| {
        let mut csv = csv::WriterBuilder::new()
            .has_headers(!rows.is_empty())
            .from_writer(&mut *out);
        if rows.is_empty() {
            // serde writes the header with the first row; a capture without frames still gets one.
            csv.write_record(super::FRAME_CSV_COLUMNS)
                .map_err(|e| WriteError::Encode {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        }
        for row in rows {
            csv.serialize(row).map_err(|e| WriteError::Encode {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        csv.flush().map_err(io_err(path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritable_directory_is_reported_up_front() {
        let err = check_writable(Path::new("/nonexistent-dir/report.json")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/report.json"));
    }

    #[test]
    fn planted_temporary_names_are_skipped_never_followed() {
        let secrets = tempfile::tempdir().expect("tempdir");
        let victim = secrets.path().join("victim");
        fs::write(&victim, "secret").expect("victim");
        let dir = tempfile::tempdir().expect("tempdir");
        let next = NEXT_TEMP.load(Ordering::Relaxed);
        for n in next..next + 8 {
            let name = format!(".frames.csv{TEMP_MARK}{}-{n}", std::process::id());
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).expect("plant");
        }
        let path = dir.path().join("frames.csv");
        check_writable(&path).expect("writable");
        frames_csv(&path, &[]).expect("written");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "secret");
        assert!(fs::symlink_metadata(&path).expect("written").is_file());
    }

    #[test]
    fn a_prepared_file_dropped_uncommitted_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        let prepared =
            prepare(&path, |out| out.write_all(b"{}").map_err(io_err(&path))).expect("prepared");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);
        drop(prepared);
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
        let failed = prepare(&path, |_| {
            Err(WriteError::Encode {
                path: path.clone(),
                message: "no".into(),
            })
        });
        assert!(failed.is_err());
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn debris_is_a_dead_writers_temporary_file_and_nothing_else() {
        assert_eq!(temp_writer(".r.json.tmp-42-7"), Some(42));
        assert_eq!(temp_writer(".a.tmp-b.json.tmp-42-0"), Some(42));
        assert_eq!(temp_writer("r.json.tmp-42-7"), None, "not hidden: not ours");
        assert_eq!(temp_writer(".r.json.tmp-42"), None);
        assert_eq!(temp_writer(".r.json.tmp-x-1"), None);
        let dir = tempfile::tempdir().expect("tempdir");
        let me = std::process::id();
        let names = [
            ".r.json.tmp-3999999-0".to_string(),
            format!(".s.json.tmp-{me}-0"),
            "notes.txt".to_string(),
        ];
        for name in &names {
            fs::write(dir.path().join(name), "x").expect("plant");
        }
        // A link named as debris is removed itself, never what it points to.
        let elsewhere = tempfile::tempdir().expect("tempdir");
        fs::write(elsewhere.path().join("keep"), "x").expect("target");
        std::os::unix::fs::symlink(
            elsewhere.path().join("keep"),
            dir.path().join(".t.json.tmp-3999999-1"),
        )
        .expect("link");
        let mut removed = sweep_debris(dir.path(), false);
        removed.sort();
        assert_eq!(removed, [".r.json.tmp-3999999-0", ".t.json.tmp-3999999-1"]);
        assert!(elsewhere.path().join("keep").exists());
        assert_eq!(
            sweep_debris(dir.path(), true),
            [format!(".s.json.tmp-{me}-0")]
        );
        assert!(dir.path().join("notes.txt").exists());
    }

    #[test]
    fn atomic_write_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("frames.csv");
        check_writable(&path).expect("writable");
        frames_csv(&path, &[]).expect("written");
        let text = fs::read_to_string(&path).expect("read back");
        assert_eq!(text.trim_end(), super::super::FRAME_CSV_COLUMNS.join(","));
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("frames.csv")]);
    }
}
