//! Graphics libraries whose present functions nvbind probes, and where to find them: on the host
//! (the dynamic linker's search path) and inside each tracked process (its memory map, which also
//! covers containers and the Steam runtime: a uprobe is attached to a file, through
//! `/proc/PID/map_files`, whatever mount namespace it lives in).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nvbind_common::{compile_call, present_source, proc_addr_abi::NAME_FIRST};

/// A probe point within a library, by exported symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// Exported function.
    pub symbol: &'static str,
    /// Which eBPF program to attach (`nvbind_present`, `nvbind_vk_procaddr`, ...).
    pub program: &'static str,
    /// The cookie: the present source for `nvbind_present`, 0 otherwise.
    pub cookie: u64,
}

/// A library kind and the hooks nvbind places in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibraryKind {
    /// Short name used in statuses and reports.
    pub name: &'static str,
    /// What its hooks are for, as doctor groups probes (`present`, `compile`), and the program
    /// whose hooks each get a status line.
    pub family: &'static str,
    pub main_program: &'static str,
    /// File names (sonames) that identify it.
    pub sonames: &'static [&'static str],
    pub hooks: &'static [Hook],
}

const fn present(symbol: &'static str, source: u32) -> Hook {
    Hook {
        symbol,
        program: "nvbind_present",
        cookie: source as u64,
    }
}

const fn compile(symbol: &'static str, call: u32) -> Hook {
    Hook {
        symbol,
        program: "nvbind_compile",
        cookie: call as u64,
    }
}

/// A `*GetProcAddress` function whose answers are followed (`nvbind_vk_procaddr`), with where it
/// takes the name (`proc_addr_abi`).
const fn proc_addr(symbol: &'static str, program: &'static str, abi: u64) -> Hook {
    Hook {
        symbol,
        program,
        cookie: abi,
    }
}

const fn plain(symbol: &'static str, program: &'static str) -> Hook {
    Hook {
        symbol,
        program,
        cookie: 0,
    }
}

/// Every library kind nvbind hooks.
pub const LIBRARY_KINDS: &[LibraryKind] = &[
    LibraryKind {
        name: "vulkan",
        family: "present",
        main_program: "nvbind_present",
        sonames: &["libvulkan.so.1", "libvulkan.so"],
        hooks: &[
            // The return probe first: an entry is never seen without its return.
            plain("vkQueuePresentKHR", "nvbind_present_vk_ret"),
            present("vkQueuePresentKHR", present_source::VULKAN_LOADER),
            plain("vkGetDeviceProcAddr", "nvbind_vk_procaddr"),
            plain("vkGetDeviceProcAddr", "nvbind_vk_procaddr_ret"),
            plain("vkGetInstanceProcAddr", "nvbind_vk_procaddr"),
            plain("vkGetInstanceProcAddr", "nvbind_vk_procaddr_ret"),
        ],
    },
    LibraryKind {
        // libglvnd's GLX front end (its libGL.so.1 forwards here, so hooking both would count
        // every frame twice).
        name: "glx",
        family: "present",
        main_program: "nvbind_present",
        sonames: &["libGLX.so.0"],
        hooks: &[
            present("glXSwapBuffers", present_source::GLX),
            // GL programs get the compile calls from here: libglvnd's dispatch stubs, which no
            // library exports by name (see the "gl" kind). libglvnd's glXGetProcAddressARB
            // jumps to glXGetProcAddress, so one function carries both (each uprobe costs the
            // agent ~0.1 s at exit, when the kernel removes it).
            proc_addr("glXGetProcAddress", "nvbind_vk_procaddr_ret", NAME_FIRST),
            proc_addr("glXGetProcAddress", "nvbind_vk_procaddr", NAME_FIRST),
        ],
    },
    LibraryKind {
        name: "egl",
        family: "present",
        main_program: "nvbind_present",
        sonames: &["libEGL.so.1"],
        hooks: &[
            // The return probe first (it sends the frame if the call returned EGL_TRUE): an
            // entry is never seen without its return.
            plain("eglSwapBuffers", "nvbind_present_ret"),
            present("eglSwapBuffers", present_source::EGL),
            proc_addr("eglGetProcAddress", "nvbind_vk_procaddr_ret", NAME_FIRST),
            proc_addr("eglGetProcAddress", "nvbind_vk_procaddr", NAME_FIRST),
        ],
    },
    LibraryKind {
        // A Wayland client's flushes: inside a present, the frame's commit reaching the
        // compositor (`nvbind_wayland_flush`; docs/probes.md, "Frames through a compositor").
        name: "wayland",
        family: "present",
        main_program: "nvbind_wayland_flush",
        sonames: &["libwayland-client.so.0"],
        hooks: &[plain("wl_display_flush", "nvbind_wayland_flush")],
    },
    LibraryKind {
        // OpenGL's compile calls as exported for programs linked against libGL (GLX) or
        // libOpenGL (EGL). Each export is a stub that jumps to the current context's driver;
        // a program that asks `glXGetProcAddress` gets libGLdispatch's stub instead (hooked by
        // the startup resolver and when a process asks, `nvbind_vk_procaddr`). A call goes
        // through one stub only, and nested hooks count once anyway.
        name: "gl",
        family: "compile",
        main_program: "nvbind_compile",
        sonames: &["libGL.so.1"],
        hooks: &[
            // The return probe first: an entry is never counted without its return.
            plain("glCompileShader", "nvbind_compile_ret"),
            compile("glCompileShader", compile_call::GL_COMPILE_SHADER),
            plain("glLinkProgram", "nvbind_compile_ret"),
            compile("glLinkProgram", compile_call::GL_LINK_PROGRAM),
        ],
    },
    LibraryKind {
        // libglvnd's core-profile library (EGL programs): the same stubs.
        name: "opengl",
        family: "compile",
        main_program: "nvbind_compile",
        sonames: &["libOpenGL.so.0"],
        hooks: &[
            plain("glCompileShader", "nvbind_compile_ret"),
            compile("glCompileShader", compile_call::GL_COMPILE_SHADER),
            plain("glLinkProgram", "nvbind_compile_ret"),
            compile("glLinkProgram", compile_call::GL_LINK_PROGRAM),
        ],
    },
];

/// A library file found on disk or in a process's memory map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryFile {
    pub kind: &'static LibraryKind,
    /// A path the kernel can open to reach the file (possibly a `/proc/PID/map_files` link).
    pub path: PathBuf,
    /// The path as the process or the host names it (for people).
    pub display: String,
    /// Identity of the file: uprobes live on inodes.
    pub dev: u64,
    pub ino: u64,
}

/// The library kind a file name belongs to.
pub fn kind_of(file_name: &str) -> Option<&'static LibraryKind> {
    LIBRARY_KINDS
        .iter()
        .find(|k| k.sonames.contains(&file_name))
}

/// The directories the dynamic linker searches on Debian-like, Fedora-like and Arch-like x86-64
/// hosts, for 64-bit programs and for 32-bit ones (Debian's multiarch `i386-linux-gnu`, Arch's
/// `lib32`, Fedora's `/usr/lib`). A uprobe works the same in a 32-bit library.
const HOST_LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/lib/i386-linux-gnu",
    "/lib/i386-linux-gnu",
    "/usr/lib32",
    "/lib32",
];

/// The host's copies of every hooked library (deduplicated by inode).
pub fn host_libraries() -> Vec<LibraryFile> {
    let mut found: Vec<LibraryFile> = Vec::new();
    for kind in LIBRARY_KINDS {
        for dir in HOST_LIBRARY_DIRS {
            for soname in kind.sonames {
                let path = Path::new(dir).join(soname);
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                if found
                    .iter()
                    .any(|f| f.dev == meta.dev() && f.ino == meta.ino())
                {
                    continue;
                }
                let real = fs::canonicalize(&path).unwrap_or(path.clone());
                found.push(LibraryFile {
                    kind,
                    display: real.display().to_string(),
                    path: real,
                    dev: meta.dev(),
                    ino: meta.ino(),
                });
            }
        }
    }
    found
}

/// One file-backed mapping of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub dev: u64,
    pub ino: u64,
    pub path: String,
}

impl Mapping {
    /// A path to the mapped file that works from any mount namespace.
    pub fn open_path(&self, pid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))
    }
}

/// The file-backed mappings of a process (empty if it is gone).
pub fn mappings(pid: u32) -> Vec<Mapping> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    text.lines().filter_map(parse_maps_line).collect()
}

/// Parses one line of `/proc/PID/maps`:
/// `7f2c4a000000-7f2c4a021000 r-xp 00002000 fe:01 1835110  /usr/lib/x86_64-linux-gnu/libEGL.so.1.1.0`
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let _perms = fields.next()?;
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let dev = fields.next()?;
    let ino: u64 = fields.next()?.parse().ok()?;
    let path = fields.next()?.trim_start().to_string();
    if ino == 0 || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let major = u64::from_str_radix(major, 16).ok()?;
    let minor = u64::from_str_radix(minor, 16).ok()?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset,
        dev: libc::makedev(major as u32, minor as u32),
        ino,
        path,
    })
}

/// The hooked libraries a process has mapped (one entry per file).
pub fn process_libraries(pid: u32) -> Vec<LibraryFile> {
    let mut found: Vec<LibraryFile> = Vec::new();
    for m in mappings(pid) {
        let file_name = m.path.rsplit('/').next().unwrap_or("");
        // Mapped files carry their real name (libEGL.so.1.1.0), not the soname.
        let Some(kind) = LIBRARY_KINDS.iter().find(|k| {
            k.sonames.iter().any(|s| {
                file_name
                    .strip_prefix(s)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            })
        }) else {
            continue;
        };
        if found.iter().any(|f| f.dev == m.dev && f.ino == m.ino) {
            continue;
        }
        found.push(LibraryFile {
            kind,
            path: m.open_path(pid),
            display: m.path.clone(),
            dev: m.dev,
            ino: m.ino,
        });
    }
    found
}

/// Where `address` lives in `pid`: the mapping and the file offset to probe.
pub fn locate(pid: u32, address: u64) -> Option<(Mapping, u64)> {
    mappings(pid)
        .into_iter()
        .find(|m| (m.start..m.end).contains(&address))
        .map(|m| {
            let file_offset = address - m.start + m.offset;
            (m, file_offset)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_maps_line() {
        let m = parse_maps_line(
            "7f2c4a000000-7f2c4a021000 r-xp 00002000 fe:01 1835110                    /usr/lib/x86_64-linux-gnu/libEGL.so.1.1.0",
        )
        .expect("a file mapping");
        assert_eq!(m.start, 0x7f2c4a000000);
        assert_eq!(m.end, 0x7f2c4a021000);
        assert_eq!(m.offset, 0x2000);
        assert_eq!(m.ino, 1835110);
        assert_eq!(m.dev, libc::makedev(0xfe, 0x01));
        assert_eq!(m.path, "/usr/lib/x86_64-linux-gnu/libEGL.so.1.1.0");
        assert_eq!(
            m.open_path(42),
            PathBuf::from("/proc/42/map_files/7f2c4a000000-7f2c4a021000")
        );
    }

    #[test]
    fn skips_anonymous_and_special_mappings() {
        assert!(parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]").is_none());
        assert!(parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0").is_none());
    }

    #[test]
    fn knows_the_hooked_sonames() {
        assert_eq!(kind_of("libvulkan.so.1").map(|k| k.name), Some("vulkan"));
        assert_eq!(kind_of("libEGL.so.1").map(|k| k.name), Some("egl"));
        assert!(kind_of("libc.so.6").is_none());
    }

    #[test]
    fn locates_this_process_code() {
        let here = locates_this_process_code as fn() as usize as u64;
        let (m, off) = locate(std::process::id(), here).expect("own code is file-backed");
        assert!(off >= m.offset);
        assert!(m.path.contains("nvbind_agent"));
    }
}
