//! `pannus install`, `uninstall` and `installed`: patches as the desired state of a build of
//! a binary (see `crate::install`), applied to and rolled back from every process of it with
//! `apply --all` and `rollback --all`'s machinery.

use super::fleet_cmd::{print_rollout, print_summary, processes_text, RolloutDoc};
use super::{ask, interrupt, output, require_terminal_or_yes};
use crate::engine::Engine;
use crate::error::{Error, Kind, Result};
use crate::install::{self, Installed, State};
use crate::manifest::Manifest;
use serde::Serialize;
use std::path::Path;

/// An installed patch, as `--json` shows it.
#[derive(Serialize)]
struct InstalledDoc<'a> {
    patch: &'a str,
    version: &'a str,
    object: &'a Path,
    build_id: &'a str,
    state: State,
    trial_deadline: Option<&'a str>,
    trial_remaining_s: Option<u64>,
    requires: &'a [String],
    manifest: &'a Path,
    /// Processes that run this build of the object, and how many of them have the patch.
    processes: usize,
    patched: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// A canary rollout under way (`running`), or interrupted.
    canary: Option<CanaryDoc<'a>>,
}

#[derive(Serialize)]
struct CanaryDoc<'a> {
    canaries: &'a [i32],
    until: &'a str,
    remaining_s: Option<u64>,
    running: bool,
    by: i32,
}

fn doc(i: &Installed) -> InstalledDoc<'_> {
    let (processes, patched) = install::coverage(&i.manifest);
    let state = i.record.now(&i.manifest);
    InstalledDoc {
        patch: &i.manifest.patch,
        version: &i.manifest.version,
        object: &i.manifest.target.object,
        build_id: &i.manifest.target.build_id,
        state,
        trial_deadline: i.record.trial_deadline.as_deref().filter(|_| state == State::Trial),
        trial_remaining_s: install::remaining(i.record.trial_deadline.as_deref())
            .filter(|_| state == State::Trial)
            .map(|d| d.as_secs()),
        requires: &i.manifest.requires,
        manifest: &i.manifest_path,
        processes,
        patched,
        reason: i.record.reason.as_deref(),
        canary: i.record.canary.as_ref().map(|c| CanaryDoc {
            canaries: &c.canaries,
            until: &c.until,
            remaining_s: install::remaining(Some(&c.until)).map(|d| d.as_secs()),
            running: c.running(),
            by: c.by,
        }),
    }
}

#[derive(Serialize)]
struct InstallDoc<'a> {
    installed: InstalledDoc<'a>,
    apply: Option<output::FleetApply<'a>>,
}

pub fn install(
    engine: &Engine,
    path: &Path,
    yes: bool,
    canary: Option<crate::canary::Canary>,
    json: bool,
) -> Result<i32> {
    let m = Manifest::load(path)?;
    require_terminal_or_yes(yes, "install")?;
    let plan = match crate::fleet::plan_apply(&m) {
        Ok(plan) => Some(plan),
        // Installed for the processes to come: none runs it now.
        Err(e) if e.kind == Kind::Precondition && e.message.starts_with("no process maps") => None,
        Err(e) => return Err(e),
    };
    let members = plan.as_ref().map(|p| p.pids()).unwrap_or_default();
    if !yes {
        let now = if members.is_empty() { "no process runs it now".to_string() } else { processes_text(&members) };
        let q = format!(
            "Install `{}` {} for {} (build-id {}), new processes of that build included; apply it now to {now}?",
            m.patch,
            m.version,
            m.target.object.display(),
            m.target.build_id
        );
        if !ask(&q) {
            return Err(Error::cancelled("install cancelled: nothing was installed"));
        }
    }
    // One install, uninstall or rollout of a patch at a time; a rollout whose pannus is gone
    // (killed) is finished by this run.
    let _rollout = crate::lock::InstalledLock::rollout(&engine.state_dir, &m.patch)?;
    let state = &engine.state_dir;
    // Until the canaries pass, the daemon gives it to no other process: the record says so
    // from its first write.
    let run = match (canary, plan.as_ref()) {
        (Some(c), Some(p)) => Some(install::CanaryRun::new(crate::canary::canaries(p, c), c.trial)),
        _ => None,
    };
    let mut installed = install::install(state, path, &m, run.clone())?;
    let patch = installed.manifest.patch.clone();
    if installed.record.canary != run {
        install::update(state, &patch, |r| r.canary = run.clone())?;
        installed = install::get(state, &patch)?.unwrap_or(installed);
    }
    let options =
        crate::fleet::ApplyOptions { rollback_on_failure: false, watch: true, interrupted: Some(interrupt::received) };
    let mut progress = |line: &str| {
        if !json {
            say!("{line}");
        }
    };
    if let (Some(canary), Some(plan)) = (canary, plan.as_ref()) {
        let rollout = crate::canary::apply(engine, &installed.manifest, plan, canary, options, &mut progress);
        // The rollout is over; a failure (or a health check that failed meanwhile, recorded as
        // it happened) keeps the patch from new processes.
        install::update(state, &patch, |r| {
            r.canary = None;
            if let Some(why) = &rollout.failure {
                // A canary's health check that failed has already said why, as it happened.
                let why = match (r.state, &r.reason) {
                    (State::RolledBack, Some(first)) => first.clone(),
                    _ => why.clone(),
                };
                (r.state, r.trial_deadline, r.reason) =
                    (State::RolledBack, None, Some(format!("canary failed: {why}")));
            }
        })?;
        let installed = install::get(state, &patch)?.unwrap_or(installed);
        if json {
            output::print(&CanaryInstallDoc {
                installed: doc(&installed),
                rollout: RolloutDoc::new(&rollout, canary),
            })?;
        } else {
            print_rollout(&rollout, canary, false)?;
            say!("installed `{}`: {}", installed.manifest.patch, installed.record.now(&installed.manifest));
        }
        return Ok(rollout.exit_code());
    }
    let summary =
        plan.as_ref().map(|plan| crate::fleet::apply(engine, &installed.manifest, plan, options, &mut progress));
    let code = summary.as_ref().map_or(0, |s| s.exit_code());
    if json {
        output::print(&InstallDoc {
            installed: doc(&installed),
            apply: summary.as_ref().map(output::FleetApply::from),
        })?;
    } else {
        if let Some(s) = &summary {
            print_summary(s, false)?;
        }
        say!(
            "installed `{}` for {} (build-id {}): {}",
            installed.manifest.patch,
            installed.manifest.target.object.display(),
            installed.manifest.target.build_id,
            installed.record.now(&installed.manifest)
        );
    }
    Ok(code)
}

#[derive(Serialize)]
struct CanaryInstallDoc<'a> {
    installed: InstalledDoc<'a>,
    #[serde(flatten)]
    rollout: RolloutDoc<'a>,
}

#[derive(Serialize)]
struct UninstallDoc<'a> {
    uninstalled: Vec<String>,
    kept: Vec<String>,
    rollback: Vec<output::FleetRollback<'a>>,
}

pub fn uninstall(engine: &Engine, patch: &str, yes: bool, cascade: bool, json: bool) -> Result<i32> {
    // What goes with it: the installed patches that require it, theirs first.
    let order = install::uninstall_order(&engine.state_dir, patch, cascade)?;
    require_terminal_or_yes(yes, "uninstall")?;
    if !yes {
        let mut pids: Vec<i32> = order
            .iter()
            .filter_map(|p| {
                let m = install::get(&engine.state_dir, p).ok().flatten().map(|i| i.manifest);
                install::rollback_plan(p, m.as_ref()).ok()
            })
            .flat_map(|p| p.pids())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        let names = order.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ");
        let from = if pids.is_empty() { "no process has it".to_string() } else { processes_text(&pids) };
        if !ask(&format!("Uninstall {names}: roll back from {from}, and apply to no new process?")) {
            return Err(Error::cancelled("uninstall cancelled: nothing was changed"));
        }
    }
    let done = install::uninstall(engine, &order, Some(interrupt::received), &mut |line: &str| {
        if !json {
            say!("{line}");
        }
    })?;
    if json {
        let rollback = done.rollbacks.iter().map(output::FleetRollback::from).collect();
        output::print(&UninstallDoc { uninstalled: done.uninstalled, kept: done.kept, rollback })?;
    } else {
        for s in &done.rollbacks {
            print_summary(s, false)?;
        }
        for p in &done.uninstalled {
            say!("uninstalled `{p}`");
        }
        for p in &done.kept {
            say!("`{p}` stays installed, rolled back: some processes still have it (see above); run uninstall again");
        }
    }
    Ok(done.code)
}

pub fn list(engine: &Engine, json: bool) -> Result<()> {
    let all = install::installed(&engine.state_dir)?;
    let docs: Vec<InstalledDoc<'_>> = all.iter().map(doc).collect();
    if json {
        return output::print(&docs);
    }
    if docs.is_empty() {
        say!("no patch is installed");
    }
    for d in &docs {
        let trial = match d.trial_remaining_s {
            Some(s) => format!(" ({}:{:02} left)", s / 60, s % 60),
            None => String::new(),
        };
        say!(
            "{} {}  {}{trial}  {}/{} processes  {} (build-id {}){}",
            d.patch,
            d.version,
            d.state,
            d.patched,
            d.processes,
            d.object.display(),
            d.build_id,
            d.reason.map(|r| format!("  [{r}]")).unwrap_or_default()
        );
        match &d.canary {
            Some(c) if c.running => say!(
                "  canary rollout under way: process(es) {}, {} left; no other process gets it until it ends",
                c.canaries.iter().map(i32::to_string).collect::<Vec<_>>().join(", "),
                humantime::format_duration(std::time::Duration::from_secs(c.remaining_s.unwrap_or(0)))
            ),
            Some(c) => say!(
                "  canary rollout interrupted (pannus, pid {}, is gone): install it again to finish, or uninstall",
                c.by
            ),
            None => {}
        }
    }
    Ok(())
}
