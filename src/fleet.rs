//! Every process of a binary: one patch applied to, or rolled back from, every process that
//! maps its target object, several processes at a time (see [`run_all`]), with one summary of
//! what was patched, what was skipped and why, and what failed.
//!
//! A process matches when it maps the manifest's target object (same device and inode as the
//! file) and the build-id in its memory is the manifest's. pannus itself is never a member, and
//! a process that exits meanwhile is skipped as `exited`.
//!
//! Exit code of a fleet command ([`Summary::exit_code`]): 0 when every matching process is now
//! in the wanted state (patched, or skipped because it already was); else the most severe code
//! among the failures, in the order 1 (anything else) > 3 (busy) > 4 (precondition) > 2 (bad
//! input); 4 when there was nothing to do at all (no process with the right build-id in memory).

use crate::elf::Object;
use crate::engine::{self, Engine, Observer, Quiet, Session};
use crate::error::{Error, Kind, Result};
use crate::manifest::Manifest;
use crate::processes::{self, Pid, Process, Scope};
use crate::registry;
use crate::target::Target;
use pannus_kernel::maps;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// Skip reason: the patch is already active in the process.
pub const ALREADY_APPLIED: &str = "already applied";
/// Skip reason: the patch is not applied (any more) in the process.
pub const ALREADY_ROLLED_BACK: &str = "already rolled back";
/// Skip reason: the process maps the object, but runs another build of it.
pub const BUILD_ID_DIFFERS: &str = "build-id differs in memory";
/// Skip reason: the process exited before or while pannus worked on it.
pub const EXITED: &str = "exited";

/// A process a fleet command will work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pid: Pid,
    pub name: String,
    /// The architecture it runs (`None`: its executable could not be read).
    pub arch: Option<pannus_kernel::Arch>,
}

impl From<Process> for Member {
    fn from(p: Process) -> Member {
        Member { pid: p.pid, name: p.name, arch: p.arch }
    }
}

/// A process left alone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub pid: i32,
    pub reason: String,
    /// Whether the process is already in the state the command wants (e.g. the patch is
    /// already applied): such a skip counts as done.
    pub settled: bool,
}

/// A process the command failed on.
#[derive(Debug, Clone)]
pub struct Failed {
    pub pid: i32,
    pub error: Error,
}

/// What a fleet command found before touching anything.
#[derive(Debug, Clone)]
pub struct Plan {
    pub patch: String,
    /// The processes to work on, by pid.
    pub members: Vec<Member>,
    pub skipped: Vec<Skipped>,
    /// Processes that cannot be worked on (e.g. a patch stopped between stages).
    pub failed: Vec<Failed>,
}

impl Plan {
    pub fn pids(&self) -> Vec<i32> {
        self.members.iter().map(|m| m.pid.get()).collect()
    }

    /// The architecture of each member whose architecture is known, by pid.
    pub fn archs(&self) -> BTreeMap<i32, String> {
        self.members.iter().filter_map(|m| Some((m.pid.get(), m.arch?.name()))).collect()
    }
}

/// The architectures of `archs` (by pid) for a message: `i386` when every process runs the
/// same, else each with its processes (`x86-64 (pids 10, 12), i386 (pid 11)`); empty when none
/// is known.
pub fn archs_text(archs: &BTreeMap<i32, String>) -> String {
    let mut by: Vec<(&str, Vec<i32>)> = Vec::new();
    for (&pid, arch) in archs {
        match by.iter_mut().find(|(a, _)| *a == arch.as_str()) {
            Some((_, pids)) => pids.push(pid),
            None => by.push((arch, vec![pid])),
        }
    }
    if let [(only, _)] = by.as_slice() {
        return only.to_string();
    }
    let list = |pids: &[i32]| pids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
    by.iter()
        .map(|(a, pids)| format!("{a} (pid{} {})", if pids.len() == 1 { "" } else { "s" }, list(pids)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which fleet command a summary is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Rollback,
}

/// The outcome of a fleet command.
#[derive(Debug, Clone)]
pub struct Summary {
    pub operation: Operation,
    pub patch: String,
    /// Processes the command patched (apply only), in order.
    pub patched: Vec<i32>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
    /// Processes rolled back: by `rollback --all`, or (apply with rollback on failure) the
    /// processes this command had patched before another one failed.
    pub rolled_back: Vec<i32>,
    /// Processes whose undoing after a failure failed in turn.
    pub rollback_failed: Vec<Failed>,
    /// Things that went wrong without failing a process (e.g. a trial watcher not started).
    pub warnings: Vec<String>,
    /// The signal that cancelled the run: an apply rolls back every process it patched; a
    /// rollback touches no process after the one under way.
    pub cancelled: Option<String>,
    /// The architecture of each process the command set out to work on, by pid.
    pub archs: BTreeMap<i32, String>,
}

/// The order of severity of the exit codes: 1 > 3 > 4 > 2.
pub(crate) fn severity(kind: Kind) -> u8 {
    match kind {
        Kind::Other | Kind::Cancelled => 4,
        Kind::Busy => 3,
        Kind::Precondition => 2,
        Kind::BadInput => 1,
    }
}

/// A fleet command's exit code (see the module documentation): the most severe of the
/// failures; else 0 when some process was `done` or already in the wanted state; else 4.
pub(crate) fn exit_code<'a>(failed: impl IntoIterator<Item = &'a Failed>, done: bool, skipped: &[Skipped]) -> i32 {
    if let Some(kind) = failed.into_iter().map(|f| f.error.kind).max_by_key(|k| severity(*k)) {
        return kind.exit_code();
    }
    if done || skipped.iter().any(|s| s.settled) {
        0
    } else {
        Kind::Precondition.exit_code()
    }
}

impl Summary {
    fn new(operation: Operation, plan: &Plan) -> Summary {
        Summary {
            operation,
            patch: plan.patch.clone(),
            patched: Vec::new(),
            skipped: plan.skipped.clone(),
            failed: plan.failed.clone(),
            rolled_back: Vec::new(),
            rollback_failed: Vec::new(),
            warnings: Vec::new(),
            cancelled: None,
            archs: plan.archs(),
        }
    }

    /// The command's exit code (see the module documentation).
    pub fn exit_code(&self) -> i32 {
        if self.cancelled.is_some() && self.rollback_failed.is_empty() {
            return Kind::Cancelled.exit_code();
        }
        let done = match self.operation {
            Operation::Apply => !self.patched.is_empty(),
            Operation::Rollback => !self.rolled_back.is_empty(),
        };
        exit_code(self.failed.iter().chain(&self.rollback_failed), done, &self.skipped)
    }

    /// The summary for a person: one line of counts, then one line per process.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let list = |pids: &[i32]| pids.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
        let (done, verb) = match self.operation {
            Operation::Apply => (self.patched.len(), "patched"),
            Operation::Rollback => (self.rolled_back.len(), "rolled back"),
        };
        out.push_str(&format!(
            "`{}`: {done} {verb}, {} skipped, {} failed",
            self.patch,
            self.skipped.len(),
            self.failed.len()
        ));
        out.push('\n');
        if !self.archs.is_empty() {
            out.push_str(&format!("  architecture: {}\n", archs_text(&self.archs)));
        }
        if self.operation == Operation::Apply && !self.patched.is_empty() {
            out.push_str(&format!("  patched:     {}\n", list(&self.patched)));
        }
        if !self.rolled_back.is_empty() {
            let what = match self.operation {
                Operation::Apply => "rolled back again after the failure",
                Operation::Rollback => "rolled back",
            };
            out.push_str(&format!("  {what}: {}\n", list(&self.rolled_back)));
        }
        for s in &self.skipped {
            out.push_str(&format!("  skipped {}: {}\n", s.pid, s.reason));
        }
        for f in &self.failed {
            out.push_str(&format!("  FAILED  {} (exit {}): {}\n", f.pid, f.error.kind.exit_code(), f.error));
        }
        for f in &self.rollback_failed {
            out.push_str(&format!("  NOT ROLLED BACK {}: {}\n", f.pid, f.error));
        }
        for w in &self.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
        if let Some(sig) = &self.cancelled {
            out.push_str(&format!("  cancelled: {sig}\n"));
        }
        out
    }
}

/// `engine` with a cache the processes of one run share (see [`engine::Shared`]).
pub(crate) fn shared(engine: &Engine) -> Engine {
    let mut engine = engine.clone();
    engine.shared = Some(std::sync::Arc::new(engine::Shared::default()));
    engine
}

pub(crate) fn gone(pid: i32) -> bool {
    !pannus_kernel::process_exists(pid)
}

pub(crate) fn skipped(pid: i32, reason: impl Into<String>, settled: bool) -> Skipped {
    Skipped { pid, reason: reason.into(), settled }
}

/// Finds every process that maps the manifest's target object, and sorts them into those to
/// patch and those to leave alone. Reads each process without stopping it. Refused when the
/// object on disk is not the manifest's build or no process maps it.
pub fn plan_apply(m: &Manifest) -> Result<Plan> {
    let path = &m.target.object;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::bad_input(format!("target object {}: cannot read: {e}", path.display())))?;
    let object = Object::load(path, "target object")?;
    crate::engine::build_id_matches(path, &object, &m.target.build_id)?;
    let dev = meta.dev();
    let dev = (nix::sys::stat::major(dev) as i32, nix::sys::stat::minor(dev) as i32);
    let ino = meta.ino();

    let mut plan = Plan { patch: m.patch.clone(), members: Vec::new(), skipped: Vec::new(), failed: Vec::new() };
    let mut mapped = false;
    for pid in processes::pids() {
        let pid = pid.get();
        let Ok(pmaps) = maps::read(pid) else { continue };
        if !pmaps.iter().any(|x| x.inode == ino && x.dev == dev && !x.path.is_empty()) {
            continue;
        }
        mapped = true;
        let mut target = match Target::open(pid) {
            Ok(t) => t,
            Err(_) if gone(pid) => continue,
            Err(error) => {
                plan.failed.push(Failed { pid, error });
                continue;
            }
        };
        let loaded = match target.find_object(path) {
            Ok(l) => l,
            Err(_) if gone(pid) => continue,
            Err(e) => {
                plan.skipped.push(skipped(pid, e.message, false));
                continue;
            }
        };
        if target.build_id_in_memory(&loaded).is_none() {
            if !gone(pid) {
                plan.skipped.push(skipped(pid, BUILD_ID_DIFFERS, false));
            }
            continue;
        }
        let reg = match registry::read_from(&target.mem, &target.maps) {
            Ok(r) => r,
            Err(_) if gone(pid) => continue,
            Err(error) => {
                plan.failed.push(Failed { pid, error });
                continue;
            }
        };
        match reg.get(&m.patch).filter(|p| p.state.is_applied()) {
            Some(p) if p.state.is_active() => {
                let reason = if p.manifest_digest == m.digest {
                    ALREADY_APPLIED.to_string()
                } else {
                    format!("{ALREADY_APPLIED} (version {}, from another manifest)", p.version)
                };
                plan.skipped.push(skipped(pid, reason, true));
            }
            Some(p) => plan.failed.push(Failed {
                pid,
                error: Error::precondition(format!(
                    "patch `{}` is {} in process {pid}: a pannus stopped between stages",
                    m.patch, p.state
                ))
                .hint(format!("roll it back first: pannus rollback --pid {pid} {}", m.patch)),
            }),
            None => plan.members.push(Member { pid: pid.into(), name: target.name.clone(), arch: target.arch }),
        }
    }
    if !mapped {
        return Err(Error::precondition(format!("no process maps {}", path.display()))
            .hint("check target.object in the manifest, and that the program is running (see pannus ps --all)"));
    }
    Ok(plan)
}

/// Finds every process where `patch` is applied (in any state but rolled back), reading each
/// registry without stopping the process. Refused when there is none.
pub fn plan_rollback(patch: &str) -> Result<Plan> {
    plan_rollback_where(patch, |_| true)
}

/// [`plan_rollback`] of the processes that have the patch of manifest `m` itself: its module,
/// for its build of its object (an installed patch, which is the desired state of that build).
pub fn plan_rollback_of(m: &Manifest) -> Result<Plan> {
    plan_rollback_where(&m.patch, |r| r.module_sha256 == m.module.sha256 && r.build_id == m.target.build_id)
}

fn plan_rollback_where(patch: &str, keep: impl Fn(&registry::PatchRecord) -> bool) -> Result<Plan> {
    let mut plan = Plan { patch: patch.to_string(), members: Vec::new(), skipped: Vec::new(), failed: Vec::new() };
    for p in processes::list(Scope::Patched, None) {
        if p.applied().any(|r| r.patch == patch && keep(r)) {
            plan.members.push(p.into());
        }
    }
    if plan.members.is_empty() {
        return Err(Error::precondition(format!("patch `{patch}` is not applied in any process"))
            .hint("see pannus status --all"));
    }
    Ok(plan)
}

/// How a fleet apply behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// When a process fails, stop, and roll back the processes this command already patched.
    pub rollback_on_failure: bool,
    /// Start the detached trial watcher after each successful apply (the pannus binary only).
    pub watch: bool,
    /// Looked at before each stage and each process: `Some(signal)` (Ctrl-C, SIGTERM, SIGHUP
    /// received) means "no": the stage under way finishes, the process's apply is undone, the
    /// remaining processes are not attempted and those this command patched are rolled back.
    pub interrupted: Option<fn() -> Option<&'static str>>,
}

/// The observer of a fleet apply: says no once [`ApplyOptions::interrupted`] says so.
struct Stoppable(Option<fn() -> Option<&'static str>>);

impl Stoppable {
    fn received(&self) -> Option<&'static str> {
        self.0.and_then(|f| f())
    }
}

impl Observer for Stoppable {
    fn confirm(&mut self, _stage: engine::Stage, _plan: &str) -> bool {
        self.received().is_none()
    }
    fn why_not(&self) -> Option<String> {
        self.received().map(|sig| format!("{sig} received"))
    }
}

/// After a failure on `pid`: the reason to count it as skipped instead (it exited, or the
/// process was already in the wanted state because another pannus got there first).
fn skip_instead(pid: i32, patch: &str, operation: Operation, error: &Error) -> Option<Skipped> {
    if gone(pid) {
        return Some(skipped(pid, EXITED, false));
    }
    if error.kind != Kind::Precondition {
        return None;
    }
    let (_, reg) = engine::read_status(pid).ok()?;
    let state = reg.get(patch).map(|p| p.state);
    match operation {
        Operation::Apply if state.is_some_and(|s| s.is_active()) => Some(skipped(pid, ALREADY_APPLIED, true)),
        Operation::Rollback if !state.is_some_and(|s| s.is_applied()) => Some(skipped(pid, ALREADY_ROLLED_BACK, true)),
        _ => None,
    }
}

/// What a fleet command tells its caller while it works.
pub trait Report {
    /// A line about one step of one process.
    fn line(&mut self, text: &str);
    /// A line about a process that failed.
    fn failure(&mut self, text: &str) {
        self.line(text);
    }
    /// After each process: `done` of `total` processes done, `failed` of them failed.
    fn count(&mut self, _done: usize, _total: usize, _failed: usize) {}
}

impl<F: FnMut(&str)> Report for F {
    fn line(&mut self, text: &str) {
        self(text)
    }
}

/// How many processes a fleet command works on at once: twice the CPUs pannus may run on (most of
/// each process's time is spent waiting for its borrowed thread, or for its threads to stop), at
/// most 16.
pub fn workers() -> usize {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (2 * cpus).clamp(1, 16)
}

/// What a fleet command did to one process.
pub(crate) enum Outcome<T> {
    Done(T),
    Skipped(Skipped),
    Failed(Failed),
}

/// What the calling thread hears from the workers.
pub(crate) enum Event<T> {
    Started(usize),
    Finished(usize, Outcome<T>),
}

/// Runs `work` on every member, on the calling thread for the first and then on up to `workers`
/// threads for the rest, in the plan's order; each process is worked on by one thread from its
/// open to its end, under its own lock, and the stop of one process stops none of the others.
/// The first runs alone: the run's shared pre-flight (see [`engine::Shared`]) is filled once,
/// and a failure every process would meet is met once.
///
/// `heard` gets every start and end on the calling thread, as they happen, and returns whether
/// to go on; a new process is started only while it does and `interrupted` says nothing (the
/// processes under way finish). Returns each member's outcome, in the plan's order; `None` for
/// a member never started.
pub(crate) fn run_all<T: Send>(
    members: &[Member],
    workers: usize,
    interrupted: Option<fn() -> Option<&'static str>>,
    work: &(dyn Fn(&Member) -> Outcome<T> + Sync),
    heard: &mut dyn FnMut(&Event<T>) -> bool,
) -> Vec<Option<Outcome<T>>> {
    let mut out: Vec<Option<Outcome<T>>> = members.iter().map(|_| None).collect();
    let stopped = || interrupted.and_then(|f| f()).is_some();
    let Some(first) = members.first().filter(|_| !stopped()) else { return out };
    let mut go_on = heard(&Event::Started(0));
    let outcome = work(first);
    let event = Event::Finished(0, outcome);
    go_on &= heard(&event);
    if let Event::Finished(_, o) = event {
        out[0] = Some(o);
    }
    if !go_on || members.len() == 1 {
        return out;
    }
    let next = AtomicUsize::new(1);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Event<T>>();
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, members.len() - 1) {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            let worker = move || {
                // Each worker keeps to pannus's policy on spare CPU time as the first thread
                // does, under its own guard (a policy belongs to a thread).
                if pannus_kernel::SpareCpu::active() {
                    pannus_kernel::foreground();
                }
                let _spare = pannus_kernel::SpareCpu::enter();
                while !stop.load(Ordering::SeqCst) && !stopped() {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(member) = members.get(i) else { break };
                    if tx.send(Event::Started(i)).is_err() {
                        break;
                    }
                    let outcome = work(member);
                    if tx.send(Event::Finished(i, outcome)).is_err() {
                        break;
                    }
                }
            };
            if std::thread::Builder::new().name("pannus-fleet".into()).spawn_scoped(scope, worker).is_err() {
                break;
            }
        }
        drop(tx);
        for event in rx {
            if !heard(&event) {
                stop.store(true, Ordering::SeqCst);
            }
            if let Event::Finished(i, o) = event {
                if let Some(slot) = out.get_mut(i) {
                    *slot = Some(o);
                }
            }
        }
    });
    out
}

/// Applies the manifest to every member of `plan`, each with the full checks and four stages of
/// a single apply, several processes at a time (see [`run_all`]). `progress` receives a line per
/// step; the summary lists processes in the plan's order.
///
/// With `rollback_on_failure`, the first failure (including one found while planning) stops
/// the run: no other process is started (those under way finish), the remaining processes are
/// skipped as not attempted, and those this command patched are rolled back, newest first.
pub fn apply(engine: &Engine, m: &Manifest, plan: &Plan, options: ApplyOptions, progress: &mut dyn Report) -> Summary {
    apply_with(engine, m, plan, options, workers(), progress)
}

/// [`apply`] on up to `workers` threads.
pub fn apply_with(
    engine: &Engine,
    m: &Manifest,
    plan: &Plan,
    options: ApplyOptions,
    workers: usize,
    progress: &mut dyn Report,
) -> Summary {
    let engine = &shared(engine);
    let mut s = Summary::new(Operation::Apply, plan);
    let mut stopped_by = if options.rollback_on_failure { s.failed.first().map(|f| f.pid) } else { None };
    // One trial watcher for the run, started with the first process patched and given each
    // process as soon as it is patched.
    let watchers: Mutex<Option<Result<crate::trial::TrialWatchers>>> = Mutex::new(None);
    let watch = |pid: i32| -> Result<()> {
        let mut w = watchers.lock().unwrap_or_else(|p| p.into_inner());
        match w.get_or_insert_with(|| crate::trial::TrialWatchers::spawn(engine, &m.patch)) {
            Ok(w) => w.watch(pid),
            Err(e) => Err(e.clone()),
        }
    };
    let work = |member: &Member| -> Outcome<(engine::Applied, Option<String>)> {
        let pid = member.pid.get();
        let mut obs = Stoppable(options.interrupted);
        let applied = Session::open(engine, pid).and_then(|mut session| session.apply(m, &mut obs));
        match applied {
            // A signal while this process's last stage ran: it is rolled back with the others,
            // and no trial watcher is started.
            Ok(applied) if !options.watch || obs.received().is_some() => Outcome::Done((applied, None)),
            Ok(applied) => {
                let warning = watch(pid).err().map(|e| {
                    format!("process {pid}: {}; the trial's on_expiry policy will not run unattended", e.message)
                });
                Outcome::Done((applied, warning))
            }
            Err(error) => match skip_instead(pid, &m.patch, Operation::Apply, &error) {
                Some(skip) => Outcome::Skipped(skip),
                None => Outcome::Failed(Failed { pid, error }),
            },
        }
    };
    let go_on = stopped_by.is_none();
    let (total, mut done, mut failures) = (plan.members.len(), 0usize, 0usize);
    let mut heard = |event: &Event<(engine::Applied, Option<String>)>| {
        match event {
            Event::Started(i) => {
                let member = &plan.members[*i];
                progress.line(&format!("process {} ({}): applying `{}`", member.pid.get(), member.name, m.patch));
            }
            Event::Finished(i, outcome) => {
                let pid = plan.members[*i].pid.get();
                done += 1;
                match outcome {
                    Outcome::Done((applied, _)) => {
                        progress.line(&format!("process {pid}: patched, state {}", applied.record.state))
                    }
                    Outcome::Skipped(skip) => progress.line(&format!("process {pid}: skipped, {}", skip.reason)),
                    Outcome::Failed(f) => {
                        failures += 1;
                        progress.failure(&format!("process {pid}: failed: {}", f.error.message));
                        if options.rollback_on_failure && stopped_by.is_none() {
                            stopped_by = Some(pid);
                        }
                    }
                }
                progress.count(done, total, failures);
            }
        }
        stopped_by.is_none()
    };
    let outcomes = match go_on {
        true => run_all(&plan.members, workers, options.interrupted, &work, &mut heard),
        false => plan.members.iter().map(|_| None).collect(),
    };
    s.cancelled = options.interrupted.and_then(|f| f()).map(|sig| format!("{sig} received"));
    for (member, outcome) in plan.members.iter().zip(outcomes) {
        let pid = member.pid.get();
        match outcome {
            Some(Outcome::Done((_, warning))) => {
                s.patched.push(pid);
                s.warnings.extend(warning);
            }
            Some(Outcome::Skipped(skip)) => s.skipped.push(skip),
            Some(Outcome::Failed(f)) => s.failed.push(f),
            None => {
                let reason = match (&s.cancelled, stopped_by) {
                    (Some(sig), _) => format!("not attempted: cancelled, {sig}"),
                    (None, Some(culprit)) => format!("not attempted: process {culprit} failed"),
                    (None, None) => "not attempted".to_string(),
                };
                s.skipped.push(skipped(pid, reason, false));
            }
        }
    }
    if (options.rollback_on_failure && !s.failed.is_empty()) || s.cancelled.is_some() {
        let why = s.cancelled.as_ref().map(|sig| format!("cancelled: {sig} during apply --all"));
        for &pid in s.patched.iter().rev() {
            progress.line(&format!("process {pid}: rolling back `{}`", m.patch));
            let rollback = |mut session: Session| match &why {
                Some(why) => session.rollback_because(Some(&m.patch), false, why, &mut Quiet),
                None => session.rollback(Some(&m.patch), false, &mut Quiet),
            };
            match Session::open(engine, pid).and_then(rollback) {
                Ok(_) => {
                    if let Some(why) = &why {
                        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                        let detail = format!("{why}: rolled back, the process is as it was");
                        let _ =
                            engine.journal().record("apply", pid, name.trim(), Some(&m.patch), "cancelled", &detail);
                    }
                    s.rolled_back.push(pid)
                }
                Err(error) => {
                    progress.failure(&format!("process {pid}: rollback failed: {}", error.message));
                    s.rollback_failed.push(Failed { pid, error });
                }
            }
        }
    }
    s
}

/// Rolls `plan.patch` back in every member of `plan` (with `cascade`, the patches that require
/// it first), several processes at a time (see [`run_all`]). `progress` receives a line per
/// step; the summary lists processes in the plan's order.
///
/// Once `interrupted` says a signal was received, the rollbacks under way finish and no other
/// process is touched: each is skipped, journaled as cancelled.
pub fn rollback(
    engine: &Engine,
    plan: &Plan,
    cascade: bool,
    interrupted: Option<fn() -> Option<&'static str>>,
    progress: &mut dyn Report,
) -> Summary {
    rollback_with(engine, plan, cascade, "", interrupted, workers(), progress)
}

/// [`rollback`] for a reason (`why`), recorded in the journal and each process's record.
pub fn rollback_because(engine: &Engine, plan: &Plan, cascade: bool, why: &str, progress: &mut dyn Report) -> Summary {
    rollback_with(engine, plan, cascade, why, None, workers(), progress)
}

/// [`rollback`] on up to `workers` threads, for a reason when `why` is not empty.
fn rollback_with(
    engine: &Engine,
    plan: &Plan,
    cascade: bool,
    why: &str,
    interrupted: Option<fn() -> Option<&'static str>>,
    workers: usize,
    progress: &mut dyn Report,
) -> Summary {
    let engine = &shared(engine);
    let mut s = Summary::new(Operation::Rollback, plan);
    let work = |member: &Member| -> Outcome<engine::RolledBack> {
        let pid = member.pid.get();
        match Session::open(engine, pid)
            .and_then(|mut session| session.rollback_because(Some(&plan.patch), cascade, why, &mut Quiet))
        {
            Ok(done) => Outcome::Done(done),
            Err(error) => match skip_instead(pid, &plan.patch, Operation::Rollback, &error) {
                Some(skip) => Outcome::Skipped(skip),
                None => Outcome::Failed(Failed { pid, error }),
            },
        }
    };
    let (total, mut done, mut failures) = (plan.members.len(), 0usize, 0usize);
    let mut heard = |event: &Event<engine::RolledBack>| {
        match event {
            Event::Started(i) => {
                let member = &plan.members[*i];
                progress.line(&format!(
                    "process {} ({}): rolling back `{}`",
                    member.pid.get(),
                    member.name,
                    plan.patch
                ));
            }
            Event::Finished(i, outcome) => {
                let pid = plan.members[*i].pid.get();
                done += 1;
                match outcome {
                    Outcome::Done(rb) => progress.line(&format!("process {pid}: rolled back {}", rb.ids.join(", "))),
                    Outcome::Skipped(skip) => progress.line(&format!("process {pid}: skipped, {}", skip.reason)),
                    Outcome::Failed(f) => {
                        failures += 1;
                        progress.failure(&format!("process {pid}: failed: {}", f.error.message));
                    }
                }
                progress.count(done, total, failures);
            }
        }
        true
    };
    let outcomes = run_all(&plan.members, workers, interrupted, &work, &mut heard);
    s.cancelled = interrupted.and_then(|received| received()).map(|sig| format!("{sig} received"));
    for (member, outcome) in plan.members.iter().zip(outcomes) {
        let pid = member.pid.get();
        match outcome {
            Some(Outcome::Done(_)) => s.rolled_back.push(pid),
            Some(Outcome::Skipped(skip)) => s.skipped.push(skip),
            Some(Outcome::Failed(f)) => s.failed.push(f),
            None => {
                let sig = s.cancelled.as_deref().unwrap_or("a signal received");
                let reason = format!("not attempted: cancelled, {sig} during rollback --all");
                progress.line(&format!("process {pid}: {reason}"));
                let _ = engine.journal().record("rollback", pid, &member.name, Some(&plan.patch), "cancelled", &reason);
                s.skipped.push(skipped(pid, reason, false));
            }
        }
    }
    s
}

/// Every process that has a patch applied, with all its patch records, read from each process
/// without stopping it.
pub fn status() -> Vec<Process> {
    processes::list(Scope::Patched, None)
}

/// How long to wait for another pannus holding a process, from `PANNUS_LOCK_WAIT` (a duration
/// such as `500ms` or `2s`, or a number of seconds). `None` when unset or unreadable.
pub fn lock_wait_from_env() -> Option<Duration> {
    parse_lock_wait(&std::env::var("PANNUS_LOCK_WAIT").ok()?)
}

fn parse_lock_wait(s: &str) -> Option<Duration> {
    let s = s.trim();
    match s.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(pid: i32, kind: Kind) -> Failed {
        Failed { pid, error: Error::new(kind, "x") }
    }

    fn summary() -> Summary {
        let plan = Plan { patch: "p".into(), members: vec![], skipped: vec![], failed: vec![] };
        Summary::new(Operation::Apply, &plan)
    }

    #[test]
    fn architectures_are_named_once_when_every_process_shares_one() {
        let archs = |v: &[(i32, &str)]| v.iter().map(|&(p, a)| (p, a.to_string())).collect();
        assert_eq!(archs_text(&archs(&[(10, "i386"), (12, "i386")])), "i386");
        assert_eq!(
            archs_text(&archs(&[(10, "x86-64"), (11, "i386"), (12, "x86-64")])),
            "x86-64 (pids 10, 12), i386 (pid 11)"
        );
        assert_eq!(archs_text(&BTreeMap::new()), "");
    }

    #[test]
    fn exit_code_precedence() {
        let mut s = summary();
        assert_eq!(s.exit_code(), 4, "nothing done");
        s.skipped.push(skipped(1, ALREADY_APPLIED, true));
        assert_eq!(s.exit_code(), 0);
        s.failed.push(failed(2, Kind::BadInput));
        assert_eq!(s.exit_code(), 2);
        s.failed.push(failed(3, Kind::Precondition));
        assert_eq!(s.exit_code(), 4);
        s.failed.push(failed(4, Kind::Busy));
        assert_eq!(s.exit_code(), 3);
        s.failed.push(failed(5, Kind::Other));
        assert_eq!(s.exit_code(), 1);
    }

    #[test]
    fn lock_wait_parses() {
        assert_eq!(parse_lock_wait("0"), Some(Duration::ZERO));
        assert_eq!(parse_lock_wait("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_lock_wait("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_lock_wait("soon"), None);
    }
}
