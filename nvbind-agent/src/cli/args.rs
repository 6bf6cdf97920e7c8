//! The command line's definitions: every command, flag, default and help text, and nothing of
//! what they do (that is in the sibling modules, one per group of commands).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    binding,
    probes::{BpfStats, KernelHooks, SchedStep, UntrackedCheck},
    stutter::DetectorConfig,
};

#[derive(Debug, Parser)]
#[command(
    name = "nvbind-agent",
    version,
    about = "Frame-pacing and GPU telemetry for Linux games, from the kernel, without injection",
    long_about = "Frame-pacing and GPU telemetry for Linux games, from the kernel, without \
                  injection.\n\nWith no command, runs the daemon: every process that presents \
                  frames is tracked from its first frame, live numbers are served on the local \
                  API and /metrics, and each game session leaves a report (see docs/daemon.md).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// The daemon's flags (they override `/etc/nvbind/agent.toml`).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve the read-only API and /metrics here (address:port; "" turns it off).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The root-only Unix socket for binding requests ("" turns it off).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<String>,
    /// Write session reports here.
    #[arg(long, value_name = "DIR")]
    pub reports_dir: Option<PathBuf>,
    /// Keep this many session reports (0: all).
    #[arg(long, value_name = "N")]
    pub keep_reports: Option<usize>,
    /// Read the GPUs this many times a second (0: not at all).
    #[arg(long, value_name = "HZ")]
    pub gpu_sample_hz: Option<f64>,
    /// Scheduler probes on BTF tracepoints (btf), classic tracepoints (classic), or BTF where
    /// the kernel has it (auto).
    #[arg(long, value_name = "HOOKS")]
    pub kernel_hooks: Option<KernelHooks>,
    /// When the kernel times nvbind's programs for /metrics: in 2 s windows once a minute
    /// (sampled), all the time (on: every BPF program on the host pays ~20 ns a run), or never.
    #[arg(long, value_name = "WHEN")]
    pub bpf_stats: Option<BpfStats>,
    /// Read sysfs from here instead of /sys.
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,
    /// Find device nodes here instead of /dev.
    #[arg(long, value_name = "DIR")]
    pub dev_root: Option<PathBuf>,
    /// Read procfs from here instead of /proc.
    #[arg(long, value_name = "DIR")]
    pub proc_root: Option<PathBuf>,
    /// Where GPU bindings are pinned (a BPF filesystem).
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// Mount tracefs at /sys/kernel/tracing if it is not mounted.
    #[arg(long)]
    pub mount_tracefs: bool,
}

/// `top`'s flags.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// The daemon's API (address:port); default: the config's api.listen, else 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR", conflicts_with = "standalone")]
    pub api: Option<String>,
    /// Record in this process instead of reading a daemon (root; sessions are written as the
    /// daemon writes them).
    #[arg(long)]
    pub standalone: bool,
    /// Refresh every this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub interval_ms: u64,
    /// The configuration file (the API's address; with --standalone, the capture's settings).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// With --standalone: write session reports here.
    #[arg(long, value_name = "DIR", requires = "standalone")]
    pub reports_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every probe as attached or unavailable, with the reason and the fix.
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Mount tracefs at /sys/kernel/tracing if it is not mounted.
        #[arg(long)]
        mount_tracefs: bool,
        /// Scheduler probes on BTF tracepoints, classic tracepoints, or BTF where possible.
        #[arg(long, value_name = "HOOKS", default_value = "auto")]
        kernel_hooks: KernelHooks,
    },
    /// Record a game's frames and what the scheduler and GPU driver did to its threads.
    Record(RecordArgs),
    /// A live terminal monitor of the games the daemon tracks: fps, frame times, lows,
    /// stutters with their causes, and the GPU.
    Top(TopArgs),
    /// Summarise a recorded report for people; optionally draw it as an SVG chart.
    Report(ReportArgs),
    /// List the GPUs: vendor, name, PCI address, driver, UUID, device nodes and counters now.
    Gpus {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        roots: RootArgs,
    },
    /// Let a cgroup use only the given GPUs (plus the safe devices everyone needs), enforced by
    /// the kernel and kept when the agent exits; binding a bound cgroup replaces its binding.
    Bind(BindArgs),
    /// Remove nvbind's binding of a cgroup (or all of them).
    Unbind(UnbindArgs),
    /// List the bindings in force, checked against the kernel.
    Bindings {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Only the bindings of this container (its id, or the first 4 or more digits of it).
        #[arg(long, value_name = "ID")]
        container: Option<String>,
        #[command(flatten)]
        bpffs: BpffsArg,
    },
    /// Container Device Interface specs for container engines.
    #[command(subcommand)]
    Cdi(CdiCommand),
    /// Internal: resolve the installed Vulkan drivers' vkQueuePresentKHR (run by the agent).
    #[command(name = "__resolve-vulkan-present", hide = true)]
    ResolveVulkanPresent,
    /// Internal: resolve OpenGL's compile functions as programs get them (run by the agent).
    #[command(name = "__resolve-gl", hide = true)]
    ResolveGl,
    /// Internal: write the man page and the bash, zsh and fish completions into DIR (run by
    /// `cargo xtask package` and `cargo xtask install`).
    #[command(name = "__generate-docs", hide = true)]
    GenerateDocs {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Record this running process (and its threads and children, present and future).
    #[arg(long, conflicts_with_all = ["comm", "command"])]
    pub pid: Option<u32>,
    /// Record every process on the system, running and future (the scheduler view of bcc's
    /// runqlat, per process, plus the frames of any that present); stop it with --duration or
    /// Ctrl-C.
    #[arg(long, conflicts_with_all = ["pid", "comm", "command"])]
    pub all: bool,
    /// Record processes with this name (comm), waiting for one to start if none runs yet.
    #[arg(long, conflicts_with = "command")]
    pub comm: Option<String>,
    /// With --comm: give up if no such process appears within this many seconds.
    #[arg(long, value_name = "SECS")]
    pub wait_timeout: Option<f64>,
    /// Stop after this many seconds (counted from when the first target is tracked).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Where to write the JSON report (written atomically).
    #[arg(long, value_name = "FILE", default_value = "nvbind-report.json")]
    pub out: PathBuf,
    /// Also write one CSV row per frame here (written atomically).
    #[arg(long, value_name = "FILE")]
    pub frames_csv: Option<PathBuf>,
    /// Also write the frames in MangoHud's log format (MangoHud 0.6.8), one file per process
    /// with frames: with several, `-<pid>` goes before the extension (see docs/exports.md).
    #[arg(long, value_name = "FILE")]
    pub mangohud_csv: Option<PathBuf>,
    /// Also write the frames as a PresentMon 1.x CSV (CapFrameX reads it), one file per process
    /// with frames, named as for --mangohud-csv.
    #[arg(long, value_name = "FILE")]
    pub presentmon_csv: Option<PathBuf>,
    /// Do not track processes the targets start.
    #[arg(long)]
    pub no_follow_children: bool,
    /// Mount tracefs at /sys/kernel/tracing if it is not mounted.
    #[arg(long)]
    pub mount_tracefs: bool,
    /// Scheduler probes on BTF tracepoints (btf), classic tracepoints (classic, the fallback for
    /// kernels without BTF), or BTF where the kernel has it (auto).
    #[arg(long, value_name = "HOOKS", default_value = "auto")]
    pub kernel_hooks: KernelHooks,
    /// When the kernel times nvbind's programs for the report's costs: in 2 s windows once a
    /// minute from the start (sampled), all the time (on: every BPF program on the host pays
    /// ~20 ns a run), or never (off).
    #[arg(long, value_name = "WHEN", default_value = "sampled")]
    pub bpf_stats: BpfStats,
    /// How the scheduler programs tell untracked tasks from tracked ones: a byte per tid
    /// (marks) or the tracked threads' hash table alone (table). For the benchmark.
    #[arg(long, value_name = "CHECK", default_value = "marks", hide = true)]
    pub untracked_check: UntrackedCheck,
    /// Leave this step of the tracked scheduler path out (repeatable): the benchmark measures
    /// what each step costs per context switch. A report made so lacks what the step finds.
    #[arg(long, value_name = "STEP", hide = true)]
    pub leave_out: Vec<SchedStep>,
    /// A stutter is a frame longer than this many times the trailing average frame time.
    #[arg(long, value_name = "FACTOR", default_value_t = DetectorConfig::default().factor)]
    pub stutter_factor: f64,
    /// ...and longer than this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DetectorConfig::default().floor_ms)]
    pub stutter_floor_ms: f64,
    /// Count ioctls with this type byte (`_IOC_TYPE`, e.g. 0x64 or 'd') as GPU driver calls, for
    /// drivers nvbind does not know (DRM, NVIDIA and amdkfd are built in). Repeatable.
    #[arg(long, value_name = "TYPE", value_parser = parse_ioctl_type)]
    pub gpu_ioctl_type: Vec<u8>,
    /// Read the GPUs this many times a second during the recording (0: not at all).
    #[arg(long, value_name = "HZ", default_value_t = 10.0)]
    pub gpu_sample_hz: f64,
    #[command(flatten)]
    pub roots: RootArgs,
    /// Launch this command and record it (everything after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Where GPUs are looked for: the host's own roots, or copies of them (a container with the
/// host's `/sys` mounted elsewhere; test fixtures). NVML is used only with the real `/sys`.
#[derive(Debug, Args)]
pub struct RootArgs {
    /// Read sysfs from here instead of /sys.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs_root: PathBuf,
    /// Find device nodes here instead of /dev.
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    pub dev_root: PathBuf,
    /// Read procfs (NVIDIA's /proc/driver/nvidia) from here instead of /proc.
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Ask NVML about NVIDIA GPUs: auto (only when reading the real /sys), always, or never.
    #[arg(long, value_enum, default_value_t = NvmlMode::Auto)]
    pub nvml: NvmlMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NvmlMode {
    Auto,
    Always,
    Never,
}

/// Where bindings are pinned.
#[derive(Debug, Args)]
pub struct BpffsArg {
    /// The BPF filesystem that holds the bindings (pinned programs and records).
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf")]
    pub bpffs: PathBuf,
}

/// Which cgroup: a path, a process's, or a container's.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CgroupArg {
    /// The cgroup directory (under cgroup2, or under the v1 devices hierarchy).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// The cgroup this process is in.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// The cgroup of this container (Docker, Podman, containerd, CRI-O): its id, or the first
    /// 4 or more digits of it.
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
}

#[derive(Debug, Args)]
pub struct BindArgs {
    #[command(flatten)]
    pub target: CgroupArg,
    /// With --pid or --container on a host with both hierarchies: which one to bind in
    /// (default: the v2 cgroup, unless the process is in the v2 root).
    #[arg(long, value_enum, conflicts_with = "cgroup")]
    pub hierarchy: Option<binding::Hierarchy>,
    /// A GPU to allow: its index, UUID, PCI address, or `all`. Repeatable.
    #[arg(long = "gpu", value_name = "SELECTOR", required = true)]
    pub gpus: Vec<String>,
    /// Bind even if the container was started with other GPUs (a container given GPU 0 by
    /// `--device` and bound to GPU 1 alone can use no GPU at all).
    #[arg(long)]
    pub force: bool,
    /// Print the rules that would be enforced, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub bpffs: BpffsArg,
    #[command(flatten)]
    pub roots: RootArgs,
}

#[derive(Debug, Args)]
#[group(id = "unbind_target", required = true, multiple = false, args = ["cgroup", "pid", "container", "all"])]
pub struct UnbindArgs {
    /// The bound cgroup (also accepted after the cgroup was removed, to clear its pins).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// The cgroup this process is in.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Every binding of this container (its id or the first 4 or more digits of it; also
    /// after the container has exited).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// With --pid: which hierarchy (as for bind).
    #[arg(long, value_enum, requires = "pid")]
    pub hierarchy: Option<binding::Hierarchy>,
    /// Every binding nvbind holds.
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub bpffs: BpffsArg,
}

#[derive(Debug, Subcommand)]
pub enum CdiCommand {
    /// Write a CDI spec for the GPUs found: one device per GPU (by index and by UUID) and `all`.
    Generate {
        /// Write the spec here (atomically) instead of to standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The CDI kind (`vendor/class`) the devices are requested by.
        #[arg(long, default_value = binding::cdi::DEFAULT_KIND)]
        kind: String,
        /// The spec version to write (default: the lowest that can describe the spec, which
        /// the most runtimes accept; refused if the spec needs a newer one).
        #[arg(long, value_name = "VERSION")]
        cdi_version: Option<String>,
        #[command(flatten)]
        roots: RootArgs,
    },
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A report written by `nvbind-agent record` (or the daemon). Give two or more to compare
    /// runs side by side: each one's busiest presenting process, against the first.
    #[arg(required = true, num_args = 1.., value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Also draw frame time over the capture (stutters coloured by cause) and the frame-time
    /// distribution into this SVG file; with several reports, every run overlaid.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Which process to draw (default: the one with the most frames; one report only).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// How many of the worst stutters to describe per process.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub worst: usize,
}

/// An ioctl type byte: a number (`0x64`, `100`) or one ASCII character (`d`).
fn parse_ioctl_type(text: &str) -> Result<u8, String> {
    let trimmed = text.trim().trim_matches('\'');
    let parsed = match trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
    {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None if trimmed.len() == 1 && !trimmed.as_bytes()[0].is_ascii_digit() => {
            Some(trimmed.as_bytes()[0])
        }
        None => trimmed.parse().ok(),
    };
    parsed.ok_or_else(|| {
        format!(
            "{text:?} is not an ioctl type byte: give 0x00-0xff, 0-255 or one character such as d"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_types_are_numbers_or_characters() {
        assert_eq!(parse_ioctl_type("0xAE"), Ok(0xae));
        assert_eq!(parse_ioctl_type("100"), Ok(100));
        assert_eq!(parse_ioctl_type("d"), Ok(b'd'));
        assert_eq!(parse_ioctl_type("'F'"), Ok(b'F'));
        assert!(parse_ioctl_type("0x1ff").is_err());
        assert!(parse_ioctl_type("dd").is_err());
    }
}
