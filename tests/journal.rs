//! `pannus journal`: filters (`--pid`, `--patch`, `--since`, `-n`), `--follow`, and the source
//! of each action (the command line, the trial watcher, the console).

mod common;
use common::{wait_until, Proc, State};
use std::io::BufRead;
use std::process::{Command, Stdio};

fn entries(state: &State, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["journal", "--json"];
    all.extend_from_slice(args);
    let run = state.pannus(&all).ok();
    run.json()["entries"].as_array().cloned().unwrap_or_default()
}

fn field(entries: &[serde_json::Value], key: &str) -> Vec<String> {
    entries.iter().map(|e| e[key].as_str().map(str::to_string).unwrap_or_else(|| e[key].to_string())).collect()
}

#[test]
fn filters_and_sources() {
    let state = State::new();
    let mut a = Proc::start("target_pie");
    let b = Proc::start("target_pie");
    let fix = state.manifest("a-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    let quick = state.manifest(
        "b-fix",
        "target_pie",
        "patch_compute.so",
        &[("compute", "compute_v2")],
        "trial:\n  duration: 1s\n  on_expiry: rollback\n",
    );
    state.apply(&fix, a.pid).ok();
    state.apply(&quick, b.pid).ok();
    // b-fix's trial watcher rolls it back at the deadline.
    wait_until("the watcher journals its rollback", || {
        entries(&state, &["--patch", "b-fix"]).iter().any(|e| e["action"] == "rollback")
    });
    state.rollback(a.pid, None).ok();
    assert_eq!(a.ask("c 1"), "2");

    let all = entries(&state, &[]);
    assert_eq!(all.len(), 4, "{all:?}");
    let a_pid = a.pid.to_string();
    let only_a = entries(&state, &["--pid", &a_pid]);
    assert_eq!(field(&only_a, "action"), ["apply", "rollback"]);
    assert!(only_a.iter().all(|e| e["pid"] == a.pid));
    let only_b = entries(&state, &["--patch", "b-fix"]);
    assert_eq!(field(&only_b, "action"), ["apply", "rollback"]);
    assert_eq!(field(&only_b, "source"), ["cli", "watcher"], "{only_b:?}");
    assert_eq!(field(&only_a, "source"), ["cli", "cli"]);

    let last = entries(&state, &["-n", "1"]);
    assert_eq!(last, all[3..].to_vec());
    let last_two_of_a = entries(&state, &["--pid", &a_pid, "-n", "2"]);
    assert_eq!(last_two_of_a, only_a);

    assert_eq!(entries(&state, &["--since", "1h"]).len(), 4);
    assert!(entries(&state, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let r = state.pannus(&["journal", "--since", "yesterday-ish"]);
    assert_eq!(r.code, 2, "{r:?}");

    // The text shows the source.
    let text = state.pannus(&["journal", "--patch", "b-fix"]).ok().stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("cli") && lines[1].contains("watcher"), "{text}");
}

#[test]
fn follow_prints_new_entries_as_they_come() {
    let state = State::new();
    let t = Proc::start("target_pie");
    let m = state.manifest("f-fix", "target_pie", "patch_compute.so", &[("compute", "compute_v2")], "");
    state.apply(&m, t.pid).ok();
    let mut follower = Command::new(env!("CARGO_BIN_EXE_pannus"))
        .args(["journal", "--follow", "--json", "--patch", "f-fix"])
        .env("PANNUS_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let next = || {
        let line = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the follower prints an entry");
        serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    assert_eq!(next()["action"], "apply", "what is there already comes first");
    state.rollback(t.pid, None).ok();
    let e = next();
    assert_eq!((e["action"].as_str(), e["patch"].as_str()), (Some("rollback"), Some("f-fix")));
    assert!(follower.try_wait().unwrap().is_none(), "it keeps following");
    follower.kill().unwrap();
    follower.wait().unwrap();
}
