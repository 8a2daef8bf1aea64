//! Scripts: every `--json` command prints exactly one JSON document on standard output, on
//! success and on refusal; a reader that goes away early (`| head -1`) ends pannus quietly.

mod common;
use common::{Proc, Run, State};
use std::process::{Command, Stdio};

/// Standard output holds exactly one JSON document.
fn one_document(what: &str, run: &Run) -> serde_json::Value {
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&run.stdout)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", run.stdout));
    assert_eq!(docs.len(), 1, "{what} printed {} documents:\n{}", docs.len(), run.stdout);
    docs.into_iter().next().unwrap()
}

#[test]
fn every_json_command_prints_one_document() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let pid = t.pid.to_string();
    let good = state.manifest("json-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let good = good.to_string_lossy().into_owned();
    let missing =
        state.manifest("json-bad", "target_pie", "patch_compute.so", &[("no_such_function", "compute_v2")], "");
    let missing = missing.to_string_lossy().into_owned();
    let dead = "999999999";

    // (command, whether it succeeds)
    let cases: Vec<(Vec<&str>, bool)> = vec![
        (vec!["check", &good, "--pid", &pid, "--json"], true),
        (vec!["check", &missing, "--pid", &pid, "--json"], false),
        (vec!["check", &good, "--pid", dead, "--json"], false),
        (vec!["check", &good, "--all", "--json"], true),
        (vec!["check", &missing, "--all", "--json"], false),
        (vec!["manifest", "check", &good, "--json"], true),
        (vec!["manifest", "check", &missing, "--json"], false),
        (vec!["apply", &missing, "--pid", &pid, "--yes", "--json"], false),
        (vec!["apply", &good, "--pid", &pid, "--yes", "--json"], true),
        (vec!["apply", &good, "--pid", &pid, "--yes", "--json"], false),
        (vec!["status", "--pid", &pid, "--json"], true),
        (vec!["status", "--pid", dead, "--json"], false),
        (vec!["status", "--all", "--json"], true),
        (vec!["ps", "--json"], true),
        (vec!["ps", "--all", "--json"], true),
        (vec!["journal", "--json"], true),
        (vec!["commit", "--pid", &pid, "no-such-patch", "--json"], false),
        (vec!["commit", "--pid", &pid, "json-fix", "--json"], true),
        (vec!["commit", "--all", "json-fix", "--json"], true),
        (vec!["commit", "--all", "no-such-patch", "--json"], false),
        (vec!["rollback", "--pid", &pid, "no-such-patch", "--yes", "--json"], false),
        (vec!["rollback", "--pid", &pid, "json-fix", "--yes", "--json"], true),
        (vec!["rollback", "--all", "json-fix", "--yes", "--json"], false),
        (vec!["apply", &missing, "--all", "--yes", "--json"], false),
    ];
    for (args, ok) in cases {
        let what = args.join(" ");
        let run = state.pannus(&args);
        assert_eq!(run.code == 0, ok, "{what}: exit {}\n{}{}", run.code, run.stdout, run.stderr);
        let doc = one_document(&what, &run);
        if !ok {
            assert_eq!(doc["exit"], run.code, "{what}: the document gives the exit code: {doc}");
        }
    }
}

/// Runs `pannus ARGS` with its standard output a pipe whose reader has already gone.
fn to_a_closed_pipe(state: &State, args: &[&str]) -> (Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = Command::new(env!("CARGO_BIN_EXE_pannus"))
        .args(args)
        .env("PANNUS_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let code = out.status.code().or(out.status.signal().filter(|&s| s == 13).map(|_| 0));
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_reader_that_goes_away_ends_pannus_quietly() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let m = state.manifest("pipe-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    for args in [&["journal"][..], &["journal", "--json"], &["ps", "--all"], &["ps"], &["status", "--all"]] {
        let (code, stderr) = to_a_closed_pipe(&state, args);
        assert_eq!(code, Some(0), "pannus {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "pannus {args:?}: {stderr}");
    }
    state.rollback(t.pid, None).ok();
}
