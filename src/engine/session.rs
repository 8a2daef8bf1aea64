//! A process opened for one command, under its lock: what every operation shares (the
//! borrowed-thread helper, registry reads and writes, the journal), and commit.

use super::{now_secs, outcome_of, Engine};
use crate::error::{Error, Result};
use crate::lock::ProcessLock;
use crate::registry::{self, PatchRecord, Registry, State};
use crate::target::Target;
use pannus_kernel::{maps, Hijack};
use serde::Serialize;
use std::time::Instant;

/// A process opened for one command, under its lock.
pub struct Session<'e> {
    pub engine: &'e Engine,
    pub target: Target,
    _lock: ProcessLock,
    gadgets: Option<pannus_kernel::Gadgets>,
    /// The unwinder that tells a safe point for code pannus runs in the target (built once).
    pub(super) unwinder: Option<crate::unwind::Unwinder>,
}

/// One stop of every thread of the target, from the first interrupt to the last thread let go,
/// on the system's `CLOCK_MONOTONIC` (the clock services time their own latency with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StopWindow {
    pub start_monotonic_ns: u64,
    pub end_monotonic_ns: u64,
}

/// When a stop began, on `CLOCK_MONOTONIC` and as an `Instant`.
#[derive(Debug, Clone, Copy)]
pub struct StopStart {
    ns: u64,
    pub at: Instant,
}

impl StopStart {
    pub fn now() -> StopStart {
        let at = Instant::now();
        // Read through the vDSO: no system call.
        let ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        StopStart { ns, at }
    }

    /// The stop from here to `resumed` (when the last thread was let go, as the world's
    /// `resume` returns it): measured on one clock while pannus still ran at real-time
    /// priority, so that a pannus preempted after the stop does not lengthen it.
    pub fn until(self, resumed: Instant) -> StopWindow {
        let len = resumed.saturating_duration_since(self.at).as_nanos() as u64;
        StopWindow { start_monotonic_ns: self.ns, end_monotonic_ns: self.ns + len }
    }
}

impl<'e> Session<'e> {
    pub fn open(engine: &'e Engine, pid: i32) -> Result<Session<'e>> {
        let mut target = Target::open(pid)?;
        engine.journal().check()?;
        let lock = ProcessLock::acquire(&engine.state_dir, pid, engine.lock_wait)?;
        // Another pannus may have changed the process while this one waited for the lock:
        // everything planned from here on (holes, registry, entries) reads it as it is now.
        target.refresh_maps()?;
        target.share(engine.shared.clone());
        Ok(Session { engine, target, _lock: lock, gadgets: None, unwinder: None })
    }

    pub fn registry(&self) -> Result<Registry> {
        registry::read_from(&self.target.mem, &self.target.maps)
    }

    pub(super) fn journal(&self, action: &str, patch: Option<&str>, outcome: &str, detail: &str) {
        let _ = self.engine.journal().record(action, self.target.pid, &self.target.name, patch, outcome, detail);
    }

    /// Borrows one thread of the target for system calls: the main thread (most often idle in
    /// an event loop), else the first live thread that can be borrowed (the main thread may
    /// have exited, be where no stop reaches it, or have no room for a signal frame below its
    /// stack pointer). When none can, the main thread's reason is the error.
    pub(super) fn hijack(&mut self) -> Result<Hijack<'_>> {
        let gadgets = self.gadgets()?;
        let pid = self.target.pid;
        let mut tids: Vec<i32> =
            pannus_kernel::list_threads(pid)?.into_iter().filter(|&t| thread_alive(pid, t)).collect();
        tids.sort_by_key(|&t| (t != pid, t));
        let mut first = None;
        for tid in tids {
            match Hijack::attach(&self.target.mem, tid, gadgets) {
                Ok(h) => return Ok(h),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.map(Error::from).unwrap_or_else(|| Error::precondition(format!("process {pid} has no live thread"))))
    }

    /// The code a borrowed thread is pointed at: found once per session (or read back, checked,
    /// from the registry).
    pub(super) fn gadgets(&mut self) -> Result<pannus_kernel::Gadgets> {
        // Every thread pannus borrows is pointed at these: none is borrowed in a process whose
        // code they would not be.
        self.target.require_patchable("borrowing one of its threads")?;
        Ok(match self.gadgets {
            Some(g) => g,
            None => {
                let shared = self.engine.shared.as_deref();
                // Where another process of the run had them, in the same files.
                let elsewhere = shared.and_then(|s| s.gadgets(&self.target.maps));
                let mem = &self.target.mem;
                let compat = self.target.arch == Some(pannus_kernel::Arch::I386);
                let recorded = self.registry().ok().and_then(|r| r.gadgets).and_then(|[syscall_ret, ret, restorer]| {
                    let with = |store| pannus_kernel::Gadgets { syscall_ret, ret, restorer, store, compat };
                    // The registry keeps the three above; a store of `%rax` is found anew (first
                    // where another process of the run had it).
                    let valid = |g: &pannus_kernel::Gadgets| maps::verify_gadgets(mem, g);
                    elsewhere
                        .and_then(|g| g.store)
                        .map(|s| with(Some(s)))
                        .filter(valid)
                        .or_else(|| Some(with(maps::find_store(mem, &self.target.maps))).filter(valid))
                });
                let cached = recorded.or_else(|| elsewhere.filter(|g| maps::verify_gadgets(mem, g)));
                let g = cached.map(Ok).unwrap_or_else(|| {
                    let found = if compat {
                        maps::find_gadgets_i386(&self.target.mem, &self.target.maps)
                    } else {
                        maps::find_gadgets(&self.target.mem, &self.target.maps)
                    };
                    found.ok_or_else(|| {
                        Error::precondition(format!(
                            "process {}: no rt_sigreturn restorer and `syscall; ret` found in its C library",
                            self.target.pid
                        ))
                        .hint("pannus patches dynamically linked glibc or musl programs")
                    })
                })?;
                if let Some(shared) = shared {
                    shared.remember_gadgets(&self.target.maps, &g);
                }
                self.gadgets = Some(g);
                g
            }
        })
    }

    pub(super) fn write_registry(&mut self, reg: &Registry) -> Result<()> {
        let loc = registry::locate(&self.target.maps)
            .ok_or_else(|| Error::other(format!("process {}: registry mapping missing", self.target.pid)))?;
        match self.gadgets {
            Some(g) if reg.gadgets.is_none() => {
                let mut with = reg.clone();
                with.gadgets = Some([g.syscall_ret, g.ret, g.restorer]);
                registry::write(&self.target.mem, loc, &with)?;
            }
            _ => registry::write(&self.target.mem, loc, reg)?,
        }
        pannus_kernel::fault::point("registry written");
        Ok(())
    }

    /// Records a health-check result of `patch` in the process's registry.
    pub fn record_health(&mut self, patch: &str, health: &crate::registry::Health) -> Result<()> {
        let mut reg = self.registry()?;
        if let Some(r) = reg.get_mut(patch) {
            r.health = Some(health.clone());
            self.write_registry(&reg)?;
        }
        Ok(())
    }

    /// Ends the trial of `patch`: trial → committed.
    pub fn commit(&mut self, patch: &str, note: &str) -> Result<PatchRecord> {
        let pid = self.target.pid;
        let result = (|| {
            let mut reg = self.registry()?;
            let rec = reg
                .get_mut(patch)
                .ok_or_else(|| Error::precondition(format!("patch `{patch}` is not applied in process {pid}")))?;
            match rec.state {
                State::Trial => {}
                State::Committed => return Ok(rec.clone()),
                s => {
                    return Err(Error::precondition(format!(
                        "patch `{patch}` is {s} in process {pid}; only a patch on trial can be committed"
                    )))
                }
            }
            rec.state = State::Committed;
            rec.trial_deadline = None;
            rec.ended_at = Some(now_secs());
            rec.note = Some(note.to_string());
            let out = rec.clone();
            self.write_registry(&reg)?;
            Ok(out)
        })();
        match &result {
            Ok(_) => self.journal("commit", Some(patch), "ok", note),
            Err(e) => self.journal("commit", Some(patch), outcome_of(e), &e.message),
        }
        result
    }
}

pub(super) fn thread_alive(pid: i32, tid: i32) -> bool {
    pannus_kernel::thread_state(pid, tid).is_some_and(|s| s != 'Z')
}
