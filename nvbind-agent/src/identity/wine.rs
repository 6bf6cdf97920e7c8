//! Recognising Wine (and Proton, which is Wine) and reading the Wine build a process runs on.
//!
//! Wine keeps its build string (`wine-8.0 (Debian 8.0~repack-4)`, what `wine --version` prints
//! and `wine_get_build_id` returns) in its Unix-side `ntdll.so`. Every Wine process maps that
//! file, so the version is read from the very file the process mapped, through
//! `/proc/PID/map_files/` (the kernel's own reference to the mapping: no path is looked up, so
//! no symlink or rename can send the read elsewhere).

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader, Read},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Mutex, OnceLock},
};

/// Wine's loaders: the executable of every Wine process (Proton's included).
const WINE_LOADERS: [&str; 4] = ["wine", "wine64", "wine-preloader", "wine64-preloader"];
/// The Unix side of Wine's ntdll: `ntdll.so` since Wine 6, `ntdll.dll.so` before.
const NTDLL_NAMES: [&str; 2] = ["ntdll.so", "ntdll.dll.so"];
/// A real `ntdll.so` is 1–3 MiB; a larger file is not read (a hostile process could map any).
const NTDLL_MAX_BYTES: u64 = 16 << 20;
/// Lines of /proc/PID/maps read at most (a process can map a million regions).
const MAPS_MAX_LINES: usize = 100_000;
/// The longest build string kept.
const VERSION_MAX: usize = 96;
/// Build strings remembered, by file (device, inode); cleared when full.
const CACHE_MAX: usize = 64;

/// Build strings read, by the (device, inode) of the file they were read from.
type BuildStrings = HashMap<(u64, u64), Option<String>>;

/// Whether `exe` (a path) is one of Wine's loaders.
pub fn is_wine_loader(exe: &str) -> bool {
    let name = Path::new(exe)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    WINE_LOADERS.contains(&name)
}

/// The Wine build string of `pid`'s `ntdll.so`, or `None` when it maps none or it cannot be read.
pub fn wine_version(pid: u32) -> Option<String> {
    let Some(range) = ntdll_mapping(pid) else {
        log::debug!("pid {pid}: no ntdll.so mapped (yet)");
        return None;
    };
    let file = match File::open(format!("/proc/{pid}/map_files/{range}")) {
        Ok(file) => file,
        Err(e) => {
            log::debug!("pid {pid}: cannot open its ntdll.so mapping {range}: {e}");
            return None;
        }
    };
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > NTDLL_MAX_BYTES {
        return None;
    }
    let key = (meta.dev(), meta.ino());
    static CACHE: OnceLock<Mutex<BuildStrings>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(known) = cache.lock().ok()?.get(&key) {
        return known.clone();
    }
    let mut bytes = Vec::new();
    file.take(NTDLL_MAX_BYTES).read_to_end(&mut bytes).ok()?;
    let version = build_string(&bytes);
    let mut cache = cache.lock().ok()?;
    if cache.len() >= CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, version.clone());
    version
}

/// The `start-end` range of the first mapping of Wine's `ntdll.so` in `pid`.
fn ntdll_mapping(pid: u32) -> Option<String> {
    let maps = File::open(format!("/proc/{pid}/maps")).ok()?;
    BufReader::new(maps)
        .lines()
        .take(MAPS_MAX_LINES)
        .map_while(Result::ok)
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let path = fields.nth(4)?;
            let file = path.rsplit('/').next()?;
            NTDLL_NAMES.contains(&file).then(|| range.to_string())
        })
}

/// The first `wine-<digit>…` NUL-terminated string in `bytes` made of printable ASCII.
fn build_string(bytes: &[u8]) -> Option<String> {
    memchr::memmem::find_iter(bytes, b"wine-").find_map(|at| {
        let rest = &bytes[at..];
        let end = memchr::memchr(0, rest)?;
        let text = &rest[..end];
        let plausible = text.len() <= VERSION_MAX
            && text.get(5).is_some_and(u8::is_ascii_digit)
            && text.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        plausible.then(|| String::from_utf8_lossy(text).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wine_loaders_are_recognised_by_file_name() {
        for exe in [
            "/usr/lib/wine/wine64",
            "/usr/bin/wine",
            "/home/me/.steam/steamapps/common/Proton 8.0/dist/bin/wine64-preloader",
            "/opt/wine/bin/wine-preloader",
        ] {
            assert!(is_wine_loader(exe), "{exe}");
        }
        for exe in [
            "/usr/bin/winecfg",
            "/usr/bin/vkcube",
            "",
            "/usr/lib/wine/wineserver64",
        ] {
            assert!(!is_wine_loader(exe), "{exe}");
        }
    }

    #[test]
    fn the_build_string_is_the_first_plausible_one() {
        let bytes = b"\x7fELF..wine-\0..wine-dbg\0wine-8.0 (Debian 8.0~repack-4)\0wine-9.0\0";
        assert_eq!(
            build_string(bytes).as_deref(),
            Some("wine-8.0 (Debian 8.0~repack-4)")
        );
        assert_eq!(build_string(b"wine-8.0\x1b[31m\0"), None, "escapes refused");
        assert_eq!(build_string(b"no version here"), None);
        assert_eq!(build_string(b"wine-8.0 unterminated"), None);
    }
}
