//! What the processes of one run over many processes of a binary share (`apply --all`,
//! `rollback --all`): each ELF file parsed once (the target object, the C library, the loader),
//! the patch module read, checksummed and parsed once, and where the code a borrowed thread is
//! pointed at lies within the files that hold it. Only what does not depend on one process's
//! addresses is kept; everything taken from here is placed and checked in each process as
//! before (load bias, build-id in memory, the gadgets' bytes in its memory).
//!
//! A file is known by its device, inode, size and change times: a file rewritten in place during
//! the run is parsed again.

use crate::elf::Object;
use crate::error::Result;
use pannus_kernel::maps::Store;
use pannus_kernel::{Gadgets, Mapping};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A file as one run knows it (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Where a gadget lies: in the mapping of this file at this file offset (or the vDSO), so many
/// bytes from the mapping's start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    dev: (i32, i32),
    inode: u64,
    offset: u64,
    /// For a mapping of no file (the vDSO): its name.
    name: String,
    delta: u64,
}

impl Place {
    fn of(maps: &[Mapping], addr: u64) -> Option<Place> {
        let m = maps.iter().find(|m| m.exec && m.contains(addr))?;
        let name = if m.inode == 0 { m.path.clone() } else { String::new() };
        if m.inode == 0 && !name.starts_with('[') {
            return None;
        }
        Some(Place { dev: m.dev, inode: m.inode, offset: m.offset, name, delta: addr - m.start })
    }

    fn find(&self, maps: &[Mapping]) -> Option<u64> {
        let m = maps.iter().find(|m| {
            m.exec
                && m.dev == self.dev
                && m.inode == self.inode
                && m.offset == self.offset
                && (self.inode != 0 || m.path == self.name)
        })?;
        let addr = m.start.checked_add(self.delta)?;
        m.contains(addr).then_some(addr)
    }
}

/// The places of one process's [`Gadgets`].
#[derive(Debug, Clone)]
struct GadgetPlaces {
    syscall_ret: Place,
    ret: Place,
    restorer: Place,
    store: Option<(Place, Store)>,
    compat: bool,
}

/// A patch module verified against a checksum, and the checksum found.
type Verified = (Arc<Object>, String);

/// See the module documentation. Shared by the threads of a run.
#[derive(Debug, Default)]
pub struct Shared {
    objects: Mutex<HashMap<FileKey, Arc<Object>>>,
    /// Modules verified against a checksum: by path and checksum, with the checksum found.
    modules: Mutex<HashMap<(PathBuf, String), Verified>>,
    gadgets: Mutex<Option<GadgetPlaces>>,
}

/// A lock that a thread which panicked while holding it does not poison: what it guards is a
/// cache, whole at every instant.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// The ELF file `key`, parsed by `load` the first time only.
    pub fn object(&self, key: FileKey, load: impl FnOnce() -> Result<Object>) -> Result<Arc<Object>> {
        if let Some(o) = lock(&self.objects).get(&key) {
            return Ok(o.clone());
        }
        // Parsed outside the lock: another thread may parse it too, and one copy wins.
        let o = Arc::new(load()?);
        Ok(lock(&self.objects).entry(key).or_insert(o).clone())
    }

    /// The patch module at `path` verified against `sha256` by `verify` the first time only;
    /// with the checksum found.
    pub fn module(
        &self,
        path: &Path,
        sha256: &str,
        verify: impl FnOnce() -> Result<(Object, String)>,
    ) -> Result<Verified> {
        let key = (path.to_path_buf(), sha256.to_string());
        if let Some(found) = lock(&self.modules).get(&key) {
            return Ok(found.clone());
        }
        let (o, sum) = verify()?;
        let found = (Arc::new(o), sum);
        Ok(lock(&self.modules).entry(key).or_insert(found).clone())
    }

    /// The gadgets of a process with address space `maps`, where another process of the run
    /// had them: each in the mapping of the same file at the same offset. `None` when one of
    /// them has no such mapping here; the caller checks them in the process's memory.
    pub fn gadgets(&self, maps: &[Mapping]) -> Option<Gadgets> {
        let places = lock(&self.gadgets).clone()?;
        let store = match &places.store {
            Some((place, s)) => Some(Store { addr: place.find(maps)?, ..*s }),
            None => None,
        };
        Some(Gadgets {
            syscall_ret: places.syscall_ret.find(maps)?,
            ret: places.ret.find(maps)?,
            restorer: places.restorer.find(maps)?,
            store,
            compat: places.compat,
        })
    }

    /// Remembers where a process with address space `maps` has its gadgets `g`.
    pub fn remember_gadgets(&self, maps: &[Mapping], g: &Gadgets) {
        let place = |addr| Place::of(maps, addr);
        let store = match g.store {
            Some(s) => match place(s.addr) {
                Some(p) => Some((p, s)),
                None => return,
            },
            None => None,
        };
        let (Some(syscall_ret), Some(ret), Some(restorer)) = (place(g.syscall_ret), place(g.ret), place(g.restorer))
        else {
            return;
        };
        *lock(&self.gadgets) = Some(GadgetPlaces { syscall_ret, ret, restorer, store, compat: g.compat });
    }
}
