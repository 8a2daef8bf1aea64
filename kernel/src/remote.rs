//! The system calls pannus makes inside the target, one typed method of [`Hijack`] each: flags
//! are nix's own types, file descriptors are [`RemoteFd`]s, and a failure is an
//! [`Error::Syscall`] naming the call, the process and the errno.

use crate::error::{Error, Result};
use crate::hijack::Hijack;
use crate::nr;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc::{self, c_int};
use nix::sys::memfd::MemFdCreateFlag;
use nix::sys::mman::{MapFlags, ProtFlags};
use std::fmt;

// The mapping flags pannus relies on exist for this target and carry the kernel's values:
// MAP_FIXED_NOREPLACE (Linux 4.17; older kernels ignore it, see `Hijack::mmap`) and
// MAP_POPULATE.
const _: () = {
    assert!(MapFlags::MAP_FIXED_NOREPLACE.bits() == 0x10_0000);
    assert!(MapFlags::MAP_POPULATE.bits() == 0x8000);
};

/// A file descriptor number in the target's file table, not in pannus's: it names nothing in
/// pannus, and dropping it closes nothing (see [`Hijack::close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteFd(i32);

impl RemoteFd {
    /// The target's descriptor number `fd`.
    pub const fn from_raw(fd: i32) -> RemoteFd {
        RemoteFd(fd)
    }

    pub const fn as_raw(self) -> i32 {
        self.0
    }

    /// The descriptor as a system call argument: a C `int`, sign-extended as the kernel reads it.
    fn arg(self) -> u64 {
        i64::from(self.0) as u64
    }
}

impl fmt::Display for RemoteFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A C `int` flag word as a system call argument.
fn flag_arg(bits: c_int) -> u64 {
    u64::from(bits as u32)
}

impl Hijack<'_> {
    /// Runs system call `nr` and turns a result in the kernel's error range (-4095..=-1) into
    /// [`Error::Syscall`].
    fn checked(&mut self, call: &'static str, nr: i64, args: &[u64]) -> Result<u64> {
        let r = self.syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(self.failed(call, Errno::from_raw(-r as i32)));
        }
        Ok(r as u64)
    }

    fn failed(&self, call: &'static str, errno: Errno) -> Error {
        Error::Syscall { pid: self.pid(), call, errno }
    }

    /// A result that is a new file descriptor.
    fn new_fd(&mut self, call: &'static str, nr: i64, args: &[u64]) -> Result<RemoteFd> {
        let r = self.checked(call, nr, args)?;
        i32::try_from(r).map(RemoteFd).map_err(|_| {
            Error::Other(format!("{call} inside process {} returned {r:#x}, no file descriptor", self.pid()))
        })
    }

    /// `mmap(2)`: maps `len` bytes at `addr` (0: where the kernel chooses) and returns where.
    /// `fd` is `None` for anonymous memory (`MAP_ANONYMOUS`), else the target's file to map
    /// from `offset`.
    ///
    /// A kernel older than 4.17 does not know `MAP_FIXED_NOREPLACE` and takes `addr` as a mere
    /// hint: a mapping it places elsewhere is unmapped again and the call fails with `EEXIST`,
    /// as on a newer kernel.
    pub fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: ProtFlags,
        flags: MapFlags,
        fd: Option<RemoteFd>,
        offset: u64,
    ) -> Result<u64> {
        let fd = fd.map_or(u64::MAX, RemoteFd::arg);
        let args = [addr, len, flag_arg(prot.bits()), flag_arg(flags.bits()), fd, offset];
        let got = self.checked("mmap", nr::MMAP, &args)?;
        if flags.contains(MapFlags::MAP_FIXED_NOREPLACE) && got != addr {
            let _ = self.munmap(got, len);
            return Err(self.failed("mmap", Errno::EEXIST));
        }
        Ok(got)
    }

    /// `munmap(2)`.
    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<()> {
        self.checked("munmap", nr::MUNMAP, &[addr, len]).map(|_| ())
    }

    /// `mprotect(2)`.
    pub fn mprotect(&mut self, addr: u64, len: u64, prot: ProtFlags) -> Result<()> {
        self.checked("mprotect", nr::MPROTECT, &[addr, len, flag_arg(prot.bits())]).map(|_| ())
    }

    /// `openat(2)` of the NUL-terminated path at `path_addr` in the target's memory, relative to
    /// `dirfd` (`None`: the target's working directory, `AT_FDCWD`). There is no mode argument:
    /// pannus opens files that exist, and a file created with `O_CREAT` or `O_TMPFILE` would get
    /// mode 0.
    pub fn openat(&mut self, dirfd: Option<RemoteFd>, path_addr: u64, flags: OFlag) -> Result<RemoteFd> {
        let dirfd = dirfd.unwrap_or(RemoteFd(libc::AT_FDCWD)).arg();
        self.new_fd("openat", nr::OPENAT, &[dirfd, path_addr, flag_arg(flags.bits()), 0])
    }

    /// `close(2)` of a descriptor of the target.
    pub fn close(&mut self, fd: RemoteFd) -> Result<()> {
        self.checked("close", nr::CLOSE, &[fd.arg()]).map(|_| ())
    }

    /// `memfd_create(2)` with the NUL-terminated name at `name_addr` in the target's memory.
    pub fn memfd_create(&mut self, name_addr: u64, flags: MemFdCreateFlag) -> Result<RemoteFd> {
        self.new_fd("memfd_create", nr::MEMFD_CREATE, &[name_addr, u64::from(flags.bits())])
    }

    /// `ftruncate(2)`.
    pub fn ftruncate(&mut self, fd: RemoteFd, len: u64) -> Result<()> {
        self.checked("ftruncate", nr::FTRUNCATE, &[fd.arg(), len]).map(|_| ())
    }
}

