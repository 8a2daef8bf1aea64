//! Pre-flight: every check that apply and check make, touching nothing, in four parts: the
//! module, the target object, the functions, and the process. The parts that need no process
//! are also what `pannus manifest check` and `apply --all`'s planning run, so that each rule is
//! written once.

use super::symbols::{self, InProcess, RequiredPatch, Role, Scope, Value};
use super::targets;
use super::{CheckLine, Session, Shared};
use crate::elf::{Object, SymKind, Symbol};
use crate::error::{Error, Result};
use crate::manifest::{LoadMethod, Manifest};
use crate::registry::{self, Registry};
use crate::target::Loaded;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// How a function of the patch resolves in the target.
#[derive(Debug, Clone)]
pub struct PreparedFn {
    pub target: String,
    pub replacement: String,
    /// For an indirect function: the implementation patched (its name, or where it lies in the
    /// object when unnamed), and whether the process uses it.
    pub implementation: Option<String>,
    pub in_use: Option<bool>,
    pub address: u64,
    pub size: u64,
    pub replacement_vaddr: u64,
    pub replacement_size: u64,
}

impl PreparedFn {
    /// The entry patched: the target, or `strlen → __strlen_avx2` for an implementation of an
    /// indirect function.
    pub fn label(&self) -> String {
        match &self.implementation {
            Some(i) => format!("{} → {i}", self.target),
            None => self.target.clone(),
        }
    }
}

/// Everything checked and resolved before anything is done to the target.
pub struct Prepared {
    pub manifest: Manifest,
    pub module: Arc<Object>,
    pub object: Loaded,
    pub functions: Vec<PreparedFn>,
    /// Module globals bound to the target's own data instead.
    pub dropped: Vec<String>,
    /// Where each symbol the module's relocations name comes from (load: mmap), by index
    /// into the module's `.dynsym`.
    pub(super) symbols: HashMap<usize, Value>,
}

// ---------------------------------------------------------------- the module

/// The module: its checksum is the manifest's, it is a shared object, and the manifest's load
/// method can load it. Returns it with the lines of the checks passed.
pub fn module_checks(m: &Manifest) -> Result<(Object, Vec<CheckLine>)> {
    let (module, sum) = verified_module(&m.module.path, &m.module.sha256, "the manifest")?;
    let lines = module_lines(m, &module, &sum)?;
    Ok((module, lines))
}

/// [`module_checks`], the module read, checksummed and parsed once per run when `shared`.
fn module_checks_shared(m: &Manifest, shared: Option<&Shared>) -> Result<(Arc<Object>, Vec<CheckLine>)> {
    let Some(shared) = shared else {
        return module_checks(m).map(|(module, lines)| (Arc::new(module), lines));
    };
    let (module, sum) = shared.module(&m.module.path, &m.module.sha256, || {
        verified_module(&m.module.path, &m.module.sha256, "the manifest")
    })?;
    let lines = module_lines(m, &module, &sum)?;
    Ok((module, lines))
}

/// The module's checks that need its parse: its load method can load it. Returns the lines of
/// the checks passed.
fn module_lines(m: &Manifest, module: &Object, sum: &str) -> Result<Vec<CheckLine>> {
    let path = &m.module.path;
    if module.has_tls && m.module.load != LoadMethod::Dlopen {
        return Err(Error::bad_input(format!(
            "patch module {}: uses thread-local storage, which load: mmap does not support",
            path.display()
        ))
        .hint("use load: dlopen, where the target's dynamic linker sets up the module's TLS"));
    }
    Ok(vec![
        ok("module checksum", format!("sha256 {sum}")),
        ok(
            "module",
            format!("{} ({} shared object, {} relocations)", path.display(), module.arch, module.relocs.len()),
        ),
    ])
}

/// The patch module file at `path`, whose checksum must be `sha256` (as `whose` says: the
/// manifest, or root's record of an applied patch), and a shared object. Returns it and its
/// checksum.
fn verified_module(path: &Path, sha256: &str, whose: &str) -> Result<(Object, String)> {
    // Read once: the bytes checksummed are the bytes parsed, and the bytes handed to the target.
    let bytes = crate::elf::read_file(path, "patch module")
        .map_err(|e| e.hint("check module.path; a relative path is taken from the manifest's folder"))?;
    let sum = crate::elf::sha256(&bytes);
    if sum != sha256 {
        return Err(Error::bad_input(format!(
            "patch module {}: checksum mismatch: {whose} says sha256 {sha256}, the file has {sum}",
            path.display()
        ))
        .hint("the module is not the one the manifest was written for; get the right file or a new manifest"));
    }
    let module = Object::parse(path, bytes)
        .map_err(|what| Error::bad_input(format!("patch module {}: {what}", path.display())))?;
    if !module.is_dyn {
        return Err(Error::bad_input(format!("patch module {}: not a shared object", path.display()))
            .hint("build it with gcc -shared -fPIC"));
    }
    Ok((module, sum))
}

/// The function `name` of the patch module, as a replacement: a function (or, where the
/// target's dynamic linker resolves it, `load: dlopen`, an indirect function).
pub fn replacement_symbol<'o>(module: &'o Object, name: &str, load: LoadMethod) -> Result<&'o Symbol> {
    match module.lookup(name) {
        Ok(Some(s)) if s.kind == SymKind::Func || (load == LoadMethod::Dlopen && s.kind == SymKind::Ifunc) => Ok(s),
        Ok(Some(s)) => Err(Error::precondition(format!(
            "symbol `{name}` in patch module {} is not a function ({:?})",
            module.path.display(),
            s.kind
        ))),
        _ => Err(Error::precondition(format!(
            "patch module {} does not define function `{name}`",
            module.path.display()
        ))),
    }
}

// ---------------------------------------------------------------- the target object

/// The one build-id rule: the target object on disk is the build the manifest was made for.
pub fn build_id_matches(path: &Path, object: &Object, want: &str) -> Result<()> {
    match object.build_id.as_deref() {
        Some(id) if id == want => Ok(()),
        found => Err(Error::precondition(format!(
            "build-id mismatch: {} has {}, the manifest is for {want}",
            path.display(),
            found.unwrap_or("no build-id")
        ))
        .hint("this patch was built for another build of the program; do not apply it here")),
    }
}

pub(super) fn ok(check: &str, detail: String) -> CheckLine {
    CheckLine { check: check.into(), ok: true, detail }
}

impl Session<'_> {
    /// Pre-flight only: the checks and the entry decisions, as `pannus check` shows them.
    pub fn check(&mut self, m: &Manifest) -> (Vec<CheckLine>, Result<()>) {
        let mut lines = Vec::new();
        let result = (|| -> Result<()> {
            let reg = self.registry()?;
            let p = self.prepare(m, &reg, &mut lines)?;
            let (lo, span) = p.module.span();
            let replacements: Vec<u64> = match m.module.load {
                LoadMethod::Mmap => {
                    let bias = self.choose_base(&p, span - lo).unwrap_or(0).wrapping_sub(lo);
                    p.functions.iter().map(|f| bias.wrapping_add(f.replacement_vaddr)).collect()
                }
                // Where the target's dynamic linker puts the module is known only after loading;
                // a replacement out of reach is then reached through a stub near the target
                // object: plan for a jump to there.
                LoadMethod::Dlopen => p.functions.iter().map(|_| p.object.lo).collect(),
            };
            let plans = self.entry_plans(&p, &replacements)?;
            for (f, plan) in p.functions.iter().zip(&plans) {
                lines.push(CheckLine { check: format!("entry {}", f.label()), ok: true, detail: plan.describe() });
            }
            Ok(())
        })();
        if let Err(e) = &result {
            lines.push(CheckLine { check: "refused".into(), ok: false, detail: e.message.clone() });
        }
        (lines, result)
    }

    /// Every check apply makes, touching nothing. Each check passed is pushed to `lines`; the
    /// first that fails is returned as the error.
    pub fn prepare(&mut self, m: &Manifest, reg: &Registry, lines: &mut Vec<CheckLine>) -> Result<Prepared> {
        self.arch_checks(m, lines)?;
        let (module, passed) = module_checks_shared(m, self.engine.shared.as_deref())?;
        lines.extend(passed);
        let object = self.object_checks(m, lines)?;
        let has_registry = registry::locate(&self.target.maps).is_some();
        lines.push(ok("process", self.process_checks(has_registry, m.module.load)?));
        self.registry_checks(m, reg, lines)?;
        let functions = targets::function_checks(&mut self.target, m, &module, &object, lines)?;
        if m.module.load == LoadMethod::Dlopen {
            // The target's dynamic linker links the module, by its own rules.
            lines.push(ok("symbols", "resolved by the target's dynamic linker (load: dlopen)".into()));
            let (dropped, symbols) = (Vec::new(), HashMap::new());
            return Ok(Prepared { manifest: m.clone(), module, object, functions, dropped, symbols });
        }
        let (dropped, symbols) = self.symbol_checks(m, reg, &module, &object, lines)?;
        Ok(Prepared { manifest: m.clone(), module, object, functions, dropped, symbols })
    }

    /// The module is built for the architecture the process runs, and pannus can patch that
    /// architecture. Read from the module's header alone, before it is parsed: a module of
    /// another class or machine is named as such, not as a malformed x86-64 object.
    fn arch_checks(&self, m: &Manifest, lines: &mut Vec<CheckLine>) -> Result<()> {
        let (pid, name) = (self.target.pid, &self.target.name);
        let module = std::fs::File::open(&m.module.path).ok().as_ref().and_then(pannus_kernel::Arch::of_file);
        if let (Some(module), Some(process)) = (module, self.target.arch) {
            if module != process {
                let build = match process {
                    pannus_kernel::Arch::I386 => "build the module for it with gcc -m32 -shared -fPIC",
                    pannus_kernel::Arch::X86_64 => "build the module for it with gcc -shared -fPIC (without -m32)",
                    _ => "build the module for the process's architecture",
                };
                return Err(Error::bad_input(format!(
                    "patch module {} is built for {module}, but process {pid} ({name}) runs {process}: a module goes \
                     only into a process of its own architecture",
                    m.module.path.display()
                ))
                .hint(build));
            }
        }
        self.target.require_patchable("patching it")?;
        if let (Some(_), Some(arch)) = (module, self.target.arch) {
            lines.push(ok("architecture", format!("process {pid} runs {arch}, as the module is built for")));
        }
        Ok(())
    }

    /// The target object: mapped by the process, the manifest's build on disk and in memory.
    fn object_checks(&mut self, m: &Manifest, lines: &mut Vec<CheckLine>) -> Result<Loaded> {
        let object = self.target.find_object(&m.target.object)?;
        build_id_matches(&m.target.object, &object.object, &m.target.build_id)?;
        if self.target.build_id_in_memory(&object).is_none() {
            return Err(Error::precondition(format!(
                "process {} runs another copy of {} than the file on disk (build-id in memory differs)",
                self.target.pid,
                m.target.object.display()
            ))
            .hint("the file was replaced after the process started; restart it or patch the running build"));
        }
        lines.push(ok(
            "target object",
            format!("{} mapped at {:#x}, build-id {}", object.mapped_path, object.lo, m.target.build_id),
        ));
        Ok(object)
    }

    /// What can make patching impossible whatever the patch: another tracer, and seccomp filters
    /// that would refuse the system calls pannus makes inside the process. Found before anything
    /// is done, and explained.
    fn process_checks(&self, has_registry: bool, load: LoadMethod) -> Result<String> {
        let pid = self.target.pid;
        if let Some(t) = pannus_kernel::tracer_of(pid).filter(|&t| t != 0) {
            let name = std::fs::read_to_string(format!("/proc/{t}/comm")).unwrap_or_default();
            return Err(Error::precondition(format!("process {pid} is being traced by process {t} ({})", name.trim()))
                .hint("a debugger or tracer holds it: detach it first, then patch"));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(str::trim).unwrap_or("0");
        let seccomp = match mode {
            "0" => "no seccomp filter".to_string(),
            "1" => {
                return Err(Error::precondition(format!(
                    "process {pid} runs in seccomp strict mode: only read, write, exit and sigreturn are allowed"
                ))
                .hint("this process cannot be patched live; restart it with the fix"))
            }
            _ => {
                let filters = pannus_kernel::read_seccomp_filters(pid).map_err(|e| match e {
                    // Its main thread did not stop in time: busy, naming it and where it is.
                    pannus_kernel::Error::NotStopped { .. } => {
                        Error::from(e).context("reading the process's seccomp filters")
                    }
                    e => Error::precondition(format!("process {pid} has seccomp filters that pannus cannot read: {e}"))
                        .hint("run pannus as root (reading filters needs CAP_SYS_ADMIN)"),
                })?;
                let calls: Vec<crate::seccomp::Call> = crate::seccomp::pannus_calls()
                    .into_iter()
                    // memfd_create makes the registry and hands the module over (load: mmap can
                    // do without: anonymous memory filled with the same bytes); ftruncate only
                    // sizes a new registry.
                    .filter(|c| match c.name {
                        "ftruncate" => !has_registry,
                        "memfd_create" => !has_registry || load == LoadMethod::Dlopen,
                        _ => true,
                    })
                    .collect();
                // A 32-bit process makes them by their i386 numbers.
                let calls = if self.target.word() == 4 { crate::seccomp::for_i386(calls) } else { calls };
                let blocked = crate::seccomp::blocked(&filters, &calls);
                if !blocked.is_empty() {
                    let list: Vec<String> = blocked
                        .iter()
                        .map(|(c, v)| match v {
                            crate::seccomp::Verdict::Deny(what) => format!("{} (the filter would {what})", c.name),
                            _ => format!("{} (the filter cannot be evaluated)", c.name),
                        })
                        .collect();
                    return Err(Error::precondition(format!(
                        "process {pid}'s seccomp filter refuses system calls pannus must make inside it: {}",
                        list.join(", ")
                    ))
                    .hint("this process cannot be patched live with its current filter; nothing was done"));
                }
                format!("{} seccomp filter(s) allow pannus's system calls", filters.len())
            }
        };
        Ok(format!("not traced; {seccomp}; W^X: no mapping is ever writable and executable"))
    }

    /// The process's registry: the patch is not applied twice, and what it requires is active.
    fn registry_checks(&self, m: &Manifest, reg: &Registry, lines: &mut Vec<CheckLine>) -> Result<()> {
        let pid = self.target.pid;
        if let Some(p) = reg.get(&m.patch).filter(|p| p.state.is_applied()) {
            return Err(Error::precondition(format!(
                "patch `{}` is already applied to process {pid} (state {})",
                m.patch, p.state
            ))
            .hint(format!("roll it back first: pannus rollback --pid {pid} {}", m.patch)));
        }
        for r in &m.requires {
            match reg.get(r) {
                Some(p) if p.state.is_active() => {}
                Some(p) => {
                    return Err(Error::precondition(format!(
                        "patch `{}` requires `{r}`, which is {} in process {pid}",
                        m.patch, p.state
                    )))
                }
                None => {
                    return Err(Error::precondition(format!(
                        "patch `{}` requires `{r}`, which is not applied in process {pid}",
                        m.patch
                    ))
                    .hint(format!("apply `{r}` first")))
                }
            }
        }
        if !m.requires.is_empty() {
            lines.push(ok("dependencies", m.requires.join(", ")));
        }
        Ok(())
    }

    /// Stage 2's symbols (load: mmap): the module's globals the target already has, bound to
    /// the target's; every relocation of a supported type; every symbol they name resolved.
    fn symbol_checks(
        &mut self,
        m: &Manifest,
        reg: &Registry,
        module: &Object,
        object: &Loaded,
        lines: &mut Vec<CheckLine>,
    ) -> Result<(Vec<String>, HashMap<usize, Value>)> {
        let mut dropped = Vec::new();
        for s in module.dynsyms.iter().filter(|s| s.defined && s.global && s.kind == SymKind::Object) {
            if let Ok(Some(t)) = object.object.lookup(&s.name) {
                if t.kind == SymKind::Object {
                    dropped.push(s.name.clone());
                }
            }
        }
        if !dropped.is_empty() {
            lines.push(ok("shared data", format!("bound to the target's own: {}", dropped.join(", "))));
        }
        // A required patch's module file is root's record of it (the path in the process's
        // registry is the target's to write), checked against the checksum recorded with it.
        let mut required = Vec::new();
        for p in m.requires.iter().filter_map(|r| reg.get(r)) {
            let entry = crate::ledger::required(&self.engine.state_dir, self.target.pid, &p.patch)?;
            if entry.manifest_digest != p.manifest_digest || entry.module_sha256 != p.module_sha256 {
                return Err(Error::precondition(format!(
                    "required patch `{}` in process {} is not the application this host recorded (another manifest \
                     or module)",
                    p.patch, self.target.pid
                ))
                .hint("apply the required patch again with this host's pannus and state folder"));
            }
            let whose = format!("the record of `{}` in the state folder", p.patch);
            let (o, _) = verified_module(&entry.module, &entry.module_sha256, &whose)?;
            let bias = p.module_base.wrapping_sub(o.span().0);
            required.push(RequiredPatch { object: Arc::new(o), bias });
        }
        let others = self.target.loaded_objects();
        let libraries: Vec<InProcess> =
            others.iter().filter(|o| o.lo != object.lo).map(|o| InProcess { object: o, role: Role::Library }).collect();
        let target = InProcess { object, role: Role::TargetObject };
        let mut scopes: Vec<&dyn Scope> = required.iter().map(|r| r as &dyn Scope).collect();
        scopes.push(&target);
        scopes.extend(libraries.iter().map(|l| l as &dyn Scope));
        let in_module = |e: Error| e.context(format!("patch module {}", m.module.path.display()));
        let mut symbols = HashMap::new();
        for r in &module.relocs {
            let (supported, name): (&[u32], fn(u32) -> String) = match module.arch {
                pannus_kernel::Arch::I386 => (&super::reloc386::SUPPORTED, super::reloc386::reloc_name),
                _ => (&symbols::SUPPORTED, symbols::reloc_name),
            };
            if !supported.contains(&r.rtype) {
                let what = r.sym.map(|i| format!(" for `{}`", module.dynsyms[i].name)).unwrap_or_default();
                return Err(in_module(Error::bad_input(format!(
                    "relocation {} at {:#x}{what} is not supported by load: mmap",
                    name(r.rtype),
                    r.offset
                )))
                .hint("use load: dlopen, where the target's dynamic linker applies it"));
            }
            let Some(i) = r.sym else { continue };
            if symbols.contains_key(&i) {
                continue;
            }
            let s = &module.dynsyms[i];
            let value = symbols::resolve(s, &dropped, &scopes, &object.mapped_path).map_err(in_module)?;
            symbols.insert(i, value);
        }
        lines.push(ok("symbols", format!("{} resolved", symbols.len())));
        Ok((dropped, symbols))
    }
}
