//! `record`'s live line: drawn on a terminal (a real pseudo-terminal from `script`), absent
//! when stderr is a pipe.

use std::process::Command;

use nvbind_tests::{agent_bin, game_bin, require_root};

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
    // The game stalls every 100th frame: the line counted them before the end.
    assert!(
        shown.contains("· 1 stutters") || shown.contains("· 2 stutters"),
        "stutters counted live: {shown:?}"
    );

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
