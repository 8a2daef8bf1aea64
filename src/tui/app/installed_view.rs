//! The installed view: its selection, and uninstalling from it.

use super::*;

impl App {
    /// The installed patch selected in their view.
    pub fn installed_row(&self) -> Option<&InstalledRow> {
        let id = self.installed_selected.as_deref()?;
        self.installed.as_ref()?.rows.iter().find(|r| r.patch == id)
    }

    /// Takes a new reading of the installed patches; the selection stays on the same patch
    /// when it is still installed.
    pub fn set_installed(&mut self, list: InstalledList) {
        self.installed = Some(list);
        self.fix_installed_selection();
    }

    pub(super) fn fix_installed_selection(&mut self) {
        let Some(list) = self.installed.as_ref() else { return };
        let ordered = list.ordered();
        let i = self.installed_selected.as_deref().and_then(|id| ordered.iter().position(|r| r.patch == id));
        if i.is_none() {
            self.installed_selected = ordered.first().map(|r| r.patch.clone());
        }
    }

    pub(super) fn move_installed(&mut self, delta: isize) {
        let Some(list) = self.installed.as_ref() else { return };
        let ordered = list.ordered();
        if ordered.is_empty() {
            return;
        }
        let i = self.installed_selected.as_deref().and_then(|id| ordered.iter().position(|r| r.patch == id));
        let j = (i.unwrap_or(0) as isize + delta).clamp(0, ordered.len() as isize - 1) as usize;
        self.installed_selected = Some(ordered[j].patch.clone());
    }

    pub(super) fn on_installed_key(&mut self, key: KeyEvent) -> Option<Job> {
        match key.code {
            KeyCode::Esc => self.screen = Screen::Processes,
            KeyCode::Up | KeyCode::Char('k') => self.move_installed(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_installed(1),
            KeyCode::PageUp => self.move_installed(-(self.page.max(1) as isize)),
            KeyCode::PageDown => self.move_installed(self.page.max(1) as isize),
            KeyCode::Home => self.move_installed(isize::MIN / 2),
            KeyCode::End => self.move_installed(isize::MAX / 2),
            KeyCode::Char('R') => return self.uninstall_key(),
            _ => {}
        }
        None
    }

    /// The processes of the snapshot that have any of `patches` applied, each with those it has.
    pub(super) fn having(&self, patches: &[String]) -> Vec<(i32, Vec<String>)> {
        self.snapshot
            .rows
            .iter()
            .filter_map(|r| {
                let ids: Vec<String> =
                    r.applied().filter(|p| patches.contains(&p.patch)).map(|p| p.patch.clone()).collect();
                (!ids.is_empty()).then(|| (r.pid.get(), ids))
            })
            .collect()
    }

    /// `R` in the installed view: one confirmation naming the selected patch, the installed
    /// patches that require it (uninstalled with it, theirs first) and how many processes it
    /// touches; Enter uninstalls them (`pannus uninstall --cascade`).
    pub(super) fn uninstall_key(&mut self) -> Option<Job> {
        if self.refuse_busy() {
            return None;
        }
        let Some(row) = self.installed_row() else {
            self.say(false, "no installed patch is selected: nothing to roll back");
            return None;
        };
        let patch = row.patch.clone();
        let version = row.version.clone();
        let with = self.installed.as_ref().map(|l| l.dependents(&patch)).unwrap_or_default();
        let mut all = with.clone();
        all.push(patch.clone());
        let having = self.having(&all);
        let touched = match having.len() {
            0 => "no process has it now".to_string(),
            1 => format!("1 process ({})", having[0].0),
            n => format!("{n} processes"),
        };
        let mut lines = Vec::new();
        if with.is_empty() {
            lines.push(format!("Rolls `{patch}` back from every process that has it: {touched}."));
        } else {
            let names = with.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ");
            lines.push(format!(
                "Installed {names} require{} it: rolled back and uninstalled with it, first.",
                if with.len() == 1 { "s" } else { "" }
            ));
            lines.push(format!("Rolls them and `{patch}` back from every process that has them: {touched}."));
        }
        // What a cascade takes along that is not installed: applied by hand, requiring it.
        let mut others: Vec<String> = Vec::new();
        for r in &self.snapshot.rows {
            if r.applied().any(|p| p.patch == patch) {
                for d in dependents(&r.patches, &patch).into_iter().filter(|d| !all.contains(d)) {
                    others.push(format!("`{d}` in process {}", r.pid));
                }
            }
        }
        if !others.is_empty() {
            lines.push(format!("Also rolled back, as they require it there: {}.", others.join(", ")));
        }
        lines.push("No new process of its build gets it; then it is forgotten (a process where the rollback fails keeps it, recorded rolled back).".into());
        self.pending = Some(Pending {
            title: format!("Uninstall {patch} {version} everywhere"),
            lines,
            job: Job::Uninstall { patch, with },
        });
        None
    }

    /// Marks the uninstall of `patch` and `with` as running.
    pub(super) fn start_uninstall(&mut self, patch: String, with: Vec<String>) {
        let mut all = with.clone();
        all.push(patch.clone());
        let mut expected: Vec<(i32, String)> =
            self.having(&all).into_iter().flat_map(|(pid, ids)| ids.into_iter().map(move |id| (pid, id))).collect();
        // And what the cascade takes along there.
        for r in &self.snapshot.rows {
            if r.applied().any(|p| p.patch == patch) {
                for d in dependents(&r.patches, &patch) {
                    if !expected.iter().any(|(pid, id)| *pid == r.pid.get() && *id == d) {
                        expected.push((r.pid.get(), d));
                    }
                }
            }
        }
        self.uninstalling = expected;
        self.own.extend(self.uninstalling.iter().cloned());
        let more = if with.is_empty() { String::new() } else { format!(" with {}", with.join(", ")) };
        self.busy = Some(format!("uninstalling `{patch}`{more}: rolling back from every process"));
    }
}
