//! The daemon for real: `nvbind-agent` with no command, loading the real probes in discovery
//! mode, with games started after it (the synthetic game, vkcube under Xvfb). Its API is checked
//! with real, independent clients: curl for HTTP (50 at once), tokio-tungstenite for WebSocket,
//! promtool for `/metrics`.
//!
//! Every daemon tracks every process that presents, so the tests in this file run one at a time.

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use nvbind_tests::{
    agent, assert_one_line_error, game_bin, mount_point, require_root, Bpffs, FixtureHost,
    TestCgroup, Tree, Xvfb,
};
use serde_json::Value;

/// One daemon at a time: each would track the others' games.
static ONE_DAEMON: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_DAEMON.lock().unwrap_or_else(|p| p.into_inner())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running daemon with its own config, reports directory, socket and log.
struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Daemon {
    /// Starts the daemon with `extra` appended to a config that sets its port, socket and
    /// reports directory, and waits until its API answers.
    fn start(extra: &str) -> Daemon {
        let port = free_port();
        Daemon::start_with(
            &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"),
            port,
            extra,
        )
    }

    fn start_with(api: &str, port: u16, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "{api}socket = \"{}\"\n\n{extra}\n",
            dir.path().join("agent.sock").display()
        );
        fs::write(dir.path().join("agent.toml"), config).expect("write config");
        let reports = dir.path().join("reports");
        let log = fs::File::create(dir.path().join("agent.log")).expect("log file");
        let child = Command::new(nvbind_tests::agent_bin())
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

    fn wait_until_serving(&mut self) {
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

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn reports(&self) -> PathBuf {
        self.dir.path().join("reports")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// (status, body) of a GET.
    fn get(&self, path: &str) -> (u16, String) {
        curl(&[&self.url(path)])
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
    }

    /// SIGTERM, and the daemon's exit (its files stay until it is dropped).
    fn stop(&mut self) -> (std::process::ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
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
    fn report_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.reports())
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files.sort();
        files
    }

    /// Waits for the report of `pid`.
    fn wait_for_report(&self, pid: u32) -> (PathBuf, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for path in self.report_files() {
                if path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.ends_with(&format!("-{pid}")))
                {
                    return (path.clone(), nvbind_tests::read_json(&path));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "no session report for pid {pid} within 30 s: {}",
            self.log()
        );
    }

    /// Waits until the API tracks `pid`, and returns its view.
    fn wait_until_tracked(&self, pid: u32) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let (status, body) = self.get(&format!("/api/processes/{pid}"));
            if status == 200 {
                return serde_json::from_str(&body).expect("JSON");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("pid {pid} was not tracked within 30 s: {}", self.log());
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
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "10",
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

/// The synthetic game presenting `frames` frames every `interval_ms`, its ground truth in `dir`.
fn start_game(dir: &Path, frames: u32, interval_ms: f64) -> Child {
    Command::new(game_bin())
        .args([
            "--frames",
            &frames.to_string(),
            "--interval-ms",
            &interval_ms.to_string(),
        ])
        .arg("--truth")
        .arg(dir.join("truth.txt"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the synthetic game")
}

/// The synthetic game started inside `cgroup` (it joins before exec, so it presents from there),
/// sleeping 80 ms every 100th frame.
fn start_game_in(cgroup: &Path, dir: &Path, frames: u32, interval_ms: f64) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {} --frames {frames} --interval-ms {interval_ms} \
             --stall-every 100 --stall-ms 80 --stall-kind sleep --truth {}",
            cgroup.display(),
            game_bin().display(),
            dir.join("truth.txt").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the synthetic game in a cgroup")
}

fn truth(dir: &Path) -> Vec<u64> {
    fs::read_to_string(dir.join("truth.txt"))
        .expect("ground truth")
        .lines()
        .map(|l| l.parse().expect("ns"))
        .collect()
}

fn wait_exit(mut child: Child, limit: Duration) {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the game did not finish within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_long_session_is_written_in_parts_that_add_up() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("[reports]\nmax_session_frames = 1000\n");
    let work = tempfile::tempdir().expect("tempdir");
    let game = start_game(work.path(), 2600, 1.0);
    let pid = game.id();
    wait_exit(game, Duration::from_secs(60));
    let truth = truth(work.path());
    // Parts are numbered from 1 (`…-PID-partN.json`); the last one ends with the process.
    let part_of = |path: &PathBuf| -> Option<u32> {
        let stem = path.file_stem()?.to_str()?;
        stem.rsplit_once(&format!("-{pid}-part"))?.1.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let parts = loop {
        let mut parts: Vec<(u32, Value)> = daemon
            .report_files()
            .iter()
            .filter_map(|p| Some((part_of(p)?, nvbind_tests::read_json(p))))
            .collect();
        parts.sort_by_key(|(n, _)| *n);
        if parts
            .last()
            .is_some_and(|(_, r)| r["capture"]["end_reason"] == "process-exited")
        {
            break parts;
        }
        assert!(
            Instant::now() < deadline,
            "no final part for pid {pid}: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        parts.len() >= 3,
        "2600 frames in parts of 1000: {} parts",
        parts.len()
    );
    let numbers: Vec<u32> = parts.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=parts.len() as u32).collect::<Vec<_>>());
    let counts: Vec<u64> = parts
        .iter()
        .map(|(_, r)| {
            r["processes"][0]["frames"]["count"]
                .as_u64()
                .expect("count")
        })
        .collect();
    for (_, r) in &parts[..parts.len() - 1] {
        assert_eq!(r["capture"]["end_reason"], "session-frame-limit");
        let n = r["processes"][0]["frames"]["count"]
            .as_u64()
            .expect("count");
        assert!((1000..1200).contains(&n), "a part of {n} frames");
    }
    // Each part after the first starts from the previous part's last frame (its first frame
    // time spans the cut): every frame once, plus one per cut.
    assert_eq!(
        counts.iter().sum::<u64>(),
        truth.len() as u64 + parts.len() as u64 - 1,
        "parts {counts:?} against {} frames presented",
        truth.len()
    );
}

#[test]
fn games_started_after_the_daemon_are_tracked_from_their_first_frame() {
    require_root();
    let _one = serial();
    let mut daemon = Daemon::start("[reports]\nkeep = 2\n");

    // The synthetic game (EGL): every frame it presented is in its report.
    let work = tempfile::tempdir().expect("tempdir");
    let game = start_game(work.path(), 150, 8.0);
    let game_pid = game.id();
    wait_exit(game, Duration::from_secs(60));
    let (first_path, report) = daemon.wait_for_report(game_pid);
    let truth = truth(work.path());
    assert_eq!(report["schema"], "nvbind.report/v1");
    assert_eq!(report["capture"]["end_reason"], "process-exited");
    let p = &report["processes"][0];
    assert_eq!(p["pid"], game_pid);
    assert_eq!(p["frames"]["source"], "egl");
    assert_eq!(
        p["frames"]["count"].as_u64(),
        Some(truth.len() as u64),
        "every frame from the first: {}",
        daemon.log()
    );

    // vkcube (Vulkan, through the driver's function pointer) under Xvfb: 300 frames, then exit.
    let x = Xvfb::start().expect("Xvfb");
    let vkcube = Command::new("vkcube")
        .args(["--c", "300"])
        .env("DISPLAY", &x.display)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vkcube (cargo xtask setup installs vulkan-tools)");
    let vk_pid = vkcube.id();
    wait_exit(vkcube, Duration::from_secs(60));
    let (vk_path, report) = daemon.wait_for_report(vk_pid);
    let p = &report["processes"][0];
    assert_eq!(p["comm"], "vkcube");
    assert_eq!(p["frames"]["source"], "vulkan");
    assert_eq!(
        p["frames"]["count"], 300,
        "vkcube --c 300 presents 300 frames"
    );
    // The per-frame logs sit beside the report.
    let stem = vk_path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("stem")
        .to_string();
    for suffix in ["frames.csv", "mangohud.csv", "presentmon.csv"] {
        let log = daemon.reports().join(format!("{stem}.{suffix}"));
        assert!(log.is_file(), "{} missing", log.display());
    }

    // A third session: keep = 2 prunes the oldest, with its per-frame logs.
    let game = start_game(work.path(), 20, 5.0);
    let third = game.id();
    wait_exit(game, Duration::from_secs(60));
    let (third_path, _) = daemon.wait_for_report(third);
    let first_stem = first_path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("stem");
    // Pruning follows the report's rename: wait for the daemon to say it pruned.
    let pruned = format!("pruned session {first_stem}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains(&pruned) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        daemon.report_files(),
        vec![vk_path.clone(), third_path],
        "{}",
        daemon.log()
    );
    assert!(!first_path.exists(), "the oldest session is pruned");
    let left: Vec<String> = fs::read_dir(daemon.reports())
        .expect("reports dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(
        left.iter().all(|n| !n.starts_with(first_stem)),
        "nothing of the pruned session is left: {left:?}"
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "clean exit on SIGTERM: {log}");
}

/// A cgroup named like a Docker container's.
const CONTAINER_ID: &str = "4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2";

#[test]
fn live_api_metrics_and_websocket_streams_follow_a_running_game() {
    require_root();
    let _one = serial();
    let mut daemon = Daemon::start("");
    let cgroup = mount_point(Tree::V2).join(format!("docker-{CONTAINER_ID}.scope"));
    let _ = fs::remove_dir(&cgroup);
    fs::create_dir(&cgroup).expect("create a container-like cgroup");
    let work = tempfile::tempdir().expect("tempdir");
    let game = start_game_in(&cgroup, work.path(), 1500, 10.0);
    let pid = game.id();
    let _ = daemon.wait_until_tracked(pid);
    std::thread::sleep(Duration::from_secs(3));

    // GET /api/processes/{pid}: live numbers of a 100 fps game.
    let view = daemon.get_json(&format!("/api/processes/{pid}"));
    let fps = view["fps"].as_f64().expect("fps");
    assert!(
        (70.0..=110.0).contains(&fps),
        "about 100 fps, got {fps}: {view}"
    );
    let p50 = view["frame_time_ms"]["p50"].as_f64().expect("p50");
    assert!((9.0..=12.0).contains(&p50), "p50 about 10 ms, got {p50}");
    assert_eq!(view["comm"], "synthetic-game");
    // Its sleeps every 100th frame are stutters, explained live.
    let stutters = view["stutters_total"].as_u64().expect("stutters_total");
    assert!(
        stutters >= 2,
        "stalls at frames 100, 200, ... counted live: {view}"
    );
    assert!(
        view["stutters_by_cause"]["blocked"].as_u64().unwrap_or(0) >= 1,
        "a sleeping frame thread is `blocked`: {view}"
    );
    assert_eq!(view["container_id"], CONTAINER_ID);
    assert_eq!(view["cgroup"], format!("/docker-{CONTAINER_ID}.scope"));
    let all = daemon.get_json("/api/processes");
    assert!(
        all["processes"]
            .as_array()
            .expect("list")
            .iter()
            .any(|p| p["pid"] == pid),
        "{all}"
    );
    assert!(daemon.get_json("/api/gpu/status")["gpus"].is_array());

    // GET /api/containers/{id}/gpu, by a short id and by cgroup path.
    let container = daemon.get_json(&format!("/api/containers/{}/gpu", &CONTAINER_ID[..12]));
    assert_eq!(container["container_id"], CONTAINER_ID);
    assert_eq!(container["processes"][0]["pid"], pid);
    let by_path = daemon.get_json(&format!(
        "/api/containers/%2Fdocker-{CONTAINER_ID}.scope/gpu"
    ));
    assert_eq!(by_path["processes"][0]["pid"], pid, "{by_path}");

    // /metrics is valid exposition by promtool's rules and holds the game's series.
    let (status, metrics) = daemon.get("/metrics");
    assert_eq!(status, 200);
    let file = work.path().join("metrics.txt");
    fs::write(&file, &metrics).expect("write metrics");
    let check = Command::new(nvbind_tests::promtool_bin())
        .args(["check", "metrics"])
        .stdin(fs::File::open(&file).expect("metrics file"))
        .output()
        .expect("run promtool (cargo xtask setup installs the prometheus package)");
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // Prometheus asks for OpenMetrics and gets it.
    let (status, openmetrics) = curl(&[
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        &daemon.url("/metrics"),
    ]);
    assert_eq!(status, 200);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE nvbind_frames counter"));
    for series in [
        format!("nvbind_frame_time_seconds_bucket{{le=\"0.016667\",pid=\"{pid}\",comm=\"synthetic-game\"}}"),
        format!("nvbind_frames_total{{pid=\"{pid}\",comm=\"synthetic-game\"}}"),
        format!("nvbind_stutters_total{{pid=\"{pid}\",comm=\"synthetic-game\",cause=\"blocked\"}}"),
        "nvbind_bpf_program_runs_total{program=\"nvbind_present\"}".to_string(),
        "nvbind_bpf_program_run_seconds_total{program=\"nvbind_sched_switch\"}".to_string(),
        "nvbind_agent_resident_memory_bytes ".to_string(),
        "nvbind_agent_cpu_seconds_total ".to_string(),
    ] {
        assert!(metrics.contains(&series), "{series} missing from:\n{metrics}");
    }

    // 50 HTTP clients at once (curl's parallel mode: 50 connections).
    let urls: Vec<String> = (0..50)
        .map(|i| match i % 4 {
            0 => daemon.url("/api/processes"),
            1 => daemon.url(&format!("/api/processes/{pid}")),
            2 => daemon.url("/metrics"),
            _ => daemon.url("/api/gpu/status"),
        })
        .collect();
    let out = Command::new("curl")
        .args(["-s", "-Z", "--parallel-immediate", "--parallel-max", "50"])
        .args(["-w", "%{http_code}\n"])
        .args(urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]))
        .output()
        .expect("run curl");
    let codes = String::from_utf8_lossy(&out.stdout);
    let ok = codes.lines().filter(|l| *l == "200").count();
    assert_eq!(ok, 50, "50 concurrent requests all served: {codes}");

    // WebSocket streams: a pid at 100 ms, a container at 50 ms, and 50 clients at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ws = |path: String| format!("ws://127.0.0.1:{}{path}", daemon.port);
    runtime.block_on(async {
        let (mut stream, _) =
            tokio_tungstenite::connect_async(ws(format!("/metrics/{pid}?interval_ms=100")))
                .await
                .expect("WebSocket connect");
        let mut arrivals = Vec::new();
        let mut seqs = Vec::new();
        while arrivals.len() < 16 {
            let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("a message within 5 s")
                .expect("stream open")
                .expect("message");
            arrivals.push(Instant::now());
            let v: Value = serde_json::from_str(msg.to_text().expect("text")).expect("JSON");
            assert_eq!(v["pid"], pid);
            assert!(v["fps"].as_f64().expect("fps") > 50.0, "{v}");
            seqs.push(v["seq"].as_u64().expect("seq"));
        }
        assert_eq!(seqs, (0..16).collect::<Vec<u64>>());
        let mut gaps: Vec<f64> = arrivals
            .windows(2)
            .skip(1)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)
            .collect();
        gaps.sort_by(f64::total_cmp);
        let median = gaps[gaps.len() / 2];
        assert!(
            (85.0..=120.0).contains(&median),
            "messages every 100 ms: median gap {median:.1} ms ({gaps:?})"
        );
        let _ = stream.close(None).await;

        let (mut stream, _) = tokio_tungstenite::connect_async(ws(format!(
            "/metrics/{}?interval_ms=50",
            &CONTAINER_ID[..16]
        )))
        .await
        .expect("WebSocket connect to a container stream");
        let msg = stream.next().await.expect("open").expect("message");
        let v: Value = serde_json::from_str(msg.to_text().expect("text")).expect("JSON");
        assert_eq!(v["processes"][0]["pid"], pid, "{v}");

        let mut clients = Vec::new();
        for _ in 0..50 {
            let url = ws(format!("/metrics/{pid}?interval_ms=50"));
            clients.push(tokio::spawn(async move {
                let (mut s, _) = tokio_tungstenite::connect_async(url).await.ok()?;
                for _ in 0..3 {
                    let m = tokio::time::timeout(Duration::from_secs(5), s.next())
                        .await
                        .ok()??
                        .ok()?;
                    let v: Value = serde_json::from_str(m.to_text().ok()?).ok()?;
                    v["fps"].as_f64()?;
                }
                let _ = s.close(None).await;
                Some(())
            }));
        }
        let mut served = 0;
        for c in clients {
            if matches!(c.await, Ok(Some(()))) {
                served += 1;
            }
        }
        assert_eq!(
            served, 50,
            "50 concurrent WebSocket clients each got 3 messages"
        );

        // The stream's last message says the game is gone.
        let (mut stream, _) =
            tokio_tungstenite::connect_async(ws(format!("/metrics/{pid}?interval_ms=50")))
                .await
                .expect("connect");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let mut last = Value::Null;
        while let Ok(Some(Ok(msg))) =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await
        {
            if let Ok(text) = msg.to_text() {
                if let Ok(v) = serde_json::from_str::<Value>(text) {
                    last = v;
                }
            }
        }
        assert_eq!(last["live"], false, "a final message marks the end: {last}");
    });
    let mut game = game;
    let _ = game.wait();
    let (_, report) = daemon.wait_for_report(pid);
    assert!(
        report["processes"][0]["frames"]["count"]
            .as_u64()
            .expect("count")
            > 300
    );
    let _ = fs::remove_dir(&cgroup);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn malformed_requests_get_a_4xx_with_a_json_error() {
    require_root();
    let _one = serial();
    let mut daemon = Daemon::start("");
    let port = daemon.port;
    for (path, want) in [
        ("/api/processes/abc", 400),
        ("/api/processes/0", 400),
        ("/api/processes/4000000000", 404),
        ("/api/processes/999999", 404),
        ("/api/containers/zz/gpu", 400),
        ("/api/containers/abcdef0123/gpu", 404),
        ("/api/containers/%2Fno-such-cgroup/gpu", 404),
        ("/metrics/1?interval_ms=abc", 400),
        ("/metrics/1?interval_ms=1", 400),
        ("/metrics/999999?interval_ms=100", 404),
        ("/nope", 404),
        ("/api/bindings", 405),
        ("/api/containers/%2F..%2F..%2Fetc/gpu", 400),
    ] {
        let (status, body) = daemon.get(path);
        assert_eq!(status, want, "GET {path}: {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: error body is not JSON ({e}): {body}"));
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    // A stream endpoint asked without the WebSocket handshake, for a tracked game.
    let work = tempfile::tempdir().expect("tempdir");
    let game = start_game(work.path(), 400, 10.0);
    let pid = game.id();
    daemon.wait_until_tracked(pid);
    let (status, body) = daemon.get(&format!("/metrics/{pid}"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("WebSocket"), "{body}");
    // Nothing changes state over TCP.
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{\"cgroup\":\"/sys/fs/cgroup\",\"gpus\":[\"all\"]}",
        &daemon.url("/api/bindings"),
    ]);
    assert_eq!(status, 405, "POST over TCP: {body}");
    assert!(body.contains("Unix socket"), "{body}");
    let (status, _) = curl(&["-X", "DELETE", &daemon.url("/api/processes")]);
    assert_eq!(status, 405);
    // Garbage on the wire.
    let (status, _) = curl(&[&format!("http://127.0.0.1:{port}/api/processes/%ZZ")]);
    assert!((400..500).contains(&status), "bad escape: {status}");
    wait_exit(game, Duration::from_secs(60));
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn bad_configuration_is_refused_with_the_line_and_nothing_starts() {
    require_root();
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    let reports = dir.path().join("reports");
    let reports_arg = reports.display().to_string();
    let run = |text: &str| {
        fs::write(&config, text).expect("write config");
        agent(&[
            "--config",
            &config.display().to_string(),
            "--reports-dir",
            &reports_arg,
        ])
    };
    let out = run("[api]\nlisten = \"127.0.0.1:1\"\n\n[reports]\nkeeep = 3\n");
    assert_one_line_error(&out, &["line 5", "keeep", "agent.toml"]);
    let out = run("[games]\nexclude_comm = \"vkcube\"\n");
    assert_one_line_error(&out, &["line 2", "exclude_comm"]);
    let out = run("[api]\nlisten = \"localhost\"\n");
    assert_one_line_error(&out, &["api.listen", "127.0.0.1:9090"]);
    let out = run("[stutter]\nfactor = 0\n");
    assert_one_line_error(&out, &["factor"]);
    let out = agent(&["--config", "/nonexistent/agent.toml"]);
    assert_one_line_error(&out, &["/nonexistent/agent.toml"]);
    // The API's port is taken: said at start, not discovered later.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = run(&format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\nsocket = \"\"\n"
    ));
    assert_one_line_error(&out, &[&format!("127.0.0.1:{port}"), "api.listen"]);
    assert!(
        !reports.exists() || fs::read_dir(&reports).expect("dir").next().is_none(),
        "nothing written"
    );
}

#[test]
fn fixture_gpus_are_served_and_binding_is_on_the_root_only_socket() {
    require_root();
    let _one = serial();
    let host = FixtureHost::new("mixed-nvidia-amd");
    // The fixture's AMD card sleeps (runtime-suspended, so it is not read); wake it.
    fs::write(
        host.path("sys/bus/pci/devices/0000:0c:00.0/power/runtime_status"),
        "active\n",
    )
    .expect("wake the fixture's AMD card");
    let bpffs = Bpffs::mount();
    let mut daemon = Daemon::start(&format!(
        "bpffs = \"{}\"\n\n[gpu]\nsysfs_root = \"{}\"\ndev_root = \"{}\"\nproc_root = \"{}\"\n",
        bpffs.path(),
        host.path("sys").display(),
        host.path("dev").display(),
        host.path("proc").display()
    ));
    // The fixture's GPUs, with the AMD card's counters read from its sysfs files.
    std::thread::sleep(Duration::from_millis(1500));
    let gpus = daemon.get_json("/api/gpu/status");
    let gpus = gpus["gpus"].as_array().expect("gpus").clone();
    assert_eq!(gpus.len(), 2, "{gpus:?}");
    let amd = gpus
        .iter()
        .find(|g| g["pci_address"] == "0000:0c:00.0")
        .expect("the AMD GPU");
    assert_eq!(amd["sampled"], true, "{amd}");
    assert!(
        amd["sample"]["utilization_ratio"].as_f64().is_some(),
        "{amd}"
    );
    let (_, metrics) = daemon.get("/metrics");
    assert!(
        metrics.contains("nvbind_gpu_utilization_ratio{gpu=\"1\",pci_address=\"0000:0c:00.0\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("nvbind_gpu_memory_used_bytes{"),
        "{metrics}"
    );
    let socket = daemon.socket();
    let mode = fs::metadata(&socket).expect("socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "root only");
    let sock = socket.display().to_string();
    let cgroup = TestCgroup::new(Tree::V2, "daemon-bind");
    let over_socket = |args: &[&str]| {
        let mut all = vec!["--unix-socket", sock.as_str()];
        all.extend_from_slice(args);
        curl(&all)
    };
    let body = format!(
        "{{\"cgroup\":\"{}\",\"gpus\":[\"0000:0c:00.0\"]}}",
        cgroup.arg()
    );
    let (status, text) = over_socket(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        "http://agent/api/bindings",
    ]);
    assert_eq!(status, 200, "{text}");
    let outcome: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(outcome["binding"]["gpus"][0]["pci_address"], "0000:0c:00.0");
    let (status, text) = over_socket(&["http://agent/api/bindings"]);
    assert_eq!(status, 200, "{text}");
    let listed: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(listed[0]["state"], "enforced", "{listed}");
    // The container view shows the binding and its GPU.
    let rel = cgroup
        .path
        .strip_prefix(mount_point(Tree::V2))
        .expect("under the v2 mount")
        .display()
        .to_string();
    let view = daemon.get_json(&format!("/api/containers/%2F{rel}/gpu"));
    assert_eq!(view["binding"]["state"], "enforced", "{view}");
    assert_eq!(view["gpus"][0]["pci_address"], "0000:0c:00.0", "{view}");
    // Bad requests on the socket: 4xx with a reason, nothing bound.
    for (payload, want) in [
        ("{\"cgroup\":\"/tmp\",\"gpus\":[\"0\"]}".to_string(), 422),
        (
            format!("{{\"cgroup\":\"{}\",\"gpus\":[\"9\"]}}", cgroup.arg()),
            422,
        ),
        (
            format!("{{\"cgroup\":\"{}\",\"gpus\":[]}}", cgroup.arg()),
            400,
        ),
        ("{\"gpus\":[\"0\"], \"colour\": 1}".to_string(), 400),
        ("not json".to_string(), 400),
    ] {
        let (status, text) = over_socket(&[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &payload,
            "http://agent/api/bindings",
        ]);
        assert_eq!(status, want, "{payload}: {text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    let (status, text) = over_socket(&[
        "-X",
        "DELETE",
        &format!("http://agent/api/bindings?cgroup={}", cgroup.arg()),
    ]);
    assert_eq!(status, 200, "{text}");
    let (_, text) = over_socket(&["http://agent/api/bindings"]);
    assert_eq!(text.trim(), "[]");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[test]
fn sighup_reloads_the_config_and_sigterm_writes_open_sessions() {
    require_root();
    let _one = serial();
    let mut daemon = Daemon::start("[games]\nexclude_comm = [\"synthetic-game\"]\n");
    let work = tempfile::tempdir().expect("tempdir");

    // Excluded: presents, but is never tracked and leaves no report.
    let game = start_game(work.path(), 150, 10.0);
    let excluded = game.id();
    std::thread::sleep(Duration::from_millis(800));
    let (status, body) = daemon.get(&format!("/api/processes/{excluded}"));
    assert_eq!(status, 404, "{body}");
    wait_exit(game, Duration::from_secs(60));
    assert!(daemon.log().contains("excludes it"), "{}", daemon.log());

    // A bad file on SIGHUP: said, and the running config stays.
    let port = daemon.port;
    fs::write(daemon.config_path(), "[games\n").expect("write");
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(daemon.log().contains("not reloaded"), "{}", daemon.log());
    assert_eq!(daemon.get("/api/processes").0, 200);

    // The exclusion removed and reloaded: the next game is tracked.
    fs::write(
        daemon.config_path(),
        format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\nsocket = \"{}\"\n",
            daemon.socket().display()
        ),
    )
    .expect("write");
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log().contains("configuration reloaded") {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let game = start_game(work.path(), 3000, 10.0);
    let pid = game.id();
    daemon.wait_until_tracked(pid);
    std::thread::sleep(Duration::from_secs(1));

    // SIGTERM while it plays: its session is written, then the daemon exits 0.
    let reports = daemon.reports();
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let mut game = game;
    let _ = game.kill();
    let _ = game.wait();
    let report_path = fs::read_dir(&reports)
        .expect("reports")
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.to_string_lossy().ends_with(&format!("-{pid}.json"))
        })
        .unwrap_or_else(|| panic!("no report for the running game: {log}"));
    let report = nvbind_tests::read_json(&report_path);
    assert_eq!(report["capture"]["end_reason"], "agent-stopped");
    assert!(
        report["processes"][0]["frames"]["count"]
            .as_u64()
            .expect("count")
            >= 50
    );
    assert!(
        fs::read_dir(&reports)
            .expect("reports")
            .filter_map(|e| e.ok())
            .all(|e| !e
                .file_name()
                .to_string_lossy()
                .contains(&format!("-{excluded}."))),
        "the excluded game left no report"
    );
}

/// The host's first non-loopback IPv4 address.
fn non_loopback_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!("NOT RUN: this host has no non-loopback IPv4 address to check against: {text}")
        })
}

#[test]
fn the_api_listens_on_loopback_only_by_default() {
    require_root();
    let _one = serial();
    // No `listen` in the config: the default.
    let mut daemon = Daemon::start_with("[api]\n", 9090, "");
    assert_eq!(
        daemon.get("/api/processes").0,
        200,
        "served on 127.0.0.1:9090"
    );
    let outside = non_loopback_address();
    let refused = std::net::TcpStream::connect_timeout(
        &format!("{outside}:9090").parse().expect("address"),
        Duration::from_secs(2),
    );
    assert!(
        refused.is_err(),
        "the API must not answer on {outside}:9090 by default"
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_game_with_its_own_copy_of_the_graphics_library_is_seen_from_its_first_frame() {
    require_root();
    let _one = serial();
    let mut daemon = Daemon::start("");
    // Like a container or the Steam runtime: the game's libEGL is another file than the host's
    // (which the probes hooked at start), in a mount namespace of its own.
    let host_egl = fs::canonicalize("/usr/lib/x86_64-linux-gnu/libEGL.so.1")
        .expect("the host's libEGL.so.1 (cargo xtask setup installs libegl1)");
    let work = tempfile::tempdir().expect("tempdir");
    let copy = work.path().join("libEGL-copy.so");
    fs::copy(&host_egl, &copy).expect("copy libEGL");
    let game = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} {} && exec {} --frames 120 --interval-ms 10 --startup-delay-ms 1500 \
             --render-thread --stall-kind lock --stall-every 50 --stall-ms 20 --truth {}",
            copy.display(),
            host_egl.display(),
            game_bin().display(),
            work.path().join("truth.txt").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the game in its own mount namespace");
    let pid = game.id();
    wait_exit(game, Duration::from_secs(60));
    let (_, report) = daemon.wait_for_report(pid);
    let truth = truth(work.path());
    assert_eq!(truth.len(), 120, "the game presented through its copy");
    assert_eq!(
        report["processes"][0]["frames"]["count"].as_u64(),
        Some(120),
        "every frame, from the first, through the copy: {}",
        daemon.log()
    );
    // Its `loader` thread started before the first frame and never presents or calls into a
    // driver: it is tracked because the daemon adopts a discovered game's existing threads.
    let threads = report["processes"][0]["threads"]
        .as_array()
        .expect("threads");
    assert!(
        threads.iter().any(|t| t["comm"] == "loader"),
        "the game's threads from before its first frame are tracked: {threads:?}"
    );
    assert!(
        daemon
            .log()
            .contains("a copy the host's hooks do not cover"),
        "{}",
        daemon.log()
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn the_systemd_unit_is_valid() {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/nvbind-agent.service"
    ))
    .expect("dist/nvbind-agent.service");
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "reload is SIGHUP"
    );
    assert!(unit.contains("StateDirectory=nvbind") && unit.contains("RuntimeDirectory=nvbind"));
    // systemd's own checker, with ExecStart pointing at the agent built here.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nvbind-agent.service");
    let here = unit.replace(
        "ExecStart=/usr/local/bin/nvbind-agent",
        &format!("ExecStart={}", nvbind_tests::agent_bin().display()),
    );
    fs::write(&path, here).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze (Debian's systemd package)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
