use nix::libc;
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
        }
    }
}

/// Moves process `pid` (a helper pannus just started) to `SCHED_IDLE`: it then runs only on a
/// CPU nobody else wants, so that what it does never delays a thread of the service waking up.
/// Returns whether it took effect.
pub fn background(pid: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the `sched_param` passed by valid pointer; `pid` names a
    // process, and a wrong one only makes the call fail.
    unsafe { libc::sched_setscheduler(pid, libc::SCHED_IDLE, &param) == 0 }
}

/// Moves the calling thread from `SCHED_IDLE` (see [`background`]) back to the normal
/// policy (`SCHED_OTHER`, its nice value unchanged) before it does work that has to happen on
/// time. A thread under any other policy is left as it is. Returns whether it now runs at a
/// policy other than `SCHED_IDLE`.
pub fn foreground() -> bool {
    // SAFETY: sched_getscheduler on pid 0 (the calling thread) only reads its policy.
    if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_IDLE {
        return true;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread reads the `sched_param` passed by valid
    // pointer.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0 }
}
