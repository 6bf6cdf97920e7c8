//! A daemon of the tests' own (config, reports directory, socket and log in a temporary
//! directory) and the games they start: shared by every test of the daemon and its faces
//! (`top`, the dashboard page). Every daemon tracks every process that presents, so tests that
//! start one hold [`serial`] first.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{agent_bin, game_bin, monotonic_ns, read_json, Bpffs, FixtureHost};

/// One daemon at a time: each would track the others' games.
pub static ONE_DAEMON: Mutex<()> = Mutex::new(());

/// How long a wait for something the daemon or a game must do may take before the test calls it
/// a hang. Only a hang reaches it: a slow machine is slow, not broken.
pub const HANG: Duration = Duration::from_secs(60);

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_DAEMON.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running daemon with its own config, reports directory, socket and log.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl Daemon {
    /// Starts the daemon with `extra` appended to a config that sets its port, socket and
    /// reports directory, and waits until its API answers.
    pub fn start(extra: &str) -> Daemon {
        let port = free_port();
        Daemon::start_with(
            &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"),
            port,
            extra,
        )
    }

    pub fn start_with(api: &str, port: u16, extra: &str) -> Daemon {
        Daemon::start_prepared(api, port, extra, |_| {})
    }

    /// As `start_with`, with `prepare` called on the reports directory's path first (it does not
    /// exist yet).
    pub fn start_prepared(
        api: &str,
        port: u16,
        extra: &str,
        prepare: impl FnOnce(&Path),
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(&dir.path().join("reports"));
        let config = format!(
            "{api}socket = \"{}\"\n\n{extra}\n",
            dir.path().join("agent.sock").display()
        );
        fs::write(dir.path().join("agent.toml"), config).expect("write config");
        let reports = dir.path().join("reports");
        let log = fs::File::create(dir.path().join("agent.log")).expect("log file");
        let child = Command::new(agent_bin())
            .arg("--config")
            .arg(dir.path().join("agent.toml"))
            .arg("--reports-dir")
            .arg(&reports)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the daemon");
        let mut d = Daemon {
            child: Some(child),
            dir,
            port,
        };
        d.wait_until_serving();
        d
    }

    pub fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the daemon exited ({status}): {}", self.log());
                }
            }
            if self
                .log()
                .contains("tracking every process that presents frames")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the daemon did not start within 90 s: {}", self.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn reports(&self) -> PathBuf {
        self.dir.path().join("reports")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon runs").id()
    }

    /// Sets the daemon's fd limit (soft and hard), as systemd's default (1024) would: a test of
    /// fd exhaustion must not pass because this machine allows more.
    pub fn pin_fd_limit(&self, limit: u64) {
        let rlimit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: prlimit reads a valid rlimit; the old limit is not asked for.
        let rc = unsafe {
            libc::prlimit(
                self.pid() as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &rlimit,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// How many fds the daemon holds.
    pub fn open_fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("the daemon's fds")
            .count()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Waits until the daemon's log says `needle` (the daemon logs each thing it did).
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + HANG;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the daemon's log did not say {needle:?} within {HANG:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (status, body) of a GET.
    pub fn get(&self, path: &str) -> (u16, String) {
        curl(&[&self.url(path)])
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// GET /api/processes/{pid}, bracketed by the clock: (read before the request, read after
    /// the answer, the view; None once the daemon no longer tracks `pid`).
    pub fn timed_view(&self, pid: u32) -> (u64, u64, Option<Value>) {
        let before = monotonic_ns();
        let (status, body) = self.get(&format!("/api/processes/{pid}"));
        let after = monotonic_ns();
        let view = match status {
            200 => Some(serde_json::from_str(&body).expect("JSON")),
            404 => None,
            _ => panic!("GET /api/processes/{pid}: {status} {body}"),
        };
        (before, after, view)
    }

    /// Polls the view of `pid` until `done` holds for it; returns that view.
    pub fn wait_for_view(&self, pid: u32, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + HANG;
        loop {
            let (status, body) = self.get(&format!("/api/processes/{pid}"));
            assert_eq!(status, 200, "pid {pid} is no longer tracked: {body}");
            let view: Value = serde_json::from_str(&body).expect("JSON");
            if done(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid}: no {what} within {HANG:?}: {view}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
    }

    /// SIGTERM, and the daemon's exit (its files stay until it is dropped).
    pub fn stop(&mut self) -> (std::process::ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "SIGTERM did not stop the daemon: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The session reports written so far, oldest first (names sort by start time).
    pub fn report_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.reports())
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files.sort();
        files
    }

    /// Waits for the report of `pid` (written atomically, after its per-frame logs).
    pub fn wait_for_report(&self, pid: u32) -> (PathBuf, Value) {
        let deadline = Instant::now() + HANG;
        while Instant::now() < deadline {
            for path in self.report_files() {
                if path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.ends_with(&format!("-{pid}")))
                {
                    return (path.clone(), read_json(&path));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no session report for pid {pid} within {HANG:?}: {}",
            self.log()
        );
    }

    /// Waits until the API tracks `pid`, and returns its view.
    pub fn wait_until_tracked(&self, pid: u32) -> Value {
        let deadline = Instant::now() + HANG;
        while Instant::now() < deadline {
            let (status, body) = self.get(&format!("/api/processes/{pid}"));
            if status == 200 {
                return serde_json::from_str(&body).expect("JSON");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("pid {pid} was not tracked within {HANG:?}: {}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// curl's (status, body) for one request; `args` end with the URL.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "60",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .expect("run curl (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// A game (or any workload) the test started: killed and reaped when dropped, so a test that
/// fails leaves nothing presenting into the next test's daemon.
pub struct Game {
    pub child: Option<Child>,
    pub pid: u32,
}

impl Game {
    pub fn new(child: Child) -> Game {
        Game {
            pid: child.id(),
            child: Some(child),
        }
    }

    pub fn signal(&mut self, signal: i32) {
        if !self.exited() {
            // SAFETY: signalling our own child, not reaped (so the pid is still its own).
            unsafe { libc::kill(self.pid as i32, signal) };
        }
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_some(),
            None => true,
        }
    }

    /// Waits for it to end by itself.
    pub fn wait_exit(&mut self) {
        let deadline = Instant::now() + HANG;
        while !self.exited() {
            assert!(
                Instant::now() < deadline,
                "pid {} did not finish within {HANG:?}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = None;
    }

    /// Ends it now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Game {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The synthetic game presenting `frames` frames every `interval_ms` (more arguments in
/// `extra`), its ground truth in `dir`.
pub fn start_game_with(dir: &Path, frames: u32, interval_ms: f64, extra: &[&str]) -> Game {
    Game::new(
        Command::new(game_bin())
            .args([
                "--frames",
                &frames.to_string(),
                "--interval-ms",
                &interval_ms.to_string(),
            ])
            .args(extra)
            .arg("--truth")
            .arg(dir.join("truth.txt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the synthetic game"),
    )
}

pub fn start_game(dir: &Path, frames: u32, interval_ms: f64) -> Game {
    start_game_with(dir, frames, interval_ms, &[])
}

/// Frames enough that a game outlives any test (it is killed when the test is done with it).
pub const FOREVER: u32 = 1_000_000;

/// The daemon's configuration for a fixture host's GPUs and a private bpffs (lines of its
/// `[api]` section, then `[gpu]`).
pub fn fixture_gpu_config(host: &FixtureHost, bpffs: &Bpffs) -> String {
    format!(
        "bpffs = \"{}\"\n\n[gpu]\nsysfs_root = \"{}\"\ndev_root = \"{}\"\nproc_root = \"{}\"\n",
        bpffs.path(),
        host.path("sys").display(),
        host.path("dev").display(),
        host.path("proc").display()
    )
}

/// The fixture host with an NVIDIA and an AMD card, the AMD card awake: it sleeps
/// (runtime-suspended, so it is not read) until woken.
pub fn awake_mixed_fixture_host() -> FixtureHost {
    let host = FixtureHost::new("mixed-nvidia-amd");
    fs::write(
        host.path("sys/bus/pci/devices/0000:0c:00.0/power/runtime_status"),
        "active\n",
    )
    .expect("wake the fixture's AMD card");
    host
}
