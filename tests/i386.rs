//! 32-bit x86 (i386) processes under the x86-64 kernel: shown with their architecture by `ps`,
//! `status` and `status --all`; a module of another architecture than its process refused with
//! exit 2 naming both; and, as pannus cannot patch them yet, every operation that would stop a
//! 32-bit process or run code in it refused with exit 4, the process untouched (its code, its
//! mappings, its answers, a read it is blocked in).

mod common;
use common::{bin_any, Proc, State};
use std::os::unix::fs::FileExt;
use std::path::Path;

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

/// A 32-bit process with a 32-bit module: refused before anything is done, PIE or not, with a
/// main thread blocked in a read that goes on undisturbed.
#[test]
fn a_32_bit_process_is_refused_untouched() {
    for exe in ["target32_pie", "target32_nopie"] {
        let state = State::new();
        let mut t = Proc::start(exe);
        let m = state.manifest("x", exe, "patch32_compute.so", &[("compute", "compute_v2")], "");
        let pid = t.pid.to_string();
        refused(&state, &mut t, exe, &m, 4, &[&pid, "ELF32 i386", "cannot patch"]);
        let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid]);
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stdout.contains("ELF32 i386") || r.stderr.contains("ELF32 i386"), "{r:?}");
        // A rollback finds nothing of pannus's there, and stops nothing to say so.
        let before = text_of(t.pid, &bin_any(exe));
        let r = state.rollback(t.pid, None);
        assert!(matches!(r.code, 0 | 4), "{r:?}");
        assert_eq!(text_of(t.pid, &bin_any(exe)), before);
        // The read the main thread was blocked in all along returns this line normally.
        assert_eq!(t.ask("c 41"), "42", "{exe}");
        assert!(state.status(t.pid)["patches"].as_array().unwrap().is_empty());
    }
}
