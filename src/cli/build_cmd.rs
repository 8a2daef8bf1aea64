//! `pannus build`: prints what was built and every decision, or one JSON object.

use crate::build::{self, Options, Progress, Report};
use crate::error::Result;
use std::io::{IsTerminal, Write};

/// Progress on standard error, when it is a terminal.
struct Steps(bool);

impl Progress for Steps {
    fn step(&mut self, what: &str) {
        if self.0 {
            let _ = writeln!(std::io::stderr(), "pannus build: {what}");
        }
    }
}

/// A refused build's report, with the error as every `--json` failure has it.
#[derive(serde::Serialize)]
struct RefusedReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    #[serde(flatten)]
    failure: super::output::Failure<'a>,
}

pub fn run(options: &Options, json: bool) -> Result<()> {
    let report = match build::build(options, &mut Steps(!json && std::io::stderr().is_terminal())) {
        Ok(r) => r,
        Err(build::Failed { error, report: Some(report) }) => {
            if json {
                super::output::print(&RefusedReport { report: &report, failure: (&error).into() })?;
            } else {
                super::output::write_stdout(text(&report).as_bytes())?;
            }
            return Err(error);
        }
        Err(build::Failed { error, report: None }) => return Err(error),
    };
    if json {
        return super::output::print(&report);
    }
    super::output::write_stdout(text(&report).as_bytes())
}

fn text(r: &Report) -> String {
    let verb = if r.module.is_some() { "built patch" } else { "no patch built:" };
    let mut out = format!("{verb} {} for {} (build-id {})\n", r.patch, r.object.display(), r.build_id);
    out.push_str(&format!("compiled again with the fix: {}\n", r.compiled.join(", ")));
    let width = r.functions.iter().chain(&r.data).map(|d| d.decision.len()).max().unwrap_or(0);
    for (title, list) in [("functions", &r.functions), ("data", &r.data)] {
        if list.is_empty() {
            continue;
        }
        out.push_str(&format!("{title}:\n"));
        for d in list {
            let file = if d.file.is_empty() { String::new() } else { format!(" ({})", d.file) };
            out.push_str(&format!("  {:width$}  {}{file}: {}\n", d.decision, d.name, d.reason));
        }
    }
    if let (Some(m), Some(y)) = (&r.module, &r.manifest) {
        out.push_str(&format!("module:    {}\nmanifest:  {}\n", m.display(), y.display()));
        out.push_str(&format!("build log: {}\n", r.log.display()));
        let t: Vec<String> = r.timings_ms.iter().map(|(k, v)| format!("{k} {v} ms")).collect();
        out.push_str(&format!("times:     {}\n", t.join(", ")));
        out.push_str(&format!(
            "next:      pannus check {} --pid PID, then pannus apply {} --pid PID\n",
            y.display(),
            y.display()
        ));
    }
    out
}
