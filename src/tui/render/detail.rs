//! One process: its patches in application order, the functions the selected one redirects,
//! and the dependency graph of its patches.

use super::{Columns, Theme};
use crate::registry::{PatchRecord, State};
use crate::tui::app::{App, Pane};
use crate::tui::snapshot::mmss;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, TableState, Wrap};
use ratatui::Frame;

fn state_style(s: State, theme: Theme) -> Style {
    match s {
        State::Trial => theme.warn(),
        State::Committed => theme.ok(),
        State::RolledBack => theme.dim(),
        _ => theme.bad(),
    }
}

fn focus(block: Block<'static>, on: bool, theme: Theme) -> Block<'static> {
    if on {
        block.border_type(ratatui::widgets::BorderType::Thick).border_style(theme.key())
    } else {
        block
    }
}

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(row) = app.detail_row() else {
        let pid = app.detail.map(|p| p.to_string()).unwrap_or_default();
        f.render_widget(
            Paragraph::new(format!("process {pid} has exited; Esc goes back to the list"))
                .wrap(Wrap { trim: false })
                .block(Block::bordered()),
            area,
        );
        return;
    };
    let n = row.patches.len() as u16;
    let [info, patches_area, rest] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length((n + 3).clamp(4, area.height.saturating_sub(8).max(4))),
        Constraint::Fill(1),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(format!(" {} ", row.pid), theme.title()),
            Span::raw(format!("{}  user {}  {} threads  ", row.name, row.owner(), row.threads)),
            if row.applied().next().is_none() && !row.patches.is_empty() {
                Span::styled("NO LONGER PATCHED  ", theme.warn())
            } else {
                Span::raw("")
            },
            if crate::tui::app::binary_replaced(row) {
                Span::styled("REPLACED ON DISK ", theme.warn())
            } else {
                Span::raw("")
            },
            match row.forked_from() {
                Some(parent) => Span::styled(format!("FORKED FROM {parent}  "), theme.warn()),
                None => Span::raw(""),
            },
            Span::raw(row.exe.trim_end_matches(" (deleted)").to_string()),
            // A process that does not run x86-64 code says what it runs, and whether pannus
            // can patch it (32-bit i386: yes; x32, other machines: no).
            match row.arch {
                Some(arch @ pannus_kernel::Arch::I386) => Span::raw(format!("  {arch}")),
                Some(arch) if arch != pannus_kernel::Arch::X86_64 => {
                    Span::styled(format!("  {arch}, NOT PATCHABLE"), theme.warn())
                }
                _ => Span::raw(""),
            },
        ])),
        info,
    );

    // Patches, in application order.
    const COLS: [(u16, u8, &str); 7] = [
        (3, 0, "#"),
        (16, 0, "PATCH"),
        (8, 3, "VERSION"),
        (12, 1, "STATE"),
        (9, 2, "TRIAL"),
        (10, 5, "ON EXPIRY"),
        (16, 4, "REQUIRES"),
    ];
    let cols = Columns::fit(&COLS, patches_area.width.saturating_sub(3));
    let mut ordered: Vec<&PatchRecord> = row.patches.iter().collect();
    ordered.sort_by_key(|p| p.seq);
    let rows: Vec<Row> = row
        .patches
        .iter()
        .map(|p| {
            let trial = match (p.state, p.trial_deadline) {
                (State::Trial, Some(_)) if crate::trial::deadline_reached(p, app.now) => "OVERDUE".into(),
                (State::Trial, Some(d)) => mmss(d.saturating_sub(app.now)),
                _ => "-".into(),
            };
            cols.row(vec![
                Cell::from(p.seq.to_string()),
                Cell::from(p.patch.clone()),
                Cell::from(p.version.clone()),
                Cell::from(p.state.as_str()).style(state_style(p.state, theme)),
                Cell::from(trial),
                Cell::from(if p.state == State::Trial { p.on_expiry.as_str() } else { "-" }),
                Cell::from(if p.requires.is_empty() { "-".into() } else { p.requires.join(", ") }),
            ])
        })
        .collect();
    let title = if rows.is_empty() {
        " Patches: none applied (a: apply…) ".to_string()
    } else {
        " Patches (application order) ".to_string()
    };
    let table = cols.table(rows, theme).highlight_symbol("▶").block(focus(
        Block::bordered().title(title),
        app.pane == Pane::Patches,
        theme,
    ));
    let mut state = TableState::default().with_selected((!row.patches.is_empty()).then_some(app.detail_patch));
    f.render_stateful_widget(table, patches_area, &mut state);

    let selected = row.patches.get(app.detail_patch);
    let (fa, ga) = if rest.width >= 90 {
        let [a, b] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(rest);
        (a, b)
    } else {
        let [a, b] = Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(rest);
        (a, b)
    };
    functions(f, fa, row.pid.get(), selected, app.pane == Pane::Functions, theme);
    graph(f, ga, &row.patches, selected.map(|p| p.patch.as_str()), app.pane == Pane::Graph, theme);
}

fn functions(f: &mut Frame, area: Rect, pid: i32, p: Option<&PatchRecord>, focused: bool, theme: Theme) {
    let mut lines = Vec::new();
    let title = match p {
        Some(p) => format!(" Functions of {} ", p.patch),
        None => " Functions ".into(),
    };
    if let Some(p) = p {
        if p.functions.is_empty() {
            lines.push(Line::styled("no jump written (state ".to_string() + p.state.as_str() + ")", theme.dim()));
        }
        for fr in &p.functions {
            let implementation = match (&fr.implementation, fr.in_use) {
                (Some(i), Some(false)) => format!(" → {i} (not in use)"),
                (Some(i), _) => format!(" → {i}"),
                (None, _) => String::new(),
            };
            lines.push(Line::from(vec![
                Span::styled(fr.target.clone(), theme.title()),
                Span::raw(implementation),
                Span::raw(format!(" {:#x}", fr.address)),
                Span::styled(" → ", theme.key()),
                Span::styled(fr.replacement.clone(), theme.title()),
                Span::raw(format!(" {:#x}", fr.replacement_address)),
            ]));
            let via = fr.via.map(|v| format!(", via a stub at {v:#x}")).unwrap_or_default();
            lines.push(Line::styled(
                format!(
                    "  {} at {:#x}, {} bytes saved{via}",
                    fr.jump.as_str(),
                    fr.patch_address,
                    fr.original.len() / 2
                ),
                theme.dim(),
            ));
        }
        lines.push(Line::styled(
            format!("module {} at {:#x} (load: {})", p.module, p.module_base, p.load.as_str()),
            theme.dim(),
        ));
        if let Some(n) = &p.note {
            lines.push(Line::styled(n.clone(), theme.dim()));
        }
        if let Some(parent) = p.forked_from(pid).filter(|_| p.state.is_applied()) {
            lines.push(Line::styled(
                format!("a copy forked from process {parent}: its trial ends here as it ends there"),
                theme.warn(),
            ));
        }
    }
    f.render_widget(Paragraph::new(lines).block(focus(Block::bordered().title(title), focused, theme)), area);
}

/// The `requires` graph as an indented tree from the patches that require nothing; a patch
/// with several dependencies appears under each. The selected patch is marked and the patches
/// it depends on and that depend on it are named.
pub fn graph_lines(patches: &[PatchRecord], selected: Option<&str>, theme: Theme) -> Vec<Line<'static>> {
    let applied: Vec<&PatchRecord> = patches.iter().filter(|p| p.state.is_applied()).collect();
    let mut lines = Vec::new();
    if applied.is_empty() {
        lines.push(Line::styled("no patches applied", theme.dim()));
        return lines;
    }
    fn walk(
        p: &PatchRecord,
        all: &[&PatchRecord],
        depth: usize,
        selected: Option<&str>,
        theme: Theme,
        lines: &mut Vec<Line<'static>>,
        path: &mut Vec<String>,
    ) {
        let is_sel = selected == Some(p.patch.as_str());
        let prefix = if depth == 0 { String::new() } else { format!("{}└─▶ ", "    ".repeat(depth - 1)) };
        let mark = if is_sel { "● " } else { "○ " };
        let name = Span::styled(format!("{mark}{}", p.patch), if is_sel { theme.selected() } else { theme.title() });
        lines.push(Line::from(vec![Span::raw(prefix), name, Span::styled(format!(" [{}]", p.state), theme.dim())]));
        if path.contains(&p.patch) {
            return;
        }
        path.push(p.patch.clone());
        for c in all.iter().filter(|c| c.requires.contains(&p.patch)) {
            walk(c, all, depth + 1, selected, theme, lines, path);
        }
        path.pop();
    }
    let ids: Vec<&str> = applied.iter().map(|p| p.patch.as_str()).collect();
    for root in applied.iter().filter(|p| p.requires.iter().all(|r| !ids.contains(&r.as_str()))) {
        walk(root, &applied, 0, selected, theme, &mut lines, &mut Vec::new());
    }
    if let Some(sel) = selected.and_then(|s| patches.iter().find(|p| p.patch == s)) {
        let needed_by: Vec<&str> =
            applied.iter().filter(|p| p.requires.contains(&sel.patch)).map(|p| p.patch.as_str()).collect();
        lines.push(Line::raw(""));
        lines.push(Line::from(vec![
            Span::styled("depends on: ", theme.dim()),
            Span::raw(if sel.requires.is_empty() { "nothing".into() } else { sel.requires.join(", ") }),
        ]));
        lines.push(Line::from(vec![
            Span::styled("needed by:  ", theme.dim()),
            Span::raw(if needed_by.is_empty() { "nothing".into() } else { needed_by.join(", ") }),
        ]));
    }
    lines
}

fn graph(f: &mut Frame, area: Rect, patches: &[PatchRecord], selected: Option<&str>, focused: bool, theme: Theme) {
    let lines = graph_lines(patches, selected, theme);
    f.render_widget(
        Paragraph::new(lines).block(focus(Block::bordered().title(" Dependencies "), focused, theme)),
        area,
    );
}
