//! 8. New processes under `pannus daemon`: how soon a patch installed for a build is active in
//! a process of that build started afterwards, and whether before its `main`.

use crate::util::{gcc_all, loadavg, Pannus};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NEWPROC_C: &str = include_str!("../c/newproc.c");
const NEWPROC_PATCH_C: &str = include_str!("../c/newproc_patch.c");

/// How long a process started without the patch polls for it (ms).
const WAIT_MS: u64 = 2000;

/// The goal: the share of new processes patched before `main` (on an idle machine), and the
/// time from the spawn to the patch active in every one (µs).
pub const BEFORE_MAIN_GOAL: f64 = 0.99;
pub const ACTIVE_GOAL_US: f64 = 100_000.0;

/// One way of starting processes: without a daemon, under the daemon holding each exec, or
/// under the daemon seeing each exec after the fact (`--no-hold`).
#[derive(Default)]
pub struct DaemonRow {
    pub mode: &'static str,
    pub load: String,
    pub runs: usize,
    /// From the spawn to the first line of `main` (µs).
    pub to_main: Vec<f64>,
    /// From the spawn to the patch active, for each process where it became active (µs).
    pub to_active: Vec<f64>,
    pub before_main: usize,
    /// Processes where the patch was not active within [`WAIT_MS`].
    pub never: usize,
    pub failures: Vec<String>,
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

/// A running `pannus daemon`, its log collected.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Starts it and waits (up to 30 s) until it has read the installed patches and watches.
    fn start(pannus: &Pannus, args: &[&str]) -> Result<Daemon, String> {
        let mut child = Command::new(&pannus.exe)
            .arg("daemon")
            .args(args)
            .env("PANNUS_STATE_DIR", &pannus.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("pannus daemon: {e}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let err = BufReader::new(child.stderr.take().ok_or("pannus daemon: no standard error")?);
        let to = Arc::clone(&log);
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                if let Ok(mut log) = to.lock() {
                    log.push_str(&l);
                    log.push('\n');
                }
            }
        });
        let d = Daemon { child, log };
        let t0 = Instant::now();
        while !d.log().contains("installed patches: bench-newproc") {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(format!("pannus daemon did not start watching:\n{}", d.log()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 60 s, then SIGKILL) for it to end.
    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if !wait_for(&mut self.child, Duration::from_secs(60)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits up to `limit` for `child` to exit; whether it did.
fn wait_for(child: &mut Child, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if t0.elapsed() < limit => std::thread::sleep(Duration::from_micros(200)),
            _ => return false,
        }
    }
}

/// Starts `prog` once, and what it saw.
fn one(prog: &Path, row: &mut DaemonRow) {
    let spawned = now_ns();
    let child = Command::new(prog).arg(WAIT_MS.to_string()).stdin(Stdio::null()).stdout(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return row.failures.push(format!("{}: {e}", prog.display())),
    };
    // A process held and never let go must not hold the benchmark up.
    if !wait_for(&mut child, Duration::from_secs(30)) {
        let _ = child.kill();
        let _ = child.wait();
        return row.failures.push(format!("{}: still running after 30 s, killed", prog.display()));
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
    }
    let f: Vec<i128> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [first, main, active] = f[..] else {
        return row.failures.push(format!("{}: printed {text:?}", prog.display()));
    };
    row.runs += 1;
    row.to_main.push((main - spawned) as f64 / 1e3);
    if first == 500 {
        row.before_main += 1;
    }
    if active > 0 {
        row.to_active.push((active - spawned) as f64 / 1e3);
    } else {
        row.never += 1;
    }
}

fn series(mode: &'static str, prog: &Path, runs: usize) -> DaemonRow {
    let mut row = DaemonRow { mode, load: loadavg(), ..Default::default() };
    for _ in 0..runs {
        one(prog, &mut row);
    }
    row
}

/// Builds the program and the fix, installs the fix for the program's build, then starts the
/// program `runs` times in each mode. The patch is uninstalled at the end.
pub fn bench_daemon(pannus: &Pannus, dir: &Path, runs: usize) -> Vec<DaemonRow> {
    let src = dir.join("newproc.c");
    let patch_src = dir.join("newproc_patch.c");
    let (prog, module): (PathBuf, PathBuf) = (dir.join("newproc"), dir.join("newproc_patch.so"));
    std::fs::write(&src, NEWPROC_C).expect("newproc.c");
    std::fs::write(&patch_src, NEWPROC_PATCH_C).expect("newproc_patch.c");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    gcc_all(&[
        vec!["-O2".into(), "-g".into(), "-o".into(), s(&prog), s(&src)],
        vec!["-O2".into(), "-fPIC".into(), "-shared".into(), "-o".into(), s(&module), s(&patch_src)],
    ]);
    let manifest = pannus.manifest(&prog, &module, "bench-newproc", &dir.join("newproc.yaml"));
    let mut rows = vec![series("no daemon", &prog, runs)];
    let installed = pannus.run(&["install", &manifest.to_string_lossy(), "--yes", "--json"]);
    if !installed.ok() {
        rows[0].failures.push(format!("pannus install: {}", installed.why()));
        return rows;
    }
    for (mode, args) in [("held (default)", &[][..]), ("--no-hold", &["--no-hold"][..])] {
        match Daemon::start(pannus, args) {
            Ok(d) => {
                let mut row = series(mode, &prog, runs);
                if mode.starts_with("held") && !d.log().contains("(fanotify)") {
                    row.failures.push(format!("the daemon could not hold execs:\n{}", d.log()));
                }
                d.stop();
                rows.push(row);
            }
            Err(e) => rows.push(DaemonRow { mode, failures: vec![e], ..Default::default() }),
        }
    }
    let _ = pannus.run(&["uninstall", "bench-newproc", "--yes", "--json"]);
    rows
}

/// The goal's figure and whether it is met: every process of the held series patched before
/// `main` (at least [`BEFORE_MAIN_GOAL`] of them) and active within [`ACTIVE_GOAL_US`].
pub fn goal(rows: &[DaemonRow]) -> (String, bool) {
    let Some(held) = rows.iter().find(|r| r.mode.starts_with("held")) else {
        return ("not measured".into(), false);
    };
    let slowest = crate::util::stat(&held.to_active).max;
    let share = held.before_main as f64 / held.runs.max(1) as f64;
    let within = held.to_active.iter().filter(|&&t| t <= ACTIVE_GOAL_US).count();
    (
        format!(
            "{}/{} before `main`, {}/{} active within 100 ms (slowest {})",
            held.before_main,
            held.runs,
            within,
            held.runs,
            crate::util::fmt_us(slowest)
        ),
        held.runs > 0 && held.failures.is_empty() && share >= BEFORE_MAIN_GOAL && within == held.runs,
    )
}

/// Section 8 of the report.
pub fn section(w: &mut String, rows: &[DaemonRow]) {
    use crate::util::{fmt_us, stat};
    use std::fmt::Write as _;
    let runs = rows.first().map_or(0, |r| r.runs);
    let _ = writeln!(
        w,
        "## 8. New processes under `pannus daemon`

**Method.** A small program whose `main` starts by calling `compute(5)` (a function gcc keeps \
out of line) is built, and a fix for `compute` installed for its build with `pannus install` \
(no process of it runs then). The program is then started {runs} times in a row in each mode: \
without a daemon, under `pannus daemon` (its default: each exec of the program held by \
fanotify, the patch applied at the program's entry point), and under `pannus daemon --no-hold` \
(the process-events connector names each exec, the patch comes just after it). Each process \
prints what `compute(5)` returned at the first line of `main` (500: patched before `main`) and \
when `main` started; one not patched yet polls `compute` every 100 µs for up to {WAIT_MS} ms and \
prints when the fix became active. Times are from just before the spawn (CLOCK_REALTIME on \
both sides); \"spawn → patch active\" is the goal's \"exec to patch active\", counting the \
fork and exec too.

| mode | load at start | spawn → `main` (median, max) | spawn → patch active (median, max) | patched before `main` | never patched |
|---|---|---|---|---|---|"
    );
    for r in rows {
        let (m, a) = (stat(&r.to_main), stat(&r.to_active));
        let active = if a.n == 0 { "—".to_string() } else { format!("{}, {}", fmt_us(a.med), fmt_us(a.max)) };
        let never = if r.mode == "no daemon" { "—".to_string() } else { format!("{}/{}", r.never, r.runs) };
        let _ = writeln!(
            w,
            "| {} | {} | {}, {} | {active} | {}/{} | {never} |",
            r.mode,
            r.load,
            fmt_us(m.med),
            fmt_us(m.max),
            r.before_main,
            r.runs
        );
    }
    let (figure, met) = goal(rows);
    let _ = writeln!(
        w,
        "\nGoal (on an idle machine, 99% of restarts patched before `main`, every restart patched within \
         100 ms): {figure}: **{}**.\n",
        if met { "met" } else { "missed" }
    );
}

/// The lines `--only daemon` prints.
pub fn digest(rows: &[DaemonRow]) -> String {
    let mut w = String::new();
    section(&mut w, rows);
    for r in rows {
        for f in &r.failures {
            w.push_str(&format!("FAILED ({}): {}\n", r.mode, f.replace('\n', " ")));
        }
    }
    w
}
