//! `pannus-bench`: measures pannus against the physical limit and rewrites BENCHMARKS.md.
//!
//! `cargo run --release -p pannus-bench [-- --quick] [--out FILE] [--pannus BIN] [--wait-load]`
//!
//! It builds the release `pannus` binary (unless `--pannus` names one), builds its C programs
//! with gcc into a temporary folder, runs every measurement against real processes and writes
//! the report. Needs root (or CAP_SYS_PTRACE), gcc, and a machine otherwise idle for best
//! figures; the load average is recorded with every measurement.
#![forbid(unsafe_code)]

mod build;
mod daemon;
mod report;
mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::{hex, loadavg, us, Herd, Pannus, Run, Target};

const WORKER_TARGET_C: &str = include_str!("../c/worker_target.c");
const WORK_PATCH_C: &str = include_str!("../c/work_patch.c");
const LIMIT_C: &str = include_str!("../c/limit.c");
const CALL_OVERHEAD_C: &str = include_str!("../c/call_overhead.c");
const SATURATE_C: &str = include_str!("../c/saturate.c");
/// The saturated machine: this many threads, each waking every [`SATURATE_PERIOD_US`].
const SATURATE_THREADS: usize = 1400;
const SATURATE_PERIOD_US: u64 = 1000;

/// Functions in the many-function target.
const FUNCS: usize = 100;
/// Patches stacked in one process.
const STACK: usize = 50;
/// Extra processes for `pannus ps`.
const PS_PROCS: usize = 1000;
/// Of which patched.
const PS_PATCHED: usize = 5;
/// Processes for `apply --all`, one run of the fleet benchmark each.
pub const FLEET: [usize; 2] = [100, 1000];
/// The goal for the largest fleet: every process patched within this (µs).
pub const FLEET_GOAL_US: f64 = 1_500_000.0;

pub struct Opts {
    pub quick: bool,
    pub out: PathBuf,
    pub pannus: Option<PathBuf>,
    pub wait_load: bool,
    /// `--stop N:MODE`: only these cases of the stop benchmark, printed, BENCHMARKS.md untouched.
    pub only_stops: Vec<(usize, &'static str)>,
    /// `--only fleet`: only the fleet benchmark, printed, BENCHMARKS.md untouched.
    pub only_fleet: bool,
    /// `--only daemon`: only the new-process benchmark, printed, BENCHMARKS.md untouched.
    pub only_daemon: bool,
}

/// Everything built for the run.
pub struct Built {
    pub dir: PathBuf,
    pub worker_target: PathBuf,
    pub work_patch: PathBuf,
    pub limit: PathBuf,
    pub call_overhead: PathBuf,
    pub saturate: PathBuf,
    pub saturate_patch: PathBuf,
    pub funcs: PathBuf,
    pub funcs_all: PathBuf,
    /// `stack_K.so` replaces `fK` (K = 1..=STACK).
    pub stack: Vec<PathBuf>,
    pub sleeper_ps: PathBuf,
    pub sleeper_fleet: PathBuf,
    pub tick_patch: PathBuf,
}

/// One thread count and mode of the stop benchmark; every value in µs.
#[derive(Default)]
pub struct StopRow {
    pub workers: usize,
    pub mode: &'static str,
    pub runs: usize,
    pub load: String,
    /// The bare limit: the largest gap of any worker, the largest time a worker was held (gap
    /// minus waits for a CPU), the same two among the gaps that overlap its stop, and its stop
    /// as it measures it.
    pub limit_gap: Vec<f64>,
    pub limit_held: Vec<f64>,
    pub limit_sgap: Vec<f64>,
    pub limit_sheld: Vec<f64>,
    pub limit_self: Vec<f64>,
    pub apply: CommandFigures,
    pub rb: CommandFigures,
    /// The baselines: the same workers unpatched, over a window as long as the apply (and the
    /// overlap figures over windows placed as the apply's stops were, as long after a reset),
    /// and as long as the rollback.
    pub apply_base: Vec<f64>,
    pub apply_base_held: Vec<f64>,
    pub apply_base_sgap: Vec<f64>,
    pub apply_base_sheld: Vec<f64>,
    pub rb_base: Vec<f64>,
    /// Reports whose gap logs did not reach back to the first window: which, and for how many
    /// workers.
    pub inexact: Vec<String>,
    /// Reads of the target's stdin (main thread, the one pannus borrows) that failed with EINTR.
    pub eintr: u64,
    pub failures: Vec<String>,
}

impl StopRow {
    /// Notes what is wrong with a report on pannus's `what`: no stops to look at, or gap logs
    /// that did not reach back to them.
    fn check(&mut self, what: &str, stops: &[(u64, u64)], rep: &util::Report) {
        if stops.is_empty() {
            self.failures.push(format!("{what} --json reported no `stops`"));
        }
        self.lost(what, rep);
    }

    /// Notes a report on `what` whose gap logs did not reach back to the first window.
    fn lost(&mut self, what: &str, rep: &util::Report) {
        if rep.lost > 0 {
            self.inexact.push(format!("{what}: {} worker(s)", rep.lost));
        }
    }
}

/// What the workers saw, and pannus said, over the runs of one command (apply or rollback); µs.
#[derive(Default)]
pub struct CommandFigures {
    /// The largest gap of any worker over the whole command, and the largest time held.
    pub gap: Vec<f64>,
    pub held: Vec<f64>,
    /// The same among the gaps that overlap one of the stops pannus reported.
    pub sgap: Vec<f64>,
    pub sheld: Vec<f64>,
    pub wall: Vec<f64>,
    /// `timings_us.stopped`, and every stage timing.
    pub stopped: Vec<f64>,
    pub stages: BTreeMap<String, Vec<f64>>,
}

impl CommandFigures {
    fn record(&mut self, r: &Run, rep: &util::Report) {
        self.gap.push(rep.gap);
        self.held.push(rep.held);
        self.sgap.push(rep.window_gap);
        self.sheld.push(rep.window_held);
        self.wall.push(us(r.wall));
        self.stopped.extend(r.timing("stopped"));
        for (k, v) in r.timings() {
            self.stages.entry(k).or_default().push(v);
        }
    }
}

/// Stage timings of apply and rollback for one patch size; µs.
#[derive(Default)]
pub struct StageRow {
    pub label: String,
    pub functions: usize,
    pub load: String,
    pub apply: BTreeMap<String, Vec<f64>>,
    pub apply_wall: Vec<f64>,
    pub rollback: BTreeMap<String, Vec<f64>>,
    pub rb_wall: Vec<f64>,
    /// `pannus --version`: process start-up alone.
    pub version_wall: Vec<f64>,
    /// `pannus check MANIFEST --pid P --json`: open the process, lock, pre-flight; touches nothing.
    pub check_wall: Vec<f64>,
    pub failures: Vec<String>,
}

/// ns per call, one sample per entry: [direct, work, self_rel, self_abs].
#[derive(Default)]
pub struct CallRow {
    pub load: String,
    pub iters: u64,
    pub before: Vec<[f64; 4]>,
    pub after: Vec<[f64; 4]>,
    pub jump: String,
    pub failures: Vec<String>,
}

/// One series of stacked patches.
#[derive(Default)]
pub struct StackRow {
    pub label: String,
    pub runs: usize,
    pub load: String,
    /// Per run, the wall time of the k-th apply (µs).
    pub apply_walls: Vec<Vec<f64>>,
    pub apply_stopped: Vec<Vec<f64>>,
    /// Per run, the wall time of each rollback, newest first.
    pub rb_walls: Vec<Vec<f64>>,
    pub failures: Vec<String>,
}

#[derive(Default)]
pub struct PsRow {
    pub load: String,
    pub processes: usize,
    pub patched_found: usize,
    pub ps: Vec<f64>,
    pub ps_all: Vec<f64>,
    /// The console over the same processes: time from a key to the screen's answer (µs), and
    /// the seconds the presses spanned (it reads a new process table every second).
    pub console_keys: Vec<f64>,
    pub console_seconds: f64,
    pub failures: Vec<String>,
}

#[derive(Default)]
pub struct FleetRow {
    /// Processes of the binary running.
    pub processes: usize,
    pub load: String,
    pub apply: Vec<f64>,
    pub rollback: Vec<f64>,
    pub patched: Vec<usize>,
    pub rolled_back: Vec<usize>,
    pub failures: Vec<String>,
}

#[derive(Default)]
pub struct RestartRow {
    pub load: String,
    pub walls: Vec<f64>,
}

#[derive(Default)]
pub struct Results {
    pub started: String,
    pub elapsed: Duration,
    pub load_start: String,
    pub load_end: String,
    pub load_note: String,
    pub stops: Vec<StopRow>,
    pub stages: Vec<StageRow>,
    pub call: CallRow,
    pub stacks: Vec<StackRow>,
    pub ps: PsRow,
    pub fleet: Vec<FleetRow>,
    pub restart: RestartRow,
    pub saturated: SaturatedRow,
    pub build: build::BuildRow,
    pub daemon: Vec<daemon::DaemonRow>,
}

/// One function applied to and rolled back from a process whose threads keep every CPU busy;
/// values in µs.
#[derive(Default)]
pub struct SaturatedRow {
    pub threads: usize,
    pub period_us: u64,
    pub runs: usize,
    pub load_start: String,
    pub load_end: String,
    /// Runnable threads on the machine, sampled before the runs.
    pub runnable: Vec<f64>,
    pub apply_wall: Vec<f64>,
    pub apply_stages: Vec<f64>,
    pub stopped: Vec<f64>,
    pub rb_wall: Vec<f64>,
    pub rb_stages: Vec<f64>,
    pub version_wall: Vec<f64>,
    pub failures: Vec<String>,
}

fn main() {
    let opts = parse_args();
    let t_all = Instant::now();
    let mut res = Results { started: now_text(), ..Default::default() };
    if opts.wait_load {
        res.load_note = wait_for_low_load();
    }
    res.load_start = loadavg();
    let pannus_exe = opts.pannus.clone().unwrap_or_else(build_pannus);
    let tmp = tempfile::Builder::new().prefix("pannus-bench-").tempdir().expect("temp dir");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let pannus = Pannus { exe: pannus_exe, state };
    eprintln!("pannus-bench: building the C programs in {}", tmp.path().display());
    let b = build(tmp.path());
    if !opts.only_stops.is_empty() {
        let runs = if opts.quick { 3 } else { 10 };
        for &(n, mode) in &opts.only_stops {
            let row = bench_stop(&pannus, &b, n, mode, runs);
            println!("{}", report::stop_digest(&row));
        }
        return;
    }
    if opts.only_daemon {
        eprintln!("pannus-bench: new processes under pannus daemon (load {})", loadavg());
        println!("{}", daemon::digest(&daemon::bench_daemon(&pannus, tmp.path(), if opts.quick { 10 } else { 50 })));
        return;
    }
    if opts.only_fleet {
        for n in FLEET {
            eprintln!("pannus-bench: apply --all over {n} processes (load {})", loadavg());
            let row = bench_fleet(&pannus, &b, n, if opts.quick { 1 } else { 3 });
            println!("{}", report::fleet_digest(&row));
        }
        return;
    }

    // The light measurements first: the stop measurements' busy workers raise the load average
    // for a minute or more after they end.
    eprintln!("pannus-bench: stage timings (load {})", loadavg());
    let (r1, r100) = if opts.quick { (5, 3) } else { (20, 10) };
    res.stages.push(bench_stages(&pannus, &b, "1 function", 1, r1));
    res.stages.push(bench_stages(&pannus, &b, &format!("{FUNCS} functions"), FUNCS, r100));
    eprintln!("pannus-bench: call overhead (load {})", loadavg());
    res.call =
        bench_call(&pannus, &b, if opts.quick { 5 } else { 11 }, if opts.quick { 5_000_000 } else { 30_000_000 });
    eprintln!("pannus-bench: restart (load {})", loadavg());
    res.restart = bench_restart(&b, if opts.quick { 3 } else { 10 });
    eprintln!("pannus-bench: {STACK} stacked patches (load {})", loadavg());
    let stack_runs = if opts.quick { 1 } else { 3 };
    res.stacks.push(bench_stack(&pannus, &b, false, stack_runs));
    res.stacks.push(bench_stack(&pannus, &b, true, stack_runs));
    eprintln!("pannus-bench: pannus build, a one-file diff (load {})", loadavg());
    res.build = build::bench_build(&pannus, tmp.path(), if opts.quick { 1 } else { 3 });
    eprintln!("pannus-bench: pannus ps over {PS_PROCS} processes (load {})", loadavg());
    res.ps = bench_ps(&pannus, &b, if opts.quick { 3 } else { 10 });
    for n in FLEET {
        eprintln!("pannus-bench: apply --all over {n} processes (load {})", loadavg());
        res.fleet.push(bench_fleet(&pannus, &b, n, if opts.quick { 1 } else { 3 }));
    }
    eprintln!("pannus-bench: new processes under pannus daemon (load {})", loadavg());
    res.daemon = daemon::bench_daemon(&pannus, tmp.path(), if opts.quick { 10 } else { 50 });
    // The small cases are cheap and the noisiest (a single wait for a CPU doubles a gap of a
    // few hundred µs): more runs there.
    let (runs_small, runs, runs_256) = if opts.quick { (3, 3, 2) } else { (30, 10, 5) };
    for &n in &[1usize, 8, 64, 256] {
        for mode in ["sleep", "spin"] {
            let r = if n >= 256 {
                runs_256
            } else if n <= 8 {
                runs_small
            } else {
                runs
            };
            eprintln!("pannus-bench: stop, {n} worker(s), {mode}, {r} runs (load {})", loadavg());
            res.stops.push(bench_stop(&pannus, &b, n, mode, r));
        }
    }
    // Last: its threads keep the load average up for minutes after they end.
    eprintln!("pannus-bench: a saturated machine, {SATURATE_THREADS} threads (load {})", loadavg());
    res.saturated = bench_saturated(&pannus, &b, if opts.quick { 2 } else { 5 });
    res.load_end = loadavg();
    res.elapsed = t_all.elapsed();

    let text = report::render(&res, &opts);
    std::fs::write(&opts.out, &text).expect("write the report");
    eprintln!("pannus-bench: wrote {} in {:.0} s", opts.out.display(), res.elapsed.as_secs_f64());
    println!("{}", report::summary(&res));
}

fn parse_args() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let mut o = Opts {
        quick: false,
        out: root.join("BENCHMARKS.md"),
        pannus: None,
        wait_load: false,
        only_stops: Vec::new(),
        only_fleet: false,
        only_daemon: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--wait-load" => o.wait_load = true,
            "--out" => o.out = PathBuf::from(args.next().expect("--out FILE")),
            "--pannus" => o.pannus = Some(PathBuf::from(args.next().expect("--pannus BIN"))),
            "--stop" => {
                let spec = args.next().unwrap_or_default();
                match parse_stop_case(&spec) {
                    Some(case) => o.only_stops.push(case),
                    None => {
                        eprintln!("pannus-bench: --stop wants WORKERS:spin or WORKERS:sleep, not {spec:?}");
                        std::process::exit(2);
                    }
                }
            }
            "--only" => match args.next().as_deref() {
                Some("fleet") => o.only_fleet = true,
                Some("daemon") => o.only_daemon = true,
                other => {
                    eprintln!("pannus-bench: --only takes `fleet` or `daemon`, not {other:?}");
                    std::process::exit(2);
                }
            },
            "-h" | "--help" => {
                println!(
                    "pannus-bench [--quick] [--out FILE] [--pannus BIN] [--wait-load] [--stop N:MODE]... [--only fleet|daemon]\n\
                     Runs the benchmarks and rewrites BENCHMARKS.md (default: in the workspace root).\n\
                     --quick      fewer repetitions (about a minute)\n\
                     --pannus     use this pannus binary instead of building the release one\n\
                     --wait-load  first wait (up to 10 minutes) for the 1-minute load average to fall to 1.5\n\
                     --stop       only the stop benchmark for N workers in MODE (spin or sleep), printed\n\
                     \x20            with pannus's own step timings; BENCHMARKS.md is left as it is\n\
                     --only fleet only the `apply --all` / `rollback --all` benchmark, printed;\n\
                     \x20            BENCHMARKS.md is left as it is\n\
                     --only daemon only the new processes under `pannus daemon`, printed;\n\
                     \x20            BENCHMARKS.md is left as it is"
                );
                std::process::exit(0);
            }
            other => {
                eprintln!("pannus-bench: unknown argument {other:?} (see --help)");
                std::process::exit(2);
            }
        }
    }
    o
}

fn parse_stop_case(spec: &str) -> Option<(usize, &'static str)> {
    let (n, mode) = spec.split_once(':')?;
    let n: usize = n.parse().ok().filter(|&n| n > 0)?;
    let mode = ["spin", "sleep"].into_iter().find(|m| *m == mode)?;
    Some((n, mode))
}

fn now_text() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn wait_for_low_load() -> String {
    let t0 = Instant::now();
    while util::load1() > 1.5 && t0.elapsed() < Duration::from_secs(600) {
        eprintln!("pannus-bench: load {} > 1.5, waiting", loadavg());
        std::thread::sleep(Duration::from_secs(20));
    }
    if util::load1() > 1.5 {
        format!(
            "waited {:.0} s for the load to fall below 1.5; it did not, measured anyway",
            t0.elapsed().as_secs_f64()
        )
    } else {
        format!("waited {:.0} s for the 1-minute load to fall to 1.5 or below", t0.elapsed().as_secs_f64())
    }
}

/// Builds the release `pannus` binary next to this one (same target folder) and returns it.
fn build_pannus() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    let dir = me.parent().expect("exe dir");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    eprintln!("pannus-bench: building the release pannus binary");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args(["build", "--release", "-p", "pannus", "--bin", "pannus"]);
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        // Same target folder as this binary: <target>/release/pannus-bench.
        if let Some(target) = dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "cargo build --release -p pannus failed");
    let exe = dir.join("pannus");
    assert!(exe.exists(), "{} not found after the build", exe.display());
    exe
}

fn build(dir: &Path) -> Built {
    let p = |f: &str| dir.join(f);
    let s = |f: &str| p(f).to_string_lossy().into_owned();
    let write = |f: &str, text: &str| std::fs::write(p(f), text).expect("write source");
    write("worker_target.c", WORKER_TARGET_C);
    write("work_patch.c", WORK_PATCH_C);
    write("limit.c", LIMIT_C);
    write("call_overhead.c", CALL_OVERHEAD_C);
    write("saturate.c", SATURATE_C);
    write("saturate_patch.c", "static volatile int one_v2 = 1;\nint work_v2(int x) { return x + one_v2 + 1; }\n");

    // The many-function target: f1..f100, single-threaded, answering on stdin.
    let mut funcs = String::from(
        "/* generated by pannus-bench: FUNCS patchable functions */\n#include <stdio.h>\n#include <string.h>\n\
         volatile int one = 1;\n",
    );
    for k in 1..=FUNCS {
        funcs.push_str(&format!("__attribute__((noipa)) int f{k}(int x) {{ return x + one * {k}; }}\n"));
    }
    funcs.push_str("int (*const table[])(int) = {");
    funcs.push_str(&(1..=FUNCS).map(|k| format!("f{k}")).collect::<Vec<_>>().join(", "));
    funcs.push_str(
        "};\nint main(void)\n{\n    printf(\"ready work=%p\\n\", (void *)f1);\n    fflush(stdout);\n    \
         char line[64];\n    while (fgets(line, sizeof line, stdin)) {\n        if (line[0] == 'q')\n            \
         break;\n        int s = 0;\n        for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++)\n            \
         s += table[i](1);\n        printf(\"%d\\n\", s);\n        fflush(stdout);\n    }\n    return 0;\n}\n",
    );
    write("funcs.c", &funcs);
    let replacement = |k: usize| format!("int f{k}_v2(int x) {{ return x + one_v2 * {k} + 1; }}\n");
    let mut all = String::from("static volatile int one_v2 = 1;\n");
    for k in 1..=FUNCS {
        all.push_str(&replacement(k));
    }
    write("funcs_all.c", &all);
    for k in 1..=STACK {
        write(&format!("stack_{k}.c"), &format!("static volatile int one_v2 = 1;\n{}", replacement(k)));
    }
    let sleeper = "/* generated by pannus-bench: a small idle process with a patchable function */\n\
                   #include <unistd.h>\nvolatile int one = 1;\n\
                   __attribute__((noipa)) int tick(int x) { return x + one; }\n\
                   int main(void)\n{\n    int x = 0;\n    for (;;) {\n        x = tick(x);\n        sleep(3600);\n    }\n}\n";
    write("sleeper.c", sleeper);
    write("tick_patch.c", "static volatile int one_v2 = 1;\nint tick_v2(int x) { return x + one_v2 + 1; }\n");

    let exe = |out: &str, src: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec!["-O2".into(), "-g".into(), "-pthread".into(), "-o".into(), s(out), s(src)];
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let so = |out: &str, src: &str| -> Vec<String> {
        vec!["-O2".into(), "-shared".into(), "-fPIC".into(), "-o".into(), s(out), s(src)]
    };
    let mut jobs = vec![
        exe("worker_target", "worker_target.c", &[]),
        so("work_patch.so", "work_patch.c"),
        exe("limit", "limit.c", &[]),
        exe("call_overhead", "call_overhead.c", &[]),
        exe("saturate", "saturate.c", &[]),
        so("saturate_patch.so", "saturate_patch.c"),
        exe("funcs", "funcs.c", &[]),
        so("funcs_all.so", "funcs_all.c"),
        exe("sleeper_ps", "sleeper.c", &[]),
        exe("sleeper_fleet", "sleeper.c", &[]),
        so("tick_patch.so", "tick_patch.c"),
    ];
    for k in 1..=STACK {
        jobs.push(so(&format!("stack_{k}.so"), &format!("stack_{k}.c")));
    }
    util::gcc_all(&jobs);
    Built {
        dir: dir.to_path_buf(),
        worker_target: p("worker_target"),
        work_patch: p("work_patch.so"),
        limit: p("limit"),
        call_overhead: p("call_overhead"),
        saturate: p("saturate"),
        saturate_patch: p("saturate_patch.so"),
        funcs: p("funcs"),
        funcs_all: p("funcs_all.so"),
        stack: (1..=STACK).map(|k| p(&format!("stack_{k}.so"))).collect(),
        sleeper_ps: p("sleeper_ps"),
        sleeper_fleet: p("sleeper_fleet"),
        tick_patch: p("tick_patch.so"),
    }
}

/// Runs `limit` on `t`'s `work`, writing back its own bytes; returns its own stop in µs, and
/// when it began and ended (CLOCK_MONOTONIC ns).
fn run_limit(b: &Built, t: &Target, original: &[u8]) -> Result<(f64, (u64, u64)), String> {
    let out = Command::new(&b.limit)
        .args([t.pid.to_string(), format!("{:#x}", t.work), hex(original)])
        .output()
        .map_err(|e| format!("limit: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k));
    let own = field("stop_ns=").and_then(|v| v.parse::<f64>().ok()).map(|ns| ns / 1000.0);
    let window =
        field("window=").and_then(|v| v.split_once(',')).and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    match (own, window) {
        (Some(own), Some(window)) => Ok((own, window)),
        _ => Err(format!("limit said {text:?} {}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// `windows` moved from a window that began at `from` to one that begins at `to`.
fn shifted(windows: &[(u64, u64)], from: u64, to: u64) -> Vec<(u64, u64)> {
    windows.iter().map(|&(a, b)| (a.saturating_sub(from) + to, b.saturating_sub(from) + to)).collect()
}

/// 1. The stop the target sees during apply and rollback, against the baseline and the limit.
fn bench_stop(pannus: &Pannus, b: &Built, n: usize, mode: &'static str, runs: usize) -> StopRow {
    let mut row = StopRow { workers: n, mode, runs, load: loadavg(), ..Default::default() };
    let mut t = Target::start(&b.worker_target, &[&n.to_string(), mode]);
    let manifest = pannus.manifest(&b.worker_target, &b.work_patch, "bench-work", &b.dir.join("work.yaml"));
    let original = t.read_mem(t.work, 5);
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..runs {
        // The bare limit.
        t.reset();
        match run_limit(b, &t, &original) {
            Ok((own, window)) => {
                let r = t.report_in(&[window]);
                row.lost("limit", &r);
                row.limit_gap.push(r.gap);
                row.limit_held.push(r.held);
                row.limit_sgap.push(r.window_gap);
                row.limit_sheld.push(r.window_held);
                row.limit_self.push(own);
            }
            Err(e) => row.failures.push(e),
        }
        // apply, then a baseline window as long as the apply.
        let reset_at = t.reset();
        let r = pannus.apply(&manifest, t.pid);
        if !r.ok() {
            t.report();
            row.failures.push(format!("apply: {}", r.why()));
            continue;
        }
        let stops = r.stops();
        let rep = t.report_in(&stops);
        row.check("apply", &stops, &rep);
        row.apply.record(&r, &rep);
        let base_at = t.reset();
        std::thread::sleep(r.wall);
        let rep = t.report_in(&shifted(&stops, reset_at, base_at));
        row.lost("apply baseline", &rep);
        row.apply_base.push(rep.gap);
        row.apply_base_held.push(rep.held);
        row.apply_base_sgap.push(rep.window_gap);
        row.apply_base_sheld.push(rep.window_held);
        // rollback, then its baseline.
        t.reset();
        let r = pannus.rollback(t.pid);
        if !r.ok() {
            t.report();
            row.failures.push(format!("rollback: {}", r.why()));
            // Leave the target unpatched for the next run if at all possible.
            let again = pannus.rollback(t.pid);
            if !again.ok() {
                row.failures.push(format!("rollback retry: {}", again.why()));
                break;
            }
            continue;
        }
        let stops = r.stops();
        let rep = t.report_in(&stops);
        row.check("rollback", &stops, &rep);
        row.rb.record(&r, &rep);
        t.reset();
        std::thread::sleep(r.wall);
        row.rb_base.push(t.report().0);
    }
    row.eintr = t.eintr;
    if t.eintr > 0 {
        row.failures.push(format!("the target's main thread saw {} EINTR from read(2) on stdin", t.eintr));
    }
    t.quit("quit");
    row
}

/// 2. Per-stage timings and wall time of apply and rollback on the single-threaded target.
fn bench_stages(pannus: &Pannus, b: &Built, label: &str, functions: usize, runs: usize) -> StageRow {
    let mut row = StageRow { label: label.into(), functions, load: loadavg(), ..Default::default() };
    let module = if functions == 1 { &b.stack[0] } else { &b.funcs_all };
    let id = format!("bench-f{functions}");
    let manifest = pannus.manifest(&b.funcs, module, &id, &b.dir.join(format!("{id}.yaml")));
    let mut t = Target::start(&b.funcs, &[]);
    let expect_before = t.ask("c");
    for _ in 0..runs {
        let r = pannus.apply(&manifest, t.pid);
        if !r.ok() {
            row.failures.push(format!("apply: {}", r.why()));
            continue;
        }
        row.apply_wall.push(us(r.wall));
        for (k, v) in r.timings() {
            row.apply.entry(k).or_default().push(v);
        }
        let patched = t.ask("c");
        if patched == expect_before {
            row.failures.push(format!("apply: the target still computes {patched} after the patch"));
        }
        let r = pannus.rollback(t.pid);
        if !r.ok() {
            row.failures.push(format!("rollback: {}", r.why()));
            break;
        }
        row.rb_wall.push(us(r.wall));
        for (k, v) in r.timings() {
            row.rollback.entry(k).or_default().push(v);
        }
        row.version_wall.push(us(pannus.run(&["--version"]).wall));
        let r = pannus.run(&["check", &manifest.to_string_lossy(), "--pid", &t.pid.to_string(), "--json"]);
        if r.ok() {
            row.check_wall.push(us(r.wall));
        } else {
            row.failures.push(format!("check: {}", r.why()));
        }
    }
    t.quit("q");
    row
}

/// 5. A saturated machine: [`SATURATE_THREADS`] threads each waking every
/// [`SATURATE_PERIOD_US`]; one function applied and rolled back, pannus started by a process at
/// `SCHED_FIFO` 1 (this one, for the section), as `chrt -f 1 pannus` starts it: the `exec` of a
/// process at the normal policy waits seconds for a CPU there, before pannus's first
/// instruction.
fn bench_saturated(pannus: &Pannus, b: &Built, runs: usize) -> SaturatedRow {
    let mut row = SaturatedRow { threads: SATURATE_THREADS, period_us: SATURATE_PERIOD_US, runs, ..Default::default() };
    let me = std::process::id().to_string();
    let policy = |args: &[&str]| Command::new("chrt").args(args).arg(&me).status().is_ok_and(|s| s.success());
    if !policy(&["-f", "-p", "1"]) {
        row.failures.push("chrt -f -p 1 failed: no SCHED_FIFO for the harness".into());
        return row;
    }
    let manifest =
        pannus.manifest(&b.saturate, &b.saturate_patch, "bench-saturated", &b.dir.join("bench-saturated.yaml"));
    let mut t = Target::start(&b.saturate, &[&SATURATE_THREADS.to_string(), &SATURATE_PERIOD_US.to_string()]);
    // Let the wake-ups fill the run queues, then count the runnable threads (the fourth field
    // of /proc/loadavg) a few times: the load average itself lags by a minute.
    std::thread::sleep(Duration::from_secs(3));
    row.load_start = loadavg();
    for _ in 0..20 {
        let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        if let Some(r) =
            text.split_whitespace().nth(3).and_then(|f| f.split_once('/')).and_then(|(r, _)| r.parse().ok())
        {
            row.runnable.push(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sum = |r: &Run, keys: &[&str]| -> f64 {
        r.timings().into_iter().filter(|(k, _)| keys.contains(&k.as_str())).map(|(_, v)| v).sum()
    };
    for _ in 0..runs {
        let r = pannus.apply(&manifest, t.pid);
        if !r.ok() {
            row.failures.push(format!("apply: {}", r.why()));
            continue;
        }
        row.apply_wall.push(us(r.wall));
        row.apply_stages.push(sum(&r, &["preflight", "load", "link", "init", "activate"]));
        row.stopped.push(sum(&r, &["stopped"]));
        let patched = t.ask("c");
        if patched != "3" {
            row.failures.push(format!("apply: the target computes {patched}, not the patched 3"));
        }
        let r = pannus.rollback(t.pid);
        if !r.ok() {
            row.failures.push(format!("rollback: {}", r.why()));
            break;
        }
        row.rb_wall.push(us(r.wall));
        row.rb_stages.push(sum(&r, &["restore", "unload"]));
        row.version_wall.push(us(pannus.run(&["--version"]).wall));
    }
    row.load_end = loadavg();
    t.quit("q");
    policy(&["-o", "-p", "0"]);
    row
}

/// 3. ns per call: direct, unpatched, patched by pannus (jmp rel32), self-patched rel32/abs64.
fn bench_call(pannus: &Pannus, b: &Built, samples: usize, iters: u64) -> CallRow {
    let mut row = CallRow { load: loadavg(), iters, ..Default::default() };
    let manifest = pannus.manifest(&b.call_overhead, &b.work_patch, "bench-call", &b.dir.join("call.yaml"));
    let mut t = Target::start(&b.call_overhead, &[]);
    let sample = |t: &mut Target| -> [f64; 4] {
        let a = t.ask(&format!("m {iters}"));
        let f = |k: &str| {
            a.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN)
        };
        [f("direct="), f("work="), f("self_rel="), f("self_abs=")]
    };
    sample(&mut t); // warm-up
    for _ in 0..samples {
        row.before.push(sample(&mut t));
    }
    let r = pannus.apply(&manifest, t.pid);
    if r.ok() {
        row.jump = r
            .json()
            .pointer("/functions/0/jump")
            .and_then(|j| j.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| "?".into());
        sample(&mut t);
        for _ in 0..samples {
            row.after.push(sample(&mut t));
        }
        let r = pannus.rollback(t.pid);
        if !r.ok() {
            row.failures.push(format!("rollback: {}", r.why()));
        }
    } else {
        row.failures.push(format!("apply: {}", r.why()));
    }
    t.quit("q");
    row
}

/// 4a. STACK patches in one process: each a different function (`same` false) or all the same.
fn bench_stack(pannus: &Pannus, b: &Built, same: bool, runs: usize) -> StackRow {
    let label = if same {
        format!("{STACK} patches stacked on the same function (f1)")
    } else {
        format!("{STACK} patches, each replacing a different function (f1..f{STACK})")
    };
    let mut row = StackRow { label, runs, load: loadavg(), ..Default::default() };
    let manifests: Vec<PathBuf> = (1..=STACK)
        .map(|k| {
            let id = if same { format!("same-{k}") } else { format!("stack-{k}") };
            let module = if same { &b.stack[0] } else { &b.stack[k - 1] };
            pannus.manifest(&b.funcs, module, &id, &b.dir.join(format!("{id}.yaml")))
        })
        .collect();
    for _ in 0..runs {
        let mut t = Target::start(&b.funcs, &[]);
        let before = t.ask("c");
        let mut walls = Vec::new();
        let mut stopped = Vec::new();
        for m in &manifests {
            let r = pannus.apply(m, t.pid);
            if !r.ok() {
                row.failures.push(format!("apply {}: {}", m.display(), r.why()));
                break;
            }
            walls.push(us(r.wall));
            stopped.extend(r.timing("stopped"));
        }
        let mut rbs = Vec::new();
        for _ in 0..walls.len() {
            let r = pannus.rollback(t.pid);
            if !r.ok() {
                row.failures.push(format!("rollback: {}", r.why()));
                break;
            }
            rbs.push(us(r.wall));
        }
        let after = t.ask("c");
        if after != before {
            row.failures.push(format!("after rolling every patch back the target computes {after}, not {before}"));
        }
        row.apply_walls.push(walls);
        row.apply_stopped.push(stopped);
        row.rb_walls.push(rbs);
        t.quit("q");
    }
    row
}

/// 4b. `pannus ps` (and `ps --all`) with PS_PROCS extra processes running, PS_PATCHED patched.
fn bench_ps(pannus: &Pannus, b: &Built, runs: usize) -> PsRow {
    let mut row = PsRow::default();
    let manifest = pannus.manifest(&b.sleeper_ps, &b.tick_patch, "bench-tick", &b.dir.join("tick.yaml"));
    let mut herd = Herd::default();
    herd.spawn(&b.sleeper_ps, PS_PROCS);
    herd.wait_exec(&b.sleeper_ps);
    std::thread::sleep(Duration::from_millis(300));
    for pid in herd.pids().into_iter().step_by(PS_PROCS / PS_PATCHED).take(PS_PATCHED) {
        let r = pannus.apply(&manifest, pid);
        if !r.ok() {
            row.failures.push(format!("apply to sleeper {pid}: {}", r.why()));
        }
    }
    row.load = loadavg();
    row.processes = std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).count())
        .unwrap_or(0);
    for _ in 0..runs {
        let r = pannus.run(&["ps", "--json"]);
        if !r.ok() {
            row.failures.push(format!("ps: {}", r.why()));
            continue;
        }
        row.ps.push(us(r.wall));
        row.patched_found = r.json().get("processes").and_then(|p| p.as_array()).map(|a| a.len()).unwrap_or(0);
        let r = pannus.run(&["ps", "--all", "--json"]);
        if !r.ok() {
            row.failures.push(format!("ps --all: {}", r.why()));
            continue;
        }
        row.ps_all.push(us(r.wall));
    }
    match console_keys(pannus, &b.dir, runs * 6) {
        Ok((keys, seconds)) => {
            row.console_keys = keys;
            row.console_seconds = seconds;
        }
        Err(e) => row.failures.push(format!("console: {e}")),
    }
    herd.kill_all();
    row
}

/// Runs `pannus console` in a pseudo-terminal (120×40) and presses `?` `presses` times, at
/// random moments 150-400 ms apart, so that some land while its collector reads the process
/// table: each press opens or closes the help screen, a redraw of most of the screen. Returns,
/// per press, the time from writing the key to reading the first 256 bytes of the redraw (µs),
/// and the seconds from the first press to the last.
fn console_keys(pannus: &Pannus, dir: &Path, presses: usize) -> Result<(Vec<f64>, f64), String> {
    use std::io::{Read, Write};
    let size = nix::pty::Winsize { ws_row: 40, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = nix::pty::openpty(&size, None).map_err(|e| format!("openpty: {e}"))?;
    let slave = |fd: &std::os::fd::OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| format!("pty: {e}"));
    let manifests = dir.join("console-manifests");
    std::fs::create_dir_all(&manifests).map_err(|e| format!("{}: {e}", manifests.display()))?;
    let mut child = Command::new(&pannus.exe)
        .args(["console", "--manifests", &manifests.to_string_lossy()])
        .env("PANNUS_STATE_DIR", &pannus.state)
        .env("TERM", "xterm-256color")
        .stdin(slave(&pty.slave)?)
        .stdout(slave(&pty.slave)?)
        .stderr(slave(&pty.slave)?)
        .spawn()
        .map_err(|e| format!("pannus console: {e}"))?;
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().map_err(|e| format!("pty: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, usize)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send((Instant::now(), n)).is_err() {
                break;
            }
        }
    });
    // The first frame, with the first snapshot of every process: until the output has been
    // quiet for half a second.
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && rx.recv_timeout(Duration::from_millis(500)).is_ok() {}
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(presses);
    let mut failure = None;
    let first = Instant::now();
    for _ in 0..presses {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(150 + seed % 250));
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        if let Err(e) = master.write_all(b"?").and_then(|_| master.flush()) {
            failure = Some(format!("writing a key: {e}"));
            break;
        }
        let mut got = 0;
        let answered = loop {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok((at, n)) => {
                    got += n;
                    if got >= 256 {
                        break Some(at);
                    }
                }
                Err(_) => break None,
            }
        };
        match answered {
            Some(at) => out.push(us(at - t0)),
            None => {
                failure = Some(format!("no redraw within 5 s of a key ({got} bytes)"));
                break;
            }
        }
    }
    let _ = master.write_all(b"q");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    match failure {
        Some(f) => Err(f),
        None => Ok((out, first.elapsed().as_secs_f64())),
    }
}

/// 4c. `pannus apply --all` and `rollback --all` over `n` processes of one binary.
fn bench_fleet(pannus: &Pannus, b: &Built, n: usize, runs: usize) -> FleetRow {
    let mut row = FleetRow { processes: n, ..Default::default() };
    let manifest = pannus.manifest(&b.sleeper_fleet, &b.tick_patch, "bench-fleet", &b.dir.join("fleet.yaml"));
    let m = manifest.to_string_lossy().into_owned();
    let mut herd = Herd::default();
    herd.spawn(&b.sleeper_fleet, n);
    herd.wait_exec(&b.sleeper_fleet);
    std::thread::sleep(Duration::from_millis(300));
    row.load = loadavg();
    let count = |r: &Run, key: &str| r.json().get(key).and_then(|p| p.as_array()).map(|a| a.len()).unwrap_or(0);
    for _ in 0..runs {
        let r = pannus.run(&["apply", &m, "--all", "--yes", "--json"]);
        if !r.ok() {
            row.failures.push(format!("apply --all, {n} processes: {}", r.why()));
        }
        row.apply.push(us(r.wall));
        row.patched.push(count(&r, "patched"));
        let r = pannus.run(&["rollback", "--all", "bench-fleet", "--yes", "--json"]);
        if !r.ok() {
            row.failures.push(format!("rollback --all, {n} processes: {}", r.why()));
        }
        row.rollback.push(us(r.wall));
        row.rolled_back.push(count(&r, "rolled_back"));
        // The trial watchers the apply started end once they see the rollback: the next run
        // starts without them.
        util::wait_for_trial_watchers(&pannus.exe, Duration::from_secs(30));
    }
    herd.kill_all();
    row
}

/// 5. Restarting the 1-worker target instead: kill, start, wait until it answers.
fn bench_restart(b: &Built, runs: usize) -> RestartRow {
    let mut row = RestartRow { load: loadavg(), ..Default::default() };
    let mut t = Target::start(&b.worker_target, &["1", "sleep"]);
    for _ in 0..runs {
        let t0 = Instant::now();
        t.kill();
        t = Target::start(&b.worker_target, &["1", "sleep"]);
        t.reset();
        row.walls.push(us(t0.elapsed()));
    }
    t.kill();
    row
}
