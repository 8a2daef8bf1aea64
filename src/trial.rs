//! The trial: a countdown after activation, during which the patch's health check runs and
//! at whose end its `on_expiry` policy commits or rolls it back. A detached trial watcher
//! (`pannus trial-watch`) carries the policy out even when no pannus runs in the foreground;
//! the CLI's `--wait` and the console use the same functions.

use crate::engine::{now_secs, outcome_of, read_status, Applied, Engine, Observer, Quiet, Session};
use crate::error::{Error, Result};
use crate::ledger;
use crate::manifest::Manifest;
use crate::registry::{Health, HealthCheck, OnExpiry, PatchRecord, State};
use std::time::{Duration, Instant};

/// A patch applied, and its trial watcher: started, or why not (then the trial's `on_expiry`
/// policy will not run unattended).
pub struct Watched {
    pub applied: Applied,
    pub watcher: Result<std::process::Child>,
}

/// Applies `m` in the session's process, then starts the trial watcher. The process's lock is
/// let go before the watcher starts.
pub fn apply_watched(mut session: Session, m: &Manifest, obs: &mut dyn Observer) -> Result<Watched> {
    let (engine, pid) = (session.engine, session.target.pid);
    let applied = session.apply(m, obs)?;
    drop(session);
    let watcher = spawn_trial_watcher(engine, pid, &applied.record.patch);
    Ok(Watched { applied, watcher })
}

/// Whether `rec` is a trial whose deadline (as the process's record says) is past at `now`
/// (Unix seconds): its policy is overdue, its watcher gone or held up, and any pannus that sees
/// it carries the policy out.
pub fn is_overdue(rec: &PatchRecord, now: u64) -> bool {
    rec.state == State::Trial && rec.trial_deadline.is_some_and(|d| now > d)
}

/// Whether `rec` is still on trial at `now` with its deadline reached: shown as `OVERDUE`, never
/// as a countdown at 00:00 (its policy is carried out within the second, see [`is_overdue`]).
pub fn deadline_reached(rec: &PatchRecord, now: u64) -> bool {
    rec.state == State::Trial && rec.trial_deadline.is_some_and(|d| now >= d)
}

/// How long a pannus that only happens to see an overdue trial waits for another pannus holding
/// the process before it leaves the policy to that one (or to the next pannus).
const OVERDUE_LOCK_WAIT: Duration = Duration::from_millis(200);

/// Carries out the policy of every overdue trial among `patches` of process `pid` (see
/// [`is_overdue`]), as any pannus does that sees one. Returns each patch it acted on, with the
/// outcome; a trial it could not act on (another pannus holds the process, this host has no
/// record of it) stays overdue, for the next one.
pub fn carry_out_overdue(engine: &Engine, pid: i32, patches: &[PatchRecord]) -> Vec<(String, Result<State>)> {
    let now = now_secs();
    let overdue: Vec<&str> = patches.iter().filter(|r| is_overdue(r, now)).map(|r| r.patch.as_str()).collect();
    if overdue.is_empty() {
        return Vec::new();
    }
    let mut quick = engine.clone();
    quick.lock_wait = quick.lock_wait.min(OVERDUE_LOCK_WAIT);
    overdue.into_iter().map(|p| (p.to_string(), expire(&quick, pid, p))).collect()
}

/// The registry of process `pid` while `patch` is on trial there; else the state the trial
/// ended in (rolled back when the patch is gone).
fn still_on_trial(pid: i32, patch: &str) -> Result<std::result::Result<crate::registry::Registry, State>> {
    let (_, reg) = read_status(pid)?;
    Ok(match reg.get(patch).map(|r| r.state) {
        None => Err(State::RolledBack),
        Some(State::Trial) => Ok(reg),
        Some(state) => Err(state),
    })
}

/// Follows the trial of `patch` from the foreground (`apply --wait`) while its trial watcher
/// runs the health check and, at the deadline, the policy; `tick` is called about twice a
/// second with the seconds left. Once the trial is overdue it carries out the policy itself (the
/// watcher may be gone). Returns the final state; stops early, with a cancelled error, at a
/// signal that means "no" (the trial goes on, watched).
pub fn follow_trial(
    engine: &Engine,
    pid: i32,
    patch: &str,
    interrupted: impl Fn() -> Option<&'static str>,
    mut tick: impl FnMut(u64),
) -> Result<State> {
    loop {
        let reg = match still_on_trial(pid, patch)? {
            Ok(reg) => reg,
            Err(state) => return Ok(state),
        };
        let Some(rec) = reg.get(patch) else { continue };
        if let Some(sig) = interrupted() {
            return Err(Error::cancelled(format!(
                "{sig} received: stopped waiting; patch `{patch}` stays in its trial in process {pid}, \
                 and its trial watcher carries out its {} policy at the deadline",
                rec.on_expiry
            ))
            .hint(format!("see pannus status --pid {pid}")));
        }
        tick(crate::engine::remaining(rec).unwrap_or(0));
        if is_overdue(rec, now_secs()) {
            match expire(engine, pid, patch) {
                Ok(state) if state != State::Trial => return Ok(state),
                // The host's deadline is a moment later, or another pannus is at it.
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Carries out the `on_expiry` policy of `patch`, whose trial has run out: commit, or roll
/// back with the patches that require it. Returns the state the patch is in afterwards (as it
/// was, if it had already left its trial).
pub fn expire(engine: &Engine, pid: i32, patch: &str) -> Result<State> {
    let mut s = Session::open(engine, pid)?;
    let reg = s.registry()?;
    let Some(rec) = reg.get(patch) else { return Ok(State::RolledBack) };
    if rec.state != State::Trial {
        return Ok(rec.state);
    }
    let entry = ledger::required(&engine.state_dir, pid, patch)?;
    if entry.manifest_digest != rec.manifest_digest {
        return Err(another_application(pid, patch));
    }
    // The deadline is root's, not the one the process's record says.
    let left = entry.deadline.saturating_sub(now_secs());
    if left > 0 {
        return Err(Error::precondition(format!(
            "the trial of `{patch}` in process {pid} ends in {left} s by this host's record, not yet"
        )));
    }
    let waiting = required_on_trial(&reg, rec);
    if entry.on_expiry == OnExpiry::Commit && !waiting.is_empty() {
        return Err(Error::precondition(postponed(pid, patch, &waiting)));
    }
    match (rec.state, entry.on_expiry) {
        (State::Trial, OnExpiry::Commit) => {
            s.commit(patch, "trial expired: committed by policy")?;
            Ok(State::Committed)
        }
        (State::Trial, OnExpiry::Rollback) => {
            s.rollback_because(Some(patch), true, "trial expired: rolled back by policy", &mut Quiet)?;
            Ok(State::RolledBack)
        }
        (st, _) => Ok(st),
    }
}

/// The patches `rec` requires that are still on trial in `reg`: while there are any, a commit of
/// `rec` at its deadline waits (their rollback would take it along).
fn required_on_trial(reg: &crate::registry::Registry, rec: &PatchRecord) -> Vec<String> {
    rec.requires.iter().filter(|r| reg.get(r).is_some_and(|p| p.state == State::Trial)).cloned().collect()
}

/// Why the commit of `patch` at its deadline waits for `waiting`.
fn postponed(pid: i32, patch: &str, waiting: &[String]) -> String {
    let names = waiting.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ");
    format!(
        "the trial of `{patch}` in process {pid} is over, but it requires {names}, still on trial: it is committed \
         once {names} is committed, and rolled back with it otherwise"
    )
}

/// The patch in the process is not the one root recorded (rolled back and applied again from
/// another manifest, or its record rewritten by the process).
fn another_application(pid: i32, patch: &str) -> Error {
    Error::precondition(format!(
        "patch `{patch}` in process {pid} is not the application this host recorded (its manifest digest differs): \
         its trial is not carried out from here"
    ))
    .hint(format!("see pannus status --pid {pid}; commit or roll it back by hand"))
}

/// How often a trial watcher looks whether the installed patch it watches was rolled back
/// everywhere.
const INSTALLED_LOOK: Duration = Duration::from_secs(2);

/// Runs a health check once: `Ok(())` when the command exits 0 within the timeout.
pub fn run_health_check(h: &HealthCheck, pid: i32, patch: &str) -> std::result::Result<(), String> {
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
/// The deadline, the policy and the health check are root's record of the trial (see
/// `ledger.rs`), never the process's registry, which only says whether the patch is still on
/// trial.
///
/// A caller started at `SCHED_IDLE` (the trial watcher) watches the clock at that policy and
/// returns to the normal one (the urgent one on saturated CPUs, see
/// `pannus_kernel::on_duty`) before it runs the health check or the expiry policy, which have
/// to happen on time.
pub fn wait_trial(engine: &Engine, pid: i32, patch: &str, mut tick: impl FnMut(u64)) -> Result<State> {
    let on_duty = || {
        pannus_kernel::on_duty();
    };
    let mut next_check: Option<Instant> = None;
    let mut health = Health::default();
    let mut copies = crate::forks::CopiesHealth::default();
    let mut last_look: Option<Instant> = None;
    let mut entry: Option<ledger::Entry> = None;
    // Whether the journal says the commit waits for a patch it requires.
    let mut said_postponed = false;
    loop {
        let reg = match still_on_trial(pid, patch)? {
            Ok(reg) => reg,
            Err(state) => return Ok(state),
        };
        let Some(rec) = reg.get(patch) else { continue };
        let entry = match &entry {
            Some(e) => e,
            None => match ledger::load(&engine.state_dir, pid, patch)? {
                Some(e) => entry.insert(e),
                // Forgotten by a rollback since the registry was read: look again.
                None if read_status(pid)?.1.get(patch).is_none_or(|r| r.state != State::Trial) => continue,
                None => {
                    return Err(ledger::required(&engine.state_dir, pid, patch).err().unwrap_or_else(|| {
                        Error::other(format!("patch `{patch}` in process {pid}: no record in the state folder"))
                    }))
                }
            },
        };
        if rec.manifest_digest != entry.manifest_digest {
            return Err(another_application(pid, patch));
        }
        let left = entry.deadline.saturating_sub(now_secs());
        tick(left);
        // An installed patch rolled back everywhere since it was applied here (a health check
        // failed elsewhere): this process too, should the rollback everywhere have missed it.
        if left == 0 || last_look.is_none_or(|t: Instant| t.elapsed() >= INSTALLED_LOOK) {
            last_look = Some(Instant::now());
            let (sha, build) = (&entry.module_sha256, &rec.build_id);
            if let Some(why) = crate::install::rolled_back_since(&engine.state_dir, patch, sha, build, rec.applied_at) {
                on_duty();
                let why = format!("the installed patch was rolled back everywhere: {why}");
                return until_done(engine, pid, patch, "rollback of the installed patch", || {
                    end_trial_by_rollback(engine, pid, patch, &why, None)
                });
            }
        }
        if let Some(h) = entry.health_check.clone().filter(|_| left > 0) {
            let interval = Duration::from_millis(h.interval_ms);
            let due = *next_check.get_or_insert_with(|| Instant::now() + interval);
            if Instant::now() >= due {
                on_duty();
                next_check = Some(Instant::now() + interval);
                health.record(run_health_check(&h, pid, patch));
                // The children forked since the patch was applied run its code too.
                let copy_failed = copies.check(engine, &h, pid, patch, (rec.applied_at, rec.module_base));
                // Where it failed, how many times in a row, and the last failure.
                let failed = if health.failing >= h.failures {
                    Some((pid, health.failing, health.last.clone()))
                } else {
                    copy_failed.map(|(child, ch)| (child, ch.failing, ch.last))
                };
                if let Some((at, times, last)) = failed {
                    let why = if at == pid {
                        format!("health check failed {times} time(s) in a row during the trial: {last}")
                    } else {
                        format!(
                            "health check failed {times} time(s) in a row during the trial in process {at}, \
                             forked from this one: {last}"
                        )
                    };
                    let forked = if at == pid { String::new() } else { format!(" (forked from process {pid})") };
                    let everywhere =
                        format!("health check failed {times} time(s) in a row in process {at}{forked}: {last}");
                    let ended = until_done(engine, pid, patch, "health-check rollback", || {
                        end_trial_by_rollback(engine, pid, patch, &why, Some(&health))
                    });
                    // An installed patch: everywhere, and for new processes too.
                    if matches!(ended, Ok(State::RolledBack)) {
                        crate::install::health_check_failed(engine, pid, patch, &entry.module_sha256, &everywhere);
                    }
                    return ended;
                }
                // A result not recorded (the process is busy with another pannus) is recorded
                // with the next one.
                let _ = Session::open(engine, pid).and_then(|mut s| s.record_health(patch, &health));
            }
        }
        let waiting = required_on_trial(&reg, rec);
        if left == 0 && entry.on_expiry == OnExpiry::Commit && !waiting.is_empty() {
            if !said_postponed {
                let detail = postponed(pid, patch, &waiting);
                let _ = engine.journal().record("trial-watch", pid, "", Some(patch), "busy", &detail);
                said_postponed = true;
            }
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        if left == 0 {
            on_duty();
            return until_done(engine, pid, patch, "expiry policy", || expire(engine, pid, patch));
        }
        pannus_kernel::keep_up();
        let mut nap = Duration::from_millis(500).min(Duration::from_secs(left));
        if let Some(due) = next_check {
            nap = nap.min(due.saturating_duration_since(Instant::now()));
        }
        std::thread::sleep(nap.max(Duration::from_millis(10)));
    }
}

/// Rolls `patch` back in process `pid` for `why` if it is still on trial there (recording
/// `health` first, when given); the state it is in afterwards.
fn end_trial_by_rollback(engine: &Engine, pid: i32, patch: &str, why: &str, health: Option<&Health>) -> Result<State> {
    let mut s = Session::open(engine, pid)?;
    if let Some(h) = health {
        let _ = s.record_health(patch, h);
    }
    match s.registry()?.get(patch).map(|r| r.state) {
        Some(State::Trial) => {
            s.rollback_because(Some(patch), true, why, &mut Quiet)?;
            Ok(State::RolledBack)
        }
        Some(state) => Ok(state),
        None => Ok(State::RolledBack),
    }
}

/// Runs `action` (the trial's end, by policy or by health check) until it is done: each failure
/// (another pannus holds the process, a thread stays in the way) is recorded in the journal and
/// tried again after a pause that doubles up to 30 s, for as long as the process lives.
fn until_done(
    engine: &Engine,
    pid: i32,
    patch: &str,
    what: &str,
    mut action: impl FnMut() -> Result<State>,
) -> Result<State> {
    let mut pause = Duration::from_millis(200);
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        match action() {
            Ok(state) => return Ok(state),
            Err(_) if !pannus_kernel::process_exists(pid) => return Ok(State::RolledBack),
            Err(e) => {
                let detail = format!("{what}, attempt {attempt}: {}; trying again in {pause:?}", e.message);
                let _ = engine.journal().record("trial-watch", pid, "", Some(patch), outcome_of(&e), &detail);
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Starts a detached `pannus trial-watch ARGS`, its standard input `stdin`, at the policy a
/// watcher keeps (see [`spawn_trial_watcher`]).
fn start_watcher(engine: &Engine, args: &[&str], stdin: std::process::Stdio) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().map_err(|e| Error::other(format!("cannot find the pannus binary: {e}")))?;
    let mut command = Command::new(exe);
    pannus_kernel::keep_urgent(&mut command);
    let child = command
        .arg("trial-watch")
        .args(args)
        .env("PANNUS_STATE_DIR", &engine.state_dir)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::other(format!("cannot start the trial watcher: {e}")))?;
    // Its start-up takes a CPU for a millisecond or two right when the patch went live, and a
    // thread of the service woken on that CPU would wait behind it for up to a time slice. It
    // runs at SCHED_IDLE, and keeps to it while it only watches the clock (see wait_trial): from
    // before its exec when started under a `SpareCpu` guard (whose watchdog gives a starved
    // child the normal policy back), else from here on. On saturated CPUs it starts at the
    // urgent policy instead (see `pannus_kernel::keep_urgent`) and keeps it.
    if !pannus_kernel::is_urgent() {
        pannus_kernel::background(child.id() as i32);
    }
    Ok(child)
}

/// Starts a detached `pannus trial-watch` for `patch`: it carries out the trial's `on_expiry`
/// policy at the deadline even when no pannus runs in the foreground (the engineer's terminal
/// may have dropped), and exits as soon as the patch leaves trial by any other way.
pub fn spawn_trial_watcher(engine: &Engine, pid: i32, patch: &str) -> Result<std::process::Child> {
    start_watcher(engine, &["--pid", &pid.to_string(), patch], std::process::Stdio::null())
}

/// One detached trial watcher for `patch` in many processes (`apply --all`), instead of one
/// process each: started with the first process patched, it is given each process as soon as
/// the patch is on trial there, and once the run is over (or the pannus running it is gone, even
/// killed) watches each as [`spawn_trial_watcher`]'s watcher watches one (see
/// [`watch_trials`]).
pub struct TrialWatchers {
    child: std::process::Child,
    pids: std::process::ChildStdin,
}

impl TrialWatchers {
    /// Starts the watcher, with no process yet.
    pub fn spawn(engine: &Engine, patch: &str) -> Result<TrialWatchers> {
        let mut child = start_watcher(engine, &["--pids-from-stdin", patch], std::process::Stdio::piped())?;
        let pids = child.stdin.take().ok_or_else(|| Error::other("cannot start the trial watcher: no pipe to it"))?;
        Ok(TrialWatchers { child, pids })
    }

    /// Has the watcher watch the trial in process `pid` too.
    pub fn watch(&mut self, pid: i32) -> Result<()> {
        use std::io::Write;
        writeln!(self.pids, "{pid}").map_err(|e| {
            Error::other(format!("the trial watcher (pid {}) did not take process {pid}: {e}", self.child.id()))
        })
    }
}

/// The body of [`TrialWatchers`]' watcher: leaves the terminal's session, reads the pids of the
/// processes to watch from `pids` (one a line) until its end (the pannus that started it is done,
/// or gone), then watches the trial of `patch` in each of them, each on a thread of its own as
/// [`watch_trial`] does, until every one has ended. Its reads of every process start once that
/// pannus is done: they do not take CPU time from its work on the others (a trial lasts minutes,
/// a run over a thousand processes seconds).
pub fn watch_trials(engine: &Engine, patch: &str, pids: impl std::io::BufRead) -> Result<()> {
    let _ = nix::unistd::setsid();
    if !pannus_kernel::is_urgent() {
        pannus_kernel::background(0);
    }
    let pids: Vec<i32> = pids.lines().map_while(|l| l.ok()).filter_map(|l| l.trim().parse().ok()).collect();
    std::thread::scope(|scope| {
        for pid in pids {
            let watch = move || {
                let _ = watch_one(engine, pid, patch);
            };
            let _ = std::thread::Builder::new().name(format!("watch-{pid}")).spawn_scoped(scope, watch);
        }
    });
    Ok(())
}

/// The trial watcher's body ([`spawn_trial_watcher`] starts it at `SCHED_IDLE`): leaves the
/// terminal's session, then waits for the trial to end.
pub fn watch_trial(engine: &Engine, pid: i32, patch: &str) -> Result<State> {
    let _ = nix::unistd::setsid();
    // Whatever it was started at (from a pannus that was given the normal policy back, it
    // starts at the normal policy): it waits at SCHED_IDLE, unless the machine has no CPU time
    // to spare (see `pannus_kernel::keep_up`).
    if !pannus_kernel::is_urgent() {
        pannus_kernel::background(0);
    }
    watch_one(engine, pid, patch)
}

/// Waits for the trial of `patch` in process `pid` to end, carrying out its policy; a failure
/// is journaled. Children the process forked since the patch was applied carry a copy of it
/// and of its trial: they end it as the process did ([`crate::forks::follow`]).
fn watch_one(engine: &Engine, pid: i32, patch: &str) -> Result<State> {
    let applied = read_status(pid).ok().and_then(|(_, reg)| reg.get(patch).map(|r| (r.applied_at, r.module_base)));
    let outcome = wait_trial(engine, pid, patch, |_| {});
    if let (Some(applied), Ok(state @ (State::Committed | State::RolledBack))) = (applied, &outcome) {
        if pannus_kernel::process_exists(pid) {
            crate::forks::follow(engine, pid, patch, applied, *state);
        }
    }
    match outcome {
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
