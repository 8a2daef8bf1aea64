//! The system calls pannus makes inside the target, one typed method of [`Hijack`] each: flags
//! are nix's own types, file descriptors are [`RemoteFd`]s, and a failure is an
//! [`Error::Syscall`] naming the call, the process and the errno.

use crate::error::{Error, Result};
use crate::hijack::Hijack;
use crate::{i386, nr};
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

/// A signal's disposition in the target ([`Hijack::signal_handler`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalAction {
    /// `SIG_DFL` (0), `SIG_IGN` (1), or the handler's address.
    pub handler: u64,
    pub flags: u64,
    /// The `rt_sigreturn` trampoline the handler returns into (`SA_RESTORER`).
    pub restorer: u64,
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
        let got = if self.is_compat() {
            // mmap2: the offset in pages (a 32-bit process has no `mmap` taking it in bytes).
            if offset % crate::PAGE != 0 || addr > u64::from(u32::MAX) || len > u64::from(u32::MAX) {
                return Err(self.failed("mmap2", Errno::EINVAL));
            }
            let args = [addr, len, flag_arg(prot.bits()), flag_arg(flags.bits()), fd, offset / crate::PAGE];
            self.checked("mmap2", i386::nr::MMAP2, &args)?
        } else {
            let args = [addr, len, flag_arg(prot.bits()), flag_arg(flags.bits()), fd, offset];
            self.checked("mmap", nr::MMAP, &args)?
        };
        if flags.contains(MapFlags::MAP_FIXED_NOREPLACE) && got != addr {
            let _ = self.munmap(got, len);
            return Err(self.failed("mmap", Errno::EEXIST));
        }
        Ok(got)
    }

    /// `munmap(2)`.
    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<()> {
        let nr = if self.is_compat() { i386::nr::MUNMAP } else { nr::MUNMAP };
        self.checked("munmap", nr, &[addr, len]).map(|_| ())
    }

    /// `mprotect(2)`.
    pub fn mprotect(&mut self, addr: u64, len: u64, prot: ProtFlags) -> Result<()> {
        let nr = if self.is_compat() { i386::nr::MPROTECT } else { nr::MPROTECT };
        self.checked("mprotect", nr, &[addr, len, flag_arg(prot.bits())]).map(|_| ())
    }

    /// `openat(2)` of the NUL-terminated path at `path_addr` in the target's memory, relative to
    /// `dirfd` (`None`: the target's working directory, `AT_FDCWD`). There is no mode argument:
    /// pannus opens files that exist, and a file created with `O_CREAT` or `O_TMPFILE` would get
    /// mode 0.
    pub fn openat(&mut self, dirfd: Option<RemoteFd>, path_addr: u64, flags: OFlag) -> Result<RemoteFd> {
        let dirfd = dirfd.unwrap_or(RemoteFd(libc::AT_FDCWD)).arg();
        let nr = if self.is_compat() { i386::nr::OPENAT } else { nr::OPENAT };
        self.new_fd("openat", nr, &[dirfd, path_addr, flag_arg(flags.bits()), 0])
    }

    /// `close(2)` of a descriptor of the target.
    pub fn close(&mut self, fd: RemoteFd) -> Result<()> {
        let nr = if self.is_compat() { i386::nr::CLOSE } else { nr::CLOSE };
        self.checked("close", nr, &[fd.arg()]).map(|_| ())
    }

    /// `memfd_create(2)` with the NUL-terminated name at `name_addr` in the target's memory.
    pub fn memfd_create(&mut self, name_addr: u64, flags: MemFdCreateFlag) -> Result<RemoteFd> {
        let nr = if self.is_compat() { i386::nr::MEMFD_CREATE } else { nr::MEMFD_CREATE };
        self.new_fd("memfd_create", nr, &[name_addr, u64::from(flags.bits())])
    }

    /// `rt_sigaction(2)` asking only: the handler of signal `sig` in the target, as the kernel
    /// holds it (`SIG_DFL` 0, `SIG_IGN` 1, else an address), with its `sa_flags` and restorer.
    /// Changes nothing.
    pub fn signal_handler(&mut self, sig: i32) -> Result<SignalAction> {
        /// `struct kernel_sigaction`: handler, flags, restorer, mask (8 bytes), each word 8 bytes
        /// on x86-64 and 4 on i386.
        const LEN: u64 = 32;
        let out = self.out_buffer(LEN)?;
        self.mem().write(out, &[0; LEN as usize])?;
        let (nr, w) = if self.is_compat() { (i386::nr::RT_SIGACTION, 4) } else { (nr::RT_SIGACTION, 8) };
        self.checked("rt_sigaction", nr, &[i64::from(sig) as u64 & 0xffff_ffff, 0, out, 8])?;
        let b = self.mem().read_vec(out, LEN as usize)?;
        let word = |i: usize| {
            let mut v = [0u8; 8];
            v[..w].copy_from_slice(&b[w * i..w * i + w]);
            u64::from_le_bytes(v)
        };
        Ok(SignalAction { handler: word(0), flags: word(1), restorer: word(2) })
    }

    /// `ftruncate(2)`.
    pub fn ftruncate(&mut self, fd: RemoteFd, len: u64) -> Result<()> {
        let nr = if self.is_compat() { i386::nr::FTRUNCATE } else { nr::FTRUNCATE };
        self.checked("ftruncate", nr, &[fd.arg(), len]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{self, Mapping};
    use crate::{Mem, PAGE};
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

    /// A `cat` echoing lines: once it has echoed one, its C library is mapped and its only
    /// thread waits in a read of its standard input. Killed when dropped.
    struct Cat {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
        pid: i32,
    }

    impl Cat {
        fn start() -> Cat {
            let mut child = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("cat runs");
            let stdin = child.stdin.take().unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let pid = child.id() as i32;
            let mut cat = Cat { child, stdin, stdout, pid };
            cat.echo("ready");
            cat
        }

        /// Sends a line and waits for it to come back.
        fn echo(&mut self, line: &str) {
            writeln!(self.stdin, "{line}").unwrap();
            let mut back = String::new();
            self.stdout.read_line(&mut back).unwrap();
            assert_eq!(back, format!("{line}\n"));
        }
    }

    impl Drop for Cat {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Fresh private anonymous read-write memory in the target, where the kernel chooses.
    fn anonymous(h: &mut Hijack, len: u64) -> u64 {
        h.mmap(0, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, ANON, None, 0).unwrap()
    }

    const ANON: MapFlags = MapFlags::MAP_PRIVATE.union(MapFlags::MAP_ANONYMOUS);

    /// Runs `body` with the only thread of a fresh `cat` borrowed, then lets it go and checks
    /// that `cat` still echoes.
    fn with_borrowed_cat(body: impl FnOnce(&mut Hijack, &Mem, i32)) {
        let mut cat = Cat::start();
        let mem = Mem::open(cat.pid).unwrap();
        let mut h = hijack(&mem);
        body(&mut h, &mem, cat.pid);
        h.release().unwrap();
        cat.echo("still there");
    }

    /// Borrows the target's thread the way the engine does.
    fn hijack(mem: &Mem) -> Hijack<'_> {
        let pid = mem.pid();
        let gadgets = maps::find_gadgets(mem, &maps::read(pid).unwrap()).expect("gadgets in the C library");
        Hijack::attach(mem, pid, gadgets).unwrap()
    }

    fn mapping_at(pid: i32, addr: u64) -> Option<Mapping> {
        maps::read(pid).unwrap().into_iter().find(|m| m.contains(addr))
    }

    fn perms(m: &Mapping) -> String {
        let bit = |on: bool, c: char| if on { c } else { '-' };
        [bit(m.read, 'r'), bit(m.write, 'w'), bit(m.exec, 'x'), if m.shared { 's' } else { 'p' }].iter().collect()
    }

    fn errno_of<T: fmt::Debug>(r: Result<T>) -> (&'static str, Errno) {
        match r {
            Err(Error::Syscall { call, errno, .. }) => (call, errno),
            other => panic!("expected a failed system call, got {other:?}"),
        }
    }

    /// The target's descriptor `fd` as /proc shows it.
    fn fd_link(pid: i32, fd: RemoteFd) -> Option<String> {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok().map(|p| p.to_string_lossy().into_owned())
    }

    #[test]
    fn anonymous_memory_is_mapped_protected_and_unmapped_in_the_target() {
        with_borrowed_cat(|h, mem, pid| {
            let addr = anonymous(h, 2 * PAGE);
            assert_eq!(addr % PAGE, 0);
            let m = mapping_at(pid, addr).expect("mapped");
            assert_eq!((perms(&m), m.path.as_str()), (String::from("rw-p"), ""));
            assert!(m.end >= addr + 2 * PAGE);
            mem.write(addr + PAGE, b"pannus").unwrap();
            assert_eq!(mem.read_vec(addr + PAGE, 6).unwrap(), b"pannus");

            h.mprotect(addr, PAGE, ProtFlags::PROT_READ).unwrap();
            let low = mapping_at(pid, addr).unwrap();
            assert_eq!((perms(&low), low.end), (String::from("r--p"), addr + PAGE));
            assert_eq!(perms(&mapping_at(pid, addr + PAGE).unwrap()), "rw-p");

            h.munmap(addr, 2 * PAGE).unwrap();
            assert_eq!(mapping_at(pid, addr), None);
            assert_eq!(mapping_at(pid, addr + PAGE), None);
        });
    }

    #[test]
    fn a_failing_call_is_an_error_naming_the_call_and_its_errno() {
        with_borrowed_cat(|h, mem, pid| {
            let addr = anonymous(h, PAGE);
            mem.write(addr, b"kept").unwrap();

            let over = h.mmap(addr, PAGE, ProtFlags::PROT_READ, ANON | MapFlags::MAP_FIXED_NOREPLACE, None, 0);
            let shown = over.as_ref().map_err(|e| e.to_string()).unwrap_err();
            assert_eq!(shown, format!("mmap inside process {pid} failed: EEXIST: File exists"));
            assert_eq!(errno_of(over), ("mmap", Errno::EEXIST));
            assert_eq!(perms(&mapping_at(pid, addr).unwrap()), "rw-p", "the mapping in place is untouched");
            assert_eq!(mem.read_vec(addr, 4).unwrap(), b"kept");

            assert_eq!(errno_of(h.munmap(addr + 1, PAGE)), ("munmap", Errno::EINVAL));
            assert_eq!(errno_of(h.mprotect(addr + 1, PAGE, ProtFlags::PROT_READ)), ("mprotect", Errno::EINVAL));
            assert!(mapping_at(pid, addr).is_some(), "nothing was unmapped");
            match h.munmap(addr + 1, PAGE) {
                Err(Error::Syscall { pid: p, .. }) => assert_eq!(p, pid),
                other => panic!("{other:?}"),
            }

            h.munmap(addr, PAGE).unwrap();
        });
    }

    #[test]
    fn files_are_created_opened_mapped_and_closed_in_the_target() {
        with_borrowed_cat(|h, mem, pid| {
            // Strings for the target's system calls, in its memory.
            let scratch = anonymous(h, PAGE);
            let (name, root, etc, missing) = (scratch, scratch + 64, scratch + 128, scratch + 192);
            mem.write(name, b"pannus-remote-test\0").unwrap();
            mem.write(root, b"/\0").unwrap();
            mem.write(etc, b"etc\0").unwrap();
            mem.write(missing, b"/nonexistent/pannus\0").unwrap();

            let fd = h.memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC).unwrap();
            assert_eq!(fd_link(pid, fd).as_deref(), Some("/memfd:pannus-remote-test (deleted)"));
            let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
            let flags = fdinfo.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
            let flags = c_int::from_str_radix(flags, 8).unwrap();
            assert_ne!(flags & libc::O_CLOEXEC, 0, "close-on-exec, as asked: {fdinfo}");

            h.ftruncate(fd, 2 * PAGE).unwrap();
            assert_eq!(std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).unwrap().len(), 2 * PAGE);
            let at = h.mmap(0, PAGE, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, Some(fd), PAGE).unwrap();
            let m = mapping_at(pid, at).unwrap();
            assert_eq!((perms(&m), m.offset, m.len()), (String::from("r--s"), PAGE, PAGE));
            assert_eq!(m.path, "/memfd:pannus-remote-test (deleted)");

            h.close(fd).unwrap();
            assert_eq!(fd_link(pid, fd), None);
            assert!(mapping_at(pid, at).is_some(), "the mapping outlives the descriptor");
            assert_eq!(errno_of(h.close(fd)), ("close", Errno::EBADF));
            assert_eq!(errno_of(h.ftruncate(fd, PAGE)), ("ftruncate", Errno::EBADF));

            let dir = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let rootfd = h.openat(None, root, dir).unwrap();
            assert_eq!(fd_link(pid, rootfd).as_deref(), Some("/"));
            let etcfd = h.openat(Some(rootfd), etc, dir).unwrap();
            assert_eq!(fd_link(pid, etcfd).as_deref(), Some("/etc"), "relative to the directory descriptor");
            assert_eq!(errno_of(h.openat(None, missing, OFlag::O_RDONLY)), ("openat", Errno::ENOENT));
            let stdin = RemoteFd::from_raw(0);
            assert_eq!(errno_of(h.openat(Some(stdin), etc, dir)), ("openat", Errno::ENOTDIR), "a pipe is no directory");
            h.close(etcfd).unwrap();
            h.close(rootfd).unwrap();

            h.munmap(at, PAGE).unwrap();
            h.munmap(scratch, PAGE).unwrap();
        });
    }
}
