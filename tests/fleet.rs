//! Every process of a binary: `apply --all`, `status --all` and `rollback --all` against real
//! processes, with a different binary running alongside that must stay untouched.

mod common;
use common::{Proc, State};
use serde_json::{json, Value};
use std::time::Duration;

/// The tests of this file share the fixtures' binaries, so `--all` in one would see the
/// processes of another: they run one at a time, whether as threads of one test process (`cargo
/// test`) or as processes of their own (`cargo nextest`), hence a file lock.
fn serial() -> nix::fcntl::Flock<std::fs::File> {
    let path = std::env::temp_dir().join("pannus-fleet-tests.lock");
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).expect("open the lock file");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).expect("lock the lock file")
}

fn pids(v: &Value) -> Vec<i64> {
    let mut out: Vec<i64> = v.as_array().unwrap().iter().map(|p| p.as_i64().unwrap()).collect();
    out.sort_unstable();
    out
}

fn sorted(procs: &[&Proc]) -> Vec<i64> {
    let mut out: Vec<i64> = procs.iter().map(|p| p.pid as i64).collect();
    out.sort_unstable();
    out
}

fn compute_fix(state: &State) -> std::path::PathBuf {
    state.manifest("compute-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "")
}

#[test]
fn apply_status_and_rollback_every_process_of_a_binary() {
    let _serial = serial();
    let state = State::new();
    let mut a = Proc::start("target_pie");
    let mut b = Proc::start("target_pie");
    let mut c = Proc::start("target_pie");
    let mut other = Proc::start("target_nopie");
    let m = compute_fix(&state);

    let r = state.pannus(&["apply", &m.to_string_lossy(), "--all", "--yes", "--json"]).ok();
    let v = r.json();
    assert_eq!(v["patch"], "compute-fix");
    assert_eq!(pids(&v["patched"]), sorted(&[&a, &b, &c]), "{v}");
    assert_eq!(v["skipped"], json!([]));
    assert_eq!(v["failed"], json!([]));
    assert_eq!(v["rolled_back"], json!([]));
    for p in [&mut a, &mut b, &mut c] {
        assert_eq!(p.ask("c 5"), "500");
    }
    assert_eq!(other.ask("c 5"), "6", "another binary is untouched");
    assert!(!other.maps().contains("patch_compute.so"));

    // status --all: every patched process, read from each process.
    let st = state.pannus(&["status", "--all", "--json"]).ok().json();
    let procs = st["processes"].as_array().unwrap();
    for p in [&a, &b, &c] {
        let me = procs.iter().find(|x| x["pid"] == p.pid).unwrap_or_else(|| panic!("{} listed: {st}", p.pid));
        assert_eq!(me["name"], "target_pie");
        assert!(me["exe"].as_str().unwrap().ends_with("target_pie"));
        assert_eq!(me["patches"][0]["patch"], "compute-fix");
        assert_eq!(me["patches"][0]["state"], "trial");
        assert_eq!(me["patches"][0]["functions"][0]["target"], "compute");
    }
    assert!(!procs.iter().any(|x| x["pid"] == other.pid));
    let text = state.pannus(&["status", "--all"]).ok();
    assert!(text.stdout.contains(&format!("process {} (target_pie)", b.pid)), "{}", text.stdout);
    assert!(text.stdout.contains("compute-fix 1.0 [trial"), "{}", text.stdout);

    // rollback --all: every process where the patch is applied.
    let r = state.pannus(&["rollback", "--all", "compute-fix", "--yes", "--json"]).ok();
    let v = r.json();
    assert_eq!(v["patch"], "compute-fix");
    assert_eq!(pids(&v["rolled_back"]), sorted(&[&a, &b, &c]), "{v}");
    assert_eq!(v["failed"], json!([]));
    for p in [&mut a, &mut b, &mut c, &mut other] {
        assert_eq!(p.ask("c 5"), "6");
    }
    for p in [&a, &b, &c] {
        assert!(!p.maps().contains("patch_compute.so"), "the module is unloaded");
    }

    // Nothing left to roll back: a precondition.
    let r = state.pannus(&["rollback", "--all", "compute-fix", "--yes", "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("not applied in any process"));

    // The text summary of a run.
    let r = state.pannus(&["apply", &m.to_string_lossy(), "--all", "--yes"]).ok();
    assert!(r.stdout.contains("`compute-fix`: 3 patched, 0 skipped, 0 failed"), "{}", r.stdout);
    let r = state.pannus(&["rollback", "--all", "compute-fix", "--yes"]).ok();
    assert!(r.stdout.contains("`compute-fix`: 3 rolled back, 0 skipped, 0 failed"), "{}", r.stdout);
    assert_eq!(c.ask("c 5"), "6");
}

#[test]
fn a_process_that_already_has_the_patch_is_skipped() {
    let _serial = serial();
    let state = State::new();
    let mut a = Proc::start("target_pie");
    let mut b = Proc::start("target_pie");
    let mut c = Proc::start("target_pie");
    let m = compute_fix(&state);
    state.apply(&m, b.pid).ok();

    let v = state.pannus(&["apply", &m.to_string_lossy(), "--all", "--yes", "--json"]).ok().json();
    assert_eq!(pids(&v["patched"]), sorted(&[&a, &c]), "{v}");
    assert_eq!(v["skipped"], json!([{"pid": b.pid, "reason": "already applied"}]));
    assert_eq!(v["failed"], json!([]));
    for p in [&mut a, &mut b, &mut c] {
        assert_eq!(p.ask("c 5"), "500");
    }

    // Everything already applied: nothing to do, and that is success.
    let v = state.pannus(&["apply", &m.to_string_lossy(), "--all", "--yes", "--json"]).ok().json();
    assert_eq!(v["patched"], json!([]));
    assert_eq!(v["skipped"].as_array().unwrap().len(), 3);

    let v = state.pannus(&["rollback", "--all", "compute-fix", "--yes", "--json"]).ok().json();
    assert_eq!(pids(&v["rolled_back"]), sorted(&[&a, &b, &c]));
    assert_eq!(b.ask("c 5"), "6");
}

#[test]
fn a_failure_rolls_back_the_processes_already_patched() {
    let _serial = serial();
    let state = State::new();
    let mut procs = [Proc::start("target_pie"), Proc::start("target_pie"), Proc::start("target_pie")];
    procs.sort_by_key(|p| p.pid);
    let m = compute_fix(&state);
    let last = procs[2].pid;
    // Another pannus (this test) holds the last process: it is busy.
    let lock = pannus::ProcessLock::acquire(state.path(), last, Duration::ZERO).unwrap();
    let wait = [("PANNUS_LOCK_WAIT", "0")];

    let args = ["apply", &m.to_string_lossy(), "--all", "--yes", "--json", "--rollback-on-failure"];
    let r = state.pannus_env(&args, &wait);
    assert_eq!(r.code, 3, "busy: {r:?}");
    let v = r.json();
    assert_eq!(v["patched"], json!([procs[0].pid, procs[1].pid]), "{v}");
    assert_eq!(v["failed"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["failed"][0]["pid"], last);
    assert_eq!(v["failed"][0]["kind"], "busy");
    assert!(v["failed"][0]["message"].as_str().unwrap().contains("another pannus"), "{v}");
    assert_eq!(v["rolled_back"], json!([procs[1].pid, procs[0].pid]), "newest first: {v}");
    for p in procs.iter_mut() {
        assert_eq!(p.ask("c 5"), "6");
        assert!(!p.maps().contains("patch_compute.so"));
    }
    let st = state.status(procs[0].pid);
    assert_eq!(st["patches"][0]["state"], "rolled-back");

    // Without --rollback-on-failure the others stay patched and the failure is reported.
    let args = ["apply", &m.to_string_lossy(), "--all", "--yes"];
    let r = state.pannus_env(&args, &wait);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("2 patched, 0 skipped, 1 failed"), "{}", r.stdout);
    assert!(r.stderr.contains(&format!("failed in 1 process: pids {last}")), "{}", r.stderr);
    assert_eq!(procs[0].ask("c 5"), "500");
    assert_eq!(procs[1].ask("c 5"), "500");
    assert_eq!(procs[2].ask("c 5"), "6");

    // Once the lock is free, the last one is patched and the others skipped.
    drop(lock);
    let v = state.pannus(&["apply", &m.to_string_lossy(), "--all", "--yes", "--json"]).ok().json();
    assert_eq!(v["patched"], json!([last]));
    assert_eq!(procs[2].ask("c 5"), "500");
    state.pannus(&["rollback", "--all", "compute-fix", "--yes"]).ok();
}

#[test]
fn refusals() {
    let _serial = serial();
    let state = State::new();
    let m = compute_fix(&state);
    let ms = m.to_string_lossy().into_owned();

    // No process maps the object: a precondition.
    let r = state.pannus(&["apply", &ms, "--all", "--yes", "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("no process maps"), "{r:?}");

    let t = Proc::start("target_pie");
    let pid = t.pid.to_string();
    // --pid and --all exclude each other; one of them is required.
    for args in [
        vec!["apply", &ms, "--all", "--pid", &pid, "--yes"],
        vec!["apply", &ms, "--yes"],
        vec!["status", "--all", "--pid", &pid],
        vec!["status"],
        vec!["rollback", "--all", "--pid", &pid, "compute-fix", "--yes"],
        vec!["rollback", "--all", "--yes"],
        vec!["apply", &ms, "--pid", &pid, "--rollback-on-failure", "--yes"],
        vec!["apply", &ms, "--all", "--wait", "--yes"],
    ] {
        let r = state.pannus(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
    }
    // No terminal to ask on and no --yes.
    let r = state.pannus(&["apply", &ms, "--all"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no terminal"), "{}", r.stderr);
    let r = state.pannus(&["rollback", "--all", "compute-fix"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(state.status(t.pid)["patches"].as_array().unwrap().is_empty(), "nothing was touched");

    // No patches anywhere (among this test's processes).
    let st = state.pannus(&["status", "--all", "--json"]).ok().json();
    assert!(!st["processes"].as_array().unwrap().iter().any(|p| p["pid"] == t.pid));
}

#[test]
fn a_signal_during_apply_all_leaves_every_process_as_it_was() {
    let _serial = serial();
    let state = State::new();
    let mut a = Proc::start("target_pie");
    let mut b = Proc::start("target_pie");
    let m = compute_fix(&state);
    let args = ["apply", &*m.to_string_lossy(), "--all", "--yes"];
    // SIGTERM inside the first process's stop of every thread, in stage 4.
    let (code, out) =
        common::signal_while_paused(&state, &args, "every thread stopped", nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 1, "{out}");
    for p in [&mut a, &mut b] {
        assert_eq!(p.ask("c 5"), "6", "process {} is as it was", p.pid);
        assert!(!p.maps().contains("patch_compute.so"), "process {}: no module left", p.pid);
    }
    let entries = common::journal(&state);
    let applies: Vec<&Value> = entries.iter().filter(|e| e["action"] == "apply").collect();
    assert!(!applies.is_empty(), "{entries:?}");
    for pid in [a.pid, b.pid] {
        if let Some(last) = applies.iter().rev().find(|e| e["pid"] == pid) {
            assert_eq!(last["outcome"], "cancelled", "{entries:?}");
        }
    }
}

/// A signal during `rollback --all` stops it between processes: the rollback under way (here
/// inside its stop of every thread) finishes, the processes after it are not touched and are
/// journaled as cancelled, and pannus exits 1.
#[test]
fn a_signal_during_rollback_all_stops_between_processes() {
    let _serial = serial();
    let state = State::new();
    let mut a = Proc::start("target_pie");
    let mut b = Proc::start("target_pie");
    let m = compute_fix(&state);
    state.apply(&m, a.pid).ok();
    state.apply(&m, b.pid).ok();
    let args = ["rollback", "--all", "compute-fix", "--yes"];
    let (code, out) =
        common::signal_while_paused(&state, &args, "every thread stopped", nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cancelled"), "{out}");
    // One after the other, in pid order.
    let (first, second) = if a.pid < b.pid { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert_eq!(first.ask("c 5"), "6", "the rollback under way finished");
    assert!(!first.maps().contains("patch_compute.so"), "{}", first.maps());
    assert_eq!(second.ask("c 5"), "500", "the process after it is untouched");
    let entries = common::journal(&state);
    let last = |pid: i32| entries.iter().rev().find(|e| e["action"] == "rollback" && e["pid"] == pid).cloned();
    assert_eq!(last(first.pid).map(|e| e["outcome"].clone()), Some("ok".into()), "{entries:?}");
    assert_eq!(last(second.pid).map(|e| e["outcome"].clone()), Some("cancelled".into()), "{entries:?}");
    state.rollback(second.pid, None).ok();
}

/// Forty processes of one binary, worked on several at a time: every one is patched and every
/// one rolled back, except one that refuses (another tracer holds it), which fails alone, is
/// reported, and stops no other.
#[test]
fn forty_processes_at_once_and_one_that_refuses() {
    let _serial = serial();
    let state = State::new();
    let mut procs: Vec<Proc> = (0..40).map(|_| Proc::start("target_pie")).collect();
    procs.sort_by_key(|p| p.pid);
    let m = compute_fix(&state);
    let refuser = procs[17].pid;
    // Another tracer (a thread of this test) holds one of them; that thread ending lets it go.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (seized, is_seized) = std::sync::mpsc::channel();
    let tracer = std::thread::spawn(move || {
        let pid = nix::unistd::Pid::from_raw(refuser);
        seized.send(nix::sys::ptrace::seize(pid, nix::sys::ptrace::Options::empty())).unwrap();
        let _ = released.recv();
    });
    is_seized.recv().unwrap().expect("the test traces one process");

    let r = state.pannus(&["apply", &m.to_string_lossy(), "--all", "--yes", "--json"]);
    assert_eq!(r.code, 4, "a precondition failed in one process: {r:?}");
    let v = r.json();
    let mut others: Vec<i64> = procs.iter().filter(|p| p.pid != refuser).map(|p| p.pid as i64).collect();
    others.sort_unstable();
    assert_eq!(pids(&v["patched"]), others, "{v}");
    assert_eq!(v["failed"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["failed"][0]["pid"], refuser, "{v}");
    assert!(v["failed"][0]["message"].as_str().unwrap().contains("traced"), "{v}");
    assert_eq!(v["rolled_back"], json!([]));
    for p in procs.iter_mut() {
        let want = if p.pid == refuser { "6" } else { "500" };
        assert_eq!(p.ask("c 5"), want, "process {}", p.pid);
    }
    drop(release);
    tracer.join().unwrap();

    let v = state.pannus(&["rollback", "--all", "compute-fix", "--yes", "--json"]).ok().json();
    assert_eq!(pids(&v["rolled_back"]), others, "{v}");
    assert_eq!(v["failed"], json!([]));
    for p in procs.iter_mut() {
        assert_eq!(p.ask("c 5"), "6", "process {}", p.pid);
        assert!(!p.maps().contains("patch_compute.so"), "process {}: the module is unloaded", p.pid);
    }
    // The journal has one apply and one rollback per process patched, each ok.
    let entries = common::journal(&state);
    for &pid in &others {
        let ok = |action: &str| {
            entries.iter().filter(|e| e["action"] == action && e["pid"] == pid && e["outcome"] == "ok").count()
        };
        assert_eq!((ok("apply"), ok("rollback")), (1, 1), "process {pid}: {entries:?}");
    }
}

/// `apply --all` starts one trial watcher for the run, given every process patched: at the
/// deadline it carries out the policy in each of them.
#[test]
fn the_trial_watcher_of_a_run_carries_out_the_policy_in_every_process() {
    let _serial = serial();
    let state = State::new();
    let mut procs: Vec<Proc> = (0..3).map(|_| Proc::start("target_pie")).collect();
    let trial = "trial:\n  duration: 1s\n  on_expiry: rollback\n";
    let m = state.manifest("compute-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], trial);
    let v = state.pannus(&["apply", &m.to_string_lossy(), "--all", "--yes", "--json"]).ok().json();
    assert_eq!(pids(&v["patched"]), sorted(&procs.iter().collect::<Vec<_>>()), "{v}");
    // The journal and the processes' answers are looked at, not `status`: a `status` would
    // carry out an overdue policy itself.
    let by_watcher = |pid: i32| {
        common::journal(&state)
            .iter()
            .any(|e| e["action"] == "rollback" && e["pid"] == pid && e["outcome"] == "ok" && e["source"] == "watcher")
    };
    for p in procs.iter_mut() {
        common::wait_until("the trial watcher rolls the patch back", || by_watcher(p.pid));
        assert_eq!(p.ask("c 5"), "6", "process {}", p.pid);
        assert!(!p.maps().contains("patch_compute.so"), "process {}", p.pid);
    }
}

/// `check --all`: what `apply --all` would do in each process, touching nothing; a refusal names
/// each process with its exit code.
#[test]
fn check_all_says_what_apply_all_would_do_and_touches_nothing() {
    let _serial = serial();
    let state = State::new();
    let mut a = Proc::start("target_pie");
    let mut b = Proc::start("target_pie");
    let mut c = Proc::start("target_pie");
    let m = compute_fix(&state);
    state.apply(&m, b.pid).ok();
    let before = common::code_bytes(a.pid, "target_pie", "compute");

    let v = state.pannus(&["check", &m.to_string_lossy(), "--all", "--json"]).ok().json();
    assert_eq!(v["patch"], "compute-fix");
    assert_eq!(pids(&v["passed"]), sorted(&[&a, &c]), "{v}");
    assert_eq!(v["skipped"], json!([{"pid": b.pid, "reason": "already applied"}]));
    assert_eq!(v["failed"], json!([]));
    assert_eq!(v["exit"], 0);
    assert_eq!(common::code_bytes(a.pid, "target_pie", "compute"), before, "check changes nothing");
    assert!(!a.maps().contains("patch_compute.so"));
    assert_eq!(a.ask("c 5"), "6");
    assert_eq!(c.ask("c 5"), "6");
    assert_eq!(b.ask("c 5"), "500");
    let text = state.pannus(&["check", &m.to_string_lossy(), "--all"]).ok();
    assert!(text.stdout.contains("`compute-fix`: checks passed in 2, 1 skipped, 0 refused"), "{}", text.stdout);

    // A function the object lacks: refused in every process, exit 4, each named.
    let bad =
        state.manifest("missing-fix", "target_pie", "patch_compute.so", &[("no_such_function", "compute_v2")], "");
    let r = state.pannus(&["check", &bad.to_string_lossy(), "--all", "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    let v = r.json();
    assert_eq!(v["passed"], json!([]));
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 3, "{v}");
    assert!(failed.iter().all(|f| f["message"].as_str().unwrap().contains("no_such_function")), "{v}");
    assert_eq!(v["exit"], 4);
    state.rollback(b.pid, None).ok();
}

/// `commit --all`: every trial of the patch ended, committed; a second run has nothing to do
/// and succeeds; a patch whose requirement is on trial is refused unless `--yes` commits both.
#[test]
fn commit_all_commits_every_trial_of_a_patch() {
    let _serial = serial();
    let state = State::new();
    let mut a = Proc::start("target_pie");
    let mut b = Proc::start("target_pie");
    // Patch ids of this test's own: `commit --all` and `rollback --all` reach every process
    // on the machine that has the patch, whatever it runs.
    let m = state.manifest("commit-all-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.pannus(&["apply", &m.to_string_lossy(), "--all", "--yes", "--json"]).ok();

    let v = state.pannus(&["commit", "--all", "commit-all-fix", "--json"]).ok().json();
    assert_eq!(pids(&v["committed"]), sorted(&[&a, &b]), "{v}");
    assert_eq!(v["failed"], json!([]));
    assert_eq!(v["exit"], 0);
    for p in [&a, &b] {
        assert_eq!(state.status(p.pid)["patches"][0]["state"], "committed");
    }
    assert_eq!(a.ask("c 5"), "500");
    assert_eq!(b.ask("c 5"), "500");
    let v = state.pannus(&["commit", "--all", "commit-all-fix", "--json"]).ok().json();
    assert_eq!(v["committed"], json!([]));
    assert_eq!(v["skipped"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["skipped"][0]["reason"], "already committed");

    state.pannus(&["rollback", "--all", "commit-all-fix", "--yes"]).ok();
    let r = state.pannus(&["commit", "--all", "commit-all-fix", "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("not applied in any process"));

    // What it requires is on trial: refused without --yes, both committed with it.
    let base = state.manifest("commit-base", "target_pie", "patch_base.so", &[("compute", "compute_base")], "");
    let dep = state.manifest(
        "commit-dep",
        "target_pie",
        "patch_dep.so",
        &[("helper", "helper_v2")],
        "requires: [commit-base]\n",
    );
    state.apply(&base, a.pid).ok();
    state.apply(&dep, a.pid).ok();
    let r = state.pannus(&["commit", "--all", "commit-dep", "--json"]);
    assert_eq!(r.code, 4, "{r:?}");
    let v = r.json();
    assert!(v["failed"][0]["message"].as_str().unwrap().contains("requires `commit-base`"), "{v}");
    assert_eq!(state_of(&state, a.pid, "commit-base"), "trial");
    assert_eq!(state_of(&state, a.pid, "commit-dep"), "trial");
    let v = state.pannus(&["commit", "--all", "commit-dep", "--yes", "--json"]).ok().json();
    assert_eq!(v["committed"], json!([a.pid]));
    assert_eq!(state_of(&state, a.pid, "commit-base"), "committed");
    assert_eq!(state_of(&state, a.pid, "commit-dep"), "committed");
    let _ = state.pannus(&["rollback", "--pid", &a.pid.to_string(), "commit-base", "--cascade", "--yes"]);
}

/// The state of `patch` in process `pid`, as `status` reads it.
fn state_of(state: &State, pid: i32, patch: &str) -> String {
    let st = state.status(pid);
    let p = st["patches"].as_array().unwrap().iter().find(|p| p["patch"] == patch && p["state"] != "rolled-back");
    p.map_or("absent".to_string(), |p| p["state"].as_str().unwrap().to_string())
}
