//! The stop of every thread against what gets in its way: a thread no stop reaches (a `vfork`
//! parent waiting for its child), a thread created untraced while the threads are seized, and
//! socket calls that a stop ends with `EINTR` when their socket has a timeout.

mod common;
use common::{Proc, Run, State};
use std::process::{Command, Stdio};
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

/// The state letter of a thread (`t` when stopped by its tracer), `None` when gone.
fn state_of(pid: i32, tid: i32) -> Option<char> {
    let stat = task_file(pid, tid, "stat");
    stat.rsplit_once(") ")?.1.chars().next()
}

fn tracer_of(pid: i32, tid: i32) -> Option<i32> {
    let status = task_file(pid, tid, "status");
    status.lines().find_map(|l| l.strip_prefix("TracerPid:")).and_then(|v| v.trim().parse().ok())
}

/// The system call a thread is blocked in, from `/proc/PID/task/TID/syscall`.
fn blocked_in(pid: i32, tid: i32) -> Option<u64> {
    task_file(pid, tid, "syscall").split_whitespace().next()?.parse().ok()
}

fn threads(pid: i32) -> Vec<i32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// After pannus is gone: no thread of `pid` is traced or stopped.
fn assert_all_let_go(pid: i32) {
    for tid in threads(pid) {
        let (tracer, state) = (tracer_of(pid, tid), state_of(pid, tid));
        assert!(tracer.unwrap_or(0) == 0 && state != Some('t'), "thread {tid}: traced by {tracer:?}, state {state:?}");
    }
}

fn manifest(state: &State, patch: &str, module: &str, retries: u32) -> std::path::PathBuf {
    let extra = format!("safety:\n  retries: {retries}\n  retry_interval: 10ms\n");
    state.manifest(patch, "stop_target", module, &[("compute", "compute_v2")], &extra)
}

/// Applies a patch, with a budget of `retries` attempts 10 ms apart, to a fresh target while one
/// of its threads waits in `vfork` for a child that sleeps `ms`, where no stop reaches it; checks
/// that the other threads were held less than a second. Returns the target, the manifest, that
/// thread and the run of `apply --json`.
fn apply_during_vfork(state: &State, ms: u32, retries: u32) -> (Proc, std::path::PathBuf, i32, Run) {
    let mut t = Proc::start("stop_target");
    assert_eq!(t.ask("C"), "started");
    let tid: i32 = t.ask(&format!("v {ms}")).parse().unwrap();
    wait_until("the vfork parent waits for its child", || state_of(t.pid, tid) == Some('D'));
    let m = manifest(state, "vfork-fix", "patch_compute.so", retries);
    t.ask("g");
    let run = state.pannus(&["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes", "--json"]);
    let held: u64 = t.ask("g").parse().unwrap();
    assert!(held < 1000, "the other threads were held {held} ms (exit {}: {}{})", run.code, run.stdout, run.stderr);
    (t, m, tid, run)
}

/// A thread blocked where no stop reaches it (a `vfork` parent waiting for its child, which
/// sleeps 5 s) holds the other threads only for the stop's timeout, not until it moves: the
/// apply retries without stopping them again, then gives up as busy, naming the thread and its
/// state, and every thread runs on, untraced.
#[test]
fn a_thread_no_stop_reaches_holds_the_others_only_briefly() {
    let state = State::new();
    let (mut t, m, tid, run) = apply_during_vfork(&state, 5000, 20);
    assert_eq!(run.code, 3, "busy: {}{}", run.stdout, run.stderr);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains(&format!("thread {tid} ")) && message.contains("state D"), "{message}");
    assert_all_let_go(t.pid);
    // The thread goes on once its child is gone, and then the patch goes in.
    wait_until("the vfork returned", || t.ask("V") == "1");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 5"), "500");
}

/// With a budget longer than the thread's wait, the apply goes through once the thread moved;
/// meanwhile the other threads were held only briefly.
#[test]
fn an_apply_waits_out_a_vfork_by_retrying() {
    let state = State::new();
    let (mut t, _, _, run) = apply_during_vfork(&state, 2000, 1000);
    let v = run.ok().json();
    // The stop that wrote the jump ended after the vfork's child exited, the earliest moment
    // the vfork could return (the thread itself may be stopped again before it counts the
    // return, so its count is only awaited).
    let made: u64 = t.ask("W").parse().unwrap();
    let stops = v["stops"].as_array().unwrap();
    let last_end = stops.last().and_then(|w| w["end_monotonic_ns"].as_u64()).unwrap();
    assert!(last_end >= made + 2_000_000_000, "the apply went through before the vfork returned: {v}");
    wait_until("the vfork returned", || t.ask("V") == "1");
    for w in stops {
        let ns = w["end_monotonic_ns"].as_u64().unwrap() - w["start_monotonic_ns"].as_u64().unwrap();
        assert!(ns < 1_000_000_000, "a stop of {ns} ns: {v}");
    }
    assert_eq!(t.ask("c 5"), "500");
}

/// The unload's wait for an idle module stops the threads again and again: a thread no stop
/// reaches holds the others only briefly there too, and the module goes once the thread moved
/// and no thread is inside it any more.
#[test]
fn an_unload_waits_out_a_thread_no_stop_reaches() {
    let state = State::new();
    let mut t = Proc::start("stop_target");
    let m = manifest(&state, "linger", "patch_linger.so", 1000);
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 2"), "200");
    assert_eq!(t.ask("C"), "started");
    // A thread sleeps 1.5 s inside the replacement while the patch is rolled back.
    let inside: i32 = t.ask("b 1500").parse().unwrap();
    wait_until("a thread sleeps inside the module", || state_of(t.pid, inside) == Some('S'));
    t.ask("g");
    let pid = t.pid.to_string();
    let run = std::thread::scope(|s| {
        let rollback = s.spawn(|| state.pannus(&["rollback", "--pid", &pid, "--yes", "--json"]));
        // Once the entry is restored, the unload waits for the module to be idle; then a thread
        // starts waiting for a child where no stop reaches it.
        wait_until("the original code answers", || t.ask("c 5") == "6");
        let tid: i32 = t.ask("v 3000").parse().unwrap();
        wait_until("the vfork parent waits for its child", || state_of(t.pid, tid) == Some('D'));
        rollback.join().unwrap()
    });
    let held: u64 = t.ask("g").parse().unwrap();
    assert!(held < 1000, "the other threads were held {held} ms (exit {}: {}{})", run.code, run.stdout, run.stderr);
    run.ok();
    assert_eq!(t.ask("V"), "1", "the unload waited for the vfork to return");
    assert!(!t.maps().contains("patch_linger.so"), "the module is unloaded");
}

/// Runs `pannus ARGS` to its end with `PANNUS_TEST_PAUSE_AT=labels`: at each point where it
/// stops itself, calls `at` with the label and how many pauses came before, then lets it go on.
/// Returns its exit code and standard error.
fn run_pausing(state: &State, args: &[&str], labels: &str, mut at: impl FnMut(&str, usize)) -> (i32, String) {
    use std::io::BufRead;
    let mut pannus = Command::new(env!("CARGO_BIN_EXE_pannus"))
        .args(args)
        .env("PANNUS_STATE_DIR", state.path())
        .env("PANNUS_TEST_PAUSE_AT", labels)
        .env("PANNUS_TEST_POINTS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pannus runs");
    let pid = pannus.id() as i32;
    let mut stderr = String::new();
    let mut paused = 0;
    // Each point is printed before pannus stops there.
    for line in std::io::BufReader::new(pannus.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        stderr.push_str(&line);
        stderr.push('\n');
        let Some(label) = line.strip_prefix("pannus: test point ").and_then(|l| l.split_once(": ")).map(|(_, l)| l)
        else {
            continue;
        };
        if !labels.split(',').any(|l| l == label) {
            continue;
        }
        wait_until("pannus pauses", || state_of(pid, pid) == Some('T'));
        at(label, paused);
        paused += 1;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGCONT).unwrap();
    }
    (pannus.wait().unwrap().code().unwrap_or(-1), stderr)
}

/// The threads of `pid` that run while every thread should be stopped, with their states.
fn running(pid: i32) -> Vec<(i32, Option<char>)> {
    threads(pid)
        .into_iter()
        .map(|tid| (tid, state_of(pid, tid)))
        .filter(|(_, s)| !matches!(s, None | Some('t' | 'Z' | 'X')))
        .collect()
}

/// A thread whose creator was seized after the kernel decided not to trace the new thread, and
/// that appears only after the threads were listed for the last time, is stopped with the rest.
/// The target holds a creation at that instant: its pidfd goes to a page registered with
/// userfaultfd, which the kernel writes between that decision and listing the new thread.
#[test]
fn a_thread_created_untraced_while_the_threads_are_seized_is_stopped_too() {
    let state = State::new();
    let mut t = Proc::start("stop_target");
    let creator: i32 = t.ask("u").parse().unwrap();
    wait_until("the creation waits in clone3", || blocked_in(t.pid, creator) == Some(435));
    let m = manifest(&state, "untraced", "patch_compute.so", 20);
    let args = ["apply", &*m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"];
    let mut seen_running = Vec::new();
    let (code, stderr) = run_pausing(&state, &args, "every thread seized,every thread stopped", |label, _| {
        if label == "every thread seized" {
            // Every thread is seized and runs on: the creation completes now, untraced.
            let created: i32 = t.ask("U").parse().unwrap();
            assert!(created > 0, "clone3 failed: {created}");
            assert_eq!(tracer_of(t.pid, created), Some(0), "the new thread is not traced from its birth");
        } else {
            seen_running.extend(running(t.pid));
        }
    });
    assert!(
        seen_running.is_empty(),
        "threads running while every thread was said stopped (tid, state): {seen_running:?}"
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(t.ask("c 5"), "500");
    assert_all_let_go(t.pid);
}

/// Threads created in a tight loop (each calls the patched function and exits) while pannus
/// applies and rolls back: at every stop, every thread listed is stopped.
#[test]
fn threads_created_in_a_tight_loop_are_all_stopped_at_every_stop() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("T"), "started");
    let m = state.manifest("churn", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let (m, pid) = (m.to_string_lossy().into_owned(), t.pid.to_string());
    let (mut stops, mut seen_running) = (0, Vec::new());
    for _ in 0..10 {
        for args in [&["apply", &*m, "--pid", &pid, "--yes"][..], &["rollback", "--pid", &pid, "--yes"]] {
            let (code, stderr) = run_pausing(&state, args, "every thread stopped", |_, _| {
                stops += 1;
                seen_running.extend(running(t.pid));
            });
            assert_eq!(code, 0, "{stderr}");
        }
    }
    assert!(
        seen_running.is_empty(),
        "threads running while every thread was said stopped (tid, state): {seen_running:?}"
    );
    assert!(stops >= 20, "{stops} stops");
    let r: Vec<i64> = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(r[3], 0, "no short-lived thread saw a wrong answer: {r:?}");
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

/// The nice value of a thread, from `/proc/PID/task/TID/stat` (field 19).
fn nice_of(pid: i32, tid: i32) -> i32 {
    let stat = task_file(pid, tid, "stat");
    let fields = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or_default();
    fields.split_whitespace().nth(16).and_then(|n| n.parse().ok()).expect("a nice value")
}

/// The thread pannus borrows does pannus's work at nice -20 (on CPUs the service keeps busy, each
/// system call it makes for pannus would otherwise wait behind the service's threads for a CPU),
/// and gets its own nice value back when it is let go.
#[test]
fn a_borrowed_thread_works_for_pannus_at_nice_minus_20_and_gets_its_own_nice_back() {
    let state = State::new();
    let mut t = Proc::start("stop_target");
    let renice = Command::new("renice").args(["-n", "7", "-p", &t.pid.to_string()]).output().expect("renice runs");
    assert!(renice.status.success(), "{}", String::from_utf8_lossy(&renice.stderr));
    assert_eq!(nice_of(t.pid, t.pid), 7);
    let m = manifest(&state, "hasten", "patch_compute.so", 20);
    let args = ["apply", &*m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"];
    let mut while_borrowed = Vec::new();
    let (code, stderr) = run_pausing(&state, &args, "system call entered", |_, _| {
        while_borrowed.push(nice_of(t.pid, t.pid));
    });
    assert_eq!(code, 0, "{stderr}");
    assert!(!while_borrowed.is_empty(), "the main thread was borrowed: {stderr}");
    assert!(while_borrowed.iter().all(|&n| n == -20), "nice while borrowed: {while_borrowed:?}");
    assert_eq!(nice_of(t.pid, t.pid), 7, "the thread's own nice value is back");
    assert_eq!(t.ask("c 5"), "500");
    assert_eq!(nice_of(t.pid, t.pid), 7);
    assert_all_let_go(t.pid);
}

/// Another tool (or the program itself) rewrites a function's entry after pannus planned its
/// jump there and before the stop: in the stop, pannus finds bytes other than those it planned
/// from, and writes nothing; the other tool's change stays.
#[test]
fn entry_bytes_changed_after_planning_are_found_in_the_stop() {
    let state = State::new();
    let mut t = Proc::start("stop_target");
    assert_eq!(t.ask("c 5"), "6");
    let m = manifest(&state, "rewritten", "patch_compute.so", 3);
    let args = ["apply", &*m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"];
    let pid = t.pid;
    let (code, stderr) = run_pausing(&state, &args, "entries planned", |_, _| {
        // compute(x) becomes 3x: lea (%rdi,%rdi,2),%eax; ret
        let mut target = pannus::Target::open(pid).unwrap();
        let l = target.find_object(&common::bin("stop_target")).unwrap();
        let at = l.addr(l.object.lookup("compute").unwrap().unwrap().value);
        target.mem.write(at, &[0x8d, 0x04, 0x7f, 0xc3]).unwrap();
    });
    assert_eq!(t.ask("c 5"), "15", "the other tool's change stays (exit {code}): {stderr}");
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("changed since"), "{stderr}");
    assert!(!t.maps().contains("patch_compute.so"), "the module is unloaded");
    assert_all_let_go(t.pid);
}

/// Runs `pannus ARGS`, killing it if it has not finished within a minute (a liveness bound: it
/// must never wait for a thread without end); fails the test then. Returns its exit code and
/// standard error.
fn pannus_within_a_minute(state: &State, args: &[&str]) -> (i32, String) {
    let mut pannus = Command::new(env!("CARGO_BIN_EXE_pannus"))
        .args(args)
        .env("PANNUS_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pannus runs");
    let t0 = Instant::now();
    while pannus.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let finished = pannus.try_wait().unwrap().is_some();
    if !finished {
        let _ = pannus.kill();
    }
    let out = pannus.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(finished, "pannus still waited after a minute: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

/// A process with a seccomp filter whose main thread waits in `vfork` (where no stop reaches
/// it): reading the filter needs that thread stopped, and the pre-flight waits for it only so
/// long, then is busy naming it and its state; the thread is let go once it moves on.
#[test]
fn reading_the_seccomp_filter_of_a_main_thread_in_vfork_is_busy_not_a_hang() {
    let state = State::new();
    let mut t = Proc::start("stop_target");
    assert_eq!(t.ask("F"), "filtered");
    assert_eq!(t.ask("m"), "waiting");
    wait_until("the main thread waits for its child", || state_of(t.pid, t.pid) == Some('D'));
    let m = manifest(&state, "vfork-seccomp", "patch_compute.so", 3);
    let (code, stderr) = pannus_within_a_minute(&state, &["check", &m.to_string_lossy(), "--pid", &t.pid.to_string()]);
    assert_eq!(code, 3, "busy: {stderr}");
    assert!(stderr.contains("seccomp") && stderr.contains(&format!("thread {} (state D", t.pid)), "{stderr}");
    t.send("go");
    assert_eq!(t.line(), "back", "the vfork returned");
    assert_all_let_go(t.pid);
    assert_eq!(t.ask("c 5"), "6");
}

/// An init function that times out while waiting in `vfork` (its child never exits by itself):
/// the thread does not stop when asked, so pannus does not wait for it; it is left to finish the
/// init function on its own, the module it runs in stays mapped, and the error says so. Once
/// the child is gone, the thread goes back to what it was doing.
#[test]
fn an_init_function_stuck_in_vfork_is_left_to_finish_and_its_module_kept() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("vfork-init", "target_pie", "patch_init_vfork.so", &[("compute", "compute_v2")], "");
    let pid = t.pid.to_string();
    let args = ["apply", &m.to_string_lossy(), "--pid", &pid, "--yes", "--init-timeout", "300ms"];
    let (code, stderr) = pannus_within_a_minute(&state, &args);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("did not come back") && stderr.contains("module kept mapped"), "{stderr}");
    assert!(t.maps().contains("patch_init_vfork.so"), "kept mapped");
    let children = task_file(t.pid, t.pid, "children");
    let child: i32 = children.split_whitespace().next().and_then(|c| c.parse().ok()).expect("the init's vfork child");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_eq!(t.ask("c 5"), "6", "the thread came back home once its init function returned");
    assert_all_let_go(t.pid);
    let st = state.status(t.pid);
    assert_eq!(st["patches"][0]["state"], "rolled-back", "{st}");
    state.rollback(t.pid, None).ok();
    assert!(!t.maps().contains("patch_init_vfork.so"), "a later rollback unloads the module");
    assert_eq!(t.ask("c 5"), "6");
}

/// The main thread waits in `vfork` for its child, where no stop reaches it (the child waits
/// for a line on stdin). Code pannus runs in the target needs a borrowed thread and the apply a
/// stop of every thread: the apply waits for the main thread only so long, then is busy, naming
/// it and its state, instead of waiting for it forever; the target runs its old code.
#[test]
fn a_main_thread_waiting_in_vfork_makes_the_apply_busy_not_hang() {
    let state = State::new();
    let mut t = Proc::start("stop_target");
    assert_eq!(t.ask("C"), "started", "another thread, napping");
    assert_eq!(t.ask("m"), "waiting");
    wait_until("the main thread waits for its child", || state_of(t.pid, t.pid) == Some('D'));
    let m = manifest(&state, "vfork-main", "patch_compute.so", 3);
    let (code, stderr) =
        pannus_within_a_minute(&state, &["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"]);
    assert_eq!(code, 3, "busy: {stderr}");
    assert!(stderr.contains(&format!("thread {} (state D", t.pid)), "names the thread and its state: {stderr}");
    assert_all_let_go(t.pid);
    t.send("go");
    assert_eq!(t.line(), "back", "the vfork returned");
    assert_eq!(t.ask("c 5"), "6", "untouched");
    // The module's init ran, and no stop could look at the main thread to prove nothing leads
    // into the module: it stays mapped, and a rollback unloads it once the thread has moved on.
    assert!(stderr.contains("module kept mapped"), "{stderr}");
    state.rollback(t.pid, None).ok();
    assert!(!t.maps().contains("patch_compute.so"), "unloaded at last");
}
