//! Debian packages: what is installed, and installing what is missing. Its own module because
//! both `setup` and `vm` install packages, and `setup` also prepares the VM: keeping this here
//! lets the imports run one way (setup -> vm -> packages).

use std::process::Command;

use anyhow::{Context, Result};

use crate::util::run;

/// Installs whichever of `packages` are missing (apt-get, after an update); reports and skips
/// when all are present.
pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for &pkg in packages {
        if !dpkg_installed(pkg)? {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        eprintln!(
            "    skip: all {} Debian packages installed ({})",
            packages.len(),
            packages.join(" ")
        );
        return Ok(());
    }
    eprintln!(
        "    do: install missing Debian packages: {}",
        missing.join(" ")
    );
    run(Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

fn dpkg_installed(pkg: &str) -> Result<bool> {
    // A missing package makes dpkg-query exit 1 with nothing on stdout; that is "not installed".
    // A multi-arch package prints one status per architecture.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\n", pkg])
        .output()
        .context("could not run dpkg-query (setup supports Debian only)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().any(|l| l.trim() == "install ok installed"))
}
