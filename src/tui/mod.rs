//! The maintenance console: a full-screen terminal UI over the same engine API as the CLI.
//!
//! Three threads: the UI (this loop: keys, drawing), the snapshot collector (the process table,
//! each process's registry and the journal, every second or on demand) and the job worker
//! (apply, rollback, commit). The UI never waits on either.

pub mod app;
pub mod jobs;
pub mod keys;
pub mod render;
pub mod snapshot;
#[cfg(test)]
mod tests;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::journal::Entry;
use crate::processes::UserNames;
use app::App;
use crossterm::event::{self, Event as TermEvent, KeyEventKind};
use crossterm::execute;
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
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
    pub journal: Vec<Entry>,
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
            loop {
                let snapshot = snapshot::collect(&mut users);
                let entries = journal.entries().unwrap_or_default();
                let out = output
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok().and_then(|t| t.lines().last().map(str::to_string)));
                if tx.send(Refresh { snapshot, journal: entries, output: out }).is_err() {
                    break;
                }
                match poke_rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        })
        .ok();
    (poke_tx, rx)
}

/// Runs the console until the user quits.
pub fn run(engine: &Engine, opts: Options) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return Err(Error::bad_input("the console needs a terminal")
            .hint("use the pannus subcommands (status, apply, rollback, …) from scripts"));
    }
    let theme = render::Theme::from_env();
    let (job_tx, job_rx) = jobs::spawn(engine.clone());
    let (poke, refresh_rx) = spawn_collector(engine, opts.watch_output.clone());
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

    loop {
        app.now = now_secs();
        if let Ok(size) = term.size() {
            app.size = (size.width, size.height);
        }
        term.draw(|f| render::draw(f, &app, theme)).map_err(|e| Error::other(format!("terminal: {e}")))?;
        if event::poll(Duration::from_millis(200)).unwrap_or(false) {
            match event::read() {
                Ok(TermEvent::Key(k)) if k.kind == KeyEventKind::Press => {
                    if let Some(job) = app.on_key(k) {
                        let _ = job_tx.send(job);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(Error::other(format!("terminal: {e}"))),
            }
        }
        let mut poked = false;
        while let Ok(ev) = job_rx.try_recv() {
            let finished = !matches!(ev, jobs::Event::Progress { .. } | jobs::Event::Confirm { .. });
            app.on_event(ev);
            poked |= finished;
        }
        if poked {
            let _ = poke.send(());
        }
        let mut latest = None;
        while let Ok(r) = refresh_rx.try_recv() {
            latest = Some(r);
        }
        if let Some(r) = latest {
            apply_refresh(&mut app, r);
        }
        if let Some(job) = app.tick() {
            let _ = job_tx.send(job);
        }
        if app.quit {
            break;
        }
    }
    Ok(())
}

fn apply_refresh(app: &mut App, r: Refresh) {
    app.set_snapshot(r.snapshot);
    app.journal = r.journal;
    if r.output.is_some() {
        app.output = r.output;
    }
}
