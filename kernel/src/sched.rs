use crate::thread::schedstat;
use nix::libc;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Orders [`SpareCpu`]'s watchdog, which reads a thread's policy and moves it from
/// `SCHED_IDLE` to the normal one, against the raise to `SCHED_FIFO` for the stop window, so
/// that the watchdog never lowers the window. Only ever held at the normal policy or above: a
/// thread at `SCHED_IDLE` holding it could be kept off the CPUs, and the watchdog with it.
static POLICY: Mutex<()> = Mutex::new(());

fn policy_lock() -> MutexGuard<'static, ()> {
    POLICY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Raises the calling thread to `SCHED_FIFO` for the stop-the-world window and restores its
/// policy when dropped. On a small machine the stop is dominated by the scheduler: each resumed
/// thread preempts the patcher, so running the window at real-time priority shortens the time the
/// target is stopped by an order of magnitude. Without the privilege it does nothing.
pub struct RealtimeGuard {
    saved: Option<(libc::c_int, libc::sched_param)>,
}

impl RealtimeGuard {
    pub fn raise() -> RealtimeGuard {
        let new = libc::sched_param { sched_priority: 50 };
        // SAFETY: sched_getscheduler/sched_getparam/sched_setscheduler on pid 0 (the calling
        // thread) only read or write the `sched_param` we pass by valid pointer.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut old = libc::sched_param { sched_priority: 0 };
            if policy < 0 || libc::sched_getparam(0, &mut old) != 0 {
                return RealtimeGuard { saved: None };
            }
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &new) != 0 {
                return RealtimeGuard { saved: None };
            }
            // Raised first, then again under the lock: a watchdog that read `SCHED_IDLE` just
            // before the first raise and lowered the thread after it is undone here.
            let _policy = policy_lock();
            libc::sched_setscheduler(0, libc::SCHED_FIFO, &new);
            RealtimeGuard { saved: Some((policy, old)) }
        }
    }
}

impl Drop for RealtimeGuard {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.saved {
            // Without the lock, which a thread back at SCHED_IDLE must not hold: a watchdog
            // that finds the window over moves the thread on its next look.
            // SAFETY: as above; `param` is a valid sched_param saved by `raise`.
            unsafe {
                libc::sched_setscheduler(0, policy, &param);
            }
        }
    }
}

/// Moves process `pid` (a helper pannus just started) to `SCHED_IDLE`: it then runs only on a
/// CPU nobody else wants, so that what it does never delays a thread of the service waking up.
/// Returns whether it took effect.
pub fn background(pid: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the `sched_param` passed by valid pointer; `pid` names a
    // process, and a wrong one only makes the call fail.
    unsafe { libc::sched_setscheduler(pid, libc::SCHED_IDLE, &param) == 0 }
}

/// pannus's policy when the CPUs are saturated (see [`saturated`]): `SCHED_FIFO` at the lowest
/// priority (the stop window runs above it, at [`RealtimeGuard`]'s), with `SCHED_RESET_ON_FORK`
/// so that the processes and threads it starts (a health check) begin at the normal policy.
///
/// With a thousand of the service's threads runnable on two CPUs, a thread at the normal policy
/// gets a thousandth of a CPU: pannus's few milliseconds of work would take seconds, each of
/// them a second the service lives with a half-done patch or waits for a rollback. At this
/// policy pannus runs as soon as it is runnable and is done in milliseconds; it mostly waits
/// for the target, and its CPU time, all it takes from the service, is the same as at any
/// other policy.
fn urgent(tid: i32) -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler reads the `sched_param` passed by valid pointer; a wrong tid
    // only makes it fail.
    unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) == 0 }
}

/// Whether the calling thread runs at the urgent policy (see [`urgent`]), or at another
/// real-time one (pannus started with `chrt`).
pub fn is_urgent() -> bool {
    let policy = current_policy() & !libc::SCHED_RESET_ON_FORK;
    policy == libc::SCHED_FIFO || policy == libc::SCHED_RR
}

/// Gets the calling thread ready for work that has to happen on time (a trial's health check
/// or expiry): from `SCHED_IDLE` to the normal policy, or to the urgent one (see [`urgent`])
/// when the CPUs are saturated. Returns whether it now runs at a policy other
/// than `SCHED_IDLE`.
pub fn on_duty() -> bool {
    if saturated() && !is_urgent() && (SpareCpu::active() || current_policy() == libc::SCHED_OTHER) {
        let _policy = policy_lock();
        if urgent(0) {
            return true;
        }
    }
    foreground()
}

/// [`on_duty`] when the CPUs are saturated now, for a thread that mostly sleeps
/// (the trial watcher between two looks at the process): at `SCHED_IDLE`, or even at the normal
/// policy, each of its wake-ups would wait for seconds on saturated CPUs, and the deadline with
/// them. At the urgent policy a wake-up takes the CPU for the few microseconds it needs.
pub fn keep_up() {
    if saturated() {
        on_duty();
    }
}

/// Makes `command` start at the urgent policy (see [`urgent`]) when the calling thread runs at
/// it: `SCHED_RESET_ON_FORK` would start it at the normal policy, and the caller waits for its
/// `exec`, which on saturated CPUs takes seconds there.
pub fn keep_urgent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    if !is_urgent() {
        return;
    }
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls may be made: it makes one system call (sched_setscheduler, with a
    // `sched_param` on its own stack) and touches nothing a thread of the parent could have left
    // locked.
    unsafe {
        command.pre_exec(|| {
            urgent(0);
            Ok(())
        });
    }
}

fn current_policy() -> libc::c_int {
    // SAFETY: sched_getscheduler on pid 0 (the calling thread) only reads its policy.
    unsafe { libc::sched_getscheduler(0) }
}

/// A thread of the target borrowed by pannus, run at nice -20 while it does pannus's work (see
/// [`Hastened::thread`]).
pub(crate) struct Hastened {
    tid: i32,
    nice: libc::c_int,
}

impl Hastened {
    /// Gives thread `tid` (which the caller has attached: its tid cannot be reused meanwhile)
    /// nice -20 if it runs at the normal or batch policy: each system call pannus has it make
    /// is a round trip that waits for the thread to get a CPU, and on CPUs the service keeps
    /// saturated a thread at its usual weight waits behind hundreds of others each time. At
    /// nice -20 it runs as soon as it wakes, does pannus's few microseconds of work, and stops
    /// again. `None` when there was nothing to do, or no privilege to do it.
    pub(crate) fn thread(tid: i32) -> Option<Hastened> {
        // SAFETY: sched_getscheduler only reads the policy of `tid`; a wrong tid makes it fail.
        let policy = unsafe { libc::sched_getscheduler(tid) } & !libc::SCHED_RESET_ON_FORK;
        if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
            return None;
        }
        nix::errno::Errno::clear();
        // SAFETY: getpriority only reads the nice value of thread `tid` (PRIO_PROCESS names a
        // thread on Linux); -1 is a valid answer, told from an error by errno.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        if nice == -1 && nix::errno::Errno::last_raw() != 0 || nice <= -20 {
            return None;
        }
        // SAFETY: setpriority changes the nice value of thread `tid` only.
        (unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -20) } == 0)
            .then_some(Hastened { tid, nice })
    }

    /// Gives the thread its own nice value back; called while the thread is still attached.
    pub(crate) fn restore(self) {
        // SAFETY: as in `thread`; `nice` is the thread's own value, read there.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, self.tid as libc::id_t, self.nice) };
    }
}

/// Moves the calling thread from `SCHED_IDLE` (see [`background`]) back to the normal
/// policy (`SCHED_OTHER`, its nice value unchanged) before it does work that has to happen on
/// time. A thread under any other policy is left as it is. Returns whether it now runs at a
/// policy other than `SCHED_IDLE`.
pub fn foreground() -> bool {
    // SAFETY: sched_getscheduler on pid 0 (the calling thread) only reads its policy.
    if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_IDLE {
        return true;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread reads the `sched_param` passed by valid
    // pointer.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == 0 }
}

/// How much longer than it ran a thread at `SCHED_IDLE` under [`SpareCpu`] may wait for a CPU
/// before the watchdog gives it the normal policy back: pannus works at least about half as
/// fast as at the normal policy, give or take this.
const SPARE_BUDGET: Duration = Duration::from_millis(3);
/// How often the watchdog looks while the thread, or a child it waits for, is runnable; it looks
/// less often (up to [`SPARE_TICK_IDLE`]) while they are blocked, waiting for the target or an
/// answer.
const SPARE_TICK: Duration = Duration::from_millis(2);
const SPARE_TICK_IDLE: Duration = Duration::from_millis(32);
/// How long a thread may stay runnable without running (see [`Starving`]).
const SPARE_STUCK: Duration = Duration::from_millis(12);

/// Runs the calling thread, and the processes it starts meanwhile, on spare CPU time
/// (`SCHED_IDLE`) for as long as the guard lives, then restores the normal policy.
///
/// pannus's own work before and after the stop (pre-flight, loading, starting the trial
/// watcher) takes a CPU for a few milliseconds. Under the normal policy a thread of the service
/// that wakes up on that CPU waits behind it for up to a time slice (about 1.5 ms on a
/// 2-CPU machine), even while another CPU idles; at `SCHED_IDLE` it takes the CPU at once. The
/// stop window itself still runs at `SCHED_FIFO` ([`RealtimeGuard`]).
///
/// It is only entered from the normal policy, when pannus may return to it (`CAP_SYS_NICE`,
/// which it has as root), and when the machine has CPU time to spare at all (no more runnable
/// threads than twice the CPUs). A watchdog thread makes sure pannus is never starved on CPUs
/// the service keeps busy: once the thread, or a process it started, has waited for a CPU 3 ms
/// longer than it has run (from `/proc/.../schedstat`), or has been waiting for one for 12 ms,
/// the watchdog gives it the normal policy back for good, or the urgent one (see [`urgent`])
/// when the CPUs are saturated by then. The watchdog itself runs at the urgent
/// policy: at the normal one, it would be starved exactly when it is needed.
///
/// On saturated CPUs (see [`saturated`]) the guard runs the thread at the urgent policy
/// instead, for as long as it lives; on CPUs merely busy, at the normal policy.
pub struct SpareCpu {
    entered: Entered,
    /// The policy belongs to the thread that entered: the guard must be dropped there.
    _thread: PhantomData<*const ()>,
}

/// What [`SpareCpu::enter`] did.
#[derive(Clone, Copy)]
enum Entered {
    Nothing,
    /// `SCHED_IDLE`, under a watchdog.
    Idle,
    /// The urgent policy; the policy and parameter to restore.
    Urgent(libc::c_int, libc::sched_param),
}

/// A running watchdog, and what it tells the thread it watches.
struct Watchdog {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    /// Set once the watchdog has given the thread the normal policy back: it stays there.
    starved: AtomicBool,
}

thread_local! {
    /// The watchdog of the [`SpareCpu`] guard this thread is under, while it runs.
    static WATCHDOG: RefCell<Option<Watchdog>> = const { RefCell::new(None) };
}

impl SpareCpu {
    /// Enters, from the normal policy, with the privilege to return to it, and when there is
    /// CPU time to spare at all (see the type's documentation); otherwise the guard does
    /// nothing.
    pub fn enter() -> SpareCpu {
        if saturated() {
            return SpareCpu::enter_urgent();
        }
        if !some_cpu_to_spare() {
            return SpareCpu::none();
        }
        SpareCpu::enter_whatever_the_load()
    }

    fn enter_whatever_the_load() -> SpareCpu {
        if current_policy() != libc::SCHED_OTHER || !may_leave_idle() {
            return SpareCpu::none();
        }
        let entered = WATCHDOG.with(|w| w.borrow().is_none()) && start();
        SpareCpu { entered: if entered { Entered::Idle } else { Entered::Nothing }, _thread: PhantomData }
    }

    /// The urgent policy for as long as the guard lives (see [`urgent`]), entered from the
    /// normal policy only.
    fn enter_urgent() -> SpareCpu {
        let policy = current_policy();
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_getparam on pid 0 (the calling thread) writes the `sched_param` passed
        // by valid pointer.
        if policy != libc::SCHED_OTHER || unsafe { libc::sched_getparam(0, &mut param) } != 0 || !urgent(0) {
            return SpareCpu::none();
        }
        SpareCpu { entered: Entered::Urgent(policy, param), _thread: PhantomData }
    }

    fn none() -> SpareCpu {
        SpareCpu { entered: Entered::Nothing, _thread: PhantomData }
    }

    /// Whether the calling thread runs at `SCHED_IDLE` now.
    pub fn active() -> bool {
        // SAFETY: sched_getscheduler on pid 0 (the calling thread) only reads its policy.
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
    }

    /// Returns the calling thread to the normal policy, and ends its watchdog, until the
    /// returned guard is dropped; nothing when it is not under a `SpareCpu` guard, or was given
    /// the normal policy back for good.
    ///
    /// For the stages that mostly wait for the borrowed thread of the target: little of pannus's
    /// own CPU time to hand over there, and its round trips through ptrace take two to three
    /// times as long while the watchdog thread exists.
    pub fn pause() -> Paused {
        let starved = WATCHDOG.with(|w| w.borrow_mut().take()).map(finish);
        Paused { resume: starved == Some(false), _thread: PhantomData }
    }
}

impl Drop for SpareCpu {
    fn drop(&mut self) {
        match self.entered {
            Entered::Nothing => {}
            Entered::Idle => {
                if let Some(watchdog) = WATCHDOG.with(|w| w.borrow_mut().take()) {
                    finish(watchdog);
                }
                // Given the urgent policy by the watchdog: back to the one the guard was entered
                // from.
                if current_policy() == libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK {
                    let param = libc::sched_param { sched_priority: 0 };
                    // SAFETY: sched_setscheduler on the calling thread reads the `sched_param`
                    // passed by valid pointer.
                    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
                }
            }
            Entered::Urgent(policy, param) => {
                if is_urgent() {
                    // SAFETY: sched_setscheduler on the calling thread reads the `sched_param`
                    // saved by `enter_urgent`, passed by valid pointer.
                    unsafe { libc::sched_setscheduler(0, policy, &param) };
                }
            }
        }
    }
}

/// See [`SpareCpu::pause`].
pub struct Paused {
    resume: bool,
    _thread: PhantomData<*const ()>,
}

impl Drop for Paused {
    fn drop(&mut self) {
        if self.resume {
            start();
        }
    }
}

/// Starts the watchdog of the calling thread and moves the thread to `SCHED_IDLE`. Returns
/// whether it did.
fn start() -> bool {
    let pid = std::process::id() as i32;
    let tid = nix::unistd::gettid().as_raw();
    if schedstat(pid, tid).is_none() {
        return false;
    }
    let shared = Arc::new(Shared::default());
    // Started before the switch: a thread inherits its creator's policy.
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new().name("pannus-spare-cpu".into()).spawn(move || watch(pid, tid, &shared))
    };
    let Ok(thread) = thread else { return false };
    WATCHDOG.with(|w| *w.borrow_mut() = Some(Watchdog { shared, thread }));
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread reads the `sched_param` passed by valid
    // pointer. If it fails, `finish` finds the policy unchanged.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    // A thread of the service that woke up on this CPU before the switch would still wait for
    // the rest of pannus's time slice: the switch alone does not hand the CPU over.
    std::thread::yield_now();
    true
}

/// Ends the watchdog and returns the calling thread to the normal policy. Returns whether the
/// watchdog had found it starved.
fn finish(watchdog: Watchdog) -> bool {
    *watchdog.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    watchdog.shared.wake.notify_all();
    let _ = watchdog.thread.join();
    if SpareCpu::active() {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: as in `start`; back to the normal policy the guard was entered from.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    }
    watchdog.shared.starved.load(Ordering::Relaxed)
}

/// The watchdog of [`SpareCpu`]: gives thread `tid`, and each process it started, the normal
/// policy back once it is starved at `SCHED_IDLE` (see [`Starving`]).
fn watch(pid: i32, tid: i32, shared: &Shared) {
    // Without the privilege it stays at the normal policy, and its guard is not entered at all.
    urgent(0);
    let mut me = Starving::new(pid, tid);
    let mut children: HashMap<i32, Starving> = HashMap::new();
    let mut tick = SPARE_TICK;
    let mut flag = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        flag = match shared.wake.wait_timeout(flag, tick) {
            Ok((f, _)) => f,
            Err(poisoned) => poisoned.into_inner().0,
        };
        if *flag {
            return;
        }
        let mut busy = me.look();
        if me.done {
            shared.starved.store(true, Ordering::Relaxed);
        }
        // A child it started matters while the thread waits for it (`spawn` waits for the
        // child's exec); one that starves while the thread goes on delays nothing.
        if !busy {
            for child in children_of(pid, tid) {
                busy |= children.entry(child).or_insert_with(|| Starving::new(child, child)).look();
            }
        }
        tick = if busy { SPARE_TICK } else { (tick * 2).min(SPARE_TICK_IDLE) };
    }
}

/// What the watchdog knows of one thread: starved when it has waited for a CPU [`SPARE_BUDGET`]
/// longer than it has run, or has been runnable without running for [`SPARE_STUCK`].
///
/// The kernel adds to a thread's wait (`run_delay`) only once the thread gets a CPU, and its
/// CPU time only at a scheduler tick or when it stops running: a thread waiting still, or
/// running, shows neither growing. Runnable with neither its CPU time nor its count of times on
/// a CPU moving across more than a tick (4 ms at 250 Hz, 10 ms at 100 Hz) is a thread that
/// has not run.
struct Starving {
    pid: i32,
    tid: i32,
    /// CPU time and wait when first seen.
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    stuck_since: Option<Instant>,
    done: bool,
}

impl Starving {
    fn new(pid: i32, tid: i32) -> Starving {
        let first = schedstat(pid, tid).map(|(cpu, delay, _)| (cpu, delay));
        Starving { pid, tid, first, last: None, stuck_since: None, done: first.is_none() }
    }

    /// Looks at the thread again, and gives it the normal policy back if it is starved.
    /// Returns whether it is runnable.
    fn look(&mut self) -> bool {
        let now = Instant::now();
        let Some((cpu, delay, runs)) = schedstat(self.pid, self.tid) else {
            self.done = true;
            return false;
        };
        let runnable = crate::thread_state(self.pid, self.tid) == Some('R');
        let moved = self.last != Some((cpu, runs));
        self.last = Some((cpu, runs));
        self.stuck_since = if runnable && !moved { self.stuck_since.or(Some(now)) } else { None };
        if let (false, Some((cpu0, delay0))) = (self.done, self.first) {
            let waited = delay.saturating_sub(delay0);
            let ran = cpu.saturating_sub(cpu0);
            let stuck = self.stuck_since.is_some_and(|t| now.duration_since(t) >= SPARE_STUCK);
            if waited >= ran.saturating_add(SPARE_BUDGET.as_nanos() as u64) || stuck {
                self.done = normal_again(self.tid);
            }
        }
        runnable
    }
}

/// Moves `tid` from `SCHED_IDLE` to the normal policy, or to the urgent one (see [`urgent`])
/// when the CPUs are saturated. Returns whether it did: a thread under another
/// policy is left as it is (inside the stop window, or not yet at `SCHED_IDLE`), to be looked
/// at again on the next tick.
fn normal_again(tid: i32) -> bool {
    let _policy = policy_lock();
    // SAFETY: sched_getscheduler only reads the policy of `tid`; a wrong tid makes it fail.
    if unsafe { libc::sched_getscheduler(tid) } != libc::SCHED_IDLE {
        return false;
    }
    if saturated() && urgent(tid) {
        return true;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the `sched_param` passed by valid pointer.
    unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) == 0 }
}

/// Whether the CPUs are saturated: more runnable threads on the machine than 256 for each CPU
/// this thread may use. A thread at the normal policy then gets a fraction of a percent of a CPU;
/// between that and [`some_cpu_to_spare`], pannus runs at the normal policy, where it gets its
/// share without taking the CPU from a service thread the moment that thread is runnable
/// (right after the stop, for one: with 64 threads waking every 100 µs on 2 CPUs, pannus at
/// the urgent policy after the stop made the largest gap a thread saw across it 13 ms instead
/// of 3; with 256 such threads, 36 ms instead of 15).
fn saturated() -> bool {
    runnable_per_cpu().is_some_and(|(runnable, cpus)| runnable > 256 * cpus)
}

/// Whether there is CPU time to spare at all: no more runnable threads on the machine (the
/// fourth field of `/proc/loadavg`, which counts this one) than twice the CPUs this thread may
/// use. On CPUs the service keeps saturated, `SCHED_IDLE` would only starve pannus until the
/// watchdog gives it the normal policy back, and make the command that much longer.
fn some_cpu_to_spare() -> bool {
    runnable_per_cpu().is_some_and(|(runnable, cpus)| runnable <= 2 * cpus)
}

/// The runnable threads on the machine now (the fourth field of `/proc/loadavg`, which counts
/// this one), and the CPUs this thread may use.
fn runnable_per_cpu() -> Option<(usize, usize)> {
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let allowed = (0..nix::sched::CpuSet::count()).filter(|&c| cpus.is_set(c).unwrap_or(false)).count();
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    let runnable = loadavg.split_whitespace().nth(3)?.split_once('/')?.0.parse().ok()?;
    Some((runnable, allowed))
}

/// Whether this thread may go back from `SCHED_IDLE` to the normal policy on its own:
/// `CAP_SYS_NICE` in its effective set (without it, `RLIMIT_NICE` would have to allow nice 0).
fn may_leave_idle() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    let Ok(status) = std::fs::read_to_string("/proc/thread-self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

/// The processes thread `tid` of `pid` started that are still there.
fn children_of(pid: i32, tid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
        .map(|text| text.split_whitespace().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    fn policy(tid: i32) -> i32 {
        // SAFETY: sched_getscheduler only reads the policy of `tid`.
        unsafe { libc::sched_getscheduler(tid) }
    }

    fn me() -> i32 {
        nix::unistd::gettid().as_raw()
    }

    const URGENT: i32 = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;

    /// The normal policy, or the urgent one a watchdog gives a starved thread on a loaded
    /// machine.
    fn running(policy: i32) -> bool {
        policy == libc::SCHED_OTHER || policy == URGENT
    }

    /// At `SCHED_IDLE`, or given the normal policy back by its watchdog because the machine is
    /// loaded and starved it there: under load, both are right. (The watchdog sets the policy
    /// before it notes the starvation: a thread found at the normal policy waits for the note.)
    fn idle_unless_starved() -> bool {
        let starved =
            || WATCHDOG.with(|w| w.borrow().as_ref().is_some_and(|w| w.shared.starved.load(Ordering::Relaxed)));
        if policy(0) == libc::SCHED_IDLE {
            return true;
        }
        let t0 = Instant::now();
        while !starved() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        starved()
    }

    /// Without CAP_SYS_NICE the guard does nothing: there is nothing to test. The tests that
    /// go on change the process's policy and its one watchdog: one at a time (the guard
    /// returned is held for the test).
    fn privileged() -> Option<std::sync::MutexGuard<'static, ()>> {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let ok = may_leave_idle();
        if !ok {
            eprintln!("skipped: needs CAP_SYS_NICE");
            return None;
        }
        Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The last CPU this thread may run on, and two threads at the normal policy keeping it busy
    /// until the returned flag is set.
    fn busy_cpu() -> (usize, Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>) {
        let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let cpu = (0..CpuSet::count()).rev().find(|&c| allowed.is_set(c).unwrap()).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let spinners = (0..2)
            .map(|_| {
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut only = CpuSet::new();
                    only.set(cpu).unwrap();
                    sched_setaffinity(Pid::from_raw(0), &only).unwrap();
                    while !done.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        (cpu, done, spinners)
    }

    #[test]
    fn spare_cpu_runs_the_thread_at_sched_idle_then_restores_the_normal_policy() {
        let Some(_one) = privileged() else { return };
        assert_eq!(policy(0), libc::SCHED_OTHER);
        let guard = SpareCpu::enter_whatever_the_load();
        assert!(matches!(guard.entered, Entered::Idle));
        assert!(idle_unless_starved());
        drop(guard);
        assert_eq!(policy(0), libc::SCHED_OTHER);
        assert!(!SpareCpu::active());
    }

    #[test]
    fn a_pause_returns_to_the_normal_policy_without_a_watchdog_then_resumes() {
        let Some(_one) = privileged() else { return };
        let watching = || WATCHDOG.with(|w| w.borrow().is_some());
        drop(SpareCpu::pause());
        assert_eq!(policy(0), libc::SCHED_OTHER, "no guard: nothing to pause or resume");
        let guard = SpareCpu::enter_whatever_the_load();
        assert!(watching());
        let paused = SpareCpu::pause();
        assert!(running(policy(0)));
        assert!(!watching(), "no watchdog thread while paused");
        if !paused.resume {
            // Starved before the pause (a loaded machine): the normal policy, or the urgent one,
            // is for good.
            drop(paused);
            assert!(running(policy(0)));
            return;
        }
        drop(paused);
        assert!(idle_unless_starved());
        assert!(watching());
        assert!(
            matches!(SpareCpu::enter_whatever_the_load().entered, Entered::Nothing),
            "a guard inside a guard does nothing"
        );
        assert!(idle_unless_starved());
        drop(guard);
        assert_eq!(policy(0), libc::SCHED_OTHER);
        assert!(!watching());
    }

    #[test]
    fn a_thread_starved_at_sched_idle_gets_the_normal_policy_back() {
        let Some(_one) = privileged() else { return };
        let (cpu, done, spinners) = busy_cpu();
        let mut only = CpuSet::new();
        only.set(cpu).unwrap();
        sched_setaffinity(Pid::from_raw(0), &only).unwrap();
        let pid = std::process::id() as i32;
        let guard = SpareCpu::enter_whatever_the_load();
        // 30 ms of CPU on a CPU two busy threads share: at SCHED_IDLE's weight (3 against
        // 2 × 1024) that would take about 20 s.
        let start = crate::cpu_time(pid, me()).unwrap();
        let t0 = Instant::now();
        while crate::cpu_time(pid, me()).unwrap() - start < 30_000_000 && t0.elapsed() < Duration::from_secs(60) {
            std::hint::spin_loop();
        }
        let inside = policy(0);
        drop(SpareCpu::pause());
        let after_pause = policy(0);
        drop(guard);
        done.store(true, Ordering::Relaxed);
        spinners.into_iter().for_each(|s| s.join().unwrap());
        // The normal policy, or the urgent one if the machine is saturated meanwhile.
        assert!(running(inside), "the watchdog gave the starved thread a policy it runs at");
        assert!(running(after_pause), "for good: a pause does not resume SCHED_IDLE");
        assert_eq!(policy(0), libc::SCHED_OTHER);
    }

    #[test]
    fn a_process_started_at_sched_idle_and_starved_gets_the_normal_policy_back() {
        let Some(_one) = privileged() else { return };
        let (cpu, done, spinners) = busy_cpu();
        let guard = SpareCpu::enter_whatever_the_load();
        // It inherits SCHED_IDLE, moves itself to the busy CPU and execs `sleep` there.
        let mut child = std::process::Command::new("taskset")
            .args(["-c", &cpu.to_string(), "sleep", "30"])
            .spawn()
            .expect("taskset (util-linux) runs");
        let child_pid = child.id() as i32;
        let t0 = Instant::now();
        let mut seen = policy(child_pid);
        while seen == libc::SCHED_IDLE && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
            seen = policy(child_pid);
        }
        drop(guard);
        done.store(true, Ordering::Relaxed);
        spinners.into_iter().for_each(|s| s.join().unwrap());
        let _ = child.kill();
        let _ = child.wait();
        assert!(running(seen), "the watchdog gave the starved child a policy it runs at");
    }

    #[test]
    fn the_watchdog_never_lowers_the_stop_window() {
        let Some(_one) = privileged() else { return };
        // Not yet at SCHED_IDLE: nothing to do, and the watchdog keeps looking.
        assert!(!normal_again(me()));
        assert_eq!(policy(0), libc::SCHED_OTHER);
        let guard = SpareCpu::enter_whatever_the_load();
        let window = RealtimeGuard::raise();
        assert_eq!(policy(0), libc::SCHED_FIFO);
        assert!(!normal_again(me()), "a thread in the stop window is left alone");
        assert_eq!(policy(0), libc::SCHED_FIFO);
        drop(window);
        assert!(idle_unless_starved(), "the window ends at the policy it started from");
        normal_again(me());
        assert!(running(policy(0)));
        drop(guard);
        assert_eq!(policy(0), libc::SCHED_OTHER);
    }
}
