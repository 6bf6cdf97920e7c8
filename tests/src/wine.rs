//! Windows programs under Wine: the test game `tests/windows/wingame.c`, built with mingw-w64, run
//! by Debian's `wine64` in a Wine prefix made for this test run.
//!
//! `cargo xtask setup --for test` installs Wine and mingw-w64. The game is compiled on first use
//! (a second) and the prefix is made fresh once per test process (`wineboot`, ~15 s): a prefix
//! left by an earlier run is removed, never reused.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use crate::PresentWindow;

/// Debian's Wine loader (`wine64`; the `wine` package's `/usr/bin/wine` wrapper is not needed).
pub const WINE64: &str = "/usr/lib/wine/wine64";
const WINESERVER: &str = "/usr/lib/wine/wineserver64";
const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";

/// Wine, a prefix for this test process, and the test game built for it.
pub struct Wine {
    pub prefix: PathBuf,
    /// `wingame.exe`.
    pub game: PathBuf,
    /// What `wine64 --version` prints: the build string Wine reports of itself.
    pub version: String,
}

impl Wine {
    /// Wine ready to run the test game; fails the test, saying NOT RUN, when Wine or mingw-w64 is
    /// missing (`cargo xtask setup --for test` installs both).
    pub fn require() -> &'static Wine {
        static WINE: OnceLock<Wine> = OnceLock::new();
        WINE.get_or_init(|| {
            assert!(
                Path::new(WINE64).exists(),
                "NOT RUN: {WINE64} is missing: run `cargo xtask setup --for test` (it installs \
                 Debian's wine64)"
            );
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wine-test");
            std::fs::create_dir_all(&dir).expect("create target/wine-test");
            let game = build_game(&dir);
            let prefix = dir.join(format!("prefix-{}", std::process::id()));
            make_prefix(&dir, &prefix);
            let version = Command::new(WINE64)
                .arg("--version")
                .output()
                .expect("run wine64 --version");
            Wine {
                prefix,
                game,
                version: String::from_utf8_lossy(&version.stdout).trim().to_string(),
            }
        })
    }

    /// Stops the prefix's Wine server and its services if an earlier test left them running (the
    /// server lingers a few seconds after its last program): each test's game starts its own,
    /// as a game started cold does.
    pub fn quiet(&self) {
        for flag in ["-k", "-w"] {
            let _ = Command::new(WINESERVER)
                .arg(flag)
                .env("WINEPREFIX", &self.prefix)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// `wine64 wingame.exe ARGS` on `display`, in this test run's prefix.
    pub fn game_command(&self, display: &str, args: &[&str]) -> Command {
        let mut c = Command::new(WINE64);
        c.arg(&self.game).args(args);
        self.environment(&mut c, display);
        c
    }

    /// The same, as `KEY=VALUE` pairs and an argument vector, for the agent to launch.
    pub fn game_argv(&self, args: &[&str]) -> Vec<String> {
        let mut argv = vec![WINE64.to_string(), self.game.display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    /// The environment a Wine program needs here.
    pub fn env(&self, display: &str) -> Vec<(String, String)> {
        vec![
            ("DISPLAY".into(), display.into()),
            ("WINEPREFIX".into(), self.prefix.display().to_string()),
            // No Mono or Gecko installers (a dialog nobody would answer).
            ("WINEDLLOVERRIDES".into(), "mscoree,mshtml=".into()),
            ("WINEDEBUG".into(), "-all".into()),
        ]
    }

    fn environment(&self, c: &mut Command, display: &str) {
        for (k, v) in self.env(display) {
            c.env(k, v);
        }
    }
}

/// Compiles the test game if its source is newer than the program.
fn build_game(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("windows/wingame.c");
    let exe = dir.join("wingame.exe");
    // Vulkan's headers are the host's (libvulkan-dev): only their directories are given to the
    // cross compiler, never the host's /usr/include (glibc's headers are not Windows').
    let include = dir.join("include");
    std::fs::create_dir_all(&include).expect("create the include directory");
    for name in ["vulkan", "vk_video"] {
        let link = include.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new("/usr/include").join(name), &link)
                .expect("link the Vulkan headers");
        }
    }
    assert!(
        include.join("vulkan/vulkan.h").exists(),
        "NOT RUN: no Vulkan headers in /usr/include/vulkan: run `cargo xtask setup --for test` \
         (it installs libvulkan-dev)"
    );
    let status = Command::new(MINGW_GCC)
        .args([
            "-O2",
            "-Wall",
            "-Wextra",
            "-Wno-missing-field-initializers",
            "-Werror",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .args(["-lopengl32", "-lgdi32", "-luser32"])
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "NOT RUN: cannot run {MINGW_GCC} ({e}): run `cargo xtask setup --for test` (it \
                 installs mingw-w64)"
            )
        });
    assert!(
        status.success(),
        "{MINGW_GCC} failed to build {}",
        source.display()
    );
    exe
}

/// A new Wine prefix at `prefix`; prefixes of earlier test runs are removed first.
fn make_prefix(dir: &Path, prefix: &Path) {
    for entry in std::fs::read_dir(dir)
        .expect("list target/wine-test")
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("prefix-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    // wineboot needs no display for a new prefix; -i initialises it and returns when done.
    let status = Command::new(WINE64)
        .args(["wineboot", "-i"])
        .env("WINEPREFIX", prefix)
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
        .env("WINEDEBUG", "-all")
        .env_remove("DISPLAY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run wineboot");
    assert!(
        status.success(),
        "wineboot -i failed for {}",
        prefix.display()
    );
    // wineboot returns once the prefix is made; its server lingers a few seconds. Wait for it
    // so that the tests' own runs start from a quiet prefix.
    let _ = Command::new(WINESERVER)
        .arg("-w")
        .env("WINEPREFIX", prefix)
        .status();
}

/// What the test game wrote beside its ground truth (`TRUTH.threads`): the Linux thread ids of
/// its game thread and of the thread that presented.
pub fn game_threads(truth: &Path) -> (u32, u32) {
    let mut name = truth.as_os_str().to_owned();
    name.push(".threads");
    let text = std::fs::read_to_string(&name)
        .unwrap_or_else(|e| panic!("{}: {e}", PathBuf::from(&name).display()));
    let ids: Vec<u32> = text
        .split_whitespace()
        .map(|n| n.parse().expect("a thread id"))
        .collect();
    match ids[..] {
        [game, presenter] => (game, presenter),
        _ => panic!(
            "{}: not `GAME PRESENTER`: {text:?}",
            PathBuf::from(&name).display()
        ),
    }
}

/// The windows of the game's second window (`two-windows` mode: `TRUTH.second`).
pub fn second_window_truth(truth: &Path) -> Vec<PresentWindow> {
    let mut name = truth.as_os_str().to_owned();
    name.push(".second");
    crate::read_truth(Path::new(&name))
}
