//! Borrowing one thread of the target to run a system call or a function inside it.

use crate::error::{Error, Result};
use crate::mem::Mem;
use crate::thread::{self, Stop};
use nix::libc::{self, user_regs_struct};
use std::time::{Duration, Instant};

/// One thread of the target, stopped and borrowed. Only this thread stops; every other thread
/// of the target keeps running. Dropping (or [`Hijack::release`]) restores its registers exactly
/// and resumes it where it was; a system call it was blocked in is restarted by the kernel as
/// after any ptrace-stop, so it sees no `EINTR` and no shortened sleep.
///
/// Signals that arrive while the thread is borrowed are held back and delivered on release,
/// so none is lost or handled on a borrowed context.
pub struct Hijack<'m> {
    mem: &'m Mem,
    tid: i32,
    saved: user_regs_struct,
    syscall_insn: u64,
    deferred: Vec<i32>,
    attached: bool,
}

const SIGTRAP: i32 = libc::SIGTRAP;
const SIGSEGV: i32 = libc::SIGSEGV;

impl<'m> Hijack<'m> {
    /// Stops thread `tid` of the process `mem` belongs to. `syscall_insn` is the address of a
    /// `syscall` instruction (0f 05) in an executable mapping of the target.
    pub fn attach(mem: &'m Mem, tid: i32, syscall_insn: u64) -> Result<Hijack<'m>> {
        thread::seize(tid)?;
        let mut h = Hijack { mem, tid, saved: zero_regs(), syscall_insn, deferred: Vec::new(), attached: true };
        if let Err(e) = thread::interrupt(tid) {
            let _ = thread::detach(tid, 0);
            h.attached = false;
            return Err(e);
        }
        match thread::wait(tid)? {
            Stop::Event(_) => {}
            Stop::Signal(sig) => h.deferred.push(sig),
            Stop::Gone(how, code) => {
                h.attached = false;
                return Err(gone(mem.pid(), how, code));
            }
        }
        h.saved = thread::getregs(tid)?;
        Ok(h)
    }

    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The registers of the thread as it was stopped.
    pub fn saved_regs(&self) -> &user_regs_struct {
        &self.saved
    }

    /// Runs system call `nr` with up to six arguments in the target and returns its raw result
    /// (a negative errno on failure).
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        let mut r = self.saved;
        r.rip = self.syscall_insn;
        r.rax = nr as u64;
        // orig_rax = -1: the kernel must not treat this resume as the restart of a system call
        // the thread may have been blocked in.
        r.orig_rax = u64::MAX;
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (a(0), a(1), a(2), a(3), a(4), a(5));
        thread::setregs(self.tid, r)?;
        thread::step(self.tid, 0)?;
        loop {
            match thread::wait(self.tid)? {
                Stop::Signal(SIGTRAP) => {
                    let now = thread::getregs(self.tid)?;
                    if now.rip == self.syscall_insn + 2 {
                        return Ok(now.rax as i64);
                    }
                    thread::step(self.tid, 0)?;
                }
                Stop::Signal(sig) => {
                    self.deferred.push(sig);
                    thread::step(self.tid, 0)?;
                }
                Stop::Event(_) => thread::step(self.tid, 0)?,
                Stop::Gone(how, code) => {
                    self.attached = false;
                    return Err(gone(self.mem.pid(), how, code));
                }
            }
        }
    }

    /// Calls the function at `func` with up to six integer arguments on the thread's own stack
    /// (below its red zone) and returns `rax`. The function returns to address 0, which faults
    /// without a single byte of code written into the target; the fault is caught here and never
    /// reaches the target. A call that crashes or runs longer than `timeout` is stopped, and the
    /// thread is restored when the hijack is released.
    pub fn call(&mut self, func: u64, args: &[u64], timeout: Duration, what: &str) -> Result<u64> {
        let mut r = self.saved;
        let sp = ((self.saved.rsp - 256) & !0xf) - 8;
        self.mem.write(sp, &0u64.to_le_bytes())?;
        r.rsp = sp;
        r.rip = func;
        r.rax = 0;
        r.orig_rax = u64::MAX;
        r.eflags &= !0x400; // the ABI wants the direction flag clear at a call
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        (r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9) = (a(0), a(1), a(2), a(3), a(4), a(5));
        thread::setregs(self.tid, r)?;
        thread::cont(self.tid, 0)?;
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let Some(stop) = thread::wait_timeout(self.tid, left)? else {
                thread::interrupt(self.tid)?;
                self.wait_stopped()?;
                return Err(Error::Timeout { tid: self.tid, what: what.to_string(), after: timeout });
            };
            match stop {
                Stop::Signal(sig) => {
                    let now = thread::getregs(self.tid)?;
                    if sig == SIGSEGV && now.rip == 0 {
                        return Ok(now.rax);
                    }
                    if matches!(sig, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGABRT) {
                        return Err(Error::Crashed {
                            tid: self.tid,
                            what: what.to_string(),
                            signal: thread::signal_name(sig),
                            rip: now.rip,
                        });
                    }
                    self.deferred.push(sig);
                    thread::cont(self.tid, 0)?;
                }
                Stop::Event(_) => thread::cont(self.tid, 0)?,
                Stop::Gone(how, code) => {
                    self.attached = false;
                    return Err(gone(self.mem.pid(), how, code));
                }
            }
        }
    }

    fn wait_stopped(&mut self) -> Result<()> {
        match thread::wait(self.tid)? {
            Stop::Event(_) => Ok(()),
            Stop::Signal(sig) => {
                if sig != SIGTRAP {
                    self.deferred.push(sig);
                }
                Ok(())
            }
            Stop::Gone(how, code) => {
                self.attached = false;
                Err(gone(self.mem.pid(), how, code))
            }
        }
    }

    /// Restores the thread's registers and lets it go on where it was.
    pub fn release(mut self) -> Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        thread::setregs(self.tid, self.saved)?;
        let first = self.deferred.first().copied().unwrap_or(0);
        thread::detach(self.tid, first)?;
        if self.deferred.len() > 1 {
            thread::requeue(self.mem.pid(), self.tid, &self.deferred[1..]);
        }
        Ok(())
    }
}

impl Drop for Hijack<'_> {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

pub(crate) fn gone(pid: i32, how: &str, code: i32) -> Error {
    let how =
        if how.contains("signal") { format!("{how} {}", thread::signal_name(code)) } else { format!("{how} {code}") };
    Error::Exited { pid, how }
}

pub(crate) fn zero_regs() -> user_regs_struct {
    user_regs_struct {
        r15: 0,
        r14: 0,
        r13: 0,
        r12: 0,
        rbp: 0,
        rbx: 0,
        r11: 0,
        r10: 0,
        r9: 0,
        r8: 0,
        rax: 0,
        rcx: 0,
        rdx: 0,
        rsi: 0,
        rdi: 0,
        orig_rax: 0,
        rip: 0,
        cs: 0,
        eflags: 0,
        rsp: 0,
        ss: 0,
        fs_base: 0,
        gs_base: 0,
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
    }
}
