//! The four stages against real processes: patch, observe the target's behaviour change,
//! roll back, observe it come back.

mod common;
use common::{code_bytes, Proc, State};

fn states(st: &serde_json::Value) -> Vec<(String, String)> {
    st["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["patch"].as_str().unwrap().to_string(), p["state"].as_str().unwrap().to_string()))
        .collect()
}

fn apply_and_rollback(object: &str) {
    let state = State::new();
    let mut t = Proc::start(object);
    assert_eq!(t.ask("c 5"), "6");
    let before = code_bytes(t.pid, object, "compute");
    let m = state.manifest("compute-fix", object, "patch_compute.so", &[("compute", "compute_v2")], "");
    let run = state.apply(&m, t.pid).ok();
    assert!(run.stdout.contains("stage 4 (activate)"), "{}", run.stdout);
    assert_eq!(t.ask("c 5"), "500");
    assert_eq!(t.ask("c 7"), "700");
    assert!(t.maps().contains("patch_compute.so"), "the module is recognisable in /proc/PID/maps");

    // A fresh pannus reads the state from the process.
    let st = state.status(t.pid);
    assert_eq!(states(&st), vec![("compute-fix".into(), "trial".into())]);
    let f = &st["patches"][0]["functions"][0];
    assert_eq!(f["target"], "compute");
    assert_eq!(f["replacement"], "compute_v2");
    assert!(f["address"].as_str().unwrap().starts_with("0x"));
    assert!(st["patches"][0]["trial_deadline"].is_string());

    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");
    assert_eq!(code_bytes(t.pid, object, "compute"), before, "original bytes restored");
    assert!(!t.maps().contains("patch_compute.so"), "the module is unloaded");
    assert_eq!(states(&state.status(t.pid)), vec![("compute-fix".into(), "rolled-back".into())]);
}

#[test]
fn pie_executable() {
    apply_and_rollback("target_pie");
}

#[test]
fn non_pie_executable() {
    apply_and_rollback("target_nopie");
}

#[test]
fn function_in_a_shared_library() {
    let state = State::new();
    let mut t = Proc::start("target_lib");
    assert_eq!(t.ask("l 5"), "15");
    let m = state.manifest("lib-fix", "libtarget.so", "patch_lib.so", &[("lib_compute", "lib_compute_v2")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("l 5"), "-5");
    assert_eq!(t.ask("c 5"), "6", "the executable is untouched");
    state.rollback(t.pid, Some("lib-fix")).ok();
    assert_eq!(t.ask("l 5"), "15");
}

#[test]
fn patch_calling_libc() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("libc-fix", "target_pie", "patch_libc.so", &[("compute", "compute_libc")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 12"), "5"); // strlen("12-12")
    assert_eq!(t.ask("c 1234"), "9");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 12"), "13");
}

#[test]
fn patch_binds_to_the_targets_global_and_file_local_data() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("s"), "7 100");
    let m = state.manifest("data-fix", "target_pie", "patch_data.so", &[("compute", "compute_data")], "");
    let run = state.apply(&m, t.pid).ok();
    assert!(run.stdout.contains("counter"), "the dropped global is reported: {}", run.stdout);
    // x + secret * 1000 + (++counter), with the target's own secret (7) and counter (100).
    assert_eq!(t.ask("c 1"), "7102");
    assert_eq!(t.ask("s"), "7 101", "the patch changed the target's own counter");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 1"), "2");
}

#[test]
fn init_functions_run_in_the_target() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("init-fix", "target_pie", "patch_init.so", &[("compute", "compute_init")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("s"), "7 555", "the module's constructor ran inside the target");
    assert_eq!(t.ask("c 1"), "556");
    state.rollback(t.pid, None).ok();
}

#[test]
fn file_local_function_and_stacked_patches_with_requires() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("h 3"), "6");
    let base = state.manifest("base-fix", "target_pie", "patch_base.so", &[("compute", "compute_base")], "");
    let dep =
        state.manifest("dep-fix", "target_pie", "patch_dep.so", &[("helper", "helper_v2")], "requires: [base-fix]\n");

    // dep-fix alone is refused: its dependency is missing.
    let r = state.apply(&dep, t.pid);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("requires `base-fix`"), "{}", r.stderr);
    assert_eq!(t.ask("h 3"), "6");

    state.apply(&base, t.pid).ok();
    state.apply(&dep, t.pid).ok();
    assert_eq!(t.ask("c 1"), "5001");
    assert_eq!(t.ask("h 3"), "10006", "helper (file-local) calls base-fix's helper");
    let st = state.status(t.pid);
    assert_eq!(st["patches"][1]["requires"][0], "base-fix");

    // base-fix is still required by dep-fix.
    let r = state.rollback(t.pid, Some("base-fix"));
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("`dep-fix`"), "{}", r.stderr);
    assert_eq!(t.ask("h 3"), "10006");

    let pid = t.pid.to_string();
    let r = state.pannus(&["rollback", "--pid", &pid, "base-fix", "--yes", "--cascade", "--json"]).ok();
    assert_eq!(r.json()["rolled_back"], serde_json::json!(["dep-fix", "base-fix"]));
    assert_eq!(t.ask("h 3"), "6");
    assert_eq!(t.ask("c 1"), "2");
}

#[test]
fn patches_stack_on_the_same_function_and_unwind_in_any_order() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let before = code_bytes(t.pid, "target_pie", "compute");
    let a = state.manifest("a", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let b = state.manifest("b", "target_pie", "patch_compute_v3.so", &[("compute", "compute_v3")], "");

    // Newest first.
    state.apply(&a, t.pid).ok();
    state.apply(&b, t.pid).ok();
    assert_eq!(t.ask("c 2"), "2000");
    state.rollback(t.pid, None).ok(); // b
    assert_eq!(t.ask("c 2"), "200");
    state.rollback(t.pid, None).ok(); // a
    assert_eq!(t.ask("c 2"), "3");
    assert_eq!(code_bytes(t.pid, "target_pie", "compute"), before);

    // Oldest first: b stays in force, and its rollback restores the true original.
    state.apply(&a, t.pid).ok();
    state.apply(&b, t.pid).ok();
    state.rollback(t.pid, Some("a")).ok();
    assert_eq!(t.ask("c 2"), "2000");
    state.rollback(t.pid, Some("b")).ok();
    assert_eq!(t.ask("c 2"), "3");
    assert_eq!(code_bytes(t.pid, "target_pie", "compute"), before);
}

#[test]
fn nop_pad_makes_a_tiny_function_patchable() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("p 4"), "4");
    let m = state.manifest("pad-fix", "target_pie", "patch_tiny.so", &[("tiny_padded", "tiny_v2")], "");
    let r = state.pannus(&["status", "--pid", &t.pid.to_string()]).ok();
    assert!(r.stdout.contains("no patches"));
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("p 4"), "5");
    assert_eq!(state.status(t.pid)["patches"][0]["functions"][0]["jump"], "pad");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("p 4"), "4");
}

#[test]
fn blocked_syscalls_see_no_eintr_and_no_short_sleep() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("sleep-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    // The main thread sleeps 1.5 s in nanosleep while every stage borrows it.
    t.send("n 1500");
    std::thread::sleep(std::time::Duration::from_millis(100));
    state.apply(&m, t.pid).ok();
    let answer = t.line();
    let parts: Vec<i64> = answer.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(parts[0], 0, "nanosleep returned {answer} (ret errno ms)");
    assert!(parts[2] >= 1500, "the sleep was shortened: {answer}");
    // And the main thread blocked in read() (fgets) kept working: no EINTR, no EOF.
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");
    assert!(t.alive());
}

#[test]
fn busy_threads_see_only_old_or_new_answers() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("w"), "started");
    let m = state.manifest("busy-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    for _ in 0..10 {
        state.apply(&m, t.pid).ok();
        state.rollback(t.pid, None).ok();
    }
    state.apply(&m, t.pid).ok();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let r: Vec<i64> = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
    assert!(r[0] > 0 && r[1] > 0 && r[2] > 0, "old and new answers seen: {r:?}");
    assert_eq!(r[3], 0, "no wrong answers: {r:?}");
    state.rollback(t.pid, None).ok();
}

#[test]
fn commit_ends_the_trial() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("c-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    let pid = t.pid.to_string();
    let r = state.pannus(&["commit", "--pid", &pid, "c-fix", "--json"]).ok();
    assert_eq!(r.json()["state"], "committed");
    assert_eq!(states(&state.status(t.pid)), vec![("c-fix".into(), "committed".into())]);
    assert_eq!(t.ask("c 3"), "300");
    // A committed patch still rolls back.
    state.rollback(t.pid, Some("c-fix")).ok();
    assert_eq!(t.ask("c 3"), "4");
    let journal = state.pannus(&["journal", "--json"]).ok().json();
    let actions: Vec<&str> =
        journal["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["apply", "commit", "rollback"]);
}

#[test]
fn wait_applies_the_expiry_policy() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest(
        "w-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 2s\n  on_expiry: rollback\n",
    );
    let r =
        state.pannus(&["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes", "--wait", "--json"]).ok();
    assert_eq!(r.json()["state"], "rolled-back");
    assert_eq!(t.ask("c 3"), "4");
}

#[test]
fn ps_lists_patched_processes() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let other = Proc::start("target_pie");
    let m = state.manifest("ps-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    let ps = state.pannus(&["ps", "--json"]).ok().json();
    let procs = ps["processes"].as_array().unwrap();
    let me = procs.iter().find(|p| p["pid"] == t.pid).expect("the patched process is listed");
    assert_eq!(me["name"], "target_pie");
    assert_eq!(me["patches"][0]["patch"], "ps-fix");
    assert!(!procs.iter().any(|p| p["pid"] == other.pid), "unpatched processes only with --all");
    let all = state.pannus(&["ps", "--all", "--json"]).ok().json();
    assert!(all["processes"].as_array().unwrap().iter().any(|p| p["pid"] == other.pid));
    state.rollback(t.pid, None).ok();
}

#[test]
fn check_touches_nothing() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let maps = t.maps();
    let m = state.manifest("chk", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &t.pid.to_string()]).ok();
    assert!(r.stdout.contains("entry compute"), "{}", r.stdout);
    assert!(r.stdout.contains("jmp rel32"), "{}", r.stdout);
    assert_eq!(t.maps(), maps);
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn trial_policy_runs_unattended() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest(
        "u-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 1s\n  on_expiry: rollback\n",
    );
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 3"), "300");
    // The watcher waits at SCHED_IDLE, so that it never takes a CPU a thread of the service wants.
    // It is started detached, without waiting for its exec: give it a moment to show.
    let mut watcher = None;
    for _ in 0..200 {
        watcher = watcher_of(t.pid);
        if watcher.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let watcher = watcher.expect("a trial watcher runs for the patch");
    assert_eq!(sched_policy(watcher), Some(5), "the watcher runs at SCHED_IDLE");
    // No pannus in the foreground: the detached watcher rolls it back at the deadline.
    let mut reverted = false;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if t.ask("c 3") == "4" {
            reverted = true;
            break;
        }
    }
    assert!(reverted, "the patch was rolled back at expiry");
    assert_eq!(states(&state.status(t.pid)), vec![("u-fix".into(), "rolled-back".into())]);
}

/// The pid of the `pannus trial-watch` process watching a patch of `pid`.
fn watcher_of(pid: i32) -> Option<i32> {
    let want = ["trial-watch".to_string(), "--pid".to_string(), pid.to_string()];
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).find(|p| {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        args.windows(3).any(|w| w == want)
    })
}

/// The scheduling policy of process `pid` (field 41 of /proc/PID/stat; 5 is SCHED_IDLE).
fn sched_policy(pid: i32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start at field 3.
    stat.rsplit_once(')')?.1.split_whitespace().nth(41 - 3)?.parse().ok()
}

#[test]
fn committing_by_hand_cancels_the_watcher() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest(
        "k-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 3s\n  on_expiry: rollback\n",
    );
    state.apply(&m, t.pid).ok();
    state.pannus(&["commit", "--pid", &t.pid.to_string(), "k-fix"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(4000));
    assert_eq!(t.ask("c 3"), "300", "the committed patch stays");
    assert_eq!(states(&state.status(t.pid)), vec![("k-fix".into(), "committed".into())]);
}

fn wait_for_state(state: &State, pid: i32, want: &str) -> serde_json::Value {
    for _ in 0..100 {
        let st = state.status(pid);
        if st["patches"][0]["state"] == want {
            return st;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the patch never became {want}: {}", state.status(pid));
}

#[test]
fn failing_health_check_rolls_the_patch_back() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest(
        "hc-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 10m\n  health_check:\n    command: test -e /nonexistent/healthy\n    interval: 200ms\n    failures: 2\n",
    );
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 3"), "300");
    let st = wait_for_state(&state, t.pid, "rolled-back");
    assert_eq!(t.ask("c 3"), "4", "rolled back by the watcher");
    let note = st["patches"][0]["note"].as_str().unwrap_or_default().to_string();
    assert!(note.contains("health check failed 2 time(s) in a row"), "{st}");
    // The watcher writes the journal once the rollback is done: look until it has.
    let t0 = std::time::Instant::now();
    let last = loop {
        let journal = state.pannus(&["journal", "--json"]).ok().json();
        let last = journal["entries"].as_array().unwrap().last().unwrap().clone();
        if last["action"] == "rollback" || t0.elapsed() > std::time::Duration::from_secs(20) {
            break last;
        }
    };
    assert_eq!(last["action"], "rollback");
    assert!(last["detail"].as_str().unwrap().contains("health check failed"), "{last}");
}

#[test]
fn passing_health_check_keeps_the_patch_and_reports_its_runs() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest(
        "hc-ok",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 10m\n  health_check:\n    command: kill -0 $PANNUS_PID\n    interval: 200ms\n",
    );
    state.apply(&m, t.pid).ok();
    let mut runs = 0;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        runs = state.status(t.pid)["patches"][0]["health"]["runs"].as_u64().unwrap_or(0);
        if runs >= 3 {
            break;
        }
    }
    assert!(runs >= 3, "the check ran: {}", state.status(t.pid));
    assert_eq!(state.status(t.pid)["patches"][0]["health"]["last"], "ok");
    assert_eq!(t.ask("c 3"), "300");
    state.rollback(t.pid, None).ok();
}

#[test]
fn health_check_that_hangs_counts_as_failed() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let m = state.manifest(
        "hc-slow",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 10m\n  health_check:\n    command: sleep 30\n    interval: 200ms\n    timeout: 100ms\n",
    );
    state.apply(&m, t.pid).ok();
    let st = wait_for_state(&state, t.pid, "rolled-back");
    assert!(st["patches"][0]["note"].as_str().unwrap().contains("timed out after 100 ms"), "{st}");
}

#[test]
fn module_stays_mapped_while_a_thread_is_inside_it_and_goes_once_it_left() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let extra = "safety:\n  retries: 3\n  retry_interval: 10ms\n";
    let m = state.manifest("linger", "target_pie", "patch_linger.so", &[("compute", "compute_v2")], extra);
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 2"), "200");
    // The main thread sleeps 1.5 s inside the replacement while the patch is rolled back.
    t.send("c 1500");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = state.rollback(t.pid, None).ok();
    assert!(run.stdout.contains("kept mapped"), "{}\n{}", run.stdout, run.stderr);
    assert!(t.maps().contains("patch_linger.so"), "the module a thread is in stays mapped");
    // The thread comes back out through the module it was in, with the new answer; from then on
    // the old code answers.
    assert_eq!(t.line(), "150000");
    assert_eq!(t.ask("c 5"), "6");
    // A later rollback finishes the unload.
    state.rollback(t.pid, None).ok();
    assert!(!t.maps().contains("patch_linger.so"), "the module is unloaded once no thread is inside");
    assert_eq!(t.ask("c 5"), "6");
}

fn mono() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// The stop windows `--json` reports are when the target's threads really were stopped: a
/// thread of the target watching the clock sees a gap in the stop that wrote the bytes, which
/// is the one `timings_us.stopped` measures. On a loaded machine a stop may come before it in
/// which a thread (the watcher itself, maybe) did not stop in time and was let go with the
/// others: such a window is reported too, in order, but proves nothing about the watcher.
#[test]
fn json_reports_when_the_threads_were_stopped() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("C"), "started");
    let m = state.manifest("stop-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let pid = t.pid.to_string();
    let check = |t: &mut Proc, args: &[&str]| {
        let before = mono();
        let v = state.pannus(args).ok().json();
        let after = mono();
        let stops = v["stops"].as_array().unwrap_or_else(|| panic!("no stops in {v}"));
        let windows: Vec<(u64, u64)> = stops
            .iter()
            .map(|s| (s["start_monotonic_ns"].as_u64().unwrap(), s["end_monotonic_ns"].as_u64().unwrap()))
            .collect();
        let mut previous_end = before;
        for &(a, b) in &windows {
            assert!(previous_end < a && a < b && b < after, "{before} < ... {previous_end} < {a} < {b} < {after}: {v}");
            previous_end = b;
        }
        // The stop that wrote the bytes, the last one: the same `timings_us.stopped` measures
        // (both from one clock reading at each end; the latter in whole microseconds).
        let &(a, b) = windows.last().unwrap_or_else(|| panic!("no stop in {v}"));
        let stopped = v["timings_us"]["stopped"].as_u64().unwrap();
        assert_eq!((b - a) / 1000, stopped, "the last window is the stop `stopped` measures: {v}");
        // On a loaded machine the watcher may not have run since the stop: a gap is noted once
        // it runs again, so ask until it has read the clock after the window.
        let t0 = std::time::Instant::now();
        let seen = loop {
            let seen = t.ask(&format!("o {a} {b}"));
            let last: u64 = seen.split(' ').nth(3).unwrap().parse().unwrap();
            if last > b {
                break seen;
            }
            // A liveness bound: the watcher gets a CPU within a minute on any machine.
            assert!(t0.elapsed() < std::time::Duration::from_secs(60), "the clock watcher never ran again: {seen}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        let gap: u64 = seen.split(' ').next().unwrap().parse().unwrap();
        assert!(gap > 0, "the target's clock watcher ran through the stop {a}..{b}: {seen}");
    };
    check(&mut t, &["apply", &m.to_string_lossy(), "--pid", &pid, "--yes", "--json"]);
    assert_eq!(t.ask("c 5"), "500");
    check(&mut t, &["rollback", "--pid", &pid, "--yes", "--json"]);
    assert_eq!(t.ask("c 5"), "6");
}

/// Stages 1 to 3 borrow one thread of the target (its main thread) for their system calls; every
/// other thread is stopped only inside the stops `--json` reports. A poller watches the state of
/// four busy threads through the whole apply and rollback, and each time it finds one stopped by
/// the tracer (`t`), that must be within a reported stop.
#[test]
fn other_threads_are_stopped_only_in_the_reported_stops() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("w"), "started");
    let pid = t.pid;
    let workers: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| tid != pid)
        .collect();
    assert_eq!(workers.len(), 4);
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            // (before, after, tid): the read that found `tid` stopped happened in between.
            let mut seen: Vec<(u64, u64, i32)> = Vec::new();
            let mut looks = 0u64;
            while !done.load(Ordering::Relaxed) {
                for &tid in &workers {
                    let before = mono();
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
                    let after = mono();
                    looks += 1;
                    if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('t')) {
                        seen.push((before, after, tid));
                    }
                }
            }
            (seen, looks)
        })
    };
    let m = state.manifest("held-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let ps = pid.to_string();
    let mut stops: Vec<(u64, u64)> = Vec::new();
    for args in [
        vec!["apply", &*m.to_string_lossy(), "--pid", &ps, "--yes", "--json"],
        vec!["rollback", "--pid", &ps, "--yes", "--json"],
    ] {
        let v = state.pannus(&args).ok().json();
        for w in v["stops"].as_array().unwrap() {
            stops.push((w["start_monotonic_ns"].as_u64().unwrap(), w["end_monotonic_ns"].as_u64().unwrap()));
        }
    }
    done.store(true, Ordering::Relaxed);
    let (seen, looks) = poller.join().unwrap();
    assert!(looks > 100, "the poller looked {looks} times");
    for (before, after, tid) in &seen {
        assert!(
            stops.iter().any(|&(a, b)| *before <= b && *after >= a),
            "thread {tid} was stopped between {before} and {after}, outside every reported stop {stops:?}"
        );
    }
    let counts = t.ask("r");
    let wrong = counts.split(' ').nth(3).unwrap_or_default();
    assert_eq!(wrong, "0", "calls, old, new, wrong answers, EINTRs: {counts}");
}
