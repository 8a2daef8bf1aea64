//! The installed patches, per binary: the object and its build-id as a group header, under it
//! each patch installed for that build with its state and how many of the processes running
//! the build have it; the selected patch's details below.
//!
//! ```text
//! ┌ Installed patches (3, for 2 binaries) ──────────────────────────────────┐
//! │  PATCH        VERSION  PATCHED  STATE                                    │
//! │  /usr/sbin/sipd  build-id 3f2a00009c1b                                   │
//! │▶ invite-fix   1.0.2        2/3  TRIAL 04:12, commits at 08:04:12 UTC     │
//! └──────────────────────────────────────────────────────────────────────────┘
//! ┌ invite-fix ──────────────────────────────────────────────────────────────┐
//! │ TRIAL 04:12, … · 2 of the 3 processes running its build have it         │
//! │ requires …; required by …; applied in processes …                        │
//! │ manifest …                                                               │
//! └──────────────────────────────────────────────────────────────────────────┘
//! ```

use super::{clock, Theme, NEAR_DEADLINE};
use crate::install::State;
use crate::manifest::OnExpiry;
use crate::tui::app::App;
use crate::tui::installed::Row;
use crate::tui::snapshot::mmss;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

/// How much of a build-id a group header shows.
const BUILD_ID: usize = 12;

/// The state of installed patch `r` at `now` in words, and how to draw it.
pub fn state_text(r: &Row, now: u64, theme: Theme) -> (String, Style) {
    match (&r.canary, r.state_at(now)) {
        (Some(c), State::Trial | State::Committed) if c.running => {
            let n = c.canaries.len();
            return (
                format!(
                    "CANARY {n} process{}, {} left",
                    if n == 1 { "" } else { "es" },
                    mmss(c.until.saturating_sub(now))
                ),
                theme.warn(),
            );
        }
        (Some(c), State::Trial | State::Committed) => {
            return (format!("CANARY INTERRUPTED (pannus {} gone): install again", c.by), theme.bad())
        }
        _ => {}
    }
    match r.state_at(now) {
        State::Trial => match r.trial_deadline {
            Some(d) => {
                let left = d.saturating_sub(now);
                let verb = if r.on_expiry == OnExpiry::Rollback { "rolls back" } else { "commits" };
                if left <= NEAR_DEADLINE {
                    (format!("TRIAL {}, {verb} at {}, in under {NEAR_DEADLINE} s", mmss(left), clock(d)), theme.bad())
                } else {
                    (format!("TRIAL {}, {verb} at {}", mmss(left), clock(d)), theme.warn())
                }
            }
            None => ("TRIAL".into(), theme.warn()),
        },
        State::Committed => ("COMMITTED".into(), theme.ok()),
        State::RolledBack => match r.reason_at(now) {
            Some(why) => (format!("ROLLED BACK: {why}"), theme.bad()),
            None => ("ROLLED BACK".into(), theme.bad()),
        },
    }
}

fn cut(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let [list_area, detail_area] = Layout::vertical([Constraint::Fill(1), Constraint::Length(6)]).areas(area);
    let Some(list) = app.installed.as_ref() else {
        f.render_widget(
            Paragraph::new("reading the installed patches…").block(Block::bordered().title(" Installed patches ")),
            area,
        );
        return;
    };
    if let Some(e) = &list.error {
        f.render_widget(
            Paragraph::new(vec![
                Line::styled("The installed patches cannot be read:", theme.bad()),
                Line::raw(e.clone()),
            ])
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Installed patches ")),
            area,
        );
        return;
    }
    if list.rows.is_empty() {
        f.render_widget(
            Paragraph::new(vec![
                Line::raw("No patch is installed."),
                Line::styled(
                    "pannus install MANIFEST installs one for its build of its binary (see pannus installed).",
                    theme.dim(),
                ),
            ])
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Installed patches (0) ")),
            area,
        );
        return;
    }
    let groups = list.groups();
    let pw = list.rows.iter().map(|r| r.patch.chars().count()).max().unwrap_or(0).clamp(5, 24);
    let vw = list.rows.iter().map(|r| r.version.chars().count()).max().unwrap_or(0).clamp(7, 12);
    let mut items = Vec::new();
    let mut selected = None;
    for ((object, build_id), rows) in &groups {
        items.push(ListItem::new(Line::from(vec![
            Span::styled(object.display().to_string(), theme.title()),
            Span::styled(format!("  build-id {}", build_id.chars().take(BUILD_ID).collect::<String>()), theme.dim()),
        ])));
        for r in rows {
            if app.installed_selected.as_deref() == Some(r.patch.as_str()) {
                selected = Some(items.len());
            }
            let (state, style) = state_text(r, app.now, theme);
            let patched = format!("{}/{}", r.patched, r.processes);
            items.push(ListItem::new(Line::from(vec![
                Span::raw(format!("  {:<pw$} {:<vw$} {patched:>7}  ", cut(&r.patch, pw), cut(&r.version, vw))),
                Span::styled(state, style),
            ])));
        }
    }
    let title = format!(
        " Installed patches ({}, for {} binar{}) ",
        list.rows.len(),
        groups.len(),
        if groups.len() == 1 { "y" } else { "ies" }
    );
    let block = Block::bordered().title(title);
    let inner = block.inner(list_area);
    f.render_widget(block, list_area);
    let [head, body] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(inner);
    f.render_widget(
        Paragraph::new(Line::styled(
            format!("    {:<pw$} {:<vw$} {:>7}  STATE", "PATCH", "VERSION", "PATCHED"),
            theme.title(),
        )),
        head,
    );
    let widget = List::new(items).highlight_symbol("▶ ").highlight_style(theme.selected());
    let mut state = ListState::default().with_selected(selected);
    f.render_stateful_widget(widget, body, &mut state);
    detail(f, detail_area, app, theme);
}

/// The selected patch: its state in full, what it requires, what requires it, the processes that have it, where
/// its copy of the manifest is.
fn detail(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some(r) = app.installed_row() else {
        f.render_widget(Block::bordered(), area);
        return;
    };
    let list = |ids: &[String]| if ids.is_empty() { "nothing".to_string() } else { ids.join(", ") };
    let dependents = app.installed.as_ref().map(|l| l.dependents(&r.patch)).unwrap_or_default();
    let mut pids: Vec<String> = app
        .snapshot
        .rows
        .iter()
        .filter(|p| p.applied().any(|a| a.patch == r.patch))
        .map(|p| p.pid.to_string())
        .collect();
    if pids.is_empty() {
        pids.push("none".into());
    }
    let (state, style) = state_text(r, app.now, theme);
    let mut lines = vec![
        Line::from(vec![
            Span::styled(state, style),
            Span::raw(format!(" · {} of the {} processes running its build have it", r.patched, r.processes)),
        ]),
        Line::from(vec![
            Span::styled("requires ", theme.dim()),
            Span::raw(list(&r.requires)),
            Span::styled("; required by ", theme.dim()),
            Span::raw(list(&dependents)),
            Span::styled("; applied in processes ", theme.dim()),
            Span::raw(pids.join(", ")),
        ]),
        Line::from(vec![Span::styled("manifest ", theme.dim()), Span::raw(r.manifest.display().to_string())]),
    ];
    if let Some(c) = &r.canary {
        let pids = c.canaries.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
        lines.push(Line::styled(
            if c.running {
                format!("canaries {pids}: no other process gets it, new ones included, until their trial passes")
            } else {
                format!(
                    "canaries {pids}: the rollout's pannus ({}) is gone; pannus install finishes it, R rolls it back",
                    c.by
                )
            },
            theme.warn(),
        ));
    }
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!(" {} {} ", r.patch, r.version))),
        area,
    );
}
