//! Bad input: a one-line error naming the fix, a non-zero exit, and no partial file.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use nvbind_tests::{agent, agent_bin, assert_one_line_error, require_root, stderr};

/// A fresh directory and a report path in it (kept alive by the returned TempDir).
fn report_in_tempdir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("r.json");
    (dir, out)
}

fn assert_clean_failure(out: &std::process::Output, report: &Path, expect: &[&str]) {
    assert_one_line_error(out, expect);
    assert!(!report.exists(), "no report file on failure");
    if let Some(dir) = report.parent() {
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "nothing left behind: {leftovers:?}");
    }
}

#[test]
fn unknown_pid() {
    require_root();
    let (_dir, out) = report_in_tempdir();
    let r = agent(&[
        "record",
        "--pid",
        "3999999",
        "--out",
        &out.display().to_string(),
    ]);
    assert_clean_failure(&r, &out, &["no process with pid 3999999", "ps -p"]);
}

#[test]
fn a_comm_that_never_appears() {
    require_root();
    let (_dir, out) = report_in_tempdir();
    let r = agent(&[
        "record",
        "--comm",
        "nvbind-nosuch",
        "--wait-timeout",
        "1",
        "--out",
        &out.display().to_string(),
    ]);
    assert_clean_failure(
        &r,
        &out,
        &["nvbind-nosuch", "appeared within 1 s", "--wait-timeout"],
    );
}

#[test]
fn unwritable_out() {
    require_root();
    let out = Path::new("/nonexistent-nvbind-dir/r.json");
    let r = agent(&["record", "--out", &out.display().to_string(), "--", "true"]);
    assert_clean_failure(
        &r,
        out,
        &["cannot write /nonexistent-nvbind-dir/r.json", "writable"],
    );
}

#[test]
fn unknown_command() {
    require_root();
    let (_dir, out) = report_in_tempdir();
    let r = agent(&[
        "record",
        "--out",
        &out.display().to_string(),
        "--",
        "nvbind-no-such-game",
    ]);
    assert_clean_failure(&r, &out, &["command not found: nvbind-no-such-game"]);
}

#[test]
fn no_target() {
    require_root();
    let (_dir, out) = report_in_tempdir();
    let r = agent(&["record", "--out", &out.display().to_string()]);
    assert_clean_failure(&r, &out, &["nothing to record", "--pid"]);
}

#[test]
fn tracefs_unmounted() {
    require_root();
    let (_dir, out) = report_in_tempdir();
    // A private mount namespace: tracefs disappears for the agent only, not for other tests.
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         umount /sys/kernel/debug 2>/dev/null; \
         if [ -d /sys/kernel/tracing/events ]; then echo 'tracefs still mounted' >&2; exit 99; fi; \
         exec {} record --out {} -- true",
        agent_bin().display(),
        out.display()
    );
    let r = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    assert_clean_failure(&r, &out, &["tracefs is not mounted", "mount -t tracefs"]);
    // And the fix it names works.
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; exec {} record --mount-tracefs --out {} -- true",
        agent_bin().display(),
        out.display()
    );
    let r = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    assert!(
        r.status.success(),
        "--mount-tracefs fixes it: {}",
        stderr(&r)
    );
    assert!(out.exists());
}

#[test]
fn not_root() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = dir.path().join("r.json");
    let r = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .args(["record", "--out", &out.display().to_string(), "--", "true"])
        .output()
        .expect("run setpriv");
    assert_clean_failure(&r, &out, &["needs root", "sudo"]);
}

#[test]
fn launched_command_exit_code_is_passed_on() {
    require_root();
    let (_dir, out) = report_in_tempdir();
    let r = agent(&[
        "record",
        "--out",
        &out.display().to_string(),
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(r.status.code(), Some(7), "{}", stderr(&r));
    // The capture itself succeeded: a complete report exists.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("JSON");
    assert_eq!(report["schema"], "nvbind.report/v2");
    assert_eq!(report["capture"]["end_reason"], "targets-exited");
    // The shell made no frame: it is in the folded section, not a process entry of zeros.
    assert_eq!(report["processes"], serde_json::json!([]));
    assert_eq!(report["other_processes"]["processes"][0]["comm"], "sh");
}
