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
