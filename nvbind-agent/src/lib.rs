//! nvbind-agent: frame-pacing and GPU telemetry for Linux gaming hosts.
//!
//! - [`clock`]: CLOCK_MONOTONIC, the clock of every timestamp, and its wall-clock conversion.
//! - [`frames`]: the frame model every layer builds on (the capture's processes, frames and
//!   evidence; frame-time statistics; the live window of recent frames).
//! - [`probes`]: loads the eBPF programs, attaches what the kernel offers, reads their maps.
//! - [`identity`]: who a process is as a person names it (a Wine game by its `.exe`), its Wine
//!   build and Steam app id.
//! - [`target`]: which processes to record (pid, name, or a command launched under the agent).
//! - [`capture`]: the recording loop: frames from the ring buffer, per-thread kernel evidence.
//! - [`stutter`]: which frames are stutters (CapFrameX's rule) and why (a verdict with evidence).
//! - [`report`]: the `nvbind.report/v2` document, frame statistics, CSV export, the human summary
//!   and the SVG chart.
//! - [`gpu`]: GPU discovery, per-vendor counters (NVML, amdgpu and Intel sysfs) and the sampler.
//! - [`doctor`]: what is attached and what is not, with reasons and fixes.
//! - [`binding`]: cgroup-scoped GPU device binding and CDI specs.
//! - [`daemon`]: `nvbind-agent` with no subcommand: every game tracked from its first frame, the
//!   local API, `/metrics`, and a report per game session.

pub mod binding;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod daemon;
pub mod doctor;
pub mod frames;
pub mod gpu;
pub mod identity;
pub mod probes;
pub mod report;
pub mod stutter;
pub mod target;
pub mod top;
