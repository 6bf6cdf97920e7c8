//! A bare DRM client for the test VM (`tests/drm_vm.rs`): asks for vblank events in the two ways a
//! display-frame probe could mistake for completed flips, and reads each one back.
//!
//! `drm-sequence CARD CRTC_ID ROUNDS`; each round:
//! - `DRM_IOCTL_CRTC_QUEUE_SEQUENCE` for the next vblank (no `drm_vblank_event_queued` for it), and
//! - `DRM_IOCTL_WAIT_VBLANK` with an event for a sequence already passed: delivered at once,
//!   under the current sequence, not the one asked for.
//!
//! Prints `sequence events N, late vblank events N` and exits 0 when every event came back with
//! its type; any failure is one line on stderr and exit 1.

use std::{
    fs::{File, OpenOptions},
    io::Read,
    os::fd::AsRawFd,
};

/// `_IOWR('d', nr, size)`.
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | ((b'd' as u64) << 8) | nr
}

#[repr(C)]
#[derive(Default)]
struct CrtcQueueSequence {
    crtc_id: u32,
    flags: u32,
    sequence: u64,
    user_data: u64,
}
const DRM_IOCTL_CRTC_QUEUE_SEQUENCE: u64 = iowr(0x3c, 24);
const DRM_CRTC_SEQUENCE_RELATIVE: u32 = 1;

/// `union drm_wait_vblank`: the request's `type`, `sequence`, `signal`; the reply's `type`,
/// `sequence`, `tval_sec`, `tval_usec` (24 bytes on 64-bit).
#[repr(C)]
#[derive(Default)]
struct WaitVblank {
    kind: u32,
    sequence: u32,
    signal_or_tval_sec: u64,
    tval_usec: u64,
}
const DRM_IOCTL_WAIT_VBLANK: u64 = iowr(0x3a, 24);
const DRM_VBLANK_ABSOLUTE: u32 = 0;
const DRM_VBLANK_RELATIVE: u32 = 1;
const DRM_VBLANK_EVENT: u32 = 0x0400_0000;

const DRM_EVENT_VBLANK: u32 = 1;
const DRM_EVENT_CRTC_SEQUENCE: u32 = 3;

fn ioctl<T>(card: &File, request: u64, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: `arg` is the ioctl's argument struct, laid out as the kernel's (repr(C), sizes in
    // `request`), and lives across the call.
    let rc = unsafe { libc::ioctl(card.as_raw_fd(), request as _, arg as *mut T) };
    if rc < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Reads one event and returns its type (`struct drm_event`: type, length).
fn read_event(card: &mut File) -> Result<u32, String> {
    let mut buf = [0u8; 64];
    let n = card
        .read(&mut buf)
        .map_err(|e| format!("read an event: {e}"))?;
    if n < 8 {
        return Err(format!("a {n}-byte read is not a DRM event"));
    }
    let kind = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let length = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if length != n {
        return Err(format!(
            "one event at a time was expected, read {n} bytes (event of {length})"
        ));
    }
    Ok(kind)
}

fn run(card_path: &str, crtc_id: u32, rounds: u32) -> Result<(u32, u32), String> {
    let mut card = OpenOptions::new()
        .read(true)
        .write(true)
        .open(card_path)
        .map_err(|e| format!("open {card_path}: {e}"))?;
    let (mut sequence_events, mut late_events) = (0, 0);
    for _ in 0..rounds {
        let mut q = CrtcQueueSequence {
            crtc_id,
            flags: DRM_CRTC_SEQUENCE_RELATIVE,
            sequence: 1,
            ..Default::default()
        };
        ioctl(
            &card,
            DRM_IOCTL_CRTC_QUEUE_SEQUENCE,
            &mut q,
            "CRTC_QUEUE_SEQUENCE",
        )?;
        match read_event(&mut card)? {
            DRM_EVENT_CRTC_SEQUENCE => sequence_events += 1,
            other => return Err(format!("CRTC_QUEUE_SEQUENCE came back as event {other}")),
        }

        // The current sequence (a relative wait of 0 returns at once), then an event for one
        // three vblanks ago.
        let mut now = WaitVblank {
            kind: DRM_VBLANK_RELATIVE,
            ..Default::default()
        };
        ioctl(&card, DRM_IOCTL_WAIT_VBLANK, &mut now, "WAIT_VBLANK (now)")?;
        let mut late = WaitVblank {
            kind: DRM_VBLANK_ABSOLUTE | DRM_VBLANK_EVENT,
            sequence: now.sequence.wrapping_sub(3),
            ..Default::default()
        };
        ioctl(
            &card,
            DRM_IOCTL_WAIT_VBLANK,
            &mut late,
            "WAIT_VBLANK (late)",
        )?;
        match read_event(&mut card)? {
            DRM_EVENT_VBLANK => late_events += 1,
            other => return Err(format!("WAIT_VBLANK came back as event {other}")),
        }
    }
    Ok((sequence_events, late_events))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match args.as_slice() {
        [_, card, crtc, rounds] => crtc
            .parse::<u32>()
            .ok()
            .zip(rounds.parse::<u32>().ok())
            .map(|(crtc, rounds)| (card.clone(), crtc, rounds)),
        _ => None,
    };
    let Some((card, crtc, rounds)) = parsed else {
        eprintln!("usage: drm-sequence CARD CRTC_ID ROUNDS (e.g. /dev/dri/card0 38 60)");
        std::process::exit(2);
    };
    match run(&card, crtc, rounds) {
        Ok((sequence, late)) => {
            println!("sequence events {sequence}, late vblank events {late}");
        }
        Err(e) => {
            eprintln!("drm-sequence: {e}");
            std::process::exit(1);
        }
    }
}
