//! `pannus journal`: the audit journal, filtered (`--pid`, `--patch`, `--since`, `-n`), and
//! followed as it grows (`--follow`).

use super::output;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::journal::Recorded;

/// Which journal entries to show.
pub struct Filter {
    pub pid: Option<i32>,
    pub patch: Option<String>,
    pub since: Option<std::time::SystemTime>,
}

impl Filter {
    fn keeps(&self, r: &Recorded) -> bool {
        let e = &r.entry;
        self.pid.is_none_or(|p| e.pid == p)
            && self.patch.as_ref().is_none_or(|p| e.patch.as_ref() == Some(p))
            && self.since.is_none_or(|since| humantime::parse_rfc3339_weak(&e.time).map(|t| t >= since).unwrap_or(true))
    }
}

/// `--since`: an RFC 3339 time, or a duration before now.
pub fn parse_since(text: &str) -> Result<std::time::SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        Error::bad_input(format!("--since `{text}` is neither a time nor a duration"))
            .hint("give an RFC 3339 time (2027-01-15T08:00:00Z) or a duration ago (90m, 2h, 1d)")
    })?;
    Ok(std::time::SystemTime::now().checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH))
}

pub fn run(engine: &Engine, filter: &Filter, lines: Option<usize>, follow: bool, json: bool) -> Result<()> {
    let j = engine.journal();
    let (all, mut offset) = j.entries_from(0)?;
    let mut entries: Vec<_> = all.into_iter().filter(|r| filter.keeps(r)).collect();
    if let Some(n) = lines {
        entries.drain(..entries.len().saturating_sub(n));
    }
    if json && !follow {
        return output::print(&output::Journal { journal: j.path(), entries: &entries });
    }
    if !print_journal(&entries, json) || !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (new, next) = j.entries_from(offset)?;
        offset = next;
        let new: Vec<_> = new.into_iter().filter(|r| filter.keeps(r)).collect();
        if !print_journal(&new, json) {
            break;
        }
    }
    Ok(())
}

/// Prints journal entries, one a line (as JSON documents with `json`); `false` once standard
/// output is gone (a reader that left).
fn print_journal(entries: &[Recorded], json: bool) -> bool {
    let mut text = String::new();
    for r in entries {
        if json {
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
            text.push('\n');
            continue;
        }
        let e = &r.entry;
        text.push_str(&format!(
            "{} {:<10} {:<8} {:<9} pid {:<7} {:<16} {:<9} {}\n",
            e.time,
            e.user,
            if r.source.is_empty() { "-" } else { &r.source },
            e.action,
            e.pid,
            e.patch.as_deref().unwrap_or_default(),
            e.outcome,
            e.detail.lines().next().unwrap_or("")
        ));
    }
    if text.is_empty() {
        return true;
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}
