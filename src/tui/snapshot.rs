//! Snapshots of the processes pannus can see, taken off the UI thread. Reading a process's
//! registry needs no ptrace: its mapping is found in `/proc/PID/maps` and read through
//! `/proc/PID/mem`.

use crate::registry::{self, PatchRecord, State};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct ProcRow {
    pub pid: i32,
    pub name: String,
    pub user: String,
    pub threads: u32,
    pub exe: String,
    /// Every patch in the process's registry, in application order (rolled-back ones included).
    pub patches: Vec<PatchRecord>,
}

impl ProcRow {
    pub fn applied(&self) -> impl Iterator<Item = &PatchRecord> {
        self.patches.iter().filter(|p| p.state.is_applied())
    }

    /// The patch a one-key action acts on: the most recently applied one.
    pub fn latest(&self) -> Option<&PatchRecord> {
        self.applied().max_by_key(|p| p.seq)
    }

    /// A word for the process's patch state, never colour alone.
    pub fn badge(&self, now: u64) -> Badge {
        let mut trial: Option<u64> = None;
        let mut partial = false;
        let mut active = false;
        for p in self.applied() {
            match p.state {
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
        } else if let Some(left) = trial {
            Badge::Trial(left)
        } else if active {
            Badge::Active
        } else {
            Badge::None
        }
    }
}

/// A process's patch state as the list shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Badge {
    None,
    /// Seconds left in the soonest trial.
    Trial(u64),
    Active,
    /// A patch stopped between stages (a pannus was killed): roll it back.
    Partial,
}

impl Badge {
    pub fn text(self) -> String {
        match self {
            Badge::None => "-".into(),
            Badge::Trial(left) => format!("TRIAL {}", mmss(left)),
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
    pub rows: Vec<ProcRow>,
}

/// Reads the process table. Costs two small reads per process (status and maps) and one more
/// per patched process.
pub fn collect(users: &mut HashMap<u32, String>) -> Snapshot {
    let mut rows = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Snapshot::default();
    };
    let me = std::process::id() as i32;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("");
        let name = field("Name:").to_string();
        let uid: u32 = field("Uid:").split_whitespace().next().and_then(|u| u.parse().ok()).unwrap_or(0);
        let threads = field("Threads:").parse().unwrap_or(0);
        let user = users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| uid.to_string())
            })
            .clone();
        let patches = registry::read_process(pid).unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
        rows.push(ProcRow { pid, name, user, threads, exe, patches });
    }
    rows.sort_by_key(|r| r.pid);
    Snapshot { rows }
}
