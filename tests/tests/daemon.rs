//! The daemon for real: `nvbind-agent` with no command, loading the real probes in discovery
//! mode, with games started after it (the synthetic game, vkcube under Xvfb). Its API is checked
//! with real, independent clients: curl for HTTP (50 at once), tokio-tungstenite for WebSocket,
//! promtool for `/metrics`.
//!
//! Every daemon tracks every process that presents, so the tests in this file run one at a time,
//! and every game a test starts is killed when the test ends, passed or failed.
//!
//! Nothing here waits a fixed time for the daemon to have done something: each test waits for
//! what it can observe (a log line, a file, an API answer) with a deadline that only catches a
//! hang, and timing numbers are checked against the game's own record of its presents.

use std::{
    fs,
    io::{Read, Write},
    net::TcpListener,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use nvbind_tests::daemon::{
    awake_mixed_fixture_host, curl, fixture_gpu_config, free_port, serial, start_game,
    start_game_with, Daemon, Game, FOREVER, HANG,
};
use nvbind_tests::{
    agent, assert_one_line_error, assert_within_windows, frame_bounds_ms, game_bin, monotonic_ns,
    mount_point, percentile, podman, read_truth, require_root, Bpffs, FixtureHost, PresentWindow,
    TestCgroup, Tree, Wine, Xvfb,
};
use serde_json::Value;

/// Every loaded program as `bpftool -j prog show` describes it.
fn loaded_programs() -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("bpftool prints JSON") {
        Value::Array(programs) => programs,
        other => panic!("bpftool printed no list of programs: {other}"),
    }
}

/// The kernel's count of skipped runs (`recursion_misses`) of the loaded programs named `name`,
/// as `bpftool` reads it (it leaves the field out when it is 0).
fn kernel_skipped_runs(name: &str) -> u64 {
    let matching: Vec<Value> = loaded_programs()
        .into_iter()
        .filter(|p| p["name"] == name)
        .collect();
    assert!(!matching.is_empty(), "no program {name} is loaded");
    matching
        .iter()
        .map(|p| p["recursion_misses"].as_u64().unwrap_or(0))
        .sum()
}

/// The kernel's run counts (`run_cnt`, counted only while bpf_stats is on) summed over the
/// loaded programs whose name starts with `prefix`.
fn kernel_run_counts(prefix: &str) -> u64 {
    loaded_programs()
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .map(|p| p["run_cnt"].as_u64().unwrap_or(0))
        .sum()
}

/// Whether `pid` holds the kernel's bpf_stats descriptor (`BPF_ENABLE_STATS`: the kernel times
/// every BPF program while any such descriptor is open).
fn holds_bpf_stats(pid: u32) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's fds")
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .any(|target| target.as_os_str() == "anon_inode:bpf-stats")
}

/// The sum of the series named `series` in `/metrics` whose labels contain `labels` (all of
/// them with "").
fn metric(daemon: &Daemon, series: &str, labels: &str) -> f64 {
    let (status, text) = daemon.get("/metrics");
    assert_eq!(status, 200, "/metrics: {text}");
    text.lines()
        .filter(|l| {
            l.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// `metrics` passes `promtool check metrics` (written to a file in `dir` first).
fn assert_valid_exposition(dir: &Path, metrics: &str) {
    let file = dir.join("metrics.txt");
    fs::write(&file, metrics).expect("write metrics");
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
}

/// The synthetic game started inside `cgroup` (it joins before exec, so it presents from there),
/// sleeping 80 ms every 100th frame.
fn start_game_in(cgroup: &Path, dir: &Path, frames: u32, interval_ms: f64) -> Game {
    Game::new(
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
            .expect("start the synthetic game in a cgroup"),
    )
}

/// The game's own record of its presents: per frame, the clock just before and just after the
/// present call (the probe stamps the frame inside).
fn truth(dir: &Path) -> Vec<PresentWindow> {
    read_truth(&dir.join("truth.txt"))
}

/// The present times of `pid` in a session's per-frame log, in order.
fn present_times(csv: &Path, pid: u32) -> Vec<u64> {
    nvbind_tests::read_csv(csv)
        .iter()
        .filter(|r| r["pid"] == pid.to_string())
        .map(|r| r["present_ns"].parse().expect("present_ns"))
        .collect()
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// A live view of a synthetic game (`GET /api/processes/{pid}` or a stream message), checked
/// against the game's own record of its presents. The daemon made the view at a moment `now` in
/// [`made_after`, `made_before`] (and after the newest frame it counts). Each frame's probe time
/// lies inside its present call, so every number in the view has exact bounds, whatever the
/// machine's load: the count, which frames are in the window, the FPS, the median frame time.
fn check_live_view(view: &Value, made_after: u64, made_before: u64, truth: &[PresentWindow]) {
    let n = view["frames_total"].as_u64().expect("frames_total") as usize;
    assert!(
        (1..=truth.len()).contains(&n),
        "frames_total {n} of a game that presented {} frames: {view}",
        truth.len()
    );
    // The newest frame counted is the game's frame n, so frames 1..n were all counted.
    let last = view["last_frame_ns"].as_u64().expect("last_frame_ns");
    let w = truth[n - 1];
    assert!(
        w.contains(last),
        "frames_total {n}, newest frame at {last}: not inside the game's present {} [{}, {}]: \
         a frame was missed or counted twice: {view}",
        n - 1,
        w.before,
        w.after
    );
    let now_lo = made_after.max(last);
    let now_hi = made_before;
    assert!(
        now_lo <= now_hi,
        "a view made before its newest frame: {view}"
    );
    let window_ns = (view["window_s"].as_f64().expect("window_s") * 1e9).round() as u64;
    // Frames 1..n have a frame time; those stamped at or after `now - window` are in the window.
    let surely = (1..n)
        .filter(|&j| truth[j].before >= now_hi.saturating_sub(window_ns))
        .count();
    let maybe = (1..n)
        .filter(|&j| truth[j].after >= now_lo.saturating_sub(window_ns))
        .count();
    let in_window = view["frames_in_window"].as_u64().expect("frames_in_window") as usize;
    assert!(
        (surely..=maybe).contains(&in_window),
        "frames_in_window {in_window}, the game presented {surely}..={maybe} in the window: {view}"
    );
    // FPS: frames in the window over the window, or over the time since the first frame.
    let span_lo = window_ns.min(now_lo.saturating_sub(truth[0].after)).max(1) as f64;
    let span_hi = window_ns.min(now_hi.saturating_sub(truth[0].before)).max(1) as f64;
    let fps = view["fps"].as_f64().expect("fps");
    let (fps_lo, fps_hi) = (
        in_window as f64 * 1e9 / span_hi,
        in_window as f64 * 1e9 / span_lo,
    );
    assert!(
        fps >= fps_lo * (1.0 - 1e-9) && fps <= fps_hi * (1.0 + 1e-9),
        "fps {fps}: the game's own presents give {fps_lo}..={fps_hi}: {view}"
    );
    if in_window == 0 {
        assert!(view["frame_time_ms"].is_null(), "{view}");
        return;
    }
    // The window holds frames n - in_window .. n; each one's frame time lies between its
    // present calls' bounds, and so does any percentile of them.
    let (mut lo, mut hi): (Vec<f64>, Vec<f64>) = (n - in_window..n)
        .map(|j| frame_bounds_ms(truth, j))
        .unzip();
    lo.sort_by(f64::total_cmp);
    hi.sort_by(f64::total_cmp);
    let (p50_lo, p50_hi) = (percentile(&lo, 0.5), percentile(&hi, 0.5));
    let p50 = view["frame_time_ms"]["p50"].as_f64().expect("p50");
    // The daemon's histogram (3 significant digits) reports the top of the value's bucket: at
    // most 0.1 % above it.
    assert!(
        p50 >= p50_lo - 1e-9 && p50 <= p50_hi * 1.002,
        "p50 {p50} ms: the game's own presents give {p50_lo}..={p50_hi} ms: {view}"
    );
}

#[test]
fn a_long_session_is_written_in_parts_that_add_up() {
    require_root();
    let _one = serial();
    const LIMIT: u64 = 1000;
    let daemon = Daemon::start(&format!("[reports]\nmax_session_frames = {LIMIT}\n"));
    let work = tempfile::tempdir().expect("tempdir");
    // 4200 frames, at most one every 2 ms (the game never presents ahead of its schedule).
    let mut game = start_game(work.path(), 4200, 2.0);
    let pid = game.pid;
    game.wait_exit();
    let truth = truth(work.path());
    // Parts are numbered from 1 (`…-PID-partN.json`); the last one ends with the process.
    let part_of = |path: &PathBuf| -> Option<u32> {
        let stem = path.file_stem()?.to_str()?;
        stem.rsplit_once(&format!("-{pid}-part"))?.1.parse().ok()
    };
    let deadline = Instant::now() + HANG;
    let parts = loop {
        let mut parts: Vec<(u32, PathBuf, Value)> = daemon
            .report_files()
            .into_iter()
            .filter_map(|p| Some((part_of(&p)?, p.clone(), nvbind_tests::read_json(&p))))
            .collect();
        parts.sort_by_key(|(n, _, _)| *n);
        // Parts are written in the background, each as soon as it is cut: the final part can
        // land before the one cut just before it. Done when the final part and all before it
        // are there.
        let numbered = parts
            .iter()
            .enumerate()
            .all(|(i, (n, _, _))| *n == i as u32 + 1);
        if numbered
            && parts
                .last()
                .is_some_and(|(_, _, r)| r["capture"]["end_reason"] == "process-exited")
        {
            break parts;
        }
        let numbers: Vec<u32> = parts.iter().map(|(n, _, _)| *n).collect();
        assert!(
            Instant::now() < deadline,
            "parts {numbers:?} of pid {pid}: no complete set ending with its exit within \
             {HANG:?}: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let counts: Vec<u64> = parts
        .iter()
        .map(|(_, _, r)| {
            r["processes"][0]["frames"]["count"]
                .as_u64()
                .expect("count")
        })
        .collect();
    // A part is cut at the first look after it reached the limit: never before, and never a
    // whole limit's worth of frames (at least 2 s of this game) after.
    for ((_, _, r), n) in parts.iter().zip(&counts) {
        assert!(*n < 2 * LIMIT, "a part of {n} frames: {counts:?}");
        if r["capture"]["end_reason"] != "process-exited" {
            assert_eq!(r["capture"]["end_reason"], "session-frame-limit");
            assert!(*n >= LIMIT, "a part of {n} frames cut early: {counts:?}");
        }
    }
    // 4200 frames in parts under 2000: at least three, so a part after a cut was cut again.
    assert!(parts.len() >= 3, "{} parts: {counts:?}", parts.len());
    // Each part after the first starts from the previous part's last frame (its first frame
    // time spans the cut): every frame once, plus one per cut.
    assert_eq!(
        counts.iter().sum::<u64>(),
        truth.len() as u64 + parts.len() as u64 - 1,
        "parts {counts:?} against {} frames presented",
        truth.len()
    );
    // The parts' per-frame logs, joined at the cuts, are the game's presents one by one.
    let mut stamps: Vec<u64> = Vec::new();
    for ((n, path, _), count) in parts.iter().zip(&counts) {
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("stem");
        let part = present_times(&path.with_file_name(format!("{stem}.frames.csv")), pid);
        assert_eq!(part.len() as u64, *count, "part {n}'s frames.csv");
        match stamps.last() {
            Some(&previous) => {
                assert_eq!(
                    part[0], previous,
                    "part {n} starts from the last frame before it"
                );
                stamps.extend(&part[1..]);
            }
            None => stamps.extend(&part),
        }
    }
    assert_within_windows(&stamps, &truth);
}

#[test]
fn games_started_after_the_daemon_are_tracked_from_their_first_frame() {
    require_root();
    let _one = serial();
    let mut daemon = Daemon::start("[reports]\nkeep = 2\n");

    // The synthetic game (EGL): every frame it presented is in its report.
    let work = tempfile::tempdir().expect("tempdir");
    let mut game = start_game(work.path(), 150, 8.0);
    let game_pid = game.pid;
    game.wait_exit();
    let (first_path, report) = daemon.wait_for_report(game_pid);
    let truth = truth(work.path());
    assert_eq!(report["schema"], "nvbind.report/v2");
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
    let first_stem = first_path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("stem")
        .to_string();
    // ...each one the game's own present, from the first.
    let stamps = present_times(
        &first_path.with_file_name(format!("{first_stem}.frames.csv")),
        game_pid,
    );
    assert_within_windows(&stamps, &truth);

    // vkcube (Vulkan, through the driver's function pointer) under Xvfb: 300 frames, then exit.
    let x = Xvfb::start().expect("Xvfb");
    let mut vkcube = Game::new(
        Command::new("vkcube")
            .args(["--c", "300"])
            .env("DISPLAY", &x.display)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vkcube (cargo xtask setup installs vulkan-tools)"),
    );
    let vk_pid = vkcube.pid;
    vkcube.wait_exit();
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
    let mut game = start_game(work.path(), 20, 5.0);
    let third = game.pid;
    game.wait_exit();
    let (third_path, _) = daemon.wait_for_report(third);
    // Pruning follows the report's rename: wait for the daemon to say it pruned.
    daemon.wait_for_log(&format!("pruned session {first_stem}"));
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
        left.iter().all(|n| !n.starts_with(&first_stem)),
        "nothing of the pruned session is left: {left:?}"
    );
    let (status, log) = daemon.stop();
    assert!(status.success(), "clean exit on SIGTERM: {log}");
}

/// A cgroup named like a Docker container's.
const CONTAINER_ID: &str = "4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2";

/// A cgroup v2 directory made for a test, removed when dropped (after the games in it: declare
/// it before them).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(path: PathBuf) -> Cgroup {
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path).expect("create a cgroup");
        Cgroup(path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its last process was just reaped; the kernel frees the cgroup a moment later.
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every message of a WebSocket stream until it ends (the daemon closes it after its final
/// message); each must come within HANG of the one before.
fn follow_stream(url: String) -> Vec<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (mut stream, _) = tokio::time::timeout(HANG, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect within HANG")
            .expect("WebSocket connect");
        let mut messages = Vec::new();
        loop {
            let next = tokio::time::timeout(HANG, stream.next())
                .await
                .expect("the stream went quiet for HANG");
            match next {
                Some(Ok(msg)) if msg.is_text() => messages.push(
                    serde_json::from_str(msg.to_text().expect("text")).expect("JSON message"),
                ),
                Some(Ok(msg)) if msg.is_close() => break,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        messages
    })
}

#[test]
fn live_api_metrics_and_websocket_streams_follow_a_running_game() {
    require_root();
    let _one = serial();
    let mut daemon = Daemon::start("");

    // --- The live numbers, against the game's own record of its presents. ---
    // A game that ends by itself (so it writes that record): its stream is followed to the end
    // while its view is read now and then; both are checked once it has exited.
    let work = tempfile::tempdir().expect("tempdir");
    let mut game = start_game(work.path(), 600, 10.0);
    let pid = game.pid;
    daemon.wait_until_tracked(pid);
    const INTERVAL_MS: u64 = 100;
    let follower = {
        let url = daemon.ws(&format!("/metrics/{pid}?interval_ms={INTERVAL_MS}"));
        std::thread::spawn(move || follow_stream(url))
    };
    let mut views = Vec::new();
    let mut gone_at = None;
    while !game.exited() {
        match daemon.timed_view(pid) {
            (before, after, Some(view)) => views.push((before, after, view)),
            (_, after, None) => {
                gone_at = Some(after);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    game.wait_exit();
    let messages = follower.join().expect("the stream follower panicked");
    let truth = truth(work.path());
    let last_present = truth.last().expect("frames").before;
    assert!(!views.is_empty(), "no view of the game while it ran");
    if let Some(gone_at) = gone_at {
        assert!(
            gone_at > last_present,
            "the API dropped the game before its last present"
        );
    }
    for (before, after, view) in &views {
        assert_eq!(view["pid"], pid);
        assert_eq!(view["comm"], "synthetic-game");
        assert_eq!(view["source"], "egl");
        check_live_view(view, *before, *after, &truth);
    }
    // The stream: consecutive messages, each the live view, then one that marks the end.
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (0..messages.len() as u64).collect::<Vec<_>>());
    let (last, live) = messages.split_last().expect("stream messages");
    assert_eq!(last["live"], false, "a final message marks the end: {last}");
    assert!(
        last["sent_ns"].as_u64().expect("sent_ns") > last_present,
        "the end was marked before the game's last present: {last}"
    );
    assert!(
        live.len() >= 3,
        "{} live messages from a game that ran 6 s",
        live.len()
    );
    for m in live {
        assert_eq!(m["live"], true, "{m}");
        assert_eq!(m["pid"], pid);
        // The view is made before the message is stamped.
        check_live_view(m, 0, m["sent_ns"].as_u64().expect("sent_ns"), &truth);
    }
    // Messages come at the interval asked for: never sooner (the stream's ticks are never early;
    // one tick may take up to 5 ms of the next), and not at the default 1 s.
    let sent: Vec<u64> = live
        .iter()
        .map(|m| m["sent_ns"].as_u64().expect("sent_ns"))
        .collect();
    let interval_ns = INTERVAL_MS * 1_000_000;
    let span = sent[sent.len() - 1] - sent[0];
    assert!(
        span as f64 >= (sent.len() - 2) as f64 * 0.9 * interval_ns as f64,
        "{} messages in {} ms: faster than every {INTERVAL_MS} ms",
        sent.len(),
        span / 1_000_000
    );
    let mut gaps: Vec<f64> = sent.windows(2).map(|w| ms(w[1] - w[0])).collect();
    gaps.sort_by(f64::total_cmp);
    let median = percentile(&gaps, 0.5);
    assert!(
        median < 2.0 * INTERVAL_MS as f64,
        "messages every {INTERVAL_MS} ms: median gap {median:.1} ms ({gaps:?})"
    );
    // Its session: every frame it presented.
    let (_, report) = daemon.wait_for_report(pid);
    assert_eq!(
        report["processes"][0]["frames"]["count"].as_u64(),
        Some(truth.len() as u64)
    );

    // --- The API's answers about a game that runs until the test ends it. ---
    let cgroup = Cgroup::new(mount_point(Tree::V2).join(format!("docker-{CONTAINER_ID}.scope")));
    let work = tempfile::tempdir().expect("tempdir");
    let mut game = start_game_in(&cgroup.0, work.path(), FOREVER, 10.0);
    let pid = game.pid;
    daemon.wait_until_tracked(pid);
    // Its sleeps every 100th frame are stutters, explained live: wait for two of them.
    let view = daemon.wait_for_view(pid, "two stutters, one blocked", |v| {
        v["stutters_total"].as_u64().unwrap_or(0) >= 2
            && v["stutters_by_cause"]["blocked"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(view["comm"], "synthetic-game");
    assert_eq!(view["container_id"], CONTAINER_ID);
    assert_eq!(view["cgroup"], format!("/docker-{CONTAINER_ID}.scope"));
    // Every local user can ask the TCP API: it names the executable by its file name (a path
    // can name a user's home); the root-only socket gives the whole path.
    assert_eq!(view["exe"], "synthetic-game", "{view}");
    let socket = daemon.socket().display().to_string();
    let (status, body) = curl(&[
        "--unix-socket",
        &socket,
        &format!("http://localhost/api/processes/{pid}"),
    ]);
    assert_eq!(status, 200, "{body}");
    let full: Value = serde_json::from_str(&body).expect("JSON");
    let game_exe = fs::canonicalize(nvbind_tests::game_bin()).expect("the game's path");
    assert_eq!(full["exe"], game_exe.display().to_string(), "{full}");
    let all = daemon.get_json("/api/processes");
    assert!(
        all["processes"]
            .as_array()
            .expect("list")
            .iter()
            .any(|p| p["pid"] == pid && p["exe"] == "synthetic-game"),
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

    // /metrics is valid exposition by promtool's rules and holds the game's series (its frame
    // times and its blocked stutter, counted before the view above said so).
    let (status, metrics) = daemon.get("/metrics");
    assert_eq!(status, 200);
    assert_valid_exposition(work.path(), &metrics);
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
        format!("nvbind_frame_time_seconds_bucket{{le=\"0.016667\",pid=\"{pid}\",comm=\"synthetic-game\",name=\"synthetic-game\"}}"),
        format!("nvbind_frames_total{{pid=\"{pid}\",comm=\"synthetic-game\",name=\"synthetic-game\"}}"),
        format!("nvbind_stutters_total{{pid=\"{pid}\",comm=\"synthetic-game\",name=\"synthetic-game\",cause=\"blocked\"}}"),
        "nvbind_bpf_program_runs_total{program=\"nvbind_present\"}".to_string(),
        "nvbind_bpf_program_run_seconds_total{program=\"nvbind_sched_switch_btf\"}".to_string(),
        "nvbind_agent_resident_memory_bytes ".to_string(),
        "nvbind_agent_cpu_seconds_total ".to_string(),
    ] {
        assert!(metrics.contains(&series), "{series} missing from:\n{metrics}");
    }
    // Skipped runs are the kernel's own count of them: bpftool reads the same counter. The
    // daemon refreshes its copy in housekeeping, so wait for it to reach what bpftool said
    // before; it can never exceed what bpftool says after.
    // (The wakeup program is the BTF tracepoint's on this kernel, which has BTF.)
    let wakeup = "nvbind_bpf_program_skipped_runs_total{program=\"nvbind_sched_wakeup_btf\"} ";
    let before = kernel_skipped_runs("nvbind_sched_wakeup_btf");
    let deadline = Instant::now() + HANG;
    let ours = loop {
        let (_, text) = curl(&[&daemon.url("/metrics")]);
        let ours: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(wakeup))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{wakeup} missing from:\n{text}"));
        if ours >= before {
            break ours;
        }
        assert!(
            Instant::now() < deadline,
            "skipped runs {ours}, the kernel counted {before}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let after = kernel_skipped_runs("nvbind_sched_wakeup_btf");
    assert!(
        ours <= after,
        "skipped runs {ours}, the kernel counted {before} before and {after} after"
    );

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
        .args(["--max-time", "60", "-w", "%{http_code}\n"])
        .args(urls.iter().flat_map(|u| ["-o", "/dev/null", u.as_str()]))
        .output()
        .expect("run curl");
    let codes = String::from_utf8_lossy(&out.stdout);
    let ok = codes.lines().filter(|l| *l == "200").count();
    assert_eq!(ok, 50, "50 concurrent requests all served: {codes}");

    // WebSocket streams: a container at 50 ms, and 50 clients of the game at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut frames_seen = 0;
    runtime.block_on(async {
        let (mut stream, _) = tokio::time::timeout(
            HANG,
            tokio_tungstenite::connect_async(
                daemon.ws(&format!("/metrics/{}?interval_ms=50", &CONTAINER_ID[..16])),
            ),
        )
        .await
        .expect("connect within HANG")
        .expect("WebSocket connect to a container stream");
        let msg = tokio::time::timeout(HANG, stream.next())
            .await
            .expect("a message within HANG")
            .expect("open")
            .expect("message");
        let v: Value = serde_json::from_str(msg.to_text().expect("text")).expect("JSON");
        assert_eq!(v["processes"][0]["pid"], pid, "{v}");
        let _ = stream.close(None).await;

        let mut clients = Vec::new();
        for _ in 0..50 {
            let url = daemon.ws(&format!("/metrics/{pid}?interval_ms=50"));
            clients.push(tokio::spawn(async move {
                let (mut s, _) = tokio::time::timeout(HANG, tokio_tungstenite::connect_async(url))
                    .await
                    .ok()?
                    .ok()?;
                let mut seqs = Vec::new();
                for _ in 0..3 {
                    let m = tokio::time::timeout(HANG, s.next()).await.ok()??.ok()?;
                    let v: Value = serde_json::from_str(m.to_text().ok()?).ok()?;
                    (v["pid"] == pid && v["live"] == true).then_some(())?;
                    v["fps"].as_f64()?;
                    seqs.push(v["seq"].as_u64()?);
                }
                let _ = s.close(None).await;
                (seqs == [0, 1, 2]).then_some(())
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
            "50 concurrent WebSocket clients each got their first 3 messages"
        );

        // The stream's last message says the game is gone, also when it is killed.
        let (mut stream, _) = tokio::time::timeout(
            HANG,
            tokio_tungstenite::connect_async(daemon.ws(&format!("/metrics/{pid}?interval_ms=50"))),
        )
        .await
        .expect("connect within HANG")
        .expect("connect");
        let mut last = Value::Null;
        let mut killed = false;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(HANG, stream.next()).await {
            if let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or_default()) {
                if !killed {
                    // Everything counted so far must be in its session report.
                    frames_seen = v["frames_total"].as_u64().expect("frames_total");
                    game.signal(libc::SIGKILL);
                    killed = true;
                }
                last = v;
            }
        }
        assert!(killed, "the stream sent nothing");
        assert_eq!(last["live"], false, "a final message marks the end: {last}");
    });
    game.wait_exit();
    let (_, report) = daemon.wait_for_report(pid);
    assert_eq!(report["capture"]["end_reason"], "process-exited");
    let count = report["processes"][0]["frames"]["count"]
        .as_u64()
        .expect("count");
    assert!(
        frames_seen > 0 && count >= frames_seen,
        "{count} frames in the report, {frames_seen} counted live before the kill"
    );
    drop(game);
    drop(cgroup);
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
    // It runs until the test ends it: tracked for as long as the test needs.
    let mut game = start_game(work.path(), FOREVER, 10.0);
    let pid = game.pid;
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
    game.kill();
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
fn a_user_holding_a_thousand_idle_connections_cannot_blind_the_daemon() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    daemon.pin_fd_limit(1024);
    // As nobody: 1,100 connections to the API, held open and idle (bash opens each one; its
    // own fd limit raised so that it can hold them all).
    let port = daemon.port;
    let mut attacker = Command::new("prlimit")
        .args([
            "--nofile=4096:4096",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
        ])
        .args(["--clear-groups", "bash", "-c"])
        .arg(format!(
            "for i in $(seq 1100); do exec {{fd}}<>/dev/tcp/127.0.0.1/{port} || exit 1; done; \
             echo held; exec sleep 600"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the attacker");
    let attacker_out = attacker.stdout.take().expect("stdout");
    // Killed when the test ends, passed or failed.
    let _attacker = Game::new(attacker);
    let mut held = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(attacker_out), &mut held)
        .expect("the attacker's word");
    assert_eq!(
        held.trim(),
        "held",
        "the attacker opened its 1,100 connections"
    );
    // The daemon sees them all (refusing beyond a user's share) before the game starts: it
    // says so once.
    daemon.wait_for_log("API: refused a connection");

    let work = tempfile::tempdir().expect("tempdir");
    let mut game = start_game(work.path(), 120, 5.0);
    let pid = game.pid;
    game.wait_exit();
    let (_, report) = daemon.wait_for_report(pid);
    let truth = truth(work.path());
    assert_eq!(
        report["processes"][0]["frames"]["count"].as_u64(),
        Some(truth.len() as u64),
        "every frame of a game started during the attack: {}",
        daemon.log()
    );
    // Root still gets answers, and the daemon keeps under half its fds.
    let (status, _) = curl(&[&daemon.url("/api/processes")]);
    assert_eq!(status, 200, "root's request during the attack");
    let fds = daemon.open_fds();
    assert!(fds < 512, "the daemon holds {fds} fds of its 1024");
    let refusals = daemon
        .log()
        .lines()
        .filter(|l| l.contains("refused a connection"))
        .count();
    assert!(
        refusals <= 5,
        "refusals are logged at most every 10 s, not {refusals} times"
    );
}

/// A request head must arrive within 10 s of its first byte: a client that sends one header line
/// a second is never idle, and is closed all the same.
#[test]
fn a_client_that_trickles_its_request_is_closed_at_the_header_timeout() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    let mut client =
        std::net::TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect to the API");
    client
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .expect("read timeout");
    client
        .write_all(b"GET /api/processes HTTP/1.1\r\nHost: localhost\r\n")
        .expect("the request line");
    let started = Instant::now();
    let mut closed = None;
    let mut byte = [0u8; 512];
    // A header line a second for up to 60 s (the idle timeout, 90 s, never comes into it).
    for i in 0..60 {
        match client.read(&mut byte) {
            // Closed (an error answer first, or nothing at all).
            Ok(_) => {
                closed = Some(started.elapsed());
                break;
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = Some(started.elapsed());
                break;
            }
        }
        if client
            .write_all(format!("X-Slow-{i}: {i}\r\n").as_bytes())
            .is_err()
        {
            closed = Some(started.elapsed());
            break;
        }
    }
    let closed = closed.expect("the daemon kept a request head open for 60 s");
    assert!(
        closed >= Duration::from_secs(9),
        "closed after {closed:?}, before the 10 s header timeout"
    );
    // The API still answers.
    let (status, _) = daemon.get("/api/processes");
    assert_eq!(status, 200);
}

/// A user's requests are metered (20 a second, a burst of 60): one that asks as fast as it can
/// gets 429s beyond that, counted against the time it took, and root is not metered.
#[test]
fn a_user_asking_as_fast_as_it_can_is_metered_and_root_is_not() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    const REQUESTS: usize = 600;
    let url = daemon.url("/api/gpu/status");
    // One curl, one kept-alive connection, 600 requests: the status of each on a line.
    let run_curl = |as_nobody: bool| -> (Vec<u16>, f64) {
        let mut command = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"]);
            c
        } else {
            Command::new("curl")
        };
        command.args(["-s", "-w", "%{http_code}\n"]);
        for _ in 0..REQUESTS {
            command.args(["-o", "/dev/null", url.as_str()]);
        }
        let started = Instant::now();
        let out = command.output().expect("run curl");
        let took = started.elapsed().as_secs_f64();
        let codes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap_or(0))
            .collect();
        (codes, took)
    };
    let (codes, took) = run_curl(true);
    assert_eq!(codes.len(), REQUESTS, "{codes:?}");
    let served = codes.iter().filter(|&&c| c == 200).count();
    let refused = codes.iter().filter(|&&c| c == 429).count();
    assert_eq!(served + refused, REQUESTS, "only 200s and 429s: {codes:?}");
    // At most the burst and the rate over the time it took (the bucket refills as it goes);
    // and refusals, unless 600 requests took the whole 27 s the bucket would need.
    eprintln!("note: {served} served and {refused} refused in {took:.2} s");
    let most = 60.0 + 20.0 * took + 1.0;
    assert!(
        served as f64 <= most,
        "{served} served in {took:.2} s: more than {most:.0}"
    );
    assert!(
        refused > 0 || took >= 27.0,
        "600 requests in {took:.2} s and none refused"
    );
    daemon.wait_for_log("API: refused a request: uid 65534");
    // Root's tools get through.
    let (codes, _) = run_curl(false);
    assert!(
        codes.iter().all(|&c| c == 200),
        "root was refused: {codes:?}"
    );
}

/// A process whose presents all fail (a swap of no surface, at 1,000 a second) presents no
/// frame: the daemon writes no session for it, so such a flood cannot push real sessions out of
/// `reports.keep`, and a real game beside it is captured whole.
#[test]
fn a_process_whose_presents_all_fail_gets_no_session() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    let flood_dir = tempfile::tempdir().expect("tempdir");
    let mut flood = start_game_with(flood_dir.path(), 2000, 1.0, &["--no-surface"]);
    let work = tempfile::tempdir().expect("tempdir");
    let mut game = start_game(work.path(), 120, 5.0);
    let (pid, flood_pid) = (game.pid, flood.pid);
    flood.wait_exit();
    game.wait_exit();
    let (_, report) = daemon.wait_for_report(pid);
    assert_eq!(
        report["processes"][0]["frames"]["count"].as_u64(),
        Some(truth(work.path()).len() as u64),
        "every frame of the game beside the flood: {}",
        daemon.log()
    );
    // The flood was seen (it called eglSwapBuffers), and its session had no frame to report.
    daemon.wait_for_log(&format!("pid {flood_pid} (synthetic-game): 0 frames"));
    assert!(
        !daemon
            .report_files()
            .iter()
            .any(|f| f.display().to_string().contains(&format!("-{flood_pid}."))),
        "a session of the flood was written: {:?}",
        daemon.report_files()
    );
}

/// As nobody: `count` copies of `library` in `dir` (made here, nobody's), each mapped, held until
/// the returned process is dropped.
fn map_copies_as_nobody(count: usize, library: &Path, dir: &Path) -> Game {
    fs::create_dir(dir).expect("copies dir");
    std::os::unix::fs::chown(dir, Some(65534), Some(65534)).expect("chown");
    let mut attacker = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(nvbind_tests::agent_bin().with_file_name("map-copies"))
        .arg(count.to_string())
        .arg(library)
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start map-copies");
    let out = attacker.stdout.take().expect("stdout");
    let attacker = Game::new(attacker);
    let mut mapped = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut mapped)
        .expect("the attacker's word");
    assert_eq!(mapped.trim(), "mapped", "the attacker mapped its copies");
    attacker
}

#[test]
fn a_user_mapping_two_hundred_library_copies_spends_only_their_own_budget() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    daemon.pin_fd_limit(1024);
    // As nobody: 200 copies of libEGL, each mapped (each a file the host's hooks do not cover).
    let host_egl = fs::canonicalize("/usr/lib/x86_64-linux-gnu/libEGL.so.1")
        .expect("the host's libEGL.so.1 (cargo xtask setup installs libegl1)");
    let work = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let attacker = map_copies_as_nobody(200, &host_egl, &work.path().join("copies"));
    daemon.wait_for_log("copies of graphics libraries not hooked");
    let fds = daemon.open_fds();
    assert!(fds < 512, "the daemon holds {fds} fds of its 1024");
    // A game with a copy of its own (root's: not the attacker's budget) is still seen whole.
    a_game_with_its_own_copy_is_seen_whole(&daemon);
    let fds_mapped = daemon.open_fds();
    assert!(fds_mapped < 512);

    // The attacker leaves: the hooks of its 16 copies are released (four uprobes, four fds, each:
    // eglSwapBuffers and eglGetProcAddress, entry and return),
    // and its budget given back...
    drop(attacker);
    let released = "hooked for uid 65534)";
    let deadline = Instant::now() + HANG;
    while daemon.log().matches(released).count() < 16 {
        assert!(
            Instant::now() < deadline,
            "the copies' hooks were not released: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fds_released = daemon.open_fds();
    assert!(
        fds_released + 16 <= fds_mapped,
        "{fds_mapped} fds while the copies were mapped, {fds_released} after"
    );
    // ...so the same user's next copies are hooked again.
    let again = map_copies_as_nobody(16, &host_egl, &work.path().join("copies-2"));
    let hooked = format!("pid {}: hooked", again.pid);
    while daemon.log().matches(&hooked).count() < 16 {
        assert!(
            Instant::now() < deadline + HANG,
            "the user's new copies were not hooked: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The synthetic game as user `uid` (no groups), presenting every 50 ms until killed, its
/// ground truth in `dir` (made writable for that user); `program` is the game's binary or a copy
/// of it under another name.
fn present_as(uid: u32, program: &Path, dir: &Path) -> Game {
    let pace = [
        "--frames",
        &FOREVER.to_string(),
        "--interval-ms",
        "50",
        "--work-ms",
        "0.2",
    ];
    game_as(uid, program, dir, &pace)
}

/// The synthetic game as user `uid` (no groups) with `args`, its ground truth in `dir` (made
/// writable for that user).
fn game_as(uid: u32, program: &Path, dir: &Path, args: &[&str]) -> Game {
    fs::create_dir_all(dir).expect("game dir");
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).expect("chown");
    Game::new(
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ])
            .arg(program)
            .args(args)
            .arg("--truth")
            .arg(dir.join("truth.txt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the synthetic game as another user"),
    )
}

/// Which of `games` the daemon tracks now.
fn tracked_among(daemon: &Daemon, games: &[Game]) -> Vec<u32> {
    games
        .iter()
        .map(|g| g.pid)
        .filter(|pid| daemon.get(&format!("/api/processes/{pid}")).0 == 200)
        .collect()
}

/// Waits until exactly `count` of `games` are tracked; returns them.
fn wait_until_tracked_among(daemon: &Daemon, games: &[Game], count: usize) -> Vec<u32> {
    let deadline = Instant::now() + HANG;
    loop {
        let tracked = tracked_among(daemon, games);
        if tracked.len() == count {
            return tracked;
        }
        assert!(
            tracked.len() < count && Instant::now() < deadline,
            "{} of the user's presenting processes tracked, where the cap allows {count}: \
             {tracked:?}\n{}",
            tracked.len(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until each game whose ground truth is in `truths` has presented `frames` more.
fn presents_go_on(truths: &[PathBuf], frames: u64) {
    let from: Vec<u64> = truths
        .iter()
        .map(|t| nvbind_tests::presents_so_far(t))
        .collect();
    let deadline = Instant::now() + HANG;
    while truths
        .iter()
        .zip(&from)
        .any(|(t, &n)| nvbind_tests::presents_so_far(t) < n + frames)
    {
        assert!(Instant::now() < deadline, "a game stopped presenting");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The daemon's count of presents it did not track because their user was at the cap.
fn discovery_refused(daemon: &Daemon) -> u64 {
    let (_, metrics) = daemon.get("/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("nvbind_discovery_refused_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("nvbind_discovery_refused_total in /metrics: {metrics}"))
}

/// One user cannot take the kernel's process table from everyone else's games: with
/// `games.max_per_user = 3`, nobody's 6 presenting processes (one of them run as a subordinate
/// uid of nobody's, as a rootless container's) get 3 tracked and the others refused in the
/// kernel at every present (said in the log with the uid, and on /metrics), while another
/// user's game started meanwhile is captured whole. The user's charges come back both ways: from
/// the agent when the config excludes a process (3 excluded ones of nobody's hold no charge
/// while they run), and from the kernel when tracked ones exit (the refused ones are then
/// tracked).
#[test]
fn one_users_presenting_processes_are_capped_and_another_users_game_is_whole() {
    require_root();
    let _one = serial();
    let work = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    // Subordinate uids as useradd gives them, by the owner's name; and a line the daemon warns of.
    let subuid = work.path().join("subuid");
    fs::write(
        &subuid,
        "nobody:200000:65536
no-such-user-here:300000:65536
",
    )
    .expect("write subuid");
    let daemon = Daemon::start(&format!(
        "[games]\nmax_per_user = 3\nexclude_comm = [\"excluded-game\"]\nsubuid_file = \"{}\"\n",
        subuid.display()
    ));
    daemon.wait_for_log("subuid: 1 of its entries not used");
    // The same game under another name, which the config excludes.
    let excluded_bin = work.path().join("excluded-game");
    fs::copy(game_bin(), &excluded_bin).expect("copy the game");
    let nobody = 65534;

    // Excluded processes are discovered (charged), then untracked by the agent (released).
    let excluded: Vec<Game> = (0..3)
        .map(|i| present_as(nobody, &excluded_bin, &work.path().join(format!("x{i}"))))
        .collect();
    for g in &excluded {
        daemon.wait_for_log(&format!(
            "pid {} (excluded-game) presents frames but the config excludes it",
            g.pid
        ));
    }

    // Six more of nobody's, the last as one of its subordinate uids: three tracked, whatever
    // the excluded ones had been charged.
    let truths: Vec<PathBuf> = (0..6).map(|i| work.path().join(format!("n{i}"))).collect();
    let games: Vec<Game> = truths
        .iter()
        .enumerate()
        .map(|(i, dir)| present_as(if i == 5 { 200_007 } else { nobody }, &game_bin(), dir))
        .collect();
    let truths: Vec<PathBuf> = truths.iter().map(|d| d.join("truth.txt")).collect();
    let tracked = wait_until_tracked_among(&daemon, &games, 3);
    let refused_before = discovery_refused(&daemon);
    // Meanwhile another user's game is tracked from its first frame.
    let player = work.path().join("player");
    let mut game = game_as(
        5000,
        &game_bin(),
        &player,
        &["--frames", "120", "--interval-ms", "10"],
    );
    // Every one of the six presents on (20 frames each from now, a second at their pace): the
    // three untracked are refused at every present, never tracked.
    presents_go_on(&truths, 20);
    assert_eq!(tracked_among(&daemon, &games), tracked, "{}", daemon.log());
    daemon.wait_for_log("uid 65534 (3 tracked)");
    // (/metrics is refreshed about once a second.)
    let deadline = Instant::now() + HANG;
    while discovery_refused(&daemon) < refused_before + 60 {
        assert!(
            Instant::now() < deadline,
            "the refusals were not counted: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    game.wait_exit();
    let (_, report) = daemon.wait_for_report(game.pid);
    assert_eq!(
        report["processes"][0]["frames"]["count"].as_u64(),
        Some(truth(&player).len() as u64),
        "every frame of another user's game: {}",
        daemon.log()
    );

    // Two of the tracked ones exit: their charges come back, once each (four are left that
    // could be tracked), and two of the refused ones are tracked at their next presents.
    let (alive, alive_truths): (Vec<Game>, Vec<PathBuf>) = games
        .into_iter()
        .zip(truths)
        .filter(|(g, _)| !tracked[..2].contains(&g.pid))
        .unzip();
    let now_tracked = wait_until_tracked_among(&daemon, &alive, 3);
    presents_go_on(&alive_truths, 20);
    assert_eq!(
        tracked_among(&daemon, &alive),
        now_tracked,
        "{}",
        daemon.log()
    );
    drop(excluded);
}

/// One user presenting as fast as a pbuffer swaps (a microsecond each, beyond what the ring
/// buffer all games share can carry) has at most each process's fair 500 and
/// `games.max_fps_per_user` more frames a second stored; the rest are counted, so each flooding
/// process's report still adds up to every present it made, exactly, with nothing lost. Another
/// user's game at the same time is stored whole.
#[test]
fn one_users_flood_of_frames_is_counted_not_stored_and_another_users_game_is_whole() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("[games]\nmax_fps_per_user = 5000\n");
    let work = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let stop = work.path().join("stop");
    let stop_arg = stop.display().to_string();
    // The flood shares one CPU: the test is about the ring buffer, not about a user starving
    // the agent of CPU (which any user can).
    let flood = [
        "--frames",
        "1000",
        "--interval-ms",
        "0.001",
        "--work-ms",
        "0.001",
        "--pin-cpu",
        "1",
        "--stop-file",
        &stop_arg,
    ];
    let dirs: Vec<PathBuf> = (0..4).map(|i| work.path().join(format!("f{i}"))).collect();
    let mut flooders: Vec<Game> = dirs
        .iter()
        .map(|dir| game_as(65534, &game_bin(), dir, &flood))
        .collect();
    let player = work.path().join("player");
    let mut game = game_as(
        5000,
        &game_bin(),
        &player,
        &["--frames", "120", "--interval-ms", "10"],
    );
    // The flood goes on until the daemon has counted frames over the cap (however slow this
    // machine, four loops of microsecond swaps pass 5,000 a second).
    let deadline = Instant::now() + HANG;
    loop {
        let (_, metrics) = daemon.get("/metrics");
        let over: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("nvbind_frames_over_rate_total "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("nvbind_frames_over_rate_total in /metrics: {metrics}"));
        if over > 0 && nvbind_tests::presents_so_far(&player.join("truth.txt")) >= 120 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no frame over the cap: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::write(&stop, "").expect("stop the flood");
    game.wait_exit();
    let (_, report) = daemon.wait_for_report(game.pid);
    let frames = &report["processes"][0]["frames"];
    assert_eq!(
        frames["count"].as_u64(),
        Some(truth(&player).len() as u64),
        "{report}"
    );
    assert!(frames["over_rate"].is_null(), "{frames}");

    let (mut stored, mut over_rate, mut first, mut last) = (0, 0, u64::MAX, 0);
    for (flooder, dir) in flooders.iter_mut().zip(&dirs) {
        flooder.wait_exit();
        let presents = truth(dir);
        first = first.min(presents[0].before);
        last = last.max(presents[presents.len() - 1].after);
        let (_, report) = daemon.wait_for_report(flooder.pid);
        let frames = &report["processes"][0]["frames"];
        let count = frames["count"].as_u64().expect("count");
        let over = frames["over_rate"].as_u64().unwrap_or(0);
        // Nothing lost on the way (what the cap is for), and every present counted: stored, or
        // over the rate.
        assert_eq!(
            report["capture"]["dropped_events"], 0,
            "{}",
            report["capture"]
        );
        assert_eq!(count + over, presents.len() as u64, "{frames}");
        stored += count;
        over_rate += over;
        if over > 0 {
            let notes = report["capture"]["notes"].to_string();
            assert!(notes.contains("frames.over_rate"), "{notes}");
        }
    }
    eprintln!(
        "the flood: {stored} frames stored and {over_rate} over the rate in {} ms",
        (last - first) / 1_000_000
    );
    assert!(over_rate > 0);
    // In every 10 ms window the flood spanned: each process's fair 5, and its user's 50 beyond
    // them, 70 in all; twice that allows for two CPUs counting or starting a window at once.
    let windows = (last - first) / 10_000_000 + 2;
    assert!(
        stored <= windows * 140,
        "{stored} frames stored in {} ms",
        (last - first) / 1_000_000
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_and_the_first_keeps_serving() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    let socket = daemon.socket().display().to_string();
    let other = tempfile::tempdir().expect("tempdir");
    let mut second = Command::new(nvbind_tests::agent_bin())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--socket", &socket])
        .arg("--reports-dir")
        .arg(other.path().join("reports"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second daemon");
    // It must refuse at once; one still running after the deadline started (and is killed).
    let deadline = Instant::now() + HANG;
    while second.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second daemon on {socket} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = second.wait_with_output().expect("its output");
    assert_one_line_error(&out, &["another nvbind daemon", &socket, "--socket"]);
    // The first daemon's socket is still there and still answers.
    let (status, body) = curl(&["--unix-socket", &socket, "http://localhost/api/processes"]);
    assert_eq!(status, 200, "{body}");
    let (status, _) = curl(&[&daemon.url("/api/processes")]);
    assert_eq!(status, 200);
}

#[test]
fn fixture_gpus_are_served_and_binding_is_on_the_root_only_socket() {
    require_root();
    let _one = serial();
    let host = awake_mixed_fixture_host();
    let bpffs = Bpffs::mount();
    let mut daemon = Daemon::start(&fixture_gpu_config(&host, &bpffs));
    // The fixture's GPUs, with the AMD card's counters read from its sysfs files: wait for its
    // first sample (the sampler and the daemon's refresh run on their own clocks).
    let deadline = Instant::now() + HANG;
    let (gpus, amd) = loop {
        let status = daemon.get_json("/api/gpu/status");
        let gpus = status["gpus"].as_array().expect("gpus").clone();
        assert_eq!(gpus.len(), 2, "{gpus:?}");
        let amd = gpus
            .iter()
            .find(|g| g["pci_address"] == "0000:0c:00.0")
            .expect("the AMD GPU")
            .clone();
        if amd["sampled"] == true {
            break (gpus, amd);
        }
        assert!(
            Instant::now() < deadline,
            "the AMD GPU was not sampled within {HANG:?}: {amd}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(gpus.len(), 2, "{gpus:?}");
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
fn a_podman_container_is_viewed_and_bound_by_its_id_over_the_api() {
    require_root();
    let _one = serial();
    let host = FixtureHost::new("mixed-nvidia-amd");
    let bpffs = Bpffs::mount();
    let mut daemon = Daemon::start(&fixture_gpu_config(&host, &bpffs));
    let spec = podman::CdiSpec::write(&host, "daemon");
    let container = podman::Container::start(&[spec.device("0")]);
    let short = &container.id[..12];

    // The view of a real container, by a prefix of its id: its own cgroup, as Podman made it.
    let view = daemon.get_json(&format!("/api/containers/{short}/gpu"));
    assert_eq!(view["container_id"], container.id.as_str(), "{view}");
    assert_eq!(
        view["cgroup"],
        format!("/libpod_parent/libpod-{}", container.id),
        "{view}"
    );
    assert!(view["binding"].is_null(), "not bound yet: {view}");

    let sock = daemon.socket().display().to_string();
    let post = |body: String| {
        curl(&[
            "--unix-socket",
            sock.as_str(),
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
            "http://agent/api/bindings",
        ])
    };
    // Started with GPU 0: a binding to GPU 1 alone is refused, naming the CDI device.
    let (status, text) = post(format!("{{\"container\":\"{short}\",\"gpus\":[\"1\"]}}"));
    assert_eq!(status, 422, "{text}");
    assert!(
        text.contains(&format!("was started with CDI device {}", spec.device("0"))),
        "{text}"
    );
    // To GPU 0, by id: enforced, and the view shows it.
    let (status, text) = post(format!("{{\"container\":\"{short}\",\"gpus\":[\"0\"]}}"));
    assert_eq!(status, 200, "{text}");
    let view = daemon.get_json(&format!("/api/containers/{short}/gpu"));
    assert_eq!(view["binding"]["state"], "enforced", "{view}");
    assert_eq!(
        view["binding"]["container_id"],
        container.id.as_str(),
        "{view}"
    );
    let denied = container.open_results(&["/dev/kfd", "/dev/nvidiactl"]);
    assert_eq!(denied["/dev/kfd"], "Operation not permitted", "{denied:?}");
    assert_ne!(
        denied["/dev/nvidiactl"], "Operation not permitted",
        "{denied:?}"
    );
    let (status, text) = curl(&[
        "--unix-socket",
        sock.as_str(),
        "-X",
        "DELETE",
        &format!("http://agent/api/bindings?container={short}"),
    ]);
    assert_eq!(status, 200, "{text}");
    let view = daemon.get_json(&format!("/api/containers/{short}/gpu"));
    assert!(view["binding"].is_null(), "unbound: {view}");
    drop(container);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn sighup_reloads_the_config_and_sigterm_writes_open_sessions() {
    require_root();
    let _one = serial();
    let mut daemon = Daemon::start("[games]\nexclude_comm = [\"synthetic-game\"]\n");
    let work = tempfile::tempdir().expect("tempdir");

    // Excluded: presents, but is never tracked and leaves no report. Once the daemon has seen
    // it present (and said it excludes it), the API does not know it.
    let mut game = start_game(work.path(), 150, 10.0);
    let excluded = game.pid;
    daemon.wait_for_log(&format!(
        "pid {excluded} (synthetic-game) presents frames but the config excludes it"
    ));
    let (status, body) = daemon.get(&format!("/api/processes/{excluded}"));
    assert_eq!(status, 404, "{body}");
    // Gone before the reload below, which looks again at processes it excluded.
    game.wait_exit();

    // A bad file on SIGHUP: said, and the running config stays.
    let port = daemon.port;
    fs::write(daemon.config_path(), "[games\n").expect("write");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("SIGHUP: configuration not reloaded");
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
    daemon.wait_for_log("SIGHUP: configuration reloaded");
    let mut game = start_game(work.path(), FOREVER, 10.0);
    let pid = game.pid;
    daemon.wait_until_tracked(pid);
    let seen = daemon.wait_for_view(pid, "50 frames", |v| {
        v["frames_total"].as_u64().unwrap_or(0) >= 50
    })["frames_total"]
        .as_u64()
        .expect("frames_total");

    // SIGTERM while it plays: its session is written, then the daemon exits 0.
    let reports = daemon.reports();
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    game.kill();
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
    let count = report["processes"][0]["frames"]["count"]
        .as_u64()
        .expect("count");
    assert!(
        count >= seen,
        "{count} frames written, {seen} counted live before SIGTERM"
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

/// Runs a game whose libEGL is a copy of its own (another file than the host's, which the
/// probes hooked at start) in a mount namespace of its own, and checks that every frame, from the
/// first, is in its report. Returns the report.
fn a_game_with_its_own_copy_is_seen_whole(daemon: &Daemon) -> Value {
    // Like a container or the Steam runtime: the game's libEGL is another file than the host's
    // (which the probes hooked at start), in a mount namespace of its own.
    let host_egl = fs::canonicalize("/usr/lib/x86_64-linux-gnu/libEGL.so.1")
        .expect("the host's libEGL.so.1 (cargo xtask setup installs libegl1)");
    let work = tempfile::tempdir().expect("tempdir");
    let copy = work.path().join("libEGL-copy.so");
    fs::copy(&host_egl, &copy).expect("copy libEGL");
    let copy_inode = fs::metadata(&copy).expect("the copy").ino();
    // The game loads its libEGL, then waits 3 s before its first frame (a game's loading time).
    let mut game = Game::new(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {} {} && exec {} --frames 120 --interval-ms 10 \
                 --startup-delay-ms 3000 --render-thread --stall-kind lock --stall-every 50 \
                 --stall-ms 20 --truth {}",
                copy.display(),
                host_egl.display(),
                game_bin().display(),
                work.path().join("truth.txt").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the game in its own mount namespace"),
    );
    let pid = game.pid;
    // The daemon looks for such copies in new processes at fixed ages (0.2 s, 1 s, 3 s, ...), so
    // whether it finds this one before a fixed loading time ends depends on how fast this
    // machine starts the game. Hold the game (SIGSTOP) once its copy is mapped, and let it go
    // once the daemon says it hooked the copy: then every frame must be seen.
    let deadline = Instant::now() + HANG;
    loop {
        let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let mapped = maps.lines().any(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|inode| inode == copy_inode.to_string())
        });
        if mapped {
            break;
        }
        assert!(
            !game.exited() && Instant::now() < deadline,
            "the game did not map its libEGL copy within {HANG:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    game.signal(libc::SIGSTOP);
    let held_at = monotonic_ns();
    // (The daemon logs `pid N: hooked PATH (a copy the host's hooks do not cover)`.)
    daemon.wait_for_log(&format!("pid {pid}: hooked "));
    game.signal(libc::SIGCONT);
    game.wait_exit();
    let (_, report) = daemon.wait_for_report(pid);
    let truth = truth(work.path());
    assert_eq!(truth.len(), 120, "the game presented through its copy");
    assert!(
        truth[0].before > held_at,
        "the test held the game only after its first frame (it had 3 s to)"
    );
    assert_eq!(
        report["processes"][0]["frames"]["count"].as_u64(),
        Some(truth.len() as u64),
        "every frame, from the first, through the copy: {}",
        daemon.log()
    );
    report
}

#[test]
fn a_game_with_its_own_copy_of_the_graphics_library_is_seen_from_its_first_frame() {
    require_root();
    let _one = serial();
    let mut daemon = Daemon::start("");
    let report = a_game_with_its_own_copy_is_seen_whole(&daemon);
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

/// The id of the `games` group (every Debian system has it), from the group database.
fn games_gid() -> u32 {
    let out = Command::new("getent")
        .args(["group", "games"])
        .output()
        .expect("run getent");
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|gid| gid.trim().parse().ok())
        .expect("the games group exists (Debian's base-passwd makes it)")
}

#[test]
fn reports_are_readable_by_root_and_the_reports_group_only_and_debris_is_swept() {
    require_root();
    let _one = serial();
    // Debris a daemon killed mid-write leaves: a temporary report of a dead writer (pid 3999999
    // is above pid_max's default), a per-frame log whose report is gone (an hour old), and what
    // must stay: a live writer's temporary file (this test's pid), a fresh orphan (a session
    // being written has its logs before its report's name) and a file that is not ours.
    let dead_temp = ".2026-01-01T00-00-00.000Z-old-1.json.tmp-3999999-0";
    let live_temp = format!(
        ".2026-01-01T00-00-00.000Z-old-2.json.tmp-{}-0",
        std::process::id()
    );
    let old_orphan = "2026-01-01T00-00-00.000Z-old-3.frames.csv";
    let new_orphan = "2026-01-01T00-00-00.000Z-old-4.frames.csv";
    let port = free_port();
    let daemon = Daemon::start_prepared(
        &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"),
        port,
        // `games` is a group every Debian system has; the default, `nvbind`, is created by the
        // package.
        "[reports]\ngroup = \"games\"\nkeep = 50\n",
        |reports| {
            fs::create_dir(reports).expect("reports dir");
            fs::set_permissions(reports, fs::Permissions::from_mode(0o755)).expect("chmod");
            for name in [
                dead_temp,
                live_temp.as_str(),
                old_orphan,
                new_orphan,
                "notes.txt",
            ] {
                fs::write(reports.join(name), "x").expect("plant");
            }
            let touched = Command::new("touch")
                .args(["-d", "1 hour ago"])
                .arg(reports.join(old_orphan))
                .status()
                .expect("touch");
            assert!(touched.success());
        },
    );
    let reports = daemon.reports();
    let present = |name: &str| reports.join(name).exists();
    // Swept at start, before the daemon serves.
    assert!(
        !present(dead_temp),
        "a dead writer's temporary file is removed at start"
    );
    assert!(present(&live_temp), "a live writer's temporary file stays");
    assert!(present("notes.txt"), "a file that is not a session's stays");

    let work = tempfile::tempdir().expect("tempdir");
    let mut game = start_game(work.path(), 30, 5.0);
    let pid = game.pid;
    game.wait_exit();
    let (report, _) = daemon.wait_for_report(pid);
    // Pruning, after each session's report has its name, removes old orphans only.
    daemon.wait_for_log("a per-frame log whose report is gone");
    assert!(
        !present(old_orphan),
        "an hour-old log without its report is removed: {}",
        daemon.log()
    );
    assert!(
        present(new_orphan),
        "a fresh log without its report stays (its report may be on its way)"
    );
    assert!(present(&live_temp));

    let dir_meta = fs::metadata(&reports).expect("reports dir");
    assert_eq!(
        dir_meta.permissions().mode() & 0o7777,
        0o2750,
        "root's, setgid, group-readable"
    );
    let games = games_gid();
    assert_eq!((dir_meta.uid(), dir_meta.gid()), (0, games));
    let stem = report
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("stem")
        .to_string();
    let session_files: Vec<PathBuf> = fs::read_dir(&reports)
        .expect("list")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&stem))
        })
        .collect();
    assert!(
        session_files.len() >= 4,
        "the report and its three logs: {session_files:?}"
    );
    for file in &session_files {
        let meta = fs::symlink_metadata(file).expect("session file");
        assert_eq!(
            (meta.permissions().mode() & 0o777, meta.uid(), meta.gid()),
            (0o640, 0, games),
            "{} is root's and the reports group's, unreadable by others",
            file.display()
        );
    }
}

#[test]
fn a_hostile_process_name_cannot_forge_log_lines_or_drive_a_terminal() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    // Any user can name an executable so: a newline then `<0>` would be a journal entry at
    // emergency priority, and ESC sequences would drive the terminal of whoever reads the log.
    let work = tempfile::tempdir().expect("tempdir");
    let hostile = work.path().join("g\n<0>forged\x1b[2J");
    fs::copy(game_bin(), &hostile).expect("copy the game");
    let mut game = Game::new(
        Command::new(&hostile)
            .args(["--frames", "30", "--interval-ms", "5", "--truth"])
            .arg(work.path().join("truth.txt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the game"),
    );
    let pid = game.pid;
    game.wait_exit();
    let (report, _) = daemon.wait_for_report(pid);
    let log = daemon.log();
    assert!(
        log.contains(&format!("tracking pid {pid} (")),
        "the daemon logged the game: {log}"
    );
    assert!(
        log.contains("g\\n<0>forged\\u{1b}[2J"),
        "its name is in the log, escaped: {log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("<0>")) && !log.contains('\x1b'),
        "no line of the log is the name's: {log}"
    );
    let out = agent(&["report", &report.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.stdout.contains(&0x1b),
        "`report` prints no escape sequence: {}",
        String::from_utf8_lossy(&out.stdout)
    );
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
    // (Its man: page is installed with the agent, not here: the package tests render it.)
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze (Debian's systemd package)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Windows game under Wine, started after the daemon: tracked from its first frame, shown by
/// its `.exe` (with its Wine build) in the API while it runs, and its session report and file
/// named after it, every frame counted (the game's own log).
#[test]
fn a_wine_game_is_tracked_and_named_by_its_exe() {
    require_root();
    let _one = serial();
    let wine = Wine::require();
    wine.quiet();
    let x = Xvfb::start().expect("Xvfb");
    let daemon = Daemon::start("");
    let work = tempfile::tempdir().expect("tempdir");
    let truth = work.path().join("truth.txt");
    let hold = work.path().join("hold");
    let mut game = wine
        .game_command(&x.display, &["vk", "120", &truth.display().to_string()])
        .env("WINGAME_HOLD_FILE", &hold)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the game under Wine");
    // The game waits after its last frame until the daemon has said who it is.
    daemon.wait_for_log("is wingame.exe under Wine (wine-");
    let pid = game.id();
    let view = daemon.wait_until_tracked(pid);
    assert_eq!(view["name"], "wingame.exe", "{view}");
    assert_eq!(view["comm"], "wingame.exe", "{view}");
    assert_eq!(view["wine_version"], wine.version.as_str(), "{view}");
    fs::write(&hold, "").expect("release the game");
    assert!(game.wait().expect("the game ends").success());
    let (path, report) = daemon.wait_for_report(pid);
    assert!(
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(&format!("-wingame.exe-{pid}"))),
        "the session file is named after the game: {}",
        path.display()
    );
    let p = &report["processes"][0];
    assert_eq!(p["name"], "wingame.exe", "{p}");
    assert_eq!(p["wine"]["version"], wine.version.as_str(), "{}", p["wine"]);
    let windows = read_truth(&truth);
    assert_eq!(windows.len(), 120);
    assert_eq!(
        p["frames"]["count"].as_u64(),
        Some(windows.len() as u64),
        "every frame from the first: {}",
        p["frames"]
    );
}

/// `kernel.bpf_stats_enabled` is global: while it is on, the kernel times every run of every BPF
/// program on the host. The daemon turns it on only for its sampled windows (the first as the
/// probes load, 2 s long; the next a minute later), by holding the kernel's descriptor, and never
/// writes the sysctl. What is checked: the first window closes (the daemon no longer holds the
/// descriptor) having measured at least its 2 s and the scheduler program's runs; after it the
/// kernel counts no run of nvbind's programs (its own counters, read with bpftool, stand still
/// while the machine switches); and the sysctl is as it was. A daemon that kept stats on, or
/// reported costs it did not measure, fails.
#[test]
fn bpf_stats_are_on_only_in_the_sampled_windows() {
    let _serial = serial();
    require_root();
    let sysctl = "/proc/sys/kernel/bpf_stats_enabled";
    let before = fs::read_to_string(sysctl).expect("read kernel.bpf_stats_enabled");
    let daemon = Daemon::start("");
    // The first window opens as the probes load and closes once it has lasted 2 s; /metrics
    // shows it at the daemon's next housekeeping (once a second). A window that closed early
    // never reaches 2 s, and the next one opens only a minute later: the deadline is half that.
    let deadline = Instant::now() + Duration::from_secs(30);
    let measured = loop {
        let closed = !holds_bpf_stats(daemon.pid());
        let measured = metric(&daemon, "nvbind_bpf_stats_measured_seconds_total", "");
        if closed && measured >= 2.0 {
            break measured;
        }
        assert!(
            Instant::now() < deadline,
            "the first bpf_stats window did not close having measured 2 s within 30 s \
             (measured {measured} s, descriptor held: {}): {}",
            !closed,
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let runs = metric(
        &daemon,
        "nvbind_bpf_program_runs_total",
        "program=\"nvbind_sched_switch",
    );
    assert!(runs > 0.0, "no scheduler run counted in the window");
    if before.trim() == "0" {
        // Half a second of a running machine is thousands of context switches: counted only if
        // something still holds stats on. The daemon's measured time must not have moved (no
        // new window opened in between) for the comparison to say anything.
        let kernel_before = kernel_run_counts("nvbind_");
        std::thread::sleep(Duration::from_millis(500));
        let kernel_after = kernel_run_counts("nvbind_");
        let measured_after = metric(&daemon, "nvbind_bpf_stats_measured_seconds_total", "");
        assert_eq!(
            measured_after, measured,
            "a window opened within a second of the first"
        );
        assert!(!holds_bpf_stats(daemon.pid()));
        assert_eq!(
            kernel_after, kernel_before,
            "the kernel timed nvbind's programs outside the sampled window"
        );
    } else {
        eprintln!(
            "NOT CHECKED: kernel.bpf_stats_enabled is {} on this host, so the kernel times every \
             program anyway; that the daemon stops timing after its window cannot be seen here",
            before.trim()
        );
    }
    drop(daemon);
    let after = fs::read_to_string(sysctl).expect("read kernel.bpf_stats_enabled");
    assert_eq!(after, before, "kernel.bpf_stats_enabled was changed");
}

/// Times the daemon's threads went to sleep so far (the kernel's voluntary switches, summed
/// over its threads): each is one wakeup done with.
fn daemon_sleeps(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the daemon's threads")
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn an_idle_daemon_sleeps_until_told_and_a_game_speeds_it_up() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    // Past its start-up (the first bpf_stats window, 2 s) before counting.
    std::thread::sleep(Duration::from_secs(3));
    // Idle, it drains once a second (and when the kernel wakes it); tracking a game, every
    // 20 ms. Counted over the same span each, with nothing started in the span (an exec would
    // wake it), so the comparison holds on any machine: a daemon that kept its tracking pace
    // while idle, or never took it up again, sleeps about as often in both spans.
    let span = Duration::from_secs(4);
    let before = daemon_sleeps(daemon.pid());
    std::thread::sleep(span);
    let idle = daemon_sleeps(daemon.pid()) - before;

    let work = tempfile::tempdir().expect("tempdir");
    let game = start_game(work.path(), FOREVER, 10.0);
    wait_until_tracked_among(&daemon, std::slice::from_ref(&game), 1);
    let before = daemon_sleeps(daemon.pid());
    std::thread::sleep(span);
    let tracking = daemon_sleeps(daemon.pid()) - before;
    assert!(
        idle * 5 < tracking,
        "the daemon slept {idle} times in {span:?} idle and {tracking} times tracking a game: \
         idle, it should wake only about once a second\n{}",
        daemon.log()
    );
    eprintln!("daemon wakeups in {span:?}: idle {idle}, tracking a game {tracking}");
}

#[test]
fn a_games_shader_compiles_are_counted_while_it_runs_and_in_its_session() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    let x = Xvfb::start().expect("Xvfb");
    let work = tempfile::tempdir().expect("tempdir");
    let log = work.path().join("game.log");
    let stop = work.path().join("stop");
    let stop_s = stop.display().to_string();
    // A Vulkan game (lavapipe) that builds a pipeline from a large shader every 20th frame, and
    // goes on until the test has seen the counters move.
    let mut game = start_vk_compile(
        &x,
        work.path(),
        &[
            "--frames",
            "100000",
            "--compile-every",
            "20",
            "--stop-file",
            &stop_s,
        ],
    );
    let pid = game.pid;
    daemon.wait_until_tracked(pid);
    let labels = format!("pid=\"{pid}\"");
    let deadline = Instant::now() + HANG;
    let (calls, seconds) = loop {
        let calls = metric(&daemon, "nvbind_shader_compiles_total", &labels);
        let seconds = metric(&daemon, "nvbind_shader_compile_seconds_total", &labels);
        if calls >= 3.0 {
            break (calls, seconds);
        }
        assert!(
            Instant::now() < deadline,
            "no compile counted: {calls} calls; {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The new series are valid exposition by promtool's rules.
    let (status, metrics) = daemon.get("/metrics");
    assert_eq!(status, 200);
    assert_valid_exposition(work.path(), &metrics);
    fs::write(&stop, b"").expect("stop file");
    game.wait_exit();
    // What the game logged: its pipeline calls (each of several milliseconds) are all counted;
    // nothing beyond the calls it made is.
    let text = fs::read_to_string(&log).expect("the game's log");
    let made: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&"compile")).then(|| {
                let ns = |i: usize| w[i].parse::<u64>().expect("a number");
                (w[1].to_string(), (ns(4) - ns(3)) as f64 / 1e9)
            })
        })
        .collect();
    assert!(
        calls <= made.len() as f64,
        "{calls} counted, {} made",
        made.len()
    );
    // Counted when it was read: at least the game's first pipeline call (the calls return in
    // order, and three long ones had been counted), at most everything the game made.
    let first_pipeline = made
        .iter()
        .find(|(call, _)| call == "vkCreateGraphicsPipelines")
        .map_or(0.0, |(_, s)| *s);
    assert!(
        seconds >= 0.95 * first_pipeline
            && seconds <= 1.05 * made.iter().map(|(_, s)| s).sum::<f64>(),
        "{seconds} s counted; the game's calls: {made:?}"
    );
    let (_, report) = daemon.wait_for_report(pid);
    let section = &report["processes"][0]["shader_compile"];
    let pipelines = made
        .iter()
        .filter(|(call, _)| call == "vkCreateGraphicsPipelines")
        .count() as u64;
    assert_eq!(
        section["by_call"]["vkCreateGraphicsPipelines"]["calls"].as_u64(),
        Some(pipelines),
        "{section}"
    );
    assert!(
        section["stutters"].as_u64() >= Some(1),
        "the session names its compile stutters: {section}"
    );
}

/// `vk-compile` on `x`, a frame every 10 ms and pipelines from 2,000-operation shaders, its log
/// in `work/game.log` and Mesa's shader cache in `work/shader-cache` (fresh): `args` say how many
/// frames, how often it compiles and when it stops.
fn start_vk_compile(x: &Xvfb, work: &Path, args: &[&str]) -> Game {
    Game::new(
        Command::new(env!("CARGO_BIN_EXE_vk-compile"))
            .args(["--interval-ms", "10", "--shader-ops", "2000"])
            .args(args)
            .arg("--log")
            .arg(work.join("game.log"))
            .env("DISPLAY", &x.display)
            .env("MESA_SHADER_CACHE_DIR", work.join("shader-cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start vk-compile"),
    )
}

/// A Prometheus server of Debian's, on a private port and data directory (never the system
/// service), scraping one daemon every second with the shipped rules; stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(daemon_port: u16, rules: &Path) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: nvbind\n    static_configs:\n      - targets: \
                 ['127.0.0.1:{daemon_port}']\n",
                rules.display()
            ),
        )
        .expect("write the Prometheus config");
        let child = Command::new(nvbind_tests::prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("log")).expect("log file"))
            .spawn()
            .expect("run prometheus (cargo xtask setup extracts it into target/tools)");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + HANG;
        while curl(&[&p.url("/-/ready")]).0 != 200 {
            assert!(Instant::now() < deadline, "Prometheus is not ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// An instant query, now: its result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let (status, body) = curl(&[
            "-G",
            &self.url("/api/v1/query"),
            "--data-urlencode",
            &format!("query={expr}"),
        ]);
        assert_eq!(status, 200, "{expr}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of an instant vector's only sample.
fn sample_value(result: &[Value]) -> f64 {
    result
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample: {result:?}"))
}

/// The fleet view on real engines: Debian's Prometheus scrapes a daemon tracking a real Vulkan
/// game (with shader-compile stutters) and the fixture's AMD card; `promtool` checks the shipped
/// rules; `histogram_quantile` over the scraped cumulative buckets, after the game's last frame,
/// agrees with its session report's p99 within the bucket width; every recording rule and every
/// query of every panel of the Grafana dashboard returns data.
#[test]
fn prometheus_scrapes_the_daemon_and_every_dashboard_query_returns_data() {
    require_root();
    let _one = serial();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = fs::canonicalize(root.join("dist/prometheus/rules.yml")).expect("rules");
    let check = Command::new(nvbind_tests::promtool_bin())
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("run promtool");
    assert!(
        check.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let example = Command::new(nvbind_tests::promtool_bin())
        .arg("check")
        .arg("config")
        .arg(root.join("dist/prometheus/prometheus.yml"))
        .output()
        .expect("run promtool");
    assert!(
        example.status.success(),
        "promtool check config: {}",
        String::from_utf8_lossy(&example.stdout)
    );

    let host = awake_mixed_fixture_host();
    let bpffs = Bpffs::mount();
    let daemon = Daemon::start(&fixture_gpu_config(&host, &bpffs));
    let prometheus = Prometheus::start(daemon.port, &rules);
    let x = Xvfb::start().expect("Xvfb");
    let work = tempfile::tempdir().expect("tempdir");
    // 400 frames, a pipeline built every 100th (a shader-compile stutter each), then the game
    // stays alive presenting nothing, so its series stay on /metrics to be scraped whole.
    let mut game = start_vk_compile(
        &x,
        work.path(),
        &[
            "--frames",
            "400",
            "--compile-every",
            "100",
            "--linger-ms",
            "15000",
        ],
    );
    let pid = game.pid;
    daemon.wait_until_tracked(pid);
    let labels = format!("pid=\"{pid}\"");
    // The last frame: the count stops moving for 2 s (the longest pause between frames is a
    // pipeline build of well under a second).
    let deadline = Instant::now() + HANG;
    let mut last = (
        metric(&daemon, "nvbind_frames_total", &labels),
        Instant::now(),
    );
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = metric(&daemon, "nvbind_frames_total", &labels);
        if now != last.0 {
            last = (now, Instant::now());
        } else if now > 0.0 && last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        assert!(Instant::now() < deadline, "the game never finished");
    }
    // Three more scrapes and rule evaluations (1 s each) hold the final buckets.
    std::thread::sleep(Duration::from_millis(3500));
    let scraped_p99 = sample_value(&prometheus.query(&format!(
        "histogram_quantile(0.99, sum by (le) (nvbind_frame_time_seconds_bucket{{{labels}}}))"
    )));
    // The buckets' bounds as the daemon exposes them (0 before the first).
    let mut bounds: Vec<f64> = prometheus
        .query(&format!("nvbind_frame_time_seconds_bucket{{{labels}}}"))
        .iter()
        .filter_map(|s| s["metric"]["le"].as_str()?.parse().ok())
        .filter(|le: &f64| le.is_finite())
        .collect();
    bounds.push(0.0);
    bounds.sort_by(f64::total_cmp);
    assert!(bounds.len() > 10, "{bounds:?}");

    // Every recording rule has data.
    let rules_text = fs::read_to_string(&rules).expect("rules");
    let recorded: Vec<&str> = rules_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .collect();
    assert!(recorded.len() >= 4, "{rules_text}");
    for name in &recorded {
        assert!(
            !prometheus.query(name).is_empty(),
            "recording rule {name} has no data"
        );
    }
    // The dashboard: well formed, its variables answerable, and every panel's every query
    // returns data (the variables set to "all", Grafana's $__rate_interval to a minute).
    let dashboard: Value = serde_json::from_str(
        &fs::read_to_string(root.join("dist/grafana/nvbind.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    for wanted in ["datasource", "instance", "game"] {
        assert!(
            variables.iter().any(|v| v["name"] == wanted),
            "variable {wanted}"
        );
    }
    for v in variables.iter().filter(|v| v["type"] == "query") {
        // label_values(METRIC{…}, LABEL)
        let query = v["query"].as_str().expect("a variable's query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not label_values: {query}"));
        let (series, label) = inner.rsplit_once(',').expect("label_values(series, label)");
        let series = series.replace("$instance", ".+");
        let found = prometheus.query(&format!("count by ({}) ({series})", label.trim()));
        assert!(!found.is_empty(), "variable {}: no values", v["name"]);
    }
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut queries = 0;
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$instance", ".+")
                .replace("$game", ".+")
                .replace("$__rate_interval", "1m");
            assert!(
                !prometheus.query(&expr).is_empty(),
                "panel {title:?}: no data for {expr}"
            );
            queries += 1;
        }
    }
    eprintln!("{} panels, {queries} queries, all with data", panels.len());

    // The session report, written when the game exits: the scraped p99 lies within the bucket
    // that holds the report's own (Prometheus interpolates inside a bucket).
    game.wait_exit();
    let (_, report) = daemon.wait_for_report(pid);
    let report_p99 = report["processes"][0]["frames"]["frame_time_ms"]["p99"]
        .as_f64()
        .expect("p99")
        / 1e3;
    let width = |v: f64| {
        bounds
            .windows(2)
            .find(|w| v > w[0] && v <= w[1])
            .map_or(f64::INFINITY, |w| w[1] - w[0])
    };
    assert!(
        (scraped_p99 - report_p99).abs() <= width(report_p99).max(width(scraped_p99)),
        "p99 by Prometheus {scraped_p99} s, by the session report {report_p99} s"
    );
    eprintln!(
        "p99: {scraped_p99:.6} s by Prometheus, {report_p99:.6} s by the session report \
         (bucket width {:.6} s)",
        width(report_p99)
    );
}
