//! The copies of the tree `pannus build` works in, and the builds in them: the project's own
//! build command with the compiler wrappers, the diff applied, the dependencies of a unit.

use super::{wrap, Progress};
use crate::error::{Error, Result};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

/// Removes the work folder however the build ends.
pub(super) struct Work(pub(super) PathBuf);
impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::other(format!("{what}: {e}"))
}

/// `path` without `.` and `..` components (no file system access).
pub(super) fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Copies the tree at `from` to `to` (without `.git`), then marks every source file as just
/// written, so that the build compiles every unit whatever objects the tree already holds.
pub(super) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(io(to.display()))?;
    let entries = std::fs::read_dir(from).map_err(io(from.display()))?;
    let mut args: Vec<PathBuf> = Vec::new();
    for e in entries.flatten() {
        if e.file_name() != ".git" {
            args.push(e.path());
        }
    }
    if !args.is_empty() {
        let out = Command::new("cp").arg("-a").args(&args).arg(to).output().map_err(io("cp"))?;
        if !out.status.success() {
            return Err(Error::other(format!(
                "copying {}: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            )));
        }
    }
    let out = Command::new("find")
        .arg(to)
        .args([
            "-type", "f", "(", "-name", "*.c", "-o", "-name", "*.cc", "-o", "-name", "*.cpp", "-o", "-name", "*.cxx",
            ")",
        ])
        .args(["-exec", "touch", "{}", "+"])
        .output()
        .map_err(io("find"))?;
    if !out.status.success() {
        return Err(Error::other(format!(
            "marking the sources of {}: {}",
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

pub(super) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs the project's build command in `root` with the wrappers, its output to `log`.
pub(super) fn run_build(
    command: &str,
    root: &Path,
    work: &Path,
    log: &Path,
    progress: &mut dyn Progress,
) -> Result<Vec<wrap::Compile>> {
    let wrappers = work.join("wrappers");
    std::fs::create_dir_all(&wrappers).map_err(io(wrappers.display()))?;
    let me = std::env::current_exe().map_err(io("finding pannus's own executable"))?;
    for name in wrap::COMPILERS {
        let link = wrappers.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&me, &link).map_err(io(link.display()))?;
    }
    let records = work.join("compilations.jsonl");
    let out = std::fs::File::create(log).map_err(io(log.display()))?;
    let err = out.try_clone().map_err(io(log.display()))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![wrappers.clone()];
    dirs.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(dirs).map_err(|e| Error::other(e.to_string()))?;
    let mut child = Command::new("sh")
        .args(["-c", command])
        .current_dir(root)
        .env("PATH", path)
        .env("CC", wrappers.join("cc"))
        .env("CXX", wrappers.join("c++"))
        .env(wrap::LOG_ENV, &records)
        .env(wrap::DIR_ENV, &wrappers)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io(format!("running the build command `{command}`")))?;
    // Which file the build is compiling, as the wrappers record them, while it runs.
    let mut seen = 0;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io("waiting for the build command"))? {
            break status;
        }
        let now = wrap::read_records(&records);
        if now.len() > seen {
            seen = now.len();
            if let Some(last) = now.last() {
                progress.step(&format!("compiling {} ({seen} compiled so far)", last.source));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        return Err(Error::bad_input(format!(
            "the build command `{command}` failed ({status}) in pannus's copy of the tree; its last lines:\n{}",
            tail(&text, 15)
        ))
        .hint(format!("the whole output is in {}", log.display())));
    }
    Ok(wrap::read_records(&records))
}

/// Applies the diff to the tree at `root` with `patch -p1`, checking first that it applies.
pub(super) fn apply_diff(diff: &Path, root: &Path) -> Result<()> {
    for dry in [true, false] {
        let mut c = Command::new("patch");
        c.args(["-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-r", "-", "-d"])
            .arg(root)
            .arg("-i")
            .arg(diff);
        if dry {
            c.arg("--dry-run");
        }
        let out = c.output().map_err(io("running patch (install the `patch` package)"))?;
        if !out.status.success() {
            return Err(Error::bad_input(format!(
                "the diff {} does not apply to the tree:\n{}",
                diff.display(),
                tail(&String::from_utf8_lossy(&out.stdout), 15)
            ))
            .hint("make the diff against this very tree, with a/ and b/ prefixes as `git diff` writes them"));
        }
    }
    Ok(())
}

/// The files a compilation reads, relative to `root`: its dependencies as the compiler lists them.
pub(super) fn dependencies(c: &wrap::Compile, root: &Path) -> Vec<String> {
    let mut args = Vec::new();
    let mut it = c.args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" | "-MF" | "-MT" | "-MQ" => {
                it.next();
            }
            "-c" | "-MD" | "-MMD" | "-MP" => {}
            a if a.starts_with("-o") => {}
            a => args.push(a.to_string()),
        }
    }
    let Ok(out) = Command::new(&c.compiler).args(&args).arg("-M").current_dir(&c.cwd).output() else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout).replace("\\\n", " ");
    let list = text.split_once(':').map_or("", |(_, deps)| deps);
    list.split_whitespace()
        .filter_map(|d| normal(&c.cwd.join(d)).strip_prefix(root).ok().map(|p| p.to_string_lossy().into_owned()))
        .collect()
}
