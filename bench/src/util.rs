//! Processes, statistics and small helpers shared by the benchmarks.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Median, minimum and maximum of a series, and how many values it holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stat {
    pub med: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn stat(v: &[f64]) -> Stat {
    if v.is_empty() {
        return Stat { med: f64::NAN, min: f64::NAN, max: f64::NAN, n: 0 };
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    Stat { med, min: s[0], max: s[n - 1], n }
}

/// A duration given in microseconds, in the unit that suits it.
pub fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "n/a".into()
    } else if us >= 100_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// `median (min–max)` of a series of microseconds.
pub fn fmt_stat(s: Stat) -> String {
    if s.n == 0 {
        return "n/a".into();
    }
    format!("{} ({}–{})", fmt_us(s.med), fmt_us(s.min), fmt_us(s.max))
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn load1() -> f64 {
    loadavg().split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0.0)
}

/// Runs several gcc at once (the machine is small, but gcc is mostly waiting on files).
pub fn gcc_all(jobs: &[Vec<String>]) {
    for chunk in jobs.chunks(4) {
        let children: Vec<(Child, &Vec<String>)> = chunk
            .iter()
            .map(|a| {
                let c = Command::new("gcc").args(a).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("gcc");
                (c, a)
            })
            .collect();
        for (c, a) in children {
            let out = c.wait_with_output().expect("gcc runs");
            assert!(out.status.success(), "gcc {a:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// What a run of the `pannus` binary did, with the wall time around the process.
#[derive(Debug)]
pub struct Run {
    pub wall: Duration,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or(serde_json::Value::Null)
    }
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    /// The stage timings (`timings_us`) of an apply or rollback, in microseconds.
    pub fn timings(&self) -> Vec<(String, f64)> {
        match self.json().get("timings_us") {
            Some(serde_json::Value::Object(m)) => {
                m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect()
            }
            _ => Vec::new(),
        }
    }
    /// Each stop of every thread (`stops`), as CLOCK_MONOTONIC (start, end) in ns.
    pub fn stops(&self) -> Vec<(u64, u64)> {
        let j = self.json();
        let Some(list) = j.get("stops").and_then(|v| v.as_array()) else { return Vec::new() };
        list.iter()
            .filter_map(|s| Some((s.get("start_monotonic_ns")?.as_u64()?, s.get("end_monotonic_ns")?.as_u64()?)))
            .collect()
    }
    pub fn timing(&self, key: &str) -> Option<f64> {
        self.timings().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// One line saying why it failed.
    pub fn why(&self) -> String {
        let j = self.json();
        let msg = j
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}{}", self.stdout.trim(), self.stderr.trim()));
        format!("exit {}: {}", self.code, msg.lines().next().unwrap_or(""))
    }
}

/// The pannus binary and its private state folder.
pub struct Pannus {
    pub exe: PathBuf,
    pub state: PathBuf,
}

impl Pannus {
    pub fn run(&self, args: &[&str]) -> Run {
        let t0 = Instant::now();
        let out = Command::new(&self.exe)
            .args(args)
            .env("PANNUS_STATE_DIR", &self.state)
            .stdin(Stdio::null())
            .output()
            .expect("pannus runs");
        let wall = t0.elapsed();
        Run {
            wall,
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn apply(&self, manifest: &Path, pid: i32) -> Run {
        self.run(&["apply", &manifest.to_string_lossy(), "--pid", &pid.to_string(), "--yes", "--json"])
    }

    pub fn rollback(&self, pid: i32) -> Run {
        self.run(&["rollback", "--pid", &pid.to_string(), "--yes", "--json"])
    }

    /// `pannus manifest new`, panicking when it fails.
    pub fn manifest(&self, target: &Path, module: &Path, patch: &str, out: &Path) -> PathBuf {
        let r = self.run(&[
            "manifest",
            "new",
            "--target",
            &target.to_string_lossy(),
            "--module",
            &module.to_string_lossy(),
            "--patch",
            patch,
            "--output",
            &out.to_string_lossy(),
            "--force",
        ]);
        assert!(r.ok(), "pannus manifest new failed: {}\n{}", r.stdout, r.stderr);
        out.to_path_buf()
    }
}

/// A worker target's `report`; µs.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The largest gap over all workers since the reset.
    pub gap: f64,
    /// The median of the per-worker largest gaps.
    pub median: f64,
    /// The largest time a worker was held (its gap minus its waits for a CPU).
    pub held: f64,
    /// The largest gap, and time held, among those that overlap a window asked about.
    pub window_gap: f64,
    pub window_held: f64,
    /// Workers whose gap log did not reach back to the first window.
    pub lost: usize,
}

/// A running benchmark target that answers commands on stdin, one line each.
pub struct Target {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub pid: i32,
    /// The address the target printed in its `ready work=0x...` line.
    pub work: u64,
    /// Reads of its stdin that failed with EINTR, as of the last `report`.
    pub eintr: u64,
}

impl Target {
    pub fn start(exe: &Path, args: &[&str]) -> Target {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("target starts");
        let stdin = child.stdin.take().expect("stdin");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let pid = child.id() as i32;
        let mut t = Target { child, stdin, lines: rx, pid, work: 0, eintr: 0 };
        let ready = t.line();
        assert!(ready.starts_with("ready"), "target said {ready:?}");
        t.work = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("work=0x"))
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        t
    }

    pub fn line(&mut self) -> String {
        match self.lines.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(e) => {
                let status = self.child.try_wait();
                panic!("target {} did not answer ({e}); its status: {status:?}", self.pid)
            }
        }
    }

    pub fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("the target reads");
        self.stdin.flush().expect("flush");
        self.line()
    }

    /// Sends a command that has no answer.
    pub fn send(&mut self, cmd: &str) {
        let _ = writeln!(self.stdin, "{cmd}");
        let _ = self.stdin.flush();
    }

    /// Asks the target to quit, then makes sure it is gone.
    pub fn quit(mut self, cmd: &str) {
        self.send(cmd);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `reset`, acknowledged; returns the target's CLOCK_MONOTONIC at the reset, in ns.
    pub fn reset(&mut self) -> u64 {
        let a = self.ask("reset");
        a.strip_prefix("ok now=").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("reset answered {a:?}"))
    }

    /// `report`: (largest gap over all workers, median of the per-worker maxima, largest time a
    /// worker was held: its gap minus its waits for a CPU), in µs.
    pub fn report(&mut self) -> (f64, f64, f64) {
        let r = self.report_in(&[]);
        (r.gap, r.median, r.held)
    }

    /// `report`, with the largest gap and time held among the gaps that overlap one of
    /// `windows` (CLOCK_MONOTONIC ns).
    pub fn report_in(&mut self, windows: &[(u64, u64)]) -> Report {
        let mut cmd = String::from("report");
        for (a, b) in windows {
            cmd += &format!(" {a} {b}");
        }
        let a = self.ask(&cmd);
        let field = |k: &str| -> f64 {
            a.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("bad report {a:?}"))
        };
        self.eintr = field("eintr=") as u64;
        let windowed = !windows.is_empty();
        Report {
            gap: field("max=") / 1000.0,
            median: field("median=") / 1000.0,
            held: field("held=") / 1000.0,
            window_gap: if windowed { field("window_max=") / 1000.0 } else { f64::NAN },
            window_held: if windowed { field("window_held=") / 1000.0 } else { f64::NAN },
            lost: if windowed { field("lost=") as usize } else { 0 },
        }
    }

    /// `len` bytes of the target's memory at `addr`.
    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let f = std::fs::File::open(format!("/proc/{}/mem", self.pid)).expect("open /proc/PID/mem");
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, addr).expect("read /proc/PID/mem");
        buf
    }

    /// Kills the target (SIGKILL) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes started by the benchmark that must not outlive it.
#[derive(Default)]
pub struct Herd(pub Vec<Child>);

impl Herd {
    pub fn spawn(&mut self, exe: &Path, n: usize) {
        for _ in 0..n {
            let c = Command::new(exe)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("a sleeper starts");
            self.0.push(c);
        }
    }

    pub fn pids(&self) -> Vec<i32> {
        self.0.iter().map(|c| c.id() as i32).collect()
    }

    /// Waits until every process runs `exe` (its exec is done) and has mapped it.
    pub fn wait_exec(&self, exe: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for pid in self.pids() {
            loop {
                let ok = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe);
                if ok || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    pub fn kill_all(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits (up to `limit`) until no `trial-watch` process of the pannus binary `exe` runs any more.
pub fn wait_for_trial_watchers(exe: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    let watching = || {
        std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
            let dir = e.path();
            std::fs::read_link(dir.join("exe")).is_ok_and(|x| x == exe)
                && std::fs::read(dir.join("cmdline")).is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"trial-watch"))
        })
    };
    while watching() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
