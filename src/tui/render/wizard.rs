//! The apply wizard: pick a manifest, read the pre-flight report, then go stage by stage, each
//! confirmed with exactly what it will do.

use super::{wrap_text, Theme};
use crate::engine::Stage;
use crate::tui::app::{App, Fit, Phase, Wizard};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

fn stage_bar(w: &Wizard, theme: Theme) -> Line<'static> {
    let mut spans = vec![Span::raw(" ")];
    for s in Stage::ALL {
        let (mark, style) = if w.done.contains(&s) {
            ("✓", theme.ok())
        } else if w.undone.contains(&s) {
            ("↺", theme.dim())
        } else if w.current == Some(s) || matches!(&w.phase, Phase::Running { confirm: Some((c, _)) } if *c == s) {
            ("●", theme.warn())
        } else {
            ("○", theme.dim())
        };
        spans.push(Span::styled(format!("{mark} {} {}", s.number(), s.name()), style));
        spans.push(Span::raw("  "));
    }
    let legend =
        if w.undone.is_empty() { "(✓ done ● now ○ to do)" } else { "(✓ done ● now ○ to do ↺ undone)" };
    spans.push(Span::styled(legend, theme.dim()));
    Line::from(spans)
}

/// The wizard's stage bar and body in the screen's `area`.
fn wizard_areas(area: Rect) -> [Rect; 2] {
    Layout::vertical([Constraint::Length(2), Constraint::Fill(1)]).areas(Block::bordered().inner(area))
}

/// The pre-flight report laid out in the wizard's `body`: the checks' lines (wrapped), the
/// verdict's, and where each goes; the verdict's place is `None` when it does not fit whole.
struct ReportLayout {
    checks: Vec<(bool, String)>,
    checks_area: Rect,
    verdict: Vec<String>,
    verdict_area: Option<Rect>,
}

fn report_layout(body: Rect, w: &Wizard) -> ReportLayout {
    let Phase::Report { lines, error } = &w.phase else {
        return ReportLayout { checks: vec![], checks_area: body, verdict: vec![], verdict_area: None };
    };
    let inner = body.width.saturating_sub(2) as usize;
    let mut checks = Vec::new();
    for l in lines {
        let mark = if l.ok { "✓ ok  " } else { "✖ FAIL" };
        for (i, t) in wrap_text(&format!("{mark} {:<16} {}", l.check, l.detail), inner, 24).into_iter().enumerate() {
            checks.push((i == 0 && !l.ok, t));
        }
    }
    let mut verdict = Vec::new();
    match error {
        None => {
            verdict.push("Pre-flight passed.".to_string());
            verdict.extend(wrap_text(
                "Enter starts stage 1 (load), with a confirmation before each stage; Esc picks another manifest.",
                inner,
                0,
            ));
        }
        Some(e) => {
            verdict.extend(wrap_text("Refused: nothing was done to the process.", inner, 0));
            for l in e.lines() {
                verdict.extend(wrap_text(l, inner, 2));
            }
            verdict.push("Esc picks another manifest.".to_string());
        }
    }
    let vh = verdict.len() as u16 + 2;
    if body.height >= vh + 3 {
        let [c, v] = Layout::vertical([Constraint::Fill(1), Constraint::Length(vh)]).areas(body);
        ReportLayout { checks, checks_area: c, verdict, verdict_area: Some(v) }
    } else {
        ReportLayout { checks, checks_area: body, verdict, verdict_area: None }
    }
}

/// Whether the wizard's pre-flight verdict shows whole in the screen body `area`.
pub fn verdict_shown(area: Rect, w: &Wizard) -> bool {
    report_layout(wizard_areas(area)[1], w).verdict_area.is_some()
}

fn report(f: &mut Frame, body: Rect, w: &Wizard, theme: Theme) {
    let l = report_layout(body, w);
    let visible = l.checks_area.height.saturating_sub(2) as usize;
    let total = l.checks.len();
    let off = w.scroll.min(total.saturating_sub(visible));
    let title = if total > visible {
        format!(
            " Pre-flight: {} (lines {}-{} of {total}, ↑↓ PgUp PgDn scroll) ",
            w.patch,
            off + 1,
            (off + visible).min(total)
        )
    } else {
        format!(" Pre-flight: {} ", w.patch)
    };
    let shown: Vec<Line> = l
        .checks
        .iter()
        .skip(off)
        .take(visible)
        .map(|(bad, t)| {
            let (mark, rest) = t.split_at(t.char_indices().nth(6).map(|(i, _)| i).unwrap_or(t.len()));
            if t.starts_with('✓') {
                Line::from(vec![Span::styled(mark.to_string(), theme.ok()), Span::raw(rest.to_string())])
            } else if *bad {
                Line::from(vec![Span::styled(mark.to_string(), theme.bad()), Span::raw(rest.to_string())])
            } else {
                Line::raw(t.clone())
            }
        })
        .collect();
    f.render_widget(Paragraph::new(shown).block(Block::bordered().title(title)), l.checks_area);
    let passed = matches!(&w.phase, Phase::Report { error: None, .. });
    let Some(va) = l.verdict_area else {
        if l.checks_area.height > 0 {
            let r = Rect { y: l.checks_area.bottom().saturating_sub(1), height: 1, ..l.checks_area };
            f.render_widget(
                Paragraph::new(Line::styled(" the verdict does not fit: make the terminal larger ", theme.bad())),
                r,
            );
        }
        return;
    };
    let verdict: Vec<Line> = l
        .verdict
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == 0 {
                Line::styled(t.clone(), if passed { theme.ok() } else { theme.bad() })
            } else {
                Line::raw(t.clone())
            }
        })
        .collect();
    let border = if passed { theme.ok() } else { theme.bad() };
    f.render_widget(Paragraph::new(verdict).block(Block::bordered().title(" Verdict ").border_style(border)), va);
}

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(w) = &app.wizard else { return };
    let block = Block::bordered().title(format!(" Apply a patch to process {} ", w.pid));
    f.render_widget(block, area);
    let [bar, body] = wizard_areas(area);
    f.render_widget(Paragraph::new(stage_bar(w, theme)), bar);
    match &w.phase {
        Phase::Pick => pick(f, body, app, w, theme),
        Phase::Checking => f.render_widget(Paragraph::new("running the pre-flight checks…"), body),
        Phase::Report { .. } => report(f, body, w, theme),
        Phase::Running { .. } | Phase::Done { .. } => {
            // The result whole (a failure's message, hint and what was undone), the log below.
            let inner = body.width.saturating_sub(2) as usize;
            let (mark, style, text) = match &w.phase {
                Phase::Done { ok: true, message } => ("✓ ", theme.ok(), format!("{message} — Enter opens the trial")),
                Phase::Done { ok: false, message } => ("✖ ", theme.bad(), message.clone()),
                _ => match w.current {
                    Some(s) => ("… ", theme.warn(), format!("{s} running")),
                    None => ("… ", theme.warn(), "waiting".to_string()),
                },
            };
            let mut lines: Vec<Line> = Vec::new();
            for (i, l) in text.lines().enumerate() {
                for (j, t) in wrap_text(l, inner.saturating_sub(2), 2).into_iter().enumerate() {
                    lines.push(if i == 0 && j == 0 {
                        Line::from(vec![Span::styled(mark, style), Span::raw(t)])
                    } else {
                        Line::raw(format!("  {t}"))
                    });
                }
            }
            let most = body.height.saturating_sub(3).max(3);
            let [status, log] =
                Layout::vertical([Constraint::Length((lines.len() as u16 + 2).clamp(3, most)), Constraint::Fill(1)])
                    .areas(body);
            f.render_widget(Paragraph::new(lines).block(Block::bordered().title(" Result ")), status);
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
                Ok(s) => Span::raw(format!("  {s}  ")),
                Err(e) => Span::styled(format!("  invalid: {}", e.lines().next().unwrap_or("")), theme.bad()),
            };
            let fit = match m.fit {
                Fit::Matches => Span::styled(m.fit.text(), theme.ok()),
                Fit::OtherBuild => Span::styled(m.fit.text(), theme.warn()),
                _ => Span::styled(m.fit.text(), theme.dim()),
            };
            ListItem::new(Line::from(vec![Span::styled(name, theme.title()), detail, fit]))
        })
        .collect();
    let list = List::new(items).highlight_style(theme.selected()).highlight_symbol("▶ ").block(
        Block::bordered().title(format!(" Pick a manifest in {} (Enter: pre-flight) ", app.manifests_dir.display())),
    );
    let mut state = ListState::default().with_selected(Some(w.index));
    f.render_stateful_widget(list, area, &mut state);
}
