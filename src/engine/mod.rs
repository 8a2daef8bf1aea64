//! The engine: the four PANNUS stages, rollback, commit and status, as one API that the CLI and
//! the console both call. Every operation takes the per-process lock, reads the truth from the
//! target's registry, and records what it did in the journal.
//!
//! One file per concern (ARCHITECTURE.md has the map): [`session`] opens a process and owns
//! what every operation shares; [`preflight`] checks everything before anything is done;
//! stage 1 is [`load`], stage 2 [`link`] (with the pure [`symbols`]), stage 3 [`init`], or
//! all three through the target's own loader in [`dlopen`]; stage 4 is [`activate`];
//! [`apply`] runs them in order, recording each step in an [`undo`] log that a failure, a
//! cancellation and [`rollback`] all unwind the same way.

mod activate;
mod apply;
mod dlopen;
mod ifunc;
mod init;
mod link;
mod load;
mod preflight;
mod references;
mod reloc386;
mod rollback;
mod safe_point;
mod session;
mod shared;
pub mod symbols;
mod targets;
mod undo;

pub(crate) use crate::registry::MAP as REGISTRY_MAP;
pub use apply::Applied;
pub(crate) use dlopen::SCRATCH_MAP;
pub(crate) use load::{RESERVE, SEGMENT};
pub use preflight::{build_id_matches, module_checks, replacement_symbol, Prepared};
pub use rollback::{still_required, KeptMapped, RolledBack};
pub use session::{Session, StopStart, StopWindow};
pub use shared::{FileKey, Shared};
pub use targets::target_symbol;

use crate::error::{Error, Kind, Result};
use crate::journal::Journal;
use crate::registry::{PatchRecord, Registry};
use crate::target::Target;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Why the last confirmation was refused, when there is more to say than "no" (a signal).
    fn why_not(&self) -> Option<String> {
        None
    }
    /// A line of progress; with a stage, that stage is done.
    fn progress(&mut self, _stage: Option<Stage>, _msg: &str) {}
    /// `stage` found a thread in the way and will try again after a pause: not done yet.
    fn retrying(&mut self, stage: Stage, why: &str) {
        self.progress(None, &format!("{stage}: busy ({why}), retrying"));
    }
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
    /// How long a stop of every thread waits for each thread to stop
    /// ([`pannus_kernel::STOP_TIMEOUT`] by default). A thread that has not stopped by then (a
    /// `vfork` parent waiting for its child, an uninterruptible sleep) counts as in the way: every
    /// thread runs again and the attempt is retried within the manifest's `safety` budget.
    pub stop_timeout: Duration,
    /// When set, an apply's trial ends at this time (Unix seconds) instead of the manifest's
    /// `trial.duration` from the activation: the daemon applies an installed patch on trial
    /// until the installed trial's own deadline.
    pub trial_until: Option<u64>,
    /// What the processes of one run over many processes share (see [`Shared`]); `None` outside
    /// such a run.
    pub shared: Option<Arc<Shared>>,
}

impl Engine {
    pub fn new(state_dir: PathBuf) -> Engine {
        Engine {
            state_dir,
            init_timeout: Duration::from_secs(5),
            lock_wait: Duration::from_secs(10),
            stop_timeout: pannus_kernel::STOP_TIMEOUT,
            trial_until: None,
            shared: None,
        }
    }
    pub fn journal(&self) -> Journal {
        Journal::open(&self.state_dir)
    }
}

/// How long each step of an apply or rollback took, confirmations excluded. A step that ran
/// several times (a rollback with `--cascade` restores several patches) is summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    pub preflight: Option<Duration>,
    pub load: Option<Duration>,
    pub link: Option<Duration>,
    pub init: Option<Duration>,
    pub activate: Option<Duration>,
    /// Rollback: the stop that writes the original bytes back, with its retries.
    pub restore: Option<Duration>,
    pub unload: Option<Duration>,
    /// The stop of every thread that switched code (the successful attempt), and its parts.
    pub stop: Option<StopTimes>,
}

/// The parts of one stop of every thread that switched code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopTimes {
    /// From the first interrupt to the last thread let go.
    pub stopped: Duration,
    /// Until every thread was stopped and its stack read.
    pub halt: Duration,
    /// The safety rules.
    pub check: Duration,
    /// The bytes written.
    pub write: Duration,
    /// Every thread let go.
    pub resume: Duration,
}

impl Timings {
    pub(super) fn add(slot: &mut Option<Duration>, d: Duration) {
        *slot = Some(slot.unwrap_or_default() + d);
    }

    pub(super) fn add_stop(&mut self, s: StopTimes) {
        let t = self.stop.get_or_insert_with(StopTimes::default);
        t.stopped += s.stopped;
        t.halt += s.halt;
        t.check += s.check;
        t.write += s.write;
        t.resume += s.resume;
    }

    /// Each measured step by name, as `--json` gives them (`timings_us`).
    pub fn steps(&self) -> Vec<(&'static str, Duration)> {
        let mut out: Vec<(&'static str, Duration)> = [
            ("preflight", self.preflight),
            ("load", self.load),
            ("link", self.link),
            ("init", self.init),
            ("activate", self.activate),
            ("restore", self.restore),
            ("unload", self.unload),
        ]
        .into_iter()
        .filter_map(|(k, d)| Some((k, d?)))
        .collect();
        if let Some(s) = self.stop {
            out.extend([
                ("stopped", s.stopped),
                ("stop_halt", s.halt),
                ("stop_check", s.check),
                ("stop_write", s.write),
                ("stop_resume", s.resume),
            ]);
        }
        out
    }
}

impl Serialize for Timings {
    /// Microseconds per step: `{"load": 812, ...}`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let steps = self.steps();
        let mut map = s.serialize_map(Some(steps.len()))?;
        for (k, d) in steps {
            map.serialize_entry(k, &(d.as_micros() as u64))?;
        }
        map.end()
    }
}

/// What an apply or rollback measured: its steps' times and every stop of every thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Measured {
    #[serde(rename = "timings_us")]
    pub timings: Timings,
    /// Every stop of every thread (retries included), on `CLOCK_MONOTONIC`: what a service's
    /// own latency figures can be matched against.
    pub stops: Vec<StopWindow>,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn cancelled(stage: Stage) -> Error {
    Error::new(Kind::Cancelled, format!("cancelled before {stage}"))
}

/// The journal's word for an error.
pub fn outcome_of(e: &Error) -> &'static str {
    match e.kind {
        Kind::BadInput | Kind::Precondition => "refused",
        Kind::Busy => "busy",
        Kind::Other => "failed",
        Kind::Cancelled => "cancelled",
    }
}

/// Reads the registry of a process without locking or stopping it.
pub fn read_status(pid: i32) -> Result<(Target, Registry)> {
    let target = Target::open(pid)?;
    let reg = crate::registry::read_from(&target.mem, &target.maps)?;
    Ok((target, reg))
}

/// Seconds left in a trial, 0 when past.
pub fn remaining(rec: &PatchRecord) -> Option<u64> {
    rec.trial_deadline.map(|d| d.saturating_sub(now_secs()))
}
