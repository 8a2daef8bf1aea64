//! One pannus at a time per process. The lock is an `flock` on a file named after the process
//! (pid and start time, so a reused pid is another lock); the kernel drops it when its holder
//! dies, so a lock left by a killed pannus is never stale.

use crate::error::{Error, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct ProcessLock {
    _lock: Flock<File>,
}

fn start_time(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok()))
        .unwrap_or(0)
}

impl ProcessLock {
    /// Takes the lock for `pid`, waiting up to `wait` for another pannus to finish.
    pub fn acquire(state_dir: &Path, pid: i32, wait: Duration) -> Result<ProcessLock> {
        let dir = state_dir.join("locks");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::other(format!("cannot create the lock folder {}: {e}", dir.display())))?;
        let path = dir.join(format!("{pid}-{}.lock", start_time(pid)));
        let start = Instant::now();
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::other(format!("lock {}: {e}", path.display())))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    let _ = std::fs::write(&path, format!("{}\n", std::process::id()));
                    return Ok(ProcessLock { _lock: lock });
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if start.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    return Err(Error::busy(format!(
                        "another pannus (pid {}) is working on process {pid}",
                        holder.trim()
                    ))
                    .hint("wait for it to finish, then try again"));
                }
                Err((_, e)) => return Err(Error::other(format!("lock {}: {e}", path.display()))),
            }
        }
    }
}
