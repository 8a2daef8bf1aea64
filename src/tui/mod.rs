//! The maintenance console: a full-screen terminal UI over the same engine API as the CLI.
//!
//! Six threads: the UI (this loop: keys, drawing), the terminal's input (`input.rs`), the
//! snapshot collector (the process table, each process's registry and the journal, every second
//! or on demand), the installed patches' reader (while their view is open, every 2 s or on
//! demand), the job worker (apply, rollback, commit, uninstall) and the signals' reader. The UI
//! waits on none of them but with a timeout, and never on the terminal.

pub mod app;
mod input;
pub mod installed;
pub mod jobs;
pub mod keys;
pub mod render;
pub mod snapshot;
#[cfg(test)]
mod tests;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::journal::Recorded;
use crate::processes::{BuildIds, UserNames};
use app::App;
use crossterm::event::{Event as TermEvent, KeyEventKind};
use crossterm::execute;
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How the console starts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub manifests: PathBuf,
    /// Select this process at start.
    pub select: Option<i32>,
    /// Show the last line of this file under the screen (the demo service's output).
    pub watch_output: Option<PathBuf>,
}

/// What the collector sends: the process table and the journal.
pub struct Refresh {
    pub snapshot: snapshot::Snapshot,
    pub journal: Vec<Recorded>,
    pub output: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(std::io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
}

/// Restores the terminal when dropped: on every exit path, errors included.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn spawn_collector(engine: &Engine, output: Option<PathBuf>) -> (Sender<()>, Receiver<Refresh>) {
    let (poke_tx, poke_rx) = channel::<()>();
    let (tx, rx) = channel::<Refresh>();
    let journal = engine.journal();
    std::thread::Builder::new()
        .name("pannus-snapshot".into())
        .spawn(move || {
            let mut users = UserNames::default();
            let mut build_ids = BuildIds::default();
            loop {
                let snapshot = snapshot::collect(&mut users, &mut build_ids);
                let entries = journal.recorded().unwrap_or_default();
                let out = output
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok().and_then(|t| t.lines().last().map(str::to_string)));
                if tx.send(Refresh { snapshot, journal: entries, output: out }).is_err() {
                    break;
                }
                match poke_rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        })
        .ok();
    (poke_tx, rx)
}

/// How often the installed patches are read again while their view is open.
const INSTALLED_EVERY: Duration = Duration::from_secs(2);

/// The installed patches' reader: while `wanted` is set, reads them (with each one's processes)
/// every [`INSTALLED_EVERY`] or when poked; otherwise it only waits to be poked.
fn spawn_installed(state_dir: PathBuf, wanted: Arc<AtomicBool>) -> (Sender<()>, Receiver<installed::List>) {
    let (poke_tx, poke_rx) = channel::<()>();
    let (tx, rx) = channel::<installed::List>();
    std::thread::Builder::new()
        .name("pannus-installed".into())
        .spawn(move || loop {
            if wanted.load(Ordering::SeqCst) && tx.send(installed::collect(&state_dir)).is_err() {
                break;
            }
            match poke_rx.recv_timeout(INSTALLED_EVERY) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        })
        .ok();
    (poke_tx, rx)
}

/// SIGINT, SIGTERM and SIGHUP, blocked in every thread of the console and read by one thread
/// of their own: each means "no" to the running apply (see [`App::interrupt`]) rather than an
/// end that would leave its stages done in the process. The mask is restored when dropped.
struct Signals {
    old: SigSet,
    rx: Receiver<Signal>,
}

impl Signals {
    /// Blocks the signals; call before any other thread starts, so that all inherit the block.
    /// (Processes the console starts, the trial watchers, begin with no signal blocked.)
    fn block() -> Result<Signals> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        let mut old = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
            .map_err(|e| Error::other(format!("blocking SIGINT, SIGTERM and SIGHUP: {e}")))?;
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("pannus-signals".into())
            .spawn(move || {
                while let Ok(sig) = set.wait() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::other(format!("starting the signal thread: {e}")))?;
        Ok(Signals { old, rx })
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

/// Runs the console until the user quits. Interrupted (Ctrl-C during an action, SIGINT, SIGTERM,
/// SIGHUP), it says no to the running apply, waits for it to undo its stages, and returns an
/// error.
pub fn run(engine: &Engine, opts: Options) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return Err(Error::bad_input("the console needs a terminal")
            .hint("use the pannus subcommands (status, apply, rollback, …) from scripts"));
    }
    let theme = render::Theme::from_env();
    let signals = Signals::block()?;
    let cancel = Arc::new(AtomicBool::new(false));
    let (job_tx, job_rx) = jobs::spawn(engine.clone(), cancel.clone());
    let (poke, refresh_rx) = spawn_collector(engine, opts.watch_output.clone());
    let installed_wanted = Arc::new(AtomicBool::new(false));
    let (poke_installed, installed_rx) = spawn_installed(engine.state_dir.clone(), installed_wanted.clone());
    let mut app = App::new(opts.manifests.clone());
    app.selected = opts.select;
    // First snapshot before the first frame, so the screen starts filled.
    if let Ok(r) = refresh_rx.recv_timeout(Duration::from_secs(5)) {
        apply_refresh(&mut app, r);
    }
    app.selected = opts.select.or(app.selected);

    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        hook(info);
    }));
    terminal::enable_raw_mode().map_err(|e| Error::other(format!("terminal: {e}")))?;
    let _guard = TerminalGuard;
    execute!(std::io::stdout(), EnterAlternateScreen).map_err(|e| Error::other(format!("terminal: {e}")))?;
    let mut term =
        Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(|e| Error::other(format!("terminal: {e}")))?;

    let tty = input::Tty::open();
    let keys = input::spawn().map_err(|e| Error::other(format!("starting the input thread: {e}")))?;
    // Once the terminal is gone, the reader's standard input: kept while the console runs
    // (see `Tty::silence`).
    let mut silenced: Option<Option<std::os::fd::OwnedFd>> = None;
    // Once the terminal hangs up or fails (a dropped SSH session, a killed tmux server), the
    // loop only waits for the running job, which it has answer "no" (see `App::interrupt`).
    let mut gone: Option<String> = None;
    loop {
        app.now = now_secs();
        if gone.is_none() {
            if let Ok(size) = term.size() {
                app.size = (size.width, size.height);
            }
            if let Err(e) = term.draw(|f| render::draw(f, &app, theme)) {
                gone = Some(format!("the terminal cannot be written: {e}"));
            }
        }
        let mut events = Vec::new();
        if gone.is_some() {
            if let Ok(ev) = job_rx.recv_timeout(Duration::from_millis(200)) {
                events.push(ev);
            }
        } else {
            match keys.recv_timeout(Duration::from_millis(200)) {
                Ok(input::Input::Event(TermEvent::Key(k))) if k.kind == KeyEventKind::Press => {
                    if let Some(job) = app.on_key(k) {
                        let _ = job_tx.send(job);
                    }
                }
                Ok(input::Input::Event(_)) | Err(RecvTimeoutError::Timeout) => {}
                Ok(input::Input::Gone(why)) => gone = Some(why),
                Err(RecvTimeoutError::Disconnected) => gone = Some("the terminal cannot be read".into()),
            }
        }
        if gone.is_none() && tty.hung_up() {
            gone = Some("the terminal closed".into());
        }
        if gone.is_some() && silenced.is_none() {
            silenced = Some(tty.silence());
        }
        if let Some(why) = gone.as_deref().filter(|_| app.interrupted.is_none()) {
            app.interrupt(why);
        }
        while let Ok(sig) = signals.rx.try_recv() {
            app.interrupt(sig.as_str());
        }
        if app.interrupted.is_some() {
            cancel.store(true, Ordering::SeqCst);
        }
        let mut poked = false;
        events.extend(job_rx.try_iter());
        for ev in events {
            let finished =
                !matches!(ev, jobs::Event::Progress { .. } | jobs::Event::Confirm { .. } | jobs::Event::Waiting { .. });
            app.on_event(ev);
            poked |= finished;
        }
        if poked {
            let _ = poke.send(());
        }
        // The installed patches are read while their view is open: at once when it opens, and
        // again once a job ended.
        let wanted = app.screen == app::Screen::Installed;
        let was = installed_wanted.swap(wanted, Ordering::SeqCst);
        if wanted && (!was || poked) {
            let _ = poke_installed.send(());
        }
        if let Some(list) = installed_rx.try_iter().last() {
            app.set_installed(list);
        }
        let mut latest = None;
        while let Ok(r) = refresh_rx.try_recv() {
            latest = Some(r);
        }
        if let Some(r) = latest {
            apply_refresh(&mut app, r);
        }
        if !app.quit {
            if let Some(job) = app.tick() {
                let _ = job_tx.send(job);
            }
        }
        // Quitting waits for the running job: an apply ends undone, a rollback or commit whole.
        if app.quit && app.busy.is_none() {
            break;
        }
    }
    match app.interrupted {
        None => Ok(()),
        Some(why) => {
            let what = match app.wizard.as_ref().map(|w| &w.phase) {
                Some(app::Phase::Done { ok: false, message }) => format!(": {message}"),
                Some(app::Phase::Done { ok: true, message }) => format!(" after it finished: {message}"),
                _ => String::new(),
            };
            Err(Error::other(format!("the console was interrupted ({why}){what}")))
        }
    }
}

fn apply_refresh(app: &mut App, r: Refresh) {
    app.set_snapshot(r.snapshot);
    app.journal = r.journal;
    if r.output.is_some() {
        app.output = r.output;
    }
}
