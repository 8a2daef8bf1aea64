//! Stage 2, link (the `mmap` method): the module's relocations, computed as one pure pass over
//! an image of the module ([`symbols::relocate`]) with the symbols pre-flight resolved, then
//! written to the target in one batch, a write per run of changed pages. Indirect functions
//! are resolved by calling their resolvers in the target, as ld.so does.

use super::apply::Applying;
use super::symbols::{self, Value};
use super::{Prepared, Session, Stage};
use crate::error::Result;
use crate::registry::{Registry, State};
use pannus_kernel::page_floor;
use std::collections::HashMap;

impl Session<'_> {
    /// Stage 2: confirms, relocates the module loaded at `bias`, and records the stage.
    pub(super) fn stage_link(&mut self, p: &Prepared, bias: u64, run: &mut Applying) -> Result<()> {
        let m = &p.manifest;
        let plan = format!(
            "apply {} relocations of {} ({} symbols resolved; shared data: {})",
            p.module.relocs.len(),
            m.module.path.display(),
            p.symbols.len(),
            if p.dropped.is_empty() { "none".to_string() } else { p.dropped.join(", ") }
        );
        let t0 = run.confirm(Stage::Link, &plan)?;
        run.log.touched(Stage::Link);
        self.relocate(p, bias).map_err(|e| e.context(Stage::Link))?;
        set_state(&mut run.reg, &m.patch, State::Linked);
        self.write_registry(&run.reg)?;
        run.measured.timings.link = Some(t0.elapsed());
        run.obs.progress(Some(Stage::Link), "relocations applied");
        Ok(())
    }

    fn relocate(&mut self, p: &Prepared, bias: u64) -> Result<()> {
        let module = &p.module;
        let (lo, hi) = module.span();
        let segments: Vec<(u64, &[u8])> =
            module.segments.iter().filter_map(|s| Some((s.vaddr, module.bytes_at(s.vaddr, s.filesz)?))).collect();
        let mut image = symbols::image(lo..hi, &segments);
        let values = self.symbol_values(p, bias)?;
        let value = |i| values.get(&i).copied().unwrap_or(0);
        let runs = match module.arch {
            pannus_kernel::Arch::I386 => super::reloc386::relocate(&module.relocs, &mut image, lo, bias, value),
            _ => symbols::relocate(&module.relocs, &mut image, lo, bias, value, |i| {
                module.dynsyms.get(i).map(|s| s.name.clone()).unwrap_or_default()
            }),
        }
        .map_err(|e| e.context(format!("patch module {}", module.path.display())))?;
        for run in runs {
            self.target.mem.write(bias.wrapping_add(lo + run.start as u64), &image[run])?;
        }
        // RELRO becomes read-only, as ld.so leaves it.
        if let Some((vaddr, len)) = module.relro {
            let (s, e) = (page_floor(bias.wrapping_add(vaddr)), page_floor(bias.wrapping_add(vaddr + len)));
            if e > s {
                let mut h = self.hijack()?;
                let r = h.mprotect(s, e - s, pannus_kernel::ProtFlags::PROT_READ);
                h.release()?;
                r.map_err(|e| crate::error::Error::from(e).context("making the module's RELRO read-only"))?;
            }
        }
        Ok(())
    }

    /// The run-time address of each symbol the relocations name; indirect functions by
    /// calling their resolvers in the target.
    fn symbol_values(&mut self, p: &Prepared, bias: u64) -> Result<HashMap<usize, u64>> {
        let mut values = HashMap::new();
        let ifuncs: Vec<(usize, u64)> = p
            .symbols
            .iter()
            .filter_map(|(&i, v)| match *v {
                Value::Ifunc(resolver) => Some((i, resolver)),
                _ => None,
            })
            .collect();
        if !ifuncs.is_empty() {
            let timeout = self.engine.init_timeout;
            let mut h = self.hijack_for_code()?;
            for (i, resolver) in ifuncs {
                let name = &p.module.dynsyms[i].name;
                let v = h.call_for_address(resolver, &[], timeout, &format!("the resolver of `{name}`"))?;
                values.insert(i, v);
            }
            h.release()?;
        }
        for (&i, v) in &p.symbols {
            let a = match *v {
                Value::Module(vaddr) => bias.wrapping_add(vaddr),
                Value::Abs(a) => a,
                Value::Ifunc(_) => continue,
                Value::Zero => 0,
            };
            values.insert(i, a);
        }
        Ok(values)
    }
}

pub(super) fn set_state(reg: &mut Registry, id: &str, state: State) {
    if let Some(r) = reg.get_mut(id) {
        r.state = state;
    }
}
