//! Stopping a capture with SIGINT or SIGTERM still writes a complete report, atomically.

use std::time::{Duration, Instant};

use nvbind_tests::{
    busiest, game_bin, read_json, require_root, spawn_agent, stderr, wait_for_process,
    wait_with_deadline,
};

/// Presents the game has made when the capture is stopped.
const PRESENTS_BEFORE_THE_SIGNAL: u32 = 50;

/// Waits until the synthetic game `pid` (frame loop on its main thread, `work_ms` of busy work
/// per frame) has presented at least `frames` frames, by the kernel's own account of that thread
/// rather than a guess at how long start-up takes:
/// - the loop has begun once the thread is seen asleep in its `clock_nanosleep(CLOCK_MONOTONIC,
///   TIMER_ABSTIME)` (syscall 230, used nowhere else in the game), at CPU time `c0`;
/// - a loop iteration costs at most `work_ms` (the busy work ends by the wall clock, and CPU time
///   never outruns it) plus well under 2 ms (a present that EGL refuses at once, two syscalls):
///   once the thread's CPU time (schedstat) passes `c0 + frames × (work_ms + 2 ms)`, at least
///   `frames` presents have followed.
///
/// The deadline only bounds a hang.
fn wait_for_presents(pid: u32, work_ms: f64, frames: u32) {
    let task = format!("/proc/{pid}/task/{pid}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let cpu_ns = || -> Option<u64> {
        std::fs::read_to_string(format!("{task}/schedstat"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let start = loop {
        let syscall = std::fs::read_to_string(format!("{task}/syscall"))
            .unwrap_or_else(|e| panic!("cannot read {task}/syscall (has the game exited?): {e}"));
        if syscall.starts_with("230 0x1 0x1 ") {
            if let Some(c0) = cpu_ns() {
                break c0;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the game (pid {pid}) did not reach its frame loop within 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let target = start + u64::from(frames) * ((work_ms + 2.0) * 1e6) as u64;
    loop {
        let now = cpu_ns()
            .unwrap_or_else(|| panic!("the game (pid {pid}) is gone before {frames} presents"));
        if now >= target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the game (pid {pid}) did not present {frames} frames within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stopped_by(signal: libc::c_int) {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.json");
    let truth = dir.path().join("truth.txt");
    let game = game_bin().display().to_string();
    let out_s = out.display().to_string();
    let truth_s = truth.display().to_string();
    // A game that would run for 100 s (1 ms of work per frame); the capture is stopped once it
    // has presented frames, however long the agent and the game took to start.
    let agent = spawn_agent(
        &[
            "record", "--out", &out_s, "--", &game, "--frames", "10000", "--truth", &truth_s,
        ],
        &[],
    );
    let pid = wait_for_process("synthetic-game", Duration::from_secs(60));
    wait_for_presents(pid, 1.0, PRESENTS_BEFORE_THE_SIGNAL);
    assert!(!out.exists(), "nothing is written before the capture ends");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, signal) };
    let result = wait_with_deadline(agent, Duration::from_secs(20));
    assert!(
        result.status.success(),
        "stopped capture exits 0: {}",
        stderr(&result)
    );
    let report = read_json(&out);
    assert_eq!(report["capture"]["end_reason"], "signal");
    let frames = busiest(&report)["frames"]["count"].as_u64().expect("count");
    assert!(
        frames >= u64::from(PRESENTS_BEFORE_THE_SIGNAL),
        "the {PRESENTS_BEFORE_THE_SIGNAL} frames (at least) presented before the signal are kept: \
         {frames}"
    );
    assert!(
        report["capture"]["notes"]
            .to_string()
            .contains("was stopped"),
        "the report says the launched game was stopped"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
}

#[test]
fn sigterm_writes_a_complete_report() {
    stopped_by(libc::SIGTERM);
}

#[test]
fn sigint_writes_a_complete_report() {
    stopped_by(libc::SIGINT);
}
