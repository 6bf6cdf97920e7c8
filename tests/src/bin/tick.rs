//! A short-lived child for the contention tests' shell loops: optionally spins for a while (the
//! work a build's compiler or a loop's command does), then prints CLOCK_MONOTONIC in nanoseconds,
//! so a shell can both do work in children and stamp its bursts on the game's clock.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Parser;
use nvbind_tests::monotonic_ns;

#[derive(Debug, Parser)]
struct Args {
    /// Spin on the CPU this many milliseconds before printing the time.
    #[arg(long, default_value_t = 0.0)]
    spin_ms: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(0.0..=10_000.0).contains(&args.spin_ms) {
        bail!("--spin-ms must be between 0 and 10000");
    }
    let end = monotonic_ns() + (args.spin_ms * 1e6) as u64;
    let mut x = 0u64;
    while monotonic_ns() < end {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    writeln!(std::io::stdout(), "{}", monotonic_ns()).context("cannot write the time")?;
    Ok(())
}
