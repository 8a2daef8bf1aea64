//! Drawing: one function per screen region, all reading [`App`] and never changing it.
//!
//! ```text
//! ┌──────────────────────────────────────────────────────────────┐
//! │ header: pannus · screen · counts                       clock │
//! ├──────────────────────────────────────────────────────────────┤
//! │ body: processes | detail | wizard | trial | journal |        │
//! │       installed (+ help or confirmation drawn over it)       │
//! ├──────────────────────────────────────────────────────────────┤
//! │ footer: last outcome / running action                        │
//! │ footer: the keys that work here (from the key table)         │
//! └──────────────────────────────────────────────────────────────┘
//! ```

mod detail;
mod installed;
mod journal;
mod processes;
mod trial;
mod wizard;

use super::app::{App, Phase, Screen};
use super::keys;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

/// Styles, with colour only as an addition to words and symbols; `NO_COLOR` drops colour.
#[derive(Debug, Clone, Copy)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    pub fn from_env() -> Theme {
        Theme { color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) }
    }
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::default().fg(c)
        } else {
            Style::default()
        }
    }
    pub fn ok(&self) -> Style {
        self.fg(Color::Green)
    }
    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }
    pub fn bad(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
    pub fn dim(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default()
        }
    }
    pub fn title(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    pub fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    pub fn header(&self) -> Style {
        if self.color {
            Style::default().bg(Color::Blue).fg(Color::White).add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }
    pub fn key(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }
}

/// The smallest terminal the console works in: below it, the screen asks for a larger one and
/// only `q` and `Esc` act.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 16;

pub fn too_small(area: Rect) -> bool {
    area.width < MIN_WIDTH || area.height < MIN_HEIGHT
}

/// Header, body, service output, notice, message and keys.
fn areas(app: &App, area: Rect) -> [Rect; 6] {
    Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(u16::from(app.output.is_some())),
        Constraint::Length(u16::from(app.fresh_notice().is_some())),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area)
}

/// Draws the whole console.
pub fn draw(f: &mut Frame, app: &App, theme: Theme) {
    let area = f.area();
    if too_small(area) {
        let waiting = app.pending.is_some() || app.wizard.as_ref().is_some_and(|w| w.confirming().is_some());
        let text = format!(
            "Please make the terminal larger: pannus needs at least {MIN_WIDTH}x{MIN_HEIGHT} (this one is {}x{}). \
             Until then only q (quit) and Esc (back{}) act.",
            area.width,
            area.height,
            if waiting { "; a confirmation is waiting: Esc cancels it" } else { "" }
        );
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let [head, body, out, notice, msg, keys_area] = areas(app, area);
    if let Some(n) = app.fresh_notice() {
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("! ", theme.warn()),
                Span::styled(n.to_string(), theme.warn()),
            ])),
            notice,
        );
    }
    if let Some(o) = &app.output {
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("service says: ", theme.dim()),
                Span::styled(o.clone(), theme.title()),
            ])),
            out,
        );
    }
    header(f, head, app, theme);
    match app.screen {
        Screen::Processes => processes::draw(f, body, app, theme),
        Screen::Detail => detail::draw(f, body, app, theme),
        Screen::Wizard => wizard::draw(f, body, app, theme),
        Screen::Trial => trial::draw(f, body, app, theme),
        Screen::Journal => journal::draw(f, body, app, theme),
        Screen::Installed => installed::draw(f, body, app, theme),
    }
    message(f, msg, app, theme);
    footer(f, keys_area, app, theme);
    if app.screen == Screen::Journal {
        journal::draw_entry(f, body, app, theme);
    }
    confirmation(f, body, app, theme);
    if app.help {
        help(f, body, app, theme);
    }
}

/// Seconds before a trial's deadline from which its countdown is drawn as urgent (with words).
pub const NEAR_DEADLINE: u64 = 30;

/// Unix seconds as a UTC time of day.
pub fn clock(now: u64) -> String {
    let t = now % 86400;
    format!("{:02}:{:02}:{:02} UTC", t / 3600, t / 60 % 60, t % 60)
}

fn header(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let patched = app.snapshot.rows.iter().filter(|r| r.applied().next().is_some()).count();
    let kernel = app.snapshot.rows.iter().filter(|r| super::app::is_kernel_thread(r)).count();
    let left = format!(
        " pannus · {} · {} processes, {} patched{}{}",
        app.screen.title(),
        app.snapshot.rows.len(),
        patched,
        if app.patched_only { " (showing patched only)" } else { "" },
        if app.kernel_threads || kernel == 0 { String::new() } else { format!(", {kernel} kernel hidden (K)") }
    );
    let right = format!("{} ", clock(app.now));
    let pad = (area.width as usize).saturating_sub(left.chars().count() + right.len());
    let text = if pad > 0 { format!("{left}{}{right}", " ".repeat(pad)) } else { left };
    f.render_widget(Paragraph::new(text).style(theme.header()), area);
}

fn message(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let line = if let Some(why) = &app.interrupted {
        Line::from(vec![
            Span::styled("✖ ", theme.bad()),
            Span::raw(format!("interrupted ({why}): the running action ends (an apply is undone), then pannus exits")),
        ])
    } else if let Some(b) = &app.busy {
        Line::from(vec![Span::styled("… ", theme.warn()), Span::raw(format!("{b} (working)"))])
    } else if let Some((ok, m)) = app.message_line() {
        let (mark, style) = if ok { ("✔ ", theme.ok()) } else { ("✖ ", theme.bad()) };
        Line::from(vec![Span::styled(mark, style), Span::raw(m.to_string())])
    } else {
        Line::from(Span::styled("ready", theme.dim()))
    };
    f.render_widget(Paragraph::new(line), area);
}

/// The keys that act now where the screen offers a choice of its own (a confirmation, a step of
/// the apply wizard), as the screen itself words them; `None` elsewhere (the key table's).
pub fn contextual_keys(app: &App) -> Option<Vec<(&'static str, String)>> {
    if let Some(c) = confirmation_of(app) {
        let cancel = c.cancel.trim().to_string();
        return Some(if confirmable(app, app.area()) {
            vec![("Enter", "proceed".into()), ("Esc", cancel)]
        } else {
            vec![("Esc", cancel), ("", "(a larger terminal shows the whole confirmation)".into())]
        });
    }
    if app.screen == Screen::Journal && app.journal_open {
        return Some(vec![("Esc Enter", "close".into())]);
    }
    let w = app.wizard.as_ref().filter(|_| app.screen == Screen::Wizard)?;
    let mut keys: Vec<(&'static str, String)> = match &w.phase {
        Phase::Pick => vec![("Enter", "pre-flight".into()), ("↑↓", "choose".into()), ("Esc", "back".into())],
        Phase::Checking => vec![],
        Phase::Report { error: None, .. } => {
            vec![("Enter", "start stage 1".into()), ("↑↓ PgUp PgDn", "scroll".into()), ("Esc", "pick another".into())]
        }
        Phase::Report { .. } => vec![("↑↓ PgUp PgDn", "scroll".into()), ("Esc", "pick another".into())],
        Phase::Running { .. } => vec![("Ctrl-C", "cancel, undo the stages done and quit".into())],
        Phase::Done { ok: true, .. } => vec![("Enter", "open the trial".into()), ("Esc", "back".into())],
        Phase::Done { .. } => vec![("Enter Esc", "back".into())],
    };
    if !matches!(w.phase, Phase::Running { .. } | Phase::Checking) {
        keys.push(("?", "help".into()));
        keys.push(("q", "quit".into()));
    }
    Some(keys)
}

fn footer(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let mut spans = Vec::new();
    if let Some(keys) = contextual_keys(app) {
        for (k, action) in keys {
            spans.push(Span::styled(k, theme.key()));
            spans.push(Span::raw(format!(" {action}  ")));
        }
    } else if app.filtering || (app.journal_searching && app.screen == Screen::Journal) {
        spans.push(Span::styled("Enter", theme.key()));
        spans.push(Span::raw(" keep filter  "));
        spans.push(Span::styled("Esc", theme.key()));
        spans.push(Span::raw(" clear filter"));
    } else {
        let target = app.key_target();
        for b in keys::for_screen(app.screen).filter(|b| b.footer) {
            if b.keys == "a" && !app.can_apply() {
                continue;
            }
            // In the installed view, R names the installed patch it uninstalls.
            if app.screen == Screen::Installed && b.keys == "R" {
                let Some(r) = app.installed_row() else { continue };
                spans.push(Span::styled(b.keys, theme.key()));
                spans.push(Span::raw(format!(" {} {}  ", b.action, r.patch)));
                continue;
            }
            let on = if b.on_patch {
                // Only when there is a patch it can act on, and then named.
                let Some((_, rec)) = target else { continue };
                let fits = match b.keys {
                    "C" => rec.state == crate::registry::State::Trial,
                    _ => rec.state.is_applied(),
                };
                if !fits {
                    continue;
                }
                format!(" {}", rec.patch)
            } else {
                String::new()
            };
            spans.push(Span::styled(b.keys, theme.key()));
            spans.push(Span::raw(format!(" {}{on}  ", b.action)));
        }
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A confirmation on screen: a stage's, or one the operator's key asked for.
struct Confirmation {
    title: String,
    text: Vec<String>,
    cancel: &'static str,
}

fn confirmation_of(app: &App) -> Option<Confirmation> {
    if let Some(p) = &app.pending {
        return Some(Confirmation {
            title: p.title.clone(),
            text: p.lines.clone(),
            cancel: " cancel (nothing is done)",
        });
    }
    let w = app.wizard.as_ref().filter(|_| app.screen == Screen::Wizard)?;
    let (stage, plan) = w.confirming()?;
    let mut text = vec![plan.to_string()];
    if stage == crate::engine::Stage::Activate && !w.trial.is_empty() {
        text.push(w.trial.clone());
    }
    Some(Confirmation {
        title: format!("Stage {} of 4: {}", stage.number(), stage.name().to_uppercase()),
        text,
        cancel: if w.done.is_empty() { " cancel (nothing done yet)" } else { " cancel and undo the stages done" },
    })
}

const PROCEED: &str = "Enter proceed    ";

/// Where the confirmation goes in `body` and its text wrapped to it; `Err` with the box when
/// the text does not fit (then it cannot be confirmed).
fn confirmation_layout(c: &Confirmation, body: Rect) -> Result<(Rect, Vec<String>), Rect> {
    let width = body.width.saturating_sub(4).min(90);
    let inner = width.saturating_sub(2) as usize;
    let mut lines = wrap_text(&c.title, inner, 0);
    lines.push(String::new());
    for t in &c.text {
        lines.extend(wrap_text(t, inner, 2));
    }
    lines.push(String::new());
    let keys = PROCEED.len() + 3 + c.cancel.len();
    let h = lines.len() + 1 + 2;
    if keys > inner || h > body.height as usize {
        return Err(centered(body, width, body.height));
    }
    Ok((centered(body, width, h as u16), lines))
}

/// Whether the apply wizard's pre-flight verdict shows whole on a terminal of `area`: only then
/// does Enter start the stages.
pub fn verdict_shown(app: &App, area: Rect) -> bool {
    if too_small(area) {
        return false;
    }
    let [_, body, ..] = areas(app, area);
    app.wizard.as_ref().is_some_and(|w| wizard::verdict_shown(body, w))
}

/// Whether the confirmation on screen, if any, shows whole on a terminal of `area`: only then
/// does Enter confirm it.
pub fn confirmable(app: &App, area: Rect) -> bool {
    if too_small(area) {
        return false;
    }
    let [_, body, ..] = areas(app, area);
    confirmation_of(app).is_none_or(|c| confirmation_layout(&c, body).is_ok())
}

fn confirmation(f: &mut Frame, body: Rect, app: &App, theme: Theme) {
    let Some(c) = confirmation_of(app) else { return };
    let block = Block::bordered().title(" Confirm ").border_style(theme.warn());
    match confirmation_layout(&c, body) {
        Ok((r, lines)) => {
            let mut text: Vec<Line> = lines.into_iter().map(Line::raw).collect();
            if let Some(first) = text.first_mut() {
                *first = first.clone().style(theme.title());
            }
            text.push(Line::from(vec![
                Span::styled("Enter", theme.key()),
                Span::raw(&PROCEED[5..]),
                Span::styled("Esc", theme.key()),
                Span::raw(c.cancel),
            ]));
            f.render_widget(Clear, r);
            f.render_widget(Paragraph::new(text).block(block), r);
        }
        Err(r) => {
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(vec![
                    Line::styled(c.title, theme.title()),
                    Line::raw(""),
                    Line::raw("This confirmation does not fit: make the terminal larger to read it."),
                    Line::from(vec![Span::styled("Esc", theme.key()), Span::raw(c.cancel)]),
                ])
                .wrap(Wrap { trim: false })
                .block(block),
                r,
            );
        }
    }
}

/// `text` word-wrapped to `width` columns, its own line breaks kept; a word longer than a line
/// is cut; continuation lines are indented by `indent`.
pub fn wrap_text(text: &str, width: usize, indent: usize) -> Vec<String> {
    let width = width.max(1);
    let ind = indent.min(width - 1);
    let mut out = Vec::new();
    for para in text.split('\n') {
        let (mut line, mut len, mut fresh) = (String::new(), 0usize, true);
        for word in para.split(' ') {
            let wlen = word.chars().count();
            if !fresh && len + 1 + wlen > width {
                out.push(std::mem::take(&mut line));
                line = " ".repeat(ind);
                (len, fresh) = (ind, true);
            }
            if !fresh {
                line.push(' ');
                len += 1;
            }
            for c in word.chars() {
                if len >= width {
                    out.push(std::mem::take(&mut line));
                    line = " ".repeat(ind);
                    len = ind;
                }
                line.push(c);
                len += 1;
            }
            fresh = false;
        }
        out.push(line);
    }
    out
}

/// A rectangle of `w` x `h` centred in `area`, clipped to it.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let [v] = Layout::vertical([Constraint::Length(h.min(area.height))]).flex(Flex::Center).areas(area);
    let [r] = Layout::horizontal([Constraint::Length(w.min(area.width))]).flex(Flex::Center).areas(v);
    r
}

fn help(f: &mut Frame, area: Rect, app: &App, theme: Theme) {
    let mut lines = vec![Line::from(Span::styled(format!("Keys on the {} screen", app.screen.title()), theme.title()))];
    for b in keys::for_screen(app.screen) {
        let on = if b.on_patch { " (the patch named in the footer)" } else { "" };
        lines.push(Line::from(vec![
            Span::styled(format!("{:>18}  ", b.keys), theme.key()),
            Span::raw(format!("{}{on}", b.action)),
        ]));
    }
    lines.push(Line::raw(""));
    for n in keys::NOTES {
        lines.push(Line::raw(*n));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled("What the words on screen mean (never colour alone):", theme.title()));
    for (word, meaning) in keys::LEGEND {
        lines.push(Line::from(vec![Span::styled(format!("{word:>18}  "), theme.title()), Span::raw(*meaning)]));
    }
    let r = centered(area, 80, lines.len() as u16 + 2);
    let inner = r.width.saturating_sub(2) as usize;
    let total: usize = lines
        .iter()
        .map(|l| wrap_text(&l.spans.iter().map(|s| s.content.as_ref()).collect::<String>(), inner, 0).len())
        .sum();
    let visible = r.height.saturating_sub(2) as usize;
    let off = app.help_scroll.min(total.saturating_sub(visible));
    let title = if total > visible {
        format!(" Help: lines {}-{} of {total} (↑↓ PgUp PgDn scroll; Esc, ? or q close) ", off + 1, off + visible)
    } else {
        " Help (Esc, ? or q close) ".to_string()
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((off.min(u16::MAX as usize) as u16, 0))
            .block(Block::bordered().title(title)),
        r,
    );
}

/// Columns that fit: each `(width, priority)`; lower priority numbers are kept first. Returns
/// which columns are shown. Columns that don't fit are dropped rather than squeezed.
pub fn fit_columns(widths: &[(u16, u8)], available: u16) -> Vec<bool> {
    let mut order: Vec<usize> = (0..widths.len()).collect();
    order.sort_by_key(|&i| widths[i].1);
    let mut shown = vec![false; widths.len()];
    let mut used = 0u16;
    for i in order {
        let w = widths[i].0 + 1;
        if used + w <= available {
            used += w;
            shown[i] = true;
        }
    }
    shown
}

/// A table's columns, `(width, priority, title)`: those that fit the width are shown (see
/// [`fit_columns`]), and the last column, when shown, takes what is left.
pub struct Columns {
    cols: &'static [(u16, u8, &'static str)],
    shown: Vec<bool>,
    titles: Vec<String>,
}

impl Columns {
    /// The columns of `cols` that fit in `width`.
    pub fn fit(cols: &'static [(u16, u8, &'static str)], width: u16) -> Columns {
        let shown = fit_columns(&cols.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>(), width);
        Columns { cols, shown, titles: cols.iter().map(|c| c.2.to_string()).collect() }
    }

    /// The column titled `title` titled `new` instead (a sort mark added, say).
    pub fn retitle(mut self, title: &str, new: String) -> Columns {
        if let Some(i) = self.cols.iter().position(|c| c.2 == title) {
            self.titles[i] = new;
        }
        self
    }

    /// A row of the shown columns' cells, out of one cell per column.
    pub fn row(&self, cells: Vec<Cell<'static>>) -> Row<'static> {
        Row::new(cells.into_iter().zip(&self.shown).filter(|(_, s)| **s).map(|(c, _)| c).collect::<Vec<_>>())
    }

    /// The table of `rows` under the shown columns' titles, the selected row highlighted.
    pub fn table(&self, rows: Vec<Row<'static>>, theme: Theme) -> Table<'static> {
        let last = self.cols.len() - 1;
        let widths: Vec<Constraint> = (0..self.cols.len())
            .filter(|&i| self.shown[i])
            .map(|i| if i == last { Constraint::Fill(1) } else { Constraint::Length(self.cols[i].0) })
            .collect();
        let header = self.row(self.titles.iter().map(|t| Cell::from(t.clone())).collect()).style(theme.title());
        Table::new(rows, widths).header(header).row_highlight_style(theme.selected())
    }
}

/// The dependency graph as plain text lines.
#[cfg(test)]
pub fn detail_graph_text(patches: &[crate::registry::PatchRecord], selected: Option<&str>) -> Vec<String> {
    detail::graph_lines(patches, selected, Theme { color: false })
        .iter()
        .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
        .collect()
}
