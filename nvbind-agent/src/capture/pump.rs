//! The event pump `record` and the daemon share: wakes them to drain the ring buffer on a timer
//! (producers never wake the agent for frames), when a record that asks for a wakeup arrives
//! (a new process, a resolved Vulkan present function), or to stop on SIGINT/SIGTERM.

use std::{os::fd::OwnedFd, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, Signal, SignalKind},
    time::{Interval, MissedTickBehavior},
};

use crate::probes::Probes;

/// How often the ring buffer is drained. Producers never wake the agent (BPF_RB_NO_WAKEUP): at
/// several hundred frames per second a wakeup per frame would cost more than the frames.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// The signals that end a capture or the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Interrupt,
    Terminate,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }
}

/// SIGINT and SIGTERM, caught from the moment this exists (so a Ctrl-C while the probes load is
/// a clean stop, not a kill).
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    pub fn install() -> Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }
}

/// Why the pump woke its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Time to read the kernel's records.
    Drain,
    Stop(StopSignal),
}

pub struct EventPump {
    ticker: Interval,
    /// A duplicate of the ring buffer's descriptor (same file description), owned by the poller:
    /// readable when a record that asks for a wakeup is waiting.
    wakeups: AsyncFd<OwnedFd>,
    signals: StopSignals,
}

impl EventPump {
    pub fn new(probes: &Probes, signals: StopSignals) -> Result<EventPump> {
        // SAFETY: the borrowed descriptor is open for as long as `probes` lives, and the
        // duplicate made here is owned by the pump.
        let events_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(probes.events_fd()) }
            .try_clone_to_owned()
            .context("cannot duplicate the eBPF ring buffer descriptor")?;
        // SAFETY: `events_fd` is owned by the AsyncFd, open and unchanged for its whole life.
        let wakeups = unsafe { AsyncFd::register_with_interest(events_fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("cannot poll the eBPF ring buffer")?;
        let mut ticker = tokio::time::interval(DRAIN_INTERVAL);
        // A late tick (the agent runs niced, behind the games) is not made up for with a burst.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(EventPump {
            ticker,
            wakeups,
            signals,
        })
    }

    /// Waits for the next reason to drain, or a stop signal. Cancel-safe: it can be one branch
    /// of the owner's own `select!`.
    pub async fn next(&mut self) -> Wake {
        tokio::select! {
            _ = self.ticker.tick() => Wake::Drain,
            ready = self.wakeups.readable() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
                Wake::Drain
            }
            _ = self.signals.interrupt.recv() => Wake::Stop(StopSignal::Interrupt),
            _ = self.signals.terminate.recv() => Wake::Stop(StopSignal::Terminate),
        }
    }

    /// Lets records in flight land before the last drain.
    pub async fn settle() {
        tokio::time::sleep(DRAIN_INTERVAL).await;
    }
}
