//! Fault injection for the tests: `PANNUS_TEST_KILL_AT=N` makes pannus SIGKILL itself at the
//! N-th instrumented point, so that the tests can prove a pannus killed at any step never kills
//! the target and leaves a state the next pannus can finish or undo. `PANNUS_TEST_POINTS=1`
//! prints every point reached, to count them. Without these variables a point costs one load.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

static REACHED: AtomicU32 = AtomicU32::new(0);

fn config() -> &'static (Option<u32>, bool) {
    static CONFIG: OnceLock<(Option<u32>, bool)> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let at = std::env::var("PANNUS_TEST_KILL_AT").ok().and_then(|v| v.parse().ok());
        let list = std::env::var_os("PANNUS_TEST_POINTS").is_some();
        (at, list)
    })
}

/// An instrumented point named `label`.
pub fn point(label: &str) {
    let (at, list) = *config();
    if at.is_none() && !list {
        return;
    }
    let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if list {
        eprintln!("pannus: test point {n}: {label}");
    }
    if at == Some(n) {
        eprintln!("pannus: killed at test point {n}: {label}");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}
