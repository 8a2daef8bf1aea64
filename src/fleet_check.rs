//! `check --all`: every check `apply --all` would make, in every process it would patch,
//! touching nothing. The processes are those of [`fleet::plan_apply`]: one that already has the
//! patch is skipped (`already applied`, counted as done), one that runs another build too; each
//! of the others is opened under its lock and checked as `check --pid` checks it, several at a
//! time (see [`fleet::run_all`]).
//!
//! The exit code is `apply --all`'s (see [`fleet::exit_code`]): 0 when every matching process
//! would end with the patch (its checks passed, or it has the patch already), else the most
//! severe among the refusals, 4 when no process has the right build in memory.

use crate::engine::{CheckLine, Engine, Session};
use crate::fleet::{self, Event, Failed, Member, Outcome, Plan, Skipped};
use crate::manifest::Manifest;

/// One process checked: its checks, passed or not.
#[derive(Debug, Clone)]
pub struct Checked {
    pub pid: i32,
    pub checks: Vec<CheckLine>,
}

/// What `check --all` found.
#[derive(Debug, Clone)]
pub struct CheckSummary {
    pub patch: String,
    /// The processes whose checks all passed: those `apply --all` would patch.
    pub passed: Vec<Checked>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
    /// The architecture of each process checked, by pid.
    pub archs: std::collections::BTreeMap<i32, String>,
}

impl CheckSummary {
    /// The exit code (see the module documentation).
    pub fn exit_code(&self) -> i32 {
        fleet::exit_code(&self.failed, !self.passed.is_empty(), &self.skipped)
    }

    /// The summary for a person: one line of counts, then one line per process.
    pub fn text(&self) -> String {
        let mut out = format!(
            "`{}`: checks passed in {}, {} skipped, {} refused\n",
            self.patch,
            self.passed.len(),
            self.skipped.len(),
            self.failed.len()
        );
        if !self.archs.is_empty() {
            out.push_str(&format!("  architecture: {}\n", fleet::archs_text(&self.archs)));
        }
        if !self.passed.is_empty() {
            let pids: Vec<String> = self.passed.iter().map(|c| c.pid.to_string()).collect();
            out.push_str(&format!("  would patch: {}\n", pids.join(", ")));
        }
        for s in &self.skipped {
            out.push_str(&format!("  skipped {}: {}\n", s.pid, s.reason));
        }
        for f in &self.failed {
            out.push_str(&format!("  REFUSED {} (exit {}): {}\n", f.pid, f.error.kind.exit_code(), f.error));
        }
        out
    }
}

/// Checks `m` in every member of `plan` (see the module documentation); `progress` gets a line
/// per process.
pub fn check(engine: &Engine, m: &Manifest, plan: &Plan, progress: &mut dyn fleet::Report) -> CheckSummary {
    let engine = &fleet::shared(engine);
    let work = |member: &Member| -> Outcome<Checked> {
        let pid = member.pid.get();
        let mut session = match Session::open(engine, pid) {
            Ok(s) => s,
            Err(_) if fleet::gone(pid) => return Outcome::Skipped(fleet::skipped(pid, fleet::EXITED, false)),
            Err(error) => return Outcome::Failed(Failed { pid, error }),
        };
        match session.check(m) {
            (checks, Ok(())) => Outcome::Done(Checked { pid, checks }),
            (_, Err(_)) if fleet::gone(pid) => Outcome::Skipped(fleet::skipped(pid, fleet::EXITED, false)),
            (_, Err(error)) => Outcome::Failed(Failed { pid, error }),
        }
    };
    let (total, mut done, mut failures) = (plan.members.len(), 0usize, 0usize);
    let mut heard = |event: &Event<Checked>| {
        if let Event::Finished(i, outcome) = event {
            let pid = plan.members[*i].pid.get();
            done += 1;
            match outcome {
                Outcome::Done(_) => progress.line(&format!("process {pid}: all checks passed")),
                Outcome::Skipped(skip) => progress.line(&format!("process {pid}: skipped, {}", skip.reason)),
                Outcome::Failed(f) => {
                    failures += 1;
                    progress.failure(&format!("process {pid}: refused: {}", f.error.message));
                }
            }
            progress.count(done, total, failures);
        }
        true
    };
    let outcomes = fleet::run_all(&plan.members, fleet::workers(), None, &work, &mut heard);
    let mut s = CheckSummary {
        patch: plan.patch.clone(),
        passed: Vec::new(),
        skipped: plan.skipped.clone(),
        failed: plan.failed.clone(),
        archs: plan.archs(),
    };
    for (member, outcome) in plan.members.iter().zip(outcomes) {
        match outcome {
            Some(Outcome::Done(c)) => s.passed.push(c),
            Some(Outcome::Skipped(skip)) => s.skipped.push(skip),
            Some(Outcome::Failed(f)) => s.failed.push(f),
            None => s.skipped.push(fleet::skipped(member.pid.get(), "not attempted", false)),
        }
    }
    s
}
