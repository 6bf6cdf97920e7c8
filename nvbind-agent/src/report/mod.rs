//! The `nvbind.report/v1` document (see docs/report-schema.md), built from a finished capture,
//! and its outputs: the JSON, the per-frame CSV, MangoHud's and PresentMon's formats, the human
//! summary and the SVG chart.

mod build;
pub mod compare;
mod compile;
mod display;
mod export;
mod model;
mod output;
mod stutters;
mod summary;
mod svg;
mod units;
mod write;

pub use build::build;
pub use compile::{CallTotals, CompileCall, CompileFrame, CompileReport};
pub use display::{one_line as display_line, DisplayReport};
pub use model::*;
pub use output::{write_outputs, ExportFailure, Outputs};
pub use stutters::{verdict_now, StutterReport};
pub use summary::render as render_summary;
pub use svg::{render as render_svg, render_comparison as render_comparison_svg};
pub use write::{
    check_writable, read_report, sweep_debris, text as write_text, ReadError, WriteError,
};
