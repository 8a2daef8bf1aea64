//! The installed patches, as the state folder holds them: `installed/PATCH/manifest.yaml` and
//! `installed/PATCH/module.so` (root's copies, the manifest's `module.path` naming the copy), and
//! `installed/PATCH/state.json` (`{"state": "trial" | "committed" | "rolled-back",
//! "trial_deadline": RFC 3339 or null}`). This is the reading side the daemon needs.

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use serde::Deserialize;
use std::path::Path;

/// Where an installed patch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallState {
    Trial,
    Committed,
    RolledBack,
}

/// One installed patch.
#[derive(Debug, Clone)]
pub struct Installed {
    pub manifest: Manifest,
    pub state: InstallState,
    /// End of the trial, Unix seconds (a patch in trial).
    pub trial_deadline: Option<u64>,
}

#[derive(Deserialize)]
struct StateFile {
    state: InstallState,
    #[serde(default)]
    trial_deadline: Option<String>,
}

/// The folder of installed patches in state folder `state`.
pub const FOLDER: &str = "installed";

/// Every installed patch whose files read and parse, each after the patches it `requires`.
/// One that does not is left out and named in the second list, with why.
pub fn read(state: &Path) -> (Vec<Installed>, Vec<(String, Error)>) {
    let dir = state.join(FOLDER);
    let mut found = Vec::new();
    let mut bad = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else { return (found, bad) };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if !crate::manifest::valid_patch_id(&id) {
            continue;
        }
        match one(&dir.join(&id), &id) {
            Ok(i) => found.push(i),
            Err(e) => bad.push((id, e)),
        }
    }
    (in_requires_order(found), bad)
}

/// Every installed patch, each after the patches it `requires`; the first that does not read
/// is the error.
pub fn installed(state: &Path) -> Result<Vec<Installed>> {
    let (found, mut bad) = read(state);
    match bad.pop() {
        Some((_, e)) => Err(e),
        None => Ok(found),
    }
}

fn one(dir: &Path, id: &str) -> Result<Installed> {
    let manifest = Manifest::load(&dir.join("manifest.yaml"))?;
    if manifest.patch != id {
        return Err(Error::bad_input(format!(
            "{}: the manifest is for patch `{}`, not `{id}`",
            dir.display(),
            manifest.patch
        )));
    }
    let path = dir.join("state.json");
    let text = std::fs::read(&path).map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
    let st: StateFile =
        serde_json::from_slice(&text).map_err(|e| Error::bad_input(format!("{}: {e}", path.display())))?;
    let trial_deadline = match st.trial_deadline {
        None => None,
        Some(t) => Some(
            humantime::parse_rfc3339_weak(&t)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .ok_or_else(|| Error::bad_input(format!("{}: trial_deadline `{t}` is not RFC 3339", path.display())))?,
        ),
    };
    Ok(Installed { manifest, state: st.state, trial_deadline })
}

/// `found` with every patch after those it requires (by id, then in the order given); patches in
/// a cycle keep their order, at the end.
fn in_requires_order(mut found: Vec<Installed>) -> Vec<Installed> {
    found.sort_by(|a, b| a.manifest.patch.cmp(&b.manifest.patch));
    let mut out: Vec<Installed> = Vec::with_capacity(found.len());
    while !found.is_empty() {
        let ready = found.iter().position(|i| {
            i.manifest
                .requires
                .iter()
                .all(|r| out.iter().any(|o| &o.manifest.patch == r) || !found.iter().any(|f| &f.manifest.patch == r))
        });
        match ready {
            Some(k) => out.push(found.remove(k)),
            None => out.append(&mut found),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(state: &Path, id: &str, requires: &[&str], st: &str) {
        let dir = state.join(FOLDER).join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = format!(
            "patch: {id}\nversion: '1'\ntarget:\n  object: /bin/x\n  build_id: abcd\nmodule:\n  path: module.so\n  \
             sha256: {}\nfunctions:\n  - target: f\n    replacement: g\n",
            "0".repeat(64)
        );
        if !requires.is_empty() {
            m.push_str(&format!("requires: [{}]\n", requires.join(", ")));
        }
        std::fs::write(dir.join("manifest.yaml"), m).unwrap();
        std::fs::write(dir.join("state.json"), st).unwrap();
    }

    #[test]
    fn each_patch_after_those_it_requires_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let trial = r#"{"state": "trial", "trial_deadline": "2030-01-01T00:00:00Z"}"#;
        put(dir.path(), "a-top", &["m-mid"], r#"{"state": "committed", "trial_deadline": null}"#);
        put(dir.path(), "m-mid", &["z-base"], trial);
        put(dir.path(), "z-base", &[], r#"{"state": "rolled-back"}"#);
        let got = installed(dir.path()).unwrap();
        let ids: Vec<&str> = got.iter().map(|i| i.manifest.patch.as_str()).collect();
        assert_eq!(ids, ["z-base", "m-mid", "a-top"]);
        assert_eq!(got[1].state, InstallState::Trial);
        assert_eq!(got[1].trial_deadline, Some(1_893_456_000));
        assert_eq!(got[1].manifest.module.path, dir.path().join(FOLDER).join("m-mid").join("module.so"));
        assert_eq!(got[0].state, InstallState::RolledBack);
    }

    #[test]
    fn a_bad_state_or_a_manifest_of_another_patch_is_named_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "good", &[], r#"{"state": "committed", "trial_deadline": null}"#);
        put(dir.path(), "bad-state", &[], r#"{"state": "maybe"}"#);
        put(dir.path(), "bad-time", &[], r#"{"state": "trial", "trial_deadline": "soon"}"#);
        put(dir.path(), "other", &[], "{\"state\": \"trial\"}");
        std::fs::rename(dir.path().join(FOLDER).join("other"), dir.path().join(FOLDER).join("renamed")).unwrap();
        let (found, mut bad) = read(dir.path());
        assert_eq!(found.len(), 1);
        bad.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = bad.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(names, ["bad-state", "bad-time", "renamed"]);
        assert!(installed(dir.path()).is_err());
        // No folder at all: nothing installed.
        assert!(installed(&dir.path().join("nowhere")).unwrap().is_empty());
    }
}
