//! A new process held at its program's entry point, before `main`: the dynamic loader has mapped
//! and relocated every library, the program has run nothing of its own.
//!
//! The daemon seizes the thread inside an `exec` that fanotify holds (`FAN_OPEN_EXEC_PERM`),
//! with `PTRACE_O_TRACEEXEC`, then lets the `exec` go on. [`run_to_entry`] catches the exec stop,
//! runs the loader to the entry point (`AT_ENTRY` of `/proc/PID/auxv`, an `int3` there, its byte
//! put back once hit) and parks the thread there in a `nanosleep` of [`PARK`], detached: the
//! engine can then patch the process as any other. [`release`] puts the thread back at the entry
//! point with its registers as the loader left them. Should the daemon die meanwhile, the sleep
//! ends by itself and returns to the entry point (see [`run_to_entry`]): the process goes on,
//! unpatched, never left stopped.
//!
//! A 32-bit (i386) process is held the same way: its auxiliary vector has 4-byte words, and its
//! thread sleeps in the vDSO's `int $0x80; pop %ebp; pop %edx; pop %ecx; ret` (a `poll` of no
//! file with a timeout, which reads no memory), which returns to the entry point through four
//! words pannus writes below the loader's stack pointer.

use crate::error::{Error, Result};
use crate::thread::{self, Stop};
use crate::Mem;
use nix::libc;
use nix::sys::ptrace;
use std::time::{Duration, Instant};

/// How long a parked process sleeps at its entry point at most, should nobody release it.
pub const PARK: Duration = Duration::from_secs(5);

/// A process parked at its program's entry point.
#[derive(Debug)]
pub struct AtEntry {
    pub pid: i32,
    pub entry: u64,
    /// Its registers at the entry point, as the loader jumped there.
    regs: libc::user_regs_struct,
    /// Its stack pointer while it sleeps there.
    sleep_sp: u64,
    /// Where it sleeps: the system call instruction (before it runs it, or once it returned
    /// from it its instruction pointer is just past it).
    site: u64,
}

/// Seizes thread `tid`, which is inside an `exec` fanotify holds, so that the `exec` stops it,
/// and so that a process it forks before its entry point (a preloaded library's constructor
/// may) is traced from its birth: such a child is a copy with the `int3` planted, which
/// [`free_child`] takes out of its copy before letting it go.
pub fn seize_exec(tid: i32) -> Result<()> {
    thread::seize_with(tid, ptrace::Options::PTRACE_O_TRACEEXEC | ptrace::Options::PTRACE_O_TRACEFORK)
}

/// `AT_ENTRY` of process `pid`, whose auxiliary vector has words of `word` bytes (8, or 4 for a
/// 32-bit process).
fn at_entry(pid: i32, word: usize) -> Result<u64> {
    let auxv = std::fs::read(format!("/proc/{pid}/auxv"))
        .map_err(|e| Error::Other(format!("cannot read the auxiliary vector of process {pid}: {e}")))?;
    entry_in(&auxv, word).ok_or_else(|| Error::Other(format!("process {pid} has no AT_ENTRY")))
}

/// The value of `AT_ENTRY` in the auxiliary vector `auxv` of `word`-byte words.
fn entry_in(auxv: &[u8], word: usize) -> Option<u64> {
    auxv.chunks_exact(2 * word)
        .map(|c| {
            let at = |k: usize| c[k..k + word].iter().rev().fold(0u64, |v, &b| (v << 8) | u64::from(b));
            (at(0), at(word))
        })
        .take_while(|&(key, _)| key != libc::AT_NULL)
        .find(|&(key, _)| key == libc::AT_ENTRY)
        .map(|(_, v)| v)
}

/// The `int3` planted at a process's entry point: where, and the byte it replaced.
type Planted = Option<(u64, u8)>;

/// Lets go of process `child`, forked by the held process while `planted` (if any) was in its
/// code: once it has reached its first stop, the byte is put back in its copy of the code, so
/// that it runs its own course (it is not held: nothing applies to it before `main`).
fn free_child(child: i32, planted: Planted) {
    // Traced from its birth, it starts in an event-stop. One that has not stopped within the
    // second is left attached: the kernel lets it go when this thread of pannus ends.
    let sig = match thread::wait_timeout(child, Duration::from_secs(1)) {
        Ok(Some(Stop::Event(_))) => 0,
        Ok(Some(Stop::Signal(sig))) if sig != libc::SIGSTOP => sig,
        Ok(Some(Stop::Signal(_) | Stop::Syscall)) => 0,
        Ok(Some(Stop::Gone(..))) | Ok(None) | Err(_) => return,
    };
    if let Some((entry, byte)) = planted {
        if let Ok(mem) = Mem::open(child) {
            let _ = mem.write(entry, &[byte]);
        }
    }
    let _ = thread::detach(child, sig);
}

/// Waits for the next stop of `tid` until `deadline`, passing on the signals meant for it and
/// letting go of the processes it forks (see [`free_child`]); `None` when the time ran out.
fn next_stop(
    tid: i32,
    deadline: Instant,
    planted: Planted,
    mut is_ours: impl FnMut(Stop) -> bool,
) -> Result<Option<Stop>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((stop, forked)) = thread::wait_timeout_forks(tid, left)? else { return Ok(None) };
        if let Some(child) = forked {
            free_child(child, planted);
            thread::cont(tid, 0)?;
            continue;
        }
        match stop {
            Stop::Gone(how, code) => {
                return Err(Error::Exited { pid: tid, how: format!("{how} {code}") });
            }
            s if is_ours(s) => return Ok(Some(s)),
            Stop::Signal(sig) => thread::cont(tid, sig)?,
            _ => thread::cont(tid, 0)?,
        }
    }
}

/// Lets a thread this module seized go, stopping it first when it runs (a failure on the way).
/// `planted`: the `int3` a process it forks meanwhile would carry (see [`free_child`]).
fn let_go(tid: i32, stopped: bool, planted: Planted) {
    if !stopped {
        if thread::interrupt(tid).is_err() {
            return;
        }
        match next_stop(tid, Instant::now() + Duration::from_secs(1), planted, |_| true) {
            Ok(Some(Stop::Signal(sig))) => {
                let _ = thread::detach(tid, sig);
                return;
            }
            Ok(Some(Stop::Gone(..))) | Err(_) => return,
            _ => {}
        }
    }
    let _ = thread::detach(tid, 0);
}

/// From the exec stop of `pid` (seized with [`seize_exec`]), runs it to its program's entry
/// point and parks it there, detached. On any failure the process is let go as it is (an
/// `int3` planted is taken out first) and the error says why.
///
/// `park_at` gives, once the loader is done, the address of a `syscall; ret` that ends a leaf
/// function of the C library (`getpid`'s): an x86-64 thread sleeps there with the entry point as
/// its return address, a stack any unwinder walks (the function, then the entry point). A
/// 32-bit thread sleeps in its vDSO instead (see the module's documentation).
pub fn run_to_entry(pid: i32, deadline: Instant, park_at: impl FnOnce() -> Option<u64>) -> Result<AtEntry> {
    let exec = |s: Stop| matches!(s, Stop::Event(_));
    match next_stop(pid, deadline, None, exec) {
        Ok(Some(_)) => {}
        Ok(None) => {
            let_go(pid, false, None);
            return Err(Error::Other(format!("process {pid}: no exec stop in time")));
        }
        Err(e) => {
            let_go(pid, false, None);
            return Err(e);
        }
    }
    // Parked with x86-64 or i386 code, told by the code segment the thread runs in after the
    // exec (the kernel's choice, not a file's): a process of another architecture (x32, whose
    // code segment is x86-64's) is let go as it is, to be patched (or refused) after its exec.
    let compat = match thread::getregs(pid) {
        Ok(r) => crate::i386::is_compat(&r),
        Err(e) => {
            let_go(pid, true, None);
            return Err(e);
        }
    };
    if let Some(arch) = crate::Arch::of_process(pid).filter(|&a| !compat && a != crate::Arch::X86_64) {
        let_go(pid, true, None);
        return Err(Error::Other(format!(
            "process {pid} runs {arch}: held before main only when it runs x86-64 or i386 code"
        )));
    }
    let mem = match Mem::open(pid) {
        Ok(m) => m,
        Err(e) => {
            let_go(pid, true, None);
            return Err(e);
        }
    };
    let planted = (|| {
        let entry = at_entry(pid, if compat { 4 } else { 8 })?;
        let mut byte = [0u8; 1];
        mem.read(entry, &mut byte)?;
        mem.write(entry, &[0xcc])?;
        Ok::<_, Error>((entry, byte[0]))
    })();
    let (entry, byte) = match planted {
        Ok(p) => p,
        Err(e) => {
            let_go(pid, true, None);
            return Err(e);
        }
    };
    let put_back = || mem.write(entry, &[byte]);
    // The int3 reports as SIGTRAP with the instruction pointer just past it.
    let hit = |s: Stop| s == Stop::Signal(libc::SIGTRAP) && thread::getregs(pid).is_ok_and(|r| r.rip == entry + 1);
    let reached = thread::cont(pid, 0).and_then(|()| next_stop(pid, deadline, Some((entry, byte)), hit));
    match reached {
        Ok(Some(_)) => {}
        Ok(None) => {
            let_go_after(pid, (entry, byte), put_back);
            return Err(Error::Other(format!("process {pid}: its entry point {entry:#x} not reached in time")));
        }
        Err(e) => {
            let _ = put_back();
            let_go(pid, false, Some((entry, byte)));
            return Err(e);
        }
    }
    let parked = (|| {
        put_back()?;
        let mut regs = thread::getregs(pid)?;
        regs.rip = entry;
        // Where the sleep returns: past the entry point's first instruction when it is one whose
        // effect is redone here (`endbr64`/`endbr32`, or `xor %ebp, %ebp` with %rbp cleared), so
        // that an unwinder looking up the code before a return address lands inside the entry
        // function, whose unwinding table ends the stack; else the entry point itself.
        let first = mem.read_vec(entry, 4)?;
        let endbr = [0xf3, 0x0f, 0x1e, if compat { 0xfb } else { 0xfa }];
        let (ret_to, rbp) = if first == endbr {
            (entry + 4, regs.rbp)
        } else if first[..2] == [0x31, 0xed] {
            (entry + 2, 0)
        } else {
            (entry, regs.rbp)
        };
        let sleep = if compat {
            park_i386(&mem, pid, regs, ret_to, rbp)?
        } else {
            let site =
                park_at().filter(|&a| mem.read_vec(a, 3).is_ok_and(|b| b == [0x0f, 0x05, 0xc3])).ok_or_else(|| {
                    Error::Other(format!("process {pid}: no `syscall; ret` to sleep on in its C library"))
                })?;
            park_x86_64(&mem, regs, site, ret_to, rbp)?
        };
        thread::setregs(pid, sleep)?;
        Ok::<_, Error>((regs, sleep.rsp, sleep.rip))
    })();
    match parked {
        Ok((regs, sleep_sp, site)) => {
            thread::detach(pid, 0)?;
            Ok(AtEntry { pid, entry, regs, sleep_sp, site })
        }
        Err(e) => {
            // Back at the entry point, as the loader left it.
            if let Ok(mut r) = thread::getregs(pid) {
                if r.rip == entry + 1 {
                    r.rip = entry;
                    let _ = thread::setregs(pid, r);
                }
            }
            let_go(pid, true, None);
            Err(e)
        }
    }
}

/// The registers of an x86-64 thread at the entry point (`regs`) sleeping in the `syscall; ret`
/// at `site`, then returning to `ret_to` with `rbp`. Below the stack pointer, which nothing at
/// the entry point uses: the return address of the sleep's `ret`, and the sleep's length. The
/// `ret` leaves the stack pointer as the loader set it; of the registers the entry point reads
/// (%rsp, %rdx: the loader's finaliser), the call changes none.
fn park_x86_64(
    mem: &Mem,
    regs: libc::user_regs_struct,
    site: u64,
    ret_to: u64,
    rbp: u64,
) -> Result<libc::user_regs_struct> {
    let ts_at = below(regs.rsp, 24)?;
    let ret_at = regs.rsp - 8;
    let mut frame = Vec::with_capacity(24);
    frame.extend_from_slice(&PARK.as_secs().to_ne_bytes());
    frame.extend_from_slice(&u64::from(PARK.subsec_nanos()).to_ne_bytes());
    frame.extend_from_slice(&ret_to.to_ne_bytes());
    mem.write(ts_at, &frame)?;
    let mut sleep = regs;
    sleep.rip = site;
    sleep.rsp = ret_at;
    sleep.rbp = rbp;
    sleep.rax = libc::SYS_nanosleep as u64;
    sleep.rdi = ts_at;
    sleep.rsi = 0;
    Ok(sleep)
}

/// `sp - n`, or an error for a stack pointer too low to have room below it (code that ran
/// before the entry point may have set any).
fn below(sp: u64, n: u64) -> Result<u64> {
    sp.checked_sub(n).ok_or_else(|| Error::Other(format!("no room below the stack pointer {sp:#x} at the entry point")))
}

/// i386 `poll`.
const NR_POLL_I386: u64 = 168;

/// The registers of a 32-bit thread at the entry point (`regs`) sleeping in the vDSO's
/// `int $0x80; pop %ebp; pop %edx; pop %ecx; ret`, then returning to `ret_to`. Below the stack
/// pointer, the four words the gadget pops: `rbp`, the loader's `edx` (its finaliser, which the
/// entry point reads) and `ecx`, the return address; the `ret` leaves the stack pointer as the
/// loader set it. The vDSO's unwinding table describes those words, so an unwinder walks from
/// the sleep to the entry point. The sleep is `poll(NULL, 0, PARK)`, its arguments all in
/// registers: a 32-bit stack has no red zone, so a borrowed thread's signal frame goes right
/// below the stack pointer, where a `timespec` would be overwritten, and a sleep issued again
/// from that frame (pannus killed while it borrows the thread) would read whatever is there.
fn park_i386(
    mem: &Mem,
    pid: i32,
    regs: libc::user_regs_struct,
    ret_to: u64,
    rbp: u64,
) -> Result<libc::user_regs_struct> {
    let site = crate::i386::vdso_syscall(mem, &crate::maps::read(pid)?).ok_or_else(|| {
        Error::Other(format!("process {pid}: no `int $0x80; pop; pop; pop; ret` to sleep on in its vDSO"))
    })?;
    let sp = below(regs.rsp, 16)?;
    let word = |v: u64| (v as u32).to_ne_bytes();
    let mut frame = Vec::with_capacity(16);
    for v in [rbp, regs.rdx, regs.rcx, ret_to] {
        frame.extend_from_slice(&word(v));
    }
    mem.write(sp, &frame)?;
    let mut sleep = regs;
    sleep.rip = site;
    sleep.rsp = sp;
    sleep.rax = NR_POLL_I386;
    sleep.rbx = 0;
    sleep.rcx = 0;
    sleep.rdx = PARK.as_millis() as u64;
    Ok(sleep)
}

/// The time ran out before the `int3` was hit: stops the thread, takes the `int3` out (and, if
/// it was hit meanwhile, puts the thread back on the entry point), lets it go.
fn let_go_after(pid: i32, (entry, byte): (u64, u8), put_back: impl Fn() -> Result<()>) {
    let _ = thread::interrupt(pid);
    let stop = next_stop(pid, Instant::now() + Duration::from_secs(1), Some((entry, byte)), |_| true);
    let _ = put_back();
    let sig = match stop {
        Ok(Some(Stop::Signal(libc::SIGTRAP))) => match thread::getregs(pid) {
            Ok(mut r) if r.rip == entry + 1 => {
                r.rip = entry;
                let _ = thread::setregs(pid, r);
                0
            }
            _ => libc::SIGTRAP,
        },
        Ok(Some(Stop::Signal(sig))) => sig,
        Ok(Some(Stop::Gone(..))) | Err(_) => return,
        _ => 0,
    };
    let _ = thread::detach(pid, sig);
}

/// Wakes a parked process: its thread back on the entry point with the loader's registers.
/// Within `timeout`; a process whose sleep already ended (it runs `main`) is left alone.
pub fn release(at: &AtEntry, timeout: Duration) -> Result<()> {
    let pid = at.pid;
    thread::seize(pid)?;
    thread::interrupt(pid)?;
    let deadline = Instant::now() + timeout;
    let stop = next_stop(pid, deadline, None, |s| matches!(s, Stop::Event(_) | Stop::Signal(_)))?;
    let sig = match stop {
        Some(Stop::Signal(sig)) => sig,
        Some(_) => 0,
        None => return Err(Error::Other(format!("process {pid}: did not stop to be released"))),
    };
    let regs = thread::getregs(pid)?;
    // Still in its sleep (at the system call, its stack pointer where the sleep put it): then to
    // the entry point. Once the sleep has ended, the program's own code may pass through the
    // same stack pointer: it is left alone.
    let parked = regs.rsp == at.sleep_sp && (regs.rip == at.site || regs.rip == at.site + 2);
    if parked {
        thread::setregs(pid, at.regs)?;
    }
    thread::detach(pid, sig)
}

#[cfg(test)]
mod tests {
    use super::entry_in;

    fn auxv(word: usize, pairs: &[(u64, u64)]) -> Vec<u8> {
        pairs.iter().flat_map(|&(k, v)| [k, v]).flat_map(|w| w.to_le_bytes()[..word].to_vec()).collect()
    }

    #[test]
    fn the_entry_point_is_read_from_a_64_bit_or_a_32_bit_auxiliary_vector() {
        let pairs = [(33, 0xf7f0_0000), (9, 0x5655_6080), (0, 0)];
        assert_eq!(entry_in(&auxv(8, &pairs), 8), Some(0x5655_6080));
        assert_eq!(entry_in(&auxv(4, &pairs), 4), Some(0x5655_6080));
        assert_eq!(entry_in(&auxv(4, &[(33, 1), (0, 0), (9, 7)]), 4), None, "nothing after AT_NULL");
        assert_eq!(entry_in(&auxv(8, &pairs)[..20], 8), None, "cut short");
    }
}
