//! Stutter detection (which frames) and attribution (why), shared by recordings and reports.

mod attribute;
mod detect;

pub use attribute::{
    attribute, public_summary, Blame, BusyThread, Cause, CompileEvidence, Evidence, GpuEvidence,
    RanInstead, ThreadEvidence, Verdict, ViaThread, VRAM_PRESSURE_RATIO,
};
pub use detect::{Detector, DetectorConfig};
