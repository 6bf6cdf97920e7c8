//! `nvbind-agent report FILE --svg OUT`: frame time over the capture with stutters marked and
//! coloured by cause, above the frame-time distribution. Drawn with plotters' SVG backend.

use plotters::{coord::Shift, prelude::*};
use thiserror::Error;

use super::ProcessReport;
use crate::stutter::Cause;

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 820;
const TIMELINE_HEIGHT: u32 = 520;
const HISTOGRAM_BINS: usize = 60;

#[derive(Debug, Error)]
pub enum SvgError {
    #[error("pid {0} has no frames to draw (a chart needs at least two presents)")]
    NoFrames(u32),
    #[error("cannot draw the chart: {0}")]
    Draw(String),
}

/// The colour of a cause, also used by the legend. Chosen to stay apart for colour-blind readers
/// as far as seven colours can (Tableau 10 order).
pub fn cause_colour(cause: Cause) -> RGBColor {
    match cause {
        Cause::CpuContention => RGBColor(0xd6, 0x27, 0x28),
        Cause::GpuDriverWait => RGBColor(0x94, 0x67, 0xbd),
        Cause::Blocked => RGBColor(0xff, 0x7f, 0x0e),
        Cause::GpuThrottle => RGBColor(0x8c, 0x56, 0x4b),
        Cause::VramPressure => RGBColor(0xe3, 0x77, 0xc2),
        Cause::ShaderCompile => RGBColor(0x17, 0xbe, 0xcf),
        Cause::Unknown => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

const FRAME_LINE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);

fn draw_err<E: std::fmt::Display>(e: E) -> SvgError {
    SvgError::Draw(e.to_string())
}

/// Draws one process's frames as an SVG document.
pub fn render(p: &ProcessReport) -> Result<String, SvgError> {
    let timeline = p
        .frames
        .timeline
        .as_ref()
        .filter(|t| !t.frame_times_ms.is_empty())
        .ok_or(SvgError::NoFrames(p.pid))?;
    // (t_s, frame time) of every frame after the first.
    let mut t = timeline.first_present_t_s;
    let points: Vec<(f64, f64)> = timeline
        .frame_times_ms
        .iter()
        .map(|&ft| {
            t += ft / 1e3;
            (t, ft)
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(TIMELINE_HEIGHT);
        draw_timeline(&top, p, &points)?;
        draw_distribution(&bottom, &timeline.frame_times_ms)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn draw_timeline(
    area: &DrawingArea<SVGBackend, Shift>,
    p: &ProcessReport,
    points: &[(f64, f64)],
) -> Result<(), SvgError> {
    let x0 = points.first().map_or(0.0, |p| p.0);
    let x1 = points.last().map_or(1.0, |p| p.0).max(x0 + 1e-3);
    let y1 = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.08;
    let title = format!(
        "{}: {} frames, {:.1} fps average, p99 {:.2} ms, {} stutters",
        p.label(),
        p.frames.count,
        p.frames.fps_avg.unwrap_or(0.0),
        p.frames.frame_time_ms.as_ref().map_or(0.0, |f| f.p99),
        p.stutters.count
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("time since the capture started (s)")
        .y_desc("frame time (ms)")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            FRAME_LINE.stroke_width(1),
        ))
        .map_err(draw_err)?
        .label("frame time")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], FRAME_LINE));
    for cause in Cause::ALL {
        let marks: Vec<(f64, f64)> = p
            .stutters
            .events
            .iter()
            .filter(|e| e.cause == cause)
            .map(|e| (e.t_s, e.frame_time_ms))
            .collect();
        if marks.is_empty() {
            continue;
        }
        let colour = cause_colour(cause);
        chart
            .draw_series(
                marks
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 5, colour.filled())),
            )
            .map_err(draw_err)?
            .label(format!("stutter: {} ({})", cause.name(), marks.len()))
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

fn draw_distribution(
    area: &DrawingArea<SVGBackend, Shift>,
    frame_times_ms: &[f64],
) -> Result<(), SvgError> {
    let mut sorted = frame_times_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    // Bins up to the 99.9th percentile ×1.5: the long tail goes into the last bin, so one
    // two-second hitch does not squash the distribution into a single bar.
    let p999 = sorted[((sorted.len() - 1) as f64 * 0.999) as usize];
    let top = (p999 * 1.5).max(1.0);
    let width = top / HISTOGRAM_BINS as f64;
    let mut bins = vec![0u64; HISTOGRAM_BINS];
    for &ft in &sorted {
        bins[((ft / width) as usize).min(HISTOGRAM_BINS - 1)] += 1;
    }
    let max_count = bins.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "frame-time distribution (the last bar holds everything longer)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..top, 0u64..max_count + max_count / 10 + 1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("frame time (ms)")
        .y_desc("frames")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(
            bins.iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(i, &n)| {
                    let x = i as f64 * width;
                    Rectangle::new([(x, 0), (x + width * 0.9, n)], FRAME_LINE.filled())
                }),
        )
        .map_err(draw_err)?;
    Ok(())
}

/// Colours of compared runs, in order (Tableau 10's first, skipping the cause colours' reds).
const RUN_COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// `report A B … --svg OUT`: every run's frame time over its own time (from its first present)
/// overlaid, above their frame-time distributions as cumulative curves (the share of frames at
/// or below each frame time), one colour per run.
pub fn render_comparison(runs: &[super::compare::Run]) -> Result<String, SvgError> {
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let times = r
                .process
                .frames
                .timeline
                .as_ref()
                .map(|t| t.frame_times_ms.as_slice())
                .unwrap_or_default();
            let mut t = 0.0;
            let points = times
                .iter()
                .map(|&ft| {
                    t += ft / 1e3;
                    (t, ft)
                })
                .collect();
            let letter = char::from(b'A' + (i % 26) as u8);
            (format!("{letter}: {}", r.process.label()), points)
        })
        .collect();
    if let Some(empty) = runs.iter().zip(&series).find(|(_, s)| s.1.is_empty()) {
        return Err(SvgError::NoFrames(empty.0.process.pid));
    }
    let x1 = series
        .iter()
        .filter_map(|s| s.1.last().map(|p| p.0))
        .fold(1e-3, f64::max);
    let y1 = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.08;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(TIMELINE_HEIGHT);
        let mut chart = ChartBuilder::on(&top)
            .caption("frame time, runs overlaid", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x1, 0.0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("time since the run's first present (s)")
            .y_desc("frame time (ms)")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(draw_err)?;
        for (i, (label, points)) in series.iter().enumerate() {
            let colour = RUN_COLOURS[i % RUN_COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(1),
                ))
                .map_err(draw_err)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(draw_err)?;
        // Cumulative distributions, up to the longest run's 99.9th percentile × 1.5.
        let sorted: Vec<Vec<f64>> = series
            .iter()
            .map(|(_, points)| {
                let mut v: Vec<f64> = points.iter().map(|p| p.1).collect();
                v.sort_by(f64::total_cmp);
                v
            })
            .collect();
        let top_ms = sorted
            .iter()
            .map(|v| v[((v.len() - 1) as f64 * 0.999) as usize])
            .fold(1.0, f64::max)
            * 1.5;
        let mut cdf = ChartBuilder::on(&bottom)
            .caption(
                "frame-time distribution: share of frames at or below",
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..top_ms, 0.0..100.0)
            .map_err(draw_err)?;
        cdf.configure_mesh()
            .x_desc("frame time (ms)")
            .y_desc("frames (%)")
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(draw_err)?;
        for (i, v) in sorted.iter().enumerate() {
            let colour = RUN_COLOURS[i % RUN_COLOURS.len()];
            let n = v.len() as f64;
            cdf.draw_series(LineSeries::new(
                v.iter()
                    .enumerate()
                    .filter(|(_, &ms)| ms <= top_ms)
                    .map(|(k, &ms)| (ms, 100.0 * (k + 1) as f64 / n)),
                colour.stroke_width(2),
            ))
            .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}
