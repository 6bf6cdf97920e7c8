//! The sessions this daemon wrote, for the dashboard page: each one's numbers and its chart,
//! kept in memory (bounded) so that the page never reads the reports directory, whose reports
//! hold command lines and are for root and the reports group only.

use std::collections::{BTreeMap, VecDeque};

use axum::body::Bytes;

use serde::Serialize;

use crate::report::{self, Report};

/// Sessions listed, the newest kept.
pub const MAX_SESSIONS: usize = 50;
/// Bytes of SVG charts kept in all; the oldest charts are dropped beyond it (their sessions
/// stay listed).
const MAX_CHART_BYTES: usize = 32 << 20;
/// A chart larger than this is not kept at all (a very long session's every frame).
const MAX_ONE_CHART_BYTES: usize = 8 << 20;

/// One written session as the page lists it: no command line, no path.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    /// Its number in this daemon's list (the chart's URL).
    pub id: u64,
    /// The report's file name, for root and the reports group to open.
    pub report: String,
    pub name: String,
    pub pid: u32,
    pub started_unix_s: f64,
    pub duration_s: f64,
    pub end_reason: String,
    pub frames: u64,
    pub fps_avg: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub low_1pct_fps: Option<f64>,
    pub stutters: u64,
    pub stutters_by_cause: BTreeMap<&'static str, u64>,
    /// Whether `GET /api/sessions/{id}/chart.svg` has its chart.
    pub chart: bool,
}

impl SessionSummary {
    /// The game's numbers from its report (the first process is the game).
    pub fn of(report: &Report, file_name: String) -> Option<SessionSummary> {
        let p = report.processes.first()?;
        Some(SessionSummary {
            id: 0,
            report: file_name,
            name: p.name.clone(),
            pid: p.pid,
            started_unix_s: report.capture.started_unix_s,
            duration_s: p.frames.duration_s,
            end_reason: report.capture.end_reason.clone(),
            frames: p.frames.count,
            fps_avg: p.frames.fps_avg,
            p50_ms: p.frames.frame_time_ms.as_ref().map(|f| f.p50),
            p99_ms: p.frames.frame_time_ms.as_ref().map(|f| f.p99),
            low_1pct_fps: p.frames.low_fps.as_ref().map(|l| l.p1_average),
            stutters: p.stutters.count,
            stutters_by_cause: p
                .stutters
                .by_cause
                .iter()
                .map(|(c, n)| (c.name(), *n))
                .collect(),
            chart: false,
        })
    }
}

/// A written session: its summary and, when one could be drawn, its chart.
#[derive(Debug, Clone)]
pub struct WrittenSession {
    pub summary: SessionSummary,
    /// The SVG (shared, not copied, with each request for it).
    pub chart: Option<Bytes>,
}

impl WrittenSession {
    /// Summarises and draws the game of `report` (on the writer's thread: drawing a long
    /// session takes a while).
    pub fn of(report: &Report, file_name: String) -> Option<WrittenSession> {
        let summary = SessionSummary::of(report, file_name)?;
        let chart = report
            .processes
            .first()
            .and_then(|p| report::render_svg(p).ok())
            .filter(|svg| svg.len() <= MAX_ONE_CHART_BYTES)
            .map(Bytes::from);
        Some(WrittenSession { summary, chart })
    }
}

/// The newest sessions, newest last.
#[derive(Debug, Default)]
pub struct History {
    sessions: VecDeque<WrittenSession>,
    next_id: u64,
    chart_bytes: usize,
}

impl History {
    pub fn add(&mut self, mut session: WrittenSession) {
        self.next_id += 1;
        session.summary.id = self.next_id;
        self.chart_bytes += session.chart.as_ref().map_or(0, |c| c.len());
        session.summary.chart = session.chart.is_some();
        self.sessions.push_back(session);
        while self.sessions.len() > MAX_SESSIONS {
            if let Some(old) = self.sessions.pop_front() {
                self.chart_bytes -= old.chart.map_or(0, |c| c.len());
            }
        }
        // The oldest charts go first; their sessions stay listed.
        for old in self.sessions.iter_mut() {
            if self.chart_bytes <= MAX_CHART_BYTES {
                break;
            }
            if let Some(chart) = old.chart.take() {
                self.chart_bytes -= chart.len();
                old.summary.chart = false;
            }
        }
    }

    /// The sessions, newest first.
    pub fn summaries(&self) -> Vec<SessionSummary> {
        self.sessions
            .iter()
            .rev()
            .map(|s| s.summary.clone())
            .collect()
    }

    pub fn chart(&self, id: u64) -> Option<Bytes> {
        self.sessions
            .iter()
            .find(|s| s.summary.id == id)
            .and_then(|s| s.chart.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str, chart_bytes: usize) -> WrittenSession {
        WrittenSession {
            summary: SessionSummary {
                id: 0,
                report: format!("{name}.json"),
                name: name.into(),
                pid: 1,
                started_unix_s: 0.0,
                duration_s: 1.0,
                end_reason: "process-exited".into(),
                frames: 10,
                fps_avg: None,
                p50_ms: None,
                p99_ms: None,
                low_1pct_fps: None,
                stutters: 0,
                stutters_by_cause: BTreeMap::new(),
                chart: false,
            },
            chart: (chart_bytes > 0).then(|| Bytes::from("x".repeat(chart_bytes))),
        }
    }

    #[test]
    fn the_newest_sessions_are_listed_first_and_the_list_is_bounded() {
        let mut h = History::default();
        for i in 0..MAX_SESSIONS + 5 {
            h.add(session(&format!("game{i}"), 10));
        }
        let list = h.summaries();
        assert_eq!(list.len(), MAX_SESSIONS);
        assert_eq!(list[0].name, format!("game{}", MAX_SESSIONS + 4));
        assert_eq!(list[0].id, (MAX_SESSIONS + 5) as u64);
        assert!(h.chart(list[0].id).is_some());
        assert!(h.chart(1).is_none(), "the first session was dropped");
    }

    #[test]
    fn charts_beyond_the_byte_budget_are_dropped_oldest_first() {
        let mut h = History::default();
        let big = MAX_ONE_CHART_BYTES;
        for i in 0..(MAX_CHART_BYTES / big) + 2 {
            h.add(session(&format!("g{i}"), big));
        }
        let list = h.summaries();
        assert!(h.chart_bytes <= MAX_CHART_BYTES);
        assert!(list[0].chart && h.chart(list[0].id).is_some());
        let oldest = list.last().unwrap();
        assert!(!oldest.chart && h.chart(oldest.id).is_none());
    }
}
