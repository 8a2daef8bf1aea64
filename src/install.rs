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
