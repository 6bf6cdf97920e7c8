//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (libFuzzer, AddressSanitizer).

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

use crate::util::{cargo_cmd, run, step, target_dir};

/// The fuzz target (`fuzz/fuzz_targets/<name>.rs`).
const TARGET: &str = "gpu_metrics";

/// Installs cargo-fuzz if needed, then fuzzes the `gpu_metrics` decoder for `seconds`.
///
/// cargo-fuzz passes `-Zsanitizer=address` and other `-Z` flags to rustc, which only a nightly
/// compiler accepts; `RUSTC_BOOTSTRAP=1` lets the stable toolchain (the only one on a fresh
/// machine) take them. Stable ships the ASan runtime (`librustc-stable_rt.asan.a`), so the
/// target keeps cargo-fuzz's default sanitizer.
///
/// Builds go to `target/fuzz` (the fuzz crate is its own workspace, excluded from the main one),
/// and so do the inputs libFuzzer discovers: it writes them into the first corpus directory it is
/// given, so `target/fuzz/corpus/gpu_metrics` comes first and the committed seeds in
/// `fuzz/corpus/gpu_metrics` are only read. A crash leaves its input where cargo-fuzz puts it,
/// `fuzz/artifacts/gpu_metrics/` (replay: `cargo fuzz run gpu_metrics <file>`); worth adding to
/// the seeds once fixed.
pub fn fuzz(root: &Path, seconds: u64) -> Result<()> {
    step("cargo-fuzz");
    install_cargo_fuzz(root)?;

    step(&format!("fuzz {TARGET} for {seconds} s"));
    let fuzz_target_dir = target_dir(root).join("fuzz");
    let work_corpus = fuzz_target_dir.join("corpus").join(TARGET);
    fs::create_dir_all(&work_corpus)
        .with_context(|| format!("could not create {}", work_corpus.display()))?;
    let seeds = root.join("fuzz/corpus").join(TARGET);
    if !seeds.is_dir() {
        bail!("the seed corpus {} is missing", seeds.display());
    }
    run(cargo_cmd(root)
        .args(["fuzz", "run", TARGET, "--target-dir"])
        .arg(&fuzz_target_dir)
        .arg(&work_corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .env("RUSTC_BOOTSTRAP", "1"))
}

/// Whether `cargo fuzz` runs (cargo finds `cargo-fuzz` in PATH or `$CARGO_HOME/bin`).
fn cargo_fuzz_works(root: &Path) -> bool {
    cargo_cmd(root)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// `cargo install cargo-fuzz --locked` unless `cargo fuzz` already works. Idempotent.
fn install_cargo_fuzz(root: &Path) -> Result<()> {
    if cargo_fuzz_works(root) {
        eprintln!("    skip: cargo-fuzz installed");
        return Ok(());
    }
    eprintln!("    do: install cargo-fuzz (`cargo fuzz --version` failed)");
    run(cargo_cmd(root).args(["install", "cargo-fuzz", "--locked"]))?;
    if !cargo_fuzz_works(root) {
        bail!(
            "installed cargo-fuzz, but `cargo fuzz --version` still fails: \
             is $CARGO_HOME/bin in PATH?"
        );
    }
    Ok(())
}
