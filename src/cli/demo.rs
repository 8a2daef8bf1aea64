//! `pannus demo`: builds the bundled demo service and its patch (sources under
//! `manifests/demo/`), starts the service, and walks through apply, status and rollback on it,
//! showing the service's own output change and come back.

use crate::elf::{sha256_file, Object};
use crate::engine::{Engine, Session};
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SERVICE_C: &str = include_str!("../../manifests/demo/greeter.c");
const PATCH_C: &str = include_str!("../../manifests/demo/greeting-fix.c");
const POLISH_C: &str = include_str!("../../manifests/demo/greeting-polish.c");

/// The demo service, its patch module and a manifest for them, built in `dir`.
pub struct DemoBuild {
    pub service: PathBuf,
    pub module: PathBuf,
    pub manifest: PathBuf,
    /// The second patch, which requires the first.
    pub polish_manifest: PathBuf,
}

fn gcc(args: &[&str]) -> Result<()> {
    let out = Command::new("gcc")
        .args(args)
        .output()
        .map_err(|e| Error::other(format!("cannot run gcc to build the demo: {e}")).hint("install gcc"))?;
    if !out.status.success() {
        return Err(Error::other(format!("gcc failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(())
}

/// Builds the demo into `dir` and writes a manifest for it.
pub fn build(dir: &Path, trial: &str) -> Result<DemoBuild> {
    std::fs::create_dir_all(dir).map_err(|e| Error::other(format!("{}: {e}", dir.display())))?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::other(format!("{}: {e}", p.display())))?;
        Ok(p)
    };
    let src = write("greeter.c", SERVICE_C)?;
    let psrc = write("greeting-fix.c", PATCH_C)?;
    let service = dir.join("greeter");
    let module = dir.join("greeting-fix.so");
    gcc(&["-O2", "-g", "-Wl,--build-id", "-o", &service.to_string_lossy(), &src.to_string_lossy()])?;
    gcc(&["-O2", "-shared", "-fPIC", "-o", &module.to_string_lossy(), &psrc.to_string_lossy()])?;
    let polish_src = write("greeting-polish.c", POLISH_C)?;
    let polish = dir.join("greeting-polish.so");
    gcc(&["-O2", "-shared", "-fPIC", "-o", &polish.to_string_lossy(), &polish_src.to_string_lossy()])?;
    let build_id = Object::load(&service, "demo service")?.build_id.unwrap_or_default();
    let manifest_for = |id: &str, about: &str, module: &Path, replacement: &str, requires: &str| {
        let sha = sha256_file(module).map_err(|e| Error::other(e.to_string()))?;
        write(
            &format!("{id}.yaml"),
            &format!(
                "patch: {id}\nversion: \"1.0.0\"\ndescription: {about}\n\
                 target:\n  object: {}\n  build_id: {build_id}\n\
                 module:\n  path: {}\n  sha256: {sha}\n\
                 functions:\n  - target: greeting\n    replacement: {replacement}\n\
                 {requires}trial:\n  duration: {trial}\n  on_expiry: commit\n",
                service.display(),
                module.display()
            ),
        )
    };
    let manifest = manifest_for("greeting-fix", "Fix the typo in the greeting", &module, "greeting_fixed", "")?;
    let polish_manifest = manifest_for(
        "greeting-polish",
        "A warmer greeting, stacked on greeting-fix",
        &polish,
        "greeting_polished",
        "requires: [greeting-fix]\n",
    )?;
    Ok(DemoBuild { service, module, manifest, polish_manifest })
}

/// Starts the demo service with its output piped.
pub fn start(b: &DemoBuild) -> Result<Child> {
    Command::new(&b.service)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::other(format!("cannot start the demo service: {e}")))
}

/// The demo's folder: fresh and private (`mkdtemp`: mode 0700, a name no one can guess) under
/// the temporary folder, so that nobody else can have prepared it or change what root builds
/// and runs there. Removed when dropped.
struct DemoDir(PathBuf);

impl DemoDir {
    fn new() -> Result<DemoDir> {
        let tmp = std::env::temp_dir();
        let dir = nix::unistd::mkdtemp(&tmp.join("pannus-demo-XXXXXX"))
            .map_err(|e| Error::other(format!("cannot create a folder for the demo in {}: {e}", tmp.display())))?;
        Ok(DemoDir(dir))
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pause(yes: bool, what: &str) {
    if yes {
        println!("\n== {what}");
        return;
    }
    print!("\n== {what} (Enter to continue) ");
    let _ = std::io::stdout().flush();
    let mut s = String::new();
    let _ = std::io::stdin().lock().read_line(&mut s);
}

/// Builds and starts the demo service, then opens the console on it with the demo's manifest
/// ready in the apply wizard. The service's output goes to a log whose last line the console
/// shows, so the patch's effect is visible.
pub fn console(engine: &Engine) -> Result<()> {
    let demo = DemoDir::new()?;
    let dir = &demo.0;
    eprintln!("building the demo service and its patch in {}", dir.display());
    let b = build(dir, "2m")?;
    let log = dir.join("greeter.log");
    let out = std::fs::File::create(&log).map_err(|e| Error::other(format!("{}: {e}", log.display())))?;
    let mut child = Command::new(&b.service)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::other(format!("cannot start the demo service: {e}")))?;
    let pid = child.id() as i32;
    let manifests = dir.join("manifests");
    let result = std::fs::create_dir_all(&manifests)
        .map_err(|e| Error::other(e.to_string()))
        .and_then(|()| {
            for m in [&b.manifest, &b.polish_manifest] {
                if let Some(name) = m.file_name() {
                    std::fs::copy(m, manifests.join(name)).map_err(|e| Error::other(e.to_string()))?;
                }
            }
            Ok(())
        })
        .and_then(|()| {
            crate::tui::run(engine, crate::tui::Options { manifests, select: Some(pid), watch_output: Some(log) })
        });
    let _ = child.kill();
    let _ = child.wait();
    result
}

pub fn run(engine: &Engine, yes: bool) -> Result<()> {
    let demo = DemoDir::new()?;
    println!("building the demo service and its patch in {}", demo.0.display());
    let b = build(&demo.0, "2m")?;
    let mut child = start(&b)?;
    let pid = child.id() as i32;
    let lines = child.stdout.take().map(BufReader::new);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    if let Some(lines) = lines {
        std::thread::spawn(move || {
            for l in lines.lines().map_while(std::result::Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    let show = |n: usize| {
        for _ in 0..n {
            if let Ok(l) = rx.recv_timeout(Duration::from_secs(3)) {
                println!("  service says: {l}");
            }
        }
    };
    let result = (|| -> Result<()> {
        println!("demo service running as pid {pid}");
        show(2);
        let m = Manifest::load(&b.manifest)?;
        pause(yes, &format!("apply {} to pid {pid}", b.manifest.display()));
        {
            let mut s = Session::open(engine, pid)?;
            let mut obs = super::CliObserver { yes: true, quiet: false };
            let rec = s.apply(&m, &mut obs)?.record;
            println!("patch `{}` is {}", rec.patch, rec.state);
        }
        while rx.try_recv().is_ok() {}
        show(3);
        pause(yes, &format!("status of pid {pid}, read from the process itself"));
        super::dispatch(engine, super::Command::Status { pid: Some(pid), all: false, json: false })?;
        pause(yes, "roll back");
        {
            let mut s = Session::open(engine, pid)?;
            let mut obs = super::CliObserver { yes: true, quiet: false };
            s.rollback(None, false, &mut obs)?;
        }
        while rx.try_recv().is_ok() {}
        show(2);
        println!("\nthe service never stopped; the journal is at {}", engine.journal().path().display());
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
