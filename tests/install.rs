//! `pannus install`, `uninstall` and `installed` on real processes: an installed patch is in
//! every process of its build, recorded with a verified copy of its module, and taken back
//! from all of them by `uninstall`.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn installed(state: &State) -> Vec<serde_json::Value> {
    state.pannus(&["installed", "--json"]).ok().json().as_array().unwrap().clone()
}

fn install(state: &State, manifest: &Path) -> Run {
    state.pannus(&["install", manifest.to_str().unwrap(), "--yes", "--json"])
}

/// Install applies the patch to every process of the build and records it with a copy of the
/// module, which later applies work from even once the original file is gone.
#[test]
fn install_applies_to_every_process_of_the_build_and_records_it() {
    let state = State::new();
    let b = Build::new(&state);
    let (mut one, mut two) = (b.start(), b.start());
    // The module from a file of its own, removed after the install.
    let module = b.dir.join("fix.so");
    std::fs::copy(bin("patch_compute.so"), &module).unwrap();
    let m = b.manifest("inst-fix", "patch_compute.so", &[("compute", "compute_v2")], "");
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace(&bin("patch_compute.so").display().to_string(), &module.display().to_string());
    std::fs::write(&m, text).unwrap();

    let run = install(&state, &m).ok();
    let doc = run.json();
    assert_eq!(doc["installed"]["patch"], "inst-fix", "{doc}");
    assert_eq!(doc["apply"]["patched"].as_array().map(|a| a.len()), Some(2), "{doc}");
    assert_eq!(one.ask("c 5"), "500");
    assert_eq!(two.ask("c 5"), "500");
    let list = installed(&state);
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0]["state"].as_str(), list[0]["patched"].as_u64(), list[0]["processes"].as_u64()),
        (Some("trial"), Some(2), Some(2)),
        "{list:?}"
    );

    std::fs::remove_file(&module).unwrap();
    let mut three = b.start();
    assert_eq!(three.ask("c 5"), "6", "without the daemon a new process starts unpatched");
    assert_eq!(installed(&state)[0]["processes"], 3);
    let copy = PathBuf::from(list[0]["manifest"].as_str().unwrap());
    state.apply(&copy, three.pid).ok();
    assert_eq!(three.ask("c 5"), "500", "applied from the installed copy");
    // Installing it again changes nothing, the original module gone or not.
    let doc = install(&state, &m).ok().json();
    assert_eq!(doc["apply"]["patched"].as_array().map(|a| a.len()), Some(0), "{doc}");
    assert_eq!(installed(&state).len(), 1);
}

/// A patch whose requirement is not installed is refused; once it is, the install goes on.
#[test]
fn install_refuses_a_patch_whose_requirement_is_not_installed() {
    let state = State::new();
    let b = Build::new(&state);
    let mut t = b.start();
    let base = b.manifest("req-base", "patch_base.so", &[("compute", "compute_base")], "");
    let dep = b.manifest("req-dep", "patch_dep.so", &[("helper", "helper_v2")], "requires: [req-base]\n");
    let run = install(&state, &dep);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("requires `req-base`, which is not installed"), "{}", run.stderr);
    assert!(installed(&state).is_empty());
    install(&state, &base).ok();
    install(&state, &dep).ok();
    let names: Vec<String> = installed(&state).iter().map(|i| i["patch"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["req-base", "req-dep"]);
    assert_eq!(state.status(t.pid)["patches"].as_array().unwrap().len(), 2);
    assert_ne!(t.ask("c 5"), "6");
}

/// Uninstall rolls the patch back from every process and forgets it; one that others require
/// is refused, naming them, unless --cascade.
#[test]
fn uninstall_rolls_back_everywhere_and_forgets() {
    let state = State::new();
    let b = Build::new(&state);
    let (mut one, mut two) = (b.start(), b.start());
    let base = b.manifest("un-base", "patch_base.so", &[("compute", "compute_base")], "");
    let dep = b.manifest("un-dep", "patch_dep.so", &[("helper", "helper_v2")], "requires: [un-base]\n");
    install(&state, &base).ok();
    install(&state, &dep).ok();
    let run = state.pannus(&["uninstall", "un-base", "--yes", "--json"]);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("`un-dep`"), "{}", run.stderr);
    assert_eq!(installed(&state).len(), 2, "nothing changed");

    let doc = state.pannus(&["uninstall", "un-base", "--cascade", "--yes", "--json"]).ok().json();
    assert_eq!(doc["uninstalled"], serde_json::json!(["un-dep", "un-base"]), "{doc}");
    assert!(installed(&state).is_empty());
    assert_eq!(one.ask("c 5"), "6");
    assert_eq!(two.ask("c 5"), "6");
    assert!(state.status(one.pid)["patches"].as_array().unwrap().iter().all(|p| p["state"] == "rolled-back"));
}

/// A module whose checksum is not the manifest's is refused before anything is recorded or
/// applied; a patch for a build no process runs yet is installed for the processes to come.
#[test]
fn install_verifies_the_module_and_needs_no_running_process() {
    let state = State::new();
    let b = Build::new(&state);
    let m = b.manifest("later-fix", "patch_compute.so", &[("compute", "compute_v2")], "");
    install(&state, &m).ok();
    assert_eq!(installed(&state)[0]["processes"], 0);
    let mut t = b.start();
    assert_eq!(t.ask("c 5"), "6");

    let bad = b.manifest("bad-fix", "patch_compute.so", &[("compute", "compute_v2")], "");
    let text = std::fs::read_to_string(&bad).unwrap();
    let sha = text.lines().find_map(|l| l.trim().strip_prefix("sha256: ")).unwrap().to_string();
    std::fs::write(&bad, text.replace(&sha, &"0".repeat(64))).unwrap();
    let run = install(&state, &bad);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert_eq!(installed(&state).len(), 1, "bad-fix is not recorded");
    assert_eq!(t.ask("c 5"), "6");
}

const FAILING_CHECK: &str =
    "trial:\n  duration: 10m\n  health_check:\n    command: \"false\"\n    interval: 100ms\n    failures: 1\n";
const PASSING_CHECK: &str =
    "trial:\n  duration: 10m\n  health_check:\n    command: kill -0 $PANNUS_PID\n    interval: 100ms\n";

/// A canary whose health check fails is rolled back and no other process is touched; the
/// run says which process was the canary and what happened, and exits non-zero.
#[test]
fn a_failing_canary_leaves_every_other_process_untouched() {
    let state = State::new();
    let b = Build::new(&state);
    let mut procs = vec![b.start(), b.start(), b.start()];
    let m = b.manifest("canary-fix", "patch_compute.so", &[("compute", "compute_v2")], FAILING_CHECK);
    let run = state.pannus(&[
        "apply",
        m.to_str().unwrap(),
        "--all",
        "--canary",
        "1",
        "--canary-trial",
        "10m",
        "--yes",
        "--json",
    ]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let doc = run.json();
    assert_eq!(doc["canary"], "failed", "{doc}");
    assert_eq!(doc["canaries"].as_array().map(|a| a.len()), Some(1), "{doc}");
    assert!(doc["rest_apply"].is_null(), "{doc}");
    for p in &mut procs {
        assert_eq!(p.ask("c 5"), "6", "process {} is as it was", p.pid);
    }
}

/// Canaries that stay healthy through their trial let the patch reach every process.
#[test]
fn a_passing_canary_reaches_all() {
    let state = State::new();
    let b = Build::new(&state);
    let mut procs = vec![b.start(), b.start(), b.start()];
    let m = b.manifest("canary-pass", "patch_compute.so", &[("compute", "compute_v2")], PASSING_CHECK);
    let doc = state
        .pannus(&["apply", m.to_str().unwrap(), "--all", "--canary", "2", "--canary-trial", "1s", "--yes", "--json"])
        .ok()
        .json();
    assert_eq!(doc["canary"], "passed", "{doc}");
    assert_eq!(doc["rest_apply"]["patched"].as_array().map(|a| a.len()), Some(1), "{doc}");
    for p in &mut procs {
        assert_eq!(p.ask("c 5"), "500");
    }
}

/// An install whose canary fails is recorded as rolled back, with the reason, so that no new
/// process gets it.
#[test]
fn an_install_whose_canary_fails_is_rolled_back_for_new_processes_too() {
    let state = State::new();
    let b = Build::new(&state);
    let (mut one, mut two) = (b.start(), b.start());
    let m = b.manifest("canary-inst", "patch_compute.so", &[("compute", "compute_v2")], FAILING_CHECK);
    let run =
        state.pannus(&["install", m.to_str().unwrap(), "--canary", "1", "--canary-trial", "10m", "--yes", "--json"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let list = installed(&state);
    assert_eq!(list[0]["state"], "rolled-back", "{list:?}");
    assert!(list[0]["reason"].as_str().unwrap().starts_with("canary failed"), "{list:?}");
    assert_eq!(one.ask("c 5"), "6");
    assert_eq!(two.ask("c 5"), "6");
}

/// An install killed during its canary trial leaves the rollout recorded as interrupted (the
/// daemon goes on holding the patch back); `install` again finishes it.
#[test]
fn an_interrupted_canary_rollout_is_shown_and_install_again_finishes_it() {
    let state = State::new();
    let b = Build::new(&state);
    let mut procs = vec![b.start(), b.start()];
    let m = b.manifest("canary-intr", "patch_compute.so", &[("compute", "compute_v2")], PASSING_CHECK);
    let mut rollout = state.spawn_pannus(&[
        "install",
        m.to_str().unwrap(),
        "--canary",
        "1",
        "--canary-trial",
        "10m",
        "--yes",
        "--json",
    ]);
    wait_until("the canary trial runs", || installed(&state).first().is_some_and(|i| i["canary"]["running"] == true));
    let list = installed(&state);
    let canary = list[0]["canary"]["canaries"][0].as_i64().unwrap() as i32;
    wait_until("the canary is on trial", || state.status(canary)["patches"][0]["state"] == "trial");
    assert_eq!(list[0]["canary"]["canaries"].as_array().map(Vec::len), Some(1), "{list:?}");
    assert!(list[0]["canary"]["remaining_s"].as_u64().unwrap() > 500, "{list:?}");
    let busy = install(&state, &m);
    assert_eq!(busy.code, 3, "a second install meanwhile is busy: {}{}", busy.stdout, busy.stderr);
    let busy = state.pannus(&["uninstall", "canary-intr", "--yes", "--json"]);
    assert_eq!(busy.code, 3, "so is an uninstall: {}{}", busy.stdout, busy.stderr);

    rollout.kill().unwrap();
    rollout.wait().unwrap();
    let list = installed(&state);
    assert_eq!(list[0]["canary"]["running"], false, "{list:?}");
    let text = state.pannus(&["installed"]).ok().stdout;
    assert!(text.contains("canary rollout interrupted"), "{text}");

    let doc = install(&state, &m).ok().json();
    assert!(doc["installed"]["canary"].is_null(), "{doc}");
    for p in &mut procs {
        assert_eq!(p.ask("c 5"), "500", "process {} has it", p.pid);
    }
    assert!(installed(&state)[0]["canary"].is_null());
}

/// A health check failing in one process during the trial of an installed patch rolls it back
/// everywhere and stops it for new processes: `installed` says why, the journal names the
/// process where it failed.
#[test]
fn a_health_check_failing_in_one_process_rolls_an_installed_patch_back_everywhere() {
    let state = State::new();
    let b = Build::new(&state);
    let mut procs = vec![b.start(), b.start(), b.start()];
    let marks = state.path().join("unhealthy");
    std::fs::create_dir(&marks).unwrap();
    let check = format!(
        "trial:\n  duration: 10m\n  health_check:\n    command: test ! -e {}/$PANNUS_PID\n    interval: 200ms\n    failures: 2\n",
        marks.display()
    );
    let m = b.manifest("health-fix", "patch_compute.so", &[("compute", "compute_v2")], &check);
    install(&state, &m).ok();
    for p in &mut procs {
        assert_eq!(p.ask("c 5"), "500");
    }
    let sick = procs[1].pid;
    std::fs::write(marks.join(sick.to_string()), "").unwrap();
    for p in &mut procs {
        wait_until("every process is rolled back", || p.ask("c 5") == "6");
    }
    let list = installed(&state);
    assert_eq!(list[0]["state"], "rolled-back", "{list:?}");
    let reason = list[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("in a row in process {sick}:")), "{reason}");
    let others: Vec<i32> = procs.iter().map(|p| p.pid).filter(|&p| p != sick).collect();
    // Each rollback is journaled once it is done, just after the code is back.
    wait_until("each other process's rollback is journaled with the reason", || {
        let journal = journal(&state);
        others.iter().all(|&pid| {
            journal.iter().any(|e| {
                e["pid"] == pid
                    && e["action"] == "rollback"
                    && e["detail"].as_str().unwrap_or_default().contains(&format!("in process {sick}"))
            })
        })
    });
}

/// An installed patch is the desired state of one build: uninstalling it rolls it back from
/// the processes of that build only, not from a process of another program that has a patch of
/// the same id.
#[test]
fn uninstall_leaves_a_patch_of_the_same_id_in_another_build_alone() {
    let state = State::new();
    let b = Build::new(&state);
    let mut mine = b.start();
    let m = b.manifest("same-id", "patch_compute.so", &[("compute", "compute_v2")], "");
    install(&state, &m).ok();
    let mut other = Proc::start("target_nopie");
    let elsewhere = state.manifest("same-id", "target_nopie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&elsewhere, other.pid).ok();
    assert_eq!(other.ask("c 5"), "500");

    state.pannus(&["uninstall", "same-id", "--yes", "--json"]).ok();
    assert_eq!(mine.ask("c 5"), "6");
    assert_eq!(other.ask("c 5"), "500", "the other program keeps its patch");
}
