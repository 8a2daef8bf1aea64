//! The real console binary, in tmux, against a real patched process: find it with `/`, open
//! it, see the patch and its countdown, press `R`, and check the process's own behaviour came
//! back.

mod common;
use common::tmux::Tmux;
use common::{Proc, State};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn find_open_and_emergency_rollback_in_the_real_console() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let _decoy = Proc::start("target_pie");
    let m = state.manifest("console-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 5"), "500");

    let tmux = Tmux::start(&state, 100, 30);
    tmux.wait_for("Processes (");
    let s = tmux.search_pid(t.pid);
    assert!(s.contains("TRIAL 0"), "the countdown badge is shown:\n{s}");
    tmux.keys(&["Enter", "Enter"]);
    let s = tmux.wait_for("Patches (application order)");
    assert!(s.contains("console-fix"), "{s}");
    assert!(s.contains("trial"), "{s}");
    assert!(s.contains("compute") && s.contains("compute_v2"), "{s}");
    tmux.keys(&["R"]);
    // Its own outcome (a notice of another process rolled back says "was rolled back in").
    tmux.wait_for(&format!("✔ rolled back in process {}: ", t.pid));
    assert_eq!(t.ask("c 5"), "6", "the target's behaviour is back to the original");
    tmux.keys(&["q"]);
    let start = Instant::now();
    while tmux.alive() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!tmux.alive(), "q quits the console");
}

#[test]
fn a_trial_survives_the_console_restarting() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let m = state.manifest(
        "restart-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 10m\n",
    );
    state.apply(&m, t.pid).ok();
    for _ in 0..2 {
        let tmux = Tmux::start(&state, 80, 24);
        tmux.wait_for("Processes (");
        tmux.keys(&["p", "/"]); // patched only, then the pid
        for c in t.pid.to_string().chars() {
            tmux.keys(&[&c.to_string()]);
        }
        tmux.keys(&["Enter"]);
        let s = tmux.wait_for("TRIAL 09:");
        assert!(s.contains(&t.pid.to_string()), "{s}");
        tmux.keys(&["t"]);
        let s = tmux.wait_for("Trial of restart-fix");
        assert!(s.contains("of 10:00 left"), "{s}");
        tmux.keys(&["q"]);
    }
    state.rollback(t.pid, None).ok();
}

/// A copy of `target_pie` under a name of its own (so that the console's filter finds this test's
/// processes and no other), started twice; both patched by one manifest. Returns the manifest.
fn service_of_two(state: &State, name: &str) -> (Proc, Proc, std::path::PathBuf) {
    let exe = state.path().join(name);
    std::fs::copy(common::bin("target_pie"), &exe).unwrap();
    let a = Proc::spawn(Command::new(&exe));
    let b = Proc::spawn(Command::new(&exe));
    let m = state.manifest(
        "svc-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 10m\n",
    );
    let text = std::fs::read_to_string(&m).unwrap();
    let original = common::bin("target_pie").display().to_string();
    std::fs::write(&m, text.replace(&format!("object: {original}\n"), &format!("object: {}\n", exe.display())))
        .unwrap();
    state.apply(&m, a.pid).ok();
    state.apply(&m, b.pid).ok();
    (a, b, m)
}

fn patch_state(state: &State, pid: i32, patch: &str) -> String {
    let st = state.status(pid);
    st["patches"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["patch"] == patch))
        .map(|p| p["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Issue 15, item 1: in the patched-only list, a view opened on one process stays on it after
/// `R` rolls it back; a second `R` must not roll back another process's patch.
#[test]
fn r_never_acts_on_a_process_that_is_not_on_screen() {
    let state = State::new();
    let name = format!("svc{}", std::process::id() % 100_000);
    let (mut a, mut b, _m) = service_of_two(&state, &name);
    assert_eq!(a.ask("c 5"), "500");
    assert_eq!(b.ask("c 5"), "500");
    let (first, second) = if a.pid < b.pid { (&mut a, &mut b) } else { (&mut b, &mut a) };

    let tmux = Tmux::start(&state, 100, 30);
    tmux.wait_for("Processes (");
    tmux.keys(&["/"]);
    for c in name.chars() {
        tmux.keys(&[&c.to_string()]);
    }
    tmux.keys(&["Enter", "p"]);
    tmux.wait_for("2 match(es)");
    tmux.keys(&["Enter"]); // opens the first listed: the lower pid
    let s = tmux.wait_for("Patches (application order)");
    assert!(s.contains(&format!(" {} ", first.pid)), "the view is on {}:\n{s}", first.pid);
    tmux.keys(&["R"]);
    tmux.wait_for(&format!("✔ rolled back in process {}: ", first.pid));
    assert_eq!(first.ask("c 5"), "6", "the process on screen is rolled back");
    // Once the console has seen the rollback (the view shows it, or shows something else).
    let start = Instant::now();
    loop {
        let s = tmux.screen();
        if s.contains("rolled-back") || s.contains(&format!(" {} ", second.pid)) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the console never refreshed:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux.keys(&["R"]);
    let start = Instant::now();
    let s = loop {
        let s = tmux.screen();
        if s.contains("nothing to roll back") || s.contains(&format!("✔ rolled back in process {}: ", second.pid)) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "the second R had no outcome:\n{s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(patch_state(&state, second.pid, "svc-fix"), "trial", "the other process keeps its patch:\n{s}");
    assert_eq!(second.ask("c 5"), "500", "and its behaviour");
    assert!(s.contains(&format!(" {} ", first.pid)), "the view is still on {}:\n{s}", first.pid);
    state.rollback(second.pid, None).ok();
}

/// Issue 15, item 2: in the process view, `R` acts on the highlighted patch, as `C` does, and
/// when other patches require it the one confirmation names them before they go too.
#[test]
fn r_rolls_back_the_highlighted_patch_and_names_its_dependents() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let base = state.manifest("base-fix", "target_pie", "patch_base.so", &[("compute", "compute_base")], "");
    let dep =
        state.manifest("dep-fix", "target_pie", "patch_dep.so", &[("helper", "helper_v2")], "requires: [base-fix]\n");
    let pad = state.manifest("pad-fix", "target_pie", "patch_tiny.so", &[("tiny_padded", "tiny_v2")], "");
    for m in [&base, &dep, &pad] {
        state.apply(m, t.pid).ok();
    }
    assert_eq!((t.ask("c 5"), t.ask("h 5"), t.ask("p 5")), ("5005".into(), "10010".into(), "6".into()));

    let tmux = Tmux::start(&state, 100, 30);
    tmux.wait_for("Processes (");
    tmux.search_pid(t.pid);
    tmux.keys(&["Enter", "Enter"]);
    let s = tmux.wait_for("Patches (application order)");
    assert!(s.contains("R roll back pad-fix"), "the footer names the newest, highlighted:\n{s}");
    tmux.keys(&["Up", "Up"]);
    let s = tmux.wait_for("R roll back base-fix");
    assert!(s.contains("C commit base-fix"), "R and C name the same patch:\n{s}");
    tmux.keys(&["R"]);
    let s = tmux.wait_for("requires it");
    assert!(s.contains("dep-fix") && s.contains("base-fix"), "the confirmation names both:\n{s}");
    assert_eq!(t.ask("c 5"), "5005", "nothing is done before Enter");
    tmux.keys(&["Enter"]);
    tmux.wait_for(&format!("✔ rolled back in process {}: ", t.pid));
    assert_eq!(t.ask("c 5"), "6", "base-fix rolled back");
    assert_eq!(t.ask("h 5"), "10", "dep-fix with it");
    assert_eq!(t.ask("p 5"), "6", "pad-fix, not highlighted, stays");
    assert_eq!(patch_state(&state, t.pid, "pad-fix"), "trial");
    state.rollback(t.pid, None).ok();
}

/// Opens the apply wizard on `pid` (the manifests folder holds one manifest) and goes through the
/// pre-flight to the first stage's confirmation.
fn wizard_to_stage_1(tmux: &Tmux, pid: i32) {
    tmux.wait_for("Processes (");
    tmux.search_pid(pid);
    tmux.keys(&["Enter", "a"]);
    tmux.wait_for("Pick a manifest");
    tmux.keys(&["Enter"]);
    tmux.wait_for("Pre-flight passed");
    tmux.keys(&["Enter"]);
    tmux.wait_for("Stage 1 of 4: LOAD");
}

/// Issue 15, item 4: on a terminal too small to show a stage's confirmation, Enter does not
/// confirm it; the screen asks for a larger terminal, and Esc still cancels.
#[test]
fn a_confirmation_that_does_not_fit_cannot_be_confirmed() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    state.manifest("small-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let tmux = Tmux::start(&state, 100, 30);
    wizard_to_stage_1(&tmux, t.pid);
    tmux.resize(40, 10);
    // Drawn at the new size: the header cut at 40 columns.
    tmux.wait_until("the console at 40x10", |s| {
        s.lines().next().is_some_and(|l| l.contains("pannus") && l.chars().count() <= 40)
    });
    tmux.keys(&["Enter"]);
    tmux.resize(100, 30);
    let s = tmux.wait_for(" of 4: ");
    assert!(s.contains("Stage 1 of 4: LOAD"), "Enter on the small terminal confirmed nothing:\n{s}");
    tmux.resize(40, 10);
    let small = tmux.wait_for("larger");
    assert!(small.contains("Esc"), "the small screen says what still acts:\n{small}");
    tmux.resize(100, 30);
    tmux.wait_for("Stage 1 of 4: LOAD");
    assert!(!t.maps().contains("patch_compute"), "nothing mapped");
    tmux.keys(&["Escape"]);
    tmux.wait_for("cancelled");
    assert_eq!(t.ask("c 5"), "6");
    assert!(state.status(t.pid)["patches"].as_array().is_none_or(|p| p.is_empty()), "no patch recorded");
}

/// The console's exit status, once it has exited.
fn console_exit(state: &State) -> i32 {
    let path = state.path().join("console.exit");
    let start = Instant::now();
    loop {
        if let Some(code) = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok()) {
            return code;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the console never exited");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The outcome the journal gives the last apply in process `pid`.
fn last_apply_outcome(state: &State, pid: i32) -> String {
    let j = state.pannus(&["journal", "--json"]).ok().json();
    j["entries"]
        .as_array()
        .and_then(|es| es.iter().rev().find(|e| e["action"] == "apply" && e["pid"] == pid))
        .map(|e| e["outcome"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Waits (30 s at most) for process `pid` to end: gone, or a zombie nobody reaps. One still
/// running at the deadline is killed, so that a failing test leaves no console behind.
fn wait_ended(pid: i32, what: &str) {
    let start = Instant::now();
    while !matches!(run_state(pid), None | Some('Z')) {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            panic!("the console ({pid}) still runs 30 s after {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Interrupts the console at the second stage's confirmation, the first stage done, with
/// `interrupt`, and checks that the target is as it was, the journal says cancelled and the
/// console exits (non-zero, when the pane's shell outlives it to say so).
fn interrupted_at_a_stage_confirmation(interrupt: impl FnOnce(&Tmux)) {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    state.manifest("int-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let tmux = Tmux::start(&state, 100, 30);
    wizard_to_stage_1(&tmux, t.pid);
    tmux.keys(&["Enter"]);
    tmux.wait_for("Stage 2 of 4: LINK");
    assert!(t.maps().contains("patch_compute"), "stage 1 mapped the module");
    let console = tmux.console_pid();
    interrupt(&tmux);
    wait_ended(console, "it was interrupted at a stage confirmation");
    if tmux.alive() {
        assert_ne!(console_exit(&state), 0, "the console exits non-zero");
    }
    let maps = t.maps();
    assert!(!maps.contains("patch_compute"), "nothing of the module is left mapped:\n{maps}");
    assert_eq!(t.ask("c 5"), "6", "the target behaves as before");
    assert!(state.status(t.pid)["patches"].as_array().is_none_or(|p| p.is_empty()), "no patch recorded");
    assert_eq!(last_apply_outcome(&state, t.pid), "cancelled");
}

/// Issue 15, item 3: Ctrl-C at a stage confirmation means no.
#[test]
fn ctrl_c_at_a_stage_confirmation_undoes_the_stages_done() {
    interrupted_at_a_stage_confirmation(|tmux| tmux.keys(&["C-c"]));
}

/// Issue 15, item 3: a dropped SSH session (SIGHUP to the console) means no too.
#[test]
fn sighup_at_a_stage_confirmation_undoes_the_stages_done() {
    interrupted_at_a_stage_confirmation(|tmux| {
        let pid = tmux.console_pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).unwrap();
    });
}

/// The defect: a console whose terminal vanished (the tmux server or the SSH session gone) went
/// on running as an orphan, spinning on the closed terminal and deaf to SIGTERM. It ends, and
/// an apply waiting at a confirmation is undone as Ctrl-C undoes it.
#[test]
fn a_console_whose_terminal_vanishes_at_a_stage_confirmation_undoes_the_stages_done() {
    interrupted_at_a_stage_confirmation(|tmux| tmux.kill_server());
}

/// The same with nothing in progress: the console simply ends.
#[test]
fn a_console_whose_terminal_vanishes_exits() {
    let state = State::new();
    let tmux = Tmux::start(&state, 100, 30);
    tmux.wait_for("Processes (");
    let console = tmux.console_pid();
    tmux.kill_server();
    wait_ended(console, "its terminal vanished");
}

/// SIGTERM with nothing in progress ends the console, non-zero.
#[test]
fn sigterm_with_nothing_in_progress_ends_the_console_non_zero() {
    let state = State::new();
    let tmux = Tmux::start(&state, 100, 30);
    tmux.wait_for("Processes (");
    let console = tmux.console_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(console), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_ended(console, "SIGTERM");
    assert_ne!(console_exit(&state), 0, "the console exits non-zero");
}

fn run_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next())
}

/// Issue 15, item 3: SIGTERM while a stage runs (no confirmation on screen) means no to the
/// stages after it: the one running ends, and all are undone.
#[test]
fn sigterm_while_a_stage_runs_undoes_the_stages_done() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let state = State::new();
    let mut t = Proc::start("target_pie");
    state.manifest("term-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let tmux = Tmux::start_env(&state, 100, 30, "'PANNUS_TEST_PAUSE_AT=registry written'");
    wizard_to_stage_1(&tmux, t.pid);
    let console = Pid::from_raw(tmux.console_pid());
    tmux.keys(&["Enter"]);
    // Stage 1 stops the console once it has recorded its reservation: mid-stage.
    let start = Instant::now();
    while run_state(console.as_raw()) != Some('T') {
        assert!(start.elapsed() < Duration::from_secs(30), "the console never reached stage 1's record");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(console, Signal::SIGTERM).unwrap();
    // Let it go on at this stop and every later one (the undo writes the registry too).
    let exit = state.path().join("console.exit");
    let start = Instant::now();
    while !exit.exists() {
        if run_state(console.as_raw()) == Some('T') {
            let _ = kill(console, Signal::SIGCONT);
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the console never exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(console_exit(&state), 0, "the console exits non-zero");
    let maps = t.maps();
    assert!(!maps.contains("patch_compute"), "nothing of the module is left mapped:\n{maps}");
    assert_eq!(t.ask("c 5"), "6", "the target behaves as before");
    assert!(state.status(t.pid)["patches"].as_array().is_none_or(|p| p.is_empty()), "no patch recorded");
    assert_eq!(last_apply_outcome(&state, t.pid), "cancelled");
}

/// The trial watcher `pannus apply` started for `patch` in process `pid`.
fn trial_watcher(pid: i32, patch: &str) -> Option<i32> {
    let want = format!("trial-watch\0--pid\0{pid}\0{patch}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let p: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains(&want).then_some(p)
    })
}

/// Issue 15, item 5: a trial whose deadline passed with nobody carrying out its policy shows
/// OVERDUE in the list and the process view, not a countdown stuck at 00:00.
#[test]
fn a_trial_past_its_deadline_shows_overdue() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let m = state.manifest(
        "late-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 2s\n  on_expiry: rollback\n",
    );
    state.apply(&m, t.pid).ok();
    // Nobody watches this trial: its watcher is gone.
    let start = Instant::now();
    let watcher = loop {
        if let Some(w) = trial_watcher(t.pid, "late-fix") {
            break w;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "apply started no trial watcher");
        std::thread::sleep(Duration::from_millis(20));
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(watcher), nix::sys::signal::Signal::SIGKILL).unwrap();
    let start = Instant::now();
    while state.status(t.pid)["patches"][0]["trial_remaining_s"].as_u64() != Some(0) {
        assert!(start.elapsed() < Duration::from_secs(20), "the deadline never passed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(patch_state(&state, t.pid, "late-fix"), "trial", "still on trial, past its deadline");

    let tmux = Tmux::start(&state, 100, 30);
    tmux.wait_for("Processes (");
    let s = tmux.search_pid(t.pid);
    assert!(s.contains("OVERDUE") && !s.contains("TRIAL 00:00"), "the list says OVERDUE:\n{s}");
    tmux.keys(&["Enter", "Enter"]);
    let s = tmux.wait_for("Patches (application order)");
    assert!(s.contains("OVERDUE") && !s.contains("00:00"), "the process view says OVERDUE:\n{s}");
    // The overdue policy (rollback) is carried out by this pannus before it acts, if the console
    // has not done it yet: either way nothing is left applied.
    let _ = state.rollback(t.pid, None);
    assert_eq!(patch_state(&state, t.pid, "late-fix"), "rolled-back");
}

/// Issue 15, "what an operator expects": a commit made by another pannus while the console
/// watches raises a notice.
#[test]
fn a_commit_made_elsewhere_raises_a_notice() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let m = state.manifest(
        "elsewhere-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 10m\n",
    );
    state.apply(&m, t.pid).ok();
    let tmux = Tmux::start(&state, 120, 30);
    tmux.wait_for("Processes (");
    tmux.keys(&["/"]);
    for c in t.pid.to_string().chars() {
        tmux.keys(&[&c.to_string()]);
    }
    tmux.wait_for("TRIAL 09:");
    state.pannus(&["commit", "--pid", &t.pid.to_string(), "elsewhere-fix"]).ok();
    let s = tmux.wait_for("NOTICE: `elsewhere-fix` was committed in process");
    assert!(s.contains("ACTIVE"), "{s}");
    state.rollback(t.pid, None).ok();
}

/// Issue 15, "what an operator expects": the manifest picker lists first the manifests whose
/// object the process maps with the manifest's build-id.
#[test]
fn the_manifest_picker_lists_the_manifests_for_this_process_first() {
    let state = State::new();
    let t = Proc::start("target_pie");
    // Alphabetically first, but for a library the process does not map.
    let other = state.manifest("a-lib-fix", "libtarget.so", "patch_lib.so", &[("lib_compute", "lib_compute_v2")], "");
    assert!(other.exists());
    state.manifest("z-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let tmux = Tmux::start(&state, 120, 30);
    tmux.wait_for("Processes (");
    tmux.search_pid(t.pid);
    tmux.keys(&["Enter", "a"]);
    let s = tmux.wait_for("Pick a manifest");
    let z = s.find("z-fix.yaml").expect("z-fix listed");
    let a = s.find("a-lib-fix.yaml").expect("a-lib-fix listed");
    assert!(z < a, "the manifest for this process comes first:\n{s}");
    assert!(s.contains("[matches this process]") && s.contains("[not for this process's objects]"), "{s}");
    tmux.keys(&["Enter"]);
    tmux.wait_for("Pre-flight passed");
}

/// Issue 15, "what an operator expects": an action waiting for another pannus says which one
/// holds the process and what it runs.
#[test]
fn a_lock_wait_names_the_pannus_holding_the_process() {
    use std::process::Stdio;
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("held-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    // A commit that stops itself while it holds the process's lock.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_pannus"))
        .args(["commit", "--pid", &t.pid.to_string(), "held-fix"])
        .env("PANNUS_STATE_DIR", state.path())
        .env("PANNUS_TEST_PAUSE_AT", "registry written")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let hp = holder.id() as i32;
    let start = Instant::now();
    while run_state(hp) != Some('T') {
        assert!(start.elapsed() < Duration::from_secs(30), "the commit never stopped holding the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tmux = Tmux::start_env(&state, 160, 30, "PANNUS_LOCK_WAIT=60s");
    tmux.wait_for("Processes (");
    tmux.search_pid(t.pid);
    tmux.keys(&["Enter", "R"]);
    let s = tmux.wait_for(&format!("waiting for pannus pid {hp}"));
    assert!(s.contains("(`pannus commit --pid") && s.contains(&format!("holds process {}", t.pid)), "{s}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(hp), nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(holder.wait().unwrap().success(), "the commit finished");
    tmux.wait_for(&format!("✔ rolled back in process {}: ", t.pid));
    assert_eq!(t.ask("c 5"), "6");
}

/// Whether the process list on `screen` has a row for `pid`.
fn listed(screen: &str, pid: u32) -> bool {
    let want = format!("{pid} ");
    screen.lines().any(|l| l.trim_start_matches(['│', '▶', ' ']).starts_with(&want))
}

/// A zombie has no executable and no command line, as a kernel thread has none: it is listed
/// all the same, while kernel threads (told by the kernel's own flag) stay hidden.
#[test]
fn a_zombie_is_listed_while_kernel_threads_are_hidden() {
    let state = State::new();
    // Not waited for until the end: a zombie meanwhile.
    let mut zombie = Command::new("true").spawn().expect("true runs");
    let pid = zombie.id();
    let start = Instant::now();
    while run_state(pid as i32) != Some('Z') {
        assert!(start.elapsed() < Duration::from_secs(30), "the child never became a zombie");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tmux = Tmux::start(&state, 100, 30);
    tmux.wait_for("Processes (");
    tmux.keys(&["/"]);
    for c in pid.to_string().chars() {
        tmux.keys(&[&c.to_string()]);
    }
    let s = tmux.wait_until("the filtered list", |s| s.contains(&format!("filter: {pid}")));
    assert!(listed(&s, pid), "the zombie {pid} is listed:\n{s}");
    tmux.keys(&["Escape", "/", "k", "t", "h", "r", "e", "a", "d", "d"]);
    let s = tmux.wait_for("filter: kthreadd");
    assert!(!listed(&s, 2), "kthreadd stays hidden:\n{s}");
    zombie.wait().unwrap();
}

/// The list shows the build-id of what each process runs, and sorts by the column `s` picks,
/// marked in the header.
#[test]
fn the_list_shows_build_ids_and_sorts_by_the_column_picked() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let id = common::build_id(&common::bin("target_pie"));
    let tmux = Tmux::start(&state, 120, 30);
    let s = tmux.wait_for("STATE▲");
    assert!(s.contains("BUILD-ID"), "{s}");
    tmux.keys(&["/"]);
    for c in t.pid.to_string().chars() {
        tmux.keys(&[&c.to_string()]);
    }
    tmux.keys(&["Enter"]);
    let s = tmux.wait_until("the filtered list", |s| s.contains(&format!("filter: {}", t.pid)));
    let row = s.lines().find(|l| l.contains(&format!("{} ", t.pid)) && l.contains("target_pie")).unwrap_or("");
    assert!(row.contains(&id[..12]), "the row shows build-id {id}, abbreviated:\n{s}");
    tmux.keys(&["s"]);
    tmux.wait_for("PID▲");
    tmux.keys(&["I"]);
    tmux.wait_for("PID▼");
}

/// The journal says which part of pannus acted, and narrows to one process with `i`.
#[test]
fn the_journal_shows_the_source_and_narrows_to_one_process() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let other = Proc::start("target_pie");
    let m = state.manifest("journal-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&m, other.pid).ok();
    state.apply(&m, t.pid).ok();
    let tmux = Tmux::start(&state, 120, 30);
    tmux.wait_for("Processes (");
    tmux.keys(&["J"]);
    let s = tmux.wait_for("SOURCE");
    let row = |s: &str, pid: i32| s.lines().any(|l| l.contains(&format!(" {pid} ")) && l.contains(" cli "));
    assert!(row(&s, t.pid) && row(&s, other.pid), "both applies, made by the command line:\n{s}");
    // The newest entry is selected: the apply in `t`.
    tmux.keys(&["i"]);
    let s = tmux.wait_for(&format!("search: pid:{}", t.pid));
    assert!(row(&s, t.pid) && !row(&s, other.pid), "only process {}'s entries:\n{s}", t.pid);
    state.rollback(t.pid, None).ok();
    state.rollback(other.pid, None).ok();
}

/// `C` on a patch that requires a patch still on trial (whose rollback at its deadline would
/// take the committed one along) commits nothing without a confirmation naming both; Enter
/// commits them together, what is required first.
#[test]
fn c_on_a_patch_whose_requirement_is_on_trial_asks_to_commit_both() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let trial = "trial:\n  duration: 10m\n  on_expiry: rollback\n";
    let base = state.manifest("base-fix", "target_pie", "patch_base.so", &[("compute", "compute_base")], trial);
    let dep = state.manifest(
        "dep-fix",
        "target_pie",
        "patch_dep.so",
        &[("helper", "helper_v2")],
        &format!("requires: [base-fix]\n{trial}"),
    );
    state.apply(&base, t.pid).ok();
    state.apply(&dep, t.pid).ok();
    let tmux = Tmux::start(&state, 120, 30);
    tmux.wait_for("Processes (");
    tmux.keys(&["/"]);
    for c in t.pid.to_string().chars() {
        tmux.keys(&[&c.to_string()]);
    }
    tmux.keys(&["Enter"]);
    tmux.wait_for("C commit dep-fix");
    tmux.keys(&["C"]);
    let s = tmux.wait_until("a confirmation or a commit", |s| s.contains("`base-fix`") || s.contains("committed"));
    assert_eq!(patch_state(&state, t.pid, "dep-fix"), "trial", "nothing committed before Enter:\n{s}");
    assert!(s.contains("`base-fix`") && s.contains("Enter"), "the confirmation names what it requires:\n{s}");
    tmux.keys(&["Escape"]);
    tmux.keys(&["C"]);
    tmux.wait_for("`base-fix`");
    tmux.keys(&["Enter"]);
    let start = Instant::now();
    while patch_state(&state, t.pid, "dep-fix") != "committed" {
        assert!(start.elapsed() < Duration::from_secs(30), "dep-fix never committed:\n{}", tmux.screen());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(patch_state(&state, t.pid, "base-fix"), "committed");
}

/// `pannus install` for a private copy of the fixture (no other test's processes run it), then
/// in the console: `i` shows the patch under its binary with `1/1`, `R` asks once and uninstalls
/// it, and the process answers unpatched.
#[test]
fn r_in_the_installed_view_uninstalls_the_patch_from_every_process() {
    let state = State::new();
    let exe = state.path().join("inst-svc");
    std::fs::copy(common::bin("target_pie"), &exe).unwrap();
    let mut t = Proc::spawn(Command::new(&exe));
    let m = state.manifest(
        "inst-ui-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 10m\n",
    );
    let text = std::fs::read_to_string(&m).unwrap();
    let original = common::bin("target_pie").display().to_string();
    std::fs::write(&m, text.replace(&format!("object: {original}\n"), &format!("object: {}\n", exe.display())))
        .unwrap();
    state.pannus(&["install", m.to_str().unwrap(), "--yes"]).ok();
    assert_eq!(t.ask("c 5"), "500", "installed: applied to the running process");

    let tmux = Tmux::start(&state, 120, 30);
    tmux.wait_for("Processes (");
    tmux.keys(&["i"]);
    let s =
        tmux.wait_until("the patch with 1/1", |s| s.lines().any(|l| l.contains("inst-ui-fix") && l.contains("1/1")));
    let build_id: String = common::build_id(&exe).chars().take(12).collect();
    assert!(s.contains(&format!("{}  build-id {build_id}", exe.display())), "the binary as group header:\n{s}");
    assert!(s.lines().any(|l| l.contains("inst-ui-fix") && l.contains("TRIAL ") && l.contains(", commits at ")), "{s}");
    tmux.keys(&["R"]);
    let s = tmux.wait_for("Uninstall inst-ui-fix 1.0 everywhere");
    assert!(s.contains(&format!("1 process ({})", t.pid)) && s.contains("Enter proceed"), "{s}");
    tmux.keys(&["Enter"]);
    tmux.wait_for("✔ uninstalled `inst-ui-fix`");
    assert_eq!(t.ask("c 5"), "6", "the process's behaviour is back to the original");
    let list = state.pannus(&["installed", "--json"]).ok().json();
    assert_eq!(list.as_array().map(|a| a.len()), Some(0), "{list}");
    tmux.wait_for("No patch is installed.");
    // Journaled as the console's doing.
    let journal = state.pannus(&["journal", "--json", "--patch", "inst-ui-fix"]).ok().json();
    let last = journal["entries"].as_array().and_then(|e| e.last()).cloned().unwrap_or_default();
    assert_eq!((last["action"].as_str(), last["source"].as_str()), (Some("rollback"), Some("console")), "{journal}");
    tmux.keys(&["Escape"]);
    tmux.wait_for("Processes (");
    tmux.keys(&["q"]);
}
