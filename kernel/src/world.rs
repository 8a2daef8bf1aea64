//! Stop-the-world over every thread of a process.
//!
//! In two steps, so that the stop itself is as short as it can be: [`World::seize`] attaches to
//! every thread while the process keeps running, then [`Seized::stop_with`] interrupts them all
//! before waiting for any. Threads created in between are traced from birth (they were created
//! by a thread already seized, which follows its clones) and are stopped with the rest; a thread
//! whose creation was under way, untraced, as its creator was seized is found by listing the
//! threads once more when all are stopped.
//!
//! A thread may not reach its stop at all for a long time: a `vfork` parent waiting for its
//! child, a thread in an uninterruptible sleep (a dead NFS or FUSE mount). The stop waits for
//! every thread only so long (the `timeout` of [`Seized::stop_with`], [`STOP_TIMEOUT`] by
//! default); then it lets every stopped thread go and fails with [`Error::NotStopped`]. A
//! thread that had not stopped stays attached with the interrupt pending, since the kernel lets
//! go only of a stopped thread: it stops as soon as it can, and is let go as soon as pannus sees
//! it stopped, at the latest when this thread of pannus seizes or borrows a thread again (until
//! then the next [`World::seize`] of its process fails at once, stopping nothing), or ends.

use crate::error::{Error, Result};
use crate::sched::RealtimeGuard;
use crate::thread::{self, WorldStop};
use nix::libc::user_regs_struct;
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How long a stop waits, by default, for every thread to reach it.
pub const STOP_TIMEOUT: Duration = Duration::from_millis(100);

/// A thread interrupted by a stop of this thread of pannus that had not stopped when the stop's
/// `timeout` ran out: still attached, it stops as soon as it can.
#[derive(Debug, Clone, Copy)]
struct Late {
    pid: i32,
    tid: i32,
    timeout: Duration,
}

thread_local! {
    /// The late threads of this thread of pannus: only the thread that attached a thread may
    /// wait for it and let it go, and the kernel lets go of them all when it ends.
    static LATE: RefCell<Vec<Late>> = const { RefCell::new(Vec::new()) };
}

/// Lets go of every late thread that has stopped, or is gone, since; returns those that have not.
fn release_late() -> Vec<Late> {
    LATE.with(|late| {
        let mut late = late.borrow_mut();
        let mut born = Vec::new();
        late.retain(|l| {
            // A deadline already past: only a report already there is taken.
            match thread::wait_world(l.tid, Instant::now()) {
                Ok(None) => true,
                Ok(Some(WorldStop::Stopped(sig))) => {
                    let _ = thread::detach(l.tid, sig);
                    false
                }
                Ok(Some(WorldStop::Cloned(child))) => {
                    // The new thread is traced from its birth: it stops as it starts.
                    born.push(Late { tid: child, ..*l });
                    let _ = thread::detach(l.tid, 0);
                    false
                }
                Ok(Some(WorldStop::Gone)) | Err(_) => false,
            }
        });
        late.extend(born);
        late.clone()
    })
}

/// Keeps thread `tid` of `pid`, attached and interrupted by this thread of pannus but not
/// stopped within `timeout`, among the late threads: it is let go once it stops.
pub(crate) fn keep_late(pid: i32, tid: i32, timeout: Duration) {
    LATE.with(|late| late.borrow_mut().push(Late { pid, tid, timeout }));
}

/// Lets go of the late threads that have stopped since ([`release_late`]); fails with
/// [`Error::NotStopped`] when any of those that have not is of process `pid` (and is thread
/// `tid`, if given).
pub(crate) fn still_late(pid: i32, tid: Option<i32>) -> Result<()> {
    let late: Vec<Late> =
        release_late().into_iter().filter(|l| l.pid == pid && tid.is_none_or(|t| t == l.tid)).collect();
    match late.first() {
        Some(first) => Err(not_stopped(pid, late.iter().map(|l| l.tid), first.timeout)),
        None => Ok(()),
    }
}

/// The error naming the late threads `tids` of `pid`, each with where it is.
fn not_stopped(pid: i32, tids: impl Iterator<Item = i32>, after: Duration) -> Error {
    Error::NotStopped { pid, threads: tids.map(|tid| (tid, thread::whereabouts(pid, tid))).collect(), after }
}

/// A thread held by [`World`], with its registers as it was stopped.
#[derive(Debug, Clone)]
pub struct StoppedThread {
    pub tid: i32,
    pub regs: user_regs_struct,
    /// A signal that was about to be delivered when the thread stopped; delivered on resume.
    pending: i32,
}

/// Every thread of a process stopped. The patcher runs at real-time priority from the seize to
/// the resume. Dropping resumes every thread.
pub struct World {
    pid: i32,
    threads: Vec<StoppedThread>,
    resumed: bool,
    _rt: Option<RealtimeGuard>,
}

/// Every thread of a process attached (seized) and still running: the step before [`World`].
/// Dropping it without stopping stops and resumes every thread, which detaches them.
pub struct Seized {
    pid: i32,
    tids: Vec<i32>,
    rt: Option<RealtimeGuard>,
    done: bool,
}

impl World {
    /// Attaches to every thread of `pid` without stopping any: `/proc/PID/task` is read again
    /// until it lists no thread not yet attached. From then on every thread the process creates
    /// is traced from its birth.
    ///
    /// Fails at once with [`Error::NotStopped`], attaching nothing, while a thread of `pid` that
    /// an earlier stop of this thread of pannus gave up waiting for has still not stopped:
    /// stopping the others again would hold them for nothing.
    pub fn seize(pid: i32) -> Result<Seized> {
        still_late(pid, None)?;
        let mut seized = Seized { pid, tids: Vec::new(), rt: Some(RealtimeGuard::raise()), done: false };
        let mut seen: HashSet<i32> = HashSet::new();
        loop {
            let fresh: Vec<i32> = thread::list_threads(pid)?.into_iter().filter(|t| seen.insert(*t)).collect();
            if fresh.is_empty() {
                break;
            }
            for tid in fresh {
                if attach(pid, tid)? {
                    seized.tids.push(tid);
                }
            }
        }
        if seized.tids.is_empty() {
            seized.done = true;
            return Err(Error::NoProcess { pid });
        }
        crate::fault::point("every thread seized");
        Ok(seized)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn threads(&self) -> &[StoppedThread] {
        &self.threads
    }

    /// Resumes every thread where it was; returns when the last one was let go. The patcher's
    /// priority drops back after that, which on a busy machine can keep the caller off the CPU
    /// for a while: the target runs meanwhile, so that wait is not part of the stop.
    pub fn resume(mut self) -> Result<Instant> {
        self.resume_all()?;
        Ok(Instant::now())
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

impl Seized {
    /// How many threads are attached.
    pub fn len(&self) -> usize {
        self.tids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tids.is_empty()
    }

    /// Stops every attached thread, and every thread they created since they were attached:
    /// all are interrupted before any is waited for; then `/proc/PID/task` is read again, and
    /// any thread not seen yet stopped too, until it lists none. `each` is called with every
    /// thread as soon as it is stopped (in the order of [`World::threads`]), while the others
    /// are still on their way to their stop: work done there (reading the thread's stack)
    /// overlaps with the stop instead of adding to it.
    ///
    /// When a thread has not stopped `timeout` after the first interrupt, every thread stopped
    /// is let go and this fails with [`Error::NotStopped`] (see the module's comment).
    pub fn stop_with(mut self, timeout: Duration, mut each: impl FnMut(&StoppedThread)) -> Result<World> {
        self.stop_all(timeout, &mut each)
    }

    fn stop_all(&mut self, timeout: Duration, each: &mut dyn FnMut(&StoppedThread)) -> Result<World> {
        self.done = true;
        let pid = self.pid;
        let deadline = Instant::now() + timeout;
        let alarm = thread::Alarm::after(timeout);
        let mut late = Vec::new();
        let mut world =
            World { pid, threads: Vec::with_capacity(self.tids.len()), resumed: false, _rt: self.rt.take() };
        let mut first_err = None;
        let mut queue: VecDeque<i32> = VecDeque::with_capacity(self.tids.len());
        interrupt_all(&self.tids, &mut queue, &mut first_err);
        let mut known: HashSet<i32> = self.tids.iter().copied().collect();
        loop {
            while let Some(tid) = queue.pop_front() {
                let pending = match thread::wait_world(tid, deadline) {
                    Ok(Some(WorldStop::Stopped(sig))) => sig,
                    Ok(Some(WorldStop::Cloned(child))) => {
                        // The child stops on its own as it starts; the parent stays at this stop.
                        if known.insert(child) {
                            queue.push_back(child);
                        }
                        0
                    }
                    Ok(Some(WorldStop::Gone)) => continue,
                    Ok(None) => {
                        late.push(tid);
                        continue;
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                        continue;
                    }
                };
                // Registered before reading registers so that it is resumed on any error.
                world.threads.push(StoppedThread { tid, regs: crate::hijack::zero_regs(), pending });
                let regs = thread::getregs(tid).and_then(|mut regs| {
                    if crate::frame::hide_stop_eintr(&mut regs, || pending != 0 || thread::signal_waiting(pid, tid)) {
                        thread::setregs(tid, regs)?;
                    }
                    Ok(regs)
                });
                match regs {
                    Ok(regs) => {
                        if let Some(t) = world.threads.last_mut() {
                            t.regs = regs;
                            each(t);
                        }
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if first_err.is_some() || !late.is_empty() {
                break;
            }
            // Every thread known is stopped. A thread created by one that was seized after the
            // kernel had decided not to trace the new thread, and listed only after the seize's
            // last look, runs untraced: look again, and stop every thread not seen yet, until
            // none appears. Once every thread listed is stopped, none is left to create one.
            let fresh = match thread::list_threads(pid) {
                Ok(tids) => tids.into_iter().filter(|t| known.insert(*t)).collect::<Vec<i32>>(),
                Err(e) => {
                    first_err.get_or_insert(e);
                    break;
                }
            };
            if fresh.is_empty() {
                break;
            }
            let mut attached = Vec::with_capacity(fresh.len());
            for tid in fresh {
                match attach(pid, tid) {
                    Ok(true) => attached.push(tid),
                    Ok(false) => {}
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            interrupt_all(&attached, &mut queue, &mut first_err);
        }
        drop(alarm);
        LATE.with(|l| l.borrow_mut().extend(late.iter().map(|&tid| Late { pid, tid, timeout })));
        // `world` resumes what it holds as it drops.
        if let Some(e) = first_err {
            return Err(e);
        }
        if !late.is_empty() {
            return Err(not_stopped(pid, late.into_iter(), timeout));
        }
        if world.threads.is_empty() {
            return Err(Error::NoProcess { pid });
        }
        crate::fault::point("every thread stopped");
        Ok(world)
    }
}

/// Attaches to thread `tid` of `pid`, following its clones, without stopping it; `Ok(false)`
/// when there is no thread to attach to.
fn attach(pid: i32, tid: i32) -> Result<bool> {
    match thread::seize_following_clones(tid) {
        Ok(()) => Ok(true),
        Err(Error::NoProcess { .. }) => Ok(false), // exited meanwhile
        // Created by a thread already seized: traced since its birth.
        Err(_) if thread::tracer_of(tid) == Some(std::process::id() as i32) => Ok(true),
        // Exiting: the kernel refuses to attach (EPERM) to a thread on its way out.
        Err(_) if thread::thread_state(pid, tid).is_none_or(|s| s == 'Z' || s == 'X') => Ok(false),
        Err(e) => Err(e),
    }
}

/// Interrupts each of `tids` and queues it to be waited for; a thread that exited meanwhile is
/// left out.
fn interrupt_all(tids: &[i32], queue: &mut VecDeque<i32>, first_err: &mut Option<Error>) {
    for &tid in tids {
        match thread::interrupt(tid) {
            Ok(()) => queue.push_back(tid),
            Err(Error::NoProcess { .. }) => {} // exited since it was attached
            // Not waited for (it may never stop); it is detached when pannus exits.
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if !self.done {
            // A running thread cannot be detached: stop it first (the world resumes as it drops).
            let _ = self.stop_all(STOP_TIMEOUT, &mut |_| {});
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.resume_all();
    }
}
