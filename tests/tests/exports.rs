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
    agent, agent_with_env, frame_bounds_ns, game_bin, percentile, read_json, read_truth,
    record_game, require_root, stderr, Xvfb,
};

/// How long a wait for a program to do something may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

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

/// Whether process `pid` has `file` open.
fn has_open(pid: u32, file: &Path) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
                .any(|target| target == file)
        })
        .unwrap_or(false)
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
    let dir = fs::canonicalize(dir).expect("the MangoHud output folder");
    let deadline = Instant::now() + HANG;
    // MangoHud (in vkcube) opens its log once, writes it whole and closes it: the log is
    // complete once it has content (so the open is over) and vkcube no longer has it open.
    let log: PathBuf = loop {
        let files: Vec<PathBuf> = fs::read_dir(&dir)
            .expect("list the MangoHud output folder")
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        let is_summary = |p: &PathBuf| p.to_string_lossy().ends_with("_summary.csv");
        if let Ok(Some(status)) = app.try_wait() {
            panic!(
                "vkcube exited ({status}) before MangoHud wrote a log into {}",
                dir.display()
            );
        }
        if let Some(log) = files
            .iter()
            .find(|p| !is_summary(p) && p.extension().is_some_and(|e| e == "csv"))
        {
            let written = fs::metadata(log).is_ok_and(|m| m.len() > 0);
            if written && !has_open(app.id(), log) {
                break log.clone();
            }
        }
        if Instant::now() > deadline {
            let _ = app.kill();
            let _ = app.wait();
            panic!(
                "MangoHud wrote no log into {} within {HANG:?} (MANGOHUD_CONFIG={config}): is \
                 mangohud installed? (`cargo xtask setup` installs it)",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
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
/// (µs) summed, within `tolerance` (MangoHud reads its clock at a few places per frame).
/// Returns the frame times in µs.
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

/// nvbind's MangoHud export, exactly: each frame time is the time from the previous row's
/// `elapsed` to its own, truncated to µs, and the first row's `elapsed` (counted from the
/// capture's start, before the first frame) covers its frame time. Returns the frame times.
fn check_our_mangohud_rows(rows: &[Vec<String>]) -> Vec<f64> {
    let frametimes = check_mangohud_units(rows, "nvbind's MangoHud export", 0.01);
    let elapsed: Vec<u64> = rows
        .iter()
        .map(|r| r[11].parse().expect("elapsed in whole ns"))
        .collect();
    assert!(
        elapsed[0] >= frametimes[0] as u64 * 1000,
        "the first row's elapsed {} ns is shorter than its frame time {} µs",
        elapsed[0],
        frametimes[0]
    );
    for (i, (e, ft)) in elapsed.windows(2).zip(&frametimes[1..]).enumerate() {
        assert_eq!(
            ((e[1] - e[0]) / 1000) as f64,
            *ft,
            "row {}: elapsed {} → {} ns, frametime {ft} µs",
            i + 1,
            e[0],
            e[1]
        );
    }
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
    // vkcube --c 300 presents exactly 300 frames and exits, which ends the recording (the
    // duration only bounds a hang).
    let result = agent_with_env(
        &[
            "record",
            "--duration",
            "120",
            "--out",
            &out_s,
            "--mangohud-csv",
            &mh_s,
            "--presentmon-csv",
            &pm_s,
            "--",
            "vkcube",
            "--c",
            "300",
        ],
        &[("DISPLAY", x.display.as_str())],
    );
    let report = recorded(&result, &out);
    assert_eq!(report["capture"]["end_reason"], "targets-exited");
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
    assert_eq!(frames, 300, "vkcube --c 300 presents 300 frames");

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
    let our_ft = check_our_mangohud_rows(&ours[3..]);
    // The frame times are the report's, in µs: the median is the report's p50 (which its
    // histogram rounds up by at most 0.1 %), truncated to whole µs.
    let mut sorted = our_ft.clone();
    sorted.sort_by(f64::total_cmp);
    let our_p50 = percentile(&sorted, 0.5);
    let report_p50_us = p["frames"]["frame_time_ms"]["p50"].as_f64().expect("p50") * 1e3;
    assert!(
        our_p50 <= report_p50_us + 1e-6 && report_p50_us <= (our_p50 + 1.0) * 1.002,
        "median frametime {our_p50} µs in the export, the report's p50 is {report_p50_us} µs"
    );
    // ...in the unit MangoHud uses: another run of vkcube, so only a unit slip (1000×) is
    // told from how fast each run went.
    let (real_median, our_median) = (median(real_ft), median(our_ft));
    assert!(
        (1.0 / 30.0..=30.0).contains(&(our_median / real_median)),
        "vkcube's median frametime: {our_median} µs in nvbind's export, {real_median} µs in \
         MangoHud's log: not the same unit"
    );
    // elapsed counts from the capture's start: within the capture.
    let last_elapsed = num(&ours[ours.len() - 1][11]);
    let duration_ns = report["capture"]["duration_s"]
        .as_f64()
        .expect("duration_s")
        * 1e9;
    assert!(
        last_elapsed <= duration_ns,
        "elapsed {last_elapsed} ns, after the {duration_ns} ns the capture lasted"
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
    let truth = &run.windows;
    let mangohud = table(&read(&mh));
    let rows = &mangohud[3..];
    assert_eq!(rows.len(), truth.len() - 1, "every frame but the first");
    let frametimes = check_our_mangohud_rows(rows);
    // Row i is frame i + 1: its time lies between what the game's own present windows allow
    // (truncated to µs), whatever the machine's load.
    for (i, ft) in frametimes.iter().enumerate() {
        let (lo, hi) = frame_bounds_ns(truth, i + 1);
        assert!(
            ((lo / 1000) as f64..=(hi / 1000) as f64).contains(ft),
            "row {i}: frametime {ft} µs, the game's presents allow {lo}..={hi} ns"
        );
    }
    let presentmon = table(&read(&pm));
    assert_eq!(presentmon[0], presentmon_columns());
    assert_eq!(presentmon.len() - 1, rows.len());
    let mut last_t = None;
    for (i, row) in presentmon[1..].iter().enumerate() {
        assert_eq!(row[0], "synthetic-game");
        assert_eq!(row[3], "OpenGL", "EGL presents are OpenGL's");
        let (lo, hi) = frame_bounds_ns(truth, i + 1);
        let ms = num(&row[9]);
        assert!(
            ms >= lo as f64 / 1e6 - 1e-9 && ms <= hi as f64 / 1e6 + 1e-9,
            "row {i}: msBetweenPresents {ms}, the game's presents allow {lo}..={hi} ns"
        );
        // TimeInSeconds moves by the same frame time (counted from the capture's start, which
        // comes before the game's first present: the clock starts before the command runs).
        let t = num(&row[7]);
        if let Some(last) = last_t {
            let dt = t - last;
            assert!(
                dt >= lo as f64 / 1e9 - 1e-9 && dt <= hi as f64 / 1e9 + 1e-9,
                "row {i}: TimeInSeconds moved {dt} s, the game's presents allow {lo}..={hi} ns"
            );
        }
        last_t = Some(t);
    }
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
    // The recording ends when both games have ended (the duration only bounds a hang).
    let result = agent(&[
        "record",
        "--duration",
        "120",
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
    assert_eq!(report["capture"]["end_reason"], "targets-exited");
    let with_frames = processes_with_frames(&report);
    assert_eq!(
        with_frames.len(),
        2,
        "two games presented: {}",
        report["processes"]
    );
    // Each game's own record of its presents: every one of them was captured.
    let mut presented: Vec<usize> = ["a.txt", "b.txt"]
        .iter()
        .map(|f| read_truth(&dir.path().join(f)).len())
        .collect();
    let mut captured: Vec<usize> = with_frames
        .iter()
        .map(|p| p["frames"]["count"].as_u64().expect("count") as usize)
        .collect();
    presented.sort_unstable();
    captured.sort_unstable();
    assert_eq!(captured, presented, "frames captured against presented");
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
