//! The stop of every thread against what gets in its way: socket calls that a stop ends with
//! `EINTR` when their socket has a timeout.

mod common;
use common::{Proc, State};
use std::time::{Duration, Instant};

/// Waits until `cond` holds, looking every millisecond, for up to 20 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A file of `/proc/PID/task/TID`, empty when the thread is gone.
fn task_file(pid: i32, tid: i32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{name}")).unwrap_or_default()
}

/// The system call a thread is blocked in, from `/proc/PID/task/TID/syscall`.
fn blocked_in(pid: i32, tid: i32) -> Option<u64> {
    task_file(pid, tid, "syscall").split_whitespace().next()?.parse().ok()
}

fn manifest(state: &State, patch: &str, module: &str, retries: u32) -> std::path::PathBuf {
    let extra = format!("safety:\n  retries: {retries}\n  retry_interval: 10ms\n");
    state.manifest(patch, "stop_target", module, &[("compute", "compute_v2")], &extra)
}

/// The socket calls of the target (tests/fixtures/stop_target.c) and their system call numbers.
const SOCKET_CALLS: [(&str, u64); 10] = [
    ("recvfrom", 45),
    ("recvmsg", 47),
    ("recvmmsg", 299),
    ("read", 0),
    ("accept", 43),
    ("accept4", 288),
    ("connect", 42),
    ("sendto", 44),
    ("sendmsg", 46),
    ("sendmmsg", 307),
];

/// Threads blocked in socket calls whose socket has a timeout (`SO_RCVTIMEO`, `SO_SNDTIMEO`),
/// which a stop ends with `EINTR` (signal(7)), see no `EINTR` and no return through an apply and
/// a rollback: each call is issued again and goes on waiting.
#[test]
fn socket_calls_with_timeouts_see_no_eintr() {
    let state = State::new();
    let mut t = Proc::start("stop_target");
    let listed = t.ask("N");
    let words: Vec<&str> = listed.split(' ').collect();
    let waiting: Vec<(&str, i32, u64)> = words
        .chunks(2)
        .map(|w| {
            let nr = SOCKET_CALLS.iter().find(|(name, _)| *name == w[0]).unwrap().1;
            (w[0], w[1].parse().unwrap(), nr)
        })
        .collect();
    assert_eq!(waiting.len(), SOCKET_CALLS.len(), "{listed}");
    let all_blocked = |t: &Proc| {
        for &(name, tid, nr) in &waiting {
            wait_until(&format!("{name} blocks"), || blocked_in(t.pid, tid) == Some(nr));
        }
    };
    all_blocked(&t);
    let m = manifest(&state, "sockets", "patch_compute.so", 20);
    state.apply(&m, t.pid).ok();
    state.rollback(t.pid, None).ok();
    all_blocked(&t);
    let report = t.ask("n");
    let counts: Vec<&str> = report.split(' ').collect();
    let eintr: Vec<&str> = counts.chunks(4).filter(|c| c[1] != "0").map(|c| c[0]).collect();
    assert!(eintr.is_empty(), "EINTR seen by {eintr:?} (name, EINTRs, other failures, returns): {report}");
    assert!(counts.chunks(4).all(|c| c[2] == "0" && c[3] == "0"), "no call ended: {report}");
}

/// A call issued again after a stop keeps its timeout: a `recvfrom` with a 3 s `SO_RCVTIMEO`,
/// stopped on its way, still times out with `EAGAIN`, not sooner than 3 s, and no later than
/// 3 s after the stop.
#[test]
fn a_socket_timeout_still_runs_out_after_a_stop() {
    let state = State::new();
    let mut t = Proc::start("stop_target");
    let m = manifest(&state, "timeout", "patch_compute.so", 20);
    let t0 = Instant::now();
    let tid: i32 = t.ask("R 3000").parse().unwrap();
    wait_until("recvfrom blocks", || blocked_in(t.pid, tid) == Some(45));
    state.apply(&m, t.pid).ok();
    let stopped_by = t0.elapsed();
    assert!(stopped_by < Duration::from_millis(2500), "the apply took {stopped_by:?}");
    let mut ended = String::new();
    wait_until("recvfrom returns", || {
        ended = t.ask("r");
        ended != "waiting"
    });
    let r: Vec<i64> = ended.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!((r[0], r[1]), (-1, 11), "the call timed out with EAGAIN (ret errno ms): {ended}");
    assert!(r[2] >= 3000, "not sooner than its timeout: {ended}");
    let latest = (stopped_by + Duration::from_millis(3000 + 500)).as_millis() as i64;
    assert!(r[2] <= latest, "no later than its timeout after the stop ({latest} ms): {ended}");
}
