//! The apply wizard and the trial screen.

use super::*;

impl App {
    /// Opens the apply wizard for `pid` on the manifests folder.
    pub fn open_wizard(&mut self, pid: i32) {
        self.wizard = Some(Wizard {
            pid,
            files: list_manifests(&self.manifests_dir, Some(pid)),
            index: 0,
            phase: Phase::Pick,
            patch: String::new(),
            done: Vec::new(),
            current: None,
            log: Vec::new(),
            scroll: 0,
            trial: String::new(),
            undone: Vec::new(),
        });
        self.screen = Screen::Wizard;
    }

    pub(super) fn on_wizard_key(&mut self, key: KeyEvent) -> Option<Job> {
        let busy = self.busy.is_some();
        let verdict_shown = crate::tui::render::verdict_shown(self, self.area());
        let page = self.page.max(1);
        let report = matches!(self.wizard.as_ref().map(|w| &w.phase), Some(Phase::Report { error: None, .. }));
        if report && key.code == KeyCode::Enter && !verdict_shown {
            self.say(false, "the pre-flight verdict does not fit: make the terminal larger");
            return None;
        }
        let w = self.wizard.as_mut()?;
        match (&w.phase, key.code) {
            (Phase::Pick, KeyCode::Up | KeyCode::Char('k')) => w.index = w.index.saturating_sub(1),
            (Phase::Pick, KeyCode::Down | KeyCode::Char('j')) => {
                w.index = (w.index + 1).min(w.files.len().saturating_sub(1))
            }
            (Phase::Pick, KeyCode::Enter) => {
                let f = w.files.get(w.index)?;
                if busy {
                    return None;
                }
                let job = Job::Check { pid: w.pid, manifest: f.path.clone() };
                w.phase = Phase::Checking;
                self.busy = Some("pre-flight checks".into());
                return Some(job);
            }
            (Phase::Pick, KeyCode::Esc) => {
                self.detail = Some(w.pid);
                self.wizard = None;
                self.screen = Screen::Detail;
            }
            (Phase::Report { .. }, KeyCode::Up | KeyCode::Char('k')) => w.scroll = w.scroll.saturating_sub(1),
            (Phase::Report { .. }, KeyCode::Down | KeyCode::Char('j')) => w.scroll = w.scroll.saturating_add(1),
            (Phase::Report { .. }, KeyCode::PageUp) => w.scroll = w.scroll.saturating_sub(page),
            (Phase::Report { .. }, KeyCode::PageDown) => w.scroll = w.scroll.saturating_add(page),
            (Phase::Report { .. }, KeyCode::Home) => w.scroll = 0,
            // Drawing stops at the last line.
            (Phase::Report { .. }, KeyCode::End) => w.scroll = usize::MAX / 2,
            (Phase::Report { error: None, .. }, KeyCode::Enter) => {
                if busy {
                    return None;
                }
                let f = w.files.get(w.index)?;
                let job = Job::Apply { pid: w.pid, manifest: f.path.clone() };
                w.phase = Phase::Running { confirm: None };
                w.log.push(format!("applying {}", f.path.display()));
                self.busy = Some(format!("applying `{}`", w.patch));
                return Some(job);
            }
            (Phase::Report { .. }, KeyCode::Esc) => {
                w.phase = Phase::Pick;
                w.scroll = 0;
            }
            (Phase::Done { ok: true, .. }, KeyCode::Enter) => {
                self.trial = Some((w.pid, w.patch.clone()));
                self.screen = Screen::Trial;
                self.wizard = None;
            }
            (Phase::Done { .. }, KeyCode::Esc | KeyCode::Enter) => {
                self.detail = Some(w.pid);
                self.wizard = None;
                self.screen = Screen::Detail;
            }
            _ => {}
        }
        None
    }

    pub(super) fn on_trial_key(&mut self, key: KeyEvent) -> Option<Job> {
        let (pid, _) = self.trial.clone()?;
        match key.code {
            KeyCode::Esc => {
                self.screen = if self.detail == Some(pid) { Screen::Detail } else { Screen::Processes };
                None
            }
            KeyCode::Char('C') => self.commit_key(),
            KeyCode::Char('R') => self.rollback_key(),
            _ => None,
        }
    }
}
