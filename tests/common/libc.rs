//! The C library as a target: a program that leans on it (tests/fixtures/libc_target.c) and
//! manifests for the machine's own `libc.so.6`, its path and build-id read at test time.

use super::{fixtures_src, State};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds tests/fixtures/libc_target.c next to the other fixtures, once.
pub fn libc_target() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new("gcc")
            .args(["-O2", "-g", "-pthread", "-o"])
            .arg(super::bin("libc_target"))
            .arg(fixtures_src().join("libc_target.c"))
            .output()
            .expect("gcc runs");
        assert!(out.status.success(), "gcc libc_target.c failed:\n{}", String::from_utf8_lossy(&out.stderr));
    });
    "libc_target"
}

/// Builds tests/fixtures/libc_target.c with `-m32` next to the other 32-bit fixtures, once.
pub fn libc_target32() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new("gcc")
            .args(["-m32", "-O2", "-g", "-pthread", "-o"])
            .arg(super::built32().join("target32_libc"))
            .arg(fixtures_src().join("libc_target.c"))
            .output()
            .expect("gcc runs");
        assert!(out.status.success(), "gcc -m32 libc_target.c failed:\n{}", String::from_utf8_lossy(&out.stderr));
    });
    "target32_libc"
}

/// The C library process `pid` maps, as its maps name it.
pub fn libc_of(pid: i32) -> PathBuf {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let path = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("/libc.so")).unwrap();
    PathBuf::from(path)
}

/// Where process `pid` maps the C library's first page (its load bias: libc's first segment
/// is at virtual address 0).
pub fn libc_base(pid: i32) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line =
        maps.lines().find(|l| l.contains("/libc.so") && l.split_whitespace().nth(2) == Some("00000000")).unwrap();
    u64::from_str_radix(line.split('-').next().unwrap(), 16).unwrap()
}

/// A manifest for `libc` replacing `functions` with patch_glibc.so's.
pub fn manifest(state: &State, patch: &str, libc: &Path, functions: &[(&str, &str)]) -> PathBuf {
    manifest_with(state, patch, libc, &super::bin("patch_glibc.so"), functions)
}

/// A manifest for `libc` replacing `functions` with those of `module`.
pub fn manifest_with(state: &State, patch: &str, libc: &Path, module: &Path, functions: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        "patch: {patch}\nversion: \"1\"\ntarget:\n  object: {}\n  build_id: {}\nmodule:\n  path: {}\n  sha256: {}\nfunctions:\n",
        libc.display(),
        super::build_id(libc),
        module.display(),
        pannus::sha256_file(module).unwrap()
    );
    for (t, r) in functions {
        text.push_str(&format!("  - target: \"{t}\"\n    replacement: {r}\n"));
    }
    let path = state.path().join(format!("{patch}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}
