//! Canary rollouts (`apply --all` and `install` with `--canary N --canary-trial DURATION`):
//! the patch goes to N processes first; they are kept through the canary trial, their trial
//! watchers running the manifest's health check; only then does it go to the rest. A canary
//! whose patch is rolled back (a failed health check, an operator) or that exits during the
//! canary trial fails the rollout: the canaries are rolled back and no other process is
//! touched.

use crate::engine::{self, Engine};
use crate::fleet::{self, ApplyOptions, Plan, Summary};
use crate::manifest::Manifest;
use std::time::{Duration, Instant};

/// How many processes go first, and for how long they are watched.
#[derive(Debug, Clone, Copy)]
pub struct Canary {
    pub count: usize,
    pub trial: Duration,
}

/// What a canary rollout did.
pub struct Rollout {
    pub canaries: Vec<i32>,
    /// The apply to the canaries.
    pub first: Summary,
    /// Why the canaries failed, when they did.
    pub failure: Option<String>,
    /// The canaries' rollback, when they failed.
    pub rollback: Option<Summary>,
    /// The apply to the rest, when the canaries passed.
    pub rest: Option<Summary>,
}

impl Rollout {
    pub fn exit_code(&self) -> i32 {
        if self.failure.is_some() {
            return 1;
        }
        let codes = [Some(self.first.exit_code()), self.rest.as_ref().map(Summary::exit_code)];
        codes.into_iter().flatten().find(|&c| c != 0).unwrap_or(0)
    }
}

/// How often the canaries are looked at during their trial.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// Whether `patch` is still applied (in trial or committed) in canary `pid`; why not otherwise.
/// Root's own record (the ledger, which a rollback forgets) decides first: the process's
/// registry, which the process can write, can only add a reason to fail.
fn still_patched(engine: &Engine, pid: i32, patch: &str) -> Result<(), String> {
    if !pannus_kernel::process_exists(pid) {
        return Err(format!("canary process {pid} exited during the canary trial"));
    }
    match crate::ledger::load(&engine.state_dir, pid, patch) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(format!(
                "`{patch}` was rolled back in canary process {pid} (its health check failed, or by hand)"
            ))
        }
        Err(e) => return Err(format!("the record of `{patch}` in canary process {pid} cannot be read: {e}")),
    }
    match engine::read_status(pid) {
        Ok((_, reg)) => match reg.get(patch) {
            Some(r) if r.state.is_active() => Ok(()),
            Some(r) => Err(format!(
                "`{patch}` is {} in canary process {pid} (its health check failed, or it was rolled back)",
                r.state
            )),
            None => Err(format!("`{patch}` is gone from canary process {pid}")),
        },
        Err(_) if !pannus_kernel::process_exists(pid) => {
            Err(format!("canary process {pid} exited during the canary trial"))
        }
        Err(e) => Err(format!("canary process {pid} cannot be read: {e}")),
    }
}

/// The processes of `plan` that go first.
pub fn canaries(plan: &Plan, canary: Canary) -> Vec<i32> {
    plan.members.iter().take(canary.count).map(|m| m.pid.get()).collect()
}

/// Applies `m` to the processes of `plan`, the first `canary.count` of them first.
pub fn apply(
    engine: &Engine,
    m: &Manifest,
    plan: &Plan,
    canary: Canary,
    options: ApplyOptions,
    progress: &mut dyn fleet::Report,
) -> Rollout {
    let n = canary.count.min(plan.members.len());
    let first_plan = Plan { members: plan.members[..n].to_vec(), ..plan.clone() };
    let rest_plan = Plan {
        patch: plan.patch.clone(),
        members: plan.members[n..].to_vec(),
        skipped: Vec::new(),
        failed: Vec::new(),
    };
    let canaries = first_plan.pids();
    progress.line(&format!(
        "canaries: {} of {} process(es): {}",
        n,
        plan.members.len(),
        canaries.iter().map(i32::to_string).collect::<Vec<_>>().join(", ")
    ));
    let first = fleet::apply(engine, m, &first_plan, ApplyOptions { watch: true, ..options }, progress);
    let patched: Vec<i32> = first.patched.clone();
    let mut failure = first
        .failed
        .iter()
        .find(|f| canaries.contains(&f.pid))
        .map(|f| format!("the apply failed in canary process {}: {}", f.pid, f.error.message))
        .or_else(|| first.cancelled.clone().map(|c| format!("cancelled: {c}")));
    if failure.is_none() && !patched.is_empty() {
        progress.line(&format!(
            "canary trial: {} ({} process(es) watched)",
            humantime::format_duration(canary.trial),
            patched.len()
        ));
        let end = Instant::now() + canary.trial;
        'watch: loop {
            for &pid in &patched {
                if let Err(why) = still_patched(engine, pid, &m.patch) {
                    failure = Some(why);
                    break 'watch;
                }
            }
            if let Some(sig) = options.interrupted.and_then(|received| received()) {
                failure = Some(format!("cancelled: {sig} received during the canary trial"));
                break;
            }
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep(LOOK_EVERY.min(end - now));
        }
    }
    if let Some(why) = failure {
        progress.line(&format!("canaries failed: {why}; rolling them back, no other process touched"));
        let back = fleet::plan_rollback(&m.patch).ok().map(|mut p| {
            p.members.retain(|member| patched.contains(&member.pid.get()));
            p
        });
        let rollback =
            back.filter(|p| !p.members.is_empty()).map(|p| fleet::rollback(engine, &p, true, None, progress));
        return Rollout { canaries, first, failure: Some(why), rollback, rest: None };
    }
    progress.line("canaries passed: applying to the rest");
    let rest = (!rest_plan.members.is_empty()).then(|| fleet::apply(engine, m, &rest_plan, options, progress));
    Rollout { canaries, first, failure: None, rollback: None, rest }
}
