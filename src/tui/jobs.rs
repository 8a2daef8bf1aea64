//! Patching work runs here, on its own thread, never on the UI thread: the screen keeps
//! refreshing and the countdown keeps ticking while a stage runs or retries. The engine's
//! per-stage confirmations travel to the UI and back over channels.

use crate::engine::{CheckLine, Engine, Observer, Session, Stage};
use crate::error::Error;
use crate::manifest::Manifest;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// Work the console asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    Check {
        pid: i32,
        manifest: PathBuf,
    },
    Apply {
        pid: i32,
        manifest: PathBuf,
    },
    /// Roll back `patch` and, when not empty, `cascade`: the patches that require it, as the
    /// operator confirmed them. Refused when what requires it is no longer exactly that.
    Rollback {
        pid: i32,
        patch: String,
        cascade: Vec<String>,
    },
    /// Commit `patch` and first `with`: the patches it requires still on trial, as the
    /// operator confirmed them. Refused when those are no longer exactly that.
    Commit {
        pid: i32,
        patch: String,
        with: Vec<String>,
        note: String,
    },
    /// A trial ran out with no trial watcher acting on it: its `on_expiry` policy.
    Expire {
        pid: i32,
        patch: String,
    },
    /// Uninstall installed patch `patch` and `with`: the installed patches that require it,
    /// theirs first, as the operator confirmed them (`pannus uninstall --cascade`). Refused when
    /// those are no longer exactly that.
    Uninstall {
        patch: String,
        with: Vec<String>,
    },
}

impl Job {
    /// The one process the job works on, if it is one.
    fn pid(&self) -> Option<i32> {
        match self {
            Job::Check { pid, .. }
            | Job::Apply { pid, .. }
            | Job::Rollback { pid, .. }
            | Job::Commit { pid, .. }
            | Job::Expire { pid, .. } => Some(*pid),
            Job::Uninstall { .. } => None,
        }
    }
}

/// What the worker reports.
#[derive(Debug)]
pub enum Event {
    Progress {
        stage: Option<Stage>,
        msg: String,
    },
    /// The engine waits for the answer before `stage`.
    Confirm {
        stage: Stage,
        plan: String,
        reply: Sender<bool>,
    },
    /// Another pannus holds the process: the job waits for it (at most the lock wait).
    Waiting {
        pid: i32,
        holder: String,
    },
    Checked {
        pid: i32,
        patch: String,
        /// What the trial after stage 4 will be, from the manifest.
        trial: String,
        lines: Vec<CheckLine>,
        error: Option<Error>,
    },
    Applied {
        pid: i32,
        result: Result<String, Error>,
    },
    RolledBack {
        pid: i32,
        result: Result<Vec<String>, Error>,
    },
    Committed {
        pid: i32,
        patch: String,
        result: Result<(), Error>,
    },
    Expired {
        pid: i32,
        patch: String,
        result: Result<crate::registry::State, Error>,
    },
    Uninstalled {
        patch: String,
        result: Result<crate::install::Uninstalled, Error>,
    },
}

struct Forward<'a> {
    tx: &'a Sender<Event>,
    /// Set once the console is interrupted: every later confirmation is a "no".
    cancel: &'a AtomicBool,
}

impl Observer for Forward<'_> {
    fn confirm(&mut self, stage: Stage, plan: &str) -> bool {
        if self.cancel.load(Ordering::SeqCst) {
            return false;
        }
        let (reply, answer) = channel();
        if self.tx.send(Event::Confirm { stage, plan: plan.to_string(), reply }).is_err() {
            return false;
        }
        answer.recv().unwrap_or(false)
    }
    fn progress(&mut self, stage: Option<Stage>, msg: &str) {
        let _ = self.tx.send(Event::Progress { stage, msg: msg.to_string() });
    }
}

/// Starts the worker; it ends when the job sender is dropped. Once `cancel` is set, the running
/// apply's confirmations are answered "no", so that it stops and undoes its stages.
pub fn spawn(engine: Engine, cancel: Arc<AtomicBool>) -> (Sender<Job>, Receiver<Event>) {
    let (job_tx, job_rx) = channel::<Job>();
    let (ev_tx, ev_rx) = channel::<Event>();
    std::thread::Builder::new()
        .name("pannus-jobs".into())
        .spawn(move || {
            let mut watchers = Watchers::default();
            loop {
                match job_rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(job) => {
                        // Each job on a thread that ends with it: a thread of the target that a
                        // stop gave up waiting for, still attached when the job ends, is let go
                        // by the kernel then, instead of staying stopped until the next job.
                        let ev = std::thread::scope(|s| {
                            let job = s.spawn(|| run(&engine, job, &ev_tx, &cancel, &mut watchers));
                            job.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                        });
                        if ev_tx.send(ev).is_err() {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
                watchers.reap();
            }
        })
        .ok();
    (job_tx, ev_rx)
}

/// The trial watchers the console started. Each is waited for once it has ended, so that none
/// is left as a zombie for as long as the console runs; those still watching when the console
/// exits go on without it.
#[derive(Default)]
struct Watchers(Vec<Child>);

impl Watchers {
    fn keep(&mut self, child: Child) {
        self.0.push(child);
    }

    fn reap(&mut self) {
        self.0.retain_mut(|child| matches!(child.try_wait(), Ok(None)));
    }
}

/// The trial a manifest asks for, in words.
pub fn trial_text(m: &Manifest) -> String {
    let end = match m.trial.on_expiry {
        crate::manifest::OnExpiry::Commit => "committed",
        crate::manifest::OnExpiry::Rollback => "rolled back",
    };
    let health = match &m.trial.health_check {
        Some(h) => format!(
            "; health check `{}` every {} ms, rolled back after {} failure(s) in a row",
            h.command, h.interval_ms, h.failures
        ),
        None => "; no health check".to_string(),
    };
    format!(
        "then a trial of {}: at its end the patch is {end} (on_expiry: {}){health}",
        humantime::format_duration(m.trial.duration),
        m.trial.on_expiry
    )
}

/// Says who holds process `pid`, when another pannus does, before the job waits for it.
fn say_holder(engine: &Engine, pid: i32, tx: &Sender<Event>) {
    if let Some(h) = crate::lock::holder(&engine.state_dir, pid) {
        // Its command line, the program by its file name only.
        let cmd = std::fs::read(format!("/proc/{h}/cmdline"))
            .map(|c| {
                c.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .enumerate()
                    .map(|(i, a)| {
                        let a = String::from_utf8_lossy(a).into_owned();
                        if i == 0 {
                            a.rsplit('/').next().unwrap_or_default().to_string()
                        } else {
                            a
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let holder = if cmd.is_empty() { format!("pannus pid {h}") } else { format!("pannus pid {h} (`{cmd}`)") };
        let _ = tx.send(Event::Waiting { pid, holder });
    }
}

fn run(engine: &Engine, job: Job, tx: &Sender<Event>, cancel: &AtomicBool, watchers: &mut Watchers) -> Event {
    // As for the CLI's commands: spare CPU time only, on this thread (the screen's keeps its own).
    let _spare = pannus_kernel::SpareCpu::enter();
    let mut obs = Forward { tx, cancel };
    if let Some(pid) = job.pid() {
        say_holder(engine, pid, tx);
    }
    match job {
        Job::Check { pid, manifest } => match Manifest::load(&manifest) {
            Err(e) => {
                Event::Checked { pid, patch: String::new(), trial: String::new(), lines: Vec::new(), error: Some(e) }
            }
            Ok(m) => {
                let trial = trial_text(&m);
                match Session::open(engine, pid) {
                    Err(e) => Event::Checked { pid, patch: m.patch, trial, lines: Vec::new(), error: Some(e) },
                    Ok(mut s) => {
                        let (lines, result) = s.check(&m);
                        Event::Checked { pid, patch: m.patch, trial, lines, error: result.err() }
                    }
                }
            }
        },
        Job::Apply { pid, manifest } => {
            let result = Manifest::load(&manifest).and_then(|m| {
                let watched = crate::trial::apply_watched(Session::open(engine, pid)?, &m, &mut obs)?;
                match watched.watcher {
                    Ok(child) => watchers.keep(child),
                    Err(e) => obs.progress(None, &format!("warning: {e}")),
                }
                Ok(watched.applied.record.patch)
            });
            Event::Applied { pid, result }
        }
        Job::Rollback { pid, patch, cascade } => {
            let result = Session::open(engine, pid)
                .and_then(|mut s| {
                    let mut now = super::app::dependents(&s.registry()?.patches, &patch);
                    let mut confirmed = cascade.clone();
                    now.sort();
                    confirmed.sort();
                    if now != confirmed {
                        return Err(Error::precondition(format!(
                            "what requires `{patch}` in process {pid} changed since it was shown ({}): nothing was rolled back",
                            if now.is_empty() { "nothing now".to_string() } else { now.join(", ") }
                        ))
                        .hint("look at the process again and press R again"));
                    }
                    s.rollback(Some(&patch), !cascade.is_empty(), &mut obs)
                })
                .map(|r| r.ids);
            Event::RolledBack { pid, result }
        }
        Job::Commit { pid, patch, with, note } => {
            let result = Session::open(engine, pid).and_then(|mut s| {
                let now = crate::registry::required_in_trial(&s.registry()?.patches, &patch);
                if now != with {
                    return Err(Error::precondition(format!(
                        "what `{patch}` requires on trial in process {pid} changed since it was shown ({}): nothing was committed",
                        if now.is_empty() { "nothing now".to_string() } else { now.join(", ") }
                    ))
                    .hint("look at the process again and press C again"));
                }
                for id in &with {
                    s.commit(id, &format!("{note}, with `{patch}`, which requires it"))?;
                }
                s.commit(&patch, &note).map(|_| ())
            });
            Event::Committed { pid, patch, result }
        }
        Job::Expire { pid, patch } => {
            let result = crate::trial::expire(engine, pid, &patch);
            Event::Expired { pid, patch, result }
        }
        Job::Uninstall { patch, with } => {
            let result = crate::install::uninstall_order(&engine.state_dir, &patch, true).and_then(|order| {
                let mut confirmed = with.clone();
                confirmed.push(patch.clone());
                if order != confirmed {
                    let now = &order[..order.len().saturating_sub(1)];
                    return Err(Error::precondition(format!(
                        "the installed patches that require `{patch}` changed since they were shown ({}): nothing was changed",
                        if now.is_empty() { "none now".to_string() } else { now.join(", ") }
                    ))
                    .hint("look at the installed patches again and press R again"));
                }
                // As a rollback from the console, it finishes whole once started (rollback is
                // the safe direction); each process's rollback is journaled.
                crate::install::uninstall(engine, &order, None, &mut |_: &str| {})
            });
            Event::Uninstalled { patch, result }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Watchers;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn state(pid: u32) -> Option<char> {
        pannus_kernel::thread_state(pid as i32, pid as i32)
    }

    #[test]
    fn an_ended_watcher_is_waited_for_and_a_running_one_kept() {
        let mut watchers = Watchers::default();
        let ended = Command::new("true").spawn().unwrap();
        let running = Command::new("sleep").arg("30").spawn().unwrap();
        let (ended_pid, running_pid) = (ended.id(), running.id());
        watchers.keep(ended);
        watchers.keep(running);
        let t0 = Instant::now();
        while state(ended_pid) != Some('Z') && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(state(ended_pid), Some('Z'), "ended, not yet waited for");
        watchers.reap();
        assert_eq!(state(ended_pid), None, "waited for: no zombie left");
        assert_eq!(watchers.0.len(), 1);
        assert_eq!(watchers.0[0].id(), running_pid, "the running one is kept");
        watchers.0[0].kill().unwrap();
        watchers.0[0].wait().unwrap();
    }
}
