//! `pannus build`: the patch module and manifest from a source diff.
//!
//! The tree is copied twice and never touched. In the first copy the project's own build
//! command runs with pannus's compiler wrappers ([`wrap`]) first on `PATH`, which record how
//! each file is compiled and add `-ffunction-sections -fdata-sections`. In the second copy the
//! diff is applied and only the units it affects are compiled again, the same way. Each
//! affected unit's two builds are compared function by function, code and relocation targets,
//! not text ([`compare`]); the running binary's debug information closes the set over inlining
//! ([`dwarf`]); data whose layout or initial value the fix changes is refused; and the changed
//! functions go into a module whose references to what the process already has bind to it
//! ([`module`]).

pub mod compare;
pub mod diff;
mod dwarf;
mod module;
mod objfile;
mod tree;
pub mod wrap;

use crate::elf::{Object, SymKind};
use crate::error::{Error, Result};
use objfile::{Kind, Unit};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tree::{apply_diff, copy_tree, dependencies, io, normal, run_build, Work};

/// What `pannus build` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub object: PathBuf,
    pub source: PathBuf,
    pub diff: PathBuf,
    pub build: Option<String>,
    pub patch: Option<String>,
    pub version: Option<String>,
    pub output: PathBuf,
    pub compile_commands: Option<PathBuf>,
}

/// One decision about a function or a variable, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub name: String,
    pub file: String,
    /// `replaced`, `replaced-inlines-changed`, `unchanged`, `new`, `copied`, `inlined-away`,
    /// `bound`, `refused`.
    pub decision: &'static str,
    pub reason: String,
}

/// What `pannus build` did, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub patch: String,
    pub object: PathBuf,
    pub build_id: String,
    pub module: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    /// The build command's own output.
    pub log: PathBuf,
    /// The units compiled again with the fix.
    pub compiled: Vec<String>,
    pub functions: Vec<Decision>,
    pub data: Vec<Decision>,
    pub refused: Vec<Decision>,
    pub timings_ms: BTreeMap<&'static str, u64>,
}

/// A build that failed: the error, and the report as far as it got (with every decision, when
/// the diff was refused after the analysis).
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    pub report: Option<Box<Report>>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed { error, report: None }
    }
}

/// Progress, for a terminal: a step, and how far into it.
pub trait Progress {
    fn step(&mut self, what: &str);
}

/// The prefix of a unit's static initialiser (C++ objects with dynamic initializers).
const INITIALISER: &str = "_GLOBAL__sub_I_";

fn ms(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// How the layouts of one structure differ.
fn layout_change(name: &str, old: &dwarf::Layout, new: &dwarf::Layout) -> String {
    let mut parts = Vec::new();
    for (m, off, ty) in &new.1 {
        match old.1.iter().find(|o| &o.0 == m) {
            None => parts.push(format!("gains the field `{m}` ({ty}) at offset {off}")),
            Some(o) if o.1 != *off => parts.push(format!("moves `{m}` from offset {} to {off}", o.1)),
            Some(o) if o.2 != *ty => parts.push(format!("changes the type of `{m}` from {} to {ty}", o.2)),
            _ => {}
        }
    }
    for (m, _, _) in &old.1 {
        if !new.1.iter().any(|n| &n.0 == m) {
            parts.push(format!("loses the field `{m}`"));
        }
    }
    if old.0 != new.0 {
        parts.push(format!("grows from {} to {} bytes", old.0, new.0));
    }
    if parts.is_empty() {
        parts.push("changes layout".into());
    }
    format!("`{name}` {}", parts.join(", "))
}

/// Builds the module and manifest.
pub fn build(o: &Options, progress: &mut dyn Progress) -> std::result::Result<Report, Failed> {
    let mut analysed = None;
    build_reporting(o, progress, &mut analysed).map_err(|error| Failed { error, report: analysed.map(Box::new) })
}

/// [`build`], leaving in `analysed` the report of a diff refused after the analysis.
fn build_reporting(o: &Options, progress: &mut dyn Progress, analysed: &mut Option<Report>) -> Result<Report> {
    let started = Instant::now();
    let mut timings = BTreeMap::new();
    let object_path =
        o.object.canonicalize().map_err(|e| Error::bad_input(format!("--object {}: {e}", o.object.display())))?;
    let bin = Object::load(&object_path, "--object")?;
    let build_id = bin.build_id.clone().ok_or_else(|| {
        Error::bad_input(format!("{} has no GNU build-id, which the manifest names it by", object_path.display()))
            .hint("link it with -Wl,--build-id")
    })?;
    progress.step("reading the running binary's debug information");
    let debug = dwarf::binary(&object_path).or_else(|e| {
        let (head, tail) = build_id.split_at(build_id.len().min(2));
        let separate = PathBuf::from(format!("/usr/lib/debug/.build-id/{head}/{tail}.debug"));
        if separate.is_file() {
            dwarf::binary(&separate)
        } else {
            Err(e.hint(format!(
                "pannus build needs the binary's DWARF: build it with -g, or install its debug file as {}",
                separate.display()
            )))
        }
    })?;
    let source =
        o.source.canonicalize().map_err(|e| Error::bad_input(format!("--source {}: {e}", o.source.display())))?;
    if !source.is_dir() {
        return Err(Error::bad_input(format!("--source {} is not a folder", source.display())));
    }
    let changes = diff::read(&o.diff)?;
    let diff_path = o.diff.canonicalize().map_err(|e| Error::bad_input(format!("--diff {}: {e}", o.diff.display())))?;
    let id = match &o.patch {
        Some(id) => id.clone(),
        None => o
            .diff
            .file_stem()
            .map(|s| {
                s.to_string_lossy()
                    .to_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.', "-")
            })
            .unwrap_or_default(),
    };
    if !crate::manifest::valid_patch_id(&id) {
        return Err(
            Error::bad_input(format!("`{id}` is not a valid patch id")).hint("pass --patch ID: [a-z0-9][a-z0-9._-]*")
        );
    }
    std::fs::create_dir_all(&o.output)
        .map_err(|e| Error::bad_input(format!("--output {}: {e}", o.output.display())))?;
    let output =
        o.output.canonicalize().map_err(|e| Error::bad_input(format!("--output {}: {e}", o.output.display())))?;
    let work = Work(std::env::temp_dir().join(format!("pannus-build-{id}-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work.0);
    let (orig, patched) = (work.0.join("original"), work.0.join("fixed"));
    let log = output.join(format!("{id}.build.log"));

    let t = Instant::now();
    progress.step(&format!("copying {} twice", source.display()));
    copy_tree(&source, &orig)?;
    copy_tree(&source, &patched)?;
    apply_diff(&diff_path, &patched)?;
    timings.insert("copy", ms(t));

    let t = Instant::now();
    let prefix = |copy: &Path| format!("{}={}", copy.display(), source.display());
    let records: Vec<(wrap::Compile, PathBuf)> = match (&o.compile_commands, &o.build) {
        (Some(cc), _) => wrap::from_compile_commands(cc)?.into_iter().map(|c| (c, source.clone())).collect(),
        (None, Some(cmd)) => {
            progress.step(&format!("running `{cmd}` with pannus's compiler wrappers (output in {})", log.display()));
            run_build(cmd, &orig, &work.0, &log, progress)?.into_iter().map(|c| (c, orig.clone())).collect()
        }
        (None, None) => {
            return Err(Error::bad_input("give the build command (--build \"CMD\") or --compile-commands FILE"))
        }
    };
    timings.insert("build", ms(t));
    if records.is_empty() {
        return Err(Error::bad_input(
            "the build command compiled nothing through pannus's wrappers (gcc, cc, g++, c++ on PATH, CC, CXX)",
        )
        .hint("let the build find the compiler on PATH or in CC/CXX rather than by absolute path, or pass --compile-commands"));
    }

    // The units of the binary the diff affects.
    let touched: Vec<&diff::FileChange> = changes.iter().collect();
    let in_binary_unit = |rel: &Path| {
        let full = source.join(rel);
        debug.units.iter().any(|(name, dir)| {
            let p = normal(&Path::new(dir).join(name));
            p == full || p.ends_with(rel)
        })
    };
    let mut affected: Vec<(wrap::Compile, PathBuf, String)> = Vec::new();
    for (c, from) in &records {
        let Ok(rel) = normal(&c.source_path()).strip_prefix(from).map(Path::to_path_buf) else { continue };
        let rel_s = rel.to_string_lossy().into_owned();
        if !in_binary_unit(&rel) {
            continue;
        }
        let direct = touched.iter().any(|f| f.path == rel_s);
        let via_header = !direct
            && touched.iter().any(|f| !f.path.ends_with(".c") && !f.path.ends_with(".cpp") && !f.path.ends_with(".cc"))
            && dependencies(c, from).iter().any(|d| touched.iter().any(|f| &f.path == d));
        if (direct || via_header) && !affected.iter().any(|a| a.2 == rel_s) {
            affected.push((c.clone(), from.clone(), rel_s));
        }
    }
    if affected.is_empty() {
        let files: Vec<&str> = touched.iter().map(|f| f.path.as_str()).collect();
        return Err(Error::bad_input(format!(
            "the diff touches {} but no unit of {} that the build compiled",
            files.join(", "),
            object_path.display()
        ))
        .hint("check that --object is the binary this tree builds, and that the diff is against this tree"));
    }

    let t = Instant::now();
    let n = affected.len();
    let mut pairs: Vec<(Unit, Unit, String)> = Vec::new();
    let mut infos: Vec<(dwarf::UnitInfo, dwarf::UnitInfo)> = Vec::new();
    for (k, (c, from, rel)) in affected.iter().enumerate() {
        progress.step(&format!("compiling {rel} with the fix ({} of {n})", k + 1));
        if from != &orig {
            // From a compile_commands.json: the original is compiled here too, in its copy.
            c.rerun_in(from, &orig, &prefix(&orig))?;
        }
        c.rerun_in(from, &patched, &prefix(&patched)).map_err(|e| e.context(format!("the fixed {rel}")))?;
        let mut orig_obj = Unit::read(&wrap::Compile::moved(&c.output_path(), from, &orig))?;
        let fixed_path = wrap::Compile::moved(&c.output_path(), from, &patched);
        let mut fixed_obj = Unit::read(&fixed_path)?;
        let (oi, pi) = (dwarf::unit(&orig_obj), dwarf::unit(&fixed_obj));
        orig_obj.statics = oi.statics.clone();
        fixed_obj.statics = pi.statics.clone();
        infos.push((oi, pi));
        pairs.push((orig_obj, fixed_obj, rel.clone()));
    }
    timings.insert("compile", ms(t));

    let t = Instant::now();
    progress.step("comparing the two builds function by function");
    // A `__LINE__` the diff moved: a line the original file has, untouched, now at `b`.
    let lines_in: Vec<usize> =
        changes.iter().map(|f| std::fs::read_to_string(orig.join(&f.path)).map_or(0, |t| t.lines().count())).collect();
    let moved = |a: i64, b: i64| {
        a != b
            && changes.iter().zip(&lines_in).any(|(f, &n)| {
                u32::try_from(a).ok().filter(|&a| a >= 1 && a as usize <= n).and_then(|a| f.moved(a)).map(i64::from)
                    == Some(b)
            })
    };
    let lookup_fn = |name: &str| bin.lookup(name).ok().flatten().filter(|s| s.kind == SymKind::Func && s.size > 0);
    let ambiguous = |name: &str| bin.lookup(name).is_err();
    let mut report = Report {
        patch: id.clone(),
        object: object_path.clone(),
        build_id: build_id.clone(),
        module: None,
        manifest: None,
        log: log.clone(),
        compiled: affected.iter().map(|a| a.2.clone()).collect(),
        functions: Vec::new(),
        data: Vec::new(),
        refused: Vec::new(),
        timings_ms: BTreeMap::new(),
    };
    // Functions by address in the binary, for the owners of inlined copies.
    let mut at: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for s in bin.symtab.iter().filter(|s| s.defined && s.kind == SymKind::Func) {
        at.entry(s.value).or_default().push(&s.name);
    }
    // (unit index, symbol in the fixed unit) → reason, for what is replaced.
    let mut replaced: BTreeMap<(usize, usize), String> = BTreeMap::new();
    // (unit, name) of the functions whose code the fix changes, and of those whose lines it
    // touches (by the debug information: inlined-only ones included).
    let mut changed_names: BTreeSet<(usize, String)> = BTreeSet::new();
    // (function, unit, the __LINE__ values that moved)
    #[allow(clippy::type_complexity)]
    let mut line_only: Vec<(String, String, Vec<(u32, u32)>)> = Vec::new();
    // (function, unit) whose lines the diff touches and whose code is the same.
    let mut same_touched: Vec<(String, String)> = Vec::new();
    let mut touched_fns: BTreeSet<(usize, String)> = BTreeSet::new();
    // (unit, static initialiser) changed by the fix.
    let mut inits: Vec<(usize, usize)> = Vec::new();
    for (u, (ou, pu, rel)) in pairs.iter().enumerate() {
        // Sanity: the original build is the running binary's code.
        let mut mismatches = Vec::new();
        let mut compared = 0;
        for (sym, _) in ou.functions() {
            let name = module::binary_name(ou, ou, sym).unwrap_or_default();
            let Some(s) = lookup_fn(&name) else { continue };
            let Some(bytes) = bin.bytes_at(s.value, s.size) else { continue };
            compared += 1;
            if let Err(why) = compare::matches_binary(ou, sym, bytes) {
                mismatches.push(format!("`{}`: {why}", ou.symbols[sym].name));
            }
        }
        if !mismatches.is_empty() {
            return Err(Error::precondition(format!(
                "{} of the {compared} functions of {rel} compiled here differ from {} ({}): this tree, compiler or \
                 flags are not the ones the running binary was built with{}",
                mismatches.len(),
                object_path.display(),
                mismatches.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
                debug.producer.as_ref().map(|p| format!(" (it was built by: {p})")).unwrap_or_default()
            ))
            .hint("build the patch from the exact source tree, compiler and build command of the running binary"));
        }
        // Data the process already has.
        let (oi, pi) = (&infos[u].0, &infos[u].1);
        for (name, old) in &oi.layouts {
            if let Some(new) = pi.layouts.get(name).filter(|new| *new != old) {
                report.refused.push(Decision {
                    name: name.clone(),
                    file: rel.clone(),
                    decision: "refused",
                    reason: format!(
                        "{}: a live patch cannot change the layout of objects that already exist in the process; \
                         restart the service, or keep the layout and put the new state in a new variable of its own \
                         (a shadow variable)",
                        layout_change(name, old, new)
                    ),
                });
            }
        }
        for (sym, sec) in ou.variables() {
            if ou.generated(sym) {
                // A constant gcc made for a function: part of its code, compared with it.
                continue;
            }
            let key = ou.variable_key(sym);
            let Some(p) = pu.find(&key, ou.symbols[sym].kind) else { continue };
            let (a, b) = (&ou.symbols[sym], &pu.symbols[p]);
            let (sa, sb) = (&ou.sections[sec], b.section.map(|i| &pu.sections[i]));
            let why = if a.size != b.size {
                Some(format!("changes size from {} to {} bytes (its type changed)", a.size, b.size))
            } else {
                let bytes = |s: &objfile::Section, v: u64, n: u64| -> Vec<u8> {
                    s.data.get(v as usize..(v + n) as usize).map(<[u8]>::to_vec).unwrap_or_else(|| vec![0; n as usize])
                };
                let init_a = bytes(sa, a.value, a.size);
                let init_b = sb.map(|s| bytes(s, b.value, b.size)).unwrap_or_default();
                let refs = |un: &Unit, s: Option<&objfile::Section>, v: u64, n: u64| -> Vec<String> {
                    s.map(|s| {
                        s.relocs
                            .iter()
                            .filter(|r| r.offset >= v && r.offset < v + n)
                            .map(|r| format!("{} {}", r.offset - v, un.describe(r)))
                            .collect()
                    })
                    .unwrap_or_default()
                };
                (init_a != init_b || refs(ou, Some(sa), a.value, a.size) != refs(pu, sb, b.value, b.size))
                    .then(|| "changes its initial value".to_string())
            };
            if let Some(why) = why {
                report.refused.push(Decision {
                    name: key.clone(),
                    file: rel.clone(),
                    decision: "refused",
                    reason: format!(
                        "`{key}` {why}: the process set it up when it started, and a live patch does not change \
                         data that already exists; keep the variable as it is and make the new code use a new one, \
                         or restart the service"
                    ),
                });
            }
        }
        // Functions: the lines the diff touches in this unit, by the function they fall in.
        let mut owners: BTreeSet<String> = BTreeSet::new();
        for f in changes.iter() {
            let mut defs: Vec<&(String, u32, String)> = oi
                .functions
                .iter()
                .filter(|(file, _, _)| {
                    let file = normal(Path::new(file));
                    file.ends_with(&f.path) || Path::new(&f.path).ends_with(&file)
                })
                .collect();
            defs.sort_by_key(|d| d.1);
            for &line in &f.touched {
                if let Some(d) = defs.iter().rev().find(|d| d.1 <= line) {
                    owners.insert(d.2.clone());
                    touched_fns.insert((u, d.2.clone()));
                }
            }
        }
        for (sym, _) in pu.functions() {
            let name = pu.symbols[sym].name.clone();
            if name.starts_with(INITIALISER) {
                // The unit's static initialiser: never redirected (it ran when the process
                // started); when the fix changes it (a new object with a dynamic initializer),
                // the module runs it in stage 3, see `module::Source::init`.
                let changed = ou
                    .find(&name, Kind::Func)
                    .is_none_or(|o| compare::compare(ou, o, pu, sym, &moved) != compare::Verdict::Same);
                if changed {
                    inits.push((u, sym));
                }
                continue;
            }
            let Some(o) = ou.find(&name, Kind::Func) else {
                report.functions.push(Decision {
                    name: name.clone(),
                    file: rel.clone(),
                    decision: "new",
                    reason: "new with the fix: in the module, called by what replaces".into(),
                });
                continue;
            };
            // A clone gcc made (`scale.constprop.0`) belongs to the function it was made from.
            let base = name.split('.').next().unwrap_or(&name).to_string();
            let touched = owners.contains(&name) || owners.contains(&base);
            let verdict = match compare::compare(ou, o, pu, sym, &moved) {
                // The diff touches its own lines: a constant that changed by as much as the
                // lines moved is still a change.
                compare::Verdict::LinesOnly(_) if touched => {
                    compare::Verdict::Changed("its constants changed where the diff touches it".into())
                }
                v => v,
            };
            match verdict {
                compare::Verdict::Same => {
                    if touched {
                        same_touched.push((name.clone(), rel.clone()));
                    }
                }
                compare::Verdict::LinesOnly(l) => line_only.push((name, rel.clone(), l)),
                compare::Verdict::Changed(detail) => {
                    changed_names.insert((u, name.clone()));
                    let reason = if touched {
                        format!("changed by the diff ({detail})")
                    } else {
                        format!("its code changed although the diff touches none of its lines ({detail})")
                    };
                    replaced.insert((u, sym), reason);
                }
            }
        }
    }
    // Inlining, as the running binary has it: a function whose lines the diff touches, or
    // whose code changed, may live on only as inlined copies in other functions. Each of those
    // that the fix changes is replaced (and says why); one outside the units the diff affects
    // cannot be rebuilt, and is refused.
    // The unit of the binary's debug information each affected unit is.
    let unit_of_cu = |cu: usize| -> Option<usize> {
        let (name, dir) = debug.units.get(cu)?;
        let p = normal(&Path::new(dir).join(name));
        pairs.iter().position(|(_, _, rel)| p == source.join(rel) || p.ends_with(rel))
    };
    let mut inlined_into: BTreeMap<(usize, String), Vec<String>> = BTreeMap::new();
    for (addr, (cu, inlined)) in &debug.inlined {
        let Some(names) = at.get(addr) else { continue };
        let u = unit_of_cu(*cu);
        for f in inlined {
            let key = (u.unwrap_or(usize::MAX), f.clone());
            let (is_touched, is_changed) = (touched_fns.contains(&key), changed_names.contains(&key));
            if !is_touched && !is_changed {
                continue;
            }
            for owner in names {
                let found = u.and_then(|u| pairs[u].1.find(owner, Kind::Func).map(|s| (u, s)));
                match found {
                    Some(k) => {
                        if let Some(r) = replaced.get_mut(&k) {
                            if !r.starts_with("changed by") && !r.starts_with("inlines") {
                                *r = format!("inlines the changed `{f}` (an inlined copy in the running binary)");
                            }
                            let list = inlined_into.entry(key.clone()).or_default();
                            if !list.contains(&owner.to_string()) {
                                list.push(owner.to_string());
                            }
                        }
                    }
                    None if is_changed => report.refused.push(Decision {
                        name: owner.to_string(),
                        file: String::new(),
                        decision: "refused",
                        reason: format!(
                            "`{owner}` carries an inlined copy of the changed `{f}`, but its unit is not one the diff \
                             affects; make the diff touch it too, or restart the service"
                        ),
                    }),
                    None => {}
                }
            }
        }
    }
    // A changed copy gcc specialised, or the cold part of a function, is never redirected
    // itself: whatever calls it in the unit is replaced and calls the module's copy.
    loop {
        let mut more = Vec::new();
        for ((u, sym), _) in replaced.iter() {
            let pu = &pairs[*u].1;
            let name = &pu.symbols[*sym].name;
            if !name.contains('.') {
                continue;
            }
            for caller in pu.users_of(*sym) {
                if caller != *sym && !replaced.contains_key(&(*u, caller)) {
                    more.push(((*u, caller), format!("calls `{name}`, a copy gcc made of a function the fix changes")));
                }
            }
        }
        if more.is_empty() {
            break;
        }
        for (k, r) in more {
            replaced.entry(k).or_insert(r);
        }
    }
    for ((u, f), owners) in &inlined_into {
        let own = pairs.get(*u).is_some_and(|(_, pu, _)| pu.find(f, Kind::Func).is_some());
        if !own {
            report.functions.push(Decision {
                name: f.clone(),
                file: pairs.get(*u).map(|p| p.2.clone()).unwrap_or_default(),
                decision: "inlined-away",
                reason: format!(
                    "changed by the diff; it has no entry of its own in the running binary, only inlined copies, \
                     so the functions carrying them are replaced: {}",
                    owners.join(", ")
                ),
            });
        }
    }
    // What each replaced function becomes: a redirected entry, or (a copy gcc specialised, one
    // inlined everywhere) code its replaced callers reach inside the module.
    let mut sources: Vec<module::Source<'_>> = pairs
        .iter()
        .map(|(ou, pu, _)| module::Source { patched: pu, original: ou, replaced: Vec::new(), init: Vec::new() })
        .collect();
    for &(u, sym) in &inits {
        let (_, pu, rel) = &pairs[u];
        let arrays = pu.init_arrays_calling(sym);
        if arrays.is_empty() {
            continue;
        }
        sources[u].init.extend(arrays);
        report.functions.push(Decision {
            name: pu.symbols[sym].name.clone(),
            file: rel.clone(),
            decision: "init",
            reason: "the unit's static initialiser, changed by the fix: the module runs it once in stage 3 (init) \
                     to construct the new objects; the objects the process already has are constructed into \
                     scratch copies in the module, never again in place"
                .into(),
        });
    }
    for ((u, sym), reason) in &replaced {
        let (ou, pu, rel) = &pairs[*u];
        let name = &pu.symbols[*sym].name;
        let bname = module::binary_name(ou, pu, *sym).unwrap_or_else(|| name.clone());
        let generated = name.contains('.');
        if !generated && ambiguous(&bname) {
            report.refused.push(Decision {
                name: bname.clone(),
                file: rel.clone(),
                decision: "refused",
                reason: format!(
                    "`{bname}` is ambiguous in {}: several file-local functions of that name in source files of that \
                     name, and pannus cannot tell which is this unit's; give the source files distinct names, or \
                     restart the service",
                    object_path.display()
                ),
            });
        } else if let Some(entry) = lookup_fn(&bname).filter(|_| !generated) {
            // Stage 4 writes a jump at its entry: refuse now what it would refuse then.
            let code = bin.bytes_at(entry.value, entry.size).unwrap_or_default();
            let pad_len = entry.value.min(16);
            let pad = bin.bytes_at(entry.value - pad_len, pad_len).unwrap_or_default();
            if let Err(e) = crate::safety::plan_entry(&bname, entry.value, code, pad, entry.value + 4096) {
                report.refused.push(Decision {
                    name: bname.clone(),
                    file: rel.clone(),
                    decision: "refused",
                    reason: format!(
                        "{}; put the fix in its callers instead, or build the program with \
                         -fpatchable-function-entry=7,5 (a nop pad before every function) for its next release",
                        e.message
                    ),
                });
                continue;
            }
            sources[*u].replaced.push((*sym, bname.clone()));
            let decision = if reason.starts_with("inlines") { "replaced-inlines-changed" } else { "replaced" };
            report.functions.push(Decision { name: bname, file: rel.clone(), decision, reason: reason.clone() });
        } else {
            let callers: Vec<String> = pu.users_of(*sym).into_iter().map(|c| pu.symbols[c].name.clone()).collect();
            let how = if generated {
                "a copy gcc specialised for its callers: not redirected itself, its callers are"
            } else {
                "inlined everywhere in the running binary: no entry of its own, its callers are replaced"
            };
            report.functions.push(Decision {
                name: name.clone(),
                file: rel.clone(),
                decision: "inlined-away",
                reason: format!(
                    "{reason}; {how} ({})",
                    if callers.is_empty() { "none".into() } else { callers.join(", ") }
                ),
            });
        }
    }
    for (name, rel) in &same_touched {
        report.functions.push(Decision {
            name: name.clone(),
            file: rel.clone(),
            decision: "unchanged",
            reason: "the diff touches its lines, but its code is the same".into(),
        });
    }
    for (name, rel, lines) in &line_only {
        let moves: Vec<String> = lines.iter().map(|(a, b)| format!("{a} → {b}")).collect();
        report.functions.push(Decision {
            name: name.clone(),
            file: rel.clone(),
            decision: "unchanged",
            reason: format!("only __LINE__ values moved ({}): not replaced", moves.join(", ")),
        });
    }
    timings.insert("analyse", ms(t));
    report.timings_ms = timings.clone();
    if !report.refused.is_empty() {
        let list: Vec<String> = report.refused.iter().map(|d| format!("  - {}", d.reason)).collect();
        let error = Error::precondition(format!("the diff cannot be live-patched:\n{}", list.join("\n")))
            .hint("each item says what to do instead");
        *analysed = Some(report);
        return Err(error);
    }
    if sources.iter().all(|s| s.replaced.is_empty()) {
        let mut why = String::from("the diff changes no function's code in the running binary: nothing to patch");
        for d in &report.functions {
            why.push_str(&format!("\n  - {} ({}): {}", d.name, d.file, d.reason));
        }
        *analysed = Some(report);
        return Err(Error::precondition(why).hint("a diff of comments, formatting or line positions needs no patch"));
    }

    let t = Instant::now();
    progress.step("linking the module");
    let so = output.join(format!("{id}.so"));
    let in_binary = |name: &str| match bin.lookup(name) {
        Ok(Some(_)) => module::InBinary::Yes,
        Ok(None) => module::InBinary::No,
        Err(_) => module::InBinary::Ambiguous,
    };
    let made = module::make(&sources, &in_binary, &work.0, &so)?;
    for (what, why, function) in &made.copied {
        let d = Decision { name: what.clone(), file: String::new(), decision: "copied", reason: why.clone() };
        if *function {
            report.functions.push(d);
        } else {
            report.data.push(d);
        }
    }
    for name in &made.bound {
        report.data.push(Decision {
            name: name.clone(),
            file: String::new(),
            decision: "bound",
            reason: "the process's own, bound in stage 2".into(),
        });
    }
    let sha = crate::elf::sha256_file(&so).map_err(io(so.display()))?;
    let manifest = output.join(format!("{id}.yaml"));
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut text = format!(
        "# Built by `pannus build` from {diff} against {src}.\npatch: {id}\nversion: {version}\ndescription: {desc}\n\
         target:\n  object: {obj}\n  build_id: {build_id}\nmodule:\n  path: {module}\n  sha256: {sha}\n  load: mmap\nfunctions:\n",
        diff = diff_path.display(),
        src = source.display(),
        version = q(o.version.as_deref().unwrap_or("1")),
        desc = q(&format!("Built from {}", diff_path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default())),
        obj = q(&object_path.to_string_lossy()),
        module = q(&format!("{id}.so")),
    );
    for (target, replacement) in &made.functions {
        text.push_str(&format!("  - target: {}\n    replacement: {}\n", q(target), q(replacement)));
    }
    text.push_str("requires: []\ntrial:\n  duration: 5m\n  on_expiry: commit\n");
    std::fs::write(&manifest, text).map_err(io(manifest.display()))?;
    crate::manifest::Manifest::load(&manifest).map_err(|e| e.context("the manifest pannus build wrote"))?;
    timings.insert("link", ms(t));
    timings.insert("total", ms(started));
    report.module = Some(so);
    report.manifest = Some(manifest);
    report.timings_ms = timings;
    Ok(report)
}
