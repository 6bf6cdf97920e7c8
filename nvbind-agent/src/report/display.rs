//! The display side of a process's frames (`frames.display`): when its frames reached the screen,
//! beside the present side (when it handed them over). PresentMon's "display change" times are
//! the same thing on Windows.
//!
//! Two ways there: a process that flips itself (a KMS client, a game in direct scanout) has its
//! own DRM flips, each a frame on screen; a process shown by a compositor has its frames joined to
//! the compositor's flips (`frames::screen`): each frame shown by one, or replaced before any.

use std::collections::BTreeMap;

use nvbind_common::{display_kind, CrtcVblanks};
use serde::{Deserialize, Serialize};

use crate::frames::stats::{self, FrameTimeStats};
use crate::frames::{DisplayRecord, Frame, Screen};

/// Where display-side frames come from: the process's own flips.
pub const DISPLAY_SOURCE: &str = "drm_vblank_event_delivered";
/// … or a compositor's flips, joined to the process's presents.
pub const COMPOSITOR_SOURCE: &str = "compositor_flips";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DisplayReport {
    /// `drm_vblank_event_delivered`: the process's own completed page flips and atomic commits;
    /// `compositor_flips`: its presents joined to the completed flips of the compositor that
    /// showed them.
    pub source: String,
    /// Frames that reached the screen (`displayed`, under the name the report first had).
    pub count: u64,
    /// Frames that reached the screen.
    #[serde(default)]
    pub displayed: u64,
    /// Presented frames replaced by a later one before any flip showed them (compositor only;
    /// `None` for a process's own flips, each of which is a frame on screen).
    #[serde(default)]
    pub dropped: Option<u64>,
    /// Presented frames no flip decided: the last ones of the capture, or all of them where the
    /// compositor stopped flipping (compositor only).
    #[serde(default)]
    pub undecided: u64,
    /// The processes whose flips showed its frames (compositor only).
    #[serde(default)]
    pub compositors: Vec<Compositor>,
    /// The CRTCs (display pipes) they were shown on.
    pub crtcs: Vec<u32>,
    /// Time between consecutive display changes (frames of its reaching the screen), ms (`None`
    /// with fewer than 2): PresentMon's `MsBetweenDisplayChange`.
    #[serde(default)]
    pub between_display_changes_ms: Option<FrameTimeStats>,
    /// The same (`between_display_changes_ms`, under the name the report first had).
    pub interval_ms: Option<FrameTimeStats>,
    /// The refresh rate of the first of those CRTCs over the capture, from back-to-back vblanks
    /// the kernel reported (`drm_vblank_event`, sequence numbers one apart).
    pub refresh_hz: Option<f64>,
    /// Vblank events the process asked for: queued (`DRM_IOCTL_WAIT_VBLANK`) and delivered
    /// (those and `DRM_IOCTL_CRTC_QUEUE_SEQUENCE`'s).
    pub vblank_events_queued: u64,
    pub vblank_events_delivered: u64,
    /// For each displayed frame, from the entry of its present call to the completion of the flip
    /// that showed it, ms (PresentMon's `MsUntilDisplayed`); `None` where the process presents
    /// nothing nvbind probes (a bare KMS client flips without a Vulkan, GLX or EGL present).
    pub present_to_display_ms: Option<FrameTimeStats>,
}

/// A process whose flips showed another's frames.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Compositor {
    pub pid: u32,
    pub name: String,
}

/// The display report of a process, `None` when it had no DRM display events of its own and no
/// compositor flip showed any of its frames. `frames` are those of the report's present source.
pub fn report(
    display: &[DisplayRecord],
    frames: &[Frame],
    crtcs: &[(u32, CrtcVblanks)],
    compositors: &BTreeMap<u32, String>,
    shown_by: &[u32],
) -> Option<DisplayReport> {
    let own_flips = display.iter().any(|d| d.kind == display_kind::FLIP);
    let composited = !own_flips && frames.iter().any(|f| f.screen != Screen::Undecided);
    if display.is_empty() && !composited {
        return None;
    }
    let count_of = |kind| display.iter().filter(|d| d.kind == kind).count() as u64;
    let mut r = if composited {
        through_compositor(frames, compositors, shown_by)
    } else {
        own(display, frames)
    };
    r.refresh_hz = r
        .crtcs
        .iter()
        .filter_map(|c| crtcs.iter().find(|(i, _)| i == c).map(|(_, v)| v))
        .find_map(CrtcVblanks::refresh_hz);
    r.vblank_events_queued = count_of(display_kind::VBLANK_QUEUED);
    r.vblank_events_delivered = count_of(display_kind::VBLANK_DELIVERED);
    r.count = r.displayed;
    r.interval_ms.clone_from(&r.between_display_changes_ms);
    Some(r)
}

/// The process's own flips: each a frame on screen.
fn own(display: &[DisplayRecord], frames: &[Frame]) -> DisplayReport {
    let flips: Vec<&DisplayRecord> = display
        .iter()
        .filter(|d| d.kind == display_kind::FLIP)
        .collect();
    let mut shown_on: Vec<u32> = flips.iter().map(|d| d.crtc).collect();
    shown_on.sort_unstable();
    shown_on.dedup();
    // Display changes follow each other on one screen: a process flipping on two CRTCs has two
    // cadences, not one interleaved.
    let intervals: Vec<u64> = shown_on
        .iter()
        .flat_map(|&crtc| {
            let on_crtc: Vec<u64> = flips
                .iter()
                .filter(|d| d.crtc == crtc)
                .map(|d| d.ts_ns)
                .collect();
            on_crtc
                .windows(2)
                .map(|w| w[1].saturating_sub(w[0]))
                .collect::<Vec<_>>()
        })
        .collect();
    // The frame a flip shows: the last present at or before the flip was asked for.
    let latencies: Vec<u64> = flips
        .iter()
        .filter(|d| d.request_ns != 0)
        .filter_map(|d| {
            let i = frames.partition_point(|f| f.ts_ns <= d.request_ns);
            let present = frames.get(i.checked_sub(1)?)?;
            Some(d.ts_ns.saturating_sub(present.ts_ns))
        })
        .collect();
    DisplayReport {
        source: DISPLAY_SOURCE.into(),
        displayed: flips.len() as u64,
        count: 0,
        interval_ms: None,
        dropped: None,
        undecided: 0,
        compositors: Vec::new(),
        crtcs: shown_on,
        between_display_changes_ms: stats::summarize(&intervals).map(|s| s.frame_time_ms),
        refresh_hz: None,
        vblank_events_queued: 0,
        vblank_events_delivered: 0,
        present_to_display_ms: stats::summarize(&latencies).map(|s| s.frame_time_ms),
    }
}

/// Frames a compositor showed: the join's verdict on each.
fn through_compositor(
    frames: &[Frame],
    compositors: &BTreeMap<u32, String>,
    shown_by: &[u32],
) -> DisplayReport {
    let mut shown: Vec<(u64, u64, u32)> = Vec::new();
    let (mut dropped, mut undecided) = (0, 0);
    for f in frames {
        match f.screen {
            Screen::Shown { at_ns, crtc } => shown.push((f.ts_ns, at_ns, crtc)),
            Screen::Replaced => dropped += 1,
            Screen::Undecided => undecided += 1,
        }
    }
    let mut crtcs: Vec<u32> = shown.iter().map(|s| s.2).collect();
    crtcs.sort_unstable();
    crtcs.dedup();
    let latencies: Vec<u64> = shown
        .iter()
        .map(|(present, at, _)| at.saturating_sub(*present))
        .collect();
    let intervals: Vec<u64> = shown
        .windows(2)
        .map(|w| w[1].1.saturating_sub(w[0].1))
        .collect();
    DisplayReport {
        source: COMPOSITOR_SOURCE.into(),
        displayed: shown.len() as u64,
        count: 0,
        interval_ms: None,
        dropped: Some(dropped),
        undecided,
        compositors: shown_by
            .iter()
            .map(|&pid| Compositor {
                pid,
                name: compositors.get(&pid).cloned().unwrap_or_default(),
            })
            .collect(),
        crtcs,
        between_display_changes_ms: stats::summarize(&intervals).map(|s| s.frame_time_ms),
        refresh_hz: None,
        vblank_events_queued: 0,
        vblank_events_delivered: 0,
        present_to_display_ms: stats::summarize(&latencies).map(|s| s.frame_time_ms),
    }
}

/// The display side in one line, for `record` and `report`.
pub fn one_line(d: &DisplayReport) -> String {
    // A report written before `displayed` and `between_display_changes_ms` has `count` and
    // `interval_ms` only.
    let displayed = d.displayed.max(d.count);
    let between = d
        .between_display_changes_ms
        .as_ref()
        .or(d.interval_ms.as_ref());
    let mut parts = vec![match (&d.dropped, displayed) {
        (None, 0) => "no DRM flips of its own".to_string(),
        (None, n) => format!("{n} frames on screen (DRM flips)"),
        (Some(dropped), n) => {
            let by: Vec<&str> = d.compositors.iter().map(|c| c.name.as_str()).collect();
            format!(
                "{n} frames on screen through {} ({dropped} replaced before a flip)",
                if by.is_empty() {
                    "a compositor".to_string()
                } else {
                    by.join(", ")
                }
            )
        }
    }];
    if let Some(i) = between {
        parts.push(format!(
            "display interval p50 {:.2} ms p99 {:.2} ms",
            i.p50, i.p99
        ));
    }
    if let Some(hz) = d.refresh_hz {
        parts.push(format!("refresh {hz:.2} Hz"));
    }
    if let Some(l) = &d.present_to_display_ms {
        parts.push(format!("present to display p50 {:.2} ms", l.p50));
    }
    if d.vblank_events_queued + d.vblank_events_delivered > 0 {
        parts.push(format!(
            "vblank events {} queued / {} delivered",
            d.vblank_events_queued, d.vblank_events_delivered
        ));
    }
    parts.join(", ")
}

/// The name of a DRM ioctl number (`_IOC_NR` of a `'d'` ioctl) from `include/uapi/drm/drm.h`;
/// driver-private numbers (0x40–0x9f) are `driver-0xNN`.
pub fn drm_request_name(nr: u32) -> String {
    let name = match nr {
        0x00 => "VERSION",
        0x01 => "GET_UNIQUE",
        0x02 => "GET_MAGIC",
        0x03 => "IRQ_BUSID",
        0x04 => "GET_MAP",
        0x05 => "GET_CLIENT",
        0x06 => "GET_STATS",
        0x07 => "SET_VERSION",
        0x08 => "MODESET_CTL",
        0x09 => "GEM_CLOSE",
        0x0a => "GEM_FLINK",
        0x0b => "GEM_OPEN",
        0x0c => "GET_CAP",
        0x0d => "SET_CLIENT_CAP",
        0x1e => "SET_MASTER",
        0x1f => "DROP_MASTER",
        0x2d => "PRIME_HANDLE_TO_FD",
        0x2e => "PRIME_FD_TO_HANDLE",
        0x3a => "WAIT_VBLANK",
        0x3b => "CRTC_GET_SEQUENCE",
        0x3c => "CRTC_QUEUE_SEQUENCE",
        0xa0 => "MODE_GETRESOURCES",
        0xa1 => "MODE_GETCRTC",
        0xa2 => "MODE_SETCRTC",
        0xa3 => "MODE_CURSOR",
        0xa4 => "MODE_GETGAMMA",
        0xa5 => "MODE_SETGAMMA",
        0xa6 => "MODE_GETENCODER",
        0xa7 => "MODE_GETCONNECTOR",
        0xa8 => "MODE_ATTACHMODE",
        0xa9 => "MODE_DETACHMODE",
        0xaa => "MODE_GETPROPERTY",
        0xab => "MODE_SETPROPERTY",
        0xac => "MODE_GETPROPBLOB",
        0xad => "MODE_GETFB",
        0xae => "MODE_ADDFB",
        0xaf => "MODE_RMFB",
        0xb0 => "MODE_PAGE_FLIP",
        0xb1 => "MODE_DIRTYFB",
        0xb2 => "MODE_CREATE_DUMB",
        0xb3 => "MODE_MAP_DUMB",
        0xb4 => "MODE_DESTROY_DUMB",
        0xb5 => "MODE_GETPLANERESOURCES",
        0xb6 => "MODE_GETPLANE",
        0xb7 => "MODE_SETPLANE",
        0xb8 => "MODE_ADDFB2",
        0xb9 => "MODE_OBJ_GETPROPERTIES",
        0xba => "MODE_OBJ_SETPROPERTY",
        0xbb => "MODE_CURSOR2",
        0xbc => "MODE_ATOMIC",
        0xbd => "MODE_CREATEPROPBLOB",
        0xbe => "MODE_DESTROYPROPBLOB",
        0xbf => "SYNCOBJ_CREATE",
        0xc0 => "SYNCOBJ_DESTROY",
        0xc1 => "SYNCOBJ_HANDLE_TO_FD",
        0xc2 => "SYNCOBJ_FD_TO_HANDLE",
        0xc3 => "SYNCOBJ_WAIT",
        0xc4 => "SYNCOBJ_RESET",
        0xc5 => "SYNCOBJ_SIGNAL",
        0xc6 => "MODE_CREATE_LEASE",
        0xc7 => "MODE_LIST_LESSEES",
        0xc8 => "MODE_GET_LEASE",
        0xc9 => "MODE_REVOKE_LEASE",
        0xca => "SYNCOBJ_TIMELINE_WAIT",
        0xcb => "SYNCOBJ_QUERY",
        0xcc => "SYNCOBJ_TRANSFER",
        0xcd => "SYNCOBJ_TIMELINE_SIGNAL",
        0xce => "MODE_GETFB2",
        0xcf => "SYNCOBJ_EVENTFD",
        0x40..=0x9f => return format!("driver-{nr:#04x}"),
        _ => return format!("{nr:#04x}"),
    };
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64, kind: u32, request_ms: u64) -> DisplayRecord {
        DisplayRecord {
            ts_ns: ms * 1_000_000,
            kind,
            crtc: 0,
            seq: 0,
            request_ns: request_ms * 1_000_000,
            woke_ns: 0,
            vblank_ns: 0,
        }
    }

    #[test]
    fn flips_make_display_frames_and_vblank_events_are_counted_apart() {
        let display = vec![
            d(10, display_kind::FLIP, 2),
            d(15, display_kind::VBLANK_QUEUED, 15),
            d(27, display_kind::FLIP, 19),
            d(27, display_kind::VBLANK_DELIVERED, 15),
            d(44, display_kind::FLIP, 36),
        ];
        let crtcs = vec![(
            0,
            CrtcVblanks {
                count: 61,
                first_ns: 0,
                last_ns: 1_000_000_000,
                first_seq: 0,
                last_seq: 60,
                pairs: 60,
                paired_ns: 1_000_000_000,
            },
        )];
        let r = report(&display, &[], &crtcs, &BTreeMap::new(), &[]).expect("a report");
        assert_eq!(r.displayed, 3);
        assert_eq!((r.vblank_events_queued, r.vblank_events_delivered), (1, 1));
        let iv = r.between_display_changes_ms.expect("intervals");
        assert!((iv.min - 17.0).abs() < 0.05 && (iv.max - 17.0).abs() < 0.05);
        assert!((r.refresh_hz.expect("refresh") - 60.0).abs() < 1e-9);
        assert!(r.present_to_display_ms.is_none(), "no presents, no latency");
        assert!(report(&[], &[], &crtcs, &BTreeMap::new(), &[]).is_none());
    }

    #[test]
    fn intervals_are_per_crtc_and_refresh_ignores_vblank_gaps() {
        let on = |ms: u64, crtc: u32| DisplayRecord {
            crtc,
            ..d(ms, display_kind::FLIP, 0)
        };
        // Two screens at 60 and 100 Hz, interleaved.
        let display = vec![
            on(0, 0),
            on(5, 1),
            on(15, 1),
            on(17, 0),
            on(25, 1),
            on(34, 0),
        ];
        // The vblank interrupt was off for a second between two runs of 10 vblanks at 60 Hz:
        // 20 vblanks over 1.3 s, but 18 back-to-back pairs of 16.667 ms.
        let crtcs = vec![(
            0,
            CrtcVblanks {
                count: 20,
                first_ns: 0,
                last_ns: 1_300_000_000,
                first_seq: 100,
                last_seq: 180,
                pairs: 18,
                paired_ns: 18 * 16_666_667,
            },
        )];
        let r = report(&display, &[], &crtcs, &BTreeMap::new(), &[]).expect("a report");
        assert_eq!(r.crtcs, vec![0, 1]);
        let iv = r.between_display_changes_ms.expect("intervals");
        assert!((iv.min - 10.0).abs() < 0.05, "{iv:?}");
        assert!((iv.max - 17.0).abs() < 0.05, "{iv:?}");
        assert!((r.refresh_hz.expect("refresh") - 60.0).abs() < 0.01);
    }

    #[test]
    fn latency_runs_from_the_last_present_before_the_flip_request() {
        let frame = |ms: u64| Frame {
            ts_ns: ms * 1_000_000,
            tid: 1,
            source: 0,
            cpu: 0,
            delta: Default::default(),
            max_runq_wait_ns: 0,
            max_blocked_ns: 0,
            last_preemptor_tid: 0,
            culprit: Default::default(),
            target: 0,
            ..Default::default()
        };
        let frames = vec![frame(1), frame(18), frame(35)];
        let display = vec![
            d(10, display_kind::FLIP, 2),
            d(27, display_kind::FLIP, 19),
            d(44, display_kind::FLIP, 36),
        ];
        let r = report(&display, &frames, &[], &BTreeMap::new(), &[]).expect("a report");
        let lat = r.present_to_display_ms.expect("latency");
        assert!((lat.min - 9.0).abs() < 0.05 && (lat.max - 9.0).abs() < 0.05);
        assert!(r.refresh_hz.is_none());
    }

    #[test]
    fn a_compositors_flips_give_shown_dropped_and_undecided_frames() {
        let frame = |ms: u64, screen: Screen| Frame {
            ts_ns: ms * 1_000_000,
            screen,
            ..Default::default()
        };
        let shown = |ms: u64| Screen::Shown {
            at_ns: ms * 1_000_000,
            crtc: 1,
        };
        let frames = vec![
            frame(0, shown(20)),
            frame(10, Screen::Replaced),
            frame(12, shown(37)),
            frame(30, shown(70)),
            frame(60, Screen::Undecided),
        ];
        let names = BTreeMap::from([(9, "weston".to_string())]);
        let r = report(&[], &frames, &[], &names, &[9]).expect("a report");
        assert_eq!(r.source, COMPOSITOR_SOURCE);
        assert_eq!((r.displayed, r.dropped, r.undecided), (3, Some(1), 1));
        assert_eq!(r.count, 3, "the name v2 first had");
        assert_eq!(r.crtcs, vec![1]);
        assert_eq!(
            r.compositors,
            vec![Compositor {
                pid: 9,
                name: "weston".into()
            }]
        );
        // Latencies 20, 25, 40 ms; display changes 17 and 33 ms apart.
        let lat = r.present_to_display_ms.clone().expect("latency");
        assert!((lat.min - 20.0).abs() < 0.05 && (lat.max - 40.0).abs() < 0.05);
        let between = r.between_display_changes_ms.clone().expect("between");
        assert!((between.min - 17.0).abs() < 0.05 && (between.max - 33.0).abs() < 0.05);
        assert!(r.interval_ms.is_some(), "the name v2 first had");
        let line = one_line(&r);
        assert!(
            line.contains("3 frames on screen through weston (1 replaced"),
            "{line}"
        );
        // A process that flips itself keeps its own flips, whatever its frames say.
        let own = vec![d(10, display_kind::FLIP, 2)];
        let r = report(&own, &frames, &[], &names, &[9]).expect("a report");
        assert_eq!(r.source, DISPLAY_SOURCE);
        // Nothing decided and no DRM events of its own: no display section.
        let undecided = vec![frame(0, Screen::Undecided)];
        assert!(report(&[], &undecided, &[], &names, &[]).is_none());
    }

    #[test]
    fn drm_request_names_follow_drm_h() {
        assert_eq!(drm_request_name(0xb0), "MODE_PAGE_FLIP");
        assert_eq!(drm_request_name(0xbc), "MODE_ATOMIC");
        assert_eq!(drm_request_name(0x3a), "WAIT_VBLANK");
        assert_eq!(drm_request_name(0x44), "driver-0x44");
    }
}
