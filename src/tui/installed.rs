//! The installed patches as the console's installed view shows them, read off the UI thread
//! (each patch's "N/M processes" walks the processes, as `pannus installed` does).

use crate::install::{self, State};
use crate::manifest::OnExpiry;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// One installed patch.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub patch: String,
    pub version: String,
    pub object: PathBuf,
    pub build_id: String,
    pub requires: Vec<String>,
    /// The state recorded (see [`Row::state_at`] for the state as of a moment).
    pub state: State,
    /// The end of the trial (Unix seconds), for a patch installed in trial.
    pub trial_deadline: Option<u64>,
    pub on_expiry: OnExpiry,
    /// Why it was rolled back, when it was.
    pub reason: Option<String>,
    /// Processes running its build of its object, and how many of them have it.
    pub processes: usize,
    pub patched: usize,
    pub manifest: PathBuf,
    /// A canary rollout under way, or interrupted.
    pub canary: Option<Canary>,
}

/// A canary rollout of an installed patch, as the view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    pub canaries: Vec<i32>,
    /// The end of the canary trial (Unix seconds).
    pub until: u64,
    /// Whether the pannus running it still runs (else it was interrupted).
    pub running: bool,
    pub by: i32,
}

impl Row {
    /// The state as of `now` (Unix seconds): a trial whose deadline passed is committed or
    /// rolled back, as its policy says (as [`install::Record::now`]).
    pub fn state_at(&self, now: u64) -> State {
        match (self.state, self.trial_deadline) {
            (State::Trial, Some(d)) if now >= d && self.on_expiry == OnExpiry::Rollback => State::RolledBack,
            (State::Trial, Some(d)) if now >= d => State::Committed,
            (s, _) => s,
        }
    }

    /// Why it is rolled back as of `now`, if it is.
    pub fn reason_at(&self, now: u64) -> Option<String> {
        match (self.state, self.state_at(now)) {
            (_, s) if s != State::RolledBack => None,
            (State::Trial, _) => Some("its trial ended (on_expiry: rollback)".into()),
            _ => self.reason.clone(),
        }
    }
}

/// The installed patches, or why they could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct List {
    pub rows: Vec<Row>,
    pub error: Option<String>,
}

impl List {
    /// The rows grouped by binary (object, then build-id), each group's patches in the order
    /// installed ones are listed (what a patch requires first).
    pub fn groups(&self) -> Vec<((&Path, &str), Vec<&Row>)> {
        let mut groups: Vec<((&Path, &str), Vec<&Row>)> = Vec::new();
        for r in &self.rows {
            let k = (r.object.as_path(), r.build_id.as_str());
            match groups.iter_mut().find(|(g, _)| *g == k) {
                Some((_, rows)) => rows.push(r),
                None => groups.push((k, vec![r])),
            }
        }
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        groups
    }

    /// The patches in the order the view lists them.
    pub fn ordered(&self) -> Vec<&Row> {
        self.groups().into_iter().flat_map(|(_, rows)| rows).collect()
    }

    /// The installed patches that require `id`, directly or not, theirs first (the order
    /// `uninstall --cascade` rolls them back in), `id` excluded.
    pub fn dependents(&self, id: &str) -> Vec<String> {
        let mut order: Vec<String> = Vec::new();
        let mut queue = vec![id.to_string()];
        while let Some(p) = queue.pop() {
            if order.contains(&p) {
                continue;
            }
            queue.extend(self.rows.iter().filter(|r| r.requires.contains(&p)).map(|r| r.patch.clone()));
            order.push(p);
        }
        order.reverse();
        order.pop();
        order
    }
}

fn unix(rfc3339: &str) -> Option<u64> {
    humantime::parse_rfc3339(rfc3339).ok()?.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Reads the installed patches of state folder `state`, each with how many processes of its
/// build have it.
pub fn collect(state: &Path) -> List {
    match install::installed(state) {
        Err(e) => List { rows: Vec::new(), error: Some(e.to_string()) },
        Ok(all) => List {
            rows: all
                .into_iter()
                .map(|i| {
                    let (processes, patched) = install::coverage(&i.manifest);
                    let m = i.manifest;
                    Row {
                        patch: m.patch,
                        version: m.version,
                        object: m.target.object,
                        build_id: m.target.build_id,
                        requires: m.requires,
                        state: i.record.state,
                        trial_deadline: i.record.trial_deadline.as_deref().and_then(unix),
                        on_expiry: m.trial.on_expiry,
                        reason: i.record.reason,
                        processes,
                        patched,
                        manifest: i.manifest_path,
                        canary: i.record.canary.map(|c| Canary {
                            running: c.running(),
                            until: unix(&c.until).unwrap_or(0),
                            canaries: c.canaries,
                            by: c.by,
                        }),
                    }
                })
                .collect(),
            error: None,
        },
    }
}
