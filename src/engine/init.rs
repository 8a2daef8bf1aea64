//! Stage 3, init (the `mmap` method): the module's exception tables registered with the
//! target's unwinder when it has one (C++ programs), then its `DT_INIT` and `DT_INIT_ARRAY`
//! functions run on one borrowed thread, signal-handler style, each with a deadline.

use super::apply::Applying;
use super::symbols::exported_function;
use super::undo::Step;
use super::{link::set_state, Prepared, Session, Stage};
use crate::error::{Error, Result};
use crate::registry::State;

impl Session<'_> {
    /// Stage 3: confirms, registers the module's exception tables and runs its init functions.
    pub(super) fn stage_init(&mut self, p: &Prepared, bias: u64, run: &mut Applying) -> Result<()> {
        let id = &p.manifest.patch;
        let inits = self.init_functions(p, bias)?;
        let finis = self.fini_functions(p, bias)?;
        let eh_frame = self.frame_registration(p, bias);
        let plan = if inits.is_empty() {
            "the module has no init functions: nothing runs".to_string()
        } else {
            format!(
                "run {} init function(s) of the module inside process {} on one borrowed thread",
                inits.len(),
                self.target.pid
            )
        };
        let t0 = run.confirm(Stage::Init, &plan)?;
        if eh_frame.is_some() || !finis.is_empty() || !inits.is_empty() {
            // Recorded before registering and running anything, so that whoever unloads the
            // module deregisters it, runs its finalisers, and looks for what its code left
            // pointing into it.
            let tables = [".eh_frame_hdr", ".eh_frame", ".gcc_except_table"]
                .iter()
                .filter_map(|s| p.module.section(s))
                .map(|(r, _)| [bias.wrapping_add(r.start), bias.wrapping_add(r.end)])
                .collect();
            if let Some(r) = run.reg.get_mut(id) {
                r.eh_frame = eh_frame.map(|(_, table)| table);
                r.fini = finis.clone();
                r.init_ran = !inits.is_empty();
                r.unwind_tables = tables;
            }
            self.write_registry(&run.reg)?;
        }
        run.log.touched(Stage::Init);
        if !inits.is_empty() {
            run.log.code_ran();
        }
        self.run_inits(&inits, eh_frame, &mut run.log).map_err(|e| e.context(Stage::Init))?;
        if !finis.is_empty() {
            run.log.push(Step::Fini(finis));
        }
        set_state(&mut run.reg, id, State::Initialized);
        self.write_registry(&run.reg)?;
        run.measured.timings.init = Some(t0.elapsed());
        run.obs.progress(Some(Stage::Init), &format!("{} init function(s) ran", inits.len()));
        Ok(())
    }

    /// `__register_frame` in the target and where the module's `.eh_frame` is, when both exist.
    fn frame_registration(&mut self, p: &Prepared, bias: u64) -> Option<(u64, u64)> {
        let (range, _) = p.module.section(".eh_frame")?;
        let f = unwinder_function(&self.target.loaded_objects(), "__register_frame")?;
        Some((f, bias.wrapping_add(range.start)))
    }

    /// Takes the module's exception tables back from the target's unwinder before unmapping.
    pub(super) fn deregister_frames(&mut self, table: u64) -> Result<()> {
        let Some(f) = unwinder_function(&self.target.loaded_objects(), "__deregister_frame") else { return Ok(()) };
        let timeout = self.engine.init_timeout;
        let mut h = self.hijack_for_code()?;
        h.call(f, &[table], timeout, "__deregister_frame for the module's exception tables")?;
        h.release().map_err(Error::from)
    }

    /// `DT_INIT`, then `DT_INIT_ARRAY` in order, as ld.so runs them.
    fn init_functions(&self, p: &Prepared, bias: u64) -> Result<Vec<u64>> {
        let mut out: Vec<u64> = p.module.init.map(|f| bias.wrapping_add(f)).into_iter().collect();
        out.extend(self.function_array(p.module.init_array, bias)?);
        Ok(out)
    }

    /// `DT_FINI_ARRAY` in reverse order, then `DT_FINI`, as `dlclose` runs them.
    fn fini_functions(&self, p: &Prepared, bias: u64) -> Result<Vec<u64>> {
        let mut out = self.function_array(p.module.fini_array, bias)?;
        out.reverse();
        out.extend(p.module.fini.map(|f| bias.wrapping_add(f)));
        Ok(out)
    }

    /// The function pointers of an init or fini array of the module loaded at `bias`, as
    /// relocated in the process.
    fn function_array(&self, array: Option<(u64, u64)>, bias: u64) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        // Words of the process's size: 4 bytes in a 32-bit process.
        let (word, all_ones) = match self.target.arch {
            Some(pannus_kernel::Arch::I386) => (4, u64::from(u32::MAX)),
            _ => (8, u64::MAX),
        };
        if let Some((arr, len)) = array {
            for i in 0..(len / word).min(4096) {
                let at = bias.wrapping_add(arr + word * i);
                let f = self.target.read_word(at)?;
                if f != 0 && f != all_ones {
                    out.push(f);
                }
            }
        }
        Ok(out)
    }

    /// Runs the module's finalisers (see [`Self::fini_functions`]) on a borrowed thread.
    pub(super) fn run_finis(&mut self, finis: &[u64]) -> Result<()> {
        let timeout = self.engine.init_timeout;
        let mut h = self.hijack_for_code()?;
        for (k, &f) in finis.iter().enumerate() {
            h.call(f, &[], timeout, &format!("finaliser #{} of the module at {f:#x}", k + 1))?;
        }
        h.release()?;
        Ok(())
    }

    /// Registers the module's exception tables with the target's unwinder (`__register_frame`),
    /// so that C++ exceptions thrown by replacements unwind through the target, then runs the
    /// module's init functions.
    fn run_inits(&mut self, inits: &[u64], eh_frame: Option<(u64, u64)>, log: &mut super::undo::UndoLog) -> Result<()> {
        if inits.is_empty() && eh_frame.is_none() {
            return Ok(());
        }
        let timeout = self.engine.init_timeout;
        let mut h = self.hijack_for_code()?;
        if let Some((register, table)) = eh_frame {
            match h.call(register, &[table], timeout, "__register_frame for the module's exception tables") {
                Ok(()) => log.push(Step::Frames { table }),
                Err(e) => {
                    // Registered or not, nobody knows: taking the tables back could abort the
                    // target's unwinder, unmapping the module could leave it pointing there.
                    log.push(Step::Unknown(format!("the registration of its exception tables failed halfway ({e})")));
                    return Err(e.into());
                }
            }
        }
        for (k, &f) in inits.iter().enumerate() {
            let what = format!("init function #{} at {f:#x}", k + 1);
            if let Err(e) = h.call(f, &[0, 0, 0], timeout, &what) {
                if let pannus_kernel::Error::Abandoned { tid, .. } = e {
                    // The thread runs on inside the module: unmapping it would kill the process.
                    log.push(Step::Unknown(format!("thread {tid} still runs its {what}")));
                }
                return Err(e.into());
            }
        }
        h.release()?;
        Ok(())
    }
}

/// Function `name` of the unwinder that C++ exceptions go through: of the object that exports
/// `_Unwind_RaiseException` (libgcc_s); `None` in a process without one, which throws nothing.
/// An i386 C library exports a `__register_frame` of its own (for old binaries), whose tables
/// that unwinder never reads, and whose `__deregister_frame` aborts on a table it was never
/// given.
fn unwinder_function(objects: &[crate::target::Loaded], name: &str) -> Option<u64> {
    let one = |o: &crate::target::Loaded, n: &str| exported_function(std::slice::from_ref(o), &[n]);
    let unwinder = objects.iter().find(|o| one(o, "_Unwind_RaiseException").is_some())?;
    one(unwinder, name)
}
