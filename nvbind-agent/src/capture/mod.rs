//! The recording side of nvbind: the [`Tracker`] that keeps tracked processes, their frames and
//! the evidence around their stutters up to date from the kernel's records; [`record`], a bounded
//! capture built on it; the [`EventPump`](pump::EventPump) that wakes `record` and the daemon to
//! drain; and what the agent says about the host and itself. The result of a recording is a
//! [`Capture`](crate::frames::Capture), which `report::build` turns into a report.

mod host;
mod progress;
pub mod pump;
mod record;
mod snapshots;
mod tracker;

pub use host::{cpu_time_and_peak_rss, hostname, yield_to_games, AGENT_NICE};
pub use record::{record, Outcome, RecordOptions};
pub use tracker::Tracker;
