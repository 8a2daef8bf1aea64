//! Test support: builds the C fixtures, runs targets as real processes and drives the real
//! `pannus` binary against them.
#![allow(dead_code)]

pub mod daemon;
pub mod libc;
pub mod tmux;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::OnceLock;
use std::time::Duration;

pub fn fixtures_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn gcc(args: &[&str]) {
    let out = Command::new("gcc").args(args).output().expect("gcc runs");
    assert!(out.status.success(), "gcc {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// The folder with every fixture built, once per test binary.
pub fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fixtures-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = fixtures_src();
        let s = |f: &str| src.join(f).to_string_lossy().into_owned();
        let o = |f: &str| dir.join(f).to_string_lossy().into_owned();
        gcc(&["-O2", "-g", "-pthread", "-o", &o("target_pie"), &s("target.c")]);
        gcc(&["-O2", "-g", "-pthread", "-fno-pie", "-no-pie", "-o", &o("target_nopie"), &s("target.c")]);
        gcc(&["-O2", "-g", "-shared", "-fPIC", "-o", &o("libtarget.so"), &s("libtarget.c")]);
        gcc(&["-O2", "-g", "-shared", "-fPIC", "-o", &o("fork_ctor.so"), &s("fork_ctor.c")]);
        gcc(&["-O2", "-g", "-pthread", "-DWITH_SECCOMP=319", "-o", &o("target_seccomp_memfd"), &s("target.c")]);
        gcc(&["-O2", "-g", "-pthread", "-DWITH_SECCOMP=41", "-o", &o("target_seccomp_socket"), &s("target.c")]);
        gcc(&["-O2", "-g", "-pthread", "-DWITH_MDWE", "-o", &o("target_mdwe"), &s("target.c")]);
        // Kills itself on the system call number -1, as an allowlist that lists only real
        // calls does: what the kernel's seccomp sees of a call skipped under ptrace.
        gcc(&[
            "-O2",
            "-g",
            "-pthread",
            "-DWITH_SECCOMP=-1",
            "-DWITH_SECCOMP_ACTION=SECCOMP_RET_KILL_PROCESS",
            "-o",
            &o("target_seccomp_kill_skipped"),
            &s("target.c"),
        ]);
        gcc(&["-O2", "-g", "-pthread", "-o", &o("stop_target"), &s("stop_target.c")]);
        let gxx = |args: &[&str]| {
            let out = Command::new("g++").args(args).output().expect("g++ runs");
            assert!(out.status.success(), "g++ {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        };
        gxx(&["-O2", "-g", "-o", &o("cpp_target"), &s("cpp_target.cpp")]);
        gxx(&["-O2", "-shared", "-fPIC", "-o", &o("patch_cpp.so"), &s("patch_cpp.cpp")]);
        gxx(&["-O2", "-shared", "-fPIC", "-o", &o("patch_cpp_vtable.so"), &s("patch_cpp_vtable.cpp")]);
        let rpath = format!("-Wl,-rpath,{}", dir.display());
        let libdir = format!("-L{}", dir.display());
        gcc(&[
            "-O2",
            "-g",
            "-pthread",
            "-DWITH_LIB",
            "-o",
            &o("target_lib"),
            &s("target.c"),
            &libdir,
            "-ltarget",
            &rpath,
        ]);
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_prefix("patch_").and_then(|n| n.strip_suffix(".c")) {
                gcc(&["-O2", "-shared", "-fPIC", "-o", &o(&format!("patch_{stem}.so")), &s(&name)]);
            }
        }
        dir
    })
}

pub fn bin(name: &str) -> PathBuf {
    built().join(name)
}

/// The folder with the 32-bit (`-m32`, i386) builds of the portable fixtures, once per test
/// binary that asks: `target32_pie`, `target32_nopie`, `target32_cpp`, `target32_stress`,
/// `target32_seccomp_mmap2`, each `patch_NAME.c` as
/// `patch32_NAME.so`, and `patch32_cpp.so`. Needs gcc-multilib and g++-multilib.
pub fn built32() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = built().join("i386");
        std::fs::create_dir_all(&dir).unwrap();
        let src = fixtures_src();
        let s = |f: &str| src.join(f).to_string_lossy().into_owned();
        let o = |f: &str| dir.join(f).to_string_lossy().into_owned();
        gcc(&["-m32", "-O2", "-g", "-pthread", "-o", &o("target32_pie"), &s("target.c")]);
        gcc(&["-m32", "-O2", "-g", "-pthread", "-fno-pie", "-no-pie", "-o", &o("target32_nopie"), &s("target.c")]);
        gcc(&["-m32", "-O2", "-g", "-pthread", "-o", &o("target32_stress"), &s("stress_target.c")]);
        // Refuses mmap2 (192 on i386) with EPERM.
        gcc(&[
            "-m32",
            "-O2",
            "-g",
            "-pthread",
            "-DWITH_SECCOMP=192",
            "-o",
            &o("target32_seccomp_mmap2"),
            &s("target.c"),
        ]);
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_prefix("patch_").and_then(|n| n.strip_suffix(".c")) {
                gcc(&["-m32", "-O2", "-shared", "-fPIC", "-o", &o(&format!("patch32_{stem}.so")), &s(&name)]);
            }
        }
        let gxx = |args: &[&str]| {
            let out = Command::new("g++").args(args).output().expect("g++ runs");
            assert!(out.status.success(), "g++ {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        };
        gxx(&["-m32", "-O2", "-g", "-o", &o("target32_cpp"), &s("cpp_target.cpp")]);
        gxx(&["-m32", "-O2", "-shared", "-fPIC", "-o", &o("patch32_cpp.so"), &s("patch_cpp.cpp")]);
        dir
    })
}

/// A fixture of either build: the 32-bit ones are named `target32_*` and `patch32_*`.
pub fn bin_any(name: &str) -> PathBuf {
    if name.starts_with("target32_") || name.starts_with("patch32_") {
        built32().join(name)
    } else {
        bin(name)
    }
}

/// A running target answering commands on stdin (see tests/fixtures/target.c).
pub struct Proc {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub pid: i32,
}

impl Proc {
    pub fn start(name: &str) -> Proc {
        Proc::spawn(Command::new(bin_any(name)))
    }

    /// Starts `command` (a target, or a wrapper that execs one) answering as [`Proc::start`]'s.
    pub fn spawn(mut command: Command) -> Proc {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        // A program copied a moment ago is "busy" while a child another test thread forks
        // meanwhile still holds the copy's write descriptor, until that child's exec closes it.
        let mut tries = 0;
        let mut child = loop {
            match command.spawn() {
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32) && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
                other => break other.expect("target starts"),
            }
        };
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let pid = child.id() as i32;
        let mut p = Proc { child, stdin, lines: rx, pid };
        assert_eq!(p.line(), "ready");
        p
    }

    pub fn line(&mut self) -> String {
        self.lines.recv_timeout(Duration::from_secs(20)).expect("the target answers")
    }

    /// Sends a command and returns the answer line.
    pub fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.line()
    }

    /// Sends a command line in one `write` (a pipe delivers up to `PIPE_BUF` bytes at once):
    /// `writeln!` writes the text and its newline apart, and a target reading with a raw
    /// `read()`, not stdio, could get the text without its newline.
    pub fn send(&mut self, cmd: &str) {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).expect("the target reads");
        self.stdin.flush().unwrap();
    }

    /// Asks the target to quit (`q`) and returns how it ended.
    pub fn quit(&mut self) -> std::process::ExitStatus {
        self.send("q");
        self.child.wait().expect("the target is waited for")
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn maps(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a run of the `pannus` binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "pannus failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }
}

/// A private state folder (journal, locks) for one test.
pub struct State(pub tempfile::TempDir);

impl State {
    pub fn new() -> State {
        State(tempfile::tempdir().unwrap())
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
    pub fn pannus(&self, args: &[&str]) -> Run {
        self.pannus_env(args, &[])
    }
    /// `pannus ARGS` started in the background, its output piped.
    pub fn spawn_pannus(&self, args: &[&str]) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_pannus"))
            .args(args)
            .env("PANNUS_STATE_DIR", self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pannus starts")
    }
    /// `pannus ARGS` with extra environment variables.
    pub fn pannus_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_pannus"))
            .args(args)
            .env("PANNUS_STATE_DIR", self.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("pannus runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    /// `pannus apply MANIFEST --pid PID --yes`
    pub fn apply(&self, manifest: &Path, pid: i32) -> Run {
        self.pannus(&["apply", &manifest.to_string_lossy(), "--pid", &pid.to_string(), "--yes"])
    }
    pub fn rollback(&self, pid: i32, patch: Option<&str>) -> Run {
        let pid = pid.to_string();
        let mut args = vec!["rollback", "--pid", &pid, "--yes"];
        args.extend(patch);
        self.pannus(&args)
    }
    pub fn status(&self, pid: i32) -> serde_json::Value {
        self.pannus(&["status", "--pid", &pid.to_string(), "--json"]).ok().json()
    }
    /// Writes a manifest into the state folder with the right build-id and checksum.
    pub fn manifest(
        &self,
        patch: &str,
        object: &str,
        module: &str,
        functions: &[(&str, &str)],
        extra: &str,
    ) -> PathBuf {
        manifest_in(self.path(), patch, object, module, functions, extra)
    }
}

pub fn build_id(path: &Path) -> String {
    let file = std::fs::File::open(path).unwrap();
    pannus::build_id_of(&file).unwrap_or_else(|| panic!("{} has a build-id", path.display()))
}

pub fn manifest_in(
    dir: &Path,
    patch: &str,
    object: &str,
    module: &str,
    functions: &[(&str, &str)],
    extra: &str,
) -> PathBuf {
    let object = bin_any(object);
    let module = bin_any(module);
    let sha = pannus::sha256_file(&module).unwrap();
    let mut text = format!(
        "patch: {patch}\nversion: \"1.0\"\ntarget:\n  object: {}\n  build_id: {}\nmodule:\n  path: {}\n  sha256: {sha}\nfunctions:\n",
        object.display(),
        build_id(&object),
        module.display()
    );
    for (t, r) in functions {
        text.push_str(&format!("  - target: {t}\n    replacement: {r}\n"));
    }
    text.push_str(extra);
    let path = dir.join(format!("{patch}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Sets the manifest at `path` to load its module with `load` (`mmap` or `dlopen`).
pub fn set_load(path: &Path, load: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, text.replacen("  sha256:", &format!("  load: {load}\n  sha256:"), 1)).unwrap();
}

/// The current bytes of `symbol` (of `object`) in process `pid`.
pub fn code_bytes(pid: i32, object: &str, symbol: &str) -> Vec<u8> {
    let mut t = pannus::Target::open(pid).unwrap();
    let l = t.find_object(&bin(object)).unwrap();
    let s = l.object.lookup(symbol).unwrap().unwrap().clone();
    let start = l.addr(s.value) - 16;
    t.mem.read_vec(start, s.size as usize + 16).unwrap()
}

/// `pannus ARGS` on a terminal of its own, as an engineer runs it over SSH: a pseudo-terminal
/// that is its controlling terminal (`setsid --ctty`), so that Ctrl-C typed there is SIGINT and
/// closing it is the hang-up of a dropped session.
pub struct Terminal {
    child: Child,
    master: Option<std::os::fd::OwnedFd>,
    /// Everything pannus wrote so far.
    pub output: String,
    pub pid: i32,
}

impl Terminal {
    pub fn spawn(state: &State, args: &[&str], env: &[(&str, &str)]) -> Terminal {
        let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
        // pannus must not inherit the terminal's other end: closing it is the hang-up.
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&pty.master),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .unwrap();
        let slave = pty.slave;
        let child = Command::new("setsid")
            .arg("--ctty")
            .arg(env!("CARGO_BIN_EXE_pannus"))
            .args(args)
            .env("PANNUS_STATE_DIR", state.path())
            .envs(env.iter().copied())
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("pannus runs");
        // `setsid` execs pannus in place (it is no group leader), so this is pannus's pid.
        let pid = child.id() as i32;
        Terminal { child, master: Some(pty.master), output: String::new(), pid }
    }

    /// Reads what pannus wrote until the output holds `text`, for up to 60 s.
    pub fn expect(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.output.contains(text) {
            assert!(std::time::Instant::now() < deadline, "`{text}` never came; pannus wrote:\n{}", self.output);
            self.read_some(Duration::from_millis(200));
        }
    }

    fn read_some(&mut self, wait: Duration) {
        use std::os::fd::AsFd;
        let Some(master) = &self.master else { return };
        let mut fds = [nix::poll::PollFd::new(master.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        if !matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0) {
            std::thread::sleep(Duration::from_millis(10));
            return;
        }
        let mut buf = [0u8; 4096];
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(master), &mut buf) {
            Ok(n) if n > 0 => self.output.push_str(&String::from_utf8_lossy(&buf[..n])),
            // EIO: every slave descriptor is closed (pannus ended).
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }

    /// Reads what pannus wrote for a moment; `false` once it has ended.
    pub fn poll_output_or_end(&mut self) -> bool {
        self.read_some(Duration::from_millis(20));
        self.child.try_wait().unwrap().is_none()
    }

    /// Types `text` on the terminal (`\r` is Enter, `\x03` Ctrl-C).
    pub fn type_keys(&mut self, text: &str) {
        let master = self.master.as_ref().expect("the terminal is open");
        nix::unistd::write(master, text.as_bytes()).expect("the terminal takes the keys");
    }

    /// Closes the terminal, as a dropped SSH session does: the kernel hangs it up (SIGHUP).
    pub fn hang_up(&mut self) {
        self.master = None;
    }

    /// Sends `signal` to pannus.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), signal).unwrap();
    }

    /// Waits up to 60 s for pannus to end, reading what it writes; its exit code, or 128 + the
    /// signal that ended it.
    pub fn wait(&mut self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                self.read_some(Duration::from_millis(50));
                return st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0));
            }
            assert!(std::time::Instant::now() < deadline, "pannus never ended; it wrote:\n{}", self.output);
            self.read_some(Duration::from_millis(100));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 10 ms for up to 30 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The state letter of thread `tid` of `pid` (`/proc/PID/task/TID/stat`).
pub fn thread_state(pid: i32, tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The threads of `pid`.
pub fn threads(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// The journal's entries, as `pannus journal --json` gives them.
pub fn journal(state: &State) -> Vec<serde_json::Value> {
    state.pannus(&["journal", "--json"]).ok().json()["entries"].as_array().cloned().unwrap_or_default()
}

/// Runs `pannus ARGS` on a terminal with `PANNUS_TEST_PAUSE_AT=label`: the first time it stops
/// itself there, sends it `signal`; each time, lets it go on. Returns its exit code and output.
pub fn signal_while_paused(
    state: &State,
    args: &[&str],
    label: &str,
    signal: nix::sys::signal::Signal,
) -> (i32, String) {
    let env = [("PANNUS_TEST_PAUSE_AT", label), ("PANNUS_TEST_POINTS", "1")];
    let mut term = Terminal::spawn(state, args, &env);
    let mark = format!(": {label}\r\n");
    let mut paused = 0;
    // Each point is printed before pannus stops there.
    while term.poll_output_or_end() {
        while term.output.matches(&mark).count() > paused {
            wait_until("pannus pauses", || thread_state(term.pid, term.pid) == Some('T'));
            if paused == 0 {
                term.signal(signal);
            }
            paused += 1;
            term.signal(nix::sys::signal::Signal::SIGCONT);
        }
    }
    assert!(paused > 0, "pannus reached `{label}`: {}", term.output);
    let code = term.wait();
    (code, term.output.clone())
}

/// A copy of the `target_pie` fixture private to one test (its own inode: no other test's
/// processes run it), and manifests for it.
pub struct Build {
    pub exe: PathBuf,
    pub dir: PathBuf,
}

impl Build {
    pub fn new(state: &State) -> Build {
        let dir = state.path().join("build");
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("svc");
        std::fs::copy(bin("target_pie"), &exe).unwrap();
        Build { exe, dir }
    }
    pub fn start(&self) -> Proc {
        Proc::spawn(Command::new(&self.exe))
    }
    /// A manifest for module fixture `module` replacing `functions`, with `extra` lines.
    pub fn manifest(&self, patch: &str, module: &str, functions: &[(&str, &str)], extra: &str) -> PathBuf {
        let module = bin(module);
        let sha = pannus::sha256_file(&module).unwrap();
        let mut text = format!(
            "patch: {patch}\nversion: \"1.0\"\ntarget:\n  object: {}\n  build_id: {}\nmodule:\n  path: {}\n  sha256: {sha}\nfunctions:\n",
            self.exe.display(),
            build_id(&self.exe),
            module.display()
        );
        for (t, r) in functions {
            text.push_str(&format!("  - target: {t}\n    replacement: {r}\n"));
        }
        text.push_str(extra);
        let path = self.dir.join(format!("{patch}.yaml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}
