//! `apply --all`, `rollback --all`, `status --all`, `check --all`, `commit --all` and canary
//! rollouts on the command line:
//! the questions, the progress on a terminal, and the summaries.

use super::{ask, carry_out_overdue_all, interrupt, output, print_status, require_terminal_or_yes, Command};
use crate::engine::{self, Engine};
use crate::error::{Error, Result};
use crate::fleet::Operation;
use crate::manifest::Manifest;
use std::io::{IsTerminal, Write};

/// `apply --all`, `rollback --all`, `status --all`, `check --all` and `commit --all`; returns the
/// exit code.
pub(super) fn fleet_dispatch(engine: &Engine, command: Command) -> Result<i32> {
    match command {
        Command::Apply { manifest, yes, rollback_on_failure, canary, json, .. } => {
            fleet_apply(engine, &manifest, yes, rollback_on_failure, canary.get(), json)
        }
        Command::Rollback { patch, yes, cascade, json, .. } => fleet_rollback(engine, patch, yes, cascade, json),
        Command::Status { json, .. } => fleet_status(engine, json).map(|()| 0),
        Command::Check { manifest, json, .. } => fleet_check(engine, &manifest, json),
        Command::Commit { patch, yes, json, .. } => fleet_commit(engine, &patch, yes, json),
        _ => Err(Error::bad_input("--all is not an option of this command")),
    }
}

pub(super) fn processes_text(pids: &[i32]) -> String {
    let list = pids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
    format!("{} process{}: pids {list}", pids.len(), if pids.len() == 1 { "" } else { "es" })
}

/// The processes of `plan` and their architecture, for a question.
fn plan_text(plan: &crate::fleet::Plan) -> String {
    let archs = crate::fleet::archs_text(&plan.archs());
    match archs.is_empty() {
        true => processes_text(&plan.pids()),
        false => format!("{} ({archs})", processes_text(&plan.pids())),
    }
}

pub(super) fn print_summary(summary: &crate::fleet::Summary, json: bool) -> Result<()> {
    match (json, summary.operation) {
        (true, Operation::Apply) => output::print(&output::FleetApply::from(summary))?,
        (true, Operation::Rollback) => output::print(&output::FleetRollback::from(summary))?,
        (false, _) => say_part!("{}", summary.text()),
    }
    if !summary.failed.is_empty() {
        let pids: Vec<i32> = summary.failed.iter().map(|f| f.pid).collect();
        let _ = writeln!(std::io::stderr(), "pannus: `{}` failed in {}", summary.patch, processes_text(&pids));
    }
    Ok(())
}

/// From how many processes on a fleet command shows its progress on a terminal.
const METER_FROM: usize = 10;

/// What `apply --all` and `rollback --all` show while they work, on standard output a line per
/// step of each process (nothing with `--json`). A long run on a terminal (more than
/// [`METER_FROM`] processes, standard error a terminal, no `--json`) shows instead one line on
/// standard error with the processes done of the total and the failures so far, redrawn after
/// each process, and a line on standard output for each failure.
struct FleetReport {
    json: bool,
    meter: bool,
    /// The meter's line is on the terminal, to be cleared before another line.
    drawn: bool,
    what: &'static str,
}

impl FleetReport {
    fn new(what: &'static str, total: usize, json: bool) -> FleetReport {
        let meter = !json && total > METER_FROM && std::io::stderr().is_terminal();
        FleetReport { json, meter, drawn: false, what }
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.drawn = false;
        }
    }

    /// Leaves the meter's last state on its own line, before the summary.
    fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

impl crate::fleet::Report for FleetReport {
    fn line(&mut self, text: &str) {
        if !self.json && !self.meter {
            say!("{text}");
        }
    }

    fn failure(&mut self, text: &str) {
        if !self.json {
            self.clear();
            say!("{text}");
        }
    }

    fn count(&mut self, done: usize, total: usize, failed: usize) {
        if self.meter {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r\x1b[2K{}: {done} of {total} processes done, {failed} failed", self.what);
            let _ = err.flush();
            self.drawn = true;
        }
    }
}

fn fleet_apply(
    engine: &Engine,
    path: &std::path::Path,
    yes: bool,
    rollback_on_failure: bool,
    canary: Option<crate::canary::Canary>,
    json: bool,
) -> Result<i32> {
    let m = Manifest::load(path)?;
    require_terminal_or_yes(yes, "apply")?;
    let plan = crate::fleet::plan_apply(&m)?;
    if !yes && !plan.members.is_empty() && !ask(&format!("Apply `{}` {} to {}?", m.patch, m.version, plan_text(&plan)))
    {
        return Err(Error::cancelled("apply cancelled: nothing was applied"));
    }
    let options =
        crate::fleet::ApplyOptions { rollback_on_failure, watch: true, interrupted: Some(interrupt::received) };
    let mut report = FleetReport::new("apply --all", plan.members.len(), json);
    if let Some(canary) = canary {
        let rollout = crate::canary::apply(engine, &m, &plan, canary, options, &mut report);
        report.finish();
        print_rollout(&rollout, canary, json)?;
        return Ok(rollout.exit_code());
    }
    let summary = crate::fleet::apply(engine, &m, &plan, options, &mut report);
    report.finish();
    print_summary(&summary, json)?;
    Ok(summary.exit_code())
}

/// A canary rollout, as `--json` shows it.
#[derive(serde::Serialize)]
pub(super) struct RolloutDoc<'a> {
    canaries: &'a [i32],
    canary_trial_s: u64,
    /// `passed` or `failed`.
    canary: &'static str,
    reason: Option<&'a str>,
    canary_apply: output::FleetApply<'a>,
    canary_rollback: Option<output::FleetRollback<'a>>,
    rest_apply: Option<output::FleetApply<'a>>,
}

impl<'a> RolloutDoc<'a> {
    pub(super) fn new(r: &'a crate::canary::Rollout, canary: crate::canary::Canary) -> RolloutDoc<'a> {
        RolloutDoc {
            canaries: &r.canaries,
            canary_trial_s: canary.trial.as_secs(),
            canary: if r.failure.is_some() { "failed" } else { "passed" },
            reason: r.failure.as_deref(),
            canary_apply: (&r.first).into(),
            canary_rollback: r.rollback.as_ref().map(Into::into),
            rest_apply: r.rest.as_ref().map(Into::into),
        }
    }
}

pub(super) fn print_rollout(r: &crate::canary::Rollout, canary: crate::canary::Canary, json: bool) -> Result<()> {
    if json {
        return output::print(&RolloutDoc::new(r, canary));
    }
    print_summary(&r.first, false)?;
    if let Some(s) = &r.rollback {
        print_summary(s, false)?;
    }
    if let Some(s) = &r.rest {
        print_summary(s, false)?;
    }
    match &r.failure {
        Some(why) => {
            let _ = writeln!(std::io::stderr(), "pannus: canary rollout of `{}` failed: {why}", r.first.patch);
        }
        None => say!("canaries passed: {}", processes_text(&r.canaries)),
    }
    Ok(())
}

fn fleet_rollback(engine: &Engine, patch: Option<String>, yes: bool, cascade: bool, json: bool) -> Result<i32> {
    let patch = patch.ok_or_else(|| Error::bad_input("rollback --all needs the PATCH to roll back"))?;
    require_terminal_or_yes(yes, "rollback")?;
    let plan = crate::fleet::plan_rollback(&patch)?;
    if !yes {
        // Every patch the rollback takes back with PATCH, or where it will be refused, named.
        let mut notes = Vec::new();
        for pid in plan.pids() {
            let dependents = engine::read_status(pid).map(|(_, reg)| reg.dependents(&patch)).unwrap_or_default();
            if dependents.is_empty() {
                continue;
            }
            let names = dependents.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ");
            notes.push(match cascade {
                true => format!("in process {pid} with {names}, which require it"),
                false => format!("refused in process {pid}, where {names} require it (see --cascade)"),
            });
        }
        let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
        if !ask(&format!("Roll back `{patch}` in {}{notes}?", plan_text(&plan))) {
            return Err(Error::cancelled("rollback cancelled: nothing was rolled back"));
        }
    }
    let mut report = FleetReport::new("rollback --all", plan.members.len(), json);
    let summary = crate::fleet::rollback(engine, &plan, cascade, Some(interrupt::received), &mut report);
    report.finish();
    print_summary(&summary, json)?;
    Ok(summary.exit_code())
}

fn fleet_status(engine: &Engine, json: bool) -> Result<()> {
    let mut procs = crate::fleet::status();
    if carry_out_overdue_all(engine, &procs) {
        procs = crate::fleet::status();
    }
    let procs = crate::processes::forks_after_parents(procs, |p| p);
    if json {
        return output::print(&output::Processes::new(&procs, |p| &p.patches));
    }
    if procs.is_empty() {
        say!("no process has patches");
    }
    for p in &procs {
        print_status(p.pid.get(), &p.name, &p.exe, p.arch, &p.patches);
    }
    Ok(())
}

fn fleet_check(engine: &Engine, path: &std::path::Path, json: bool) -> Result<i32> {
    let m = Manifest::load(path)?;
    let plan = crate::fleet::plan_apply(&m)?;
    let mut report = FleetReport::new("check --all", plan.members.len(), json);
    let summary = crate::fleet_check::check(engine, &m, &plan, &mut report);
    report.finish();
    if json {
        output::print(&output::FleetCheck::from(&summary))?;
    } else {
        say_part!("{}", summary.text());
    }
    Ok(summary.exit_code())
}

fn fleet_commit(engine: &Engine, patch: &str, yes: bool, json: bool) -> Result<i32> {
    let plan = crate::fleet_commit::plan_commit(patch)?;
    let mut with_required = yes;
    if !yes && std::io::stdin().is_terminal() {
        // As `commit --pid` on a terminal: one question names the patches still in trial that
        // must be committed with it.
        let required = crate::fleet_commit::required_on_trial(&plan);
        if !required.is_empty() {
            let notes: Vec<String> = required
                .iter()
                .map(|(pid, ids)| {
                    format!("{} in process {pid}", ids.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", "))
                })
                .collect();
            let question = format!(
                "`{patch}` requires patches still in trial ({}). Commit them and `{patch}` together in {}?",
                notes.join("; "),
                processes_text(&plan.pids())
            );
            if !ask(&question) {
                return Err(Error::cancelled("commit cancelled: nothing was committed"));
            }
            with_required = true;
        }
    }
    let mut report = FleetReport::new("commit --all", plan.members.len(), json);
    let summary = crate::fleet_commit::commit(engine, &plan, with_required, Some(interrupt::received), &mut report);
    report.finish();
    if json {
        output::print(&output::FleetCommit::from(&summary))?;
    } else {
        say_part!("{}", summary.text());
    }
    if !summary.failed.is_empty() {
        let pids: Vec<i32> = summary.failed.iter().map(|f| f.pid).collect();
        let _ = writeln!(std::io::stderr(), "pannus: committing `{patch}` failed in {}", processes_text(&pids));
    }
    Ok(summary.exit_code())
}
