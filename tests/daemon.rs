//! `pannus daemon` on real processes: installed patches (written here as `pannus install`
//! writes them) applied to every new process of their build, as it starts.

mod common;

use common::daemon::{install, Daemon};
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One daemon at a time: every daemon sees every new process of the machine, and two with
/// different state folders would patch the same ones.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn compute_fix(state: &State) -> PathBuf {
    state.manifest("compute-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "")
}

/// Waits until `t` answers `c 5` with the patched 500; whether its first answer already was.
fn patched(t: &mut Proc) -> bool {
    let first = t.ask("c 5") == "500";
    wait_until("the new process is patched", || t.ask("c 5") == "500");
    first
}

/// Starts `target_pie` `n` times, each waited for until patched; returns how many answered
/// patched at once and how many were patched before main.
fn restarts(state: &State, n: usize, expect: &str) -> (usize, usize) {
    let (mut at_once, mut before_main) = (0, 0);
    for _ in 0..n {
        let mut t = Proc::start("target_pie");
        at_once += usize::from(patched(&mut t));
        before_main += usize::from(t.ask("F") == "500");
        // The jump is written before the record says so.
        wait_until("the record says the patch is in", || state.status(t.pid)["patches"][0]["state"] == expect);
        assert_eq!(state.status(t.pid)["patches"][0]["patch"], "compute-fix");
        t.quit();
    }
    (at_once, before_main)
}

#[test]
fn twenty_restarts_each_come_up_patched_and_sigterm_ends_the_daemon_with_0() {
    let _one = one_at_a_time();
    let state = State::new();
    install(&state, &compute_fix(&state), "committed", None);
    let mut d = Daemon::start(&state, &[]);
    assert!(d.log().contains("process-events connector"), "{}", d.log());
    let (at_once, before_main) = restarts(&state, 20, "committed");
    eprintln!("20 restarts: {at_once} answered patched at once, {before_main} patched before main");
    // fanotify holds each exec and the daemon patches the program at its entry point.
    assert!(d.log().contains("(fanotify)"), "{}", d.log());
    assert_eq!(before_main, 20, "every restart patched before main");
    let daemon_applies = journal(&state)
        .iter()
        .filter(|e| e["action"] == "apply" && e["outcome"] == "ok" && e["source"] == "daemon")
        .count();
    assert_eq!(daemon_applies, 20, "every apply journaled as the daemon's");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait(), 0, "{}", d.log());
    // Its last lines may still be on their way through the pipe.
    wait_until("the daemon says it stopped", || d.log().contains("pannus daemon: stopped"));
    // Stopped, it patches nothing.
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn without_holding_the_exec_new_processes_are_patched_just_after_it() {
    let _one = one_at_a_time();
    let state = State::new();
    install(&state, &compute_fix(&state), "committed", None);
    let mut d = Daemon::start(&state, &["--no-hold"]);
    assert!(d.log().contains("process-events connector") && !d.log().contains("(fanotify)"), "{}", d.log());
    let (at_once, before_main) = restarts(&state, 5, "committed");
    eprintln!("5 restarts after exec: {at_once} answered patched at once, {before_main} patched before main");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait(), 0, "{}", d.log());
}

#[test]
fn without_the_connector_walking_proc_patches_new_processes_too() {
    let _one = one_at_a_time();
    let state = State::new();
    install(&state, &compute_fix(&state), "committed", None);
    let mut d = Daemon::start(&state, &["--poll"]);
    assert!(d.log().contains("walking /proc"), "{}", d.log());
    restarts(&state, 5, "committed");
    d.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(d.wait(), 0, "{}", d.log());
}

#[test]
fn a_patch_installed_on_trial_is_applied_on_trial_until_the_same_deadline() {
    let _one = one_at_a_time();
    let state = State::new();
    let deadline = std::time::SystemTime::now() + Duration::from_secs(600);
    let rfc = humantime::format_rfc3339_seconds(deadline).to_string();
    let secs = deadline.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    install(&state, &compute_fix(&state), "trial", Some(&rfc));
    let _d = Daemon::start(&state, &[]);
    let mut t = Proc::start("target_pie");
    patched(&mut t);
    let st = state.status(t.pid);
    assert_eq!(st["patches"][0]["state"], "trial", "{st}");
    let got = humantime::parse_rfc3339_weak(st["patches"][0]["trial_deadline"].as_str().unwrap()).unwrap();
    let got = got.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert_eq!(got, secs, "the installed trial's deadline, to the second");
    // Its trial watcher runs, as after `apply` (a walk of /proc can miss a pid while others come
    // and go: looked for until seen).
    let watchers = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(&format!("trial-watch\0--pid\0{}\0", t.pid)))
            .count()
    };
    wait_until("its trial watcher is seen", || watchers() == 1);
    // Rolled back, and the watcher ends with the trial.
    state.rollback(t.pid, Some("compute-fix")).ok();
}

#[test]
fn a_patch_installed_rolled_back_or_for_another_build_is_not_applied() {
    let _one = one_at_a_time();
    let state = State::new();
    install(&state, &compute_fix(&state), "rolled-back", None);
    let other = state.manifest("nopie-fix", "target_nopie", "patch_compute.so", &[("compute", "compute_v2")], "");
    install(&state, &other, "committed", None);
    let d = Daemon::start(&state, &[]);
    let mut t = Proc::start("target_pie");
    // The same program answered by a patched sibling proves the daemon looked.
    let mut n = Proc::start("target_nopie");
    wait_until("the other build is patched", || n.ask("c 5") == "500");
    assert_eq!(t.ask("c 5"), "6");
    assert!(state.status(t.pid)["patches"].as_array().unwrap().is_empty());
    drop(d);
}

#[test]
fn a_worker_respawned_by_its_supervisor_comes_up_patched_each_time() {
    let _one = one_at_a_time();
    let state = State::new();
    install(&state, &compute_fix(&state), "committed", None);
    let _d = Daemon::start(&state, &[]);
    let script = format!("while :; do {}; done", bin("target_pie").display());
    let mut sup = Proc::spawn({
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    });
    let worker = |sup: i32| -> i32 {
        let kids = std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap_or_default();
        kids.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0)
    };
    let mut seen = Vec::new();
    for round in 0..3 {
        if round > 0 {
            // The worker quits; the supervisor starts another.
            sup.send("q");
            assert_eq!(sup.line(), "ready");
        }
        let first = sup.ask("c 5") == "500";
        wait_until("the respawned worker is patched", || sup.ask("c 5") == "500");
        let w = worker(sup.pid);
        assert!(w > 0 && !seen.contains(&w), "a new worker {w} (before: {seen:?}), patched at once: {first}");
        seen.push(w);
    }
}

#[test]
fn a_daemon_killed_with_sigkill_and_started_again_patches_new_processes() {
    let _one = one_at_a_time();
    let state = State::new();
    install(&state, &compute_fix(&state), "committed", None);
    let mut d = Daemon::start(&state, &[]);
    restarts(&state, 2, "committed");
    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(d.wait(), 128 + 9);
    // Started while the daemon was down: patched by the next one, which looks at every process.
    let mut early = Proc::start("target_pie");
    assert_eq!(early.ask("c 5"), "6");
    let _d = Daemon::start(&state, &[]);
    wait_until("the process started meanwhile is patched", || early.ask("c 5") == "500");
    restarts(&state, 3, "committed");
}

/// A patch rolled back by hand in one process stays rolled back there: a daemon started again
/// (which looks at every process) does not apply it to that process again, while it still
/// applies it to the others.
#[test]
fn a_daemon_started_again_leaves_a_process_rolled_back_by_hand_alone() {
    let _one = one_at_a_time();
    let state = State::new();
    install(&state, &compute_fix(&state), "committed", None);
    let mut kept_out = Proc::start("target_pie");
    let mut d = Daemon::start(&state, &[]);
    wait_until("the running process is patched", || kept_out.ask("c 5") == "500");
    state.rollback(kept_out.pid, Some("compute-fix")).ok();
    assert_eq!(kept_out.ask("c 5"), "6");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait(), 0, "{}", d.log());

    let mut other = Proc::start("target_pie");
    let d = Daemon::start(&state, &[]);
    wait_until("the other process is patched", || other.ask("c 5") == "500");
    wait_until("the daemon has looked at every process", || {
        d.log().contains(&format!("applied to process {}", other.pid))
    });
    // What must not happen has no event to wait for: the daemon looks at every process once a
    // second (each on a thread of its own), so the process is watched for two of its rounds.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(2) {
        assert_eq!(kept_out.ask("c 5"), "6", "{}", d.log());
    }
    assert!(!d.log().contains(&format!("process {}", kept_out.pid)), "{}", d.log());
}

/// A process rolled back by an uninstall gets the patch again when it is installed again: the
/// daemon leaves alone only the processes where it was rolled back since it was installed.
#[test]
fn a_patch_installed_again_reaches_a_process_its_uninstall_rolled_back() {
    let _one = one_at_a_time();
    let state = State::new();
    let m = compute_fix(&state);
    install(&state, &m, "committed", None);
    let mut t = Proc::start("target_pie");
    let d = Daemon::start(&state, &[]);
    wait_until("the process is patched", || t.ask("c 5") == "500");
    state.pannus(&["uninstall", "compute-fix", "--yes", "--json"]).ok();
    assert_eq!(t.ask("c 5"), "6");
    // Installed again, later than that rollback (the record's times are in seconds).
    install(&state, &m, "committed", None);
    let state_json = state.path().join("installed/compute-fix/state.json");
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    std::fs::write(&state_json, format!("{{\"state\": \"committed\", \"installed_at\": {later}}}")).unwrap();
    wait_until("the daemon patches it again", || t.ask("c 5") == "500");
    drop(d);
}

#[test]
fn a_patch_in_a_shared_library_applies_to_new_processes_of_another_program() {
    let _one = one_at_a_time();
    let state = State::new();
    let m = state.manifest("lib-fix", "libtarget.so", "patch_lib.so", &[("lib_compute", "lib_compute_v2")], "");
    install(&state, &m, "committed", None);
    let _d = Daemon::start(&state, &[]);
    let mut t = Proc::start("target_lib");
    wait_until("the library is patched", || t.ask("l 5") == "-5");
    assert_eq!(t.ask("c 5"), "6", "the program's own function is untouched");
}

#[test]
fn a_process_the_daemon_cannot_patch_is_let_go_unpatched_and_journaled() {
    let _one = one_at_a_time();
    let state = State::new();
    let m = state.manifest("missing-fix", "target_pie", "patch_missing.so", &[("compute", "compute_missing")], "");
    install(&state, &m, "committed", None);
    let _d = Daemon::start(&state, &[]);
    let mut t = Proc::start("target_pie");
    let refused = |pid: i32| {
        journal(&state)
            .into_iter()
            .filter(|e| e["pid"] == pid && e["action"] == "apply" && e["source"] == "daemon")
            .collect::<Vec<_>>()
    };
    wait_until("the daemon journals the failure", || !refused(t.pid).is_empty());
    assert_eq!(t.ask("F"), "6");
    assert_eq!(t.ask("c 5"), "6");
    assert!(state.status(t.pid)["patches"].as_array().unwrap().is_empty());
    assert!(!t.maps().contains("patch_missing"), "nothing left in the process");
    let entries = refused(t.pid);
    assert_eq!(entries.len(), 1, "tried once: {entries:?}");
    assert_ne!(entries[0]["outcome"], "ok");
    assert!(entries[0]["detail"].as_str().unwrap().contains("no_such_symbol"), "{entries:?}");
}

#[test]
fn a_process_parked_at_its_entry_point_goes_on_by_itself_when_the_daemon_is_killed() {
    let _one = one_at_a_time();
    let state = State::new();
    install(&state, &compute_fix(&state), "committed", None);
    let env = [("PANNUS_TEST_PAUSE_AT", "process parked at its entry point"), ("PANNUS_TEST_POINTS", "1")];
    let mut d = Daemon::start_env(&state, &[], &env);
    // Proc::start waits for the target's "ready": started on a thread of its own.
    let started = std::thread::spawn(|| Proc::start("target_pie"));
    wait_until("the daemon holds the process", || {
        d.log().contains("process parked at its entry point") && thread_state(d.pid(), d.pid()) == Some('T')
    });
    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(d.wait(), 128 + 9);
    let mut t = started.join().expect("the target came up without the daemon");
    assert_eq!(t.ask("F"), "6");
    assert_eq!(t.ask("c 5"), "6");
    assert_eq!(t.ask("s"), "7 100", "its data as the program set it");
}

/// How process `pid` ended, when it has: its exit status as `wait` gives it (the exit code
/// shifted by 8, or the signal that killed it), read from `/proc/PID/stat` of the zombie its
/// parent has not reaped.
fn ended(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Field 3 is the state, field 52 the exit status.
    (fields.first() == Some(&"Z")).then(|| fields.get(49)?.parse().ok())?
}

/// A library preloaded into the program forks in its constructor, before the program's entry
/// point, where the daemon has planted an `int3` to hold the process: the child, a copy of the
/// process with that `int3` in its copy of the code, goes on to `main` on its own and ends
/// normally, and the parent is patched before `main`.
#[test]
fn a_child_forked_before_the_entry_point_goes_on_unharmed() {
    let _one = one_at_a_time();
    let state = State::new();
    install(&state, &compute_fix(&state), "committed", None);
    let _d = Daemon::start(&state, &[]);
    let out = state.path().join("constructor-child");
    let mut command = Command::new(bin("target_pie"));
    command.env("LD_PRELOAD", bin("fork_ctor.so")).env("FORK_CTOR_OUT", &out);
    let mut t = Proc::spawn(command);
    assert_eq!(t.ask("F"), "500", "the parent is patched before main");
    let child: i32 = std::fs::read_to_string(&out).unwrap().trim().parse().unwrap();
    // Its input is /dev/null: it ends at once, and stays a zombie its parent never reaps.
    let mut status = None;
    wait_until("the constructor's child ends", || {
        status = ended(child);
        status.is_some()
    });
    assert_eq!(status, Some(0), "the child exited with 0, not killed by SIGTRAP (5; 133 with a core)");
}

#[test]
fn a_library_loaded_later_with_dlopen_is_patched_once_mapped() {
    let _one = one_at_a_time();
    let state = State::new();
    let m = state.manifest("lib-fix", "libtarget.so", "patch_lib.so", &[("lib_compute", "lib_compute_v2")], "");
    install(&state, &m, "committed", None);
    let _d = Daemon::start(&state, &[]);
    let mut t = Proc::start("target_pie");
    assert!(!t.maps().contains("libtarget.so"));
    assert_eq!(t.ask(&format!("D {}", bin("libtarget.so").display())), "loaded");
    wait_until("the library loaded later is patched", || t.ask("L 5") == "-5");
    assert_eq!(state.status(t.pid)["patches"][0]["patch"], "lib-fix");
    assert_eq!(t.ask("c 5"), "6", "the program's own function is untouched");
}

/// End to end with the real commands: `pannus install` for a build no process runs yet, the
/// daemon patches each new process before main; `pannus uninstall` takes it back from the
/// running one, and the next new process starts unpatched.
#[test]
fn install_then_new_processes_come_up_patched_and_uninstall_ends_it() {
    let _one = one_at_a_time();
    let state = State::new();
    let m = compute_fix(&state);
    state.pannus(&["install", m.to_str().unwrap(), "--yes"]).ok();
    let _d = Daemon::start(&state, &[]);
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("F"), "500", "patched before main");
    assert_eq!(state.pannus(&["installed", "--json"]).ok().json()[0]["patched"], 1);
    state.pannus(&["uninstall", "compute-fix", "--yes"]).ok();
    assert_eq!(t.ask("c 5"), "6");
    let mut u = Proc::start("target_pie");
    assert_eq!(u.ask("c 5"), "6", "nothing installed: a new process starts as it is");
}

/// While `pannus install --canary` keeps its canaries through their trial, the patch goes to no
/// other process: not the running ones the daemon looks at each second, not the new ones.
/// `installed` shows the rollout under way. The canary fails here: every other process is
/// left as it was.
#[test]
fn a_canary_rollout_under_way_keeps_the_daemon_off_the_other_processes() {
    let _one = one_at_a_time();
    let state = State::new();
    let exe = state.path().join("svc");
    std::fs::copy(bin("target_pie"), &exe).unwrap();
    let module = bin("patch_compute.so");
    let manifest = state.path().join("daemon-canary.yaml");
    std::fs::write(
        &manifest,
        format!(
            "patch: daemon-canary\nversion: \"1.0\"\ntarget:\n  object: {}\n  build_id: {}\nmodule:\n  path: {}\n  sha256: {}\n\
             functions:\n  - target: compute\n    replacement: compute_v2\n\
             trial:\n  duration: 10m\n  health_check:\n    command: test ! -e {}/unhealthy\n    interval: 200ms\n    failures: 1\n",
            exe.display(),
            build_id(&exe),
            module.display(),
            pannus::sha256_file(&module).unwrap(),
            state.path().display()
        ),
    )
    .unwrap();
    let d = Daemon::start(&state, &[]);
    let mut procs = [Proc::spawn(Command::new(&exe)), Proc::spawn(Command::new(&exe))];
    let rollout = state.spawn_pannus(&[
        "install",
        manifest.to_str().unwrap(),
        "--canary",
        "1",
        "--canary-trial",
        "10m",
        "--yes",
        "--json",
    ]);
    let mut canary = None;
    wait_until("a canary is patched", || {
        canary = procs.iter_mut().position(|p| p.ask("c 5") == "500");
        canary.is_some()
    });
    let canary = procs[canary.unwrap()].pid;
    let list = state.pannus(&["installed", "--json"]).ok().json();
    assert_eq!(list[0]["canary"]["canaries"], serde_json::json!([canary]), "{list}");
    assert_eq!(list[0]["canary"]["running"], true, "{list}");
    // A new process during the canary trial, and the daemon's looks at every process.
    let mut new = Proc::spawn(Command::new(&exe));
    wait_until("the daemon has read the rollout", || {
        d.log().contains("`daemon-canary`: a canary rollout is under way")
    });
    // What must not happen has no event to wait for: the daemon looks at every process once a
    // second, so the others are watched for two of its rounds.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(2) {
        for p in procs.iter_mut().filter(|p| p.pid != canary).chain(std::iter::once(&mut new)) {
            assert_eq!(p.ask("c 5"), "6", "process {} got the patch during the canary trial\n{}", p.pid, d.log());
        }
    }
    std::fs::write(state.path().join("unhealthy"), "").unwrap();
    let out = rollout.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    for p in procs.iter_mut().chain(std::iter::once(&mut new)) {
        assert_eq!(p.ask("c 5"), "6", "process {} is as it was\n{}", p.pid, d.log());
    }
    let list = state.pannus(&["installed", "--json"]).ok().json();
    assert_eq!(list[0]["state"], "rolled-back", "{list}");
    assert!(list[0]["canary"].is_null(), "{list}");
}
