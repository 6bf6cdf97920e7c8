//! The frame model, nvbind's ground floor: what a recording holds (processes, their frames as the
//! kernel reported them, display events, per-thread evidence), the frame-time statistics, and the
//! live window of recent frames that `record`'s progress line and the daemon both keep.
//!
//! Nothing here imports `capture`, `report` or `daemon`: they all build on this.

mod live;
mod model;
mod screen;
pub mod stats;
mod threads;

use nvbind_common::present_source;

pub use live::{FrameOutcome, Identity, LiveProcess, LiveStutter, LiveWindow, RecentFrameView};
pub use model::{
    Capture, CompileRecord, CulpritProcess, DisplayRecord, DriverFeedback, Frame, ProcessRecord,
    MAX_COMPILES_KEPT,
};
pub use screen::{CompositorFlip, Screen};
pub use threads::{ThreadDelta, ThreadWindow};

/// Preference among frame sources when a process shows several: the call closest to the game's
/// own frame loop first.
pub const SOURCE_PREFERENCE: [u32; 4] = [
    present_source::VULKAN_RESOLVED,
    present_source::VULKAN_LOADER,
    present_source::GLX,
    present_source::EGL,
];
