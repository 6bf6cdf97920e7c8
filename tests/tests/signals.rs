//! Stopping a capture with SIGINT or SIGTERM still writes a complete report, atomically.

use std::time::Duration;

use nvbind_tests::{
    busiest, game_bin, read_json, require_root, spawn_agent, stderr, wait_for_presents,
    wait_for_process, wait_with_deadline,
};

/// Presents the game has made when the capture is stopped.
const PRESENTS_BEFORE_THE_SIGNAL: u32 = 50;

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
    wait_for_process("synthetic-game", Duration::from_secs(60));
    wait_for_presents(&truth, PRESENTS_BEFORE_THE_SIGNAL);
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
