//! `module.load: dlopen`: the target's own dynamic linker loads the module, so C++ exceptions,
//! thread-local storage and indirect functions work; rollback unloads it with dlclose.

mod common;
use common::{Proc, State};

const DLOPEN: &str = "module_load: dlopen\n";

/// A manifest with `load: dlopen` in its module section.
fn dlopen_manifest(
    state: &State,
    id: &str,
    object: &str,
    module: &str,
    f: (&str, &str),
    extra: &str,
) -> std::path::PathBuf {
    let m = state.manifest(id, object, module, &[f], extra);
    let text = std::fs::read_to_string(&m).unwrap();
    let text = text.replacen("functions:\n", "  load: dlopen\nfunctions:\n", 1);
    std::fs::write(&m, text).unwrap();
    let _ = DLOPEN;
    m
}

#[test]
fn cpp_exception_thrown_by_the_replacement_is_caught_by_the_target() {
    let state = State::new();
    let mut t = Proc::start("cpp_target");
    assert_eq!(t.ask("c 5"), "10");
    assert_eq!(t.ask("c -1"), "exception: negative");
    let m = dlopen_manifest(&state, "cpp-fix", "cpp_target", "patch_cpp.so", ("_Z5parsei", "_Z8parse_v2i"), "");
    let r = state.apply(&m, t.pid).ok();
    assert!(r.stdout.contains("dlopen"), "{}", r.stdout);
    assert_eq!(t.ask("c 5"), "15");
    assert_eq!(t.ask("c 200"), "out_of_range: too big", "the new exception type crosses into the target's catch");
    assert_eq!(t.ask("c 7"), "21", "and the process keeps running");
    assert!(t.maps().contains("patch_cpp.so"));
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 200"), "400");
    assert_eq!(t.ask("c -1"), "exception: negative");
    assert!(!t.maps().contains("patch_cpp.so"), "dlclose unloaded it");
}

#[test]
fn thread_local_storage_and_ifuncs_work_through_dlopen() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = dlopen_manifest(&state, "tls-fix", "target_pie", "patch_tls.so", ("compute", "compute_tls"), "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 5"), "5001");
    assert_eq!(t.ask("c 5"), "5002", "the thread-local counter of the main thread");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");

    let m = dlopen_manifest(&state, "ifunc-fix", "target_pie", "patch_ifunc.so", ("compute", "compute_ifunc"), "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 5"), "35", "the indirect function resolved by the dynamic linker");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn mmap_refuses_tls_naming_dlopen_as_the_way() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let m = state.manifest("tls-mmap", "target_pie", "patch_tls.so", &[("compute", "compute_tls")], "");
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("thread-local storage") && r.stderr.contains("load: dlopen"), "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "6");
}

#[test]
fn dlopen_failure_is_reported_with_the_dynamic_linkers_reason() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let maps = t.maps();
    // A module needing a library that does not exist.
    let dir = state.path();
    let src = dir.join("needs.c");
    std::fs::write(&src, "int ghost(void);\nint compute_needs(int x) { return x + ghost(); }\n").unwrap();
    let so = dir.join("libneeds.so");
    let lib = dir.join("libghost.so");
    std::fs::write(dir.join("ghost.c"), "int ghost(void) { return 1; }\n").unwrap();
    let gcc = |args: &[&str]| assert!(std::process::Command::new("gcc").args(args).status().unwrap().success());
    gcc(&["-shared", "-fPIC", "-o", &lib.to_string_lossy(), &dir.join("ghost.c").to_string_lossy()]);
    gcc(&[
        "-shared",
        "-fPIC",
        "-o",
        &so.to_string_lossy(),
        &src.to_string_lossy(),
        "-L",
        &dir.to_string_lossy(),
        "-lghost",
    ]);
    std::fs::remove_file(&lib).unwrap();
    let sha = pannus::sha256_file(&so).unwrap();
    let object = common::bin("target_pie");
    let text = format!(
        "patch: needs\nversion: '1'\ntarget:\n  object: {}\n  build_id: {}\nmodule:\n  path: {}\n  sha256: {sha}\n  load: dlopen\nfunctions:\n  - target: compute\n    replacement: compute_needs\n",
        object.display(),
        common::build_id(&object),
        so.display()
    );
    let m = dir.join("needs.yaml");
    std::fs::write(&m, text).unwrap();
    let r = state.apply(&m, t.pid);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("dlopen refused") && r.stderr.contains("libghost.so"), "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "6");
    // The registry this apply created is gone again.
    assert_eq!(t.maps(), maps);
}

#[test]
fn mmap_method_registers_the_modules_exception_tables() {
    // The target has libgcc's unwinder (a C++ program): pannus registers the module's .eh_frame
    // with __register_frame, so exceptions thrown by a replacement loaded with `load: mmap`
    // unwind into the target's catch too; rollback deregisters them before unmapping.
    let state = State::new();
    let mut t = Proc::start("cpp_target");
    let m = state.manifest("cpp-mmap", "cpp_target", "patch_cpp.so", &[("_Z5parsei", "_Z8parse_v2i")], "");
    state.apply(&m, t.pid).ok();
    assert_eq!(t.ask("c 5"), "15");
    assert_eq!(t.ask("c 200"), "out_of_range: too big");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("c -1"), "exception: negative", "the target's own exceptions still unwind after deregistration");
    assert_eq!(t.ask("c 200"), "400");
    // Stale copies of pointers into its unwind tables, in memory the unwinder freed, keep no
    // module mapped.
    assert!(!t.maps().contains("patch_cpp.so"), "unmapped");
}
