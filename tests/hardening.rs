//! A hostile, unusual or busy target, and operators working at the same time: pannus never
//! hurts the target and every command still does what it says.

mod common;
use common::{Proc, State};

/// Five applies of different patches to one process at once, then five rollbacks: each waits
/// for the process's lock and then plans against the process as it is after the others, so all
/// succeed in turn.
#[test]
fn concurrent_applies_and_rollbacks_of_different_patches_all_succeed() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let ids: Vec<String> = (1..=5).map(|i| format!("fix-{i}")).collect();
    let manifests: Vec<_> = ids
        .iter()
        .map(|id| state.manifest(id, "target_pie", "patch_compute.so", &[("compute", "compute_v2")], ""))
        .collect();
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = manifests.iter().map(|m| s.spawn(|| state.apply(m, t.pid))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, r) in ids.iter().zip(&runs) {
        assert_eq!(r.code, 0, "apply of `{id}` failed:\n{}", r.stderr);
    }
    let st = state.status(t.pid);
    let states: Vec<&str> = st["patches"].as_array().unwrap().iter().map(|p| p["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["trial"; 5], "{st}");
    assert_eq!(t.ask("c 5"), "500");
    // And five rollbacks at once, each of its own patch.
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = ids.iter().map(|id| s.spawn(|| state.rollback(t.pid, Some(id)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, r) in ids.iter().zip(&runs) {
        assert_eq!(r.code, 0, "rollback of `{id}` failed:\n{}", r.stderr);
    }
    assert_eq!(t.ask("c 5"), "6");
    assert!(!t.maps().contains("patch_compute.so"), "every module unloaded");
}

/// Polls `what` every 50 ms for up to 30 s (a loaded machine is slow) until it is `Some`.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "never happened: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The trial watcher meets the process locked by another pannus (an engineer at a prompt)
/// when the trial runs out: it keeps trying, says so in the journal, and rolls the patch back
/// once the lock is free.
#[test]
fn the_trial_watcher_retries_until_its_policy_is_carried_out() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest(
        "retry-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 1s\n  on_expiry: rollback\n",
    );
    let args = ["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"];
    state.pannus_env(&args, &[("PANNUS_LOCK_WAIT", "100ms")]).ok();
    assert_eq!(t.ask("c 5"), "500");
    // Held by "another pannus" from before the deadline.
    let held = pannus::ProcessLock::acquire(state.path(), t.pid, std::time::Duration::from_secs(5)).unwrap();
    eventually("the watcher found the process busy and said so", || {
        let j = state.pannus(&["journal", "--json"]).ok().json();
        j["entries"].as_array().unwrap().iter().any(|e| e["action"] == "trial-watch").then_some(())
    });
    assert_eq!(t.ask("c 5"), "500", "still patched while the lock is held");
    drop(held);
    eventually("the patch was rolled back by its policy", || {
        (state.status(t.pid)["patches"][0]["state"] == "rolled-back").then_some(())
    });
    assert_eq!(t.ask("c 5"), "6");
}

/// A function with a nop pad around its entry whose body begins with a call: the 2 nops at the
/// entry take a short jump into the pad, and the call is never touched.
#[test]
fn a_padded_function_whose_body_begins_with_a_call_is_patched_through_its_pad() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("g 4"), "12");
    let m = state.manifest("padcall-fix", "target_pie", "patch_tiny.so", &[("padded_call", "tiny_v2")], "");
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(t.ask("g 4"), "5");
    assert_eq!(state.status(t.pid)["patches"][0]["functions"][0]["jump"], "pad");
    // A second patch stacks on the same pad; the first rolled back first hands it the
    // original bytes.
    let m2 = state.manifest("padcall-fix2", "target_pie", "patch_compute.so", &[("padded_call", "compute_v2")], "");
    state.apply(&m2, t.pid).ok();
    assert_eq!(t.ask("g 4"), "400");
    state.rollback(t.pid, Some("padcall-fix")).ok();
    assert_eq!(t.ask("g 4"), "400");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("g 4"), "12");
    assert!(!t.maps().contains("patch_tiny.so") && !t.maps().contains("patch_compute.so"));
}

/// Under `consistency: function`, a thread whose stack passes through code no unwinding table
/// describes (here an anonymous executable mapping, as a JIT's) may hide the old function
/// below that frame: its backtrace is unknown, so the switch is refused as busy.
#[test]
fn a_stack_through_unknown_code_counts_as_busy_under_the_function_rule() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("J"), "started");
    eventually("the thread spins in the anonymous code", || {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", t.pid)).unwrap();
        tasks
            .flatten()
            .any(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let syscall = std::fs::read_to_string(e.path().join("syscall")).unwrap_or_default();
                stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('R'))
                    && syscall.starts_with("running")
            })
            .then_some(())
    });
    let extra = "safety:\n  consistency: function\n  retries: 3\n  retry_interval: 10ms\n";
    let m = state.manifest("jit-fix", "target_pie", "patch_compute.so", &[("calls_out", "compute_v2")], extra);
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 3, "busy expected:\n{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("cannot be unwound") || r.stderr.contains("unknown"), "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "6", "untouched");
}

/// A compromised target rewrites the health check in its registry record (a private mapping
/// it can make writable): the trial watcher, root, must not run it. It runs the check it was
/// given by the manifest, kept in the state folder.
#[test]
fn the_trial_watcher_never_runs_a_command_read_from_the_target() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let marker = state.path().join("run-by-root");
    let m = state.manifest(
        "hc-trust",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 10m\n  health_check:\n    command: \"true\"\n    interval: 100ms\n",
    );
    state.apply(&m, t.pid).ok();
    // What the target can do to itself: rewrite its registry.
    let mem = pannus_kernel::Mem::open(t.pid).unwrap();
    let loc = pannus::registry::locate(&pannus_kernel::maps::read(t.pid).unwrap()).unwrap();
    let mut reg = pannus::registry::read(&mem, loc).unwrap();
    let evil = format!("touch {}", marker.display());
    reg.patches[0].health_check.as_mut().unwrap().command = evil.clone();
    pannus::registry::write(&mem, loc, &reg).unwrap();
    let runs = |st: &serde_json::Value| st["patches"][0]["health"]["runs"].as_u64().unwrap_or(0);
    let before = runs(&state.status(t.pid));
    eventually("the health check ran three more times", || (runs(&state.status(t.pid)) >= before + 3).then_some(()));
    assert!(!marker.exists(), "root ran `{evil}`, a command the target wrote into its registry");
    assert_eq!(state.status(t.pid)["patches"][0]["health"]["last"], "ok");
}

/// The target sees another file at the module's path (its own mount namespace, as in a
/// container): what it maps is the module pannus verified, never the file it would open.
#[test]
fn the_target_maps_the_verified_module_not_the_file_at_its_path() {
    for load in ["mmap", "dlopen"] {
        let state = State::new();
        let (module, other) = (common::bin("patch_compute.so"), common::bin("patch_other.so"));
        let mut wrapper = std::process::Command::new("unshare");
        wrapper.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount --bind "$1" "$2" && exec "$3""#,
            "sh",
        ]);
        wrapper.args([&other, &module, &common::bin("target_pie")]);
        let mut t = Proc::spawn(wrapper);
        let m =
            state.manifest(&format!("ns-{load}"), "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
        common::set_load(&m, load);
        let r = state.apply(&m, t.pid);
        assert_eq!(r.code, 0, "{load}: {}", r.stderr);
        assert_eq!(t.ask("c 5"), "500", "{load}: the verified module runs, not the file the target sees");
        assert!(t.maps().contains("/memfd:patch_compute.so"), "{load}: mapped from the handed-over memfd");
        let st = state.status(t.pid);
        assert_ne!(st["patches"][0]["module_base"], "0x0", "{load}: the module's range is recorded: {st}");
        state.rollback(t.pid, None).ok();
        assert_eq!(t.ask("c 5"), "6");
    }
}

/// A seccomp filter that kills the process on a system call number it does not list (as an
/// allowlist does) sees -1 whenever pannus skips a call made under ptrace: pre-flight must
/// refuse such a process, naming it, and leave it running, rather than have it killed halfway.
#[test]
fn a_filter_that_kills_on_a_skipped_call_is_refused_up_front() {
    let state = State::new();
    let mut t = Proc::start("target_seccomp_kill_skipped");
    let m =
        state.manifest("skip-fix", "target_seccomp_kill_skipped", "patch_compute.so", &[("compute", "compute_v2")], "");
    let r = state.apply(&m, t.pid);
    assert!(t.alive(), "the target was killed by its own filter: {}", r.stderr);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("seccomp filter refuses"), "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "6");
}

/// A module whose constructor registered an exit handler: rollback runs the module's
/// finalisers (which take the handler back, as `dlclose` would) before unmapping it, so the
/// process later exits cleanly instead of jumping into unmapped memory.
#[test]
fn rollback_runs_the_module_finalisers_before_unmapping_it() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("atexit-fix", "target_pie", "patch_atexit.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 5"), "500");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.line(), "exit handler of the module ran", "run by the rollback, where the module was");
    assert!(!t.maps().contains("patch_atexit.so"), "unmapped");
    assert_eq!(t.ask("c 5"), "6");
    let status = t.quit();
    assert!(status.success(), "the process exits cleanly: {status}");
}

/// Runs `pannus ARGS` with `env`, returning its stderr.
fn pannus_stderr(state: &State, args: &[&str], env: &[(&str, &str)]) -> String {
    state.pannus_env(args, env).stderr
}

/// Patch A is on trial; an apply of B on the same function is killed after it recorded B as
/// `activating` but before it wrote its jump. Rolling A back restores A's bytes itself (its
/// jump is still the one in place) instead of handing them to B's record, which never wrote.
#[test]
fn a_rollback_does_not_hand_its_bytes_to_a_patch_that_never_wrote_its_jump() {
    let state = State::new();
    let a = state.manifest("fix-a", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let b = state.manifest("fix-b", "target_pie", "patch_tiny.so", &[("compute", "tiny_v2")], "");
    let (a, b) = (a.to_string_lossy().into_owned(), b.to_string_lossy().into_owned());
    // Where B's apply writes its `activating` record: the last registry write before the jump.
    let kill_at = {
        let t = Proc::start("target_pie");
        let pid = t.pid.to_string();
        state.pannus(&["apply", &a, "--pid", &pid, "--yes"]).ok();
        let err = pannus_stderr(&state, &["apply", &b, "--pid", &pid, "--yes"], &[("PANNUS_TEST_POINTS", "1")]);
        let points: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("pannus: test point ")).collect();
        let jump = points.iter().position(|p| p.ends_with(": entry bytes written")).expect("a jump written");
        points[..jump].iter().rposition(|p| p.ends_with(": registry written")).expect("a registry write") + 1
    };
    let mut t = Proc::start("target_pie");
    let pid = t.pid.to_string();
    state.pannus(&["apply", &a, "--pid", &pid, "--yes"]).ok();
    let err =
        pannus_stderr(&state, &["apply", &b, "--pid", &pid, "--yes"], &[("PANNUS_TEST_KILL_AT", &kill_at.to_string())]);
    assert!(err.contains("killed at test point"), "{err}");
    assert_eq!(t.ask("c 5"), "500", "A still answers");
    state.pannus(&["rollback", "--pid", &pid, "--yes", "fix-a"]).ok();
    assert!(t.alive(), "the target lives");
    assert_eq!(t.ask("c 5"), "6", "A's bytes were restored");
    state.pannus(&["rollback", "--pid", &pid, "--yes", "fix-b"]).ok();
    assert_eq!(t.ask("c 5"), "6");
    assert!(!t.maps().contains("patch_compute.so") && !t.maps().contains("patch_tiny.so"), "both unloaded");
}

/// A patch rolled back while a thread was inside its module keeps the module mapped, and its
/// record says so. A later apply of the same patch that fails before recording anything (here
/// the target's dlopen refuses the module) leaves that record alone, so that a rollback can
/// still unload the module once the thread has left.
#[test]
fn a_failed_apply_keeps_the_record_of_a_module_still_mapped() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let extra = "safety:\n  retries: 3\n  retry_interval: 10ms\n";
    let m = state.manifest("linger", "target_pie", "patch_linger.so", &[("compute", "compute_v2")], extra);
    state.apply(&m, t.pid).ok();
    t.send("c 1500"); // sleeps 1.5 s inside the replacement
    eventually("the main thread is inside the module", || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", t.pid)).unwrap_or_default();
        stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('S')).then_some(())
    });
    let run = state.rollback(t.pid, None).ok();
    assert!(run.stdout.contains("kept mapped"), "{}", run.stdout);
    // The same patch again, from a module the target's dlopen refuses.
    let again = state.manifest("linger", "target_pie", "patch_missing.so", &[("compute", "compute_missing")], "");
    common::set_load(&again, "dlopen");
    let r = state.apply(&again, t.pid);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert_eq!(t.line(), "150000", "the thread came back out of the module");
    state.rollback(t.pid, None).ok();
    assert!(!t.maps().contains("patch_linger.so"), "the module kept mapped is unloaded at last");
}

/// Two patches loaded with `load: dlopen` at once, stacked on one function: the second is its
/// own module (the loader matches modules by name, and each memfd's name stays unique while it
/// is loaded), and each rolls back to the one before.
#[test]
fn two_dlopen_patches_at_once_are_two_modules() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let dlopen = |id: &str, module: &str, f: (&str, &str)| {
        let m = state.manifest(id, "target_pie", module, &[f], "");
        common::set_load(&m, "dlopen");
        m
    };
    let tls = dlopen("tls-fix", "patch_tls.so", ("compute", "compute_tls"));
    let ifunc = dlopen("ifunc-fix", "patch_ifunc.so", ("compute", "compute_ifunc"));
    state.apply(&tls, t.pid).ok();
    assert_eq!(t.ask("c 5"), "5001");
    let r = state.apply(&ifunc, t.pid);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "35", "the second module's function");
    state.rollback(t.pid, Some("ifunc-fix")).ok();
    assert_eq!(t.ask("c 5"), "5002");
    state.rollback(t.pid, Some("tls-fix")).ok();
    assert_eq!(t.ask("c 5"), "6");
    assert!(!t.maps().contains("/memfd:patch_"), "both modules closed");
}

/// `pannus check` plans a `load: dlopen` patch as apply makes it (a jump to a stub near the
/// target object when the module lands far): a padded function passes through its pad.
#[test]
fn check_plans_a_dlopen_patch_as_apply_makes_it() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let m = state.manifest("padcall-dl", "target_pie", "patch_tiny.so", &[("padded_call", "tiny_v2")], "");
    common::set_load(&m, "dlopen");
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &t.pid.to_string()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("pad jmp"), "{}", r.stdout);
}

/// The main thread lives in malloc and free; another thread sleeps in application code. Code
/// pannus runs in the target (here a constructor that allocates) runs on the sleeping thread,
/// never on top of the allocator's lock, where it would wait forever.
#[test]
fn code_run_in_the_target_runs_at_a_safe_point_not_inside_malloc() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("P"), "started");
    assert_eq!(t.ask("A"), "allocating");
    let m = state.manifest("alloc-fix", "target_pie", "patch_mallocinit.so", &[("compute", "compute_v2")], "");
    for round in 0..3 {
        let r = state.pannus_env(&["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"], &[]);
        assert_eq!(r.code, 0, "round {round}: {}", r.stderr);
        state.rollback(t.pid, None).ok();
    }
    assert!(t.alive());
}

/// gcc splits a function into `foo` and `foo.cold`; the cold part may jump back into the first
/// bytes of `foo`, which the jump overwrites. A thread waiting inside `split.cold` while the
/// jump went in would come back into the middle of it: the apply is refused, naming the cold
/// part, and the thread comes back to split as it was.
#[test]
fn a_cold_part_jumping_back_into_the_entry_bytes_is_refused() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("i -3"), "4");
    assert_eq!(t.ask("Y"), "started", "a thread waits inside split.cold");
    let m = state.manifest("cold-fix", "target_pie", "patch_compute.so", &[("split", "compute_v2")], "");
    let check = state.pannus(&["check", &m.to_string_lossy(), "--pid", &t.pid.to_string()]);
    assert_eq!(check.code, 4, "check refuses too:\n{}{}", check.stdout, check.stderr);
    let r = state.apply(&m, t.pid);
    assert_eq!(t.ask("y"), "5", "the thread in split.cold came back through split's own bytes");
    assert_eq!(r.code, 4, "refused:\n{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("split.cold"), "names the cold part: {}", r.stderr);
    assert_eq!(t.ask("i -3"), "4", "untouched");
    assert!(!t.maps().contains("patch_compute.so"));
}

/// The system call thread `tid` of `pid` is blocked in (`/proc/PID/task/TID/syscall`).
fn blocked_in(pid: i32, tid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).unwrap_or_default();
    text.split_whitespace().next()?.parse().ok()
}

/// Signals sent to the target by another process while pannus runs an init function on its
/// main thread (which sleeps in it): a SIGUSR1, and a SIGSEGV that is no fault of the call. Both
/// reach the program's handlers, and the apply goes on.
#[test]
fn signals_sent_during_a_remote_call_reach_the_program() {
    use nix::sys::signal::{kill, Signal};
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("u"), "0 0");
    let m = state.manifest("slow-init", "target_pie", "patch_init_slow.so", &[("compute", "compute_slow")], "");
    let r = std::thread::scope(|s| {
        let apply = s.spawn(|| state.apply(&m, t.pid));
        // The init function sleeps 3 s on the main thread, which otherwise waits in read.
        eventually("the init function sleeps on the main thread", || {
            matches!(blocked_in(t.pid, t.pid), Some(35 | 230)).then_some(())
        });
        let pid = nix::unistd::Pid::from_raw(t.pid);
        kill(pid, Signal::SIGUSR1).unwrap();
        kill(pid, Signal::SIGSEGV).unwrap();
        apply.join().unwrap()
    });
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(t.ask("u"), "1 1", "each signal handled once");
    assert_eq!(t.ask("c 5"), "5", "patched");
}

/// The main thread waits on a coroutine's small stack, some 500 bytes above a read-only page of
/// the program's: there is no room below its stack pointer for pannus's signal frame, let alone
/// for a function call. pannus borrows another thread instead, and the page stays as it was.
/// The target reads that line with one raw `read()`, so the harness sends each line in one
/// `write` (see `Proc::send`).
#[test]
fn a_thread_without_room_below_its_stack_pointer_is_not_borrowed() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("P"), "started", "another thread, sleeping in application code");
    assert_eq!(t.ask("Z"), "deep");
    eventually("the main thread waits in read on the small stack", || {
        (blocked_in(t.pid, t.pid) == Some(0)).then_some(())
    });
    let m = state.manifest("deep-fix", "target_pie", "patch_mallocinit.so", &[("compute", "compute_v2")], "");
    let r = state.apply(&m, t.pid);
    assert_eq!(t.ask("z"), "table intact", "apply (exit {}): {}", r.code, r.stderr);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "500");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");
}

/// pannus is killed just as the target starts running the resolver of an indirect function
/// (here one that finds nothing: it returns NULL, leaving the registers of a read of stdin
/// behind it). The value goes nowhere a system call would take it for its number: the thread
/// goes home, and the next command the target reads is its own.
#[test]
fn a_null_returned_after_pannus_is_killed_is_no_system_call() {
    let state = State::new();
    let m = state.manifest("pick-fix", "target_pie", "patch_pick.so", &[("compute", "compute_pick")], "");
    let args = ["apply", &*m.to_string_lossy(), "--pid", "", "--yes"];
    // Where the resolver's call is set up, counted on a process of its own.
    let kill_at = {
        let t = Proc::start("target_pie");
        let pid = t.pid.to_string();
        let mut args = args;
        args[3] = &pid;
        let err = pannus_stderr(&state, &args, &[("PANNUS_TEST_POINTS", "1")]);
        let points: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("pannus: test point ")).collect();
        points.iter().position(|p| p.ends_with(": call set up")).expect("a call is made") + 1
    };
    let mut t = Proc::start("target_pie");
    let pid = t.pid.to_string();
    let mut args = args;
    args[3] = &pid;
    let err = pannus_stderr(&state, &args, &[("PANNUS_TEST_KILL_AT", &kill_at.to_string())]);
    assert!(err.contains("killed at test point") && err.contains("call set up"), "{err}");
    assert_eq!(t.ask("c 5"), "6", "the command reached the program");
    assert_eq!(t.ask("c 7"), "8");
}

/// The rollback's `--json` for one patch, and what it says of the patch's module kept mapped.
fn rollback_json(state: &State, pid: i32) -> (serde_json::Value, String) {
    let run = state.pannus(&["rollback", "--pid", &pid.to_string(), "--yes", "--json"]).ok();
    let json = run.json();
    let kept = json["kept_mapped"].as_array().cloned().unwrap_or_default();
    let reason = kept.first().and_then(|k| k["reason"].as_str()).unwrap_or_default().to_string();
    (json, reason)
}

/// A module whose init set one of the program's hooks (a global function pointer) to a
/// function of its own: the rollback restores the replaced function, finds the pointer in the
/// program's data, and keeps the module mapped, saying where the pointer is; the program goes
/// on calling its hook.
#[test]
fn a_module_the_program_still_points_into_is_kept_mapped() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("hook-fix", "target_pie", "patch_callback.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!((t.ask("c 5"), t.ask("b 3")), ("500".to_string(), "21".to_string()));
    let (json, reason) = rollback_json(&state, t.pid);
    assert_eq!(json["rolled_back"], serde_json::json!(["hook-fix"]), "{json}");
    assert_eq!(json["kept_mapped"][0]["patch"], "hook-fix", "{json}");
    assert!(reason.contains("target_pie") && reason.contains("points into"), "{json}");
    assert_eq!(t.ask("c 5"), "6", "the function is rolled back");
    assert_eq!(t.ask("b 3"), "21", "the hook still works");
    assert!(t.maps().contains("patch_callback.so"), "kept mapped");
    let st = state.status(t.pid);
    let note = st["patches"][0]["note"].as_str().unwrap_or_default();
    assert!(note.starts_with("module kept mapped: ") && note.contains("points into"), "{st}");
    let journal = common::journal(&state);
    let last = journal.iter().rev().find(|e| e["action"] == "rollback").expect("the rollback journaled");
    assert!(last["detail"].as_str().unwrap_or_default().contains("module kept mapped"), "{last}");
}

/// A module whose init installed a signal handler of its own (held by the kernel, not in the
/// program's memory): the rollback asks the kernel for the handlers of the signals the process
/// catches, keeps the module mapped and says which signal; the handler still runs.
#[test]
fn a_module_holding_a_signal_handler_is_kept_mapped() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("pwr-fix", "target_pie", "patch_sighandler.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("x"), "1", "the module's handler counts");
    let (json, reason) = rollback_json(&state, t.pid);
    assert!(reason.contains("SIGPWR"), "{json}");
    assert_eq!(t.ask("c 5"), "6");
    assert_eq!(t.ask("x"), "2", "the handler still runs");
    assert!(t.maps().contains("patch_sighandler.so"), "kept mapped");
}

/// An apply that fails after the module's init ran (here stage 4 stays busy: a thread never
/// leaves the function) undoes its stages, but the module its init hooked into the program
/// stays mapped, and the error says so.
#[test]
fn a_failed_apply_after_init_keeps_a_module_the_program_points_into() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    assert_eq!(t.ask("P"), "started");
    let extra = "safety:\n  consistency: function\n  retries: 2\n  retry_interval: 10ms\n";
    let m = state.manifest("hook-fix", "target_pie", "patch_callback.so", &[("parked", "compute_v2")], extra);
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 3, "busy: {}", r.stderr);
    assert!(r.stderr.contains("module kept mapped") && r.stderr.contains("points into"), "{}", r.stderr);
    assert_eq!(t.ask("b 3"), "21", "the hook still works");
    assert!(t.maps().contains("patch_callback.so"), "kept mapped");
    assert_eq!(t.ask("c 5"), "6");
}

/// A replacement built a C++ object of a class of its own, which the program keeps and calls:
/// the rollback finds the object's vtable pointer (into the module's read-only data) in the
/// heap and keeps the module mapped; the object goes on working, and the function is rolled
/// back.
#[test]
fn a_module_holding_the_vtable_of_an_object_the_program_keeps_is_kept_mapped() {
    let state = State::new();
    let mut t = Proc::start("cpp_target");
    let fns = [("_Z12make_greeterv", "_Z15make_greeter_v2v")];
    let m = state.manifest("loud", "cpp_target", "patch_cpp_vtable.so", &fns, "");
    state.apply(&m, t.pid).ok();
    assert_eq!((t.ask("n"), t.ask("g")), ("new".to_string(), "HELLO".to_string()));
    let (json, reason) = rollback_json(&state, t.pid);
    assert!(reason.contains("its read-only data"), "{json}");
    assert_eq!(t.ask("g"), "HELLO", "the object still works");
    assert!(t.maps().contains("patch_cpp_vtable.so"), "kept mapped");
    assert_eq!((t.ask("n"), t.ask("g")), ("new".to_string(), "hello".to_string()), "rolled back");
}
