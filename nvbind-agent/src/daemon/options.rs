//! The daemon's options: the configuration file's path and the command line's overrides.

use std::path::PathBuf;

use anyhow::Result;

use super::config::Config;
use crate::{
    gpu,
    probes::{BpfStats, KernelHooks},
};

/// Command-line settings that override the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub socket: Option<PathBuf>,
    pub reports_dir: Option<PathBuf>,
    pub keep_reports: Option<usize>,
    pub gpu_sample_hz: Option<f64>,
    pub kernel_hooks: Option<KernelHooks>,
    pub bpf_stats: Option<BpfStats>,
    pub sysfs_root: Option<PathBuf>,
    pub dev_root: Option<PathBuf>,
    pub proc_root: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
}

impl Overrides {
    fn apply(&self, c: &mut Config) {
        if let Some(v) = &self.listen {
            c.api.listen = v.clone();
        }
        if let Some(v) = &self.socket {
            c.api.socket = v.clone();
        }
        if let Some(v) = &self.reports_dir {
            // On the command line a relative path means the caller's working directory.
            c.reports.dir = std::path::absolute(v).unwrap_or_else(|_| v.clone());
        }
        if let Some(v) = self.keep_reports {
            c.reports.keep = v;
        }
        if let Some(v) = self.gpu_sample_hz {
            c.gpu.sample_hz = v;
        }
        if let Some(v) = self.kernel_hooks {
            c.probes.kernel_hooks = v;
        }
        if let Some(v) = self.bpf_stats {
            c.probes.bpf_stats = v;
        }
        if let Some(v) = &self.sysfs_root {
            c.gpu.sysfs_root = v.clone();
        }
        if let Some(v) = &self.dev_root {
            c.gpu.dev_root = v.clone();
        }
        if let Some(v) = &self.proc_root {
            c.gpu.proc_root = v.clone();
        }
        if let Some(v) = &self.bpffs {
            c.api.bpffs = v.clone();
        }
    }
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config_path: PathBuf,
    /// The path was given on the command line (a missing file is then an error).
    pub config_explicit: bool,
    pub overrides: Overrides,
    pub mount_tracefs: bool,
    /// Ask NVML about NVIDIA GPUs (None: only when reading the real /sys).
    pub nvml: Option<bool>,
}

impl DaemonOptions {
    /// The configuration file with the command line's overrides, checked.
    pub fn load_config(&self) -> Result<Config> {
        let mut config = Config::load(&self.config_path, self.config_explicit)?;
        self.overrides.apply(&mut config);
        config.validate().map_err(|message| {
            anyhow::anyhow!(
                "{message} (from {} and the command line)",
                self.config_path.display()
            )
        })?;
        Ok(config)
    }

    pub(super) fn gpu_roots(&self, config: &Config) -> Result<gpu::Roots> {
        for (dir, key) in [
            (&config.gpu.sysfs_root, "gpu.sysfs_root"),
            (&config.gpu.dev_root, "gpu.dev_root"),
            (&config.gpu.proc_root, "gpu.proc_root"),
        ] {
            if !dir.is_dir() {
                anyhow::bail!("{key} {}: no such directory", dir.display());
            }
        }
        Ok(gpu::Roots {
            sys: config.gpu.sysfs_root.clone(),
            dev: config.gpu.dev_root.clone(),
            proc: config.gpu.proc_root.clone(),
            nvml: self
                .nvml
                .unwrap_or(config.gpu.sysfs_root == std::path::Path::new("/sys")),
        })
    }
}
