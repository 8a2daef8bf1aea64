//! The engine: the four PANNUS stages, rollback, commit and status, as one API that the CLI and
//! the console both call. Every operation takes the per-process lock, reads the truth from the
//! target's registry, and records what it did in the journal.

use crate::elf::{Object, SymKind};
use crate::error::{Error, Kind, Result};
use crate::journal::Journal;
use crate::lock::ProcessLock;
use crate::manifest::{Consistency, LoadMethod, Manifest, OnExpiry};
use crate::registry::{self, FunctionRecord, PatchRecord, Registry, State};
use crate::safety::{self, EntryPlan, ThreadView};
use crate::target::{Loaded, Target};
use crate::unwind::{Backtrace, Unwinder};
use pannus_kernel::{maps, nr, page_ceil, page_floor, Hijack, World};
use serde::Serialize;
use std::collections::HashMap;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The four stages of applying a patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Load,
    Link,
    Init,
    Activate,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Load, Stage::Link, Stage::Init, Stage::Activate];
    pub fn number(self) -> usize {
        self as usize + 1
    }
    pub fn name(self) -> &'static str {
        match self {
            Stage::Load => "load",
            Stage::Link => "link",
            Stage::Init => "init",
            Stage::Activate => "activate",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stage {} ({})", self.number(), self.name())
    }
}

/// What the engine tells its caller while it works, and asks before each stage.
pub trait Observer {
    /// Asked before each stage with exactly what it will do; `false` cancels the apply, which
    /// then undoes the stages already done.
    fn confirm(&mut self, _stage: Stage, _plan: &str) -> bool {
        true
    }
    /// A line of progress.
    fn progress(&mut self, _stage: Option<Stage>, _msg: &str) {}
}

/// An observer that says yes to everything and prints nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// One pre-flight check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckLine {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct Engine {
    pub state_dir: PathBuf,
    /// How long stage 3 may run the module's init functions before it is stopped.
    pub init_timeout: Duration,
    /// How long to wait for another pannus working on the same process.
    pub lock_wait: Duration,
}

impl Engine {
    pub fn new(state_dir: PathBuf) -> Engine {
        Engine { state_dir, init_timeout: Duration::from_secs(5), lock_wait: Duration::from_secs(10) }
    }
    pub fn journal(&self) -> Journal {
        Journal::open(&self.state_dir)
    }
}

/// How a function of the patch resolves in the target.
#[derive(Debug, Clone)]
pub struct PreparedFn {
    pub target: String,
    pub replacement: String,
    pub address: u64,
    pub size: u64,
    pub replacement_vaddr: u64,
    pub replacement_size: u64,
}

/// Where a symbol the module refers to comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    /// Defined by the module itself at this virtual address.
    Module(u64),
    /// An absolute run-time address in the target.
    Abs(u64),
    /// A GNU indirect function: the resolver's address; the resolver is called in stage 2.
    Ifunc(u64),
    /// An undefined weak symbol.
    Zero,
}

/// Everything checked and resolved before anything is done to the target.
pub struct Prepared {
    pub manifest: Manifest,
    pub module: Arc<Object>,
    pub object: Loaded,
    pub functions: Vec<PreparedFn>,
    /// Module globals bound to the target's own data instead.
    pub dropped: Vec<String>,
    symbols: HashMap<usize, (Value, String)>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn reloc_name(t: u32) -> String {
    let name = goblin::elf::reloc::r_to_str(t, goblin::elf::header::EM_X86_64);
    format!("R_X86_64_{}", name.trim_start_matches("R_").trim_start_matches("X86_64_"))
}

const R_NONE: u32 = 0;
const R_64: u32 = 1;
const R_PC32: u32 = 2;
const R_PLT32: u32 = 4;
const R_GLOB_DAT: u32 = 6;
const R_JUMP_SLOT: u32 = 7;
const R_RELATIVE: u32 = 8;

/// A process opened for one command, under its lock.
pub struct Session<'e> {
    pub engine: &'e Engine,
    pub target: Target,
    _lock: ProcessLock,
    gadgets: Option<pannus_kernel::Gadgets>,
    /// How long each step of the last apply or rollback took (confirmations excluded):
    /// `preflight`, `load`, `link`, `init`, `activate`, and `stopped`, the time every thread
    /// was stopped for the switch that succeeded.
    pub timings: Vec<(&'static str, Duration)>,
    /// When every thread was stopped during the last apply or rollback, one entry per stop
    /// (retries included): what a service's own latency figures can be matched against.
    pub stops: Vec<StopWindow>,
}

/// One stop of every thread of the target, from the first interrupt to the last thread let go,
/// on the system's `CLOCK_MONOTONIC` (the clock services time their own latency with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StopWindow {
    pub start_monotonic_ns: u64,
    pub end_monotonic_ns: u64,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (read through the vDSO: no system call).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl<'e> Session<'e> {
    pub fn open(engine: &'e Engine, pid: i32) -> Result<Session<'e>> {
        let target = Target::open(pid)?;
        let lock = ProcessLock::acquire(&engine.state_dir, pid, engine.lock_wait)?;
        Ok(Session { engine, target, _lock: lock, gadgets: None, timings: Vec::new(), stops: Vec::new() })
    }

    pub fn registry(&self) -> Result<Registry> {
        registry::read_from(&self.target.mem, &self.target.maps)
    }

    fn journal(&self, action: &str, patch: Option<&str>, outcome: &str, detail: &str) {
        let _ = self.engine.journal().record(action, self.target.pid, &self.target.name, patch, outcome, detail);
    }

    /// Borrows one thread of the target: the main thread (most often idle in an event loop),
    /// or the first live thread when the main thread has exited.
    fn hijack(&mut self) -> Result<Hijack<'_>> {
        let gadgets = match self.gadgets {
            Some(g) => g,
            None => {
                let cached = self
                    .registry()
                    .ok()
                    .and_then(|r| r.gadgets)
                    .map(|[syscall_ret, ret, restorer]| pannus_kernel::Gadgets { syscall_ret, ret, restorer })
                    .filter(|g| maps::verify_gadgets(&self.target.mem, g));
                let g = cached.map(Ok).unwrap_or_else(|| {
                    maps::find_gadgets(&self.target.mem, &self.target.maps).ok_or_else(|| {
                        Error::precondition(format!(
                            "process {}: no rt_sigreturn restorer and `syscall; ret` found in its C library",
                            self.target.pid
                        ))
                        .hint("pannus patches dynamically linked glibc or musl programs")
                    })
                })?;
                self.gadgets = Some(g);
                g
            }
        };
        let pid = self.target.pid;
        let tid = if thread_alive(pid, pid) {
            pid
        } else {
            pannus_kernel::list_threads(pid)?
                .into_iter()
                .find(|&t| thread_alive(pid, t))
                .ok_or(Error::precondition(format!("process {pid} has no live thread")))?
        };
        Ok(Hijack::attach(&self.target.mem, tid, gadgets)?)
    }

    fn write_registry(&mut self, reg: &Registry) -> Result<()> {
        let loc = registry::locate(&self.target.maps)
            .ok_or_else(|| Error::other(format!("process {}: registry mapping missing", self.target.pid)))?;
        match self.gadgets {
            Some(g) if reg.gadgets.is_none() => {
                let mut with = reg.clone();
                with.gadgets = Some([g.syscall_ret, g.ret, g.restorer]);
                registry::write(&self.target.mem, loc, &with)?;
            }
            _ => registry::write(&self.target.mem, loc, reg)?,
        }
        pannus_kernel::fault::point("registry written");
        Ok(())
    }

    // ---------------------------------------------------------------- pre-flight

    /// Every check apply makes, touching nothing. Each check passed is pushed to `lines`; the
    /// first that fails is returned as the error.
    pub fn prepare(&mut self, m: &Manifest, reg: &Registry, lines: &mut Vec<CheckLine>) -> Result<Prepared> {
        let mut ok = |check: &str, detail: String| lines.push(CheckLine { check: check.into(), ok: true, detail });
        let pid = self.target.pid;

        // Module checksum, before anything else.
        let sum = crate::elf::sha256_file(&m.module.path)
            .map_err(|e| Error::bad_input(format!("patch module {}: cannot read: {e}", m.module.path.display())))?;
        if sum != m.module.sha256 {
            return Err(Error::bad_input(format!(
                "patch module {}: checksum mismatch: the manifest says sha256 {}, the file has {sum}",
                m.module.path.display(),
                m.module.sha256
            ))
            .hint("the module is not the one the manifest was written for; get the right file or a new manifest"));
        }
        ok("module checksum", format!("sha256 {sum}"));
        let module = Arc::new(Object::load(&m.module.path, "patch module")?);
        if !module.is_dyn {
            return Err(Error::bad_input(format!("patch module {}: not a shared object", m.module.path.display()))
                .hint("build it with gcc -shared -fPIC"));
        }
        let dlopen = m.module.load == LoadMethod::Dlopen;
        if module.has_tls && !dlopen {
            return Err(Error::bad_input(format!(
                "patch module {}: uses thread-local storage, which load: mmap does not support",
                m.module.path.display()
            ))
            .hint("use load: dlopen, where the target's dynamic linker sets up the module's TLS"));
        }
        ok(
            "module",
            format!("{} (ELF x86-64 shared object, {} relocations)", m.module.path.display(), module.relocs.len()),
        );

        // Target object, build-id on disk and in memory.
        let object = self.target.find_object(&m.target.object)?;
        let file_id = object.object.build_id.clone().unwrap_or_default();
        if file_id != m.target.build_id {
            return Err(Error::precondition(format!(
                "build-id mismatch: {} has {}, the manifest is for {}",
                m.target.object.display(),
                if file_id.is_empty() { "no build-id" } else { &file_id },
                m.target.build_id
            ))
            .hint("this patch was built for another build of the program; do not apply it here"));
        }
        if self.target.build_id_in_memory(&object).is_none() {
            return Err(Error::precondition(format!(
                "process {pid} runs another copy of {} than the file on disk (build-id in memory differs)",
                m.target.object.display()
            ))
            .hint("the file was replaced after the process started; restart it or patch the running build"));
        }
        ok("target object", format!("{} mapped at {:#x}, build-id {file_id}", object.mapped_path, object.lo));
        let process = self.process_checks(registry::locate(&self.target.maps).is_some())?;
        ok("process", process);

        // Registry: not applied twice; dependencies present.
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
            ok("dependencies", m.requires.join(", "));
        }

        // Functions.
        let mut functions = Vec::new();
        for f in &m.functions {
            let sym = match object.object.lookup(&f.target) {
                Ok(Some(s)) => s,
                Ok(None) => {
                    return Err(Error::precondition(format!(
                        "symbol `{}` not found in {}",
                        f.target,
                        m.target.object.display()
                    ))
                    .hint("check functions[].target; the object must keep its symbol table (not stripped) for file-local functions"))
                }
                Err(addrs) => {
                    return Err(Error::precondition(format!(
                        "symbol `{}` is ambiguous in {}: {} file-local definitions at {}",
                        f.target,
                        m.target.object.display(),
                        addrs.len(),
                        addrs.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>().join(", ")
                    )))
                }
            };
            if sym.kind != SymKind::Func {
                return Err(Error::precondition(format!(
                    "symbol `{}` in {} is not a function ({:?})",
                    f.target,
                    m.target.object.display(),
                    sym.kind
                )));
            }
            if sym.size == 0 {
                return Err(Error::precondition(format!(
                    "function `{}` in {} has no size in the symbol table",
                    f.target,
                    m.target.object.display()
                )));
            }
            let rep = match module.lookup(&f.replacement) {
                Ok(Some(s)) if s.kind == SymKind::Func || (dlopen && s.kind == SymKind::Ifunc) => s,
                _ => {
                    return Err(Error::precondition(format!(
                        "patch module {} does not define function `{}`",
                        m.module.path.display(),
                        f.replacement
                    )))
                }
            };
            functions.push(PreparedFn {
                target: f.target.clone(),
                replacement: f.replacement.clone(),
                address: object.addr(sym.value),
                size: sym.size,
                replacement_vaddr: rep.value,
                replacement_size: rep.size,
            });
            ok(
                "function",
                format!("{} at {:#x} ({} bytes) -> {}", f.target, object.addr(sym.value), sym.size, f.replacement),
            );
        }

        if dlopen {
            // The target's dynamic linker links the module, by its own rules.
            ok("symbols", "resolved by the target's dynamic linker (load: dlopen)".into());
            return Ok(Prepared {
                manifest: m.clone(),
                module,
                object,
                functions,
                dropped: Vec::new(),
                symbols: HashMap::new(),
            });
        }

        // Globals the module defines that the target already has: bind to the target's.
        let mut dropped = Vec::new();
        for s in module.dynsyms.iter().filter(|s| s.defined && s.global && s.kind == SymKind::Object) {
            if let Ok(Some(t)) = object.object.lookup(&s.name) {
                if t.kind == SymKind::Object {
                    dropped.push(s.name.clone());
                }
            }
        }
        if !dropped.is_empty() {
            ok("shared data", format!("bound to the target's own: {}", dropped.join(", ")));
        }

        // Symbols for the relocations.
        let requires: Vec<(Arc<Object>, u64)> = m
            .requires
            .iter()
            .filter_map(|r| reg.get(r))
            .filter_map(|p| {
                let o = Object::load(std::path::Path::new(&p.module), "module").ok()?;
                let bias = p.module_base.wrapping_sub(o.span().0);
                Some((Arc::new(o), bias))
            })
            .collect();
        let others = self.target.loaded_objects();
        let mut symbols = HashMap::new();
        for r in &module.relocs {
            match r.rtype {
                R_NONE | R_64 | R_PC32 | R_PLT32 | R_GLOB_DAT | R_JUMP_SLOT | R_RELATIVE => {}
                t => {
                    let what = r.sym.map(|i| format!(" for `{}`", module.dynsyms[i].name)).unwrap_or_default();
                    return Err(Error::bad_input(format!(
                        "patch module {}: relocation {} at {:#x}{what} is not supported by load: mmap",
                        m.module.path.display(),
                        reloc_name(t),
                        r.offset
                    )));
                }
            }
            let Some(i) = r.sym else { continue };
            if symbols.contains_key(&i) {
                continue;
            }
            let s = &module.dynsyms[i];
            let resolved = resolve(s, &dropped, &requires, &object, &others, &m.patch)
                .map_err(|e| e.context(format!("patch module {}", m.module.path.display())))?;
            symbols.insert(i, resolved);
        }
        ok("symbols", format!("{} resolved", symbols.len()));
        Ok(Prepared { manifest: m.clone(), module, object, functions, dropped, symbols })
    }

    /// What can make patching impossible whatever the patch: another tracer, and seccomp filters
    /// that would refuse the system calls pannus makes inside the process. Found before anything
    /// is done, and explained.
    fn process_checks(&self, has_registry: bool) -> Result<String> {
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
                let filters = pannus_kernel::read_seccomp_filters(pid).map_err(|e| {
                    Error::precondition(format!("process {pid} has seccomp filters that pannus cannot read: {e}"))
                        .hint("run pannus as root (reading filters needs CAP_SYS_ADMIN)")
                })?;
                let calls: Vec<crate::seccomp::Call> = crate::seccomp::pannus_calls()
                    .into_iter()
                    .filter(|c| !has_registry || !matches!(c.name, "memfd_create" | "ftruncate"))
                    .collect();
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

    /// The entry plan of each function, from its current bytes in the process.
    fn entry_plans(&self, p: &Prepared, replacements: &[u64]) -> Result<Vec<EntryPlan>> {
        p.functions
            .iter()
            .zip(replacements)
            .map(|(f, &to)| {
                let size = f.size.min(1 << 20) as usize;
                let code = self.target.mem.read_vec(f.address, size)?;
                let pad = self.target.mem.read_partial(f.address.saturating_sub(16), 16);
                safety::plan_entry(&f.target, f.address, &code, &pad, to)
            })
            .collect()
    }

    /// Code that is "the old function" for the `function` rule: each target function, and the
    /// replacement an applied patch currently sends it to.
    fn old_code_ranges(&self, p: &Prepared, reg: &Registry) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        for f in &p.functions {
            out.push((f.target.clone(), f.address, f.address + f.size));
            for r in reg.applied() {
                for g in r.functions.iter().filter(|g| g.address == f.address && g.replacement_size > 0) {
                    out.push((
                        g.replacement.clone(),
                        g.replacement_address,
                        g.replacement_address + g.replacement_size,
                    ));
                }
            }
        }
        out
    }

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
                // Where the target's dynamic linker will put the module is known only after
                // loading: plan for the far case (the 14-byte jump), which needs the most room.
                LoadMethod::Dlopen => p.functions.iter().map(|_| 0x7f00_0000_0000).collect(),
            };
            let plans = self.entry_plans(&p, &replacements)?;
            for (f, plan) in p.functions.iter().zip(&plans) {
                lines.push(CheckLine { check: format!("entry {}", f.target), ok: true, detail: plan.describe() });
            }
            Ok(())
        })();
        if let Err(e) = &result {
            lines.push(CheckLine { check: "refused".into(), ok: false, detail: e.message.clone() });
        }
        (lines, result)
    }

    /// A free range for the module within ±2 GiB of the target object, or anywhere.
    fn choose_base(&self, p: &Prepared, size: u64) -> Option<u64> {
        const REACH: u64 = 0x7ff0_0000;
        let o = &p.object;
        maps::find_hole(
            &self.target.maps,
            size,
            o.hi.saturating_sub(REACH),
            o.lo.saturating_add(REACH).saturating_sub(size),
            o.lo,
        )
        .or_else(|| maps::find_hole(&self.target.maps, size, 0, u64::MAX, o.lo))
    }

    // ---------------------------------------------------------------- apply

    /// Applies a patch: pre-flight checks, then the four stages, each confirmed by `obs`.
    /// On any failure or cancellation, the stages already done are undone and the target is
    /// left as it was.
    pub fn apply(&mut self, m: &Manifest, obs: &mut dyn Observer) -> Result<PatchRecord> {
        let result = self.apply_inner(m, obs);
        match &result {
            Ok(r) => self.journal("apply", Some(&m.patch), "ok", &format!("state {}", r.state)),
            Err(e) => self.journal("apply", Some(&m.patch), outcome_of(e), &e.message),
        }
        result
    }

    fn apply_inner(&mut self, m: &Manifest, obs: &mut dyn Observer) -> Result<PatchRecord> {
        self.timings.clear();
        self.stops.clear();
        let t0 = Instant::now();
        let mut reg = self.registry()?;
        let mut lines = Vec::new();
        let p = self.prepare(m, &reg, &mut lines)?;
        self.timings.push(("preflight", t0.elapsed()));
        for l in &lines {
            obs.progress(None, &format!("ok  {}: {}", l.check, l.detail));
        }
        let had_registry = registry::locate(&self.target.maps).is_some();
        let record = PatchRecord {
            patch: m.patch.clone(),
            version: m.version.clone(),
            description: m.description.clone(),
            state: State::Loaded,
            seq: reg.next_seq + 1,
            requires: m.requires.clone(),
            manifest: m.source.display().to_string(),
            manifest_digest: m.digest.clone(),
            module: m.module.path.display().to_string(),
            module_sha256: m.module.sha256.clone(),
            target_object: p.object.mapped_path.clone(),
            build_id: m.target.build_id.clone(),
            module_base: 0,
            module_size: 0,
            functions: Vec::new(),
            applied_at: now_secs(),
            trial_deadline: None,
            trial_seconds: m.trial.duration.as_secs(),
            on_expiry: m.trial.on_expiry,
            ended_at: None,
            note: None,
            module_mapped: true,
            retries: m.safety.retries,
            retry_interval_ms: m.safety.retry_interval.as_millis() as u64,
            consistency: m.safety.consistency,
            health_check: m.trial.health_check.clone(),
            health: None,
            load: m.module.load,
            handle: 0,
            trampoline: 0,
            trampoline_size: 0,
            eh_frame: 0,
        };
        let undo = |s: &mut Session, reg: &mut Registry, e: Error, done: &[Stage]| -> Error {
            let undone = s.undo_apply(reg, &m.patch, had_registry);
            let mut e = e;
            match undone {
                Ok(()) if done.is_empty() => {}
                Ok(()) => {
                    e.message.push_str(&format!(
                        "\n  undone: {} (the process is as it was)",
                        done.iter().rev().map(|s| s.name()).collect::<Vec<_>>().join(", ")
                    ));
                }
                Err(u) => e.message.push_str(&format!("\n  undoing failed too: {u}")),
            }
            e
        };
        // Stages 1 to 3 mostly wait for the borrowed thread: at the normal policy (see
        // SpareCpu::pause).
        let paused = pannus_kernel::SpareCpu::pause();
        let replacements = match m.module.load {
            LoadMethod::Mmap => self.load_link_init(&p, &mut reg, record, obs, &undo)?,
            LoadMethod::Dlopen => self.load_with_dlopen(&p, &mut reg, record, obs, &undo)?,
        };
        drop(paused);
        const DONE: [Stage; 3] = [Stage::Load, Stage::Link, Stage::Init];
        // Replacements out of `jmp rel32` reach go through stubs in a page near the target.
        let targets = match self.trampolines(&p, &replacements, &mut reg) {
            Ok(t) => t,
            Err(e) => return Err(undo(self, &mut reg, e.context(Stage::Activate), &DONE)),
        };

        // Stage 4: activate.
        let plans = match self.entry_plans(&p, &targets) {
            Ok(pl) => pl,
            Err(e) => return Err(undo(self, &mut reg, e.context(Stage::Activate), &DONE)),
        };
        let plan = p
            .functions
            .iter()
            .zip(&plans)
            .map(|(f, pl)| format!("{} -> {}: {}", f.target, f.replacement, pl.describe()))
            .collect::<Vec<_>>()
            .join("; ");
        let plan = format!("stop every thread, check none is inside the bytes to overwrite, write: {plan}");
        if !obs.confirm(Stage::Activate, &plan) {
            return Err(undo(self, &mut reg, cancelled(Stage::Activate), &DONE));
        }
        if let Some(r) = reg.get_mut(&m.patch) {
            r.state = State::Activating;
            r.functions = p
                .functions
                .iter()
                .zip(&plans)
                .zip(replacements.iter().zip(&targets))
                .map(|((f, pl), (&to, &via))| FunctionRecord {
                    target: f.target.clone(),
                    replacement: f.replacement.clone(),
                    address: f.address,
                    replacement_address: to,
                    replacement_size: f.replacement_size,
                    via: if via == to { 0 } else { via },
                    jump: pl.jump,
                    patch_address: pl.patch_address,
                    original: hex::encode(&pl.original),
                    written: hex::encode(&pl.written),
                })
                .collect();
        }
        if let Err(e) = self.write_registry(&reg) {
            return Err(undo(self, &mut reg, e, &DONE));
        }
        let sw = Switch {
            names: p.functions.iter().map(|f| f.target.clone()).collect(),
            plans: plans.clone(),
            writes: plans.iter().map(|pl| (pl.patch_address, pl.written.clone())).collect(),
            retries: m.safety.retries,
            interval: m.safety.retry_interval,
            consistency: m.safety.consistency,
            busy_ranges: self.old_code_ranges(&p, &reg),
            module_code: Vec::new(),
        };
        let t0 = Instant::now();
        let switched = self.switch(&sw, obs);
        self.timings.push(("activate", t0.elapsed()));
        match switched {
            Ok((attempts, _)) => obs.progress(
                Some(Stage::Activate),
                &format!("{} function(s) switched in one stop (attempt {attempts})", plans.len()),
            ),
            Err(e) => return Err(undo(self, &mut reg, e.context(Stage::Activate), &DONE)),
        }
        let deadline = now_secs() + m.trial.duration.as_secs();
        if let Some(r) = reg.get_mut(&m.patch) {
            r.state = State::Trial;
            r.trial_deadline = Some(deadline);
        }
        self.write_registry(&reg)?;
        reg.get(&m.patch).cloned().ok_or_else(|| Error::other(format!("the registry lost the record of `{}`", m.patch)))
    }

    /// Where each entry jumps: the replacement itself when a `jmp rel32` reaches it (always, for
    /// the `mmap` method, which places the module near), else a 14-byte `jmp [rip+0]` stub in a
    /// page mapped near the target object (read and execute only; written through
    /// /proc/PID/mem), recorded so that rollback unmaps it.
    fn trampolines(&mut self, p: &Prepared, replacements: &[u64], reg: &mut Registry) -> Result<Vec<u64>> {
        let far: Vec<usize> = p
            .functions
            .iter()
            .zip(replacements)
            .enumerate()
            .filter(|(_, (f, &to))| i32::try_from(to.wrapping_sub(f.address + 5) as i64).is_err())
            .map(|(i, _)| i)
            .collect();
        if far.is_empty() {
            return Ok(replacements.to_vec());
        }
        let size = page_ceil(16 * far.len() as u64);
        let hint = self.choose_base(p, size).ok_or_else(|| {
            Error::precondition(format!(
                "process {}: no free page within reach of the target for jump stubs",
                self.target.pid
            ))
        })?;
        let page = {
            let mut h = self.hijack()?;
            let r = h.syscall(
                nr::MMAP,
                &[hint, size, 5, mmap::MAP_PRIVATE | mmap::MAP_ANONYMOUS | mmap::MAP_FIXED_NOREPLACE, u64::MAX, 0],
            )?;
            h.release()?;
            if r < 0 {
                return Err(registry::syscall_error("mapping the jump stubs (mmap)", r));
            }
            r as u64
        };
        if let Some(rec) = reg.get_mut(&p.manifest.patch) {
            rec.trampoline = page;
            rec.trampoline_size = size;
        }
        self.write_registry(reg)?;
        let mut targets = replacements.to_vec();
        for (k, &i) in far.iter().enumerate() {
            let stub = page + 16 * k as u64;
            let mut code = vec![0xff, 0x25, 0, 0, 0, 0];
            code.extend_from_slice(&replacements[i].to_le_bytes());
            self.target.mem.write(stub, &code)?;
            targets[i] = stub;
        }
        self.target.refresh_maps()?;
        Ok(targets)
    }

    /// Stages 1 to 3 of the `mmap` method, each confirmed and recorded. Returns the run-time
    /// address of each replacement.
    fn load_link_init(
        &mut self,
        p: &Prepared,
        reg: &mut Registry,
        mut record: PatchRecord,
        obs: &mut dyn Observer,
        undo: &Undo<'_>,
    ) -> Result<Vec<u64>> {
        let m = &p.manifest;
        let (lo, hi) = p.module.span();
        let size = hi - lo;

        // Stage 1: load.
        let base_hint = self.choose_base(p, size).ok_or_else(|| {
            Error::precondition(format!("process {}: no free address range of {size} bytes", self.target.pid))
        })?;
        let plan = format!(
            "map {} ({} bytes, {} segments) into process {} near {} at {:#x}",
            m.module.path.display(),
            size,
            p.module.segments.len(),
            self.target.pid,
            p.object.mapped_path,
            base_hint
        );
        if !obs.confirm(Stage::Load, &plan) {
            return Err(cancelled(Stage::Load));
        }
        let t0 = Instant::now();
        let base = self.reserve(base_hint, size).map_err(|e| e.context(Stage::Load))?;
        let bias = base.wrapping_sub(lo);
        self.target.refresh_maps()?;
        record.module_base = base;
        record.module_size = size;
        reg.next_seq = record.seq;
        retire(reg, &m.patch);
        reg.patches.push(record);
        if let Err(e) = self.write_registry(reg) {
            return Err(undo(self, reg, e, &[Stage::Load]));
        }
        if let Err(e) = self.map_segments(p, base) {
            return Err(undo(self, reg, e.context(Stage::Load), &[Stage::Load]));
        }
        self.target.refresh_maps()?;
        self.timings.push(("load", t0.elapsed()));
        obs.progress(Some(Stage::Load), &format!("module mapped at {base:#x}"));

        // Stage 2: link.
        let plan = format!(
            "apply {} relocations of {} ({} symbols resolved; shared data: {})",
            p.module.relocs.len(),
            m.module.path.display(),
            p.symbols.len(),
            if p.dropped.is_empty() { "none".to_string() } else { p.dropped.join(", ") }
        );
        if !obs.confirm(Stage::Link, &plan) {
            return Err(undo(self, reg, cancelled(Stage::Link), &[Stage::Load]));
        }
        let t0 = Instant::now();
        if let Err(e) = self.stage_link(p, bias) {
            return Err(undo(self, reg, e.context(Stage::Link), &[Stage::Load]));
        }
        set_state(reg, &m.patch, State::Linked);
        if let Err(e) = self.write_registry(reg) {
            return Err(undo(self, reg, e, &[Stage::Load, Stage::Link]));
        }
        self.timings.push(("link", t0.elapsed()));
        obs.progress(Some(Stage::Link), "relocations applied");

        // Stage 3: init.
        let inits = self.init_functions(p, bias)?;
        let eh_frame = self.frame_registration(p, bias);
        let plan = if inits.is_empty() {
            "the module has no init functions: nothing runs".to_string()
        } else {
            format!(
                "run {} init function(s) of the module inside process {} on one borrowed thread",
                inits.len(),
                self.target.pid
            )
        };
        if !obs.confirm(Stage::Init, &plan) {
            return Err(undo(self, reg, cancelled(Stage::Init), &[Stage::Load, Stage::Link]));
        }
        let t0 = Instant::now();
        if let Some((_, table)) = eh_frame {
            // Recorded before registering, so that whoever unloads the module deregisters it.
            if let Some(r) = reg.get_mut(&m.patch) {
                r.eh_frame = table;
            }
            if let Err(e) = self.write_registry(reg) {
                return Err(undo(self, reg, e, &[Stage::Load, Stage::Link]));
            }
        }
        if let Err(e) = self.stage_init(&inits, eh_frame) {
            return Err(undo(self, reg, e.context(Stage::Init), &[Stage::Load, Stage::Link, Stage::Init]));
        }
        set_state(reg, &m.patch, State::Initialized);
        if let Err(e) = self.write_registry(reg) {
            return Err(undo(self, reg, e, &[Stage::Load, Stage::Link, Stage::Init]));
        }
        self.timings.push(("init", t0.elapsed()));
        obs.progress(Some(Stage::Init), &format!("{} init function(s) ran", inits.len()));
        Ok(p.functions.iter().map(|f| bias.wrapping_add(f.replacement_vaddr)).collect())
    }

    /// Stages 1 to 3 of the `dlopen` method: one call of the target's own `dlopen`, so that its
    /// dynamic linker maps, links (TLS, ifuncs, symbol versions) and initialises the module and
    /// registers its exception tables; the replacements are then looked up with `dlsym`.
    fn load_with_dlopen(
        &mut self,
        p: &Prepared,
        reg: &mut Registry,
        mut record: PatchRecord,
        obs: &mut dyn Observer,
        undo: &Undo<'_>,
    ) -> Result<Vec<u64>> {
        let m = &p.manifest;
        let plan = format!(
            "call dlopen(\"{}\", RTLD_NOW) inside process {} on one borrowed thread: its dynamic linker loads, \
             links and initialises the module (stages 1 to 3 in one call)",
            m.module.path.display(),
            self.target.pid
        );
        if !obs.confirm(Stage::Load, &plan) {
            return Err(cancelled(Stage::Load));
        }
        let t0 = Instant::now();
        let names: Vec<&str> = p.functions.iter().map(|f| f.replacement.as_str()).collect();
        let (handle, addrs) = match self.dlopen(&m.module.path, &names) {
            Ok(x) => x,
            // Nothing of the module stayed; the registry this apply may have created goes too.
            Err(e) => return Err(undo(self, reg, e.context(Stage::Load), &[])),
        };
        self.target.refresh_maps()?;
        let loaded = self.target.find_object(&m.module.path);
        record.handle = handle;
        record.state = State::Initialized;
        if let Ok(l) = &loaded {
            record.module_base = l.lo;
            record.module_size = l.hi - l.lo;
        }
        reg.next_seq = record.seq;
        retire(reg, &m.patch);
        reg.patches.push(record);
        if let Err(e) = self.write_registry(reg) {
            return Err(undo(self, reg, e, &[Stage::Load, Stage::Link, Stage::Init]));
        }
        self.timings.push(("load", t0.elapsed()));
        let at = loaded.map(|l| format!(" at {:#x}", l.lo)).unwrap_or_default();
        obs.progress(Some(Stage::Load), &format!("module loaded by the target's dlopen{at}"));
        obs.progress(Some(Stage::Link), "linked by the target's dynamic linker");
        obs.progress(Some(Stage::Init), "initialised by the target's dynamic linker");
        Ok(addrs)
    }

    /// Calls the target's `dlopen` on `path`, then `dlsym` for each name. Returns the handle
    /// and the addresses; on failure, what `dlerror` said.
    fn dlopen(&mut self, path: &std::path::Path, names: &[&str]) -> Result<(u64, Vec<u64>)> {
        let objects = self.target.loaded_objects();
        let find = |candidates: &[&str]| exported_function(&objects, candidates);
        let missing = |what: &str| {
            Error::precondition(format!("process {}: no `{what}` in its C library", self.target.pid))
                .hint("use load: mmap")
        };
        let dlopen = find(&["dlopen", "__libc_dlopen_mode"]).ok_or_else(|| missing("dlopen"))?;
        let dlsym = find(&["dlsym", "__libc_dlsym"]).ok_or_else(|| missing("dlsym"))?;
        let dlclose = find(&["dlclose", "__libc_dlclose"]).ok_or_else(|| missing("dlclose"))?;
        let dlerror = find(&["dlerror"]);
        let need_registry = registry::locate(&self.target.maps).is_none();
        let timeout = self.engine.init_timeout;
        let pid = self.target.pid;
        let mut h = self.hijack()?;
        const SCRATCH: u64 = 8192;
        let scratch =
            h.syscall(nr::MMAP, &[0, SCRATCH, mmap::PROT_READ, mmap::MAP_PRIVATE | mmap::MAP_ANONYMOUS, u64::MAX, 0])?;
        if scratch < 0 {
            return Err(registry::syscall_error("mmap of a scratch page", scratch));
        }
        let scratch = scratch as u64;
        let mem = pannus_kernel::Mem::open(pid)?;
        let result = (|| -> Result<(u64, Vec<u64>)> {
            if need_registry {
                registry::create(&mut h, &mem, scratch)?;
            }
            let mut cpath = path.as_os_str().as_encoded_bytes().to_vec();
            cpath.push(0);
            if cpath.len() as u64 > SCRATCH {
                return Err(Error::bad_input(format!("module path {} is too long", path.display())));
            }
            mem.write(scratch, &cpath)?;
            const RTLD_NOW: u64 = 2;
            let handle = h.call_for_address(dlopen, &[scratch, RTLD_NOW], timeout, "the target's dlopen")?;
            let why = |h: &mut Hijack| -> String {
                let Some(f) = dlerror else { return "no reason given".into() };
                match h.call_for_address(f, &[], timeout, "dlerror") {
                    Ok(0) | Err(_) => "no reason given".into(),
                    Ok(text) => {
                        let bytes = mem.read_partial(text, 512);
                        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                        String::from_utf8_lossy(&bytes[..end]).into_owned()
                    }
                }
            };
            if handle == 0 {
                return Err(Error::precondition(format!(
                    "the target's dlopen refused {}: {}",
                    path.display(),
                    why(&mut h)
                )));
            }
            let mut addrs = Vec::with_capacity(names.len());
            for n in names {
                let mut cname = n.as_bytes().to_vec();
                cname.push(0);
                mem.write(scratch, &cname)?;
                let a = h.call_for_address(dlsym, &[handle, scratch], timeout, "the target's dlsym")?;
                if a == 0 {
                    let reason = why(&mut h);
                    let _ = h.call(dlclose, &[handle], timeout, "the target's dlclose");
                    return Err(Error::precondition(format!(
                        "the target's dlsym does not find `{n}` in {}: {reason}",
                        path.display()
                    )));
                }
                addrs.push(a);
            }
            Ok((handle, addrs))
        })();
        let _ = h.syscall(nr::MUNMAP, &[scratch, SCRATCH]);
        h.release()?;
        result
    }

    /// Removes every trace of a failed apply: unloads the module (munmap, or the target's
    /// dlclose), drops the record, and removes the registry mapping if this apply created it.
    fn undo_apply(&mut self, reg: &mut Registry, id: &str, had_registry: bool) -> Result<()> {
        self.target.refresh_maps()?;
        let reg_loc = registry::locate(&self.target.maps);
        let rec = reg.get(id).cloned();
        if let Some(rec) = rec.as_ref().filter(|r| r.load == LoadMethod::Dlopen && r.handle != 0) {
            self.dlclose(rec.handle)?;
        }
        if let Some(rec) = rec.as_ref().filter(|r| r.eh_frame != 0) {
            self.deregister_frames(rec.eh_frame)?;
        }
        {
            let mut h = self.hijack()?;
            if let Some(rec) = rec.as_ref().filter(|r| r.load == LoadMethod::Mmap && r.module_size > 0) {
                let r = h.syscall(nr::MUNMAP, &[rec.module_base, rec.module_size])?;
                if r < 0 {
                    return Err(registry::syscall_error("munmap", r));
                }
            }
            if let Some(rec) = rec.as_ref().filter(|r| r.trampoline != 0) {
                let _ = h.syscall(nr::MUNMAP, &[rec.trampoline, rec.trampoline_size]);
            }
            if !had_registry {
                if let Some(loc) = reg_loc {
                    let _ = h.syscall(nr::MUNMAP, &[loc.addr, registry::SIZE]);
                }
            }
            h.release()?;
        }
        self.target.refresh_maps()?;
        reg.patches.retain(|r| r.patch != id);
        if had_registry {
            self.write_registry(reg)?;
        }
        Ok(())
    }

    /// The target's dlclose on `handle`.
    fn dlclose(&mut self, handle: u64) -> Result<()> {
        let f = exported_function(&self.target.loaded_objects(), &["dlclose", "__libc_dlclose"]).ok_or_else(|| {
            Error::precondition(format!("process {}: no `dlclose` in its C library", self.target.pid))
        })?;
        let timeout = self.engine.init_timeout;
        let mut h = self.hijack()?;
        h.call(f, &[handle], timeout, "the target's dlclose")?;
        h.release()?;
        Ok(())
    }

    /// Stage 1, first half: reserves the module's range (and creates the registry when the
    /// process has none yet). Only the reservation can be left behind by a pannus killed before
    /// the registry records it: an empty, read-only range.
    fn reserve(&mut self, hint: u64, size: u64) -> Result<u64> {
        let need_registry = registry::locate(&self.target.maps).is_none();
        let mem_pid = self.target.pid;
        let mut h = self.hijack()?;
        let r = h.syscall(
            nr::MMAP,
            &[
                hint,
                size,
                mmap::PROT_READ,
                mmap::MAP_PRIVATE | mmap::MAP_ANONYMOUS | mmap::MAP_FIXED_NOREPLACE,
                u64::MAX,
                0,
            ],
        )?;
        if r < 0 {
            return Err(registry::syscall_error("reserving the module's address range (mmap)", r));
        }
        let base = r as u64;
        if base != hint {
            let _ = h.syscall(nr::MUNMAP, &[base, size]);
            return Err(Error::other(format!(
                "process {mem_pid}: the kernel placed the module at {base:#x} instead of {hint:#x}"
            )));
        }
        if need_registry {
            let mem = pannus_kernel::Mem::open(mem_pid)?;
            if let Err(e) = registry::create(&mut h, &mem, base) {
                let _ = h.syscall(nr::MUNMAP, &[base, size]);
                return Err(e);
            }
        }
        h.release()?;
        Ok(base)
    }

    /// Stage 1, second half: maps the module's segments into the reserved range from the module
    /// file, with their final protections (anonymous memory filled through /proc/PID/mem when
    /// the target cannot open the file, e.g. from another mount namespace).
    fn map_segments(&mut self, p: &Prepared, base: u64) -> Result<()> {
        use mmap::*;
        let module = p.module.clone();
        let (lo, _) = module.span();
        let bias = base.wrapping_sub(lo);
        let mut cpath = p.manifest.module.path.as_os_str().as_encoded_bytes().to_vec();
        cpath.push(0);
        let mem_pid = self.target.pid;
        let mut h = self.hijack()?;
        let mem = pannus_kernel::Mem::open(mem_pid)?;
        // The path goes into the reservation, which the segments then replace.
        let fd = if (cpath.len() as u64) < module.span().1 - lo {
            mem.write(base, &cpath)?;
            h.syscall(nr::OPENAT, &[AT_FDCWD as u64, base, O_RDONLY_CLOEXEC, 0])?
        } else {
            -1
        };
        let result = (|| -> Result<()> {
            for s in &module.segments {
                let start = bias.wrapping_add(page_floor(s.vaddr));
                let file_end = bias.wrapping_add(s.vaddr + s.filesz);
                let mem_end = bias.wrapping_add(page_ceil(s.vaddr + s.memsz));
                if fd >= 0 && s.filesz > 0 {
                    let len = page_ceil(file_end) - start;
                    let r = h.syscall(
                        nr::MMAP,
                        &[
                            start,
                            len,
                            s.prot(),
                            MAP_PRIVATE | MAP_FIXED | MAP_POPULATE,
                            fd as u64,
                            page_floor(s.offset),
                        ],
                    )?;
                    if r < 0 {
                        return Err(registry::syscall_error("mapping a module segment (mmap)", r));
                    }
                    // The file's page may hold other bytes past the segment: zero them (bss).
                    if s.memsz > s.filesz && page_ceil(file_end) > file_end {
                        mem.write(file_end, &vec![0u8; (page_ceil(file_end) - file_end) as usize])?;
                    }
                    if mem_end > page_ceil(file_end) {
                        let r = h.syscall(
                            nr::MMAP,
                            &[
                                page_ceil(file_end),
                                mem_end - page_ceil(file_end),
                                s.prot(),
                                MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_POPULATE,
                                u64::MAX,
                                0,
                            ],
                        )?;
                        if r < 0 {
                            return Err(registry::syscall_error("mapping the module's bss (mmap)", r));
                        }
                    }
                } else {
                    let r = h.syscall(
                        nr::MMAP,
                        &[
                            start,
                            mem_end - start,
                            s.prot(),
                            MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_POPULATE,
                            u64::MAX,
                            0,
                        ],
                    )?;
                    if r < 0 {
                        return Err(registry::syscall_error("mapping a module segment (mmap)", r));
                    }
                    if let Some(bytes) = module.bytes_at(s.vaddr, s.filesz) {
                        mem.write(bias.wrapping_add(s.vaddr), bytes)?;
                    }
                }
            }
            Ok(())
        })();
        if fd >= 0 {
            let _ = h.syscall(nr::CLOSE, &[fd as u64]);
        }
        h.release()?;
        result
    }

    fn stage_link(&mut self, p: &Prepared, bias: u64) -> Result<()> {
        let module = &p.module;
        let (lo, hi) = module.span();
        let size = (hi - lo) as usize;
        // The module image as mapped, to apply relocations to and write back page by page.
        let mut image = vec![0u8; size];
        for s in &module.segments {
            if let Some(bytes) = module.bytes_at(s.vaddr, s.filesz) {
                let at = (s.vaddr - lo) as usize;
                image[at..at + bytes.len()].copy_from_slice(bytes);
            }
        }
        // Resolve indirect functions by calling their resolvers in the target, as ld.so does.
        let mut values: HashMap<usize, u64> = HashMap::new();
        let ifuncs: Vec<(usize, u64, String)> = p
            .symbols
            .iter()
            .filter_map(|(&i, (v, _))| match v {
                Value::Ifunc(r) => Some((i, *r, module.dynsyms[i].name.clone())),
                _ => None,
            })
            .collect();
        if !ifuncs.is_empty() {
            let timeout = self.engine.init_timeout;
            let mut h = self.hijack()?;
            for (i, resolver, name) in ifuncs {
                let v = h.call_for_address(resolver, &[], timeout, &format!("the resolver of `{name}`"))?;
                values.insert(i, v);
            }
            h.release()?;
        }
        for (&i, (v, _)) in &p.symbols {
            let a = match *v {
                Value::Module(vaddr) => bias.wrapping_add(vaddr),
                Value::Abs(a) => a,
                Value::Ifunc(_) => continue,
                Value::Zero => 0,
            };
            values.insert(i, a);
        }
        let mut dirty = vec![false; size.div_ceil(4096)];
        for r in &module.relocs {
            if r.rtype == R_NONE {
                continue;
            }
            let s = r.sym.and_then(|i| values.get(&i).copied()).unwrap_or(0);
            let at = r.offset.wrapping_sub(lo) as usize;
            let width = if matches!(r.rtype, R_PC32 | R_PLT32) { 4 } else { 8 };
            if at.checked_add(width).is_none_or(|e| e > size) {
                return Err(Error::bad_input(format!(
                    "patch module {}: relocation at {:#x} lies outside the module",
                    module.path.display(),
                    r.offset
                )));
            }
            let place = bias.wrapping_add(r.offset);
            let bytes: Vec<u8> = match r.rtype {
                R_RELATIVE => bias.wrapping_add_signed(r.addend).to_le_bytes().to_vec(),
                R_64 | R_GLOB_DAT | R_JUMP_SLOT => s.wrapping_add_signed(r.addend).to_le_bytes().to_vec(),
                _ => {
                    let v = s.wrapping_add_signed(r.addend).wrapping_sub(place) as i64;
                    let v = i32::try_from(v).map_err(|_| {
                        let name = r.sym.map(|i| module.dynsyms[i].name.clone()).unwrap_or_default();
                        Error::precondition(format!(
                            "patch module {}: `{name}` is out of the ±2 GiB reach of a {} relocation",
                            module.path.display(),
                            reloc_name(r.rtype)
                        ))
                    })?;
                    v.to_le_bytes().to_vec()
                }
            };
            image[at..at + width].copy_from_slice(&bytes);
            dirty[at / 4096..=(at + width - 1) / 4096].fill(true);
        }
        // One write per run of dirty pages, clipped to what the segments map.
        let mut pg = 0;
        while pg < dirty.len() {
            if !dirty[pg] {
                pg += 1;
                continue;
            }
            let start = pg;
            while pg < dirty.len() && dirty[pg] {
                pg += 1;
            }
            let (a, b) = (start * 4096, (pg * 4096).min(size));
            self.target.mem.write(bias.wrapping_add(lo + a as u64), &image[a..b])?;
        }
        // RELRO becomes read-only, as ld.so leaves it.
        if let Some((vaddr, len)) = module.relro {
            let (s, e) = (page_floor(bias.wrapping_add(vaddr)), page_floor(bias.wrapping_add(vaddr + len)));
            if e > s {
                let mut h = self.hijack()?;
                let r = h.syscall(nr::MPROTECT, &[s, e - s, 1])?;
                h.release()?;
                if r < 0 {
                    return Err(registry::syscall_error("mprotect of the module's RELRO", r));
                }
            }
        }
        Ok(())
    }

    /// `__register_frame` in the target and where the module's `.eh_frame` is, when both exist.
    fn frame_registration(&mut self, p: &Prepared, bias: u64) -> Option<(u64, u64)> {
        let (range, _) = p.module.section(".eh_frame")?;
        let f = self.unwinder_function("__register_frame")?;
        Some((f, bias.wrapping_add(range.start)))
    }

    /// A function of libgcc's unwinder in the target (libgcc_s), if it has one loaded.
    fn unwinder_function(&mut self, name: &str) -> Option<u64> {
        exported_function(&self.target.loaded_objects(), &[name])
    }

    /// Takes the module's exception tables back from the target's unwinder before unmapping.
    fn deregister_frames(&mut self, table: u64) -> Result<()> {
        let Some(f) = self.unwinder_function("__deregister_frame") else { return Ok(()) };
        let timeout = self.engine.init_timeout;
        let mut h = self.hijack()?;
        h.call(f, &[table], timeout, "__deregister_frame for the module's exception tables")?;
        h.release().map_err(Error::from)
    }

    fn init_functions(&self, p: &Prepared, bias: u64) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        if let Some(init) = p.module.init {
            out.push(bias.wrapping_add(init));
        }
        if let Some((arr, len)) = p.module.init_array {
            for i in 0..(len / 8).min(4096) {
                let f = self.target.mem.read_u64(bias.wrapping_add(arr + 8 * i))?;
                if f != 0 && f != u64::MAX {
                    out.push(f);
                }
            }
        }
        Ok(out)
    }

    /// Stage 3 of the `mmap` method: registers the module's exception tables with the
    /// target's unwinder (`__register_frame`, when the target has libgcc's unwinder loaded, as
    /// C++ programs do), so that C++ exceptions thrown by replacements unwind through the
    /// target, then runs the module's init functions.
    fn stage_init(&mut self, inits: &[u64], eh_frame: Option<(u64, u64)>) -> Result<()> {
        if inits.is_empty() && eh_frame.is_none() {
            return Ok(());
        }
        let timeout = self.engine.init_timeout;
        let mut h = self.hijack()?;
        if let Some((register, table)) = eh_frame {
            h.call(register, &[table], timeout, "__register_frame for the module's exception tables")?;
        }
        for (k, &f) in inits.iter().enumerate() {
            h.call(f, &[0, 0, 0], timeout, &format!("init function #{} at {f:#x}", k + 1))?;
        }
        h.release()?;
        Ok(())
    }

    /// The one place where code bytes change: in a single stop of every thread, after checking
    /// the safety rules, write each `(address, bytes)`; while a thread is in the way, resume,
    /// back off and retry within the budget. Returns the attempt that succeeded. When giving up,
    /// names the blocking threads and functions and prints each blocking thread's backtrace.
    /// Stops every thread, checks the consistency rule and writes `sw.writes`, retrying while
    /// a thread is in the way. Returns the attempts made and, when `sw.module_code` is given,
    /// what that same stop saw of the module.
    fn switch(&mut self, sw: &Switch, obs: &mut dyn Observer) -> Result<(u32, ModuleSeen)> {
        let pid = self.target.pid;
        let names: Vec<&str> = sw.names.iter().map(String::as_str).collect();
        let function_rule = sw.consistency == Consistency::Function;
        let mut unwinder = function_rule.then(|| Unwinder::new(&mut self.target));
        let mut attempt = 0;
        let mut stack_buf: Vec<u8> = Vec::new();
        loop {
            attempt += 1;
            let last = attempt > sw.retries;
            if last && unwinder.is_none() {
                unwinder = Some(Unwinder::new(&mut self.target));
            }
            make_room_for_stacks(pid, &mut stack_buf);
            // Attaching costs the target nothing: its threads run on until they are stopped.
            let seized = World::seize(pid)?;
            let stopped_at = Instant::now();
            let start_monotonic_ns = monotonic_ns();
            // On rollback the whole live stack (up to UNLOAD_SCAN) is read, for the module check.
            let scan = if sw.module_code.is_empty() { STACK_SCAN } else { UNLOAD_SCAN };
            let (world, ranges) = stop_reading_stacks(&self.target, seized, |_| scan, &mut stack_buf)?;
            let halted_at = Instant::now();
            let stacks: Vec<(i32, &pannus_kernel::Regs, &[u8])> = world
                .threads()
                .iter()
                .zip(&ranges)
                .map(|(t, range)| (t.tid, &t.regs, &stack_buf[range.clone()]))
                .collect();
            let views: Vec<ThreadView> = stacks
                .iter()
                .map(|(tid, r, stack)| ThreadView { tid: *tid, rip: r.rip, stack_base: r.rsp, stack })
                .collect();
            let mut conflicts = safety::entry_conflicts(names.iter().copied().zip(sw.plans.iter()), &views);
            let mut traces: Vec<(i32, Backtrace)> = Vec::new();
            if let Some(u) = unwinder.as_mut().filter(|_| function_rule || last) {
                for (tid, r, stack) in &stacks {
                    let bt = u.backtrace(&self.target.mem, r.rip, r.rsp, r.rbp, stack);
                    if function_rule {
                        conflicts.extend(safety::function_conflicts(*tid, &bt, &sw.busy_ranges));
                    }
                    traces.push((*tid, bt));
                }
            }
            if conflicts.is_empty() {
                let checked_at = Instant::now();
                let mut result = Ok(());
                for (addr, bytes) in &sw.writes {
                    if let Err(e) = self.target.mem.write(*addr, bytes) {
                        result = Err(e);
                        break;
                    }
                    pannus_kernel::fault::point("entry bytes written");
                }
                let written_at = Instant::now();
                let resumed_at = world.resume()?;
                self.stops.push(StopWindow { start_monotonic_ns, end_monotonic_ns: monotonic_ns() });
                self.timings.push(("stopped", resumed_at - stopped_at));
                self.timings.push(("stop_halt", halted_at - stopped_at));
                self.timings.push(("stop_check", checked_at - halted_at));
                self.timings.push(("stop_write", written_at - checked_at));
                self.timings.push(("stop_resume", resumed_at - written_at));
                result?;
                // Judged after the threads run again, from what the stop saw: the jumps into the
                // module went in that same stop, so a thread clear then stays clear.
                let seen = if sw.module_code.is_empty() {
                    ModuleSeen::default()
                } else {
                    module_idle(&views, &sw.module_code)
                };
                return Ok((attempt, seen));
            }
            world.resume()?;
            self.stops.push(StopWindow { start_monotonic_ns, end_monotonic_ns: monotonic_ns() });
            if last {
                let mut text = format!(
                    "busy: after {attempt} attempts over {:?}, thread(s) {} still in the way:",
                    sw.interval * sw.retries,
                    conflicts.iter().map(|c| c.tid.to_string()).collect::<Vec<_>>().join(", ")
                );
                for c in &conflicts {
                    text.push_str(&format!("\n  {c}"));
                }
                let mut shown = Vec::new();
                for c in &conflicts {
                    if shown.contains(&c.tid) {
                        continue;
                    }
                    shown.push(c.tid);
                    if let (Some(u), Some((_, bt))) = (unwinder.as_ref(), traces.iter().find(|(t, _)| *t == c.tid)) {
                        let comm =
                            std::fs::read_to_string(format!("/proc/{pid}/task/{}/comm", c.tid)).unwrap_or_default();
                        text.push_str(&format!("\n  backtrace of thread {} ({}):", c.tid, comm.trim()));
                        for l in u.describe(bt) {
                            text.push_str(&format!("\n    {l}"));
                        }
                    }
                }
                return Err(Error::busy(text).hint(
                    "the service keeps these threads in the function; retry at a quieter moment, or raise safety.retries",
                ));
            }
            if attempt == 1 || attempt % 20 == 0 {
                obs.progress(Some(Stage::Activate), &format!("busy ({}), retrying", conflicts[0]));
            }
            std::thread::sleep(sw.interval);
        }
    }

    // ---------------------------------------------------------------- rollback, commit

    /// Rolls back `patch` (the most recently applied one when `None`); with `cascade`, the
    /// patches that require it are rolled back first, newest first. Returns the ids rolled back.
    pub fn rollback(&mut self, patch: Option<&str>, cascade: bool, obs: &mut dyn Observer) -> Result<Vec<String>> {
        self.rollback_because(patch, cascade, "", obs)
    }

    /// [`Session::rollback`], recording `why` in the journal and in the patches' records.
    pub fn rollback_because(
        &mut self,
        patch: Option<&str>,
        cascade: bool,
        why: &str,
        obs: &mut dyn Observer,
    ) -> Result<Vec<String>> {
        let result = self.rollback_inner(patch, cascade, obs);
        match &result {
            Ok(ids) => {
                if !why.is_empty() {
                    if let Ok(mut reg) = self.registry() {
                        for id in ids {
                            if let Some(r) = reg.get_mut(id) {
                                r.note = Some(why.to_string());
                            }
                        }
                        let _ = self.write_registry(&reg);
                    }
                }
                for id in ids {
                    self.journal("rollback", Some(id), "ok", why);
                }
            }
            Err(e) => self.journal("rollback", patch, outcome_of(e), &e.message),
        }
        result
    }

    /// Records a health-check result of `patch` in the process's registry.
    pub fn record_health(&mut self, patch: &str, health: &crate::registry::Health) -> Result<()> {
        let mut reg = self.registry()?;
        if let Some(r) = reg.get_mut(patch) {
            r.health = Some(health.clone());
            self.write_registry(&reg)?;
        }
        Ok(())
    }

    fn rollback_inner(&mut self, patch: Option<&str>, cascade: bool, obs: &mut dyn Observer) -> Result<Vec<String>> {
        self.timings.clear();
        self.stops.clear();
        let pid = self.target.pid;
        let mut reg = self.registry()?;
        let id = match patch {
            Some(id) => {
                match reg.get(id) {
                    Some(p) if p.state.is_applied() => {}
                    Some(p) if p.module_mapped => {
                        // Rolled back, but its module is still mapped (a pannus was killed
                        // before unmapping it, or a thread was inside): finish the unload.
                        self.unload(&mut reg, id, None, obs)?;
                        return Ok(vec![id.to_string()]);
                    }
                    Some(_) => {
                        return Err(Error::precondition(format!(
                            "patch `{id}` is already rolled back in process {pid}"
                        )))
                    }
                    None => {
                        return Err(Error::precondition(format!("patch `{id}` is not applied in process {pid}"))
                            .hint(format!("see pannus status --pid {pid}")))
                    }
                }
                id.to_string()
            }
            None => match reg.applied().max_by_key(|p| p.seq) {
                Some(p) => p.patch.clone(),
                None => {
                    let pending: Vec<String> =
                        reg.patches.iter().filter(|p| p.module_mapped).map(|p| p.patch.clone()).collect();
                    if pending.is_empty() {
                        return Err(Error::precondition(format!("process {pid} has no patch applied")));
                    }
                    for id in &pending {
                        self.unload(&mut reg, id, None, obs)?;
                    }
                    return Ok(pending);
                }
            },
        };
        // Everything that depends on it, transitively.
        let mut order = vec![id.clone()];
        let mut k = 0;
        while k < order.len() {
            let cur = order[k].clone();
            for p in reg.applied() {
                if p.requires.contains(&cur) && !order.contains(&p.patch) {
                    order.push(p.patch.clone());
                }
            }
            k += 1;
        }
        let dependents: Vec<String> = order[1..].to_vec();
        if !dependents.is_empty() && !cascade {
            return Err(Error::precondition(format!(
                "patch `{id}` is required by {} applied in process {pid}",
                dependents.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ")
            ))
            .hint("roll those back first, or use --cascade to roll them back together, newest first"));
        }
        order.sort_by_key(|i| std::cmp::Reverse(reg.get(i).map(|p| p.seq).unwrap_or(0)));
        let mut done = Vec::new();
        for i in order {
            self.rollback_one(&mut reg, &i, obs)?;
            obs.progress(None, &format!("rolled back `{i}`"));
            done.push(i);
        }
        Ok(done)
    }

    fn rollback_one(&mut self, reg: &mut Registry, id: &str, obs: &mut dyn Observer) -> Result<()> {
        let rec = reg.get(id).cloned().ok_or_else(|| Error::other(format!("patch `{id}` vanished")))?;
        let retries = rec.retries;
        let interval = Duration::from_millis(rec.retry_interval_ms);
        // 1. Restore entry bytes (or hand them to a later patch stacked on the same function).
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut plans = Vec::new();
        let mut names = Vec::new();
        for f in rec.functions.iter().rev() {
            let original = hex::decode(&f.original).unwrap_or_default();
            let written = hex::decode(&f.written).unwrap_or_default();
            let later = reg
                .patches
                .iter_mut()
                .filter(|p| p.state.is_applied() && p.seq > rec.seq)
                .flat_map(|p| p.functions.iter_mut().map(|g| (p.seq, g)))
                .filter(|(_, g)| g.patch_address == f.patch_address)
                .min_by_key(|(seq, _)| *seq);
            if let Some((_, g)) = later {
                // A later patch overwrote this entry and saved our jump as its "original":
                // from now on its original is the true original.
                let theirs = hex::decode(&g.original).unwrap_or_default();
                let mut merged = original.clone();
                if theirs.len() > merged.len() {
                    merged.extend_from_slice(&theirs[merged.len()..]);
                }
                g.original = hex::encode(merged);
                continue;
            }
            let current = self.target.mem.read_vec(f.patch_address, written.len())?;
            if current == written {
                writes.push((f.patch_address, original.clone()));
                // The bytes now there are our jump: a single instruction (or a pad jump pair),
                // so a thread can only stand at its start.
                plans.push(EntryPlan {
                    jump: f.jump,
                    patch_address: f.patch_address,
                    original: written.clone(),
                    written: original,
                    starts: vec![f.patch_address, f.address],
                });
                names.push(f.target.clone());
            }
        }
        let mut seen = None;
        if !writes.is_empty() {
            // Under the `function` rule, no thread may be inside the replacements being removed.
            let busy_ranges = rec
                .functions
                .iter()
                .filter(|f| f.replacement_size > 0)
                .map(|f| (f.replacement.clone(), f.replacement_address, f.replacement_address + f.replacement_size))
                .collect();
            let module_code = if rec.module_mapped { self.module_code(&rec) } else { Vec::new() };
            let consistency = rec.consistency;
            let sw = Switch { names, plans, writes, retries, interval, consistency, busy_ranges, module_code };
            let t0 = Instant::now();
            seen = Some(self.switch(&sw, obs)?.1);
            self.timings.push(("restore", t0.elapsed()));
        }
        if let Some(r) = reg.get_mut(id) {
            r.state = State::RolledBack;
            r.ended_at = Some(now_secs());
            r.trial_deadline = None;
        }
        self.write_registry(reg)?;
        // 2. Unload once no thread can be inside the module.
        if rec.module_mapped {
            let t0 = Instant::now();
            let _paused = pannus_kernel::SpareCpu::pause();
            self.unload(reg, id, seen, obs)?;
            self.timings.push(("unload", t0.elapsed()));
        }
        Ok(())
    }

    /// Unmaps the module of rolled-back patch `id` once no thread can be inside it; when one
    /// stays inside for the whole budget, the module is kept mapped (harmless: nothing jumps
    /// to it any more) and a later rollback tries again.
    fn unload(&mut self, reg: &mut Registry, id: &str, seen: Option<ModuleSeen>, obs: &mut dyn Observer) -> Result<()> {
        let Some(rec) = reg.get(id).cloned() else { return Ok(()) };
        let idle = match seen {
            Some(ModuleSeen { busy: None, .. }) => Ok(()),
            Some(ModuleSeen { clear, .. }) => self.wait_module_idle(&rec, clear),
            None => self.wait_module_idle(&rec, HashSet::new()),
        };
        match idle {
            Ok(()) => {
                if rec.load == LoadMethod::Dlopen {
                    self.dlclose(rec.handle)?;
                }
                if rec.eh_frame != 0 {
                    self.deregister_frames(rec.eh_frame)?;
                }
                let mut h = self.hijack()?;
                let mut result = 0;
                if rec.load == LoadMethod::Mmap {
                    result = h.syscall(nr::MUNMAP, &[rec.module_base, rec.module_size])?;
                }
                if rec.trampoline != 0 {
                    let _ = h.syscall(nr::MUNMAP, &[rec.trampoline, rec.trampoline_size]);
                }
                h.release()?;
                if result < 0 {
                    return Err(registry::syscall_error("munmap of the module", result));
                }
                self.target.refresh_maps()?;
                if let Some(r) = reg.get_mut(id) {
                    r.module_mapped = false;
                    r.note = None;
                }
            }
            Err(e) => {
                obs.progress(None, &format!("module of `{id}` kept mapped: {}", e.message));
                if let Some(r) = reg.get_mut(id) {
                    r.note = Some(format!("module kept mapped: {}", e.message));
                }
            }
        }
        self.write_registry(reg)
    }

    /// The module's code as mapped, and its jump stubs: what no thread may be in when the
    /// module is unmapped.
    fn module_code(&self, rec: &PatchRecord) -> Vec<(u64, u64)> {
        let (base, size) = (rec.module_base, rec.module_size);
        let mut code: Vec<(u64, u64)> = self
            .target
            .maps
            .iter()
            .filter(|m| m.exec && m.start >= base && m.end <= base + size)
            .map(|m| (m.start, m.end))
            .collect();
        if rec.trampoline != 0 {
            code.push((rec.trampoline, rec.trampoline + rec.trampoline_size));
        }
        code
    }

    /// Waits until no thread executes in the module's code or has a return address into it.
    /// A thread seen clear of it once cannot come back (nothing jumps there any more), so
    /// threads are cleared one by one across attempts, starting with `clear`: a busy process
    /// need not have every thread clear in one and the same stop.
    ///
    /// A thread in the way leaves only by running, so the threads are stopped again only once
    /// every thread in the way at the last stop has run since (or blocked, or exited), or a new
    /// thread appeared: on a machine where threads wait long for a CPU, stopping sooner would
    /// only hold the others again for nothing. The last attempt always stops, for an exact
    /// answer.
    fn wait_module_idle(&mut self, rec: &PatchRecord, mut clear: HashSet<i32>) -> Result<()> {
        let (retries, interval) = (rec.retries, Duration::from_millis(rec.retry_interval_ms));
        let code = self.module_code(rec);
        let pid = self.target.pid;
        let mut stack_buf: Vec<u8> = Vec::new();
        // The threads in the way at the last stop, with the CPU time each had used by then: to
        // begin with, those the caller's stop did not see clear, if it looked.
        let mut in_the_way: Vec<(i32, Option<u64>)> = if clear.is_empty() {
            Vec::new()
        } else {
            let tids = pannus_kernel::list_threads(pid).unwrap_or_default();
            tids.into_iter().filter(|t| !clear.contains(t)).map(|t| (t, pannus_kernel::cpu_time(pid, t))).collect()
        };
        let mut why = String::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt > retries;
            if last || worth_a_stop(pid, &clear, &in_the_way) {
                make_room_for_stacks(pid, &mut stack_buf);
                let seized = World::seize(pid)?;
                let start_monotonic_ns = monotonic_ns();
                let most = |tid: i32| if clear.contains(&tid) { 0 } else { UNLOAD_SCAN };
                let (world, ranges) = stop_reading_stacks(&self.target, seized, most, &mut stack_buf)?;
                let views: Vec<ThreadView> = world
                    .threads()
                    .iter()
                    .zip(&ranges)
                    .filter(|(t, _)| !clear.contains(&t.tid))
                    .map(|(t, r)| ThreadView {
                        tid: t.tid,
                        rip: t.regs.rip,
                        stack_base: t.regs.rsp,
                        stack: &stack_buf[r.clone()],
                    })
                    .collect();
                let seen = module_idle(&views, &code);
                let busy: Vec<i32> = views.iter().map(|v| v.tid).filter(|t| !seen.clear.contains(t)).collect();
                drop(views);
                world.resume()?;
                self.stops.push(StopWindow { start_monotonic_ns, end_monotonic_ns: monotonic_ns() });
                clear.extend(seen.clear);
                match seen.busy {
                    None => return Ok(()),
                    Some(w) => why = w,
                }
                // Read after the threads run again: entering and leaving the stop counts as CPU
                // time too, and only a run after it can take a thread out of the module.
                in_the_way = busy.into_iter().map(|t| (t, pannus_kernel::cpu_time(pid, t))).collect();
            }
            if last {
                return Err(Error::busy(why));
            }
            std::thread::sleep(interval);
        }
    }

    /// Ends the trial of `patch`: trial → committed.
    pub fn commit(&mut self, patch: &str, note: &str) -> Result<PatchRecord> {
        let pid = self.target.pid;
        let result = (|| {
            let mut reg = self.registry()?;
            let rec = reg
                .get_mut(patch)
                .ok_or_else(|| Error::precondition(format!("patch `{patch}` is not applied in process {pid}")))?;
            match rec.state {
                State::Trial => {}
                State::Committed => return Ok(rec.clone()),
                s => {
                    return Err(Error::precondition(format!(
                        "patch `{patch}` is {s} in process {pid}; only a patch on trial can be committed"
                    )))
                }
            }
            rec.state = State::Committed;
            rec.trial_deadline = None;
            rec.ended_at = Some(now_secs());
            rec.note = Some(note.to_string());
            let out = rec.clone();
            self.write_registry(&reg)?;
            Ok(out)
        })();
        match &result {
            Ok(_) => self.journal("commit", Some(patch), "ok", note),
            Err(e) => self.journal("commit", Some(patch), outcome_of(e), &e.message),
        }
        result
    }
}

/// Undoes the stages of a failed apply and says so in the error.
type Undo<'a> = dyn Fn(&mut Session, &mut Registry, Error, &[Stage]) -> Error + 'a;

/// One switch of code bytes, checked and written in a single stop of every thread.
struct Switch {
    /// The function of each plan, for messages.
    names: Vec<String>,
    plans: Vec<EntryPlan>,
    writes: Vec<(u64, Vec<u8>)>,
    retries: u32,
    interval: Duration,
    consistency: Consistency,
    /// Code no thread may be in under the `function` rule: (function, start, end).
    busy_ranges: Vec<(String, u64, u64)>,
    /// On rollback, the module's code (and its jump stubs): the stop that writes the original
    /// bytes back also looks whether any thread is in it or has a return address into it, so
    /// that the module can be unmapped without another stop. Empty on apply.
    module_code: Vec<(u64, u64)>,
}

/// Stops the seized threads and reads each one's live stack (at most `most(tid)` bytes) into
/// `buf`; returns the stopped world and, in the order of its threads, the part of `buf` holding
/// each stack. Each thread's registers are read as soon as it is stopped, while the others are
/// on their way; the stacks are read once all are stopped, with one system call for up to 1024
/// threads rather than one each.
fn stop_reading_stacks(
    target: &Target,
    seized: pannus_kernel::Seized,
    most: impl Fn(i32) -> usize,
    buf: &mut Vec<u8>,
) -> Result<(World, Vec<std::ops::Range<usize>>)> {
    let mut spans = Vec::new();
    let mut used = 0;
    let world = seized.stop_with(|t| {
        let len = target.stack_extent(&t.regs, most(t.tid));
        spans.push((t.regs.rsp, used..used + len));
        used += len;
    })?;
    if buf.len() < used {
        buf.resize(used, 0);
    }
    let got = target.mem.read_many(&spans, buf);
    let ranges = spans.into_iter().zip(got).map(|((_, r), n)| r.start..r.start + n).collect();
    Ok((world, ranges))
}

/// Makes `buf` room for a [`STACK_SCAN`] of every thread of `pid` (and a few created meanwhile),
/// before the stop: the stacks are read into it inside the stop, which must not be where it
/// grows. Every page is backed here too: fresh zeroed memory faults on its first write to each
/// page, and inside the stop each of those faults would lengthen it.
fn make_room_for_stacks(pid: i32, buf: &mut Vec<u8>) {
    let len = (pannus_kernel::list_threads(pid).map(|t| t.len()).unwrap_or(1) + 4) * STACK_SCAN;
    if buf.len() >= len {
        return;
    }
    *buf = vec![0u8; len];
    for page in buf.chunks_mut(4096) {
        // An opaque value: a store of a known zero to zeroed memory could be left out.
        page[0] = std::hint::black_box(0);
    }
}

/// Whether stopping the threads of `pid` again can clear anything ([`Session::wait_module_idle`]):
/// a thread appeared that is not known clear nor known in the way (with nothing known yet, every
/// thread), or every thread in the way at the last stop has run since, blocked or exited. When
/// in doubt, yes.
fn worth_a_stop(pid: i32, clear: &HashSet<i32>, in_the_way: &[(i32, Option<u64>)]) -> bool {
    let Ok(tids) = pannus_kernel::list_threads(pid) else {
        return true;
    };
    if tids.iter().any(|t| !clear.contains(t) && !in_the_way.iter().any(|(w, _)| w == t)) {
        return true;
    }
    // A thread blocked in a system call does not run until it is woken, but it may have left the
    // module before it blocked: worth looking at.
    in_the_way.iter().all(|&(tid, then)| match (then, pannus_kernel::cpu_time(pid, tid)) {
        (Some(then), Some(now)) => now != then || pannus_kernel::thread_state(pid, tid).is_none_or(|s| s != 'R'),
        _ => true,
    })
}

/// What one stop saw of a module's code ([`module_idle`]).
#[derive(Debug, Default)]
struct ModuleSeen {
    /// Threads neither in the code nor with a return address into it.
    clear: HashSet<i32>,
    /// Why the code is not idle (one thread's story), if it is not.
    busy: Option<String>,
}

/// Which of the stopped threads are clear of `code` (ranges): not executing in it, and no
/// word of the stack read points into it (return addresses, signal frames; other words that
/// happen to point there only make this more careful).
fn module_idle(threads: &[ThreadView], code: &[(u64, u64)]) -> ModuleSeen {
    let inside = |a: u64| code.iter().any(|&(s, e)| a >= s && a < e);
    let mut seen = ModuleSeen::default();
    for t in threads {
        if inside(t.rip) {
            seen.busy = Some(format!("thread {} is executing in the module at {:#x}", t.tid, t.rip));
            continue;
        }
        let word =
            t.stack.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default())).find(|&v| inside(v));
        if let Some(v) = word {
            seen.busy = Some(format!("thread {} has a return address into the module ({v:#x})", t.tid));
            continue;
        }
        seen.clear.insert(t.tid);
    }
    seen
}

/// Flags of mmap(2) and open(2), as the target's kernel takes them.
mod mmap {
    /// Readable: the target's own system calls read the scratch strings placed in a reservation.
    pub const PROT_READ: u64 = 1;
    pub const MAP_PRIVATE: u64 = 0x02;
    pub const MAP_FIXED: u64 = 0x10;
    pub const MAP_ANONYMOUS: u64 = 0x20;
    pub const MAP_FIXED_NOREPLACE: u64 = 0x100000;
    /// The module's pages are faulted in when mapped, not by the service's threads when they
    /// first run the patched code right after the switch.
    pub const MAP_POPULATE: u64 = 0x8000;
    pub const O_RDONLY_CLOEXEC: u64 = 0o2000000;
    pub const AT_FDCWD: i64 = -100;
}

/// How many bytes of each thread's stack, from its stack pointer up, are scanned for return
/// addresses and signal frames while the threads are stopped. The bytes to overwrite hold no
/// call, so only a signal frame can hold an address inside them, and signal frames sit at the
/// young end of the stack. At most 16 KiB, and no more than the live stack (see
/// `Target::stack_extent`): most threads' reads are a page.
const STACK_SCAN: usize = 16 << 10;

/// How many bytes of each thread's stack are scanned for return addresses into a module before
/// it is unmapped: real return addresses can sit deep, and a miss would let a thread return into
/// unmapped memory, so this scan is wide (bounded by the live stack, so most reads are small).
const UNLOAD_SCAN: usize = 512 << 10;

fn thread_alive(pid: i32, tid: i32) -> bool {
    pannus_kernel::thread_state(pid, tid).is_some_and(|s| s != 'Z')
}

/// Makes room for a new record of patch `id`: an old rolled-back record is dropped, unless its
/// module is still mapped (a thread was inside it at rollback), in which case it is kept under
/// `id@seq` so that a later rollback can still unload it.
fn retire(reg: &mut Registry, id: &str) {
    if let Some(old) = reg.get_mut(id) {
        if old.module_mapped {
            old.patch = format!("{id}@{}", old.seq);
            return;
        }
    }
    reg.patches.retain(|r| r.patch != id);
}

fn set_state(reg: &mut Registry, id: &str, state: State) {
    if let Some(r) = reg.get_mut(id) {
        r.state = state;
    }
}

fn cancelled(stage: Stage) -> Error {
    Error::new(Kind::Other, format!("cancelled before {stage}"))
}

/// The journal's word for an error.
pub fn outcome_of(e: &Error) -> &'static str {
    match e.kind {
        Kind::BadInput | Kind::Precondition => "refused",
        Kind::Busy => "busy",
        Kind::Other => "failed",
    }
}

/// The run-time address of the first function among `names` that a loaded object exports.
fn exported_function(objects: &[Loaded], names: &[&str]) -> Option<u64> {
    objects.iter().find_map(|o| {
        names.iter().find_map(|n| {
            o.object.lookup_dynamic(n, None).filter(|s| s.defined && s.kind == SymKind::Func).map(|s| o.addr(s.value))
        })
    })
}

/// Resolves one symbol the module refers to, in the order of DESIGN.md.
fn resolve(
    s: &crate::elf::Symbol,
    dropped: &[String],
    requires: &[(Arc<Object>, u64)],
    object: &Loaded,
    others: &[Loaded],
    patch: &str,
) -> Result<(Value, String)> {
    let kind_check = |k: SymKind, from: &str| -> Result<()> {
        if k == SymKind::Tls {
            return Err(Error::bad_input(format!(
                "`{}` is a thread-local variable of {from}, which load: mmap does not support",
                s.name
            )));
        }
        Ok(())
    };
    // 1. The module itself (unless the target has this global: then the target's wins).
    if s.defined && !dropped.contains(&s.name) {
        kind_check(s.kind, "the module")?;
        if s.kind == SymKind::Ifunc {
            return Err(Error::bad_input(format!(
                "`{}` is an indirect function of the module, which load: mmap does not support",
                s.name
            )));
        }
        return Ok((Value::Module(s.value), format!("module {patch}")));
    }
    // 2. The patches it requires.
    for (o, bias) in requires {
        if let Some(d) = o.lookup_dynamic(&s.name, None) {
            kind_check(d.kind, "a required patch")?;
            return Ok((Value::Abs(bias.wrapping_add(d.value)), o.path.display().to_string()));
        }
    }
    // 3. The target object, file-local symbols included.
    match object.object.lookup(&s.name) {
        Ok(Some(d)) => {
            kind_check(d.kind, "the target object")?;
            let a = object.addr(d.value);
            let v = if d.kind == SymKind::Ifunc { Value::Ifunc(a) } else { Value::Abs(a) };
            return Ok((v, object.mapped_path.clone()));
        }
        Ok(None) => {}
        Err(addrs) => {
            return Err(Error::precondition(format!(
                "`{}` is ambiguous in {}: {} file-local definitions",
                s.name,
                object.mapped_path,
                addrs.len()
            )))
        }
    }
    // 4. The other objects the process has loaded, with symbol versions.
    for o in others {
        if o.lo == object.lo {
            continue;
        }
        if let Some(d) = o.object.lookup_dynamic(&s.name, s.version.as_deref()) {
            kind_check(d.kind, &o.mapped_path)?;
            let a = o.addr(d.value);
            let v = if d.kind == SymKind::Ifunc { Value::Ifunc(a) } else { Value::Abs(a) };
            return Ok((v, o.mapped_path.clone()));
        }
    }
    if s.weak {
        return Ok((Value::Zero, "undefined weak".into()));
    }
    let ver = s.version.as_deref().map(|v| format!("@{v}")).unwrap_or_default();
    Err(Error::precondition(format!(
        "symbol `{}{ver}` needed by the module is defined nowhere: not in the module, the patches it requires, {}, nor any library the process has loaded",
        s.name, object.mapped_path
    ))
    .hint("add the missing patch to `requires`, or build the module against this program"))
}

/// Reads the registry of a process without locking or stopping it.
pub fn read_status(pid: i32) -> Result<(Target, Registry)> {
    let target = Target::open(pid)?;
    let reg = registry::read_from(&target.mem, &target.maps)?;
    Ok((target, reg))
}

/// Seconds left in a trial, 0 when past.
pub fn remaining(rec: &PatchRecord) -> Option<u64> {
    rec.trial_deadline.map(|d| d.saturating_sub(now_secs()))
}

/// Runs a health check once: `Ok(())` when the command exits 0 within the timeout.
pub fn run_health_check(h: &crate::manifest::HealthCheck, pid: i32, patch: &str) -> std::result::Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new("sh")
        .args(["-c", &h.command])
        .env("PANNUS_PID", pid.to_string())
        .env("PANNUS_PATCH", patch)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run the health check: {e}"))?;
    let deadline = Instant::now() + Duration::from_millis(h.timeout_ms);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(format!("`{}` failed ({st})", h.command)),
            Ok(None) if Instant::now() >= deadline => {
                // The whole process group: the shell and what it started.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                return Err(format!("`{}` timed out after {} ms", h.command, h.timeout_ms));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("health check: {e}")),
        }
    }
}

/// Waits for the trial of `patch` to end and applies its `on_expiry` policy; `tick` is called
/// about twice a second with the seconds left. While waiting, runs the patch's health check at
/// its interval, records each result in the process, and rolls the patch back when the check
/// fails the given number of times in a row. Returns the final state.
///
/// A caller started at `SCHED_IDLE` (the trial watcher) watches the clock at that policy and
/// returns to the normal one before it runs the health check or the expiry policy, which have to
/// happen on time.
pub fn wait_trial(engine: &Engine, pid: i32, patch: &str, mut tick: impl FnMut(u64)) -> Result<State> {
    let on_duty = || {
        pannus_kernel::foreground();
    };
    let mut next_check: Option<Instant> = None;
    let mut health = crate::registry::Health::default();
    loop {
        let (_, reg) = read_status(pid)?;
        let Some(rec) = reg.get(patch) else {
            return Ok(State::RolledBack);
        };
        if rec.state != State::Trial {
            return Ok(rec.state);
        }
        let left = remaining(rec).unwrap_or(0);
        tick(left);
        if let Some(h) = rec.health_check.clone().filter(|_| left > 0) {
            let interval = Duration::from_millis(h.interval_ms);
            let due = *next_check.get_or_insert_with(|| Instant::now() + interval);
            if Instant::now() >= due {
                on_duty();
                next_check = Some(Instant::now() + interval);
                let result = run_health_check(&h, pid, patch);
                health.runs += 1;
                health.last_at = now_secs();
                match &result {
                    Ok(()) => {
                        health.failing = 0;
                        health.last = "ok".into();
                    }
                    Err(why) => {
                        health.failing += 1;
                        health.last = why.clone();
                    }
                }
                let mut s = Session::open(engine, pid)?;
                s.record_health(patch, &health)?;
                if health.failing >= h.failures {
                    let why = format!(
                        "health check failed {} time(s) in a row during the trial: {}",
                        health.failing, health.last
                    );
                    s.rollback_because(Some(patch), true, &why, &mut Quiet)?;
                    return Ok(State::RolledBack);
                }
            }
        }
        if left == 0 {
            on_duty();
            let mut s = Session::open(engine, pid)?;
            let reg = s.registry()?;
            match reg.get(patch).map(|r| (r.state, r.on_expiry)) {
                Some((State::Trial, OnExpiry::Commit)) => {
                    s.commit(patch, "trial expired: committed by policy")?;
                    return Ok(State::Committed);
                }
                Some((State::Trial, OnExpiry::Rollback)) => {
                    s.rollback_because(Some(patch), true, "trial expired: rolled back by policy", &mut Quiet)?;
                    return Ok(State::RolledBack);
                }
                Some((st, _)) => return Ok(st),
                None => return Ok(State::RolledBack),
            }
        }
        let mut nap = Duration::from_millis(500).min(Duration::from_secs(left));
        if let Some(due) = next_check {
            nap = nap.min(due.saturating_duration_since(Instant::now()));
        }
        std::thread::sleep(nap.max(Duration::from_millis(10)));
    }
}

/// A process pannus can see, with its patches.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub name: String,
    pub exe: String,
    pub patches: Vec<PatchRecord>,
}

/// Every process with patches (all processes with `all`).
pub fn list_processes(all: bool) -> Vec<ProcessInfo> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    let me = std::process::id() as i32;
    let mut pids: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    for pid in pids {
        if pid == me {
            continue;
        }
        let patches = registry::read_process(pid);
        if patches.is_none() && !all {
            continue;
        }
        let patches = patches.unwrap_or_default();
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
        if !all && !patches.iter().any(|p| p.state.is_applied()) {
            continue;
        }
        out.push(ProcessInfo { pid, name, exe, patches });
    }
    out
}

/// Starts a detached `pannus trial-watch` for `patch`: it carries out the trial's `on_expiry`
/// policy at the deadline even when no pannus runs in the foreground (the engineer's terminal
/// may have dropped), and exits as soon as the patch leaves trial by any other way.
pub fn spawn_trial_watcher(engine: &Engine, pid: i32, patch: &str) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().map_err(|e| Error::other(format!("cannot find the pannus binary: {e}")))?;
    let child = Command::new(exe)
        .args(["trial-watch", "--pid", &pid.to_string(), patch])
        .env("PANNUS_STATE_DIR", &engine.state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::other(format!("cannot start the trial watcher: {e}")))?;
    // Its start-up takes a CPU for a millisecond or two right when the patch went live, and a
    // thread of the service woken on that CPU would wait behind it for up to a time slice. It
    // runs at SCHED_IDLE, and keeps to it while it only watches the clock (see wait_trial): from
    // before its exec when started under a `SpareCpu` guard (whose watchdog gives a starved
    // child the normal policy back), else from here on.
    pannus_kernel::background(child.id() as i32);
    Ok(child)
}

/// The trial watcher's body ([`spawn_trial_watcher`] starts it at `SCHED_IDLE`): leaves the
/// terminal's session, then waits for the trial to end.
pub fn watch_trial(engine: &Engine, pid: i32, patch: &str) -> Result<State> {
    let _ = nix::unistd::setsid();
    // Whatever it was started at (from a pannus that was given the normal policy back, it
    // starts at the normal policy): it waits at SCHED_IDLE.
    pannus_kernel::background(0);
    match wait_trial(engine, pid, patch, |_| {}) {
        Ok(s) => Ok(s),
        Err(e) if !pannus_kernel::process_exists(pid) => {
            let _ = e;
            Ok(State::RolledBack)
        }
        Err(e) => {
            let _ = engine.journal().record("trial-watch", pid, "", Some(patch), outcome_of(&e), &e.message);
            Err(e)
        }
    }
}
