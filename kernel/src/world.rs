//! Stop-the-world over every thread of a process.

use crate::error::Result;
use crate::sched::RealtimeGuard;
use crate::thread::{self, Stop};
use nix::libc::user_regs_struct;
use std::collections::HashSet;

/// A thread held by [`World`], with its registers as it was stopped.
#[derive(Debug, Clone)]
pub struct StoppedThread {
    pub tid: i32,
    pub regs: user_regs_struct,
    /// A signal that was about to be delivered when the thread stopped; delivered on resume.
    pending: i32,
}

/// Every thread of a process stopped. Threads are all interrupted before any is waited for, and
/// `/proc/PID/task` is read again until no new thread appears, so threads created while attaching
/// are caught. The patcher runs at real-time priority while the world is stopped. Dropping
/// resumes every thread.
pub struct World {
    pid: i32,
    threads: Vec<StoppedThread>,
    resumed: bool,
    _rt: RealtimeGuard,
}

impl World {
    pub fn stop(pid: i32) -> Result<World> {
        let mut world = World { pid, threads: Vec::new(), resumed: false, _rt: RealtimeGuard::raise() };
        let mut seen: HashSet<i32> = HashSet::new();
        loop {
            let tids = thread::list_threads(pid)?;
            let fresh: Vec<i32> = tids.into_iter().filter(|t| seen.insert(*t)).collect();
            if fresh.is_empty() {
                break;
            }
            let mut attached = Vec::with_capacity(fresh.len());
            for tid in fresh {
                match thread::seize(tid) {
                    Ok(()) => {}
                    Err(crate::Error::NoProcess { .. }) => continue, // exited meanwhile
                    Err(e) => return Err(e),
                }
                match thread::interrupt(tid) {
                    Ok(()) => attached.push(tid),
                    Err(crate::Error::NoProcess { .. }) => {}
                    Err(e) => {
                        let _ = thread::detach(tid, 0);
                        return Err(e);
                    }
                }
            }
            for tid in attached {
                let pending = match thread::wait(tid)? {
                    Stop::Event(_) | Stop::Syscall => 0,
                    Stop::Signal(sig) => sig,
                    Stop::Gone(..) => continue,
                };
                // Registered before reading registers so that it is resumed on any error.
                world.threads.push(StoppedThread { tid, regs: crate::hijack::zero_regs(), pending });
                let mut regs = thread::getregs(tid)?;
                if crate::frame::hide_stop_eintr(&mut regs, || pending != 0 || thread::signal_waiting(pid, tid)) {
                    thread::setregs(tid, regs)?;
                }
                if let Some(t) = world.threads.last_mut() {
                    t.regs = regs;
                }
            }
        }
        if world.threads.is_empty() {
            return Err(crate::Error::NoProcess { pid });
        }
        crate::fault::point("every thread stopped");
        Ok(world)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn threads(&self) -> &[StoppedThread] {
        &self.threads
    }

    /// Resumes every thread where it was.
    pub fn resume(mut self) -> Result<()> {
        self.resume_all()
    }

    fn resume_all(&mut self) -> Result<()> {
        if self.resumed {
            return Ok(());
        }
        self.resumed = true;
        crate::fault::point("about to resume every thread");
        let mut first_err = None;
        for t in &self.threads {
            if let Err(e) = thread::detach(t.tid, t.pending) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.resume_all();
    }
}
