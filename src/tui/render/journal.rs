//! The audit journal, newest at the bottom, scrollable.

use super::{Columns, Theme};
use crate::tui::app::App;
use ratatui::layout::Rect;
use ratatui::widgets::{Block, Cell, Row, TableState};
use ratatui::Frame;

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    const COLS: [(u16, u8, &str); 7] = [
        (20, 3, "TIME (UTC)"),
        (8, 4, "USER"),
        (9, 0, "ACTION"),
        (7, 2, "PID"),
        (14, 1, "PATCH"),
        (8, 0, "OUTCOME"),
        (20, 5, "DETAIL"),
    ];
    let cols = Columns::fit(&COLS, area.width.saturating_sub(2));
    let rows: Vec<Row> = app
        .journal
        .iter()
        .map(|e| {
            let style = match e.outcome.as_str() {
                "ok" => theme.ok(),
                "busy" => theme.warn(),
                _ => theme.bad(),
            };
            cols.row(vec![
                Cell::from(e.time.replace('T', " ").trim_end_matches('Z').to_string()),
                Cell::from(e.user.clone()),
                Cell::from(e.action.clone()),
                Cell::from(e.pid.to_string()),
                Cell::from(e.patch.clone().unwrap_or_default()),
                Cell::from(e.outcome.clone()).style(style),
                Cell::from(e.detail.lines().next().unwrap_or("").to_string()),
            ])
        })
        .collect();
    let n = rows.len();
    let title = if n == 0 { " Journal: empty ".to_string() } else { format!(" Journal ({n} entries) ") };
    let table = cols.table(rows, theme).block(Block::bordered().title(title));
    let sel = if n == 0 { None } else { Some(app.journal_offset.min(n - 1)) };
    let mut state = TableState::default().with_selected(sel);
    f.render_stateful_widget(table, area, &mut state);
}
