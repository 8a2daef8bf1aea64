//! The home screen: every process, htop-style, with a patch-state badge.

use super::{fit_columns, Theme};
use crate::tui::app::App;
use crate::tui::snapshot::Badge;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};
use ratatui::Frame;

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let show_filter = app.filtering || !app.filter.is_empty();
    let [filter_area, table_area] =
        Layout::vertical([Constraint::Length(if show_filter { 1 } else { 0 }), Constraint::Fill(1)]).areas(area);
    let rows = app.visible();
    if show_filter {
        let cursor = if app.filtering { "█" } else { "" };
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("/ ", theme.key()),
                Span::raw(format!("filter: {}{cursor}", app.filter)),
                Span::styled(format!("   {} match(es) by pid, name or patch id", rows.len()), theme.dim()),
            ])),
            filter_area,
        );
    }
    // PID, STATE, NAME, PATCHES, THR, USER, EXE
    let cols: [(u16, u8, &str); 7] = [
        (7, 0, "PID"),
        (12, 1, "STATE"),
        (16, 2, "NAME"),
        (7, 3, "PATCHES"),
        (4, 4, "THR"),
        (10, 5, "USER"),
        (20, 6, "EXE"),
    ];
    let shown = fit_columns(&cols.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>(), table_area.width.saturating_sub(2));
    let pick = |cells: Vec<Cell<'static>>| -> Vec<Cell<'static>> {
        cells.into_iter().zip(&shown).filter(|(_, s)| **s).map(|(c, _)| c).collect()
    };
    let header = Row::new(pick(cols.iter().map(|c| Cell::from(c.2)).collect())).style(theme.title());
    let widths: Vec<Constraint> = cols
        .iter()
        .zip(&shown)
        .filter(|(_, s)| **s)
        .map(|(c, _)| if c.2 == "EXE" { Constraint::Fill(1) } else { Constraint::Length(c.0) })
        .collect();
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            let badge = Badge::of(r, app.now);
            let style = match badge {
                Badge::Trial(_) => theme.warn(),
                Badge::Active => theme.ok(),
                Badge::Partial => theme.bad(),
                Badge::None => theme.dim(),
            };
            let patches = r.applied().count();
            Row::new(pick(vec![
                Cell::from(r.pid.to_string()),
                Cell::from(badge.text()).style(style),
                Cell::from(r.name.clone()),
                Cell::from(if patches == 0 { "-".to_string() } else { patches.to_string() }),
                Cell::from(r.threads.to_string()),
                Cell::from(r.owner()),
                Cell::from(r.exe.clone()),
            ]))
        })
        .collect();
    let title = if rows.is_empty() && !app.snapshot.rows.is_empty() {
        " Processes: nothing matches the filter ".to_string()
    } else {
        format!(" Processes ({}) ", rows.len())
    };
    let table = Table::new(body, widths)
        .header(header)
        .row_highlight_style(theme.selected())
        .highlight_symbol("▶")
        .block(Block::bordered().title(title));
    let mut state = TableState::default().with_selected(app.selected_index());
    f.render_stateful_widget(table, table_area, &mut state);
}
