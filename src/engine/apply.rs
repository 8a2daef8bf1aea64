//! Apply: pre-flight, then the four stages in order, each confirmed by the observer. Every step
//! that leaves something in the target is pushed to an undo log as it completes; on any failure
//! or cancellation the log is unwound and the target is left as it was.

use super::undo::UndoLog;
use super::{now_secs, outcome_of, Measured, Observer, Prepared, Session};
use crate::error::{Error, Result};
use crate::manifest::{LoadMethod, Manifest};
use crate::registry::{self, PatchRecord, Registry, State};
use std::time::Instant;

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
            Ok(a) => self.journal("apply", Some(&m.patch), "ok", &format!("state {}", a.record.state)),
            Err(e) => self.journal("apply", Some(&m.patch), outcome_of(e), &e.message),
        }
        result
    }

    fn apply_inner(&mut self, m: &Manifest, obs: &mut dyn Observer) -> Result<Applied> {
        let mut measured = Measured::default();
        let t0 = Instant::now();
        let mut reg = self.registry()?;
        let mut lines = Vec::new();
        let p = self.prepare(m, &reg, &mut lines)?;
        measured.timings.preflight = Some(t0.elapsed());
        for l in &lines {
            obs.progress(None, &format!("ok  {}: {}", l.check, l.detail));
        }
        let mut log = UndoLog::new(registry::locate(&self.target.maps).is_some());
        match self.stages(&p, &mut reg, obs, &mut log, &mut measured) {
            Ok(record) => Ok(Applied { record, measured }),
            Err(e) => Err(self.undo_apply(&mut reg, &m.patch, &log, e)),
        }
    }

    /// Stages 1 to 4, then the trial.
    fn stages(
        &mut self,
        p: &Prepared,
        reg: &mut Registry,
        obs: &mut dyn Observer,
        log: &mut UndoLog,
        measured: &mut Measured,
    ) -> Result<PatchRecord> {
        let m = &p.manifest;
        let record = new_record(p, reg);
        // Stages 1 to 3 mostly wait for the borrowed thread: at the normal policy (see
        // SpareCpu::pause).
        let paused = pannus_kernel::SpareCpu::pause();
        let replacements = match m.module.load {
            LoadMethod::Mmap => {
                let bias = self.stage_load(p, reg, record, obs, log, measured)?;
                self.stage_link(p, bias, reg, obs, log, measured)?;
                self.stage_init(p, bias, reg, obs, log, measured)?;
                p.functions.iter().map(|f| bias.wrapping_add(f.replacement_vaddr)).collect()
            }
            LoadMethod::Dlopen => self.stage_dlopen(p, reg, record, obs, log, measured)?,
        };
        drop(paused);
        self.stage_activate(p, &replacements, reg, obs, log, measured)?;
        let deadline = now_secs() + m.trial.duration.as_secs();
        if let Some(r) = reg.get_mut(&m.patch) {
            r.state = State::Trial;
            r.trial_deadline = Some(deadline);
        }
        self.write_registry(reg)?;
        reg.get(&m.patch).cloned().ok_or_else(|| Error::other(format!("the registry lost the record of `{}`", m.patch)))
    }
}

/// The record of a patch about to be loaded, as the registry keeps it.
fn new_record(p: &Prepared, reg: &Registry) -> PatchRecord {
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
    }
}
