//! Turning the command line's values into checked options: targets, durations, ioctl types,
//! stutter thresholds, the GPU sampling rate and where GPUs are looked for. Errors name the flag.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};

use super::args::{NvmlMode, RootArgs};
use crate::{gpu, stutter::DetectorConfig, target::TargetSpec};

/// What `record` records: exactly one of `--pid`, `--comm` (not empty), `--all` or a command.
pub(super) fn target(
    pid: Option<u32>,
    comm: Option<String>,
    command: Vec<String>,
    all: bool,
) -> Result<TargetSpec> {
    Ok(match (pid, comm, command.is_empty(), all) {
        (Some(pid), None, true, false) => TargetSpec::Pid(pid),
        (None, Some(name), true, false) if !name.is_empty() => TargetSpec::Comm(name),
        (None, None, false, false) => TargetSpec::Command(command),
        (None, None, true, true) => TargetSpec::All,
        _ => anyhow::bail!(
            "nothing to record: give one of --pid PID, --comm NAME, --all or -- COMMAND [ARGS]"
        ),
    })
}

/// The stutter detector's thresholds (`--stutter-factor`, `--stutter-floor-ms`).
pub(super) fn stutter(factor: f64, floor_ms: f64) -> Result<DetectorConfig> {
    let stutter = DetectorConfig { factor, floor_ms };
    stutter.validate().map_err(anyhow::Error::msg)?;
    Ok(stutter)
}

/// A positive number of seconds given with `flag`, if given.
pub(super) fn seconds(value: Option<f64>, flag: &str) -> Result<Option<Duration>> {
    value
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("{flag} must be a positive number of seconds, not {s}"))
        })
        .transpose()
}

/// `--gpu-sample-hz`: how often GPUs are read during a recording (`None`: not at all).
pub(super) fn gpu_sampling(hz: f64) -> Result<Option<gpu::SamplerConfig>> {
    gpu::SamplerConfig::from_hz(hz, "--gpu-sample-hz").map_err(anyhow::Error::msg)
}

impl RootArgs {
    /// The roots, each an existing directory, and whether NVML is asked.
    pub(super) fn roots(&self) -> Result<gpu::Roots> {
        for (dir, flag) in [
            (&self.sysfs_root, "--sysfs-root"),
            (&self.dev_root, "--dev-root"),
            (&self.proc_root, "--proc-root"),
        ] {
            if !dir.is_dir() {
                anyhow::bail!("{flag} {}: no such directory", dir.display());
            }
        }
        Ok(gpu::Roots {
            sys: self.sysfs_root.clone(),
            dev: self.dev_root.clone(),
            proc: self.proc_root.clone(),
            nvml: match self.nvml {
                NvmlMode::Auto => self.sysfs_root == Path::new("/sys"),
                NvmlMode::Always => true,
                NvmlMode::Never => false,
            },
        })
    }
}
