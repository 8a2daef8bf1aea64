//! The `function` consistency rule (DWARF unwinding of every thread), busy handling that waits
//! then gives up naming the threads with their backtraces, and functions that are always busy.

mod common;
use common::{code_bytes, Proc, State};
use std::time::{Duration, Instant};

#[test]
fn function_rule_refuses_while_a_thread_has_a_frame_in_the_old_function() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("P"), "started");
    std::thread::sleep(Duration::from_millis(50));
    let before = code_bytes(t.pid, "target_pie", "parked");
    let m = state.manifest(
        "park-fix",
        "target_pie",
        "patch_parked.so",
        &[("parked", "parked_v2")],
        "safety:\n  consistency: function\n  retries: 20\n  retry_interval: 5ms\n",
    );
    let start = Instant::now();
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 3, "busy: {r:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    // Names the thread and the function, and shows where the thread is, with symbol names.
    assert!(r.stderr.contains("busy: after 21 attempts"), "{}", r.stderr);
    assert!(r.stderr.contains("in `parked`"), "{}", r.stderr);
    assert!(r.stderr.contains("has a frame at depth"), "the thread sleeps below parked(): {}", r.stderr);
    assert!(r.stderr.contains("backtrace of thread"), "{}", r.stderr);
    assert!(r.stderr.contains("parked+0x") && r.stderr.contains("(target_pie)"), "{}", r.stderr);
    assert!(r.stderr.contains(" park+0x") && r.stderr.contains("#6"), "unwound past the thread function: {}", r.stderr);
    assert!(!r.stderr.contains("could not be unwound"), "{}", r.stderr);
    assert_eq!(code_bytes(t.pid, "target_pie", "parked"), before, "left untouched");
    assert!(state.status(t.pid)["patches"].as_array().unwrap().is_empty());

    // The entry rule lets it through: no thread stands in the entry bytes.
    let m = state.manifest("park-fix", "target_pie", "patch_parked.so", &[("parked", "parked_v2")], "");
    state.apply(&m, t.pid).ok();
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn function_rule_allows_the_switch_when_no_thread_is_inside() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("w"), "started"); // busy threads calling compute() in a loop
    let m = state.manifest(
        "fn-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "safety:\n  consistency: function\n  retries: 1000\n  retry_interval: 1ms\n",
    );
    // The workers are in and out of compute() all the time: the switch waits for a moment when
    // none is inside, then goes through.
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 5"), "500");
    state.rollback(t.pid, None).ok();
    let r: Vec<i64> = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(r[3], 0, "{r:?}");
    assert_eq!(state.status(t.pid)["patches"][0]["state"], "rolled-back");
}

#[test]
fn always_busy_function_is_refused_within_the_budget() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("S"), "started");
    let before = code_bytes(t.pid, "target_pie", "spinning");
    let m = state.manifest(
        "spin-fix",
        "target_pie",
        "patch_parked.so",
        &[("spinning", "spinning_v2")],
        "safety:\n  consistency: function\n  retries: 50\n  retry_interval: 2ms\n",
    );
    let start = Instant::now();
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("in `spinning`") && r.stderr.contains("is executing at"), "{}", r.stderr);
    assert!(start.elapsed() < Duration::from_secs(10), "gave up within the budget");
    assert_eq!(code_bytes(t.pid, "target_pie", "spinning"), before);
    assert_eq!(t.ask("c 5"), "6");
}
