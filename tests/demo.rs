//! `pannus demo --script --yes`, the README's first set-up command, end to end: it builds and
//! runs the demo in a fresh private folder, never in a predictable one someone else prepared.

mod common;
use common::State;
use std::process::{Command, Stdio};

#[test]
fn the_scripted_demo_runs_in_a_fresh_private_folder_not_a_predictable_one() {
    let state = State::new();
    let tmp = state.path().join("tmp");
    let planted = state.path().join("planted");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::create_dir(&planted).unwrap();
    // A folder of someone else's choosing linked at `$TMPDIR/pannus-demo-PID`, PID being that
    // of the pannus the shell then becomes.
    let out = Command::new("sh")
        .args(["-c", r#"ln -s "$1" "$TMPDIR/pannus-demo-$$" && exec "$0" demo --script --yes"#])
        .arg(env!("CARGO_BIN_EXE_pannus"))
        .arg(&planted)
        .env("TMPDIR", &tmp)
        .env("PANNUS_STATE_DIR", state.path().join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(std::fs::read_dir(&planted).unwrap().count(), 0, "nothing built in the planted folder:\n{stdout}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("service says: request") && stdout.contains("Hello, operator! (patched"), "{stdout}");
    assert!(stdout.contains("rolled back") || stdout.contains("Helo, operator!"), "{stdout}");
    let used = stdout
        .lines()
        .find_map(|l| l.strip_prefix("building the demo service and its patch in "))
        .expect("the demo names its folder");
    let name = std::path::Path::new(used).file_name().unwrap().to_string_lossy().into_owned();
    assert!(used.starts_with(&*tmp.to_string_lossy()) && name.starts_with("pannus-demo-"), "{used}");
    assert!(!std::path::Path::new(used).exists(), "{used} is removed at the end");
    let links: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(links.len(), 1, "only the planted link is left in TMPDIR: {links:?}");
    assert!(links[0].is_symlink() && links[0] != std::path::Path::new(used), "{links:?}");
}
