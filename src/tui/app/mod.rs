//! The console's state and what each key does to it. Drawing lives in `render/` and only reads
//! this state; work on processes is handed to the job thread as [`Job`]s.

use super::installed::{List as InstalledList, Row as InstalledRow};
use super::jobs::{Event, Job};
use super::snapshot::{Badge, Snapshot};
use crate::engine::{CheckLine, Stage};
use crate::journal::{Entry, Recorded};
use crate::manifest::Manifest;
use crate::processes::Process;
use crate::registry::{PatchRecord, State};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

mod installed_view;
mod journal_view;
mod wizard;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Processes,
    Detail,
    Wizard,
    Trial,
    Journal,
    /// The installed patches, per binary.
    Installed,
}

impl Screen {
    pub fn title(self) -> &'static str {
        match self {
            Screen::Processes => "Processes",
            Screen::Detail => "Process",
            Screen::Wizard => "Apply",
            Screen::Trial => "Trial",
            Screen::Journal => "Journal",
            Screen::Installed => "Installed patches",
        }
    }
}

/// What the process list is sorted by (`s` moves to the next, `I` reverses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    /// Patches on trial (or overdue, or stopped between stages) first, then committed ones,
    /// then the rest, each in pid order.
    #[default]
    State,
    Pid,
    Name,
    Threads,
    User,
}

impl SortBy {
    pub fn next(self) -> SortBy {
        match self {
            SortBy::State => SortBy::Pid,
            SortBy::Pid => SortBy::Name,
            SortBy::Name => SortBy::Threads,
            SortBy::Threads => SortBy::User,
            SortBy::User => SortBy::State,
        }
    }

    /// The title of the column sorted by.
    pub fn column(self) -> &'static str {
        match self {
            SortBy::State => "STATE",
            SortBy::Pid => "PID",
            SortBy::Name => "NAME",
            SortBy::Threads => "THR",
            SortBy::User => "USER",
        }
    }

    fn order(self, a: &Process, b: &Process, now: u64) -> std::cmp::Ordering {
        let rank = |r: &Process| match Badge::of(r, now) {
            Badge::Partial | Badge::Overdue | Badge::Trial(_) => 0,
            Badge::Active => 1,
            Badge::None => 2,
        };
        match self {
            SortBy::State => rank(a).cmp(&rank(b)),
            SortBy::Pid => std::cmp::Ordering::Equal,
            SortBy::Name => a.name.to_lowercase().cmp(&b.name.to_lowercase()),
            SortBy::Threads => a.threads.cmp(&b.threads),
            SortBy::User => a.owner().cmp(&b.owner()),
        }
        .then(a.pid.cmp(&b.pid))
    }
}

/// Which pane of the detail screen has the focus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Patches,
    Functions,
    Graph,
}

/// A manifest found in the manifests folder, with what it says or why it is unusable.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestFile {
    pub path: PathBuf,
    pub summary: Result<String, String>,
    /// How it fits the process the wizard is for.
    pub fit: Fit,
}

/// How a manifest fits a process, best first: the picker lists them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fit {
    /// The process maps the manifest's object, and the file has the manifest's build-id.
    Matches,
    /// The process maps the object, but the file has another build-id.
    OtherBuild,
    /// The process does not map the manifest's object.
    NotMapped,
    /// The manifest is unusable, or the process could not be read.
    Unknown,
}

impl Fit {
    pub fn text(self) -> &'static str {
        match self {
            Fit::Matches => "[matches this process]",
            Fit::OtherBuild => "[other build than this process's]",
            Fit::NotMapped => "[not for this process's objects]",
            Fit::Unknown => "",
        }
    }
}

/// How `m` fits process `pid`, whose mapped files are `mapped`.
fn fit(m: &Manifest, mapped: &[String]) -> Fit {
    let object = std::fs::canonicalize(&m.target.object).unwrap_or_else(|_| m.target.object.clone());
    if !mapped.iter().any(|p| Path::new(p) == object) {
        return Fit::NotMapped;
    }
    let on_disk = crate::elf::Object::load_tables(&object, "target object").ok().and_then(|o| o.build_id);
    if on_disk.is_some_and(|b| b.eq_ignore_ascii_case(&m.target.build_id)) {
        Fit::Matches
    } else {
        Fit::OtherBuild
    }
}

/// The files process `pid` maps, from `/proc/PID/maps`.
fn mapped_files(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut files: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5).map(|_| l))
        .filter_map(|l| l.find('/').map(|i| l[i..].trim_end_matches(" (deleted)").to_string()))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Where the apply wizard is.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Pick,
    Checking,
    Report {
        lines: Vec<CheckLine>,
        error: Option<String>,
    },
    /// The apply job runs; `confirm` holds the stage waiting for Enter or Esc.
    Running {
        confirm: Option<(Stage, String)>,
    },
    Done {
        ok: bool,
        message: String,
    },
}

impl Wizard {
    /// The stage waiting for Enter or Esc, and its plan.
    pub fn confirming(&self) -> Option<(Stage, &str)> {
        match &self.phase {
            Phase::Running { confirm: Some((stage, plan)) } => Some((*stage, plan.as_str())),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Wizard {
    pub pid: i32,
    pub files: Vec<ManifestFile>,
    pub index: usize,
    pub phase: Phase,
    pub patch: String,
    /// Stages finished, in order.
    pub done: Vec<Stage>,
    /// The stage running now.
    pub current: Option<Stage>,
    pub log: Vec<String>,
    /// The first line of the pre-flight report shown.
    pub scroll: usize,
    /// The trial stage 4 starts, in words (from the manifest, once checked).
    pub trial: String,
    /// Stages done, then undone (a failure or a cancellation after them).
    pub undone: Vec<Stage>,
}

pub struct App {
    pub screen: Screen,
    pub help: bool,
    /// The first line of the help shown.
    pub help_scroll: usize,
    pub snapshot: Snapshot,
    pub filter: String,
    pub filtering: bool,
    pub patched_only: bool,
    /// Kernel threads listed too (hidden by default: nothing to patch there).
    pub kernel_threads: bool,
    /// The process list's order, and whether it is reversed.
    pub sort: SortBy,
    pub sort_reversed: bool,
    /// The selected process, by pid so that it survives refreshes.
    pub selected: Option<i32>,
    /// The process the detail view was opened for: it stays on it whatever the list shows.
    pub detail: Option<i32>,
    pub detail_patch: usize,
    pub pane: Pane,
    pub wizard: Option<Wizard>,
    pub trial: Option<(i32, String)>,
    /// The journal, oldest first, each entry with the part of pannus that acted.
    pub journal: Vec<Recorded>,
    pub journal_offset: usize,
    /// The journal's search (`/`), and whether it is being typed.
    pub journal_search: String,
    pub journal_searching: bool,
    /// The selected entry shown whole.
    pub journal_open: bool,
    /// The last outcome, shown in the footer, and when (Unix seconds): a success for
    /// [`MESSAGE_OK_SECS`], a failure for [`NOTICE_SECS`].
    pub message: Option<(bool, String)>,
    pub message_at: u64,
    /// A change to a patch that this console did not make (a trial watcher's commit or
    /// rollback, another pannus), and when it was seen; shown for [`NOTICE_SECS`].
    pub notice: Option<(u64, String)>,
    /// Whether that notice is about the process the engineer looks at (selected, or open).
    pub notice_focused: bool,
    /// Patches this console's own jobs changed, not to be reported as notices.
    own: Vec<(i32, String)>,
    /// A job is running (one at a time).
    pub busy: Option<String>,
    pub manifests_dir: PathBuf,
    /// Unix seconds, set by the event loop (fixed in tests).
    pub now: u64,
    pub quit: bool,
    confirm_reply: Option<Sender<bool>>,
    /// Visible rows of the current list, set by the renderer's layout (for paging).
    pub page: usize,
    /// The last line a watched service printed (the demo's).
    pub output: Option<String>,
    /// The expired trial the console already acted on.
    expiry_handled: Option<(i32, String)>,
    /// A confirmation on screen, and the job Enter starts.
    pub pending: Option<Pending>,
    /// The terminal's size as last drawn (columns, rows).
    pub size: (u16, u16),
    /// Why the console was interrupted (Ctrl-C during an action, a signal): it exits, non-zero,
    /// once the running job has ended.
    pub interrupted: Option<String>,
    /// The installed patches, once read (only while their view is open: see `tui::run`).
    pub installed: Option<InstalledList>,
    /// The installed patch selected in their view, by id so that it survives refreshes.
    pub installed_selected: Option<String>,
    /// The patches, by process, the running uninstall rolls back: not to be reported as
    /// notices, whenever the snapshot shows them rolled back.
    uninstalling: Vec<(i32, String)>,
}

/// A confirmation: what will be done, and the job that does it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub title: String,
    pub lines: Vec<String>,
    pub job: Job,
}

/// How long a success stays in the footer, in seconds.
pub const MESSAGE_OK_SECS: u64 = 10;
/// How long a failure or a notice stays in the footer, in seconds.
pub const NOTICE_SECS: u64 = 60;

/// The journal's fields a search word `FIELD:VALUE` names.
pub const JOURNAL_FIELDS: &[&str] = &["pid", "patch", "outcome", "source", "action", "user"];

/// Whether journal entry `r` matches search word `w` (lower case).
fn journal_matches(r: &Recorded, w: &str) -> bool {
    let e: &Entry = &r.entry;
    if let Some((field, value)) = w.split_once(':').filter(|(f, _)| JOURNAL_FIELDS.contains(f)) {
        return match field {
            "pid" => e.pid.to_string() == value,
            "patch" => e.patch.as_deref().is_some_and(|p| p.to_lowercase() == value),
            "outcome" => e.outcome.to_lowercase() == value,
            "source" => r.source.to_lowercase() == value,
            "action" => e.action.to_lowercase() == value,
            _ => e.user.to_lowercase() == value,
        };
    }
    [&e.time, &e.user, &e.action, &e.process, &e.outcome, &e.detail, &r.source]
        .iter()
        .any(|f| f.to_lowercase().contains(w))
        || e.pid.to_string().contains(w)
        || e.patch.as_ref().is_some_and(|p| p.to_lowercase().contains(w))
}

/// A kernel thread: hidden unless asked for (`K`).
pub fn is_kernel_thread(p: &Process) -> bool {
    p.kernel_thread
}

/// A process without an executable (a kernel thread, a zombie): nothing to patch.
pub fn has_no_executable(p: &Process) -> bool {
    p.exe.is_empty()
}

/// A process whose executable was replaced or removed on disk since it started: what it runs
/// is no longer the file at its path.
pub fn binary_replaced(p: &Process) -> bool {
    p.exe.ends_with(" (deleted)")
}

/// The applied patches of `patches` that require `id`, directly or not, newest first.
pub fn dependents(patches: &[PatchRecord], id: &str) -> Vec<String> {
    let mut order = vec![id.to_string()];
    let mut k = 0;
    while k < order.len() {
        let cur = order[k].clone();
        for p in patches.iter().filter(|p| p.state.is_applied()) {
            if p.requires.contains(&cur) && !order.contains(&p.patch) {
                order.push(p.patch.clone());
            }
        }
        k += 1;
    }
    order.remove(0);
    order.sort_by_key(|d| std::cmp::Reverse(patches.iter().find(|p| &p.patch == d).map(|p| p.seq).unwrap_or(0)));
    order
}

impl App {
    pub fn new(manifests_dir: PathBuf) -> App {
        App {
            screen: Screen::Processes,
            help: false,
            help_scroll: 0,
            snapshot: Snapshot::default(),
            filter: String::new(),
            filtering: false,
            patched_only: false,
            kernel_threads: false,
            sort: SortBy::default(),
            sort_reversed: false,
            selected: None,
            detail: None,
            detail_patch: 0,
            pane: Pane::Patches,
            wizard: None,
            trial: None,
            journal: Vec::new(),
            journal_offset: 0,
            journal_search: String::new(),
            journal_searching: false,
            journal_open: false,
            message: None,
            message_at: 0,
            notice: None,
            notice_focused: false,
            own: Vec::new(),
            busy: None,
            manifests_dir,
            now: 0,
            quit: false,
            confirm_reply: None,
            page: 10,
            output: None,
            expiry_handled: None,
            pending: None,
            size: (80, 24),
            interrupted: None,
            installed: None,
            installed_selected: None,
            uninstalling: Vec::new(),
        }
    }

    /// The rows the process list shows, after the filter and the patched-only and kernel-thread
    /// toggles, in the order of [`App::sort`]: by default processes with a patch in trial (or
    /// stopped between stages) first, then those with committed patches, then the others, each
    /// in pid order; a child forked from a patched process right under its parent.
    pub fn visible(&self) -> Vec<&Process> {
        let f = self.filter.to_lowercase();
        let mut rows: Vec<&Process> = self
            .snapshot
            .rows
            .iter()
            .filter(|r| self.kernel_threads || !is_kernel_thread(r))
            .filter(|r| !self.patched_only || r.applied().next().is_some())
            .filter(|r| {
                f.is_empty()
                    || r.pid.to_string().contains(&f)
                    || r.name.to_lowercase().contains(&f)
                    || r.patches.iter().any(|p| p.patch.contains(&f))
            })
            .collect();
        rows.sort_by(|a, b| {
            let o = self.sort.order(a, b, self.now);
            if self.sort_reversed {
                o.reverse()
            } else {
                o
            }
        });
        crate::processes::forks_after_parents(rows, |r| r)
    }

    pub fn selected_index(&self) -> Option<usize> {
        let v = self.visible();
        self.selected.and_then(|pid| v.iter().position(|r| r.pid.get() == pid))
    }

    pub fn selected_row(&self) -> Option<&Process> {
        let pid = self.selected?;
        self.snapshot.rows.iter().find(|r| r.pid.get() == pid)
    }

    /// The process the detail view shows, listed or not; `None` once it has exited.
    pub fn detail_row(&self) -> Option<&Process> {
        let pid = self.detail?;
        self.snapshot.rows.iter().find(|r| r.pid.get() == pid)
    }

    /// The process the keys of the current screen act on: the one the detail view was opened
    /// for, or the selected row of the list.
    fn acted_on(&self) -> Option<&Process> {
        match self.screen {
            Screen::Detail => self.detail_row(),
            _ => self.selected_row(),
        }
    }

    /// Takes a new snapshot; the selection stays on the same pid when it is still listed.
    pub fn set_snapshot(&mut self, s: Snapshot) {
        self.notice_changes(&s);
        self.snapshot = s;
        self.fix_selection();
        if let Some(row) = self.detail_row() {
            let n = row.patches.len();
            if self.detail_patch >= n {
                self.detail_patch = n.saturating_sub(1);
            }
        }
    }

    /// Keeps the selection on a listed process; when the selected one left the list (rolled
    /// back under "patched only", exited), says so rather than move silently.
    fn fix_selection(&mut self) {
        if self.selected_index().is_some() {
            return;
        }
        let gone = self.selected;
        self.selected = self.visible().first().map(|r| r.pid.get());
        if let (Some(gone), Some(now), Screen::Processes) = (gone, self.selected, self.screen) {
            self.say(true, format!("process {gone} is no longer listed: the selection moved to process {now}"));
        }
    }

    fn move_selection(&mut self, delta: isize) {
        let v = self.visible();
        if v.is_empty() {
            return;
        }
        let i = self.selected_index().unwrap_or(0) as isize;
        let j = (i + delta).clamp(0, v.len() as isize - 1) as usize;
        self.selected = Some(v[j].pid.get());
    }

    /// Whether `a` has a process to apply a patch to here.
    pub fn can_apply(&self) -> bool {
        self.acted_on().is_some_and(|r| !is_kernel_thread(r) && !has_no_executable(r))
    }

    /// The terminal as last drawn.
    pub fn area(&self) -> ratatui::layout::Rect {
        ratatui::layout::Rect::new(0, 0, self.size.0, self.size.1)
    }

    /// Whether Enter may confirm what is on screen: only when it shows whole.
    fn may_confirm(&mut self) -> bool {
        let ok = super::render::confirmable(self, self.area());
        if !ok {
            self.say(false, "the confirmation does not fit: make the terminal larger (Esc cancels)");
        }
        ok
    }

    fn say(&mut self, ok: bool, text: impl Into<String>) {
        self.message = Some((ok, text.into()));
        self.message_at = self.now;
    }

    /// The footer's outcome line now, while it is fresh: `(ok, text)`.
    pub fn message_line(&self) -> Option<(bool, &str)> {
        self.message
            .as_ref()
            .filter(|(ok, _)| {
                self.now.saturating_sub(self.message_at) < if *ok { MESSAGE_OK_SECS } else { NOTICE_SECS }
            })
            .map(|(ok, m)| (*ok, m.as_str()))
    }

    /// The last notice, while it is fresh: shown on a line of its own above the outcome line.
    pub fn fresh_notice(&self) -> Option<&str> {
        self.notice.as_ref().filter(|(at, _)| self.now.saturating_sub(*at) < NOTICE_SECS).map(|(_, n)| n.as_str())
    }

    /// What changed in the patches between the last snapshot and `new` that this console did
    /// not do itself, as one notice.
    fn notice_changes(&mut self, new: &Snapshot) {
        if self.snapshot.rows.is_empty() {
            return;
        }
        // What happens to the process the engineer is looking at comes first, and a fresh
        // notice about it is not pushed out by changes in other processes.
        let focus = self.detail.or(self.selected);
        let mut seen = Vec::new();
        for row in &new.rows {
            let Some(old) = self.snapshot.rows.iter().find(|r| r.pid == row.pid) else { continue };
            let pid = row.pid.get();
            for p in &row.patches {
                let before = old.patches.iter().find(|o| o.patch == p.patch && o.seq == p.seq).map(|o| o.state);
                if before == Some(p.state) {
                    continue;
                }
                if let Some(i) = self.own.iter().position(|(op, id)| *op == pid && *id == p.patch) {
                    if matches!(p.state, State::Committed | State::RolledBack | State::Trial) {
                        self.own.remove(i);
                    }
                    continue;
                }
                let why = p.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
                let what = match (before, p.state) {
                    (_, State::Committed) => format!("`{}` was committed in process {pid}{why}", p.patch),
                    (_, State::RolledBack) => format!("`{}` was rolled back in process {pid}{why}", p.patch),
                    (None, State::Trial) => format!("`{}` was applied to process {pid} by another pannus", p.patch),
                    _ => continue,
                };
                seen.push((Some(pid) == focus, what));
            }
        }
        seen.sort_by_key(|(focused, _)| !focused);
        let Some((focused, first)) = seen.first() else { return };
        if !focused && self.notice_focused && self.fresh_notice().is_some() {
            return;
        }
        let more =
            if seen.len() > 1 { format!(" (and {} more: see the journal, J)", seen.len() - 1) } else { String::new() };
        self.notice = Some((self.now, format!("NOTICE: {first}{more}")));
        self.notice_focused = *focused;
    }

    /// Whether a job runs or a confirmation waits: what Ctrl-C interrupts.
    pub fn working(&self) -> bool {
        self.busy.is_some() || self.pending.is_some() || self.confirm_reply.is_some()
    }

    /// Ctrl-C during an action, SIGINT, SIGTERM or SIGHUP: "no" to any confirmation waiting
    /// and to every later one of the running apply, which then undoes the stages it did; the
    /// console exits once the running job has ended. The caller also has the job thread answer
    /// "no" from now on.
    pub fn interrupt(&mut self, why: &str) {
        self.pending = None;
        if let Some(w) = self.wizard.as_mut() {
            if let Some((stage, _)) = w.confirming() {
                w.log.push(format!("{stage}: {why}: cancelled; undoing the stages already done"));
                w.phase = Phase::Running { confirm: None };
            }
        }
        if let Some(reply) = self.confirm_reply.take() {
            let _ = reply.send(false);
        }
        self.interrupted.get_or_insert_with(|| why.to_string());
        self.quit = true;
    }

    /// Handles a key; returns the job to start, if any.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Job> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            if self.working() {
                self.interrupt("Ctrl-C");
            } else {
                self.quit = true;
            }
            return None;
        }
        if self.interrupted.is_some() {
            return None;
        }
        // Below the minimum size nothing on screen can be read whole: only q and Esc act.
        if super::render::too_small(self.area()) && !matches!(key.code, KeyCode::Esc | KeyCode::Char('q')) {
            return None;
        }
        if self.help {
            match key.code {
                KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q') | KeyCode::Enter => {
                    self.help = false;
                    self.help_scroll = 0;
                }
                KeyCode::Up | KeyCode::Char('k') => self.help_scroll = self.help_scroll.saturating_sub(1),
                KeyCode::Down | KeyCode::Char('j') => self.help_scroll = self.help_scroll.saturating_add(1),
                KeyCode::PageUp => self.help_scroll = self.help_scroll.saturating_sub(self.page.max(1)),
                KeyCode::PageDown => self.help_scroll = self.help_scroll.saturating_add(self.page.max(1)),
                KeyCode::Home => self.help_scroll = 0,
                KeyCode::End => self.help_scroll = usize::MAX,
                _ => {}
            }
            // At most the help's length (drawing stops at its last screenful).
            let len =
                super::keys::for_screen(self.screen).count() + super::keys::NOTES.len() + super::keys::LEGEND.len() + 4;
            self.help_scroll = self.help_scroll.min(len);
            return None;
        }
        // A confirmation takes every key until it is answered.
        if let Some(job) = self.on_confirm_key(key) {
            return job;
        }
        if let Some(job) = self.on_pending_key(key) {
            return job;
        }
        if self.filtering {
            match key.code {
                KeyCode::Esc => {
                    self.filtering = false;
                    self.filter.clear();
                }
                KeyCode::Enter => self.filtering = false,
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => {
                    self.filter.push(c);
                    // The selection follows the first match as you type.
                    self.selected = self.visible().first().map(|r| r.pid.get());
                }
                KeyCode::Up | KeyCode::Down => self.move_selection(if key.code == KeyCode::Up { -1 } else { 1 }),
                _ => {}
            }
            return None;
        }
        if self.journal_searching && self.screen == Screen::Journal {
            self.on_journal_search_key(key);
            return None;
        }
        match key.code {
            KeyCode::Char('?') => {
                self.help = true;
                return None;
            }
            KeyCode::Char('q') if self.busy.is_some() => {
                self.say(false, "an action is running: wait for it, or Ctrl-C cancels it (stages done are undone)");
                return None;
            }
            KeyCode::Char('q') => {
                self.quit = true;
                return None;
            }
            _ => {}
        }
        match self.screen {
            Screen::Processes => self.on_processes_key(key),
            Screen::Detail => self.on_detail_key(key),
            Screen::Wizard => self.on_wizard_key(key),
            Screen::Trial => self.on_trial_key(key),
            Screen::Journal => {
                self.on_journal_key(key);
                None
            }
            Screen::Installed => self.on_installed_key(key),
        }
    }

    fn on_confirm_key(&mut self, key: KeyEvent) -> Option<Option<Job>> {
        let stage = self.wizard.as_ref()?.confirming()?.0;
        let answer = match key.code {
            KeyCode::Enter | KeyCode::Char('y') if !self.may_confirm() => return Some(None),
            KeyCode::Enter | KeyCode::Char('y') => true,
            KeyCode::Esc | KeyCode::Char('n') => false,
            _ => return Some(None),
        };
        let w = self.wizard.as_mut()?;
        w.phase = Phase::Running { confirm: None };
        if answer {
            w.current = Some(stage);
            w.log.push(format!("{stage}: confirmed"));
        } else {
            w.log.push(format!("{stage}: cancelled; undoing the stages already done"));
        }
        if let Some(reply) = self.confirm_reply.take() {
            let _ = reply.send(answer);
        }
        Some(None)
    }

    /// The emergency rollback and commit keys shared by the list and detail screens.
    fn action_key(&mut self, key: KeyEvent) -> Option<Job> {
        if key.code == KeyCode::Char('J') {
            self.screen = Screen::Journal;
            self.journal_offset = usize::MAX;
            return None;
        }
        let Some(row) = self.acted_on() else {
            if self.screen == Screen::Detail && matches!(key.code, KeyCode::Char('R' | 'C' | 'a' | 't')) {
                let pid = self.detail.unwrap_or(0);
                self.say(false, format!("process {pid} has exited: nothing to act on (Esc goes back)"));
            }
            return None;
        };
        let pid = row.pid.get();
        match key.code {
            KeyCode::Char('R') => self.rollback_key(),
            KeyCode::Char('C') => self.commit_key(),
            KeyCode::Char('a') if is_kernel_thread(row) || has_no_executable(row) => {
                let what = if is_kernel_thread(row) {
                    "is a kernel thread"
                } else if row.state == 'Z' {
                    "is a zombie (it has exited)"
                } else {
                    "has no executable pannus can read"
                };
                self.say(false, format!("process {pid} {what}: nothing to patch"));
                None
            }
            KeyCode::Char('a') => {
                self.open_wizard(pid);
                None
            }
            KeyCode::Char('t') => {
                let p = row.applied().filter(|p| p.state == crate::registry::State::Trial).max_by_key(|p| p.seq);
                match p.map(|p| p.patch.clone()) {
                    Some(patch) => {
                        self.trial = Some((pid, patch));
                        self.screen = Screen::Trial;
                    }
                    None => self.say(false, format!("process {pid} has no patch on trial")),
                }
                None
            }
            _ => None,
        }
    }

    /// The patch `R` and `C` act on here, with its process: the highlighted patch in the process
    /// view, the trial's patch on the trial screen, the newest applied patch of the selected row
    /// in the list. The footer names it.
    pub fn key_target(&self) -> Option<(i32, &PatchRecord)> {
        let (row, rec) = match self.screen {
            Screen::Detail => {
                let row = self.detail_row()?;
                (row, row.patches.get(self.detail_patch)?)
            }
            Screen::Trial => {
                let (pid, id) = self.trial.as_ref()?;
                let row = self.snapshot.rows.iter().find(|r| r.pid.get() == *pid)?;
                (row, row.patches.iter().find(|p| &p.patch == id)?)
            }
            Screen::Processes => {
                let row = self.selected_row()?;
                (row, row.latest()?)
            }
            _ => return None,
        };
        Some((row.pid.get(), rec))
    }

    fn refuse_busy(&mut self) -> bool {
        if self.busy.is_some() {
            self.say(false, "busy: wait for the running action to finish");
        }
        self.busy.is_some()
    }

    /// `R`: rolls back [`App::key_target`] at once; when other patches require it, asks first,
    /// naming them (they are rolled back with it, newest first).
    fn rollback_key(&mut self) -> Option<Job> {
        if self.refuse_busy() {
            return None;
        }
        let Some((pid, rec)) = self.key_target() else {
            let what = self.acted_on().map(|r| format!("process {}", r.pid)).unwrap_or("this screen".into());
            self.say(false, format!("{what} has no patch applied: nothing to roll back"));
            return None;
        };
        let patch = rec.patch.clone();
        if !rec.state.is_applied() {
            self.say(false, format!("`{patch}` is already rolled back in process {pid}: nothing to roll back"));
            return None;
        }
        let cascade = self
            .snapshot
            .rows
            .iter()
            .find(|r| r.pid.get() == pid)
            .map(|r| dependents(&r.patches, &patch))
            .unwrap_or_default();
        let job = Job::Rollback { pid, patch: patch.clone(), cascade: cascade.clone() };
        if cascade.is_empty() {
            self.busy = Some(format!("rolling back `{patch}` in {pid}"));
            return Some(job);
        }
        let names = cascade.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ");
        self.pending = Some(Pending {
            title: format!("Roll back {patch} in process {pid}"),
            lines: vec![
                format!("{names} requires it (directly or through another patch)."),
                format!("Enter rolls back {names} and then `{patch}`, newest first."),
            ],
            job,
        });
        None
    }

    /// `C`: commits [`App::key_target`], when it is on trial.
    fn commit_key(&mut self) -> Option<Job> {
        if self.refuse_busy() {
            return None;
        }
        let Some((pid, rec)) = self.key_target() else {
            let what = self.acted_on().map(|r| format!("process {}", r.pid)).unwrap_or("this screen".into());
            self.say(false, format!("{what} has no patch on trial to commit"));
            return None;
        };
        let patch = rec.patch.clone();
        if rec.state != crate::registry::State::Trial {
            let state = rec.state;
            let more = if self.screen == Screen::Processes { " (Enter opens the process to pick another)" } else { "" };
            self.say(false, format!("`{patch}` in process {pid} is {state}: only a patch on trial is committed{more}"));
            return None;
        }
        let with = self
            .snapshot
            .rows
            .iter()
            .find(|r| r.pid.get() == pid)
            .map(|r| crate::registry::required_in_trial(&r.patches, &patch))
            .unwrap_or_default();
        let job =
            Job::Commit { pid, patch: patch.clone(), with: with.clone(), note: "committed from the console".into() };
        if with.is_empty() {
            self.busy = Some(format!("committing `{patch}` in {pid}"));
            return Some(job);
        }
        // Their rollback at their deadline would take the committed patch along: both or none.
        let names = with.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ");
        self.pending = Some(Pending {
            title: format!("Commit {patch} in process {pid}"),
            lines: vec![
                format!("`{patch}` requires {names}, still on trial: rolled back at its deadline,"),
                format!("it would take `{patch}` along. Enter commits {names} and then `{patch}`."),
            ],
            job,
        });
        None
    }

    /// Keys while a confirmation waits: Enter (or `y`) does what it says, Esc (or `n`) nothing.
    fn on_pending_key(&mut self, key: KeyEvent) -> Option<Option<Job>> {
        self.pending.as_ref()?;
        match key.code {
            KeyCode::Enter | KeyCode::Char('y') => {
                if !self.may_confirm() {
                    return Some(None);
                }
                let p = self.pending.take()?;
                match &p.job {
                    Job::Rollback { pid, patch, .. } => {
                        self.busy = Some(format!("rolling back `{patch}` and what requires it in {pid}"))
                    }
                    Job::Commit { pid, patch, .. } => {
                        self.busy = Some(format!("committing `{patch}` and what it requires in {pid}"))
                    }
                    Job::Uninstall { patch, with } => self.start_uninstall(patch.clone(), with.clone()),
                    _ => {}
                }
                Some(Some(p.job))
            }
            KeyCode::Esc | KeyCode::Char('n') => {
                self.pending = None;
                self.say(true, "cancelled: nothing was done");
                Some(None)
            }
            _ => Some(None),
        }
    }

    fn on_processes_key(&mut self, key: KeyEvent) -> Option<Job> {
        match key.code {
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-(self.page as isize)),
            KeyCode::PageDown => self.move_selection(self.page as isize),
            KeyCode::Home => self.move_selection(isize::MIN / 2),
            KeyCode::End => self.move_selection(isize::MAX / 2),
            KeyCode::Char('/') => {
                self.filtering = true;
            }
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('p') => {
                self.patched_only = !self.patched_only;
                self.fix_selection();
            }
            KeyCode::Char('K') => {
                self.kernel_threads = !self.kernel_threads;
                self.fix_selection();
            }
            // The selection stays on its process, wherever the new order puts it.
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('I') => self.sort_reversed = !self.sort_reversed,
            KeyCode::Char('i') => {
                self.screen = Screen::Installed;
                self.fix_installed_selection();
            }
            KeyCode::Enter => {
                if let Some((pid, n)) = self.selected_row().map(|r| (r.pid.get(), r.patches.len())) {
                    self.detail_patch = n.saturating_sub(1);
                    self.detail = Some(pid);
                    self.screen = Screen::Detail;
                    self.pane = Pane::Patches;
                }
            }
            _ => return self.action_key(key),
        }
        None
    }

    fn on_detail_key(&mut self, key: KeyEvent) -> Option<Job> {
        let n = self.detail_row().map(|r| r.patches.len()).unwrap_or(0);
        match key.code {
            KeyCode::Esc => {
                self.screen = Screen::Processes;
                if self.detail.is_some_and(|pid| self.visible().iter().any(|r| r.pid.get() == pid)) {
                    self.selected = self.detail;
                }
            }
            KeyCode::Tab => {
                self.pane = match self.pane {
                    Pane::Patches => Pane::Functions,
                    Pane::Functions => Pane::Graph,
                    Pane::Graph => Pane::Patches,
                }
            }
            KeyCode::Up | KeyCode::Char('k') => self.detail_patch = self.detail_patch.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.detail_patch = (self.detail_patch + 1).min(n.saturating_sub(1)),
            KeyCode::Enter => {
                let trial = self
                    .detail_row()
                    .and_then(|r| r.patches.get(self.detail_patch).map(|p| (r.pid.get(), p)))
                    .filter(|(_, p)| p.state == crate::registry::State::Trial)
                    .map(|(pid, p)| (pid, p.patch.clone()));
                if let Some(t) = trial {
                    self.trial = Some(t);
                    self.screen = Screen::Trial;
                }
            }
            _ => return self.action_key(key),
        }
        None
    }

    /// Work the clock starts: the trial shown on the trial screen ran out and no trial watcher
    /// carried out its policy (it normally does at the deadline), so the console does.
    pub fn tick(&mut self) -> Option<Job> {
        if self.busy.is_some() || self.screen != Screen::Trial {
            return None;
        }
        let (pid, id) = self.trial.clone()?;
        if self.expiry_handled.as_ref() == Some(&(pid, id.clone())) {
            return None;
        }
        let rec = self.snapshot.rows.iter().find(|r| r.pid.get() == pid)?.patches.iter().find(|p| p.patch == id)?;
        if rec.state != crate::registry::State::Trial || self.now < rec.trial_deadline? + 5 {
            return None;
        }
        let policy = rec.on_expiry;
        self.expiry_handled = Some((pid, id.clone()));
        self.busy = Some(format!("trial of `{id}` expired: applying its policy ({policy})"));
        Some(Job::Expire { pid, patch: id })
    }

    /// Takes a report from the job thread.
    pub fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Progress { stage, msg } => {
                if let Some(w) = self.wizard.as_mut() {
                    if let Some(s) = stage {
                        if !w.done.contains(&s) {
                            w.done.push(s);
                            w.current = None;
                        }
                    }
                    w.log.push(match stage {
                        Some(s) => format!("{s}: {msg}"),
                        None => msg,
                    });
                } else {
                    self.say(true, msg);
                }
            }
            Event::Waiting { pid, holder } => {
                let what = self.busy.take().unwrap_or_else(|| "the action".into());
                self.busy = Some(format!("{what}: waiting for {holder}, which holds process {pid}"));
            }
            Event::Confirm { reply, .. } if self.interrupted.is_some() => {
                let _ = reply.send(false);
            }
            Event::Confirm { stage, plan, reply } => match self.wizard.as_mut() {
                Some(w) => {
                    w.phase = Phase::Running { confirm: Some((stage, plan)) };
                    self.confirm_reply = Some(reply);
                }
                None => {
                    let _ = reply.send(false);
                }
            },
            Event::Checked { pid, patch, trial, lines, error } => {
                self.busy = None;
                if let Some(w) = self.wizard.as_mut().filter(|w| w.pid == pid) {
                    w.patch = patch;
                    w.trial = trial;
                    w.phase = Phase::Report { lines, error: error.map(|e| e.to_string()) };
                }
            }
            Event::Applied { pid, result } => {
                self.busy = None;
                if let Ok(patch) = &result {
                    self.own.push((pid, patch.clone()));
                }
                let (ok, message) = match &result {
                    Ok(patch) => (true, format!("patch `{patch}` is active in process {pid}: trial started")),
                    Err(e) => (false, e.to_string()),
                };
                if let Some(w) = self.wizard.as_mut() {
                    w.phase = Phase::Done { ok, message: message.clone() };
                    w.current = None;
                    // A failed or cancelled apply undid its stages, unless it says otherwise.
                    if !ok && !message.contains("undoing failed") {
                        w.undone = std::mem::take(&mut w.done);
                    }
                }
                self.say(ok, message.lines().next().unwrap_or("").to_string());
            }
            Event::RolledBack { pid, result } => {
                self.busy = None;
                if let Ok(ids) = &result {
                    self.own.extend(ids.iter().map(|id| (pid, id.clone())));
                }
                match result {
                    Ok(ids) => self.say(true, format!("rolled back in process {pid}: {}", ids.join(", "))),
                    Err(e) => self.say(false, format!("rollback in process {pid} failed: {}", e.message)),
                }
            }
            Event::Expired { pid, patch, result } => {
                self.busy = None;
                self.own.push((pid, patch.clone()));
                match result {
                    Ok(state) => {
                        self.say(true, format!("trial of `{patch}` expired in process {pid}: {state} by policy"))
                    }
                    Err(e) => self.say(false, format!("expiry policy of `{patch}` failed: {}", e.message)),
                }
            }
            Event::Uninstalled { patch, result } => {
                self.busy = None;
                // The processes it did not roll back keep their patches: any later change there
                // is news.
                let done: Vec<i32> = match &result {
                    Ok(u) => u.rollbacks.iter().flat_map(|s| s.rolled_back.iter().copied()).collect(),
                    Err(_) => Vec::new(),
                };
                for (pid, id) in std::mem::take(&mut self.uninstalling) {
                    if !done.contains(&pid) {
                        if let Some(i) = self.own.iter().position(|(p, o)| *p == pid && *o == id) {
                            self.own.remove(i);
                        }
                    }
                }
                match result {
                    Ok(u) => {
                        let mut pids: Vec<i32> = done;
                        pids.sort_unstable();
                        pids.dedup();
                        let from = match pids.len() {
                            0 => "no process had it".to_string(),
                            1 => format!("rolled back from process {}", pids[0]),
                            n => format!("rolled back from {n} processes"),
                        };
                        let names =
                            |ids: &[String]| ids.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ");
                        if u.kept.is_empty() {
                            self.say(true, format!("uninstalled {}: {from}", names(&u.uninstalled)));
                        } else {
                            let why = u
                                .rollbacks
                                .iter()
                                .flat_map(|s| s.failed.iter())
                                .map(|f| format!("process {}: {}", f.pid, f.error.message))
                                .next()
                                .unwrap_or_default();
                            self.say(
                                false,
                                format!(
                                    "uninstall of `{patch}`: {} still in some processes ({why}): kept installed, rolled back; press R again",
                                    names(&u.kept)
                                ),
                            );
                        }
                    }
                    Err(e) => self.say(false, format!("uninstall of `{patch}` failed: {}", e.message)),
                }
            }
            Event::Committed { pid, patch, result } => {
                self.busy = None;
                self.own.push((pid, patch.clone()));
                match result {
                    Ok(()) => self.say(true, format!("`{patch}` committed in process {pid}")),
                    Err(e) => self.say(false, format!("commit of `{patch}` failed: {}", e.message)),
                }
            }
        }
    }
}

/// The manifests in `dir` (and one level of sub-folders), each with its summary or problem;
/// with `pid`, those that fit the process first (see [`Fit`]).
pub fn list_manifests(dir: &Path, pid: Option<i32>) -> Vec<ManifestFile> {
    let mapped = pid.map(mapped_files).unwrap_or_default();
    let mut paths = Vec::new();
    let walk = |d: &Path, paths: &mut Vec<PathBuf>, deeper: bool| -> Vec<PathBuf> {
        let mut subdirs = Vec::new();
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() && deeper {
                    subdirs.push(p);
                } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    paths.push(p);
                }
            }
        }
        subdirs
    };
    for sub in walk(dir, &mut paths, true) {
        walk(&sub, &mut paths, false);
    }
    paths.sort();
    let mut files: Vec<ManifestFile> = paths
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".schema.json"))
        .map(|path| match Manifest::load(&path) {
            Ok(m) => {
                let fit = if pid.is_some() { fit(&m, &mapped) } else { Fit::Unknown };
                let summary = format!(
                    "{} {}{}",
                    m.patch,
                    m.version,
                    m.description.map(|d| format!(" — {d}")).unwrap_or_default()
                );
                ManifestFile { path, summary: Ok(summary), fit }
            }
            Err(e) => ManifestFile { path, summary: Err(e.message), fit: Fit::Unknown },
        })
        .collect();
    files.sort_by_key(|f| f.fit);
    files
}
