//! One pannus at a time per process. The lock is an `flock` on a file named after the process
//! (pid and start time, so a reused pid is another lock); the kernel drops it when its holder
//! dies, so a lock left by a killed pannus is never stale.

use crate::error::{Error, Result};
use crate::state_dir::StateDir;
use nix::fcntl::{Flock, FlockArg, OFlag};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct ProcessLock {
    _lock: Flock<File>,
}

impl ProcessLock {
    /// Takes the lock for `pid` (`STATE_DIR/locks/PID-STARTTIME.lock`), waiting up to `wait`
    /// for another pannus to finish. The file is opened once, without following a link, and
    /// the holder's pid is written through the locked descriptor.
    pub fn acquire(state_dir: &Path, pid: i32, wait: Duration) -> Result<ProcessLock> {
        let name = format!("{pid}-{}.lock", crate::processes::start_time(pid).unwrap_or(0));
        match take(state_dir, &name, wait)? {
            Ok(lock) => Ok(ProcessLock { _lock: lock }),
            Err(holder) => Err(Error::busy(format!("another pannus (pid {holder}) is working on process {pid}"))
                .hint("wait for it to finish, then try again")),
        }
    }
}

/// A lock on an installed patch (`STATE_DIR/locks/installed-ID.lock`): one `install` or
/// `uninstall` of it at a time, and (a separate lock, taken for a moment) one change of its
/// record at a time.
pub struct InstalledLock {
    _lock: Flock<File>,
}

impl InstalledLock {
    /// The lock held while installing, rolling out or uninstalling installed patch `id`;
    /// refused (busy, naming the holder) when another pannus holds it.
    pub fn rollout(state_dir: &Path, id: &str) -> Result<InstalledLock> {
        match take(state_dir, &format!("installed-{id}.lock"), Duration::ZERO)? {
            Ok(lock) => Ok(InstalledLock { _lock: lock }),
            Err(holder) => Err(Error::busy(format!(
                "another pannus (pid {holder}) is installing or uninstalling `{id}`, or rolling it out"
            ))
            .hint("wait for it to finish (pannus installed shows a canary rollout under way)")),
        }
    }

    /// The lock held while changing installed patch `id`'s record (a read, then a write),
    /// waiting up to 10 s for another change to finish.
    pub fn record(state_dir: &Path, id: &str) -> Result<InstalledLock> {
        match take(state_dir, &format!("installed-{id}.record.lock"), Duration::from_secs(10))? {
            Ok(lock) => Ok(InstalledLock { _lock: lock }),
            Err(holder) => Err(Error::busy(format!("another pannus (pid {holder}) keeps the record of `{id}` locked"))),
        }
    }
}

/// Takes the lock file `name` of `STATE_DIR/locks`, waiting up to `wait`; `Ok(Err(holder))`
/// when another pannus (its pid as it wrote it) still holds it then. The file is opened once,
/// without following a link, and the holder's pid is written through the locked descriptor.
fn take(state_dir: &Path, name: &str, wait: Duration) -> Result<std::result::Result<Flock<File>, String>> {
    let dir = StateDir::open(state_dir)?.subdir("locks")?;
    let path = dir.path().join(name);
    let mut file = dir.file(name, OFlag::O_RDWR | OFlag::O_CREAT)?;
    let start = Instant::now();
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // Written over the old holder's pid, then cut to length: never empty.
                let me = format!("{}\n", std::process::id());
                let _ = lock.write_all_at(me.as_bytes(), 0).and_then(|()| lock.set_len(me.len() as u64));
                return Ok(Ok(lock));
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if start.elapsed() < wait => {
                file = f;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                return Ok(Err(holder.trim().to_string()));
            }
            Err((_, e)) => return Err(Error::other(format!("lock {}: {e}", path.display()))),
        }
    }
}

/// The pid of the pannus holding the lock for process `pid` at this moment, when another one
/// holds it (to say whom a wait is for; it may let go at any time).
pub fn holder(state_dir: &Path, pid: i32) -> Option<i32> {
    let dir = StateDir::open(state_dir).ok()?.subdir("locks").ok()?;
    let name = format!("{pid}-{}.lock", crate::processes::start_time(pid).unwrap_or(0));
    let file = dir.file(&name, OFlag::O_RDONLY).ok()?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_free) => None,
        Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            f.read_to_string(&mut holder).ok()?;
            holder.trim().parse().ok()
        }
        Err(_) => None,
    }
}
