//! Windows games under Wine, for real: a Win32 program of our own (tests/windows/wingame.c, built
//! with mingw-w64) run by Debian's wine64 on Xvfb with Mesa, presenting through OpenGL
//! (`SwapBuffers` → winex11 → GLX), through Vulkan (`vkQueuePresentKHR` through Wine's
//! winevulkan to the host's loader and driver: the path DXVK and vkd3d-proton take), and from a
//! second thread while the game thread does the work (as DXVK's presenter does).
//!
//! Each run is checked against the program's own log: every present, from the first, with its
//! probe stamp inside the [before, after] window the program read around the call; the thread
//! that presented by its Linux thread id; the process named by its `.exe`.

use std::{path::Path, process::Stdio, time::Duration};

use nvbind_tests::{
    assert_within_windows, game_threads, read_csv, read_json, read_truth, require_root,
    second_window_truth, wait_with_deadline, TestCgroup, Tree, WatchedAgent, Wine, Xvfb,
};
use serde_json::Value;

const FRAMES: usize = 120;

/// The report's processes that made frames, and the one that is the game.
fn the_game(report: &Value) -> &Value {
    let processes = report["processes"].as_array().expect("processes");
    assert_eq!(
        processes.len(),
        1,
        "only the game made frames; Wine's own processes are folded: {processes:?}"
    );
    &processes[0]
}

/// What every Wine capture must show: the game by its `.exe` and Wine's build, every present
/// from the first in its window, presented by the thread the game says, and Wine's helper
/// processes folded out of the list.
fn assert_wine_capture(
    report: &Value,
    csv: &Path,
    truth: &Path,
    source: &[&str],
    wine: &Wine,
) -> Value {
    let p = the_game(report).clone();
    assert_eq!(p["name"], "wingame.exe", "{p}");
    assert_eq!(
        p["comm"], "wingame.exe",
        "Wine names the process itself: {p}"
    );
    assert!(
        p["exe"].as_str().is_some_and(|e| e.ends_with("/wine64")),
        "the binary is Wine's loader: {}",
        p["exe"]
    );
    assert_eq!(p["wine"]["version"], wine.version.as_str(), "{}", p["wine"]);
    assert!(
        p["wine"]["windows_path"]
            .as_str()
            .is_some_and(|w| w.ends_with("wingame.exe")),
        "{}",
        p["wine"]
    );
    let windows = read_truth(truth);
    assert_eq!(windows.len(), FRAMES, "the game presented every frame");
    let f = &p["frames"];
    assert_eq!(f["count"].as_u64(), Some(FRAMES as u64), "{f}");
    assert!(
        source.contains(&f["source"].as_str().unwrap_or_default()),
        "source {} not one of {source:?}",
        f["source"]
    );
    let pid = p["pid"].to_string();
    let stamps: Vec<u64> = read_csv(csv)
        .into_iter()
        .filter(|r| r["pid"] == pid)
        .map(|r| r["present_ns"].parse().expect("present_ns"))
        .collect();
    assert_within_windows(&stamps, &windows);
    let (_, presenter) = game_threads(truth);
    assert_eq!(
        f["presenting_tids"],
        serde_json::json!([presenter]),
        "the thread that presented, by the game's own gettid: {f}"
    );
    let presenting = &p["presenting_threads"][0];
    assert_eq!(presenting["tid"], presenter, "{}", p["presenting_threads"]);
    assert_eq!(presenting["frames"].as_u64(), Some(FRAMES as u64));
    p
}

/// A launched game's Wine processes (its server, started by the game) are tracked too, and
/// folded: they made no frame.
fn assert_wine_helpers_folded(report: &Value) {
    let others = report["other_processes"]["processes"]
        .as_array()
        .expect("other processes");
    let names: Vec<&str> = others.iter().filter_map(|o| o["name"].as_str()).collect();
    assert!(
        names.iter().any(|n| n.starts_with("wineserver")),
        "Wine's server, started by the game, is tracked and folded: {names:?}"
    );
    // (A short-lived fork of the game that never exec'd keeps the game's name: it is the game's.)
    let game = &report["processes"][0]["pid"];
    assert!(others.iter().all(|o| o["pid"] != *game), "{names:?}");
}

/// `record -- wine64 wingame.exe MODE FRAMES TRUTH` on a private Xvfb; the report, the CSV and
/// the truth file, and what the agent printed.
fn launched(mode: &str, extra_env: &[(&str, &str)]) -> (Value, tempfile::TempDir, String) {
    launched_in(mode, extra_env, None)
}

/// As [`launched`], the game started inside `cgroup` (cgroup v2) when one is given.
fn launched_in(
    mode: &str,
    extra_env: &[(&str, &str)],
    cgroup: Option<&Path>,
) -> (Value, tempfile::TempDir, String) {
    require_root();
    let wine = Wine::require();
    wine.quiet();
    let x = Xvfb::start().expect("Xvfb");
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, csv, truth) = paths(dir.path());
    let frames = FRAMES.to_string();
    let mut args = vec![
        "record".to_string(),
        "--out".into(),
        out.clone(),
        "--frames-csv".into(),
        csv,
        "--".into(),
    ];
    if let Some(cgroup) = cgroup {
        // The shell moves itself into the cgroup, then becomes Wine (same pid).
        args.extend([
            "sh".to_string(),
            "-c".into(),
            format!("echo $$ > {}/cgroup.procs && exec \"$@\"", cgroup.display()),
            "sh".into(),
        ]);
    }
    args.extend(wine.game_argv(&[mode, &frames, &truth]));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = wine.env(&x.display);
    let mut env_refs: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env_refs.extend_from_slice(extra_env);
    let hold = Hold::new(dir.path());
    env_refs.push(("WINGAME_HOLD_FILE", &hold.path));
    let mut agent = WatchedAgent::spawn(&arg_refs, &env_refs);
    hold.release_once_named(&mut agent);
    let (status, err) = agent.finish(Duration::from_secs(180));
    assert!(status.success(), "record failed: {err}");
    let report = read_json(Path::new(&out));
    assert_wine_helpers_folded(&report);
    (report, dir, err)
}

/// Keeps the game open after its last frame until the agent has said who it is (its Wine build
/// is read from the live process): the game waits for this file (`WINGAME_HOLD_FILE`).
struct Hold {
    path: String,
}

impl Hold {
    fn new(dir: &Path) -> Hold {
        Hold {
            path: dir.join("hold").display().to_string(),
        }
    }

    fn release_once_named(&self, agent: &mut WatchedAgent) {
        agent.wait_for_line("is wingame.exe under Wine (wine-", Duration::from_secs(120));
        std::fs::write(&self.path, "").expect("release the game");
    }
}

fn paths(dir: &Path) -> (String, String, String) {
    let s = |name: &str| dir.join(name).display().to_string();
    (s("report.json"), s("frames.csv"), s("truth.txt"))
}

#[test]
fn an_opengl_game_under_wine_is_captured_exactly_and_named_by_its_exe() {
    let wine = Wine::require();
    let (report, dir, _) = launched("gl", &[("SteamAppId", "480")]);
    let (_, csv, truth) = paths(dir.path());
    let p = assert_wine_capture(&report, Path::new(&csv), Path::new(&truth), &["glx"], wine);
    let (game, presenter) = game_threads(Path::new(&truth));
    assert_eq!(game, presenter, "one thread renders and presents");
    // Steam's variable in the game's environment names its app.
    assert_eq!(p["steam_app_id"], 480, "{p}");
}

#[test]
fn a_vulkan_game_under_wine_is_captured_exactly_through_winevulkan() {
    let wine = Wine::require();
    // Started the way Steam starts games where it uses systemd scopes: in a cgroup named after
    // the app.
    let parent = TestCgroup::new(Tree::V2, "steam");
    let scope = parent.path.join("app-steam-app570-4711.scope");
    std::fs::create_dir(&scope).expect("create the app's cgroup");
    let (report, dir, printed) = launched_in("vk", &[], Some(&scope));
    // Every process in it has exited (the capture waited for all of them).
    std::fs::remove_dir(&scope).expect("remove the app's cgroup");
    let (_, csv, truth) = paths(dir.path());
    let p = assert_wine_capture(
        &report,
        Path::new(&csv),
        Path::new(&truth),
        &["vulkan", "vulkan-loader"],
        wine,
    );
    assert_eq!(p["steam_app_id"], 570, "from its cgroup: {p}");
    // The console lists the game by its name, and only the game.
    assert!(
        printed.contains(&format!("wingame.exe (pid {})", p["pid"])),
        "{printed}"
    );
    for helper in [
        "services.exe (pid",
        "wineserver64 (pid",
        "explorer.exe (pid",
    ] {
        assert!(!printed.contains(helper), "{helper} listed: {printed}");
    }
}

#[test]
fn a_game_presenting_from_a_second_thread_has_its_evidence_on_the_right_threads() {
    let wine = Wine::require();
    let (report, dir, _) = launched("vk-thread", &[]);
    let (_, csv, truth) = paths(dir.path());
    let p = assert_wine_capture(
        &report,
        Path::new(&csv),
        Path::new(&truth),
        &["vulkan", "vulkan-loader"],
        wine,
    );
    assert!(p.get("steam_app_id").is_none(), "not a Steam game: {p}");
    let (game, presenter) = game_threads(Path::new(&truth));
    assert_ne!(
        game, presenter,
        "the game presents from a thread of its own"
    );
    let threads = p["threads"].as_array().expect("threads");
    let thread = |tid: u32| {
        threads
            .iter()
            .find(|t| t["tid"] == tid)
            .unwrap_or_else(|| panic!("thread {tid} among the busiest: {threads:?}"))
    };
    // The game thread works (it simulates before each frame) and presents nothing; the presenter
    // presents every frame.
    assert_eq!(thread(game)["presents"], 0, "{threads:?}");
    assert!(thread(game)["on_cpu_s"].as_f64() > Some(0.0), "{threads:?}");
    assert_eq!(
        thread(presenter)["presents"].as_u64(),
        Some(FRAMES as u64),
        "{threads:?}"
    );
}

/// `record --comm wingame.exe` waits for the name; the game is started apart, by the test. Wine
/// execs its loader (`wine64`) and names the process after the Windows program during start-up:
/// the agent tracks it from that rename, before its first frame.
#[test]
fn a_wine_game_is_found_by_its_exe_name_from_its_first_frame() {
    require_root();
    let wine = Wine::require();
    wine.quiet();
    let x = Xvfb::start().expect("Xvfb");
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, csv, truth) = paths(dir.path());
    let mut agent = WatchedAgent::spawn(
        &[
            "record",
            "--comm",
            "wingame.exe",
            "--wait-timeout",
            "60",
            "--out",
            &out,
            "--frames-csv",
            &csv,
        ],
        &[],
    );
    agent.wait_until_capturing();
    let frames = FRAMES.to_string();
    let hold = Hold::new(dir.path());
    let game = wine
        .game_command(&x.display, &["vk-thread", &frames, &truth])
        .env("WINGAME_HOLD_FILE", &hold.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the game under Wine");
    hold.release_once_named(&mut agent);
    let done = wait_with_deadline(game, Duration::from_secs(120));
    assert!(
        done.status.success(),
        "the game failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    agent.signal(libc::SIGINT);
    let (status, err) = agent.finish(Duration::from_secs(60));
    assert!(status.success(), "record failed: {err}");
    let report = read_json(Path::new(&out));
    assert_eq!(report["capture"]["target"], "comm wingame.exe");
    assert_wine_capture(
        &report,
        Path::new(&csv),
        Path::new(&truth),
        &["vulkan", "vulkan-loader"],
        wine,
    );
}

/// A game presenting to two windows at different rates (a second view, a launcher beside the
/// game): its frames are its main window's, the one it presented the most frames to, and both
/// windows are listed. The first window gets every frame, the second one in four (the game's
/// own logs of each).
#[test]
fn a_game_presenting_to_two_windows_counts_its_main_one() {
    let wine = Wine::require();
    let (report, dir, _) = launched("two-windows", &[]);
    let (_, csv, truth) = paths(dir.path());
    let p = assert_wine_capture(&report, Path::new(&csv), Path::new(&truth), &["glx"], wine);
    let second = second_window_truth(Path::new(&truth));
    assert_eq!(
        second.len(),
        FRAMES / 4,
        "the game's log of its second window"
    );
    let windows = p["frames"]["swapchains"].as_array().expect("swapchains");
    let listed: Vec<(bool, u64)> = windows
        .iter()
        .map(|w| (w["main"] == true, w["frames"].as_u64().expect("frames")))
        .collect();
    assert_eq!(
        listed,
        [(true, FRAMES as u64), (false, second.len() as u64)],
        "{windows:?}"
    );
    assert_ne!(windows[0]["id"], windows[1]["id"]);
    // Presents to the second window are counted where they belong, not as frames.
    assert_eq!(
        p["frames"]["sources_seen"]["glx"].as_u64(),
        Some((FRAMES + second.len()) as u64),
        "{}",
        p["frames"]
    );
    let (out, _, _) = paths(dir.path());
    let summary = nvbind_tests::agent(&["report", &out]);
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(text.contains("presented to 2 windows"), "{text}");
}
