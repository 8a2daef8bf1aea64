//! `pannus daemon`: keeps the installed patches (see `install.rs`) applied in every new process
//! of their build. It learns of each `exec` from the kernel's process-events connector (or, where
//! that cannot be opened, by walking `/proc` every few milliseconds), looks at the new process
//! until its dynamic loader has mapped the C library, and applies each installed patch whose
//! object it maps with the manifest's build-id in memory, with the engine every apply uses. A
//! walk of every process once a second catches libraries mapped later (`dlopen`) and anything the
//! events missed.
//!
//! A patch installed on trial is applied on trial until the same deadline (its trial watcher
//! started as `apply` starts it); a committed one is applied and committed. Each process is
//! worked on in a thread of its own, so that one process in the way (a busy stop, a lock held by
//! another pannus) never delays the others. A process the daemon cannot patch is left as it was
//! (the engine undoes what it did) and journaled; it is not tried again.

use crate::engine::{now_secs, outcome_of, Engine, Observer, Session, Stage};
use crate::error::{Error, Kind, Result};
use crate::install::{self, Installed, State as InstallState};
use crate::registry::{OnExpiry, State};
use crate::target::Target;
use pannus_kernel::exec_hold;
use pannus_kernel::exec_watch::{ExecWatch, HeldExec};
use pannus_kernel::maps;
use pannus_kernel::proc_events::{Event, ProcEvents};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a new process is looked at, from its `exec`, for its loader to map what it needs.
const FRESH_WINDOW: Duration = Duration::from_secs(2);
/// How often a new process is looked at meanwhile, and how often `/proc` is walked for new pids
/// without the connector.
const FRESH_INTERVAL: Duration = Duration::from_millis(1);
/// How often every process is looked at (libraries mapped later, missed events), and the
/// installed patches read again.
const RESCAN: Duration = Duration::from_secs(1);
/// How long the daemon waits for another pannus holding a process.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Attempts on a process that was busy (a thread in the way, another pannus) before it is let go.
const BUSY_ATTEMPTS: u32 = 3;

/// A line on standard error, which never panics.
fn log(msg: &str) {
    let _ = writeln!(std::io::stderr(), "pannus daemon: {msg}");
}

/// A process, by pid and start time (pids are reused).
type Key = (i32, u64);

/// An installed patch the daemon keeps applied, with the identity of its object on disk.
#[derive(Clone)]
struct Wanted {
    installed: Installed,
    dev: (i32, i32),
    ino: u64,
}

/// How the daemon learns of new processes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Walk `/proc` instead of listening to the process-events connector.
    pub poll: bool,
    /// Hold each `exec` of an installed patch's program (fanotify) and patch it before `main`.
    pub hold: bool,
}

/// Runs until SIGTERM or SIGINT (`stopped` says when one came, see `cli::interrupt`).
pub fn run(engine: &Engine, options: Options, stopped: fn() -> Option<&'static str>) -> Result<()> {
    let poll = options.poll;
    let mut engine = engine.clone();
    engine.lock_wait = engine.lock_wait.min(LOCK_WAIT);
    engine.journal().check()?;
    let events = if poll {
        None
    } else {
        match ProcEvents::open() {
            Ok(e) => Some(e),
            Err(e) => {
                log(&format!("{e}; walking /proc for new processes instead"));
                None
            }
        }
    };
    log(&format!(
        "watching for new processes ({}), installed patches in {}",
        if events.is_some() { "process-events connector" } else { "walking /proc" },
        engine.state_dir.join(install::FOLDER).display()
    ));
    let me = std::fs::metadata("/proc/self/exe").map(|m| (m.dev(), m.ino())).ok();
    let (tx, rx) = channel();
    let shared = Shared::default();
    let execs = match options.hold.then(ExecWatch::open).transpose() {
        Ok(None) => None,
        Ok(Some(w)) => {
            log("each exec of an installed patch's program held (fanotify): patched before main");
            let w = Arc::new(w);
            let (w2, shared2, engine2, tx2) = (Arc::clone(&w), shared.clone(), engine.clone(), tx.clone());
            std::thread::spawn(move || watch_execs(&w2, &shared2, &engine2, &tx2, stopped));
            Some(w)
        }
        Err(e) => {
            log(&format!("{e}: new processes are patched after their exec, not before main"));
            None
        }
    };
    let mut d = Daemon {
        engine,
        shared,
        execs,
        wanted: Vec::new(),
        said: HashSet::new(),
        listed: false,
        handled: HashMap::new(),
        busy: HashMap::new(),
        working: HashSet::new(),
        fresh: HashMap::new(),
        known: HashSet::new(),
        me,
        finished: rx,
    };
    let mut last_scan: Option<Instant> = None;
    while stopped().is_none() {
        if last_scan.is_none_or(|t| t.elapsed() >= RESCAN) {
            d.reload();
            d.scan_all(&tx);
            last_scan = Some(Instant::now());
        }
        let wait = if d.fresh.is_empty() { Duration::from_millis(100) } else { FRESH_INTERVAL };
        match &events {
            Some(ev) => match ev.next(wait) {
                Ok(list) => {
                    for e in list {
                        match e {
                            Event::Exec { pid } => d.saw_exec(pid),
                            Event::Lost => last_scan = None,
                        }
                    }
                }
                Err(e) => {
                    log(&e.to_string());
                    std::thread::sleep(wait);
                }
            },
            None => {
                std::thread::sleep(FRESH_INTERVAL.max(Duration::from_millis(2)));
                d.new_pids();
            }
        }
        d.collect();
        d.look_at_fresh(&tx);
    }
    log(&format!("{} received: finishing the work under way", stopped().unwrap_or("a signal")));
    while !d.working.is_empty() || !d.shared.held().is_empty() {
        match d.finished.recv_timeout(Duration::from_secs(60)) {
            Ok(done) => d.done(done),
            Err(_) => break,
        }
    }
    log("stopped");
    Ok(())
}

/// What a worker did in one process.
struct Done {
    key: Key,
    /// Each patch attempted, and `None` when it was applied, else the error.
    results: Vec<(String, Option<Error>)>,
}

struct Daemon {
    engine: Engine,
    /// What the threads holding new processes at their entry point share with the loop.
    shared: Shared,
    /// fanotify on the installed patches' objects, where it can be had.
    execs: Option<Arc<ExecWatch>>,
    wanted: Vec<Wanted>,
    /// Whether the installed patches were logged once (then each time they change).
    listed: bool,
    /// Problems already logged (an installed patch that does not read), so each is said once.
    said: HashSet<String>,
    /// The patches done (applied, or given up) in each process.
    handled: HashMap<Key, HashSet<String>>,
    /// How many times each patch was found busy in each process.
    busy: HashMap<(Key, String), u32>,
    /// Processes a worker is on.
    working: HashSet<Key>,
    /// New processes, until when they are looked at.
    fresh: HashMap<i32, Instant>,
    /// Without the connector: the processes already seen.
    known: HashSet<Key>,
    /// pannus's own executable, whose processes (trial watchers) are never patched.
    me: Option<(u64, u64)>,
    /// What the workers and the holders finished.
    finished: Receiver<Done>,
}

impl Daemon {
    /// Reads the installed patches again.
    fn reload(&mut self) {
        let (found, bad) = install::read_all(&self.engine.state_dir);
        for (id, e) in bad {
            if self.said.insert(format!("{id}: {}", e.message)) {
                log(&format!("installed patch `{id}` left aside: {e}"));
            }
        }
        let mut wanted = Vec::new();
        for i in found {
            if i.state() == InstallState::RolledBack {
                continue;
            }
            if let Some(run) = &i.record.canary {
                let what = if run.running() {
                    format!("a canary rollout is under way (pannus, pid {})", run.by)
                } else {
                    format!(
                        "its canary rollout was interrupted (pannus, pid {}, is gone): `pannus install` again \
                         finishes it, `pannus uninstall` ends it",
                        run.by
                    )
                };
                if self.said.insert(format!("{}: {what}", i.manifest.patch)) {
                    log(&format!("`{}`: {what}; no other process gets it until it ends", i.manifest.patch));
                }
                continue;
            }
            match std::fs::metadata(&i.manifest.target.object) {
                Ok(meta) => {
                    let dev = (nix::sys::stat::major(meta.dev()) as i32, nix::sys::stat::minor(meta.dev()) as i32);
                    wanted.push(Wanted { dev, ino: meta.ino(), installed: i });
                }
                Err(e) => {
                    let obj = i.manifest.target.object.display();
                    if self.said.insert(format!("{}: {obj}: {e}", i.manifest.patch)) {
                        log(&format!("installed patch `{}`: target object {obj}: {e}", i.manifest.patch));
                    }
                }
            }
        }
        if let Some(w) = &self.execs {
            let objects = |ws: &[Wanted]| {
                let mut o: Vec<PathBuf> = ws.iter().map(|w| w.installed.manifest.target.object.clone()).collect();
                o.sort();
                o.dedup();
                o
            };
            let now = objects(&wanted);
            if now != objects(&self.wanted) || self.wanted.is_empty() {
                let paths: Vec<&Path> = now.iter().map(PathBuf::as_path).collect();
                if let Err(e) = w.watch(&paths) {
                    log(&e.to_string());
                }
            }
        }
        if let Ok(mut w) = self.shared.wanted.lock() {
            *w = wanted.clone();
        }
        // A patch no longer wanted, or installed anew: done with in no process any more (a
        // process its uninstall rolled back gets it again when it is installed again).
        let installs = |w: &[Wanted]| {
            w.iter().map(|w| (w.installed.manifest.patch.clone(), w.installed.record.installed_at)).collect::<Vec<_>>()
        };
        let now = installs(&wanted);
        for (id, _) in installs(&self.wanted).into_iter().filter(|old| !now.contains(old)) {
            self.handled.values_mut().for_each(|done| {
                done.remove(&id);
            });
        }
        let ids = |w: &[Wanted]| w.iter().map(|w| w.installed.manifest.patch.clone()).collect::<Vec<_>>();
        if ids(&wanted) != ids(&self.wanted) || !self.listed {
            self.listed = true;
            let list = ids(&wanted);
            log(&format!("installed patches: {}", if list.is_empty() { "none".to_string() } else { list.join(", ") }));
        }
        self.wanted = wanted;
    }

    fn saw_exec(&mut self, pid: i32) {
        if pid != std::process::id() as i32 {
            self.fresh.insert(pid, Instant::now() + FRESH_WINDOW);
        }
    }

    /// Without the connector: pids not seen before are new processes.
    fn new_pids(&mut self) {
        let mut now = HashSet::new();
        for pid in crate::processes::pids() {
            let pid = pid.get();
            let Some(start) = crate::processes::start_time(pid) else { continue };
            if !self.known.contains(&(pid, start)) {
                self.saw_exec(pid);
            }
            now.insert((pid, start));
        }
        self.known = now;
    }

    /// Every process, once.
    fn scan_all(&mut self, tx: &Sender<Done>) {
        self.handled.retain(|&(pid, start), _| crate::processes::start_time(pid) == Some(start));
        if self.wanted.is_empty() {
            return;
        }
        for pid in crate::processes::pids() {
            self.look_at(pid.get(), tx);
        }
    }

    /// The new processes, each until it is ready for the patches it needs or its time is up.
    fn look_at_fresh(&mut self, tx: &Sender<Done>) {
        let now = Instant::now();
        let pids: Vec<i32> = self.fresh.keys().copied().collect();
        for pid in pids {
            let settled = self.look_at(pid, tx);
            if settled || self.fresh.get(&pid).is_none_or(|&until| now >= until) {
                self.fresh.remove(&pid);
            }
        }
    }

    /// Looks at process `pid` and starts a worker for the patches it needs; `true` once nothing
    /// more is to be learnt from waiting for its loader (it is being patched, needs nothing, or
    /// is gone).
    fn look_at(&mut self, pid: i32, tx: &Sender<Done>) -> bool {
        if self.wanted.is_empty() {
            return true;
        }
        let Some(start) = crate::processes::start_time(pid) else { return true };
        let key = (pid, start);
        if self.working.contains(&key) {
            return true;
        }
        if self.shared.held().contains(&pid) {
            return false;
        }
        // A holder sends what it did before it lets go of the process: taken in now, so that a
        // patch it failed to apply is not tried again.
        self.collect();
        let Ok(pmaps) = maps::read(pid) else { return true };
        if let Some(me) = self.me {
            let exe = std::fs::metadata(format!("/proc/{pid}/exe")).map(|m| (m.dev(), m.ino())).ok();
            if exe == Some(me) {
                return true;
            }
        }
        // The borrowed thread needs the C library's code: until the loader has mapped it, wait.
        let libc = pmaps.iter().any(|m| {
            let name = m.path.rsplit('/').next().unwrap_or("");
            name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
        });
        let handled = self.handled.get(&key);
        let maps_object = |w: &Wanted| pmaps.iter().any(|m| m.inode == w.ino && m.dev == w.dev && !m.path.is_empty());
        let needed: Vec<&Wanted> = self
            .wanted
            .iter()
            .filter(|w| !handled.is_some_and(|h| h.contains(&w.installed.manifest.patch)))
            .filter(|w| maps_object(w))
            .collect();
        if !libc {
            return false;
        }
        if needed.is_empty() {
            return true;
        }
        let Some((todo, settled)) = still_needed(pid, &needed) else { return true };
        self.handled.entry(key).or_default().extend(settled);
        if todo.is_empty() {
            return true;
        }
        self.working.insert(key);
        let engine = self.engine.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let results = work(&engine, pid, &todo, "after it started");
            let _ = tx.send(Done { key, results });
        });
        true
    }

    /// Takes in what the workers finished.
    fn collect(&mut self) {
        while let Ok(done) = self.finished.try_recv() {
            self.done(done);
        }
    }

    fn done(&mut self, done: Done) {
        self.working.remove(&done.key);
        let handled = self.handled.entry(done.key).or_default();
        for (patch, error) in done.results {
            match error {
                Some(e) if e.kind == Kind::Busy => {
                    let n = self.busy.entry((done.key, patch.clone())).or_default();
                    *n += 1;
                    if *n >= BUSY_ATTEMPTS {
                        handled.insert(patch);
                    }
                }
                _ => {
                    handled.insert(patch);
                }
            }
        }
        // A process with work left (a busy patch) is looked at again soon.
        if crate::processes::start_time(done.key.0) == Some(done.key.1) {
            self.fresh.entry(done.key.0).or_insert_with(|| Instant::now() + FRESH_WINDOW);
        }
    }
}

/// Of `needed`, those whose build-id process `pid` has in memory and that its registry does not
/// hold yet; then the ids of the others, which need nothing more. `None` when the process cannot
/// be read.
fn still_needed(pid: i32, needed: &[&Wanted]) -> Option<(Vec<Installed>, Vec<String>)> {
    let mut target = Target::open(pid).ok()?;
    let reg = crate::registry::read_from(&target.mem, &target.maps).ok()?;
    let (mut todo, mut settled) = (Vec::new(), Vec::new());
    for w in needed {
        let m = &w.installed.manifest;
        let same_build = target.find_object(&m.target.object).ok().and_then(|l| target.build_id_in_memory(&l));
        let applied = reg.get(&m.patch).is_some_and(|r| r.state.is_applied());
        // Rolled back in this process since it was installed (by hand, by its trial, by the
        // `apply` that failed): not applied again behind the operator's back. A later build of
        // the module still is, and so is the patch installed again after that rollback.
        let since = w.installed.record.installed_at.unwrap_or(0);
        let rolled_back = reg.get(&m.patch).is_some_and(|r| {
            r.state == State::RolledBack
                && r.module_sha256 == m.module.sha256
                && r.ended_at.unwrap_or(u64::MAX) >= since
        });
        if same_build.is_none() || applied || rolled_back {
            settled.push(m.patch.clone());
        } else {
            todo.push(w.installed.clone());
        }
    }
    Some((todo, settled))
}

/// The daemon's observer: says no once SIGTERM or SIGINT came, so that an apply under way is
/// undone and the process let go as it was.
struct Unattended;

impl Observer for Unattended {
    fn confirm(&mut self, _stage: Stage, _plan: &str) -> bool {
        crate::cli::interrupt::received().is_none()
    }
    fn why_not(&self) -> Option<String> {
        crate::cli::interrupt::received().map(|sig| format!("{sig} received by the daemon"))
    }
}

/// Applies `todo` (in requires order) in process `pid`, each as installed.
fn work(engine: &Engine, pid: i32, todo: &[Installed], when: &str) -> Vec<(String, Option<Error>)> {
    let mut results = Vec::new();
    for i in todo {
        let patch = i.manifest.patch.clone();
        let started = Instant::now();
        match apply_installed(engine, pid, i) {
            Ok(state) => {
                log(&format!("`{patch}` applied to process {pid} {when} ({state}) in {:?}", started.elapsed()));
                results.push((patch, None));
            }
            Err(e) => {
                log(&format!("`{patch}` not applied to process {pid}: {e}"));
                results.push((patch, Some(e)));
            }
        }
    }
    results
}

/// Applies installed patch `i` to process `pid`: on trial until the installed trial's deadline,
/// its trial watcher started; or committed.
fn apply_installed(engine: &Engine, pid: i32, i: &Installed) -> Result<&'static str> {
    let m = &i.manifest;
    let mut engine = engine.clone();
    if i.state() == InstallState::Trial {
        let deadline = i.trial_deadline_secs().unwrap_or_else(|| now_secs() + m.trial.duration.as_secs());
        if deadline <= now_secs() && OnExpiry::from(m.trial.on_expiry) == OnExpiry::Rollback {
            let e = Error::precondition(format!(
                "the trial of installed patch `{}` is over and its policy is to roll back: not applied",
                m.patch
            ));
            let _ = engine.journal().record("apply", pid, &process_name(pid), Some(&m.patch), "refused", &e.message);
            return Err(e);
        }
        engine.trial_until = Some(deadline);
    }
    let engine = &engine;
    let mut s = match Session::open(engine, pid) {
        Ok(s) => s,
        Err(e) => {
            if pannus_kernel::process_exists(pid) {
                let _ = engine.journal().record(
                    "apply",
                    pid,
                    &process_name(pid),
                    Some(&m.patch),
                    outcome_of(&e),
                    &e.message,
                );
            }
            return Err(e);
        }
    };
    let applied = s.apply(m, &mut Unattended)?;
    let steps: Vec<String> =
        applied.measured.timings.steps().iter().map(|(k, d)| format!("{k} {:.1} ms", d.as_secs_f64() * 1e3)).collect();
    log(&format!("`{}` in process {pid}: {}", m.patch, steps.join(", ")));
    if i.state() == InstallState::Committed {
        s.commit(&m.patch, "installed patch: committed, as installed")?;
        return Ok("committed");
    }
    drop(s);
    if let Err(e) = crate::trial::spawn_trial_watcher(engine, pid, &m.patch) {
        log(&format!("`{}` in process {pid}: {e}", m.patch));
    }
    Ok("trial")
}

fn process_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// What the threads that hold new processes share with the daemon's loop.
#[derive(Clone, Default)]
struct Shared {
    /// The installed patches, as last read.
    wanted: Arc<Mutex<Vec<Wanted>>>,
    /// The processes held at their entry point (or on their way there): the loop leaves them to
    /// their holder.
    held: Arc<Mutex<HashSet<i32>>>,
}

impl Shared {
    fn held(&self) -> HashSet<i32> {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }
    fn set_held(&self, pid: i32, on: bool) {
        if let Ok(mut h) = self.held.lock() {
            if on {
                h.insert(pid);
            } else {
                h.remove(&pid);
            }
        }
    }
}

/// How long a new process may take from its held `exec` to its entry point.
const HOLD_WAIT: Duration = Duration::from_secs(2);

/// The thread that answers fanotify: each `exec` of a watched program is let go once its thread
/// is seized, and held at its entry point by a thread of its own.
fn watch_execs(
    watch: &Arc<ExecWatch>,
    shared: &Shared,
    engine: &Engine,
    tx: &Sender<Done>,
    stopped: fn() -> Option<&'static str>,
) {
    let me = std::process::id() as i32;
    while stopped().is_none() {
        let held = match watch.next(Duration::from_millis(100)) {
            Ok(h) => h,
            Err(e) => {
                log(&e.to_string());
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        for h in held {
            let tid = h.tid();
            // A thread other than the leader execs: its pid changes at the exec; the process
            // is patched after its exec instead.
            let tgid = std::fs::read_to_string(format!("/proc/{tid}/status"))
                .ok()
                .and_then(|st| st.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok()));
            let leader = tgid == Some(tid) && tid != me;
            if !leader || shared.held().contains(&tid) {
                let _ = watch.allow(&h);
                continue;
            }
            shared.set_held(tid, true);
            let (watch, shared, engine, tx) = (Arc::clone(watch), shared.clone(), engine.clone(), tx.clone());
            std::thread::spawn(move || {
                hold(&watch, h, &shared, &engine, &tx);
                shared.set_held(tid, false);
            });
        }
    }
}

/// Seizes the thread of a held `exec`, lets the `exec` go, runs the new program to its entry
/// point, applies what it needs there, and lets it go on.
fn hold(watch: &ExecWatch, h: HeldExec, shared: &Shared, engine: &Engine, tx: &Sender<Done>) {
    let pid = h.tid();
    let since_exec = Instant::now();
    let seized = exec_hold::seize_exec(pid);
    if let Err(e) = watch.allow(&h) {
        log(&e.to_string());
    }
    drop(h);
    if let Err(e) = seized {
        log(&format!("process {pid} not held before main: {e}"));
        return;
    }
    let at = match exec_hold::run_to_entry(pid, Instant::now() + HOLD_WAIT, || park_site(pid)) {
        Ok(at) => at,
        Err(e) => {
            log(&format!("process {pid} not held before main: {e}"));
            return;
        }
    };
    let started = crate::processes::start_time(pid);
    pannus_kernel::fault::point("process parked at its entry point");
    let wanted = shared.wanted.lock().map(|w| w.clone()).unwrap_or_default();
    let todo = maps::read(pid).ok().and_then(|pmaps| {
        let needed: Vec<&Wanted> = wanted
            .iter()
            .filter(|w| pmaps.iter().any(|m| m.inode == w.ino && m.dev == w.dev && !m.path.is_empty()))
            .collect();
        still_needed(pid, &needed)
    });
    let results = match &todo {
        Some((todo, _)) if !todo.is_empty() => work(engine, pid, todo, "before main"),
        _ => Vec::new(),
    };
    // Released only if it is still that process (its pid not taken by another since it exited).
    let same = started.is_some() && crate::processes::start_time(pid) == started;
    if !same {
        log(&format!("process {pid} exited while held"));
        return;
    }
    match exec_hold::release(&at, Duration::from_secs(1)) {
        Ok(()) => log(&format!("process {pid} let go at its entry point {:?} after its exec", since_exec.elapsed())),
        Err(e) => log(&format!("process {pid}: {e}")),
    }
    if let (Some(start), Some((_, settled))) = (crate::processes::start_time(pid), todo) {
        let mut results = results;
        results.extend(settled.into_iter().map(|p| (p, None)));
        let _ = tx.send(Done { key: (pid, start), results });
    }
}

/// Where a process held at its entry point sleeps: the `syscall; ret` of its C library's
/// `getpid` (`mov $39, %eax; syscall; ret`), a leaf that moves no stack pointer.
fn park_site(pid: i32) -> Option<u64> {
    use std::sync::OnceLock;
    // Where `getpid` is in each C library file (by device and inode), from its start: found once.
    type ByFile = HashMap<(i32, i32, u64), u64>;
    static KNOWN: OnceLock<Mutex<ByFile>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    let is_libc = |path: &str| {
        let name = path.rsplit('/').next().unwrap_or("");
        name.starts_with("libc.so") || name.starts_with("libc-")
    };
    let pmaps = maps::read(pid).ok()?;
    let first = pmaps.iter().find(|m| is_libc(&m.path) && m.offset == 0)?;
    let key = (first.dev.0, first.dev.1, first.inode);
    let mem = pannus_kernel::Mem::open(pid).ok()?;
    if let Some(off) = known.lock().ok().and_then(|k| k.get(&key).copied()) {
        if let Some(site) = getpid_syscall(&mem, first.start + off) {
            return Some(site);
        }
    }
    let mut t = Target::open(pid).ok()?;
    let libc = t.loaded_objects().into_iter().find(|l| is_libc(&l.mapped_path))?;
    let at = libc.addr(libc.object.lookup("getpid").ok()??.value);
    let site = getpid_syscall(&mem, at)?;
    if let Ok(mut k) = known.lock() {
        k.insert(key, at.wrapping_sub(first.start));
    }
    Some(site)
}

/// The `syscall; ret` of the `getpid` at `at`, when nothing comes before it but `endbr64` and
/// the `mov` of the call's number into %eax.
fn getpid_syscall(mem: &pannus_kernel::Mem, at: u64) -> Option<u64> {
    let code = mem.read_vec(at, 16).ok()?;
    let k = code.windows(3).position(|w| w == [0x0f, 0x05, 0xc3])?;
    let before = &code[..k];
    let plain = before == [0xb8, 0x27, 0, 0, 0] || before == [0xf3, 0x0f, 0x1e, 0xfa, 0xb8, 0x27, 0, 0, 0];
    plain.then_some(at + k as u64)
}
