//! Stages 1 to 3 through the target's own loader (`load: dlopen`): one call of its `dlopen`,
//! so that its dynamic linker maps, links (TLS, ifuncs, symbol versions) and initialises the
//! module and registers its exception tables; the replacements are then found with `dlsym`.
//! Unloading is the target's `dlclose`.

use super::apply::Applying;
use super::load::{hand_over, retire};
use super::symbols::exported_function;
use super::undo::Step;
use super::{Prepared, Session, Stage};
use crate::elf::Object;
use crate::error::{Error, Result};
use crate::registry::{self, PatchRecord, State};
use pannus_kernel::{Hijack, MapFlags, ProtFlags, RemoteFd};
use std::path::PathBuf;

/// The scratch page for dlopen's strings: private anonymous memory where the kernel chooses.
pub(crate) const SCRATCH_MAP: MapFlags = MapFlags::MAP_PRIVATE.union(MapFlags::MAP_ANONYMOUS);

impl Session<'_> {
    /// Stages 1 to 3 of the `dlopen` method, confirmed once. Returns the run-time address of
    /// each replacement.
    pub(super) fn stage_dlopen(
        &mut self,
        p: &Prepared,
        mut record: PatchRecord,
        run: &mut Applying,
    ) -> Result<Vec<u64>> {
        let m = &p.manifest;
        let plan = format!(
            "hand {} over to process {} (a memfd holding the verified bytes) and call dlopen on it, RTLD_NOW, on \
             one borrowed thread: its dynamic linker loads, links and initialises the module (stages 1 to 3 in \
             one call)",
            m.module.path.display(),
            self.target.pid
        );
        let t0 = run.confirm(Stage::Load, &plan)?;
        let names: Vec<&str> = p.functions.iter().map(|f| f.replacement.as_str()).collect();
        // Nothing of the module stays when this fails.
        let (handle, addrs, fd) = self.dlopen(&p.module, &names).map_err(|e| e.context(Stage::Load))?;
        for stage in [Stage::Load, Stage::Link, Stage::Init] {
            run.log.touched(stage);
        }
        run.log.push(Step::Dlopened { handle, fd: Some(fd.0) });
        // The loader answers a name it has seen with the module it loaded then: a handle of
        // another patch means the verified bytes were not loaded.
        if run.reg.applied().any(|r| r.handle == Some(handle)) {
            return Err(Error::other(format!(
                "the target's dlopen returned the handle of a module already loaded for another patch ({handle:#x})"
            ))
            .context(Stage::Load));
        }
        self.target.refresh_maps()?;
        // The module as the process maps it: the memfd, found by its inode (it stays open until
        // dlclose). Without its range, rollback could not tell whether a thread is inside it.
        let loaded = self.target.find_object(&fd.1).map_err(|e| e.context(Stage::Load))?;
        record.handle = Some(handle);
        record.module_fd = Some(fd.0.as_raw());
        record.state = State::Initialized;
        record.module_base = loaded.lo;
        record.module_size = loaded.hi - loaded.lo;
        run.reg.next_seq = record.seq;
        retire(&mut run.reg, &m.patch);
        run.reg.patches.push(record);
        self.write_registry(&run.reg)?;
        run.log.recorded();
        run.measured.timings.load = Some(t0.elapsed());
        let at = format!(" at {:#x}", loaded.lo);
        run.obs.progress(Some(Stage::Load), &format!("module loaded by the target's dlopen{at}"));
        run.obs.progress(Some(Stage::Link), "linked by the target's dynamic linker");
        run.obs.progress(Some(Stage::Init), "initialised by the target's dynamic linker");
        Ok(addrs)
    }

    /// Hands `module` over to the target ([`hand_over`]) and calls its `dlopen` on the memfd
    /// (`/proc/self/fd/N`), then `dlsym` for each name. Returns the handle, the addresses and
    /// the memfd (still open in the target, and how pannus reaches it); on failure, what
    /// `dlerror` said, with the memfd closed.
    fn dlopen(&mut self, module: &Object, names: &[&str]) -> Result<(u64, Vec<u64>, (RemoteFd, PathBuf))> {
        let path = &module.path;
        let objects = self.target.loaded_objects();
        let find = |candidates: &[&str]| exported_function(&objects, candidates);
        let missing = |what: &str| {
            Error::precondition(format!("process {}: no `{what}` in its C library", self.target.pid))
                .hint("use load: mmap")
        };
        let dlopen = find(&["dlopen", "__libc_dlopen_mode"]).ok_or_else(|| missing("dlopen"))?;
        let dlsym = find(&["dlsym", "__libc_dlsym"]).ok_or_else(|| missing("dlsym"))?;
        let dlclose = find(&["dlclose", "__libc_dlclose"]).ok_or_else(|| missing("dlclose"))?;
        let dlerror = find(&["dlerror"]);
        let need_registry = registry::locate(&self.target.maps).is_none();
        let timeout = self.engine.init_timeout;
        let pid = self.target.pid;
        let mut h = self.hijack_for_code()?;
        const SCRATCH: u64 = 8192;
        let scratch = h
            .mmap(0, SCRATCH, ProtFlags::PROT_READ, SCRATCH_MAP, None, 0)
            .map_err(|e| Error::from(e).context("mapping a scratch page"))?;
        let mem = pannus_kernel::Mem::open(pid)?;
        let mut memfd = None;
        let result = (|| -> Result<(u64, Vec<u64>)> {
            if need_registry {
                registry::create(&mut h, &mem, scratch)?;
            }
            let (fd, reached) = hand_over(&mut h, &mem, scratch, module)?;
            memfd = Some((fd, reached));
            mem.write(scratch, format!("/proc/self/fd/{fd}\0").as_bytes())?;
            const RTLD_NOW: u64 = 2;
            let handle = h.call_for_address(dlopen, &[scratch, RTLD_NOW], timeout, "the target's dlopen")?;
            let why = |h: &mut Hijack| -> String {
                let Some(f) = dlerror else { return "no reason given".into() };
                match h.call_for_address(f, &[], timeout, "dlerror") {
                    Ok(0) | Err(_) => "no reason given".into(),
                    Ok(text) => {
                        let bytes = mem.read_partial(text, 512);
                        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                        String::from_utf8_lossy(&bytes[..end]).into_owned()
                    }
                }
            };
            if handle == 0 {
                return Err(Error::precondition(format!(
                    "the target's dlopen refused {}: {}",
                    path.display(),
                    why(&mut h)
                )));
            }
            let mut addrs = Vec::with_capacity(names.len());
            for n in names {
                let mut cname = n.as_bytes().to_vec();
                cname.push(0);
                mem.write(scratch, &cname)?;
                let a = h.call_for_address(dlsym, &[handle, scratch], timeout, "the target's dlsym")?;
                if a == 0 {
                    let reason = why(&mut h);
                    let _ = h.call(dlclose, &[handle], timeout, "the target's dlclose");
                    return Err(Error::precondition(format!(
                        "the target's dlsym does not find `{n}` in {}: {reason}",
                        path.display()
                    )));
                }
                addrs.push(a);
            }
            Ok((handle, addrs))
        })();
        let _ = h.munmap(scratch, SCRATCH);
        match (result, memfd) {
            (Ok((handle, addrs)), Some(fd)) => {
                h.release()?;
                Ok((handle, addrs, fd))
            }
            (result, fd) => {
                if let Some((fd, _)) = fd {
                    let _ = h.close(fd);
                }
                h.release()?;
                Err(result.err().unwrap_or_else(|| Error::other("the module was not handed over")))
            }
        }
    }

    /// The target's dlclose on `handle`.
    pub(super) fn dlclose(&mut self, handle: u64) -> Result<()> {
        let f = exported_function(&self.target.loaded_objects(), &["dlclose", "__libc_dlclose"]).ok_or_else(|| {
            Error::precondition(format!("process {}: no `dlclose` in its C library", self.target.pid))
        })?;
        let timeout = self.engine.init_timeout;
        let mut h = self.hijack_for_code()?;
        h.call(f, &[handle], timeout, "the target's dlclose")?;
        h.release()?;
        Ok(())
    }
}
