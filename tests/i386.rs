//! 32-bit x86 (i386) processes under the x86-64 kernel, built from the same fixtures with
//! `-m32`: shown with their architecture by `ps`, `status` and `status --all`; a module of
//! another architecture than its process refused with exit 2 naming both; and patched as x86-64
//! ones are, the target's answers observed changing and coming back.

mod common;
use common::daemon::{install, Daemon};
use common::{bin_any, Proc, State};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The bytes of every executable mapping of `exe` in process `pid`, in address order.
fn text_of(pid: i32, exe: &Path) -> Vec<u8> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let exe = exe.canonicalize().unwrap().to_string_lossy().into_owned();
    let mut out = Vec::new();
    for l in maps.lines().filter(|l| l.ends_with(&exe)) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if !f[1].contains('x') {
            continue;
        }
        let (a, b) = f[0].split_once('-').unwrap();
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        let mut buf = vec![0u8; (b - a) as usize];
        mem.read_exact_at(&mut buf, a).unwrap();
        out.extend(buf);
    }
    assert!(!out.is_empty(), "{exe} has code mapped in {pid}");
    out
}

/// Applies `manifest` to `t` (running `exe`) and checks the refusal: exit `code`, each of
/// `needles` in the message, the process exactly as it was.
fn refused(state: &State, t: &mut Proc, exe: &str, manifest: &Path, code: i32, needles: &[&str]) {
    let text = text_of(t.pid, &bin_any(exe));
    let maps = t.maps();
    let r = state.apply(manifest, t.pid);
    assert_eq!(r.code, code, "exit code: {r:?}");
    for n in needles {
        assert!(r.stderr.contains(n), "the message names `{n}`: {}", r.stderr);
    }
    assert_eq!(text_of(t.pid, &bin_any(exe)), text, "code unchanged");
    assert_eq!(t.maps(), maps, "no mapping added or removed");
    assert_eq!(t.ask("c 5"), "6", "behaviour unchanged");
    assert!(!t.maps().contains("pannus-registry"), "no registry made in it");
}

#[test]
fn ps_and_status_show_each_process_with_its_architecture() {
    let state = State::new();
    let mut t32 = Proc::start("target32_pie");
    let mut t64 = Proc::start("target_pie");
    let ps = state.pannus(&["ps", "--all", "--json"]).ok().json();
    let arch = |pid: i32| {
        let rows = ps["processes"].as_array().unwrap();
        rows.iter().find(|p| p["pid"] == pid).map(|p| p["arch"].clone()).unwrap_or_else(|| panic!("{pid} in {ps}"))
    };
    assert_eq!(arch(t32.pid), "i386");
    assert_eq!(arch(t64.pid), "x86-64");
    assert_eq!(state.status(t32.pid)["arch"], "i386");
    assert_eq!(state.status(t64.pid)["arch"], "x86-64");
    let text = state.pannus(&["status", "--pid", &t32.pid.to_string()]).ok().stdout;
    assert!(text.contains("(ELF32 i386)") && text.contains("no patches"), "{text}");
    let ps = state.pannus(&["ps", "--all"]).ok().stdout;
    let row = ps.lines().find(|l| l.split_whitespace().next() == Some(&t32.pid.to_string())).unwrap();
    assert!(row.split_whitespace().any(|w| w == "i386"), "{ps}");
    assert!(ps.lines().next().unwrap().contains("ARCH"), "{ps}");
    let all = state.pannus(&["status", "--all", "--json"]).ok().json();
    assert!(all["processes"].as_array().unwrap().iter().all(|p| p["pid"] != t32.pid), "unpatched: not listed");
    assert_eq!(t32.ask("c 5"), "6");
    assert_eq!(t64.ask("c 5"), "6");
}

#[test]
fn a_64_bit_module_for_a_32_bit_process_is_refused_naming_both() {
    let state = State::new();
    let mut t = Proc::start("target32_pie");
    let m = state.manifest("x", "target32_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let pid = t.pid.to_string();
    refused(&state, &mut t, "target32_pie", &m, 2, &["patch_compute.so", "ELF64 x86-64", "ELF32 i386", &pid]);
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid]);
    assert_eq!(r.code, 2, "{r:?}");
}

#[test]
fn a_32_bit_module_for_a_64_bit_process_is_refused_naming_both() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch32_compute.so", &[("compute", "compute_v2")], "");
    let pid = t.pid.to_string();
    refused(&state, &mut t, "target_pie", &m, 2, &["patch32_compute.so", "ELF32 i386", "ELF64 x86-64", &pid]);
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid, "--json"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("ELF32 i386"), "{}", r.stdout);
}

fn states(st: &serde_json::Value) -> Vec<(String, String)> {
    st["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["patch"].as_str().unwrap().to_string(), p["state"].as_str().unwrap().to_string()))
        .collect()
}

fn apply_and_rollback(exe: &str) {
    let state = State::new();
    let mut t = Proc::start(exe);
    assert_eq!(t.ask("c 5"), "6");
    let before = text_of(t.pid, &bin_any(exe));
    let m = state.manifest("compute-fix", exe, "patch32_compute.so", &[("compute", "compute_v2")], "");
    let run = state.apply(&m, t.pid).ok();
    assert!(run.stdout.contains("stage 4 (activate)") && run.stdout.contains("ELF32 i386"), "{}", run.stdout);
    assert_eq!(t.ask("c 5"), "500");
    assert_eq!(t.ask("c 7"), "700");
    assert!(t.maps().contains("patch32_compute.so"), "the module is recognisable in /proc/PID/maps");
    let st = state.status(t.pid);
    assert_eq!(states(&st), vec![("compute-fix".into(), "trial".into())]);
    assert_eq!(st["arch"], "i386");
    assert_eq!(st["patches"][0]["functions"][0]["jump"], "rel32");
    let base = u64::from_str_radix(st["patches"][0]["module_base"].as_str().unwrap().trim_start_matches("0x"), 16);
    assert!(base.unwrap() < 1 << 32, "{st}");

    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");
    assert_eq!(text_of(t.pid, &bin_any(exe)), before, "original bytes restored");
    assert!(!t.maps().contains("patch32_compute.so"), "the module is unloaded");
    assert_eq!(states(&state.status(t.pid)), vec![("compute-fix".into(), "rolled-back".into())]);
}

/// PIE: `compute` begins with `call __x86.get_pc_thunk.*`, whose return address is the end of
/// the 5-byte jump.
#[test]
fn pie_executable() {
    apply_and_rollback("target32_pie");
}

#[test]
fn non_pie_executable() {
    apply_and_rollback("target32_nopie");
}

#[test]
fn a_module_calling_libc_and_reading_the_targets_globals() {
    let state = State::new();
    let mut t = Proc::start("target32_pie");
    let m = state.manifest("libc-fix", "target32_pie", "patch32_libc.so", &[("compute", "compute_libc")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 12"), "5", "strlen of snprintf's \"12-12\"");
    assert_eq!(t.ask("c 1234"), "9");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 12"), "13");

    assert_eq!(t.ask("s"), "7 100");
    let m = state.manifest("data-fix", "target32_pie", "patch32_data.so", &[("compute", "compute_data")], "");
    let run = state.apply(&m, t.pid).ok();
    assert!(run.stdout.contains("counter"), "the dropped global is reported: {}", run.stdout);
    // x + secret * 1000 + (++counter), with the target's own secret (file-local, 7) and
    // counter (global, 100).
    assert_eq!(t.ask("c 1"), "7102");
    assert_eq!(t.ask("s"), "7 101", "the patch changed the target's own counter");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 1"), "2");
}

#[test]
fn init_functions_run_in_the_target() {
    let state = State::new();
    let mut t = Proc::start("target32_nopie");
    let m = state.manifest("init-fix", "target32_nopie", "patch32_init.so", &[("compute", "compute_init")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("s"), "7 555", "the module's constructor ran inside the target");
    assert_eq!(t.ask("c 1"), "556");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 1"), "2");
}

#[test]
fn stacked_patches_with_requires() {
    let state = State::new();
    let mut t = Proc::start("target32_pie");
    assert_eq!(t.ask("h 3"), "6");
    let base = state.manifest("base-fix", "target32_pie", "patch32_base.so", &[("compute", "compute_base")], "");
    let dep = state.manifest(
        "dep-fix",
        "target32_pie",
        "patch32_dep.so",
        &[("helper", "helper_v2")],
        "requires: [base-fix]\n",
    );
    let r = state.apply(&dep, t.pid);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("requires `base-fix`"), "{}", r.stderr);

    state.apply(&base, t.pid).ok();
    state.apply(&dep, t.pid).ok();
    assert_eq!(t.ask("c 1"), "5001");
    assert_eq!(t.ask("h 3"), "10006", "helper (file-local) calls base-fix's helper");
    let r = state.rollback(t.pid, Some("base-fix"));
    assert_eq!(r.code, 4, "still required: {r:?}");
    let pid = t.pid.to_string();
    let r = state.pannus(&["rollback", "--pid", &pid, "base-fix", "--yes", "--cascade", "--json"]).ok();
    assert_eq!(r.json()["rolled_back"], serde_json::json!(["dep-fix", "base-fix"]));
    assert_eq!(t.ask("h 3"), "6");
    assert_eq!(t.ask("c 1"), "2");
}

#[test]
fn busy_threads_see_only_old_or_new_answers_through_repeated_cycles() {
    let state = State::new();
    let mut t = Proc::start("target32_pie");
    assert_eq!(t.ask("w"), "started");
    let m = state.manifest("busy-fix", "target32_pie", "patch32_compute.so", &[("compute", "compute_v2")], "");
    for _ in 0..10 {
        state.apply(&m, t.pid).ok();
        state.rollback(t.pid, None).ok();
    }
    state.apply(&m, t.pid).ok();
    // The workers run on: wait until they have seen the new function too.
    let mut r: Vec<i64> = Vec::new();
    common::wait_until("the workers see the new function", || {
        r = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
        r[2] != 0
    });
    // The counters are a 32-bit process's `long`s, which a long run may wrap: seen is non-zero.
    assert!(r[1] != 0, "old answers seen: {r:?}");
    assert_eq!(r[3], 0, "no wrong answers: {r:?}");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn a_thread_blocked_in_a_system_call_is_undisturbed() {
    let state = State::new();
    let mut t = Proc::start("target32_pie");
    let m = state.manifest("sleep-fix", "target32_pie", "patch32_compute.so", &[("compute", "compute_v2")], "");
    // The main thread sleeps 1.5 s in nanosleep while every stage borrows it.
    t.send("n 1500");
    common::wait_until("the main thread sleeps", || common::thread_state(t.pid, t.pid) == Some('S'));
    state.apply(&m, t.pid).ok();
    let answer = t.line();
    let parts: Vec<i64> = answer.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(parts[0], 0, "nanosleep returned {answer} (ret errno ms)");
    assert!(parts[2] >= 1500, "the sleep was shortened: {answer}");
    // And the main thread blocked in read() (fgets) goes on: no EINTR, no EOF.
    assert_eq!(t.ask("c 5"), "500");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");
    assert!(t.alive());
}

/// PIE `parked` begins `push %ebx; call __x86.get_pc_thunk.bx`: the call ends a byte past the
/// jump, so a thread in the thunk would return into the middle of it.
#[test]
fn an_unsafe_entry_is_refused_untouched() {
    let state = State::new();
    let mut t = Proc::start("target32_pie");
    let m = state.manifest("parked-fix", "target32_pie", "patch32_parked.so", &[("parked", "parked_v2")], "");
    let text = text_of(t.pid, &bin_any("target32_pie"));
    let maps = t.maps();
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("function `parked`") && r.stderr.contains("a call"), "{}", r.stderr);
    assert_eq!(text_of(t.pid, &bin_any("target32_pie")), text);
    assert!(!t.maps().contains("patch32_parked.so"), "the module is unloaded: {}", t.maps());
    // Every mapping as it was, but for the registry the apply made.
    let without_registry =
        |m: &str| m.lines().filter(|l| !l.contains("pannus-registry")).collect::<Vec<_>>().join("\n");
    assert_eq!(without_registry(&t.maps()), without_registry(&maps));
    assert_eq!(t.ask("c 5"), "6");
    // The nop pad before `tiny_padded` takes the jump, whatever the entry holds.
    let m = state.manifest("pad-fix", "target32_pie", "patch32_tiny.so", &[("tiny_padded", "tiny_v2")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("p 4"), "5");
    assert_eq!(state.status(t.pid)["patches"][0]["functions"][0]["jump"], "pad");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("p 4"), "4");
}

/// `load: dlopen` on a 32-bit process: through its own 32-bit loader.
fn dlopen_manifest(state: &State, id: &str, object: &str, module: &str, f: (&str, &str)) -> std::path::PathBuf {
    let m = state.manifest(id, object, module, &[f], "");
    common::set_load(&m, "dlopen");
    m
}

#[test]
fn a_cpp_exception_thrown_by_the_replacement_is_caught_by_the_target() {
    let state = State::new();
    let mut t = Proc::start("target32_cpp");
    assert_eq!(t.ask("c 5"), "10");
    assert_eq!(t.ask("c -1"), "exception: negative");
    let m = dlopen_manifest(&state, "cpp-fix", "target32_cpp", "patch32_cpp.so", ("_Z5parsei", "_Z8parse_v2i"));
    let r = state.apply(&m, t.pid).ok();
    assert!(r.stdout.contains("dlopen"), "{}", r.stdout);
    assert_eq!(t.ask("c 5"), "15");
    assert_eq!(t.ask("c 200"), "out_of_range: too big", "the new exception type crosses into the target's catch");
    assert_eq!(t.ask("c 7"), "21", "and the process keeps running");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 200"), "400");
    assert!(!t.maps().contains("patch32_cpp.so"), "dlclose unloaded it");

    // load: mmap registers the module's tables with the unwinder C++ throws go through
    // (libgcc_s's, not the i386 C library's own copy).
    let m = state.manifest("cpp-mmap", "target32_cpp", "patch32_cpp.so", &[("_Z5parsei", "_Z8parse_v2i")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 200"), "out_of_range: too big");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c -1"), "exception: negative", "the target's own exceptions still unwind");
    assert_eq!(t.ask("c 200"), "400");
    assert!(!t.maps().contains("patch32_cpp.so"), "unmapped");
}

#[test]
fn thread_local_storage_through_dlopen_and_refused_with_mmap() {
    let state = State::new();
    let mut t = Proc::start("target32_pie");
    let m = state.manifest("tls-mmap", "target32_pie", "patch32_tls.so", &[("compute", "compute_tls")], "");
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("thread-local storage") && r.stderr.contains("load: dlopen"), "{}", r.stderr);
    let m = dlopen_manifest(&state, "tls-fix", "target32_pie", "patch32_tls.so", ("compute", "compute_tls"));
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 5"), "5001");
    assert_eq!(t.ask("c 5"), "5002", "the thread-local counter of the main thread");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");
}

/// `consistency: function` unwinds 32-bit stacks (`.eh_frame` through gimli).
#[test]
fn the_function_rule_unwinds_32_bit_stacks() {
    let state = State::new();
    let mut t = Proc::start("target32_nopie");
    assert_eq!(t.ask("P"), "started");
    common::wait_until("the thread is parked", || common::threads(t.pid).len() == 2);
    let text = text_of(t.pid, &bin_any("target32_nopie"));
    let rule = "safety:\n  consistency: function\n  retries: 20\n  retry_interval: 5ms\n";
    let m = state.manifest("park-fix", "target32_nopie", "patch32_parked.so", &[("parked", "parked_v2")], rule);
    // Busy each time; on a loaded machine an attempt can also end with a thread that did not
    // stop in time, which names no function: tried again.
    let mut r = state.apply(&m, t.pid);
    for _ in 0..5 {
        if r.code != 3 || r.stderr.contains("in `parked`") {
            break;
        }
        r = state.apply(&m, t.pid);
    }
    assert_eq!(r.code, 3, "busy: {r:?}");
    // Below parked() in its sleep, or (on a loaded machine) in parked()'s own loop between two.
    let inside = r.stderr.contains("has a frame at depth") || r.stderr.contains("is executing at");
    assert!(r.stderr.contains("in `parked`") && inside, "{}", r.stderr);
    assert!(r.stderr.contains("parked+0x") && r.stderr.contains("(target32_nopie)"), "{}", r.stderr);
    assert!(!r.stderr.contains("could not be unwound"), "{}", r.stderr);
    assert_eq!(text_of(t.pid, &bin_any("target32_nopie")), text, "left untouched");

    // No thread stays in compute(): the switch waits for a moment when none is inside.
    assert_eq!(t.ask("w"), "started");
    let rule = "safety:\n  consistency: function\n  retries: 1000\n  retry_interval: 1ms\n";
    let m = state.manifest("fn-fix", "target32_nopie", "patch32_compute.so", &[("compute", "compute_v2")], rule);
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 5"), "500");
    state.rollback(t.pid, None).ok();
    let r: Vec<i64> = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(r[3], 0, "{r:?}");
}

/// A 32-bit process's seccomp filter sees pannus's calls by their i386 numbers: one refusing
/// `mmap2` refuses the apply before anything is done.
#[test]
fn seccomp_filters_are_read_with_the_i386_numbers() {
    let state = State::new();
    let mut t = Proc::start("target32_seccomp_mmap2");
    let m = state.manifest("x", "target32_seccomp_mmap2", "patch32_compute.so", &[("compute", "compute_v2")], "");
    let maps = t.maps();
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("seccomp filter refuses") && r.stderr.contains("mmap"), "{}", r.stderr);
    assert_eq!(t.maps(), maps, "nothing mapped");
    assert_eq!(t.ask("c 5"), "6");
}

/// 64 threads call `stress` flat out through 30 apply/rollback cycles: every answer is the old
/// function's or the new one's (tests/stress.rs, on a 32-bit process).
#[test]
fn sixty_four_threads_through_thirty_cycles() {
    let state = State::new();
    let mut t = Proc::start("target32_stress");
    let m = state.manifest("stress", "target32_stress", "patch32_stress.so", &[("stress", "stress_v2")], "");
    let (mut busy_apply, mut busy_rollback) = (0, 0);
    for i in 0..30 {
        loop {
            let r = state.apply(&m, t.pid);
            match r.code {
                0 => break,
                3 if busy_apply < 500 => {
                    busy_apply += 1;
                    assert_eq!(t.ask("c 7"), "22", "cycle {i}: a busy apply changed nothing");
                }
                _ => panic!("cycle {i}: apply failed: {r:?}"),
            }
        }
        assert_eq!(t.ask("c 7"), "37", "cycle {i}: patched");
        loop {
            let r = state.rollback(t.pid, Some("stress"));
            match r.code {
                0 => break,
                3 if busy_rollback < 500 => busy_rollback += 1,
                _ => panic!("cycle {i}: rollback failed: {r:?}"),
            }
        }
        assert_eq!(t.ask("c 7"), "22", "cycle {i}: rolled back");
    }
    // The counters are a 32-bit process's `long`s, which 64 threads wrap: seen is non-zero.
    let v: Vec<i64> = t.ask("r").split_whitespace().map(|n| n.parse().unwrap()).collect();
    let [_, old, new, wrong] = v[..] else { panic!("bad report {v:?}") };
    assert_eq!(wrong, 0, "wrong answers: {v:?}");
    assert!(old != 0 && new != 0, "both answers seen: {v:?}");
    assert!(t.alive());
    eprintln!("i386 stress: 30 cycles, {busy_apply} busy applies, {busy_rollback} busy rollbacks; {v:?}");
}

/// `apply --all`, `status --all` and `rollback --all` on every process of a 32-bit binary (a copy
/// of its own, so that the other tests' processes are not among them).
#[test]
fn every_process_of_a_32_bit_binary() {
    let state = State::new();
    let exe = state.path().join("target32_fleet");
    std::fs::copy(bin_any("target32_pie"), &exe).unwrap();
    let start = || Proc::spawn(std::process::Command::new(&exe));
    let (mut a, mut b) = (start(), start());
    let mut other = Proc::start("target32_pie");
    let m = state.manifest("fleet-fix", "target32_pie", "patch32_compute.so", &[("compute", "compute_v2")], "");
    let text = std::fs::read_to_string(&m).unwrap();
    let text = text.replace(&bin_any("target32_pie").to_string_lossy().into_owned(), &exe.to_string_lossy());
    std::fs::write(&m, text).unwrap();
    let check = state.pannus(&["check", &m.to_string_lossy(), "--all"]).ok();
    assert!(check.stdout.contains("  architecture: i386\n"), "{}", check.stdout);
    let r = state.pannus(&["apply", &m.to_string_lossy(), "--all", "--yes", "--json"]).ok();
    let v = r.json();
    let mut patched: Vec<i64> = v["patched"].as_array().unwrap().iter().map(|p| p.as_i64().unwrap()).collect();
    patched.sort_unstable();
    let mut want = vec![i64::from(a.pid), i64::from(b.pid)];
    want.sort_unstable();
    assert_eq!(patched, want, "{v}");
    for p in [&a, &b] {
        assert_eq!(v["archs"][p.pid.to_string()], "i386", "{v}");
    }
    assert_eq!((a.ask("c 5"), b.ask("c 5"), other.ask("c 5")), ("500".into(), "500".into(), "6".into()));

    let st = state.pannus(&["status", "--all", "--json"]).ok().json();
    let procs = st["processes"].as_array().unwrap();
    for p in [&a, &b] {
        let me = procs.iter().find(|x| x["pid"] == p.pid).unwrap_or_else(|| panic!("{} listed: {st}", p.pid));
        assert_eq!(me["arch"], "i386");
        assert_eq!(me["patches"][0]["state"], "trial");
    }
    let text = state.pannus(&["rollback", "--all", "fleet-fix", "--yes"]).ok();
    assert!(text.stdout.contains("  architecture: i386\n"), "{}", text.stdout);
    assert_eq!((a.ask("c 5"), b.ask("c 5")), ("6".into(), "6".into()));
}

/// A pannus killed at every instrumented point of an apply and a rollback of a 32-bit process
/// (tests/faults.rs): the borrowed thread goes home through its ia32 signal frame alone, the
/// target keeps answering with the old or the new function, and a plain rollback brings it back.
#[test]
fn killed_at_every_step_of_apply_and_rollback() {
    let state = State::new();
    let mut t = Proc::start("target32_pie");
    assert_eq!(t.ask("w"), "started");
    let m = state.manifest("kill-fix", "target32_pie", "patch32_compute.so", &[("compute", "compute_v2")], "");
    let (m_s, pid) = (m.to_string_lossy().into_owned(), t.pid.to_string());
    let apply = ["apply", m_s.as_str(), "--pid", pid.as_str(), "--yes"];
    let rollback = ["rollback", "--pid", pid.as_str(), "--yes"];
    let run = |at: u32, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pannus"));
        cmd.args(args).env("PANNUS_STATE_DIR", state.path()).stdin(std::process::Stdio::null());
        match at {
            0 => cmd.env("PANNUS_TEST_POINTS", "1"),
            n => cmd.env("PANNUS_TEST_KILL_AT", n.to_string()),
        };
        let out = cmd.output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let points = |err: &str| err.lines().filter(|l| l.starts_with("pannus: test point ")).count() as u32;
    let healthy_and_undone = |t: &mut Proc, at: u32| {
        assert!(t.alive(), "the target is alive");
        let a = t.ask("c 5");
        assert!(a == "6" || a == "500", "only the old or the new function answers: {a}");
        let r = state.rollback(t.pid, None);
        assert!(r.code == 0 || (r.code == 4 && r.stderr.contains("no patch applied")), "rollback after a kill: {r:?}");
        assert_eq!(t.ask("c 5"), "6");
        // A module a busy worker was still inside stays mapped (on a loaded machine the wait for
        // it can run out), and a later rollback finishes its unload.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while t.maps().contains("patch32_compute.so") {
            assert!(std::time::Instant::now() < deadline, "killed at {at}: the module is unmapped: {}", t.maps());
            let r = state.rollback(t.pid, None);
            assert!(r.code == 0 || r.code == 4, "{r:?}");
        }
        let r: Vec<i64> = t.ask("r").split(' ').map(|x| x.parse().unwrap()).collect();
        assert_eq!(r[3], 0, "no worker saw a wrong answer: {r:?}");
    };
    let (code, err) = run(0, &apply);
    assert_eq!(code, Some(0), "{err}");
    let apply_points = points(&err);
    let (code, err) = run(0, &rollback);
    assert_eq!(code, Some(0), "{err}");
    let rollback_points = points(&err);
    assert!(apply_points > 20 && rollback_points > 5, "points: apply {apply_points}, rollback {rollback_points}");
    let mut killed = 0;
    for at in 1..=apply_points {
        let (code, err) = run(at, &apply);
        killed += u32::from(code.is_none());
        assert!(code.is_none() || code == Some(0), "apply killed at {at}: {code:?} {err}");
        healthy_and_undone(&mut t, at);
    }
    for at in 1..=rollback_points {
        state.apply(&m, t.pid).ok();
        let (code, err) = run(at, &rollback);
        killed += u32::from(code.is_none());
        assert!(code.is_none() || code == Some(0), "rollback killed at {at}: {code:?} {err}");
        healthy_and_undone(&mut t, 100 + at);
    }
    assert!(killed >= (apply_points + rollback_points) / 2, "pannus was really killed ({killed} times)");
}

/// An installed patch of `compute` for a copy of `target32_pie` of the test's own (so that the
/// other tests' processes are not among its processes), and a daemon serving it.
fn daemon_for_a_copy(state: &State, env: &[(&str, &str)]) -> (PathBuf, Daemon) {
    let exe = state.path().join("target32_daemon");
    std::fs::copy(bin_any("target32_pie"), &exe).unwrap();
    let m = state.manifest("daemon-fix", "target32_pie", "patch32_compute.so", &[("compute", "compute_v2")], "");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&m, text.replace(&*bin_any("target32_pie").to_string_lossy(), &exe.to_string_lossy())).unwrap();
    install(state, &m, "committed", None);
    (exe.clone(), Daemon::start_env(state, &[], env))
}

/// One daemon at a time: each holds every new process's `exec` while it looks at it.
fn one_daemon_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `pannus daemon` patches each new 32-bit process of an installed patch's binary before its
/// `main` runs: held at its entry point in the vDSO, patched, let go.
#[test]
fn the_daemon_patches_new_32_bit_processes_before_main() {
    let _one = one_daemon_at_a_time();
    let state = State::new();
    let (exe, mut daemon) = daemon_for_a_copy(&state, &[]);
    for _ in 0..3 {
        let mut t = Proc::spawn(std::process::Command::new(&exe));
        assert_eq!(t.ask("F"), "500", "patched before main: {}", daemon.log());
        assert_eq!(t.ask("c 5"), "500");
        let st = state.status(t.pid);
        assert_eq!(st["arch"], "i386");
        assert_eq!(st["patches"][0]["patch"], "daemon-fix", "{st}");
        let pid = t.pid;
        common::wait_until("the daemon says so", || {
            daemon.log().contains(&format!("process {pid} let go at its entry point"))
        });
        assert_eq!(t.ask("s"), "7 100", "its data as the program set it");
        t.quit();
    }
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait(), 0, "{}", daemon.log());
}

/// The daemon is killed at points of its work on a new 32-bit process parked at its entry point,
/// while it borrows the sleeping thread (its signal frame then lies right below the sleep's
/// stack pointer: a 32-bit stack has no red zone) and as it writes the jump. Each time the
/// thread goes home through that frame, the sleep is issued again with its own arguments and
/// ends within its timeout, and the program starts and answers with the old or the new function.
#[test]
fn a_daemon_killed_while_it_patches_a_parked_32_bit_process_leaves_it_to_start() {
    let _one = one_daemon_at_a_time();
    // The points of one held process's work, counted on a daemon of their own.
    let labels: Vec<String> = {
        let state = State::new();
        let (exe, mut daemon) = daemon_for_a_copy(&state, &[("PANNUS_TEST_POINTS", "1")]);
        let mut t = Proc::spawn(std::process::Command::new(&exe));
        assert_eq!(t.ask("F"), "500", "{}", daemon.log());
        let pid = t.pid;
        common::wait_until("the daemon lets it go", || {
            daemon.log().contains(&format!("process {pid} let go at its entry point"))
        });
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        daemon.wait();
        daemon.log().lines().filter_map(|l| l.split_once(": test point ").map(|(_, p)| p.to_string())).collect()
    };
    let at = |label: &str| labels.iter().find(|p| p.ends_with(label)).and_then(|p| p.split(':').next()?.parse().ok());
    let points: Vec<u32> =
        ["thread borrowed, signal frame written", "system call entered", "call set up", "entry bytes written"]
            .into_iter()
            .map(|l| at(l).unwrap_or_else(|| panic!("a point `{l}` in {labels:?}")))
            .collect();
    for k in points {
        let state = State::new();
        let (exe, mut daemon) = daemon_for_a_copy(&state, &[("PANNUS_TEST_KILL_AT", &k.to_string())]);
        let mut t = Proc::spawn(std::process::Command::new(&exe));
        assert_eq!(daemon.wait(), 128 + 9, "killed at point {k}: {}", daemon.log());
        let first = t.ask("F");
        assert!(first == "6" || first == "500", "killed at point {k}: compute(5) was {first} at main");
        let now = t.ask("c 5");
        assert!(now == "6" || now == "500", "killed at point {k}: {now}");
        assert_eq!(t.ask("s"), "7 100", "killed at point {k}: its data as the program set it");
        t.quit();
    }
}

/// The daemon is killed while a new 32-bit process sleeps at its entry point: the sleep ends by
/// itself and returns to the entry point through the words below the loader's stack pointer,
/// and the program runs unpatched with its data as it set it.
#[test]
fn a_32_bit_process_parked_at_its_entry_point_goes_on_by_itself_when_the_daemon_is_killed() {
    let _one = one_daemon_at_a_time();
    let state = State::new();
    let env = [("PANNUS_TEST_PAUSE_AT", "process parked at its entry point"), ("PANNUS_TEST_POINTS", "1")];
    let (exe, mut daemon) = daemon_for_a_copy(&state, &env);
    // Proc::spawn waits for the target's "ready": started on a thread of its own.
    let started = std::thread::spawn(move || Proc::spawn(std::process::Command::new(&exe)));
    common::wait_until("the daemon holds the process", || {
        daemon.log().contains("process parked at its entry point")
            && pannus_kernel::thread_state(daemon.pid(), daemon.pid()) == Some('T')
    });
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(daemon.wait(), 128 + 9);
    let mut t = started.join().expect("the target came up without the daemon");
    assert_eq!(t.ask("F"), "6");
    assert_eq!(t.ask("c 5"), "6");
    assert_eq!(t.ask("s"), "7 100", "its data as the program set it");
}
