//! The apply wizard: pick a manifest, read the pre-flight report, then go stage by stage, each
//! confirmed with exactly what it will do.

use super::{centered, Theme};
use crate::engine::Stage;
use crate::tui::app::{App, Phase, Wizard};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

fn stage_bar(w: &Wizard, theme: Theme) -> Line<'static> {
    let mut spans = vec![Span::raw(" ")];
    for s in Stage::ALL {
        let (mark, style) = if w.done.contains(&s) {
            ("✓", theme.ok())
        } else if w.current == Some(s) || matches!(&w.phase, Phase::Running { confirm: Some((c, _)) } if *c == s) {
            ("●", theme.warn())
        } else {
            ("○", theme.dim())
        };
        spans.push(Span::styled(format!("{mark} {} {}", s.number(), s.name()), style));
        spans.push(Span::raw("   "));
    }
    spans.push(Span::styled("(✓ done  ● now  ○ to do)", theme.dim()));
    Line::from(spans)
}

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(w) = &app.wizard else { return };
    let block = Block::bordered().title(format!(" Apply a patch to process {} ", w.pid));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [bar, body] = Layout::vertical([Constraint::Length(2), Constraint::Fill(1)]).areas(inner);
    f.render_widget(Paragraph::new(stage_bar(w, theme)), bar);
    match &w.phase {
        Phase::Pick => pick(f, body, app, w, theme),
        Phase::Checking => f.render_widget(Paragraph::new("running the pre-flight checks…"), body),
        Phase::Report { lines, error } => {
            let mut out: Vec<Line> = lines
                .iter()
                .map(|l| {
                    let (mark, style) = if l.ok { ("✓ ok  ", theme.ok()) } else { ("✖ FAIL", theme.bad()) };
                    Line::from(vec![
                        Span::styled(mark, style),
                        Span::styled(format!(" {:<16} ", l.check), theme.title()),
                        Span::raw(l.detail.clone()),
                    ])
                })
                .collect();
            out.push(Line::raw(""));
            match error {
                None => out.push(Line::from(vec![
                    Span::styled("Pre-flight passed. ", theme.ok()),
                    Span::styled("Enter", theme.key()),
                    Span::raw(" starts stage 1 (load), with a confirmation before each stage. "),
                    Span::styled("Esc", theme.key()),
                    Span::raw(" picks another manifest."),
                ])),
                Some(e) => {
                    out.push(Line::styled("Refused: nothing was done to the process.", theme.bad()));
                    for l in e.lines() {
                        out.push(Line::raw(l.to_string()));
                    }
                    out.push(Line::from(vec![Span::styled("Esc", theme.key()), Span::raw(" picks another manifest.")]));
                }
            }
            f.render_widget(
                Paragraph::new(out)
                    .wrap(Wrap { trim: false })
                    .block(Block::bordered().title(format!(" Pre-flight: {} ", w.patch))),
                body,
            );
        }
        Phase::Running { .. } | Phase::Done { .. } => {
            let [status, log] = Layout::vertical([Constraint::Length(4), Constraint::Fill(1)]).areas(body);
            let line = match &w.phase {
                Phase::Done { ok: true, message } => Line::from(vec![
                    Span::styled("✓ ", theme.ok()),
                    Span::raw(message.clone()),
                    Span::raw(" — "),
                    Span::styled("Enter", theme.key()),
                    Span::raw(" opens the trial"),
                ]),
                Phase::Done { ok: false, message } => Line::from(vec![
                    Span::styled("✖ ", theme.bad()),
                    Span::raw(message.lines().collect::<Vec<_>>().join(" / ")),
                ]),
                _ => match w.current {
                    Some(s) => Line::from(vec![Span::styled("… ", theme.warn()), Span::raw(format!("{s} running"))]),
                    None => Line::from(vec![Span::styled("… ", theme.warn()), Span::raw("waiting")]),
                },
            };
            f.render_widget(
                Paragraph::new(line).wrap(Wrap { trim: false }).block(Block::bordered().title(" Result ")),
                status,
            );
            let h = log.height.saturating_sub(2) as usize;
            let start = w.log.len().saturating_sub(h);
            let items: Vec<Line> = w.log[start..].iter().map(|l| Line::raw(l.clone())).collect();
            f.render_widget(Paragraph::new(items).block(Block::bordered().title(" Stage log ")), log);
        }
    }
}

fn pick(f: &mut Frame, area: Rect, app: &App, w: &Wizard, theme: Theme) {
    if w.files.is_empty() {
        f.render_widget(
            Paragraph::new(format!(
                "No manifest (*.yaml) in {}.\nStart the console with --manifests DIR, or write one with `pannus manifest new`.",
                app.manifests_dir.display()
            ))
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Pick a manifest ")),
            area,
        );
        return;
    }
    let items: Vec<ListItem> = w
        .files
        .iter()
        .map(|m| {
            let name = m.path.strip_prefix(&app.manifests_dir).unwrap_or(&m.path).display().to_string();
            let detail = match &m.summary {
                Ok(s) => Span::raw(format!("  {s}")),
                Err(e) => Span::styled(format!("  invalid: {}", e.lines().next().unwrap_or("")), theme.bad()),
            };
            ListItem::new(Line::from(vec![Span::styled(name, theme.title()), detail]))
        })
        .collect();
    let list = List::new(items).highlight_style(theme.selected()).highlight_symbol("▶ ").block(
        Block::bordered().title(format!(" Pick a manifest in {} (Enter: pre-flight) ", app.manifests_dir.display())),
    );
    let mut state = ListState::default().with_selected(Some(w.index));
    f.render_stateful_widget(list, area, &mut state);
}

/// The confirmation before a stage, drawn over the wizard.
pub fn draw_confirm(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(w) = &app.wizard else { return };
    let Phase::Running { confirm: Some((stage, plan)) } = &w.phase else {
        return;
    };
    let width = area.width.saturating_sub(4).min(90);
    let text = vec![
        Line::styled(format!("Stage {} of 4: {}", stage.number(), stage.name().to_uppercase()), theme.title()),
        Line::raw(""),
        Line::raw(plan.clone()),
        Line::raw(""),
        Line::from(vec![
            Span::styled("Enter", theme.key()),
            Span::raw(" proceed    "),
            Span::styled("Esc", theme.key()),
            Span::raw(if w.done.is_empty() {
                " cancel (nothing done yet)"
            } else {
                " cancel and undo the stages done"
            }),
        ]),
    ];
    let inner_w = width.saturating_sub(2).max(1) as usize;
    let wrapped: usize = text.iter().map(|l| l.width().max(1).div_ceil(inner_w)).sum();
    let r = centered(area, width, wrapped as u16 + 2);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Confirm ").border_style(theme.warn())),
        r,
    );
}
