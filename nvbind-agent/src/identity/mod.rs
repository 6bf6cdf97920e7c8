//! Who a process is, as a person would name it: the game's name (a Windows game under Wine or
//! Proton by its `.exe`, not `wine64`), the Wine build it runs on, and its Steam app id.
//!
//! Everything read here comes from processes any local user can start, so it is hostile input:
//! reads are bounded, values are checked against what they can legitimately be, and what is kept
//! is printable text of bounded length (callers still escape it where they print it).
//!
//! The naming rule, in one place so that the report, the console, the daemon's API, `/metrics`
//! and the exports all agree ([`ProcessIdentity::read`], [`display_name`]):
//! 1. A Wine process (its executable is Wine's loader: `wine`, `wine64`, `wine-preloader`,
//!    `wine64-preloader`) is named by the file name of its Windows executable, which Wine puts
//!    first on the command line (`C:\Games\MyGame.exe`, `Z:\…\MyGame.exe`, `./mygame.exe`).
//! 2. A native process whose `comm` is the kernel's truncated 15 bytes of its executable's file
//!    name is named by that file name.
//! 3. Otherwise, by its `comm` (what `ps` and `top` show).

mod container;
mod steam;
mod wine;

use std::{io::Read, path::Path};

use serde::{Deserialize, Serialize};

pub use container::{container_id, container_id_of_component, container_id_prefix};
pub use steam::steam_app_id;
pub use wine::{is_wine_loader, wine_version};

/// The kernel's `TASK_COMM_LEN` less its NUL: a longer name is cut to this many bytes.
const COMM_MAX: usize = 15;
/// The longest name kept (a file name is at most 255 bytes on Linux).
const NAME_MAX: usize = 255;

/// The Wine side of a process that runs a Windows program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WineInfo {
    /// The Windows program as Wine was asked to run it (the command line's first word).
    pub windows_path: String,
    /// Wine's build string (`wine-8.0 (Debian 8.0~repack-4)`, a Proton build names itself),
    /// read from the `ntdll.so` the process mapped; absent when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What is known of who a process is, beyond its comm, executable and command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// The name a person knows it by (see the module's rule).
    pub name: String,
    pub wine: Option<WineInfo>,
    /// From the environment (`SteamAppId`, `SteamGameId`, `STEAM_COMPAT_APP_ID`) or the cgroup
    /// (`app-steam-app<N>-….scope`, `steam_app_<N>`).
    pub steam_app_id: Option<u32>,
}

impl ProcessIdentity {
    /// Reads what /proc says of `pid`, given what the caller already read (`comm`, the
    /// executable's path and the command line). Anything unreadable (the process exited, a
    /// kernel thread) is left out, never an error.
    pub fn read(pid: u32, comm: &str, exe: &str, cmdline: &[String]) -> ProcessIdentity {
        let name = display_name(comm, exe, cmdline);
        let wine = is_wine_loader(exe).then(|| WineInfo {
            windows_path: printable(windows_program(cmdline).unwrap_or_default()),
            version: wine_version(pid),
        });
        ProcessIdentity {
            name,
            wine,
            steam_app_id: steam_app_id(pid),
        }
    }
}

/// The name a person knows a process by, from its `comm`, executable path and command line.
pub fn display_name(comm: &str, exe: &str, cmdline: &[String]) -> String {
    if is_wine_loader(exe) {
        if let Some(program) = windows_program(cmdline) {
            return printable(windows_file_name(program));
        }
    }
    let exe_name = Path::new(exe)
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    // The kernel cuts comm to 15 bytes: a 15-byte comm that begins the executable's name is that
    // name cut short, and the whole name is what a person typed and will look for.
    if comm.len() == COMM_MAX && exe_name.len() > COMM_MAX && exe_name.starts_with(comm) {
        return printable(&exe_name);
    }
    if comm.is_empty() {
        return printable(&exe_name);
    }
    printable(comm)
}

/// The Windows program a Wine process runs: the first word of its command line that is not Wine's
/// loader (until Wine rewrites its command line at start-up, it reads `wine64 game.exe …`).
fn windows_program(cmdline: &[String]) -> Option<&str> {
    cmdline
        .iter()
        .map(String::as_str)
        .find(|arg| !is_wine_loader(arg))
        .filter(|arg| !windows_file_name(arg).is_empty())
}

/// The file name in a Windows or Unix path (`C:\Games\x.exe`, `Z:/a/x.exe`, `./x.exe`).
fn windows_file_name(path: &str) -> &str {
    path.rsplit(['\\', '/']).next().unwrap_or(path)
}

/// `text` with control characters replaced by `?` and cut to [`NAME_MAX`] bytes at a character
/// boundary: names end up in logs, terminals, CSV files and Prometheus labels.
pub fn printable(text: &str) -> String {
    printable_within(text, NAME_MAX)
}

/// [`printable`] for text longer than a name (a command line, a cgroup path): control characters
/// replaced by `?`, cut to `max` bytes at a character boundary.
pub fn printable_within(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(if c.is_control() { '?' } else { c });
    }
    out
}

/// `text` with every control character written as an escape (`\n`, `\u{1b}`): for a log line,
/// where a name with a newline would start a forged line (journald reads `<0>` at a line's start
/// as emergency priority) and an escape sequence would drive the reader's terminal.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls_except(text, &[])
}

/// [`escape_controls`] for terminal output made of lines: line ends and tabs kept.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    escape_controls_except(text, &['\n', '\t'])
}

fn escape_controls_except<'a>(text: &'a str, kept: &[char]) -> std::borrow::Cow<'a, str> {
    let hostile = |c: char| c.is_control() && !kept.contains(&c);
    if !text.chars().any(hostile) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hostile(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The first `max` bytes of a file, `None` when it cannot be read: another process's /proc
/// files (its command line, environment, cgroup) are as large as that process makes them.
pub fn read_bounded(path: &str, max: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(max)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn control_characters_are_escaped_for_logs_and_terminals() {
        let forged = "game\n<0>kernel panic\u{1b}[2J\u{9b}";
        let log = escape_controls(forged);
        assert_eq!(log, "game\\n<0>kernel panic\\u{1b}[2J\\u{9b}");
        assert!(!log.chars().any(char::is_control));
        let tty = terminal_safe("a\tb\nc\u{1b}]0;title\u{7}");
        assert_eq!(tty, "a\tb\nc\\u{1b}]0;title\\u{7}");
        assert!(matches!(
            escape_controls("vkcube ünï"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_wine_process_is_named_by_its_windows_program() {
        for (first, name) in [
            ("./wingame.exe", "wingame.exe"),
            (
                r"C:\Program Files\Game\MyGame-Win64-Shipping.exe",
                "MyGame-Win64-Shipping.exe",
            ),
            (
                r"Z:\home\me\.steam\steamapps\common\Game\Game.exe",
                "Game.exe",
            ),
            ("C:/windows/system32/services.exe", "services.exe"),
        ] {
            assert_eq!(
                display_name("wine64", "/usr/lib/wine/wine64", &args(&[first, "-dx12"])),
                name
            );
            assert_eq!(
                display_name(
                    "Game.exe",
                    "/opt/proton/files/bin/wine64-preloader",
                    &args(&[first])
                ),
                name
            );
        }
        // Before Wine rewrites its command line, the loader comes first.
        assert_eq!(
            display_name(
                "wine64",
                "/usr/lib/wine/wine64",
                &args(&["/usr/lib/wine/wine64", "mygame.exe"])
            ),
            "mygame.exe"
        );
        // A Wine loader with no program yet keeps its comm.
        assert_eq!(
            display_name("wine64", "/usr/lib/wine/wine64", &[]),
            "wine64"
        );
    }

    #[test]
    fn a_native_process_is_named_by_its_comm_or_the_name_comm_cuts_short() {
        assert_eq!(
            display_name("vkcube", "/usr/bin/vkcube", &args(&["vkcube"])),
            "vkcube"
        );
        // comm set by the program itself (prctl) is what ps shows: kept.
        assert_eq!(
            display_name("GameThread", "/opt/game/bin/game", &args(&["game"])),
            "GameThread"
        );
        assert_eq!(
            display_name(
                "a-very-long-gam",
                "/opt/a-very-long-game-name",
                &args(&["x"])
            ),
            "a-very-long-game-name"
        );
        assert_eq!(display_name("", "/usr/bin/glxgears", &[]), "glxgears");
    }

    #[test]
    fn names_are_printable_and_bounded() {
        assert_eq!(
            display_name("x", "/usr/lib/wine/wine64", &args(&["evil\n<0>boot.exe"])),
            "evil?<0>boot.exe"
        );
        let long = "é".repeat(300);
        let name = printable(&long);
        assert!(name.len() <= NAME_MAX && name.chars().all(|c| c == 'é'));
    }
}
