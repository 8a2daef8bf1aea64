//! 32-bit x86 (i386) threads under the x86-64 kernel, as pannus borrows them: their system call
//! numbers, the code they are pointed at, and their signal frame. See ARCHITECTURE.md, "32-bit
//! processes".
//!
//! A 64-bit tracer sees such a thread through the 64-bit `user_regs_struct`: `eax`..`esp` and
//! `eip` are the low halves of `rax`..`rsp` and `rip`, `cs` is the kernel's 32-bit user code
//! segment. It enters the kernel through `int $0x80`: number in `eax`, arguments in `ebx`, `ecx`,
//! `edx`, `esi`, `edi`, `ebp`; functions take their arguments on the stack (cdecl).

use crate::error::{Error, Result};
use crate::frame::{self, Frame};
use crate::maps::{Gadgets, Mapping};
use crate::mem::Mem;
use nix::libc::user_regs_struct;

/// The kernel's 32-bit user code segment selector (`__USER32_CS`): how it tells, as pannus
/// does, a thread running 32-bit code.
const USER32_CS: u64 = 0x23;

/// Whether the thread whose registers are `r` runs 32-bit code.
pub(crate) fn is_compat(r: &user_regs_struct) -> bool {
    r.cs == USER32_CS
}

/// i386 system call numbers used by pannus (`arch/x86/entry/syscalls/syscall_32.tbl`).
pub(crate) mod nr {
    pub const CLOSE: i64 = 6;
    pub const MUNMAP: i64 = 91;
    pub const FTRUNCATE: i64 = 93;
    pub const MPROTECT: i64 = 125;
    pub const RT_SIGRETURN: u64 = 173;
    pub const RT_SIGACTION: i64 = 174;
    /// `mmap2`: the offset in pages.
    pub const MMAP2: i64 = 192;
    pub const OPENAT: i64 = 295;
    pub const MEMFD_CREATE: i64 = 356;
}

/// The calls a stop ends with `EINTR` (see `frame::EINTR_ON_STOP`), by their i386 numbers: the
/// socket calls both direct and through `socketcall`, whose first argument names the call.
pub(crate) const EINTR_ON_STOP: [u64; 22] = [
    256, // epoll_wait
    319, // epoll_pwait
    441, // epoll_pwait2
    420, // semtimedop
    117, // ipc (semop, semtimedop)
    177, // rt_sigtimedwait
    247, // io_getevents
    385, // io_pgetevents
    29,  // pause
    364, // accept4
    371, // recvfrom
    372, // recvmsg
    337, // recvmmsg
    362, // connect
    369, // sendto
    370, // sendmsg
    345, // sendmmsg
    102, // socketcall (accept, recv, send, ...)
    3,   // read (on a socket)
    4,   // write (on a socket)
    145, // readv (on a socket)
    146, // writev (on a socket)
];

/// `int $0x80; pop %ebp; pop %edx; pop %ecx; ret`: the end of the vDSO's `__kernel_vsyscall`,
/// in every 32-bit process. Entered at the `int $0x80` it is a system call that then returns
/// through three words of the stack.
const INT80_POPS_RET: [u8; 6] = [0xcd, 0x80, 0x5d, 0x5a, 0x59, 0xc3];
/// How many words [`INT80_POPS_RET`] pops before its `ret`.
pub(crate) const SYSCALL_POPS: u64 = 3;
/// `mov $173, %eax; int $0x80`: the vDSO's `__kernel_rt_sigreturn`, the C library's
/// `__restore_rt`.
const RESTORER: [u8; 7] = [0xb8, 0xad, 0x00, 0x00, 0x00, 0xcd, 0x80];
pub(crate) const RESTORER_LEN: u64 = RESTORER.len() as u64;

/// The gadgets of a 32-bit process: the vDSO first (always mapped, never replaced), then the
/// C library and the loader. Each found is checked in the target's memory.
pub(crate) fn find_gadgets(mem: &Mem, maps: &[Mapping]) -> Option<Gadgets> {
    let rank = |m: &Mapping| match m.path.as_str() {
        "[vdso]" => 0,
        p if p.contains("/libc.so") || p.contains("/ld-linux") => 1,
        _ => 2,
    };
    let mut exec: Vec<&Mapping> = maps.iter().filter(|m| m.exec && m.read && m.end <= 1 << 32).collect();
    exec.sort_by_key(|m| rank(m));
    let checked = |addr: u64, want: &[u8]| mem.read_vec(addr, want.len()).is_ok_and(|b| b == want);
    let (mut syscall_ret, mut restorer) = (None, None);
    for m in exec {
        let bytes = crate::maps::mapping_bytes(mem, m);
        let find = |pat: &[u8]| {
            let mut from = 0;
            while let Some(i) = bytes.get(from..)?.windows(pat.len()).position(|w| w == pat) {
                let addr = m.start + (from + i) as u64;
                if checked(addr, pat) {
                    return Some(addr);
                }
                from += i + 1;
            }
            None
        };
        syscall_ret = syscall_ret.or_else(|| find(&INT80_POPS_RET));
        restorer = restorer.or_else(|| find(&RESTORER));
        if let (Some(syscall_ret), Some(restorer)) = (syscall_ret, restorer) {
            let ret = syscall_ret + INT80_POPS_RET.len() as u64 - 1;
            return Some(Gadgets { syscall_ret, ret, restorer, store: None, compat: true });
        }
    }
    None
}

/// The `int $0x80; pop %ebp; pop %edx; pop %ecx; ret` of the process's vDSO (the kernel's own
/// code, mapped in every 32-bit process), read through its memory; `None` when it has no vDSO
/// (unmapped by the program) or the code is not there.
pub(crate) fn vdso_syscall(mem: &Mem, maps: &[Mapping]) -> Option<u64> {
    let vdso = maps.iter().find(|m| m.path == "[vdso]" && m.exec && m.end <= 1 << 32)?;
    let bytes =
        mem.read_vec(vdso.start, usize::try_from(vdso.end.saturating_sub(vdso.start)).ok()?.min(64 << 10)).ok()?;
    let i = bytes.windows(INT80_POPS_RET.len()).position(|w| w == INT80_POPS_RET)?;
    Some(vdso.start + i as u64)
}

/// Whether `g` (a 32-bit process's) is still what it was found to be; `at(addr, bytes)` reads the
/// target's memory.
pub(crate) fn verify_gadgets(g: &Gadgets, at: impl Fn(u64, &[u8]) -> bool) -> bool {
    at(g.syscall_ret, &INT80_POPS_RET)
        && g.ret == g.syscall_ret + INT80_POPS_RET.len() as u64 - 1
        && at(g.restorer, &RESTORER)
        && g.store.is_none()
}

/// The value a system call returned in `eax`, as the kernel's C result: a negative errno, or
/// the unsigned 32-bit value.
pub(crate) fn syscall_result(rax: u64) -> i64 {
    let v = rax as u32;
    if v > 0xffff_f000 {
        i64::from(v as i32)
    } else {
        i64::from(v)
    }
}

/// Sets the system call registers of `r` for call `nr` with `args`.
pub(crate) fn set_syscall(r: &mut user_regs_struct, nr: i64, args: &[u64]) {
    let a = |i: usize| args.get(i).copied().unwrap_or(0) & 0xffff_ffff;
    r.rax = nr as u64;
    (r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp) = (a(0), a(1), a(2), a(3), a(4), a(5));
}

/// The arguments of a function call, as the words cdecl puts above the return address.
pub(crate) fn call_args(args: &[u64]) -> Vec<u8> {
    args.iter().flat_map(|&a| (a as u32).to_le_bytes()).collect()
}

/// `struct rt_sigframe_ia32` up to its end: `pretcode`, `sig`, `pinfo`, `puc`, `info` (128),
/// `uc` (116), `retcode` (8).
const FRAME_LEN: u64 = 16 + 128 + 116 + 8;
/// Offset of `uc` in the frame, of `uc_mcontext` in `uc`, of `uc_sigmask` in `uc`.
const UC: u64 = 16 + 128;
const MCONTEXT: u64 = 20;
const SIGMASK: u64 = 20 + 88;
/// The legacy `fsave` header before the FXSAVE/XSAVE image of a 32-bit frame's FPU state.
const FSAVE_LEN: u64 = 112;

/// The ia32 signal frame of a thread stopped with `regs` and XSAVE state `xstate`, below its
/// stack pointer (no red zone on i386): what `rt_sigreturn` (173) of a 32-bit thread reads.
/// The restorer runs with `esp` at [`Frame::uc`], the frame's `sig` (its return address
/// `pretcode` popped), 16-byte aligned as at a function's entry plus 4.
pub(crate) fn build_frame(
    regs: &user_regs_struct,
    xstate: &[u8],
    blocked: u64,
    restorer: u64,
) -> Result<(Frame, Vec<u8>)> {
    let xsave = frame::signal_xsave(xstate, FSAVE_LEN)?;
    let xlen = xstate.len() as u64;
    let resume = frame::pre_restart(*regs);
    let top = regs.rsp & 0xffff_fff0;
    let fx = top.checked_sub(xlen + 4).ok_or_else(|| no_stack(regs))? & !63;
    let fsave = fx.checked_sub(FSAVE_LEN).ok_or_else(|| no_stack(regs))?;
    let base = (fsave.checked_sub(FRAME_LEN - 4).ok_or_else(|| no_stack(regs))? & !15).wrapping_sub(4);
    let bottom = base.checked_sub(32).ok_or_else(|| no_stack(regs))?;
    let mut img = vec![0u8; (fx + xlen + 4 - bottom) as usize];
    let put = |img: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        let o = (at - bottom) as usize;
        img[o..o + bytes.len()].copy_from_slice(bytes);
    };
    let put32 = |img: &mut Vec<u8>, at: u64, v: u64| put(img, at, &(v as u32).to_le_bytes());
    put32(&mut img, base, restorer);
    let uc = base + UC;
    put32(&mut img, uc, 1); // UC_FP_XSTATE
                            // uc_stack: an invalid ss_flags (3) makes rt_sigreturn leave the alternate stack as it is.
    put32(&mut img, uc + 8 + 4, 3);
    let mc = uc + MCONTEXT;
    let words = [
        resume.gs,
        resume.fs,
        resume.es,
        resume.ds,
        resume.rdi,
        resume.rsi,
        resume.rbp,
        resume.rsp,
        resume.rbx,
        resume.rdx,
        resume.rcx,
        resume.rax,
        0, // trapno
        0, // err
        resume.rip,
        resume.cs,
        resume.eflags,
        resume.rsp, // sp_at_signal
        resume.ss,
        fsave,
    ];
    for (i, &w) in words.iter().enumerate() {
        put32(&mut img, mc + 4 * i as u64, w);
    }
    put(&mut img, uc + SIGMASK, &blocked.to_le_bytes());
    put(&mut img, fsave, &fsave_header(xstate, regs));
    put(&mut img, fx, &xsave);
    put(&mut img, fx + xlen, &frame::FP_XSTATE_MAGIC2.to_le_bytes());
    Ok((Frame { uc: base + 4, bottom, scratch: base + 16 }, img))
}

fn no_stack(regs: &user_regs_struct) -> Error {
    Error::Other(format!("stack pointer {:#x} leaves no room for a 32-bit signal frame", regs.rsp))
}

/// The legacy x87 state (`struct user_i387_ia32_struct`, then `status` and `magic`) that a
/// 32-bit frame carries before its FXSAVE image, from that image: `rt_sigreturn` folds it back
/// in (the kernel's `convert_to_fxsr`), so it must say what the image says.
fn fsave_header(xstate: &[u8], regs: &user_regs_struct) -> [u8; FSAVE_LEN as usize] {
    let u16_at = |o: usize| u16::from_le_bytes([xstate[o], xstate[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([xstate[o], xstate[o + 1], xstate[o + 2], xstate[o + 3]]);
    let (cwd, swd, abridged) = (u16_at(0), u16_at(2), xstate[4]);
    // Each register the abridged tag marks valid is "valid" (00), the others empty (11).
    let twd = (0..8).fold(0u32, |t, i| if abridged & (1 << i) != 0 { t } else { t | 3 << (2 * i) });
    let mut h = [0u8; FSAVE_LEN as usize];
    let fields =
        [0xffff_0000 | u32::from(cwd), 0xffff_0000 | u32::from(swd), 0xffff_0000 | twd, u32_at(8), regs.cs as u32];
    for (i, f) in fields.iter().enumerate() {
        h[4 * i..4 * i + 4].copy_from_slice(&f.to_le_bytes());
    }
    h[20..24].copy_from_slice(&u32_at(16).to_le_bytes());
    h[24..28].copy_from_slice(&(0xffff_0000 | regs.ds as u32).to_le_bytes());
    for i in 0..8 {
        h[28 + 10 * i..38 + 10 * i].copy_from_slice(&xstate[32 + 16 * i..42 + 16 * i]);
    }
    h[108..110].copy_from_slice(&swd.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> user_regs_struct {
        let mut r = crate::hijack::zero_regs();
        (r.cs, r.ss, r.ds, r.es, r.gs) = (0x23, 0x2b, 0x2b, 0x2b, 0x63);
        (r.rsp, r.rip, r.rax, r.rbx, r.eflags) = (0xffd0_1234, 0x5655_6000, 7, 0xdead_beef, 0x246);
        r.orig_rax = u64::MAX;
        r
    }

    fn word(img: &[u8], at: u64) -> u32 {
        u32::from_le_bytes(img[at as usize..at as usize + 4].try_into().unwrap())
    }

    #[test]
    fn the_frame_is_what_rt_sigreturn_of_a_32_bit_thread_reads() {
        let r = regs();
        let mut xstate = vec![0u8; 832];
        xstate[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        xstate[4] = 0b1000_0001;
        xstate[464..472].copy_from_slice(&7u64.to_le_bytes());
        let (f, img) = build_frame(&r, &xstate, 0x5, 0xf7f0_0610).unwrap();
        let at = |a: u64| a - f.bottom;
        assert_eq!(f.uc % 16, 0, "esp at the restorer, as at a handler's entry plus its return address");
        assert!(f.uc < r.rsp && f.bottom < f.uc);
        let base = f.uc - 4;
        assert_eq!(word(&img, at(base)), 0xf7f0_0610, "pretcode: the restorer");
        let mc = base + UC + MCONTEXT;
        assert_eq!(word(&img, at(mc)), 0x63, "gs");
        assert_eq!(word(&img, at(mc + 28)), 0xffd0_1234, "esp");
        assert_eq!(word(&img, at(mc + 32)), 0xdead_beef, "ebx");
        assert_eq!(word(&img, at(mc + 44)), 7, "eax");
        assert_eq!(word(&img, at(mc + 56)), 0x5655_6000, "eip");
        assert_eq!(word(&img, at(mc + 60)), 0x23, "cs");
        let fsave = u64::from(word(&img, at(mc + 76)));
        assert_eq!((fsave + FSAVE_LEN) % 64, 0, "the XSAVE image is 64-byte aligned");
        assert_eq!(word(&img, at(fsave)), 0xffff_037f, "cwd");
        assert_eq!(word(&img, at(fsave + 8)), 0xffff_3ffc, "registers 0 and 7 valid, the others empty");
        assert_eq!(word(&img, at(base + UC + SIGMASK)), 5, "the blocked mask");
        assert_eq!(word(&img, at(fsave + FSAVE_LEN + 464)), frame::FP_XSTATE_MAGIC1);
        assert_eq!(word(&img, at(fsave + FSAVE_LEN + 832)), frame::FP_XSTATE_MAGIC2);
        assert!(fsave + FSAVE_LEN + 832 + 4 <= r.rsp, "all of it below the stack pointer");
    }

    #[test]
    fn results_and_arguments_are_32_bit() {
        assert_eq!(syscall_result((-22i64) as u64), -22);
        assert_eq!(syscall_result(0xffff_ffea), -22, "EINVAL, zero-extended");
        assert_eq!(syscall_result(0xf7f0_0000), 0xf7f0_0000, "a high address is no error");
        let mut r = regs();
        set_syscall(&mut r, nr::MMAP2, &[0, 4096, 3, 0x22, u64::MAX, 0]);
        assert_eq!((r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp), (192, 0, 4096, 3, 0x22, 0xffff_ffff, 0));
        assert_eq!(call_args(&[1, 0xffff_ffff_f7f0_0000]), vec![1, 0, 0, 0, 0, 0, 0xf0, 0xf7]);
    }
}

/// A real 32-bit process borrowed the way the engine borrows one: system calls, calls, and the
/// thread sent home into the read it was blocked in.
#[cfg(test)]
mod live_support {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::time::Duration;

    /// Echoes lines, after a first line giving the address of `add3(a, b, c)` (= a + b + c) and
    /// of `counter`, which `bump()` increments.
    const ECHO32: &str = r#"
        #include <stdio.h>
        #include <string.h>
        int counter;
        __attribute__((noipa)) int add3(int a, int b, int c) { return a + b + c; }
        __attribute__((noipa)) void bump(int by) { counter += by; }
        int main(void) {
            char line[256];
            setvbuf(stdout, NULL, _IONBF, 0);
            printf("%lx %lx %lx\n", (unsigned long)add3, (unsigned long)bump, (unsigned long)&counter);
            while (fgets(line, sizeof line, stdin)) {
                if (!strcmp(line, "counter\n")) printf("%d\n", counter); else fputs(line, stdout);
            }
            return 0;
        }
    "#;

    pub(super) struct Echo32 {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
        pub pid: i32,
        pub add3: u64,
        pub bump: u64,
        pub counter: u64,
    }

    impl Echo32 {
        pub fn start() -> Echo32 {
            // One build per test: tests run on threads of one process at once.
            static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("pannus-kernel-i386-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let (src, exe) = (dir.join("echo32.c"), dir.join("echo32"));
            std::fs::write(&src, ECHO32).unwrap();
            let out = Command::new("gcc").args(["-m32", "-O2", "-o"]).arg(&exe).arg(&src).output().unwrap();
            assert!(out.status.success(), "gcc -m32: {}", String::from_utf8_lossy(&out.stderr));
            let mut child = Command::new(&exe).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
            let stdin = child.stdin.take().unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut first = String::new();
            stdout.read_line(&mut first).unwrap();
            let a: Vec<u64> = first.split_whitespace().map(|w| u64::from_str_radix(w, 16).unwrap()).collect();
            let pid = child.id() as i32;
            // Blocked in its read of standard input.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while crate::thread_state(pid, pid) != Some('S') {
                assert!(std::time::Instant::now() < deadline, "echo32 never waited for input");
                std::thread::sleep(Duration::from_millis(5));
            }
            Echo32 { child, stdin, stdout, pid, add3: a[0], bump: a[1], counter: a[2] }
        }

        pub fn ask(&mut self, line: &str) -> String {
            writeln!(self.stdin, "{line}").unwrap();
            let mut back = String::new();
            self.stdout.read_line(&mut back).unwrap();
            back.trim_end().to_string()
        }
    }

    impl Drop for Echo32 {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod live {
    use super::live_support::Echo32;
    use crate::maps;
    use crate::{Hijack, Mem, PAGE};
    use nix::sys::mman::{MapFlags, ProtFlags};
    use std::time::Duration;

    #[test]
    fn a_32_bit_thread_runs_system_calls_and_calls_and_goes_home() {
        let mut p = Echo32::start();
        let mem = Mem::open(p.pid).unwrap();
        let maps = maps::read(p.pid).unwrap();
        assert!(maps::find_gadgets(&mem, &maps).is_none_or(|g| !g.compat));
        let g = maps::find_gadgets_i386(&mem, &maps).expect("the vDSO's int $0x80");
        assert!(maps::verify_gadgets(&mem, &g));
        let mut h = Hijack::attach(&mem, p.pid, g).unwrap();
        assert!(h.is_compat());
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let anon = MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS;
        let at = h.mmap(0, 2 * PAGE, rw, anon, None, 0).unwrap();
        assert!(at > 0 && at + 2 * PAGE <= 1 << 32, "{at:#x}");
        mem.write(at, b"pannus\0").unwrap();
        let fd = h.memfd_create(at, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        h.ftruncate(fd, PAGE).unwrap();
        let shared = h.mmap(0, PAGE, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, Some(fd), 0).unwrap();
        let m = maps::read(p.pid).unwrap().into_iter().find(|m| m.contains(shared)).unwrap();
        assert_eq!(m.path, "/memfd:pannus (deleted)");
        h.close(fd).unwrap();
        assert!(matches!(h.close(fd), Err(crate::Error::Syscall { errno: nix::errno::Errno::EBADF, .. })));
        h.mprotect(at, PAGE, ProtFlags::PROT_READ).unwrap();
        assert_eq!(h.signal_handler(libc::SIGPIPE).unwrap().handler, 0, "SIG_DFL");
        let sum = h.call_for_address(p.add3, &[40, 1, 1], Duration::from_secs(5), "add3").unwrap();
        assert_eq!(sum, 42);
        h.call(p.bump, &[5], Duration::from_secs(5), "bump").unwrap();
        h.call(p.bump, &[2], Duration::from_secs(5), "bump").unwrap();
        assert_eq!(mem.read_vec(p.counter, 4).unwrap(), 7u32.to_le_bytes());
        h.munmap(shared, PAGE).unwrap();
        h.munmap(at, 2 * PAGE).unwrap();
        h.release().unwrap();
        // The read it was blocked in goes on: no EINTR, no lost line.
        assert_eq!(p.ask("still there"), "still there");
        assert_eq!(p.ask("counter"), "7");
    }
}

#[cfg(test)]
mod through_the_frame {
    use super::live_support::*;

    /// As if pannus were killed after a system call: the thread goes home through the restorer
    /// and the ia32 frame alone, and its read of standard input is issued again.
    #[test]
    fn a_32_bit_thread_goes_home_through_its_signal_frame_alone() {
        for round in 0..3 {
            let mut p = Echo32::start();
            let mem = crate::Mem::open(p.pid).unwrap();
            let g = crate::maps::find_gadgets_i386(&mem, &crate::maps::read(p.pid).unwrap()).unwrap();
            let mut h = crate::Hijack::attach(&mem, p.pid, g).unwrap();
            let rw = nix::sys::mman::ProtFlags::PROT_READ;
            let anon = nix::sys::mman::MapFlags::MAP_PRIVATE | nix::sys::mman::MapFlags::MAP_ANONYMOUS;
            let at = h.mmap(0, crate::PAGE, rw, anon, None, 0).unwrap();
            if round > 0 {
                h.call(p.bump, &[round], std::time::Duration::from_secs(5), "bump").unwrap();
            }
            h.release_through_frame().unwrap();
            assert_eq!(p.ask("home"), "home", "round {round}");
            assert_eq!(p.ask("counter"), round.to_string());
            assert!(crate::maps::read(p.pid).unwrap().iter().any(|m| m.start == at), "the mapping stays");
        }
    }
}
