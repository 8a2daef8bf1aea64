//! A running process as pannus sees it: memory, address space, the objects it maps.

use crate::elf::Object;
use crate::engine::{FileKey, Shared};
use crate::error::{Error, Result};
use pannus_kernel::{maps, Arch, Mapping, Mem};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An ELF object mapped by the target, with its load bias.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub object: Arc<Object>,
    /// Added to the object's virtual addresses to get run-time addresses.
    pub bias: u64,
    /// Lowest and highest run-time addresses the object maps.
    pub lo: u64,
    pub hi: u64,
    /// The path as the process maps it.
    pub mapped_path: String,
}

impl Loaded {
    pub fn addr(&self, vaddr: u64) -> u64 {
        self.bias.wrapping_add(vaddr)
    }
}

/// A process opened for inspection or patching.
pub struct Target {
    pub pid: i32,
    pub mem: Mem,
    pub maps: Vec<Mapping>,
    pub name: String,
    pub exe: String,
    /// The architecture it runs (`None`: its executable could not be read).
    pub arch: Option<Arch>,
    objects: HashMap<(i32, i32, u64), Arc<Object>>,
    /// The parses shared with the other processes of a run (see [`Shared`]).
    shared: Option<Arc<Shared>>,
}

impl Target {
    pub fn open(pid: i32) -> Result<Target> {
        if pid <= 0 || !pannus_kernel::process_exists(pid) {
            return Err(
                Error::bad_input(format!("no process with pid {pid}")).hint("check the pid with `pannus ps --all`")
            );
        }
        let mem = Mem::open(pid)?;
        let maps = maps::read(pid)?;
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let arch = Arch::of_process(pid);
        Ok(Target { pid, mem, maps, name, exe, arch, objects: HashMap::new(), shared: None })
    }

    /// The size of the process's words (addresses, stack slots): 4 in a 32-bit process, else 8.
    pub fn word(&self) -> u64 {
        self.arch.map_or(8, Arch::word)
    }

    /// The word (see [`Target::word`]) at `at` in the process, zero-extended.
    pub fn read_word(&self, at: u64) -> Result<u64> {
        if self.word() == 4 {
            let mut b = [0u8; 4];
            self.mem.read(at, &mut b)?;
            Ok(u64::from(u32::from_le_bytes(b)))
        } else {
            Ok(self.mem.read_u64(at)?)
        }
    }

    /// The bitness its code is decoded in: 32 or 64.
    pub fn bits(&self) -> u32 {
        if self.word() == 4 {
            32
        } else {
            64
        }
    }

    /// Refuses, before anything is done to it, a process pannus cannot stop or run code in: one
    /// that runs neither x86-64 code nor 32-bit i386 code under the kernel's compatibility mode
    /// (x32, another machine). `doing` names the operation refused.
    pub fn require_patchable(&self, doing: &str) -> Result<()> {
        match self.arch {
            None | Some(Arch::X86_64 | Arch::I386) => Ok(()),
            Some(arch) => Err(Error::precondition(format!(
                "process {} ({}) runs {arch} code, which pannus cannot patch: {doing} would have to stop it and run \
                 code in it as {arch}, and this pannus does that for ELF64 x86-64 and ELF32 i386 processes only",
                self.pid, self.name
            ))
            .hint("nothing was done to the process; restart it with the fix, or run an x86-64 or i386 build of the service")),
        }
    }

    /// From here on, ELF files are parsed once for every process sharing `shared`.
    pub fn share(&mut self, shared: Option<Arc<Shared>>) {
        self.shared = shared;
    }

    /// The ELF file at `path` (whose metadata is `meta`), tables only: parsed once per run when
    /// shared.
    fn load_tables(&self, path: &Path, meta: Option<std::fs::Metadata>, role: &str) -> Result<Arc<Object>> {
        match (&self.shared, meta) {
            (Some(shared), Some(meta)) => shared.object(FileKey::of(&meta), || Object::load_tables(path, role)),
            _ => Object::load_tables(path, role).map(Arc::new),
        }
    }

    pub fn refresh_maps(&mut self) -> Result<()> {
        self.maps = maps::read(self.pid)?;
        Ok(())
    }

    /// The object at `path` as this process maps it (matched by device and inode, so symlinks
    /// and other names for the same file work).
    pub fn find_object(&mut self, path: &Path) -> Result<Loaded> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::bad_input(format!("target object {}: cannot read: {e}", path.display())))?;
        let (ino, dev) = (meta.ino(), meta.dev());
        let (major, minor) = (nix::sys::stat::major(dev) as i32, nix::sys::stat::minor(dev) as i32);
        let matching: Vec<&Mapping> =
            self.maps.iter().filter(|m| m.inode == ino && m.dev == (major, minor) && !m.path.is_empty()).collect();
        if matching.is_empty() {
            return Err(Error::precondition(format!(
                "process {} ({}) does not map {}",
                self.pid,
                self.name,
                path.display()
            ))
            .hint("check target.object in the manifest: it must be the executable or a shared library this process has loaded (see /proc/PID/maps)"));
        }
        let mapped_path = matching[0].path.clone();
        let key = (major, minor, ino);
        let object = match self.objects.get(&key) {
            Some(o) => o.clone(),
            None => {
                let o = self.load_tables(path, Some(meta), "target object")?;
                self.objects.insert(key, o.clone());
                o
            }
        };
        Self::place(object, &matching, mapped_path)
    }

    fn place(object: Arc<Object>, matching: &[&Mapping], mapped_path: String) -> Result<Loaded> {
        let bias = matching
            .iter()
            .find_map(|m| {
                object
                    .segments
                    .iter()
                    .find(|s| pannus_kernel::page_floor(s.offset) == m.offset)
                    .map(|s| m.start.wrapping_sub(pannus_kernel::page_floor(s.vaddr)))
            })
            .ok_or_else(|| {
                Error::precondition(format!(
                    "{}: the mapping in the process does not match the file's segments (was the file replaced after the process started?)",
                    object.path.display()
                ))
            })?;
        let lo = matching.iter().map(|m| m.start).min().unwrap_or(0);
        let hi = matching.iter().map(|m| m.end).max().unwrap_or(0);
        Ok(Loaded { object, bias, lo, hi, mapped_path })
    }

    /// Every ELF file the process maps (executable, ld.so, libraries), each once, in address
    /// order. Each is read through `/proc/PID/map_files`, so as the process maps it: the file
    /// itself even when it was deleted or replaced since, or lies in another mount namespace,
    /// and never a FIFO planted at its path. Files that cannot be read or parsed are skipped.
    pub fn loaded_objects(&mut self) -> Vec<Loaded> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let maps = self.maps.clone();
        for m in &maps {
            // Patch modules are handed over as memfds (`/memfd:NAME`); the registry is not code.
            let registry = m.path.starts_with(&format!("/memfd:{}", crate::registry::MAPPING_NAME));
            if m.inode == 0 || !m.path.starts_with('/') || registry {
                continue;
            }
            let key = (m.dev.0, m.dev.1, m.inode);
            if !seen.insert(key) {
                continue;
            }
            let object = match self.objects.get(&key) {
                Some(o) => o.clone(),
                None => {
                    let path = PathBuf::from(format!("/proc/{}/map_files/{:x}-{:x}", self.pid, m.start, m.end));
                    let meta = self.shared.as_ref().and_then(|_| std::fs::metadata(&path).ok());
                    match self.load_tables(&path, meta, "object") {
                        Ok(o) => {
                            self.objects.insert(key, o.clone());
                            o
                        }
                        Err(_) => continue,
                    }
                }
            };
            let matching: Vec<&Mapping> = maps.iter().filter(|x| (x.dev.0, x.dev.1, x.inode) == key).collect();
            if let Ok(l) = Self::place(object, &matching, m.path.clone()) {
                out.push(l);
            }
        }
        out
    }

    /// The vDSO the kernel maps into the process, read from its memory (it has no file).
    pub fn vdso(&self) -> Option<Loaded> {
        let m = self.maps.iter().find(|m| m.path == "[vdso]")?;
        let bytes = self.mem.read_vec(m.start, (m.end - m.start).min(1 << 20) as usize).ok()?;
        let object = Object::parse(Path::new("[vdso]"), bytes).ok()?;
        let first = object.segments.iter().map(|s| s.vaddr).min()?;
        let bias = m.start.wrapping_sub(pannus_kernel::page_floor(first));
        Some(Loaded { object: Arc::new(object), bias, lo: m.start, hi: m.end, mapped_path: m.path.clone() })
    }

    /// The build-id of a loaded object as it is in the process's memory (its PT_NOTE segments).
    pub fn build_id_in_memory(&self, loaded: &Loaded) -> Option<String> {
        let want = loaded.object.build_id.as_ref()?;
        let want_bytes = hex::decode(want).ok()?;
        for &(vaddr, size) in &loaded.object.notes {
            let bytes = self.mem.read_partial(loaded.addr(vaddr), size.min(4096) as usize);
            if bytes.windows(want_bytes.len()).any(|w| w == want_bytes.as_slice()) {
                return Some(want.clone());
            }
        }
        None
    }

    /// Where in `maps` (sorted by address, as the kernel lists them) the mapping containing
    /// `addr` is: a binary search, as this runs for every thread while they are all stopped.
    fn mapping_index(&self, addr: u64) -> Option<usize> {
        let k = self.maps.partition_point(|m| m.start <= addr).checked_sub(1)?;
        self.maps[k].contains(addr).then_some(k)
    }

    /// How many bytes from `addr` on (at most `max`) lie in readable memory, as far as the last
    /// reading of the address space knows: across back-to-back readable mappings, up to the first
    /// gap. An address in no known mapping (the maps are older than it) gets `max`; reading it
    /// then stops at its first fault.
    pub fn readable_extent(&self, addr: u64, max: usize) -> usize {
        let Some(mut k) = self.mapping_index(addr) else { return max };
        let mut end = addr;
        while let Some(m) = self.maps.get(k).filter(|m| m.read && m.start <= end && end < m.end) {
            end = m.end;
            if end - addr >= max as u64 {
                return max;
            }
            k += 1;
        }
        (end - addr) as usize
    }

    /// How much of a stopped thread's stack to read from its `rsp` on (at most `max`): up to
    /// the end of readable memory, and for a thread whose stack holds its thread control block
    /// (glibc's threads: the block sits at the top of the stack mapping, at `fs_base`), up to
    /// that block, so that it is not read as if it were stack.
    pub fn stack_extent(&self, regs: &pannus_kernel::Regs, max: usize) -> usize {
        let extent = self.readable_extent(regs.rsp, max);
        let to_tcb = regs.fs_base.wrapping_sub(regs.rsp);
        let same_mapping = self.mapping_index(regs.rsp).is_some_and(|k| self.maps[k].contains(regs.fs_base));
        if same_mapping && to_tcb < extent as u64 {
            to_tcb as usize
        } else {
            extent
        }
    }
}
