//! `cargo xtask test`: fmt, clippy, the build, the unit tests, the DRM checks in the test VM, the
//! root integration tests one file at a time, and a short fuzz run. Every step runs even when an
//! earlier one failed (unless it needs what failed: nothing runs on a failed build), and the run
//! ends with one summary of what failed, so one broken test never hides the state of the others.
//!
//! `--stress` runs the VM and the integration tests with the machine kept busy (a CPU hog on
//! one core at normal priority and a second on the other at the lowest), so that timing
//! assumptions a quiet machine hides show up here rather than in CI.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    fuzz, setup,
    util::{cargo_cmd, display, step, target_dir},
    vm,
};

/// How long `cargo xtask test` fuzzes the gpu_metrics decoder.
const FUZZ_SECONDS_IN_TEST: u64 = 20;

pub struct Options {
    /// Keep both CPUs busy during the VM and the integration tests.
    pub stress: bool,
    /// Extra arguments for each integration-test harness (e.g. a test name filter).
    pub harness_args: Vec<OsString>,
}

/// What one step did.
struct StepResult {
    name: String,
    elapsed: Duration,
    outcome: Outcome,
}

enum Outcome {
    Passed,
    /// Failed; with the failing tests' names where the step ran a test harness.
    Failed {
        why: String,
        tests: Vec<String>,
    },
    NotRun(String),
}

/// Tests counted from the harnesses' `test result:` lines, over the whole run.
#[derive(Default)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

struct Runner {
    results: Vec<StepResult>,
    counts: Counts,
}

impl Runner {
    /// Runs one step, recording its outcome; returns whether it passed.
    fn step(&mut self, name: &str, body: impl FnOnce(&mut Counts) -> StepOutcome) -> bool {
        step(&format!("test: {name}"));
        let start = Instant::now();
        let outcome = match body(&mut self.counts) {
            StepOutcome::Ok => Outcome::Passed,
            StepOutcome::Err(e) => Outcome::Failed {
                why: format!("{e:#}"),
                tests: Vec::new(),
            },
            StepOutcome::TestsFailed(tests) => Outcome::Failed {
                why: "tests failed".into(),
                tests,
            },
        };
        let passed = matches!(outcome, Outcome::Passed);
        self.results.push(StepResult {
            name: name.to_string(),
            elapsed: start.elapsed(),
            outcome,
        });
        passed
    }

    fn not_run(&mut self, name: &str, why: &str) {
        self.results.push(StepResult {
            name: name.to_string(),
            elapsed: Duration::ZERO,
            outcome: Outcome::NotRun(why.to_string()),
        });
    }

    /// Prints the summary; true when everything passed.
    fn summary(&self, total: Duration) -> bool {
        step(&format!("test summary ({})", minutes(total)));
        let mut all_ok = true;
        for r in &self.results {
            match &r.outcome {
                Outcome::Passed => {
                    eprintln!("    ok       {} ({})", r.name, minutes(r.elapsed))
                }
                Outcome::Failed { why, tests } => {
                    all_ok = false;
                    eprintln!("    FAILED   {} ({}): {why}", r.name, minutes(r.elapsed));
                    for t in tests {
                        eprintln!("               {t}");
                    }
                }
                Outcome::NotRun(why) => {
                    all_ok = false;
                    eprintln!("    NOT RUN  {}: {why}", r.name);
                }
            }
        }
        let steps_failed = self
            .results
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Passed))
            .count();
        eprintln!(
            "    {} of {} steps passed",
            self.results.len() - steps_failed,
            self.results.len()
        );
        // The closing line: tests counted over every harness of the run.
        let c = &self.counts;
        let mut line = format!("tests: {} passed, {} failed", c.passed, c.failed);
        if c.ignored > 0 {
            line.push_str(&format!(", {} skipped", c.ignored));
        }
        println!("{line}");
        all_ok
    }
}

enum StepOutcome {
    Ok,
    Err(anyhow::Error),
    TestsFailed(Vec<String>),
}

impl From<Result<()>> for StepOutcome {
    fn from(r: Result<()>) -> StepOutcome {
        match r {
            Ok(()) => StepOutcome::Ok,
            Err(e) => StepOutcome::Err(e),
        }
    }
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{} m {:02} s", s / 60, s % 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Runs a command with inherited stdio; an error unless it exits 0.
fn plain(mut cmd: Command) -> Result<()> {
    crate::util::run(&mut cmd)
}

/// Runs a cargo test command, passing its output through while reading the harness's result
/// lines: the tests that failed, and the counts.
fn harness(mut cmd: Command, counts: &mut Counts) -> StepOutcome {
    let line = display(&cmd);
    eprintln!("    $ {line}");
    let mut child = match cmd.stdout(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => return StepOutcome::Err(anyhow::anyhow!("could not start `{line}`: {e}")),
    };
    let mut failed = Vec::new();
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout().lock();
        for text in BufReader::new(out).lines() {
            let Ok(text) = text else { break };
            let _ = writeln!(stdout, "{text}");
            let _ = stdout.flush();
            if let Some(name) = text
                .strip_prefix("test ")
                .and_then(|t| t.strip_suffix(" ... FAILED"))
            {
                failed.push(name.to_string());
            }
            if let Some(result) = text.strip_prefix("test result: ") {
                add_counts(result, counts);
            }
        }
    }
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return StepOutcome::Err(anyhow::anyhow!("waiting for `{line}`: {e}")),
    };
    if status.success() {
        StepOutcome::Ok
    } else if failed.is_empty() {
        // A build error, a crash of the harness, a timeout: no test named.
        StepOutcome::Err(anyhow::anyhow!("`{line}` failed ({status})"))
    } else {
        StepOutcome::TestsFailed(failed)
    }
}

/// Adds `ok. 10 passed; 1 failed; 2 ignored; …` to the counts.
fn add_counts(result: &str, counts: &mut Counts) {
    for part in result.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => counts.passed += n,
            "failed" => counts.failed += n,
            "ignored" => counts.ignored += n,
            _ => {}
        }
    }
}

/// The integration-test files (`tests/tests/*.rs`), by name, sorted.
fn integration_tests(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("tests/tests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            (path.extension()? == "rs").then_some(())?;
            Some(path.file_stem()?.to_str()?.to_string())
        })
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no integration tests in {}", dir.display());
    }
    Ok(names)
}

pub fn test(root: &Path, options: &Options) -> Result<()> {
    let started = Instant::now();
    let paths = Paths::new(root);
    let mut runner = Runner {
        results: Vec::new(),
        counts: Counts::default(),
    };

    lint(&mut runner, root);
    let built = build(&mut runner, root, &paths);
    runner.step("unit tests", |counts| {
        harness(
            cargo_step(
                root,
                &[
                    "test",
                    "--workspace",
                    "--exclude",
                    "nvbind-tests",
                    "--no-fail-fast",
                ],
            ),
            counts,
        )
    });

    let files = integration_tests(root)?;
    if built {
        root_tests(&mut runner, root, &paths, &files, options);
    } else {
        runner.not_run("DRM checks in the test VM (vkms)", "the build failed");
        for file in &files {
            runner.not_run(&format!("integration tests/{file}.rs"), "the build failed");
        }
    }
    // A short fuzzing run of the one parser fed raw bytes by a driver (the seeds are the fixture
    // blobs, so it starts from every known layout); `cargo xtask fuzz` runs longer.
    runner.step("fuzz gpu_metrics", |_| {
        fuzz::fuzz(root, FUZZ_SECONDS_IN_TEST).into()
    });

    if runner.summary(started.elapsed()) {
        Ok(())
    } else {
        bail!("some test steps failed (summary above)")
    }
}

/// Where the steps find the debug build's binaries and put the VM's console.
struct Paths {
    target: PathBuf,
    debug: PathBuf,
    agent: PathBuf,
    drm_client: PathBuf,
    vm_console: PathBuf,
    compositor_console: PathBuf,
}

impl Paths {
    fn new(root: &Path) -> Paths {
        let target = target_dir(root);
        let debug = target.join("debug");
        Paths {
            agent: debug.join("nvbind-agent"),
            drm_client: debug.join("drm-sequence"),
            vm_console: target.join("xtask-test/drm-vm-console.txt"),
            compositor_console: target.join("xtask-test/compositor-vm-console.txt"),
            debug,
            target,
        }
    }
}

/// A cargo command for a step. Every cargo step sets NVBIND_REQUIRE_EBPF the same way: the
/// agent's build script reruns whenever it changes, so mixing would rebuild the agent between
/// steps.
fn cargo_step(root: &Path, args: &[&str]) -> Command {
    let mut c = cargo_cmd(root);
    c.args(args).env("NVBIND_REQUIRE_EBPF", "1");
    c
}

/// The fmt and clippy steps.
fn lint(runner: &mut Runner, root: &Path) {
    runner.step("fmt", |_| {
        plain(cargo_step(root, &["fmt", "--all", "--check"])).into()
    });
    runner.step("clippy", |_| {
        plain(cargo_step(
            root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ))
        .into()
    });
}

/// The build step: the agent and the tests' binaries. True when it passed and both binaries the
/// later steps run are there.
fn build(runner: &mut Runner, root: &Path, paths: &Paths) -> bool {
    runner.step("build", |_| {
        let r = plain(cargo_step(
            root,
            &[
                "build",
                "-p",
                "nvbind-agent",
                "-p",
                "nvbind-tests",
                "--bins",
            ],
        ));
        match r {
            Ok(()) => [&paths.agent, &paths.drm_client]
                .iter()
                .find(|b| !b.exists())
                .map_or(StepOutcome::Ok, |missing| {
                    StepOutcome::Err(anyhow::anyhow!("{} was not built", missing.display()))
                }),
            Err(e) => StepOutcome::Err(e),
        }
    })
}

/// The steps that need the built binaries and root: the DRM checks in the test VM, then each
/// integration-test file, under the stress mode's load when asked for.
fn root_tests(
    runner: &mut Runner,
    root: &Path,
    paths: &Paths,
    files: &[String],
    options: &Options,
) {
    let hogs = options.stress.then(CpuHogs::start);
    // The DRM checks run in the test VM (this kernel has no DRM); tests/drm_vm.rs reads the
    // console this run saved, marked with this run's id: a console left by `cargo xtask vm`
    // or by an earlier run is never taken for this one's.
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let _ = std::fs::remove_file(&paths.vm_console);
    runner.step("DRM checks in the test VM (vkms)", |_| {
        drm_vm(
            &paths.target,
            &paths.agent,
            &paths.drm_client,
            &run_id,
            &paths.vm_console,
        )
        .into()
    });
    let _ = std::fs::remove_file(&paths.compositor_console);
    runner.step("compositor checks in the test VM (Weston)", |_| {
        compositor_vm(
            &paths.target,
            &paths.agent,
            &paths.debug.join("wl-feedback"),
            &run_id,
            &paths.compositor_console,
        )
        .into()
    });
    for file in files {
        let name = format!("integration tests/{file}.rs");
        runner.step(&name, |counts| {
            let mut c = cargo_step(root, &["test", "-p", "nvbind-tests", "--test", file]);
            c.args(["--", "--test-threads=1"])
                .args(&options.harness_args)
                .env("NVBIND_AGENT_BIN", &paths.agent)
                .env(
                    "NVBIND_SYNTHETIC_GAME_BIN",
                    paths.debug.join("synthetic-game"),
                )
                .env("NVBIND_CPU_HOG_BIN", paths.debug.join("cpu-hog"))
                .env("NVBIND_TICK_BIN", paths.debug.join("tick"))
                .env("NVBIND_OPEN_PROBE_BIN", paths.debug.join("open-probe"))
                .env("NVBIND_XVFB", "1")
                .env("NVBIND_VM_CONSOLE", &paths.vm_console)
                .env("NVBIND_COMPOSITOR_CONSOLE", &paths.compositor_console)
                .env("NVBIND_VM_RUN_ID", &run_id)
                .env("NVBIND_I386_SYSROOT", crate::i386::sysroot(&paths.target));
            match (setup::promtool_path(), setup::prometheus_path()) {
                (Ok(p), Ok(server)) => {
                    c.env("NVBIND_PROMTOOL", p).env("NVBIND_PROMETHEUS", server);
                }
                (Err(e), _) | (_, Err(e)) => return StepOutcome::Err(e),
            }
            harness(c, counts)
        });
    }
    drop(hogs);
}

/// Boots the test VM with the DRM checks, saving its console (marked with `run_id`) where
/// `tests/drm_vm.rs` reads it.
fn drm_vm(
    target: &Path,
    agent: &Path,
    drm_client: &Path,
    run_id: &str,
    console_out: &Path,
) -> Result<()> {
    let script = format!(
        "{}\necho '==BEGIN run-id=='; echo '{run_id}'; echo '==END run-id=='\n{}",
        "#!/bin/sh",
        vm::DRM_TEST_SCRIPT
            .strip_prefix("#!/bin/sh\n")
            .unwrap_or(vm::DRM_TEST_SCRIPT)
    );
    let console = vm::run_script(target, agent, &[drm_client.to_path_buf()], &script)?;
    save_console(&console, console_out)
}

/// Boots the test VM with the host's root (Weston, Mesa) and the compositor checks, saving its
/// console (marked with `run_id`) where `tests/compositor_vm.rs` reads it.
fn compositor_vm(
    target: &Path,
    agent: &Path,
    client: &Path,
    run_id: &str,
    console_out: &Path,
) -> Result<()> {
    let checks = vm::compositor_script(client)?;
    let script = format!(
        "#!/bin/sh\necho '==BEGIN run-id=='; echo '{run_id}'; echo '==END run-id=='\n{}",
        checks.strip_prefix("#!/bin/sh\n").unwrap_or(&checks)
    );
    let console = vm::run_host_root_script(target, agent, &script)?;
    save_console(&console, console_out)
}

/// Writes a VM's console whole under another name, then renames it: the tests never read half
/// a console.
fn save_console(console: &str, console_out: &Path) -> Result<()> {
    if let Some(dir) = console_out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let partial = PathBuf::from(format!("{}.partial", console_out.display()));
    std::fs::write(&partial, console).with_context(|| format!("write {}", partial.display()))?;
    std::fs::rename(&partial, console_out)
        .with_context(|| format!("rename to {}", console_out.display()))?;
    Ok(())
}

/// The stress mode's load: one busy thread pinned to each CPU, the first at normal priority and
/// the others at the lowest (nice 19). Threads of this process, so they end with it whatever
/// happens; stopped when dropped.
struct CpuHogs {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHogs {
    fn start() -> CpuHogs {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|cpu| {
                let stop = stop.clone();
                let nice = if cpu == 0 { 0 } else { 19 };
                std::thread::spawn(move || hog(cpu, nice, &stop))
            })
            .collect();
        step(&format!(
            "stress: a CPU hog on CPU 0 (nice 0) and on CPUs 1..{cpus} (nice 19)"
        ));
        CpuHogs { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        step("stress: CPU hogs stopped");
    }
}

fn hog(cpu: usize, nice: i32, stop: &AtomicBool) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it (cpu < CPU_SETSIZE checked);
    // sched_setaffinity and setpriority act on the calling thread only (tid 0 / gettid).
    unsafe {
        if cpu < libc::CPU_SETSIZE as usize {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                eprintln!(
                    "warning: stress hog cannot pin to CPU {cpu}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let tid = libc::gettid() as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, nice) != 0 {
            eprintln!(
                "warning: stress hog cannot set nice {nice}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let mut x: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..100_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_add_up() {
        let mut counts = Counts::default();
        add_counts(
            "ok. 10 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.23s",
            &mut counts,
        );
        add_counts(
            "FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 14.26s",
            &mut counts,
        );
        assert_eq!((counts.passed, counts.failed, counts.ignored), (13, 1, 2));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(minutes(Duration::from_millis(2_340)), "2.3 s");
        assert_eq!(minutes(Duration::from_secs(605)), "10 m 05 s");
    }
}
