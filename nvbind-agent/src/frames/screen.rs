//! What became of each presented frame on the screen when a compositor, not the game, flips:
//! the join of a game's presents to the compositor's completed flips (docs/probes.md, "Frames
//! through a compositor").
//!
//! A compositor (Weston, a wlroots or KDE/GNOME compositor, gamescope) wakes when its repaint is
//! due, takes the newest buffer each client has committed, composes, and asks DRM for a flip
//! (`MODE_ATOMIC`/`MODE_PAGE_FLIP`); the flip completes at a vblank. So a frame is in the first
//! flip whose repaint began after the frame's commit reached the compositor, and of several frames
//! committed before one such repaint only the last is shown: the others were replaced before any
//! flip (PresentMon's "dropped"). The commit of a Wayland client's frame is its present call's
//! last `wl_display_flush`; the repaint's beginning, the compositor thread's last wakeup before
//! it asked for the flip.

use std::collections::HashSet;

use super::{Frame, ProcessRecord};

/// What became of a frame on the screen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Screen {
    /// Not known (yet): no flip since its present, or no compositor flips at all.
    #[default]
    Undecided,
    /// On screen from the flip that completed at `at_ns` (the vblank's time) on `crtc`.
    Shown { at_ns: u64, crtc: u32 },
    /// Replaced by a later frame of the same window before any flip showed it.
    Replaced,
}

/// A completed flip of a process that showed other processes' frames (a compositor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompositorFlip {
    pub pid: u32,
    pub crtc: u32,
    /// Frames committed before this are in the flip: when the compositor's thread woke to
    /// repaint (or, not knowing that, asked for the flip).
    pub latch_ns: u64,
    /// When it reached the screen: the vblank's time (what the compositor tells its clients).
    pub shown_ns: u64,
}

impl Frame {
    /// When the frame's commit reached the compositor: the present call's last
    /// `wl_display_flush`, else (no libwayland seen) its return where it was held to it, else
    /// its entry.
    pub fn committed_ns(&self) -> u64 {
        [self.commit_ns, self.end_ns, self.ts_ns]
            .into_iter()
            .find(|&t| t != 0)
            .unwrap_or(0)
    }
}

impl ProcessRecord {
    /// Decides the frames committed before `flip`'s latch: per window (present source and
    /// target), the last is shown by it and the ones before it were replaced. Returns how many
    /// were decided. A process that flips itself (direct scanout) is left to its own flips.
    pub fn join_flip(&mut self, flip: &CompositorFlip) -> usize {
        if flip.pid == self.pid || flip.latch_ns == 0 {
            return 0;
        }
        let from = self.screen_from.min(self.frames.len());
        let undecided = &mut self.frames[from..];
        let joined = undecided
            .iter()
            .position(|f| f.committed_ns() >= flip.latch_ns)
            .unwrap_or(undecided.len());
        if joined == 0 {
            return 0;
        }
        // From the newest back: the first frame met of each window is the one shown. (A batch
        // can be long: a game presenting while the compositor did not flip for minutes, or to
        // a new target every frame.)
        let mut windows_met: HashSet<(u32, u64)> = HashSet::new();
        for f in undecided[..joined].iter_mut().rev() {
            f.screen = if !windows_met.insert((f.source, f.target)) {
                Screen::Replaced
            } else {
                Screen::Shown {
                    at_ns: flip.shown_ns,
                    crtc: flip.crtc,
                }
            };
        }
        self.screen_from = from + joined;
        if !self.shown_by.contains(&flip.pid) {
            self.shown_by.push(flip.pid);
        }
        joined
    }

    /// Whether it completed flips of its own (a KMS client, a game in direct scanout): its
    /// display side is those flips, not a compositor's.
    pub fn flips_itself(&self) -> bool {
        self.display
            .iter()
            .any(|d| d.kind == nvbind_common::display_kind::FLIP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(entry_ms: u64, end_ms: u64, target: u64) -> Frame {
        Frame {
            ts_ns: entry_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            target,
            ..Default::default()
        }
    }

    fn flip(request_ms: u64, shown_ms: u64) -> CompositorFlip {
        CompositorFlip {
            pid: 99,
            crtc: 0,
            latch_ns: request_ms * 1_000_000,
            shown_ns: shown_ms * 1_000_000,
        }
    }

    fn shown(ms: u64) -> Screen {
        Screen::Shown {
            at_ns: ms * 1_000_000,
            crtc: 0,
        }
    }

    #[test]
    fn the_last_frame_committed_before_the_request_is_shown_the_others_replaced() {
        let mut p = ProcessRecord {
            pid: 7,
            frames: vec![frame(1, 2, 1), frame(3, 4, 1), frame(5, 9, 1)],
            ..Default::default()
        };
        // Frames 0 and 1 returned before the request at 6 ms; frame 2 returned after it.
        assert_eq!(p.join_flip(&flip(6, 16)), 2);
        let screens: Vec<Screen> = p.frames.iter().map(|f| f.screen).collect();
        assert_eq!(screens, [Screen::Replaced, shown(16), Screen::Undecided]);
        // A flip with nothing new (the cursor moved) decides nothing.
        assert_eq!(p.join_flip(&flip(8, 33)), 0);
        assert_eq!(p.join_flip(&flip(23, 33)), 1);
        assert_eq!(p.frames[2].screen, shown(33));
        assert_eq!(p.shown_by, vec![99]);
    }

    #[test]
    fn each_window_keeps_its_own_last_frame_and_own_flips_are_not_a_compositors() {
        let mut p = ProcessRecord {
            pid: 7,
            frames: vec![frame(1, 2, 1), frame(2, 3, 2), frame(3, 4, 1)],
            ..Default::default()
        };
        assert_eq!(p.join_flip(&flip(6, 16)), 3);
        let screens: Vec<Screen> = p.frames.iter().map(|f| f.screen).collect();
        assert_eq!(screens, [Screen::Replaced, shown(16), shown(16)]);

        let mut own = ProcessRecord {
            pid: 99,
            frames: vec![frame(1, 2, 1)],
            ..Default::default()
        };
        assert_eq!(own.join_flip(&flip(6, 16)), 0, "its own flip");
    }

    #[test]
    fn without_a_return_time_the_entry_is_the_commit() {
        let mut p = ProcessRecord {
            pid: 7,
            frames: vec![frame(5, 0, 1)],
            ..Default::default()
        };
        assert_eq!(p.join_flip(&flip(4, 16)), 0);
        assert_eq!(p.join_flip(&flip(6, 16)), 1);
    }
}
