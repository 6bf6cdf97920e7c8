//! The one clock of nvbind's timestamps (CLOCK_MONOTONIC, the clock of the kernel's
//! `bpf_ktime_get_ns`), and its conversion to wall-clock time for reports.

/// CLOCK_MONOTONIC now, in nanoseconds: comparable with the probes' timestamps.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time (seconds since the Unix epoch) of a CLOCK_MONOTONIC instant.
pub fn unix_time_at(monotonic: u64) -> f64 {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let age_s = monotonic_ns().saturating_sub(monotonic) as f64 / 1e9;
    now_unix - age_s
}
