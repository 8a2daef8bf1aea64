//! The C library as a target, on this machine's own `libc.so.6` (its path and build-id read
//! from the running target at test time): an indirect function (`strlen`, which the dynamic
//! linker chose an implementation of for this CPU), a plain function (`atoi`) and a versioned
//! one (`realpath@GLIBC_2.2.5`) replaced in one patch; a call from inside the C library
//! (`puts` measures its string with its own `strlen`) sees the fix; rollback restores every
//! entry; threads calling them flat out through apply/rollback cycles never see a wrong answer.

mod common;
use common::libc::{libc_base, libc_of, libc_target, libc_target32, manifest, manifest_with};
use common::tmux::Tmux;
use common::{Proc, State};
use std::path::Path;
use std::process::Command;

const FIX: [(&str, &str); 3] =
    [("strlen", "strlen_fixed"), ("atoi", "atoi_fixed"), ("realpath@GLIBC_2.2.5", "realpath_compat_fixed")];

/// The target's answers before any patch (or after rollback).
fn assert_original(t: &mut Proc) {
    assert_eq!(t.ask("len probe:abc|def"), "13");
    assert_eq!(t.ask("puts probe:abc|def"), "probe:abc|def");
    assert_eq!(t.ask("atoi 99999999999"), "1215752191");
    assert_eq!(t.ask("realpath /"), "EINVAL");
    assert_eq!(t.ask("len hello"), "5");
}

/// Bytes at each address in the process.
fn bytes_at(pid: i32, addrs: &[u64]) -> Vec<Vec<u8>> {
    let t = pannus::Target::open(pid).unwrap();
    addrs.iter().map(|&a| t.mem.read_vec(a, 16).unwrap()).collect()
}

fn hex(v: &serde_json::Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn an_ifunc_a_plain_and_a_versioned_function_of_libc_in_one_patch() {
    let state = State::new();
    let mut t = Proc::start(libc_target());
    let libc = libc_of(t.pid);
    assert_original(&mut t);
    // Where the program's own pointer to strlen points: the implementation ld.so chose.
    let chosen = u64::from_str_radix(t.ask("addr").trim_start_matches("0x"), 16).unwrap();
    let m = manifest(&state, "glibc-fix", &libc, &FIX);

    // check names the implementation in use, touching nothing.
    let check = state.pannus(&["check", &m.to_string_lossy(), "--pid", &t.pid.to_string()]).ok();
    assert!(check.stdout.contains("strlen → ") && check.stdout.contains(" → strlen_fixed (in use"), "{}", check.stdout);
    let check_json = state.pannus(&["check", &m.to_string_lossy(), "--pid", &t.pid.to_string(), "--json"]).ok();
    assert!(check_json.stdout.contains("(in use, at"), "{}", check_json.stdout);

    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("len probe:abc|def"), "9", "the program's own call to strlen");
    assert_eq!(t.ask("puts probe:abc|def"), "probe:abc", "libc's internal call to strlen, from puts");
    assert_eq!(t.ask("atoi 99999999999"), "2147483647", "the plain function");
    assert_eq!(t.ask("realpath /"), "/", "the GLIBC_2.2.5 version of realpath");
    assert_eq!(t.ask("len hello"), "5");

    // The record names the implementation in use, the one ld.so bound the program to.
    let st = state.status(t.pid);
    let functions = st["patches"][0]["functions"].as_array().unwrap().clone();
    let strlen: Vec<&serde_json::Value> = functions.iter().filter(|f| f["target"] == "strlen").collect();
    let in_use: Vec<&&serde_json::Value> = strlen.iter().filter(|f| f["in_use"] == true).collect();
    assert_eq!(in_use.len(), 1, "{functions:#?}");
    assert_eq!(hex(&in_use[0]["address"]), chosen, "{functions:#?}");
    assert!(strlen.len() >= 2, "every implementation the resolver can return is patched: {functions:#?}");
    let implementation = in_use[0]["implementation"].as_str().unwrap().to_string();
    let debug_file = Path::new("/usr/lib/debug/.build-id")
        .join(&common::build_id(&libc)[..2])
        .join(format!("{}.debug", &common::build_id(&libc)[2..]));
    if debug_file.exists() {
        assert!(implementation.starts_with("__strlen_"), "{implementation}");
    } else {
        assert!(implementation.starts_with("libc.so.6+0x"), "{implementation}");
    }
    let plain = functions.iter().find(|f| f["target"] == "atoi").unwrap();
    assert!(plain.get("implementation").is_none(), "{plain}");
    let route = format!("strlen → {implementation} → strlen_fixed");
    let text = state.pannus(&["status", "--pid", &t.pid.to_string()]).ok();
    assert!(text.stdout.contains(&route), "{}", text.stdout);
    let journal = state.pannus(&["journal", "--pid", &t.pid.to_string()]).ok();
    assert!(journal.stdout.contains(&route), "{}", journal.stdout);

    // Rollback restores every entry, the implementations not in use included.
    let addresses: Vec<u64> = functions.iter().map(|f| hex(&f["address"])).collect();
    let patched = bytes_at(t.pid, &addresses);
    state.rollback(t.pid, None).ok();
    assert_original(&mut t);
    let restored = bytes_at(t.pid, &addresses);
    let on_disk = pannus::Object::load(&libc, "libc").unwrap();
    let base = libc_base(t.pid);
    for ((f, p), r) in functions.iter().zip(&patched).zip(&restored) {
        let at = f["address"].as_str().unwrap();
        assert_ne!(p, r, "{at} was patched");
        assert_eq!(Some(r.as_slice()), on_disk.bytes_at(hex(&f["address"]) - base, 16), "{at} is restored");
    }
    // Applied again, and rolled back again, the same.
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("puts probe:abc|def"), "probe:abc");
    state.rollback(t.pid, None).ok();
    assert_original(&mut t);
    assert_eq!(bytes_at(t.pid, &addresses), restored);
}

/// The 32-bit C library, as a 32-bit process maps it (`/usr/lib32/libc.so.6` here): an i386
/// resolver names its implementations through `__x86.get_pc_thunk.*` and its GOT, not a
/// RIP-relative `lea`, and the debug file is for the 64-bit library only, so they are found by
/// `.eh_frame` alone and named by address. `strlen` (every implementation), `atoi` and
/// `realpath@GLIBC_2.0` in one patch: the program's own calls and libc's internal ones see the
/// fix; rollback puts every entry back as the file has it.
#[test]
fn the_32_bit_c_library_an_ifunc_a_plain_and_a_versioned_function() {
    let state = State::new();
    let mut t = Proc::start(libc_target32());
    let libc = libc_of(t.pid);
    let original = |t: &mut Proc| {
        assert_eq!(t.ask("len probe:abc|def"), "13");
        assert_eq!(t.ask("puts probe:abc|def"), "probe:abc|def");
        assert_eq!(t.ask("realpath /"), "EINVAL");
    };
    original(&mut t);
    let chosen = u64::from_str_radix(t.ask("addr").trim_start_matches("0x"), 16).unwrap();
    let fix = [("strlen", "strlen_fixed"), ("atoi", "atoi_fixed"), ("realpath@GLIBC_2.0", "realpath_compat_fixed")];
    let module = common::bin_any("patch32_glibc.so");
    let m = manifest_with(&state, "glibc32-fix", &libc, &module, &fix);
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("len probe:abc|def"), "9", "the program's own call to strlen");
    assert_eq!(t.ask("puts probe:abc|def"), "probe:abc", "libc's internal call to strlen, from puts");
    assert_eq!(t.ask("realpath /"), "/", "the GLIBC_2.0 version of realpath");
    assert_eq!(t.ask("len hello"), "5");

    let st = state.status(t.pid);
    assert_eq!(st["arch"], "i386", "{st}");
    let functions = st["patches"][0]["functions"].as_array().unwrap().clone();
    let strlen: Vec<&serde_json::Value> = functions.iter().filter(|f| f["target"] == "strlen").collect();
    assert!(strlen.len() >= 2, "every implementation the resolver can return is patched: {functions:#?}");
    let in_use: Vec<&&serde_json::Value> = strlen.iter().filter(|f| f["in_use"] == true).collect();
    assert_eq!(in_use.len(), 1, "{functions:#?}");
    assert_eq!(hex(&in_use[0]["address"]), chosen, "the one ld.so bound the program to: {functions:#?}");

    let addresses: Vec<u64> = functions.iter().map(|f| hex(&f["address"])).collect();
    let patched = bytes_at(t.pid, &addresses);
    state.rollback(t.pid, None).ok();
    original(&mut t);
    let on_disk = pannus::Object::load(&libc, "libc").unwrap();
    let base = libc_base(t.pid);
    for ((f, p), r) in functions.iter().zip(&patched).zip(bytes_at(t.pid, &addresses)) {
        let at = f["address"].as_str().unwrap();
        assert_ne!(p, &r, "{at} was patched");
        assert_eq!(Some(r.as_slice()), on_disk.bytes_at(hex(&f["address"]) - base, 16), "{at} is restored");
    }
}

#[test]
fn a_name_libc_defines_in_several_versions_is_refused_naming_them() {
    let state = State::new();
    let t = Proc::start(libc_target());
    let libc = libc_of(t.pid);
    let pid = t.pid.to_string();
    let m = manifest(&state, "unversioned", &libc, &[("realpath", "realpath_compat_fixed")]);
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid]);
    assert_eq!(r.code, 4, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("realpath@GLIBC_2.2.5") && all.contains("realpath@@GLIBC_2.3"), "{all}");
    let r = state.pannus(&["manifest", "check", &m.to_string_lossy()]);
    assert_eq!(r.code, 4, "{r:?}");

    let m = manifest(&state, "not-default", &libc, &[("realpath@@GLIBC_2.2.5", "realpath_compat_fixed")]);
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(format!("{}{}", r.stdout, r.stderr).contains("not the default"), "{r:?}");

    // The default version, named, is found.
    let m = manifest(&state, "default", &libc, &[("realpath@@GLIBC_2.3", "realpath_compat_fixed")]);
    state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid]).ok();

    // An internal alias only the debug file names is the same code: found there, and refused
    // beside the public name in one patch (one entry, one replacement).
    let id = common::build_id(&libc);
    if Path::new(&format!("/usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..])).exists() {
        let m = manifest(&state, "internal", &libc, &[("__GI_strlen", "strlen_fixed")]);
        let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid]).ok();
        assert!(r.stdout.contains("__GI_strlen → __strlen_"), "{}", r.stdout);
        let m = manifest(&state, "both", &libc, &[("strlen", "strlen_fixed"), ("__GI_strlen", "strlen_fixed")]);
        let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid]);
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains("are the same code"), "{r:?}");
    }
}

#[test]
fn threads_calling_libc_flat_out_through_apply_rollback_cycles() {
    let state = State::new();
    let mut t = Proc::start(libc_target());
    let libc = libc_of(t.pid);
    let m = manifest(&state, "glibc-stress", &libc, &FIX[..2]);
    assert_eq!(t.ask("spin 4"), "spinning 4");
    let counts = |t: &mut Proc| -> [u64; 3] {
        let line = t.ask("count");
        let v: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        v.try_into().unwrap_or_else(|v| panic!("bad count line {v:?}"))
    };
    let cycles = 10;
    let mut busy = 0;
    for _ in 0..cycles {
        loop {
            let r = state.apply(&m, t.pid);
            match r.code {
                0 => break,
                3 if busy < 5 * cycles => busy += 1,
                _ => panic!("apply failed: {r:?}"),
            }
        }
        // The threads see the fix: their count of fixed answers grows.
        let seen = counts(&mut t)[1];
        common::wait_until("the threads see the fix", || counts(&mut t)[1] > seen);
        assert_eq!(t.ask("puts probe:abc|def"), "probe:abc");
        loop {
            let r = state.rollback(t.pid, None);
            match r.code {
                0 => break,
                3 if busy < 5 * cycles => busy += 1,
                _ => panic!("rollback failed: {r:?}"),
            }
        }
        assert_eq!(t.ask("len probe:abc|def"), "13");
    }
    let [calls, patched, wrong] = counts(&mut t);
    assert_eq!(wrong, 0, "{calls} calls, {patched} with the fix");
    assert!(calls > patched && patched > 0, "{calls} calls, {patched} with the fix");
    assert!(t.alive());
    assert!(!t.maps().contains("patch_glibc.so"), "every module unloaded");
}

#[test]
fn a_slot_holding_no_implementation_of_the_function_is_refused() {
    // What the process's slots hold is a hint, checked against the C library's own tables: a
    // compromised (or corrupted) process cannot point pannus at the middle of a function.
    let state = State::new();
    let mut t = Proc::start(libc_target());
    let libc = libc_of(t.pid);
    let m = manifest(&state, "glibc-fix", &libc, &FIX[..1]);
    let exe = common::bin(libc_target());
    let program = pannus::Object::load(&exe, "program").unwrap();
    let slot = program
        .relocs
        .iter()
        .find(|r| r.rtype == 7 && r.sym.is_some_and(|i| program.dynsyms[i].name == "strlen"))
        .expect("the program calls strlen through its PLT: a JUMP_SLOT")
        .offset;
    assert_eq!(t.ask("len abc"), "3", "bound, lazily or not");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", t.pid)).unwrap();
    let exe_line = maps.lines().find(|l| l.ends_with(&*exe.to_string_lossy())).unwrap();
    let slot = u64::from_str_radix(exe_line.split('-').next().unwrap(), 16).unwrap() + slot;
    let target = pannus::Target::open(t.pid).unwrap();
    let bound = target.mem.read_u64(slot).unwrap();
    assert_eq!(format!("{bound:#x}"), t.ask("addr"));

    // A slot pointing into the middle of the implementation.
    target.mem.write(slot, &(bound + 1).to_le_bytes()).unwrap();
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &t.pid.to_string()]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains(&format!("holds {:#x}, which is no implementation of `strlen`", bound + 1)), "{r:?}");
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 4, "{r:?}");
    // A slot pointing out of the C library: the fix would not reach its calls.
    let elsewhere = t.maps().lines().find(|l| l.contains("[stack]")).unwrap().split('-').next().unwrap().to_string();
    let elsewhere = u64::from_str_radix(&elsewhere, 16).unwrap() + 64;
    target.mem.write(slot, &elsewhere.to_le_bytes()).unwrap();
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &t.pid.to_string()]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("in [stack]: calls through it do not reach"), "{r:?}");

    target.mem.write(slot, &bound.to_le_bytes()).unwrap();
    assert_eq!(t.ask("len probe:abc|def"), "13", "nothing was done");
    state.pannus(&["check", &m.to_string_lossy(), "--pid", &t.pid.to_string()]).ok();
}

#[test]
fn an_ifunc_nothing_has_bound_yet_and_one_bound_to_the_vdso() {
    let state = State::new();
    let mut t = Proc::start(libc_target());
    let libc = libc_of(t.pid);
    let pid = t.pid.to_string();
    // Nothing in this process calls strstr: every implementation is patched, none in use.
    let m = manifest(&state, "strstr", &libc, &[("strstr", "strlen_fixed")]);
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid]).ok();
    assert!(r.stdout.contains("strstr is an indirect function not bound in this process yet"), "{}", r.stdout);
    // time is bound to the kernel's vDSO, which no patch of the C library reaches.
    assert_eq!(t.ask("time").len(), 10);
    let m = manifest(&state, "time", &libc, &[("time", "strlen_fixed")]);
    let r = state.pannus(&["check", &m.to_string_lossy(), "--pid", &pid]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("in [vdso]: calls through it do not reach"), "{r:?}");
}

#[test]
fn the_demo_glibc_fix_made_as_its_comments_say() {
    let state = State::new();
    let mut t = Proc::start(libc_target());
    let libc = libc_of(t.pid);
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/glibc");
    let module = state.path().join("glibc-fixes.so");
    let out = Command::new("gcc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&module)
        .arg(demo.join("glibc-fixes.c"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = state.path().join("glibc-fixes.yaml");
    let (libc_arg, module_arg, m_arg) = (libc.to_string_lossy(), module.to_string_lossy(), m.to_string_lossy());
    state
        .pannus(&[
            "manifest",
            "new",
            "--target",
            &libc_arg,
            "--module",
            &module_arg,
            "--patch",
            "glibc-fixes",
            "--version",
            "1",
            "--map",
            "realpath@GLIBC_2.2.5=realpath_alloc",
            "--output",
            &m_arg,
            "--force",
        ])
        .ok();
    // The manifest written replaces what the shipped one says.
    let functions = |path: &Path| -> serde_yaml::Value {
        let v: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut f: Vec<(String, String)> = v["functions"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|f| (f["target"].as_str().unwrap().into(), f["replacement"].as_str().unwrap().into()))
            .collect();
        f.sort();
        serde_yaml::to_value(f).unwrap()
    };
    assert_eq!(functions(&m), functions(&demo.join("glibc-fixes.yaml")));

    assert_eq!(t.ask("realpath /"), "EINVAL");
    assert_eq!(t.ask("wcsnlen abcdef 3"), "3");
    let check = state.pannus(&["check", &m_arg, "--pid", &t.pid.to_string()]).ok();
    assert!(
        check.stdout.contains("wcsnlen → ") && check.stdout.contains("→ wcsnlen_fixed (in use"),
        "{}",
        check.stdout
    );
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("realpath /"), "/");
    assert_eq!(t.ask("wcsnlen abcdef 3"), "3");
    assert_eq!(t.ask("wcsnlen abcdef 100"), "6");
    assert_eq!(t.ask("wcsnlen abc 4611686018427387904"), "3");
    let st = state.status(t.pid);
    let used: Vec<&serde_json::Value> = st["patches"][0]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["target"] == "wcsnlen" && f["in_use"] == true)
        .collect();
    assert_eq!(used.len(), 1, "{st:#}");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("realpath /"), "EINVAL");
}

#[test]
fn an_ifunc_of_libc_replaced_by_a_module_the_target_dlopens() {
    let state = State::new();
    let mut t = Proc::start(libc_target());
    let libc = libc_of(t.pid);
    let m = manifest(&state, "glibc-dlopen", &libc, &FIX[..1]);
    common::set_load(&m, "dlopen");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("len probe:abc|def"), "9");
    assert_eq!(t.ask("puts probe:abc|def"), "probe:abc");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("puts probe:abc|def"), "probe:abc|def");
    assert_eq!(t.ask("len probe:abc|def"), "13");
}

#[test]
fn an_indirect_function_of_the_program_itself() {
    // The same for a program's own indirect function: the implementation its resolver chose for
    // this CPU (told by the answer) is the one recorded in use, and the other is patched too.
    let state = State::new();
    let mut t = Proc::start(libc_target());
    let (chosen, other) = match t.ask("scale 5").as_str() {
        "10" => ("scale_plain", "scale_avx2"),
        "15" => ("scale_avx2", "scale_plain"),
        a => panic!("scale 5 answered {a}"),
    };
    let m = common::manifest_in(
        state.path(),
        "scale-fix",
        libc_target(),
        "patch_scale.so",
        &[("scale", "scale_fixed")],
        "",
    );
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("scale 5"), "500");
    let st = state.status(t.pid);
    let f = st["patches"][0]["functions"].as_array().unwrap();
    let route: Vec<(&str, bool)> =
        f.iter().map(|f| (f["implementation"].as_str().unwrap(), f["in_use"].as_bool().unwrap())).collect();
    assert_eq!(route, vec![(chosen, true), (other, false)]);
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("scale 5"), if chosen == "scale_plain" { "10" } else { "15" });
}

/// The console's pre-flight names the implementation of an indirect function of the C library
/// that the process uses, and its process view shows each implementation patched.
#[test]
fn the_pre_flight_names_the_implementation_of_a_libc_ifunc() {
    let state = State::new();
    let mut t = Proc::start(libc_target());
    let libc = libc_of(t.pid);
    manifest(&state, "glibc-fix", &libc, &[("strlen", "strlen_fixed")]);
    let tmux = Tmux::start(&state, 200, 50);
    tmux.wait_for("Processes (");
    tmux.search_pid(t.pid);
    tmux.keys(&["Enter", "a"]);
    tmux.wait_for("Pick a manifest");
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("Pre-flight passed");
    assert!(s.contains("strlen → ") && s.contains("→ strlen_fixed (in use, at 0x"), "{s}");
    for stage in ["Stage 1 of 4", "Stage 2 of 4", "Stage 3 of 4", "Stage 4 of 4"] {
        tmux.keys(&["Enter"]);
        tmux.wait_for(stage);
    }
    tmux.keys(&["Enter"]);
    common::wait_until("the fix is in", || t.ask("puts probe:abc|def") == "probe:abc");
    // The trial screen names the implementation in use.
    tmux.wait_for("Enter opens the trial");
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("Trial of glibc-fix");
    assert!(s.contains("replaces strlen → ") && s.contains("→ strlen_fixed"), "{s}");
    tmux.keys(&["Escape"]);
    let s = tmux.wait_until("a list or the process", |s| {
        s.contains("Patches (application order)") || s.contains("Processes (")
    });
    if !s.contains("Patches (application order)") {
        tmux.keys(&["Enter"]);
    }
    let s = tmux.wait_for("Patches (application order)");
    assert!(s.contains("strlen → ") && s.contains("(not in use)"), "{s}");
    tmux.keys(&["R"]);
    tmux.wait_for(&format!("✔ rolled back in process {}: ", t.pid));
    assert_eq!(t.ask("puts probe:abc|def"), "probe:abc|def");
}
