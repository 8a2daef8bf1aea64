//! A signal frame (`struct rt_sigframe`) built on a borrowed thread's stack, holding the
//! thread's complete state as it was stopped: general registers, FPU/SSE/AVX state (XSAVE) and
//! signal mask. Whatever happens to pannus, the borrowed thread ends in the C library's
//! `rt_sigreturn` restorer, which reloads that state: the thread goes on exactly where it was,
//! a system call it was blocked in restarted as after a `SA_RESTART` signal handler.

use crate::error::{Error, Result};
use nix::libc::user_regs_struct;

const UC_FP_XSTATE: u64 = 0x1;
const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
pub(crate) const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
pub(crate) const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// `struct ucontext` on x86-64: flags, link, stack_t (24), sigcontext (256), sigset (8).
const UCONTEXT_SIZE: u64 = 8 + 8 + 24 + 256 + 8;
const SIGINFO_SIZE: u64 = 128;
const RED_ZONE: u64 = 128;

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// The registers a thread stopped inside a system call resumes with from the signal frame:
/// the kernel's restart rule applied in advance. `rt_sigreturn` cancels a pending
/// `restart_syscall`, so a call the kernel would continue with it (a relative sleep, a poll with
/// a timeout) is issued again with its original arguments instead: it may wait longer than
/// asked, never shorter, and never fails with `EINTR`. (This path serves only when pannus dies
/// mid-work; a living pannus restores the thread exactly, see `Hijack`.)
pub fn pre_restart(mut r: user_regs_struct) -> user_regs_struct {
    if (r.orig_rax as i64) >= 0 {
        if let ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK = -(r.rax as i64) {
            r.rax = r.orig_rax;
            r.rip -= 2;
        }
    }
    r.orig_rax = u64::MAX;
    r
}

/// System calls the kernel ends with a plain `EINTR`, not restarted, when the thread is merely
/// stopped and resumed (signal(7)): a ptrace interrupt would show through to the program.
///
/// The socket calls do so only on a socket with a timeout (`SO_RCVTIMEO` for the receiving
/// calls and `accept`, `SO_SNDTIMEO` for the sending calls and `connect`), and so do `read`,
/// `write`, `readv` and `writev` on such a socket (the same kernel path); on any other file those
/// end with a restart code, not `EINTR`, and are left to the kernel. Each of them fails with
/// `EINTR` only when it has transferred nothing (a partial transfer returns its count instead), so
/// issuing it again loses and repeats nothing. A call issued again starts its timeout afresh: the
/// socket's timeouts are per call, and `recvmmsg` writes its remaining `timeout` back only when it
/// returns datagrams. So a stop can make a call wait up to one timeout longer than asked, never
/// shorter, as `epoll_wait` with its timeout does here. `connect` issued again goes on waiting for
/// the connection already under way; should its timeout then run out, it fails with `EALREADY`
/// where it would have failed with `EINPROGRESS`: both say the connection is still being made.
const EINTR_ON_STOP: [u64; 22] = [
    232, // epoll_wait
    281, // epoll_pwait
    441, // epoll_pwait2
    65,  // semop
    220, // semtimedop
    128, // rt_sigtimedwait
    208, // io_getevents
    333, // io_pgetevents
    34,  // pause
    43,  // accept
    288, // accept4
    45,  // recvfrom (and recv)
    47,  // recvmsg
    299, // recvmmsg
    42,  // connect
    44,  // sendto (and send)
    46,  // sendmsg
    307, // sendmmsg
    0,   // read (on a socket)
    1,   // write (on a socket)
    19,  // readv (on a socket)
    20,  // writev (on a socket)
];
const EINTR: i64 = 4;

/// When the thread was stopped in a system call that a stop ends with `EINTR` and no signal is
/// waiting to be handled, rewinds it to issue the call again: the program sees neither `EINTR`
/// nor an early return (a wait may last longer than asked). `signal_waiting` is asked only for
/// such a thread (it reads /proc). Returns whether it changed `r`.
pub fn hide_stop_eintr(r: &mut user_regs_struct, signal_waiting: impl FnOnce() -> bool) -> bool {
    // A 32-bit thread's calls go by their i386 numbers.
    let calls: &[u64] = if crate::i386::is_compat(r) { &crate::i386::EINTR_ON_STOP } else { &EINTR_ON_STOP };
    if (r.orig_rax as i64) < 0 || r.rax as i64 != -EINTR || !calls.contains(&r.orig_rax) || signal_waiting() {
        return false;
    }
    r.rax = r.orig_rax;
    r.rip -= 2;
    true
}

/// Where the frame lies in the target.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// Address of `uc` (16-byte aligned); the restorer runs with `rsp` here.
    pub uc: u64,
    /// Lowest address the frame uses; code run on the thread uses the stack below it.
    pub bottom: u64,
    /// Eight bytes of the frame that `rt_sigreturn` does not read (its siginfo's room): where a
    /// function's return value is stored (see `Hijack::call_for_address`).
    pub scratch: u64,
}

/// The XSAVE image `xstate` (as ptrace gives it) as a signal frame holds it, `header` bytes of
/// other FPU state before it (the legacy `fsave` header of a 32-bit frame): for ptrace the
/// software-reserved bytes of the legacy area (464..512) hold XCR0; a signal frame wants them to
/// describe the XSAVE layout instead (struct _fpx_sw_bytes).
pub(crate) fn signal_xsave(xstate: &[u8], header: u64) -> Result<Vec<u8>> {
    if xstate.len() < 576 {
        return Err(Error::Other(format!("FPU state of {} bytes is too short for XSAVE", xstate.len())));
    }
    let xcr0 = u64::from_le_bytes(xstate[464..472].try_into().unwrap_or_default());
    let xstate_size = xstate.len();
    let mut xsave = xstate.to_vec();
    let mut sw = Vec::with_capacity(48);
    sw.extend_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    sw.extend_from_slice(&(xstate_size as u32 + 4 + header as u32).to_le_bytes());
    sw.extend_from_slice(&xcr0.to_le_bytes());
    sw.extend_from_slice(&(xstate_size as u32).to_le_bytes());
    sw.resize(48, 0);
    xsave[464..512].copy_from_slice(&sw);
    Ok(xsave)
}

/// Lays out the frame below `regs.rsp` (and its red zone) and returns its bytes and place.
pub fn build(regs: &user_regs_struct, xstate: &[u8], blocked: u64, restorer: u64) -> Result<(Frame, Vec<u8>)> {
    if crate::i386::is_compat(regs) {
        return crate::i386::build_frame(regs, xstate, blocked, restorer);
    }
    let xsave = signal_xsave(xstate, 0)?;
    let xstate_size = xstate.len();
    let resume = pre_restart(*regs);
    let top = regs.rsp.saturating_sub(RED_ZONE) & !63;
    let fp_len = xstate_size as u64 + 4;
    let fp = (top - fp_len) & !63;
    let uc = (fp - UCONTEXT_SIZE - SIGINFO_SIZE) & !15;
    let bottom = uc - 32;
    let mut img = vec![0u8; (top - bottom) as usize];
    let put = |img: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        let o = (at - bottom) as usize;
        img[o..o + bytes.len()].copy_from_slice(bytes);
    };
    // Return address slot just below uc: the restorer.
    put(&mut img, uc - 8, &restorer.to_le_bytes());
    // struct ucontext
    put(&mut img, uc, &(UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS).to_le_bytes());
    // uc_stack: an invalid ss_flags (3) makes rt_sigreturn leave the alternate stack as it is.
    put(&mut img, uc + 16 + 8, &3u32.to_le_bytes());
    let mc = uc + 40;
    let gregs = [
        resume.r8,
        resume.r9,
        resume.r10,
        resume.r11,
        resume.r12,
        resume.r13,
        resume.r14,
        resume.r15,
        resume.rdi,
        resume.rsi,
        resume.rbp,
        resume.rbx,
        resume.rdx,
        resume.rax,
        resume.rcx,
        resume.rsp,
        resume.rip,
        resume.eflags,
    ];
    for (i, v) in gregs.iter().enumerate() {
        put(&mut img, mc + 8 * i as u64, &v.to_le_bytes());
    }
    let segs = mc + 8 * 18;
    put(&mut img, segs, &(resume.cs as u16).to_le_bytes());
    put(&mut img, segs + 2, &(resume.gs as u16).to_le_bytes());
    put(&mut img, segs + 4, &(resume.fs as u16).to_le_bytes());
    put(&mut img, segs + 6, &(resume.ss as u16).to_le_bytes());
    // err, trapno, oldmask, cr2 stay 0; then the fpstate pointer.
    put(&mut img, segs + 8 + 32, &fp.to_le_bytes());
    put(&mut img, uc + 40 + 256, &blocked.to_le_bytes());
    // The XSAVE area, then MAGIC2 right after it.
    put(&mut img, fp, &xsave);
    put(&mut img, fp + xstate_size as u64, &FP_XSTATE_MAGIC2.to_le_bytes());
    Ok((Frame { uc, bottom, scratch: uc + UCONTEXT_SIZE }, img))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_rules() {
        let mut r = crate::hijack::zero_regs();
        r.orig_rax = 35; // nanosleep
        r.rax = (-ERESTART_RESTARTBLOCK) as u64;
        r.rip = 0x1002;
        let p = pre_restart(r);
        assert_eq!((p.rax, p.rip, p.orig_rax), (35, 0x1000, u64::MAX));
        r.rax = (-ERESTARTSYS) as u64;
        let p = pre_restart(r);
        assert_eq!((p.rax, p.rip), (35, 0x1000));
        r.rax = (-4i64) as u64; // EINTR stays
        assert_eq!(pre_restart(r).rax, (-4i64) as u64);
        r.orig_rax = u64::MAX; // not in a system call
        r.rax = (-ERESTARTSYS) as u64;
        assert_eq!(pre_restart(r).rip, 0x1002);
    }

    #[test]
    fn calls_a_stop_ends_with_eintr_are_issued_again_unless_a_signal_waits() {
        let mut r = crate::hijack::zero_regs();
        r.orig_rax = 45; // recvfrom on a socket with a timeout
        r.rax = (-EINTR) as u64;
        r.rip = 0x1002;
        let mut again = r;
        assert!(hide_stop_eintr(&mut again, || false));
        assert_eq!((again.rax, again.rip), (45, 0x1000));
        let mut mine = r;
        assert!(!hide_stop_eintr(&mut mine, || true), "a signal of the program's own ends it");
        assert_eq!((mine.rax, mine.rip), (r.rax, r.rip));
        let mut restart = r;
        restart.rax = (-ERESTARTSYS) as u64; // without a timeout: the kernel restarts it
        assert!(!hide_stop_eintr(&mut restart, || false));
    }
}
