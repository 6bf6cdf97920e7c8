//! The daemon's configuration: `/etc/nvbind/agent.toml` (every key optional, unknown keys
//! rejected with their line), overridden by command-line flags. See docs/daemon.md.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    gpu::SamplerConfig,
    probes::{BpfStats, KernelHooks, MAX_MAX_FPS_PER_USER, MIN_MAX_FPS_PER_USER},
    stutter::DetectorConfig,
};

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/nvbind/agent.toml";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The whole file. Every section and key has a default, so an empty file is valid.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub api: ApiConfig,
    pub games: GamesConfig,
    pub reports: ReportsConfig,
    pub stutter: StutterConfig,
    pub gpu: GpuConfig,
    pub probes: ProbesConfig,
}

/// The local API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Read-only HTTP and WebSocket API. Loopback by default: frame timings of what runs on the
    /// host are nobody else's business. An empty string turns it off.
    pub listen: String,
    /// Root-only Unix socket for requests that change state (GPU binding). Empty: off.
    pub socket: PathBuf,
    /// The window `GET /api/processes/{pid}` and the WebSocket stream summarise, in seconds.
    pub window_s: f64,
    /// Where GPU bindings are pinned (a BPF filesystem).
    pub bpffs: PathBuf,
    /// Names (besides addresses, `localhost` and the host name) a browser or scraper may use
    /// for this host in `Host`, e.g. `"gamebox.lan"`: other names are refused, so another
    /// site's page cannot read the API by pointing its own name at 127.0.0.1.
    pub allowed_hosts: Vec<String>,
}

/// Which processes count as games. A process is tracked from its first present when it matches
/// an `include_*` list (or all of them are empty) and matches no `exclude_*` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GamesConfig {
    /// Process names (`comm`, the kernel's 15 bytes).
    pub include_comm: Vec<String>,
    /// Executable paths; a path ending in `/` matches everything under it.
    pub include_exe: Vec<String>,
    /// cgroup paths (as in `/proc/PID/cgroup`); a cgroup matches itself and its descendants.
    pub include_cgroup: Vec<String>,
    pub exclude_comm: Vec<String>,
    pub exclude_exe: Vec<String>,
    pub exclude_cgroup: Vec<String>,
    /// The most presenting processes of one user (root excepted) tracked at once: the kernel
    /// tracks at most `MAX_TRACKED_PROCESSES`, and one user's processes must not take them all
    /// from everyone else's games (0: no cap).
    pub max_per_user: u32,
    /// Who owns which subordinate uids (a user's rootless containers count as that user for
    /// `max_per_user`): the host's `/etc/subuid`, or a copy of it where the host's `/etc` is
    /// mounted elsewhere.
    pub subuid_file: PathBuf,
    /// The most frames per second one user's processes (root excepted) may have stored beyond
    /// each process's own 500: the rest are counted, not stored (a report's
    /// `frames.over_rate`), so that one user presenting in a loop cannot crowd everyone else's
    /// frames out of the kernel's ring buffer (0: no cap; else `MIN_MAX_FPS_PER_USER` to
    /// `MAX_MAX_FPS_PER_USER`).
    pub max_fps_per_user: u32,
}

/// Processes the kernel can track at once (`TRACKED_PROCESSES` in the eBPF crate).
pub const MAX_TRACKED_PROCESSES: u32 = 4096;

/// The most frames a session part may hold in memory (see `ReportsConfig::max_session_frames`).
pub const MAX_SESSION_FRAMES: usize = 200_000;

/// Session reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsConfig {
    pub dir: PathBuf,
    /// Sessions kept; the oldest are deleted beyond this (0: keep everything).
    pub keep: usize,
    /// Sessions with fewer frames leave no report.
    pub min_frames: u64,
    /// Per-frame logs written beside each report: `frames` (nvbind's CSV), `mangohud`,
    /// `presentmon`.
    pub exports: Vec<Export>,
    /// A session that reaches this many frames is written and continues as a new part, so the
    /// agent's memory stays bounded however long a game runs.
    pub max_session_frames: usize,
    /// The group that may read the reports (the directory is root's, mode 2750, and its files
    /// 0640): a gamer joins it to read their sessions. Empty, or a group that does not exist:
    /// root only.
    pub group: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    Frames,
    Mangohud,
    Presentmon,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StutterConfig {
    /// A stutter is a frame longer than `factor` × the trailing average...
    pub factor: f64,
    /// ...and longer than this.
    pub floor_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    /// GPU counters read per second (0: not at all).
    pub sample_hz: f64,
    /// Where GPUs are looked for (copies of the host's trees in containers and tests).
    pub sysfs_root: PathBuf,
    pub dev_root: PathBuf,
    pub proc_root: PathBuf,
}

/// How the kernel is hooked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbesConfig {
    /// "auto" (BTF tracepoints where the kernel has BTF, else classic ones), "btf" or "classic".
    pub kernel_hooks: KernelHooks,
    /// When the kernel times nvbind's programs for /metrics: "sampled" (2 s a minute), "on"
    /// (always: every BPF program on the host pays ~20 ns a run) or "off".
    pub bpf_stats: BpfStats,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:9090".into(),
            socket: "/run/nvbind/agent.sock".into(),
            window_s: 10.0,
            bpffs: "/sys/fs/bpf".into(),
            allowed_hosts: Vec::new(),
        }
    }
}

impl Default for GamesConfig {
    fn default() -> Self {
        GamesConfig {
            include_comm: Vec::new(),
            include_exe: Vec::new(),
            include_cgroup: Vec::new(),
            // Display servers and compositors present for the whole desktop, not as a game.
            exclude_comm: [
                "Xorg",
                "Xwayland",
                "gnome-shell",
                "kwin_wayland",
                "kwin_x11",
                "mutter",
                "weston",
                "sway",
                "Hyprland",
                "gamescope",
                "plasmashell",
            ]
            .map(String::from)
            .to_vec(),
            exclude_exe: Vec::new(),
            exclude_cgroup: Vec::new(),
            // A desktop user runs a handful of presenters at once (a game, its launcher, a
            // browser, Steam's web helper); 64 leaves room for 63 other users' at the cap.
            max_per_user: 64,
            subuid_file: super::subuids::SUBUID_FILE.into(),
            max_fps_per_user: crate::probes::DEFAULT_MAX_FPS_PER_USER,
        }
    }
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            dir: "/var/lib/nvbind/reports".into(),
            keep: 200,
            min_frames: 2,
            exports: vec![Export::Frames, Export::Mangohud, Export::Presentmon],
            max_session_frames: 100_000,
            group: "nvbind".into(),
        }
    }
}

impl Default for StutterConfig {
    fn default() -> Self {
        let d = DetectorConfig::default();
        StutterConfig {
            factor: d.factor,
            floor_ms: d.floor_ms,
        }
    }
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            sample_hz: 10.0,
            sysfs_root: "/sys".into(),
            dev_root: "/dev".into(),
            proc_root: "/proc".into(),
        }
    }
}

impl Config {
    /// Reads and checks a configuration file. A missing file at the default path means the
    /// defaults; a missing file named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let config = Config::parse(&text, path)?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Parses TOML text; errors name the line.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |span| {
                text[..span.start.min(text.len())].lines().count().max(1)
            });
            // A span at the start of a line counts the lines before it.
            let line = match e.span() {
                Some(span) if text[..span.start.min(text.len())].ends_with('\n') => line + 1,
                _ => line,
            };
            // The line itself: TOML's messages do not always name the key.
            let quoted = text
                .lines()
                .nth(line - 1)
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| format!(" (`{l}`)"))
                .unwrap_or_default();
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message: format!("{}{quoted}", e.message().trim().replace('\n', " ")),
            }
        })
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !self.api.listen.is_empty() {
            self.listen_addr()?;
        }
        if !(self.api.window_s.is_finite() && (0.5..=3600.0).contains(&self.api.window_s)) {
            return Err(format!(
                "api.window_s must be between 0.5 and 3600 seconds, not {}",
                self.api.window_s
            ));
        }
        self.detector().validate().map_err(|e| {
            e.replace("--stutter-factor", "stutter.factor")
                .replace("--stutter-floor-ms", "stutter.floor_ms")
        })?;
        self.gpu_sampling()?;
        // Frames are held in memory until their part is written (~250 bytes each): the upper
        // bound is the daemon's memory bound per tracked game (50 MB).
        if !(1000..=MAX_SESSION_FRAMES).contains(&self.reports.max_session_frames) {
            return Err(format!(
                "reports.max_session_frames must be from 1000 to {MAX_SESSION_FRAMES}, not {}",
                self.reports.max_session_frames
            ));
        }
        if self.games.max_per_user > MAX_TRACKED_PROCESSES {
            return Err(format!(
                "games.max_per_user must be at most {MAX_TRACKED_PROCESSES} (the kernel's \
                 table), or 0 for no cap, not {}",
                self.games.max_per_user
            ));
        }
        let fps = self.games.max_fps_per_user;
        if fps != 0 && !(MIN_MAX_FPS_PER_USER..=MAX_MAX_FPS_PER_USER).contains(&fps) {
            return Err(format!(
                "games.max_fps_per_user must be from {MIN_MAX_FPS_PER_USER} to \
                 {MAX_MAX_FPS_PER_USER} (what the kernel's ring buffer carries safely), or 0 \
                 for no cap, not {fps}"
            ));
        }
        if !self.games.subuid_file.is_absolute() {
            return Err(format!(
                "games.subuid_file {:?} must be an absolute path such as /etc/subuid",
                self.games.subuid_file
            ));
        }
        if self.reports.dir.as_os_str().is_empty() {
            return Err("reports.dir must not be empty".into());
        }
        if !self.reports.dir.is_absolute() {
            // Relative to what? The daemon's working directory is not a place to write reports.
            return Err(format!(
                "reports.dir {:?} must be an absolute path such as /var/lib/nvbind/reports",
                self.reports.dir
            ));
        }
        let group = &self.reports.group;
        let valid_group = group.len() <= 32
            && group.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase() || b == b'_' || (i > 0 && (b.is_ascii_digit() || b == b'-'))
            });
        if !valid_group {
            return Err(format!(
                "reports.group {group:?} is not a group name (lowercase letters, digits, '_' and '-'; \"\" for root only)"
            ));
        }
        Ok(())
    }

    /// The API's TCP address.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.api.listen.parse().map_err(|_| {
            format!(
                "api.listen {:?} is not an address and port such as 127.0.0.1:9090",
                self.api.listen
            )
        })
    }

    pub fn detector(&self) -> DetectorConfig {
        DetectorConfig {
            factor: self.stutter.factor,
            floor_ms: self.stutter.floor_ms,
        }
    }

    /// How often GPUs are read (`None`: not at all), by the rule `record --gpu-sample-hz`
    /// follows too.
    fn gpu_sampling(&self) -> Result<Option<SamplerConfig>, String> {
        SamplerConfig::from_hz(self.gpu.sample_hz, "gpu.sample_hz")
    }

    /// The time between GPU reads of a checked configuration (`None`: not read).
    pub fn gpu_period(&self) -> Option<Duration> {
        self.gpu_sampling().ok().flatten().map(|c| c.period)
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.api.window_s)
    }
}

/// What the config's game lists say about one process.
#[derive(Debug, Clone, Default)]
pub struct Candidate<'a> {
    pub comm: &'a str,
    pub exe: &'a str,
    pub cgroup: &'a str,
}

impl GamesConfig {
    /// Whether a process that presents should be tracked.
    pub fn admits(&self, c: &Candidate) -> bool {
        let included = (self.include_comm.is_empty()
            && self.include_exe.is_empty()
            && self.include_cgroup.is_empty())
            || matches_any(
                &self.include_comm,
                &self.include_exe,
                &self.include_cgroup,
                c,
            );
        included
            && !matches_any(
                &self.exclude_comm,
                &self.exclude_exe,
                &self.exclude_cgroup,
                c,
            )
    }
}

fn matches_any(comms: &[String], exes: &[String], cgroups: &[String], c: &Candidate) -> bool {
    // The kernel keeps 15 bytes of a name: compare configured names the same way.
    let comm_matches = |name: &String| {
        let n = name.len().min(15);
        name.as_bytes()[..n] == *c.comm.as_bytes() || name == c.comm
    };
    let exe_matches = |path: &String| {
        if path.ends_with('/') {
            c.exe.starts_with(path.as_str())
        } else {
            c.exe == path
        }
    };
    let cgroup_matches = |cg: &String| {
        let cg = cg.trim_end_matches('/');
        !c.cgroup.is_empty()
            && (cg.is_empty()
                || c.cgroup == cg
                || c.cgroup
                    .strip_prefix(cg)
                    .is_some_and(|rest| rest.starts_with('/')))
    };
    comms.iter().any(comm_matches)
        || exes.iter().any(exe_matches)
        || cgroups.iter().any(cgroup_matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("agent.toml"))
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_shipped_example_documents_every_default() {
        let text = include_str!("../../../dist/agent.toml");
        assert_eq!(parse(text).unwrap(), Config::default());
        // Every key of every section appears in it.
        let defaults = toml::to_string(&Config::default()).unwrap();
        for line in defaults.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                    "dist/agent.toml does not document {key}"
                );
            }
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let e = parse("[api]\nlisten = \"127.0.0.1:9191\"\n\n[reports]\nkeeep = 3\n").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("agent.toml line 5: "), "{text}");
        assert!(text.contains("keeep"), "{text}");
        let e = parse("[apii]\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("apii"), "{e}");
    }

    #[test]
    fn wrong_types_are_rejected_with_their_line() {
        let e = parse("[reports]\nkeep = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse("[reports]\nexports = [\"csv\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("csv"), "{e}");
    }

    #[test]
    fn kernel_hooks_are_chosen_by_name() {
        assert_eq!(
            parse("[probes]\nkernel_hooks = \"classic\"\n")
                .unwrap()
                .probes
                .kernel_hooks,
            KernelHooks::Classic
        );
        let e = parse("[probes]\nkernel_hooks = \"fast\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn bpf_stats_are_sampled_unless_asked_otherwise() {
        assert_eq!(parse("").unwrap().probes.bpf_stats, BpfStats::Sampled);
        assert_eq!(
            parse("[probes]\nbpf_stats = \"off\"\n")
                .unwrap()
                .probes
                .bpf_stats,
            BpfStats::Off
        );
        let e = parse("[probes]\nbpf_stats = \"always\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn values_are_checked() {
        let mut c = parse("[api]\nlisten = \"localhost\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("api.listen"));
        c = parse("[stutter]\nfactor = 0.5\n").unwrap();
        assert!(c.validate().is_err());
        c = parse("[gpu]\nsample_hz = -1\n").unwrap();
        assert!(c.validate().unwrap_err().contains("gpu.sample_hz"));
        c = parse("[api]\nlisten = \"\"\n").unwrap();
        c.validate().unwrap();
        c = parse("[reports]\nmax_session_frames = 200001\n").unwrap();
        assert!(c.validate().unwrap_err().contains("200000"));
        c = parse("[reports]\ndir = \"reports\"\n").unwrap();
        assert!(c.validate().unwrap_err().contains("absolute"));
        for bad in ["Games", "a b", "-x", "x;rm", "1abc"] {
            c = parse(&format!("[reports]\ngroup = \"{bad}\"\n")).unwrap();
            assert!(c.validate().unwrap_err().contains("reports.group"), "{bad}");
        }
        for good in ["", "nvbind", "games", "steam-users", "_x1"] {
            c = parse(&format!("[reports]\ngroup = \"{good}\"\n")).unwrap();
            c.validate().unwrap();
        }
    }

    #[test]
    fn games_are_chosen_by_comm_exe_and_cgroup() {
        let games = GamesConfig::default();
        let game = Candidate {
            comm: "vkcube",
            exe: "/usr/bin/vkcube",
            cgroup: "/user.slice/app.scope",
        };
        assert!(games.admits(&game));
        assert!(!games.admits(&Candidate {
            comm: "gnome-shell",
            ..game.clone()
        }));
        let only_steam = GamesConfig {
            include_cgroup: vec!["/user.slice/steam".into()],
            ..GamesConfig::default()
        };
        assert!(!only_steam.admits(&game));
        assert!(only_steam.admits(&Candidate {
            cgroup: "/user.slice/steam/game-42.scope",
            ..game.clone()
        }));
        assert!(!only_steam.admits(&Candidate {
            cgroup: "/user.slice/steamy",
            ..game.clone()
        }));
        let exe_dir = GamesConfig {
            include_exe: vec!["/opt/games/".into()],
            exclude_comm: vec!["a-very-long-launcher-name".into()],
            ..GamesConfig::default()
        };
        assert!(exe_dir.admits(&Candidate {
            exe: "/opt/games/x/game",
            ..game.clone()
        }));
        assert!(!exe_dir.admits(&Candidate {
            comm: "a-very-long-lau",
            exe: "/opt/games/launcher",
            ..game.clone()
        }));
    }
}
