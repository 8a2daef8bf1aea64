//! BENCHMARKS.md.

use crate::util::{fmt_stat, fmt_us, stat, Stat};
use crate::{
    FleetRow, Opts, Results, StopRow, FLEET_GOAL_US, FUNCS, PS_PATCHED, PS_PROCS, SATURATE_PERIOD_US, SATURATE_THREADS,
    STACK,
};
use std::fmt::Write as _;

struct Goal {
    what: String,
    figure: String,
    met: bool,
    /// A figure given for reference beside the goals, with no goal of its own.
    reference: bool,
}

fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let first_line = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let commit = first_line("git", &["-C", &root.to_string_lossy(), "rev-parse", "--short", "HEAD"]);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    vec![
        ("CPU".into(), model),
        ("nproc".into(), nproc.to_string()),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
        ("gcc".into(), first_line("gcc", &["--version"])),
        ("pannus commit".into(), format!("{commit} (plus any uncommitted changes in the work tree)")),
    ]
}

fn ratio(a: Stat, b: Stat) -> f64 {
    a.med / b.med
}

/// The cells of a row measured against the bare limit: baseline, limit, apply, rollback, then
/// apply and rollback as ratios to the limit.
fn against_limit(baseline: &[f64], limit: &[f64], apply: &[f64], rollback: &[f64]) -> String {
    let (lim, apply, rollback) = (stat(limit), stat(apply), stat(rollback));
    format!(
        "{} | {} | {} | {} | {} | {}",
        fmt_stat(stat(baseline)),
        fmt_stat(lim),
        fmt_stat(apply),
        fmt_stat(rollback),
        fmt_ratio(ratio(apply, lim)),
        fmt_ratio(ratio(rollback, lim)),
    )
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "n/a".into()
    }
}

fn yes(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**missed**"
    }
}

fn ns_stat(v: &[f64]) -> String {
    let s = stat(v);
    if s.n == 0 {
        return "n/a".into();
    }
    format!("{:.2} ({:.2}–{:.2})", s.med, s.min, s.max)
}

fn stop_row<'a>(res: &'a Results, n: usize, mode: &str) -> Option<&'a StopRow> {
    res.stops.iter().find(|r| r.workers == n && r.mode == mode)
}

/// Paired differences `a[i] - b[i]` of two columns of the call samples.
fn diffs(samples: &[[f64; 4]], a: usize, b: usize) -> Vec<f64> {
    samples.iter().map(|s| s[a] - s[b]).collect()
}

fn goals(res: &Results) -> Vec<Goal> {
    let mut g = Vec::new();
    // Stop against the limit, every thread count and mode: the worst median ratio of `pick`'s
    // figure for pannus to the limit's, and the case it is in.
    let worst = |pick: &dyn Fn(&StopRow) -> f64| {
        let mut worst = (0.0f64, String::new());
        for r in &res.stops {
            let q = pick(r);
            if q.is_nan() || q > worst.0 {
                worst = (q, format!("{} {} workers", r.workers, r.mode));
            }
        }
        worst
    };
    let q = |a: &[f64], b: &[f64]| ratio(stat(a), stat(b));
    let apply = worst(&|r| q(&r.apply.sgap, &r.limit_sgap));
    let rb = worst(&|r| q(&r.rb.sgap, &r.limit_sgap));
    let whole = worst(&|r| q(&r.apply.gap, &r.limit_gap));
    let whole_base = worst(&|r| q(&r.apply.gap, &r.apply_base));
    let worst_self = worst(&|r| q(&r.apply.stopped, &r.limit_self));
    g.push(Goal {
        what: "stop seen by the target during activation (largest gap of a worker that overlaps a stop of every thread) ≤ 1.5× the bare limit's, every thread count and mode".into(),
        figure: format!("worst median ratio {} ({})", fmt_ratio(apply.0), apply.1),
        met: apply.0 <= 1.5,
        reference: false,
    });
    g.push(Goal {
        what: "the same during rollback (no goal set; for reference)".into(),
        figure: format!("worst median ratio {} ({})", fmt_ratio(rb.0), rb.1),
        met: rb.0 <= 1.5,
        reference: true,
    });
    g.push(Goal {
        what: "largest gap of a worker over the whole `apply` (pre-flight and stages 1-3 included), against the limit's over its own run and against the baseline over as long (no goal set; for reference)".into(),
        figure: format!(
            "worst median ratio to the limit {} ({}); to the baseline {} ({})",
            fmt_ratio(whole.0),
            whole.1,
            fmt_ratio(whole_base.0),
            whole_base.1
        ),
        met: whole.0 <= 1.5,
        reference: true,
    });
    g.push(Goal {
        what: "stop window as each tool measures it ≤ 1.5× the limit's (apply)".into(),
        figure: format!("worst median ratio {} ({})", fmt_ratio(worst_self.0), worst_self.1),
        met: worst_self.0 <= 1.5,
        reference: false,
    });
    if let Some(f) = res.fleet.iter().find(|f| f.processes == 1000) {
        let apply = stat(&f.apply);
        g.push(Goal {
            what: "1,000 processes ≤ 1.5 s (`apply --all`, wall time)".into(),
            figure: format!("{} (rollback --all {})", fmt_us(apply.med), fmt_us(stat(&f.rollback).med)),
            met: apply.med <= FLEET_GOAL_US && f.patched.iter().all(|&p| p == f.processes),
            reference: false,
        });
    }
    if !res.daemon.is_empty() {
        let (figure, met) = crate::daemon::goal(&res.daemon);
        g.push(Goal {
            what: "new processes under `pannus daemon`: 99% patched before `main`, every one within 100 ms".into(),
            figure,
            met,
            reference: false,
        });
    }
    if let Some(r) = stop_row(res, 8, "spin") {
        let stopped = stat(&r.apply.stopped);
        let gap = stat(&r.apply.gap);
        let base = stat(&r.apply_base);
        g.push(Goal {
            what: "8 busy threads: stop ≤ 1 ms median (pannus's own stop window)".into(),
            figure: format!("{} apply, {} rollback", fmt_us(stopped.med), fmt_us(stat(&r.rb.stopped).med)),
            met: stopped.med <= 1000.0 && stat(&r.rb.stopped).med <= 1000.0,
            reference: false,
        });
        let held = stat(&r.apply.held);
        g.push(Goal {
            what: "8 busy threads: stop the target lives during apply ≤ 1 ms median (largest time a worker was held)".into(),
            figure: format!(
                "{} held (bare limit: {}; baseline: {}); its largest gap, time slicing included: {} (baseline {}, bare limit {})",
                fmt_us(held.med),
                fmt_us(stat(&r.limit_held).med),
                fmt_us(stat(&r.apply_base_held).med),
                fmt_us(gap.med),
                fmt_us(base.med),
                fmt_us(stat(&r.limit_gap).med)
            ),
            met: held.med <= 1000.0,
            reference: false,
        });
    }
    if let Some(s) = res.stages.iter().find(|s| s.functions == 1) {
        let w = stat(&s.apply_wall);
        g.push(Goal {
            what: "apply of a 1-function patch to a 1-thread target ≤ 10 ms wall".into(),
            figure: fmt_us(w.med),
            met: w.med <= 10_000.0,
            reference: false,
        });
    }
    if let Some(s) = res.stages.iter().find(|s| s.functions == FUNCS) {
        let w = stat(&s.apply_wall);
        g.push(Goal {
            what: format!("apply of a {FUNCS}-function patch ≤ 50 ms wall"),
            figure: fmt_us(w.med),
            met: w.med <= 50_000.0,
            reference: false,
        });
    }
    let d = stat(&diffs(&res.call.after, 1, 0));
    g.push(Goal {
        what: "patched call (pannus, jmp rel32) ≤ 1 ns over a direct call".into(),
        figure: format!("{:+.2} ns ({})", d.med, res.call.jump),
        met: d.n > 0 && d.med <= 1.0,
        reference: false,
    });
    let ps = stat(&res.ps.ps);
    g.push(Goal {
        what: format!("`pannus ps` over {PS_PROCS} processes ≤ 100 ms"),
        figure: format!("{} (`ps --all`: {})", fmt_us(ps.med), fmt_us(stat(&res.ps.ps_all).med)),
        met: ps.n > 0 && ps.med <= 100_000.0,
        reference: false,
    });
    let keys = stat(&res.ps.console_keys);
    let refresh = stat(&res.ps.ps_all);
    g.push(Goal {
        what: format!(
            "console refresh never blocks input ({PS_PROCS} extra processes): the slowest key answered faster than one refresh (`ps --all`)"
        ),
        figure: format!(
            "key to screen {} median, {} slowest of {}; a refresh {}",
            fmt_us(keys.med),
            fmt_us(keys.max),
            keys.n,
            fmt_us(refresh.med)
        ),
        met: keys.n > 0 && keys.max < refresh.med,
        reference: false,
    });
    let sat = &res.saturated;
    let (apply, rollback) = (stat(&sat.apply_wall), stat(&sat.rb_wall));
    g.push(Goal {
        what: format!(
            "a saturated machine ({SATURATE_THREADS} threads each waking every {} ms): apply of one function ≤ 1 s wall, pannus started at `SCHED_FIFO` 1",
            SATURATE_PERIOD_US / 1000
        ),
        figure: format!(
            "{} (of which pannus's stages {}); rollback {}",
            fmt_us(apply.med),
            fmt_us(stat(&sat.apply_stages).med),
            fmt_us(rollback.med)
        ),
        met: apply.n > 0 && apply.med <= 1_000_000.0 && sat.failures.is_empty(),
        reference: false,
    });
    let b = &res.build;
    let (clean, built) = (stat(&b.clean), stat(&b.pannus));
    g.push(Goal {
        what: format!(
            "`pannus build` of a one-file diff ≤ 1.5× the project's clean build ({} units of {} functions)",
            crate::build::FILES,
            crate::build::FUNCTIONS
        ),
        figure: format!("{:.2} s against {:.2} s: {:.2}×", built.med, clean.med, built.med / clean.med),
        met: built.n > 0 && built.med <= 1.5 * clean.med && b.failures.is_empty(),
        reference: false,
    });
    g
}

pub fn render(res: &Results, opts: &Opts) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(w, "# Benchmarks: pannus against the physical limit\n");
    let _ = writeln!(
        w,
        "Written by `cargo run --release -p pannus-bench{}` on {}, in {:.0} s. Do not edit by hand: \
         run the command again. The C programs are in [`bench/c/`](bench/c/); the generated ones \
         (the {FUNCS}-function target and its modules, the sleeper) are written by \
         [`bench/src/main.rs`](bench/src/main.rs). Every figure is the median, with the minimum and \
         maximum in parentheses, over the number of runs given.\n",
        if opts.quick { " -- --quick" } else { "" },
        res.started,
        res.elapsed.as_secs_f64()
    );
    if opts.quick {
        let _ = writeln!(w, "**Quick run**: few repetitions; the figures are indicative only.\n");
    }
    let _ = writeln!(w, "## Machine\n\n| | |\n|---|---|");
    for (k, v) in machine() {
        let _ = writeln!(w, "| {k} | {v} |");
    }
    let _ = writeln!(w, "| load average (1, 5, 15 min) at start | {} |", res.load_start);
    let _ = writeln!(w, "| load average at end | {} |", res.load_end);
    if !res.load_note.is_empty() {
        let _ = writeln!(w, "| load wait | {} |", res.load_note);
    }
    let _ = writeln!(
        w,
        "\nThe machine is shared: other work may run during the measurement, so each table gives the \
         load average when its measurement started. pannus is the release build, run as a separate \
         process exactly as an operator runs it (`--yes --json`, `PANNUS_STATE_DIR` a temporary folder). \
         The load average also counts the benchmark's own busy workers (section 1 runs last for that \
         reason, in increasing thread counts): a figure taken right after the 64- or 256-thread `spin` \
         target says little about other work.\n"
    );

    // Goals.
    let _ = writeln!(w, "## Goals\n\n| goal | measured | |\n|---|---|---|");
    for g in goals(res) {
        let verdict = if g.reference { "(reference)" } else { yes(g.met) };
        let _ = writeln!(w, "| {} | {} | {} |", g.what, g.figure, verdict);
    }
    let _ = writeln!(w);
    reference(w, res);

    stops(w, res);
    stop_stages(w, res);
    stages(w, res);
    call(w, res);
    scale(w, res);
    let rs = stat(&res.restart.walls);
    let _ = writeln!(w, "## 5. Restart instead of patching\n");
    let _ = writeln!(
        w,
        "Killing the 1-worker target (`SIGKILL`), starting it again and waiting until it answers a \
         command: {} over {} runs (load {}). That is the service's outage for a restart with no \
         state to rebuild and nothing to warm up; a real service adds its own start-up time. \
         Compare the target-visible stop of `pannus apply` on the same target in section 1.\n",
        fmt_stat(rs),
        rs.n,
        res.restart.load
    );
    saturated(w, res);
    build_section(w, res);
    crate::daemon::section(w, &res.daemon);
    failures(w, res);
    o
}

fn build_section(w: &mut String, res: &Results) {
    let b = &res.build;
    let (clean, built) = (stat(&b.clean), stat(&b.pannus));
    let _ = writeln!(
        w,
        "## 7. pannus build

**Method.** The benchmark writes a C project of {} units of {} functions each (every function \
calling a static helper that gcc inlines) and a Makefile (`-O2 -g`), builds it once as the \
running binary, and makes a one-file diff that changes one inlined helper. Each of {} runs times \
a clean `make -s` of a fresh copy of the project, then `pannus build --build \"make -s\"` of the \
diff, wall clock around the process: pannus copies the tree twice, runs the build command in the \
first copy (its wrappers recording each compilation), compiles only the changed unit again in the \
second, compares, and links the module. The build command runs once, serially, as it does for the \
clean build.

| | median | min | max |
|---|---|---|---|
| clean build (`make -s`) | {:.2} s | {:.2} s | {:.2} s |
| `pannus build` of a one-file diff | {:.2} s | {:.2} s | {:.2} s |

Ratio of the medians: **{:.2}×** (goal ≤ 1.5×); functions replaced: {}.

By hand, on Lua 5.4.4 (its source from Debian, `apt-get source lua5.4`; `make posix \
MYCFLAGS=-g`, 34 units): clean build 6.5 s, `pannus build` of a diff to the static helper \
`posrelatI` 7.5 s (1.15×); see README, *Making a patch from a fix*.
",
        crate::build::FILES,
        crate::build::FUNCTIONS,
        b.runs,
        clean.med,
        clean.min,
        clean.max,
        built.med,
        built.min,
        built.max,
        built.med / clean.med,
        b.replaced
    );
}

fn saturated(w: &mut String, res: &Results) {
    let s = &res.saturated;
    let _ = writeln!(
        w,
        "## 6. A saturated machine
"
    );
    let _ = writeln!(
        w,
        "**Method.** [`saturate.c`](bench/c/saturate.c) runs {} threads, each calling `work()` and \
         sleeping {} µs, forever: their wake-ups alone keep both CPUs saturated ({} threads runnable \
         at once, the fourth field of `/proc/loadavg` sampled 20 times before the runs; load average \
         {} when the runs started, {} at the end). One function is applied (the target is checked to compute the \
         patched result) and rolled back, {} times. The benchmark starts pannus from a process at \
         `SCHED_FIFO` 1, as `chrt -f 1 pannus ...` does: a process started at the normal policy waits \
         seconds for a CPU to `exec` there, before pannus's first instruction (see README, *A \
         saturated machine*). pannus then runs at its urgent policy, and the thread it borrows at \
         nice -20. *stages* is the sum of pannus's own `timings_us` (preflight, load, link, init, \
         activate; restore and unload for the rollback).\n",
        s.threads,
        s.period_us,
        {
            let r = stat(&s.runnable);
            format!("{:.0} ({:.0}–{:.0})", r.med, r.min, r.max)
        },
        s.load_start,
        s.load_end,
        s.runs
    );
    let _ = writeln!(
        w,
        "| | wall | stages | of which every thread stopped |\n|---|---|---|---|\n\
         | apply | {} | {} | {} |\n| rollback | {} | {} | |\n| `pannus --version` | {} | | |\n",
        fmt_stat(stat(&s.apply_wall)),
        fmt_stat(stat(&s.apply_stages)),
        fmt_stat(stat(&s.stopped)),
        fmt_stat(stat(&s.rb_wall)),
        fmt_stat(stat(&s.rb_stages)),
        fmt_stat(stat(&s.version_wall)),
    );
}

fn reference(w: &mut String, res: &Results) {
    let _ = writeln!(w, "### Against the reference patcher\n");
    let _ = writeln!(w, "| case | reference patcher | pannus |\n|---|---|---|");
    if let Some(s) = res.stages.iter().find(|s| s.functions == 1) {
        let _ = writeln!(w, "| patch a 1-thread target (wall) | 12 ms | {} |", fmt_us(stat(&s.apply_wall).med));
        let _ = writeln!(
            w,
            "| … of which threads stopped | ~8 ms | {} |",
            fmt_us(stat(s.apply.get("stopped").map(Vec::as_slice).unwrap_or(&[])).med)
        );
    }
    if let Some(r) = stop_row(res, 8, "spin") {
        let _ = writeln!(w, "| patch with 8 busy threads (wall) | ~125 ms | {} |", fmt_us(stat(&r.apply.wall).med));
        let _ = writeln!(
            w,
            "| … of which threads stopped | ~100 ms | {} (largest gap of a worker overlapping it, time slicing included: {}) |",
            fmt_us(stat(&r.apply.stopped).med),
            fmt_us(stat(&r.apply.sgap).med)
        );
        let tried = r.rb.wall.len() + r.failures.iter().filter(|f| f.starts_with("rollback:")).count();
        let _ = writeln!(
            w,
            "| unpatch with 8 busy threads | could not | {} of {} rollbacks succeeded, {} wall, threads stopped {} |",
            r.rb.wall.len(),
            tried,
            fmt_us(stat(&r.rb.wall).med),
            fmt_us(stat(&r.rb.stopped).med)
        );
    }
    let _ = writeln!(w);
}

fn stops(w: &mut String, res: &Results) {
    let _ = writeln!(w, "## 1. Target-visible stop\n");
    let _ = writeln!(
        w,
        "**Method.** [`worker_target.c`](bench/c/worker_target.c) runs N worker threads. In `spin` mode \
         each calls `work()` (the patched function) in a tight loop; in `sleep` mode it calls it and \
         sleeps 100 µs. Each worker records the largest gap between two consecutive iterations of its \
         loop (`CLOCK_MONOTONIC`); `reset` zeroes the maxima, and `report` waits until every worker has \
         gone round once more and prints the largest gap over all workers. Each worker also logs \
         every gap over 20 µs with the time it ended, so that `report` can also give the largest gap \
         among those that overlap given windows of time: the stops of every thread. For each run, on \
         the same target process:\n\n\
         - **limit**: `reset`, then [`limit.c`](bench/c/limit.c), the bare minimum of a patch: at \
         `SCHED_FIFO` (as pannus runs its stop window), `PTRACE_SEIZE` + `PTRACE_INTERRUPT` every thread \
         of `/proc/PID/task` (all interrupted before any is waited for), `waitpid` each, `pwrite` 5 bytes \
         at `work` through `/proc/PID/mem` (the function's own bytes, so the write costs what a jump \
         costs and changes nothing), `PTRACE_DETACH` all; then `report`, with the limit's stop \
         (first seize to last detach) as the window.\n\
         - **apply**: `reset`, `pannus apply` (CLI, release build), `report`, with the stops pannus \
         gives in its `--json` output (`stops`: first interrupt to last detach, `CLOCK_MONOTONIC`) as \
         the windows.\n\
         - **baseline**: `reset`, sleep as long as that apply took, `report`: the gaps the target has \
         anyway over such a window (time slicing, timer slack), and over windows placed as the \
         apply's stops were, as long after the reset.\n\
         - **rollback**: `reset`, `pannus rollback`, `report` (a second baseline follows it too).\n\n\
         Ratios are of medians. The gap is what a worker can see: it includes the stop and, with more \
         busy threads than the {} CPUs, the waits for a CPU that time slicing imposes anyway (the \
         baseline column). Rollback stops the threads once: the stop that writes the original bytes back \
         also checks that no thread is in the module, which is then unmapped without another stop (a \
         second stop happens only when a thread was inside). The gap can also exceed the stop window: \
         outside it, pannus's own work (pre-flight, the borrowed main thread's remote system calls, which \
         take the process's memory-map lock) competes with the workers for the same CPUs.\n\n\
         **Held.** To tell the stop from time slicing, each worker also measures how long it was *held*: \
         at the end of every gap longer than 20 µs it reads its own `run_delay` (the time it spent \
         runnable, waiting for a CPU, from `/proc/thread-self/schedstat`), and the gap minus the growth \
         of `run_delay` across it is the time it was kept off the CPUs: stopped by a tracer, or blocked. \
         For `spin` workers, whose only other gaps are waits for a CPU, that is the stop as the target \
         lives it; a `sleep` worker's held time also holds its 100 µs sleep and the timer's slack \
         (compare with its baseline). Where a gap is much larger than the held time, the worker was \
         waiting for a CPU: a thread woken on a CPU where another runs at the normal policy waits up \
         to a time slice (about 1.5 ms here), even while the other CPU idles. pannus's commands \
         therefore run at `SCHED_IDLE` outside the stop window when the machine has CPU time to \
         spare (from their first instruction, trial watcher included; a watchdog returns them to \
         the normal policy if that starves them), and a waking worker takes the CPU from them at \
         once. What is left of such waits is mostly \
         the `exec` of the pannus process itself, before its first instruction. (Asking the kernel \
         for 100 µs slices for pannus, EEVDF custom slices, did not shorten these waits \
         measurably: the running thread keeps the CPU until a tick.)\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let _ = writeln!(
        w,
        "**Stop during activation as the target sees it: the largest gap of any worker that overlaps \
         a stop of every thread** (µs/ms). This is the stop the goal is about: it holds the stop \
         itself, and the wait for a CPU of a worker let go at its end. *held* is the largest time \
         held among those gaps. 0 µs: no gap over 20 µs (the shortest logged) overlapped.\n\n\
         | workers | mode | runs | baseline (no patching, same windows) | bare limit | pannus apply | pannus rollback | apply / limit | rollback / limit | held: limit | held: apply |\n\
         |---:|---|---:|---|---|---|---|---:|---:|---|---|"
    );
    for r in &res.stops {
        let cells = against_limit(&r.apply_base_sgap, &r.limit_sgap, &r.apply.sgap, &r.rb.sgap);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {cells} | {} | {} |",
            r.workers,
            r.mode,
            r.runs,
            fmt_stat(stat(&r.limit_sheld)),
            fmt_stat(stat(&r.apply.sheld))
        );
    }
    let inexact: Vec<String> = res
        .stops
        .iter()
        .flat_map(|r| r.inexact.iter().map(move |i| format!("{} {}, {i}", r.workers, r.mode)))
        .collect();
    if !inexact.is_empty() {
        let _ = writeln!(
            w,
            "\nReports from gap logs that no longer reached back to the first stop (their figures may \
             be low): {}.",
            inexact.join("; ")
        );
    }
    let _ = writeln!(
        w,
        "\n**Largest gap seen by any worker over the whole command** (µs/ms): from the `reset` before \
         the command to the `report` after it, so for pannus also the pre-flight, stages 1-3 and its \
         process start-up and exit:\n\n\
         | workers | mode | runs | load at start | baseline (no patching) | bare limit | pannus apply | pannus rollback | apply / limit | rollback / limit | apply / baseline |\n\
         |---:|---|---:|---|---|---|---|---|---:|---:|---:|"
    );
    for r in &res.stops {
        let cells = against_limit(&r.apply_base, &r.limit_gap, &r.apply.gap, &r.rb.gap);
        let base = fmt_ratio(ratio(stat(&r.apply.gap), stat(&r.apply_base)));
        let _ = writeln!(w, "| {} | {} | {} | {} | {cells} | {base} |", r.workers, r.mode, r.runs, r.load);
    }
    let _ = writeln!(
        w,
        "\nThe limit's run is a few milliseconds long; pannus's `apply` takes as long as its wall time \
         (below), and the largest gap a worker sees over a window grows with the window wherever \
         the run queue is saturated (64 and 256 `sleep` workers: tens of threads runnable on 2 \
         CPUs). *apply / baseline* compares pannus's gap with the gap the same workers see, \
         unpatched, over a window as long as that apply."
    );
    let _ = writeln!(
        w,
        "\n**Largest time a worker was held** (its gap minus its waits for a CPU; µs/ms):\n\n\
         | workers | mode | baseline (no patching) | bare limit | pannus apply | pannus rollback | apply / limit | rollback / limit |\n\
         |---:|---|---|---|---|---|---:|---:|"
    );
    for r in &res.stops {
        let cells = against_limit(&r.apply_base_held, &r.limit_held, &r.apply.held, &r.rb.held);
        let _ = writeln!(w, "| {} | {} | {cells} |", r.workers, r.mode);
    }
    let _ = writeln!(
        w,
        "\n**Stop window as each tool measures it**: the limit from its first `PTRACE_SEIZE` to its \
         last detach; pannus (`timings_us.stopped`) from its first `PTRACE_INTERRUPT` to its last \
         detach (pannus attaches to the threads with `PTRACE_SEIZE` before the stop, while they run, \
         which costs the target nothing), and the wall time of the whole pannus process:\n\n\
         | workers | mode | bare limit | pannus apply | apply / limit | pannus rollback | apply wall | rollback wall |\n\
         |---:|---|---|---|---:|---|---|---|"
    );
    for r in &res.stops {
        let lim = stat(&r.limit_self);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workers,
            r.mode,
            fmt_stat(lim),
            fmt_stat(stat(&r.apply.stopped)),
            fmt_ratio(ratio(stat(&r.apply.stopped), lim)),
            fmt_stat(stat(&r.rb.stopped)),
            fmt_stat(stat(&r.apply.wall)),
            fmt_stat(stat(&r.rb.wall)),
        );
    }
    let _ = writeln!(w);
}

fn stop_stages(w: &mut String, res: &Results) {
    let _ = writeln!(
        w,
        "**Where the wall time goes**, pannus's own `timings_us` (medians) for the same runs; \
         *outside* is the wall time around the process minus the sum of the stages (process start-up, \
         opening the process, lock, journal, starting the trial watcher):\n\n\
         | workers | mode | preflight | load | link | init | activate | outside | apply wall | restore | unload | rollback wall |\n\
         |---:|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &res.stops {
        let m = |map: &std::collections::BTreeMap<String, Vec<f64>>, k: &str| {
            stat(map.get(k).map(Vec::as_slice).unwrap_or(&[])).med
        };
        let sum: f64 = ["preflight", "load", "link", "init", "activate"]
            .iter()
            .map(|k| m(&r.apply.stages, k))
            .filter(|v| v.is_finite())
            .sum();
        let wall = stat(&r.apply.wall).med;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workers,
            r.mode,
            fmt_us(m(&r.apply.stages, "preflight")),
            fmt_us(m(&r.apply.stages, "load")),
            fmt_us(m(&r.apply.stages, "link")),
            fmt_us(m(&r.apply.stages, "init")),
            fmt_us(m(&r.apply.stages, "activate")),
            fmt_us(wall - sum),
            fmt_us(wall),
            fmt_us(m(&r.rb.stages, "restore")),
            fmt_us(m(&r.rb.stages, "unload")),
            fmt_us(stat(&r.rb.wall).med),
        );
    }
    let _ = writeln!(
        w,
        "\n**Inside pannus's stop window** (apply, medians): *halt* interrupts every thread and waits \
         for each, reading its registers as soon as it is stopped, then every live stack in one \
         system call; *check* applies the consistency rule to what was read; *write* writes the entry bytes; *resume* detaches every \
         thread.\n\n\
         | workers | mode | halt | check | write | resume | stopped |\n\
         |---:|---|---|---|---|---|---|"
    );
    for r in &res.stops {
        let m = |k: &str| fmt_us(stat(r.apply.stages.get(k).map(Vec::as_slice).unwrap_or(&[])).med);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.workers,
            r.mode,
            m("stop_halt"),
            m("stop_check"),
            m("stop_write"),
            m("stop_resume"),
            m("stopped")
        );
    }
    let _ = writeln!(w);
}

const APPLY_STAGES: [&str; 6] = ["preflight", "load", "link", "init", "activate", "stopped"];
const ROLLBACK_STAGES: [&str; 3] = ["restore", "stopped", "unload"];

fn stages(w: &mut String, res: &Results) {
    let _ = writeln!(w, "## 2. Apply and rollback, stage by stage\n");
    let _ = writeln!(
        w,
        "**Method.** A generated single-threaded target with {FUNCS} patchable functions `f1`..`f{FUNCS}` \
         (it answers commands on stdin), a module replacing `f1` only and one replacing all {FUNCS} \
         (`fN_v2`), their manifests written by `pannus manifest new`. Each run applies the patch, checks \
         the target now computes the patched result, and rolls it back. The stages are pannus's own \
         `timings_us` from `--json`; `stopped` is inside `activate` (and `restore`). The wall time is \
         measured around the pannus process, so it also has process start-up, reading and checking the \
         manifest and module, locking, the journal and starting the trial watcher.\n"
    );
    let head: Vec<String> =
        res.stages.iter().map(|s| format!("{} ({} runs, load {})", s.label, s.apply_wall.len(), s.load)).collect();
    let _ = writeln!(w, "**apply**\n\n| stage | {} |\n|---|{}", head.join(" | "), "---|".repeat(head.len()));
    for st in APPLY_STAGES {
        let cells: Vec<String> =
            res.stages.iter().map(|s| fmt_stat(stat(s.apply.get(st).map(Vec::as_slice).unwrap_or(&[])))).collect();
        let name = if st == "stopped" { "… stopped (inside activate)".to_string() } else { st.to_string() };
        let _ = writeln!(w, "| {name} | {} |", cells.join(" | "));
    }
    let cells: Vec<String> = res
        .stages
        .iter()
        .map(|s| {
            let sum: f64 = ["preflight", "load", "link", "init", "activate"]
                .iter()
                .map(|k| stat(s.apply.get(*k).map(Vec::as_slice).unwrap_or(&[])).med)
                .filter(|v| v.is_finite())
                .sum();
            fmt_us(sum)
        })
        .collect();
    let _ = writeln!(w, "| sum of the stage medians | {} |", cells.join(" | "));
    let cells: Vec<String> = res.stages.iter().map(|s| fmt_stat(stat(&s.apply_wall))).collect();
    let _ = writeln!(w, "| **wall, whole process** | {} |", cells.join(" | "));
    let largest: Vec<String> = res
        .stages
        .iter()
        .filter_map(|s| {
            let (k, v) = ["preflight", "load", "link", "init", "activate"]
                .iter()
                .map(|k| (*k, stat(s.apply.get(*k).map(Vec::as_slice).unwrap_or(&[])).med))
                .filter(|(_, v)| v.is_finite())
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            let wall = stat(&s.apply_wall).med;
            Some(format!("`{k}` ({}, {:.0}% of the wall time)", fmt_us(v), 100.0 * v / wall))
        })
        .collect();
    let _ = writeln!(w, "| largest stage | {} |", largest.join(" | "));
    let cells: Vec<String> = res.stages.iter().map(|s| fmt_stat(stat(&s.version_wall))).collect();
    let _ = writeln!(w, "| for comparison: `pannus --version` (process start-up) | {} |", cells.join(" | "));
    let cells: Vec<String> = res.stages.iter().map(|s| fmt_stat(stat(&s.check_wall))).collect();
    let _ = writeln!(
        w,
        "| for comparison: `pannus check --json` (open the process, lock, pre-flight; changes nothing) | {} |",
        cells.join(" | ")
    );

    let _ = writeln!(w, "\n**rollback**\n\n| stage | {} |\n|---|{}", head.join(" | "), "---|".repeat(head.len()));
    for st in ROLLBACK_STAGES {
        let cells: Vec<String> =
            res.stages.iter().map(|s| fmt_stat(stat(s.rollback.get(st).map(Vec::as_slice).unwrap_or(&[])))).collect();
        let name = if st == "stopped" { "… stopped (inside restore)".to_string() } else { st.to_string() };
        let _ = writeln!(w, "| {name} | {} |", cells.join(" | "));
    }
    let cells: Vec<String> = res.stages.iter().map(|s| fmt_stat(stat(&s.rb_wall))).collect();
    let _ = writeln!(w, "| **wall, whole process** | {} |\n", cells.join(" | "));
}

fn call(w: &mut String, res: &Results) {
    let c = &res.call;
    let _ = writeln!(w, "## 3. Call overhead\n");
    let _ = writeln!(
        w,
        "**Method.** [`call_overhead.c`](bench/c/call_overhead.c) times a loop of {} calls (`acc = f(acc)`, \
         a direct `call rel32` from the loop) to each of five functions with the same body \
         (`return x + v;` reading a file-local `volatile int`, RIP-relative), {} samples each, interleaved \
         (load {}):\n\n\
         - **direct**: a function that is never patched: the cost of the call when the fix is compiled in.\n\
         - **unpatched**: `work()` before pannus patches it.\n\
         - **pannus**: `work()` after `pannus apply` redirected it to `work_v2` in the module \
         ([`work_patch.c`](bench/c/work_patch.c)) with the jump pannus chose: `{}`.\n\
         - **self rel32 / self abs64**: pannus cannot be made to choose the 14-byte form when the module \
         is within reach, so the program patches two of its own functions at start-up: one with a 5-byte \
         `jmp rel32`, one with the 14-byte `jmp [rip+0]; .quad target` pannus uses when the module is \
         farther than ±2 GiB, each to a function with the same body. It writes them through \
         `/proc/self/mem`, as pannus writes through `/proc/PID/mem`: the code pages are never made \
         writable. The self rel32 row checks the pannus row.\n\n\
         The overhead is the median of the per-sample differences with the direct call in the same sample. \
         A loop iteration also holds the loop's own work, so the absolute ns/call is an upper bound on a \
         call's cost; the differences are what a patch adds.\n",
        c.iters,
        c.before.len(),
        c.load,
        c.jump
    );
    let _ = writeln!(w, "| function | ns per call | over direct (ns) |\n|---|---|---|");
    let col = |s: &[[f64; 4]], i: usize| s.iter().map(|x| x[i]).collect::<Vec<f64>>();
    let over = |s: &[[f64; 4]], i: usize| {
        let d = stat(&diffs(s, i, 0));
        if d.n == 0 {
            "n/a".to_string()
        } else {
            format!("{:+.2} ({:+.2}–{:+.2})", d.med, d.min, d.max)
        }
    };
    let all: Vec<[f64; 4]> = c.before.iter().chain(&c.after).copied().collect();
    let _ = writeln!(w, "| direct | {} | 0 |", ns_stat(&col(&all, 0)));
    let _ = writeln!(w, "| `work`, unpatched | {} | {} |", ns_stat(&col(&c.before, 1)), over(&c.before, 1));
    let _ = writeln!(
        w,
        "| `work`, patched by pannus ({}) | {} | {} |",
        c.jump,
        ns_stat(&col(&c.after, 1)),
        over(&c.after, 1)
    );
    let _ = writeln!(w, "| self-patched, `jmp rel32` (5 bytes) | {} | {} |", ns_stat(&col(&all, 2)), over(&all, 2));
    let _ =
        writeln!(w, "| self-patched, `jmp [rip+0]` (14 bytes) | {} | {} |\n", ns_stat(&col(&all, 3)), over(&all, 3));
}

fn scale(w: &mut String, res: &Results) {
    let _ = writeln!(w, "## 4. Scale\n");
    let _ = writeln!(
        w,
        "**{STACK} stacked patches.** On a fresh single-threaded {FUNCS}-function target, {STACK} patches are \
         applied one after the other (each its own manifest and module), then rolled back one by one, \
         newest first (`pannus rollback --pid P`). Two series: each patch replacing a different function, \
         and every patch replacing the same function `f1` (each saving the previous jump as its original). \
         The target's result is checked to be the original one at the end.\n"
    );
    let _ = writeln!(
        w,
        "| series | runs | load at start | 1st apply | {STACK}th apply | {STACK}th apply: stopped | 1st rollback (of the {STACK}th patch) | last rollback | all {STACK} rollbacks, total |\n\
         |---|---:|---|---|---|---|---|---|---|"
    );
    for s in &res.stacks {
        let nth = |v: &[Vec<f64>], i: usize| v.iter().filter_map(|r| r.get(i).copied()).collect::<Vec<f64>>();
        let last = |v: &[Vec<f64>]| v.iter().filter_map(|r| r.last().copied()).collect::<Vec<f64>>();
        let complete = |v: &[Vec<f64>]| v.iter().filter(|r| r.len() == STACK).cloned().collect::<Vec<_>>();
        let total: Vec<f64> = complete(&s.rb_walls).iter().map(|r| r.iter().sum()).collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.label,
            s.runs,
            s.load,
            fmt_stat(stat(&nth(&s.apply_walls, 0))),
            fmt_stat(stat(&nth(&complete(&s.apply_walls), STACK - 1))),
            fmt_stat(stat(&nth(&complete(&s.apply_stopped), STACK - 1))),
            fmt_stat(stat(&nth(&s.rb_walls, 0))),
            fmt_stat(stat(&last(&s.rb_walls))),
            fmt_stat(stat(&total)),
        );
    }
    let p = &res.ps;
    let _ = writeln!(
        w,
        "\n**`pannus ps` with {PS_PROCS} extra processes.** {PS_PROCS} copies of a small C program sleeping in \
         `sleep(3600)` are started, {PS_PATCHED} of them patched; then `pannus ps --json` (the processes with \
         patches) and `pannus ps --all --json` run {} times each, wall time around the process. {} processes \
         in `/proc` during the measurement, {} listed by `ps` as patched (load {}). All are killed afterwards.\n\n\
         | command | wall |\n|---|---|\n| `pannus ps --json` | {} |\n| `pannus ps --all --json` | {} |\n",
        p.ps.len(),
        p.processes,
        p.patched_found,
        p.load,
        fmt_stat(stat(&p.ps)),
        fmt_stat(stat(&p.ps_all))
    );
    let keys = stat(&p.console_keys);
    let _ = writeln!(
        w,
        "**The console over the same processes.** `pannus console` runs in a pseudo-terminal of 120×40 \
         while those processes are up; its collector thread reads the whole process table (and each \
         patched process's registry) every second, much the same reads as `ps --all`. `?` is pressed \
         {} times, 150-400 ms apart at random over {:.0} s, so that presses land at every point of the refresh \
         cycle; each opens or closes the help screen, and the time is from writing the key to reading \
         the first 256 bytes of the redraw: {} (median, min–max). A press that had to wait for a \
         refresh would take about as long as the refresh itself (the `ps --all` row).\n",
        keys.n,
        p.console_seconds,
        fmt_stat(keys)
    );
    fleet(w, res);
}

/// `apply --all` and `rollback --all` over the fleets of [`crate::FLEET`] processes.
fn fleet(w: &mut String, res: &Results) {
    let _ = writeln!(
        w,
        "**`apply --all` and `rollback --all` over {} processes.** That many processes of one sleeper \
         binary (`tick()` then `sleep(3600)`, one thread each) are started and left to settle; then \
         `pannus apply MANIFEST --all --yes --json` patches `tick` in every one of them, and \
         `pannus rollback --all PATCH --yes --json` rolls it back. The wall time is around the \
         pannus process: planning (the walk of `/proc` and each process's maps, build-id and \
         registry), every process's pre-flight and stages (several processes at a time; the apply \
         also starts the run's trial watcher) and the summary. Before the next run the bench \
         waits for the trial watcher to see the rollback and exit. Goal: 1,000 processes patched in ≤ 1.5 s.\n",
        crate::FLEET.map(|n| n.to_string()).join(" and ")
    );
    let _ = writeln!(
        w,
        "| processes | runs | load at start | `apply --all` | per process | `rollback --all` | per process | patched per run | rolled back per run |\n|---:|---:|---|---|---|---|---|---|---|"
    );
    for f in &res.fleet {
        let n = f.processes.max(1) as f64;
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {:?} | {:?} |",
            f.processes,
            f.apply.len(),
            f.load,
            fmt_stat(stat(&f.apply)),
            fmt_us(stat(&f.apply).med / n),
            fmt_stat(stat(&f.rollback)),
            fmt_us(stat(&f.rollback).med / n),
            f.patched,
            f.rolled_back
        );
    }
}

/// A few lines on one fleet size, for `--only fleet`.
pub fn fleet_digest(f: &FleetRow) -> String {
    let n = f.processes.max(1) as f64;
    let mut w = format!(
        "{} processes, {} run(s), load at start {}\n  apply --all    {} ({} per process), patched {:?}\n  \
         rollback --all {} ({} per process), rolled back {:?}\n",
        f.processes,
        f.apply.len(),
        f.load,
        fmt_stat(stat(&f.apply)),
        fmt_us(stat(&f.apply).med / n),
        f.patched,
        fmt_stat(stat(&f.rollback)),
        fmt_us(stat(&f.rollback).med / n),
        f.rolled_back
    );
    for x in &f.failures {
        w.push_str(&format!("  FAILED: {}\n", x.replace('\n', " ")));
    }
    w
}

fn failures(w: &mut String, res: &Results) {
    let mut all: Vec<String> = Vec::new();
    for r in &res.stops {
        all.extend(r.failures.iter().map(|f| format!("stop, {} {} workers: {f}", r.workers, r.mode)));
    }
    for s in &res.stages {
        all.extend(s.failures.iter().map(|f| format!("stages, {}: {f}", s.label)));
    }
    all.extend(res.call.failures.iter().map(|f| format!("call overhead: {f}")));
    for s in &res.stacks {
        all.extend(s.failures.iter().map(|f| format!("{}: {f}", s.label)));
    }
    all.extend(res.ps.failures.iter().map(|f| format!("ps: {f}")));
    for f in &res.fleet {
        all.extend(f.failures.iter().cloned());
    }
    all.extend(res.saturated.failures.iter().map(|f| format!("saturated machine: {f}")));
    all.extend(res.build.failures.iter().map(|f| format!("pannus build: {f}")));
    for r in &res.daemon {
        all.extend(r.failures.iter().map(|f| format!("pannus daemon, {}: {f}", r.mode)));
    }
    let _ = writeln!(w, "## Failures\n");
    if all.is_empty() {
        let _ = writeln!(w, "None: every apply and rollback of the run succeeded.");
    } else {
        let _ = writeln!(w, "Runs that failed are left out of the figures above:\n");
        for f in all {
            let _ = writeln!(w, "- {}", f.replace('\n', " "));
        }
    }
}

/// A few lines for the terminal.
pub fn summary(res: &Results) -> String {
    let mut o = String::new();
    for g in goals(res) {
        let verdict = match (g.reference, g.met) {
            (true, _) => "info",
            (false, true) => "met",
            (false, false) => "MISSED",
        };
        let _ = writeln!(o, "{verdict:<8} {} — {}", g.what, g.figure);
    }
    o
}

/// A few lines on one case of the stop benchmark, for `--stop`: medians (min–max) of the gaps,
/// the stop windows and every step pannus timed.
pub fn stop_digest(r: &StopRow) -> String {
    let mut w = String::new();
    let s = |v: &[f64]| fmt_stat(stat(v));
    let _ = writeln!(w, "{} worker(s), {}, {} runs, load at start {}", r.workers, r.mode, r.runs, r.load);
    let _ = writeln!(
        w,
        "  gap seen by the target: limit {} | apply {} | rollback {} | baseline {}",
        s(&r.limit_gap),
        s(&r.apply.gap),
        s(&r.rb.gap),
        s(&r.apply_base)
    );
    let _ = writeln!(
        w,
        "  gap overlapping a stop: limit {} | apply {} ({}) | rollback {} ({}) | baseline {}",
        s(&r.limit_sgap),
        s(&r.apply.sgap),
        fmt_ratio(ratio(stat(&r.apply.sgap), stat(&r.limit_sgap))),
        s(&r.rb.sgap),
        fmt_ratio(ratio(stat(&r.rb.sgap), stat(&r.limit_sgap))),
        s(&r.apply_base_sgap)
    );
    let _ = writeln!(
        w,
        "  held in a stop: limit {} | apply {} | rollback {} | baseline {}",
        s(&r.limit_sheld),
        s(&r.apply.sheld),
        s(&r.rb.sheld),
        s(&r.apply_base_sheld)
    );
    for i in &r.inexact {
        let _ = writeln!(w, "  gap log did not reach back to the stop: {i}");
    }
    let _ = writeln!(
        w,
        "  stop window: limit {} | apply {} ({}) | rollback {}",
        s(&r.limit_self),
        s(&r.apply.stopped),
        fmt_ratio(ratio(stat(&r.apply.stopped), stat(&r.limit_self))),
        s(&r.rb.stopped)
    );
    let _ = writeln!(
        w,
        "  held: limit {} | apply {} | rollback {} | baseline {}",
        s(&r.limit_held),
        s(&r.apply.held),
        s(&r.rb.held),
        s(&r.apply_base_held)
    );
    let _ = writeln!(w, "  wall: apply {} | rollback {}", s(&r.apply.wall), s(&r.rb.wall));
    for (label, stages) in [("apply", &r.apply.stages), ("rollback", &r.rb.stages)] {
        let steps: Vec<String> = stages.iter().map(|(k, v)| format!("{k} {}", fmt_us(stat(v).med))).collect();
        let _ = writeln!(w, "  {label} steps (medians): {}", steps.join(", "));
    }
    for f in &r.failures {
        let _ = writeln!(w, "  failure: {f}");
    }
    w
}
