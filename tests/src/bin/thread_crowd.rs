//! A process with many threads for the scaling benchmark: `--threads N` threads that each sleep and
//! wake, spread so the whole process makes about `--wakeups-per-sec` wakeups a second whatever N is
//! (each thread sleeps N / rate seconds). The scheduler probes' cost per event can then be
//! compared across thread counts at the same event rate.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Threads to start (besides the main one).
    #[arg(long)]
    threads: usize,
    /// Wakeups per second of the whole process.
    #[arg(long, default_value_t = 20_000.0)]
    wakeups_per_sec: f64,
    /// How long the threads run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Start the threads this many times, one crowd after the other (each running `seconds` /
    /// `waves`): a process that churns through threads, as a game's job system can.
    #[arg(long, default_value_t = 1)]
    waves: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.threads == 0 || args.wakeups_per_sec <= 0.0 || args.seconds <= 0.0 || args.waves == 0 {
        bail!("--threads, --wakeups-per-sec, --seconds and --waves must be positive");
    }
    let period = Duration::from_secs_f64(args.threads as f64 / args.wakeups_per_sec);
    let first_start = Instant::now();
    let mut wakeups = 0;
    let mut started = Duration::ZERO;
    for _ in 0..args.waves {
        let (woke, took) = crowd(&args, period)?;
        wakeups += woke;
        started += took;
    }
    let ran = first_start.elapsed().as_secs_f64();
    // The kernel's own context-switch counts for the whole process, exited threads included:
    // what a tracer's counts are checked against.
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    println!(
        "threads {} started_in_s {:.3} sleeps {wakeups} sleeps_per_sec {:.0} voluntary_switches {} involuntary_switches {}",
        args.threads * args.waves,
        started.as_secs_f64(),
        wakeups as f64 / ran,
        usage.ru_nvcsw,
        usage.ru_nivcsw
    );
    Ok(())
}

/// One crowd: starts the threads, lets them run `seconds / waves`, and joins them. Returns their
/// sleeps and how long starting them took.
fn crowd(args: &Args, period: Duration) -> Result<(u64, Duration)> {
    let run_for = Duration::from_secs_f64(args.seconds / args.waves as f64);
    let start = Instant::now();
    // Every thread runs its `run_for` once all have started: the crowd is whole for that long,
    // however slowly a loaded machine starts threads.
    let all_started = std::sync::Arc::new(std::sync::Barrier::new(args.threads + 1));
    let mut handles = Vec::with_capacity(args.threads);
    for i in 0..args.threads {
        // Staggered first wakeups, so the threads do not wake in one herd.
        let offset = period.mul_f64(i as f64 / args.threads as f64);
        let all_started = std::sync::Arc::clone(&all_started);
        let handle = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                all_started.wait();
                let began = Instant::now();
                std::thread::sleep(offset);
                let mut wakeups = 0u64;
                while began.elapsed() < run_for {
                    std::thread::sleep(period);
                    wakeups += 1;
                }
                wakeups
            })
            .with_context(|| format!("cannot start thread {i}"))?;
        handles.push(handle);
    }
    let started = start.elapsed();
    all_started.wait();
    let mut wakeups = 0;
    for h in handles {
        wakeups += h.join().map_err(|_| anyhow::anyhow!("a thread panicked"))?;
    }
    Ok((wakeups, started))
}
