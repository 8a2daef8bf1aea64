//! Safe points for code pannus makes the target run (init and fini functions, ifunc resolvers,
//! frame registration, `dlopen` and `dlclose`): a borrowed thread runs that code on top of
//! whatever it was doing, signal-handler style, so it must not be inside the C library's
//! allocator, its loader or another of its non-reentrant internals (the code it runs would take
//! the same lock again and deadlock, or corrupt what was half done). Each candidate thread is
//! stopped alone and its stack unwound; the first one found at a safe point is borrowed.

use super::session::thread_alive;
use super::Session;
use crate::error::{Error, Result};
use crate::unwind::Unwinder;
use pannus_kernel::Hijack;
use std::time::{Duration, Instant};

/// How long to look for a thread at a safe point before giving up as busy: long enough for a
/// thread to finish what a killed pannus left it running.
const SAFE_POINT_WAIT: Duration = Duration::from_secs(10);

/// How much of a thread's stack is read to unwind it.
const STACK_READ: usize = 256 << 10;

/// Functions of the C library and the loader that hold a lock or state that code run on top of
/// them would need again (prefixes of their names).
const UNSAFE: &[&str] = &[
    "malloc",
    "free",
    "calloc",
    "realloc",
    "reallocarray",
    "aligned_alloc",
    "memalign",
    "posix_memalign",
    "valloc",
    "pvalloc",
    "__libc_malloc",
    "__libc_free",
    "__libc_calloc",
    "__libc_realloc",
    "__libc_memalign",
    "__malloc",
    "_int_",
    "sysmalloc",
    "systrim",
    "tcache",
    "arena_",
    "_dl_",
    "dl_",
    "__dl",
    "dlopen",
    "dlclose",
    "dlsym",
    "dlerror",
    "__libc_dl",
    "__run_exit_handlers",
    "__cxa_finalize",
    "__cxa_atexit",
    "__new_exitfn",
    "exit",
    "fork",
    "__libc_fork",
    "_Fork",
    "__run_fork_handlers",
    "__pthread_create",
    "pthread_create",
    "__nptl_",
];

/// Whether an object is the C library or the dynamic loader (by its file name).
fn is_libc(file: &str) -> bool {
    file.starts_with("libc.so")
        || file.starts_with("libc-")
        || file.starts_with("ld-linux")
        || file.starts_with("ld-musl")
}

/// Why a thread stopped with this backtrace is not at a safe point, if it is not. `frames` are
/// (function, object file) of each frame, innermost first; `in_syscall` whether the thread was
/// stopped in a system call.
pub(super) fn unsafe_because(
    frames: &[(Option<&str>, Option<&str>)],
    complete: bool,
    in_syscall: bool,
) -> Option<String> {
    if !complete {
        return Some("its stack cannot be unwound to its end".into());
    }
    if let Some((f, Some(file))) = frames.first() {
        if is_libc(file) && !in_syscall {
            return Some(format!("it is running inside {} ({file})", f.unwrap_or("?")));
        }
    }
    frames.iter().find_map(|&(f, file)| {
        let (f, file) = (f?, file?);
        (is_libc(file) && UNSAFE.iter().any(|u| f.starts_with(u))).then(|| format!("it is inside {f} ({file})"))
    })
}

impl Session<'_> {
    /// Borrows a thread of the target at a safe point for running code (see the module's
    /// documentation): the main thread first, then the others. When none is, tries again for a
    /// while, then is busy, saying where each thread was.
    pub(super) fn hijack_for_code(&mut self) -> Result<Hijack<'_>> {
        let gadgets = self.gadgets()?;
        if self.unwinder.is_none() {
            self.unwinder = Some(Unwinder::new(&mut self.target));
        }
        let pid = self.target.pid;
        let deadline = Instant::now() + SAFE_POINT_WAIT;
        loop {
            let mut tids: Vec<i32> =
                pannus_kernel::list_threads(pid)?.into_iter().filter(|&t| thread_alive(pid, t)).collect();
            tids.sort_by_key(|&t| (t != pid, t));
            let mut why = Vec::new();
            for tid in tids {
                let h = match Hijack::attach(&self.target.mem, tid, gadgets) {
                    Ok(h) => h,
                    Err(e) => {
                        why.push(format!("thread {tid}: {e}"));
                        continue;
                    }
                };
                if let Err(e) = h.room_for_calls() {
                    why.push(format!("thread {tid}: {e}"));
                    h.release()?;
                    continue;
                }
                let r = *h.regs();
                let len = self.target.stack_extent(&r, STACK_READ);
                let stack = self.target.mem.read_partial(r.rsp, len);
                let Some(unwinder) = self.unwinder.as_mut() else { break };
                let bt = unwinder.backtrace(&self.target.mem, r.rip, r.rsp, r.rbp, &stack);
                let frames: Vec<(Option<&str>, Option<&str>)> =
                    bt.code_addresses().map(|a| unwinder.symbol(a)).collect();
                let in_syscall = r.orig_rax != u64::MAX;
                match unsafe_because(&frames, bt.complete, in_syscall) {
                    None => return Ok(h),
                    Some(reason) => {
                        why.push(format!("thread {tid}: {reason}"));
                        h.release()?;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::busy(format!(
                    "no thread of process {pid} is at a safe point to run code in it: {}",
                    why.join("; ")
                ))
                .hint(
                    "pannus waits for a thread outside the C library's allocator and loader; retry at a quieter moment",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unsafe_because;

    const LIBC: Option<&str> = Some("libc.so.6");
    const APP: Option<&str> = Some("service");

    #[test]
    fn a_thread_blocked_in_a_system_call_from_application_code_is_safe() {
        let frames = [
            (Some("__GI___libc_read"), LIBC),
            (Some("_IO_file_underflow"), LIBC),
            (Some("fgets"), LIBC),
            (Some("main"), APP),
            (Some("__libc_start_call_main"), LIBC),
        ];
        assert_eq!(unsafe_because(&frames, true, true), None);
        let frames = [
            (Some("clock_nanosleep"), LIBC),
            (Some("usleep"), LIBC),
            (Some("parked"), APP),
            (Some("start_thread"), LIBC),
        ];
        assert_eq!(unsafe_because(&frames, true, true), None);
        assert_eq!(unsafe_because(&[(Some("spin"), APP), (Some("start_thread"), LIBC)], true, false), None);
    }

    #[test]
    fn a_thread_inside_the_allocator_or_the_loader_is_not() {
        let frames = [(Some("_int_free"), LIBC), (Some("main"), APP)];
        assert!(unsafe_because(&frames, true, false).unwrap().contains("_int_free"));
        let frames = [(Some("__lll_lock_wait_private"), LIBC), (Some("malloc"), LIBC), (Some("main"), APP)];
        assert!(unsafe_because(&frames, true, true).unwrap().contains("inside malloc"), "blocked on the arena lock");
        let frames = [
            (Some("__GI___mmap64"), LIBC),
            (Some("_dl_map_object"), Some("ld-linux-x86-64.so.2")),
            (Some("main"), APP),
        ];
        assert!(unsafe_because(&frames, true, true).unwrap().contains("_dl_map_object"));
        let frames = [(Some("memcpy"), LIBC), (Some("main"), APP)];
        assert!(unsafe_because(&frames, true, false).unwrap().contains("running inside memcpy"));
        assert!(unsafe_because(&[(Some("main"), APP)], false, true).unwrap().contains("cannot be unwound"));
        // An application function with such a name is the application's own.
        assert_eq!(unsafe_because(&[(Some("free_list"), APP), (Some("main"), APP)], true, false), None);
    }
}
