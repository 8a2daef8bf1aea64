//! The processes pannus can see: one walk of `/proc`, one row per process. Nothing here stops
//! a process: a registry is found in `/proc/PID/maps` and read through `/proc/PID/mem`.
//!
//! pannus's own process is never listed, and rows come in increasing pid order.

use crate::registry::{self, PatchRecord};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

/// A process id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Pid(i32);

impl Pid {
    pub const fn get(self) -> i32 {
        self.0
    }
}

impl From<i32> for Pid {
    fn from(pid: i32) -> Pid {
        Pid(pid)
    }
}

impl FromStr for Pid {
    type Err = ParseIntError;
    fn from_str(s: &str) -> Result<Pid, ParseIntError> {
        s.parse().map(Pid)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A process, with the patches of its registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub pid: Pid,
    /// The command name (`Name:` of `/proc/PID/status`).
    pub name: String,
    /// The real user id.
    pub uid: u32,
    /// The user name of `uid`, when the walk was asked to resolve names.
    pub user: Option<String>,
    pub threads: u32,
    /// The path of the executable; empty when it cannot be read (a kernel thread, a zombie).
    pub exe: String,
    /// The architecture it runs, from its executable's header (`None` when unread: a kernel
    /// thread, a zombie, no permission).
    pub arch: Option<pannus_kernel::Arch>,
    /// A kernel thread: the kernel's `PF_KTHREAD` flag (`/proc/PID/stat`), not the lack of an
    /// executable, which a zombie shares.
    pub kernel_thread: bool,
    /// The state letter of `/proc/PID/stat` (`R`, `S`, `D`, `Z`, `T`, ...); `?` unread.
    pub state: char,
    /// The GNU build-id of the executable it runs, when the walk's caller asked for it
    /// ([`BuildIds::fill`], the console).
    pub build_id: Option<String>,
    /// Every patch in the process's registry, in application order (rolled-back ones included).
    pub patches: Vec<PatchRecord>,
}

impl Process {
    /// The patches whose code is (or may be) reachable in the process.
    pub fn applied(&self) -> impl Iterator<Item = &PatchRecord> {
        self.patches.iter().filter(|p| p.state.is_applied())
    }

    /// The most recently applied patch.
    pub fn latest(&self) -> Option<&PatchRecord> {
        self.applied().max_by_key(|p| p.seq)
    }

    /// The process it was forked from, when its applied patches are copies the fork gave it
    /// (see [`PatchRecord::forked_from`]).
    pub fn forked_from(&self) -> Option<i32> {
        self.applied().find_map(|r| r.forked_from(self.pid.get()))
    }

    /// The owner's user name, or the uid when names were not looked up.
    pub fn owner(&self) -> String {
        self.user.clone().unwrap_or_else(|| self.uid.to_string())
    }
}

/// `procs` in their order, except that each process forked from another one in the list comes
/// right after it (see [`Process::forked_from`]).
pub fn forks_after_parents<T>(procs: Vec<T>, of: impl Fn(&T) -> &Process) -> Vec<T> {
    let pids: std::collections::HashSet<i32> = procs.iter().map(|p| of(p).pid.get()).collect();
    let parent_of = |p: &T| of(p).forked_from().filter(|f| pids.contains(f) && *f != of(p).pid.get());
    // The children of each parent in the list, by index, in the list's order.
    let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        match parent_of(p) {
            Some(parent) => children.entry(parent).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut slots: Vec<Option<T>> = procs.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    // Each process without a parent in the list, then its children, theirs, and so on.
    let mut stack: Vec<usize> = roots.into_iter().rev().collect();
    while let Some(i) = stack.pop() {
        let Some(p) = slots[i].take() else { continue };
        if let Some(kids) = children.get(&of(&p).pid.get()) {
            stack.extend(kids.iter().rev());
        }
        out.push(p);
    }
    // What no parent reached (records that name each other): as they were.
    out.extend(slots.into_iter().flatten());
    out
}

/// Which processes a walk lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every process.
    All,
    /// Only processes with at least one applied patch.
    Patched,
}

/// User names by uid, looked up once each.
#[derive(Debug, Clone, Default)]
pub struct UserNames(HashMap<u32, String>);

impl UserNames {
    /// The name of `uid`, or the number itself when it has none.
    pub fn name(&mut self, uid: u32) -> &str {
        self.0.entry(uid).or_insert_with(|| {
            nix::unistd::User::from_uid(uid.into()).ok().flatten().map(|u| u.name).unwrap_or_else(|| uid.to_string())
        })
    }
}

/// The build-ids of the executables processes run, each file read once (by device, inode, size
/// and modification time) for as long as a process runs it.
#[derive(Debug, Default)]
pub struct BuildIds(HashMap<(u64, u64, u64, i64), Option<String>>);

impl BuildIds {
    /// Fills in the build-id of each row's executable (the file it runs, through
    /// `/proc/PID/exe`, replaced on disk or not): one `stat` per process, and the headers and
    /// notes of a file not seen before. Forgets the files no row runs any more.
    pub fn fill(&mut self, rows: &mut [Process]) {
        use std::os::unix::fs::MetadataExt;
        let mut seen = HashMap::new();
        for r in rows.iter_mut().filter(|r| !r.exe.is_empty()) {
            let exe = format!("/proc/{}/exe", r.pid);
            let Ok(m) = std::fs::metadata(&exe) else { continue };
            let key = (m.dev(), m.ino(), m.size(), m.mtime());
            let id = match self.0.get(&key) {
                Some(id) => id.clone(),
                None => std::fs::File::open(&exe).ok().and_then(|f| crate::elf::build_id_of(&f)),
            };
            r.build_id.clone_from(&id);
            seen.insert(key, id);
        }
        self.0 = seen;
    }
}

/// Every pid in `/proc` but pannus's own, in increasing order.
pub fn pids() -> Vec<Pid> {
    let me = Pid(std::process::id() as i32);
    let mut pids: Vec<Pid> = std::fs::read_dir("/proc")
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    pids.retain(|&p| p != me);
    pids.sort_unstable();
    pids
}

/// The processes of `scope`, with user names looked up in `users` when given.
///
/// Costs three small reads per process (`maps`, whose text tells whether there is a registry,
/// `status`, and the executable's first 20 bytes for its architecture) and the executable's
/// link, plus the registry of each process that has one.
/// With [`Scope::Patched`], a process without a registry costs the `maps` read only.
pub fn list(scope: Scope, mut users: Option<&mut UserNames>) -> Vec<Process> {
    let mut out = Vec::new();
    for pid in pids() {
        let patches = registry::read_process(pid.get());
        let patches = match scope {
            Scope::All => patches.unwrap_or_default(),
            Scope::Patched => match patches {
                Some(p) if p.iter().any(|r| r.state.is_applied()) => p,
                _ => continue,
            },
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let status = Status::parse(&text);
        let user = users.as_deref_mut().map(|u| u.name(status.uid).to_string());
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let (state, flags) = stat.as_deref().and_then(stat_fields).unwrap_or(('?', 0));
        out.push(Process {
            pid,
            name: status.name.to_string(),
            uid: status.uid,
            user,
            threads: status.threads,
            arch: if exe.is_empty() { None } else { pannus_kernel::Arch::of_process(pid.get()) },
            exe,
            kernel_thread: flags & PF_KTHREAD != 0,
            state,
            build_id: None,
            patches,
        });
    }
    out
}

/// The fields of `/proc/PID/status` a row shows.
#[derive(Debug, PartialEq, Eq)]
struct Status<'a> {
    name: &'a str,
    uid: u32,
    threads: u32,
}

impl<'a> Status<'a> {
    /// Reads the text of `/proc/PID/status`; a missing or unreadable field is empty or 0.
    fn parse(text: &'a str) -> Status<'a> {
        let mut s = Status { name: "", uid: 0, threads: 0 };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            match key {
                "Name" => s.name = value,
                "Uid" => s.uid = value.split_whitespace().next().and_then(|u| u.parse().ok()).unwrap_or(0),
                "Threads" => {
                    s.threads = value.parse().unwrap_or(0);
                    break;
                }
                _ => {}
            }
        }
        s
    }
}

/// The kernel's flag for its own threads (`include/linux/sched.h`).
const PF_KTHREAD: u64 = 0x0020_0000;

/// The state letter and the flags (fields 3 and 9) of the text of `/proc/PID/stat`.
fn stat_fields(stat: &str) -> Option<(char, u64)> {
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let flags = rest.nth(5)?.parse().ok()?;
    Some((state, flags))
}

/// When process `pid` started (clock ticks after boot, field 22 of `/proc/PID/stat`): with the
/// pid, what names one process, as pids are reused. `None` when it does not exist.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_field(pid, 19)
}

/// The parent of process `pid` (field 4 of `/proc/PID/stat`).
pub fn parent(pid: i32) -> Option<i32> {
    stat_field(pid, 1)
}

/// Field `n` after the command name of `/proc/PID/stat` (0 is the state), parsed. The command
/// name may hold spaces and parentheses: the fields follow its last `)`.
fn stat_field<T: std::str::FromStr>(pid: i32, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(n)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let text = "Name:\tsip proxy\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t812\nPid:\t812\n\
                    Uid:\t1001\t1002\t1002\t1002\nGid:\t100\t100\t100\t100\nThreads:\t12\nSigQ:\t0/63\n";
        assert_eq!(Status::parse(text), Status { name: "sip proxy", uid: 1001, threads: 12 });
    }

    #[test]
    fn status_missing_fields() {
        assert_eq!(Status::parse(""), Status { name: "", uid: 0, threads: 0 });
        assert_eq!(Status::parse("Name:\tx\nUid:\tbad\n"), Status { name: "x", uid: 0, threads: 0 });
    }

    #[test]
    fn stat_state_and_flags() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 12 0 0";
        assert_eq!(stat_fields(kthreadd), Some(('S', 2_129_984)));
        assert_ne!(2_129_984 & PF_KTHREAD, 0);
        // A name with spaces and parentheses; a zombie, which has no PF_KTHREAD.
        let zombie = "4242 (a (b) c) Z 1 4242 4242 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0";
        assert_eq!(stat_fields(zombie), Some(('Z', 4_227_084)));
        assert_eq!(4_227_084 & PF_KTHREAD, 0);
        assert_eq!(stat_fields("7 (x) R"), None);
        assert_eq!(stat_fields(""), None);
    }

    #[test]
    fn the_walk_tells_kernel_threads_by_their_flag() {
        let all = list(Scope::All, None);
        assert!(all.iter().any(|p| p.pid == Pid(2) && p.kernel_thread), "kthreadd is a kernel thread");
        let parent = all.iter().find(|p| p.pid.get() == nix::unistd::getppid().as_raw());
        assert!(parent.is_none_or(|p| !p.kernel_thread), "the test's parent is not");
    }

    #[test]
    fn build_ids_of_the_running_executables() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let mut rows = list(Scope::All, None);
        BuildIds::default().fill(&mut rows);
        let row = rows.iter().find(|p| p.pid.get() == child.id() as i32).cloned();
        let _ = child.kill();
        let _ = child.wait();
        let row = row.expect("the child is listed");
        let parsed = crate::elf::Object::load(std::path::Path::new(&row.exe), "sleep").unwrap().build_id;
        assert_eq!(row.build_id, parsed, "{}", row.exe);
        assert!(rows.iter().filter(|p| p.kernel_thread).all(|p| p.build_id.is_none()));
    }

    #[test]
    fn pid_forms() {
        let pid: Pid = "812".parse().unwrap();
        assert_eq!(pid, Pid::from(812));
        assert_eq!(pid.get(), 812);
        assert_eq!(pid.to_string(), "812");
        assert_eq!(serde_json::to_string(&pid).unwrap(), "812");
        assert!("self".parse::<Pid>().is_err());
    }

    #[test]
    fn owner_is_the_name_or_the_uid() {
        let mut p = Process {
            pid: Pid(812),
            name: "sipd".into(),
            uid: 1001,
            user: None,
            threads: 1,
            exe: String::new(),
            arch: None,
            kernel_thread: false,
            state: 'S',
            build_id: None,
            patches: vec![],
        };
        assert_eq!(p.owner(), "1001");
        p.user = Some("telco".into());
        assert_eq!(p.owner(), "telco");
    }

    #[test]
    fn walk_skips_pannus_and_sorts() {
        let me = Pid::from(std::process::id() as i32);
        let all = list(Scope::All, None);
        assert!(!all.iter().any(|p| p.pid == me));
        assert!(all.windows(2).all(|w| w[0].pid < w[1].pid));
        assert!(all.iter().all(|p| p.user.is_none()));
        let mut users = UserNames::default();
        let named = list(Scope::All, Some(&mut users));
        assert!(named.iter().all(|p| p.user.is_some()));
        assert!(list(Scope::Patched, None).iter().all(|p| p.applied().next().is_some()));
    }
}
