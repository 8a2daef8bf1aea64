//! Every trial is watched: `apply --wait` leaves a trial watcher too, so that the policy is
//! carried out at the deadline when the CLI is gone; a trial past its deadline shows `OVERDUE`,
//! and any pannus that sees one carries out its policy.

mod common;
use common::{wait_until, Proc, State, Terminal};
use nix::sys::signal::Signal;
use std::time::Duration;

/// The pid of the `pannus trial-watch` process watching a patch of `pid`.
fn watcher_of(pid: i32) -> Option<i32> {
    let want = ["trial-watch".to_string(), "--pid".to_string(), pid.to_string()];
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).find(|p| {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        args.windows(3).any(|w| w == want)
    })
}

fn patch_state(state: &State, pid: i32) -> String {
    state.status(pid)["patches"][0]["state"].as_str().unwrap_or_default().to_string()
}

/// A fresh target, and `apply --yes --wait` of a 3 s trial that rolls back at its deadline, run
/// in a terminal until its countdown shows.
fn apply_wait_in_a_terminal() -> (State, Proc, Terminal) {
    let state = State::new();
    let t = Proc::start("target_pie");
    let m = state.manifest(
        "wait-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 3s\n  on_expiry: rollback\n",
    );
    let mut term =
        Terminal::spawn(&state, &["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes", "--wait"], &[]);
    term.expect("trial: ");
    (state, t, term)
}

#[test]
fn ctrl_c_during_apply_wait_stops_waiting_and_leaves_the_trial_watched() {
    let (state, mut t, mut term) = apply_wait_in_a_terminal();
    term.type_keys("\x03");
    assert_eq!(term.wait(), 1, "{}", term.output);
    assert!(term.output.contains("stopped waiting"), "{}", term.output);
    assert_eq!(patch_state(&state, t.pid), "trial");
    assert!(watcher_of(t.pid).is_some(), "the trial is watched");
    wait_until("the watcher rolls the patch back at the deadline", || patch_state(&state, t.pid) == "rolled-back");
    assert_eq!(t.ask("c 3"), "4");
}

#[test]
fn apply_wait_interrupted_leaves_the_trial_watched() {
    let (state, mut t, mut term) = apply_wait_in_a_terminal();
    assert_eq!(t.ask("c 3"), "300");
    wait_until("a trial watcher runs for the patch", || watcher_of(t.pid).is_some());
    // The CLI is gone for good (no chance to clean up), well before the deadline.
    term.signal(Signal::SIGKILL);
    term.wait();
    assert_eq!(patch_state(&state, t.pid), "trial");
    wait_until("the watcher rolls the patch back at the deadline", || patch_state(&state, t.pid) == "rolled-back");
    assert_eq!(t.ask("c 3"), "4");
}

#[test]
fn an_overdue_trial_shows_overdue_and_the_next_pannus_carries_out_its_policy() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest(
        "late-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 1s\n  on_expiry: rollback\n",
    );
    state.apply(&m, t.pid).ok();
    // Its watcher dies before the deadline (killed by an operator, an OOM kill, a reboot of the
    // watcher's host session...).
    let mut watcher = None;
    wait_until("a trial watcher runs for the patch", || {
        watcher = watcher_of(t.pid);
        watcher.is_some()
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(watcher.unwrap()), Signal::SIGKILL).unwrap();
    wait_until("the watcher is gone", || watcher_of(t.pid).is_none());

    // While another pannus holds the process, the policy cannot be carried out: the trial is
    // shown overdue.
    let lock = pannus::ProcessLock::acquire(state.path(), t.pid, Duration::from_secs(5)).unwrap();
    wait_until("the deadline passes", || {
        let st = state.status(t.pid);
        st["patches"][0]["overdue"] == true
    });
    let st = state.status(t.pid);
    assert_eq!(st["patches"][0]["state"], "trial", "{st}");
    assert_eq!(st["patches"][0]["trial_remaining_s"], 0, "{st}");
    let text = state.pannus(&["status", "--pid", &t.pid.to_string()]).ok();
    assert!(text.stdout.contains("OVERDUE"), "{}", text.stdout);
    let ps = state.pannus(&["ps"]).ok();
    assert!(ps.stdout.contains("OVERDUE"), "{}", ps.stdout);
    assert_eq!(t.ask("c 3"), "300");
    drop(lock);

    // The next pannus that sees it carries out its policy.
    let st = state.status(t.pid);
    assert_eq!(st["patches"][0]["state"], "rolled-back", "{st}");
    assert_eq!(st["patches"][0]["overdue"], false, "{st}");
    assert_eq!(t.ask("c 3"), "4");
}

/// `base-fix` and `dep-fix` (which requires it), each with its own trial.
fn base_and_dep(state: &State, t: &Proc, base_trial: &str, dep_trial: &str) {
    let base = state.manifest("base-fix", "target_pie", "patch_base.so", &[("compute", "compute_base")], base_trial);
    let dep = state.manifest(
        "dep-fix",
        "target_pie",
        "patch_dep.so",
        &[("helper", "helper_v2")],
        &format!("requires: [base-fix]\n{dep_trial}"),
    );
    state.apply(&base, t.pid).ok();
    state.apply(&dep, t.pid).ok();
}

fn states(state: &State, pid: i32) -> Vec<(String, String)> {
    state.status(pid)["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["patch"].as_str().unwrap().to_string(), p["state"].as_str().unwrap().to_string()))
        .collect()
}

fn pair(a: &str, b: &str) -> Vec<(String, String)> {
    vec![("base-fix".into(), a.into()), ("dep-fix".into(), b.into())]
}

#[test]
fn commit_is_refused_while_what_it_requires_is_in_trial() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let trial = "trial:\n  duration: 10m\n  on_expiry: rollback\n";
    base_and_dep(&state, &t, trial, trial);
    let pid = t.pid.to_string();

    let r = state.pannus(&["commit", "--pid", &pid, "dep-fix"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("`base-fix`"), "the refusal names what it requires: {}", r.stderr);
    assert_eq!(states(&state, t.pid), pair("trial", "trial"));
    assert_eq!(t.ask("h 3"), "10006");

    // On a terminal, one question names both; yes commits both, what is required first.
    let mut term = Terminal::spawn(&state, &["commit", "--pid", &pid, "dep-fix"], &[]);
    term.expect("[y/N]");
    assert!(term.output.contains("`dep-fix`") && term.output.contains("`base-fix`"), "{}", term.output);
    term.type_keys("n\r");
    assert_ne!(term.wait(), 0);
    assert_eq!(states(&state, t.pid), pair("trial", "trial"));
    let mut term = Terminal::spawn(&state, &["commit", "--pid", &pid, "dep-fix"], &[]);
    term.expect("[y/N]");
    term.type_keys("y\r");
    assert_eq!(term.wait(), 0, "{}", term.output);
    assert_eq!(states(&state, t.pid), pair("committed", "committed"));
}

#[test]
fn commit_yes_commits_what_it_requires_too() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let trial = "trial:\n  duration: 10m\n  on_expiry: rollback\n";
    base_and_dep(&state, &t, trial, trial);
    let r = state.pannus(&["commit", "--pid", &t.pid.to_string(), "dep-fix", "--yes", "--json"]).ok();
    assert_eq!(r.json()["committed"], serde_json::json!(["base-fix", "dep-fix"]), "{}", r.stdout);
    assert_eq!(states(&state, t.pid), pair("committed", "committed"));
}

#[test]
fn a_cascade_rollback_is_journaled_as_a_cascade() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    base_and_dep(
        &state,
        &t,
        "trial:\n  duration: 2s\n  on_expiry: rollback\n",
        "trial:\n  duration: 10m\n  on_expiry: rollback\n",
    );
    wait_until("base-fix's watcher rolls both back", || states(&state, t.pid) == pair("rolled-back", "rolled-back"));
    assert_eq!(t.ask("h 3"), "6");
    let mut entry = None;
    wait_until("the rollback of dep-fix is journaled", || {
        entry = common::journal(&state)
            .into_iter()
            .find(|e| e["action"] == "rollback" && e["patch"] == "dep-fix" && e["outcome"] == "ok");
        entry.is_some()
    });
    let detail = entry.unwrap()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("cascade") && detail.contains("`base-fix`"), "{detail}");
    assert!(!detail.contains("trial expired"), "dep-fix's own trial did not expire: {detail}");
    let note = state.status(t.pid)["patches"][1]["note"].as_str().unwrap_or_default().to_string();
    assert!(note.contains("cascade"), "{note}");
}

#[test]
fn rollback_checks_first_then_asks_once_naming_every_patch() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let trial = "trial:\n  duration: 10m\n  on_expiry: rollback\n";
    base_and_dep(&state, &t, trial, trial);
    let pid = t.pid.to_string();

    // Without --cascade: refused before any question.
    let mut term = Terminal::spawn(&state, &["rollback", "--pid", &pid, "base-fix"], &[]);
    assert_eq!(term.wait(), 4, "{}", term.output);
    assert!(!term.output.contains("[y/N]"), "no question before a refusal: {}", term.output);
    assert!(term.output.contains("`dep-fix`"), "{}", term.output);
    assert_eq!(states(&state, t.pid), pair("trial", "trial"));

    // With --cascade: one question, naming both.
    let mut term = Terminal::spawn(&state, &["rollback", "--pid", &pid, "base-fix", "--cascade"], &[]);
    term.expect("[y/N]");
    assert!(term.output.contains("`base-fix`") && term.output.contains("`dep-fix`"), "{}", term.output);
    term.type_keys("y\r");
    assert_eq!(term.wait(), 0, "{}", term.output);
    assert_eq!(term.output.matches("[y/N]").count(), 1, "{}", term.output);
    assert_eq!(states(&state, t.pid), pair("rolled-back", "rolled-back"));
    assert_eq!(t.ask("h 3"), "6");
}

#[test]
fn an_apply_that_sees_an_overdue_trial_carries_out_its_policy_first() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let late = state.manifest(
        "late-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 1s\n  on_expiry: rollback\n",
    );
    let r = state.pannus(&["apply", &late.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes", "--json"]).ok();
    let deadline = humantime::parse_rfc3339(r.json()["trial_deadline"].as_str().unwrap()).unwrap();
    let mut watcher = None;
    wait_until("a trial watcher runs for the patch", || {
        watcher = watcher_of(t.pid);
        watcher.is_some()
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(watcher.unwrap()), Signal::SIGKILL).unwrap();
    wait_until("the watcher is gone", || watcher_of(t.pid).is_none());
    wait_until("the deadline is past", || std::time::SystemTime::now() > deadline + Duration::from_secs(1));
    assert_eq!(t.ask("c 3"), "300", "nobody carried out the policy yet");

    let other = state.manifest("lib-fix", "target_pie", "patch_tiny.so", &[("tiny_padded", "tiny_v2")], "");
    state.apply(&other, t.pid).ok();
    assert_eq!(t.ask("c 3"), "4", "late-fix was rolled back by its policy");
    assert_eq!(t.ask("p 4"), "5", "and the new patch applied");
    assert_eq!(
        states(&state, t.pid),
        vec![("late-fix".into(), "rolled-back".into()), ("lib-fix".into(), "trial".into())]
    );
}

/// The trial watcher of a patch whose trial commits at its end does not commit it while a patch
/// it requires is still on trial (whose rollback would take it along): it waits, says so in the
/// journal, and commits it once what it requires is committed.
#[test]
fn the_watcher_commits_a_patch_only_once_what_it_requires_is_committed() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    base_and_dep(
        &state,
        &t,
        "trial:\n  duration: 10m\n  on_expiry: rollback\n",
        "trial:\n  duration: 1s\n  on_expiry: commit\n",
    );
    let pid = t.pid;
    let dep_state = || state.status(pid)["patches"][1]["state"].as_str().unwrap_or_default().to_string();
    let postponed = || {
        common::journal(&state).into_iter().any(|e| {
            e["action"] == "trial-watch"
                && e["patch"] == "dep-fix"
                && e["detail"].as_str().is_some_and(|d| d.contains("`base-fix`"))
        })
    };
    wait_until("dep-fix's watcher acts at its deadline", || postponed() || dep_state() != "trial");
    assert_eq!(states(&state, t.pid), pair("trial", "trial"), "{:?}", common::journal(&state));
    assert_eq!(t.ask("h 3"), "10006");
    state.pannus(&["commit", "--pid", &t.pid.to_string(), "base-fix", "--yes"]).ok();
    wait_until("dep-fix is committed by its watcher", || dep_state() == "committed");
    let note = state.status(t.pid)["patches"][1]["note"].as_str().unwrap_or_default().to_string();
    assert!(note.contains("trial expired"), "{note}");
}

/// What the forked child of a test target writes: its `compute(5)`.
fn child_answer(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default().trim().to_string()
}

/// A child forked after the patch was applied carries the patch and its trial: at the
/// deadline it follows its parent (rolled back with it here), instead of keeping the patch
/// with a trial nobody watches.
#[test]
fn a_forked_child_follows_its_parent_at_the_end_of_the_trial() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest(
        "fork-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 2s\n  on_expiry: rollback\n",
    );
    state.apply(&m, t.pid).ok();
    let out = state.path().join("child-answer");
    let child: i32 = t.ask(&format!("K {}", out.display())).parse().unwrap();
    wait_until("the child answers patched", || child_answer(&out) == "500");
    wait_until("the parent's trial ends", || t.ask("c 5") == "6");
    wait_until("the child is rolled back with its parent", || child_answer(&out) == "6");
    let st = state.status(child);
    assert_eq!(st["patches"][0]["state"], "rolled-back", "{st}");
}

/// A forked child is shown with the process it was forked from: `status` and `ps` name the
/// parent, and `ps` lists the child right after it.
#[test]
fn a_forked_child_is_shown_with_its_parent() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("fork-shown", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    let out = state.path().join("child-answer");
    let child: i32 = t.ask(&format!("K {}", out.display())).parse().unwrap();
    wait_until("the child answers patched", || child_answer(&out) == "500");

    let st = state.status(child);
    assert_eq!(st["forked_from"], t.pid, "{st}");
    assert_eq!(st["patches"][0]["forked_from"], t.pid, "{st}");
    assert_eq!(st["patches"][0]["state"], "trial", "{st}");
    let parent = state.status(t.pid);
    assert!(parent["forked_from"].is_null(), "{parent}");
    assert!(parent["patches"][0]["forked_from"].is_null(), "{parent}");

    let text = state.pannus(&["status", "--pid", &child.to_string()]).ok().stdout;
    assert!(text.contains(&format!("forked from process {}", t.pid)), "{text}");

    let ps = state.pannus(&["ps"]).ok().stdout;
    let lines: Vec<&str> = ps.lines().collect();
    let at = |pid: i32| lines.iter().position(|l| l.split_whitespace().next() == Some(&pid.to_string()));
    let (p, c) = (at(t.pid).expect("parent listed"), at(child).expect("child listed"));
    assert_eq!(c, p + 1, "the child comes right after its parent:\n{ps}");
    assert!(lines[c].contains(&format!("(forked from {})", t.pid)), "{ps}");
}

/// The health check runs in the forked children too: when it fails in a child (here a file
/// that marks that child unhealthy), the patch is rolled back in the parent and in every
/// child, and the parent's record says which child failed.
#[test]
fn a_health_check_failing_in_a_forked_child_rolls_back_everywhere() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let marks = state.path().join("unhealthy");
    std::fs::create_dir(&marks).unwrap();
    let m = state.manifest(
        "fork-health",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        &format!(
            "trial:\n  duration: 10m\n  on_expiry: commit\n  health_check:\n    command: test ! -e {}/$PANNUS_PID\n    interval: 200ms\n    failures: 2\n",
            marks.display()
        ),
    );
    state.apply(&m, t.pid).ok();
    let (out_a, out_b) = (state.path().join("child-a"), state.path().join("child-b"));
    let a: i32 = t.ask(&format!("K {}", out_a.display())).parse().unwrap();
    let b: i32 = t.ask(&format!("K {}", out_b.display())).parse().unwrap();
    wait_until("both children answer patched", || child_answer(&out_a) == "500" && child_answer(&out_b) == "500");
    // The healthy child's checks are recorded in it.
    wait_until("the health check runs in a child", || {
        state.status(a)["patches"][0]["health"]["runs"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(t.ask("c 5"), "500", "the parent stays patched while every check passes");

    std::fs::write(marks.join(b.to_string()), "").unwrap();
    wait_until("the parent is rolled back", || t.ask("c 5") == "6");
    wait_until("both children are rolled back", || child_answer(&out_a) == "6" && child_answer(&out_b) == "6");
    let parent = state.status(t.pid);
    assert_eq!(parent["patches"][0]["state"], "rolled-back", "{parent}");
    let note = parent["patches"][0]["note"].as_str().unwrap_or_default();
    assert!(note.contains(&format!("in process {b}, forked from this one")), "{note}");
    assert_eq!(state.status(a)["patches"][0]["state"], "rolled-back");
}
