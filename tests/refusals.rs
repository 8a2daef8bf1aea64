//! Every refusal names the culprit, exits with the documented code, and leaves the target
//! exactly as it was: same code bytes, same mappings, same behaviour.

mod common;
use common::{bin, code_bytes, Proc, State};
use std::path::Path;

/// Applies `manifest` and checks the refusal: exit `code`, `needle` in the message, target
/// untouched.
fn refused(state: &State, t: &mut Proc, manifest: &Path, code: i32, needle: &str) {
    let bytes = code_bytes(t.pid, "target_pie", "compute");
    let maps = t.maps();
    let r = state.apply(manifest, t.pid);
    assert_eq!(r.code, code, "exit code for {}: {r:?}", manifest.display());
    assert!(r.stderr.contains(needle), "message should name `{needle}`: {}", r.stderr);
    assert_eq!(code_bytes(t.pid, "target_pie", "compute"), bytes, "code bytes unchanged");
    assert_eq!(t.maps(), maps, "no mapping added or removed");
    assert_eq!(t.ask("c 5"), "6", "behaviour unchanged");
    let st = state.status(t.pid);
    assert!(st["patches"].as_array().unwrap().is_empty(), "no patch recorded: {st}");
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} in {text}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn wrong_build_id() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let real = common::build_id(&bin("target_pie"));
    edit(&m, &real, &"ab".repeat(20));
    refused(&state, &mut t, &m, 4, "build-id mismatch");
}

#[test]
fn wrong_checksum() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let sha = pannus::sha256_file(&bin("patch_compute.so")).unwrap();
    edit(&m, &sha, &"0".repeat(64));
    refused(&state, &mut t, &m, 2, "checksum mismatch");
}

#[test]
fn missing_target_symbol() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_compute.so", &[("no_such_function", "compute_v2")], "");
    refused(&state, &mut t, &m, 4, "symbol `no_such_function` not found");
}

#[test]
fn missing_replacement_symbol() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_compute.so", &[("compute", "compute_v9")], "");
    refused(&state, &mut t, &m, 4, "does not define function `compute_v9`");
}

#[test]
fn symbol_the_module_needs_is_missing() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_missing.so", &[("compute", "compute_missing")], "");
    refused(&state, &mut t, &m, 4, "symbol `no_such_symbol` needed by the module is defined nowhere");
}

#[test]
fn function_too_small_for_the_jump() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_tiny.so", &[("tiny", "tiny_v2")], "");
    refused(&state, &mut t, &m, 4, "function `tiny`");
    assert_eq!(t.ask("t 4"), "4");
}

#[test]
fn object_not_mapped_by_the_process() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "libtarget.so", "patch_lib.so", &[("lib_compute", "lib_compute_v2")], "");
    refused(&state, &mut t, &m, 4, "does not map");
}

#[test]
fn module_that_is_not_elf() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let fake = state.path().join("fake.so");
    std::fs::write(&fake, b"this is not a shared object").unwrap();
    let sha = pannus::sha256_file(&fake).unwrap();
    let real_sha = pannus::sha256_file(&bin("patch_compute.so")).unwrap();
    edit(&m, &bin("patch_compute.so").display().to_string(), &fake.display().to_string());
    edit(&m, &real_sha, &sha);
    refused(&state, &mut t, &m, 2, "not an ELF file");
}

#[test]
fn patch_already_applied() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("twice", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("already applied"), "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "500");
    state.rollback(t.pid, None).ok();
}

#[test]
fn no_such_process() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    drop(t);
    let r = state.pannus(&["apply", &m.to_string_lossy(), "--pid", "999999999", "--yes"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no process with pid 999999999"), "{}", r.stderr);
}

#[test]
fn no_terminal_and_no_yes_is_refused() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let r = state.pannus(&["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn rollback_of_nothing_is_refused() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let r = state.rollback(t.pid, None);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("no patch applied"), "{}", r.stderr);
    let r = state.rollback(t.pid, Some("ghost"));
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("`ghost`"), "{}", r.stderr);
}

/// Every malformed manifest of the corpus: exit 2, the file and the problem named, target
/// untouched.
#[test]
fn malformed_manifests_exit_2_naming_the_problem() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let bytes = code_bytes(t.pid, "target_pie", "compute");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/manifests");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).map(str::trim);
        let r = state.apply(&path, t.pid);
        assert_eq!(r.code, 2, "{}: {r:?}", path.display());
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(r.stderr.contains(name.as_ref()), "{name}: the message names the file: {}", r.stderr);
        if let Some(e) = expect {
            assert!(r.stderr.contains(e), "{name}: expected `{e}` in {}", r.stderr);
        }
        n += 1;
    }
    assert!(n >= 10, "the corpus has {n} manifests");
    assert_eq!(code_bytes(t.pid, "target_pie", "compute"), bytes);
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn seccomp_filter_blocking_a_needed_call_is_refused_up_front() {
    let state = State::new();
    let mut t = Proc::start("target_seccomp_memfd");
    let maps = t.maps();
    let m = state.manifest("x", "target_seccomp_memfd", "patch_compute.so", &[("compute", "compute_v2")], "");
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &t.pid.to_string()]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("seccomp filter refuses") && r.stderr.contains("memfd_create"), "{}", r.stderr);
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 4, "{r:?}");
    assert_eq!(t.maps(), maps, "nothing was done");
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn seccomp_filter_allowing_pannus_and_memory_deny_write_execute_are_patched() {
    for target in ["target_seccomp_socket", "target_mdwe"] {
        let state = State::new();
        let mut t = Proc::start(target);
        let m = state.manifest("x", target, "patch_compute.so", &[("compute", "compute_v2")], "");
        let r = state.apply(&m, t.pid).ok();
        if target == "target_seccomp_socket" {
            assert!(r.stdout.contains("seccomp filter(s) allow pannus's system calls"), "{}", r.stdout);
        }
        assert_eq!(t.ask("c 5"), "500", "{target}");
        state.rollback(t.pid, None).ok();
        assert_eq!(t.ask("c 5"), "6", "{target}");
    }
}

/// What the seccomp refusals above are decided on: the target's filter, read whole.
#[test]
fn the_seccomp_filter_is_read_whole_from_the_process() {
    let mut t = Proc::start("target_seccomp_memfd");
    let filters = pannus_kernel::read_seccomp_filters(t.pid).unwrap();
    // struct sock_filter: code (u16), jt, jf (u8), k (u32), little-endian.
    let insn = |code: u16, jt: u8, jf: u8, k: u32| {
        let mut i = [0u8; 8];
        i[..2].copy_from_slice(&code.to_le_bytes());
        i[2] = jt;
        i[3] = jf;
        i[4..].copy_from_slice(&k.to_le_bytes());
        i
    };
    // tests/fixtures/target.c's filter.
    let expected = [
        insn(0x20, 0, 0, 0),               // ld [nr]
        insn(0x15, 0, 1, 319),             // jeq #319 (memfd_create), 0, 1
        insn(0x06, 0, 0, 0x0005_0000 | 1), // ret ERRNO | EPERM
        insn(0x06, 0, 0, 0x7fff_0000),     // ret ALLOW
    ];
    assert_eq!(filters.first().map(Vec::as_slice), Some(&expected[..]), "the most recent filter first");
    assert_eq!(t.ask("c 5"), "6", "the target runs on");
}

#[test]
fn a_process_under_a_debugger_is_refused_naming_it() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let mut gdb = std::process::Command::new("gdb")
        .args(["-q", "-p", &t.pid.to_string(), "-ex", "continue"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(gdb) = gdb.as_mut() else { return }; // no gdb here: nothing to test
    for _ in 0..100 {
        if pannus_kernel::tracer_of(t.pid).unwrap_or(0) != 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let r = state.apply(&m, t.pid);
    let _ = gdb.kill();
    let _ = gdb.wait();
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("is being traced by process") && r.stderr.contains("gdb"), "{}", r.stderr);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(t.alive());
}

#[test]
fn missing_ptrace_permission_is_explained_up_front() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("x", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    // The same command as an unprivileged user (nobody), where the tool to switch exists.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_pannus")])
        .args(["apply", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--yes"])
        .env("PANNUS_STATE_DIR", state.path())
        .output();
    let Ok(out) = out else { return };
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("setpriv:") {
        return; // setpriv itself could not switch users here
    }
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("not permitted") && err.contains("CAP_SYS_PTRACE"), "{err}");
    assert_eq!(t.ask("c 5"), "6");
}
