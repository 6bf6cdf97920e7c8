//! The 32-bit (i386) programs the tests run: Debian's i386 `vkcube`, `glxgears` and the Mesa
//! drivers they render with, fetched once into `target/i386/` and never installed.
//!
//! Installing `…:i386` packages needs the host's i386 and amd64 package versions in step (shared
//! libraries like libc6 must match across architectures), which a mirror does not promise. So
//! setup asks apt for the i386 dependency closure with a private configuration (its own package
//! lists, an empty "installed" database, i386 as the only architecture: the host's dpkg and apt
//! state are not touched), downloads it, unpacks it with `dpkg-deb -x`, and lays it out as a
//! 32-bit runtime would sit on a multiarch host:
//!
//! ```text
//! target/i386/sysroot/usr/lib/ld-linux.so.2, usr/lib/i386-linux-gnu/…   (libraries, drivers)
//! target/i386/sysroot/usr/share/vulkan/icd.d/*.i686.json               (driver manifests)
//! target/i386/sysroot/bin/vkcube, bin/glxgears                          (the programs)
//! ```
//!
//! The tests lay `usr/` over the host's in a private mount namespace, where the 32-bit drivers
//! are then installed as far as the agent and the programs can tell (`tests/src/i386.rs`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::util::{display, run, step};

/// What the 32-bit tests run, and the drivers they render with (lavapipe, llvmpipe).
const PACKAGES: &[&str] = &[
    "vulkan-tools",
    "mesa-utils",
    "mesa-vulkan-drivers",
    "libgl1-mesa-dri",
];

/// Changes whenever the layout below does, so an older tree is rebuilt.
const LAYOUT: &str = "i386 sysroot v1";

/// Where setup puts the 32-bit runtime and programs.
pub fn sysroot(target: &Path) -> PathBuf {
    target.join("i386/sysroot")
}

/// The record of a finished tree: the layout and the packages asked for.
fn stamp_text() -> String {
    format!("{LAYOUT}\n{}\n", PACKAGES.join(" "))
}

/// Fetches and lays out the i386 programs unless the tree is already there (idempotent).
pub fn prepare(target: &Path) -> Result<()> {
    step("i386: 32-bit vkcube and glxgears with their Mesa drivers (unpacked, not installed)");
    let dir = target.join("i386");
    let root = sysroot(target);
    let stamp = dir.join("sysroot.done");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text().as_str()) {
        eprintln!("    skip: i386 programs in {}", root.display());
        return Ok(());
    }
    build(&dir, &root).context(
        "cannot fetch the i386 packages the 32-bit tests run (fix what is named above, or check \
         that `apt-get update` reaches the Debian mirror, then rerun `cargo xtask setup`)",
    )?;
    fs::write(&stamp, stamp_text()).with_context(|| format!("cannot write {}", stamp.display()))
}

fn build(dir: &Path, root: &Path) -> Result<()> {
    let _ = fs::remove_file(dir.join("sysroot.done"));
    for old in [root.to_path_buf(), dir.join("work")] {
        if old.exists() {
            fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
        }
    }
    let work = dir.join("work");
    let apt = Apt::new(&work.join("apt"))?;
    eprintln!(
        "    do: read the i386 package lists (private to {})",
        work.display()
    );
    run(&mut apt.command("update"))?;
    let closure = apt.closure(PACKAGES)?;
    eprintln!("    do: download {} i386 packages", closure.len());
    let debs = work.join("debs");
    fs::create_dir_all(&debs)?;
    run(apt.command("download").args(&closure).current_dir(&debs))?;
    let unpacked = work.join("unpacked");
    fs::create_dir_all(&unpacked)?;
    eprintln!(
        "    do: unpack them with dpkg-deb -x into {}",
        unpacked.display()
    );
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            unpack(&deb, &unpacked)?;
        }
    }
    lay_out(&unpacked, root)?;
    fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    Ok(())
}

/// `dpkg-deb -x DEB DEST`, quietly (a hundred packages), failing with its own words.
fn unpack(deb: &Path, dest: &Path) -> Result<()> {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(dest);
    let line = display(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Moves what a 32-bit runtime needs from the unpacked packages into the sysroot.
fn lay_out(unpacked: &Path, root: &Path) -> Result<()> {
    let lib = root.join("usr/lib");
    fs::create_dir_all(&lib)?;
    // Debian 12's packages still put the dynamic linker and part of the libraries in /lib; on a
    // merged-/usr host /lib is /usr/lib, so all of them go there.
    move_into(
        &unpacked.join("usr/lib/i386-linux-gnu"),
        &lib.join("i386-linux-gnu"),
    )?;
    move_into(
        &unpacked.join("lib/i386-linux-gnu"),
        &lib.join("i386-linux-gnu"),
    )?;
    rename(
        &unpacked.join("lib/ld-linux.so.2"),
        &lib.join("ld-linux.so.2"),
    )?;

    let icd = root.join("usr/share/vulkan/icd.d");
    fs::create_dir_all(&icd)?;
    let unpacked_icd = unpacked.join("usr/share/vulkan/icd.d");
    let mut manifests = 0;
    for entry in fs::read_dir(&unpacked_icd)
        .with_context(|| format!("no Vulkan driver manifests in {}", unpacked_icd.display()))?
    {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".i686.json") {
            rename(&path, &icd.join(&*name))?;
            manifests += 1;
        }
    }
    if manifests == 0 {
        bail!(
            "no i686 Vulkan driver manifest in {}",
            unpacked_icd.display()
        );
    }

    let bin = root.join("bin");
    fs::create_dir_all(&bin)?;
    // Outside usr/, so laying usr/ over the host's does not put them in place of the host's own
    // 64-bit programs. glxgears is installed as a link to its multiarch-named file.
    for (name, from) in [
        ("vkcube", "usr/bin/vkcube"),
        ("glxgears", "usr/bin/glxgears.i386-linux-gnu"),
    ] {
        rename(&unpacked.join(from), &bin.join(name))?;
    }
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to)
        .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
}

/// Moves every entry of `from` into `to` (created if needed); an entry both have is an error.
fn move_into(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if dest.symlink_metadata().is_ok() {
            bail!("{} is in both /lib and /usr/lib", dest.display());
        }
        rename(&entry.path(), &dest)?;
    }
    Ok(())
}

/// apt with a configuration of its own: i386 only, its own lists and cache, nothing installed.
/// The host's sources, keys and proxy settings still apply.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path) -> Result<Apt> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let status = dir.join("status");
        fs::write(&status, b"")?;
        let d = dir.display();
        Ok(Apt {
            options: vec![
                "APT::Architecture=i386".into(),
                "APT::Architectures::=i386".into(),
                format!("Dir::State={d}"),
                format!("Dir::State::Lists={d}/lists"),
                format!("Dir::State::status={}", status.display()),
                format!("Dir::Cache={d}/cache"),
                // Nothing here is shared with the host's apt, so its lock is not needed.
                "Debug::NoLocking=1".into(),
                // Downloads land in a directory apt's sandbox user cannot write to.
                "APT::Sandbox::User=root".into(),
            ],
        })
    }

    fn command(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new("apt-get");
        cmd.arg("-q");
        for option in &self.options {
            cmd.arg("-o").arg(option);
        }
        cmd.arg(subcommand).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// The packages an install of `packages` would bring (from apt's simulation: `Inst NAME …`).
    fn closure(&self, packages: &[&str]) -> Result<Vec<String>> {
        let mut cmd = self.command("install");
        cmd.args(["--simulate", "--no-install-recommends"])
            .args(packages);
        let line = display(&cmd);
        let out = cmd
            .output()
            .with_context(|| format!("could not start `{line}`"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            bail!(
                "`{line}` failed: {}",
                err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("")
            );
        }
        let names = packages_to_install(&String::from_utf8_lossy(&out.stdout));
        if names.is_empty() {
            bail!("`{line}` named no package to fetch");
        }
        Ok(names)
    }
}

/// The packages apt's simulated install would unpack (`Inst NAME (VERSION …)` lines).
fn packages_to_install(simulation: &str) -> Vec<String> {
    simulation
        .lines()
        .filter_map(|l| l.strip_prefix("Inst ")?.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_packages_of_a_simulated_install() {
        let simulation = "\
Reading package lists...
The following NEW packages will be installed:
  libc6 vulkan-tools
Inst libc6 (2.36-9+deb12u14 Debian-Security:12/stable-security [i386])
Inst vulkan-tools (1.3.239.0+dfsg-1 Debian:12.11/stable [i386])
Conf libc6 (2.36-9+deb12u14 Debian-Security:12/stable-security [i386])
";
        assert_eq!(packages_to_install(simulation), ["libc6", "vulkan-tools"]);
    }
}
