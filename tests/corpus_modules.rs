//! Every malformed patch module of tests/corpus/modules is refused before it touches the target:
//! exit 2 or 4, the message names the problem, and the target keeps its code bytes, its
//! mappings and its behaviour.

mod common;
use common::{bin, build_id, code_bytes, Proc, State};
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/modules")
}

/// A manifest patching target_pie's `compute` with `compute_v2` of `module`, with its real
/// checksum.
fn manifest_for(state: &State, module: &Path) -> PathBuf {
    let object = bin("target_pie");
    let sha = pannus::sha256_file(module).unwrap();
    let name = module.file_name().unwrap().to_string_lossy();
    let patch: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let text = format!(
        "patch: {patch}\nversion: \"1.0\"\ntarget:\n  object: {}\n  build_id: {}\nmodule:\n  path: {}\n  sha256: {sha}\nfunctions:\n  - target: compute\n    replacement: compute_v2\n",
        object.display(),
        build_id(&object),
        module.display()
    );
    let path = state.path().join(format!("{patch}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn malformed_modules_are_refused_leaving_the_target_untouched() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let bytes = code_bytes(t.pid, "target_pie", "compute");
    let maps = t.maps();
    let mut modules: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "so"))
        .collect();
    modules.sort();
    let mut failures = Vec::new();
    for module in &modules {
        let name = module.file_name().unwrap().to_string_lossy().into_owned();
        let expect_file = module.with_file_name(format!("{name}.expect"));
        let expect = std::fs::read_to_string(&expect_file).unwrap_or_else(|e| panic!("{}: {e}", expect_file.display()));
        let expect = expect.trim();
        let r = state.apply(&manifest_for(&state, module), t.pid);
        if !matches!(r.code, 2 | 4) {
            failures.push(format!("{name}: exit {}, expected 2 or 4: {}", r.code, r.stderr));
        } else if !r.stderr.contains(expect) {
            failures.push(format!("{name}: `{expect}` not in: {}", r.stderr));
        } else if !r.stderr.contains(&name) {
            failures.push(format!("{name}: the message does not name the module: {}", r.stderr));
        }
        assert_eq!(code_bytes(t.pid, "target_pie", "compute"), bytes, "{name}: code bytes changed");
        assert_eq!(t.maps(), maps, "{name}: mappings changed");
        assert_eq!(t.ask("c 5"), "6", "{name}: behaviour changed");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(modules.len() >= 13, "the corpus has {} modules", modules.len());
    let st = state.status(t.pid);
    assert!(st["patches"].as_array().unwrap().is_empty(), "no patch recorded: {st}");
}

/// The corpus is what make.sh writes: every module has its expectation and vice versa.
#[test]
fn every_module_has_an_expectation() {
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(module) = name.strip_suffix(".expect") {
            assert!(corpus().join(module).is_file(), "{name} without {module}");
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!text.trim().is_empty(), "{name} is empty");
        } else if name.ends_with(".so") {
            assert!(corpus().join(format!("{name}.expect")).is_file(), "{name} without .expect");
        }
    }
}

/// Inputs that once crashed the ELF parser's fuzz target (fuzz/regressions/elf_object/) are
/// parsed and queried without a panic.
#[test]
fn elf_fuzz_regressions_do_not_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/elf_object");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Ok(o) = pannus::Object::parse(Path::new("fuzz.so"), data) {
            let _ = o.span();
            for s in o.dynsyms.iter().chain(&o.symtab) {
                let _ = o.bytes_at(s.value, s.size);
                let _ = o.lookup(&s.name);
                let _ = o.lookup_dynamic(&s.name, s.version.as_deref());
            }
        }
        n += 1;
    }
    assert!(n >= 1, "no regression inputs in {}", dir.display());
}
