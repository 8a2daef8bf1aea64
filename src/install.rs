//! Installed patches: "this build of this binary has these patches", kept in the state folder
//! as root-owned copies, so that a later pannus (the daemon, for a new process of that build)
//! applies exactly what was verified, whatever happened to the files it was installed from.
//!
//! `STATE/installed/ID/` holds `manifest.yaml` (the manifest, its module path pointing at the
//! copy next to it), `module.so` (the module, the bytes whose checksum was verified), and
//! `state.json` (`{"state": "trial" | "committed" | "rolled-back", "trial_deadline": RFC 3339
//! or null, "reason": ...}`).

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::state_dir::StateDir;
use nix::fcntl::OFlag;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The folder of installed patches in the state folder.
pub const FOLDER: &str = "installed";

/// Where an installed patch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Applied in trial; new processes get it in trial with the same deadline.
    Trial,
    /// Committed: new processes get it committed.
    Committed,
    /// Rolled back everywhere (a failed health check, an expiry, an uninstall under way): new
    /// processes do not get it.
    RolledBack,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Trial => "trial",
            State::Committed => "committed",
            State::RolledBack => "rolled-back",
        })
    }
}

/// `state.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub state: State,
    /// The end of the trial (RFC 3339), for a patch installed in trial.
    pub trial_deadline: Option<String>,
    /// Why it was rolled back, when it was.
    #[serde(default)]
    pub reason: Option<String>,
    /// A canary rollout under way, or interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryRun>,
    /// The module's checksum (as the manifest says, and as verified at install), and the
    /// build-id of the object it is for.
    #[serde(default)]
    pub module_sha256: Option<String>,
    #[serde(default)]
    pub build_id: Option<String>,
    /// When it was installed, and when it was recorded rolled back (Unix seconds).
    #[serde(default)]
    pub installed_at: Option<u64>,
    #[serde(default)]
    pub rolled_back_at: Option<u64>,
    /// Rolled back because a health check failed somewhere (see [`health_check_failed`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub health_failed: bool,
}

/// A canary rollout of an installed patch (`install --canary`): until it ends, the patch goes to
/// no process but the canaries, new processes included (the daemon waits for it). A rollout
/// whose pannus is gone (killed) was interrupted: the daemon goes on waiting, until `pannus
/// install` runs again (and finishes the rollout) or the patch is uninstalled.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CanaryRun {
    pub canaries: Vec<i32>,
    /// The end of the canary trial (RFC 3339).
    pub until: String,
    /// The pannus running the rollout, and its start time (`/proc/PID/stat`).
    pub by: i32,
    pub by_start: u64,
}

impl CanaryRun {
    /// A rollout run by this pannus, its canary trial starting now.
    pub fn new(canaries: Vec<i32>, trial: std::time::Duration) -> CanaryRun {
        let by = std::process::id() as i32;
        CanaryRun {
            canaries,
            until: humantime::format_rfc3339_seconds(SystemTime::now() + trial).to_string(),
            by,
            by_start: crate::processes::start_time(by).unwrap_or(0),
        }
    }

    /// Whether the pannus running it still runs.
    pub fn running(&self) -> bool {
        crate::processes::start_time(self.by) == Some(self.by_start)
    }
}

impl Record {
    /// The state as of now: a trial whose deadline passed is committed or rolled back, as its
    /// policy says.
    pub fn now(&self, m: &Manifest) -> State {
        let past = self
            .trial_deadline
            .as_deref()
            .and_then(|d| humantime::parse_rfc3339(d).ok())
            .is_some_and(|d| SystemTime::now() >= d);
        match (self.state, past) {
            (State::Trial, true) if m.trial.on_expiry == crate::manifest::OnExpiry::Rollback => State::RolledBack,
            (State::Trial, true) => State::Committed,
            (s, _) => s,
        }
    }
}

/// One installed patch.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The copy of the manifest (its module: the copy next to it).
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
    pub record: Record,
}

fn installed_dir(state: &Path) -> Result<StateDir> {
    StateDir::open(state)?.subdir(FOLDER)
}

/// Every installed patch whose files read, each after those it requires (a patch in a cycle
/// or requiring one that is missing keeps its place, at the end); those that do not read are
/// named in the second list, with why.
pub fn read_all(state: &Path) -> (Vec<Installed>, Vec<(String, Error)>) {
    let (mut all, mut bad) = (Vec::new(), Vec::new());
    let dir = match installed_dir(state) {
        Ok(d) => d,
        Err(e) => return (all, vec![(FOLDER.to_string(), e)]),
    };
    let mut ids: Vec<String> = std::fs::read_dir(dir.path())
        .map(|r| r.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect())
        .unwrap_or_default();
    ids.retain(|n| crate::manifest::valid_patch_id(n));
    ids.sort();
    for id in ids {
        match read(&dir, &id) {
            Ok(i) if i.manifest.patch == id => all.push(i),
            Ok(i) => bad.push((
                id.clone(),
                Error::bad_input(format!("installed/{id}: the manifest is for patch `{}`", i.manifest.patch)),
            )),
            Err(e) => bad.push((id.clone(), e.context(format!("installed patch `{id}`")))),
        }
    }
    let mut ordered: Vec<Installed> = Vec::new();
    while !all.is_empty() {
        let ready = all.iter().position(|i| {
            i.manifest
                .requires
                .iter()
                .all(|r| ordered.iter().any(|o| &o.manifest.patch == r) || !all.iter().any(|a| &a.manifest.patch == r))
        });
        match ready {
            Some(k) => ordered.push(all.remove(k)),
            None => ordered.append(&mut all),
        }
    }
    (ordered, bad)
}

/// Every installed patch, each after those it requires; the first that does not read is the
/// error.
pub fn installed(state: &Path) -> Result<Vec<Installed>> {
    let (found, mut bad) = read_all(state);
    match bad.pop() {
        Some((_, e)) => Err(e),
        None => Ok(found),
    }
}

impl Installed {
    /// Where it stands now (see [`Record::now`]).
    pub fn state(&self) -> State {
        self.record.now(&self.manifest)
    }

    /// The end of its trial, Unix seconds, for a patch installed in trial.
    pub fn trial_deadline_secs(&self) -> Option<u64> {
        let t = humantime::parse_rfc3339_weak(self.record.trial_deadline.as_deref()?).ok()?;
        t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
    }
}

fn read(dir: &StateDir, id: &str) -> Result<Installed> {
    let sub = dir.subdir(id)?;
    let manifest_path = sub.path().join("manifest.yaml");
    let manifest = Manifest::load(&manifest_path)?;
    let record = read_record(&sub)?;
    Ok(Installed { manifest, manifest_path, record })
}

/// The installed patch `id`, if any.
pub fn get(state: &Path, id: &str) -> Result<Option<Installed>> {
    let dir = installed_dir(state)?;
    if !crate::manifest::valid_patch_id(id) || !dir.has(id) {
        return Ok(None);
    }
    read(&dir, id).map(Some)
}

fn write_file(dir: &StateDir, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = format!(".{name}.new");
    dir.remove(&tmp);
    let mut f = dir.file(&tmp, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::other(format!("{}/{tmp}: {e}", dir.path().display())))?;
    std::fs::rename(dir.path().join(&tmp), dir.path().join(name))
        .map_err(|e| Error::other(format!("{}/{name}: {e}", dir.path().display())))
}

/// Changes the record of installed patch `id` with `change`, under the lock of its record (a
/// read, the change, a write: no change is lost to another made meanwhile); the record as
/// written. Refused when the patch is not installed (uninstalled meanwhile): its folder is
/// never created again here.
pub fn update(state: &Path, id: &str, change: impl FnOnce(&mut Record)) -> Result<Record> {
    let _lock = crate::lock::InstalledLock::record(state, id)?;
    let gone = || Error::precondition(format!("`{id}` is not installed (uninstalled meanwhile?)"));
    let dir = installed_dir(state)?;
    if !crate::manifest::valid_patch_id(id) {
        return Err(gone());
    }
    let sub = dir.existing(id)?.ok_or_else(gone)?;
    let mut record = read_record(&sub)?;
    let was = record.state;
    change(&mut record);
    if record.state == State::RolledBack && was != State::RolledBack {
        record.rolled_back_at = Some(crate::engine::now_secs());
    }
    let json = serde_json::to_vec(&record).map_err(|e| Error::other(e.to_string()))?;
    write_file(&sub, "state.json", &json)?;
    Ok(record)
}

/// The record alone of installed patch `id` (its `state.json`, not its manifest), if any.
pub fn record_of(state: &Path, id: &str) -> Option<Record> {
    read_record(&installed_dir(state).ok()?.existing(id).ok()??).ok()
}

/// The `state.json` of an installed patch's folder `sub`.
fn read_record(sub: &StateDir) -> Result<Record> {
    let mut text = String::new();
    sub.file("state.json", OFlag::O_RDONLY)?
        .read_to_string(&mut text)
        .map_err(|e| Error::other(format!("{}/state.json: {e}", sub.path().display())))?;
    serde_json::from_str(&text).map_err(|e| Error::other(format!("{}/state.json: {e}", sub.path().display())))
}

/// Installs the patch of manifest `m` (loaded from `path`): verifies the module's checksum on
/// the bytes it copies, writes the copies and the record. Refused when a patch it requires is
/// not installed, or another patch of that id is.
pub fn install(state: &Path, path: &Path, m: &Manifest, canary: Option<CanaryRun>) -> Result<Installed> {
    for r in &m.requires {
        match get(state, r)? {
            Some(i) if i.record.now(&i.manifest) != State::RolledBack => {}
            _ => {
                return Err(Error::precondition(format!("`{}` requires `{r}`, which is not installed", m.patch))
                    .hint(format!("install {r} first")))
            }
        }
    }
    if let Some(i) = get(state, &m.patch)? {
        if i.manifest.module.sha256 != m.module.sha256 || i.manifest.target.build_id != m.target.build_id {
            return Err(Error::precondition(format!(
                "another `{}` is installed (version {}, module sha256 {}…)",
                m.patch,
                i.manifest.version,
                &i.manifest.module.sha256[..12.min(i.manifest.module.sha256.len())]
            ))
            .hint(format!("pannus uninstall {} first", m.patch)));
        }
        // Installed again after it was rolled back: a new start, with a new trial.
        if i.state() == State::RolledBack {
            let deadline = trial_deadline(m);
            update(state, &m.patch, |r| {
                (r.state, r.trial_deadline, r.reason) = (initial_state(&deadline), deadline.clone(), None);
                (r.installed_at, r.rolled_back_at, r.canary) = (Some(crate::engine::now_secs()), None, canary);
                r.health_failed = false;
            })?;
            return get(state, &m.patch)?
                .ok_or_else(|| Error::other(format!("installed patch `{}` vanished", m.patch)));
        }
        return Ok(i);
    }
    // The module: read once, checked, and these very bytes copied.
    let bytes = std::fs::read(&m.module.path)
        .map_err(|e| Error::bad_input(format!("module {}: {e}", m.module.path.display())))?;
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    if !sha.eq_ignore_ascii_case(&m.module.sha256) {
        return Err(Error::bad_input(format!(
            "module {}: sha256 {sha}, but the manifest says {}",
            m.module.path.display(),
            m.module.sha256
        ))
        .hint("rebuild the manifest for this module (pannus manifest new), or fix module.path"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::bad_input(format!("{}: {e}", path.display())))?;
    let copy = rewrite_module_path(&text, "module.so").ok_or_else(|| {
        Error::bad_input(format!("{}: no `path:` under `module:` to point at the installed copy", path.display()))
    })?;
    let dir = installed_dir(state)?;
    let tmp = format!(".{}.new", m.patch);
    let _ = std::fs::remove_dir_all(dir.path().join(&tmp));
    let sub = dir.subdir(&tmp)?;
    write_file(&sub, "module.so", &bytes)?;
    write_file(&sub, "manifest.yaml", copy.as_bytes())?;
    let deadline = trial_deadline(m);
    let record = Record {
        state: initial_state(&deadline),
        trial_deadline: deadline,
        reason: None,
        canary,
        module_sha256: Some(sha.clone()),
        build_id: Some(m.target.build_id.clone()),
        installed_at: Some(crate::engine::now_secs()),
        rolled_back_at: None,
        health_failed: false,
    };
    write_file(&sub, "state.json", &serde_json::to_vec(&record).map_err(|e| Error::other(e.to_string()))?)?;
    std::fs::rename(sub.path(), dir.path().join(&m.patch))
        .map_err(|e| Error::other(format!("{}: {e}", dir.path().join(&m.patch).display())))?;
    get(state, &m.patch)?.ok_or_else(|| Error::other(format!("installed patch `{}` vanished", m.patch)))
}

/// The end of the trial of a patch installed now (RFC 3339), when its manifest has one.
fn trial_deadline(m: &Manifest) -> Option<String> {
    (!m.trial.duration.is_zero())
        .then(|| humantime::format_rfc3339_seconds(SystemTime::now() + m.trial.duration).to_string())
}

/// A patch installed with a trial ending at `deadline` starts on trial; without one, committed.
fn initial_state(deadline: &Option<String>) -> State {
    if deadline.is_some() {
        State::Trial
    } else {
        State::Committed
    }
}

/// Forgets installed patch `id` (its folder in the state).
pub fn forget(state: &Path, id: &str) -> Result<()> {
    let dir = installed_dir(state)?;
    if !crate::manifest::valid_patch_id(id) || !dir.has(id) {
        return Ok(());
    }
    let sub = dir.subdir(id)?;
    for f in ["manifest.yaml", "module.so", "state.json"] {
        sub.remove(f);
    }
    std::fs::remove_dir(sub.path()).map_err(|e| Error::other(format!("{}: {e}", sub.path().display())))
}

/// The installed patches that require `id`.
pub fn dependents(state: &Path, id: &str) -> Result<Vec<String>> {
    Ok(installed(state)?
        .into_iter()
        .filter(|i| i.manifest.requires.iter().any(|r| r == id))
        .map(|i| i.manifest.patch)
        .collect())
}

/// What `uninstall` takes along with `id`: the installed patches that require it, directly or
/// not, theirs first, then `id` itself (last). Without `cascade`, refused while any requires it.
pub fn uninstall_order(state: &Path, id: &str, cascade: bool) -> Result<Vec<String>> {
    if get(state, id)?.is_none() {
        return Err(Error::precondition(format!("`{id}` is not installed")).hint("see pannus installed"));
    }
    let mut order: Vec<String> = Vec::new();
    let mut queue = vec![id.to_string()];
    while let Some(p) = queue.pop() {
        if order.contains(&p) {
            continue;
        }
        let deps = dependents(state, &p)?;
        if !deps.is_empty() && !cascade {
            return Err(Error::precondition(format!(
                "installed {} require{} `{p}`",
                deps.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", "),
                if deps.len() == 1 { "s" } else { "" }
            ))
            .hint("uninstall them first, or pass --cascade to uninstall them with it"));
        }
        order.push(p);
        queue.extend(deps);
    }
    order.reverse();
    Ok(order)
}

/// What an uninstall did.
#[derive(Debug, Clone)]
pub struct Uninstalled {
    /// Rolled back everywhere and forgotten.
    pub uninstalled: Vec<String>,
    /// Still in some process (its rollback failed there): kept, recorded rolled back.
    pub kept: Vec<String>,
    /// One rollback of every process, for each patch some process had.
    pub rollbacks: Vec<crate::fleet::Summary>,
    /// 0, or the exit code of the last failed rollback.
    pub code: i32,
}

/// Uninstalls the patches of `order` (see [`uninstall_order`]), in that order: first each is
/// recorded rolled back (no new process gets it), then each is rolled back from every process
/// that has it (with `--cascade`: what requires it there goes first), then forgotten, unless its
/// rollback failed somewhere: then it stays recorded, rolled back, for another uninstall.
pub fn uninstall(
    engine: &crate::engine::Engine,
    order: &[String],
    interrupted: Option<fn() -> Option<&'static str>>,
    progress: &mut dyn crate::fleet::Report,
) -> Result<Uninstalled> {
    let state = &engine.state_dir;
    // Not while another pannus installs, uninstalls or rolls out one of them.
    let _locks = order.iter().map(|p| crate::lock::InstalledLock::rollout(state, p)).collect::<Result<Vec<_>>>()?;
    let mut manifests = std::collections::HashMap::new();
    for p in order {
        if let Some(i) = get(state, p)? {
            manifests.insert(p.clone(), i.manifest.clone());
            update(state, p, |r| {
                r.state = State::RolledBack;
                r.trial_deadline = None;
                r.reason = Some("uninstall".into());
                r.canary = None;
            })?;
        }
    }
    let mut done = Uninstalled { uninstalled: Vec::new(), kept: Vec::new(), rollbacks: Vec::new(), code: 0 };
    for p in order {
        let summary = rollback_plan(p, manifests.get(p))
            .ok()
            .map(|plan| crate::fleet::rollback(engine, &plan, true, interrupted, progress));
        let failed = summary.as_ref().map_or(0, |s| s.exit_code());
        if failed != 0 {
            done.code = failed;
            done.kept.push(p.clone());
        } else {
            forget(state, p)?;
            done.uninstalled.push(p.clone());
        }
        done.rollbacks.extend(summary);
    }
    Ok(done)
}

/// The health check of `patch` failed `why` during its trial in process `pid` (or a child it
/// forked), which rolled it back there; `module_sha256` is root's record of the module applied
/// there. When that very module is installed and on trial, the installed patch is recorded
/// rolled back, so that no new process gets it, and rolled back from every process that has it
/// (what requires it there first), each journaled with the reason. A process this misses (busy
/// now, or patched meanwhile) is rolled back by its own trial watcher, which looks at the
/// installed record (see [`rolled_back_since`]).
pub fn health_check_failed(engine: &crate::engine::Engine, pid: i32, patch: &str, module_sha256: &str, why: &str) {
    let state = &engine.state_dir;
    let Ok(Some(i)) = get(state, patch) else { return };
    if i.manifest.module.sha256 != module_sha256 || i.state() != State::Trial {
        return;
    }
    let reason = why.to_string();
    let mut changed = false;
    let outcome = match update(state, patch, |r| {
        if r.state != State::RolledBack {
            (r.state, r.trial_deadline, r.reason, r.canary) = (State::RolledBack, None, Some(reason.clone()), None);
            r.health_failed = true;
            changed = true;
        }
    }) {
        Ok(_) if !changed => return,
        Ok(_) => "ok",
        Err(_) => "failed",
    };
    let detail = format!("installed patch rolled back everywhere, no new process gets it: {reason}");
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let _ = engine.journal().record("installed", pid, name.trim(), Some(patch), outcome, &detail);
    if let Ok(plan) = crate::fleet::plan_rollback_of(&i.manifest) {
        crate::fleet::rollback_because(engine, &plan, true, &detail, &mut |_: &str| {});
    }
}

/// Whether installed patch `patch`, with module `module_sha256` for build `build_id`, was
/// recorded rolled back at or after `since` (Unix seconds) for a failed health check, and why: a
/// process where it was applied then must not keep it.
pub fn rolled_back_since(state: &Path, patch: &str, module_sha256: &str, build_id: &str, since: u64) -> Option<String> {
    let r = record_of(state, patch)?;
    let at = r.rolled_back_at?;
    let same = r.module_sha256.as_deref() == Some(module_sha256) && r.build_id.as_deref() == Some(build_id);
    (r.state == State::RolledBack && same && at >= since && r.health_failed)
        .then(|| r.reason.unwrap_or_else(|| "rolled back".into()))
}

/// The processes an installed patch is rolled back from: those that have its module for its
/// build (see [`crate::fleet::plan_rollback_of`]); every process with patch `id` when its
/// manifest is not at hand.
pub fn rollback_plan(id: &str, m: Option<&Manifest>) -> Result<crate::fleet::Plan> {
    match m {
        Some(m) => crate::fleet::plan_rollback_of(m),
        None => crate::fleet::plan_rollback(id),
    }
}

/// How many processes run the manifest's build of its object, and how many of them have the
/// patch applied (in trial or committed).
pub fn coverage(m: &Manifest) -> (usize, usize) {
    match crate::fleet::plan_apply(m) {
        Ok(plan) => {
            let have = plan.skipped.iter().filter(|s| s.settled).count();
            (plan.members.len() + have + plan.failed.len(), have)
        }
        Err(_) => (0, 0),
    }
}

/// `text` (a manifest) with the `path:` of its `module:` section set to `new`.
fn rewrite_module_path(text: &str, new: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut in_module = false;
    let mut done = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent == 0 && !trimmed.is_empty() && !trimmed.starts_with('#') {
            in_module = trimmed.starts_with("module:");
        }
        if in_module && !done && indent > 0 && trimmed.starts_with("path:") {
            out.push_str(&line[..indent]);
            out.push_str(&format!("path: {}\n", serde_json::to_string(new).unwrap_or_default()));
            done = true;
            continue;
        }
        out.push_str(line);
    }
    done.then_some(out)
}

/// How long is left of a trial deadline (RFC 3339), if any.
pub fn remaining(deadline: Option<&str>) -> Option<Duration> {
    let d = humantime::parse_rfc3339(deadline?).ok()?;
    d.duration_since(SystemTime::now()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_path_is_pointed_at_the_copy() {
        let text = "patch: a\nmodule:\n  path: /x/a.so   # here\n  sha256: ab\nfunctions: []\n";
        let out = rewrite_module_path(text, "module.so").unwrap();
        assert!(out.contains("  path: \"module.so\"\n  sha256: ab"), "{out}");
        assert!(rewrite_module_path("patch: a\n", "m").is_none());
    }
}
