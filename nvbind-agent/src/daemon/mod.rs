//! `nvbind-agent` with no subcommand: the daemon. Every process that presents a frame is tracked
//! from that frame (unless the config excludes it); its live numbers are served on the local API
//! and `/metrics`; when it exits its session report is written to the reports directory.
//! SIGHUP reloads the configuration; SIGTERM and SIGINT write every open session and exit.

pub mod api;
pub mod config;
mod housekeeping;
mod listeners;
pub mod live;
pub mod metrics;
mod options;
mod processes;
mod reload;
mod serve;
pub mod sessions;
mod tracking;

pub use options::{DaemonOptions, Overrides};
pub use serve::run;
