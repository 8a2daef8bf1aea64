//! A `pannus daemon` run by a test, and patches installed for it as `pannus install` leaves
//! them.

use super::{wait_until, State};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// Installs the patch of `manifest` in `state` as `pannus install` does: root's copies of the
/// manifest (its module path rewritten) and module under `installed/ID/`, and its state.
pub fn install(state: &State, manifest: &Path, st: &str, deadline: Option<&str>) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let id = text.lines().find_map(|l| l.strip_prefix("patch: ")).unwrap().trim().to_string();
    let dir = state.path().join("installed").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let module = text.lines().find_map(|l| l.strip_prefix("  path: ")).unwrap().trim().to_string();
    std::fs::copy(&module, dir.join("module.so")).unwrap();
    let copy = dir.join("module.so");
    let text = text.replace(&format!("  path: {module}"), &format!("  path: {}", copy.display()));
    std::fs::write(dir.join("manifest.yaml"), text).unwrap();
    let deadline = deadline.map_or("null".to_string(), |d| format!("\"{d}\""));
    std::fs::write(dir.join("state.json"), format!("{{\"state\": \"{st}\", \"trial_deadline\": {deadline}}}")).unwrap();
}

/// A running `pannus daemon`, its standard error collected.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start(state: &State, args: &[&str]) -> Daemon {
        Daemon::start_env(state, args, &[])
    }

    pub fn start_env(state: &State, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pannus"))
            .arg("daemon")
            .args(args)
            .env("PANNUS_STATE_DIR", state.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pannus daemon starts");
        let log = Arc::new(Mutex::new(String::new()));
        let err = BufReader::new(child.stderr.take().unwrap());
        let to = Arc::clone(&log);
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                eprintln!("[daemon] {l}");
                to.lock().unwrap().push_str(&(l + "\n"));
            }
        });
        let d = Daemon { child, log };
        wait_until("the daemon watches", || d.log().contains("installed patches:"));
        d
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Its exit code, waiting up to 30 s (128 + the signal that ended it).
    pub fn wait(&mut self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let mut code = None;
        wait_until("the daemon ends", || {
            code = self.child.try_wait().unwrap().map(|st| st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
            code.is_some()
        });
        code.unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
