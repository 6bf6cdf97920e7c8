//! Draws `top`: a title line, the games' table (or the selected game's detail), the selected
//! game's stutters and GPU, and the keys. Everything a process can name (its name, a stutter's
//! sentence) has its control characters escaped before it reaches the terminal.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, TableState, Wrap},
    Frame,
};

use super::{
    app::{App, Connection},
    model::{Gpu, Process},
};
use crate::identity::escape_controls;

/// Block characters of a one-line sparkline, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

fn safe(text: &str) -> String {
    escape_controls(text).into_owned()
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.1}"))
}

pub fn draw(frame: &mut Frame, app: &App) {
    let [title, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(title_line(app), title);
    frame.render_widget(keys_line(app), footer);
    if app.snapshot.processes.is_empty() {
        frame.render_widget(empty_view(app), body);
    } else if let (true, Some(p)) = (app.detail, app.selected_process()) {
        draw_detail(frame, app, p, body);
    } else {
        draw_list(frame, app, body);
    }
}

fn title_line(app: &App) -> Paragraph<'static> {
    let mut spans = vec![
        Span::styled("nvbind top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(" · {} · ", safe(&app.source))),
    ];
    spans.push(match &app.connection {
        Connection::Connecting => Span::raw("connecting…"),
        Connection::Live if app.paused => Span::styled("paused", Style::new().fg(Color::Yellow)),
        Connection::Live => Span::styled("live", Style::new().fg(Color::Green)),
        Connection::Lost { .. } => Span::styled(
            "agent lost, retrying",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    });
    spans.push(Span::raw(format!(
        " · {} game{} · sort: {}",
        app.snapshot.processes.len(),
        if app.snapshot.processes.len() == 1 {
            ""
        } else {
            "s"
        },
        app.sort.label()
    )));
    Paragraph::new(Line::from(spans)).style(Style::new().bg(Color::DarkGray).fg(Color::White))
}

fn keys_line(app: &App) -> Paragraph<'static> {
    let keys = if app.detail {
        "esc/enter back · p pause · q quit"
    } else {
        "↑↓ select · enter detail · s sort · p pause · q quit"
    };
    Paragraph::new(keys).style(Style::new().fg(Color::Gray))
}

/// No game (yet), or no daemon: what is going on and what to do.
fn empty_view(app: &App) -> Paragraph<'static> {
    let mut lines = Vec::new();
    match &app.connection {
        Connection::Lost { error, unreachable } => {
            lines.push(Line::styled(
                format!("Cannot read the agent: {}", safe(error)),
                Style::new().fg(Color::Red),
            ));
            lines.push(Line::raw(""));
            if *unreachable && !app.standalone {
                lines.push(Line::raw(
                    "Start the daemon: `sudo nvbind-agent` (or `sudo systemctl start \
                     nvbind-agent`), or give its address with --api; or record in this \
                     terminal: `sudo nvbind-agent top --standalone`.",
                ));
            }
            lines.push(Line::raw("Retrying every 2 s."));
        }
        Connection::Connecting => lines.push(Line::raw("Connecting to the agent…")),
        Connection::Live => {
            lines.push(Line::raw("No process is presenting frames."));
            lines.push(Line::raw(
                "Start a game: it appears here from its first frame.",
            ));
        }
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: true })
        .block(Block::new().borders(Borders::TOP))
}

fn draw_list(frame: &mut Frame, app: &App, area: Rect) {
    let [table_area, info_area] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(8)]).areas(area);
    let widths = [
        Constraint::Length(7),
        Constraint::Length(16),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(11),
        Constraint::Length(5),
        Constraint::Min(8),
    ];
    // The sparkline column's width: what the fixed columns and their gaps leave.
    let spark_width = (table_area.width as usize).saturating_sub(7 + 16 + 6 + 6 + 6 + 11 + 5 + 7);
    let header = Row::new([
        "PID",
        "NAME",
        "FPS",
        "P50",
        "P99",
        "1%LOW p/avg",
        "STUT",
        "FRAME TIMES",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows: Vec<&Process> = app.rows();
    let selected = app
        .selected
        .and_then(|pid| rows.iter().position(|p| p.pid == pid));
    let table_rows = rows.iter().map(|p| {
        let ft = p.frame_time_ms.as_ref();
        let lows = p.low_fps.as_ref().map_or_else(
            || "–".into(),
            |l| format!("{:.0}/{:.0}", l.p1_percentile, l.p1_average),
        );
        Row::new([
            Cell::from(p.pid.to_string()),
            Cell::from(safe(p.label())),
            Cell::from(format!("{:.1}", p.fps)),
            Cell::from(ms(ft.map(|f| f.p50))),
            Cell::from(ms(ft.map(|f| f.p99))),
            Cell::from(lows),
            Cell::from(p.stutters_in_window.to_string()),
            Cell::from(spark_line(p, spark_width)),
        ])
    });
    let table = Table::new(table_rows, widths)
        .header(header)
        .row_highlight_style(Style::new().bg(Color::Blue).add_modifier(Modifier::BOLD))
        .block(Block::new().borders(Borders::TOP));
    let mut state = TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, table_area, &mut state);
    if let Some(p) = app.selected_process() {
        frame.render_widget(summary_panel(p, &app.snapshot.gpus), info_area);
    }
}

/// The newest frames as one line of bars (each column the longest frame of its share), the
/// stutters in red; scaled to the longest frame shown.
fn spark_line(p: &Process, width: usize) -> Line<'static> {
    let frames = p.recent_frames.as_deref().unwrap_or_default();
    if width == 0 || frames.is_empty() {
        return Line::raw("");
    }
    let per_column = frames.len().div_ceil(width).max(1);
    let columns: Vec<(f64, bool)> = frames
        .chunks(per_column)
        .map(|chunk| {
            chunk.iter().fold((0.0f64, false), |(max, stutter), f| {
                (max.max(f.frame_time_ms), stutter || f.stutter)
            })
        })
        .collect();
    let top = columns.iter().map(|c| c.0).fold(1e-3, f64::max);
    let spans = columns
        .iter()
        .skip(columns.len().saturating_sub(width))
        .map(|&(value, stutter)| {
            let level = ((value / top) * (BARS.len() - 1) as f64).round() as usize;
            let bar = BARS[level.min(BARS.len() - 1)].to_string();
            if stutter {
                Span::styled(bar, Style::new().fg(Color::Red))
            } else {
                Span::styled(bar, Style::new().fg(Color::Cyan))
            }
        });
    Line::from(spans.collect::<Vec<_>>())
}

/// Under the table: the selected game's stutters by cause, its last stutter's sentence and its
/// GPU.
fn summary_panel(p: &Process, gpus: &[Gpu]) -> Paragraph<'static> {
    let mut lines = vec![Line::from(vec![
        Span::styled(safe(p.label()), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            " (pid {}, {}): {} stutters: {}",
            p.pid,
            safe(&p.source),
            p.stutters_total,
            causes(p)
        )),
    ])];
    // The GPU and the display before the sentence: a long sentence is what a short panel cuts.
    lines.extend(gpu_lines(p, gpus));
    lines.extend(display_line(p));
    match &p.last_stutter {
        Some(s) => lines.push(Line::raw(format!("last: {}", safe(&s.summary)))),
        None => lines.push(Line::raw("no stutter yet")),
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: true })
        .block(Block::new().borders(Borders::TOP))
}

/// Its frames on the screen, where a compositor showed them.
fn display_line(p: &Process) -> Option<Line<'static>> {
    let d = p.display.as_ref()?;
    let latency = d.present_to_display_ms.as_ref();
    Some(Line::raw(format!(
        "present to display p50 {} p99 {} ms · {} shown, {} dropped (through the compositor)",
        ms(latency.map(|l| l.p50)),
        ms(latency.map(|l| l.p99)),
        d.displayed_total,
        d.dropped_total,
    )))
}

fn causes(p: &Process) -> String {
    if p.stutters_by_cause.is_empty() {
        return "none".into();
    }
    p.stutters_by_cause
        .iter()
        .map(|(cause, n)| format!("{} {n}", safe(cause)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The game's GPU now; every GPU when the game's is not known yet (it has not opened a GPU's
/// device node that the agent could match).
fn gpu_lines(p: &Process, gpus: &[Gpu]) -> Vec<Line<'static>> {
    if let Some(gpu) = &p.gpu {
        return vec![gpu_line(gpu)];
    }
    if gpus.is_empty() {
        return vec![Line::raw("GPU: none found")];
    }
    gpus.iter().map(gpu_line).collect()
}

/// One GPU: its counters now and why its clocks are held down.
fn gpu_line(gpu: &Gpu) -> Line<'static> {
    let mut spans = vec![Span::raw(format!(
        "GPU {} {}: ",
        safe(&gpu.pci_address),
        safe(&gpu.name)
    ))];
    let Some(s) = &gpu.sample else {
        spans.push(Span::raw(safe(
            gpu.not_sampled.as_deref().unwrap_or("not sampled yet"),
        )));
        return Line::from(spans);
    };
    if s.suspended {
        spans.push(Span::raw("runtime-suspended"));
        return Line::from(spans);
    }
    let throttled = s.throttle_reasons.as_ref().is_some_and(|r| !r.is_empty());
    let counters = safe(&crate::gpu::show::describe(s));
    spans.push(if throttled {
        Span::styled(
            counters,
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )
    } else {
        Span::raw(counters)
    });
    Line::from(spans)
}

/// The selected game alone: its numbers, a taller frame-time chart, its recent stutters and
/// its GPU.
fn draw_detail(frame: &mut Frame, app: &App, p: &Process, area: Rect) {
    let [numbers, chart, stutters, gpu] = Layout::vertical([
        Constraint::Length(if p.display.is_some() { 5 } else { 4 }),
        Constraint::Length(7),
        Constraint::Min(3),
        Constraint::Length(3),
    ])
    .areas(area);
    let ft = p.frame_time_ms.as_ref();
    let lows = p.low_fps.as_ref();
    let mut lines = vec![Line::from(vec![
        Span::styled(safe(p.label()), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(" pid {} · {}", p.pid, safe(&p.source))),
    ])];
    lines.push(Line::raw(format!(
        "{:.1} fps · frame time p50 {} p95 {} p99 {} p99.9 {} max {} ms",
        p.fps,
        ms(ft.map(|f| f.p50)),
        ms(ft.map(|f| f.p95)),
        ms(ft.map(|f| f.p99)),
        ms(ft.map(|f| f.p99_9)),
        ms(ft.map(|f| f.max)),
    )));
    lines.push(Line::raw(format!(
        "1% low {} / {} fps (percentile / average) · 0.1% low {} / {} fps",
        ms(lows.map(|l| l.p1_percentile)),
        ms(lows.map(|l| l.p1_average)),
        ms(lows.map(|l| l.p0_1_percentile)),
        ms(lows.map(|l| l.p0_1_average)),
    )));
    lines.extend(display_line(p));
    frame.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::TOP)),
        numbers,
    );
    let width = chart.width.saturating_sub(2) as usize;
    let frames = p.recent_frames.as_deref().unwrap_or_default();
    let data: Vec<u64> = frames
        .iter()
        .skip(frames.len().saturating_sub(width))
        .map(|f| (f.frame_time_ms * 100.0).round() as u64)
        .collect();
    let window = app.snapshot.window_s;
    frame.render_widget(
        Sparkline::default()
            .data(&data)
            .style(Style::new().fg(Color::Cyan))
            .block(Block::new().borders(Borders::ALL).title(format!(
                "last {} frames (tallest {:.1} ms; numbers over the last {window:.0} s)",
                data.len(),
                data.iter().max().copied().unwrap_or(0) as f64 / 100.0
            ))),
        chart,
    );
    let mut lines = vec![Line::raw(format!(
        "{} stutters: {}",
        p.stutters_total,
        causes(p)
    ))];
    for s in p.recent_stutters.iter().flatten().rev() {
        lines.push(Line::from(vec![
            Span::styled(
                format!("{:>7.1} ms {} ", s.frame_time_ms, safe(&s.cause)),
                Style::new().fg(Color::Red),
            ),
            Span::raw(safe(&s.summary)),
        ]));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: true })
            .block(Block::new().borders(Borders::TOP)),
        stutters,
    );
    frame.render_widget(
        Paragraph::new(gpu_lines(p, &app.snapshot.gpus)).wrap(Wrap { trim: true }),
        gpu,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::top::model::{Display, FrameTimes, Gpu, Snapshot, Stutter};

    fn screen(app: &App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..height {
            for x in 0..width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    fn app_with(name: &str) -> App {
        let mut app = App::new("http://127.0.0.1:9090".into(), false);
        app.on_update(Ok(Snapshot {
            processes: vec![Process {
                pid: 42,
                name: name.into(),
                source: "vulkan".into(),
                fps: 59.9,
                frame_time_ms: Some(FrameTimes {
                    p50: 16.7,
                    p99: 33.4,
                    ..Default::default()
                }),
                stutters_total: 1,
                display: Some(Display {
                    displayed_total: 590,
                    dropped_total: 3,
                    present_to_display_ms: Some(FrameTimes {
                        p50: 21.5,
                        p99: 38.2,
                        ..Default::default()
                    }),
                }),
                last_stutter: Some(Stutter {
                    cause: "cpu-contention".into(),
                    summary: "frame 9 took 50 ms: make (pid 7) had its CPU".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }));
        app
    }

    #[test]
    fn a_game_fits_in_80_by_24_with_its_last_stutter() {
        let text = screen(&app_with("vkcube"), 80, 24);
        assert!(text.contains("vkcube"), "{text}");
        assert!(text.contains("59.9"), "{text}");
        assert!(text.contains("make (pid 7) had its CPU"), "{text}");
        assert!(
            text.contains("present to display p50 21.5 p99 38.2 ms · 590 shown, 3 dropped"),
            "{text}"
        );
        // Tiny terminals draw what fits, without panicking.
        screen(&app_with("vkcube"), 20, 5);
        screen(&app_with("vkcube"), 1, 1);
    }

    #[test]
    fn a_hostile_name_reaches_the_terminal_escaped() {
        let text = screen(&app_with("evil\u{1b}]0;pwned\u{7}"), 80, 24);
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("evil\\u{1b}"), "{text}");
    }

    #[test]
    fn every_gpu_is_shown_with_its_counters_and_throttle_reasons_until_the_games_is_known() {
        use crate::gpu::GpuSample;
        let mut app = app_with("vkcube");
        app.snapshot.gpus = vec![
            Gpu {
                pci_address: "0000:01:00.0".into(),
                name: "GeForce RTX 4070".into(),
                sample: Some(GpuSample {
                    utilization_ratio: Some(0.97),
                    graphics_clock_hertz: Some(2.505e9),
                    temperature_celsius: Some(71.0),
                    power_watts: Some(180.0),
                    power_limit_watts: Some(200.0),
                    vram_used_bytes: Some(6 << 30),
                    vram_total_bytes: Some(12 << 30),
                    throttle_reasons: Some(vec!["power".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Gpu {
                pci_address: "0000:0c:00.0".into(),
                name: "Radeon".into(),
                not_sampled: Some("runtime-suspended".into()),
                ..Default::default()
            },
        ];
        let text = screen(&app, 100, 24);
        for part in [
            "busy 97%",
            "2505 MHz",
            "71.0 °C",
            "180.0/200 W",
            "VRAM 6.00/12.00 GiB",
            "THROTTLED: power",
            "0000:0c:00.0 Radeon: runtime-suspended",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        // Once the game's GPU is known, that one alone.
        app.snapshot.processes[0].gpu = Some(app.snapshot.gpus[0].clone());
        let text = screen(&app, 100, 24);
        assert!(
            text.contains("RTX 4070") && !text.contains("Radeon"),
            "{text}"
        );
    }

    #[test]
    fn without_a_daemon_it_says_how_to_start_one() {
        let mut app = App::new("http://127.0.0.1:9090".into(), false);
        app.on_update(Err(("connection refused".into(), true)));
        let text = screen(&app, 80, 24);
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains("--standalone"), "{text}");
    }
}
