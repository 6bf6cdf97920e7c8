//! Reading sysfs attribute files the way GPU drivers write them, with one warning per bad source.
//!
//! A missing file means the driver or the hardware does not offer that counter: it is silently
//! `None`. A file that exists but holds garbage, nothing, or cannot be read is worth one warning
//! (per file, for the life of the process) and is then `None` as well: a sampler must never stop or
//! panic because one attribute is broken.

use std::{
    collections::HashSet,
    io::ErrorKind,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// Remembers which sources have been warned about, so each is reported once.
#[derive(Clone, Default)]
pub struct Warnings {
    seen: Arc<Mutex<HashSet<String>>>,
}

impl Warnings {
    /// Logs `message` about `source` unless `source` was already reported; returns whether it was
    /// logged now.
    pub fn once(&self, source: &Path, message: &str) -> bool {
        let key = source.display().to_string();
        let first = match self.seen.lock() {
            Ok(mut seen) => seen.insert(key.clone()),
            // A panicking holder cannot have left the set half-updated in a harmful way.
            Err(poisoned) => poisoned.into_inner().insert(key.clone()),
        };
        if first {
            log::warn!("{key}: {message} (further problems with this file are not reported)");
        }
        first
    }

    /// How many distinct sources were reported.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// A device directory in sysfs (or in a copy of it) and the warnings shared by its readers.
#[derive(Clone)]
pub struct SysfsDir {
    pub path: PathBuf,
    pub warnings: Warnings,
}

impl SysfsDir {
    pub fn new(path: impl Into<PathBuf>, warnings: Warnings) -> SysfsDir {
        SysfsDir {
            path: path.into(),
            warnings,
        }
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.path.join(rel).exists()
    }

    /// The file's bytes; `None` (silently) when it does not exist.
    pub fn bytes(&self, rel: &str) -> Option<Vec<u8>> {
        let path = self.path.join(rel);
        match read_attribute(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                self.warnings.once(&path, &format!("cannot read: {e}"));
                None
            }
        }
    }

    /// The file's text, trimmed; `None` when missing, unreadable or empty (empty is warned about).
    pub fn text(&self, rel: &str) -> Option<String> {
        let bytes = self.bytes(rel)?;
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if text.is_empty() {
            self.warnings.once(&self.path.join(rel), "is empty");
            return None;
        }
        Some(text)
    }

    /// A decimal unsigned integer file (`gpu_busy_percent`, hwmon `*_input`, ...).
    pub fn u64(&self, rel: &str) -> Option<u64> {
        self.parsed(rel, "an unsigned number")
    }

    /// A decimal signed integer file (hwmon temperatures can be negative).
    pub fn i64(&self, rel: &str) -> Option<i64> {
        self.parsed(rel, "a number")
    }

    fn parsed<T: std::str::FromStr>(&self, rel: &str, expected: &str) -> Option<T> {
        let text = self.text(rel)?;
        match text.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                self.warnings.once(
                    &self.path.join(rel),
                    &format!("expected {expected}, found {:?}", clip(&text)),
                );
                None
            }
        }
    }

    /// A `0x`-prefixed hexadecimal file (`vendor`, `device`, `class`).
    pub fn hex(&self, rel: &str) -> Option<u32> {
        let text = self.text(rel)?;
        let digits = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(&text);
        match u32::from_str_radix(digits, 16) {
            Ok(v) => Some(v),
            Err(_) => {
                self.warnings.once(
                    &self.path.join(rel),
                    &format!("expected a hexadecimal number, found {:?}", clip(&text)),
                );
                None
            }
        }
    }

    /// A boolean flag file holding 0 or 1 (Intel's throttle reasons).
    pub fn flag(&self, rel: &str) -> Option<bool> {
        match self.u64(rel)? {
            0 => Some(false),
            1 => Some(true),
            other => {
                self.warnings.once(
                    &self.path.join(rel),
                    &format!("expected 0 or 1, found {other}"),
                );
                None
            }
        }
    }

    /// Whether runtime power management has put the device to sleep. Reading any counter of such
    /// a device would wake it (and spend power, and on some cards stall the display), so samplers
    /// check this first and read nothing else.
    pub fn runtime_suspended(&self) -> bool {
        // Read without warnings: many devices have no runtime PM at all.
        read_text(&self.path.join("power/runtime_status"))
            .map(|s| matches!(s.trim(), "suspended" | "suspending"))
            .unwrap_or(false)
    }

    /// The input file (`temp2_input`) of the first of `prefix`1..=`max` whose `_label` file reads
    /// `label`. Labels never change, so backends look them up once, not per sample.
    pub fn labelled_input(&self, prefix: &str, max: u32, label: &str) -> Option<String> {
        (1..=max)
            .find(|i| self.text(&format!("{prefix}{i}_label")).as_deref() == Some(label))
            .map(|i| format!("{prefix}{i}_input"))
    }

    /// The first of `names` that exists.
    pub fn first_existing(&self, names: &[&str]) -> Option<String> {
        names.iter().find(|n| self.exists(n)).map(|n| n.to_string())
    }

    /// The `hwmon/hwmonN` directory of the device, if its driver registers one.
    pub fn hwmon(&self) -> Option<SysfsDir> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.path.join("hwmon"))
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("hwmon"))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        dirs.into_iter()
            .next()
            .map(|p| SysfsDir::new(p, self.warnings.clone()))
    }
}

/// At most 40 characters of a bad value, for a one-line warning.
fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The most read from one attribute file: sysfs serves at most a page, and `gpu_metrics`
/// blobs are a few KiB; a fixture tree (or a hostile one) may hold anything.
const ATTRIBUTE_MAX_BYTES: u64 = 64 << 10;

/// The bytes of a sysfs or procfs attribute file, bounded, and only from a regular file: a FIFO
/// or a device planted in a fixture tree (`--sysfs-root`) would block or never end. Opened
/// non-blocking, so even a FIFO's open returns at once and is then refused.
pub(crate) fn read_attribute(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(ATTRIBUTE_MAX_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read_attribute`] as text (invalid UTF-8 replaced).
pub(crate) fn read_text(path: &std::path::Path) -> std::io::Result<String> {
    read_attribute(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_none_and_warned_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("good"), "42\n").expect("write");
        std::fs::write(dir.path().join("garbage"), "fourty-two\n").expect("write");
        std::fs::write(dir.path().join("empty"), "").expect("write");
        std::fs::write(dir.path().join("class"), "0x030000\n").expect("write");
        std::fs::write(dir.path().join("flag"), "7\n").expect("write");
        let warnings = Warnings::default();
        let d = SysfsDir::new(dir.path(), warnings.clone());
        assert_eq!(d.u64("good"), Some(42));
        assert_eq!(d.u64("garbage"), None);
        assert_eq!(d.u64("garbage"), None);
        assert_eq!(d.u64("empty"), None);
        assert_eq!(d.u64("missing"), None);
        assert_eq!(d.hex("class"), Some(0x030000));
        assert_eq!(d.flag("flag"), None);
        // garbage, empty and flag: three sources, each once; the missing file is not a problem.
        assert_eq!(warnings.count(), 3);
    }

    #[test]
    fn a_fifo_or_a_huge_file_in_the_tree_never_blocks_or_floods() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("gpu_busy_percent");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: c_path is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        std::fs::write(dir.path().join("huge"), vec![b'7'; 1 << 20]).expect("write");
        let warnings = Warnings::default();
        let d = SysfsDir::new(dir.path(), warnings.clone());
        // A blocking open of a FIFO with no writer would never return.
        assert_eq!(d.u64("gpu_busy_percent"), None);
        assert_eq!(warnings.count(), 1, "said once");
        assert_eq!(
            d.bytes("huge").map(|b| b.len() as u64),
            Some(ATTRIBUTE_MAX_BYTES)
        );
    }

    #[test]
    fn a_suspended_device_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("power")).expect("mkdir");
        let d = SysfsDir::new(dir.path(), Warnings::default());
        assert!(!d.runtime_suspended());
        std::fs::write(dir.path().join("power/runtime_status"), "suspended\n").expect("write");
        assert!(d.runtime_suspended());
    }
}
