//! The agent runs as root among unprivileged users: what such a user can plant or send is hostile
//! input. Each test here makes the attack as that user would (`setpriv` to nobody) and checks
//! that root did not follow it.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::{Command, Stdio},
};

use nvbind_tests::{agent_bin, game_bin, read_json, require_root};

const NOBODY: u32 = 65534;

/// Sequence numbers planted per output (the agent tries 64 names before it gives up).
const PLANTED: usize = 40;

/// Runs `script` with sh as nobody (no groups).
fn as_nobody(script: &str) {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("run setpriv");
    assert!(
        out.status.success(),
        "as nobody: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

#[test]
fn root_never_writes_through_a_name_the_output_directorys_owner_planted() {
    require_root();
    // A root-only secret, and an output directory that belongs to nobody (as a gamer's home
    // directory does to the gamer who runs `sudo nvbind-agent record --out ~/…`).
    let secrets = tempfile::tempdir().expect("tempdir");
    let victim = secrets.path().join("shadow");
    fs::write(&victim, "secret\n").expect("victim");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).expect("chmod");
    let work = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = work.path().join("out");
    fs::create_dir(&out).expect("out dir");
    std::os::unix::fs::chown(&out, Some(NOBODY), Some(NOBODY)).expect("chown");
    let go = work.path().join("go");

    let outputs = ["r.json", "f.csv", "m.csv", "p.csv"];
    let path = |name: &str| out.join(name).display().to_string();
    // The game waits for `go`, so that every name is planted before the agent writes anything
    // of the capture.
    let game = format!(
        "while [ ! -e {go} ]; do sleep 0.02; done; exec {game} --frames 100 --interval-ms 5 \
         --truth {truth}",
        go = quoted(&go),
        game = quoted(&game_bin()),
        truth = quoted(&work.path().join("truth.txt"))
    );
    let mut agent = Command::new(agent_bin())
        .args([
            "record",
            "--out",
            &path("r.json"),
            "--frames-csv",
            &path("f.csv"),
            "--mangohud-csv",
            &path("m.csv"),
            "--presentmon-csv",
            &path("p.csv"),
            "--",
            "sh",
            "-c",
            &game,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    // Every temporary name the agent could use (its pid with the first 40 sequence numbers: the
    // counter is shared by the four outputs and their start-up checks; and the bare pid an
    // older agent used), and one final name, as links to the secret.
    let mut plant = String::new();
    for name in outputs {
        for suffix in std::iter::once(String::new()).chain((0..PLANTED).map(|n| format!("-{n}"))) {
            plant.push_str(&format!(
                "ln -s {} {}; ",
                quoted(&victim),
                quoted(&out.join(format!(".{name}.tmp-{}{suffix}", agent.id())))
            ));
        }
    }
    plant.push_str(&format!(
        "ln -sf {} {}",
        quoted(&victim),
        quoted(&out.join("p.csv"))
    ));
    as_nobody(&plant);
    fs::write(&go, "").expect("let the game start");
    let status = agent.wait().expect("wait for the agent");
    let stderr = agent
        .stderr
        .take()
        .map(|mut e| {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).ok();
            s
        })
        .unwrap_or_default();
    assert!(status.success(), "the agent succeeded: {stderr}");

    // The secret is as it was.
    let secret = fs::read_to_string(&victim).expect("victim");
    assert!(
        secret == "secret\n",
        "root wrote through a planted link: the secret is now {} bytes, starting {:?}",
        secret.len(),
        secret.chars().take(80).collect::<String>()
    );
    let meta = fs::metadata(&victim).expect("victim");
    assert_eq!((meta.permissions().mode() & 0o777, meta.uid()), (0o600, 0));
    // Every output is a file of its own (the planted final name replaced, not followed), and
    // the report is whole.
    for name in outputs {
        let meta = fs::symlink_metadata(out.join(name)).expect("output");
        assert!(
            meta.file_type().is_file() && meta.len() > 0,
            "{name} is a non-empty regular file"
        );
    }
    let report = read_json(&out.join("r.json"));
    assert_eq!(report["processes"][0]["frames"]["count"], 100, "{report}");
    // The planted links are untouched, and the agent left no temporary file of its own.
    let mut planted = 0;
    for entry in fs::read_dir(&out).expect("list") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(".tmp-") {
            assert!(
                entry.file_type().expect("type").is_symlink(),
                "{name}: only the planted links have temporary names"
            );
            planted += 1;
        }
    }
    assert_eq!(planted, outputs.len() * (PLANTED + 1));
}

/// `thread-crowd`, beside the agent.
fn crowd_bin() -> std::path::PathBuf {
    agent_bin().with_file_name("thread-crowd")
}

/// Runs `command` under `record`; returns the report and what the command printed.
fn record_command(command: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("r.json");
    let result = Command::new(agent_bin())
        .args(["record", "--out"])
        .arg(&out)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    (read_json(&out), stdout.into_owned())
}

/// Runs `thread-crowd` under `record` with `args`; returns the report and the crowd's own counts
/// of its switches (`getrusage(RUSAGE_SELF)`: every thread's, exited ones included).
fn record_crowd(args: &[&str]) -> (serde_json::Value, u64, u64) {
    let crowd = crowd_bin();
    let mut command = vec![crowd.to_str().expect("utf-8 path")];
    command.extend(args);
    let (report, stdout) = record_command(&command);
    let count = |name: &str| -> u64 {
        let mut words = stdout.split_whitespace();
        words
            .by_ref()
            .find(|w| *w == name)
            .and_then(|_| words.next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("thread-crowd printed no {name}: {stdout}"))
    };
    let (voluntary, involuntary) = (count("voluntary_switches"), count("involuntary_switches"));
    (report, voluntary, involuntary)
}

/// One process that goes through more threads than the kernel's thread table holds (16,384), a
/// thousand at a time, as a game's job system can: its exited threads are taken out of the table
/// as they go, so it never fills, and every thread's switches are still counted, as the kernel
/// counts them (`getrusage`).
#[test]
fn a_process_churning_through_seventeen_thousand_threads_is_counted_whole() {
    require_root();
    // 17 crowds of 1,000 threads, one after the other.
    let (report, voluntary, involuntary) = record_crowd(&[
        "--threads",
        "1000",
        "--waves",
        "17",
        "--seconds",
        "3.4",
        "--wakeups-per-sec",
        "2000",
    ]);
    // Without taking exited threads out, the 16,385th would have found the table full.
    let notes = report["capture"]["notes"].to_string();
    assert!(
        !notes.contains("table was full"),
        "a table filled although the threads exited: {notes}"
    );
    // It presents no frame: its counts are among the other processes'.
    let others = &report["other_processes"]["processes"];
    let crowd = others
        .as_array()
        .expect("other processes")
        .iter()
        .find(|p| p["name"] == "thread-crowd")
        .unwrap_or_else(|| panic!("thread-crowd is not in the report: {others}"));
    // Each thread sleeps about twice: some 31,000 voluntary switches (31,264 of 31,265 counted
    // here), counted within switch_count_slack (5 + 1 %, and the runs the kernel skipped); one
    // crowd's threads missing would be 1,800 short.
    for (name, truth) in [
        ("voluntary_switches", voluntary),
        ("involuntary_switches", involuntary),
    ] {
        let counted = crowd[name].as_u64().expect(name);
        let slack = nvbind_tests::switch_count_slack(truth, &report);
        assert!(
            counted + slack >= truth && counted <= truth + slack,
            "{name}: {counted} counted, the kernel counted {truth} (±{slack}): {crowd}"
        );
    }
}

/// More threads at once than the kernel's thread table holds (16,384): what could not be tracked
/// is said, in the report's notes, never silently missing.
#[test]
fn a_full_thread_table_is_said_not_silent() {
    require_root();
    // Two processes of 8,500 threads at once (one process cannot map stacks for more than
    // about 16,300 under the kernel's default vm.max_map_count).
    let crowd = crowd_bin().display().to_string();
    let one = format!("{crowd} --threads 8500 --seconds 6 --wakeups-per-sec 2000");
    let (report, _) = record_command(&["sh", "-c", &format!("{one} & {one} & wait")]);
    let notes = report["capture"]["notes"].to_string();
    assert!(
        notes.contains("threads table was full"),
        "the report says the kernel could not track every thread: {notes}"
    );
}
