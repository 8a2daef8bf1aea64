//! Borrowing one thread of the target to run a system call or a function inside it,
//! signal-handler style.

use crate::error::{Error, Result};
use crate::fault;
use crate::frame::{self, Frame};
use crate::i386;
use crate::maps::{Base, Gadgets};
use crate::mem::Mem;
use crate::sched::Hastened;
use crate::thread::{self, Stop};
use nix::libc::{self, user_regs_struct};
use std::time::{Duration, Instant};

/// One thread of the target, stopped and borrowed. Only this thread stops; every other thread
/// of the target keeps running.
///
/// On attach, a signal frame holding the thread's whole state (registers, FPU/SSE/AVX state,
/// signal mask) is written below its stack's red zone, and every piece of work is arranged to
/// end in the C library's `rt_sigreturn` restorer: a system call runs on a `syscall; ret` found
/// in the target, returning into the restorer; a function call returns into it. Release sends
/// the thread through the restorer too. So the thread always comes back exactly where it was —
/// a system call it was blocked in restarted, as after a `SA_RESTART` handler, so no `EINTR` and
/// no shortened sleep — and it does so even if pannus is killed at any instant: the kernel then
/// detaches it, it finishes the work on its own and returns through the restorer. Stops are
/// syscall-stops marked with `PTRACE_O_TRACESYSGOOD`, never signal-delivery-stops of pannus's
/// making, so a dying pannus leaves no stray signal behind. No byte of code is written.
///
/// A signal that arrives for the thread while it is borrowed is taken on its own context, in
/// order and with its siginfo: between two system calls the thread is given back its own state
/// to take it (handler, default action, restart rules, all as without pannus), then borrowed
/// afresh; during a function call it interrupts the function like any signal interrupts code.
/// A fault signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, ...) raised by pannus's work fails that work
/// ([`Error::Crashed`]) and the thread is restored; one sent by another process is no crash and
/// is the program's to take, like any other signal.
pub struct Hijack<'m> {
    mem: &'m Mem,
    tid: i32,
    saved: user_regs_struct,
    gadgets: Gadgets,
    frame: Frame,
    xstate: Vec<u8>,
    /// The kind of stop the thread sits in now.
    at: At,
    /// A signal the thread stopped to take while pannus was letting it go; delivered on release.
    pending: i32,
    /// The thread's own blocked-signal mask, which its signal frame restores.
    blocked: u64,
    /// Whether the thread runs pannus's work with asynchronous signals held (see [`Hijack::run`]).
    holding: bool,
    /// Writable bytes below the thread's stack pointer, as its mappings were at capture (up to
    /// [`CALL_ROOM`] past the frame): what the frame and a function call may use.
    room: u64,
    attached: bool,
    /// The thread's own nice value while it runs pannus's work at nice -20.
    hastened: Option<Hastened>,
    /// The thread runs 32-bit code (i386, see `i386.rs`): its system calls, calls and frame are
    /// the 32-bit ones.
    compat: bool,
}

/// The stack a function pannus calls in the target may use below its signal frame: `dlopen` and
/// init functions run there. A thread with less room (a small coroutine or alternate signal
/// stack near its bottom) is not asked to call anything.
pub const CALL_ROOM: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// A ptrace event-stop or signal-delivery-stop, inside the kernel's signal handling: a
    /// detach from here applies the kernel's own system call restart rule.
    SignalPath,
    /// A syscall-exit stop.
    SyscallExit,
}

/// How long [`Hijack::attach`] waits for the thread to stop: a thread that does not is where no
/// stop reaches it (a `vfork` parent waiting for its child, an uninterruptible sleep), and is
/// left alone (see `world.rs` on late threads) rather than waited for without end.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a system call run in the target may take, and how long the thread may take to reach
/// a stop pannus waits for (the restorer's, a system call's): a liveness bound, far above what
/// any takes on a saturated machine. A thread that misses it is where no stop reaches it (a
/// system call blocked on a lock held by a thread in an uninterruptible sleep) and is left to
/// come home on its own ([`Error::Abandoned`]).
pub const SYSCALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A stack pointer below this is no stack (the lowest address a process may map is 64 KiB at
/// most, `vm.mmap_min_addr`): the frame, laid out below it, would wrap around.
const LOWEST_STACK: u64 = 64 << 10;

/// rt_sigreturn.
const NR_RT_SIGRETURN: u64 = 15;
/// Length of the restorer (`mov $15, %rax; syscall`).
const RESTORER_LEN: u64 = 9;

impl<'m> Hijack<'m> {
    /// Stops thread `tid` of the process `mem` belongs to and writes its signal frame.
    pub fn attach(mem: &'m Mem, tid: i32, gadgets: Gadgets) -> Result<Hijack<'m>> {
        // A thread an earlier stop gave up waiting for goes on now if it has stopped since; if
        // it is this one and has not, it is still where no stop reaches it.
        crate::world::still_late(mem.pid(), Some(tid))?;
        thread::seize_for_syscalls(tid)?;
        let hastened = Hastened::thread(tid);
        let mut h = Hijack {
            mem,
            tid,
            saved: zero_regs(),
            gadgets,
            frame: Frame { uc: 0, bottom: 0, scratch: 0 },
            xstate: Vec::new(),
            at: At::SignalPath,
            pending: 0,
            blocked: 0,
            holding: false,
            room: 0,
            attached: false,
            hastened,
            compat: false,
        };
        let prepared = (|| -> Result<bool> {
            thread::interrupt(tid)?;
            if !h.wait_event(Some(Instant::now() + ATTACH_TIMEOUT))? {
                return Ok(false);
            }
            h.capture().map(|()| true)
        })();
        match prepared {
            Ok(true) => {}
            Ok(false) => {
                // Where no stop reaches it (a vfork parent, an uninterruptible sleep): the
                // kernel lets go only of a stopped thread, so it stays attached until it stops.
                if let Some(h) = h.hastened.take() {
                    h.restore();
                }
                crate::world::keep_late(mem.pid(), tid, ATTACH_TIMEOUT);
                let whereabouts = thread::whereabouts(mem.pid(), tid);
                return Err(Error::NotStopped {
                    pid: mem.pid(),
                    threads: vec![(tid, whereabouts)],
                    after: ATTACH_TIMEOUT,
                });
            }
            Err(e) => {
                // Nothing was changed in the thread: let it go as it was.
                if let Some(h) = h.hastened.take() {
                    h.restore();
                }
                let _ = thread::detach(tid, 0);
                return Err(e);
            }
        }
        h.attached = true;
        fault::point("thread borrowed, signal frame written");
        Ok(h)
    }

    /// Waits for the event-stop of a PTRACE_INTERRUPT; a real signal met on the way is delivered
    /// on the thread's own context first. False when `deadline` passed first (the thread still
    /// runs, the interrupt pending).
    fn wait_event(&mut self, deadline: Option<Instant>) -> Result<bool> {
        loop {
            let stop = match deadline {
                None => thread::wait(self.tid)?,
                Some(d) => match thread::wait_timeout(self.tid, d.saturating_duration_since(Instant::now()))? {
                    Some(stop) => stop,
                    None => return Ok(false),
                },
            };
            match stop {
                Stop::Event(_) => return Ok(true),
                Stop::Signal(sig) => {
                    thread::cont(self.tid, sig)?;
                    thread::interrupt(self.tid)?;
                }
                Stop::Syscall => thread::cont(self.tid, 0)?,
                Stop::Gone(how, code) => return Err(gone(self.mem.pid(), how, code)),
            }
        }
    }

    /// Saves the stopped thread's state and writes the signal frame below its stack.
    fn capture(&mut self) -> Result<()> {
        let pid = self.mem.pid();
        self.saved = thread::getregs(self.tid)?;
        self.compat = i386::is_compat(&self.saved);
        if self.compat != self.gadgets.compat {
            let what = if self.compat { "32-bit" } else { "64-bit" };
            return Err(Error::Other(format!(
                "thread {} runs {what} code, and the code found to point it at is not {what}",
                self.tid
            )));
        }
        frame::hide_stop_eintr(&mut self.saved, || thread::signal_waiting(pid, self.tid));
        self.xstate = thread::xstate(self.tid)?;
        self.blocked = thread::sigmask(self.tid)?;
        let rsp = self.saved.rsp;
        if rsp < LOWEST_STACK {
            // No stack at all (the program's own code set this): nothing is written below it.
            let (tid, needed) = (self.tid, LOWEST_STACK);
            return Err(Error::NoRoom { tid, rsp, what: "pannus's signal frame", room: rsp, needed });
        }
        let (f, image) = frame::build(&self.saved, &self.xstate, self.blocked, self.gadgets.restorer)?;
        // The frame goes only where the thread itself could write: /proc/PID/mem would write
        // through a read-only page or a guard page just as well, into the program's data.
        let needed = rsp - f.bottom;
        self.room = crate::maps::writable_below(&crate::maps::read(pid)?, rsp, needed + CALL_ROOM);
        if self.room < needed {
            return Err(Error::NoRoom { tid: self.tid, rsp, what: "pannus's signal frame", room: self.room, needed });
        }
        self.mem.write(f.bottom, &image)?;
        self.frame = f;
        self.at = At::SignalPath;
        Ok(())
    }

    /// The thread stopped to take real signal `sig` between two pieces of work: it is given back
    /// its own state and takes the signal there, then it is stopped and borrowed afresh.
    fn step_aside(&mut self, sig: i32) -> Result<()> {
        self.unhold()?;
        thread::set_xstate(self.tid, &self.xstate)?;
        thread::setregs(self.tid, self.saved)?;
        fault::point("stepping aside for a signal");
        thread::cont(self.tid, sig)?;
        thread::interrupt(self.tid)?;
        if !self.wait_event(Some(Instant::now() + ATTACH_TIMEOUT))? {
            // On its own context (taking the signal, its handler blocked where no stop reaches
            // it): nothing of pannus's is under way, so it is simply no longer borrowed.
            let what = format!("taking signal {} between two system calls of pannus's", thread::signal_name(sig));
            return Err(self.abandon(what, ATTACH_TIMEOUT));
        }
        self.capture().inspect_err(|_| {
            // Stopped with its own state and no frame of pannus's: let it go as it is.
            self.attached = false;
            let _ = thread::detach(self.tid, 0);
        })
    }

    /// Points the thread at pannus's work (`regs`), with asynchronous signals held while it
    /// runs: a signal sent to the thread meanwhile stays pending, in order, and is delivered once
    /// the thread is back on its own context (`rt_sigreturn` restores its mask from the frame,
    /// even if pannus is killed). Taken during the work instead, each would cost a round trip
    /// through pannus, and a thread receiving them faster than that would never finish the work.
    /// Signals a fault raises stay unblocked: blocking them would make the kernel reset the
    /// program's handler.
    fn run(&mut self, regs: user_regs_struct) -> Result<()> {
        thread::setregs(self.tid, regs)?;
        if !self.holding {
            thread::set_sigmask(self.tid, self.blocked | HELD_SIGNALS)?;
            self.holding = true;
        }
        Ok(())
    }

    /// Gives the thread its own signal mask back, before it runs its own code again.
    fn unhold(&mut self) -> Result<()> {
        if self.holding {
            thread::set_sigmask(self.tid, self.blocked)?;
            self.holding = false;
        }
        Ok(())
    }

    fn regs_for(&self, rip: u64, rsp: u64, args: &[u64]) -> user_regs_struct {
        let mut r = self.saved;
        r.rip = rip;
        r.rsp = rsp;
        // The kernel must not treat the resume as the restart of a system call the thread was
        // blocked in.
        r.orig_rax = u64::MAX;
        r.eflags &= !0x400; // direction flag clear, as the ABI wants at a call
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        (r.rdi, r.rsi, r.rdx, r.r8, r.r9) = (a(0), a(1), a(2), a(4), a(5));
        r.rcx = a(3);
        r.r10 = a(3);
        r
    }

    /// Whether the thread runs 32-bit code (see `i386.rs`).
    pub fn is_compat(&self) -> bool {
        self.compat
    }

    /// Where the restorer's system call instruction ends, and its call's number (rt_sigreturn).
    fn restorer_end(&self) -> (u64, u64) {
        if self.compat {
            (self.gadgets.restorer + i386::RESTORER_LEN, i386::nr::RT_SIGRETURN)
        } else {
            (self.gadgets.restorer + RESTORER_LEN, NR_RT_SIGRETURN)
        }
    }

    /// Leaves the thread, which did not come back within `after`, to finish `what` on its own:
    /// each piece of work ends in the restorer, so it goes home as if pannus had gone. It stays
    /// attached with an interrupt pending, since the kernel lets go only of a stopped thread,
    /// and is let go once it stops (see `world.rs` on late threads), at the latest when pannus
    /// ends.
    fn abandon(&mut self, what: String, after: Duration) -> Error {
        self.attached = false;
        if let Some(h) = self.hastened.take() {
            h.restore();
        }
        let pid = self.mem.pid();
        let _ = thread::interrupt(self.tid);
        crate::world::keep_late(pid, self.tid, after);
        Error::Abandoned { tid: self.tid, what, after, whereabouts: thread::whereabouts(pid, self.tid) }
    }

    /// [`Hijack::next_stop`] within `after`; a thread that does not stop by then is abandoned
    /// ([`Hijack::abandon`]).
    fn next_stop_within(&mut self, after: Duration, what: impl Fn() -> String) -> Result<Stop> {
        match self.next_stop(Some(Instant::now() + after))? {
            Some(stop) => Ok(stop),
            None => Err(self.abandon(what(), after)),
        }
    }

    /// Waits for the next stop that is not an event-stop (those are resumed), or for `deadline`.
    fn next_stop(&mut self, deadline: Option<Instant>) -> Result<Option<Stop>> {
        loop {
            let stop = match deadline {
                None => thread::wait(self.tid)?,
                Some(d) => match thread::wait_timeout(self.tid, d.saturating_duration_since(Instant::now()))? {
                    Some(s) => s,
                    None => return Ok(None),
                },
            };
            match stop {
                Stop::Gone(how, code) => {
                    self.attached = false;
                    return Err(gone(self.mem.pid(), how, code));
                }
                Stop::Event(_) => thread::cont_syscall(self.tid, 0)?,
                s => return Ok(Some(s)),
            }
        }
    }

    /// Whether the signal the thread stopped to take means pannus's work crashed: a fault signal
    /// raised by the work itself. One another process sent (`kill -SEGV`) is the program's to
    /// take, as any signal: it is delivered, never swallowed.
    fn is_crash(&self, sig: i32) -> bool {
        is_fault(sig) && !thread::sent_from_outside(self.mem.pid(), self.tid)
    }

    fn crashed(&mut self, what: String, sig: i32) -> Result<Error> {
        self.at = At::SignalPath;
        Ok(Error::Crashed {
            tid: self.tid,
            what,
            signal: thread::signal_name(sig),
            rip: thread::getregs(self.tid)?.rip,
        })
    }

    /// Whether the thread has room below its signal frame for a function call ([`CALL_ROOM`]);
    /// the error says how much it has.
    pub fn room_for_calls(&self) -> Result<()> {
        let needed = self.saved.rsp - self.frame.bottom + CALL_ROOM;
        if self.room < needed {
            let (tid, rsp, room) = (self.tid, self.saved.rsp, self.room);
            return Err(Error::NoRoom { tid, rsp, what: "a function call in it", room, needed });
        }
        Ok(())
    }

    /// `len` bytes of the thread's stack below its signal frame, for a system call to write its
    /// answer into (`rt_sigaction`'s old action): memory the thread itself could write (see
    /// [`Hijack::capture`]) that nothing of the thread's uses while it is borrowed.
    pub(crate) fn out_buffer(&self, len: u64) -> Result<u64> {
        let at = self.frame.bottom.saturating_sub(len) & !15;
        let needed = self.saved.rsp.saturating_sub(at);
        if at < LOWEST_STACK || self.room < needed {
            let (tid, rsp, room) = (self.tid, self.saved.rsp, self.room);
            return Err(Error::NoRoom { tid, rsp, what: "a system call's answer", room, needed });
        }
        Ok(at)
    }

    /// The borrowed thread's own registers, as it was stopped.
    pub fn regs(&self) -> &user_regs_struct {
        &self.saved
    }

    pub fn pid(&self) -> i32 {
        self.mem.pid()
    }

    pub(crate) fn mem(&self) -> &'m Mem {
        self.mem
    }

    /// Runs system call `nr` with up to six arguments in the target and returns its raw result
    /// (a negative errno on failure). Crate-private: callers use the typed methods of
    /// `remote.rs` ([`Hijack::mmap`], [`Hijack::openat`], ...), which take flag types and turn a
    /// failure into an [`Error::Syscall`] naming the call and its errno.
    pub(crate) fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        loop {
            let r = if self.compat {
                // Below the restorer's slot, the three words the gadget pops before its `ret`.
                let mut r = self.regs_for(self.gadgets.syscall_ret, self.frame.uc - 4 - 4 * i386::SYSCALL_POPS, &[]);
                i386::set_syscall(&mut r, nr, args);
                r
            } else {
                let mut r = self.regs_for(self.gadgets.syscall_ret, self.frame.uc - 8, args);
                r.rax = nr as u64;
                r
            };
            self.run(r)?;
            fault::point("system call set up");
            thread::cont_syscall(self.tid, 0)?;
            match self.next_stop_within(SYSCALL_TIMEOUT, || format!("system call {nr}, before it began"))? {
                Stop::Syscall => break,
                Stop::Signal(sig) if self.is_crash(sig) => return Err(self.crashed(format!("system call {nr}"), sig)?),
                // A signal came before the call ran: take it on the thread's own context, then
                // run the call afresh.
                Stop::Signal(sig) => self.step_aside(sig)?,
                _ => return Err(Error::Other(format!("thread {}: unexpected stop before system call {nr}", self.tid))),
            }
        }
        fault::point("system call entered");
        thread::cont_syscall(self.tid, 0)?;
        match self.next_stop_within(SYSCALL_TIMEOUT, || format!("system call {nr}"))? {
            Stop::Syscall => {}
            _ => return Err(Error::Other(format!("thread {}: unexpected stop in system call {nr}", self.tid))),
        }
        self.at = At::SyscallExit;
        fault::point("system call returned");
        let rax = thread::getregs(self.tid)?.rax;
        Ok(if self.compat { i386::syscall_result(rax) } else { rax as i64 })
    }

    /// Calls the function at `func` with up to six integer arguments on the thread's own stack,
    /// below the signal frame, ignoring what it returns. It returns into the restorer; pannus
    /// catches that `rt_sigreturn` and skips it, so that the thread stays borrowed. A call that
    /// crashes or runs longer than `timeout` is stopped; the thread is restored on release.
    pub fn call(&mut self, func: u64, args: &[u64], timeout: Duration, what: &str) -> Result<()> {
        self.room_for_calls()?;
        let r = if self.compat {
            // cdecl, as the kernel calls a signal handler: the return address (the restorer)
            // at the frame's `pretcode`, the arguments above it, where rt_sigreturn reads
            // nothing (`sig`, `pinfo`, `puc`, `info`).
            let uc = self.frame.uc;
            let mut words = (self.gadgets.restorer as u32).to_le_bytes().to_vec();
            words.extend(i386::call_args(args));
            self.mem.write(uc - 4, &words)?;
            self.regs_for(func, uc - 4, &[])
        } else {
            self.regs_for(func, self.frame.uc - 8, args)
        };
        self.run(r)?;
        // Ours is the rt_sigreturn with the stack pointer at our frame: a signal handler that
        // interrupts the function returns through the same restorer, with its own frame.
        let ((restorer_end, nr), uc) = (self.restorer_end(), self.frame.uc);
        self.run_until(timeout, what, |r| r.orig_rax == nr && r.rip == restorer_end && r.rsp == uc).map(|_| ())
    }

    /// Calls a function that returns an address or null (an ifunc resolver, dlopen, dlsym) and
    /// returns it. The function returns into code of the target that stores `%rax` through a
    /// register it preserves ([`crate::maps::Store`]), pointed at a word of the signal frame,
    /// then returns on into the restorer, whose `rt_sigreturn` pannus catches and skips as for
    /// [`Hijack::call`]. With pannus gone the value lands in that word all the same and the
    /// thread goes home: no system call ever sees it (as a `syscall` would see a null return as
    /// `read` of the registers the function left behind).
    ///
    /// Where the target holds no such code, the function returns into a `syscall; ret` instead,
    /// where pannus reads the value as the system call number and skips the call: with pannus
    /// gone, an address is no system call number (ENOSYS), but a null return is `read`.
    pub fn call_for_address(&mut self, func: u64, args: &[u64], timeout: Duration, what: &str) -> Result<u64> {
        self.room_for_calls()?;
        if self.compat {
            return self.call_for_address_i386(func, args, timeout, what);
        }
        let Some(store) = self.gadgets.store else {
            return self.call_for_address_through_syscall(func, args, timeout, what);
        };
        let (uc, scratch) = (self.frame.uc, self.frame.scratch);
        // The return chain below the frame: the store, a word for each of its pops, a `ret`
        // when needed to keep the function's stack aligned (16 bytes less 8 at its entry), the
        // restorer; `uc` on top of it all, for rt_sigreturn.
        let mut chain = vec![store.addr];
        chain.extend(std::iter::repeat_n(0u64, store.pops as usize));
        if chain.len() % 2 == 1 {
            chain.push(self.gadgets.ret);
        }
        chain.push(self.gadgets.restorer);
        let top = uc - 8 * chain.len() as u64;
        let bytes: Vec<u8> = chain.iter().flat_map(|a| a.to_le_bytes()).collect();
        self.mem.write(top, &bytes)?;
        self.mem.write(scratch, &[0; 8])?;
        let mut r = self.regs_for(func, top, args);
        let at = scratch.wrapping_sub(store.disp as i64 as u64);
        match store.base {
            Base::Rbx => r.rbx = at,
            Base::Rbp => r.rbp = at,
            Base::R12 => r.r12 = at,
            Base::R13 => r.r13 = at,
            Base::R14 => r.r14 = at,
            Base::R15 => r.r15 = at,
        }
        self.run(r)?;
        let restorer_end = self.gadgets.restorer + RESTORER_LEN;
        self.run_until(timeout, what, |r| r.orig_rax == NR_RT_SIGRETURN && r.rip == restorer_end && r.rsp == uc)?;
        self.mem.read_u64(scratch)
    }

    /// [`Hijack::call_for_address`] for a 32-bit thread: the function returns into the `int
    /// $0x80` of the vDSO's `__kernel_vsyscall`, where pannus reads `eax` as the system call
    /// number and skips the call. With pannus gone, a null return is system call 0,
    /// `restart_syscall`, which with no restart pending fails with `EINTR` and does nothing; an
    /// address is no system call number (`ENOSYS`). The gadget then pops three words (the
    /// function's arguments, at most three) and returns into the restorer.
    fn call_for_address_i386(&mut self, func: u64, args: &[u64], timeout: Duration, what: &str) -> Result<u64> {
        if args.len() as u64 > i386::SYSCALL_POPS {
            return Err(Error::Other(format!("{what}: {} arguments, more than a 32-bit call takes here", args.len())));
        }
        let uc = self.frame.uc;
        let at = uc - 4 - 4 * i386::SYSCALL_POPS - 4;
        let mut words = (self.gadgets.syscall_ret as u32).to_le_bytes().to_vec();
        let mut padded = args.to_vec();
        padded.resize(i386::SYSCALL_POPS as usize, 0);
        words.extend(i386::call_args(&padded));
        words.extend((self.gadgets.restorer as u32).to_le_bytes());
        self.mem.write(at, &words)?;
        let r = self.regs_for(func, at, &[]);
        self.run(r)?;
        let gadget_end = self.gadgets.syscall_ret + 2;
        let regs = self.run_until(timeout, what, |r| r.rip == gadget_end && r.rsp == at + 4)?;
        Ok(regs.orig_rax & 0xffff_ffff)
    }

    /// [`Hijack::call_for_address`] where the target holds no store of `%rax`.
    fn call_for_address_through_syscall(
        &mut self,
        func: u64,
        args: &[u64],
        timeout: Duration,
        what: &str,
    ) -> Result<u64> {
        let uc = self.frame.uc;
        let mut bytes = Vec::with_capacity(16);
        for a in [self.gadgets.syscall_ret, self.gadgets.ret] {
            bytes.extend_from_slice(&a.to_le_bytes());
        }
        self.mem.write(uc - 24, &bytes)?;
        let r = self.regs_for(func, uc - 24, args);
        self.run(r)?;
        let gadget_end = self.gadgets.syscall_ret + 2;
        let regs = self.run_until(timeout, what, |r| r.rip == gadget_end && r.rsp == uc - 16)?;
        Ok(regs.orig_rax)
    }

    /// Resumes the borrowed thread to the next system call stops until `done` matches a
    /// syscall-entry stop; that system call is skipped and the thread left at its exit stop.
    /// Asynchronous signals are held meanwhile (see [`Hijack::run`]); a fault signal is a crash.
    fn run_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&user_regs_struct) -> bool,
    ) -> Result<user_regs_struct> {
        fault::point("call set up");
        thread::cont_syscall(self.tid, 0)?;
        let deadline = Instant::now() + timeout;
        let mut entry = true;
        loop {
            let Some(stop) = self.next_stop(Some(deadline))? else {
                thread::interrupt(self.tid)?;
                if !self.settle()? {
                    // Inside the call where no stop reaches it (the function waits in a vfork,
                    // an uninterruptible sleep): it finishes the call on its own and goes home.
                    let what = format!("{what}, which did not finish within {timeout:?}");
                    return Err(self.abandon(what, ATTACH_TIMEOUT));
                }
                return Err(Error::Timeout { tid: self.tid, what: what.to_string(), after: timeout });
            };
            match stop {
                Stop::Syscall => {
                    let regs = thread::getregs(self.tid)?;
                    if entry && done(&regs) {
                        fault::point("call returned");
                        let mut skip = regs;
                        skip.orig_rax = u64::MAX;
                        if regs.rip == self.restorer_end().0 {
                            // Skipped, the restorer would run on into whatever follows it: point
                            // the thread back at the restorer's start, so that a pannus killed
                            // from here on still leaves it on its way home.
                            skip.rip = self.gadgets.restorer;
                            skip.rsp = self.frame.uc;
                        }
                        thread::setregs(self.tid, skip)?;
                        thread::cont_syscall(self.tid, 0)?;
                        return match self.next_stop_within(SYSCALL_TIMEOUT, || format!("returning from {what}"))? {
                            Stop::Syscall => {
                                self.at = At::SyscallExit;
                                Ok(regs)
                            }
                            _ => Err(Error::Other(format!("thread {}: unexpected stop after {what}", self.tid))),
                        };
                    }
                    entry = !entry;
                    thread::cont_syscall(self.tid, 0)?;
                }
                Stop::Signal(sig) if self.is_crash(sig) => return Err(self.crashed(what.to_string(), sig)?),
                // Not held (a fault signal another process sent, SIGKILL aside): it interrupts
                // the function as it would interrupt any code of the thread.
                Stop::Signal(sig) => thread::cont_syscall(self.tid, sig)?,
                _ => thread::cont_syscall(self.tid, 0)?,
            }
        }
    }

    /// After PTRACE_INTERRUPT, waits until the thread is stopped, for [`ATTACH_TIMEOUT`] at
    /// most: false when it has not stopped by then.
    fn settle(&mut self) -> Result<bool> {
        let Some(stop) = thread::wait_timeout(self.tid, ATTACH_TIMEOUT)? else { return Ok(false) };
        match stop {
            Stop::Event(_) => self.at = At::SignalPath,
            Stop::Syscall => self.at = At::SyscallExit,
            Stop::Signal(sig) => {
                if !self.is_crash(sig) {
                    self.pending = sig;
                }
                self.at = At::SignalPath;
            }
            Stop::Gone(how, code) => {
                self.attached = false;
                return Err(gone(self.mem.pid(), how, code));
            }
        }
        Ok(true)
    }

    /// Sends the thread back to where it was and lets it go.
    pub fn release(mut self) -> Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        let home = self.send_home();
        // While attached, whatever failed: after the detach, the thread could be gone and its tid
        // another's.
        if let Some(h) = self.hastened.take() {
            h.restore();
        }
        home?;
        thread::detach(self.tid, self.pending)?;
        fault::point("thread released");
        Ok(())
    }

    /// Lets the thread go as a pannus killed now would: pointed at the restorer, its
    /// `rt_sigreturn` reading the signal frame. Tests only: the frame alone must bring it home.
    #[cfg(test)]
    pub(crate) fn release_through_frame(mut self) -> Result<()> {
        self.attached = false;
        let mut home = self.saved;
        home.rip = self.gadgets.restorer;
        home.rsp = self.frame.uc;
        home.orig_rax = u64::MAX;
        thread::setregs(self.tid, home)?;
        thread::detach(self.tid, 0)
    }

    /// Puts the thread back in the exact state it was borrowed in, still attached.
    fn send_home(&mut self) -> Result<()> {
        fault::point("about to release the thread");
        // First the state from which the thread goes home through the restorer on its own.
        let mut home = self.saved;
        home.rip = self.gadgets.restorer;
        home.rsp = self.frame.uc;
        home.orig_rax = u64::MAX;
        thread::setregs(self.tid, home)?;
        // Then, from inside the kernel's signal handling, the exact state it was stopped in: the
        // kernel then restarts an interrupted system call itself, `restart_syscall` included.
        if self.at == At::SyscallExit {
            thread::interrupt(self.tid)?;
            thread::cont(self.tid, 0)?;
            loop {
                let Some(stop) = thread::wait_timeout(self.tid, SYSCALL_TIMEOUT)? else {
                    // On its way home through the restorer already: it gets there on its own.
                    return Err(self.abandon("going back to what it was doing".to_string(), SYSCALL_TIMEOUT));
                };
                match stop {
                    Stop::Event(_) => break,
                    Stop::Signal(sig) => {
                        // A real signal: it is delivered below, on the thread's own context.
                        self.pending = sig;
                        break;
                    }
                    Stop::Syscall => thread::cont(self.tid, 0)?,
                    Stop::Gone(how, code) => return Err(gone(self.mem.pid(), how, code)),
                }
            }
            fault::point("thread back in the kernel's signal path");
        }
        self.unhold()?;
        thread::set_xstate(self.tid, &self.xstate)?;
        thread::setregs(self.tid, self.saved)?;
        fault::point("exact state restored");
        Ok(())
    }
}

impl Drop for Hijack<'_> {
    fn drop(&mut self) {
        let _ = self.restore();
    }
}

/// Every signal but those a fault raises (and SIGKILL and SIGSTOP, which nothing blocks).
const HELD_SIGNALS: u64 = {
    let mut held = !0u64;
    let mut k = 0;
    while k < FAULT_SIGNALS.len() {
        held &= !(1u64 << (FAULT_SIGNALS[k] - 1));
        k += 1;
    }
    held
};

const FAULT_SIGNALS: [i32; 7] =
    [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE, libc::SIGABRT, libc::SIGTRAP, libc::SIGSYS];

fn is_fault(sig: i32) -> bool {
    matches!(sig, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGABRT | libc::SIGTRAP)
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
