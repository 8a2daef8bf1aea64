//! Forked children: a process forked after a patch was applied inherits the patched code and a
//! copy of the patch's record, trial included. The trial watcher finds these copies among the
//! process's descendants, runs the health check in them too, and ends the trial in them as it
//! ended in the process ([`follow`]).
//!
//! A copy is found by root's own observations: the kernel's list of each process's children
//! (`/proc/PID/task/TID/children`), and a record in the child equal to the parent's (the same
//! patch, on trial, applied at the same time with its module at the same address). What the
//! child's record says about where it came from (`applied_in`) is only shown, never acted on.

use crate::engine::{outcome_of, Engine, Quiet, Session};
use crate::registry::{Health, HealthCheck, State};
use std::collections::HashMap;
use std::time::Duration;

/// At most this many descendants are looked at (a fork bomb is not walked to its end).
const MOST_DESCENDANTS: usize = 4096;

/// How many health checks run at once in copies.
const CHECKS_AT_ONCE: usize = 16;

/// The direct children of process `pid`, from every thread's list of the children it forked.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Every descendant of process `pid` (not `pid` itself), parents before their children, at most
/// [`MOST_DESCENDANTS`].
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut next = 0;
    let mut at = pid;
    loop {
        for child in children(at) {
            if out.len() == MOST_DESCENDANTS {
                return out;
            }
            if child != pid && !out.contains(&child) {
                out.push(child);
            }
        }
        match out.get(next) {
            Some(&p) => at = p,
            None => return out,
        }
        next += 1;
    }
}

/// The descendants of `parent` that carry the copy of its trial of `patch` the fork gave them:
/// the same record, on trial, applied at `applied.0` with the module at `applied.1`.
pub fn copies(parent: i32, patch: &str, applied: (u64, u64)) -> Vec<i32> {
    descendants(parent)
        .into_iter()
        .filter(|&pid| {
            crate::registry::read_process(pid).is_some_and(|patches| {
                patches
                    .iter()
                    .any(|r| r.patch == patch && r.state == State::Trial && (r.applied_at, r.module_base) == applied)
            })
        })
        .collect()
}

/// Ends `patch` in every descendant of `parent` that still carries the copy of its trial (see
/// [`copies`]), as the trial ended in `parent`: committed, or rolled back. Journaled per
/// process.
pub fn follow(engine: &Engine, parent: i32, patch: &str, applied: (u64, u64), outcome: State) {
    for child in copies(parent, patch, applied) {
        let why = format!("forked from process {parent}, whose trial of `{patch}` ended {outcome}");
        for attempt in 0..5 {
            let done = Session::open(engine, child).and_then(|mut s| match outcome {
                State::Committed => s.commit(patch, &why).map(|_| ()),
                _ => s.rollback_because(Some(patch), true, &why, &mut Quiet).map(|_| ()),
            });
            match done {
                Ok(()) => break,
                Err(_) if !pannus_kernel::process_exists(child) => break,
                Err(e) if attempt == 4 => {
                    let _ = engine.journal().record("trial-watch", child, "", Some(patch), outcome_of(&e), &e.message);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200 << attempt)),
            }
        }
    }
}

/// The health of each copy of a trial, kept by the watcher of the process they were forked
/// from.
#[derive(Default)]
pub struct CopiesHealth {
    health: HashMap<i32, Health>,
}

impl CopiesHealth {
    /// Runs health check `h` in every copy of the trial of `patch` that `parent` has now (see
    /// [`copies`]), several at once, each with `PANNUS_PID` set to the copy's pid, and records
    /// each result in that copy. Returns the first copy whose check has now failed `h.failures`
    /// times in a row, with its health.
    pub fn check(
        &mut self,
        engine: &Engine,
        h: &HealthCheck,
        parent: i32,
        patch: &str,
        applied: (u64, u64),
    ) -> Option<(i32, Health)> {
        let found = copies(parent, patch, applied);
        self.health.retain(|pid, _| found.contains(pid));
        for batch in found.chunks(CHECKS_AT_ONCE) {
            let results: Vec<(i32, std::result::Result<(), String>)> = std::thread::scope(|scope| {
                let runs: Vec<_> = batch
                    .iter()
                    .map(|&pid| (pid, scope.spawn(move || crate::trial::run_health_check(h, pid, patch))))
                    .collect();
                runs.into_iter()
                    .map(|(pid, run)| {
                        (pid, run.join().unwrap_or_else(|_| Err("the health check's thread failed".into())))
                    })
                    .collect()
            });
            for (pid, result) in results {
                let health = self.health.entry(pid).or_default();
                health.record(result);
                // A result not recorded (the process is busy with another pannus) is recorded
                // with the next one.
                let _ = Session::open(engine, pid).and_then(|mut s| s.record_health(patch, health));
            }
        }
        found
            .iter()
            .find_map(|pid| self.health.get(pid).filter(|h2| h2.failing >= h.failures).map(|x| (*pid, x.clone())))
    }
}
