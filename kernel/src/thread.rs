//! Per-thread ptrace primitives: seize, interrupt, wait, resume, registers.

use crate::error::{Error, Result};
use nix::errno::Errno;
use nix::libc;
use nix::sys::ptrace;
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// Why a traced thread reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// A ptrace-stop without a signal to deliver (PTRACE_INTERRUPT or a group-stop); the number
    /// is the stop signal (SIGTRAP for an interrupt).
    Event(i32),
    /// A signal-delivery-stop: the signal would be delivered if the thread were resumed with it.
    Signal(i32),
    /// A syscall-entry or syscall-exit stop (seized with `PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// The thread is gone (exited or killed); the text says how.
    Gone(&'static str, i32),
}

/// The thread ids of process `pid`, from `/proc/PID/task`.
pub fn list_threads(pid: i32) -> Result<Vec<i32>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoProcess { pid },
        _ => Error::Other(format!("cannot list the threads of process {pid}: {e}")),
    })?;
    let mut tids: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The CPU time thread `tid` of `pid` has used so far, in ns (the first field of its
/// `/proc/PID/task/TID/schedstat`); `None` when the thread is gone or the kernel keeps no such
/// count. It grows only while the thread runs: unchanged, the thread has not run meanwhile.
pub fn cpu_time(pid: i32, tid: i32) -> Option<u64> {
    schedstat(pid, tid).map(|(cpu, _, _)| cpu)
}

/// Thread `tid` of `pid`'s CPU time and time spent waiting for a CPU (ns), and how many times
/// it got a CPU: the three fields of its `/proc/PID/task/TID/schedstat`.
pub(crate) fn schedstat(pid: i32, tid: i32) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse().ok());
    Some((fields.next()??, fields.next()??, fields.next()??))
}

/// The state letter of thread `tid` of `pid` (`R` running or waiting for a CPU, `S` and `D`
/// blocked, `t` stopped by a tracer, ...), from its `/proc/PID/task/TID/stat`; `None` when gone.
pub fn thread_state(pid: i32, tid: i32) -> Option<char> {
    state_in(&format!("/proc/{pid}/task/{tid}/stat"))
}

/// The state letter in a `stat` file of /proc (after the command name, which may hold spaces).
fn state_in(path: &str) -> Option<char> {
    let stat = std::fs::read_to_string(path).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_exists(pid: i32) -> bool {
    state_in(&format!("/proc/{pid}/stat")).is_some_and(|state| state != 'Z' && state != 'X')
}

/// Attaches to thread `tid` without stopping it. A thread traced by someone else (a debugger, or
/// another pannus) is reported as such.
pub(crate) fn seize(tid: i32) -> Result<()> {
    seize_with(tid, ptrace::Options::empty())
}

/// Like [`seize`], marking syscall-stops (`SIGTRAP | 0x80`). A tracer that dies while the thread
/// sits in a syscall-stop then leaves no stray `SIGTRAP` behind.
pub(crate) fn seize_for_syscalls(tid: i32) -> Result<()> {
    seize_with(tid, ptrace::Options::PTRACE_O_TRACESYSGOOD)
}

pub(crate) fn seize_with(tid: i32, options: ptrace::Options) -> Result<()> {
    ptrace::seize(Pid::from_raw(tid), options).map_err(|e| {
        if e == Errno::EPERM {
            if let Some(tracer) = tracer_of(tid).filter(|&t| t != 0) {
                let name = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
                return Error::Other(format!(
                    "thread {tid} is already traced by process {tracer} ({}); detach that \
                     debugger or wait for the other pannus to finish",
                    name.trim()
                ));
            }
        }
        Error::ptrace(tid, "attach to", e)
    })
}

/// The pid tracing `tid`, 0 when none, from `/proc/TID/status`.
pub fn tracer_of(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("TracerPid:")).and_then(|v| v.trim().parse().ok())
}

pub(crate) fn interrupt(tid: i32) -> Result<()> {
    ptrace::interrupt(Pid::from_raw(tid)).map_err(|e| Error::ptrace(tid, "interrupt", e))
}

fn raw_ptrace(req: libc::c_uint, tid: i32, data: usize) -> std::result::Result<(), Errno> {
    // SAFETY: the requests used here (PTRACE_CONT, PTRACE_SINGLESTEP, PTRACE_DETACH) take no
    // pointer: `addr` is ignored and `data` is a signal number passed by value.
    let r = unsafe { libc::ptrace(req, tid, std::ptr::null_mut::<libc::c_void>(), data) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Resumes a stopped thread, delivering `sig` (0 for none).
pub(crate) fn cont(tid: i32, sig: i32) -> Result<()> {
    raw_ptrace(libc::PTRACE_CONT, tid, sig as usize).map_err(|e| Error::ptrace(tid, "resume", e))
}

/// Resumes a stopped thread until its next system call entry or exit.
pub(crate) fn cont_syscall(tid: i32, sig: i32) -> Result<()> {
    raw_ptrace(libc::PTRACE_SYSCALL, tid, sig as usize)
        .map_err(|e| Error::ptrace(tid, "resume to the next system call of", e))
}

/// Detaches from a stopped thread, delivering `sig` (0 for none). A thread that is already gone
/// is not an error.
pub(crate) fn detach(tid: i32, sig: i32) -> Result<()> {
    match raw_ptrace(libc::PTRACE_DETACH, tid, sig as usize) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(Error::ptrace(tid, "detach", e)),
    }
}

pub(crate) fn getregs(tid: i32) -> Result<libc::user_regs_struct> {
    ptrace::getregs(Pid::from_raw(tid)).map_err(|e| Error::ptrace(tid, "read registers", e))
}

pub(crate) fn setregs(tid: i32, regs: libc::user_regs_struct) -> Result<()> {
    ptrace::setregs(Pid::from_raw(tid), regs).map_err(|e| Error::ptrace(tid, "write registers", e))
}

fn decode(status: libc::c_int) -> Option<Stop> {
    if libc::WIFEXITED(status) {
        return Some(Stop::Gone("exited with status", libc::WEXITSTATUS(status)));
    }
    if libc::WIFSIGNALED(status) {
        return Some(Stop::Gone("was killed by signal", libc::WTERMSIG(status)));
    }
    if libc::WIFSTOPPED(status) {
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if event == libc::PTRACE_EVENT_STOP {
            return Some(Stop::Event(sig));
        }
        if event == 0 && sig == (libc::SIGTRAP | 0x80) {
            return Some(Stop::Syscall);
        }
        if event != 0 {
            // No other event is requested; treat it as a plain stop.
            return Some(Stop::Event(sig));
        }
        return Some(Stop::Signal(sig));
    }
    None
}

/// One `waitpid` for thread `tid`; `Err(EINTR)` when a signal ended it.
fn waitpid_once(tid: i32, flags: libc::c_int) -> std::result::Result<Option<libc::c_int>, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid, writable c_int for the duration of the call.
    let r = unsafe { libc::waitpid(tid, &mut status, flags | libc::__WALL) };
    match r {
        r if r < 0 => Err(Errno::last()),
        0 => Ok(None),
        _ => Ok(Some(status)),
    }
}

fn waitpid_status(tid: i32, flags: libc::c_int) -> std::result::Result<Option<libc::c_int>, Errno> {
    loop {
        match waitpid_once(tid, flags) {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

fn waitpid_raw(tid: i32, flags: libc::c_int) -> std::result::Result<Option<Stop>, Errno> {
    Ok(waitpid_status(tid, flags)?.and_then(decode))
}

/// How a thread seized with [`seize_following_clones`] reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorldStop {
    /// Stopped; the signal (0 for none) is to be delivered when it resumes.
    Stopped(i32),
    /// Stopped right after creating thread `child`, which is traced too and reports on its own.
    Cloned(i32),
    Gone,
}

/// Attaches to thread `tid` without stopping it, so that the threads it creates are traced
/// (and stop) from their first instruction on.
pub(crate) fn seize_following_clones(tid: i32) -> Result<()> {
    seize_with(tid, ptrace::Options::PTRACE_O_TRACECLONE)
}

/// Waits until thread `tid`, seized with [`seize_following_clones`], reports, or until
/// `deadline` passes (`None` then); past it, only a report already there is taken. A wait
/// blocked at the deadline ends only if the calling thread holds an [`Alarm`] for it.
pub(crate) fn wait_world(tid: i32, deadline: Instant) -> Result<Option<WorldStop>> {
    loop {
        let flags = if Instant::now() >= deadline { libc::WNOHANG } else { 0 };
        let status = match waitpid_once(tid, flags) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(Errno::EINTR) => continue, // the alarm: look at the clock again
            Err(Errno::ECHILD) => return Ok(Some(WorldStop::Gone)),
            Err(e) => return Err(Error::ptrace(tid, "wait", e)),
        };
        if libc::WIFSTOPPED(status) && (status >> 16) & 0xff == libc::PTRACE_EVENT_CLONE {
            let child =
                ptrace::getevent(Pid::from_raw(tid)).map_err(|e| Error::ptrace(tid, "read the new thread of", e))?;
            return Ok(Some(WorldStop::Cloned(child as i32)));
        }
        return Ok(Some(match decode(status) {
            Some(Stop::Event(_) | Stop::Syscall) => WorldStop::Stopped(0),
            Some(Stop::Signal(sig)) => WorldStop::Stopped(sig),
            Some(Stop::Gone(..)) => WorldStop::Gone,
            None => continue,
        }));
    }
}

/// A timer that sends the calling thread `SIGALRM` once `after` has passed, then every
/// millisecond until it is dropped. The signal's handler does nothing and is installed without
/// `SA_RESTART`, so a blocking wait of that thread still under way then ends with `EINTR` (and
/// one that begins just after a signal is ended by the next). `None` when the kernel cannot make
/// the timer: a blocking wait then lasts until its thread reports, and the deadline is only
/// looked at between two waits.
pub(crate) struct Alarm {
    _timer: nix::sys::timer::Timer,
}

impl Alarm {
    pub(crate) fn after(after: Duration) -> Option<Alarm> {
        use nix::sys::signal::{SigAction, SigEvent, SigHandler, SigSet, SigevNotify, Signal};
        use nix::sys::timer::{Expiration, Timer, TimerSetTimeFlags};
        static HANDLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        extern "C" fn wake(_: libc::c_int) {}
        let handled = *HANDLED.get_or_init(|| {
            let action = SigAction::new(SigHandler::Handler(wake), nix::sys::signal::SaFlags::empty(), SigSet::empty());
            // SAFETY: the handler does nothing, so it is async-signal-safe; it replaces SIGALRM's
            // default action (ending the process), which nothing in pannus uses.
            unsafe { nix::sys::signal::sigaction(Signal::SIGALRM, &action) }.is_ok()
        });
        if !handled {
            return None;
        }
        let to_me = SigevNotify::SigevThreadId {
            signal: Signal::SIGALRM,
            thread_id: nix::unistd::gettid().as_raw(),
            si_value: 0,
        };
        let mut timer = Timer::new(nix::time::ClockId::CLOCK_MONOTONIC, SigEvent::new(to_me)).ok()?;
        // A zero first expiry would disarm the timer.
        let first = after.max(Duration::from_nanos(1)).into();
        let then = Duration::from_millis(1).into();
        timer.set(Expiration::IntervalDelayed(first, then), TimerSetTimeFlags::empty()).ok()?;
        Some(Alarm { _timer: timer })
    }
}

/// Where thread `tid` of `pid` is, for messages: its state letter and, when the kernel tells,
/// the kernel function it waits in ("state D, in kernel_clone").
pub(crate) fn whereabouts(pid: i32, tid: i32) -> String {
    let Some(state) = thread_state(pid, tid) else { return "gone".to_string() };
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan")).unwrap_or_default();
    match wchan.trim() {
        "" | "0" => format!("state {state}"),
        wchan => format!("state {state}, in {wchan}"),
    }
}

/// Waits until thread `tid` reports.
pub(crate) fn wait(tid: i32) -> Result<Stop> {
    loop {
        match waitpid_raw(tid, 0) {
            Ok(Some(s)) => return Ok(s),
            Ok(None) => continue,
            Err(Errno::ECHILD) => return Ok(Stop::Gone("is no longer traced", 0)),
            Err(e) => return Err(Error::ptrace(tid, "wait", e)),
        }
    }
}

/// Waits until thread `tid` reports or `timeout` passes (`None` then).
pub(crate) fn wait_timeout(tid: i32, timeout: Duration) -> Result<Option<Stop>> {
    Ok(wait_timeout_forks(tid, timeout)?.map(|(stop, _)| stop))
}

/// [`wait_timeout`], telling also a fork: `Some(child)` beside the stop when it is the
/// `PTRACE_EVENT_FORK` stop of a thread seized with `PTRACE_O_TRACEFORK`, `child` the new
/// process, traced (and stopped) from its birth.
pub(crate) fn wait_timeout_forks(tid: i32, timeout: Duration) -> Result<Option<(Stop, Option<i32>)>> {
    let start = Instant::now();
    let mut nap = Duration::from_micros(20);
    loop {
        match waitpid_status(tid, libc::WNOHANG) {
            Ok(Some(status)) => {
                if let Some(stop) = decode(status) {
                    let forked = libc::WIFSTOPPED(status) && (status >> 16) & 0xff == libc::PTRACE_EVENT_FORK;
                    let child = match forked {
                        true => Some(
                            ptrace::getevent(Pid::from_raw(tid))
                                .map_err(|e| Error::ptrace(tid, "read the new process of", e))?
                                as i32,
                        ),
                        false => None,
                    };
                    return Ok(Some((stop, child)));
                }
            }
            Ok(None) => {}
            Err(Errno::ECHILD) => return Ok(Some((Stop::Gone("is no longer traced", 0), None))),
            Err(e) => return Err(Error::ptrace(tid, "wait", e)),
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(5));
    }
}

/// Whether the signal thread `tid` of process `pid` is stopped to take (it sits in its
/// signal-delivery-stop) was sent by another process (`kill`, `tgkill`, `sigqueue`: a code of
/// zero or less, and a sender other than `pid`), rather than raised by what the thread itself
/// did (a fault, or `raise`/`abort` in the code it runs). Unknown (the siginfo cannot be read)
/// counts as raised by the thread.
pub(crate) fn sent_from_outside(pid: i32, tid: i32) -> bool {
    match ptrace::getsiginfo(Pid::from_raw(tid)) {
        Ok(info) if info.si_code <= 0 => {
            // SAFETY: for a signal with a code of zero or less (SI_USER, SI_QUEUE, SI_TKILL,
            // ...) the kernel fills the `_kill`/`_rt` member of the siginfo union, whose first
            // field is the sender's pid, which `si_pid` reads; the value is only compared.
            let sender = unsafe { info.si_pid() };
            sender != pid
        }
        _ => false,
    }
}

pub(crate) fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("signal {sig}"),
    }
}

/// The thread's extended FPU state (XSAVE standard format, as `PTRACE_GETREGSET NT_X86_XSTATE`
/// gives it, software-reserved bytes included).
pub(crate) fn xstate(tid: i32) -> Result<Vec<u8>> {
    const NT_X86_XSTATE: usize = 0x202;
    let mut buf = vec![0u8; 64 << 10];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: PTRACE_GETREGSET writes at most `iov.iov_len` bytes to `iov.iov_base`, which points
    // into `buf`, alive and exclusively borrowed for the call, and updates `iov.iov_len`.
    let r = unsafe {
        libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE as *mut libc::c_void, &mut iov as *mut libc::iovec)
    };
    if r < 0 {
        return Err(Error::ptrace(tid, "read the FPU state of", Errno::last()));
    }
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Writes back a state read by [`xstate`].
pub(crate) fn set_xstate(tid: i32, state: &[u8]) -> Result<()> {
    const NT_X86_XSTATE: usize = 0x202;
    let mut buf = state.to_vec();
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: PTRACE_SETREGSET reads `iov.iov_len` bytes from `iov.iov_base`, which points into
    // `buf`, alive for the call.
    let r = unsafe {
        libc::ptrace(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE as *mut libc::c_void, &mut iov as *mut libc::iovec)
    };
    if r < 0 {
        return Err(Error::ptrace(tid, "write the FPU state of", Errno::last()));
    }
    Ok(())
}

/// The blocked-signal mask of a stopped, traced thread (`PTRACE_GETSIGMASK`).
pub(crate) fn sigmask(tid: i32) -> Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: PTRACE_GETSIGMASK writes `addr` (8, the size of a kernel sigset_t on x86-64)
    // bytes to `data`, which points to `mask`, alive and exclusively borrowed for the call.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETSIGMASK, tid, 8usize as *mut libc::c_void, &mut mask as *mut u64) };
    if r < 0 {
        return Err(Error::ptrace(tid, "read the signal mask of", Errno::last()));
    }
    Ok(mask)
}

/// Sets the blocked-signal mask of a stopped, traced thread (`PTRACE_SETSIGMASK`; the kernel
/// never blocks SIGKILL and SIGSTOP whatever the mask says).
pub(crate) fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    // SAFETY: PTRACE_SETSIGMASK reads `addr` (8) bytes from `data`, which points to `mask`,
    // alive for the call.
    let r = unsafe { libc::ptrace(libc::PTRACE_SETSIGMASK, tid, 8usize as *mut libc::c_void, &mask as *const u64) };
    if r < 0 {
        return Err(Error::ptrace(tid, "write the signal mask of", Errno::last()));
    }
    Ok(())
}

/// Whether a signal the thread does not block is pending for it (or for its process).
pub(crate) fn signal_waiting(pid: i32, tid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else { return false };
    let field = |k: &str| {
        status.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0)
    };
    (field("SigPnd:") | field("ShdPnd:")) & !field("SigBlk:") != 0
}

/// The most instructions a classic-BPF program can have (`BPF_MAXINSNS`): the kernel refuses to
/// install a longer seccomp filter.
const BPF_MAXINSNS: usize = 4096;

/// The seccomp filters of a stopped, traced thread, each as its classic-BPF instructions
/// (8 bytes each), the most recently installed first. Needs CAP_SYS_ADMIN.
pub(crate) fn seccomp_filters(tid: i32) -> Result<Vec<Vec<[u8; 8]>>> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    // Room for the longest filter there can be, not for the length a first call reported:
    // another thread of the target can install a filter on this one (SECCOMP_FILTER_FLAG_TSYNC)
    // between two calls, and filter `index` is then another, maybe longer, one.
    let mut buf = vec![[0u8; 8]; BPF_MAXINSNS];
    let mut out = Vec::new();
    for index in 0usize.. {
        // SAFETY: the kernel copies filter `index` whole into `buf` (struct sock_filter, 8 bytes
        // an instruction); `buf` holds BPF_MAXINSNS instructions, and no installed filter has
        // more, so the copy stays inside `buf` whichever filter `index` is by then.
        let n = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index as *mut libc::c_void,
                buf.as_mut_ptr().cast::<libc::c_void>(),
            )
        };
        if n < 0 {
            match Errno::last() {
                Errno::ENOENT => break,
                e => return Err(Error::ptrace(tid, "read the seccomp filters of", e)),
            }
        }
        out.push(buf[..filter_len(tid, n, buf.len())?].to_vec());
    }
    Ok(out)
}

/// The length `PTRACE_SECCOMP_GET_FILTER` returned (non-negative), checked against the
/// `buffer` instructions it was given.
fn filter_len(tid: i32, returned: libc::c_long, buffer: usize) -> Result<usize> {
    usize::try_from(returned).ok().filter(|&n| n <= buffer).ok_or_else(|| {
        let what = format!("a seccomp filter of {returned} instructions, more than the buffer of {buffer} holds");
        Error::Other(format!("thread {tid}: the kernel reported {what}"))
    })
}

/// Stops the main thread of process `pid` briefly to read its seccomp filters. A thread that
/// does not stop within [`crate::hijack::ATTACH_TIMEOUT`] (a `vfork` parent waiting for its
/// child) fails it with [`Error::NotStopped`], naming the thread and where it is; it stays
/// attached with the interrupt pending and is let go once it stops (see `world.rs`).
pub fn read_seccomp_filters(pid: i32) -> Result<Vec<Vec<[u8; 8]>>> {
    let tid = pid;
    crate::world::still_late(pid, Some(tid))?;
    seize(tid)?;
    let result = (|| {
        interrupt(tid)?;
        let timeout = crate::hijack::ATTACH_TIMEOUT;
        let sig = match wait_timeout(tid, timeout)? {
            Some(Stop::Event(_) | Stop::Syscall) => 0,
            Some(Stop::Signal(s)) => s,
            Some(Stop::Gone(..)) => return Err(Error::NoProcess { pid: tid }),
            None => {
                crate::world::keep_late(pid, tid, timeout);
                return Err(Error::NotStopped { pid, threads: vec![(tid, whereabouts(pid, tid))], after: timeout });
            }
        };
        let filters = seccomp_filters(tid);
        detach(tid, sig)?;
        filters
    })();
    if result.is_err() {
        let _ = detach(tid, 0);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_length_beyond_the_buffer_is_refused() {
        assert_eq!(filter_len(7, 4, BPF_MAXINSNS).unwrap(), 4);
        assert_eq!(filter_len(7, 4096, BPF_MAXINSNS).unwrap(), 4096, "the longest filter fits");
        let e = filter_len(7, 4097, BPF_MAXINSNS).unwrap_err().to_string();
        assert!(e.contains("4097") && e.contains("thread 7"), "{e}");
        assert!(filter_len(7, 5, 4).is_err());
    }

    #[test]
    fn cpu_time_grows_while_a_thread_runs_and_not_while_it_sleeps() {
        let pid = std::process::id() as i32;
        let me = nix::unistd::gettid().as_raw();
        assert_eq!(thread_state(pid, me), Some('R'), "a thread reading its own state runs");
        let before = cpu_time(pid, me).expect("this kernel counts CPU time per thread");
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        assert!(cpu_time(pid, me).unwrap() > before, "it ran");

        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let sleeper = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let mut state = None;
        for _ in 0..1000 {
            state = thread_state(pid, tid);
            if state == Some('S') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(state, Some('S'), "a thread waiting on a channel is blocked");
        let slept = cpu_time(pid, tid).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(cpu_time(pid, tid), Some(slept), "a blocked thread uses no CPU time");
        done_tx.send(()).unwrap();
        sleeper.join().unwrap();
        assert_eq!(thread_state(pid, tid), None, "gone");
        assert_eq!(cpu_time(pid, tid), None, "gone");
    }
}
