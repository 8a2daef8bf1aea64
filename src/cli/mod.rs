//! The command line: every console action as a scriptable command with `--json` output and
//! the documented exit codes (0 done, 1 other, 2 bad input, 3 busy, 4 precondition).

use crate::engine::{self, Applied, CheckLine, Engine, Observer, Session, Stage};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::processes::{self, Process, Scope};
use crate::registry::{PatchRecord, State};
use crate::trial;
use clap::{Parser, Subcommand};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

mod build_cmd;
pub mod demo;
pub mod interrupt;
mod journal_cmd;
pub mod manifest_cmd;
pub mod output;

/// `println!` that never panics: standard output may be a terminal that hung up, or a pipe
/// whose reader left, while pannus still has work to finish or undo.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` that never panics (see [`say!`]), flushed.
macro_rules! say_part {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout();
        let _ = write!(out, $($t)*);
        let _ = out.flush();
    }};
}

mod fleet_cmd;
mod install_cmd;

#[derive(Parser, Debug)]
#[command(name = "pannus", version, about = "Live patching of running Linux x86-64 processes", long_about = None)]
pub struct Cli {
    /// Folder for the audit journal and the per-process locks [env: PANNUS_STATE_DIR] [default: /var/lib/pannus]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long stage 3 may run the module's init functions before they are stopped
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub init_timeout: Option<std::time::Duration>,
    /// How long a stop of every thread waits for each thread before it lets them all go and counts the attempt as busy [default: 100ms]
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub stop_timeout: Option<std::time::Duration>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// A canary rollout: N processes first, watched through a trial of their own.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct CanaryArgs {
    /// Apply to N processes first, keep them through --canary-trial with the manifest's health check running, then to the rest; roll the canaries back and touch no other process if one fails
    #[arg(long, value_name = "N", requires = "canary_trial", value_parser = clap::value_parser!(u32).range(1..))]
    pub canary: Option<u32>,
    /// How long the canaries are watched before the rest get the patch
    #[arg(long, value_name = "DURATION", requires = "canary", value_parser = humantime::parse_duration)]
    pub canary_trial: Option<std::time::Duration>,
}

impl CanaryArgs {
    fn get(self) -> Option<crate::canary::Canary> {
        Some(crate::canary::Canary { count: self.canary? as usize, trial: self.canary_trial? })
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check, then load, link, init and activate a patch in a running process
    #[command(group(clap::ArgGroup::new("which").required(true).args(["pid", "all"])))]
    Apply {
        manifest: PathBuf,
        #[arg(long)]
        pid: Option<i32>,
        /// Every process that maps the target object with the manifest's build-id, one after the other
        #[arg(long)]
        all: bool,
        /// Do not ask before each stage (with --all: before starting)
        #[arg(long, short)]
        yes: bool,
        /// Stay until the trial ends and apply its on_expiry policy
        #[arg(long, conflicts_with = "all")]
        wait: bool,
        /// With --all: when a process fails, stop and roll back the processes already patched
        #[arg(long, conflicts_with = "pid")]
        rollback_on_failure: bool,
        #[command(flatten)]
        canary: CanaryArgs,
        #[arg(long)]
        json: bool,
    },
    /// Every check apply would make, touching nothing
    #[command(group(clap::ArgGroup::new("which").required(true).args(["pid", "all"])))]
    Check {
        manifest: PathBuf,
        #[arg(long)]
        pid: Option<i32>,
        /// Every process apply --all would patch: those that map the target object with the manifest's build-id and lack the patch
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// The patches in a process, read from the process
    #[command(group(clap::ArgGroup::new("which").required(true).args(["pid", "all"])))]
    Status {
        #[arg(long)]
        pid: Option<i32>,
        /// Every process that has patches
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Processes that have patches (every process with --all)
    Ps {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// End a patch's trial: trial -> committed
    #[command(group(clap::ArgGroup::new("which").required(true).args(["pid", "all"])))]
    Commit {
        #[arg(long)]
        pid: Option<i32>,
        /// PATCH in every process where it is on trial
        #[arg(long)]
        all: bool,
        patch: String,
        /// Commit the patches PATCH requires that are still in trial too, without asking
        #[arg(long, short)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Restore the original code and unload the module (the most recent patch by default)
    #[command(group(clap::ArgGroup::new("which").required(true).args(["pid", "all"])))]
    Rollback {
        #[arg(long)]
        pid: Option<i32>,
        /// PATCH in every process where it is applied, one after the other
        #[arg(long, requires = "patch")]
        all: bool,
        patch: Option<String>,
        /// Do not ask for confirmation
        #[arg(long, short)]
        yes: bool,
        /// Roll back the patches that require PATCH first, newest first
        #[arg(long)]
        cascade: bool,
        #[arg(long)]
        json: bool,
    },
    /// The audit journal: who did what, when, from where, with what outcome
    Journal {
        /// Only entries about this process
        #[arg(long)]
        pid: Option<i32>,
        /// Only entries about this patch
        #[arg(long)]
        patch: Option<String>,
        /// Only entries from this time on: RFC 3339 (2027-01-15T08:00:00Z) or a duration ago (90m, 2h, 1d)
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only the last N entries (of those the other filters keep)
        #[arg(short = 'n', long = "lines", value_name = "N")]
        lines: Option<usize>,
        /// Then print each new entry as it is journaled, until interrupted (with --json: one document a line)
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Carry out a trial's on_expiry policy at its deadline (started by apply, detached)
    #[command(hide = true)]
    TrialWatch {
        #[arg(long, required_unless_present = "pids_from_stdin")]
        pid: Option<i32>,
        /// Watch every process whose pid is read from standard input, one a line
        #[arg(long, conflicts_with = "pid")]
        pids_from_stdin: bool,
        patch: String,
    },
    /// Keep the installed patches applied in every new process of their build (foreground, until SIGTERM)
    Daemon {
        /// Walk /proc for new processes only: no fanotify, no process-events connector
        #[arg(long)]
        poll: bool,
        /// Do not hold the exec of an installed patch's program (fanotify): patch new processes just after their exec, not before main
        #[arg(long)]
        no_hold: bool,
    },
    /// The full-screen maintenance console (also what `pannus` alone opens)
    Console {
        /// Folder of manifests for the apply wizard
        #[arg(long, value_name = "DIR", default_value = "manifests")]
        manifests: PathBuf,
    },
    /// Build and start a small demo service and open the console on it with a ready manifest
    Demo {
        /// Instead of the console, walk through apply, status and rollback on the command line
        #[arg(long)]
        script: bool,
        /// With --script: do not pause between steps
        #[arg(long, short)]
        yes: bool,
    },
    /// Install a patch for its build of its binary: apply it to every process of that build, and (with the daemon) to every new one
    Install {
        manifest: PathBuf,
        /// Do not ask first
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        canary: CanaryArgs,
        #[arg(long)]
        json: bool,
    },
    /// Roll an installed patch back from every process and forget it
    Uninstall {
        patch: String,
        /// Do not ask first
        #[arg(long, short)]
        yes: bool,
        /// Uninstall the installed patches that require it too
        #[arg(long)]
        cascade: bool,
        #[arg(long)]
        json: bool,
    },
    /// The installed patches, with how many processes of their build have them
    Installed {
        #[arg(long)]
        json: bool,
    },
    /// Build a patch module and its manifest from a source diff (see "Making a patch from a fix")
    Build {
        /// The executable or shared library as it runs, with its debug information (DWARF)
        #[arg(long, value_name = "BINARY")]
        object: PathBuf,
        /// The source tree it was built from (never modified)
        #[arg(long, value_name = "DIR")]
        source: PathBuf,
        /// The fix: a unified diff against DIR, as `git diff` writes it (`patch -p1` paths)
        #[arg(long, value_name = "FIX.patch")]
        diff: PathBuf,
        /// The project's own build command, run in pannus's copy of the tree (e.g. "make")
        #[arg(long, value_name = "CMD", required_unless_present = "compile_commands")]
        build: Option<String>,
        /// The patch id [default: the diff's file name]
        #[arg(long, value_name = "ID")]
        patch: Option<String>,
        /// The patch's version in the manifest
        #[arg(long, value_name = "V")]
        version: Option<String>,
        /// Where ID.so, ID.yaml and ID.build.log go
        #[arg(long, value_name = "DIR", default_value = ".")]
        output: PathBuf,
        /// How each file is compiled, instead of running the build command with compiler wrappers
        #[arg(long, value_name = "FILE")]
        compile_commands: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write a manifest for a module, or validate one without a process
    Manifest {
        #[command(subcommand)]
        command: manifest_cmd::ManifestCommand,
    },
    /// Print the shell completion script for SHELL
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff)
    #[command(hide = true)]
    Man,
}

/// Runs the command line; returns the process exit code.
///
/// `spare` is the caller's [`pannus_kernel::SpareCpu`] guard, entered as early as it could be:
/// kept for the commands that work on a service's process, so that their work never keeps one
/// of the service's threads waiting for a CPU (the stop itself still runs at real-time
/// priority), and left at once by the others.
pub fn run(cli: Cli, spare: pannus_kernel::SpareCpu) -> i32 {
    let mut engine = Engine::new(crate::journal::state_dir(cli.state_dir.as_deref()));
    engine.lock_wait = crate::fleet::lock_wait_from_env().unwrap_or(engine.lock_wait);
    if let Some(t) = cli.init_timeout {
        engine.init_timeout = t;
    }
    if let Some(t) = cli.stop_timeout {
        engine.stop_timeout = t;
    }
    let command = cli.command.unwrap_or(Command::Console { manifests: PathBuf::from("manifests") });
    crate::journal::set_source(match command {
        Command::Console { .. } | Command::Demo { script: false, .. } => crate::journal::Source::Console,
        Command::TrialWatch { .. } => crate::journal::Source::Watcher,
        Command::Daemon { .. } => crate::journal::Source::Daemon,
        _ => crate::journal::Source::Cli,
    });
    let json = matches!(
        command,
        Command::Apply { json: true, .. }
            | Command::Check { json: true, .. }
            | Command::Status { json: true, .. }
            | Command::Ps { json: true, .. }
            | Command::Commit { json: true, .. }
            | Command::Rollback { json: true, .. }
            | Command::Journal { json: true, .. }
            | Command::Build { json: true, .. }
            | Command::Install { json: true, .. }
            | Command::Uninstall { json: true, .. }
            | Command::Installed { json: true }
    );
    let _spare = matches!(
        command,
        Command::Apply { .. }
            | Command::Check { .. }
            | Command::Commit { .. }
            | Command::Rollback { .. }
            | Command::Install { .. }
            | Command::Uninstall { .. }
    )
    .then_some(spare);
    if matches!(
        command,
        Command::Apply { .. }
            | Command::Rollback { .. }
            | Command::Commit { .. }
            | Command::Install { .. }
            | Command::Uninstall { .. }
            | Command::Daemon { .. }
    ) {
        interrupt::catch();
    }
    let result = match command {
        Command::Apply { all: true, .. }
        | Command::Rollback { all: true, .. }
        | Command::Status { all: true, .. }
        | Command::Check { all: true, .. }
        | Command::Commit { all: true, .. } => fleet_cmd::fleet_dispatch(&engine, command),
        Command::Install { manifest, yes, canary, json } => {
            install_cmd::install(&engine, &manifest, yes, canary.get(), json)
        }
        Command::Uninstall { patch, yes, cascade, json } => install_cmd::uninstall(&engine, &patch, yes, cascade, json),
        command => dispatch(&engine, command).map(|()| 0),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if json && !output::printed() {
                let _ = output::print(&output::Failure::from(&e));
            }
            let _ = writeln!(std::io::stderr(), "pannus: {e}");
            e.kind.exit_code()
        }
    }
}

fn dispatch(engine: &Engine, command: Command) -> Result<()> {
    match command {
        Command::Apply { manifest, pid, yes, wait, json, .. } => {
            apply(engine, &manifest, one_pid(pid)?, yes, wait, json)
        }
        Command::Check { manifest, pid, json, .. } => check(engine, &manifest, one_pid(pid)?, json),
        Command::Status { pid, json, .. } => status(engine, one_pid(pid)?, json),
        Command::Ps { all, json } => ps(engine, all, json),
        Command::Commit { pid, patch, yes, json, .. } => commit(engine, one_pid(pid)?, &patch, yes, json),
        Command::Rollback { pid, patch, yes, cascade, json, .. } => {
            rollback(engine, one_pid(pid)?, patch, yes, cascade, json)
        }
        Command::Journal { pid, patch, since, lines, follow, json } => {
            let since = since.as_deref().map(journal_cmd::parse_since).transpose()?;
            let filter = journal_cmd::Filter { pid, patch, since };
            journal_cmd::run(engine, &filter, lines, follow, json)
        }
        Command::Console { manifests } => {
            crate::tui::run(engine, crate::tui::Options { manifests, ..Default::default() })
        }
        Command::Demo { script: true, yes } => demo::run(engine, yes),
        Command::Demo { script: false, .. } => demo::console(engine),
        Command::Manifest { command } => manifest_cmd::run(command),
        Command::Install { .. } | Command::Uninstall { .. } => {
            Err(Error::other("install and uninstall run through the fleet dispatch"))
        }
        Command::Installed { json } => install_cmd::list(engine, json),
        Command::Build { object, source, diff, build, patch, version, output, compile_commands, json } => {
            let options =
                crate::build::Options { object, source, diff, build, patch, version, output, compile_commands };
            build_cmd::run(&options, json)
        }
        Command::Completions { shell } => manifest_cmd::completions(shell),
        Command::Man => manifest_cmd::man(),
        Command::TrialWatch { pid: Some(pid), patch, .. } => trial::watch_trial(engine, pid, &patch).map(|_| ()),
        Command::TrialWatch { pid: None, patch, .. } => trial::watch_trials(engine, &patch, std::io::stdin().lock()),
        Command::Daemon { poll, no_hold } => {
            crate::daemon::run(engine, crate::daemon::Options { poll, hold: !poll && !no_hold }, interrupt::received)
        }
    }
}

/// The command line's observer: prints each stage's plan and progress, and asks on the
/// terminal before each stage unless told yes in advance (`--yes`). A signal that means "no"
/// (see [`interrupt`]) is the answer to every question from then on, `--yes` or not.
pub struct CliObserver {
    pub yes: bool,
    pub quiet: bool,
}

impl Observer for CliObserver {
    fn confirm(&mut self, stage: Stage, plan: &str) -> bool {
        if interrupt::received().is_some() {
            return false;
        }
        if self.yes {
            if !self.quiet {
                say!("{stage}: {plan}");
            }
            return true;
        }
        say!("{stage}: {plan}");
        ask(&format!("Proceed with {stage}?"))
    }
    fn why_not(&self) -> Option<String> {
        interrupt::received().map(|sig| format!("{sig} received"))
    }
    fn progress(&mut self, stage: Option<Stage>, msg: &str) {
        if self.quiet {
            return;
        }
        match stage {
            Some(s) => say!("  {s}: {msg}"),
            None => say!("  {msg}"),
        }
    }
}

/// A yes/no question on the terminal; anything but y/yes is no, and so are the end of the
/// input, a terminal that hung up and a signal that means "no" (see [`interrupt`]).
fn ask(question: &str) -> bool {
    say_part!("{question} [y/N] ");
    let answer = answer();
    if answer.is_none() {
        say!();
    }
    matches!(answer.unwrap_or_default().trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// The next line typed on standard input; `None` at its end or once a signal that means "no"
/// came. The line is read on a thread of its own, so that the wait ends at the signal (whose
/// handler restarts the read).
fn answer() -> Option<String> {
    use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
    use std::sync::{Mutex, OnceLock};
    static LINES: OnceLock<Mutex<Receiver<Option<String>>>> = OnceLock::new();
    let lines = LINES.get_or_init(|| {
        let (tx, rx) = channel();
        std::thread::spawn(move || loop {
            let mut line = String::new();
            let got = match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line),
            };
            let end = got.is_none();
            if tx.send(got).is_err() || end {
                break;
            }
        });
        Mutex::new(rx)
    });
    let lines = lines.lock().ok()?;
    loop {
        if interrupt::received().is_some() {
            return None;
        }
        match lines.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(line) => return line,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

fn require_terminal_or_yes(yes: bool, what: &str) -> Result<()> {
    if yes || std::io::stdin().is_terminal() {
        return Ok(());
    }
    Err(Error::bad_input(format!("{what} needs a confirmation and there is no terminal to ask on"))
        .hint("pass --yes to confirm every stage in advance"))
}

fn apply(engine: &Engine, path: &std::path::Path, pid: i32, yes: bool, wait: bool, json: bool) -> Result<()> {
    let m = Manifest::load(path)?;
    require_terminal_or_yes(yes, "apply")?;
    overdue_first(engine, pid);
    let mut s = Session::open(engine, pid)?;
    let mut obs = CliObserver { yes, quiet: json };
    if !json {
        say!("applying `{}` {} to process {pid} ({})", m.patch, m.version, s.target.name);
    }
    let Applied { record: rec, measured } = s.apply(&m, &mut obs)?;
    if let Some(sig) = interrupt::received() {
        // The signal came while stage 4 ran, which finished: "no" all the same.
        return cancel_applied(s, &rec.patch, sig);
    }
    drop(s);
    // Every trial is watched, --wait or not: the foreground may be gone before the deadline.
    if let Err(e) = trial::spawn_trial_watcher(engine, pid, &rec.patch) {
        let _ =
            writeln!(std::io::stderr(), "pannus: warning: {e}; the trial's on_expiry policy will not run unattended");
    }
    if !json {
        say!(
            "patch `{}` active in process {pid}: state {}, trial ends in {} ({} on expiry)",
            rec.patch,
            rec.state,
            humantime::format_duration(std::time::Duration::from_secs(rec.trial_seconds)),
            rec.on_expiry
        );
    }
    let mut final_state = rec.state;
    if wait {
        let mut last = u64::MAX;
        final_state = trial::follow_trial(engine, pid, &rec.patch, interrupt::received, |left| {
            if !json && left != last {
                last = left;
                say_part!("\r  trial: {:02}:{:02} left ", left / 60, left % 60);
            }
        })?;
        if !json {
            say!("\rtrial ended: patch `{}` is {final_state}          ", rec.patch);
        }
    }
    if json {
        let from = output::Patch::from(&rec);
        let patch = output::Patch { state: final_state, overdue: from.overdue && final_state == State::Trial, ..from };
        output::print(&output::Apply { pid, patch, measured: &measured })?;
    }
    Ok(())
}

/// A signal that means "no" came while the last stage ran: the patch just activated is rolled
/// back, and the apply journaled as cancelled. When the rollback fails, the patch stays in its
/// trial with a trial watcher, and the error says so.
fn cancel_applied(mut s: Session, patch: &str, sig: &str) -> Result<()> {
    let (engine, pid, name) = (s.engine, s.target.pid, s.target.name.clone());
    let why = format!("cancelled: {sig} received during the apply");
    match s.rollback_because(Some(patch), false, &why, &mut engine::Quiet) {
        Ok(_) => {
            let detail = format!("{sig} received during stage 4 (activate): rolled back, the process is as it was");
            let _ = engine.journal().record("apply", pid, &name, Some(patch), "cancelled", &detail);
            Err(Error::cancelled(format!("apply of `{patch}` to process {pid} cancelled: {detail}")))
        }
        Err(e) => {
            drop(s);
            let watched = match trial::spawn_trial_watcher(engine, pid, patch) {
                Ok(_) => "its trial watcher carries out its on_expiry policy".to_string(),
                Err(w) => format!("and no trial watcher runs ({w})"),
            };
            Err(e.context(format!(
                "{sig} received during the apply; rolling `{patch}` back failed, it is in its trial in process {pid} and {watched}"
            )))
        }
    }
}

/// Commits `patch`. What it requires must be committed first: a required patch still in trial
/// would, rolled back at its deadline, take `patch` with it. Such patches are named, and
/// committed together with `patch` after one question (or `--yes`); without a terminal and
/// without `--yes` the commit is refused.
fn commit(engine: &Engine, pid: i32, patch: &str, yes: bool, json: bool) -> Result<()> {
    overdue_first(engine, pid);
    let mut s = Session::open(engine, pid)?;
    let required = crate::registry::required_in_trial(&s.registry()?.patches, patch);
    if !required.is_empty() && !yes {
        let names = required.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ");
        let (them, it) = if required.len() == 1 { ("it", "is") } else { ("they", "are") };
        if !std::io::stdin().is_terminal() {
            return Err(Error::precondition(format!(
                "patch `{patch}` requires {names}, which {it} still in trial in process {pid}: \
                 rolled back at {} deadline, {them} would take `{patch}` with {}",
                if required.len() == 1 { "its" } else { "their" },
                if required.len() == 1 { "it" } else { "them" },
            ))
            .hint(format!("commit {names} first, or commit them together: pannus commit --pid {pid} {patch} --yes")));
        }
        let question = format!(
            "`{patch}` requires {names}, still in trial. Commit {names} and `{patch}` together in process {pid} ({})?",
            s.target.name
        );
        if !ask(&question) {
            return Err(Error::cancelled("commit cancelled: nothing was committed"));
        }
    }
    let mut committed = Vec::new();
    for id in &required {
        s.commit(id, &format!("committed by hand with `{patch}`, which requires it"))?;
        committed.push(id.clone());
    }
    let rec = s.commit(patch, "committed by hand")?;
    committed.push(patch.to_string());
    if json {
        output::print(&output::Commit { pid, patch, state: rec.state, committed: &committed })?;
    } else {
        say!(
            "committed in process {pid}: {}",
            committed.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

fn check(engine: &Engine, path: &std::path::Path, pid: i32, json: bool) -> Result<()> {
    let m = Manifest::load(path)?;
    let mut s = Session::open(engine, pid)?;
    let (lines, result) = s.check(&m);
    if json {
        let error = result.as_ref().err();
        output::print(&output::Check {
            pid,
            patch: &m.patch,
            ok: result.is_ok(),
            checks: &lines,
            error: error.map(Into::into),
            exit: error.map(|e| e.kind.exit_code()),
        })?;
        return result;
    }
    print_checks(&lines);
    if result.is_ok() {
        say!("all checks passed: `{}` can be applied to process {pid}", m.patch);
    }
    result
}

fn print_checks(lines: &[CheckLine]) {
    for l in lines {
        let mark = if l.ok { "ok  " } else { "FAIL" };
        say!("{mark} {:<18} {}", l.check, l.detail);
    }
}

fn status(engine: &Engine, pid: i32, json: bool) -> Result<()> {
    let (_, reg) = engine::read_status(pid)?;
    carry_out_overdue(engine, pid, &reg.patches);
    let (target, reg) = engine::read_status(pid)?;
    if json {
        return output::print(&output::ProcessPatches::new(pid, &target.name, &target.exe, target.arch, &reg.patches));
    }
    print_status(pid, &target.name, &target.exe, target.arch, &reg.patches);
    Ok(())
}

/// Carries out the policy of the overdue trials among `patches` (see
/// [`trial::carry_out_overdue`]), saying on standard error what was done; `true` when any was.
fn carry_out_overdue(engine: &Engine, pid: i32, patches: &[PatchRecord]) -> bool {
    let done = trial::carry_out_overdue(engine, pid, patches);
    for (patch, result) in &done {
        let _ = match result {
            Ok(state) => writeln!(
                std::io::stderr(),
                "pannus: the trial of `{patch}` in process {pid} was overdue: its policy was carried out, it is {state}"
            ),
            Err(e) => writeln!(
                std::io::stderr(),
                "pannus: the trial of `{patch}` in process {pid} is overdue, and its policy could not be carried out now: {}",
                e.message
            ),
        };
    }
    !done.is_empty()
}

fn print_status(pid: i32, name: &str, exe: &str, arch: Option<pannus_kernel::Arch>, patches: &[PatchRecord]) {
    let arch = arch.map_or(String::new(), |a| format!(" ({a})"));
    say!("process {pid} ({name}) {exe}{arch}");
    if patches.is_empty() {
        say!("  no patches");
    }
    let now = crate::engine::now_secs();
    for p in patches {
        let trial = match (p.state, engine::remaining(p)) {
            (State::Trial, _) if trial::is_overdue(p, now) => {
                format!(", OVERDUE: {} on expiry not carried out yet", p.on_expiry)
            }
            (State::Trial, Some(left)) => format!(", {:02}:{:02} left, then {}", left / 60, left % 60, p.on_expiry),
            _ => String::new(),
        };
        let req = if p.requires.is_empty() { String::new() } else { format!(", requires {}", p.requires.join(", ")) };
        let forked = match p.forked_from(pid) {
            Some(parent) if p.state.is_applied() => format!(", forked from process {parent}"),
            _ => String::new(),
        };
        say!("  {} {} [{}{trial}{req}{forked}]", p.patch, p.version, p.state);
        if p.state.is_applied() {
            for f in &p.functions {
                match &f.implementation {
                    Some(_) => say!(
                        "    {} ({:#x} -> {:#x}, {})",
                        f.route(),
                        f.address,
                        f.replacement_address,
                        f.jump.as_str()
                    ),
                    None => say!(
                        "    {} {:#x} -> {} {:#x} ({})",
                        f.target,
                        f.address,
                        f.replacement,
                        f.replacement_address,
                        f.jump.as_str()
                    ),
                }
            }
        }
    }
}

/// Before a command changes process `pid`: the policies of its overdue trials first, as the
/// trial watcher would have carried them out at their deadlines. (A process that cannot be read
/// is left to the command, which says why.)
fn overdue_first(engine: &Engine, pid: i32) {
    if let Ok((_, reg)) = engine::read_status(pid) {
        carry_out_overdue(engine, pid, &reg.patches);
    }
}

/// [`carry_out_overdue`] for each of `procs`; `true` when any was carried out.
fn carry_out_overdue_all(engine: &Engine, procs: &[Process]) -> bool {
    let mut any = false;
    for p in procs {
        any |= carry_out_overdue(engine, p.pid.get(), &p.patches);
    }
    any
}

/// The word for a patch's state in a list: `OVERDUE` for a trial past its deadline.
fn state_word(p: &PatchRecord, now: u64) -> String {
    if trial::is_overdue(p, now) {
        "OVERDUE".to_string()
    } else {
        p.state.to_string()
    }
}

fn ps(engine: &Engine, all: bool, json: bool) -> Result<()> {
    let scope = || if all { Scope::All } else { Scope::Patched };
    let mut procs = processes::list(scope(), None);
    if carry_out_overdue_all(engine, &procs) {
        procs = processes::list(scope(), None);
    }
    let procs = processes::forks_after_parents(procs, |p| p);
    if json {
        return output::print(&output::Processes::new(&procs, Process::applied));
    }
    let now = crate::engine::now_secs();
    say!("{:>8}  {:<16} {:<6} {:<10} EXE", "PID", "NAME", "ARCH", "PATCHES");
    for p in &procs {
        let applied: Vec<String> = p.applied().map(|r| format!("{}({})", r.patch, state_word(r, now))).collect();
        // A child forked from a patched process: under its parent, saying so.
        let (name, forked) = match p.forked_from() {
            Some(parent) => (format!("└ {}", p.name), format!("  (forked from {parent})")),
            None => (p.name.clone(), String::new()),
        };
        say!(
            "{:>8}  {:<16} {:<6} {:<10} {}{}{forked}",
            p.pid,
            name,
            p.arch.map_or("-".to_string(), |a| a.name()),
            applied.len(),
            p.exe,
            if applied.is_empty() { String::new() } else { format!("  {}", applied.join(" ")) }
        );
    }
    Ok(())
}

fn rollback(engine: &Engine, pid: i32, patch: Option<String>, yes: bool, cascade: bool, json: bool) -> Result<()> {
    require_terminal_or_yes(yes, "rollback")?;
    overdue_first(engine, pid);
    let mut s = Session::open(engine, pid)?;
    // Check first, then ask once, naming every patch the rollback takes back.
    let reg = s.registry()?;
    let which = patch.clone().or_else(|| reg.applied().max_by_key(|p| p.seq).map(|p| p.patch.clone()));
    let dependents = which.as_deref().map(|w| reg.dependents(w)).unwrap_or_default();
    if let Some(w) = which.as_deref().filter(|_| !dependents.is_empty() && !cascade) {
        return Err(engine::still_required(pid, w, &dependents));
    }
    if !yes {
        let question = match which.as_deref() {
            // Nothing applied: the rollback says so (or finishes an unload left half-done).
            None => format!("Roll back in process {pid} ({})?", s.target.name),
            Some(w) if dependents.is_empty() => format!("Roll back `{w}` in process {pid} ({})?", s.target.name),
            Some(w) => format!(
                "Roll back `{w}` and {}, which require{} it, newest first, in process {pid} ({})?",
                dependents.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", "),
                if dependents.len() == 1 { "s" } else { "" },
                s.target.name
            ),
        };
        if !ask(&question) {
            return Err(Error::cancelled("rollback cancelled: nothing was rolled back"));
        }
    }
    let mut obs = CliObserver { yes: true, quiet: json };
    let done = s.rollback(patch.as_deref(), cascade, &mut obs)?;
    if json {
        output::print(&output::Rollback {
            pid,
            rolled_back: &done.ids,
            kept_mapped: &done.kept_mapped,
            measured: &done.measured,
        })?;
    } else {
        say!("rolled back in process {pid}: {}", done.ids.join(", "));
    }
    Ok(())
}

fn one_pid(pid: Option<i32>) -> Result<i32> {
    pid.ok_or_else(|| Error::bad_input("one of --pid PID or --all is required"))
}
