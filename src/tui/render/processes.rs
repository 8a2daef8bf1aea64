//! The home screen: every process, htop-style, with a patch-state badge.

use super::{Columns, Theme};
use crate::tui::app::{binary_replaced, App};
use crate::tui::snapshot::Badge;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, TableState};
use ratatui::Frame;

/// How much of a build-id the list shows (as `git log --oneline` shows a commit).
const BUILD_ID: u16 = 12;

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
    // PID, STATE, NAME, PATCHES, THR, USER, BUILD-ID, EXE
    const COLS: [(u16, u8, &str); 8] = [
        (7, 0, "PID"),
        (12, 1, "STATE"),
        (15, 2, "NAME"),
        (7, 3, "PATCHES"),
        (5, 4, "THR"),
        (9, 5, "USER"),
        (BUILD_ID, 7, "BUILD-ID"),
        (20, 6, "EXE"),
    ];
    let arrow = if app.sort_reversed { "▼" } else { "▲" };
    let sorted = app.sort.column();
    let cols = Columns::fit(&COLS, table_area.width.saturating_sub(2)).retitle(sorted, format!("{sorted}{arrow}"));
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            let badge = Badge::of(r, app.now);
            let style = match badge {
                Badge::Trial(left) if left <= super::NEAR_DEADLINE => theme.bad(),
                Badge::Trial(_) => theme.warn(),
                Badge::Active => theme.ok(),
                Badge::Partial | Badge::Overdue => theme.bad(),
                Badge::None => theme.dim(),
            };
            let patches = r.applied().count();
            cols.row(vec![
                Cell::from(r.pid.to_string()),
                Cell::from(badge.text()).style(style),
                Cell::from(match r.forked_from() {
                    Some(_) => format!("└ {}{}", r.name, arch_mark(r)),
                    None => format!("{}{}", r.name, arch_mark(r)),
                }),
                Cell::from(if patches == 0 { "-".to_string() } else { patches.to_string() }),
                Cell::from(r.threads.to_string()),
                Cell::from(r.owner()),
                Cell::from(
                    r.build_id.as_deref().map_or("-".to_string(), |id| id.chars().take(BUILD_ID as usize).collect()),
                ),
                Cell::from(if binary_replaced(r) {
                    Line::from(vec![
                        Span::styled("REPLACED ON DISK ", theme.warn()),
                        Span::raw(r.exe.trim_end_matches(" (deleted)").to_string()),
                    ])
                } else {
                    Line::raw(r.exe.clone())
                }),
            ])
        })
        .collect();
    let title = if rows.is_empty() && !app.snapshot.rows.is_empty() {
        " Processes: nothing matches the filter ".to_string()
    } else {
        format!(" Processes ({}) ", rows.len())
    };
    let table = cols.table(body, theme).highlight_symbol("▶").block(Block::bordered().title(title));
    let mut state = TableState::default().with_selected(app.selected_index());
    f.render_stateful_widget(table, table_area, &mut state);
}

/// After the name of a process that does not run x86-64 code: its architecture (`[i386]`).
fn arch_mark(r: &crate::processes::Process) -> String {
    match r.arch {
        Some(a) if a != pannus_kernel::Arch::X86_64 => format!(" [{}]", a.name()),
        _ => String::new(),
    }
}
