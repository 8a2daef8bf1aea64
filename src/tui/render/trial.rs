//! The trial: a large countdown with a gauge, the patch and process, and the two actions.

use super::{clock, Theme, NEAR_DEADLINE};
use crate::registry::State;
use crate::tui::app::App;
use crate::tui::snapshot::mmss;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Gauge, Paragraph, Wrap};
use ratatui::Frame;

/// Digits 0-9 and ':' drawn 3 cells wide and 5 high.
const FONT: [[&str; 5]; 11] = [
    ["███", "█ █", "█ █", "█ █", "███"],
    [" ██", "  █", "  █", "  █", "  █"],
    ["███", "  █", "███", "█  ", "███"],
    ["███", "  █", "███", "  █", "███"],
    ["█ █", "█ █", "███", "  █", "  █"],
    ["███", "█  ", "███", "  █", "███"],
    ["███", "█  ", "███", "█ █", "███"],
    ["███", "  █", "  █", "  █", "  █"],
    ["███", "█ █", "███", "█ █", "███"],
    ["███", "█ █", "███", "  █", "███"],
    ["   ", " █ ", "   ", " █ ", "   "],
];

/// `text` (digits and colons) in the large font.
pub fn big(text: &str) -> Vec<String> {
    (0..5)
        .map(|row| {
            text.chars()
                .filter_map(|c| match c {
                    '0'..='9' => Some(FONT[c as usize - '0' as usize][row]),
                    ':' => Some(FONT[10][row]),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

pub fn draw(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let Some((pid, id)) = &app.trial else { return };
    let row = app.snapshot.rows.iter().find(|r| r.pid.get() == *pid);
    let rec = row.and_then(|r| r.patches.iter().find(|p| &p.patch == id));
    let block = Block::bordered().title(format!(" Trial of {id} in process {pid} "));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let Some(rec) = rec else {
        f.render_widget(Paragraph::new(format!("process {pid} or patch `{id}` is gone. Esc goes back.")), inner);
        return;
    };
    let [digits, gauge, info, actions] =
        Layout::vertical([Constraint::Length(6), Constraint::Length(1), Constraint::Fill(1), Constraint::Length(2)])
            .areas(inner);
    let left = rec.trial_deadline.map(|d| d.saturating_sub(app.now)).unwrap_or(0);
    let overdue = crate::trial::deadline_reached(rec, app.now);
    let near = rec.state == State::Trial && !overdue && left <= NEAR_DEADLINE;
    let (headline, style) = match rec.state {
        State::Trial if overdue => ("OVERDUE".to_string(), theme.bad()),
        State::Trial if near => (mmss(left), theme.bad()),
        State::Trial => (mmss(left), theme.warn()),
        State::Committed => ("COMMITTED".to_string(), theme.ok()),
        State::RolledBack => ("ROLLED BACK".to_string(), theme.dim()),
        _ => (rec.state.as_str().to_uppercase(), theme.bad()),
    };
    let big_lines: Vec<Line> = if headline.chars().all(|c| c.is_ascii_digit() || c == ':') && inner.width >= 30 {
        big(&headline).into_iter().map(|l| Line::styled(l, style).centered()).collect()
    } else {
        vec![Line::raw(""), Line::raw(""), Line::styled(headline.clone(), style).centered()]
    };
    f.render_widget(Paragraph::new(big_lines), digits);
    let total = rec.trial_seconds.max(1);
    let ratio = if rec.state == State::Trial { left as f64 / total as f64 } else { 0.0 };
    f.render_widget(Gauge::default().ratio(ratio.clamp(0.0, 1.0)).label("").gauge_style(style), gauge);
    let verb = if rec.on_expiry.as_str() == "commit" { "commits" } else { "rolls back" };
    let at = rec.trial_deadline.map(clock).unwrap_or_else(|| "?".into());
    // The countdown only while there is one: never 00:00 once the trial is over.
    let summary = match rec.state {
        State::Trial if overdue => format!(
            "deadline {at} passed {} ago: the policy ({verb}) is overdue",
            mmss(app.now.saturating_sub(rec.trial_deadline.unwrap_or(app.now)))
        ),
        State::Trial if near => {
            format!("{} of {} left: {verb} at {at}, in under {NEAR_DEADLINE} s", mmss(left), mmss(total))
        }
        State::Trial => format!("{} of {} left: {verb} at {at}", mmss(left), mmss(total)),
        st => match rec.ended_at {
            Some(t) => format!("trial over: {st} at {}", clock(t)),
            None => format!("trial over: {st}"),
        },
    };
    let expiry = match rec.state {
        State::Trial if overdue => format!(
            "no trial watcher carried out the policy ({}): on this screen the console does, within 5 s",
            rec.on_expiry
        ),
        State::Trial => format!(
            "at {at} the patch will be {} (manifest's on_expiry)",
            if rec.on_expiry.as_str() == "commit" { "committed" } else { "rolled back" }
        ),
        _ => rec.note.clone().unwrap_or_else(|| format!("trial over: {}", rec.state)),
    };
    let name = row.map(|r| r.name.clone()).unwrap_or_default();
    let lines = vec![
        Line::styled(summary, if overdue || near { theme.bad() } else { theme.title() }).centered(),
        Line::from(vec![
            Span::styled("patch    ", theme.dim()),
            Span::styled(format!("{} {}", rec.patch, rec.version), theme.title()),
        ]),
        Line::from(vec![Span::styled("process  ", theme.dim()), Span::raw(format!("{pid} {name}"))]),
        Line::from(vec![Span::styled("state    ", theme.dim()), Span::raw(rec.state.as_str().to_string())]),
        Line::from(vec![Span::styled("expiry   ", theme.dim()), Span::raw(expiry)]),
        health_line(rec, theme),
        Line::from(vec![
            Span::styled("replaces ", theme.dim()),
            Span::raw(
                rec.functions
                    .iter()
                    .filter(|f| f.in_use != Some(false))
                    .map(|f| f.route())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ]),
    ];
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), info);
    let acts = if rec.state == State::Trial {
        Line::from(vec![
            Span::styled(" C", theme.key()),
            Span::raw(" commit now    "),
            Span::styled("R", theme.key()),
            Span::raw(" ROLL BACK now    "),
            Span::styled("Esc", theme.key()),
            Span::raw(" back (the trial goes on without the console)"),
        ])
    } else {
        Line::from(vec![Span::styled(" Esc", theme.key()), Span::raw(" back")])
    };
    f.render_widget(Paragraph::new(acts).wrap(Wrap { trim: false }), actions);
}

fn health_line(rec: &crate::registry::PatchRecord, theme: Theme) -> Line<'static> {
    let label = Span::styled("health   ", theme.dim());
    let Some(h) = &rec.health_check else {
        return Line::from(vec![label, Span::raw("no health check in the manifest")]);
    };
    let every = format!("`{}` every {} ms", h.command, h.interval_ms);
    match &rec.health {
        None => Line::from(vec![label, Span::raw(format!("{every}: no run yet"))]),
        Some(st) if st.failing == 0 => {
            Line::from(vec![label, Span::styled("OK ", theme.ok()), Span::raw(format!("{} run(s), {every}", st.runs))])
        }
        Some(st) => Line::from(vec![
            label,
            Span::styled(format!("FAILING {}/{} ", st.failing, h.failures), theme.bad()),
            Span::raw(format!("{} (rolls back at {} in a row)", st.last, h.failures)),
        ]),
    }
}
