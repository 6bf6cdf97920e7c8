//! A competitor for the CPU-contention tests: bursts of busy work at real-time priority, pinned
//! to one CPU, so a game thread pinned there cannot run during a burst.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use nvbind_tests::{monotonic_ns, pin_to_cpu};

#[derive(Debug, Parser)]
struct Args {
    /// The CPU to take.
    #[arg(long)]
    cpu: usize,
    /// Busy time per burst, in milliseconds.
    #[arg(long, default_value_t = 80.0)]
    burst_ms: f64,
    /// Time from one burst's start to the next's, in milliseconds.
    #[arg(long, default_value_t = 500.0)]
    period_ms: f64,
    /// Number of bursts.
    #[arg(long, default_value_t = 10)]
    bursts: u32,
    /// SCHED_FIFO priority (1-99); 0 runs as a normal task.
    #[arg(long, default_value_t = 50)]
    rt_priority: i32,
    /// Wait this long before the first burst, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Write each burst's start and end (CLOCK_MONOTONIC ns, "start end" per line) here.
    #[arg(long)]
    log: Option<std::path::PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.burst_ms <= 0.0 || args.period_ms < args.burst_ms {
        bail!("--burst-ms must be positive and at most --period-ms");
    }
    pin_to_cpu(args.cpu)?;
    // SAFETY: a plain syscall on the calling thread with a valid parameter.
    unsafe {
        if args.rt_priority > 0 {
            let param = libc::sched_param {
                sched_priority: args.rt_priority,
            };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
                bail!(
                    "cannot switch to SCHED_FIFO {}: {} (needs root and RT budget in this cgroup)",
                    args.rt_priority,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    std::thread::sleep(Duration::from_secs_f64(args.delay_ms / 1000.0));
    let period = Duration::from_secs_f64(args.period_ms / 1000.0);
    let burst = Duration::from_secs_f64(args.burst_ms / 1000.0);
    let start = Instant::now();
    let mut x = 0u64;
    let mut log = Vec::new();
    for i in 0..args.bursts {
        let begin = start + period * i;
        if let Some(wait) = begin.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let started = monotonic_ns();
        while begin.elapsed() < burst {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        log.push(format!("{started} {}\n", monotonic_ns()));
        eprintln!("cpu-hog: burst {i} done");
    }
    if let Some(path) = &args.log {
        std::fs::write(path, log.concat())?;
    }
    Ok(())
}
