//! Small helpers shared by the subcommands: paths, privilege check, running commands.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}

/// Cargo's target directory (`$CARGO_TARGET_DIR` if set, else `<root>/target`), absolute.
pub fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// The cargo that launched us (`$CARGO`), else `cargo` from PATH.
pub fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A cargo command run from the workspace root.
pub fn cargo_cmd(root: &Path) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root);
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints a step header on stderr.
pub fn step(name: &str) {
    eprintln!("==> {name}");
}

/// The command line as a shell would show it, with the environment variables set on the
/// command (PATH left out: it is long and rarely the interesting part).
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio; fails with the command line unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("    $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout, or None when it cannot be started.
/// The exit status is not checked: callers read what was printed.
pub fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bytes free to an unprivileged writer on the filesystem holding `path` (or the nearest
/// existing ancestor), or None where statvfs cannot say.
fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a valid NUL-terminated string and stats is a writable statvfs that the
    // call fills in entirely when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let stats = unsafe { stats.assume_init() };
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Refuses to start a long job that would die halfway with "No space left on device" from a
/// linker, far from its cause: `need` bytes must be free where `dir` lives.
pub fn ensure_free_space(dir: &Path, need: u64, job: &str) -> Result<()> {
    const GIB: f64 = (1u64 << 30) as f64;
    let Some(free) = free_bytes(dir) else {
        // Not knowing is no reason to refuse; the build itself will say if space runs out.
        return Ok(());
    };
    if free < need {
        bail!(
            "{job} needs about {:.0} GiB free under {}, and only {:.1} GiB is: free some space \
             (for example `cargo clean`, or remove old clones and their target/ folders) and run it again",
            need as f64 / GIB,
            dir.display(),
            free as f64 / GIB
        );
    }
    Ok(())
}
