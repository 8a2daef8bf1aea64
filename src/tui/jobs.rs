//! Patching work runs here, on its own thread, never on the UI thread: the screen keeps
//! refreshing and the countdown keeps ticking while a stage runs or retries. The engine's
//! per-stage confirmations travel to the UI and back over channels.

use crate::engine::{self, CheckLine, Engine, Observer, Session, Stage};
use crate::error::Error;
use crate::manifest::Manifest;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};

/// Work the console asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    Check { pid: i32, manifest: PathBuf },
    Apply { pid: i32, manifest: PathBuf },
    Rollback { pid: i32, patch: Option<String> },
    Commit { pid: i32, patch: String, note: String },
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
    Checked {
        pid: i32,
        patch: String,
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
}

struct Forward<'a> {
    tx: &'a Sender<Event>,
}

impl Observer for Forward<'_> {
    fn confirm(&mut self, stage: Stage, plan: &str) -> bool {
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

/// Starts the worker; it ends when the job sender is dropped.
pub fn spawn(engine: Engine) -> (Sender<Job>, Receiver<Event>) {
    let (job_tx, job_rx) = channel::<Job>();
    let (ev_tx, ev_rx) = channel::<Event>();
    std::thread::Builder::new()
        .name("pannus-jobs".into())
        .spawn(move || {
            for job in job_rx {
                let ev = run(&engine, job, &ev_tx);
                if ev_tx.send(ev).is_err() {
                    break;
                }
            }
        })
        .ok();
    (job_tx, ev_rx)
}

fn run(engine: &Engine, job: Job, tx: &Sender<Event>) -> Event {
    // As for the CLI's commands: spare CPU time only, on this thread (the screen's keeps its own).
    let _spare = pannus_kernel::SpareCpu::enter();
    let mut obs = Forward { tx };
    match job {
        Job::Check { pid, manifest } => match Manifest::load(&manifest) {
            Err(e) => Event::Checked { pid, patch: String::new(), lines: Vec::new(), error: Some(e) },
            Ok(m) => match Session::open(engine, pid) {
                Err(e) => Event::Checked { pid, patch: m.patch, lines: Vec::new(), error: Some(e) },
                Ok(mut s) => {
                    let (lines, result) = s.check(&m);
                    Event::Checked { pid, patch: m.patch, lines, error: result.err() }
                }
            },
        },
        Job::Apply { pid, manifest } => {
            let result = Manifest::load(&manifest).and_then(|m| {
                let rec = Session::open(engine, pid)?.apply(&m, &mut obs)?;
                if let Err(e) = engine::spawn_trial_watcher(engine, pid, &rec.patch) {
                    obs.progress(None, &format!("warning: {e}"));
                }
                Ok(rec.patch)
            });
            Event::Applied { pid, result }
        }
        Job::Rollback { pid, patch } => {
            let result = Session::open(engine, pid).and_then(|mut s| s.rollback(patch.as_deref(), true, &mut obs));
            Event::RolledBack { pid, result }
        }
        Job::Commit { pid, patch, note } => {
            let result = Session::open(engine, pid).and_then(|mut s| s.commit(&patch, &note)).map(|_| ());
            Event::Committed { pid, patch, result }
        }
    }
}
