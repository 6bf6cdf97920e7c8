//! `nvbind-agent` with no subcommand: the daemon. Every process that presents a frame is tracked
//! from that frame (unless the config excludes it); its live numbers are served on the local API
//! and `/metrics`; when it exits its session report is written to the reports directory.
//! SIGHUP reloads the configuration; SIGTERM and SIGINT write every open session and exit.
//!
//! [`run`] starts it from [`DaemonOptions`] (the [`Config`] file and the command line's
//! [`Overrides`]) and serves its main loop until a stop signal; the daemon's state and the
//! sessions it writes, the scans of new processes, the housekeeping and the reload are each in
//! their own file, as are the API, the live state it reads and `/metrics`.

mod api;
mod config;
mod guard;
mod history;
mod housekeeping;
mod listeners;
mod live;
mod metrics;
mod options;
mod origin;
mod page;
mod processes;
mod reload;
mod serve;
mod sessions;
mod shared;
mod subuids;
mod tracking;

pub use config::{Config, DEFAULT_PATH};
pub use options::{DaemonOptions, Overrides};
pub use serve::{run, run_embedded};
