//! `pannus build` on real multi-file projects built by their own makefiles at -O2 -g: the
//! module and manifest it makes from a diff are applied with the real engine to the running
//! program, whose answers change and come back; what cannot be live-patched is refused, naming
//! it and the way out.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy of fixture project `name` (tests/fixtures/build/NAME), built with `make ARGS`.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(name: &str, make_args: &[&str]) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let status =
            Command::new("cp").arg("-r").arg(fixtures_src().join("build").join(name)).arg(&src).status().unwrap();
        assert!(status.success());
        let out = Command::new("make").args(make_args).current_dir(&src).output().expect("make runs");
        assert!(out.status.success(), "make: {}", String::from_utf8_lossy(&out.stderr));
        Project { dir }
    }
    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn start(&self, binary: &str) -> Proc {
        Proc::spawn(Command::new(self.src().join(binary)))
    }
    /// Runs `pannus build --json` for `binary` with the diff named `diff`.
    fn build(&self, state: &State, binary: &str, diff: &str, extra: &[&str]) -> Run {
        let (bin, src, out) = (self.src().join(binary), self.src(), self.out());
        let d = diff_path(diff);
        let mut args = vec![
            "build",
            "--object",
            bin.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
            "--diff",
            d.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--json",
        ];
        if !extra.contains(&"--build") {
            args.extend(["--build", "make"]);
        }
        args.extend(extra);
        state.pannus(&args)
    }
}

fn diff_path(name: &str) -> PathBuf {
    fixtures_src().join("build/diffs").join(name)
}

/// Every file of the tree at `dir` with its contents: to show it was not modified.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn decision<'a>(report: &'a serde_json::Value, list: &str, name: &str) -> &'a serde_json::Value {
    report[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no decision about `{name}` in {list}: {report}"))
}

fn manifest_of(report: &serde_json::Value) -> PathBuf {
    PathBuf::from(report["manifest"].as_str().unwrap())
}

/// A fix inside one function: only it is replaced, and the new code works on the process's
/// own file-local data (a value stored before the patch is found after it). The tree itself is
/// untouched.
#[test]
fn a_fix_inside_a_function_works_on_the_process_data() {
    let state = State::new();
    let p = Project::new("kvd", &[]);
    let before = snapshot(&p.src());
    let mut t = p.start("kvd");
    assert_eq!(t.ask("put 40 7"), "7");
    assert_eq!(t.ask("get 40"), "0", "the bug: key 40 is looked up as 8");
    let run = p.build(&state, "kvd", "store-mask.patch", &[]).ok();
    let report = run.json();
    assert_eq!(decision(&report, "functions", "store_get")["decision"], "replaced", "{report}");
    assert_eq!(report["functions"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(decision(&report, "data", "store.c::values")["decision"], "bound", "{report}");
    assert_eq!(snapshot(&p.src()), before, "the source tree is never modified");

    state.apply(&manifest_of(&report), t.pid).ok();
    assert_eq!(t.ask("get 40"), "7", "the fixed lookup finds what the process stored before");
    assert_eq!(t.ask("hits"), "2", "and counts in the process's own counter");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("get 40"), "0");
}

/// A fix to a static helper gcc inlined into its callers: the helper has no entry to redirect,
/// so every function carrying an inlined copy is replaced, and every call site sees the fix.
#[test]
fn a_fixed_inlined_helper_reaches_every_call_site() {
    let state = State::new();
    let p = Project::new("kvd", &[]);
    let mut t = p.start("kvd");
    assert_eq!(t.ask("scale 100"), "499");
    assert_eq!(t.ask("add 150 0"), "99");
    let report = p.build(&state, "kvd", "clamp.patch", &[]).ok().json();
    assert_eq!(decision(&report, "functions", "clamp")["decision"], "inlined-away", "{report}");
    for caller in ["scale", "bounded_add"] {
        let d = decision(&report, "functions", caller);
        assert_eq!(d["decision"], "replaced-inlines-changed", "{report}");
        assert!(d["reason"].as_str().unwrap().contains("`clamp`"), "{report}");
    }
    state.apply(&manifest_of(&report), t.pid).ok();
    assert_eq!(t.ask("scale 100"), "500");
    assert_eq!(t.ask("add 150 0"), "100");
    assert_eq!(t.ask("level 2"), "1000", "untouched functions still answer");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("scale 100"), "499");
}

/// A new static variable lives in the module, starting from its initial value, while the
/// process's existing counter is still the one counted.
#[test]
fn a_new_static_variable_lives_in_the_module() {
    let state = State::new();
    let p = Project::new("kvd", &[]);
    let mut t = p.start("kvd");
    t.ask("get 1");
    t.ask("get 2");
    assert_eq!(t.ask("hits"), "2");
    let report = p.build(&state, "kvd", "new-static.patch", &[]).ok().json();
    assert_eq!(decision(&report, "functions", "store_hits")["decision"], "replaced", "{report}");
    let asked = decision(&report, "data", "asked (static in store_hits)");
    assert_eq!(asked["decision"], "copied", "{report}");
    state.apply(&manifest_of(&report), t.pid).ok();
    assert_eq!(t.ask("hits"), "1002");
    t.ask("get 3");
    assert_eq!(t.ask("hits"), "2003");
}

/// A diff that only adds comments moves the `__LINE__` an assert passes: the code differs in
/// that immediate only, which is no change; nothing is built, and the report says why.
#[test]
fn a_diff_of_comments_changes_nothing() {
    let state = State::new();
    let p = Project::new("kvd", &[]);
    let run = p.build(&state, "kvd", "comment.patch", &[]);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("nothing to patch"), "{message}");
    assert!(message.contains("scale") && message.contains("__LINE__"), "{message}");
    let report = run.json();
    let scale = decision(&report, "functions", "scale");
    assert_eq!(scale["decision"], "unchanged", "{report}");
    assert!(scale["reason"].as_str().unwrap().contains("__LINE__"), "{report}");
    assert!(!p.out().join("comment.so").exists(), "no module is written");
}

/// A structure gaining a field is refused, naming the structure, the field and the way out.
#[test]
fn a_struct_layout_change_is_refused_naming_the_struct() {
    let state = State::new();
    let p = Project::new("kvd", &[]);
    let run = p.build(&state, "kvd", "layout.patch", &[]);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("`struct session` gains the field `flags`"), "{message}");
    assert!(message.contains("restart the service") && message.contains("shadow variable"), "{message}");
    let report = run.json();
    assert_eq!(decision(&report, "refused", "struct session")["decision"], "refused", "{report}");
    assert_eq!(report["exit"], 4, "{report}");
}

/// A changed initial value of a table the process set up when it started is refused, naming it.
#[test]
fn a_changed_constant_table_is_refused_naming_it() {
    let state = State::new();
    let p = Project::new("kvd", &[]);
    let run = p.build(&state, "kvd", "table.patch", &[]);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("`limits` changes its initial value"), "{message}");
}

/// A binary built with other flags than the tree's build command is refused: the module would
/// not match it.
#[test]
fn a_binary_built_otherwise_is_refused() {
    let state = State::new();
    let p = Project::new("kvd", &["CFLAGS=-O1 -g"]);
    let run = p.build(&state, "kvd", "store-mask.patch", &[]);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("not the ones the running binary was built with"), "{message}");
}

/// Bad input is exit 2, naming the culprit: a diff that does not apply, a missing binary, a
/// build command that fails (with its last lines and the log's path).
#[test]
fn bad_input_is_refused_with_exit_2() {
    let state = State::new();
    let p = Project::new("kvd", &[]);
    let run = p.build(&state, "kvd", "tally-limit.patch", &[]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.json()["error"]["message"].as_str().unwrap().contains("does not apply"), "{}", run.stdout);

    let run = p.build(&state, "no-such-binary", "store-mask.patch", &[]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.json()["error"]["message"].as_str().unwrap().contains("no-such-binary"), "{}", run.stdout);

    let run = p.build(&state, "kvd", "store-mask.patch", &["--build", "echo broken build >&2; false"]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("failed") && message.contains("broken build"), "{message}");
}

/// C++: a member function, by its mangled name, with its cold part and a string literal the
/// fix changed.
#[test]
fn a_cpp_member_function_is_patched() {
    let state = State::new();
    let p = Project::new("tally", &[]);
    let mut t = p.start("tally");
    assert_eq!(t.ask("add 50"), "10");
    let report = p.build(&state, "tally", "tally-limit.patch", &[]).ok().json();
    assert_eq!(decision(&report, "functions", "_ZN5tally7Counter3addEi")["decision"], "replaced", "{report}");
    state.apply(&manifest_of(&report), t.pid).ok();
    assert_eq!(t.ask("add 50"), "60");
    assert_eq!(t.ask("show"), "total: 60");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("add 50"), "70");
    assert_eq!(t.ask("show"), "total 70");
}

/// A program built without -fPIE: the module's absolute 32-bit references (to its literals, to
/// the program's data) are filled in by stage 2.
#[test]
fn a_non_pie_program_is_patched() {
    let state = State::new();
    let flags = "CFLAGS=-O2 -g -fno-pie -no-pie";
    let p = Project::new("kvd", &[flags]);
    let mut t = p.start("kvd");
    assert_eq!(t.ask("scale 100"), "499");
    let report = p.build(&state, "kvd", "clamp.patch", &["--build", &format!("make '{flags}'")]).ok().json();
    state.apply(&manifest_of(&report), t.pid).ok();
    assert_eq!(t.ask("scale 100"), "500");
    assert_eq!(t.ask("add 150 0"), "100");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("scale 100"), "499");
}

/// A shared library as the object: the replaced functions bind to the library's own
/// file-local data.
#[test]
fn a_shared_library_is_patched() {
    let state = State::new();
    let p = Project::new("libkv", &[]);
    let mut t = p.start("kvcli");
    assert_eq!(t.ask("put 20 5"), "5");
    assert_eq!(t.ask("get 4"), "5", "the bug: keys 4 and 20 share a slot");
    let report = p.build(&state, "libkv.so", "slot.patch", &[]).ok().json();
    assert_eq!(decision(&report, "functions", "slot")["decision"], "inlined-away", "{report}");
    assert_eq!(decision(&report, "data", "kv.c::table")["decision"], "bound", "{report}");
    state.apply(&manifest_of(&report), t.pid).ok();
    assert_eq!(t.ask("put 20 9"), "9");
    assert_eq!(t.ask("get 20"), "9");
    assert_eq!(t.ask("get 4"), "5", "the value stored before the fix is where it was");
    assert_eq!(t.ask("count"), "2", "counted in the library's own counter");
}

/// With `--compile-commands`, no build command runs: the affected units are compiled as the
/// file says, in pannus's copies.
#[test]
fn compile_commands_replace_the_build_command() {
    let state = State::new();
    let p = Project::new("kvd", &[]);
    let mut t = p.start("kvd");
    let entries: Vec<serde_json::Value> = ["main.c", "store.c", "util.c"]
        .iter()
        .map(|f| {
            let o = f.replace(".c", ".o");
            serde_json::json!({
                "directory": p.src(),
                "arguments": ["cc", "-O2", "-g", "-Wall", "-c", "-o", o, f],
                "file": f,
            })
        })
        .collect();
    let db = p.dir.path().join("compile_commands.json");
    std::fs::write(&db, serde_json::to_string(&entries).unwrap()).unwrap();
    let report =
        p.build(&state, "kvd", "store-mask.patch", &["--build", "", "--compile-commands", db.to_str().unwrap()]);
    let report = report.ok().json();
    assert_eq!(report["compiled"], serde_json::json!(["store.c"]), "{report}");
    t.ask("put 40 7");
    state.apply(&manifest_of(&report), t.pid).ok();
    assert_eq!(t.ask("get 40"), "7");
}

/// The binary's debug information may be in a separate file under /usr/lib/debug/.build-id/,
/// as distributions install it; without any, the build says so.
#[test]
fn debug_information_from_the_build_id_folder_or_a_clear_refusal() {
    let state = State::new();
    let p = Project::new("kvd", &[]);
    let bin = p.src().join("kvd");
    let id = build_id(&bin);
    let folder = Path::new("/usr/lib/debug/.build-id").join(&id[..2]);
    std::fs::create_dir_all(&folder).unwrap();
    let debug = folder.join(format!("{}.debug", &id[2..]));
    let run = |args: &[&std::ffi::OsStr]| assert!(Command::new("objcopy").args(args).status().unwrap().success());
    run(&["--only-keep-debug".as_ref(), bin.as_os_str(), debug.as_os_str()]);
    run(&["--strip-debug".as_ref(), bin.as_os_str()]);
    let built = p.build(&state, "kvd", "store-mask.patch", &[]);
    std::fs::remove_file(&debug).unwrap();
    assert_eq!(built.code, 0, "{}{}", built.stdout, built.stderr);

    let run = p.build(&state, "kvd", "store-mask.patch", &[]);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("has no debug information"), "{message}");
}

/// C++: a new object with a dynamic initializer is constructed in the module by the unit's
/// static initialiser in stage 3, while the objects the process already has are not
/// constructed again (the event log keeps its events); its destructor runs at the rollback, and
/// the process exits cleanly.
#[test]
fn a_new_cpp_object_is_constructed_in_the_module_and_nothing_else_is() {
    let state = State::new();
    let p = Project::new("tally", &[]);
    let mut t = p.start("tally");
    assert_eq!(t.ask("add 5"), "5");
    assert_eq!(t.ask("log"), "log:+");
    let report = p.build(&state, "tally", "tally-label.patch", &[]).ok().json();
    let init = report["functions"].as_array().unwrap().iter().find(|d| d["decision"] == "init");
    assert!(init.is_some(), "the static initialiser runs in stage 3: {report}");
    state.apply(&manifest_of(&report), t.pid).ok();
    assert_eq!(t.ask("show"), "counted: 5");
    assert_eq!(t.ask("log"), "log:+", "the existing std::string was not constructed again");
    assert_eq!(t.ask("add 1"), "6");
    assert_eq!(t.ask("log"), "log:++");
    state.rollback(t.pid, None).ok();
    assert_eq!(t.ask("show"), "total 6");
    let status = t.quit();
    assert!(status.success(), "the process exits cleanly: {status}");
}

/// Builds `diff` for the `edge` project and applies it to the running program; returns the
/// report.
fn edge_apply(state: &State, p: &Project, t: &Proc, diff: &str) -> serde_json::Value {
    let report = p.build(state, "edge", diff, &[]).ok().json();
    state.apply(&manifest_of(&report), t.pid).ok();
    report
}

/// A static local of a helper gcc inlines keeps counting in the process's own variable when
/// the fix adds a caller (its identity is its function and name, not who uses it).
#[test]
fn a_static_local_of_an_inlined_helper_stays_the_process_s() {
    let state = State::new();
    let p = Project::new("edge", &[]);
    let mut t = p.start("edge");
    assert_eq!(t.ask("hit"), "1");
    assert_eq!(t.ask("hit"), "2");
    edge_apply(&state, &p, &t, "edge-bump.patch");
    assert_eq!(t.ask("hit2"), "3", "the process's counter, not a fresh one");
    assert_eq!(t.ask("hit"), "4");
}

/// A changed constant in a function whose lines the diff touches is a change, even when a
/// comment added above shifts lines by as much.
#[test]
fn a_changed_constant_is_not_taken_for_a_moved_line() {
    let state = State::new();
    let p = Project::new("edge", &[]);
    let mut t = p.start("edge");
    assert_eq!(t.ask("line 41"), "1");
    let report = edge_apply(&state, &p, &t, "edge-threshold.patch");
    assert_eq!(decision(&report, "functions", "line_op")["decision"], "replaced", "{report}");
    assert_eq!(t.ask("line 41"), "0");
}

/// A changed string literal changes the function that prints it.
#[test]
fn a_changed_string_literal_is_a_change() {
    let state = State::new();
    let p = Project::new("edge", &[]);
    let mut t = p.start("edge");
    assert_eq!(t.ask("greet 5"), "hello 5");
    edge_apply(&state, &p, &t, "edge-string.patch");
    assert_eq!(t.ask("greet 5"), "HELLO there 5");
}

/// A change to a function gcc specialised (`scale.constprop.0`) replaces its callers, which
/// call the module's new copy.
#[test]
fn a_changed_specialised_copy_replaces_its_callers() {
    let state = State::new();
    let p = Project::new("edge", &[]);
    let mut t = p.start("edge");
    assert_eq!(t.ask("cl 1"), "11");
    let report = edge_apply(&state, &p, &t, "edge-clone.patch");
    assert_eq!(decision(&report, "functions", "cl_op")["decision"], "replaced", "{report}");
    assert_eq!(t.ask("cl 1"), "13");
}

/// A tail call to a neighbouring static function (a short jump in the binary, a long one with
/// -ffunction-sections) is the same code: an unrelated fix in the same unit goes through.
#[test]
fn a_short_tail_call_in_the_binary_is_the_same_code() {
    let state = State::new();
    let p = Project::new("edge", &[]);
    let mut t = p.start("edge");
    assert_eq!(t.ask("other 5"), "24");
    edge_apply(&state, &p, &t, "edge-other.patch");
    assert_eq!(t.ask("other 5"), "23");
    assert_eq!(t.ask("api 4"), "29");
}

/// A fix to one of two file-local functions of the same name (in two units) touches only its
/// own: the other, inlined in its unit, is no reason to refuse.
#[test]
fn same_named_static_functions_in_two_units_are_told_apart() {
    let state = State::new();
    let p = Project::new("edge", &[]);
    let mut t = p.start("edge");
    assert_eq!(t.ask("a 1"), "1002");
    edge_apply(&state, &p, &t, "edge-helper.patch");
    assert_eq!(t.ask("a 1"), "2002");
    assert_eq!(t.ask("b 1"), "402");
}

/// A switch gcc turned into a table of constants: the table is the function's literal, not a
/// variable of the program, and the fixed function carries its own.
#[test]
fn a_switch_table_gcc_made_travels_with_its_function() {
    let state = State::new();
    let p = Project::new("edge", &[]);
    let mut t = p.start("edge");
    assert_eq!(t.ask("sw 1"), "27");
    edge_apply(&state, &p, &t, "edge-switch.patch");
    assert_eq!(t.ask("sw 1"), "28");
    assert_eq!(t.ask("sw 2"), "31");
}

/// Two units whose source files share a name (x/util.c, y/util.c): their file-local data
/// cannot be told apart by name in the binary, so the build refuses rather than bind the fix
/// to a fresh copy.
#[test]
fn file_local_data_of_same_named_files_is_refused_not_copied() {
    let state = State::new();
    let p = Project::new("edge", &[]);
    let run = p.build(&state, "edge", "edge-same-file-name.patch", &[]);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("util.c::table") && message.contains("ambiguous"), "{message}");
}

/// A function too short for the jump is refused at build time, saying so and what to do,
/// rather than at the apply.
#[test]
fn a_function_too_short_for_the_jump_is_refused_when_built() {
    let state = State::new();
    let p = Project::new("edge", &[]);
    let run = p.build(&state, "edge", "edge-tiny.patch", &[]);
    assert_eq!(run.code, 4, "{}{}", run.stdout, run.stderr);
    let message = run.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("`tiny`") && message.contains("-fpatchable-function-entry"), "{message}");
}
