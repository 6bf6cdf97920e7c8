//! Builds the eBPF object (`nvbind-ebpf`) for the bpfel target and hands its path to the agent,
//! which embeds it. The recipe is the one in the project's TOOLCHAIN notes: Debian's rustc-web for
//! the BPF target (prebuilt `core`, no build-std) and bpf-linker, in a separate target directory
//! (a nested cargo on the host build's target directory would deadlock).
//!
//! It also builds the 32-bit Vulkan resolver (`resolve32/`, freestanding C for i386) with the
//! host's C compiler, which the agent embeds and runs to find the 32-bit drivers' present
//! function.
//!
//! When the eBPF toolchain (or a C compiler that can emit i386 code) is missing the host build
//! still succeeds (so `cargo clippy` and the unit tests work anywhere), and the agent says at run
//! time exactly what is missing. `NVBIND_REQUIRE_EBPF` (set by every `cargo xtask` build) makes
//! either a build error instead.

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

    // Built first: the prebuilt-objects path below returns early.
    resolve32(&manifest_dir, &out_dir);

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

/// Builds `resolve32/resolve32.c` into `OUT_DIR/resolve32` (an empty placeholder when it cannot
/// be built). No 32-bit libraries are needed: the program is freestanding, and it links against a
/// stand-in `libvulkan.so.1` built here, which gives it the DT_NEEDED entry the host's i386
/// dynamic linker resolves to the real loader at run time.
fn resolve32(manifest_dir: &Path, out_dir: &Path) {
    let source_dir = manifest_dir.join("resolve32");
    println!("cargo:rerun-if-changed={}", source_dir.display());
    println!("cargo:rerun-if-env-changed=CC");
    let output = out_dir.join("resolve32");
    match build_resolve32(&source_dir, out_dir, &output) {
        Ok(()) => {}
        Err(why) if env::var_os("NVBIND_REQUIRE_EBPF").is_some() => {
            panic!("the 32-bit Vulkan resolver was not built: {why}");
        }
        Err(why) => {
            println!("cargo:warning=32-bit Vulkan resolver not built ({why})");
            fs::write(&output, b"").expect("write an empty placeholder resolver");
        }
    }
}

fn build_resolve32(source_dir: &Path, out_dir: &Path, output: &Path) -> Result<(), String> {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    // Freestanding i386 code: no libc headers, start files or libgcc (the 32-bit development
    // packages are not needed), no stack protector (it would need libc's guard).
    let common = [
        "-m32",
        "-O2",
        "-ffreestanding",
        "-fno-builtin",
        "-fno-stack-protector",
        "-fno-asynchronous-unwind-tables",
        "-nostdlib",
        "-Wall",
        "-Wextra",
        "-Werror",
    ];
    let stub_dir = out_dir.join("resolve32-link");
    fs::create_dir_all(&stub_dir).map_err(|e| format!("{}: {e}", stub_dir.display()))?;
    let stub = stub_dir.join("libvulkan.so.1");
    let compile = |args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let out = Command::new(&cc)
            .args(common)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {cc}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        Err(format!("{cc} -m32 failed: {first}"))
    };
    compile(&[
        "-fPIC".as_ref(),
        "-shared".as_ref(),
        "-Wl,-soname,libvulkan.so.1".as_ref(),
        "-o".as_ref(),
        stub.as_os_str(),
        source_dir.join("vulkan_stub.c").as_os_str(),
    ])?;
    compile(&[
        "-fno-pie".as_ref(),
        "-no-pie".as_ref(),
        // Every i386 program's interpreter: a host with a 32-bit runtime has it.
        "-Wl,--dynamic-linker=/lib/ld-linux.so.2".as_ref(),
        "-Wl,-e,_start".as_ref(),
        "-o".as_ref(),
        output.as_os_str(),
        source_dir.join("resolve32.c").as_os_str(),
        stub.as_os_str(),
    ])
}
