//! Real applications, not injected (no layer, no LD_PRELOAD): vkcube on lavapipe and glxgears on
//! llvmpipe under a private Xvfb, launched under the agent and started while the agent waits.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use nvbind_tests::{
    agent_bin, agent_with_env, busiest, read_json, require_root, stderr, wait_until_presenting,
    WatchedAgent, Xvfb,
};

/// Checks a real app's capture: frames seen, from the expected source, and consistent numbers.
fn assert_real_capture(report: &serde_json::Value, comm: &str, source: &str, min_frames: u64) {
    let p = busiest(report);
    assert_eq!(p["comm"], comm, "report: {}", report["processes"]);
    let f = &p["frames"];
    let count = f["count"].as_u64().expect("count");
    assert!(count >= min_frames, "{comm}: only {count} frames: {f}");
    assert_eq!(f["source"], source, "{comm}: {f}");
    // fps_avg is frames over elapsed time: (count - 1) intervals over the first-to-last span.
    let fps = f["fps_avg"].as_f64().expect("fps_avg");
    let span = f["duration_s"].as_f64().expect("duration_s");
    let expected = (count - 1) as f64 / span;
    assert!(
        (fps - expected).abs() <= 1e-6 * expected,
        "fps_avg {fps} vs {expected}"
    );
    let mean = f["frame_time_ms"]["mean"].as_f64().expect("mean");
    assert!(
        (1000.0 / mean - fps).abs() <= 1e-6 * fps,
        "mean frame time agrees with fps"
    );
    for field in ["min", "p50", "p90", "p95", "p99", "p99_9", "max"] {
        assert!(
            f["frame_time_ms"][field].as_f64().is_some(),
            "{field} missing"
        );
    }
    assert!(p["sched"]["on_cpu_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(report["capture"]["duration_s"].as_f64().unwrap_or(0.0) > 0.0);
    // The scheduler's switch program (on the BTF tracepoint: this kernel has BTF) ran, and its
    // cost is in the report.
    assert!(
        report["agent"]["bpf"]
            .as_array()
            .expect("bpf costs")
            .iter()
            .any(|b| b["program"] == "nvbind_sched_switch_btf"
                && b["run_count"].as_u64() > Some(0)),
        "bpf_stats recorded: {}",
        report["agent"]["bpf"]
    );
}

fn launched(app: &[&str], source: &str, comm: &str, min_frames: u64) {
    require_root();
    let x = Xvfb::start().expect("Xvfb");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let out_s = out.display().to_string();
    let mut args = vec!["record", "--duration", "3", "--out", out_s.as_str(), "--"];
    args.extend_from_slice(app);
    let result = agent_with_env(&args, &[("DISPLAY", x.display.as_str())]);
    assert!(
        result.status.success(),
        "record failed: {}",
        stderr(&result)
    );
    assert_real_capture(&read_json(&out), comm, source, min_frames);
}

#[test]
fn vkcube_launched_under_the_agent() {
    launched(&["vkcube"], "vulkan", "vkcube", 60);
}

#[test]
fn glxgears_launched_under_the_agent() {
    launched(&["glxgears"], "glx", "glxgears", 60);
}

/// glXSwapBuffers returns nothing, so a GLX present is a frame unless it names no drawable
/// (None), which cannot be one: 100 such calls (each answered by X with an error) are no frames.
#[test]
fn glx_swaps_of_no_drawable_are_not_frames() {
    require_root();
    let x = Xvfb::start().expect("Xvfb");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let out_s = out.display().to_string();
    let caller = agent_bin().with_file_name("glx-none");
    let result = agent_with_env(
        &[
            "record",
            "--out",
            out_s.as_str(),
            "--",
            caller.to_str().expect("utf-8 path"),
            "--calls",
            "100",
        ],
        &[("DISPLAY", x.display.as_str())],
    );
    assert!(
        result.status.success(),
        "record failed: {}",
        stderr(&result)
    );
    assert!(
        String::from_utf8_lossy(&result.stdout).contains("100 calls"),
        "the calls were made: {}",
        String::from_utf8_lossy(&result.stdout)
    );
    let report = read_json(&out);
    assert_eq!(report["processes"], serde_json::json!([]), "{report}");
    let sources = report["capture"]["sources"].to_string();
    assert!(
        sources.contains("glXSwapBuffers"),
        "GLX was hooked: {sources}"
    );
}

/// Starts the agent waiting for `comm`, then starts the app, and returns the report.
fn started_while_waiting(
    app: &[&str],
    comm: &str,
    env: &[(&str, &str)],
    agent_args: &[&str],
) -> serde_json::Value {
    require_root();
    let x = Xvfb::start().expect("Xvfb");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let out_s = out.display().to_string();
    let mut args = vec![
        "record",
        "--comm",
        comm,
        "--wait-timeout",
        "30",
        "--out",
        out_s.as_str(),
    ];
    args.extend_from_slice(agent_args);
    let mut agent = WatchedAgent::spawn(&args, &[]);
    // The app starts once the agent has attached everything and watches for its name, however
    // long loading took.
    agent.wait_until_capturing();
    let mut app_cmd = Command::new(app[0]);
    app_cmd
        .args(&app[1..])
        .env("DISPLAY", &x.display)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        app_cmd.env(k, v);
    }
    let mut app_proc = app_cmd.spawn().expect("start the app");
    let (status, err) = agent.finish(Duration::from_secs(60));
    stop_and_read(&mut app_proc, status.success(), &err, &out)
}

/// Stops the app, checks the agent succeeded, and reads its report.
fn stop_and_read(
    app: &mut std::process::Child,
    success: bool,
    agent_stderr: &str,
    out: &Path,
) -> serde_json::Value {
    let _ = app.kill();
    let _ = app.wait();
    assert!(success, "record failed: {agent_stderr}");
    read_json(out)
}

#[test]
fn vkcube_started_while_the_agent_waits_is_captured_from_its_first_frame() {
    // vkcube --c N presents exactly N frames and exits; the agent ends when it exits.
    let report = started_while_waiting(&["vkcube", "--c", "300"], "vkcube", &[], &[]);
    assert_real_capture(&report, "vkcube", "vulkan", 300);
    assert_eq!(
        busiest(&report)["frames"]["count"],
        300,
        "every frame, from the first"
    );
    assert_eq!(report["capture"]["end_reason"], "targets-exited");
}

#[test]
fn glxgears_started_while_the_agent_waits() {
    let report = started_while_waiting(&["glxgears"], "glxgears", &[], &["--duration", "3"]);
    assert_real_capture(&report, "glxgears", "glx", 60);
    assert_eq!(report["capture"]["end_reason"], "duration");
}

#[test]
fn vkcube_with_its_own_vulkan_loader_is_captured() {
    // A loader that is not the host's (as in a container or the Steam runtime): a separate copy,
    // so a separate inode the host-library hooks do not cover.
    let dir = tempfile::tempdir().expect("tempdir");
    let host_loader = Path::new("/usr/lib/x86_64-linux-gnu/libvulkan.so.1");
    std::fs::copy(host_loader, dir.path().join("libvulkan.so.1")).expect("copy the loader");
    let lib_dir = dir.path().display().to_string();
    let report = started_while_waiting(
        &["vkcube", "--c", "200"],
        "vkcube",
        &[("LD_LIBRARY_PATH", lib_dir.as_str())],
        &[],
    );
    assert_real_capture(&report, "vkcube", "vulkan", 200);
    assert_eq!(busiest(&report)["frames"]["count"], 200);
    let hooked_private_copy = report["capture"]["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .any(|s| {
            s["attached"] == true && s["name"].as_str().unwrap_or("").contains(lib_dir.as_str())
        });
    assert!(
        hooked_private_copy,
        "the private loader copy was hooked: {}",
        report["capture"]["sources"]
    );
}

#[test]
fn a_vulkan_game_running_before_the_agent_is_captured() {
    require_root();
    let x = Xvfb::start().expect("Xvfb");
    let mut app = Command::new("vkcube")
        .env("DISPLAY", &x.display)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vkcube");
    // The agent starts once vkcube presents frames (its present pointer long resolved).
    wait_until_presenting(app.id());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let pid = app.id().to_string();
    let result = agent_with_env(
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "2",
            "--out",
            &out.display().to_string(),
        ],
        &[],
    );
    let report = stop_and_read(&mut app, result.status.success(), &stderr(&result), &out);
    // Its present pointer was resolved long before the agent started; the driver's present
    // function was hooked at the agent's start, so its frames are still seen, and the report
    // names the source.
    assert_real_capture(&report, "vkcube", "vulkan", 50);
    assert_eq!(busiest(&report)["pid"].to_string(), pid);
}
