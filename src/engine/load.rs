//! Stage 1, load (the `mmap` method): the module's segments mapped into the target, in a hole
//! within ±2 GiB of the target object so that `jmp rel32` and PC-relative relocations reach,
//! each with its final protection (W^X: never writable and executable).

use super::apply::Applying;
use super::undo::Step;
use super::{Prepared, Session, Stage};
use crate::error::{Error, Result};
use crate::registry::{self, PatchRecord, Registry};
use pannus_kernel::{maps, page_ceil, page_floor, MapFlags, ProtFlags};

impl Session<'_> {
    /// Stage 1: confirms, reserves the module's range (recorded before anything is mapped in
    /// it), then maps its segments. Returns the load bias.
    pub(super) fn stage_load(&mut self, p: &Prepared, mut record: PatchRecord, run: &mut Applying) -> Result<u64> {
        let m = &p.manifest;
        let (lo, hi) = p.module.span();
        let size = hi - lo;
        let base_hint = self.choose_base(p, size).ok_or_else(|| {
            Error::precondition(format!("process {}: no free address range of {size} bytes", self.target.pid))
        })?;
        let plan = format!(
            "map {} ({} bytes, {} segments) into process {} near {} at {:#x}",
            m.module.path.display(),
            size,
            p.module.segments.len(),
            self.target.pid,
            p.object.mapped_path,
            base_hint
        );
        let t0 = run.confirm(Stage::Load, &plan)?;
        let base = self.reserve(base_hint, size).map_err(|e| e.context(Stage::Load))?;
        run.log.touched(Stage::Load);
        run.log.push(Step::Mapped { base, size });
        self.target.refresh_maps()?;
        record.module_base = base;
        record.module_size = size;
        run.reg.next_seq = record.seq;
        retire(&mut run.reg, &m.patch);
        run.reg.patches.push(record);
        self.write_registry(&run.reg)?;
        run.log.recorded();
        self.map_segments(p, base).map_err(|e| e.context(Stage::Load))?;
        self.target.refresh_maps()?;
        run.measured.timings.load = Some(t0.elapsed());
        run.obs.progress(Some(Stage::Load), &format!("module mapped at {base:#x}"));
        Ok(base.wrapping_sub(lo))
    }

    /// A free range for the module (or its jump stubs) within ±2 GiB of the target object, or
    /// anywhere.
    pub(super) fn choose_base(&self, p: &Prepared, size: u64) -> Option<u64> {
        const REACH: u64 = 0x7ff0_0000;
        let o = &p.object;
        if p.module.arch == pannus_kernel::Arch::I386 {
            // A 32-bit address space, all of it in reach (rel32 wraps at 4 GiB), below the top
            // of a 32-bit process's address space.
            return maps::find_hole(&self.target.maps, size, 0, 0xffff_e000, o.lo);
        }
        maps::find_hole(
            &self.target.maps,
            size,
            o.hi.saturating_sub(REACH),
            o.lo.saturating_add(REACH).saturating_sub(size),
            o.lo,
        )
        .or_else(|| maps::find_hole(&self.target.maps, size, 0, u64::MAX, o.lo))
    }

    /// Reserves the module's range (and creates the registry when the process has none yet).
    /// Only the reservation can be left behind by a pannus killed before the registry records
    /// it: an empty, read-only range.
    fn reserve(&mut self, hint: u64, size: u64) -> Result<u64> {
        let need_registry = registry::locate(&self.target.maps).is_none();
        let mem_pid = self.target.pid;
        let mut h = self.hijack()?;
        // Readable: the target's own system calls read the scratch strings placed in it.
        let base = h
            .mmap(hint, size, ProtFlags::PROT_READ, RESERVE, None, 0)
            .map_err(|e| Error::from(e).context("reserving the module's address range"))?;
        if base != hint {
            let _ = h.munmap(base, size);
            return Err(Error::other(format!(
                "process {mem_pid}: the kernel placed the module at {base:#x} instead of {hint:#x}"
            )));
        }
        if need_registry {
            let mem = pannus_kernel::Mem::open(mem_pid)?;
            if let Err(e) = registry::create(&mut h, &mem, base) {
                let _ = h.munmap(base, size);
                return Err(e);
            }
        }
        h.release()?;
        Ok(base)
    }

    /// Maps the module's segments into the reserved range with their final protections, from
    /// the verified module handed over as a memfd ([`hand_over`]); anonymous memory filled
    /// with the same bytes through /proc/PID/mem if that fails.
    fn map_segments(&mut self, p: &Prepared, base: u64) -> Result<()> {
        let module = p.module.clone();
        let (lo, _) = module.span();
        let bias = base.wrapping_sub(lo);
        let mem_pid = self.target.pid;
        let mut h = self.hijack()?;
        let mem = pannus_kernel::Mem::open(mem_pid)?;
        // The memfd's name goes into the reservation, which the segments then replace.
        let fd = hand_over(&mut h, &mem, base, &module).ok().map(|(fd, _)| fd);
        let mapping = |e: pannus_kernel::Error| Error::from(e).context("mapping the module's segments");
        let result = (|| -> Result<()> {
            // A segment with no bytes (a linker's empty `.eh_frame`) has nothing to map.
            for s in module.segments.iter().filter(|s| s.memsz > 0) {
                let start = bias.wrapping_add(page_floor(s.vaddr));
                let file_end = bias.wrapping_add(s.vaddr + s.filesz);
                let mem_end = bias.wrapping_add(page_ceil(s.vaddr + s.memsz));
                match fd.filter(|_| s.filesz > 0) {
                    Some(fd) => {
                        let len = page_ceil(file_end) - start;
                        h.mmap(start, len, s.prot(), SEGMENT, Some(fd), page_floor(s.offset)).map_err(mapping)?;
                        // The file's page may hold other bytes past the segment: zero them (bss).
                        if s.memsz > s.filesz && page_ceil(file_end) > file_end {
                            mem.write(file_end, &vec![0u8; (page_ceil(file_end) - file_end) as usize])?;
                        }
                        if mem_end > page_ceil(file_end) {
                            let bss = page_ceil(file_end);
                            h.mmap(bss, mem_end - bss, s.prot(), SEGMENT | MapFlags::MAP_ANONYMOUS, None, 0)
                                .map_err(mapping)?;
                        }
                    }
                    None => {
                        h.mmap(start, mem_end - start, s.prot(), SEGMENT | MapFlags::MAP_ANONYMOUS, None, 0)
                            .map_err(mapping)?;
                        if let Some(bytes) = module.bytes_at(s.vaddr, s.filesz) {
                            mem.write(bias.wrapping_add(s.vaddr), bytes)?;
                        }
                    }
                }
            }
            Ok(())
        })();
        if let Some(fd) = fd {
            let _ = h.close(fd);
        }
        h.release()?;
        result
    }
}

/// Hands the verified module to the target: a memfd created through the borrowed thread `h`
/// (named after the module file, so that `/proc/PID/maps` shows `/memfd:NAME`; the name is
/// written at `scratch`, 256 bytes of the target's memory pannus may write), filled by pannus
/// with the very bytes it checksummed and parsed. The target never opens the module's path: in
/// its own mount namespace, or after the file was swapped, that could be another file.
/// pannus takes the memfd itself from the process (`pidfd_getfd`, never by opening a path), and
/// writes only into a file that is what it created: a regular, empty, unlinked file on the
/// kernel's shared-memory file system. Returns the target's descriptor and the path the memfd
/// is known by (`/proc/PID/fd/N`).
pub(super) fn hand_over(
    h: &mut pannus_kernel::Hijack,
    mem: &pannus_kernel::Mem,
    scratch: u64,
    module: &crate::elf::Object,
) -> Result<(pannus_kernel::RemoteFd, std::path::PathBuf)> {
    use std::io::Write;
    let bytes = module.whole_file().ok_or_else(|| Error::other("the patch module was not read whole"))?;
    let file = module.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut name: Vec<u8> = file.bytes().filter(|&b| b != b'/').take(200).collect();
    name.push(0);
    mem.write(scratch, &name)?;
    let fd = h
        .memfd_create(scratch, pannus_kernel::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| Error::from(e).context("handing the module over"))?;
    let path = std::path::PathBuf::from(format!("/proc/{}/fd/{fd}", mem.pid()));
    let filled = (|| -> Result<()> {
        let taken = pannus_kernel::take_fd(mem.pid(), fd)
            .map_err(|e| Error::other(format!("taking the memfd from the process: {e}")))?;
        let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&taken))
            .map_err(|e| Error::other(format!("the memfd: {e}")))?;
        let fs = nix::sys::statfs::fstatfs(&taken).map_err(|e| Error::other(format!("the memfd: {e}")))?;
        let memfd = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG
            && st.st_nlink == 0
            && st.st_size == 0
            && fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC;
        if !memfd {
            return Err(Error::other(format!(
                "descriptor {fd} of process {} is not the memfd pannus created (it was replaced meanwhile)",
                mem.pid()
            )));
        }
        std::fs::File::from(taken).write_all(bytes).map_err(|e| Error::other(format!("writing the memfd: {e}")))
    })();
    if let Err(e) = filled {
        let _ = h.close(fd);
        return Err(e.context("handing the module over"));
    }
    Ok((fd, path))
}

/// A fresh private range where pannus asks for it, never over an existing mapping.
pub(crate) const RESERVE: MapFlags =
    MapFlags::MAP_PRIVATE.union(MapFlags::MAP_ANONYMOUS).union(MapFlags::MAP_FIXED_NOREPLACE);

/// A module segment, over its reservation. Its pages are faulted in when mapped, not by the
/// service's threads when they first run the patched code right after the switch.
pub(crate) const SEGMENT: MapFlags = MapFlags::MAP_PRIVATE.union(MapFlags::MAP_FIXED).union(MapFlags::MAP_POPULATE);

/// Makes room for a new record of patch `id`: an old rolled-back record is dropped, unless its
/// module is still mapped (a thread was inside it at rollback), in which case it is kept under
/// `id@seq` so that a later rollback can still unload it.
pub(super) fn retire(reg: &mut Registry, id: &str) {
    if let Some(old) = reg.get_mut(id) {
        if old.module_mapped {
            old.patch = format!("{id}@{}", old.seq);
            return;
        }
    }
    reg.patches.retain(|r| r.patch != id);
}
