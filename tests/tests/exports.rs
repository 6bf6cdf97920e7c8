//! `record --mangohud-csv FILE --presentmon-csv FILE`: nvbind's frames in MangoHud's and
//! PresentMon's formats, checked against the real tools.
//!
//! MangoHud: the reference is the MangoHud installed on this machine (Debian's mangohud, set up by
//! `cargo xtask setup`), logging vkcube under a private Xvfb exactly as a user would
//! (`MANGOHUD=1 MANGOHUD_CONFIG=output_folder=…,autostart_log=1,log_duration=2,log_interval=0`).
//! nvbind's export of a recording of vkcube must have the same header lines, the same number of
//! columns on every line, the same system values where both read the same host, and values in
//! the same units (frametime in µs, fps = 1e6 / frametime, elapsed in ns).
//!
//! PresentMon runs only on Windows, so its header is vendored from its documentation and source
//! (`tests/fixtures/presentmon/columns-1.x.txt`, with the URLs) and the values are checked
//! against what the agent measured.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nvbind_tests::{
    agent, agent_with_env, game_bin, read_json, record_game, require_root, stderr, Xvfb,
};

/// The CSV's lines, split at commas (neither MangoHud nor PresentMon quotes fields).
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn num(s: &str) -> f64 {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not a number: {e}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The PresentMon 1.x columns, from the vendored fixture.
fn presentmon_columns() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/presentmon/columns-1.x.txt");
    read(&path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Runs vkcube with the real MangoHud logging every frame for 2 s, and returns the log.
fn real_mangohud_log(display: &str, dir: &Path) -> String {
    let config = format!(
        "output_folder={},autostart_log=1,log_duration=2,log_interval=0",
        dir.display()
    );
    let mut app = Command::new("vkcube")
        .env("DISPLAY", display)
        .env("MANGOHUD", "1")
        .env("MANGOHUD_CONFIG", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vkcube (cargo xtask setup installs it)");
    let deadline = Instant::now() + Duration::from_secs(30);
    let log: PathBuf = loop {
        let files: Vec<PathBuf> = fs::read_dir(dir)
            .expect("list the MangoHud output folder")
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        let is_summary = |p: &PathBuf| p.to_string_lossy().ends_with("_summary.csv");
        // MangoHud writes the log and its summary from two threads it joins together.
        if files.iter().any(is_summary) {
            if let Some(log) = files
                .iter()
                .find(|p| !is_summary(p) && p.extension().is_some_and(|e| e == "csv"))
            {
                break log.clone();
            }
        }
        if let Ok(Some(status)) = app.try_wait() {
            panic!(
                "vkcube exited ({status}) before MangoHud wrote a log into {}",
                dir.display()
            );
        }
        if Instant::now() > deadline {
            let _ = app.kill();
            let _ = app.wait();
            panic!(
                "MangoHud wrote no log into {} within 30 s (MANGOHUD_CONFIG={config}): is \
                 mangohud installed? (`cargo xtask setup` installs it)",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let both writer threads finish before vkcube goes.
    std::thread::sleep(Duration::from_millis(500));
    let _ = app.kill();
    let _ = app.wait();
    let text = read(&log);
    assert!(
        text.lines().count() > 10,
        "MangoHud's log {} is too short:\n{text}",
        log.display()
    );
    text
}

/// Checks the units of a MangoHud frame log's rows (real or nvbind's): fps = 1e6 / frametime
/// (frametime in µs), elapsed strictly increasing, and its span (ns) matching the frame times
/// (µs) summed, within `tolerance`. Returns the frame times in µs.
fn check_mangohud_units(rows: &[Vec<String>], what: &str, tolerance: f64) -> Vec<f64> {
    let mut frametimes = Vec::new();
    let mut elapsed = Vec::new();
    for row in rows {
        let fps = num(&row[0]);
        let frametime_us = num(&row[1]);
        assert!(frametime_us > 0.0, "{what}: frametime 0 in {row:?}");
        assert!(
            (fps - 1e6 / frametime_us).abs() <= 1e-4 * fps,
            "{what}: fps {fps} is not 1e6 / frametime {frametime_us} µs"
        );
        assert_eq!(frametime_us.fract(), 0.0, "{what}: frametime is whole µs");
        frametimes.push(frametime_us);
        elapsed.push(num(&row[11]));
    }
    assert!(
        elapsed.windows(2).all(|w| w[1] > w[0]),
        "{what}: elapsed must increase: {elapsed:?}"
    );
    let span_ns = elapsed[elapsed.len() - 1] - elapsed[0];
    let frames_ns: f64 = frametimes[1..].iter().sum::<f64>() * 1e3;
    assert!(
        (span_ns - frames_ns).abs() <= tolerance * span_ns,
        "{what}: elapsed spans {span_ns} ns but the frame times add up to {frames_ns} ns"
    );
    frametimes
}

#[test]
fn mangohud_and_presentmon_exports_of_vkcube_match_the_real_formats() {
    require_root();
    let x = Xvfb::start().expect("Xvfb");
    let dir = tempfile::tempdir().expect("tempdir");

    // The real MangoHud's log of vkcube.
    let mh_dir = dir.path().join("mangohud");
    fs::create_dir(&mh_dir).expect("mkdir");
    let real = table(&real_mangohud_log(&x.display, &mh_dir));

    // nvbind's recording of vkcube, exported in both formats.
    let out = dir.path().join("report.json");
    let mh = dir.path().join("vkcube-mangohud.csv");
    let pm = dir.path().join("vkcube-presentmon.csv");
    let (out_s, mh_s, pm_s) = (
        out.display().to_string(),
        mh.display().to_string(),
        pm.display().to_string(),
    );
    let result = agent_with_env(
        &[
            "record",
            "--duration",
            "3",
            "--out",
            &out_s,
            "--mangohud-csv",
            &mh_s,
            "--presentmon-csv",
            &pm_s,
            "--",
            "vkcube",
        ],
        &[("DISPLAY", x.display.as_str())],
    );
    let report = recorded(&result, &out);
    let with_frames = processes_with_frames(&report);
    assert_eq!(
        with_frames.len(),
        1,
        "one process presented: {}",
        report["processes"]
    );
    let p = with_frames[0];
    assert_eq!(p["comm"], "vkcube");
    let pid = p["pid"].as_u64().expect("pid");
    let frames = p["frames"]["count"].as_u64().expect("count") as usize;
    assert!(frames > 60, "vkcube presented only {frames} frames");

    // --- MangoHud ---
    let ours = table(&read(&mh));
    assert_eq!(ours[0], real[0], "the system header line is MangoHud's");
    assert_eq!(ours[2], real[2], "the per-frame header line is MangoHud's");
    assert_eq!(ours[1].len(), real[1].len(), "system line: {:?}", ours[1]);
    for (i, name) in real[0].iter().enumerate() {
        // Both read the same host; the GPU and driver are described differently (MangoHud asks
        // Vulkan and glxinfo, nvbind the kernel) and documented in docs/exports.md.
        if ["os", "cpu", "ram", "kernel", "cpuscheduler"].contains(&name.as_str()) {
            assert_eq!(ours[1][i], real[1][i], "system value {name}");
        }
    }
    for (n, row) in ours.iter().enumerate().skip(3) {
        assert_eq!(
            row.len(),
            real[2].len(),
            "line {} has {} columns",
            n + 1,
            row.len()
        );
    }
    for (n, row) in real.iter().enumerate().skip(3) {
        assert_eq!(
            row.len(),
            real[2].len(),
            "MangoHud's line {} has {} columns",
            n + 1,
            row.len()
        );
    }
    // One row per frame with a frame time: every frame but the first.
    assert_eq!(ours.len() - 3, frames - 1);
    let real_ft = check_mangohud_units(&real[3..], "MangoHud's log", 0.25);
    let our_ft = check_mangohud_units(&ours[3..], "nvbind's MangoHud export", 0.01);
    let (real_median, our_median) = (median(real_ft), median(our_ft.clone()));
    assert!(
        (0.1..=10.0).contains(&(our_median / real_median)),
        "vkcube's median frametime: {our_median} µs in nvbind's export, {real_median} µs in \
         MangoHud's log: not the same unit"
    );
    // elapsed counts from the capture's start, within the 3 s recorded.
    let last_elapsed = num(&ours[ours.len() - 1][11]);
    assert!(
        (1e8..10e9).contains(&last_elapsed),
        "elapsed {last_elapsed} ns"
    );

    // --- PresentMon ---
    let pm_rows = table(&read(&pm));
    assert_eq!(pm_rows[0], presentmon_columns(), "PresentMon 1.x's header");
    assert_eq!(pm_rows.len() - 1, frames - 1, "every frame but the first");
    let col = |name: &str| {
        pm_rows[0]
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no {name} column"))
    };
    let mut last_t = f64::NEG_INFINITY;
    for (row, mh_row) in pm_rows[1..].iter().zip(&ours[3..]) {
        assert_eq!(row.len(), pm_rows[0].len(), "{row:?}");
        assert_eq!(row[col("Application")], "vkcube");
        assert_eq!(num(&row[col("ProcessID")]), pid as f64);
        assert_eq!(row[col("Runtime")], "Vulkan");
        assert_eq!(row[col("Dropped")], "0");
        assert_eq!(row[col("PresentMode")], "Other");
        assert_eq!(row[col("SwapChainAddress")], "0x0000000000000000");
        for unknown in [
            "msInPresentAPI",
            "msUntilRenderComplete",
            "msUntilDisplayed",
        ] {
            assert_eq!(num(&row[col(unknown)]), 0.0, "{unknown}");
        }
        // The same frame in both exports: ms here, µs (truncated) there; s here, ns there.
        let ms = num(&row[col("msBetweenPresents")]);
        let us = num(&mh_row[1]);
        assert!((ms * 1e3 - us).abs() < 1.0 + 1e-6, "{ms} ms vs {us} µs");
        let t = num(&row[col("TimeInSeconds")]);
        assert!(t > last_t, "TimeInSeconds increases");
        last_t = t;
        let elapsed_s = num(&mh_row[11]) / 1e9;
        assert!((t - elapsed_s).abs() < 1e-6, "{t} s vs {elapsed_s} s");
    }
}

#[test]
fn synthetic_game_exports_carry_its_frame_times() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let mh = dir.path().join("game.mangohud.csv");
    let pm = dir.path().join("game.presentmon.csv");
    let (mh_s, pm_s) = (mh.display().to_string(), pm.display().to_string());
    let run = record_game(
        dir.path(),
        &["--mangohud-csv", &mh_s, "--presentmon-csv", &pm_s],
        &["--frames", "120", "--interval-ms", "10"],
        || {},
    );
    let truth_us: Vec<f64> = run
        .truth
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e3)
        .collect();
    let mangohud = table(&read(&mh));
    let rows = &mangohud[3..];
    assert_eq!(rows.len(), run.truth.len() - 1, "every frame but the first");
    let frametimes = check_mangohud_units(rows, "nvbind's MangoHud export", 0.01);
    let (ours, truth) = (median(frametimes), median(truth_us));
    assert!(
        (ours - truth).abs() <= 0.05 * truth,
        "median frametime {ours} µs, the game's own {truth} µs"
    );
    let presentmon = table(&read(&pm));
    assert_eq!(presentmon[0], presentmon_columns());
    assert_eq!(presentmon.len() - 1, rows.len());
    for row in &presentmon[1..] {
        assert_eq!(row[0], "synthetic-game");
        assert_eq!(row[3], "OpenGL", "EGL presents are OpenGL's");
    }
    let ms = median(presentmon[1..].iter().map(|r| num(&r[9])).collect());
    assert!((ms - 10.0).abs() < 0.5, "median msBetweenPresents {ms}");
}

#[test]
fn several_processes_get_one_file_each_and_no_frames_gives_headers_only() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let mh = dir.path().join("mh.csv");
    let pm = dir.path().join("pm.csv");
    let game = game_bin().display().to_string();
    let script = format!(
        "{game} --frames 60 --truth {d}/a.txt & {game} --frames 60 --truth {d}/b.txt & wait",
        d = dir.path().display()
    );
    let (out_s, mh_s, pm_s) = (
        out.display().to_string(),
        mh.display().to_string(),
        pm.display().to_string(),
    );
    let result = agent(&[
        "record",
        "--duration",
        "20",
        "--out",
        &out_s,
        "--mangohud-csv",
        &mh_s,
        "--presentmon-csv",
        &pm_s,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let report = recorded(&result, &out);
    let with_frames = processes_with_frames(&report);
    assert_eq!(
        with_frames.len(),
        2,
        "two games presented: {}",
        report["processes"]
    );
    assert!(
        !mh.exists() && !pm.exists(),
        "several processes: no unsuffixed file"
    );
    for p in with_frames {
        let pid = p["pid"].as_u64().expect("pid");
        let timed = p["frames"]["count"].as_u64().expect("count") as usize - 1;
        let mh_pid = dir.path().join(format!("mh-{pid}.csv"));
        let pm_pid = dir.path().join(format!("pm-{pid}.csv"));
        let mangohud = table(&read(&mh_pid));
        assert_eq!(mangohud.len() - 3, timed, "{}", mh_pid.display());
        let presentmon = table(&read(&pm_pid));
        assert_eq!(presentmon.len() - 1, timed, "{}", pm_pid.display());
        assert!(presentmon[1..].iter().all(|r| r[1] == pid.to_string()));
    }

    // A recording without frames still leaves a file with the headers.
    let result = agent(&[
        "record",
        "--duration",
        "1",
        "--out",
        &out_s,
        "--mangohud-csv",
        &mh_s,
        "--presentmon-csv",
        &pm_s,
        "--",
        "sleep",
        "5",
    ]);
    assert!(
        result.status.success(),
        "record failed: {}",
        stderr(&result)
    );
    let mangohud = table(&read(&mh));
    assert_eq!(mangohud.len(), 3, "headers only: {mangohud:?}");
    assert_eq!(mangohud[2][0], "fps");
    assert_eq!(table(&read(&pm)), vec![presentmon_columns()]);
}

/// The report of a recording that must have succeeded.
fn recorded(result: &std::process::Output, out: &std::path::Path) -> serde_json::Value {
    assert!(result.status.success(), "record failed: {}", stderr(result));
    read_json(out)
}

/// The report's processes that presented frames.
fn processes_with_frames(report: &serde_json::Value) -> Vec<&serde_json::Value> {
    report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["frames"]["count"].as_u64() > Some(0))
        .collect()
}
