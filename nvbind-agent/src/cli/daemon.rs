//! No command: the daemon, with its flags over the configuration file.

use std::path::PathBuf;

use anyhow::Result;

use super::args::DaemonArgs;
use crate::daemon::{DaemonOptions, Overrides, DEFAULT_PATH};

pub(super) fn run(args: DaemonArgs) -> Result<u8> {
    crate::daemon::run(options(args))
}

/// The daemon's options: the configuration file (the default one unless `--config` names one)
/// and the flags that override it.
fn options(args: DaemonArgs) -> DaemonOptions {
    let explicit = args.config.is_some();
    DaemonOptions {
        config_path: args.config.unwrap_or_else(|| DEFAULT_PATH.into()),
        config_explicit: explicit,
        overrides: Overrides {
            listen: args.listen,
            socket: args.socket.map(PathBuf::from),
            reports_dir: args.reports_dir,
            keep_reports: args.keep_reports,
            gpu_sample_hz: args.gpu_sample_hz,
            kernel_hooks: args.kernel_hooks,
            bpf_stats: args.bpf_stats,
            sysfs_root: args.sysfs_root,
            dev_root: args.dev_root,
            proc_root: args.proc_root,
            bpffs: args.bpffs,
        },
        mount_tracefs: args.mount_tracefs,
        nvml: None,
    }
}
