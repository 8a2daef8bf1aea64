//! Ctrl-C, SIGTERM and SIGHUP (a dropped SSH session) while a command changes a process: each
//! means "no". The signal only sets a flag; the command looks at it at each prompt and between
//! stages, so a stage under way (a stop of every thread above all) is never cut short: it
//! finishes, then everything done so far is undone the way a "no" undoes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

static RECEIVED: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// From here on, SIGINT, SIGTERM and SIGHUP no longer end pannus: they are noted, for
/// [`received`]. (Their handlers restart interrupted system calls, so the work under way goes
/// on undisturbed.)
pub fn catch() {
    let flag = RECEIVED.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // A signal that cannot be caught keeps its default action: it ends pannus, which a
        // later pannus can finish or undo (see README, "Guarantees").
        let _ = signal_hook::flag::register_usize(sig, Arc::clone(flag), sig as usize);
    }
}

/// The first of those signals received since [`catch`], by name.
pub fn received() -> Option<&'static str> {
    match RECEIVED.get()?.load(Ordering::SeqCst) as i32 {
        0 => None,
        SIGINT => Some("SIGINT (Ctrl-C)"),
        SIGTERM => Some("SIGTERM"),
        SIGHUP => Some("SIGHUP (the terminal hung up)"),
        _ => Some("a signal"),
    }
}
