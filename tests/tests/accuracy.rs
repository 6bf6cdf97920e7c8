//! Accuracy against ground truth: the synthetic game presents through the real libEGL with known
//! pacing and injected stalls, and logs the time of each present itself.

use std::path::Path;

use nvbind_tests::{
    agent, busiest, game_bin, percentile, read_csv, read_json, require_root, spawn_agent, stderr,
    wait_with_deadline,
};

struct Run {
    report: serde_json::Value,
    rows: Vec<std::collections::HashMap<String, String>>,
    truth: Vec<u64>,
}

fn record_game(dir: &Path, command: &[&str], game_args: &[&str]) -> Run {
    let out = dir.join("report.json");
    let csv = dir.join("frames.csv");
    let truth = dir.join("truth.txt");
    let game = game_bin();
    let mut args: Vec<String> = vec![
        "record".into(),
        "--out".into(),
        out.display().to_string(),
        "--frames-csv".into(),
        csv.display().to_string(),
        "--".into(),
    ];
    args.extend(command.iter().map(|s| s.to_string()));
    let game_cmd = format!(
        "{} --truth {} {}",
        game.display(),
        truth.display(),
        game_args.join(" ")
    );
    if command.is_empty() {
        args.extend(game_cmd.split(' ').map(str::to_string));
    } else {
        args.push(game_cmd);
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = agent(&arg_refs);
    assert!(
        result.status.success(),
        "record failed: {}",
        stderr(&result)
    );
    let truth: Vec<u64> = std::fs::read_to_string(&truth)
        .expect("ground truth written")
        .lines()
        .map(|l| l.parse().expect("ns"))
        .collect();
    Run {
        report: read_json(&out),
        rows: read_csv(&csv),
        truth,
    }
}

/// Frame intervals, sorted (for percentiles).
fn sorted_intervals_ms(ts: &[u64]) -> Vec<f64> {
    let mut v = nvbind_tests::intervals_ms(ts);
    v.sort_by(f64::total_cmp);
    v
}

fn assert_matches_truth(run: &Run, expected_frames: usize) {
    let p = busiest(&run.report);
    assert_eq!(
        run.truth.len(),
        expected_frames,
        "the game presented every frame"
    );
    assert_eq!(
        p["frames"]["count"].as_u64(),
        Some(expected_frames as u64),
        "frame count exact; frames: {}",
        p["frames"]
    );
    assert_eq!(p["frames"]["source"], "egl");

    // Per-frame timestamps: the probe fires at the entry of eglSwapBuffers, microseconds after the
    // game's own clock read.
    let pid = p["pid"].to_string();
    let captured: Vec<u64> = run
        .rows
        .iter()
        .filter(|r| r["pid"] == pid)
        .map(|r| r["present_ns"].parse().expect("present_ns"))
        .collect();
    assert_eq!(captured.len(), expected_frames, "one CSV row per frame");
    let mut errors_us: Vec<f64> = captured
        .iter()
        .zip(&run.truth)
        .map(|(&c, &t)| (c as f64 - t as f64).abs() / 1e3)
        .collect();
    errors_us.sort_by(f64::total_cmp);
    let p99_err = percentile(&errors_us, 0.99);
    assert!(
        p99_err <= 100.0,
        "per-frame error p99 {p99_err:.1} µs > 100 µs"
    );

    let truth_ms = sorted_intervals_ms(&run.truth);
    for (q, field) in [(0.50, "p50"), (0.99, "p99")] {
        let want = percentile(&truth_ms, q);
        let got = p["frames"]["frame_time_ms"][field].as_f64().expect(field);
        assert!(
            (got - want).abs() <= 0.01 * want,
            "{field}: reported {got:.4} ms, ground truth {want:.4} ms"
        );
    }
    let fps = p["frames"]["fps_avg"].as_f64().expect("fps_avg");
    let truth_fps = (run.truth.len() - 1) as f64
        / ((run.truth[run.truth.len() - 1] - run.truth[0]) as f64 / 1e9);
    assert!(
        (fps - truth_fps).abs() <= 0.01 * truth_fps,
        "fps_avg {fps} vs {truth_fps}"
    );
}

#[test]
fn synthetic_game_frames_match_ground_truth() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let run = record_game(
        dir.path(),
        &[],
        &[
            "--frames",
            "300",
            "--interval-ms",
            "10",
            "--stall-every",
            "50",
            "--stall-ms",
            "40",
        ],
    );
    assert_matches_truth(&run, 300);

    // Every stalled frame carries its own kernel evidence: the presenting thread slept ~40 ms.
    let p = busiest(&run.report);
    let stalled: Vec<_> = run
        .rows
        .iter()
        .filter(|r| r["frame_time_ms"].parse::<f64>().is_ok_and(|ft| ft > 35.0))
        .collect();
    assert_eq!(stalled.len(), 6, "300 frames with a stall every 50th");
    for r in stalled {
        let blocked: f64 = r["blocked_ms"].parse().expect("blocked_ms");
        assert!(
            blocked >= 35.0,
            "stalled frame {} shows only {blocked} ms blocked",
            r["frame"]
        );
    }
    let max = p["frames"]["frame_time_ms"]["max"].as_f64().expect("max");
    assert!(max >= 40.0, "max frame time {max} must include the stall");
    // One sleep per frame, except the frame after each stall, whose deadline has already passed.
    let voluntary = p["sched"]["voluntary_switches"].as_u64().unwrap_or(0);
    assert!(voluntary >= 280, "voluntary switches {voluntary}");
    assert!(
        p["sched"]["on_cpu_s"].as_f64().unwrap_or(0.0) >= 0.25,
        "~1 ms of work per frame"
    );
}

#[test]
fn frames_from_a_child_process_and_a_later_thread_are_captured() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    // `sh -c '...; true'` forks the game instead of exec'ing it (a launcher-style spawn chain),
    // and the game presents from a thread it creates after startup.
    let run = record_game(
        dir.path(),
        &["sh", "-c"],
        &[
            "--frames",
            "120",
            "--interval-ms",
            "8",
            "--render-thread",
            ";",
            "true",
        ],
    );
    assert_matches_truth(&run, 120);
    let p = busiest(&run.report);
    assert_eq!(p["comm"], "synthetic-game");
    let main_pid = p["pid"].as_u64().expect("pid");
    let presenting = p["frames"]["presenting_tids"].as_array().expect("tids");
    assert_eq!(presenting.len(), 1);
    assert_ne!(
        presenting[0].as_u64(),
        Some(main_pid),
        "frames came from the render thread"
    );
    let threads = p["threads"].as_array().expect("threads");
    assert!(
        threads
            .iter()
            .any(|t| t["comm"] == "render" && t["presents"] == 120),
        "the render thread is named with its presents: {threads:?}"
    );
}

/// `record --all`: a process running before the agent and a game started during the recording are
/// both tracked, the game's frames are exact, and the agent leaves itself out.
#[test]
fn record_all_tracks_running_and_new_processes() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let truth = dir.path().join("truth.txt");
    let mut before = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("start sleep");
    let out_s = out.display().to_string();
    let recording = spawn_agent(
        &["record", "--all", "--duration", "4", "--out", &out_s],
        &[],
    );
    let agent_pid = u64::from(recording.id());
    // Loading and attaching takes about a second; the game starts after that.
    std::thread::sleep(std::time::Duration::from_millis(2000));
    let game = std::process::Command::new(game_bin())
        .arg("--truth")
        .arg(&truth)
        .args(["--frames", "60", "--interval-ms", "10"])
        .status()
        .expect("run the synthetic game");
    assert!(game.success());
    let result = wait_with_deadline(recording, std::time::Duration::from_secs(60));
    let _ = before.kill();
    let _ = before.wait();
    assert!(result.status.success(), "{}", stderr(&result));
    let report = read_json(&out);
    assert_eq!(report["capture"]["target"], "all processes");
    let processes = report["processes"].as_array().expect("processes");
    let pid_of = |p: &serde_json::Value| p["pid"].as_u64();
    let sleeper = processes
        .iter()
        .find(|p| pid_of(p) == Some(u64::from(before.id())))
        .unwrap_or_else(|| {
            panic!(
                "the sleep started before is tracked: {} processes",
                processes.len()
            )
        });
    assert_eq!(sleeper["comm"], "sleep");
    assert!(
        processes.iter().all(|p| pid_of(p) != Some(agent_pid)),
        "the agent does not record itself"
    );
    let presented = std::fs::read_to_string(&truth)
        .expect("truth")
        .lines()
        .count();
    assert_eq!(presented, 60);
    let game = &processes[0];
    assert_eq!(game["comm"], "synthetic-game", "the game comes first");
    assert_eq!(
        game["frames"]["count"].as_u64(),
        Some(60),
        "{}",
        game["frames"]
    );
    assert!(
        processes.len() >= 10,
        "every process on the host: only {}",
        processes.len()
    );
}

/// A game exec'd by a *thread* of a multi-threaded launcher takes the launcher's pid (the kernel
/// gives the exec'ing thread its leader's tid, whose exit the probes saw): its frames and its
/// main thread's scheduler evidence are still all there.
#[test]
fn a_game_execd_from_a_launcher_thread_keeps_its_scheduler_evidence() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let launcher = dir.path().join("launcher.py");
    std::fs::write(
        &launcher,
        // record_game passes the game's command line as one argument (as for `sh -c`).
        "import os, sys, threading, time\n\
         def run():\n    time.sleep(0.3)\n    argv = sys.argv[1].split()\n    os.execv(argv[0], argv)\n\
         threading.Thread(target=run).start()\n\
         while True:\n    time.sleep(1)\n",
    )
    .expect("write the launcher");
    let run = record_game(
        dir.path(),
        &["python3", launcher.to_str().expect("utf-8 path")],
        &["--frames", "120", "--interval-ms", "8"],
    );
    assert_matches_truth(&run, 120);
    let p = busiest(&run.report);
    let pid = p["pid"].as_u64().expect("pid");
    assert_eq!(p["frames"]["presenting_tids"], serde_json::json!([pid]));
    // ~120 sleeps between frames, on the tid that was the launcher's leader.
    assert!(
        p["sched"]["voluntary_switches"].as_u64() >= Some(100),
        "{}",
        p["sched"]
    );
    let presenter = &p["presenting_threads"][0];
    assert!(
        presenter["off_cpu"]["count"].as_u64() >= Some(100),
        "{presenter}"
    );
}
