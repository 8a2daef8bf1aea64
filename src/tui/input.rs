//! The terminal's input, read on a thread of its own, and whether the terminal is still there.
//!
//! crossterm's reader never returns once the terminal has hung up (a dropped SSH session, a
//! killed tmux server): it reads end-of-file again and again, holding a CPU. So it reads on this
//! thread, and the UI thread never waits on it but for a moment; the UI thread asks the terminal
//! itself whether it hung up ([`Tty::hung_up`]), and once it has, [`Tty::silence`] gives the
//! reader an empty standard input, which stops its spinning.

use crossterm::event::{self, Event};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc::{channel, Receiver};

/// What the input thread reports.
#[derive(Debug)]
pub enum Input {
    Event(Event),
    /// The terminal could not be read: nothing more will come.
    Gone(String),
}

/// Starts the input thread.
pub fn spawn() -> std::io::Result<Receiver<Input>> {
    let (tx, rx) = channel();
    std::thread::Builder::new().name("pannus-input".into()).spawn(move || loop {
        match event::read() {
            Ok(ev) => {
                if tx.send(Input::Event(ev)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Input::Gone(format!("the terminal cannot be read: {e}")));
                return;
            }
        }
    })?;
    Ok(rx)
}

/// The terminal crossterm reads: standard input when it is one, else `/dev/tty`.
pub enum Tty {
    Stdin(std::io::Stdin),
    Device(std::fs::File),
    /// Neither could be opened: only a failed draw says the terminal is gone.
    Unknown,
}

impl Tty {
    pub fn open() -> Tty {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            Tty::Stdin(stdin)
        } else {
            std::fs::File::open("/dev/tty").map(Tty::Device).unwrap_or(Tty::Unknown)
        }
    }

    /// Whether the terminal hung up or failed, without waiting.
    pub fn hung_up(&self) -> bool {
        let fd = match self {
            Tty::Stdin(s) => s.as_fd(),
            Tty::Device(f) => f.as_fd(),
            Tty::Unknown => return false,
        };
        let mut fds = [PollFd::new(fd, PollFlags::empty())];
        poll(&mut fds, PollTimeout::ZERO).is_ok()
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL))
    }

    /// Once the terminal is gone: standard input becomes an empty pipe, so that the reader,
    /// where it reads standard input, finds nothing to read instead of end-of-file, and waits.
    /// The pipe's other end is returned, to keep while the console runs (without it, the pipe
    /// would read as end-of-file too).
    pub fn silence(&self) -> Option<OwnedFd> {
        if !matches!(self, Tty::Stdin(_)) {
            return None;
        }
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        nix::unistd::dup2(read.as_raw_fd(), std::io::stdin().as_raw_fd()).ok()?;
        Some(write)
    }
}
