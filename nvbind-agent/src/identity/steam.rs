//! A Steam game's app id, from what Steam leaves on the processes it starts.
//!
//! Steam sets `SteamAppId` (and `SteamGameId`; Proton also `STEAM_COMPAT_APP_ID`) in a game's
//! environment, and where Steam starts games as systemd scopes their cgroup is named after the
//! app (`app-steam-app<N>-<M>.scope`); tools that group games by cgroup use `steam_app_<N>`.
//! Either is enough; the environment is read first.

use super::read_bounded;

/// Environment variables that carry the app id, in the order they are trusted.
const ENVIRONMENT_KEYS: [&str; 3] = ["SteamAppId", "STEAM_COMPAT_APP_ID", "SteamGameId"];
/// How much of /proc/PID/environ is read (Steam sets its variables among the first few KiB; a
/// process can make its environment as large as `ARG_MAX`).
const ENVIRON_MAX_BYTES: u64 = 256 << 10;
const CGROUP_MAX_BYTES: u64 = 64 << 10;

/// `pid`'s Steam app id, or `None` when it has none (or it cannot be read).
pub fn steam_app_id(pid: u32) -> Option<u32> {
    let environ = read_bounded(&format!("/proc/{pid}/environ"), ENVIRON_MAX_BYTES);
    if let Some(id) = environ.as_deref().and_then(app_id_in_environment) {
        return Some(id);
    }
    let cgroup = read_bounded(&format!("/proc/{pid}/cgroup"), CGROUP_MAX_BYTES)?;
    app_id_in_cgroup(&String::from_utf8_lossy(&cgroup))
}

/// The app id in an environment block (`KEY=VALUE` entries separated by NULs).
fn app_id_in_environment(environ: &[u8]) -> Option<u32> {
    ENVIRONMENT_KEYS.iter().find_map(|key| {
        environ.split(|b| *b == 0).find_map(|entry| {
            let value = entry.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
            app_id(std::str::from_utf8(value).ok()?)
        })
    })
}

/// The app id in a /proc/PID/cgroup listing: the first path component named after one.
fn app_id_in_cgroup(cgroup: &str) -> Option<u32> {
    cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find_map(|component| {
            if let Some(rest) = component.strip_prefix("app-steam-app") {
                return app_id(rest.split(['-', '.']).next()?);
            }
            app_id(component.strip_prefix("steam_app_")?)
        })
}

/// A positive decimal app id (0 is Steam's "not a game").
fn app_id(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&id| id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_the_app() {
        let env = b"HOME=/home/me\0SteamGameId=1091500\0SteamAppId=570\0";
        assert_eq!(app_id_in_environment(env), Some(570), "SteamAppId first");
        assert_eq!(
            app_id_in_environment(b"STEAM_COMPAT_APP_ID=1245620\0"),
            Some(1245620)
        );
        // A non-Steam shortcut's game id is a 64-bit hash, not an app id; 0 is no game.
        assert_eq!(
            app_id_in_environment(b"SteamGameId=12988889245234561024\0SteamAppId=0\0"),
            None
        );
        assert_eq!(
            app_id_in_environment(b"XSteamAppId=5\0SteamAppId=5x\0"),
            None
        );
    }

    #[test]
    fn the_cgroup_names_the_app() {
        assert_eq!(
            app_id_in_cgroup(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-steam-app1091500-4711.scope\n"
            ),
            Some(1091500)
        );
        assert_eq!(
            app_id_in_cgroup("12:cpu,cpuacct:/steam_app_570\n0::/games/steam_app_570\n"),
            Some(570)
        );
        assert_eq!(app_id_in_cgroup("0::/user.slice/app-steam.scope\n"), None);
        assert_eq!(app_id_in_cgroup("0::/steam_app_\n"), None);
    }
}
