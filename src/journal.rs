//! The audit journal on disk: one JSON line per action (who, what, when, outcome). It is for
//! audit only; the target's registry is the truth about what is applied.

use crate::error::{Error, Result};
use crate::state_dir::StateDir;
use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Default folder for the journal and the per-process locks.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pannus";

/// The state folder: `PANNUS_STATE_DIR` when set, else [`DEFAULT_STATE_DIR`].
pub fn state_dir(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("PANNUS_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub time: String,
    pub user: String,
    pub uid: u32,
    pub action: String,
    pub pid: i32,
    #[serde(default)]
    pub process: String,
    #[serde(default)]
    pub patch: Option<String>,
    /// `ok`, `refused`, `failed`, `busy`, `cancelled`.
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
}

/// The journal's file name in the state folder.
const FILE: &str = "journal.jsonl";

pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
}

/// Who is acting: the login behind sudo when there is one.
pub fn who() -> (String, u32) {
    let uid = nix::unistd::getuid().as_raw();
    let name = std::env::var("SUDO_USER")
        .ok()
        .or_else(|| nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name))
        .unwrap_or_else(|| uid.to_string());
    (name, uid)
}

impl Journal {
    pub fn open(dir: &Path) -> Journal {
        Journal { dir: dir.to_path_buf(), path: dir.join(FILE) }
    }

    /// The journal file opened with `flags`, in the checked state folder, never through a link.
    fn file(&self, flags: OFlag) -> Result<File> {
        StateDir::open(&self.dir)?.file(FILE, flags)
    }

    fn append(&self) -> Result<File> {
        self.file(OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT)
    }

    /// Checks that the journal can be appended to (creating it): a state folder others can
    /// write to, or a link in place of the journal, is refused here, before any work.
    pub fn check(&self) -> Result<()> {
        self.append().map(drop)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry. The journal must not stop the work: a failure to write is returned
    /// for the caller to warn about.
    pub fn record(
        &self,
        action: &str,
        pid: i32,
        process: &str,
        patch: Option<&str>,
        outcome: &str,
        detail: &str,
    ) -> Result<()> {
        let (user, uid) = who();
        let entry = Entry {
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            user,
            uid,
            action: action.to_string(),
            pid,
            process: process.to_string(),
            patch: patch.map(str::to_string),
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        };
        let mut line = serde_json::to_string(&entry).map_err(|e| Error::other(e.to_string()))?;
        line.push('\n');
        let mut f = self.append()?;
        f.write_all(line.as_bytes()).map_err(|e| Error::other(format!("journal {}: {e}", self.path.display())))
    }

    /// Every entry, oldest first (none before the first); lines that do not parse are skipped.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let mut text = String::new();
        self.file(OFlag::O_RDONLY | OFlag::O_CREAT)?
            .read_to_string(&mut text)
            .map_err(|e| Error::other(format!("journal {}: {e}", self.path.display())))?;
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}
