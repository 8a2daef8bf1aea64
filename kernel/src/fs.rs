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
