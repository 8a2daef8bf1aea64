//! Writing manifests without mistakes: `pannus manifest new` writes a complete manifest for a
//! module and its target object, `pannus manifest check` validates one without a process,
//! `pannus manifest schema` prints the manifest's JSON Schema; `pannus completions` and
//! `pannus man` print shell completions and the man page.

use super::output::{self, write_stdout};
use crate::elf::{Object, SymKind};
use crate::engine::{build_id_matches, module_checks, replacement_symbol, target_symbol};
use crate::error::{Error, Kind, Result};
use crate::manifest::{valid_patch_id, LoadMethod, Manifest, OnExpiry, DEFAULT_TRIAL, MAX_PATCH_ID_LEN};
use clap::{Args, CommandFactory, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `pannus manifest ...`
#[derive(Subcommand, Debug)]
pub enum ManifestCommand {
    /// Write a manifest for a module, pairing its functions with the target's by name
    ///
    /// A module function named foo_fixed, foo_fix, foo_vN, foo_new or foo_patched replaces
    /// the function foo of the target object; --map adds pairs by hand.
    New(NewArgs),
    /// Validate a manifest on its own: module checksum, build-id and symbols, no process needed
    Check {
        manifest: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of the manifest
    #[command(hide = true)]
    Schema,
}

/// The arguments of `pannus manifest new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// The executable or shared library whose functions are replaced
    #[arg(long, value_name = "OBJECT")]
    pub target: PathBuf,
    /// The patch module holding the replacement functions
    #[arg(long, value_name = "MODULE")]
    pub module: PathBuf,
    /// Patch id [default: the module's file name without extension, lowercased]
    #[arg(long, value_name = "ID")]
    pub patch: Option<String>,
    /// Patch version
    #[arg(long, value_name = "V", default_value = "1")]
    pub version: String,
    /// Replace target function OLD with module function NEW; repeatable, overrides pairing by name
    #[arg(long = "map", value_name = "OLD=NEW", value_parser = parse_map)]
    pub map: Vec<(String, String)>,
    /// Write the manifest to FILE instead of standard output
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite FILE when it exists
    #[arg(long)]
    pub force: bool,
}

fn parse_map(s: &str) -> std::result::Result<(String, String), String> {
    let bad = || format!("expected OLD=NEW (target function = module function), got `{s}`");
    let (old, new) = s.split_once('=').ok_or_else(bad)?;
    let (old, new) = (old.trim(), new.trim());
    let symbol_ok = |v: &str| !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c.is_control());
    if !symbol_ok(old) || !symbol_ok(new) {
        return Err(bad());
    }
    Ok((old.to_string(), new.to_string()))
}

/// Runs a `pannus manifest` command.
pub fn run(cmd: ManifestCommand) -> Result<()> {
    match cmd {
        ManifestCommand::New(args) => new(args),
        ManifestCommand::Check { manifest, json } => check(&manifest, json),
        ManifestCommand::Schema => write_stdout(schema_text().as_bytes()),
    }
}

// ---------------------------------------------------------------------------
// manifest new

/// Functions a compiler or linker adds to every shared object; never replacements.
const CRT_FUNCTIONS: &[&str] = &[
    "_init",
    "_fini",
    "_start",
    "frame_dummy",
    "register_tm_clones",
    "deregister_tm_clones",
    "__do_global_dtors_aux",
    "__libc_csu_init",
    "__libc_csu_fini",
    "_dl_relocate_static_pie",
];

/// The name of the function `name` replaces by the naming rule, if it follows it.
fn replaced_name(name: &str) -> Option<&str> {
    for suffix in ["_fixed", "_fix", "_new", "_patched"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return Some(base).filter(|b| !b.is_empty());
        }
    }
    let (base, n) = name.rsplit_once("_v")?;
    (!base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(base)
}

/// The functions the module defines and exports, sorted, without the crt ones.
fn module_functions(module: &Object) -> Vec<String> {
    let mut names: Vec<String> = module
        .dynsyms
        .iter()
        .filter(|s| s.defined && s.global && s.kind == SymKind::Func && !s.name.is_empty())
        .filter(|s| !CRT_FUNCTIONS.contains(&s.name.as_str()))
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Why `name` cannot be a function to replace in `object`, if it cannot (the rule apply uses).
fn target_problem(object: &Object, name: &str) -> Option<String> {
    target_symbol(object, &object.path, name).err().map(|e| e.message)
}

/// Why `name` cannot be a replacement from `module`, if it cannot (the rule apply uses).
fn module_problem(module: &Object, name: &str, load: LoadMethod) -> Option<String> {
    replacement_symbol(module, name, load).err().map(|e| e.message)
}

/// One error out of several messages of the same kind.
fn several(kind: Kind, what: &str, messages: Vec<String>) -> Error {
    if messages.len() == 1 {
        return Error::new(kind, messages.into_iter().next().unwrap_or_default());
    }
    let mut text = format!("{what}: {} problems", messages.len());
    for m in messages {
        text.push_str("\n  - ");
        text.push_str(&m);
    }
    Error::new(kind, text)
}

/// The (target, replacement) pairs: `--map` pairs first, then pairs by name.
fn pair(object: &Object, module: &Object, maps: &[(String, String)]) -> Result<Vec<(String, String)>> {
    let mut problems = Vec::new();
    for (i, (old, new)) in maps.iter().enumerate() {
        if maps[..i].iter().any(|(o, _)| o == old) {
            return Err(Error::bad_input(format!("--map {old}=...: `{old}` is mapped twice"))
                .hint("replace each target function once"));
        }
        problems.extend(target_problem(object, old));
        problems.extend(module_problem(module, new, LoadMethod::default()));
    }
    if !problems.is_empty() {
        return Err(several(Kind::Precondition, "--map", problems).hint(
            "--map OLD=NEW takes a function of the target object and one the module defines \
             (see `nm -D MODULE`, `nm OBJECT`)",
        ));
    }
    let mut pairs: Vec<(String, String)> = maps.to_vec();

    let mut by_name: Vec<(String, String)> = Vec::new();
    for f in module_functions(module) {
        let Some(base) = replaced_name(&f) else {
            continue;
        };
        if maps.iter().any(|(o, n)| o == base || *n == f) {
            continue;
        }
        if let Some(why) = target_problem(object, base) {
            eprintln!("note: `{f}` is not paired by name: {why}");
            continue;
        }
        by_name.push((base.to_string(), f));
    }
    for (i, (base, f)) in by_name.iter().enumerate() {
        if let Some((_, other)) = by_name[..i].iter().find(|(b, _)| b == base) {
            return Err(Error::precondition(format!(
                "patch module {} has two replacements for `{base}`: `{other}` and `{f}`",
                module.path.display()
            ))
            .hint(format!("choose one with --map {base}={f} (or --map {base}={other})")));
        }
    }
    pairs.extend(by_name);

    if pairs.is_empty() {
        let funcs = module_functions(module);
        let listed = if funcs.is_empty() {
            "it exports no function".to_string()
        } else {
            format!("its functions: {}", funcs.join(", "))
        };
        return Err(Error::precondition(format!(
            "no function to replace: no function of patch module {} is paired with a function of target object {} ({listed})",
            module.path.display(),
            object.path.display()
        ))
        .hint("name each replacement after the function it replaces (foo_fixed, foo_fix, foo_v2, foo_new or foo_patched for foo), or pair them with --map foo=replacement"));
    }
    Ok(pairs)
}

/// The default patch id: the module's file stem, lowercased, in the id syntax.
fn default_patch_id(module: &Path) -> String {
    let stem = module.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let id: String = stem
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(MAX_PATCH_ID_LEN)
        .collect();
    if valid_patch_id(&id) {
        id
    } else {
        "patch".to_string()
    }
}

fn utf8<'a>(path: &'a Path, what: &str) -> Result<&'a str> {
    path.to_str().ok_or_else(|| {
        Error::bad_input(format!("{what} {}: path is not UTF-8", path.display()))
            .hint("a manifest is UTF-8 text; rename the file or its folder")
    })
}

fn absolute(path: &Path, what: &str) -> Result<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| Error::bad_input(format!("{what} {}: cannot make the path absolute: {e}", path.display())))
}

/// `s` as a YAML scalar: plain when it reads back as the same string, else double-quoted.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.contains(['\n', '\r', '"', '\''])
        && matches!(serde_yaml::from_str::<serde_yaml::Value>(s), Ok(serde_yaml::Value::String(v)) if v == s);
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// The command line as typed, quoted for a shell, on one line.
fn command_line() -> String {
    let mut out = String::from("pannus");
    for arg in std::env::args_os().skip(1) {
        let arg = arg.to_string_lossy();
        out.push(' ');
        let safe = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
        if safe {
            out.push_str(&arg);
        } else if !arg.contains('\'') && !arg.chars().any(char::is_control) {
            out.push_str(&format!("'{arg}'"));
        } else {
            out.push_str(&format!("$'{}'", arg.escape_default()));
        }
    }
    out
}

fn new(a: NewArgs) -> Result<()> {
    let target_path = absolute(&a.target, "target object")?;
    let object = Object::load(&target_path, "target object")?;
    let build_id = object.build_id.clone().ok_or_else(|| {
        Error::precondition(format!("target object {} has no GNU build-id", target_path.display()))
            .hint("a patch is tied to one build by its build-id; link the program with -Wl,--build-id")
    })?;
    let module_path = absolute(&a.module, "patch module")?;
    let module = Object::load(&module_path, "patch module")?;
    if !module.is_dyn {
        return Err(Error::bad_input(format!("patch module {}: not a shared object", module_path.display()))
            .hint("build it with gcc -shared -fPIC"));
    }
    let sha256 = crate::elf::sha256_file(&module_path)
        .map_err(|e| Error::bad_input(format!("patch module {}: cannot read: {e}", module_path.display())))?;
    let patch = match a.patch {
        Some(p) if valid_patch_id(&p) => p,
        Some(p) => {
            return Err(Error::bad_input(format!("--patch: invalid patch id `{p}`")).hint(
                "a patch id is 1 to 64 characters of a-z, 0-9, '.', '_' and '-', \
                 starting with a letter or digit",
            ))
        }
        None => default_patch_id(&module_path),
    };
    let version = a.version.trim().to_string();
    if version.is_empty() {
        return Err(Error::bad_input("--version: must not be empty").hint("for example --version 1.0.1"));
    }
    let pairs = pair(&object, &module, &a.map)?;

    // Where the manifest goes, and the module path as written in it.
    let output = a.output.as_deref().map(|o| absolute(o, "--output")).transpose()?;
    let mut module_text = utf8(&module_path, "patch module")?.to_string();
    if let Some(out) = &output {
        let canon = |p: &Path| std::fs::canonicalize(p).ok();
        let out_canon = canon(out);
        if out_canon.is_some() && (out_canon == canon(&module_path) || out_canon == canon(&target_path)) {
            return Err(Error::bad_input(format!(
                "--output {}: is the module or the target object itself",
                out.display()
            ))
            .hint("write the manifest to a file of its own, such as PATCH.yaml"));
        }
        let folder = out.parent().unwrap_or(Path::new("/"));
        if let (Some(folder), Some(m)) = (canon(folder), canon(&module_path)) {
            if let Ok(rel) = m.strip_prefix(&folder) {
                if !rel.as_os_str().is_empty() {
                    module_text = utf8(rel, "patch module")?.to_string();
                }
            }
        }
    }

    let mut text = format!(
        "# Written by `{}`\n# (pannus {}). Check it with `pannus manifest check {}`.\n",
        command_line(),
        env!("CARGO_PKG_VERSION"),
        a.output.as_deref().map_or("FILE".into(), |o| o.to_string_lossy().escape_default().to_string())
    );
    text.push_str(&format!("patch: {}\n", yaml_scalar(&patch)));
    text.push_str(&format!("version: {}\n", yaml_scalar(&version)));
    text.push_str("target:\n");
    text.push_str(&format!("  object: {}\n", yaml_scalar(utf8(&target_path, "target object")?)));
    text.push_str(&format!("  build_id: {build_id}\n"));
    text.push_str("module:\n");
    text.push_str(&format!("  path: {}\n", yaml_scalar(&module_text)));
    text.push_str(&format!("  sha256: {sha256}\n"));
    text.push_str("functions:\n");
    for (t, r) in &pairs {
        text.push_str(&format!("  - target: {}\n", yaml_scalar(t)));
        text.push_str(&format!("    replacement: {}\n", yaml_scalar(r)));
    }
    text.push_str("trial:\n");
    text.push_str(&format!(
        "  duration: {}  # countdown after activation\n",
        humantime::format_duration(DEFAULT_TRIAL)
    ));
    text.push_str(&format!("  on_expiry: {}  # {} | {}\n", OnExpiry::default(), OnExpiry::Commit, OnExpiry::Rollback));

    // The manifest must read back as written.
    let parse_path = output.clone().unwrap_or_else(|| PathBuf::from("<standard output>"));
    let m = Manifest::parse(&text, &parse_path)
        .map_err(|e| Error::other(format!("the manifest written does not read back: {}", e.message)))?;
    let same = m.patch == patch
        && m.version == version
        && m.target.object == target_path
        && m.module.path == module_path
        && m.functions.iter().map(|f| (f.target.clone(), f.replacement.clone())).eq(pairs.iter().cloned());
    if !same {
        return Err(Error::other("the manifest written does not read back as intended"));
    }

    let Some(out) = output else {
        return write_stdout(text.as_bytes());
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if a.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(&out).map_err(|e| {
        let err = Error::bad_input(format!("--output {}: cannot write: {e}", out.display()));
        match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::bad_input(format!("--output {}: file exists", out.display()))
                .hint("pass --force to overwrite it, or choose another --output"),
            std::io::ErrorKind::NotFound => err.hint("create the folder first"),
            _ => err,
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::other(format!("--output {}: cannot write: {e}", out.display())))?;
    let list: Vec<String> = pairs.iter().map(|(t, r)| format!("{t} -> {r}")).collect();
    eprintln!("wrote {}: patch `{patch}` {version}, {}", out.display(), list.join(", "));
    Ok(())
}

// ---------------------------------------------------------------------------
// manifest check

/// A check `manifest check` passed.
#[derive(Debug, serde::Serialize)]
pub struct Line {
    check: String,
    detail: String,
}

fn push_line(lines: &mut Vec<Line>, check: &str, detail: String) {
    lines.push(Line { check: check.into(), detail });
}

/// Every check on `path` that needs no process: what passed, and the problems.
fn check_file(path: &Path) -> (Option<Manifest>, Vec<Line>, Vec<Error>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let m = match Manifest::load(path) {
        Ok(m) => m,
        Err(e) => return (None, lines, vec![e]),
    };
    let n = m.functions.len();
    push_line(
        &mut lines,
        "manifest",
        format!("patch `{}` {} ({n} function{})", m.patch, m.version, if n == 1 { "" } else { "s" }),
    );

    // The module.
    let module = match module_checks(&m) {
        Ok((o, passed)) => {
            lines.extend(passed.into_iter().map(|l| Line { check: l.check, detail: l.detail }));
            Some(o)
        }
        Err(e) => {
            problems.push(e);
            None
        }
    };

    // The target object.
    let tpath = &m.target.object;
    let object = match Object::load(tpath, "target object") {
        Err(e) => {
            problems.push(e.hint("check target.object: the program or library the patch is for"));
            None
        }
        Ok(o) => {
            match build_id_matches(tpath, &o, &m.target.build_id) {
                Ok(()) => push_line(
                    &mut lines,
                    "target object",
                    format!("{}, build-id {}", tpath.display(), m.target.build_id),
                ),
                Err(e) => problems.push(e),
            }
            Some(o)
        }
    };

    // The functions.
    for f in &m.functions {
        let t = object.as_ref().map(|o| target_problem(o, &f.target));
        let r = module.as_ref().map(|o| module_problem(o, &f.replacement, m.module.load));
        for why in [&t, &r].into_iter().flatten().flatten() {
            problems.push(
                Error::precondition(why.clone()).hint(
                    "check functions[]: target is a function of target.object, replacement one the module defines",
                ),
            );
        }
        if let (Some(None), Some(None), Some(o)) = (&t, &r, &object) {
            let detail = match target_symbol(o, &o.path, &f.target) {
                Ok(s) if s.kind == crate::elf::SymKind::Ifunc => format!(
                    "{} (an indirect function: its implementations are found in the process) -> {}",
                    f.target, f.replacement
                ),
                Ok(s) => format!("{} ({} bytes) -> {}", f.target, s.size, f.replacement),
                Err(_) => format!("{} -> {}", f.target, f.replacement),
            };
            push_line(&mut lines, "function", detail);
        }
    }
    (Some(m), lines, problems)
}

fn check(path: &Path, json: bool) -> Result<()> {
    let (m, lines, problems) = check_file(path);
    let result = if problems.is_empty() {
        Ok(())
    } else {
        let kind = if problems.iter().any(|p| p.kind == Kind::BadInput) { Kind::BadInput } else { Kind::Precondition };
        Err(if problems.len() == 1 {
            let mut e = problems[0].clone();
            e.kind = kind;
            e
        } else {
            several(
                kind,
                &format!("manifest {}", path.display()),
                problems
                    .iter()
                    .map(|p| match &p.hint {
                        Some(h) => format!("{}\n    hint: {h}", p.message),
                        None => p.message.clone(),
                    })
                    .collect(),
            )
        })
    };
    let summary = m.as_ref().filter(|_| problems.is_empty()).map(|m| {
        format!(
            "manifest {} is valid: patch `{}` {} replaces {} in {}",
            path.display(),
            m.patch,
            m.version,
            m.functions.iter().map(|f| format!("{} with {}", f.target, f.replacement)).collect::<Vec<_>>().join(", "),
            m.target.object.display()
        )
    });
    if json {
        output::print(&output::ManifestCheck {
            manifest: path,
            ok: problems.is_empty(),
            problems: problems.iter().map(Into::into).collect(),
            checks: &lines,
            read: m.as_ref().map(Into::into),
            summary: summary.as_deref(),
            exit: result.as_ref().err().map(|e| e.kind.exit_code()),
        })?;
        return result;
    }
    let mut text = String::new();
    for l in &lines {
        text.push_str(&format!("ok   {:<18} {}\n", l.check, l.detail));
    }
    if let Some(s) = &summary {
        text.push_str(s);
        text.push('\n');
    }
    write_stdout(text.as_bytes())?;
    result
}

// ---------------------------------------------------------------------------
// Schema, completions, man page

/// The JSON Schema (draft 7) of the manifest, as written in YAML.
pub fn schema() -> serde_json::Value {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<crate::manifest::RawManifest>()
        .to_value()
}

/// [`schema`], pretty-printed, as shipped in `manifests/pannus-manifest.schema.json`.
pub fn schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&schema()).unwrap_or_default();
    text.push('\n');
    text
}

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = <super::Cli as CommandFactory>::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pannus", &mut buf);
    write_stdout(&buf)
}

/// Prints the man page (roff).
pub fn man() -> Result<()> {
    let cmd = <super::Cli as CommandFactory>::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .map_err(|e| Error::other(format!("cannot render the man page: {e}")))?;
    write_stdout(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_rule() {
        assert_eq!(replaced_name("foo_fixed"), Some("foo"));
        assert_eq!(replaced_name("foo_fix"), Some("foo"));
        assert_eq!(replaced_name("foo_v2"), Some("foo"));
        assert_eq!(replaced_name("foo_bar_v10"), Some("foo_bar"));
        assert_eq!(replaced_name("foo_new"), Some("foo"));
        assert_eq!(replaced_name("foo_patched"), Some("foo"));
        for no in ["foo", "_fix", "_v2", "foo_v", "foo_vx", "foo_v2a", "fix"] {
            assert_eq!(replaced_name(no), None, "{no}");
        }
    }

    #[test]
    fn patch_ids_from_file_names() {
        assert_eq!(default_patch_id(Path::new("/a/patch_compute.so")), "patch_compute");
        assert_eq!(default_patch_id(Path::new("Invite Fix.so")), "invite-fix");
        assert_eq!(default_patch_id(Path::new("__x.so")), "x");
        assert_eq!(default_patch_id(Path::new("___.so")), "patch");
        assert_eq!(default_patch_id(&PathBuf::from("a".repeat(80) + ".so")).len(), 64);
    }

    #[test]
    fn map_arguments() {
        assert_eq!(parse_map("a=b"), Ok(("a".into(), "b".into())));
        for bad in ["a", "=b", "a=", "a b=c", ""] {
            assert!(parse_map(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn yaml_scalars_read_back() {
        for s in ["plain", "1", "1.0", "true", "null", "", "a: b", "a #b", "- x", " x", "x\ny", "'q'", "é"] {
            let text = format!("k: {}\n", yaml_scalar(s));
            let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
            assert_eq!(v["k"], serde_yaml::Value::String(s.into()), "{s:?} as {text:?}");
        }
        assert_eq!(yaml_scalar("/usr/sbin/sipd"), "/usr/sbin/sipd");
        assert_eq!(yaml_scalar("1"), "\"1\"");
    }
}
