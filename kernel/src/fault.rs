//! Fault injection for the tests: `PANNUS_TEST_KILL_AT=N` makes pannus SIGKILL itself at the
//! N-th instrumented point, so that the tests can prove a pannus killed at any step never kills
//! the target and leaves a state the next pannus can finish or undo. `PANNUS_TEST_POINTS=1`
//! prints every point reached, to count them. `PANNUS_TEST_PAUSE_AT=LABEL[,LABEL...]` makes
//! pannus stop itself (SIGSTOP) each time it reaches a point of one of those labels, so that a
//! test can look at the target in that state before it lets pannus go on (SIGCONT). Without
//! these variables a point costs one load.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

static REACHED: AtomicU32 = AtomicU32::new(0);

struct Config {
    kill_at: Option<u32>,
    list: bool,
    pause_at: Vec<String>,
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| Config {
        kill_at: std::env::var("PANNUS_TEST_KILL_AT").ok().and_then(|v| v.parse().ok()),
        list: std::env::var_os("PANNUS_TEST_POINTS").is_some(),
        pause_at: std::env::var("PANNUS_TEST_PAUSE_AT")
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

/// An instrumented point named `label`.
pub fn point(label: &str) {
    let c = config();
    if c.kill_at.is_none() && !c.list && c.pause_at.is_empty() {
        return;
    }
    let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if c.list {
        eprintln!("pannus: test point {n}: {label}");
    }
    let me = nix::unistd::getpid();
    if c.kill_at == Some(n) {
        eprintln!("pannus: killed at test point {n}: {label}");
        let _ = nix::sys::signal::kill(me, nix::sys::signal::Signal::SIGKILL);
    }
    if c.pause_at.iter().any(|l| l == label) {
        let _ = nix::sys::signal::kill(me, nix::sys::signal::Signal::SIGSTOP);
    }
}
