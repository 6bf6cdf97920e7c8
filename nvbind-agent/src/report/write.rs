//! Writing outputs atomically: a reader (or a crash) never sees a half-written report. Each file
//! is written to a temporary name in the destination directory, synced, and renamed over the
//! destination.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

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

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
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
    let probe = temp_path(path);
    File::create(&probe).map_err(io_err(path))?;
    fs::remove_file(&probe).map_err(io_err(path))
}

/// Writes `path` atomically with the bytes `fill` produces.
pub(crate) fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    let tmp = temp_path(path);
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err(path))?;
        let mut out = BufWriter::new(&file);
        fill(&mut out)?;
        out.flush().map_err(io_err(path))?;
        drop(out);
        file.sync_all().map_err(io_err(path))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes the JSON report.
pub fn report_json(path: &Path, report: &Report) -> Result<(), WriteError> {
    write_atomically(path, |out| {
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
    let schema = serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| ReadError::Json {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
        .get("schema")
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
