//! Files pannus opens for itself (its state folder), one path component at a time relative to
//! a folder it holds open, never through a symbolic link. nix's `openat` hands back a raw
//! descriptor; this owns it.

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `openat(dir, path, flags | O_NOFOLLOW | O_CLOEXEC, mode)`, `dir` `None` for the current
/// folder: a symbolic link as the last component of `path` fails with `ELOOP`.
pub fn open_nofollow(dir: Option<BorrowedFd<'_>>, path: &Path, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(dir.map(|d| d.as_raw_fd()), path, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: `openat` succeeded, so `fd` is a descriptor it just opened for this call alone:
    // nothing else owns it or will close it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A duplicate, in pannus, of the file descriptor `fd` of process `pid` (`pidfd_getfd`, Linux
/// 5.6): the very open file the process holds, taken without opening any path, so that nothing
/// the process does (a `dup2` onto that number, a path swapped under `/proc/PID/fd`) makes
/// pannus open another file, with the side effects opening can have.
pub fn take_fd(pid: i32, fd: crate::RemoteFd) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags (0) and returns a new descriptor or -1 with
    // errno; no memory is passed.
    let pidfd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    let pidfd = nix::errno::Errno::result(pidfd)? as i32;
    // SAFETY: `pidfd` was just opened for this call alone: nothing else owns or closes it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags (0),
    // and returns a new descriptor (close-on-exec) or -1 with errno; no memory is passed.
    let got = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd.as_raw(), 0) };
    let got = nix::errno::Errno::result(got)? as i32;
    // SAFETY: `got` was just created by pidfd_getfd for this call alone.
    Ok(unsafe { OwnedFd::from_raw_fd(got) })
}
