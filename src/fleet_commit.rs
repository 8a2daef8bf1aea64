//! `commit --all PATCH`: the trial of PATCH ended, committed, in every process where it is on
//! trial, each under its own lock, several at a time (see [`fleet::run_all`]). A process where
//! it is committed already is skipped (`already committed`, counted as done); one where a
//! pannus stopped between stages fails. As with `commit --pid`, the patches PATCH requires that
//! are still on trial in a process are committed first when asked (`--yes`), since their
//! rollback at their deadline would take PATCH along; otherwise that process is refused.
//!
//! The exit code is that of the other fleet commands (see [`fleet::exit_code`]): 0 when PATCH
//! is committed in every process that has it, 4 when no process has it; a signal (SIGINT,
//! SIGTERM, SIGHUP) lets the commits under way finish, starts no other, and exits 1.

use crate::engine::{self, Engine, Session};
use crate::error::{Error, Kind, Result};
use crate::fleet::{self, Event, Failed, Member, Outcome, Plan, Skipped};
use crate::processes::{self, Scope};
use crate::registry::{self, State};

/// Skip reason: the patch is committed in the process already.
pub const ALREADY_COMMITTED: &str = "already committed";

/// What `commit --all` did.
#[derive(Debug, Clone)]
pub struct CommitSummary {
    pub patch: String,
    /// The processes where PATCH was committed, each with every patch committed there (the
    /// patches it requires first, PATCH last).
    pub committed: Vec<(i32, Vec<String>)>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
    /// The signal that stopped the run, when one did.
    pub cancelled: Option<String>,
}

impl CommitSummary {
    /// The exit code (see the module documentation).
    pub fn exit_code(&self) -> i32 {
        if self.cancelled.is_some() {
            return Kind::Cancelled.exit_code();
        }
        fleet::exit_code(&self.failed, !self.committed.is_empty(), &self.skipped)
    }

    /// The summary for a person: one line of counts, then one line per process.
    pub fn text(&self) -> String {
        let mut out = format!(
            "`{}`: {} committed, {} skipped, {} failed\n",
            self.patch,
            self.committed.len(),
            self.skipped.len(),
            self.failed.len()
        );
        for (pid, ids) in &self.committed {
            out.push_str(&format!("  committed {pid}: {}\n", ids.join(", ")));
        }
        for s in &self.skipped {
            out.push_str(&format!("  skipped {}: {}\n", s.pid, s.reason));
        }
        for f in &self.failed {
            out.push_str(&format!("  FAILED  {} (exit {}): {}\n", f.pid, f.error.kind.exit_code(), f.error));
        }
        if let Some(sig) = &self.cancelled {
            out.push_str(&format!("  cancelled: {sig}\n"));
        }
        out
    }
}

/// Every process where `patch` is applied, read without stopping it: those where it is on
/// trial are the members. Refused when no process has it.
pub fn plan_commit(patch: &str) -> Result<Plan> {
    let mut plan = Plan { patch: patch.to_string(), members: Vec::new(), skipped: Vec::new(), failed: Vec::new() };
    for p in processes::list(Scope::Patched, None) {
        let Some(state) = p.applied().find(|r| r.patch == patch).map(|r| r.state) else { continue };
        let pid = p.pid.get();
        match state {
            State::Trial => plan.members.push(p.into()),
            State::Committed => plan.skipped.push(fleet::skipped(pid, ALREADY_COMMITTED, true)),
            s => plan.failed.push(Failed {
                pid,
                error: Error::precondition(format!(
                    "patch `{patch}` is {s} in process {pid}: a pannus stopped between stages"
                ))
                .hint(format!("roll it back first: pannus rollback --pid {pid} {patch}")),
            }),
        }
    }
    if plan.members.is_empty() && plan.skipped.is_empty() && plan.failed.is_empty() {
        return Err(Error::precondition(format!("patch `{patch}` is not applied in any process"))
            .hint("see pannus status --all"));
    }
    Ok(plan)
}

/// The patches `plan.patch` requires that are still on trial, in each member where there are
/// some, read without stopping the process.
pub fn required_on_trial(plan: &Plan) -> Vec<(i32, Vec<String>)> {
    plan.pids()
        .into_iter()
        .filter_map(|pid| {
            let (_, reg) = engine::read_status(pid).ok()?;
            let required = registry::required_in_trial(&reg.patches, &plan.patch);
            (!required.is_empty()).then_some((pid, required))
        })
        .collect()
}

fn names(ids: &[String]) -> String {
    ids.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
}

/// Commits `plan.patch` in every member of `plan`; with `with_required`, the patches it
/// requires that are still on trial first. `progress` gets a line per process.
pub fn commit(
    engine: &Engine,
    plan: &Plan,
    with_required: bool,
    interrupted: Option<fn() -> Option<&'static str>>,
    progress: &mut dyn fleet::Report,
) -> CommitSummary {
    let patch = plan.patch.as_str();
    let work = |member: &Member| -> Outcome<Vec<String>> {
        let pid = member.pid.get();
        // An overdue trial's policy first, as the trial watcher would have carried it out.
        if let Ok((_, reg)) = engine::read_status(pid) {
            crate::trial::carry_out_overdue(engine, pid, &reg.patches);
        }
        let result = (|| -> Result<Vec<String>> {
            let mut s = Session::open(engine, pid)?;
            let required = registry::required_in_trial(&s.registry()?.patches, patch);
            if !required.is_empty() && !with_required {
                return Err(Error::precondition(format!(
                    "patch `{patch}` requires {}, still in trial in process {pid}: rolled back at its deadline, \
                     what it requires would take `{patch}` with it",
                    names(&required)
                ))
                .hint(format!("commit them together: pannus commit --all {patch} --yes")));
            }
            let mut committed = Vec::new();
            for id in &required {
                s.commit(id, &format!("committed by hand with `{patch}`, which requires it (commit --all)"))?;
                committed.push(id.clone());
            }
            s.commit(patch, "committed by hand (commit --all)")?;
            committed.push(patch.to_string());
            Ok(committed)
        })();
        match result {
            Ok(ids) => Outcome::Done(ids),
            Err(_) if fleet::gone(pid) => Outcome::Skipped(fleet::skipped(pid, fleet::EXITED, false)),
            Err(error) => Outcome::Failed(Failed { pid, error }),
        }
    };
    let (total, mut done, mut failures) = (plan.members.len(), 0usize, 0usize);
    let mut heard = |event: &Event<Vec<String>>| {
        if let Event::Finished(i, outcome) = event {
            let pid = plan.members[*i].pid.get();
            done += 1;
            match outcome {
                Outcome::Done(ids) => progress.line(&format!("process {pid}: committed {}", names(ids))),
                Outcome::Skipped(skip) => progress.line(&format!("process {pid}: skipped, {}", skip.reason)),
                Outcome::Failed(f) => {
                    failures += 1;
                    progress.failure(&format!("process {pid}: failed: {}", f.error.message));
                }
            }
            progress.count(done, total, failures);
        }
        true
    };
    let outcomes = fleet::run_all(&plan.members, fleet::workers(), interrupted, &work, &mut heard);
    let mut s = CommitSummary {
        patch: plan.patch.clone(),
        committed: Vec::new(),
        skipped: plan.skipped.clone(),
        failed: plan.failed.clone(),
        cancelled: interrupted.and_then(|f| f()).map(|sig| format!("{sig} received")),
    };
    for (member, outcome) in plan.members.iter().zip(outcomes) {
        let pid = member.pid.get();
        match outcome {
            Some(Outcome::Done(ids)) => s.committed.push((pid, ids)),
            Some(Outcome::Skipped(skip)) => s.skipped.push(skip),
            Some(Outcome::Failed(f)) => s.failed.push(f),
            None => {
                let reason = match &s.cancelled {
                    Some(sig) => format!("not attempted: cancelled, {sig}"),
                    None => "not attempted".to_string(),
                };
                s.skipped.push(fleet::skipped(pid, reason, false));
            }
        }
    }
    s
}
