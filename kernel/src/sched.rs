use nix::libc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether [`short_slice`] took effect, so that [`RealtimeGuard`] puts it back.
static SHORT_SLICE: AtomicBool = AtomicBool::new(false);

/// The fair-scheduling slice pannus asks for: 100 µs, the kernel's shortest.
const SLICE_NS: u64 = 100_000;

/// `struct sched_attr` (SCHED_ATTR_SIZE_VER1).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Asks the kernel (6.12 and later: EEVDF custom slices) to run the calling thread, and the
/// threads it starts, in slices of 100 µs instead of the default (about 3 ms). pannus keeps its
/// fair share of the CPUs, but a thread of the service that wakes up while pannus works, with
/// every CPU busy, waits for a CPU at most that long instead of a whole slice. Returns whether it
/// took effect (older kernels ignore it).
pub fn short_slice() -> bool {
    let ok = set_fair(SLICE_NS);
    SHORT_SLICE.store(ok, Ordering::Relaxed);
    ok
}

fn set_fair(runtime: u64) -> bool {
    // SAFETY: getpriority only reads its arguments.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: sched_setattr reads `attr.size` bytes from the valid, initialised struct above
    // (the kernel's sched_attr, version 1, 56 bytes) and changes the calling thread (pid 0).
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) == 0 }
}

/// Raises the calling thread to `SCHED_FIFO` for the stop-the-world window and restores its
/// policy when dropped. On a small machine the stop is dominated by the scheduler: each resumed
/// thread preempts the patcher, so running the window at real-time priority shortens the time the
/// target is stopped by an order of magnitude. Without the privilege it does nothing.
pub struct RealtimeGuard {
    saved: Option<(libc::c_int, libc::sched_param)>,
}

impl RealtimeGuard {
    pub fn raise() -> RealtimeGuard {
        // SAFETY: sched_getscheduler/sched_getparam/sched_setscheduler on pid 0 (the calling
        // thread) only read or write the `sched_param` we pass by valid pointer.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut old = libc::sched_param { sched_priority: 0 };
            if policy < 0 || libc::sched_getparam(0, &mut old) != 0 {
                return RealtimeGuard { saved: None };
            }
            let new = libc::sched_param { sched_priority: 50 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &new) != 0 {
                return RealtimeGuard { saved: None };
            }
            RealtimeGuard { saved: Some((policy, old)) }
        }
    }
}

impl Drop for RealtimeGuard {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.saved {
            // SAFETY: as above; `param` is a valid sched_param saved by `raise`.
            unsafe {
                libc::sched_setscheduler(0, policy, &param);
            }
            // Changing the policy reset the slice to the default.
            if policy == libc::SCHED_OTHER && SHORT_SLICE.load(Ordering::Relaxed) {
                set_fair(SLICE_NS);
            }
        }
    }
}

/// Moves process `pid` (a helper pannus just started) to `SCHED_IDLE`: it then runs only on a
/// CPU nobody else wants, so its start-up (loading, initialising) never delays a thread of the
/// service waking up. Returns whether it took effect.
pub fn background(pid: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the `sched_param` passed by valid pointer; `pid` names a
    // process, and a wrong one only makes the call fail.
    unsafe { libc::sched_setscheduler(pid, libc::SCHED_IDLE, &param) == 0 }
}

/// Moves the calling thread back to the normal policy (`SCHED_OTHER`, its nice value unchanged,
/// in short slices: see [`short_slice`]), from [`background`], before it does work that has to
/// happen on time.
pub fn foreground() -> bool {
    short_slice()
}
