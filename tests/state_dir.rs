//! The state folder (journal, locks) is private to the user running pannus: created 0700, refused
//! with exit 2 and left untouched when others can write to it or own it, and nothing in it is
//! ever followed through a symbolic link, so a link planted there never makes pannus write where
//! it points.

mod common;
use common::{Proc, Run, State};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The permission bits of `p`, in octal.
fn mode(p: &Path) -> String {
    format!("{:04o}", std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777)
}

fn private_folder(p: &Path) -> PathBuf {
    std::fs::create_dir(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
    p.to_path_buf()
}

/// `pannus --state-dir DIR apply` of a patch of `compute` to `t`.
fn apply_with(state: &State, dir: &Path, t: &Proc) -> Run {
    let m = state.manifest("state-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.pannus(&[
        "--state-dir",
        &dir.to_string_lossy(),
        "apply",
        &m.to_string_lossy(),
        "--pid",
        &t.pid.to_string(),
        "--yes",
    ])
}

/// The name of the lock pannus takes for process `pid`: `PID-STARTTIME.lock`.
fn lock_name(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap();
    format!("{pid}-{start}.lock")
}

#[test]
fn a_state_folder_others_can_write_to_or_own_is_refused_and_left_untouched() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    for (name, mode, owner) in [("world", 0o777, None), ("group", 0o770, None), ("nobody", 0o700, Some(65534))] {
        let dir = state.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(uid)), None).unwrap();
        }
        let r = apply_with(&state, &dir, &t);
        assert_eq!(r.code, 2, "{name}: {r:?}");
        let shown = format!("{:04o}", mode);
        assert!(r.stderr.contains(&dir.display().to_string()) && r.stderr.contains(&shown), "{name}: {}", r.stderr);
        assert!(r.stderr.contains("chmod 700") && r.stderr.contains("--state-dir"), "{name}: a hint: {}", r.stderr);
        if owner.is_some() {
            assert!(r.stderr.contains("nobody") || r.stderr.contains("65534"), "{name}: the owner: {}", r.stderr);
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{name}: nothing written in {}", dir.display());
        assert_eq!(t.ask("c 5"), "6", "{name}: the target is untouched");
    }
}

#[test]
fn a_fresh_state_folder_is_created_private() {
    let state = State::new();
    let mut t = Proc::start("target_pie");
    let dir = state.path().join("new").join("state");
    apply_with(&state, &dir, &t).ok();
    assert_eq!(t.ask("c 5"), "500");
    assert_eq!(mode(&dir), "0700", "the state folder");
    assert_eq!(mode(&dir.join("locks")), "0700", "the lock folder");
    assert_eq!(mode(&dir.join("journal.jsonl")), "0600", "the journal is for its owner only");
    let r = state.pannus(&["--state-dir", &dir.to_string_lossy(), "rollback", "--pid", &t.pid.to_string(), "--yes"]);
    r.ok();
    assert_eq!(t.ask("c 5"), "6");
}

/// Plants, at the path `link` gives in a private state folder (for the target), a link to a
/// file root must never write to, then applies: the file is untouched and the apply refused,
/// naming the link, before the target is touched. Returns the state folder.
fn a_planted_link_is_refused(state: &State, link: impl FnOnce(&Path, &Proc) -> PathBuf) -> PathBuf {
    let mut t = Proc::start("target_pie");
    let victim = state.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let dir = private_folder(&state.path().join("st"));
    let link = link(&dir, &t);
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let r = apply_with(state, &dir, &t);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "the victim is untouched: {r:?}");
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(&link.display().to_string()) && r.stderr.contains("symbolic link"), "{}", r.stderr);
    assert_eq!(t.ask("c 5"), "6", "refused before touching the target");
    dir
}

#[test]
fn a_link_planted_at_the_journal_is_never_followed() {
    let state = State::new();
    let dir = a_planted_link_is_refused(&state, |st, _| st.join("journal.jsonl"));
    let r = state.pannus(&["--state-dir", &dir.to_string_lossy(), "journal"]);
    assert_eq!(r.code, 2, "reading the journal does not follow the link either: {r:?}");
}

#[test]
fn a_link_planted_at_a_lock_is_never_followed() {
    a_planted_link_is_refused(&State::new(), |st, t| private_folder(&st.join("locks")).join(lock_name(t.pid)));
}

#[test]
fn a_state_folder_that_is_a_link_is_refused() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let real = private_folder(&state.path().join("real"));
    let link = state.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let r = apply_with(&state, &link, &t);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(&link.display().to_string()) && r.stderr.contains("symbolic link"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0, "nothing written where it points");
}
