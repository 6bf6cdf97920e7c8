//! Helpers for nvbind's root integration tests: locate the binaries xtask built, run the agent,
//! start real workloads under a private Xvfb, read reports.
//!
//! These tests load real eBPF programs into the running kernel. They need root: without it they
//! fail loudly (never skip silently), naming the command that runs them properly.
//!
//! Split by job; everything is re-exported here, so tests name it `nvbind_tests::NAME` whichever
//! module holds it.

mod agent;
mod bins;
pub mod daemon;
mod game;
mod host;
mod i386;
pub mod podman;
mod report;
mod timing;
pub mod vm_console;
pub mod vulkan_frame;
mod wine;
mod workloads;

pub use agent::{
    agent, agent_command, agent_with_env, assert_one_line_error, spawn_agent, stderr,
    wait_with_deadline, WatchedAgent,
};
pub use bins::{
    agent_bin, game_bin, hog_bin, probe_bin, prometheus_bin, promtool_bin, require_root, tick_bin,
    xtask_bin,
};
pub use game::{
    assert_frames_accounted, presents_so_far, progress_path, read_rusage, read_truth, record_game,
    rusage_path, GameRun, GameRusage, PresentWindow, Rusage,
};
pub use host::{
    attach_device_program_like_runc, mount_point, Bpffs, FixtureHost, TestCgroup, Tree,
};
pub use i386::I386;
pub use report::{
    busiest, read_csv, read_json, skipped_runs, skipped_sched_runs, stutter_unreported,
    switch_count_slack,
};
pub use timing::{
    assert_fps_allowed, assert_quantile_allowed, assert_within_windows, frame_bounds_ms,
    frame_bounds_ns, interval_bounds_ms, pace_ms, percentile,
};
pub use wine::{game_threads, second_window_truth, Wine, WINE64};
pub use workloads::{
    gettid, monotonic_ns, pids_named, pin_to_cpu, wait_for_presents, wait_for_process,
    wait_until_presenting, with_ground_truth, Resident, Xvfb, X_WRITES_WHILE_PRESENTING,
};
