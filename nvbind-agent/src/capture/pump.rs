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
/// How often it is drained while nothing is tracked (see [`EventPump::set_idle`]): then every
/// record that matters (a new presenter, an exec) wakes the agent itself, and the timer only
/// paces housekeeping. A daemon that waits for weeks for a game must cost next to nothing.
pub const IDLE_DRAIN_INTERVAL: Duration = Duration::from_secs(1);

/// The signals that end a capture or the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Interrupt,
    Terminate,
    /// The program that runs the capture in-process asked (`top --standalone` quitting).
    Requested,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Requested => "stop requested",
        }
    }
}

/// SIGINT and SIGTERM, caught from the moment this exists (so a Ctrl-C while the probes load is
/// a clean stop, not a kill).
pub struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    /// Turns true when the program running the capture in-process wants it stopped.
    requested: Option<tokio::sync::watch::Receiver<bool>>,
}

impl StopSignals {
    pub fn install() -> Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            requested: None,
        })
    }

    /// Also stops when `requested` turns true.
    pub fn or_when(mut self, requested: tokio::sync::watch::Receiver<bool>) -> StopSignals {
        self.requested = Some(requested);
        self
    }
}

/// Waits until `requested` turns true (forever when there is none, or its sender is gone).
async fn stop_requested(requested: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(rx) = requested {
        if rx.wait_for(|&stop| stop).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Why the pump woke its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Time to read the kernel's records.
    Drain,
    Stop(StopSignal),
}

pub struct EventPump {
    /// At DRAIN_INTERVAL, or IDLE_DRAIN_INTERVAL while idle.
    ticker: Interval,
    /// A duplicate of the ring buffer's descriptor (same file description), owned by the poller:
    /// readable when a record that asks for a wakeup is waiting.
    wakeups: AsyncFd<OwnedFd>,
    /// The same for the exec notices' ring buffer (the daemon's).
    exec_wakeups: AsyncFd<OwnedFd>,
    signals: StopSignals,
}

impl EventPump {
    pub fn new(probes: &Probes, signals: StopSignals) -> Result<EventPump> {
        Ok(EventPump {
            ticker: ticker(DRAIN_INTERVAL),
            wakeups: poll_ring(probes.events_fd(), "events")?,
            exec_wakeups: poll_ring(probes.exec_notices_fd(), "exec notices")?,
            signals,
        })
    }

    /// Drains every IDLE_DRAIN_INTERVAL while `idle` (nothing is tracked), every DRAIN_INTERVAL
    /// otherwise. The owner says so after each drain; a new tracked process wakes the pump by
    /// its own record, so the faster pace starts with its first frames.
    pub fn set_idle(&mut self, idle: bool) {
        let period = if idle {
            IDLE_DRAIN_INTERVAL
        } else {
            DRAIN_INTERVAL
        };
        if self.ticker.period() != period {
            self.ticker = ticker(period);
        }
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
            ready = self.exec_wakeups.readable() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
                Wake::Drain
            }
            _ = self.signals.interrupt.recv() => Wake::Stop(StopSignal::Interrupt),
            _ = self.signals.terminate.recv() => Wake::Stop(StopSignal::Terminate),
            _ = stop_requested(&mut self.signals.requested) => Wake::Stop(StopSignal::Requested),
        }
    }

    /// Lets records in flight land before the last drain.
    pub async fn settle() {
        tokio::time::sleep(DRAIN_INTERVAL).await;
    }
}

/// A ticker whose first tick is one `period` from now.
fn ticker(period: Duration) -> Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // A late tick (the agent runs niced, behind the games) is not made up for with a burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// Polls a ring buffer for records that ask for a wakeup, through a duplicate of its descriptor
/// (the same file description) owned by the poller.
fn poll_ring(fd: std::os::fd::RawFd, what: &str) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: the borrowed descriptor is open for as long as the probes live (longer than the
    // pump), and the duplicate made here is owned by the AsyncFd.
    let owned = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .with_context(|| format!("cannot duplicate the eBPF {what} ring buffer descriptor"))?;
    // SAFETY: `owned` is owned by the AsyncFd, open and unchanged for its whole life.
    unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .with_context(|| format!("cannot poll the eBPF {what} ring buffer"))
}
