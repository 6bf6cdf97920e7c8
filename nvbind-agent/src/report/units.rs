//! The report's units, and a frame's counters in them (the per-frame CSV and the stutter
//! evidence both show them).

use nvbind_common::{ioctl_class, ThreadCounters};

use crate::frames::Frame;

pub(crate) fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

pub(crate) fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// GPU driver calls among a thread's ioctls: (count, time in ns).
pub(crate) fn gpu_ioctls(c: &ThreadCounters) -> (u64, u64) {
    (0..ioctl_class::COUNT)
        .filter(|&i| ioctl_class::is_gpu(i))
        .fold((0, 0), |(n, t), i| {
            (n + c.ioctl_count[i], t + c.ioctl_ns[i])
        })
}

/// What the presenting thread did over one frame, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameMs {
    pub on_cpu: f64,
    pub runq_wait: f64,
    pub max_runq_wait: f64,
    pub blocked: f64,
    pub max_blocked: f64,
    pub blocked_in_gpu_ioctl: f64,
    pub blocked_uninterruptible: f64,
    /// Time the scheduler probes could not place (`ThreadCounters::unseen_ns`).
    pub unseen: f64,
    pub gpu_ioctls: u64,
    pub gpu_ioctl: f64,
}

impl FrameMs {
    pub fn of(f: &Frame) -> FrameMs {
        let d = &f.delta;
        let (gpu_ioctls, gpu_ns) = gpu_ioctls(d);
        FrameMs {
            on_cpu: ms(d.on_cpu_ns),
            runq_wait: ms(d.runq_wait_ns),
            max_runq_wait: ms(f.max_runq_wait_ns),
            blocked: ms(d.blocked_ns),
            max_blocked: ms(f.max_blocked_ns),
            blocked_in_gpu_ioctl: ms(d.blocked_in_gpu_ioctl_ns),
            blocked_uninterruptible: ms(d.blocked_uninterruptible_ns),
            unseen: ms(d.unseen_ns),
            gpu_ioctls,
            gpu_ioctl: ms(gpu_ns),
        }
    }
}
