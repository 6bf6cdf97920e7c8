//! Accuracy against ground truth: the synthetic game presents through the real libEGL with known
//! pacing and injected stalls, and logs the time of each present itself.

use std::path::Path;

use nvbind_tests::{
    agent, assert_fps_allowed, assert_frames_accounted, assert_quantile_allowed,
    assert_within_windows, busiest, game_bin, read_csv, read_json, read_rusage, read_truth,
    require_root, stderr, switch_count_slack, GameRusage, PresentWindow, WatchedAgent,
};

struct Run {
    report: serde_json::Value,
    rows: Vec<std::collections::HashMap<String, String>>,
    /// The game's own [before, after] window around each present call.
    windows: Vec<PresentWindow>,
    /// What the kernel counted for the game (getrusage).
    rusage: GameRusage,
}

fn record_game(dir: &Path, command: &[&str], game_args: &[&str]) -> Run {
    record_game_with(dir, &[], command, game_args)
}

/// `record_game` with more arguments for `record`.
fn record_game_with(dir: &Path, agent_args: &[&str], command: &[&str], game_args: &[&str]) -> Run {
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
    ];
    args.extend(agent_args.iter().map(|s| s.to_string()));
    args.push("--".into());
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
    Run {
        report: read_json(&out),
        rows: read_csv(&csv),
        windows: read_truth(&truth),
        rusage: read_rusage(&truth),
    }
}

/// The process's CSV rows in present order.
fn rows_of<'a>(
    run: &'a Run,
    p: &serde_json::Value,
) -> Vec<&'a std::collections::HashMap<String, String>> {
    let pid = p["pid"].to_string();
    let mut rows: Vec<_> = run.rows.iter().filter(|r| r["pid"] == pid).collect();
    rows.sort_by_key(|r| r["present_ns"].parse::<u64>().expect("present_ns"));
    rows
}

/// The report's scheduler counts against the kernel's own (getrusage, read by the game just
/// before it exits): the probes see every switch of the process, so they agree but for the
/// few switches of the exit itself, and the loader's before the probes were attached.
fn assert_sched_matches_rusage(report: &serde_json::Value, rusage: &GameRusage) {
    let p = busiest(report);
    let truth = rusage.process;
    let voluntary = p["sched"]["voluntary_switches"]
        .as_u64()
        .expect("voluntary");
    let slack = switch_count_slack(truth.voluntary, report);
    assert!(
        voluntary + slack >= truth.voluntary && voluntary <= truth.voluntary + slack,
        "voluntary switches {voluntary}, the kernel counted {} (±{slack}): {}",
        truth.voluntary,
        p["sched"]
    );
    let on_cpu_s = p["sched"]["on_cpu_s"].as_f64().expect("on_cpu_s");
    let truth_s = truth.cpu_ns as f64 / 1e9;
    assert!(
        (on_cpu_s - truth_s).abs() <= 0.02 + 0.1 * truth_s,
        "on-CPU {on_cpu_s:.3} s, the kernel counted {truth_s:.3} s: {}",
        p["sched"]
    );
}

fn assert_matches_truth(run: &Run, expected_frames: usize) {
    let p = busiest(&run.report);
    assert_eq!(
        run.windows.len(),
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

    // Per-frame timestamps: the probe fires at the entry of eglSwapBuffers, so each frame's time
    // lies between the game's clock reads just before and just after that call, exactly.
    let captured: Vec<u64> = rows_of(run, p)
        .iter()
        .map(|r| r["present_ns"].parse().expect("present_ns"))
        .collect();
    assert_within_windows(&captured, &run.windows);

    // The summary is computed from those frames: its percentiles and FPS are ones the windows
    // allow (a wrong interval, a dropped or doubled frame moves them out).
    for (q, field) in [(0.50, "p50"), (0.99, "p99")] {
        let got = p["frames"]["frame_time_ms"][field].as_f64().expect(field);
        assert_quantile_allowed(&run.windows, q, got, field);
    }
    let fps = p["frames"]["fps_avg"].as_f64().expect("fps_avg");
    assert_fps_allowed(&run.windows, fps);
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

    // Every stalled frame carries its own kernel evidence: the presenting thread slept 40 ms
    // (a sleep never ends early, however loaded the machine) before frame 50k + 49. Other frames
    // may be long too on a loaded machine; their times are checked against the windows above.
    let p = busiest(&run.report);
    let rows = rows_of(&run, p);
    let stalled: Vec<usize> = (0..300).filter(|i| i % 50 == 49).collect();
    assert_eq!(stalled.len(), 6);
    for i in stalled {
        let r = rows[i];
        let ft: f64 = r["frame_time_ms"].parse().expect("frame_time_ms");
        let blocked: f64 = r["blocked_ms"].parse().expect("blocked_ms");
        assert!(
            ft >= 40.0 && blocked >= 35.0,
            "stalled frame {i} took {ft} ms with only {blocked} ms blocked: {r:?}"
        );
    }
    let max = p["frames"]["frame_time_ms"]["max"].as_f64().expect("max");
    assert!(max >= 40.0, "max frame time {max} must include the stall");
    // About one sleep per frame (fewer where a frame ran late) and ~1 ms of work per frame: the
    // kernel's own counts for the process, which the probes must match.
    assert_sched_matches_rusage(&run.report, &run.rusage);
    // Every program's skipped runs are in the report, and any skip is said in the notes.
    let bpf = run.report["agent"]["bpf"].as_array().expect("agent.bpf");
    let skipped: u64 = bpf
        .iter()
        .map(|c| c["recursion_misses"].as_u64().expect("recursion_misses"))
        .sum();
    let said = run.report["capture"]["notes"]
        .to_string()
        .contains("the kernel skipped runs");
    assert_eq!(said, skipped > 0, "{}", run.report["capture"]["notes"]);
}

/// A present is a frame only if the call succeeded: a swap EGL refuses (no surface) before every
/// third frame is not counted, the frames are exactly the game's successful presents, and each
/// frame's evidence still covers its whole interval (the refused call's time joins the next
/// frame's).
#[test]
fn refused_presents_are_not_frames() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let run = record_game(
        dir.path(),
        &[],
        &["--frames", "150", "--interval-ms", "8", "--fail-every", "3"],
    );
    // 150 frames, after 50 refused swaps: counting those would give 200, or put frames outside
    // the windows of the successful calls.
    assert_matches_truth(&run, 150);
    let p = busiest(&run.report);
    assert_frames_accounted(&rows_of(&run, p).into_iter().cloned().collect::<Vec<_>>());
    assert_sched_matches_rusage(&run.report, &run.rusage);

    // A process whose every present is refused presents no frame: `record` says so and lists
    // it among the processes without frames.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let truth = dir.path().join("truth.txt");
    let game = game_bin();
    let result = agent(&[
        "record",
        "--out",
        out.to_str().expect("utf-8 path"),
        "--",
        game.to_str().expect("utf-8 path"),
        "--truth",
        truth.to_str().expect("utf-8 path"),
        "--frames",
        "100",
        "--interval-ms",
        "5",
        "--no-surface",
    ]);
    assert!(
        result.status.success(),
        "record failed: {}",
        stderr(&result)
    );
    assert!(
        stderr(&result).contains("no frames were captured"),
        "{}",
        stderr(&result)
    );
    let report = read_json(&out);
    assert_eq!(report["processes"], serde_json::json!([]), "{report}");
    let others = report["other_processes"]["processes"].to_string();
    assert!(others.contains("synthetic-game"), "{others}");
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
    // A long duration: the recording ends when the test says so (SIGINT), after the game has
    // presented all its frames, however slow the machine is to start it.
    let mut recording = WatchedAgent::spawn(
        &["record", "--all", "--duration", "600", "--out", &out_s],
        &[],
    );
    let agent_pid = u64::from(recording.id());
    // The game starts once everything is attached (the agent says so).
    recording.wait_until_capturing();
    let mut game = std::process::Command::new(game_bin())
        .arg("--truth")
        .arg(&truth)
        .args(["--frames", "60", "--interval-ms", "10"])
        .spawn()
        .expect("run the synthetic game");
    let game_pid = u64::from(game.id());
    assert!(game.wait().expect("the game ends").success());
    recording.signal(libc::SIGINT);
    let (status, err) = recording.finish(std::time::Duration::from_secs(120));
    let _ = before.kill();
    let _ = before.wait();
    assert!(status.success(), "{err}");
    let report = read_json(&out);
    assert_eq!(report["capture"]["target"], "all processes");
    let processes = report["processes"].as_array().expect("processes");
    let pid_of = |p: &serde_json::Value| p["pid"].as_u64();
    // Processes that made no frame are folded into one section, each in brief.
    let others = report["other_processes"]["processes"]
        .as_array()
        .expect("other_processes");
    assert_eq!(
        report["other_processes"]["count"].as_u64(),
        Some(others.len() as u64)
    );
    assert!(
        processes
            .iter()
            .all(|p| p["frames"]["count"].as_u64() > Some(0)),
        "only presenters are listed in full"
    );
    let sleeper = others
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
        processes
            .iter()
            .chain(others)
            .all(|p| pid_of(p) != Some(agent_pid)),
        "the agent does not record itself"
    );
    let presented = read_truth(&truth);
    assert_eq!(presented.len(), 60);
    // `--all` records whatever else presents on the host too: the game is found by its pid.
    let game = processes
        .iter()
        .find(|p| pid_of(p) == Some(game_pid))
        .unwrap_or_else(|| panic!("the game made frames: {processes:?}"));
    assert_eq!(game["comm"], "synthetic-game");
    assert_eq!(
        game["frames"]["count"].as_u64(),
        Some(60),
        "{}",
        game["frames"]
    );
    assert_quantile_allowed(
        &presented,
        0.5,
        game["frames"]["frame_time_ms"]["p50"]
            .as_f64()
            .expect("p50"),
        "p50",
    );
    assert!(
        processes.len() + others.len() >= 10,
        "every process on the host: only {}",
        processes.len() + others.len()
    );
}

/// The scheduler probes give the same truth on either kind of tracepoint: BTF tracepoints (the
/// default where the kernel has BTF; they read `task_struct` at offsets from the kernel's BTF) and
/// classic ones (the fallback). Each run's frames match the game's own log and its switch counts
/// and CPU time the kernel's getrusage; a wrong BTF offset (pid, state, exit state) or a wrong
/// decoding of the raw task state loses or misfiles switches, which these comparisons catch.
#[test]
fn scheduler_counts_match_the_kernel_on_btf_and_classic_tracepoints() {
    require_root();
    for (hooks, program, hook, bpf_stats) in [
        ("btf", "nvbind_sched_switch_btf", "tp_btf", "on"),
        ("classic", "nvbind_sched_switch", "tracepoint", "off"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = record_game_with(
            dir.path(),
            &["--kernel-hooks", hooks, "--bpf-stats", bpf_stats],
            &[],
            &[
                "--frames",
                "120",
                "--interval-ms",
                "8",
                "--stall-every",
                "40",
                "--stall-ms",
                "20",
            ],
        );
        let switch = run.report["capture"]["sources"]
            .as_array()
            .expect("capture.sources")
            .iter()
            .find(|s| s["name"] == "sched:sched_switch")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            (&switch["program"], &switch["hook"], &switch["attached"]),
            (
                &serde_json::json!(program),
                &serde_json::json!(hook),
                &serde_json::json!(true)
            ),
            "--kernel-hooks {hooks}: {switch}"
        );
        assert_matches_truth(&run, 120);
        assert_sched_matches_rusage(&run.report, &run.rusage);
        // With bpf_stats on for the whole recording its costs cover all of it; with them off
        // nothing is measured (and the counts above did not need them).
        let costs = run.report["agent"]["bpf"].as_array().expect("agent.bpf");
        let switch_cost = costs
            .iter()
            .find(|c| c["program"] == program)
            .expect("the switch program's cost");
        let duration = run.report["capture"]["duration_s"]
            .as_f64()
            .expect("duration");
        if bpf_stats == "on" {
            assert!(
                switch_cost["run_count"].as_u64() > Some(0)
                    && switch_cost["measured_s"].as_f64() >= Some(duration),
                "--bpf-stats on measured less than the capture ({duration} s): {switch_cost}"
            );
        } else {
            assert!(
                costs
                    .iter()
                    .all(|c| c["run_count"] == 0 && c["measured_s"] == 0.0),
                "--bpf-stats off measured costs: {costs:?}"
            );
        }
    }
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
    // ~120 sleeps between frames, on the tid that was the launcher's leader: the presenter's
    // off-CPU waits are the kernel's count of its voluntary switches (getrusage of that thread,
    // read by the game after its last frame). Without its scheduler evidence the presenter would
    // show only the few waits after the probes noticed the exec.
    //
    // The process's waits as they ended (the `blocked` histogram, counted per process) are the
    // kernel's count for the process. Its per-thread totals are not: the launcher's threads that
    // the exec replaced leave with their counters (a documented loss, docs/probes.md), so they
    // can only be fewer than the kernel's, never more.
    let truth = run.rusage.process.voluntary;
    let slack = switch_count_slack(truth, &run.report);
    let blocked = p["sched"]["blocked"]["count"]
        .as_u64()
        .expect("blocked count");
    assert!(
        blocked + slack >= truth && blocked <= truth + slack,
        "the process's waits {blocked}, the kernel counted {truth} voluntary switches: {}",
        p["sched"]
    );
    let voluntary = p["sched"]["voluntary_switches"]
        .as_u64()
        .expect("voluntary");
    assert!(voluntary <= truth + slack, "{}", p["sched"]);
    let presenter = &p["presenting_threads"][0];
    // Every switch of the frame loop is the presenter's; what the thread did before its exec is
    // counted under its old tid, so the whole life's count is only an upper bound.
    let waits = presenter["off_cpu"]["count"]
        .as_u64()
        .expect("off_cpu count");
    let (in_loop, whole) = (run.rusage.frame_loop.voluntary, run.rusage.thread.voluntary);
    assert!(
        waits + slack >= in_loop && waits <= whole + slack,
        "presenter waited {waits} times, the kernel counted {in_loop} voluntary switches in its \
         frame loop and {whole} in its whole life: {presenter}"
    );
}
