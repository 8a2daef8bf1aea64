//! Ctrl-C, SIGTERM and SIGHUP (a dropped SSH session) mean "no": at a prompt or while a stage
//! runs, the apply stops, what it did is undone, the journal says it was cancelled, and pannus
//! exits non-zero with the target as it was.

mod common;
use common::{journal, signal_while_paused, thread_state, threads, Proc, State, Terminal};
use nix::sys::signal::Signal;

/// The target as an apply that never happened leaves it: its old behaviour, no module mapped,
/// no patch recorded, no thread stopped; and the journal's last apply says cancelled.
fn as_it_was(state: &State, t: &mut Proc) {
    assert_eq!(t.ask("c 5"), "6", "the target's behaviour is unchanged");
    assert!(!t.maps().contains("patch_compute.so"), "no module mapping is left:\n{}", t.maps());
    let st = state.status(t.pid);
    let patches = st["patches"].as_array().cloned().unwrap_or_default();
    assert!(patches.iter().all(|p| p["state"] == "rolled-back"), "no patch is left applied: {st}");
    for tid in threads(t.pid) {
        assert!(!matches!(thread_state(t.pid, tid), Some('t' | 'T')), "thread {tid} is left stopped");
    }
    let entries = journal(state);
    let last = entries.iter().rev().find(|e| e["action"] == "apply").expect("the apply is journaled");
    assert_eq!(last["outcome"], "cancelled", "{entries:?}");
}

/// Starts an apply on a terminal and answers yes to stage 1, up to the stage 2 prompt.
fn at_the_link_prompt(state: &State, t: &Proc) -> Terminal {
    let m = state.manifest("int-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let mut term = Terminal::spawn(state, &["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string()], &[]);
    term.expect("Proceed with stage 1 (load)? [y/N]");
    term.type_keys("y\r");
    term.expect("Proceed with stage 2 (link)? [y/N]");
    term
}

#[test]
fn ctrl_c_at_a_prompt_undoes_the_stages_done() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let mut term = at_the_link_prompt(&state, &t);
    assert!(t.maps().contains("patch_compute.so"), "stage 1 mapped the module");
    term.type_keys("\x03");
    let code = term.wait();
    assert_ne!(code, 0, "{}", term.output);
    assert!(term.output.contains("cancelled"), "{}", term.output);
    as_it_was(&state, &mut t);
}

#[test]
fn sigterm_at_a_prompt_undoes_the_stages_done() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let mut term = at_the_link_prompt(&state, &t);
    term.signal(Signal::SIGTERM);
    let code = term.wait();
    assert_ne!(code, 0, "{}", term.output);
    as_it_was(&state, &mut t);
}

#[test]
fn a_dropped_session_at_a_prompt_undoes_the_stages_done() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let mut term = at_the_link_prompt(&state, &t);
    term.hang_up();
    let code = term.wait();
    assert_ne!(code, 0);
    as_it_was(&state, &mut t);
}

#[test]
fn a_signal_inside_the_stop_window_finishes_the_stage_then_cancels() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("w"), "started");
    let m = state.manifest("int-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let args = ["apply", &*m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"];
    let (code, out) = signal_while_paused(&state, &args, "every thread stopped", Signal::SIGTERM);
    assert_ne!(code, 0, "{out}");
    as_it_was(&state, &mut t);
    let r: Vec<i64> = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(r[3], 0, "no wrong answers: {r:?}");
}

#[test]
fn a_signal_while_stage_1_runs_cancels_before_stage_2() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("int-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let args = ["apply", &*m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"];
    let (code, out) = signal_while_paused(&state, &args, "system call returned", Signal::SIGINT);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("cancelled"), "{out}");
    as_it_was(&state, &mut t);
}
