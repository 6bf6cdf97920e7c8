//! Helpers for nvbind's root integration tests: locate the binaries xtask built, run the agent,
//! start real workloads under a private Xvfb, read reports.
//!
//! These tests load real eBPF programs into the running kernel. They need root: without it they
//! fail loudly (never skip silently), naming the command that runs them properly.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

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

/// The synthetic game.
/// `promtool` (setup extracts it into `target/tools`; `NVBIND_PROMTOOL` overrides).
pub fn promtool_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NVBIND_PROMTOOL") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/promtool")
}

pub fn game_bin() -> PathBuf {
    bin_from_env("NVBIND_SYNTHETIC_GAME_BIN", "synthetic-game")
}

/// The CPU competitor for contention tests.
pub fn hog_bin() -> PathBuf {
    bin_from_env("NVBIND_CPU_HOG_BIN", "cpu-hog")
}

/// The open-probe helper (opens device nodes from inside a cgroup).
pub fn probe_bin() -> PathBuf {
    bin_from_env("NVBIND_OPEN_PROBE_BIN", "open-probe")
}

/// Pids of running processes with this name (comm).
pub fn pids_named(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim_end() == comm)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the synthetic game whose truth file is `truth` has presented at least `frames`
/// frames, by its own count ([`presents_so_far`]): not a guess from CPU time or start-up time
/// (its first presents can cost far more CPU than later ones while Mesa compiles shaders).
///
/// The deadline only bounds a hang.
pub fn wait_for_presents(truth: &Path, frames: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let presented = presents_so_far(truth);
        if presented >= u64::from(frames) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the game presented {presented} of {frames} frames within 60 s ({})",
            progress_path(truth).display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Write calls an X client makes while starting up, before its first present: vkcube on lavapipe
/// makes about 30 (32 for `vkcube --c 1`, measured with strace), then about 6 per frame (every
/// present flushes the frame to the X server).
pub const X_WRITES_WHILE_PRESENTING: u64 = 300;

/// Waits until the X client `pid` presents frames in a loop: its write calls (the kernel's count,
/// `syscw` in /proc/PID/io) pass [`X_WRITES_WHILE_PRESENTING`], ten times what starting up makes.
/// The deadline only bounds a hang.
pub fn wait_until_presenting(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .unwrap_or_else(|e| panic!("pid {pid} is gone before presenting: {e}"));
        let writes: u64 = io
            .lines()
            .find_map(|l| l.strip_prefix("syscw:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("syscw in /proc/PID/io");
        if writes >= X_WRITES_WHILE_PRESENTING {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} made only {writes} write calls in 60 s: it is not presenting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a process with this name runs; its pid.
pub fn wait_for_process(comm: &str, limit: Duration) -> u32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(pid) = pids_named(comm).first() {
            return *pid;
        }
        assert!(
            Instant::now() < deadline,
            "no process named {comm} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// Runs the agent to completion.
pub fn agent(args: &[&str]) -> Output {
    agent_with_env(args, &[])
}

pub fn agent_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run nvbind-agent")
}

/// Starts the agent in the background.
pub fn spawn_agent(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn nvbind-agent")
}

/// An agent started in the background whose stderr is read as it comes, so that a test can wait
/// for what the agent says (an event) instead of sleeping for a time it guesses.
pub struct WatchedAgent {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl WatchedAgent {
    /// Starts the agent with `RUST_LOG=info` (unless `env` sets it), so it logs its progress.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> WatchedAgent {
        let mut cmd = Command::new(agent_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn nvbind-agent");
        let pipe = child.stderr.take().expect("piped stderr");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().unwrap_or_else(|e| e.into_inner());
                all.push_str(&line);
                all.push('\n');
            }
        });
        WatchedAgent {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the agent has written a line containing `needle`; panics (with what it said)
    /// if it exits first or `limit` passes, which only bounds a hang.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.stderr().lines().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.join_reader();
                if self.stderr().lines().any(|l| l.contains(needle)) {
                    return;
                }
                panic!(
                    "the agent exited ({status}) before saying {needle:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not say {needle:?} within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `probes attached` (record has attached everything and tracks its targets).
    pub fn wait_until_capturing(&mut self) {
        self.wait_for_line("probes attached", Duration::from_secs(60));
    }

    /// Sends a signal (e.g. `libc::SIGINT` to end a recording early).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the agent to exit (killing it past `limit`, and panicking); its exit status and
    /// stderr.
    pub fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the agent did not finish within {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.join_reader();
        (status, self.stderr())
    }
}

impl WatchedAgent {
    /// Lets the stderr reader take the last lines, for a bounded time: a process the agent
    /// launched inherits its stderr and may hold the pipe open after the agent exits.
    fn join_reader(&mut self) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if reader.is_finished() {
            let _ = reader.join();
        }
    }
}

impl Drop for WatchedAgent {
    /// A test that fails midway leaves nothing behind for the next one: the agent is asked to
    /// stop (SIGINT: it ends its capture and the command it launched), killed if it does not.
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Stops a child agent that is still running: SIGINT, then SIGKILL after 10 s.
fn stop_child(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for a child with a deadline, killing it if it overstays.
pub fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("collect output");
    panic!(
        "process did not finish within {limit:?}; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The agent's contract for bad input: exit 1, and one line on stderr that mentions each of
/// `expect`.
pub fn assert_one_line_error(out: &Output, expect: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "agent errors exit 1: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    for word in expect {
        assert!(err.contains(word), "{err:?} should mention {word:?}");
    }
}

/// Reads a JSON report.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The report's entry for the process with the most frames.
pub fn busiest(report: &serde_json::Value) -> &serde_json::Value {
    &report["processes"][0]
}

/// A private X server (Xvfb) for one test, stopped on drop.
pub struct Xvfb {
    child: Child,
    pub display: String,
}

static NEXT_DISPLAY: AtomicU32 = AtomicU32::new(0);

impl Xvfb {
    pub fn start() -> Result<Xvfb> {
        let n = 150 + (std::process::id() % 50) * 10 + NEXT_DISPLAY.fetch_add(1, Ordering::Relaxed);
        let display = format!(":{n}");
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(format!("/tmp/.X{n}-lock"));
        let child = Command::new("Xvfb")
            .args([
                display.as_str(),
                "-screen",
                "0",
                "640x480x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start Xvfb (cargo xtask setup installs it)")?;
        let mut x = Xvfb { child, display };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("Xvfb {} did not start within 10 s", x.display);
            }
            if let Ok(Some(status)) = x.child.try_wait() {
                bail!("Xvfb {} exited: {status}", x.display);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(x)
    }
}

impl Xvfb {
    /// Keeps the X server (every thread of it) on one CPU, away from a competitor a test runs on
    /// another: a client blocked on a server that waits behind the competitor is a different
    /// story (a wait chain) from the one such a test tells.
    pub fn pin_to_cpu(&self, cpu: usize) -> Result<()> {
        let pid = self.child.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("cannot list the threads of Xvfb (pid {pid})"))?;
        for task in tasks {
            let tid = task?.file_name().to_string_lossy().parse::<u32>()?;
            pin_task_to_cpu(tid, cpu)?;
        }
        Ok(())
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM lets Xvfb remove its socket and lock file.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock the kernel's probes stamp events with).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    pin_task_to_cpu(0, cpu)
}

/// Pins task `tid` (0: the calling thread) to one CPU.
fn pin_task_to_cpu(tid: u32, cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu} is out of range");
    }
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it (bounds checked above).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t.
    unsafe {
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid as i32, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin task {tid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Nearest-rank percentile of a sorted slice.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty());
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Parses the per-frame CSV into rows of (column → value).
pub fn read_csv(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("CSV header")
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

/// A GPU fixture host (`tests/fixtures/hosts/<name>`) copied into a temporary directory, with the
/// device nodes its `dev.txt` lists created by `mknod` (git cannot hold device nodes; creating
/// them needs root). Pass its roots to the agent with [`FixtureHost::root_args`].
pub struct FixtureHost {
    pub dir: tempfile::TempDir,
}

impl FixtureHost {
    pub fn new(name: &str) -> FixtureHost {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/hosts")
            .join(name);
        assert!(src.is_dir(), "no fixture host {}", src.display());
        let dir = tempfile::tempdir().expect("tempdir");
        // `cp -a` keeps sysfs's relative symlinks as they are.
        let status = Command::new("cp")
            .arg("-a")
            .arg(src.join("sys"))
            .arg(src.join("proc"))
            .arg(dir.path())
            .status()
            .expect("run cp");
        assert!(status.success(), "copying {} failed", src.display());
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).expect("mkdir dev");
        let listing = std::fs::read_to_string(src.join("dev.txt")).expect("dev.txt");
        for line in listing.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 4, "dev.txt line {line:?}");
            let path = dev.join(f[0]);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            let status = Command::new("mknod")
                .arg(&path)
                .args(&f[1..])
                .status()
                .expect("run mknod");
            assert!(
                status.success(),
                "mknod {} failed (device nodes need root)",
                path.display()
            );
        }
        FixtureHost { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `--sysfs-root … --dev-root … --proc-root …` for the agent.
    pub fn root_args(&self) -> Vec<String> {
        ["sys", "dev", "proc"]
            .iter()
            .zip(["--sysfs-root", "--dev-root", "--proc-root"])
            .flat_map(|(d, flag)| [flag.to_string(), self.path(d).display().to_string()])
            .collect()
    }
}

/// One present of the synthetic game, as the game itself saw it: CLOCK_MONOTONIC read just
/// before and just after the present call. A probe on the call stamps the frame inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentWindow {
    pub before: u64,
    pub after: u64,
}

impl PresentWindow {
    pub fn contains(&self, t: u64) -> bool {
        self.before <= t && t <= self.after
    }
}

/// The synthetic game's ground truth (`--truth FILE`: a line `BEFORE AFTER` per present).
pub fn read_truth(path: &Path) -> Vec<PresentWindow> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("ground truth {}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let mut f = l.split(' ').map(|n| {
                n.parse::<u64>()
                    .unwrap_or_else(|e| panic!("ground truth line {l:?}: {e}"))
            });
            match (f.next(), f.next(), f.next()) {
                (Some(before), Some(after), None) if before <= after => {
                    PresentWindow { before, after }
                }
                _ => panic!("ground truth line {l:?} is not `BEFORE AFTER`"),
            }
        })
        .collect()
}

/// Asserts that every captured present time (CLOCK_MONOTONIC ns, in frame order) lies inside the
/// game's own window for that frame. Exact however slow the machine: the probe fires inside the
/// call, so a time outside the window is a wrong frame, a wrong clock or a shifted stamp.
pub fn assert_within_windows(captured: &[u64], windows: &[PresentWindow]) {
    assert_eq!(
        captured.len(),
        windows.len(),
        "one captured frame per present"
    );
    let outside: Vec<String> = captured
        .iter()
        .zip(windows)
        .enumerate()
        .filter(|(_, (&t, w))| !w.contains(t))
        .map(|(i, (&t, w))| {
            format!(
                "frame {i}: {t} not in [{}, {}] ({:+} ns from the window)",
                w.before,
                w.after,
                if t < w.before {
                    t as i64 - w.before as i64
                } else {
                    t as i64 - w.after as i64
                }
            )
        })
        .collect();
    assert!(
        outside.is_empty(),
        "{} of {} frames stamped outside their present call: {}",
        outside.len(),
        captured.len(),
        outside
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// Bounds, on the game's own clock, of frame `k`'s time (present `k - 1` to present `k`, ms) as a
/// probe at the present call measures it: each present is stamped inside its [before, after]
/// window, so the interval lies within [before(k) − after(k − 1), after(k) − before(k − 1)],
/// however slow or noisy the machine.
pub fn frame_bounds_ms(w: &[PresentWindow], k: usize) -> (f64, f64) {
    let (lo, hi) = frame_bounds_ns(w, k);
    (lo as f64 / 1e6, hi as f64 / 1e6)
}

/// [`frame_bounds_ms`] in nanoseconds.
pub fn frame_bounds_ns(w: &[PresentWindow], k: usize) -> (u64, u64) {
    (
        w[k].before.saturating_sub(w[k - 1].after),
        w[k].after.saturating_sub(w[k - 1].before),
    )
}

/// The game's own pace: its median frame interval by its clock, ms.
pub fn pace_ms(w: &[PresentWindow]) -> f64 {
    let mut intervals: Vec<f64> = w
        .windows(2)
        .map(|p| p[1].before.saturating_sub(p[0].before) as f64 / 1e6)
        .collect();
    intervals.sort_by(f64::total_cmp);
    percentile(&intervals, 0.5)
}

/// What the windows allow for each frame interval (frame `i + 1` took element `i`), in ms,
/// sorted: the shortest (`after` of the earlier present to `before` of the later) and the
/// longest (`before` to `after`). Any frame stamped inside its window has an interval between
/// the two, so any percentile of the true intervals lies between the same percentile of each.
pub fn interval_bounds_ms(windows: &[PresentWindow]) -> (Vec<f64>, Vec<f64>) {
    let (mut shortest, mut longest): (Vec<f64>, Vec<f64>) = (1..windows.len())
        .map(|k| frame_bounds_ms(windows, k))
        .unzip();
    shortest.sort_by(f64::total_cmp);
    longest.sort_by(f64::total_cmp);
    (shortest, longest)
}

/// Asserts that a reported frame-time quantile (ms) is one the game's own windows allow. The
/// report's percentiles come from an HdrHistogram at 3 significant digits (≤ 0.1 % off, rounded
/// up) and may pick a neighbouring rank; nothing else is allowed for.
pub fn assert_quantile_allowed(windows: &[PresentWindow], q: f64, reported_ms: f64, what: &str) {
    let (shortest, longest) = interval_bounds_ms(windows);
    assert!(!shortest.is_empty(), "{what}: fewer than two frames");
    let n = shortest.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    let low = shortest[rank.saturating_sub(1)] * (1.0 - 2e-3);
    let high = longest[(rank + 1).min(n - 1)] * (1.0 + 2e-3);
    assert!(
        (low..=high).contains(&reported_ms),
        "{what}: reported {reported_ms:.4} ms, the game's own present windows allow          [{low:.4}, {high:.4}] ms"
    );
}

/// Asserts that a reported average FPS is one the game's own windows allow: frames − 1 intervals
/// over the span from the first present to the last, each end somewhere inside its window.
pub fn assert_fps_allowed(windows: &[PresentWindow], reported_fps: f64) {
    let (first, last) = (windows[0], windows[windows.len() - 1]);
    let intervals = (windows.len() - 1) as f64;
    let low = intervals / ((last.after - first.before) as f64 / 1e9) * (1.0 - 1e-9);
    let high =
        intervals / ((last.before.saturating_sub(first.after)).max(1) as f64 / 1e9) * (1.0 + 1e-9);
    assert!(
        (low..=high).contains(&reported_fps),
        "fps_avg {reported_fps}: the game's own present windows allow [{low}, {high}]"
    );
}

/// What the kernel counted for a thread or a process (getrusage): the ground truth for the
/// scheduler evidence nvbind reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rusage {
    /// Voluntary context switches (the task blocked or slept).
    pub voluntary: u64,
    /// Involuntary context switches (preempted).
    pub involuntary: u64,
    /// User + system CPU time, ns.
    pub cpu_ns: u64,
}

impl Rusage {
    /// `getrusage(who)` (`RUSAGE_SELF` or `RUSAGE_THREAD`).
    pub fn of(who: libc::c_int) -> Result<Rusage> {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointer.
        if unsafe { libc::getrusage(who, &mut usage) } != 0 {
            bail!("getrusage: {}", std::io::Error::last_os_error());
        }
        let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
        Ok(Rusage {
            voluntary: usage.ru_nvcsw as u64,
            involuntary: usage.ru_nivcsw as u64,
            cpu_ns: ns(usage.ru_utime) + ns(usage.ru_stime),
        })
    }

    /// What was counted since `earlier` (of the same thread or process).
    pub fn since(&self, earlier: &Rusage) -> Rusage {
        Rusage {
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
            cpu_ns: self.cpu_ns.saturating_sub(earlier.cpu_ns),
        }
    }

    /// `VOLUNTARY INVOLUNTARY CPU_NS`.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.voluntary, self.involuntary, self.cpu_ns)
    }

    fn parse(line: &str) -> Option<Rusage> {
        let mut f = line.split(' ').map(|n| n.parse::<u64>().ok());
        match (f.next()??, f.next()??, f.next()??, f.next()) {
            (voluntary, involuntary, cpu_ns, None) => Some(Rusage {
                voluntary,
                involuntary,
                cpu_ns,
            }),
            _ => None,
        }
    }
}

/// The synthetic game's getrusage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GameRusage {
    /// The frame thread's, at the end of the frame loop (its whole life so far: for a thread
    /// that exec'd, also what it did before).
    pub thread: Rusage,
    /// The frame thread's during the frame loop only (from just before its first frame to just
    /// after its last).
    pub frame_loop: Rusage,
    /// The whole process's, just before it exits.
    pub process: Rusage,
}

/// Where the synthetic game writes its getrusage counts (beside its `--truth` file).
pub fn rusage_path(truth: &Path) -> PathBuf {
    let mut name = truth.as_os_str().to_owned();
    name.push(".rusage");
    PathBuf::from(name)
}

/// Where the synthetic game counts its presents as it goes (beside its truth file): 8 bytes, a
/// native-endian u64 in a shared file mapping, updated after every present, so a test can wait
/// for presents that really happened.
pub fn progress_path(truth: &Path) -> PathBuf {
    let mut name = truth.as_os_str().to_owned();
    name.push(".progress");
    PathBuf::from(name)
}

/// The presents the synthetic game with truth file `truth` has made so far (0 before it starts).
pub fn presents_so_far(truth: &Path) -> u64 {
    std::fs::read(progress_path(truth))
        .ok()
        .and_then(|bytes| bytes.get(..8)?.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Reads what the synthetic game wrote to [`rusage_path`].
pub fn read_rusage(truth: &Path) -> GameRusage {
    let path = rusage_path(truth);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("game rusage {}: {e}", path.display()));
    let field = |name: &str| {
        text.lines()
            .find_map(|l| Rusage::parse(l.strip_prefix(name)?.strip_prefix(' ')?))
            .unwrap_or_else(|| panic!("{} has no `{name}` line: {text:?}", path.display()))
    };
    GameRusage {
        thread: field("thread"),
        frame_loop: field("frame_loop"),
        process: field("process"),
    }
}

/// Runs of the scheduler probes the kernel skipped during a capture (the report's
/// `agent.bpf[].recursion_misses` of `nvbind_sched_*`): events nvbind could not see, so counts
/// checked against the kernel's own may fall short by that many.
pub fn skipped_sched_runs(report: &serde_json::Value) -> u64 {
    skipped_runs(report, "nvbind_sched")
}

/// Runs the kernel skipped (the report's `agent.bpf[].recursion_misses`) of the programs whose
/// name starts with `prefix`.
pub fn skipped_runs(report: &serde_json::Value, prefix: &str) -> u64 {
    report["agent"]["bpf"]
        .as_array()
        .expect("agent.bpf")
        .iter()
        .filter(|c| c["program"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|c| c["recursion_misses"].as_u64().expect("recursion_misses"))
        .sum()
}

/// How far a switch count may be from the kernel's own count of `truth`: the scheduler events
/// the kernel skipped (see [`skipped_sched_runs`]), two CPUs updating one thread's record at
/// once (each can lose an increment), and the few switches of start-up and exit around the
/// game's getrusage reads: 5 + 1 %. A real bug (a kind of switch not counted, a thread's counts
/// lost) is far outside it.
pub fn switch_count_slack(truth: u64, report: &serde_json::Value) -> u64 {
    5 + truth / 100 + skipped_sched_runs(report)
}

/// A recording of the synthetic game (see [`record_game`]).
pub struct GameRun {
    /// The report's path (`DIR/report.json`) and its content.
    pub out: PathBuf,
    pub report: serde_json::Value,
    /// The per-frame CSV's rows.
    pub rows: Vec<std::collections::HashMap<String, String>>,
    /// Each present's [before, after] window, in the same order.
    pub windows: Vec<PresentWindow>,
    /// What the kernel counted for the game's frame thread and process.
    pub rusage: GameRusage,
    /// What the agent printed on stderr.
    pub stderr: String,
}

/// `nvbind-agent record --out DIR/report.json --frames-csv DIR/frames.csv AGENT_ARGS --
/// synthetic-game --truth DIR/truth.txt GAME_ARGS`; `during` runs once the game is up (to start
/// a competitor, or change a fixture). Panics unless the recording succeeds.
pub fn record_game(
    dir: &Path,
    agent_args: &[&str],
    game_args: &[&str],
    during: impl FnOnce(),
) -> GameRun {
    let out = dir.join("report.json");
    let csv = dir.join("frames.csv");
    let truth = dir.join("truth.txt");
    let mut args: Vec<String> = vec![
        "record".into(),
        "--out".into(),
        out.display().to_string(),
        "--frames-csv".into(),
        csv.display().to_string(),
    ];
    args.extend(agent_args.iter().map(|s| s.to_string()));
    args.extend([
        "--".to_string(),
        game_bin().display().to_string(),
        "--truth".into(),
        truth.display().to_string(),
    ]);
    args.extend(game_args.iter().map(|s| s.to_string()));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // Stopped (with the game it launched) if the test fails midway; `record`'s own log level.
    let agent = WatchedAgent::spawn(&arg_refs, &[("RUST_LOG", "warn")]);
    wait_for_process("synthetic-game", Duration::from_secs(60));
    during();
    let (status, err) = agent.finish(Duration::from_secs(120));
    assert!(status.success(), "record failed: {err}");
    let windows = read_truth(&truth);
    let rows = read_csv(&csv);
    // Whatever the scenario: a thread is never the one that kept itself off the CPU.
    for row in &rows {
        let (tid, culprit) = (&row["tid"], &row["ran_instead_tid"]);
        assert!(
            culprit == "0" || culprit != tid,
            "a frame blames its own thread for its wait: {row:?}"
        );
    }
    GameRun {
        report: read_json(&out),
        rows,
        windows,
        rusage: read_rusage(&truth),
        stderr: err,
        out,
    }
}

/// A private BPF filesystem, unmounted (with every pin in it) when dropped.
pub struct Bpffs {
    pub dir: tempfile::TempDir,
}

impl Bpffs {
    pub fn mount() -> Bpffs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t bpf failed");
        Bpffs { dir }
    }

    pub fn path(&self) -> String {
        self.dir.path().display().to_string()
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tree {
    V1,
    V2,
}

/// Where this machine mounts the hierarchy (found, not assumed).
pub fn mount_point(tree: Tree) -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read mounts");
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| match tree {
            Tree::V2 => f.get(2) == Some(&"cgroup2"),
            Tree::V1 => f.get(2) == Some(&"cgroup") && f[3].split(',').any(|o| o == "devices"),
        })
        .map(|f| PathBuf::from(f[1]))
        .unwrap_or_else(|| {
            panic!("NOT RUN: no {tree:?} hierarchy mounted here (the binding for it is untested)")
        })
}

/// A fresh cgroup, removed when dropped.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(tree: Tree, name: &str) -> TestCgroup {
        let path = mount_point(tree).join(format!("nvbind-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).expect("mkdir cgroup");
        TestCgroup { path }
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }

    /// What opening each node gives a process inside this cgroup.
    pub fn probe(&self, nodes: &[PathBuf]) -> BTreeMap<String, String> {
        let out = Command::new(probe_bin())
            .arg("--join")
            .arg(self.path.join("cgroup.procs"))
            .args(nodes)
            .output()
            .expect("run open-probe");
        assert!(out.status.success(), "open-probe: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("open-probe prints JSON")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The probes have exited; the kernel may take a moment to notice.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
