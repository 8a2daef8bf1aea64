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

/// How many copies have the health check each round (in turn, when there are more).
const CHECKS_A_ROUND: usize = 64;

/// The direct children of process `pid`, from every thread's list of the children it forked
/// (`/proc/PID/task/TID/children`); on a kernel without those lists, from every process's
/// parent (`/proc/PID/stat`).
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    let mut listed = false;
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            listed = true;
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    if !listed {
        out = crate::processes::pids()
            .into_iter()
            .map(|p| p.get())
            .filter(|&p| crate::processes::parent(p) == Some(pid))
            .collect();
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
    /// By pid and start time (a pid used again is another process).
    health: HashMap<(i32, u64), Health>,
    /// Where the next round starts among the copies, when there are more than a round checks.
    next: usize,
    /// Whether the journal says that not every copy is checked each round.
    said_more: bool,
}

impl CopiesHealth {
    /// Runs health check `h` in the copies of the trial of `patch` that `parent` has now (see
    /// [`copies`]): at most [`CHECKS_A_ROUND`] a round, in turn when there are more, several
    /// at once, each with `PANNUS_PID` set to the copy's pid; records each result in that copy
    /// (when its lock is free at once). A copy that is gone by the end of its check counts for
    /// nothing. Returns the first copy whose check has now failed `h.failures` times in a row,
    /// with its health.
    pub fn check(
        &mut self,
        engine: &Engine,
        h: &HealthCheck,
        parent: i32,
        patch: &str,
        applied: (u64, u64),
    ) -> Option<(i32, Health)> {
        let found: Vec<(i32, u64)> = copies(parent, patch, applied)
            .into_iter()
            .filter_map(|pid| Some((pid, crate::processes::start_time(pid)?)))
            .collect();
        self.health.retain(|key, _| found.contains(key));
        if found.len() > CHECKS_A_ROUND && !self.said_more {
            self.said_more = true;
            let detail = format!(
                "{} children forked from process {parent} carry the trial of `{patch}`: {CHECKS_A_ROUND} of them \
                 have the health check each round, in turn",
                found.len()
            );
            let _ = engine.journal().record("trial-watch", parent, "", Some(patch), "ok", &detail);
        }
        let round: Vec<(i32, u64)> = if found.len() > CHECKS_A_ROUND {
            let start = self.next % found.len();
            self.next = start + CHECKS_A_ROUND;
            found.iter().cycle().skip(start).take(CHECKS_A_ROUND).copied().collect()
        } else {
            found.clone()
        };
        // Recording a result waits for no other pannus.
        let mut quick = engine.clone();
        quick.lock_wait = Duration::ZERO;
        for batch in round.chunks(CHECKS_AT_ONCE) {
            let results: Vec<((i32, u64), std::result::Result<(), String>)> = std::thread::scope(|scope| {
                let runs: Vec<_> = batch
                    .iter()
                    .map(|&key| (key, scope.spawn(move || crate::trial::run_health_check(h, key.0, patch))))
                    .collect();
                runs.into_iter()
                    .map(|(key, run)| {
                        (key, run.join().unwrap_or_else(|_| Err("the health check's thread failed".into())))
                    })
                    .collect()
            });
            for (key, result) in results {
                if crate::processes::start_time(key.0) != Some(key.1) {
                    self.health.remove(&key);
                    continue;
                }
                let health = self.health.entry(key).or_default();
                health.record(result);
                let _ = Session::open(&quick, key.0).and_then(|mut s| s.record_health(patch, health));
            }
        }
        round
            .iter()
            .find_map(|key| self.health.get(key).filter(|x| x.failing >= h.failures).map(|x| (key.0, x.clone())))
    }
}
