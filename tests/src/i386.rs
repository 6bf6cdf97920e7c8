//! 32-bit (i386) programs: Debian's i386 vkcube and glxgears with Mesa's i386 drivers, which
//! `cargo xtask setup --for test` unpacks into `target/i386/sysroot` (this mirror's i386 and
//! amd64 versions are out of step, so they cannot be installed), and a way to run a command where
//! they are installed as on a multiarch gaming host.

use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

/// The unpacked i386 tree: `usr/lib/ld-linux.so.2`, `usr/lib/i386-linux-gnu/…`,
/// `usr/share/vulkan/icd.d/*.i686.json`, and the programs in `bin/`.
pub struct I386 {
    pub sysroot: PathBuf,
}

impl I386 {
    /// The tree setup made (`NVBIND_I386_SYSROOT` overrides where it is); fails the test, saying
    /// NOT RUN, when it is missing or cannot be laid over this host.
    pub fn require() -> I386 {
        let sysroot = std::env::var_os("NVBIND_I386_SYSROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/i386/sysroot")
            });
        for needed in ["bin/vkcube", "bin/glxgears", "usr/lib/ld-linux.so.2"] {
            assert!(
                sysroot.join(needed).exists(),
                "NOT RUN: {} is missing: run `cargo xtask setup --for test` (it unpacks the i386 \
                 programs there)",
                sysroot.join(needed).display()
            );
        }
        // Only /usr/lib is laid over: the i386 dynamic linker's path, /lib/ld-linux.so.2, must
        // lead there (a merged-/usr host, as Debian 12 is).
        let lib = std::fs::canonicalize("/lib").expect("/lib");
        assert_eq!(
            lib,
            Path::new("/usr/lib"),
            "NOT RUN: /lib is not /usr/lib on this host, so laying the i386 tree over /usr/lib \
             would not give 32-bit programs their dynamic linker"
        );
        I386 { sysroot }
    }

    /// A 32-bit program of the tree (`vkcube`, `glxgears`), checked to be one: an ELF32 i386
    /// file, so a test never passes on a 64-bit program by mistake.
    pub fn program(&self, name: &str) -> PathBuf {
        let path = self.sysroot.join("bin").join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.len() > 20
                && bytes.starts_with(b"\x7fELF")
                && bytes[4] == 1
                && u16::from_le_bytes([bytes[18], bytes[19]]) == 3,
            "{} is not a 32-bit i386 program",
            path.display()
        );
        path
    }

    /// Makes `cmd` (and everything it starts) run in a private mount namespace where the tree's
    /// `usr/lib` and `usr/share/vulkan` are laid over the host's (read-only overlays): there the
    /// i386 dynamic linker, libraries, Vulkan loader and drivers (with their manifests) are
    /// installed where a multiarch host has them, the host's own files are all still there, and
    /// the host itself is not changed. The files are the tree's own (overlayfs maps and probes
    /// the real files), so what a probe sees there is what it would see on such a host.
    pub fn installed(&self, cmd: &mut Command) {
        let overlay = |dir: &str| {
            let lower = self.sysroot.join(dir.trim_start_matches('/'));
            (
                CString::new(dir).expect("no NUL"),
                CString::new(format!("lowerdir={}:{dir}", lower.display())).expect("no NUL"),
            )
        };
        let mounts = [overlay("/usr/lib"), overlay("/usr/share/vulkan")];
        let root = CString::new("/").expect("no NUL");
        let fs_type = CString::new("overlay").expect("no NUL");
        // SAFETY: runs in the child between fork and exec; it only makes system calls on
        // strings prepared beforehand.
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| {
                    if r == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                check(libc::unshare(libc::CLONE_NEWNS))?;
                // Mounts made here must not propagate back to the host's namespace.
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (target, options) in &mounts {
                    check(libc::mount(
                        fs_type.as_ptr(),
                        target.as_ptr(),
                        fs_type.as_ptr(),
                        libc::MS_RDONLY,
                        options.as_ptr().cast(),
                    ))?;
                }
                Ok(())
            });
        }
    }
}
