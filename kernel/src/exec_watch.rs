//! fanotify's `FAN_OPEN_EXEC_PERM` on chosen executables: each `exec` of one of them waits in the
//! kernel until pannus answers, so that pannus can seize the exec-ing thread first (see
//! `exec_hold.rs`). The kernel lets every held `exec` go on when the descriptor closes (pannus
//! gone), and an answer is always "allow": pannus never refuses an `exec`. Needs
//! `CAP_SYS_ADMIN`.

use crate::error::{Error, Result};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyEvent, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

/// The executables watched.
pub struct ExecWatch {
    fan: Fanotify,
}

/// An `exec` held until [`ExecWatch::allow`].
pub struct HeldExec {
    event: FanotifyEvent,
}

impl HeldExec {
    /// The thread inside the `exec`.
    pub fn tid(&self) -> i32 {
        self.event.pid()
    }
}

impl ExecWatch {
    pub fn open() -> Result<ExecWatch> {
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_REPORT_TID,
            EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC | EventFFlags::O_LARGEFILE,
        )
        .map_err(|e| Error::Other(format!("fanotify: {e}")))?;
        Ok(ExecWatch { fan })
    }

    /// Watches exactly `paths` from now on.
    pub fn watch(&self, paths: &[&Path]) -> Result<()> {
        self.fan
            .mark::<Path>(MarkFlags::FAN_MARK_FLUSH, MaskFlags::empty(), None, None)
            .map_err(|e| Error::Other(format!("fanotify: flush: {e}")))?;
        for p in paths {
            self.fan
                .mark(MarkFlags::FAN_MARK_ADD, MaskFlags::FAN_OPEN_EXEC_PERM, None, Some(*p))
                .map_err(|e| Error::Other(format!("fanotify: watch {}: {e}", p.display())))?;
        }
        Ok(())
    }

    /// The `exec`s held within `wait` (none when nothing came, or a signal did).
    pub fn next(&self, wait: Duration) -> Result<Vec<HeldExec>> {
        use nix::errno::Errno;
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.fan.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(wait.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) | Err(Errno::EINTR) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(e) => return Err(Error::Other(format!("fanotify: poll: {e}"))),
        }
        let events = match self.fan.read_events() {
            Ok(e) => e,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => return Ok(Vec::new()),
            Err(e) => return Err(Error::Other(format!("fanotify: read: {e}"))),
        };
        let mut held = Vec::new();
        for event in events {
            if event.fd().is_none() {
                continue;
            }
            if event.mask().contains(MaskFlags::FAN_OPEN_EXEC_PERM) {
                held.push(HeldExec { event });
            } else {
                let _ = self.answer(&event);
            }
        }
        Ok(held)
    }

    /// Lets the held `exec` go on.
    pub fn allow(&self, held: &HeldExec) -> Result<()> {
        self.answer(&held.event)
    }

    fn answer(&self, event: &FanotifyEvent) -> Result<()> {
        let Some(fd) = event.fd() else { return Ok(()) };
        self.fan
            .write_response(FanotifyResponse::new(fd, Response::FAN_ALLOW))
            .map_err(|e| Error::Other(format!("fanotify: answer: {e}")))
    }
}
