//! `top`: where its numbers come from (a daemon's API, or a capture of its own).

use std::{path::Path, time::Duration};

use anyhow::Result;

use super::args::TopArgs;
use crate::{
    daemon::{Config, DaemonOptions, Overrides, DEFAULT_PATH},
    top::{Endpoint, TopOptions},
};

/// Where the daemon listens when neither --api nor a readable config says.
const DEFAULT_API: &str = "127.0.0.1:9090";

pub(super) fn run(args: TopArgs) -> Result<u8> {
    let config_path = args.config.clone().unwrap_or_else(|| DEFAULT_PATH.into());
    let endpoint = match &args.api {
        Some(api) => Endpoint::Tcp(api.clone()),
        None => Endpoint::Tcp(configured_api(&config_path, args.config.is_some())?),
    };
    let standalone = args.standalone.then(|| DaemonOptions {
        config_path,
        config_explicit: args.config.is_some(),
        overrides: Overrides {
            reports_dir: args.reports_dir.clone(),
            ..Overrides::default()
        },
        mount_tracefs: false,
        nvml: None,
    });
    crate::top::run(TopOptions {
        endpoint,
        standalone,
        interval: Duration::from_millis(args.interval_ms),
    })
}

/// The config's `api.listen`. A config named on the command line must be read and must have
/// the TCP API on; the default one is only a hint (a user may not be able to read it).
fn configured_api(path: &Path, explicit: bool) -> Result<String> {
    if !explicit {
        return Ok(Config::load(path, false)
            .ok()
            .map(|c| c.api.listen)
            .filter(|listen| !listen.is_empty())
            .unwrap_or_else(|| DEFAULT_API.into()));
    }
    let listen = Config::load(path, true)?.api.listen;
    if listen.is_empty() {
        anyhow::bail!(
            "{} turns the TCP API off (api.listen = \"\"): give the daemon's address with \
             --api, or run `sudo nvbind-agent top --standalone`",
            path.display()
        );
    }
    Ok(listen)
}
