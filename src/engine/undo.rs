//! The one undo path. Each step of an apply that leaves something in the target pushes what it
//! left to an [`UndoLog`] as soon as it is done; a failed apply, a cancelled one (`n` at a
//! prompt, `Esc` in the console's wizard) and a rollback's unload all take those things back
//! with [`Session::unwind`], newest first. A rollback's log is read back from the patch's record
//! in the process ([`UndoLog::of_record`]), which holds the same steps: whoever finds a patch,
//! this pannus or a later one, undoes it the same way.

use super::{Measured, Session, Stage};
use crate::error::{Error, Result};
use crate::registry::{self, LoadMethod, PatchRecord, Registry, State, Stubs};
use pannus_kernel::RemoteFd;

/// One thing an apply left in the target, which an undo takes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// The module's address range, reserved then filled with its segments (load: mmap).
    Mapped { base: u64, size: u64 },
    /// The module, loaded by the target's own `dlopen`.
    Dlopened { handle: u64, fd: Option<RemoteFd> },
    /// The module's exception tables, registered with the target's unwinder.
    Frames { table: u64 },
    /// A page of jump stubs near the target object.
    Stubs(Stubs),
    /// The module's init functions ran: its finalisers (in the order they run) take back what
    /// they registered, exit handlers above all, before it is unmapped.
    Fini(Vec<u64>),
    /// Something whose outcome is not known (a registration that failed halfway): the module
    /// stays mapped, since undoing it could be worse than leaving it.
    Unknown(String),
}

/// What an apply has done so far, in order.
#[derive(Debug, Clone, Default)]
pub(super) struct UndoLog {
    steps: Vec<Step>,
    /// The stages that changed the target, in order: what an error says was undone.
    stages: Vec<Stage>,
    /// Whether the process had a registry before this apply (if not, the apply created it and
    /// its undo removes it).
    had_registry: bool,
    /// Whether the patch's record was added to the registry.
    recorded: bool,
    /// Whether the module's code has run (its init functions, or its replacements): then
    /// nothing may point into it when it is unmapped ([`Session::unreferenced`]).
    code_ran: bool,
    /// Every thread's stack pointer at the stop that found the threads clear of the module,
    /// when there was one; without, the unmapping stops the threads to find out.
    stack_pointers: Option<Vec<u64>>,
}

/// How a message that the module stays mapped begins (a rolled-back patch's note, an error).
pub(super) const KEPT_MAPPED: &str = "module kept mapped: ";

impl UndoLog {
    pub(super) fn new(had_registry: bool) -> UndoLog {
        UndoLog { had_registry, ..UndoLog::default() }
    }

    pub(super) fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// `stage` has begun changing the target.
    pub(super) fn touched(&mut self, stage: Stage) {
        if !self.stages.contains(&stage) {
            self.stages.push(stage);
        }
    }

    /// The patch's record is in the registry.
    pub(super) fn recorded(&mut self) {
        self.recorded = true;
    }

    /// The module's code has begun to run.
    pub(super) fn code_ran(&mut self) {
        self.code_ran = true;
    }

    /// The threads were seen clear of the module, with these stack pointers.
    pub(super) fn with_stack_pointers(mut self, stack_pointers: Vec<u64>) -> UndoLog {
        self.stack_pointers = Some(stack_pointers);
        self
    }

    /// What loading the module of `rec` left in the process, read from its record: the steps
    /// its apply pushed, and recorded there as they were done.
    pub(super) fn of_record(rec: &PatchRecord) -> UndoLog {
        let ran = rec.init_ran || !matches!(rec.state, State::Loaded | State::Linked);
        let mut log = UndoLog { had_registry: true, code_ran: ran, ..UndoLog::default() };
        match (rec.load, rec.handle) {
            (LoadMethod::Mmap, _) if rec.module_size > 0 => {
                log.push(Step::Mapped { base: rec.module_base, size: rec.module_size })
            }
            (LoadMethod::Dlopen, Some(handle)) => {
                log.push(Step::Dlopened { handle, fd: rec.module_fd.map(RemoteFd::from_raw) })
            }
            _ => {}
        }
        if let Some(table) = rec.eh_frame {
            log.push(Step::Frames { table });
        }
        // Only once init has run: a finaliser of objects never constructed could crash.
        if !rec.fini.is_empty() && !matches!(rec.state, State::Loaded | State::Linked) {
            log.push(Step::Fini(rec.fini.clone()));
        }
        if let Some(stubs) = rec.stubs {
            log.push(Step::Stubs(stubs));
        }
        log
    }
}

/// Forgets `step` in the record once it is undone, so that nothing is undone twice (a table
/// deregistered twice aborts the target's unwinder).
fn forget(rec: &mut PatchRecord, step: &Step) {
    match step {
        Step::Mapped { .. } | Step::Dlopened { .. } => {
            rec.module_mapped = false;
            rec.handle = None;
            rec.module_fd = None;
        }
        Step::Frames { .. } => rec.eh_frame = None,
        Step::Stubs(_) => rec.stubs = None,
        Step::Fini(_) => rec.fini.clear(),
        Step::Unknown(_) => {}
    }
}

impl Session<'_> {
    /// Takes back every step of `log` for patch `id`, newest first, noting each in the patch's
    /// record in `reg` as it goes. Stops at the first step that fails (a module whose tables
    /// could not be deregistered must stay mapped); the registry then says what is left, for a
    /// later rollback to finish.
    pub(super) fn unwind(&mut self, reg: &mut Registry, id: &str, log: &UndoLog) -> Result<()> {
        self.target.refresh_maps()?;
        let record = log.recorded || log.had_registry;
        for step in log.steps.iter().rev() {
            if let Step::Fini(_) = step {
                // Forgotten before they run: run twice, a finaliser could free twice. One that
                // fails leaves the module mapped (what it registered may remain).
                if let Some(rec) = reg.get_mut(id) {
                    forget(rec, step);
                }
                if record {
                    self.write_registry(reg)?;
                }
            }
            let done = match *step {
                // The module's code ran: whatever it left pointing into it (a callback in the
                // program's data or heap, a signal handler) keeps it mapped.
                Step::Mapped { base, size } if log.code_ran => self
                    .unreferenced_module(reg, id, base..base.saturating_add(size), log)
                    .and_then(|()| self.undo_step(step)),
                _ => self.undo_step(step),
            };
            if done.is_ok() {
                if let Some(rec) = reg.get_mut(id) {
                    forget(rec, step);
                }
            }
            // Each step's outcome is in the registry before the next begins: a pannus killed
            // or failing from here on leaves a record that undoes nothing twice.
            if record {
                self.write_registry(reg)?;
            }
            done?;
        }
        self.target.refresh_maps()
    }

    /// Succeeds when no thread is inside the module at `module` and nothing the process keeps
    /// points into it; else fails with a message beginning with [`KEPT_MAPPED`].
    fn unreferenced_module(
        &mut self,
        reg: &Registry,
        id: &str,
        module: std::ops::Range<u64>,
        log: &UndoLog,
    ) -> Result<()> {
        let tables: Vec<std::ops::Range<u64>> =
            reg.get(id).map(|r| r.unwind_tables.iter().map(|&[s, e]| s..e).collect()).unwrap_or_default();
        let stack_pointers = match (&log.stack_pointers, reg.get(id)) {
            (Some(sps), _) => sps.clone(),
            // No stop has looked at the threads yet (an apply undone after its init ran, which
            // may have handed a thread a way into the module).
            (None, Some(rec)) => {
                let rec = rec.clone();
                self.wait_module_idle(&rec, Default::default(), &mut Measured::default())
                    .map_err(|e| Error::other(format!("{KEPT_MAPPED}{}", e.message)))?
            }
            (None, None) => Vec::new(),
        };
        self.unreferenced(module, &tables, &stack_pointers)
            .map_err(|e| Error::other(format!("{KEPT_MAPPED}{}", e.message)))
    }

    /// Takes back one step.
    fn undo_step(&mut self, step: &Step) -> Result<()> {
        match *step {
            Step::Fini(ref finis) => self.run_finis(finis),
            Step::Stubs(Stubs { addr, size }) => {
                let mut h = self.hijack()?;
                // Harmless when left: nothing jumps to it any more.
                let _ = h.munmap(addr, size);
                h.release().map_err(Error::from)
            }
            Step::Frames { table } => self.deregister_frames(table),
            Step::Mapped { base, size } => {
                let mut h = self.hijack()?;
                let r = h.munmap(base, size);
                h.release()?;
                r.map_err(|e| Error::from(e).context("unmapping the module"))
            }
            Step::Dlopened { handle, fd } => {
                self.dlclose(handle)?;
                if let Some(fd) = fd {
                    let mut h = self.hijack()?;
                    let _ = h.close(fd);
                    h.release()?;
                }
                Ok(())
            }
            Step::Unknown(ref why) => Err(Error::other(format!("{KEPT_MAPPED}{why}"))),
        }
    }

    /// Undoes a failed or cancelled apply of `id`: every step of `log`, then its record, then
    /// the registry if this apply created it. Returns `e`, saying what was undone.
    pub(super) fn undo_apply(&mut self, reg: &mut Registry, id: &str, log: &UndoLog, mut e: Error) -> Error {
        let undone = (|| -> Result<()> {
            self.unwind(reg, id, log)?;
            // This apply's record only: an earlier, rolled-back record of the same patch (whose
            // module a thread kept mapped) stays, for a later rollback to unload.
            reg.patches.retain(|r| r.patch != id || r.state == State::RolledBack);
            if log.had_registry {
                self.write_registry(reg)?;
            } else if let Some(loc) = registry::locate(&self.target.maps) {
                let mut h = self.hijack()?;
                let _ = h.munmap(loc.addr, registry::SIZE);
                h.release()?;
                self.target.refresh_maps()?;
            }
            Ok(())
        })();
        let stages: Vec<&str> = log.stages.iter().rev().map(|s| s.name()).collect();
        match undone {
            Ok(()) if log.stages.is_empty() => {}
            Ok(()) => {
                e.message.push_str(&format!("\n  undone: {} (the process is as it was)", stages.join(", ")));
            }
            Err(u) if u.message.starts_with(KEPT_MAPPED) => {
                // Everything else is undone: the patch was never active, and is rolled back. Its
                // record stays, saying why, for a later rollback to unload the module once
                // nothing points into it; its finalisers ran on the way here, or must never run
                // (its init did not finish).
                if let Some(r) = reg.get_mut(id) {
                    r.state = State::RolledBack;
                    r.note = Some(u.message.clone());
                    r.ended_at = Some(super::now_secs());
                    r.fini.clear();
                }
                let _ = self.write_registry(reg);
                let pid = self.target.pid;
                e.message.push_str(&format!(
                    "\n  undone: {} (the process runs its old code); {}\n  `pannus rollback --pid {pid} {id}` \
                     unloads the module once nothing points into it",
                    stages.join(", "),
                    u.message
                ));
            }
            Err(u) => e.message.push_str(&format!("\n  undoing failed too: {u}")),
        }
        e
    }
}
