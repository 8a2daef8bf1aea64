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

/// Which part of pannus acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The command line (`apply`, `rollback`, `commit`, ...).
    Cli,
    /// The full-screen console.
    Console,
    /// A detached trial watcher (expiry policy, health check).
    Watcher,
    /// `pannus daemon`, applying installed patches to new processes.
    Daemon,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cli => "cli",
            Source::Console => "console",
            Source::Watcher => "watcher",
            Source::Daemon => "daemon",
        }
    }
}

static SOURCE: std::sync::OnceLock<Source> = std::sync::OnceLock::new();

/// Says which part of pannus this process is, for every entry it journals (the command line
/// when never said). Set once, at start-up; a later call changes nothing.
pub fn set_source(source: Source) {
    let _ = SOURCE.set(source);
}

fn source() -> Source {
    SOURCE.get().copied().unwrap_or(Source::Cli)
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

/// An entry as the journal holds it: with the part of pannus that acted (`cli`, `console`,
/// `watcher`; empty in entries written before it was recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    #[serde(flatten)]
    pub entry: Entry,
    #[serde(default)]
    pub source: String,
}

/// The journal's file name in the state folder.
const FILE: &str = "journal.jsonl";

pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
}

/// Who is acting: the login behind sudo when there is one.
pub fn who() -> (String, u32) {
    // Looked up once per pannus: a run over many processes journals every one of them.
    static WHO: std::sync::OnceLock<(String, u32)> = std::sync::OnceLock::new();
    WHO.get_or_init(|| {
        let uid = nix::unistd::getuid().as_raw();
        let name = std::env::var("SUDO_USER")
            .ok()
            .or_else(|| nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name))
            .unwrap_or_else(|| uid.to_string());
        (name, uid)
    })
    .clone()
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
        let recorded = Recorded { entry, source: source().as_str().to_string() };
        let mut line = serde_json::to_string(&recorded).map_err(|e| Error::other(e.to_string()))?;
        line.push('\n');
        let mut f = self.append()?;
        f.write_all(line.as_bytes()).map_err(|e| Error::other(format!("journal {}: {e}", self.path.display())))
    }

    /// Every entry, oldest first (none before the first); lines that do not parse are skipped.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        Ok(self.recorded()?.into_iter().map(|r| r.entry).collect())
    }

    /// [`Journal::entries`], each with the part of pannus that acted.
    pub fn recorded(&self) -> Result<Vec<Recorded>> {
        Ok(self.entries_from(0)?.0)
    }

    /// The entries whose lines begin at byte `offset` or later and are complete, oldest first,
    /// and the offset just past the last of them (where to read from next: a line still being
    /// written is read then).
    pub fn entries_from(&self, offset: u64) -> Result<(Vec<Recorded>, u64)> {
        use std::io::{Seek, SeekFrom};
        if !self.dir.exists() {
            return Ok((Vec::new(), offset));
        }
        let io = |e: std::io::Error| Error::other(format!("journal {}: {e}", self.path.display()));
        let mut f = self.file(OFlag::O_RDONLY | OFlag::O_CREAT)?;
        // A journal that shrank (replaced by hand) is read again from its start.
        let len = f.metadata().map_err(io)?.len();
        let offset = if len < offset { 0 } else { offset };
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(io)?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(&bytes[..complete]);
        let entries = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        Ok((entries, offset + complete as u64))
    }
}
