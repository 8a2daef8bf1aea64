//! A hostile, unusual or busy target, and operators working at the same time: pannus never
//! hurts the target and every command still does what it says.

mod common;
use common::{Proc, State};

/// Five applies of different patches to one process at once, then five rollbacks: each waits
/// for the process's lock and then plans against the process as it is after the others, so all
/// succeed in turn.
#[test]
fn concurrent_applies_and_rollbacks_of_different_patches_all_succeed() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let ids: Vec<String> = (1..=5).map(|i| format!("fix-{i}")).collect();
    let manifests: Vec<_> = ids
        .iter()
        .map(|id| state.manifest(id, "target_pie", "patch_compute.so", &[("compute", "compute_v2")], ""))
        .collect();
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = manifests.iter().map(|m| s.spawn(|| state.apply(m, t.pid))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, r) in ids.iter().zip(&runs) {
        assert_eq!(r.code, 0, "apply of `{id}` failed:\n{}", r.stderr);
    }
    let st = state.status(t.pid);
    let states: Vec<&str> = st["patches"].as_array().unwrap().iter().map(|p| p["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["trial"; 5], "{st}");
    assert_eq!(t.ask("c 5"), "500");
    // And five rollbacks at once, each of its own patch.
    let runs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = ids.iter().map(|id| s.spawn(|| state.rollback(t.pid, Some(id)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, r) in ids.iter().zip(&runs) {
        assert_eq!(r.code, 0, "rollback of `{id}` failed:\n{}", r.stderr);
    }
    assert_eq!(t.ask("c 5"), "6");
    assert!(!t.maps().contains("patch_compute.so"), "every module unloaded");
}
