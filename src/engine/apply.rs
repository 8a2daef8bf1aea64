//! Apply: pre-flight, then the four stages in order, each confirmed by the observer. Every step
//! that leaves something in the target is pushed to an undo log as it completes; on any failure
//! or cancellation the log is unwound and the target is left as it was.

use super::undo::UndoLog;
use super::{cancelled, now_secs, outcome_of, Measured, Observer, Prepared, Session, Stage};
use crate::error::{Error, Result};
use crate::manifest::{LoadMethod, Manifest};
use crate::registry::{self, PatchRecord, Registry, State};
use std::time::Instant;

/// An apply in progress: what its stages read and add to.
pub(super) struct Applying<'o> {
    /// The process's registry as this apply last wrote it.
    pub(super) reg: Registry,
    pub(super) obs: &'o mut dyn Observer,
    /// What the stages left in the target so far.
    pub(super) log: UndoLog,
    pub(super) measured: Measured,
}

impl Applying<'_> {
    /// Asks the observer before `stage`, showing `plan`: a "no" cancels the apply. Returns when
    /// the stage's work began.
    pub(super) fn confirm(&mut self, stage: Stage, plan: &str) -> Result<Instant> {
        if !self.obs.confirm(stage, plan) {
            let e = cancelled(stage);
            return Err(match self.obs.why_not() {
                Some(why) => e.context(why),
                None => e,
            });
        }
        Ok(Instant::now())
    }
}

/// A patch applied: its record in the process, and what the apply measured.
#[derive(Debug, Clone)]
pub struct Applied {
    pub record: PatchRecord,
    pub measured: Measured,
}

impl Session<'_> {
    /// Applies a patch: pre-flight checks, then the four stages, each confirmed by `obs`.
    /// On any failure or cancellation, the stages already done are undone and the target is
    /// left as it was.
    pub fn apply(&mut self, m: &Manifest, obs: &mut dyn Observer) -> Result<Applied> {
        let result = self.apply_inner(m, obs);
        match &result {
            Ok(a) => {
                // An indirect function's implementation in use is part of what was done.
                let routes: Vec<String> =
                    a.record.functions.iter().filter(|f| f.in_use == Some(true)).map(|f| f.route()).collect();
                let others = a.record.functions.iter().filter(|f| f.in_use == Some(false)).count();
                let mut detail = format!("state {}", a.record.state);
                if !routes.is_empty() {
                    detail += &format!("; {}", routes.join(", "));
                }
                if others > 0 {
                    detail += &format!("; {others} implementation(s) not in use patched too");
                }
                self.journal("apply", Some(&m.patch), "ok", &detail)
            }
            Err(e) => self.journal("apply", Some(&m.patch), outcome_of(e), &e.message),
        }
        result
    }

    fn apply_inner(&mut self, m: &Manifest, obs: &mut dyn Observer) -> Result<Applied> {
        let t0 = Instant::now();
        let reg = self.registry()?;
        let mut lines = Vec::new();
        let p = self.prepare(m, &reg, &mut lines)?;
        for l in &lines {
            obs.progress(None, &format!("ok  {}: {}", l.check, l.detail));
        }
        let log = UndoLog::new(registry::locate(&self.target.maps).is_some());
        let mut run = Applying { reg, obs, log, measured: Measured::default() };
        run.measured.timings.preflight = Some(t0.elapsed());
        if let Err(e) = self.stages(&p, &mut run) {
            crate::ledger::forget(&self.engine.state_dir, self.target.pid, &m.patch);
            return Err(self.undo_apply(&mut run.reg, &m.patch, &run.log, e));
        }
        // The jumps are written: from here on a failure says so, and nothing is undone (the
        // record stays `activating`, which rollback finishes).
        let deadline = self.trial_deadline(m);
        if let Some(r) = run.reg.get_mut(&m.patch) {
            r.state = State::Trial;
            r.trial_deadline = Some(deadline);
        }
        let pid = self.target.pid;
        let live = |e: Error| {
            e.context(format!("patch `{}` is active in process {pid}, but", m.patch)).hint(format!(
                "roll it back (pannus rollback --pid {pid} {}) or see pannus status --pid {pid}",
                m.patch
            ))
        };
        self.write_registry(&run.reg).map_err(live)?;
        let id = &m.patch;
        let record = run.reg.get(id).cloned().ok_or_else(|| live(Error::other("the registry lost its record")))?;
        Ok(Applied { record, measured: run.measured })
    }

    /// When the trial of `m` applied now ends (Unix seconds).
    fn trial_deadline(&self, m: &Manifest) -> u64 {
        self.engine.trial_until.unwrap_or_else(|| now_secs() + m.trial.duration.as_secs())
    }

    /// Root's record of the trial, which the trial watcher acts on (see `ledger.rs`), saved
    /// before the jumps are written: a pannus killed after them leaves a trial that is watched.
    fn record_trial(&self, m: &Manifest) -> Result<()> {
        let entry = crate::ledger::Entry {
            patch: m.patch.clone(),
            manifest_digest: m.digest.clone(),
            module: m.module.path.clone(),
            module_sha256: m.module.sha256.clone(),
            deadline: self.trial_deadline(m),
            on_expiry: m.trial.on_expiry.into(),
            health_check: m.trial.health_check.as_ref().map(Into::into),
        };
        crate::ledger::save(&self.engine.state_dir, self.target.pid, &entry)
            .map_err(|e| e.context("recording the trial in the state folder"))
    }

    /// Stages 1 to 4, the trial recorded before stage 4.
    fn stages(&mut self, p: &Prepared, run: &mut Applying) -> Result<()> {
        let m = &p.manifest;
        let record = new_record(p, &run.reg, self.target.pid);
        // Stages 1 to 3 mostly wait for the borrowed thread: at the normal policy (see
        // SpareCpu::pause).
        let paused = pannus_kernel::SpareCpu::pause();
        let replacements = match m.module.load {
            LoadMethod::Mmap => {
                let bias = self.stage_load(p, record, run)?;
                self.stage_link(p, bias, run)?;
                self.stage_init(p, bias, run)?;
                p.functions.iter().map(|f| bias.wrapping_add(f.replacement_vaddr)).collect()
            }
            LoadMethod::Dlopen => self.stage_dlopen(p, record, run)?,
        };
        drop(paused);
        self.record_trial(m)?;
        self.stage_activate(p, &replacements, run)
    }
}

/// The record of a patch about to be loaded, as the registry keeps it.
fn new_record(p: &Prepared, reg: &Registry, pid: i32) -> PatchRecord {
    let m = &p.manifest;
    PatchRecord {
        patch: m.patch.clone(),
        version: m.version.clone(),
        description: m.description.clone(),
        state: State::Loaded,
        seq: reg.next_seq + 1,
        requires: m.requires.clone(),
        manifest: m.source.display().to_string(),
        manifest_digest: m.digest.clone(),
        module: m.module.path.display().to_string(),
        module_sha256: m.module.sha256.clone(),
        target_object: p.object.mapped_path.clone(),
        build_id: m.target.build_id.clone(),
        module_base: 0,
        module_size: 0,
        functions: Vec::new(),
        applied_at: now_secs(),
        trial_deadline: None,
        trial_seconds: m.trial.duration.as_secs(),
        on_expiry: m.trial.on_expiry.into(),
        ended_at: None,
        note: None,
        module_mapped: true,
        retries: m.safety.retries,
        retry_interval_ms: m.safety.retry_interval.as_millis() as u64,
        consistency: m.safety.consistency.into(),
        health_check: m.trial.health_check.as_ref().map(Into::into),
        health: None,
        load: m.module.load.into(),
        handle: None,
        stubs: None,
        eh_frame: None,
        fini: Vec::new(),
        init_ran: false,
        unwind_tables: Vec::new(),
        module_fd: None,
        applied_in: Some(pid),
    }
}
