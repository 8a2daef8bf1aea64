//! The audit journal, newest at the bottom, scrollable.

use super::{centered, wrap_text, Columns, Theme};
use crate::tui::app::App;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, TableState};
use ratatui::Frame;

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let searching = app.journal_searching || !app.journal_search.is_empty();
    let [search_area, area] =
        Layout::vertical([Constraint::Length(u16::from(searching)), Constraint::Fill(1)]).areas(area);
    let shown = app.journal_visible();
    if searching {
        let cursor = if app.journal_searching { "█" } else { "" };
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("/ ", theme.key()),
                Span::raw(format!("search: {}{cursor}", app.journal_search)),
                Span::styled(
                    format!(
                        "   {} of {} entries match (i, p, o: this pid, patch, outcome only)",
                        shown.len(),
                        app.journal.len()
                    ),
                    theme.dim(),
                ),
            ])),
            search_area,
        );
    }
    const COLS: [(u16, u8, &str); 8] = [
        (20, 3, "TIME (UTC)"),
        (7, 3, "SOURCE"),
        (8, 4, "USER"),
        (9, 0, "ACTION"),
        (7, 2, "PID"),
        (14, 1, "PATCH"),
        (8, 0, "OUTCOME"),
        (20, 5, "DETAIL"),
    ];
    let cols = Columns::fit(&COLS, area.width.saturating_sub(2));
    let rows: Vec<Row> = shown
        .iter()
        .map(|r| {
            let e = &r.entry;
            let style = match e.outcome.as_str() {
                "ok" => theme.ok(),
                "busy" | "cancelled" => theme.warn(),
                _ => theme.bad(),
            };
            cols.row(vec![
                Cell::from(e.time.replace('T', " ").trim_end_matches('Z').to_string()),
                Cell::from(if r.source.is_empty() { "-".to_string() } else { r.source.clone() }),
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
    let title = if app.journal.is_empty() {
        " Journal: empty ".to_string()
    } else if n == 0 {
        " Journal: no entry matches the search ".to_string()
    } else {
        format!(" Journal ({n} entries; Enter shows one whole) ")
    };
    let table = cols.table(rows, theme).block(Block::bordered().title(title));
    let sel = if n == 0 { None } else { Some(app.journal_offset.min(n - 1)) };
    let mut state = TableState::default().with_selected(sel);
    f.render_stateful_widget(table, area, &mut state);
}

/// The selected entry, every field, the detail whole, over the journal.
pub fn draw_entry(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(r) = app.journal_selected().filter(|_| app.journal_open) else { return };
    let e = &r.entry;
    let width = area.width.saturating_sub(4).min(100);
    let inner = width.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = Vec::new();
    let field =
        |name: &str, value: String| Line::from(vec![Span::styled(format!("{name:<9}"), theme.dim()), Span::raw(value)]);
    lines.push(field("time", e.time.clone()));
    lines.push(field("user", format!("{} (uid {})", e.user, e.uid)));
    lines.push(field("source", if r.source.is_empty() { "-".into() } else { r.source.clone() }));
    lines.push(field("action", e.action.clone()));
    lines.push(field("process", format!("{} {}", e.pid, e.process)));
    lines.push(field("patch", e.patch.clone().unwrap_or_else(|| "-".into())));
    lines.push(field("outcome", e.outcome.clone()));
    lines.push(Line::styled("detail", theme.dim()));
    for l in e.detail.lines() {
        lines.extend(wrap_text(l, inner, 2).into_iter().map(Line::raw));
    }
    let r = centered(area, width, lines.len() as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(lines).block(Block::bordered().title(" Journal entry (Esc or Enter closes) ")), r);
}
