//! The Ansible collection (`ansible/ansible_collections/pannus/livepatch`) against real
//! processes: playbooks run by `ansible-playbook` on localhost (`connection: local`), its
//! modules driving the pannus binary under test. Needs `ansible-core` (`.ci/run` installs it).

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn collections() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible")
}

fn collection() -> PathBuf {
    collections().join("ansible_collections/pannus/livepatch")
}

/// `ansible-playbook`, `ansible-doc`, ... with the collection on its path, its temporary files
/// and settings in `dir`; fails the test with what to do when Ansible is missing.
fn ansible(tool: &str, dir: &Path) -> Command {
    let found = Command::new(tool).arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "`{tool}` not found: install ansible-core (apt-get install ansible-core), as .ci/run does"
    );
    let mut cmd = Command::new(tool);
    cmd.current_dir(dir)
        .env("ANSIBLE_COLLECTIONS_PATH", collections())
        .env("ANSIBLE_HOME", dir.join("ansible-home"))
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
        .env_remove("ANSIBLE_CONFIG");
    cmd
}

/// A playbook of one task on localhost, `module` with `args` (plus the pannus binary and state
/// folder under test), registered; `flags` such as `--check` and `--diff`.
struct Play<'a> {
    state: &'a State,
    dir: tempfile::TempDir,
}

/// What the task returned, and how `ansible-playbook` exited.
struct Outcome {
    code: i32,
    result: Value,
}

impl<'a> Play<'a> {
    fn new(state: &'a State) -> Play<'a> {
        Play { state, dir: tempfile::tempdir().unwrap() }
    }

    fn run(&self, module: &str, args: Value, flags: &[&str]) -> Outcome {
        let mut args = args;
        args["pannus"] = json!(env!("CARGO_BIN_EXE_pannus"));
        args["state_dir"] = json!(self.state.path());
        let play = json!([{
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": false,
            "tasks": [{"name": "the task", module: args}],
        }]);
        let path = self.dir.path().join("play.yml");
        std::fs::write(&path, serde_json::to_string_pretty(&play).unwrap()).unwrap();
        let out = ansible("ansible-playbook", self.dir.path())
            .env("ANSIBLE_STDOUT_CALLBACK", "json")
            .args(["-i", "localhost,"])
            .args(flags)
            .arg(&path)
            .output()
            .expect("ansible-playbook runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("ansible-playbook printed no JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
        });
        let result = doc["plays"][0]["tasks"][0]["hosts"]["localhost"].clone();
        assert!(result.is_object(), "no result for the task: {doc}");
        Outcome { code: out.status.code().unwrap_or(-1), result }
    }

    /// Runs the task and requires it to succeed.
    fn ok(&self, module: &str, args: Value, flags: &[&str]) -> Value {
        let o = self.run(module, args, flags);
        assert_eq!(o.code, 0, "the task failed: {}", o.result);
        assert_ne!(o.result["failed"], true, "{}", o.result);
        o.result
    }
}

fn sorted_pids(v: &Value) -> Vec<i64> {
    let mut out: Vec<i64> =
        v.as_array().unwrap_or_else(|| panic!("not a list: {v}")).iter().map(|p| p.as_i64().unwrap()).collect();
    out.sort_unstable();
    out
}

fn pids(procs: &[&Proc]) -> Vec<i64> {
    let mut out: Vec<i64> = procs.iter().map(|p| p.pid as i64).collect();
    out.sort_unstable();
    out
}

/// The patch module through its states on three processes of one build: check mode changes
/// nothing and says what would change; a run patches every process; a second run changes
/// nothing; `committed` commits; `absent` rolls back; a bad manifest fails with pannus's message.
#[test]
fn the_patch_module_rolls_a_patch_through_its_states() {
    let state = State::new();
    let b = Build::new(&state);
    let mut procs = [b.start(), b.start(), b.start()];
    let all = pids(&procs.iter().collect::<Vec<_>>());
    let m = b.manifest("ansible-fix", "patch_compute.so", &[("compute", "compute_v2")], "");
    let play = Play::new(&state);
    let patch = |st: &str| json!({"manifest": m, "state": st});
    let answers = |procs: &mut [Proc; 3]| procs.iter_mut().map(|p| p.ask("c 5")).collect::<Vec<_>>();

    // Check mode: a change reported, none made.
    let r = play.ok("pannus.livepatch.patch", patch("present"), &["--check", "--diff"]);
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(sorted_pids(&r["patched"]), all, "{r}");
    assert_eq!(r["patch"], "ansible-fix");
    let diff = &r["diff"];
    assert!(diff["before"].as_str().unwrap().contains(&format!("{}: absent", procs[0].pid)), "{r}");
    assert!(diff["after"].as_str().unwrap().contains(&format!("{}: trial", procs[0].pid)), "{r}");
    assert_eq!(answers(&mut procs), ["6", "6", "6"], "check mode patched nothing");
    for p in &procs {
        assert!(!p.maps().contains("patch_compute.so"));
    }

    // The real run: every process of the build.
    let r = play.ok("pannus.livepatch.patch", patch("present"), &["--diff"]);
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(sorted_pids(&r["patched"]), all, "{r}");
    assert_eq!(r["failed_processes"], json!([]));
    assert_eq!(r["rc"], 0);
    assert_eq!(r["states"][procs[1].pid.to_string()], "trial", "{r}");
    assert_eq!(answers(&mut procs), ["500", "500", "500"]);

    // Again: nothing to do, no change, in check mode or not.
    let r = play.ok("pannus.livepatch.patch", patch("present"), &[]);
    assert_eq!(r["changed"], false, "{r}");
    assert_eq!(r["patched"], json!([]));
    assert_eq!(r["skipped_processes"].as_array().unwrap().len(), 3, "{r}");
    let r = play.ok("pannus.livepatch.patch", patch("present"), &["--check"]);
    assert_eq!(r["changed"], false, "{r}");

    // Committed everywhere, then no change.
    let r = play.ok("pannus.livepatch.patch", patch("committed"), &["--check"]);
    assert_eq!((r["changed"].clone(), sorted_pids(&r["committed"])), (json!(true), all.clone()), "{r}");
    assert_eq!(state.status(procs[0].pid)["patches"][0]["state"], "trial", "check mode committed nothing");
    let r = play.ok("pannus.livepatch.patch", patch("committed"), &["--diff"]);
    assert_eq!((r["changed"].clone(), sorted_pids(&r["committed"])), (json!(true), all.clone()), "{r}");
    assert!(r["diff"]["after"].as_str().unwrap().contains(&format!("{}: committed", procs[2].pid)), "{r}");
    for p in &procs {
        assert_eq!(state.status(p.pid)["patches"][0]["state"], "committed");
    }
    let r = play.ok("pannus.livepatch.patch", patch("committed"), &[]);
    assert_eq!(r["changed"], false, "{r}");

    // Absent: check mode says which would be rolled back and rolls back none; then it does.
    let r = play.ok("pannus.livepatch.patch", patch("absent"), &["--check"]);
    assert_eq!((r["changed"].clone(), sorted_pids(&r["rolled_back"])), (json!(true), all.clone()), "{r}");
    assert_eq!(answers(&mut procs), ["500", "500", "500"]);
    let r = play.ok("pannus.livepatch.patch", patch("absent"), &[]);
    assert_eq!((r["changed"].clone(), sorted_pids(&r["rolled_back"])), (json!(true), all.clone()), "{r}");
    assert_eq!(answers(&mut procs), ["6", "6", "6"]);
    for p in &procs {
        assert!(!p.maps().contains("patch_compute.so"), "the module is unloaded");
    }
    let r = play.ok("pannus.livepatch.patch", patch("absent"), &[]);
    assert_eq!(r["changed"], false, "{r}");

    // One process only.
    let one = json!({"manifest": m, "state": "present", "pid": procs[1].pid});
    let r = play.ok("pannus.livepatch.patch", one.clone(), &[]);
    assert_eq!(r["patched"], json!([procs[1].pid]), "{r}");
    assert_eq!(answers(&mut procs), ["6", "500", "6"]);
    assert_eq!(play.ok("pannus.livepatch.patch", one, &[])["changed"], false);
    let r = play.ok("pannus.livepatch.patch", json!({"manifest": m, "state": "absent", "pid": procs[1].pid}), &[]);
    assert_eq!(r["rolled_back"], json!([procs[1].pid]), "{r}");
    assert_eq!(answers(&mut procs), ["6", "6", "6"]);

    // A bad manifest: the task fails with pannus's message and exit code; nothing is touched.
    let bad = b.dir.join("bad.yaml");
    let text = std::fs::read_to_string(&m).unwrap().replace("functions:", "functoins:");
    std::fs::write(&bad, text).unwrap();
    let o = play.run("pannus.livepatch.patch", json!({"manifest": bad, "state": "present"}), &[]);
    assert_ne!(o.code, 0);
    assert_eq!(o.result["failed"], true, "{}", o.result);
    let msg = o.result["msg"].as_str().unwrap();
    let pannus_says = state.pannus(&["manifest", "check", bad.to_str().unwrap(), "--json"]).json();
    assert_eq!(msg, pannus_says["problems"][0]["message"].as_str().unwrap(), "{}", o.result);
    assert!(msg.contains("unknown key `functoins`"), "{msg}");
    assert_eq!(o.result["rc"], 2, "{}", o.result);
    assert_eq!(answers(&mut procs), ["6", "6", "6"]);
}

/// The installed module: install (applied to every process of the build), idempotent, check
/// mode, uninstall.
#[test]
fn the_installed_module_installs_and_uninstalls() {
    let state = State::new();
    let b = Build::new(&state);
    let mut procs = [b.start(), b.start()];
    let all = pids(&procs.iter().collect::<Vec<_>>());
    let m = b.manifest("ansible-inst", "patch_compute.so", &[("compute", "compute_v2")], "");
    let play = Play::new(&state);
    let present = json!({"manifest": m});
    let answers = |procs: &mut [Proc; 2]| procs.iter_mut().map(|p| p.ask("c 5")).collect::<Vec<_>>();
    let installed = || state.pannus(&["installed", "--json"]).ok().json();

    let r = play.ok("pannus.livepatch.installed", present.clone(), &["--check", "--diff"]);
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(sorted_pids(&r["patched"]), all, "{r}");
    assert_eq!(installed(), json!([]), "check mode installed nothing");
    assert_eq!(answers(&mut procs), ["6", "6"]);

    let r = play.ok("pannus.livepatch.installed", present.clone(), &[]);
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(sorted_pids(&r["patched"]), all, "{r}");
    assert_eq!(r["installed"]["patch"], "ansible-inst");
    assert_eq!((r["installed"]["patched"].clone(), r["installed"]["processes"].clone()), (json!(2), json!(2)), "{r}");
    assert_eq!(answers(&mut procs), ["500", "500"]);
    let r = play.ok("pannus.livepatch.installed", present.clone(), &[]);
    assert_eq!(r["changed"], false, "{r}");

    // A new process of the build (no daemon runs here): present again applies it there.
    let mut late = b.start();
    assert_eq!(late.ask("c 5"), "6");
    let r = play.ok("pannus.livepatch.installed", present.clone(), &["--check"]);
    assert_eq!((r["changed"].clone(), r["patched"].clone()), (json!(true), json!([late.pid])), "{r}");
    let r = play.ok("pannus.livepatch.installed", present, &[]);
    assert_eq!((r["changed"].clone(), r["patched"].clone()), (json!(true), json!([late.pid])), "{r}");
    assert_eq!(late.ask("c 5"), "500");

    let absent = json!({"patch": "ansible-inst", "state": "absent"});
    let r = play.ok("pannus.livepatch.installed", absent.clone(), &["--check"]);
    assert_eq!(r["changed"], true, "{r}");
    assert_eq!(installed().as_array().unwrap().len(), 1, "check mode uninstalled nothing");
    let r = play.ok("pannus.livepatch.installed", absent.clone(), &[]);
    assert_eq!((r["changed"].clone(), r["uninstalled"].clone()), (json!(true), json!(["ansible-inst"])), "{r}");
    assert_eq!(installed(), json!([]));
    assert_eq!(answers(&mut procs), ["6", "6"]);
    assert_eq!(late.ask("c 5"), "6");
    assert_eq!(play.ok("pannus.livepatch.installed", absent, &[])["changed"], false);
}

/// `ansible-doc` shows both modules' documentation, and the example rolling-rollout playbook
/// parses.
#[test]
fn the_collection_documents_its_modules_and_its_example_playbook_parses() {
    let dir = tempfile::tempdir().unwrap();
    for module in ["pannus.livepatch.patch", "pannus.livepatch.installed"] {
        let out = ansible("ansible-doc", dir.path()).arg(module).output().expect("ansible-doc runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ansible-doc {module}: {}", String::from_utf8_lossy(&out.stderr));
        for part in ["OPTIONS", "EXAMPLES", "RETURN VALUES", "state_dir", "canary_trial"] {
            assert!(text.contains(part), "ansible-doc {module} lacks `{part}`:\n{text}");
        }
    }
    // It packs, as ansible-galaxy publishes it.
    let out = ansible("ansible-galaxy", dir.path())
        .args(["collection", "build", "--output-path"])
        .arg(dir.path())
        .arg(collection())
        .output()
        .expect("ansible-galaxy runs");
    assert!(out.status.success(), "ansible-galaxy collection build: {}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("pannus-livepatch-0.1.0.tar.gz").is_file());
    let playbook = collection().join("playbooks/rolling.yml");
    let out = ansible("ansible-playbook", dir.path())
        .args(["-i", "localhost,", "--syntax-check"])
        .arg(&playbook)
        .output()
        .expect("ansible-playbook runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&playbook).unwrap();
    for part in ["serial:", "max_fail_percentage: 0", "ansible.builtin.pause", "state: committed"] {
        assert!(text.contains(part), "the example playbook lacks `{part}`");
    }
}

/// The sanity tests of `ansible-test` that run offline (the others install their tools with pip
/// into virtual environments), on a copy of the collection, since ansible-test writes its
/// output into the collection.
const OFFLINE_SANITY: &[&str] = &[
    "action-plugin-docs",
    "compile",
    "empty-init",
    "future-import-boilerplate",
    "line-endings",
    "metaclass-boilerplate",
    "no-assert",
    "no-basestring",
    "no-dict-iteritems",
    "no-dict-iterkeys",
    "no-dict-itervalues",
    "no-get-exception",
    "no-illegal-filenames",
    "no-main-display",
    "no-smart-quotes",
    "no-unicode-literals",
    "replace-urlopen",
    "shebang",
    "symlinks",
    "use-argspec-type-path",
    "use-compat-six",
];

#[test]
fn the_collection_passes_the_offline_sanity_tests() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ansible_collections/pannus/livepatch");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let out = Command::new("cp").arg("-r").arg(collection()).arg(&copy).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let out =
        Command::new("python3").args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).output().unwrap();
    let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut cmd = ansible("ansible-test", &copy);
    cmd.args(["sanity", "--local", "--python", &python]);
    for t in OFFLINE_SANITY {
        cmd.args(["--test", t]);
    }
    let out = cmd.output().expect("ansible-test runs");
    assert!(
        out.status.success(),
        "ansible-test sanity:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example playbook itself, on this machine: a host that fails stops the rollout before the
/// next batch; otherwise the processes of the build are patched, kept through a one-second trial,
/// checked, then committed.
#[test]
fn the_example_rolling_playbook_stops_at_a_failed_host_and_otherwise_commits() {
    let state = State::new();
    let b = Build::new(&state);
    let mut procs = [b.start(), b.start()];
    // What an operator ships: the manifest beside its module.
    let ship = state.path().join("ship");
    std::fs::create_dir_all(&ship).unwrap();
    std::fs::copy(bin("patch_compute.so"), ship.join("fix.so")).unwrap();
    let text = std::fs::read_to_string(b.manifest("rolling-fix", "patch_compute.so", &[("compute", "compute_v2")], ""))
        .unwrap()
        .replace(&bin("patch_compute.so").display().to_string(), "fix.so");
    std::fs::write(ship.join("rolling-fix.yaml"), text + "trial:\n  duration: 10m\n").unwrap();
    // `pannus` on PATH, as the playbook leaves the module's default.
    let work = tempfile::tempdir().unwrap();
    let bin_dir = work.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pannus"), bin_dir.join("pannus")).unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let playbook = |inventory: &str, vars: Value| {
        let inv = work.path().join("hosts");
        std::fs::write(&inv, inventory).unwrap();
        let out = ansible("ansible-playbook", work.path())
            .env("PATH", &path)
            .env("PANNUS_STATE_DIR", state.path())
            .arg("-i")
            .arg(&inv)
            .args(["-e", &vars.to_string(), "pannus.livepatch.rolling"])
            .output()
            .expect("ansible-playbook runs");
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), log)
    };
    let vars = json!({
        "target_hosts": "all",
        "ansible_become": false,
        "patch_dir": ship,
        "patches_dir": work.path().join("patches"),
        "trial_seconds": 1,
    });

    // Two hosts (both this machine): the first, alone in its batch, fails (its manifest names
    // another patch that does not exist), and the rollout stops there: the second host's run,
    // which would patch the processes, never happens.
    let (ok, log) = playbook(
        "h1 ansible_connection=local manifest_name=nothing-here.yaml\nh2 ansible_connection=local manifest_name=rolling-fix.yaml\n",
        vars.clone(),
    );
    assert!(!ok, "the rollout went on past a failed host:\n{log}");
    assert!(log.contains("nothing-here.yaml"), "{log}");
    assert!(!log.contains("h2"), "the second host was never started:\n{log}");
    for p in procs.iter_mut() {
        assert_eq!(p.ask("c 5"), "6", "{log}");
    }

    let (ok, log) = playbook("h1 ansible_connection=local manifest_name=rolling-fix.yaml\n", vars);
    assert!(ok, "the example playbook failed:\n{log}");
    for p in procs.iter_mut() {
        assert_eq!(p.ask("c 5"), "500", "{log}");
        assert_eq!(state.status(p.pid)["patches"][0]["state"], "committed", "{log}");
    }
}
