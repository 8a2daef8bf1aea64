//! The journal view: its search and its scrolling.

use super::*;

impl App {
    /// The journal entries shown, oldest first: those matching every word of the search, a
    /// word `FIELD:VALUE` (see [`JOURNAL_FIELDS`]) that field exactly, any other word any field
    /// (any case).
    pub fn journal_visible(&self) -> Vec<&Recorded> {
        let q = self.journal_search.to_lowercase();
        self.journal.iter().filter(|r| q.split_whitespace().all(|w| journal_matches(r, w))).collect()
    }

    /// The journal entry selected, among those shown.
    pub fn journal_selected(&self) -> Option<&Recorded> {
        let v = self.journal_visible();
        let i = self.journal_offset.min(v.len().checked_sub(1)?);
        v.get(i).copied()
    }

    /// Shows only the entries with the selected entry's value of `field` (pid, patch, outcome),
    /// or, when the search already narrows by that field, no longer narrows by it.
    pub(super) fn journal_narrow(&mut self, field: &str) {
        let prefix = format!("{field}:");
        let words: Vec<String> = self.journal_search.split_whitespace().map(str::to_string).collect();
        let (by_field, others): (Vec<String>, Vec<String>) =
            words.into_iter().partition(|w| w.to_lowercase().starts_with(&prefix));
        let mut words = others;
        if by_field.is_empty() {
            let value = self.journal_selected().map(|r| match field {
                "pid" => Some(r.entry.pid.to_string()),
                "patch" => r.entry.patch.clone(),
                _ => Some(r.entry.outcome.clone()),
            });
            match value {
                None => return,
                Some(None) => {
                    self.say(false, "this entry names no patch");
                    return;
                }
                Some(Some(v)) => words.push(format!("{prefix}{v}")),
            }
        }
        self.journal_search = words.join(" ");
        self.journal_offset = usize::MAX;
    }

    pub(super) fn on_journal_search_key(&mut self, key: KeyEvent) {
        match key.code {
            KeyCode::Esc => {
                self.journal_searching = false;
                self.journal_search.clear();
            }
            KeyCode::Enter => self.journal_searching = false,
            KeyCode::Backspace => {
                self.journal_search.pop();
            }
            KeyCode::Char(c) => self.journal_search.push(c),
            _ => {}
        }
        // The newest match selected.
        self.journal_offset = usize::MAX;
    }

    pub(super) fn on_journal_key(&mut self, key: KeyEvent) {
        if self.journal_open {
            if matches!(key.code, KeyCode::Esc | KeyCode::Enter) {
                self.journal_open = false;
            }
            return;
        }
        let max = self.journal_visible().len().saturating_sub(1);
        let off = self.journal_offset.min(max);
        self.journal_offset = match key.code {
            KeyCode::Esc if !self.journal_search.is_empty() => {
                self.journal_search.clear();
                usize::MAX
            }
            KeyCode::Esc => {
                self.screen = Screen::Processes;
                off
            }
            KeyCode::Char('/') => {
                self.journal_searching = true;
                off
            }
            KeyCode::Char('i') => {
                self.journal_narrow("pid");
                return;
            }
            KeyCode::Char('p') => {
                self.journal_narrow("patch");
                return;
            }
            KeyCode::Char('o') => {
                self.journal_narrow("outcome");
                return;
            }
            KeyCode::Enter => {
                self.journal_open = self.journal_selected().is_some();
                off
            }
            KeyCode::Up | KeyCode::Char('k') => off.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => (off + 1).min(max),
            KeyCode::PageUp => off.saturating_sub(self.page),
            KeyCode::PageDown => (off + self.page).min(max),
            KeyCode::Home => 0,
            KeyCode::End => max,
            _ => off,
        };
    }
}
