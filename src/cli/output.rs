//! The `--json` documents of the command line, one type each. Automation reads them, so their
//! keys and value formats stay as they are: addresses are `"0x..."` strings, times RFC 3339
//! (UTC, seconds), durations numbers named for their unit (`trial_remaining_s`, `timings_us`).
//! Every document is one line on standard output.

use super::manifest_cmd::Line;
use crate::engine::{self, CheckLine, Measured};
use crate::error::{Error, Kind, Result};
use crate::fleet::{Failed, Summary};
use crate::journal::Recorded;
use crate::manifest::{FunctionSpec, Manifest, ModuleSpec, TargetSpec};
use crate::processes::Process;
use crate::registry::{FunctionRecord, Health, HealthCheck, JumpKind, OnExpiry, PatchRecord, State};
use serde::{Serialize, Serializer};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// An address in the target: `"0x7f3a5c201000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr(pub u64);

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

/// Unix seconds as RFC 3339: `"2027-01-15T08:00:00Z"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub u64);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.0)))
    }
}

/// A patch as read from its process: each of `status --json`'s `patches`, and the body of
/// `apply --json`.
#[derive(Debug, Serialize)]
pub struct Patch<'a> {
    pub patch: &'a str,
    pub version: &'a str,
    pub description: Option<&'a str>,
    pub state: State,
    pub requires: &'a [String],
    pub functions: Vec<Function<'a>>,
    pub trial_deadline: Option<Time>,
    /// Seconds left in the trial, 0 when past.
    pub trial_remaining_s: Option<u64>,
    /// A trial past its deadline whose policy has not been carried out yet (`OVERDUE`).
    pub overdue: bool,
    pub on_expiry: OnExpiry,
    pub module: &'a str,
    pub module_base: Addr,
    pub target_object: &'a str,
    pub build_id: &'a str,
    pub applied_at: Time,
    pub health_check: Option<&'a HealthCheck>,
    pub health: Option<&'a Health>,
    pub note: Option<&'a str>,
    /// The process this one was forked from, when it carries a copy of the patch that the fork
    /// gave it rather than a patch applied to it.
    pub forked_from: Option<i32>,
}

/// A replaced function of a [`Patch`].
#[derive(Debug, Serialize)]
pub struct Function<'a> {
    pub target: &'a str,
    pub replacement: &'a str,
    /// An indirect function's implementation, and whether the process used it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub implementation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_use: Option<bool>,
    pub address: Addr,
    pub replacement_address: Addr,
    pub jump: JumpKind,
}

impl<'a> From<&'a FunctionRecord> for Function<'a> {
    fn from(f: &'a FunctionRecord) -> Function<'a> {
        Function {
            target: &f.target,
            replacement: &f.replacement,
            implementation: f.implementation.as_deref(),
            in_use: f.in_use,
            address: Addr(f.address),
            replacement_address: Addr(f.replacement_address),
            jump: f.jump,
        }
    }
}

impl<'a> From<&'a PatchRecord> for Patch<'a> {
    fn from(p: &'a PatchRecord) -> Patch<'a> {
        Patch {
            patch: &p.patch,
            version: &p.version,
            description: p.description.as_deref(),
            state: p.state,
            requires: &p.requires,
            functions: p.functions.iter().map(Function::from).collect(),
            trial_deadline: p.trial_deadline.map(Time),
            trial_remaining_s: engine::remaining(p),
            overdue: crate::trial::is_overdue(p, engine::now_secs()),
            on_expiry: p.on_expiry,
            module: &p.module,
            module_base: Addr(p.module_base),
            target_object: &p.target_object,
            build_id: &p.build_id,
            applied_at: Time(p.applied_at),
            health_check: p.health_check.as_ref(),
            health: p.health.as_ref(),
            note: p.note.as_deref(),
            forked_from: None,
        }
    }
}

/// `apply --json`: the patch, in the state it is in when the command ends, and what the apply
/// measured (`timings_us`, `stops`).
#[derive(Debug, Serialize)]
pub struct Apply<'a> {
    pub pid: i32,
    #[serde(flatten)]
    pub patch: Patch<'a>,
    #[serde(flatten)]
    pub measured: &'a Measured,
}

/// `check --json`: with the refusal's `error` and `exit` when a check failed, in the one
/// document.
#[derive(Debug, Serialize)]
pub struct Check<'a> {
    pub pid: i32,
    pub patch: &'a str,
    pub ok: bool,
    pub checks: &'a [CheckLine],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorFields<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
}

/// A process and its patches: `status --json`, and each of `ps --json`'s and
/// `status --all --json`'s `processes`.
#[derive(Debug, Serialize)]
pub struct ProcessPatches<'a> {
    pub pid: i32,
    pub name: &'a str,
    pub exe: &'a str,
    /// The architecture it runs: `"x86-64"`, `"i386"` (a 32-bit process), `"x32"`, ...; null
    /// when unread.
    pub arch: Option<String>,
    /// The process it was forked from, when its patches are copies the fork gave it.
    pub forked_from: Option<i32>,
    pub patches: Vec<Patch<'a>>,
}

impl<'a> ProcessPatches<'a> {
    pub fn new(
        pid: i32,
        name: &'a str,
        exe: &'a str,
        arch: Option<pannus_kernel::Arch>,
        patches: impl IntoIterator<Item = &'a PatchRecord>,
    ) -> ProcessPatches<'a> {
        let patches: Vec<Patch> =
            patches.into_iter().map(|r| Patch { forked_from: r.forked_from(pid), ..Patch::from(r) }).collect();
        let forked_from = patches.iter().find_map(|p| p.forked_from);
        ProcessPatches { pid, name, exe, arch: arch.map(|a| a.name()), forked_from, patches }
    }
}

/// `ps --json` (each process with its applied patches) and `status --all --json` (with all
/// its patches).
#[derive(Debug, Serialize)]
pub struct Processes<'a> {
    pub processes: Vec<ProcessPatches<'a>>,
}

impl<'a> Processes<'a> {
    pub fn new<I: IntoIterator<Item = &'a PatchRecord>>(
        procs: &'a [Process],
        patches: impl Fn(&'a Process) -> I,
    ) -> Processes<'a> {
        let processes =
            procs.iter().map(|p| ProcessPatches::new(p.pid.get(), &p.name, &p.exe, p.arch, patches(p))).collect();
        Processes { processes }
    }
}

/// `commit --json`: the patch, its state, and every patch committed (with `--yes`, those it
/// requires that were in trial come first).
#[derive(Debug, Serialize)]
pub struct Commit<'a> {
    pub pid: i32,
    pub patch: &'a str,
    pub state: State,
    pub committed: &'a [String],
}

/// `rollback --json`: the patches rolled back, newest first, and what the rollback measured.
#[derive(Debug, Serialize)]
pub struct Rollback<'a> {
    pub pid: i32,
    pub rolled_back: &'a [String],
    /// The patches whose module stays mapped, and why.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub kept_mapped: &'a [crate::engine::KeptMapped],
    #[serde(flatten)]
    pub measured: &'a Measured,
}

/// `journal --json`.
#[derive(Debug, Serialize)]
pub struct Journal<'a> {
    pub journal: &'a Path,
    pub entries: &'a [Recorded],
}

/// An error: `kind`, `message`, `hint`.
#[derive(Debug, Serialize)]
pub struct ErrorFields<'a> {
    pub kind: Kind,
    pub message: &'a str,
    pub hint: Option<&'a str>,
}

impl<'a> From<&'a Error> for ErrorFields<'a> {
    fn from(e: &'a Error) -> ErrorFields<'a> {
        ErrorFields { kind: e.kind, message: &e.message, hint: e.hint.as_deref() }
    }
}

/// What any command with `--json` prints when it fails.
#[derive(Debug, Serialize)]
pub struct Failure<'a> {
    pub error: ErrorFields<'a>,
    pub exit: i32,
}

impl<'a> From<&'a Error> for Failure<'a> {
    fn from(e: &'a Error) -> Failure<'a> {
        Failure { error: e.into(), exit: e.kind.exit_code() }
    }
}

/// A process a fleet command left alone, and why.
#[derive(Debug, Serialize)]
pub struct SkippedProcess<'a> {
    pub pid: i32,
    pub reason: &'a str,
}

/// A process a fleet command failed on, and its error.
#[derive(Debug, Serialize)]
pub struct FailedProcess<'a> {
    pub pid: i32,
    #[serde(flatten)]
    pub error: ErrorFields<'a>,
}

/// The processes a fleet command left alone, and those it failed on.
#[derive(Debug, Serialize)]
pub struct NotDone<'a> {
    pub skipped: Vec<SkippedProcess<'a>>,
    pub failed: Vec<FailedProcess<'a>>,
}

fn failed(list: &[Failed]) -> Vec<FailedProcess<'_>> {
    list.iter().map(|f| FailedProcess { pid: f.pid, error: (&f.error).into() }).collect()
}

impl<'a> From<&'a Summary> for NotDone<'a> {
    fn from(s: &'a Summary) -> NotDone<'a> {
        let skipped = s.skipped.iter().map(|k| SkippedProcess { pid: k.pid, reason: &k.reason }).collect();
        NotDone { skipped, failed: failed(&s.failed) }
    }
}

/// `apply --all --json`.
#[derive(Debug, Serialize)]
pub struct FleetApply<'a> {
    pub patch: &'a str,
    pub patched: &'a [i32],
    #[serde(flatten)]
    pub not_done: NotDone<'a>,
    /// With `--rollback-on-failure`: the processes patched, then rolled back again.
    pub rolled_back: &'a [i32],
    pub rollback_failed: Vec<FailedProcess<'a>>,
    /// The signal that cancelled the run, when one did: the processes patched are rolled back.
    pub cancelled: Option<&'a str>,
    /// The architecture of each process the command set out to patch, by pid.
    pub archs: &'a std::collections::BTreeMap<i32, String>,
    pub exit: i32,
}

impl<'a> From<&'a Summary> for FleetApply<'a> {
    fn from(s: &'a Summary) -> FleetApply<'a> {
        FleetApply {
            patch: &s.patch,
            patched: &s.patched,
            not_done: s.into(),
            rolled_back: &s.rolled_back,
            rollback_failed: failed(&s.rollback_failed),
            cancelled: s.cancelled.as_deref(),
            archs: &s.archs,
            exit: s.exit_code(),
        }
    }
}

/// `rollback --all --json`.
#[derive(Debug, Serialize)]
pub struct FleetRollback<'a> {
    pub patch: &'a str,
    pub rolled_back: &'a [i32],
    #[serde(flatten)]
    pub not_done: NotDone<'a>,
    /// The signal that stopped the run, when one did: no process after it was touched.
    pub cancelled: Option<&'a str>,
    /// The architecture of each process the command set out to roll back, by pid.
    pub archs: &'a std::collections::BTreeMap<i32, String>,
    pub exit: i32,
}

impl<'a> From<&'a Summary> for FleetRollback<'a> {
    fn from(s: &'a Summary) -> FleetRollback<'a> {
        FleetRollback {
            patch: &s.patch,
            rolled_back: &s.rolled_back,
            not_done: s.into(),
            cancelled: s.cancelled.as_deref(),
            archs: &s.archs,
            exit: s.exit_code(),
        }
    }
}

/// `check --all --json`: the processes whose checks all passed (those `apply --all` would
/// patch), those left alone and why, those refused with the refusal.
#[derive(Debug, Serialize)]
pub struct FleetCheck<'a> {
    pub patch: &'a str,
    pub passed: Vec<i32>,
    #[serde(flatten)]
    pub not_done: NotDone<'a>,
    /// The architecture of each process checked, by pid.
    pub archs: &'a std::collections::BTreeMap<i32, String>,
    pub exit: i32,
}

impl<'a> From<&'a crate::fleet_check::CheckSummary> for FleetCheck<'a> {
    fn from(s: &'a crate::fleet_check::CheckSummary) -> FleetCheck<'a> {
        let skipped = s.skipped.iter().map(|k| SkippedProcess { pid: k.pid, reason: &k.reason }).collect();
        FleetCheck {
            patch: &s.patch,
            passed: s.passed.iter().map(|c| c.pid).collect(),
            not_done: NotDone { skipped, failed: failed(&s.failed) },
            archs: &s.archs,
            exit: s.exit_code(),
        }
    }
}

/// `commit --all --json`: the processes where the patch was committed, those left alone and why,
/// those it failed in.
#[derive(Debug, Serialize)]
pub struct FleetCommit<'a> {
    pub patch: &'a str,
    pub committed: Vec<i32>,
    #[serde(flatten)]
    pub not_done: NotDone<'a>,
    pub cancelled: Option<&'a str>,
    pub exit: i32,
}

impl<'a> From<&'a crate::fleet_commit::CommitSummary> for FleetCommit<'a> {
    fn from(s: &'a crate::fleet_commit::CommitSummary) -> FleetCommit<'a> {
        let skipped = s.skipped.iter().map(|k| SkippedProcess { pid: k.pid, reason: &k.reason }).collect();
        FleetCommit {
            patch: &s.patch,
            committed: s.committed.iter().map(|(pid, _)| *pid).collect(),
            not_done: NotDone { skipped, failed: failed(&s.failed) },
            cancelled: s.cancelled.as_deref(),
            exit: s.exit_code(),
        }
    }
}

/// `manifest check --json`.
#[derive(Debug, Serialize)]
pub struct ManifestCheck<'a> {
    pub manifest: &'a Path,
    pub ok: bool,
    pub problems: Vec<ErrorFields<'a>>,
    /// The checks passed.
    pub checks: &'a [Line],
    /// What the manifest says, when it could be read.
    #[serde(flatten)]
    pub read: Option<ManifestRead<'a>>,
    /// One sentence, when the manifest is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<&'a str>,
    /// The exit code, when the manifest is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
}

/// The parts of a manifest `manifest check --json` reports.
#[derive(Debug, Serialize)]
pub struct ManifestRead<'a> {
    pub patch: &'a str,
    pub version: &'a str,
    pub target: &'a TargetSpec,
    pub module: &'a ModuleSpec,
    pub functions: &'a [FunctionSpec],
}

impl<'a> From<&'a Manifest> for ManifestRead<'a> {
    fn from(m: &'a Manifest) -> ManifestRead<'a> {
        ManifestRead {
            patch: &m.patch,
            version: &m.version,
            target: &m.target,
            module: &m.module,
            functions: &m.functions,
        }
    }
}

/// Whether a command printed its document (see [`printed`]).
static PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a document was printed already: a command prints exactly one, so an error after it
/// is not printed as a second (the document says what went wrong).
pub fn printed() -> bool {
    PRINTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Prints `doc` as one line of JSON.
pub fn print<T: Serialize>(doc: &T) -> Result<()> {
    PRINTED.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut line =
        serde_json::to_string(doc).map_err(|e| Error::other(format!("cannot write the JSON output: {e}")))?;
    line.push('\n');
    write_stdout(line.as_bytes())
}

/// Writes to standard output; a reader that went away is not an error.
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::other(format!("cannot write to standard output: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{StopWindow, Timings};
    use crate::fleet::{Operation, Skipped};
    use serde_json::{json, Value};

    fn to_value(doc: &impl Serialize) -> Value {
        serde_json::to_value(doc).unwrap()
    }

    /// A patch in trial, its deadline past, reached through a jump stub.
    fn record() -> PatchRecord {
        serde_json::from_value(json!({
            "patch": "compute-fix", "version": "1.0", "description": "d", "state": "trial", "seq": 1,
            "requires": ["base-fix"], "manifest": "/srv/compute.yaml", "manifest_digest": "ab",
            "module": "/srv/compute.so", "module_sha256": "cd", "target_object": "/usr/bin/target",
            "build_id": "3f2a", "module_base": 0x7f12_3456_0000_u64, "module_size": 0x5000,
            "functions": [{
                "target": "compute", "replacement": "compute_v2", "address": 0x5555_5555_1139_u64,
                "replacement_address": 0x7f12_3456_1100_u64, "replacement_size": 42,
                "via": 0x5555_5556_0000_u64, "jump": "rel32", "patch_address": 0x5555_5555_1139_u64,
                "original": "554889e589", "written": "e9c2ee0a00",
            }],
            "applied_at": 1_599_999_700, "trial_deadline": 1_600_000_000, "trial_seconds": 300,
            "on_expiry": "rollback", "ended_at": null, "note": null, "module_mapped": true,
            "consistency": "function",
            "health_check": {"command": "true", "interval_ms": 1000, "timeout_ms": 500, "failures": 3},
            "health": {"runs": 2, "failing": 0, "last": "ok", "last_at": 1_599_999_900},
            "load": "mmap", "trampoline": 0x5555_5556_0000_u64, "trampoline_size": 4096,
        }))
        .unwrap()
    }

    #[test]
    fn patch_shape() {
        let rec = record();
        assert_eq!(
            to_value(&Patch::from(&rec)),
            json!({
                "patch": "compute-fix",
                "version": "1.0",
                "description": "d",
                "state": "trial",
                "requires": ["base-fix"],
                "functions": [{
                    "target": "compute",
                    "replacement": "compute_v2",
                    "address": "0x555555551139",
                    "replacement_address": "0x7f1234561100",
                    "jump": "rel32",
                }],
                "trial_deadline": "2020-09-13T12:26:40Z",
                "trial_remaining_s": 0,
                "overdue": true,
                "on_expiry": "rollback",
                "module": "/srv/compute.so",
                "module_base": "0x7f1234560000",
                "target_object": "/usr/bin/target",
                "build_id": "3f2a",
                "applied_at": "2020-09-13T12:21:40Z",
                "health_check": {"command": "true", "interval_ms": 1000, "timeout_ms": 500, "failures": 3},
                "health": {"runs": 2, "failing": 0, "last": "ok", "last_at": 1_599_999_900},
                "note": null,
                "forked_from": null,
            })
        );
        let mut ended = rec;
        (ended.state, ended.trial_deadline, ended.description, ended.health_check, ended.health) =
            (State::RolledBack, None, None, None, None);
        ended.note = Some("rolled back by hand".into());
        let v = to_value(&Patch::from(&ended));
        for (key, want) in [
            ("state", json!("rolled-back")),
            ("trial_deadline", Value::Null),
            ("trial_remaining_s", Value::Null),
            ("description", Value::Null),
            ("health_check", Value::Null),
            ("health", Value::Null),
            ("note", json!("rolled back by hand")),
        ] {
            assert_eq!(v[key], want, "{key}");
        }
    }

    #[test]
    fn apply_is_the_patch_with_pid_and_measurements() {
        let rec = record();
        let mut measured = Measured::default();
        measured.timings.load = Some(Duration::from_micros(812));
        measured.stops.push(StopWindow { start_monotonic_ns: 10, end_monotonic_ns: 25 });
        let patch = Patch { state: State::Committed, ..Patch::from(&rec) };
        let doc = Apply { pid: 4242, patch, measured: &measured };
        let mut want = to_value(&Patch::from(&rec));
        want["pid"] = json!(4242);
        want["state"] = json!("committed");
        want["timings_us"] = json!({"load": 812});
        want["stops"] = json!([{"start_monotonic_ns": 10, "end_monotonic_ns": 25}]);
        assert_eq!(to_value(&doc), want);
        assert_eq!(serde_json::to_string(&doc).unwrap().matches("\"state\"").count(), 1);
        assert_eq!(to_value(&Timings::default()), json!({}));
    }

    #[test]
    fn failure_shape() {
        let e = Error::precondition("no process maps /usr/bin/target").hint("check target.object");
        assert_eq!(
            to_value(&Failure::from(&e)),
            json!({"error": {"kind": "precondition", "message": "no process maps /usr/bin/target",
                             "hint": "check target.object"}, "exit": 4})
        );
    }

    fn summary(operation: Operation) -> Summary {
        let failed = |pid, kind, message: &str, hint: Option<&str>| Failed {
            pid,
            error: Error { kind, message: message.into(), hint: hint.map(Into::into) },
        };
        let skipped = |pid, reason: &str, settled| Skipped { pid, reason: reason.into(), settled };
        Summary {
            operation,
            patch: "compute-fix".into(),
            patched: vec![101, 102],
            skipped: vec![skipped(103, "already applied", true), skipped(104, "build-id differs in memory", false)],
            failed: vec![failed(105, Kind::Busy, "stage 4 (activate): busy", Some("try again"))],
            rolled_back: vec![102, 101],
            rollback_failed: vec![failed(106, Kind::Other, "gone", None)],
            warnings: vec!["not in the JSON".into()],
            cancelled: None,
            archs: [(101, "x86-64".to_string()), (102, "i386".to_string())].into_iter().collect(),
        }
    }

    #[test]
    fn fleet_summary_shape() {
        let skipped =
            json!([{"pid": 103, "reason": "already applied"}, {"pid": 104, "reason": "build-id differs in memory"}]);
        let failed = json!([{"pid": 105, "kind": "busy", "message": "stage 4 (activate): busy", "hint": "try again"}]);
        assert_eq!(
            to_value(&FleetApply::from(&summary(Operation::Apply))),
            json!({
                "patch": "compute-fix",
                "patched": [101, 102],
                "skipped": skipped,
                "failed": failed,
                "rolled_back": [102, 101],
                "rollback_failed": [{"pid": 106, "kind": "other", "message": "gone", "hint": null}],
                "cancelled": null,
                "archs": {"101": "x86-64", "102": "i386"},
                "exit": 1,
            })
        );
        assert_eq!(
            to_value(&FleetRollback::from(&summary(Operation::Rollback))),
            json!({
                "patch": "compute-fix",
                "rolled_back": [102, 101],
                "skipped": skipped,
                "failed": failed,
                "cancelled": null,
                "archs": {"101": "x86-64", "102": "i386"},
                "exit": 1
            })
        );
    }
}
