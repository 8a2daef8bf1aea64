//! A pannus killed at any instant never kills the target: the target keeps answering with the
//! old or the new function only, and a later pannus sees the state left and undoes it. Also:
//! init functions that crash or hang, and a target that exits mid-stage.

mod common;
use common::{Proc, State};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs pannus with the test kill point `at` (0: none); returns (exit code or None when killed,
/// stderr).
fn pannus_killed_at(state: &State, at: u32, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pannus"));
    cmd.args(args).env("PANNUS_STATE_DIR", state.path()).stdin(Stdio::null());
    if at > 0 {
        cmd.env("PANNUS_TEST_KILL_AT", at.to_string());
    } else {
        cmd.env("PANNUS_TEST_POINTS", "1");
    }
    let out = cmd.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn points(stderr: &str) -> u32 {
    stderr.lines().filter(|l| l.starts_with("pannus: test point ")).count() as u32
}

/// The target answers with the old or the new function, and its workers saw no wrong answer.
fn healthy(t: &mut Proc) -> String {
    assert!(t.alive(), "the target is alive");
    let a = t.ask("c 5");
    assert!(a == "6" || a == "500", "only the old or the new function answers: {a}");
    let r: Vec<i64> = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(r[3], 0, "no worker saw a wrong answer: {r:?}");
    a
}

/// After any kill, a plain `rollback` (from whatever state was left) brings the target back.
fn undo(state: &State, t: &mut Proc) {
    let r = state.rollback(t.pid, None);
    assert!(r.code == 0 || (r.code == 4 && r.stderr.contains("no patch applied")), "rollback after a kill: {r:?}");
    assert_eq!(t.ask("c 5"), "6");
    let st = state.status(t.pid);
    for p in st["patches"].as_array().unwrap() {
        assert_eq!(p["state"], "rolled-back", "{st}");
    }
    assert!(!t.maps().contains("patch_compute.so"), "the module is unmapped");
}

#[test]
fn killed_at_every_step_of_apply_rollback_and_commit() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("w"), "started"); // four busy worker threads
    let m = state.manifest("kill-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let (m_s, pid) = (m.to_string_lossy().into_owned(), t.pid.to_string());
    let apply = ["apply", &m_s, "--pid", &pid, "--yes", "--wait"];
    let rollback = ["rollback", "--pid", &pid, "--yes"];
    let commit = ["commit", "--pid", &pid, "kill-fix"];

    // How many points each command passes.
    let (code, err) = pannus_killed_at(&state, 0, &["apply", &m_s, "--pid", &pid, "--yes"]);
    assert_eq!(code, Some(0), "{err}");
    let apply_points = points(&err);
    let (code, err) = pannus_killed_at(&state, 0, &commit);
    assert_eq!(code, Some(0), "{err}");
    let commit_points = points(&err);
    let (code, err) = pannus_killed_at(&state, 0, &rollback);
    assert_eq!(code, Some(0), "{err}");
    let rollback_points = points(&err);
    assert!(apply_points > 20 && rollback_points > 5, "points: apply {apply_points}, rollback {rollback_points}");
    let _ = apply;

    let mut killed = 0;
    for at in 1..=apply_points {
        let (code, err) = pannus_killed_at(&state, at, &["apply", &m_s, "--pid", &pid, "--yes"]);
        killed += u32::from(code.is_none());
        assert!(code.is_none() || code == Some(0), "apply killed at {at}: {code:?} {err}");
        healthy(&mut t);
        undo(&state, &mut t);
    }
    for at in 1..=rollback_points {
        state.apply(&m, t.pid).ok();
        let (code, err) = pannus_killed_at(&state, at, &rollback);
        killed += u32::from(code.is_none());
        assert!(code.is_none() || code == Some(0), "rollback killed at {at}: {code:?} {err}");
        healthy(&mut t);
        undo(&state, &mut t);
    }
    for at in 1..=commit_points {
        state.apply(&m, t.pid).ok();
        let (code, _) = pannus_killed_at(&state, at, &commit);
        killed += u32::from(code.is_none());
        assert_eq!(healthy(&mut t), "500");
        undo(&state, &mut t);
    }
    // The first apply also creates the registry, so later applies pass fewer points.
    assert!(killed >= (apply_points + rollback_points) / 2, "pannus was really killed ({killed} times)");
    healthy(&mut t);
}

#[test]
fn killed_at_random_moments() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("w"), "started");
    let m = state.manifest("rnd-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let (m_s, pid) = (m.to_string_lossy().into_owned(), t.pid.to_string());
    // A cheap deterministic spread of delays over the length of an apply or rollback.
    for i in 0..24u64 {
        let delay = Duration::from_micros((i * 7919) % 12_000);
        let args: Vec<&str> = if i % 2 == 0 {
            vec!["apply", &m_s, "--pid", &pid, "--yes"]
        } else {
            vec!["rollback", "--pid", &pid, "--yes"]
        };
        if i % 2 == 1 {
            state.apply(&m, t.pid).ok();
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_pannus"))
            .args(&args)
            .env("PANNUS_STATE_DIR", state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        healthy(&mut t);
        undo(&state, &mut t);
    }
}

#[test]
fn init_that_crashes_is_caught_and_undone() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let maps = t.maps();
    let m = state.manifest("crash-fix", "target_pie", "patch_init_crash.so", &[("compute", "compute_crash")], "");
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("stage 3 (init)") && r.stderr.contains("SIGSEGV"), "{}", r.stderr);
    assert!(r.stderr.contains("undone"), "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "6");
    assert_eq!(t.maps(), maps);
}

#[test]
fn init_that_never_returns_is_stopped_at_the_timeout() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let maps = t.maps();
    let m = state.manifest("hang-fix", "target_pie", "patch_init_hang.so", &[("compute", "compute_hang")], "");
    let start = Instant::now();
    let r =
        state.pannus(&["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes", "--init-timeout", "300ms"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("did not finish within 300ms"), "{}", r.stderr);
    assert!(start.elapsed() < Duration::from_secs(10));
    // The thread was taken back from the endless loop: it answers again.
    assert_eq!(t.ask("c 5"), "6");
    assert_eq!(t.maps(), maps);
}

#[test]
fn target_that_exits_mid_stage_is_reported_without_hanging() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("slow-fix", "target_pie", "patch_init_slow.so", &[("compute", "compute_slow")], "");
    let child = Command::new(env!("CARGO_BIN_EXE_pannus"))
        .args(["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"])
        .env("PANNUS_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(t.pid), nix::sys::signal::Signal::SIGKILL);
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5), "pannus did not hang");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("exited") || err.contains("killed"), "{err}");
    assert!(!t.alive());
}

#[test]
fn threads_blocked_in_syscalls_see_no_eintr_nor_early_return() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("W"), "started"); // two threads in epoll_wait loops
    assert_eq!(t.ask("w"), "started"); // four busy threads
    let m = state.manifest("eintr-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    for _ in 0..5 {
        state.apply(&m, t.pid).ok();
        state.rollback(t.pid, None).ok();
    }
    // The main thread waits in epoll_wait while every stage borrows it.
    t.send("e 1500");
    std::thread::sleep(Duration::from_millis(100));
    state.apply(&m, t.pid).ok();
    state.rollback(t.pid, None).ok();
    let answer = t.line();
    let parts: Vec<i64> = answer.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(parts[..2], [0, 0], "epoll_wait timed out normally, no EINTR: {answer} (ret errno ms)");
    assert!(parts[2] >= 1500, "no early return: {answer}");
    let r: Vec<i64> = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(r[4], 0, "no epoll_wait in the waiting threads saw EINTR: {r:?}");
    assert_eq!(r[3], 0, "no wrong answer: {r:?}");
}

#[test]
fn signals_to_the_borrowed_thread_are_neither_lost_nor_reordered() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("Q"), "started"); // real-time signals 1, 2, 3... to the main thread
    let m = state.manifest("sig-fix", "target_pie", "patch_init.so", &[("compute", "compute_init")], "");
    for _ in 0..10 {
        state.apply(&m, t.pid).ok();
        state.rollback(t.pid, None).ok();
    }
    let r: Vec<i64> = t.ask("U").split(' ').map(|x| x.parse().unwrap()).collect();
    assert!(r[0] > 100, "signals were sent throughout: {r:?}");
    assert_eq!(r[1], r[0], "every signal sent was received (sent, received, out of order): {r:?}");
    assert_eq!(r[2], 0, "none out of order: {r:?}");
}

#[test]
fn threads_created_and_exiting_during_attach_and_a_thread_inside_a_signal_handler() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("T"), "started"); // threads born and dying all the time
    assert_eq!(t.ask("H"), "started"); // a thread living inside a signal handler
    let m = state.manifest("churn-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let before: Vec<i64> = t.ask("k").split(' ').map(|x| x.parse().unwrap()).collect();
    for _ in 0..10 {
        state.apply(&m, t.pid).ok();
        state.rollback(t.pid, None).ok();
    }
    std::thread::sleep(Duration::from_millis(50));
    let after: Vec<i64> = t.ask("k").split(' ').map(|x| x.parse().unwrap()).collect();
    assert!(after[0] > before[0], "threads kept being created: {before:?} -> {after:?}");
    assert!(after[1] > before[1], "the thread in the handler kept running: {before:?} -> {after:?}");
    let r: Vec<i64> = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(r[3], 0, "no short-lived thread saw a wrong answer: {r:?}");
}

#[test]
fn a_second_pannus_waits_or_is_refused_and_a_killed_ones_lock_is_stale() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("lock-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    // Another pannus holds the process.
    let held = pannus::ProcessLock::acquire(state.path(), t.pid, Duration::ZERO).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pannus"))
        .args(["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"])
        .env("PANNUS_STATE_DIR", state.path())
        .env("PANNUS_LOCK_WAIT", "200ms")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("another pannus") && err.contains(&format!("process {}", t.pid)), "{err}");
    assert_eq!(t.ask("c 5"), "6");
    drop(held);
    // A pannus killed while holding the lock (here: in the middle of a 3-second init function,
    // which the thread then finishes on its own) leaves no lock behind.
    let hang = state.manifest("hang-fix", "target_pie", "patch_init_slow.so", &[("compute", "compute_slow")], "");
    let mut stuck = Command::new(env!("CARGO_BIN_EXE_pannus"))
        .args(["apply", &hang.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes", "--init-timeout", "60s"])
        .env("PANNUS_STATE_DIR", state.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    stuck.kill().unwrap();
    stuck.wait().unwrap();
    let start = Instant::now();
    state.apply(&m, t.pid).ok();
    assert!(start.elapsed() < Duration::from_secs(5), "the dead pannus's lock did not hold us up");
    assert_eq!(t.ask("c 5"), "500");
    // The killed one's half-applied patch is visible and can be undone.
    let st = state.status(t.pid);
    assert!(st["patches"].as_array().unwrap().iter().any(|p| p["patch"] == "hang-fix"), "{st}");
    state.rollback(t.pid, Some("lock-fix")).ok();
    state.rollback(t.pid, Some("hang-fix")).ok();
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn a_futex_wait_is_neither_cut_short_nor_interrupted() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("futex-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    t.send("f 1500"); // pthread_cond_timedwait: a futex wait with a deadline
    std::thread::sleep(Duration::from_millis(100));
    state.apply(&m, t.pid).ok();
    state.rollback(t.pid, None).ok();
    let answer = t.line();
    let parts: Vec<i64> = answer.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(parts[0], 110, "the wait ended by its timeout (ETIMEDOUT), nothing else: {answer}");
    assert!(parts[1] >= 1490, "not cut short: {answer}");
}
