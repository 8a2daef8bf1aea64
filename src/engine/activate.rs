//! Stage 4, activate: with every thread stopped, prove the switch is safe (the rules of
//! [`crate::safety`]) and write a jump at the entry of each target function, all functions of
//! one patch in the same stop; while a thread is in the way, resume, back off and retry within
//! the manifest's budget. The same stop machinery writes the original bytes back on rollback.

use super::apply::Applying;
use super::undo::Step;
use super::{Measured, Observer, Prepared, Session, Stage, StopStart, StopTimes};
use crate::elf::SymKind;
use crate::error::{Error, Kind, Result};
use crate::registry::{Consistency, FunctionRecord, Registry, State, Stubs};
use crate::safety::{self, CodeRange, EntryPlan, ThreadView};
use crate::target::Loaded;
use crate::unwind::{Backtrace, Unwinder};
use pannus_kernel::{page_ceil, ProtFlags, World};
use std::collections::HashSet;
use std::ops::Range;
use std::time::{Duration, Instant};

impl Session<'_> {
    /// Stage 4: routes far replacements through jump stubs, plans each entry from its current
    /// bytes, confirms, records the functions, and switches them all in one stop.
    pub(super) fn stage_activate(&mut self, p: &Prepared, replacements: &[u64], run: &mut Applying) -> Result<()> {
        let m = &p.manifest;
        let in_stage = |e: Error| e.context(Stage::Activate);
        let targets = self.trampolines(p, replacements, run).map_err(in_stage)?;
        let plans = self.entry_plans(p, &targets).map_err(in_stage)?;
        let plan = p
            .functions
            .iter()
            .zip(&plans)
            .map(|(f, pl)| format!("{} -> {}: {}", f.label(), f.replacement, pl.describe()))
            .collect::<Vec<_>>()
            .join("; ");
        let plan = format!("stop every thread, check none is inside the bytes to overwrite, write: {plan}");
        run.confirm(Stage::Activate, &plan)?;
        if let Some(r) = run.reg.get_mut(&m.patch) {
            r.state = State::Activating;
            r.functions = p
                .functions
                .iter()
                .zip(&plans)
                .zip(replacements.iter().zip(&targets))
                .map(|((f, pl), (&to, &via))| FunctionRecord {
                    target: f.target.clone(),
                    replacement: f.replacement.clone(),
                    implementation: f.implementation.clone(),
                    in_use: f.in_use,
                    address: f.address,
                    replacement_address: to,
                    replacement_size: Some(f.replacement_size).filter(|&s| s > 0),
                    via: (via != to).then_some(via),
                    jump: pl.jump,
                    patch_address: pl.patch_address,
                    original: hex::encode(&pl.original),
                    written: hex::encode(&pl.written),
                })
                .collect();
        }
        self.write_registry(&run.reg)?;
        let sw = Switch {
            names: p.functions.iter().map(|f| f.label()).collect(),
            writes: plans.iter().map(|pl| (pl.patch_address, pl.written.clone())).collect(),
            plans,
            retries: m.safety.retries,
            interval: m.safety.retry_interval,
            consistency: m.safety.consistency.into(),
            busy_ranges: old_code_ranges(p, &run.reg),
            module_code: Vec::new(),
        };
        pannus_kernel::fault::point("entries planned");
        let t0 = Instant::now();
        let switched = self.switch(&sw, run.obs, &mut run.measured);
        run.measured.timings.activate = Some(t0.elapsed());
        let (attempts, _) = switched.map_err(in_stage)?;
        run.obs.progress(
            Some(Stage::Activate),
            &format!("{} function(s) switched in one stop (attempt {attempts})", sw.plans.len()),
        );
        Ok(())
    }

    /// Where each entry jumps: the replacement itself when a `jmp rel32` reaches it (always, for
    /// the `mmap` method, which places the module near), else a 14-byte `jmp [rip+0]` stub in a
    /// page mapped near the target object (read and execute only; written through
    /// /proc/PID/mem), recorded so that rollback unmaps it.
    fn trampolines(&mut self, p: &Prepared, replacements: &[u64], run: &mut Applying) -> Result<Vec<u64>> {
        if self.target.word() == 4 {
            // A 32-bit address space: a `jmp rel32` reaches every address.
            return Ok(replacements.to_vec());
        }
        let far: Vec<usize> = p
            .functions
            .iter()
            .zip(replacements)
            .enumerate()
            // Out of reach of a `jmp rel32` at the entry, or in its nop pad (which ends there).
            .filter(|(_, (f, &to))| {
                [f.address + 5, f.address].iter().any(|&end| i32::try_from(to.wrapping_sub(end) as i64).is_err())
            })
            .map(|(i, _)| i)
            .collect();
        if far.is_empty() {
            return Ok(replacements.to_vec());
        }
        let size = page_ceil(16 * far.len() as u64);
        let hint = self.choose_base(p, size).ok_or_else(|| {
            Error::precondition(format!(
                "process {}: no free page within reach of the target for jump stubs",
                self.target.pid
            ))
        })?;
        let page = {
            let mut h = self.hijack()?;
            let prot = ProtFlags::PROT_READ | ProtFlags::PROT_EXEC;
            let page = h.mmap(hint, size, prot, super::load::RESERVE, None, 0);
            h.release()?;
            page.map_err(|e| Error::from(e).context("mapping the jump stubs"))?
        };
        let stubs = Stubs { addr: page, size };
        run.log.push(Step::Stubs(stubs));
        if let Some(rec) = run.reg.get_mut(&p.manifest.patch) {
            rec.stubs = Some(stubs);
        }
        self.write_registry(&run.reg)?;
        let mut targets = replacements.to_vec();
        for (k, &i) in far.iter().enumerate() {
            let stub = page + 16 * k as u64;
            let mut code = vec![0xff, 0x25, 0, 0, 0, 0];
            code.extend_from_slice(&replacements[i].to_le_bytes());
            self.target.mem.write(stub, &code)?;
            targets[i] = stub;
        }
        self.target.refresh_maps()?;
        Ok(targets)
    }

    /// The entry plan of each function, from its current bytes in the process.
    pub(super) fn entry_plans(&self, p: &Prepared, replacements: &[u64]) -> Result<Vec<EntryPlan>> {
        p.functions
            .iter()
            .zip(replacements)
            .map(|(f, &to)| {
                let size = f.size.min(1 << 20) as usize;
                let code = self.target.mem.read_vec(f.address, size)?;
                let pad = self.target.mem.read_partial(f.address.saturating_sub(16), 16);
                let bits = self.target.bits();
                let plan = safety::plan_entry_bits(bits, &f.label(), f.address, &code, &pad, to)?;
                let parts = self.parts_of(&p.object, &f.target);
                let parts: Vec<safety::Part> =
                    parts.iter().map(|(name, address, code)| safety::Part { name, address: *address, code }).collect();
                safety::check_parts(bits, &f.target, &plan, &parts)?;
                Ok(plan)
            })
            .collect()
    }

    /// The parts of function `name` that the compiler placed apart in `object` (`name.cold`,
    /// `name.part.0`, `name.part.0.cold`, ...: gcc's names), each with its address and current
    /// bytes in the process (as much as is readable).
    fn parts_of(&self, object: &Loaded, name: &str) -> Vec<(String, u64, Vec<u8>)> {
        let prefix = format!("{name}.");
        let o = &object.object;
        let mut parts: Vec<(String, u64, Vec<u8>)> = Vec::new();
        for s in o.symtab.iter().chain(&o.dynsyms) {
            let Some(suffix) = s.name.strip_prefix(&prefix) else { continue };
            let placed_apart = suffix.split('.').any(|w| w == "cold" || w == "part");
            if !placed_apart || !s.defined || s.kind != SymKind::Func || s.size == 0 {
                continue;
            }
            let address = object.addr(s.value);
            if parts.iter().any(|(_, a, _)| *a == address) {
                continue;
            }
            let code = self.target.mem.read_partial(address, s.size.min(1 << 20) as usize);
            parts.push((s.name.clone(), address, code));
        }
        parts
    }

    /// The one place where code bytes change: in a single stop of every thread, after checking
    /// the safety rules, write each `(address, bytes)` of `sw.writes`; while a thread is in the
    /// way, resume, back off and retry within the budget. Returns the attempts made and, when
    /// `sw.module_code` is given, what that same stop saw of the module. When giving up, names
    /// the blocking threads and functions with each blocking thread's backtrace.
    pub(super) fn switch(
        &mut self,
        sw: &Switch,
        obs: &mut dyn Observer,
        measured: &mut Measured,
    ) -> Result<(u32, ModuleSeen)> {
        let pid = self.target.pid;
        let names: Vec<&str> = sw.names.iter().map(String::as_str).collect();
        let function_rule = sw.consistency == Consistency::Function;
        let mut unwinder = function_rule.then(|| Unwinder::new(&mut self.target));
        let mut attempt = 0;
        let mut stack_buf: Vec<u8> = Vec::new();
        loop {
            attempt += 1;
            let last = attempt > sw.retries;
            if last && unwinder.is_none() {
                unwinder = Some(Unwinder::new(&mut self.target));
            }
            // On rollback the whole live stack (up to UNLOAD_SCAN) is read, for the module check.
            let scan = if sw.module_code.is_empty() { STACK_SCAN } else { UNLOAD_SCAN };
            let stopped = self.stop_reading_stacks(|_| scan, &mut stack_buf, measured);
            let Stopped { world, ranges, start } = match stopped {
                Ok(stopped) => stopped,
                // A thread that did not stop in time: every thread runs again, as after a
                // thread in the way.
                Err(e) if e.kind == Kind::Busy && !last => {
                    back_off(obs, attempt, &e.message, sw.interval);
                    continue;
                }
                Err(e) if e.kind == Kind::Busy => {
                    return Err(e.context(format!("busy: after {attempt} attempts over {:?}", sw.interval * sw.retries)))
                }
                Err(e) => return Err(e),
            };
            let stopped_at = start.at;
            let halted_at = Instant::now();
            let stacks: Vec<(i32, &pannus_kernel::Regs, &[u8])> = world
                .threads()
                .iter()
                .zip(&ranges)
                .map(|(t, range)| (t.tid, &t.regs, &stack_buf[range.clone()]))
                .collect();
            let views: Vec<ThreadView> = stacks
                .iter()
                .map(|(tid, r, stack)| ThreadView {
                    tid: *tid,
                    rip: r.rip,
                    stack_base: r.rsp,
                    stack,
                    word: self.target.word() as usize,
                })
                .collect();
            let mut conflicts = safety::entry_conflicts(names.iter().copied().zip(sw.plans.iter()), &views);
            let mut traces: Vec<(i32, Backtrace)> = Vec::new();
            if let Some(u) = unwinder.as_mut().filter(|_| function_rule || last) {
                for (tid, r, stack) in &stacks {
                    let bt = u.backtrace(&self.target.mem, r.rip, r.rsp, r.rbp, stack);
                    if function_rule {
                        conflicts.extend(safety::function_conflicts(*tid, &bt, &sw.busy_ranges));
                    }
                    traces.push((*tid, bt));
                }
            }
            // The bytes each plan was made from are still there: another tool, or the program
            // itself, may have rewritten them since. All read in one system call.
            let changed = if conflicts.is_empty() { self.changed_since_planned(sw) } else { None };
            if let Some(what) = changed {
                let resumed_at = world.resume()?;
                measured.stops.push(start.until(resumed_at));
                return Err(Error::precondition(format!("{what}; nothing was written"))
                    .hint("something else writes code in this process; run the command again once it is done"));
            }
            if conflicts.is_empty() {
                let checked_at = Instant::now();
                let mut result = Ok(());
                let mut done = 0;
                for (addr, bytes) in &sw.writes {
                    if let Err(e) = self.target.mem.write(*addr, bytes) {
                        result = Err(e);
                        break;
                    }
                    done += 1;
                    pannus_kernel::fault::point("entry bytes written");
                }
                // All or nothing, in the same stop: the bytes of a switch that fails are put
                // back before any thread runs, so that nothing jumps into a module about to be
                // unloaded (each plan's `original` is what its write replaced).
                let put_back = |upto: usize| {
                    for (w, plan) in sw.writes[..upto].iter().zip(&sw.plans).rev() {
                        let _ = self.target.mem.write(w.0, &plan.original);
                    }
                };
                if result.is_err() {
                    put_back(done);
                }
                let written_at = Instant::now();
                // The bytes are what they must be now, whatever the resume says: a failure to let
                // a thread go (it exited meanwhile) does not make the switch undone.
                let resumed_at = world.resume().unwrap_or_else(|_| Instant::now());
                measured.stops.push(start.until(resumed_at));
                measured.timings.add_stop(StopTimes {
                    stopped: resumed_at - stopped_at,
                    halt: halted_at - stopped_at,
                    check: checked_at - halted_at,
                    write: written_at - checked_at,
                    resume: resumed_at - written_at,
                });
                result?;
                // Judged after the threads run again, from what the stop saw: the jumps into the
                // module went in that same stop, so a thread clear then stays clear.
                let seen = if sw.module_code.is_empty() {
                    ModuleSeen::default()
                } else {
                    module_idle(&views, &sw.module_code)
                };
                return Ok((attempt, seen));
            }
            let resumed_at = world.resume()?;
            measured.stops.push(start.until(resumed_at));
            if last {
                let mut text = format!(
                    "busy: after {attempt} attempts over {:?}, thread(s) {} still in the way:",
                    sw.interval * sw.retries,
                    conflicts.iter().map(|c| c.tid.to_string()).collect::<Vec<_>>().join(", ")
                );
                for c in &conflicts {
                    text.push_str(&format!("\n  {c}"));
                }
                let mut shown = Vec::new();
                for c in &conflicts {
                    if shown.contains(&c.tid) {
                        continue;
                    }
                    shown.push(c.tid);
                    if let (Some(u), Some((_, bt))) = (unwinder.as_ref(), traces.iter().find(|(t, _)| *t == c.tid)) {
                        let comm =
                            std::fs::read_to_string(format!("/proc/{pid}/task/{}/comm", c.tid)).unwrap_or_default();
                        text.push_str(&format!("\n  backtrace of thread {} ({}):", c.tid, comm.trim()));
                        for l in u.describe(bt) {
                            text.push_str(&format!("\n    {l}"));
                        }
                    }
                }
                return Err(Error::busy(text).hint(
                    "the service keeps these threads in the function; retry at a quieter moment, or raise safety.retries",
                ));
            }
            back_off(obs, attempt, &conflicts[0].to_string(), sw.interval);
        }
    }
}

impl Session<'_> {
    /// Whether the bytes at any plan's place differ from those it was made from (its
    /// `original`): the first one that does, described. One `process_vm_readv` for them all, as
    /// it runs while every thread is stopped.
    fn changed_since_planned(&self, sw: &Switch) -> Option<String> {
        let mut order: Vec<usize> = (0..sw.plans.len()).collect();
        order.sort_by_key(|&i| sw.plans[i].patch_address);
        let mut spans = Vec::with_capacity(order.len());
        let mut used = 0;
        for &i in &order {
            let len = sw.plans[i].original.len();
            spans.push((sw.plans[i].patch_address, used..used + len));
            used += len;
        }
        let mut buf = vec![0u8; used];
        let got = self.target.mem.read_many(&spans, &mut buf);
        order.iter().zip(&spans).zip(got).find_map(|((&i, (addr, range)), n)| {
            let plan = &sw.plans[i];
            let now = &buf[range.start..range.start + n];
            (now != plan.original.as_slice()).then(|| {
                format!(
                    "the bytes at {addr:#x} (entry of `{}`) changed since the switch was planned: {} expected, {} \
                     found",
                    sw.names.get(i).map(String::as_str).unwrap_or("?"),
                    hex::encode(&plan.original),
                    if n == 0 { "nothing readable".to_string() } else { hex::encode(now) }
                )
            })
        })
    }
}

/// Between two attempts of [`Session::switch`]: says why now and then, and pauses.
fn back_off(obs: &mut dyn Observer, attempt: u32, why: &str, interval: Duration) {
    if attempt == 1 || attempt % 20 == 0 {
        obs.retrying(Stage::Activate, why);
    }
    std::thread::sleep(interval);
}

/// Code that is "the old function" for the `function` rule: each target function, and the
/// replacement an applied patch currently sends it to.
fn old_code_ranges(p: &Prepared, reg: &Registry) -> Vec<CodeRange> {
    let mut out = Vec::new();
    for f in &p.functions {
        out.push(CodeRange { function: f.target.clone(), range: f.address..f.address + f.size });
        for r in reg.applied() {
            out.extend(r.functions.iter().filter(|g| g.address == f.address).filter_map(replacement_code));
        }
    }
    out
}

/// The code of the replacement `g` sends its function to, when its size is known.
pub(super) fn replacement_code(g: &FunctionRecord) -> Option<CodeRange> {
    let (start, size) = (g.replacement_address, g.replacement_size?);
    Some(CodeRange { function: g.replacement.clone(), range: start..start + size })
}

/// One switch of code bytes, checked and written in a single stop of every thread.
pub(super) struct Switch {
    /// The function of each plan, for messages.
    pub(super) names: Vec<String>,
    pub(super) plans: Vec<EntryPlan>,
    pub(super) writes: Vec<(u64, Vec<u8>)>,
    pub(super) retries: u32,
    pub(super) interval: Duration,
    pub(super) consistency: Consistency,
    /// Code no thread may be in under the `function` rule: (function, start, end).
    pub(super) busy_ranges: Vec<CodeRange>,
    /// On rollback, the module's code (and its jump stubs): the stop that writes the original
    /// bytes back also looks whether any thread is in it or has a return address into it, so
    /// that the module can be unmapped without another stop. Empty on apply.
    pub(super) module_code: Vec<Range<u64>>,
}

/// One stop of every thread, with each thread's live stack read
/// ([`Session::stop_reading_stacks`]).
pub(super) struct Stopped {
    pub(super) world: World,
    /// In the order of `world`'s threads, the part of the buffer holding each stack.
    pub(super) ranges: Vec<Range<usize>>,
    /// When the stop began, once every thread was seized.
    pub(super) start: StopStart,
}

impl Session<'_> {
    /// Seizes every thread of the target, stops them all, and reads each one's live stack (at
    /// most `most(tid)` bytes) into `buf`. Each thread's registers are read as soon as it is
    /// stopped, while the others are on their way; the stacks are read once all are stopped,
    /// with one system call for up to 1024 threads rather than one each.
    ///
    /// A thread that has not stopped within the engine's `stop_timeout`, or that an earlier stop
    /// gave up waiting for and that has not stopped since, makes it fail as busy, like a thread in
    /// the way: every thread runs again by then, and the stop, if there was one, is in
    /// `measured.stops`.
    pub(super) fn stop_reading_stacks(
        &self,
        most: impl Fn(i32) -> usize,
        buf: &mut Vec<u8>,
        measured: &mut Measured,
    ) -> Result<Stopped> {
        make_room_for_stacks(self.target.pid, buf);
        self.target.require_patchable("stopping its threads")?;
        // Attaching costs the target nothing: its threads run on until they are stopped.
        let seized = World::seize(self.target.pid)?;
        let start = StopStart::now();
        let mut spans = Vec::new();
        let mut used = 0;
        let stopped = seized.stop_with(self.engine.stop_timeout, |t| {
            let len = self.target.stack_extent(&t.regs, most(t.tid));
            spans.push((t.regs.rsp, used..used + len));
            used += len;
        });
        let world = stopped.inspect_err(|_| measured.stops.push(start.until(Instant::now())))?;
        if buf.len() < used {
            buf.resize(used, 0);
        }
        let got = self.target.mem.read_many(&spans, buf);
        let ranges = spans.into_iter().zip(got).map(|((_, r), n)| r.start..r.start + n).collect();
        Ok(Stopped { world, ranges, start })
    }
}

/// Makes `buf` room for a [`STACK_SCAN`] of every thread of `pid` (and a few created meanwhile),
/// before the stop: the stacks are read into it inside the stop, which must not be where it
/// grows. Every page is backed here too: fresh zeroed memory faults on its first write to each
/// page, and inside the stop each of those faults would lengthen it.
fn make_room_for_stacks(pid: i32, buf: &mut Vec<u8>) {
    let len = (pannus_kernel::list_threads(pid).map(|t| t.len()).unwrap_or(1) + 4) * STACK_SCAN;
    if buf.len() >= len {
        return;
    }
    *buf = vec![0u8; len];
    for page in buf.chunks_mut(4096) {
        // An opaque value: a store of a known zero to zeroed memory could be left out.
        page[0] = std::hint::black_box(0);
    }
}

/// What one stop saw of a module's code ([`module_idle`]).
#[derive(Debug, Default)]
pub(super) struct ModuleSeen {
    /// Threads neither in the code nor with a return address into it.
    pub(super) clear: HashSet<i32>,
    /// Why the code is not idle (one thread's story), if it is not.
    pub(super) busy: Option<String>,
    /// Every thread's stack pointer at that stop: the stacks that the scan for pointers into
    /// the module skips (`references.rs`), their live part checked here.
    pub(super) stack_pointers: Vec<u64>,
}

/// Which of the stopped threads are clear of `code` (ranges): not executing in it, and no
/// word of the stack read points into it (return addresses, signal frames; other words that
/// happen to point there only make this more careful).
pub(super) fn module_idle(threads: &[ThreadView], code: &[Range<u64>]) -> ModuleSeen {
    let inside = |a: u64| code.iter().any(|c| c.contains(&a));
    let mut seen = ModuleSeen { stack_pointers: threads.iter().map(|t| t.stack_base).collect(), ..Default::default() };
    for t in threads {
        if inside(t.rip) {
            seen.busy = Some(format!("thread {} is executing in the module at {:#x}", t.tid, t.rip));
            continue;
        }
        let word = stack_words(t.stack, t.word).find(|&v| inside(v));
        if let Some(v) = word {
            seen.busy = Some(format!("thread {} has a return address into the module ({v:#x})", t.tid));
            continue;
        }
        seen.clear.insert(t.tid);
    }
    seen
}

/// How many bytes of each thread's stack, from its stack pointer up, are scanned for return
/// addresses and signal frames while the threads are stopped. The bytes to overwrite hold no
/// call, so only a signal frame can hold an address inside them, and signal frames sit at the
/// young end of the stack. At most 16 KiB, and no more than the live stack (see
/// `Target::stack_extent`): most threads' reads are a page.
const STACK_SCAN: usize = 16 << 10;

/// How many bytes of each thread's stack are scanned for return addresses into a module before
/// it is unmapped: real return addresses can sit deep, and a miss would let a thread return into
/// unmapped memory, so this scan is wide (bounded by the live stack, so most reads are small).
pub(super) const UNLOAD_SCAN: usize = 512 << 10;

/// The words of a copy of a stack, `word` bytes each (8, or 4 in a 32-bit process).
pub(super) fn stack_words(stack: &[u8], word: usize) -> impl Iterator<Item = u64> + '_ {
    let word = if word == 4 { 4 } else { 8 };
    stack.chunks_exact(word).map(move |w| {
        let mut v = [0u8; 8];
        v[..word].copy_from_slice(w);
        u64::from_le_bytes(v)
    })
}
