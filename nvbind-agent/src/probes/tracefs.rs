//! tracefs: where it is mounted, and the field layout of classic tracepoints.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted (looked at /sys/kernel/tracing and /sys/kernel/debug/tracing): \
         run `mount -t tracefs nodev /sys/kernel/tracing`, or pass --mount-tracefs"
    )]
    NotMounted,
    #[error("cannot mount tracefs at /sys/kernel/tracing: {0}")]
    MountFailed(std::io::Error),
}

/// Candidate mount points, in the order the kernel documentation gives.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The mounted tracefs (a mount point with an `events` directory).
pub fn find() -> Result<PathBuf, TracefsError> {
    CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
        .map(Path::to_path_buf)
        .ok_or(TracefsError::NotMounted)
}

/// Mounts tracefs at /sys/kernel/tracing if no tracefs is mounted yet.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Ok(path) = find() {
        return Ok(path);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL for tracefs.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::MountFailed(std::io::Error::last_os_error()));
    }
    find()
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The layout of one tracepoint's record, from its `format` file.
#[derive(Debug, Clone, Default)]
pub struct Format {
    fields: HashMap<String, Field>,
    print_fmt: String,
}

impl Format {
    /// Reads `events/<category>/<name>/format`; `None` if the kernel has no such tracepoint.
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Option<Format> {
        let text = fs::read_to_string(
            tracefs
                .join("events")
                .join(category)
                .join(name)
                .join("format"),
        )
        .ok()?;
        Some(Format::parse(&text))
    }

    /// Parses the text of a `format` file.
    pub fn parse(text: &str) -> Format {
        let mut format = Format::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                format.print_fmt = rest.trim().to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            // "field:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;"
            let mut parts = rest.split(';').map(str::trim);
            let Some(decl) = parts.next() else { continue };
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or("")
                .split('[')
                .next()
                .unwrap_or("");
            if let (Some(offset), Some(size), false) = (offset, size, name.is_empty()) {
                format
                    .fields
                    .insert(name.to_string(), Field { offset, size });
            }
        }
        format
    }

    pub fn field(&self, name: &str) -> Option<Field> {
        self.fields.get(name).copied()
    }

    /// `TASK_REPORT_MAX` as `sched_switch` reports a preempted task: the print format masks
    /// `prev_state` with `((((A | B | ...) + 1) << 1) - 1)`, i.e. `TASK_REPORT_MAX - 1`.
    pub fn task_report_max(&self) -> Option<u64> {
        let start =
            self.print_fmt.find("(REC->prev_state & ((((")? + "(REC->prev_state & ((((".len();
        let inner = &self.print_fmt[start..];
        let end = inner.find(')')?;
        let mut mask = 0u64;
        for part in inner[..end].split('|') {
            let part = part.trim().trim_start_matches("0x");
            mask |= u64::from_str_radix(part, 16).ok()?;
        }
        Some((mask + 1) << 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch
ID: 316
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;

print fmt: \"prev_comm=%s prev_pid=%d\", REC->prev_comm, (REC->prev_state & ((((0x00000000 | 0x00000001 | 0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | 0x00000020 | 0x00000040) + 1) << 1) - 1)) ? 1 : 0
";

    #[test]
    fn parses_fields_and_arrays() {
        let f = Format::parse(SCHED_SWITCH);
        assert_eq!(
            f.field("prev_state"),
            Some(Field {
                offset: 32,
                size: 8
            })
        );
        assert_eq!(
            f.field("next_comm"),
            Some(Field {
                offset: 40,
                size: 16
            })
        );
        assert_eq!(
            f.field("next_pid"),
            Some(Field {
                offset: 56,
                size: 4
            })
        );
        assert_eq!(f.field("missing"), None);
    }

    #[test]
    fn derives_task_report_max() {
        assert_eq!(Format::parse(SCHED_SWITCH).task_report_max(), Some(0x100));
        assert_eq!(Format::parse("print fmt: \"x\"").task_report_max(), None);
    }

    #[test]
    fn pointer_fields_keep_their_names() {
        let f = Format::parse("\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;");
        assert_eq!(
            f.field("filename"),
            Some(Field {
                offset: 24,
                size: 8
            })
        );
    }
}
