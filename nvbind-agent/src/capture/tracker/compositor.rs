//! Compositor flips: a completed flip of a process shows the frames other processes committed
//! before it was asked for (`frames::screen`). Every flip of every process arrives here, the
//! config's exclusions notwithstanding: they choose sessions, not the evidence of a session.

use super::Tracker;
use crate::{
    frames::{CompositorFlip, DisplayRecord},
    identity::{printable, read_bounded},
};

/// The most compositors named in one capture (each flipping process is one; a host has one or
/// two, a nested compositor or a KMS test client makes another).
const MAX_COMPOSITORS_NAMED: usize = 64;

impl Tracker {
    /// Joins the frames of every process that does not flip itself to `pid`'s completed flip.
    pub(super) fn join_compositor_flip(&mut self, pid: u32, flip: &DisplayRecord) {
        if flip.request_ns == 0 {
            // Nobody was seen asking for it (the request came before the probes were attached).
            return;
        }
        let flip = CompositorFlip {
            pid,
            crtc: flip.crtc,
            // A compositor sleeps until its repaint is due and takes what its clients committed
            // before then; what arrives while it composes waits for its next flip. The wakeup
            // before the request is that moment where it slept (not known at its first flip).
            latch_ns: if flip.woke_ns != 0 && flip.woke_ns <= flip.request_ns {
                flip.woke_ns
            } else {
                flip.request_ns
            },
            // The vblank's time is what the compositor tells its clients; the delivery follows it
            // within microseconds on hardware, later in a virtual machine.
            shown_ns: if flip.vblank_ns != 0 {
                flip.vblank_ns
            } else {
                flip.ts_ns
            },
        };
        let mut joined = false;
        for p in self.capture.processes.values_mut() {
            if !p.flips_itself() && p.join_flip(&flip) > 0 {
                joined = true;
            }
        }
        if joined
            && !self.capture.compositors.contains_key(&pid)
            && self.capture.compositors.len() < MAX_COMPOSITORS_NAMED
        {
            let name = read_bounded(&format!("/proc/{pid}/comm"), 64)
                .map(|b| printable(String::from_utf8_lossy(&b).trim_end()))
                .unwrap_or_default();
            self.capture.compositors.insert(pid, name);
        }
    }
}
