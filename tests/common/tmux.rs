//! The real console binary, run in tmux: keys sent, screens captured.

use super::State;
use std::process::Command;
use std::time::{Duration, Instant};

/// The real console binary in a tmux session of its own, started on a test's state folder.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn start(state: &State, w: u16, h: u16) -> Tmux {
        Tmux::start_env(state, w, h, "")
    }
    /// [`Tmux::start`] with more environment variables (`NAME=VALUE ...`, shell-quoted).
    pub fn start_env(state: &State, w: u16, h: u16, env: &str) -> Tmux {
        let socket =
            format!("pannus-test-{}-{}", std::process::id(), state.path().file_name().unwrap().to_string_lossy());
        // The console's exit status goes to `console.exit` in the state folder.
        let cmd = format!(
            "env NO_COLOR=1 PANNUS_STATE_DIR={dir} {env} {} console --manifests {dir}; echo $? > {dir}/console.exit",
            env!("CARGO_BIN_EXE_pannus"),
            dir = state.path().display(),
        );
        let ok = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "t", "-x", &w.to_string(), "-y", &h.to_string(), &cmd])
            .status()
            .expect("tmux runs")
            .success();
        assert!(ok, "tmux session started");
        Tmux { socket }
    }
    pub fn keys(&self, keys: &[&str]) {
        for k in keys {
            Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", "t", k]).status().unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    /// Narrows the process list to process `pid` with the search (`/` then the pid, a key at a
    /// time as an engineer types it) and returns the screen once it shows the one match.
    pub fn search_pid(&self, pid: i32) -> String {
        self.keys(&["/"]);
        for c in pid.to_string().chars() {
            self.keys(&[&c.to_string()]);
        }
        self.wait_for("1 match(es)")
    }

    pub fn screen(&self) -> String {
        let out = Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Waits until the screen contains `text`.
    pub fn wait_for(&self, text: &str) -> String {
        self.wait_until(&format!("`{text}`"), |s| s.contains(text))
    }
    /// Waits until `ready` holds for the screen.
    pub fn wait_until(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if ready(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "{what} never appeared on:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    pub fn resize(&self, w: u16, h: u16) {
        let ok = Command::new("tmux")
            .args(["-L", &self.socket, "resize-window", "-t", "t", "-x", &w.to_string(), "-y", &h.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux resizes the window");
    }
    /// The console's pid: the `pannus` process under the pane's shell.
    pub fn console_pid(&self) -> i32 {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "display-message", "-p", "-t", "t", "#{pane_pid}"])
            .output()
            .unwrap();
        let shell: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("the pane's pid");
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
            let ppid: i32 = rest.split(' ').nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            if ppid == shell && stat.contains("(pannus)") {
                return pid;
            }
        }
        panic!("no pannus under the pane's shell {shell}");
    }
    /// The terminal vanishes: the tmux server and every pane's terminal with it, as when the
    /// SSH session or the tmux server under the console dies.
    pub fn kill_server(&self) {
        let _ =
            Command::new("tmux").args(["-L", &self.socket, "kill-server"]).stderr(std::process::Stdio::null()).status();
    }
    pub fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", "t"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ =
            Command::new("tmux").args(["-L", &self.socket, "kill-server"]).stderr(std::process::Stdio::null()).status();
    }
}
