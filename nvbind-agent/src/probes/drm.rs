//! The DRM kprobes (who flipped, who asked for a vblank event, which event was sent) and the
//! DRM maps the display report reads.

use std::collections::{HashMap, HashSet};

use aya::programs::KProbe;
use nvbind_common::{CrtcVblanks, DrmIoctlKey};

use super::{error_chain, ProbeStatus, Probes};

/// A DRM function nvbind kprobes, and with which program. `functions` are alternatives, newest
/// kernel first: the first that attaches is used.
#[derive(Debug, Clone, Copy)]
pub struct DrmKprobe {
    pub program: &'static str,
    pub functions: &'static [&'static str],
    /// What is lost without it (doctor's fix line).
    pub without: &'static str,
}

/// The DRM kprobes: the request ioctls (third argument the caller's `struct drm_file`), which tell
/// whose a DRM file is, since the delivery itself runs in an interrupt; and the event send that
/// follows each delivery, which tells a completed flip from a vblank event.
pub const DRM_KPROBES: [DrmKprobe; 4] = [
    DrmKprobe {
        program: "nvbind_drm_flip_request",
        functions: &["drm_mode_page_flip_ioctl"],
        without: "display frames are counted but not given to the process that flipped",
    },
    DrmKprobe {
        program: "nvbind_drm_flip_request",
        functions: &["drm_mode_atomic_ioctl"],
        without: "display frames are counted but not given to the process that committed",
    },
    DrmKprobe {
        program: "nvbind_drm_event_request",
        functions: &["drm_crtc_queue_sequence_ioctl"],
        without: "CRTC_QUEUE_SEQUENCE vblank events are not given to the process that asked",
    },
    DrmKprobe {
        program: "nvbind_drm_send_event",
        functions: &["drm_send_event_timestamp_locked", "drm_send_event_locked"],
        without: "no display frames: deliveries cannot be told apart from vblank events",
    },
];
impl Probes {
    /// Attaches the DRM kprobes (see [`DRM_KPROBES`]), where the kernel has DRM and kprobes; one
    /// status line each either way.
    pub(super) fn attach_drm_kprobes(&mut self) {
        let drm_loaded = self
            .statuses
            .iter()
            .any(|s| s.family == "drm" && s.attached);
        let mut loaded: HashSet<&str> = HashSet::new();
        for probe in DRM_KPROBES {
            let mut status = ProbeStatus {
                name: format!("kprobe:{}", probe.functions[0]),
                family: "drm".into(),
                program: probe.program.into(),
                hook: "kprobe".into(),
                fallback: None,
                attached: false,
                reason: None,
                fix: None,
            };
            if !drm_loaded {
                status.reason =
                    Some("this kernel has no DRM (no DRM driver loaded or built)".into());
                status.fix = Some(
                    "load a DRM driver (amdgpu, i915, nvidia-drm with modeset=1, vkms)".into(),
                );
                self.statuses.push(status);
                continue;
            }
            let result = (|| -> Result<&str, String> {
                let prog: &mut KProbe = self.program(probe.program)?;
                if loaded.insert(probe.program) {
                    prog.load().map_err(|e| error_chain(&e))?;
                }
                let mut first_error = None;
                for function in probe.functions {
                    match prog.attach(*function, 0) {
                        Ok(_) => return Ok(*function),
                        Err(e) => {
                            first_error.get_or_insert_with(|| error_chain(&e));
                        }
                    }
                }
                Err(first_error.unwrap_or_default())
            })();
            match result {
                Ok(function) => {
                    status.name = format!("kprobe:{function}");
                    status.attached = true;
                }
                Err(e) => {
                    status.reason = Some(e);
                    status.fix = Some(format!(
                        "a kernel with kprobes (CONFIG_KPROBES); without it {}",
                        probe.without
                    ));
                }
            }
            self.statuses.push(status);
        }
    }
    /// DRM events seen: vblanks, queued, delivered, deliveries whose event was unreadable, and
    /// deliveries whose send the kprobe never saw.
    pub fn drm_event_counts(&self) -> [u64; 5] {
        [0, 1, 2, 3, 4].map(|i| self.sum_per_cpu("DRM_EVENT_COUNTS", i))
    }
    /// The vblank cadence of each CRTC that had vblanks: (CRTC index, its record).
    pub fn crtc_vblanks(&self) -> Vec<(u32, CrtcVblanks)> {
        let Ok(map) = self.map("CRTC_VBLANKS") else {
            return Vec::new();
        };
        let Ok(array) = aya::maps::Array::<_, CrtcVblanks>::try_from(map) else {
            return Vec::new();
        };
        (0..nvbind_common::MAX_CRTCS)
            .filter_map(|i| Some((i, array.get(&i, 0).ok()?)))
            .filter(|(_, v)| v.count > 0)
            .collect()
    }
    /// DRM ioctl calls by ioctl number (`_IOC_NR`) of each of `tgids` that made any, from one
    /// walk of the map.
    pub fn drm_ioctl_counts(&self, tgids: &HashSet<u32>) -> HashMap<u32, Vec<(u32, u64)>> {
        let mut by_process: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
        let Ok(map) = self.hash_map::<DrmIoctlKey, u64>("DRM_IOCTL_COUNTS") else {
            return by_process;
        };
        for (key, n) in map.iter().filter_map(Result::ok) {
            if tgids.contains(&key.tgid) {
                by_process.entry(key.tgid).or_default().push((key.nr, n));
            }
        }
        for counts in by_process.values_mut() {
            counts.sort_unstable();
        }
        by_process
    }
}
