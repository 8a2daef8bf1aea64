//! Root's own record, in the state folder, of each patch this host applied to each process:
//! what its trial is to do (deadline, `on_expiry`, health check) and which module it loaded, as
//! the pannus that applied it read them from the manifest.
//!
//! The trial watcher and everything else that makes root act (run a command, open a file) read
//! this, never the process's registry: the registry lives in the target's memory, which a
//! compromised target can rewrite. The registry stays the record of *what is applied*; the
//! two are matched by the manifest's digest.
//!
//! Layout: `STATE_DIR/ledger/PID-STARTTIME/PATCH.json` (a reused pid is another folder), each
//! opened without following a link (see `state_dir.rs`).

use crate::error::{Error, Result};
use crate::manifest::valid_patch_id;
use crate::registry::{HealthCheck, OnExpiry};
use crate::state_dir::StateDir;
use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A patch applied to a process, as root applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub patch: String,
    /// The manifest's digest, which the process's registry record carries too.
    pub manifest_digest: String,
    /// The module file as the manifest named it, and its checksum.
    pub module: PathBuf,
    pub module_sha256: String,
    /// End of the trial, Unix seconds.
    pub deadline: u64,
    pub on_expiry: OnExpiry,
    pub health_check: Option<HealthCheck>,
}

/// The folder of process `pid`'s entries.
fn folder(state_dir: &Path, pid: i32) -> Result<StateDir> {
    let start = crate::processes::start_time(pid)
        .ok_or_else(|| Error::precondition(format!("process {pid} does not exist")))?;
    StateDir::open(state_dir)?.subdir("ledger")?.subdir(&format!("{pid}-{start}"))
}

/// The file name of `patch`'s entry; a patch id is a file name by its rules (no `/`, no leading
/// dot), checked again here since it may come from a command line.
fn file_name(patch: &str) -> Result<String> {
    if !valid_patch_id(patch) {
        return Err(Error::bad_input(format!("`{patch}` is not a patch id")));
    }
    Ok(format!("{patch}.json"))
}

/// Records `entry` for process `pid`, replacing an earlier one of the same patch.
pub fn save(state_dir: &Path, pid: i32, entry: &Entry) -> Result<()> {
    let dir = folder(state_dir, pid)?;
    let name = file_name(&entry.patch)?;
    let text = serde_json::to_vec_pretty(entry).map_err(|e| Error::other(format!("ledger entry: {e}")))?;
    let mut f = dir.file(&name, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC)?;
    f.write_all(&text).map_err(|e| Error::other(format!("{}: {e}", dir.path().join(&name).display())))
}

/// The entry of `patch` in process `pid`, if this host recorded one.
pub fn load(state_dir: &Path, pid: i32, patch: &str) -> Result<Option<Entry>> {
    let dir = folder(state_dir, pid)?;
    let name = file_name(patch)?;
    let mut f = match dir.file(&name, OFlag::O_RDONLY) {
        Ok(f) => f,
        Err(_) if !dir.has(&name) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = Vec::new();
    let path = dir.path().join(&name);
    f.read_to_end(&mut text).map_err(|e| Error::other(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&text).map(Some).map_err(|e| Error::other(format!("{}: {e}", path.display())))
}

/// Forgets the entry of `patch` in process `pid` (rolled back); nothing when there is none.
pub fn forget(state_dir: &Path, pid: i32, patch: &str) {
    if let (Ok(dir), Ok(name)) = (folder(state_dir, pid), file_name(patch)) {
        dir.remove(&name);
    }
}

/// The entry of `patch` in `pid`, which root needs before it acts on the patch's trial:
/// missing, it is an error that says what to do.
pub fn required(state_dir: &Path, pid: i32, patch: &str) -> Result<Entry> {
    load(state_dir, pid, patch)?.ok_or_else(|| {
        Error::precondition(format!(
            "patch `{patch}` in process {pid} has no record in this host's state folder {}: pannus acts on \
             what it recorded when it applied the patch, never on what the process says",
            state_dir.display()
        ))
        .hint(format!(
            "commit or roll it back by hand (pannus commit/rollback --pid {pid} {patch}), with the same --state-dir \
             as the apply"
        ))
    })
}
