//! The faces people use, for real: `nvbind-agent top` in a real terminal (tmux: keys sent with
//! send-keys, the screen read with capture-pane) against a real daemon and a real game, and the
//! daemon's dashboard page in a real browser (Debian's headless Chromium, driven through
//! chromedriver over WebDriver).
//!
//! Every daemon tracks every process that presents, so these tests hold the daemon lock, and
//! every game a test starts is killed when the test ends. Nothing waits a fixed time: each wait
//! is for something the screen or the page shows, with a deadline that only catches a hang.

use std::{
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{
    actions::{InputSource, MouseActions, PointerAction},
    Client, ClientBuilder, Locator,
};
use nvbind_tests::daemon::{
    awake_mixed_fixture_host, curl, fixture_gpu_config, free_port, serial, start_game_with, Daemon,
    Game, FOREVER, HANG,
};
use nvbind_tests::{agent_bin, agent_command, require_root, Bpffs};
use serde_json::{json, Value};

/// A stalling game: 10 ms frames, every 100th sleeps 80 ms (a `blocked` stutter).
fn stalling_game(dir: &Path) -> Game {
    start_game_with(
        dir,
        FOREVER,
        10.0,
        &["--stall-every", "100", "--stall-ms", "80"],
    )
}

/// Waits until the daemon has judged one of `pid`'s stalls `blocked` (a loaded machine may
/// judge a stall `cpu-contention` when the game waited longer for a CPU than it slept; the game
/// stalls again every second); returns the view.
fn wait_for_a_blocked_stutter(daemon: &Daemon, pid: u32) -> Value {
    daemon.wait_until_tracked(pid);
    daemon.wait_for_view(pid, "blocked stutter", |v| {
        !v["last_stutter"].is_null() && v["stutters_by_cause"]["blocked"].as_u64() >= Some(1)
    })
}

// ---- top, in tmux ----

/// A private tmux server (its own socket) running one command in an 80×24 window.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `command` in a new window of `width`×`height`; when it ends, the pane says
    /// `top-exited=CODE` and stays.
    fn start(command: &str, width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: format!("nvbind-test-{}-{}", std::process::id(), free_port()),
        };
        let shell = format!("{command}; echo top-exited=$?; sleep 3600");
        let out = tmux
            .command()
            .args(["new-session", "-d", "-s", "top", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg(shell)
            .output()
            .expect("NOT RUN: tmux is missing: run `cargo xtask setup`");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn command(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket, "-f", "/dev/null"]);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = self
            .command()
            .args(["send-keys", "-t", "top"])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn resize(&self, width: u16, height: u16) {
        let status = self
            .command()
            .args(["resize-window", "-t", "top", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .status()
            .expect("tmux resize-window");
        assert!(status.success());
    }

    /// Waits until the screen shows what `done` looks for; returns that screen.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + HANG;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                !screen.contains("top-exited="),
                "top ended while waiting for {what}:\n{screen}"
            );
            assert!(
                Instant::now() < deadline,
                "the screen did not show {what} within {HANG:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of the program the pane runs (the child of the pane's shell).
    fn program_pid(&self) -> u32 {
        let out = self
            .command()
            .args(["list-panes", "-t", "top", "-F", "#{pane_pid}"])
            .output()
            .expect("tmux list-panes");
        let shell = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .expect("the pane shell's children");
        children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("the pane's shell {shell} runs no program"))
    }

    /// Waits for top to end; returns its exit code.
    fn wait_for_exit(&self) -> i32 {
        let deadline = Instant::now() + HANG;
        loop {
            let screen = self.screen();
            if let Some(code) = screen
                .lines()
                .find_map(|l| l.trim().strip_prefix("top-exited="))
            {
                return code.trim().parse().expect("an exit code");
            }
            assert!(
                Instant::now() < deadline,
                "top did not end within {HANG:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

/// The table row of `pid` on a screen of top.
fn row_of(screen: &str, pid: u32) -> Option<Vec<String>> {
    screen
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
}

fn top_command(args: &str) -> String {
    format!("{} top {args}", agent_bin().display())
}

#[test]
fn top_follows_a_real_game_and_outlives_its_daemon() {
    require_root();
    let _one = serial();
    // GPUs from the fixture host (an NVIDIA card without NVML here, an AMD card read from its
    // sysfs files): the game renders on neither, so top shows both.
    let host = awake_mixed_fixture_host();
    let bpffs = Bpffs::mount();
    let mut daemon = Daemon::start(&fixture_gpu_config(&host, &bpffs));
    let port = daemon.port;
    let dir = tempfile::tempdir().expect("tempdir");
    let game = stalling_game(dir.path());
    wait_for_a_blocked_stutter(&daemon, game.pid);

    let tmux = Tmux::start(
        &top_command(&format!("--api 127.0.0.1:{port} --interval-ms 250")),
        80,
        24,
    );
    // The game's row, with its numbers, and the selected game's last stutter under the table.
    let screen = tmux.wait_for("the game's row and its last stutter", |s| {
        row_of(s, game.pid).is_some() && s.contains("last: frame") && s.contains(" live ")
    });
    let row = row_of(&screen, game.pid).expect("the row");
    assert_eq!(row[1], "synthetic-game", "{screen}");
    // p50 of a game presenting every 10 ms: within what a loaded machine can stretch it to.
    let p50: f64 = row[3].parse().unwrap_or_else(|_| panic!("p50 in {row:?}"));
    assert!((5.0..=40.0).contains(&p50), "p50 {p50} ms:\n{screen}");
    assert!(screen.contains("blocked"), "the stutter's cause:\n{screen}");
    // The AMD card's counters, once sampled, with its throttle state.
    let screen = tmux.wait_for("the AMD card's counters", |s| {
        s.lines()
            .any(|l| l.contains("GPU 0000:0c:00.0") && l.contains("busy "))
    });
    assert!(screen.to_lowercase().contains("throttled"), "{screen}");
    assert!(
        screen.lines().all(|l| l.chars().count() <= 80),
        "80 columns:\n{screen}"
    );

    // Sort, detail view and back.
    tmux.keys(&["s"]);
    tmux.wait_for("the p99 order", |s| s.contains("sort: p99"));
    tmux.keys(&["Enter"]);
    let detail = tmux.wait_for("the detail view", |s| {
        s.contains("0.1% low") && s.contains("frames (tallest")
    });
    assert!(detail.contains(&format!("pid {}", game.pid)), "{detail}");
    tmux.keys(&["Escape"]);
    tmux.wait_for("the table again", |s| s.contains("FRAME TIMES"));

    // Resizes: wider shows more, tiny draws what fits, and top goes on.
    tmux.resize(120, 30);
    tmux.wait_for("the wider table", |s| {
        s.lines()
            .any(|l| l.chars().count() > 100 && l.contains("synthetic-game"))
    });
    tmux.resize(30, 8);
    tmux.wait_for("a tiny screen", |s| s.contains("nvbind top"));
    tmux.resize(80, 24);
    tmux.wait_for("the table at 80×24 again", |s| {
        s.contains("FRAME TIMES") && s.lines().count() >= 24
    });

    // Pause holds the numbers: the row stays the same while paused.
    tmux.keys(&["p"]);
    let paused = tmux.wait_for("paused", |s| s.contains("paused"));
    std::thread::sleep(Duration::from_millis(1200));
    let numbers = |screen: &str| {
        row_of(screen, game.pid).map(|row| row.into_iter().take(7).collect::<Vec<_>>())
    };
    assert_eq!(
        numbers(&tmux.screen()),
        numbers(&paused),
        "numbers held while paused"
    );
    tmux.keys(&["p"]);
    tmux.wait_for("live again", |s| s.contains(" live "));

    // The daemon goes away: top says so and keeps trying; a new daemon on the same port is found.
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    tmux.wait_for("the lost daemon", |s| s.contains("agent lost, retrying"));
    let daemon = Daemon::start_with(&format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"), port, "");
    daemon.wait_until_tracked(game.pid);
    tmux.wait_for("the new daemon's view", |s| {
        s.contains(" live ") && row_of(s, game.pid).is_some()
    });

    tmux.keys(&["q"]);
    assert_eq!(tmux.wait_for_exit(), 0, "q quits cleanly");
}

#[test]
fn top_without_a_daemon_says_how_to_start_one_and_needs_a_terminal() {
    // No daemon of another test may be handed the port meanwhile.
    let _one = serial();
    let port = free_port();
    let tmux = Tmux::start(&top_command(&format!("--api 127.0.0.1:{port}")), 80, 24);
    let screen = tmux.wait_for("the advice", |s| s.contains("--standalone"));
    // Its words, whichever line the terminal's width broke them onto.
    let words = screen.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words.contains("Connection refused"), "{screen}");
    assert!(words.contains("sudo nvbind-agent"), "{screen}");
    assert!(words.contains("agent lost, retrying"), "{screen}");
    tmux.keys(&["C-c"]);
    assert_eq!(tmux.wait_for_exit(), 0, "Ctrl-C quits cleanly");

    // SIGTERM (and SIGHUP, a closed SSH session) end it as `q` does: the terminal is put back.
    let tmux = Tmux::start(&top_command(&format!("--api 127.0.0.1:{port}")), 80, 24);
    tmux.wait_for("the advice", |s| s.contains("--standalone"));
    let top = tmux.program_pid();
    // SAFETY: signalling the top this test started.
    unsafe { libc::kill(top as i32, libc::SIGTERM) };
    assert_eq!(tmux.wait_for_exit(), 0, "SIGTERM quits cleanly");
    let after = tmux.screen();
    assert!(
        !after.contains("agent lost"),
        "the terminal was restored:\n{after}"
    );

    // Not a terminal: one line that says what to do instead.
    let out = agent_command(&["top", "--api", &format!("127.0.0.1:{port}")], &[])
        .stdout(Stdio::piped())
        .output()
        .expect("run top");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not one: run it in a terminal"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn top_standalone_records_in_its_own_process_and_writes_the_session() {
    require_root();
    let _one = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let reports = dir.path().join("reports");
    let game = stalling_game(dir.path());
    let tmux = Tmux::start(
        &top_command(&format!(
            "--standalone --interval-ms 250 --reports-dir {}",
            reports.display()
        )),
        80,
        24,
    );
    let screen = tmux.wait_for("the game, captured in-process", |s| {
        row_of(s, game.pid).is_some() && s.contains("last: frame")
    });
    assert!(screen.contains("in-process capture"), "{screen}");
    tmux.keys(&["q"]);
    assert_eq!(tmux.wait_for_exit(), 0, "{}", tmux.screen());
    // Quitting stopped the capture as a daemon stops: the running game's session is written.
    let written: Vec<_> = std::fs::read_dir(&reports)
        .expect("the reports directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(&format!("-{}.json", game.pid)))
        .collect();
    assert_eq!(written.len(), 1, "the game's session report in {reports:?}");
    let report = nvbind_tests::read_json(&reports.join(&written[0]));
    assert_eq!(report["capture"]["end_reason"], "agent-stopped", "{report}");
    assert!(report["processes"][0]["stutters"]["count"].as_u64() >= Some(1));
}

// ---- the dashboard page ----

#[test]
fn the_api_refuses_other_sites_and_the_page_lists_written_sessions() {
    require_root();
    let _one = serial();
    let daemon = Daemon::start("");
    let port = daemon.port;
    let dir = tempfile::tempdir().expect("tempdir");

    // A page of another site reaching the API by pointing its own name at 127.0.0.1 (DNS
    // rebinding), or opening a WebSocket to it: refused. Names of this machine are served.
    let url = daemon.url("/api/processes");
    let (status, body) = curl(&["-H", &format!("Host: evil.example:{port}"), &url]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("api.allowed_hosts"), "{body}");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, body) = curl(&["-H", &format!("Host: {host}"), &url]);
        assert_eq!(status, 200, "{host}: {body}");
    }
    let mut game = start_game_with(dir.path(), FOREVER, 5.0, &["--stall-every", "100"]);
    daemon.wait_until_tracked(game.pid);
    let ws_upgrade = |origin: &str| {
        curl(&[
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "-H",
            &format!("Origin: {origin}"),
            "--max-time",
            "3",
            &daemon.url(&format!("/metrics/{}", game.pid)),
        ])
    };
    let (status, body) = ws_upgrade("http://evil.example");
    assert_eq!(status, 403, "a cross-site WebSocket: {body}");
    let (status, _) = ws_upgrade(&format!("http://127.0.0.1:{port}"));
    assert_eq!(status, 101, "the page's own WebSocket");

    // The page itself: embedded, and allowed to talk to its own origin only.
    let headers = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", &daemon.url("/")])
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&headers.stdout).to_lowercase();
    assert!(headers.contains("content-type: text/html"), "{headers}");
    assert!(
        headers.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{headers}"
    );
    assert!(headers.contains("frame-ancestors 'none'"), "{headers}");

    // The finished game is listed with its numbers and its chart, and nothing of its command
    // line or its report's path.
    game.kill();
    let (report_path, report) = daemon.wait_for_report(game.pid);
    let sessions = {
        let deadline = Instant::now() + HANG;
        loop {
            let body = daemon.get_json("/api/sessions");
            if body["sessions"].as_array().is_some_and(|s| !s.is_empty()) {
                break body;
            }
            assert!(Instant::now() < deadline, "no session listed: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let session = &sessions["sessions"][0];
    assert_eq!(session["pid"], game.pid, "{session}");
    assert_eq!(
        session["frames"], report["processes"][0]["frames"]["count"],
        "{session}"
    );
    assert_eq!(
        session["stutters"], report["processes"][0]["stutters"]["count"],
        "{session}"
    );
    assert_eq!(
        session["report"].as_str(),
        report_path.file_name().and_then(|n| n.to_str()),
        "the report's file name only"
    );
    let text = sessions.to_string();
    assert!(!text.contains("--truth"), "no command line: {text}");
    assert!(
        !text.contains(&daemon.reports().display().to_string()),
        "no path: {text}"
    );
    let (status, svg) = daemon.get(&format!("/api/sessions/{}/chart.svg", session["id"]));
    assert_eq!(status, 200);
    let tree = roxmltree::Document::parse(&svg).expect("the chart is SVG");
    assert!(tree.descendants().any(|n| n.has_tag_name("polyline")));
    let (status, body) = daemon.get("/api/sessions/999999/chart.svg");
    assert_eq!(status, 404, "{body}");
}

/// chromedriver on a free port, stopped when dropped.
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("NOT RUN: chromedriver is missing: run `cargo xtask setup` (chromium-driver)");
        let deadline = Instant::now() + HANG;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        ChromeDriver { child, port }
    }

    /// A headless Chromium in which `evil.example` resolves to 127.0.0.1: another site's name
    /// pointed at this host, as DNS rebinding does.
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1200,1400",
                    "--host-resolver-rules=MAP evil.example 127.0.0.1",
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` (a function body) in the page until it returns something other than null.
async fn wait_in_page(browser: &Client, what: &str, script: &str, args: Vec<Value>) -> Value {
    let deadline = Instant::now() + HANG;
    loop {
        let value = browser
            .execute(script, args.clone())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if !value.is_null() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not show {what} within {HANG:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens a WebSocket from the page now loaded; "open" or "refused".
async fn websocket_from_page(browser: &Client, url: &str) -> String {
    let script = r#"
        const [url, done] = arguments;
        const ws = new WebSocket(url);
        ws.onopen = () => { ws.close(); done("open"); };
        ws.onerror = () => done("refused");
    "#;
    browser
        .execute_async(script, vec![json!(url)])
        .await
        .expect("a WebSocket from the page")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_dashboard_page_charts_a_game_and_its_stutters_in_chromium() {
    require_root();
    let _one = serial();
    let host = awake_mixed_fixture_host();
    let bpffs = Bpffs::mount();
    let daemon = Daemon::start(&fixture_gpu_config(&host, &bpffs));
    let port = daemon.port;
    let dir = tempfile::tempdir().expect("tempdir");
    let game = stalling_game(dir.path());
    daemon.wait_until_tracked(game.pid);
    let driver = ChromeDriver::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let browser = driver.browser().await;
        browser
            .goto(&daemon.url("/"))
            .await
            .expect("open the page");
        // The chart receives frames from the WebSocket...
        let card = format!("article.game[data-pid=\"{}\"]", game.pid);
        let frames = wait_in_page(
            &browser,
            "frames in the game's chart",
            "const card = document.querySelector(arguments[0]);
             const n = card ? Number(card.dataset.frames) : 0;
             return n >= 200 ? n : null;",
            vec![json!(card)],
        )
        .await;
        assert!(frames.as_u64() >= Some(200), "{frames}");
        // ...and when the game stalls, a marker in the cause's colour with the verdict's sentence.
        // (A loaded machine may judge a stall cpu-contention; the game stalls every second.)
        let item = wait_in_page(
            &browser,
            "a blocked stutter in the game's list",
            "const li = document.querySelector(arguments[0] + ' ul.stutters li[data-cause=blocked]');
             return li ? li.textContent : null;",
            vec![json!(card)],
        )
        .await;
        assert!(
            item.as_str().is_some_and(|t| t.contains("was blocked")),
            "{item}"
        );
        // Hovering the newest marker shows its sentence: the chart holds still under the mouse.
        let canvas = browser
            .find(Locator::Css(&format!("{card} canvas")))
            .await
            .expect("the chart");
        let hover = |x: f64, y: f64| {
            MouseActions::new("mouse".into()).then(PointerAction::MoveToElement {
                element: canvas.clone(),
                duration: None,
                x,
                y,
            })
        };
        browser
            .perform_actions(hover(0.0, 0.0))
            .await
            .expect("move over the chart");
        // The newest marker drawn on the chart, now held still.
        let at = wait_in_page(
            &browser,
            "a marker on the chart",
            "const card = document.querySelector(arguments[0]);
             const game = games.get(Number(card.dataset.pid));
             const s = [...game.stutters.values()]
               .filter(s => s.t_unix_ms >= game.scale.t0 && s.t_unix_ms <= game.scale.tEnd).pop();
             if (!s) return null;
             const c = card.querySelector('canvas');
             const [x, y] = game.scale.marker(s);
             return [x, y, x - c.clientWidth / 2, y - c.clientHeight / 2];",
            vec![json!(card)],
        )
        .await;
        let (x, y) = (at[2].as_f64().unwrap_or(0.0), at[3].as_f64().unwrap_or(0.0));
        browser
            .perform_actions(hover(x.round(), y.round()))
            .await
            .expect("hover the marker");
        // The tooltip says the sentence of a stutter whose marker is under the mouse (two
        // stutters close in time can share the spot).
        let shown = wait_in_page(
            &browser,
            "the marker's sentence",
            "const [sel, x, y] = arguments;
             const card = document.querySelector(sel);
             const t = card.querySelector('.tooltip');
             if (!t || t.hidden) return null;
             const game = games.get(Number(card.dataset.pid));
             const near = [...game.stutters.values()].filter(s => {
               const [mx, my] = game.scale.marker(s);
               return Math.hypot(mx - x, my - y) <= 12;
             }).map(s => `${s.frame_time_ms.toFixed(1)} ms, ${s.cause}: ${s.summary}`);
             return [t.textContent, near];",
            vec![json!(card), at[0].clone(), at[1].clone()],
        )
        .await;
        let near = shown[1].as_array().cloned().unwrap_or_default();
        assert!(near.contains(&shown[0]), "{shown}");
        // The GPU panel: the AMD card's counters (read from the fixture's sysfs files), and
        // why the NVIDIA card is not read.
        let amd = wait_in_page(
            &browser,
            "the AMD card's counters",
            "const card = document.querySelector('.gpu[data-pci=\"0000:0c:00.0\"]');
             return card && card.textContent.includes('utilisation') && card.textContent.includes('%')
               ? card.textContent : null;",
            vec![],
        )
        .await;
        assert!(
            amd.as_str().is_some_and(|t| t.contains("throttled by")),
            "{amd}"
        );
        let shot = browser.screenshot().await.expect("a screenshot");
        let artefact = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
        std::fs::write(&artefact, &shot).expect("keep the screenshot");
        eprintln!("screenshot of the page: {}", artefact.display());

        // The page's own WebSocket opens; another site's page cannot open one, nor read the API
        // through a name pointed at this host.
        let stream = format!("ws://127.0.0.1:{port}/metrics/{}", game.pid);
        assert_eq!(websocket_from_page(&browser, &stream).await, "open");
        browser
            .goto(&format!("http://evil.example:{port}/"))
            .await
            .expect("open the rebinding name");
        let body = browser
            .execute("return document.body.innerText;", vec![])
            .await
            .expect("the page's text");
        assert!(
            body.as_str().is_some_and(|t| t.contains("does not name this machine")),
            "{body}"
        );
        assert_eq!(websocket_from_page(&browser, &stream).await, "refused");
        let rebound = format!("ws://evil.example:{port}/metrics/{}", game.pid);
        assert_eq!(websocket_from_page(&browser, &rebound).await, "refused");
        let _ = browser.close().await;
    });
    drop(game);
}
