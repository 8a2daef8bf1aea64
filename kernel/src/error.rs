use nix::errno::Errno;
use std::time::Duration;

/// What went wrong while acting on another process, naming the process or thread.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {pid} does not exist")]
    NoProcess { pid: i32 },
    #[error("not permitted to {op} process {pid} ({errno})")]
    Permission { pid: i32, op: &'static str, errno: Errno },
    #[error("{op} of thread {tid} failed: {errno}")]
    Ptrace { tid: i32, op: &'static str, errno: Errno },
    #[error("process {pid} exited while pannus was working on it ({how})")]
    Exited { pid: i32, how: String },
    /// Threads still on their way to a stop when the time allowed for it ran out, each with
    /// where it is ([`crate::thread::whereabouts`]): blocked where no stop reaches it, such as a
    /// `vfork` parent waiting for its child or an uninterruptible sleep. Every other thread was
    /// let go.
    #[error("{} of process {pid} did not stop within {after:?}", late_threads(threads))]
    NotStopped { pid: i32, threads: Vec<(i32, String)>, after: Duration },
    /// The memory below a thread's stack pointer cannot take what pannus would put there (its
    /// signal frame, or the stack of a function it calls): the writable memory ends sooner (a
    /// small coroutine or alternate signal stack near its bottom, a guard page, another mapping).
    #[error(
        "thread {tid} has {room} bytes of writable stack below its stack pointer {rsp:#x}, and {what} needs {needed}"
    )]
    NoRoom { tid: i32, rsp: u64, what: &'static str, room: u64, needed: u64 },
    #[error("{what} in thread {tid} did not finish within {after:?}")]
    Timeout { tid: i32, what: String, after: Duration },
    /// A borrowed thread that did not come back to pannus within `after` when it had to (a
    /// system call that blocks where no stop reaches it, a call that timed out and then did not
    /// stop when asked): it is left to finish `what` on its own and go home through the
    /// restorer, as if pannus had gone, and is let go once it stops.
    #[error(
        "{what} in thread {tid}: the thread did not come back within {after:?} ({whereabouts}); it finishes \
         on its own, then goes back to what it was doing"
    )]
    Abandoned { tid: i32, what: String, after: Duration, whereabouts: String },
    #[error("{what} in thread {tid} crashed with {signal} at {rip:#x}")]
    Crashed { tid: i32, what: String, signal: String, rip: u64 },
    /// A system call run inside the target (see [`crate::Hijack`]) returned an error.
    #[error("{call} inside process {pid} failed: {errno}")]
    Syscall { pid: i32, call: &'static str, errno: Errno },
    #[error("{op} of {len} bytes at {addr:#x} in process {pid} failed: {source}")]
    Mem { pid: i32, op: &'static str, addr: u64, len: usize, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn late_threads(threads: &[(i32, String)]) -> String {
    let each: Vec<String> = threads.iter().map(|(tid, whereabouts)| format!("thread {tid} ({whereabouts})")).collect();
    each.join(", ")
}

impl Error {
    pub(crate) fn ptrace(tid: i32, op: &'static str, errno: Errno) -> Error {
        match errno {
            Errno::EPERM => Error::Permission { pid: tid, op, errno },
            Errno::ESRCH => Error::NoProcess { pid: tid },
            _ => Error::Ptrace { tid, op, errno },
        }
    }
}
