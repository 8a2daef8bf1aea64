//! Rollback: the original bytes written back in one stop (or handed to a later patch stacked on
//! the same entry), newest patch first with `--cascade`, then the module unloaded through the
//! undo log read back from its record ([`UndoLog::of_record`]) once no thread can be inside it.

use super::activate::{module_idle, replacement_code, ModuleSeen, Stopped, Switch, UNLOAD_SCAN};
use super::undo::{UndoLog, KEPT_MAPPED};
use super::{now_secs, outcome_of, Measured, Observer, Session, Timings};
use crate::error::{Error, Kind, Result};
use crate::registry::{PatchRecord, Registry, State};
use crate::safety::{EntryPlan, ThreadView};
use std::collections::HashSet;
use std::ops::Range;
use std::time::{Duration, Instant};

/// The refusal of a rollback of `id` without `--cascade` while `dependents` require it.
pub fn still_required(pid: i32, id: &str, dependents: &[String]) -> Error {
    Error::precondition(format!(
        "patch `{id}` is required by {} applied in process {pid}",
        dependents.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ")
    ))
    .hint("roll those back first, or use --cascade to roll them back together, newest first")
}

/// Patches rolled back: their ids, newest first, the modules kept mapped, and what the
/// rollback measured.
#[derive(Debug, Clone)]
pub struct RolledBack {
    pub ids: Vec<String>,
    pub kept_mapped: Vec<KeptMapped>,
    pub measured: Measured,
}

/// A patch rolled back whose module stays mapped, and why (a thread inside it, a pointer into
/// it the process keeps, ...): its functions run their old code all the same, and a later
/// rollback unloads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeptMapped {
    pub patch: String,
    pub reason: String,
}

impl Session<'_> {
    /// Rolls back `patch` (the most recently applied one when `None`); with `cascade`, the
    /// patches that require it are rolled back first, newest first. Returns the ids rolled back.
    pub fn rollback(&mut self, patch: Option<&str>, cascade: bool, obs: &mut dyn Observer) -> Result<RolledBack> {
        self.rollback_because(patch, cascade, "", obs)
    }

    /// [`Session::rollback`], recording `why` in the journal and in the patches' records.
    pub fn rollback_because(
        &mut self,
        patch: Option<&str>,
        cascade: bool,
        why: &str,
        obs: &mut dyn Observer,
    ) -> Result<RolledBack> {
        let mut measured = Measured::default();
        let mut kept_mapped = Vec::new();
        match self.rollback_inner(patch, cascade, why, obs, &mut measured, &mut kept_mapped) {
            Ok(ids) => {
                // A patch rolled back because it requires `patch` is a cascade, whatever ended
                // `patch` (its own trial did not expire, its own health check did not fail).
                let why_of = |id: &str| match patch {
                    Some(root) if root != id => format!("cascade: rolled back with `{root}`, which it requires"),
                    _ => why.to_string(),
                };
                if ids.iter().any(|id| !why_of(id).is_empty()) {
                    if let Ok(mut reg) = self.registry() {
                        for id in &ids {
                            if let Some(r) = reg.get_mut(id).filter(|_| !why_of(id).is_empty()) {
                                r.note = Some(why_of(id));
                            }
                        }
                        let _ = self.write_registry(&reg);
                    }
                }
                for id in &ids {
                    let mut detail = why_of(id);
                    if let Some(k) = kept_mapped.iter().find(|k| &k.patch == id) {
                        let sep = if detail.is_empty() { "" } else { "; " };
                        detail = format!("{detail}{sep}{KEPT_MAPPED}{}", k.reason);
                    }
                    self.journal("rollback", Some(id), "ok", &detail);
                    crate::ledger::forget(&self.engine.state_dir, self.target.pid, id);
                }
                Ok(RolledBack { ids, kept_mapped, measured })
            }
            Err(e) => {
                self.journal("rollback", patch, outcome_of(&e), &e.message);
                Err(e)
            }
        }
    }

    fn rollback_inner(
        &mut self,
        patch: Option<&str>,
        cascade: bool,
        why: &str,
        obs: &mut dyn Observer,
        measured: &mut Measured,
        kept_mapped: &mut Vec<KeptMapped>,
    ) -> Result<Vec<String>> {
        let pid = self.target.pid;
        let mut reg = self.registry()?;
        let id = match patch {
            Some(id) => {
                match reg.get(id) {
                    Some(p) if p.state.is_applied() => {}
                    Some(p) if p.module_mapped => {
                        // Rolled back, but its module is still mapped (a pannus was killed
                        // before unmapping it, or a thread was inside): finish the unload.
                        kept_mapped.extend(self.unload(&mut reg, id, None, obs, measured)?);
                        return Ok(vec![id.to_string()]);
                    }
                    Some(_) => {
                        return Err(Error::precondition(format!(
                            "patch `{id}` is already rolled back in process {pid}"
                        )))
                    }
                    None => {
                        return Err(Error::precondition(format!("patch `{id}` is not applied in process {pid}"))
                            .hint(format!("see pannus status --pid {pid}")))
                    }
                }
                id.to_string()
            }
            None => match reg.applied().max_by_key(|p| p.seq) {
                Some(p) => p.patch.clone(),
                None => {
                    let pending: Vec<String> =
                        reg.patches.iter().filter(|p| p.module_mapped).map(|p| p.patch.clone()).collect();
                    if pending.is_empty() {
                        return Err(Error::precondition(format!("process {pid} has no patch applied")));
                    }
                    for id in &pending {
                        kept_mapped.extend(self.unload(&mut reg, id, None, obs, measured)?);
                    }
                    return Ok(pending);
                }
            },
        };
        // Everything that depends on it, transitively.
        let dependents = reg.dependents(&id);
        if !dependents.is_empty() && !cascade {
            return Err(still_required(pid, &id, &dependents));
        }
        let mut order = vec![id.clone()];
        order.extend(dependents);
        order.sort_by_key(|i| std::cmp::Reverse(reg.get(i).map(|p| p.seq).unwrap_or(0)));
        let mut done = Vec::new();
        for i in order {
            kept_mapped.extend(self.rollback_one(&mut reg, &i, why, obs, measured)?);
            obs.progress(None, &format!("rolled back `{i}`"));
            done.push(i);
        }
        Ok(done)
    }

    fn rollback_one(
        &mut self,
        reg: &mut Registry,
        id: &str,
        why: &str,
        obs: &mut dyn Observer,
        measured: &mut Measured,
    ) -> Result<Option<KeptMapped>> {
        let rec = reg.get(id).cloned().ok_or_else(|| Error::other(format!("patch `{id}` vanished")))?;
        let retries = rec.retries;
        let interval = Duration::from_millis(rec.retry_interval_ms);
        // 1. Restore entry bytes (or hand them to a later patch stacked on the same function).
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut plans = Vec::new();
        let mut names = Vec::new();
        for f in rec.functions.iter().rev() {
            let original = hex::decode(&f.original).unwrap_or_default();
            let written = hex::decode(&f.written).unwrap_or_default();
            // Our jump still in place (whatever a later record says: an apply killed before it
            // wrote its own leaves a record that never did): we restore the bytes ourselves.
            let current = self.target.mem.read_vec(f.patch_address, written.len())?;
            if current == written {
                writes.push((f.patch_address, original.clone()));
                // The bytes now there are our jump: a single instruction (or a pad jump pair),
                // so a thread can only stand at its start.
                plans.push(EntryPlan {
                    jump: f.jump,
                    patch_address: f.patch_address,
                    original: written.clone(),
                    written: original,
                    starts: vec![f.patch_address, f.address],
                });
                names.push(f.target.clone());
                continue;
            }
            let later = reg
                .patches
                .iter_mut()
                .filter(|p| p.state.is_applied() && p.seq > rec.seq)
                .flat_map(|p| p.functions.iter_mut().map(|g| (p.seq, g)))
                .filter(|(_, g)| g.patch_address == f.patch_address)
                .min_by_key(|(seq, _)| *seq);
            if let Some((_, g)) = later {
                // A later patch overwrote this entry and saved our jump as its "original":
                // from now on its original is the true original.
                let theirs = hex::decode(&g.original).unwrap_or_default();
                let mut merged = original.clone();
                if theirs.len() > merged.len() {
                    merged.extend_from_slice(&theirs[merged.len()..]);
                }
                g.original = hex::encode(merged);
            }
        }
        let mut seen = None;
        if !writes.is_empty() {
            // Under the `function` rule, no thread may be inside the replacements being removed.
            let busy_ranges = rec.functions.iter().filter_map(replacement_code).collect();
            let module_code = if rec.module_mapped { self.module_code(&rec) } else { Vec::new() };
            let consistency = rec.consistency;
            let sw = Switch { names, plans, writes, retries, interval, consistency, busy_ranges, module_code };
            let t0 = Instant::now();
            seen = Some(self.switch(&sw, obs, measured)?.1);
            Timings::add(&mut measured.timings.restore, t0.elapsed());
        }
        if let Some(r) = reg.get_mut(id) {
            r.state = State::RolledBack;
            // In the same write as the state: whoever sees it rolled back sees why.
            r.note = Some(why.to_string()).filter(|w| !w.is_empty());
            r.ended_at = Some(now_secs());
            r.trial_deadline = None;
        }
        self.write_registry(reg)?;
        // 2. Unload once no thread can be inside the module and nothing points into it.
        let mut kept = None;
        if rec.module_mapped {
            let t0 = Instant::now();
            let _paused = pannus_kernel::SpareCpu::pause();
            kept = self.unload(reg, id, seen, obs, measured)?;
            Timings::add(&mut measured.timings.unload, t0.elapsed());
        }
        Ok(kept)
    }

    /// Unmaps the module of rolled-back patch `id` once no thread can be inside it and nothing
    /// the process keeps points into it; when a thread stays inside for the whole budget, or a
    /// pointer is found, the module is kept mapped (harmless: nothing jumps to it any more, and
    /// what points there still works), and a later rollback tries again. Returns why it was
    /// kept, if it was.
    fn unload(
        &mut self,
        reg: &mut Registry,
        id: &str,
        seen: Option<ModuleSeen>,
        obs: &mut dyn Observer,
        measured: &mut Measured,
    ) -> Result<Option<KeptMapped>> {
        let Some(rec) = reg.get(id).cloned() else { return Ok(None) };
        let idle = match seen {
            Some(ModuleSeen { busy: None, stack_pointers, .. }) => Ok(stack_pointers),
            Some(ModuleSeen { clear, .. }) => self.wait_module_idle(&rec, clear, measured),
            None => self.wait_module_idle(&rec, HashSet::new(), measured),
        };
        // The function is rolled back by now: a module that cannot be unloaded yet (a thread
        // inside it, none at a safe point to run its finalisers on, a pointer into it) is kept
        // mapped, harmless, for a later rollback to unload; the rollback itself has succeeded.
        let idle = idle.and_then(|sps| self.unwind(reg, id, &UndoLog::of_record(&rec).with_stack_pointers(sps)));
        let mut kept = None;
        match idle {
            Ok(()) => {
                if let Some(r) = reg.get_mut(id) {
                    r.module_mapped = false;
                    // Only the note that said the module stayed: the reason for the rollback stays.
                    if r.note.as_deref().is_some_and(|n| n.starts_with(KEPT_MAPPED)) {
                        r.note = None;
                    }
                }
            }
            Err(e) => {
                let reason = e.message.strip_prefix(KEPT_MAPPED).unwrap_or(&e.message).to_string();
                obs.progress(None, &format!("module of `{id}` kept mapped: {reason}"));
                if let Some(r) = reg.get_mut(id) {
                    r.note = Some(format!("{KEPT_MAPPED}{reason}"));
                }
                kept = Some(KeptMapped { patch: id.to_string(), reason });
            }
        }
        self.write_registry(reg)?;
        Ok(kept)
    }

    /// The module's code as mapped, and its jump stubs: what no thread may be in when the
    /// module is unmapped.
    fn module_code(&self, rec: &PatchRecord) -> Vec<Range<u64>> {
        let (base, size) = (rec.module_base, rec.module_size);
        let mut code: Vec<Range<u64>> = self
            .target
            .maps
            .iter()
            .filter(|m| m.exec && m.start >= base && m.end <= base + size)
            .map(|m| m.start..m.end)
            .collect();
        if let Some(s) = rec.stubs {
            code.push(s.addr..s.addr + s.size);
        }
        code
    }

    /// Waits until no thread executes in the module's code or has a return address into it.
    /// A thread seen clear of it once cannot come back (nothing jumps there any more), so
    /// threads are cleared one by one across attempts, starting with `clear`: a busy process
    /// need not have every thread clear in one and the same stop.
    ///
    /// A thread in the way leaves only by running, so the threads are stopped again only once
    /// every thread in the way at the last stop has run since (or blocked, or exited), or a new
    /// thread appeared: on a machine where threads wait long for a CPU, stopping sooner would
    /// only hold the others again for nothing. The last attempt always stops, for an exact
    /// answer. Returns every thread's stack pointer at the last stop.
    pub(super) fn wait_module_idle(
        &mut self,
        rec: &PatchRecord,
        mut clear: HashSet<i32>,
        measured: &mut Measured,
    ) -> Result<Vec<u64>> {
        let (retries, interval) = (rec.retries, Duration::from_millis(rec.retry_interval_ms));
        let code = self.module_code(rec);
        let pid = self.target.pid;
        let mut stack_buf: Vec<u8> = Vec::new();
        // The threads in the way at the last stop, with the CPU time each had used by then: to
        // begin with, those the caller's stop did not see clear, if it looked.
        let mut in_the_way: Vec<(i32, Option<u64>)> = if clear.is_empty() {
            Vec::new()
        } else {
            let tids = pannus_kernel::list_threads(pid).unwrap_or_default();
            tids.into_iter().filter(|t| !clear.contains(t)).map(|t| (t, pannus_kernel::cpu_time(pid, t))).collect()
        };
        let mut why = String::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt > retries;
            if last || worth_a_stop(pid, &clear, &in_the_way) {
                let most = |tid: i32| if clear.contains(&tid) { 0 } else { UNLOAD_SCAN };
                let stopped = self.stop_reading_stacks(most, &mut stack_buf, measured);
                let Stopped { world, ranges, start } = match stopped {
                    Ok(stopped) => stopped,
                    // A thread that did not stop in time: every thread runs again, and nothing
                    // was seen.
                    Err(e) if e.kind == Kind::Busy && !last => {
                        std::thread::sleep(interval);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let views: Vec<ThreadView> = world
                    .threads()
                    .iter()
                    .zip(&ranges)
                    .filter(|(t, _)| !clear.contains(&t.tid))
                    .map(|(t, r)| ThreadView {
                        tid: t.tid,
                        rip: t.regs.rip,
                        stack_base: t.regs.rsp,
                        stack: &stack_buf[r.clone()],
                        word: self.target.word() as usize,
                    })
                    .collect();
                let seen = module_idle(&views, &code);
                let busy: Vec<i32> = views.iter().map(|v| v.tid).filter(|t| !seen.clear.contains(t)).collect();
                drop(views);
                let stack_pointers: Vec<u64> = world.threads().iter().map(|t| t.regs.rsp).collect();
                let resumed_at = world.resume()?;
                measured.stops.push(start.until(resumed_at));
                clear.extend(seen.clear);
                match seen.busy {
                    None => return Ok(stack_pointers),
                    Some(w) => why = w,
                }
                // Read after the threads run again: entering and leaving the stop counts as CPU
                // time too, and only a run after it can take a thread out of the module.
                in_the_way = busy.into_iter().map(|t| (t, pannus_kernel::cpu_time(pid, t))).collect();
            }
            if last {
                return Err(Error::busy(why));
            }
            std::thread::sleep(interval);
        }
    }
}

/// Whether stopping the threads of `pid` again can clear anything ([`Session::wait_module_idle`]):
/// a thread appeared that is not known clear nor known in the way (with nothing known yet, every
/// thread), or every thread in the way at the last stop has run since, blocked or exited. When
/// in doubt, yes.
fn worth_a_stop(pid: i32, clear: &HashSet<i32>, in_the_way: &[(i32, Option<u64>)]) -> bool {
    let Ok(tids) = pannus_kernel::list_threads(pid) else {
        return true;
    };
    if tids.iter().any(|t| !clear.contains(t) && !in_the_way.iter().any(|(w, _)| w == t)) {
        return true;
    }
    // A thread blocked in a system call does not run until it is woken, but it may have left the
    // module before it blocked: worth looking at.
    in_the_way.iter().all(|&(tid, then)| match (then, pannus_kernel::cpu_time(pid, tid)) {
        (Some(then), Some(now)) => now != then || pannus_kernel::thread_state(pid, tid).is_none_or(|s| s != 'R'),
        _ => true,
    })
}
