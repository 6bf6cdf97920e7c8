//! `top`'s state and what each key does (no terminal here: the drawing is `ui`'s).

use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::model::{Process, Snapshot};

/// The order of the games' table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Lowest frame rate first: the game in trouble on top.
    Fps,
    /// Worst p99 frame time first.
    P99,
    /// Most stutters in the window first.
    Stutters,
    Name,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Fps => SortKey::P99,
            SortKey::P99 => SortKey::Stutters,
            SortKey::Stutters => SortKey::Name,
            SortKey::Name => SortKey::Fps,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Fps => "fps (lowest first)",
            SortKey::P99 => "p99 (worst first)",
            SortKey::Stutters => "stutters (most first)",
            SortKey::Name => "name",
        }
    }
}

/// Whether the daemon answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    Connecting,
    Live,
    /// The last try failed (`error`); what was shown before stays, marked as old.
    Lost {
        error: String,
        unreachable: bool,
    },
}

#[derive(Debug)]
pub struct App {
    /// Where the numbers come from (the API's address, or "in-process").
    pub source: String,
    pub snapshot: Snapshot,
    pub updated: Option<Instant>,
    pub connection: Connection,
    pub sort: SortKey,
    /// The selected game's pid.
    pub selected: Option<u32>,
    /// Showing the selected game's detail view.
    pub detail: bool,
    /// Updates are held (the numbers shown stay as they were).
    pub paused: bool,
    pub quit: bool,
    /// Running its own capture (`--standalone`), not a daemon's.
    pub standalone: bool,
}

impl App {
    pub fn new(source: String, standalone: bool) -> App {
        App {
            source,
            snapshot: Snapshot::default(),
            updated: None,
            connection: Connection::Connecting,
            sort: SortKey::Fps,
            selected: None,
            detail: false,
            paused: false,
            quit: false,
            standalone,
        }
    }

    /// The games in the table's order.
    pub fn rows(&self) -> Vec<&Process> {
        let mut rows: Vec<&Process> = self.snapshot.processes.iter().collect();
        let p99 = |p: &Process| p.frame_time_ms.as_ref().map_or(0.0, |f| f.p99);
        match self.sort {
            SortKey::Fps => rows.sort_by(|a, b| a.fps.total_cmp(&b.fps).then(a.pid.cmp(&b.pid))),
            SortKey::P99 => rows.sort_by(|a, b| p99(b).total_cmp(&p99(a)).then(a.pid.cmp(&b.pid))),
            SortKey::Stutters => rows.sort_by(|a, b| {
                b.stutters_in_window
                    .cmp(&a.stutters_in_window)
                    .then(a.pid.cmp(&b.pid))
            }),
            SortKey::Name => rows.sort_by(|a, b| a.label().cmp(b.label()).then(a.pid.cmp(&b.pid))),
        }
        rows
    }

    /// The selected game, when it is still there.
    pub fn selected_process(&self) -> Option<&Process> {
        let pid = self.selected?;
        self.snapshot.processes.iter().find(|p| p.pid == pid)
    }

    /// A refresh's outcome.
    pub fn on_update(&mut self, update: Result<Snapshot, (String, bool)>) {
        match update {
            Ok(snapshot) => {
                self.connection = Connection::Live;
                if self.paused {
                    return;
                }
                self.snapshot = snapshot;
                self.updated = Some(Instant::now());
                self.keep_selection();
            }
            Err((error, unreachable)) => self.connection = Connection::Lost { error, unreachable },
        }
    }

    /// Selects the first game when none (or a gone one) is selected; leaves the detail view
    /// of a game that is gone.
    fn keep_selection(&mut self) {
        if self.selected_process().is_none() {
            self.detail = false;
            self.selected = self.rows().first().map(|p| p.pid);
        }
    }

    pub fn on_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => self.quit = true,
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Esc if self.detail => self.detail = false,
            KeyCode::Esc => self.quit = true,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Enter | KeyCode::Char('d') => {
                self.detail = !self.detail && self.selected_process().is_some()
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            _ => {}
        }
    }

    fn move_selection(&mut self, step: isize) {
        let rows: Vec<u32> = self.rows().iter().map(|p| p.pid).collect();
        if rows.is_empty() {
            return;
        }
        let at = self
            .selected
            .and_then(|pid| rows.iter().position(|&p| p == pid))
            .unwrap_or(0);
        let to = at.saturating_add_signed(step).min(rows.len() - 1);
        self.selected = Some(rows[to]);
    }
}

#[cfg(test)]
mod tests {
    use crossterm::event::KeyEvent;

    use super::*;
    use crate::top::model::FrameTimes;

    fn game(pid: u32, name: &str, fps: f64, p99: f64, stutters: u64) -> Process {
        Process {
            pid,
            name: name.into(),
            fps,
            stutters_in_window: stutters,
            frame_time_ms: Some(FrameTimes {
                p99,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn app() -> App {
        let mut app = App::new("test".into(), false);
        app.on_update(Ok(Snapshot {
            processes: vec![
                game(10, "b-game", 60.0, 20.0, 1),
                game(20, "a-game", 144.0, 30.0, 5),
                game(30, "c-game", 30.0, 10.0, 0),
            ],
            ..Default::default()
        }));
        app
    }

    fn key(app: &mut App, code: KeyCode) {
        app.on_key(KeyEvent::new(code, KeyModifiers::NONE));
    }

    fn order(app: &App) -> Vec<u32> {
        app.rows().iter().map(|p| p.pid).collect()
    }

    #[test]
    fn s_cycles_through_every_order() {
        let mut app = app();
        assert_eq!(order(&app), [30, 10, 20], "lowest fps first");
        key(&mut app, KeyCode::Char('s'));
        assert_eq!(order(&app), [20, 10, 30], "worst p99 first");
        key(&mut app, KeyCode::Char('s'));
        assert_eq!(order(&app), [20, 10, 30], "most stutters first");
        key(&mut app, KeyCode::Char('s'));
        assert_eq!(order(&app), [20, 10, 30], "by name");
        key(&mut app, KeyCode::Char('s'));
        assert_eq!(app.sort, SortKey::Fps);
    }

    #[test]
    fn selection_moves_within_the_table_and_follows_a_game_that_leaves() {
        let mut app = app();
        assert_eq!(app.selected, Some(30), "the first row is selected");
        key(&mut app, KeyCode::Up);
        assert_eq!(app.selected, Some(30));
        key(&mut app, KeyCode::Down);
        key(&mut app, KeyCode::Down);
        key(&mut app, KeyCode::Down);
        assert_eq!(app.selected, Some(20));
        key(&mut app, KeyCode::Enter);
        assert!(app.detail);
        app.on_update(Ok(Snapshot {
            processes: vec![game(10, "b-game", 60.0, 20.0, 1)],
            ..Default::default()
        }));
        assert!(!app.detail, "the detail view of a game that exited closes");
        assert_eq!(app.selected, Some(10));
    }

    #[test]
    fn pause_holds_the_numbers_and_a_lost_daemon_keeps_them() {
        let mut app = app();
        key(&mut app, KeyCode::Char('p'));
        app.on_update(Ok(Snapshot::default()));
        assert_eq!(app.snapshot.processes.len(), 3, "paused: not replaced");
        key(&mut app, KeyCode::Char('p'));
        app.on_update(Err(("connection refused".into(), true)));
        assert_eq!(app.snapshot.processes.len(), 3);
        assert!(matches!(app.connection, Connection::Lost { .. }));
        app.on_update(Ok(Snapshot::default()));
        assert_eq!(app.connection, Connection::Live);
        assert!(app.snapshot.processes.is_empty());
    }

    #[test]
    fn escape_leaves_the_detail_view_before_it_quits() {
        let mut app = app();
        key(&mut app, KeyCode::Enter);
        key(&mut app, KeyCode::Esc);
        assert!(!app.detail && !app.quit);
        key(&mut app, KeyCode::Esc);
        assert!(app.quit);
        let mut app = self::app();
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(app.quit, "Ctrl-C quits (the terminal is raw: no SIGINT)");
    }
}
