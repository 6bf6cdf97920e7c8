//! Project tasks: `cargo xtask <setup|build|run|test|bench|vm|fuzz>`.

mod bench;
mod demo;
mod fuzz;
mod setup;
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
    /// Install what building and testing need (Debian packages, bpf-linker, tracefs). Idempotent.
    Setup {
        /// Also install the benchmark peers (bpftrace, bcc, stress-ng, perf, MangoHud).
        #[arg(long)]
        bench: bool,
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
    /// Setup, then fmt, clippy, build, unit tests, the root integration tests and a short fuzz run.
    Test {
        /// Extra arguments for the integration-test harness (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Setup with the bench peers, build, then measure the capture pipeline's cost, the GPU
    /// sampler's and device binding's (BENCHMARKS.md).
    Bench {
        /// Run only these parts (repeatable); all of them by default.
        #[arg(long, value_enum)]
        only: Vec<bench::Part>,
    },
    /// Build (once; cached under target/vm) a test VM with a virtual DRM display, boot it with the
    /// release agent and a test script (the DRM checks of `cargo xtask test` by default), print
    /// its console.
    Vm {
        /// A shell script to run inside the VM instead (as /test.sh; the agent is /nvbind-agent).
        #[arg(long)]
        script: Option<PathBuf>,
    },
    /// Fuzz the gpu_metrics decoder with cargo-fuzz (installed if missing) for SECONDS.
    Fuzz {
        #[arg(long, default_value_t = 120)]
        seconds: u64,
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
        Cmd::Setup { bench } => setup::setup(bench)?,
        Cmd::Build => {
            setup::setup(false)?;
            let agent = build(&root)?;
            println!("{}", agent.display());
        }
        Cmd::Run { args } => {
            setup::setup(false)?;
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
        Cmd::Test { args } => {
            if !util::is_root() {
                bail!("the integration tests load eBPF programs: run as root");
            }
            setup::setup(false)?;
            test(&root, &args)?;
        }
        Cmd::Bench { only } => {
            if !util::is_root() {
                bail!("the benchmarks load eBPF programs: run as root");
            }
            setup::setup(true)?;
            let agent = build(&root)?;
            bench::bench(&root, &agent, &target_dir(&root), &only)?;
        }
        Cmd::Vm { script } => {
            if !util::is_root() {
                bail!("building the VM installs packages: run as root");
            }
            setup::setup(false)?;
            let agent = build(&root)?;
            let clients = build_vm_clients(&root)?;
            let text = match script {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("read {}", path.display()))?,
                None => vm::DRM_TEST_SCRIPT.to_string(),
            };
            let console = vm::run_script(&target_dir(&root), &agent, &clients, &text)?;
            print!("{console}");
        }
        Cmd::Fuzz { seconds } => fuzz::fuzz(&root, seconds)?,
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

/// The test clients the VM's script runs besides the distribution's (`drm-sequence`), release
/// builds.
fn build_vm_clients(root: &Path) -> Result<Vec<PathBuf>> {
    step("build the VM's test clients (release)");
    run(cargo_cmd(root).args([
        "build",
        "--release",
        "-p",
        "nvbind-tests",
        "--bin",
        "drm-sequence",
    ]))?;
    Ok(vec![target_dir(root).join("release/drm-sequence")])
}

/// How long `cargo xtask test` fuzzes the gpu_metrics decoder.
const FUZZ_SECONDS_IN_TEST: u64 = 20;

fn test(root: &Path, extra: &[OsString]) -> Result<()> {
    let debug = target_dir(root).join("debug");
    let agent = debug.join("nvbind-agent");
    let game = debug.join("synthetic-game");
    let hog = debug.join("cpu-hog");
    let probe = debug.join("open-probe");
    let drm_client = debug.join("drm-sequence");

    // Every cargo step sets NVBIND_REQUIRE_EBPF the same way: the agent's build script reruns
    // whenever it changes, so mixing would rebuild the agent between steps.
    let steps: [(&str, Command); 5] = [
        ("fmt", {
            let mut c = cargo_cmd(root);
            c.args(["fmt", "--all", "--check"]);
            c
        }),
        ("clippy", {
            let mut c = cargo_cmd(root);
            c.args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .env("NVBIND_REQUIRE_EBPF", "1");
            c
        }),
        ("build", {
            let mut c = cargo_cmd(root);
            c.args([
                "build",
                "-p",
                "nvbind-agent",
                "-p",
                "nvbind-tests",
                "--bins",
            ])
            .env("NVBIND_REQUIRE_EBPF", "1");
            c
        }),
        ("unit tests", {
            let mut c = cargo_cmd(root);
            c.args(["test", "--workspace", "--exclude", "nvbind-tests"])
                .env("NVBIND_REQUIRE_EBPF", "1");
            c
        }),
        ("integration tests", {
            let mut c = cargo_cmd(root);
            c.args(["test", "-p", "nvbind-tests", "--", "--test-threads=1"])
                .args(extra)
                .env("NVBIND_AGENT_BIN", &agent)
                .env("NVBIND_SYNTHETIC_GAME_BIN", &game)
                .env("NVBIND_CPU_HOG_BIN", &hog)
                .env("NVBIND_OPEN_PROBE_BIN", &probe)
                .env("NVBIND_XVFB", "1")
                .env("NVBIND_PROMTOOL", setup::promtool_path()?)
                .env("NVBIND_VM_CONSOLE", vm::console_path(&target_dir(root)))
                .env("NVBIND_REQUIRE_EBPF", "1");
            c
        }),
    ];

    let total = steps.len();
    for (i, (name, mut cmd)) in steps.into_iter().enumerate() {
        step(&format!("test {}/{total}: {name}", i + 1));
        if name == "integration tests" {
            for bin in [&agent, &game, &hog, &drm_client] {
                if !bin.exists() {
                    bail!("test step `{name}`: {} was not built", bin.display());
                }
            }
            // The DRM checks run in the test VM (this kernel has no DRM); tests/drm_vm.rs reads
            // the console. A stale console from an earlier run must not pass for this one.
            let console = vm::console_path(&target_dir(root));
            let _ = std::fs::remove_file(&console);
            step("test: the DRM checks in the test VM (vkms)");
            vm::run_script(
                &target_dir(root),
                &agent,
                std::slice::from_ref(&drm_client),
                vm::DRM_TEST_SCRIPT,
            )
            .context("test step `DRM VM` failed")?;
        }
        run(&mut cmd).with_context(|| format!("test step `{name}` failed"))?;
    }
    // A short fuzzing run of the one parser fed raw bytes by a driver (the seeds are the fixture
    // blobs, so it starts from every known layout); `cargo xtask fuzz` runs longer.
    step(&format!(
        "test {}/{}: fuzz gpu_metrics",
        total + 1,
        total + 1
    ));
    fuzz::fuzz(root, FUZZ_SECONDS_IN_TEST).context("test step `fuzz` failed")?;
    let total = total + 1;
    eprintln!("==> all {total} test steps passed");
    Ok(())
}
