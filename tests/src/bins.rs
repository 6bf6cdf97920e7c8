//! The binaries under test (built by `cargo xtask test`, or found beside the test binary), and
//! the check that the tests can really run.

use std::path::{Path, PathBuf};

fn bin_from_env(var: &str, fallback: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    // `cargo test -p nvbind-tests` from the workspace: debug binaries next to the test binary.
    let here = std::env::current_exe().expect("test binary path");
    let debug_dir = here.parent().and_then(Path::parent).expect("target/debug");
    debug_dir.join(fallback)
}

/// The nvbind-agent binary under test.
pub fn agent_bin() -> PathBuf {
    bin_from_env("NVBIND_AGENT_BIN", "nvbind-agent")
}

/// The project's task runner (`cargo xtask` builds it): the package tests call
/// `xtask package` (`NVBIND_XTASK_BIN` overrides).
pub fn xtask_bin() -> PathBuf {
    bin_from_env("NVBIND_XTASK_BIN", "xtask")
}

/// `prometheus`, the server (setup extracts it into `target/tools`; `NVBIND_PROMETHEUS`
/// overrides).
pub fn prometheus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NVBIND_PROMETHEUS") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/prometheus")
}

/// `promtool` (setup extracts it into `target/tools`; `NVBIND_PROMTOOL` overrides).
pub fn promtool_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NVBIND_PROMTOOL") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/promtool")
}

/// The synthetic game.
pub fn game_bin() -> PathBuf {
    bin_from_env("NVBIND_SYNTHETIC_GAME_BIN", "synthetic-game")
}

/// The CPU competitor for contention tests.
pub fn hog_bin() -> PathBuf {
    bin_from_env("NVBIND_CPU_HOG_BIN", "cpu-hog")
}

/// The short-lived child of the contention tests' shell loops (spins, then prints the time).
pub fn tick_bin() -> PathBuf {
    bin_from_env("NVBIND_TICK_BIN", "tick")
}

/// The open-probe helper (opens device nodes from inside a cgroup).
pub fn probe_bin() -> PathBuf {
    bin_from_env("NVBIND_OPEN_PROBE_BIN", "open-probe")
}

/// Panics unless the tests can really run: root, and the binaries built.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "NOT RUN: these integration tests load eBPF programs and must run as root: use `sudo cargo xtask test`"
    );
    for bin in [agent_bin(), game_bin(), hog_bin()] {
        assert!(
            bin.exists(),
            "NOT RUN: {} is missing: build with `cargo xtask test`",
            bin.display()
        );
    }
}
