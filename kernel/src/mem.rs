use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

/// The target's memory through `/proc/PID/mem` (PANNUS's `accesspvm`).
///
/// Writes reach read-only mappings too (the kernel makes a private copy of the page for the
/// target alone), so code can be patched without ever mapping it writable.
#[derive(Debug)]
pub struct Mem {
    pid: i32,
    file: File,
}

impl Mem {
    pub fn open(pid: i32) -> Result<Mem> {
        let path = format!("/proc/{pid}/mem");
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => Ok(Mem { pid, file }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NoProcess { pid }),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(Error::Permission { pid, op: "open the memory of", errno: nix::errno::Errno::EACCES })
            }
            Err(e) => Err(Error::Other(format!("cannot open {path}: {e}"))),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, addr).map_err(|source| Error::Mem {
            pid: self.pid,
            op: "read",
            addr,
            len: buf.len(),
            source,
        })
    }

    pub fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    /// Reads as much of `[addr, addr+len)` as is readable, stopping at the first fault.
    pub fn read_partial(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut v[done..], addr + done as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
        v.truncate(done);
        v
    }

    /// Reads as much of `buf.len()` bytes at `addr` as is readable, stopping at the first
    /// fault or page the target itself cannot read (a guard page: `/proc/PID/mem` would read
    /// through it), and returns how many were read. One `process_vm_readv`, which copies straight
    /// from the target's pages (about three times cheaper per call than a read of
    /// `/proc/PID/mem`, which copies through a bounce page); where it is not available, through
    /// `/proc/PID/mem` as [`Mem::read_partial`].
    pub fn read_some(&self, addr: u64, buf: &mut [u8]) -> usize {
        let len = buf.len();
        let remote = [nix::sys::uio::RemoteIoVec { base: addr as usize, len }];
        let mut local = [std::io::IoSliceMut::new(buf)];
        match nix::sys::uio::process_vm_readv(nix::unistd::Pid::from_raw(self.pid), &mut local, &remote) {
            Ok(n) => n,
            Err(nix::errno::Errno::EFAULT | nix::errno::Errno::ENOMEM) => 0,
            // No process_vm_readv here (ENOSYS, or EPERM under a sandbox).
            Err(_) => {
                let mut done = 0;
                while done < len {
                    match self.file.read_at(&mut buf[done..], addr + done as u64) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => done += n,
                    }
                }
                done
            }
        }
    }

    /// Reads many spans at once, as [`Mem::read_some`] reads one: span `i` reads up to
    /// `spans[i].1.len()` bytes at `spans[i].0` into `buf[spans[i].1]`, stopping at its first
    /// fault. Returns how many bytes each span read. The ranges must be in increasing order and
    /// not overlap. One `process_vm_readv` per 1024 spans when nothing faults, so reading the
    /// stacks of hundreds of stopped threads costs a few system calls instead of one each.
    pub fn read_many(&self, spans: &[(u64, std::ops::Range<usize>)], buf: &mut [u8]) -> Vec<usize> {
        /// IOV_MAX on Linux: the most iovecs one call takes.
        const BATCH: usize = 1024;
        let mut got = vec![0; spans.len()];
        let mut next = 0;
        while next < spans.len() {
            let chunk = &spans[next..spans.len().min(next + BATCH)];
            let remote: Vec<_> = chunk
                .iter()
                .map(|(addr, r)| nix::sys::uio::RemoteIoVec { base: *addr as usize, len: r.len() })
                .collect();
            let mut local = Vec::with_capacity(chunk.len());
            let mut rest = &mut *buf;
            let mut at = 0;
            for (_, r) in chunk {
                debug_assert!(r.start >= at, "read_many: spans out of order");
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - at);
                let (part, tail) = tail.split_at_mut(r.len());
                local.push(std::io::IoSliceMut::new(part));
                rest = tail;
                at = r.end;
            }
            let done = match nix::sys::uio::process_vm_readv(nix::unistd::Pid::from_raw(self.pid), &mut local, &remote)
            {
                Ok(n) => n,
                Err(nix::errno::Errno::EFAULT | nix::errno::Errno::ENOMEM) => 0,
                // No process_vm_readv here: one span at a time through /proc/PID/mem.
                Err(_) => {
                    drop(local);
                    for (i, (addr, r)) in spans.iter().enumerate().skip(next) {
                        got[i] = self.read_some(*addr, &mut buf[r.clone()]);
                    }
                    return got;
                }
            };
            // The transfer stops at the first fault: every span before it is whole.
            drop(local);
            let mut left = done;
            let mut i = next;
            while i < next + chunk.len() && left >= spans[i].1.len() {
                got[i] = spans[i].1.len();
                left -= spans[i].1.len();
                i += 1;
            }
            if i < next + chunk.len() {
                // Span `i` faulted: its readable part, read by itself (the kernel may not have
                // copied a part of it), and the batch goes on after it.
                let (addr, r) = &spans[i];
                got[i] = if left > 0 { left } else { self.read_some(*addr, &mut buf[r.clone()]) };
                i += 1;
            }
            next = i;
        }
        got
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.file.write_all_at(data, addr).map_err(|source| Error::Mem {
            pid: self.pid,
            op: "write",
            addr,
            len: data.len(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::libc;

    #[test]
    fn read_some_stops_at_the_first_fault() {
        let page = crate::PAGE as usize;
        // SAFETY: asks for a fresh private anonymous mapping of three pages; no memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let addr = base as u64;
        let mem = Mem::open(std::process::id() as i32).unwrap();
        mem.write(addr + page as u64 - 4, &[1, 2, 3, 4]).unwrap();
        // SAFETY: the middle page of the mapping above, which nothing here references.
        let r = unsafe { libc::mprotect(base.cast::<u8>().add(page).cast(), page, libc::PROT_NONE) };
        assert_eq!(r, 0);
        let mut buf = vec![0u8; 2 * page];
        assert_eq!(mem.read_some(addr, &mut buf), page, "up to the unreadable page");
        assert_eq!(&buf[page - 4..page], &[1, 2, 3, 4]);
        assert_eq!(mem.read_some(addr + page as u64, &mut buf[..16]), 0, "nothing at the unreadable page");
        assert_eq!(mem.read_some(addr + 2 * page as u64, &mut buf[..page]), page, "readable again after it");
        // Many spans at once: each stops at its own fault, and the ones after a fault are read.
        mem.write(addr + 2 * page as u64, &[9, 8, 7]).unwrap();
        let spans = [
            (addr + page as u64 - 4, 0..4),
            (addr + page as u64 - 8, 8..24),
            (addr + page as u64, 24..40),
            (addr + 2 * page as u64, 40..43),
            (addr, 50..50 + page),
        ];
        let mut buf = vec![0u8; 50 + page];
        assert_eq!(mem.read_many(&spans, &mut buf), vec![4, 8, 0, 3, page]);
        assert_eq!(&buf[0..4], &[1, 2, 3, 4]);
        assert_eq!(&buf[12..16], &[1, 2, 3, 4]);
        assert_eq!(&buf[40..43], &[9, 8, 7]);
        // SAFETY: unmaps the mapping made above, no longer used.
        unsafe { libc::munmap(base, 3 * page) };
    }
}
