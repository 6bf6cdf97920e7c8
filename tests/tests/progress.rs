//! `record`'s live line: drawn on a terminal (a real pseudo-terminal from `script`), absent
//! when stderr is a pipe.

use std::process::Command;

use nvbind_tests::{agent_bin, busiest, game_bin, read_json, read_truth, require_root};

/// The number just before `word` in a live line (`… · 2 stutters · 180 frames`).
fn count_before(line: &str, word: &str) -> Option<u64> {
    let head = &line[..line.find(word)?];
    let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    head[head.len() - digits..].parse().ok()
}

fn record_args(dir: &std::path::Path) -> Vec<String> {
    vec![
        "record".into(),
        "--out".into(),
        dir.join("report.json").display().to_string(),
        "--".into(),
        game_bin().display().to_string(),
        "--frames".into(),
        "250".into(),
        "--interval-ms".into(),
        "10".into(),
        "--stall-every".into(),
        "100".into(),
        "--truth".into(),
        dir.join("truth.txt").display().to_string(),
    ]
}

#[test]
fn record_shows_a_live_line_on_a_terminal_only() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let command = std::iter::once(agent_bin().display().to_string())
        .chain(record_args(dir.path()))
        .collect::<Vec<_>>()
        .join(" ");
    let typescript = dir.path().join("typescript");
    let status = Command::new("script")
        .args(["-q", "-e", "-c", &command])
        .arg(&typescript)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run script (util-linux)");
    assert!(status.success(), "record under a terminal");
    let shown =
        String::from_utf8_lossy(&std::fs::read(&typescript).expect("typescript")).into_owned();
    let line = shown
        .split(['\r', '\n'])
        .rfind(|l| l.contains(" fps · p99 "))
        .unwrap_or_else(|| panic!("no live line on the terminal: {shown:?}"));
    assert!(line.contains("synthetic-game (pid "), "{line}");
    assert!(line.contains(" stutters"), "{line}");
    // The game stalls before frames 99 and 199: the report (this run's) has both as stutters,
    // plus any real hitch of the shared machine.
    let report = read_json(&dir.path().join("report.json"));
    let p = busiest(&report);
    let reported = p["stutters"]["count"].as_u64().expect("count");
    let stutter_frames: Vec<u64> = p["stutters"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["frame"].as_u64())
        .collect();
    assert!(
        stutter_frames.contains(&99) && stutter_frames.contains(&199),
        "{}",
        p["stutters"]
    );
    let presents = read_truth(&dir.path().join("truth.txt")).len() as u64;
    // The line counted them as they came (the first over a second before the end), never going
    // back, never more than the report or frames the game did not present.
    let live: Vec<(u64, Option<u64>)> = shown
        .split(['\r', '\n'])
        .filter(|l| l.contains(" fps · p99 "))
        .map(|l| {
            let stutters =
                count_before(l, " stutters").unwrap_or_else(|| panic!("no stutter count in {l:?}"));
            (stutters, count_before(l, " frames"))
        })
        .collect();
    assert!(
        live.windows(2).all(|w| w[0].0 <= w[1].0),
        "the live stutter count never goes back: {live:?}"
    );
    let most = live.iter().map(|&(s, _)| s).max().unwrap_or(0);
    assert!(
        (1..=reported).contains(&most),
        "stutters counted live (up to {most}) before the end, at most the report's {reported}: \
         {shown:?}"
    );
    for &(_, frames) in &live {
        assert!(
            frames.is_none_or(|f| f <= presents),
            "the live line counts no more frames than the game's {presents} presents: {live:?}"
        );
    }

    let out = Command::new(agent_bin())
        .args(record_args(dir.path()))
        .output()
        .expect("run the agent");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains(" fps · "), "no live line into a pipe: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "no terminal escapes into a pipe: {err:?}"
    );
}
