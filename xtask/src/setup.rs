//! `cargo xtask setup`: make this (Debian) machine able to build and test nvbind.
//! Idempotent: everything already present is reported and skipped.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    packages::debian_packages,
    util::{self, cargo, output_of, run, step},
};

/// What a command needs the machine to have; each level includes the ones before it, so a
/// gamer's first `cargo xtask run` installs only what the agent's main job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Need {
    /// Build the agent: the eBPF toolchain.
    Build,
    /// Run the agent's main job (doctor, then vkcube recorded under Xvfb): tracefs and the
    /// Vulkan demo's packages.
    Run,
    /// Run the test suite: its workloads, real peers and clients, promtool, the DRM test VM and
    /// the 32-bit programs.
    Test,
    /// Run the benchmarks: the test suite's tools plus the peers they are compared with.
    Bench,
}

/// Debian packages building the agent needs: Debian's rustc with a prebuilt `core` for
/// bpfel-unknown-none, the LLVM that bpf-linker links against, and bpftool for inspecting
/// loaded programs.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "bpftool",
    // `cargo xtask package`: dpkg-deb, and dpkg-shlibdeps for the package's Depends.
    "dpkg-dev",
];

/// The main job's workload: vkcube rendering on the CPU (lavapipe) under a virtual X server.
const RUN_PACKAGES: &[&str] = &[
    "xvfb",
    "xauth",
    "mesa-vulkan-drivers",
    "vulkan-tools",
    "libvulkan1",
];

/// What the tests add.
const TEST_PACKAGES: &[&str] = &[
    // GL/EGL workloads: glxgears and the synthetic game (libEGL with Mesa's surfaceless EGL).
    "mesa-utils",
    "libegl1",
    "libgl1",
    "libglx-mesa0",
    "libegl-mesa0",
    // MangoHud: its real CSV log is the reference the MangoHud-format export is checked against.
    "mangohud",
    // Real HTTP clients for the daemon's API tests, and `ip` to find a non-loopback address.
    "curl",
    "iproute2",
    // `systemd-analyze verify` checks the shipped unit file.
    "systemd",
    // The report's SVG chart and the dashboard page are checked in a real browser: a headless
    // screenshot, and the page driven through WebDriver (chromedriver).
    "chromium",
    "chromium-driver",
    // `nvbind-agent top` is checked in a real terminal: tmux (send-keys, capture-pane).
    "tmux",
    // The Debian package is checked with lintian, and installed into an overlay of / with
    // dpkg; its man pages are rendered with man.
    "lintian",
    "man-db",
    // The compositor checks in the test VM run the host's own Weston (and Wayland clients on
    // Mesa's EGL and Vulkan) on the guest's vkms display: `vm::DESKTOP_PACKAGES`.
    "weston",
    "libwayland-egl1",
    // A multi-threaded launcher that execs a game, in the tests.
    "python3",
    // A build competing with a game: the stutter tests run `make -j` of a small C project.
    "make",
    "gcc",
    // Windows games under Wine: Debian's wine64 runs a test game of our own, built with mingw-w64
    // (Vulkan's headers from libvulkan-dev).
    "wine64",
    "gcc-mingw-w64-x86-64-win32",
    "libvulkan-dev",
    // A real container engine for the CDI and binding tests: Podman with runc (crun refuses
    // this machine's hybrid cgroup layout), and busybox-static to build the test image from.
    "podman",
    "runc",
    "busybox-static",
];

/// Peers the benchmarks compare against or load the machine with.
const BENCH_PACKAGES: &[&str] = &["bpftrace", "bpfcc-tools", "stress-ng", "linux-perf"];

/// The Debian packages `need` asks for.
fn packages_for(need: Need) -> Vec<&'static str> {
    let levels = [
        (Need::Build, BUILD_PACKAGES),
        (Need::Run, RUN_PACKAGES),
        (Need::Test, TEST_PACKAGES),
        (Need::Bench, BENCH_PACKAGES),
    ];
    levels
        .iter()
        .filter(|(level, _)| *level <= need)
        .flat_map(|(_, packages)| packages.iter().copied())
        .collect()
}

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn setup(need: Need) -> Result<()> {
    step(&format!("setup (for {need:?})").to_lowercase());
    if !util::is_root() {
        bail!("setup installs packages: run as root");
    }
    add_cargo_bin_to_path();

    debian_packages(&packages_for(need))?;
    bpf_linker()?;
    if need >= Need::Run {
        tracefs()?;
    }
    if need >= Need::Test {
        promtool()?;
        let target = util::target_dir(&util::workspace_root()?);
        crate::vm::prepare(&target)?;
        crate::i386::prepare(&target)?;
    }
    Ok(())
}

/// Where setup puts `promtool` (the daemon's `/metrics` is checked with it).
pub fn promtool_path() -> Result<PathBuf> {
    Ok(util::target_dir(&util::workspace_root()?).join("tools/promtool"))
}

/// Where setup puts the `prometheus` server the fleet-view test runs on a private port.
pub fn prometheus_path() -> Result<PathBuf> {
    Ok(util::target_dir(&util::workspace_root()?).join("tools/prometheus"))
}

/// `promtool` and `prometheus` from Debian's `prometheus` package, extracted rather than
/// installed: installing the package would also start a Prometheus server on port 9090 (the
/// agent's own default port) as a system service; the tests run their own, on a private port.
fn promtool() -> Result<()> {
    let dest = promtool_path()?;
    let server = prometheus_path()?;
    if dest.is_file() && server.is_file() {
        eprintln!(
            "    skip: promtool and prometheus at {}",
            dest.with_file_name("").display()
        );
        return Ok(());
    }
    eprintln!("    do: extract promtool and prometheus from Debian's prometheus package");
    let work = dest.with_file_name("prometheus-deb");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let download = |work: &Path| {
        run(Command::new("apt-get")
            .args(["download", "prometheus"])
            .current_dir(work))
    };
    if download(&work).is_err() {
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        download(&work)?;
    }
    let deb = fs::read_dir(&work)?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download prometheus left no .deb")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&work))?;
    fs::copy(work.join("usr/bin/promtool"), &dest)
        .with_context(|| format!("cannot copy promtool to {}", dest.display()))?;
    fs::copy(work.join("usr/bin/prometheus"), &server)
        .with_context(|| format!("cannot copy prometheus to {}", server.display()))?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// Cargo installs bpf-linker into `$CARGO_HOME/bin` (default `~/.cargo/bin`); make sure the
/// lookups below and every child process (rustc runs bpf-linker) see it.
fn add_cargo_bin_to_path() {
    let Some(bin) = cargo_home_bin() else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)));
    if let Ok(joined) = joined {
        // Single-threaded at this point; children inherit it.
        env::set_var("PATH", joined);
    }
}

fn cargo_home_bin() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// The version `bpf-linker --version` reports, or None if it cannot be run.
fn bpf_linker_version() -> Option<String> {
    let out = output_of(Command::new("bpf-linker").arg("--version"))?;
    // "bpf-linker 0.13.0"
    out.split_whitespace().nth(1).map(str::to_string)
}

fn bpf_linker() -> Result<()> {
    let found = bpf_linker_version();
    if found.as_deref() == Some(BPF_LINKER_VERSION) {
        eprintln!("    skip: bpf-linker {BPF_LINKER_VERSION} installed");
        return Ok(());
    }
    match &found {
        Some(v) => eprintln!("    do: install bpf-linker {BPF_LINKER_VERSION} (found {v})"),
        None => eprintln!("    do: install bpf-linker {BPF_LINKER_VERSION} (not found)"),
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let path =
        env::join_paths(std::iter::once(PathBuf::from(LLVM_BIN)).chain(env::split_paths(&path)))
            .context("PATH contains an entry that cannot be joined")?;
    run(Command::new(cargo())
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("PATH", path))?;
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => Ok(()),
        other => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but `bpf-linker --version` now reports {}: \
             put {} first in PATH",
            other.as_deref().unwrap_or("nothing"),
            cargo_home_bin().map_or_else(|| "~/.cargo/bin".into(), |p| p.display().to_string())
        ),
    }
}

fn tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    if events.exists() {
        eprintln!("    skip: tracefs mounted at {TRACEFS}");
        return Ok(());
    }
    eprintln!("    do: mount tracefs at {TRACEFS}");
    run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))
        .context("tracefs is needed for tracepoint formats")?;
    if !events.exists() {
        bail!(
            "mounted tracefs at {TRACEFS} but {} is still missing",
            events.display()
        );
    }
    Ok(())
}
