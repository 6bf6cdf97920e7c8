//! Builds the eBPF object (`nvbind-ebpf`) for the bpfel target and hands its path to the agent,
//! which embeds it. The recipe is the one in the project's TOOLCHAIN notes: Debian's rustc-web for
//! the BPF target (prebuilt `core`, no build-std) and bpf-linker, in a separate target directory
//! (a nested cargo on the host build's target directory would deadlock).
//!
//! When the eBPF toolchain is missing the host build still succeeds (so `cargo clippy` and the
//! unit tests work anywhere), and the agent says at run time exactly what to install.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("agent crate lives in the workspace");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    // The probes, and the device policy that `bind` loads once per cgroup.
    let objects = ["nvbind-probes", "nvbind-device"];

    for dir in ["nvbind-ebpf/src", "nvbind-common/src"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("nvbind-ebpf/Cargo.toml").display()
    );
    println!("cargo:rerun-if-env-changed=NVBIND_EBPF_DIR");
    println!("cargo:rerun-if-env-changed=NVBIND_REQUIRE_EBPF");

    // A directory of prebuilt objects (named as the eBPF bins) skips the nested build.
    if let Ok(prebuilt) = env::var("NVBIND_EBPF_DIR") {
        for name in objects {
            let from = Path::new(&prebuilt).join(name);
            fs::copy(&from, out_dir.join(format!("{name}.o")))
                .unwrap_or_else(|e| panic!("NVBIND_EBPF_DIR: {}: {e}", from.display()));
        }
        return;
    }

    match build_ebpf(workspace, &objects) {
        Ok(built) => {
            for name in objects {
                fs::copy(built.join(name), out_dir.join(format!("{name}.o")))
                    .expect("copy the eBPF object into OUT_DIR");
            }
        }
        Err(why) if env::var_os("NVBIND_REQUIRE_EBPF").is_some() => {
            panic!("eBPF programs not built: {why}; run `cargo xtask setup`");
        }
        Err(why) => {
            println!("cargo:warning=eBPF programs not built ({why}); run `cargo xtask setup`");
            for name in objects {
                fs::write(out_dir.join(format!("{name}.o")), b"")
                    .expect("write an empty placeholder object");
            }
        }
    }
}

/// Builds the eBPF bins; returns the directory that holds them.
fn build_ebpf(workspace: &Path, bins: &[&str]) -> Result<PathBuf, String> {
    let bpf_rustc = Path::new("/usr/bin/rustc");
    if !bpf_rustc.exists() {
        return Err("Debian's rustc-web (/usr/bin/rustc) is not installed".into());
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = workspace.join("target/ebpf");
    let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
    let path = format!(
        "{home}/.cargo/bin:/usr/lib/llvm-22/bin:{}",
        env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--package",
            "nvbind-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir)
        .args(bins.iter().flat_map(|bin| ["--bin", bin]))
        .env("RUSTC", bpf_rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", path)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "CARGO_ENCODED_RUSTFLAGS_HOST",
        "CLIPPY_ARGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Surface the compiler's own words: a broken eBPF build must not pass silently.
        for line in stderr.lines().filter(|l| !l.trim().is_empty()).take(40) {
            println!("cargo:warning={line}");
        }
        return Err("the eBPF build failed".into());
    }
    Ok(target_dir.join("bpfel-unknown-none/release"))
}
