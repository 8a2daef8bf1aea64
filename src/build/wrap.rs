//! The compiler wrappers: while the project's own build command runs, `gcc`, `cc`, `g++` and
//! `c++` on `PATH` (and `CC`, `CXX`) are links to pannus itself, which records each compilation
//! and runs the real compiler with what a patch needs added.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The names pannus answers to as a compiler.
pub const COMPILERS: [&str; 4] = ["gcc", "cc", "g++", "c++"];
/// Where a wrapper appends its records (one JSON object per line).
pub const LOG_ENV: &str = "PANNUS_BUILD_RECORD";
/// The wrappers' folder, left out when the real compiler is looked up.
pub const DIR_ENV: &str = "PANNUS_BUILD_WRAPPERS";
/// The flags added to every compilation (besides `-g` when it has none, and the prefix map).
pub const ADDED: [&str; 2] = ["-ffunction-sections", "-fdata-sections"];
/// `COPY=SOURCE`: the copy of the tree being built, and the tree it copies, for
/// `-ffile-prefix-map` (so that `__FILE__` and the debug information name the original tree).
pub const PREFIX_ENV: &str = "PANNUS_BUILD_PREFIX_MAP";

const SOURCE_EXTENSIONS: [&str; 7] = ["c", "cc", "cpp", "cxx", "c++", "C", "cp"];

/// One compilation of one source file to an object, as the build ran it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Compile {
    /// The folder it ran in.
    pub cwd: PathBuf,
    /// The real compiler.
    pub compiler: PathBuf,
    /// The arguments as the build gave them.
    pub args: Vec<String>,
    /// The source file, as given.
    pub source: String,
    /// The object file, as given (`-o`), or the compiler's default.
    pub output: String,
}

impl Compile {
    /// The source file's path.
    pub fn source_path(&self) -> PathBuf {
        self.cwd.join(&self.source)
    }

    /// The object file's path.
    pub fn output_path(&self) -> PathBuf {
        self.cwd.join(&self.output)
    }

    /// The arguments pannus compiles with: the build's, plus [`ADDED`], `-g` when there is no
    /// `-g` option, and `prefix_map`.
    pub fn patched_args(args: &[String], prefix_map: Option<&str>) -> Vec<String> {
        let mut out = args.to_vec();
        out.extend(ADDED.iter().map(|s| s.to_string()));
        if !args.iter().any(|a| a.starts_with("-g") && a != "-g0") {
            out.push("-g".into());
        }
        if let Some(map) = prefix_map {
            out.push(format!("-ffile-prefix-map={map}"));
        }
        out
    }

    /// Parses a compiler command line: `Some` for the compilation of one source file to an
    /// object (`-c`), `None` for anything else (linking, preprocessing, several sources).
    pub fn parse(cwd: &Path, compiler: &Path, args: &[String]) -> Option<Compile> {
        if !args.iter().any(|a| a == "-c") || args.iter().any(|a| a == "-E" || a == "-S" || a == "-M" || a == "-MM") {
            return None;
        }
        let mut sources = Vec::new();
        let mut output = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "-o" {
                output = it.next().cloned();
            } else if let Some(o) = a.strip_prefix("-o").filter(|o| !o.is_empty()) {
                output = Some(o.to_string());
            } else if matches!(a.as_str(), "-MF" | "-MT" | "-MQ" | "-include" | "-I" | "-isystem" | "-x" | "-D" | "-U")
            {
                it.next();
            } else if !a.starts_with('-')
                && Path::new(a).extension().and_then(|e| e.to_str()).is_some_and(|e| SOURCE_EXTENSIONS.contains(&e))
            {
                sources.push(a.clone());
            }
        }
        let [source] = sources.as_slice() else { return None };
        let output = output.unwrap_or_else(|| {
            let stem = Path::new(source).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            format!("{stem}.o")
        });
        Some(Compile {
            cwd: cwd.to_path_buf(),
            compiler: compiler.to_path_buf(),
            args: args.to_vec(),
            source: source.clone(),
            output,
        })
    }

    /// `path` under `from` moved to the same place under `to`.
    pub fn moved(path: &Path, from: &Path, to: &Path) -> PathBuf {
        match path.strip_prefix(from) {
            Ok(rel) => to.join(rel),
            Err(_) => path.to_path_buf(),
        }
    }

    /// Runs the compilation again in the copy of the tree at `to` (the one recorded ran in the
    /// tree at `from`), as pannus compiles: see [`Compile::patched_args`]. Absolute paths into
    /// `from` in the arguments are moved too.
    pub fn rerun_in(&self, from: &Path, to: &Path, prefix_map: &str) -> Result<()> {
        let cwd = Compile::moved(&self.cwd, from, to);
        let (from_s, to_s) = (from.to_string_lossy(), to.to_string_lossy());
        let args: Vec<String> = self.args.iter().map(|a| a.replace(from_s.as_ref(), to_s.as_ref())).collect();
        let out = Command::new(&self.compiler)
            .args(Compile::patched_args(&args, Some(prefix_map)))
            .current_dir(&cwd)
            .output()
            .map_err(|e| Error::other(format!("running {}: {e}", self.compiler.display())))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(Error::bad_input(format!("compiling {} failed:\n{}", self.source, tail.join("\n")))
                .hint("the diff must compile as part of the tree it was made against"));
        }
        Ok(())
    }
}

/// The real compiler named `name`: the first on `PATH` outside the wrappers' folder.
fn real_compiler(name: &str, wrappers: Option<&Path>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).filter(|d| Some(d.as_path()) != wrappers).map(|d| d.join(name)).find(|p| {
        p.is_file() && p.canonicalize().ok() != std::env::current_exe().ok().and_then(|e| e.canonicalize().ok())
    })
}

/// When pannus runs as one of the compiler wrappers: records the compilation, then becomes the
/// real compiler. Returns `None` when pannus runs as itself.
pub fn run_if_wrapper() -> Option<i32> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?.to_string();
    if !COMPILERS.contains(&name.as_str()) {
        return None;
    }
    let log = std::env::var_os(LOG_ENV)?;
    let wrappers = std::env::var_os(DIR_ENV).map(PathBuf::from);
    let rest: Vec<OsString> = args.collect();
    let Some(compiler) = real_compiler(&name, wrappers.as_deref()) else {
        eprintln!("pannus build: no `{name}` on PATH besides pannus's wrapper");
        return Some(127);
    };
    let strings: Option<Vec<String>> = rest.iter().map(|a| a.to_str().map(str::to_string)).collect();
    let cwd = std::env::current_dir().unwrap_or_default();
    let compile = strings.as_ref().and_then(|s| Compile::parse(&cwd, &compiler, s));
    let mut command = Command::new(&compiler);
    match (&compile, &strings) {
        (Some(c), Some(s)) => {
            let line = serde_json::to_string(c).unwrap_or_default();
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(&log) {
                // One write per record: appends from parallel compilations do not interleave.
                let _ = f.write_all(format!("{line}\n").as_bytes());
            }
            let prefix = std::env::var(PREFIX_ENV).ok();
            command.args(Compile::patched_args(s, prefix.as_deref()));
        }
        _ => {
            command.args(&rest);
        }
    }
    let e = command.exec();
    eprintln!("pannus build: running {}: {e}", compiler.display());
    Some(127)
}

/// Reads the records the wrappers wrote.
pub fn read_records(log: &Path) -> Vec<Compile> {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The compilations of a `compile_commands.json`.
pub fn from_compile_commands(path: &Path) -> Result<Vec<Compile>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        directory: PathBuf,
        #[serde(default)]
        arguments: Option<Vec<String>>,
        #[serde(default)]
        command: Option<String>,
    }
    let bad = |e: String| Error::bad_input(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for e in entries {
        let args = match (e.arguments, e.command) {
            (Some(a), _) => a,
            (None, Some(c)) => c.split_whitespace().map(str::to_string).collect(),
            (None, None) => return Err(bad("an entry has neither `arguments` nor `command`".into())),
        };
        let Some((first, rest)) = args.split_first() else { continue };
        let compiler = if first.contains('/') {
            PathBuf::from(first)
        } else {
            real_compiler(first, None).unwrap_or_else(|| PathBuf::from(first))
        };
        if let Some(c) = Compile::parse(&e.directory, &compiler, rest) {
            out.push(c);
        }
    }
    Ok(out)
}
