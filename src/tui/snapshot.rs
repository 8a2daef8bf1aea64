//! Snapshots of the processes pannus can see, taken off the UI thread, and the word the list
//! shows for a process's patch state.

use crate::processes::{self, BuildIds, Process, Scope, UserNames};
use crate::registry::State;

/// A process's patch state as the list shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Badge {
    None,
    /// Seconds left in the soonest trial.
    Trial(u64),
    /// A trial past its deadline whose policy nobody has carried out.
    Overdue,
    Active,
    /// A patch stopped between stages (a pannus was killed): roll it back.
    Partial,
}

impl Badge {
    /// A word for the process's patch state, never colour alone.
    pub fn of(row: &Process, now: u64) -> Badge {
        let mut trial: Option<u64> = None;
        let mut partial = false;
        let mut overdue = false;
        let mut active = false;
        for p in row.applied() {
            match p.state {
                State::Trial if crate::trial::deadline_reached(p, now) => overdue = true,
                State::Trial => {
                    let left = p.trial_deadline.unwrap_or(now).saturating_sub(now);
                    trial = Some(trial.map_or(left, |t: u64| t.min(left)));
                }
                State::Committed => active = true,
                _ => partial = true,
            }
        }
        if partial {
            Badge::Partial
        } else if overdue {
            Badge::Overdue
        } else if let Some(left) = trial {
            Badge::Trial(left)
        } else if active {
            Badge::Active
        } else {
            Badge::None
        }
    }

    pub fn text(self) -> String {
        match self {
            Badge::None => "-".into(),
            Badge::Trial(left) => format!("TRIAL {}", mmss(left)),
            Badge::Overdue => "OVERDUE".into(),
            Badge::Active => "ACTIVE".into(),
            Badge::Partial => "PARTIAL!".into(),
        }
    }
}

pub fn mmss(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{:02}:{:02}", secs / 60, secs % 60)
    }
}

/// Every process, with the patches of those that have a registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub rows: Vec<Process>,
}

/// Reads the process table (see [`processes::list`] for its cost) with each executable's
/// build-id.
pub fn collect(users: &mut UserNames, build_ids: &mut BuildIds) -> Snapshot {
    let mut rows = processes::list(Scope::All, Some(users));
    build_ids.fill(&mut rows);
    Snapshot { rows }
}
