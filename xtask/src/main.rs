//! Project tasks: `cargo xtask <setup|build|run|test|bench|vm|fuzz|package|install|uninstall>`.

mod bench;
mod demo;
mod dist;
mod fuzz;
mod i386;
mod packages;
mod setup;
mod test;
mod util;
mod vm;

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use util::{cargo_cmd, run, step, target_dir, workspace_root};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "nvbind project tasks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a task needs (Debian packages, bpf-linker, tracefs, the test VM). Idempotent;
    /// `run`, `test` and `bench` do it themselves.
    Setup {
        /// For which task: build < run < test < bench, each adding to the one before.
        #[arg(long = "for", value_enum, default_value = "test")]
        need: setup::Need,
    },
    /// Setup, then build the release agent (with its eBPF object).
    Build,
    /// Setup, build, then run the agent: with ARGS as given, without ARGS its main job
    /// (doctor, then record vkcube under Xvfb for 10 s and summarize the report).
    Run {
        /// Arguments for nvbind-agent.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Setup, then fmt, clippy, build, unit tests, the DRM checks in the test VM, the root
    /// integration tests and a short fuzz run; every step runs even when one fails, and a
    /// summary of what failed ends the run.
    Test {
        /// Keep the machine busy meanwhile (a CPU hog per core, one at normal priority, the
        /// others at nice 19): flakes show up here rather than in CI. Not part of CI.
        #[arg(long)]
        stress: bool,
        /// Extra arguments for each integration-test harness (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Setup with the bench peers, build, then measure the capture pipeline's cost, the GPU
    /// sampler's and device binding's (BENCHMARKS.md).
    Bench {
        /// Run only these parts (repeatable); all of them by default.
        #[arg(long, value_enum)]
        only: Vec<bench::Part>,
        /// How long `--only soak` runs, in minutes.
        #[arg(long, default_value_t = 30)]
        soak_minutes: u64,
    },
    /// Build (once; cached under target/vm) a test VM with a virtual DRM display, boot it with the
    /// release agent and a test script (the DRM checks of `cargo xtask test` by default), print
    /// its console.
    Vm {
        /// A shell script to run inside the VM instead (as /test.sh; the agent is /nvbind-agent).
        #[arg(long)]
        script: Option<PathBuf>,
        /// Share the host's root with the guest (read-only, virtio-9p) and run the script
        /// chrooted there, with the agent as /tmp/nvbind-agent: a real graphics stack (Weston on
        /// vkms) instead of the small image. Without --script: the compositor checks of
        /// `cargo xtask test` (with a release `wl-feedback`).
        #[arg(long)]
        host_root: bool,
    },
    /// Fuzz the gpu_metrics decoder with cargo-fuzz (installed if missing) for SECONDS.
    Fuzz {
        #[arg(long, default_value_t = 120)]
        seconds: u64,
    },
    /// Setup, build the release agent, and package it as a Debian package (.deb) in
    /// target/package/.
    Package {
        /// Package this agent binary instead of building the release one.
        #[arg(long, value_name = "FILE")]
        binary: Option<PathBuf>,
        /// The package's version (default: the workspace's).
        #[arg(long)]
        version: Option<String>,
        /// Where to write the .deb.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Setup, build the release agent, and install it from source: the binary, the systemd
    /// unit, the example config (when there is none), man pages and completions under PREFIX,
    /// the `nvbind` group and the reports directory.
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Install this agent binary instead of building the release one.
        #[arg(long, value_name = "FILE")]
        binary: Option<PathBuf>,
    },
    /// Remove what `install` put under PREFIX (the config, the reports and the bindings stay).
    Uninstall {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<ExitCode> {
    let root = workspace_root()?;
    match cmd {
        Cmd::Setup { need } => setup::setup(need)?,
        Cmd::Build => {
            setup::setup(setup::Need::Build)?;
            let agent = build(&root)?;
            println!("{}", agent.display());
        }
        Cmd::Run { args } => {
            setup::setup(setup::Need::Run)?;
            let agent = build(&root)?;
            if args.is_empty() {
                demo::main_job(&root, &agent)?;
            } else {
                step("nvbind-agent");
                let mut cmd = Command::new(&agent);
                cmd.args(&args).current_dir(&root);
                let line = util::display(&cmd);
                eprintln!("    $ {line}");
                // exec only returns on failure; on success the agent's exit code is ours.
                let err = cmd.exec();
                return Err(err).with_context(|| format!("could not exec `{line}`"));
            }
        }
        Cmd::Test { stress, args } => {
            if !util::is_root() {
                bail!("the integration tests load eBPF programs: run as root");
            }
            // A fresh clone's test build, VM and fixtures take about 6 GiB under target/ (xtask's
            // own build is there already, so look for the agent's); a warm one adds incremental
            // state and the run's own files.
            let target = target_dir(&root);
            let warm = target.join("debug/nvbind-agent").is_file();
            let need_gib = if warm { 3 } else { 8 };
            util::ensure_free_space(&target, need_gib << 30, "`cargo xtask test`")?;
            setup::setup(setup::Need::Test)?;
            test::test(
                &root,
                &test::Options {
                    stress,
                    harness_args: args,
                },
            )?;
        }
        Cmd::Bench { only, soak_minutes } => {
            if !util::is_root() {
                bail!("the benchmarks load eBPF programs: run as root");
            }
            setup::setup(setup::Need::Bench)?;
            let agent = build(&root)?;
            bench::bench(&root, &agent, &target_dir(&root), &only, soak_minutes)?;
        }
        Cmd::Vm { script, host_root } => {
            if !util::is_root() {
                bail!("building the VM installs packages: run as root");
            }
            // The VM's own packages and build are its preparation's (vm::run_script).
            setup::setup(setup::Need::Build)?;
            let agent = build(&root)?;
            let text = match script {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("read {}", path.display()))?,
                ),
                None => None,
            };
            let console = if host_root {
                packages::debian_packages(vm::DESKTOP_PACKAGES)?;
                let text = match text {
                    Some(text) => text,
                    None => {
                        let client = build_vm_client(&root, "wl-feedback")?;
                        vm::compositor_script(&client)?
                    }
                };
                vm::run_host_root_script(&target_dir(&root), &agent, &text)?
            } else {
                let clients = vec![build_vm_client(&root, "drm-sequence")?];
                let text = text.unwrap_or_else(|| vm::DRM_TEST_SCRIPT.to_string());
                vm::run_script(&target_dir(&root), &agent, &clients, &text)?
            };
            print!("{console}");
        }
        Cmd::Fuzz { seconds } => fuzz::fuzz(&root, seconds)?,
        Cmd::Package {
            binary,
            version,
            out,
        } => {
            if !util::is_root() {
                bail!("packaging installs Debian packages (dpkg-dev, lintian): run as root");
            }
            setup::setup(setup::Need::Build)?;
            let binary = match binary {
                Some(binary) => binary,
                None => build(&root)?,
            };
            let out = out.unwrap_or_else(|| target_dir(&root).join("package"));
            std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
            let deb = dist::package(
                &root,
                &dist::PackageOptions {
                    binary,
                    version: version.unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
                    out,
                },
            )?;
            println!("{}", deb.display());
        }
        Cmd::Install { prefix, binary } => {
            if !util::is_root() {
                bail!(
                    "installing writes under {} and /etc: run as root",
                    prefix.display()
                );
            }
            let binary = match binary {
                Some(binary) => binary,
                None => {
                    setup::setup(setup::Need::Build)?;
                    build(&root)?
                }
            };
            dist::install(&root, &binary, &prefix)?;
        }
        Cmd::Uninstall { prefix } => {
            if !util::is_root() {
                bail!(
                    "uninstalling removes files under {}: run as root",
                    prefix.display()
                );
            }
            dist::uninstall(&prefix)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the release agent; returns the path of its binary.
fn build(root: &Path) -> Result<PathBuf> {
    step("build nvbind-agent (release)");
    run(cargo_cmd(root)
        .args(["build", "--release", "-p", "nvbind-agent"])
        .env("NVBIND_REQUIRE_EBPF", "1"))?;
    let agent = target_dir(root).join("release/nvbind-agent");
    if !agent.exists() {
        bail!(
            "cargo built nvbind-agent but {} does not exist",
            agent.display()
        );
    }
    Ok(agent)
}

/// A test client the VM's script runs (tests/src/bin: `drm-sequence` for the DRM checks,
/// `wl-feedback` for the compositor's), a release build.
fn build_vm_client(root: &Path, name: &str) -> Result<PathBuf> {
    step(&format!("build the VM's test client {name} (release)"));
    run(cargo_cmd(root).args(["build", "--release", "-p", "nvbind-tests", "--bin", name]))?;
    Ok(target_dir(root).join("release").join(name))
}
