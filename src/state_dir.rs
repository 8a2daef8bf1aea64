//! The state folder on disk (`--state-dir`: the journal, `locks/`), as root can trust it: private
//! to the user running pannus, and never walked through a symbolic link. Each folder is opened
//! once and checked on its open descriptor; every file and subfolder in it is then opened
//! relative to that descriptor with `O_NOFOLLOW`, so nobody can swap a path under pannus and
//! make it write elsewhere.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode};
use nix::unistd::{geteuid, Uid, User};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A folder of the state, open and checked.
pub struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn user_name(uid: u32) -> String {
    User::from_uid(Uid::from_raw(uid)).ok().flatten().map_or_else(|| format!("uid {uid}"), |u| u.name)
}

impl StateDir {
    /// Opens the state folder `path`, creating it (and its missing parents) mode 0700. Refuses
    /// (bad input) a folder that is a symbolic link, belongs to another user, or that its group
    /// or others can write to.
    pub fn open(path: &Path) -> Result<StateDir> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|e| {
                Error::other(format!("cannot create the state folder's parent {}: {e}", parent.display()))
            })?;
        }
        Self::open_in(None, path, path.to_path_buf(), true)
    }

    /// The subfolder `name`, created 0700, checked as the state folder is.
    pub fn subdir(&self, name: &str) -> Result<StateDir> {
        Self::open_in(Some(self), Path::new(name), self.path.join(name), true)
    }

    /// The subfolder `name` if it exists (never created), checked as the state folder is.
    pub fn existing(&self, name: &str) -> Result<Option<StateDir>> {
        match Self::open_in(Some(self), Path::new(name), self.path.join(name), false) {
            Ok(d) => Ok(Some(d)),
            Err(_) if !self.has(name) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens (with `O_CREAT` in `flags`: creates, mode 0600) the file `name` of this folder.
    /// A symbolic link there is refused, never followed.
    pub fn file(&self, name: &str, flags: OFlag) -> Result<File> {
        let path = self.path.join(name);
        let fd =
            pannus_kernel::open_nofollow(Some(self.fd.as_fd()), Path::new(name), flags, Mode::S_IRUSR | Mode::S_IWUSR)
                .map_err(|e| refused_link(e, &path, "file"))?;
        Ok(File::from(fd))
    }

    /// Whether this folder has an entry `name` (of any kind, a link not followed).
    pub fn has(&self, name: &str) -> bool {
        nix::sys::stat::fstatat(Some(self.fd.as_raw_fd()), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    }

    /// Removes the file `name` of this folder (a link is removed, never followed); nothing when
    /// there is none.
    pub fn remove(&self, name: &str) {
        let _ = nix::unistd::unlinkat(Some(self.fd.as_raw_fd()), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    }

    /// The folder's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (0700, when `create`) and opens folder `name` of `parent` (`None`: relative to
    /// the current folder), then checks what was opened.
    fn open_in(parent: Option<&StateDir>, name: &Path, path: PathBuf, create: bool) -> Result<StateDir> {
        let at = parent.map(|p| p.fd.as_raw_fd());
        let created = match create.then(|| mkdirat(at, name, Mode::S_IRWXU)) {
            Some(Ok(())) => true,
            None | Some(Err(Errno::EEXIST)) => false,
            Some(Err(e)) => {
                return Err(Error::other(format!("cannot create the state folder {}: {e}", path.display())))
            }
        };
        let fd = pannus_kernel::open_nofollow(
            parent.map(|p| p.fd.as_fd()),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| refused_link(e, &path, "folder"))?;
        if created {
            // Exactly 0700, whatever the umask took away.
            fchmod(fd.as_raw_fd(), Mode::S_IRWXU).map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
        }
        let st = fstat(fd.as_raw_fd()).map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
        let me = geteuid().as_raw();
        let mode = st.st_mode & 0o7777;
        if st.st_uid != me || mode & 0o022 != 0 {
            let fix = if st.st_uid != me {
                format!("chown {} {1} && chmod 700 {1}", user_name(me), path.display())
            } else {
                format!("chmod 700 {}", path.display())
            };
            return Err(Error::bad_input(format!(
                "state folder {}: mode {mode:04o}, owner {}: it must belong to {} and be writable by no one else",
                path.display(),
                user_name(st.st_uid),
                user_name(me)
            ))
            .hint(format!("{fix}, or choose another --state-dir")));
        }
        Ok(StateDir { fd, path })
    }
}

/// The error for an `open` of `path` (a `what`: file or folder) in the state that failed with
/// `e`: a symbolic link (or, for a folder, anything but a folder) is refused as bad input.
fn refused_link(e: Errno, path: &Path, what: &str) -> Error {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => Error::bad_input(format!(
            "state {what} {} is a symbolic link{}: pannus never follows a link in its state folder",
            path.display(),
            if what == "folder" { " or not a folder" } else { "" }
        ))
        .hint(format!("remove {}, or choose another --state-dir", path.display())),
        e => Error::other(format!("state {what} {}: {e}", path.display())),
    }
}
