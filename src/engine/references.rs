//! Before the module of a patch whose code ran is unmapped: nothing the process keeps may point
//! into it. Its finalisers have run by then and taken back what they know of (exit handlers);
//! what its init or its replacements left elsewhere is looked for in two places:
//!
//! - every aligned word of the process's private writable memory (data and bss of every
//!   object, heap, anonymous memory), in bounded chunks, within [`SCAN_CAP`] bytes and
//!   [`SCAN_DEADLINE`]: a callback stored in a global or a heap object, a C++ object whose
//!   vtable is in the module, a string literal of the module;
//! - the handlers of the signals the process catches (`SigCgt`), which the kernel holds, asked
//!   with `rt_sigaction(sig, NULL, &old)` in the process.
//!
//! Skipped: the module's own mappings, the registry, and the stacks of the threads (their live
//! part is checked word by word in the stop that finds the threads clear of the module; below
//! the stack pointer lies only what returned long ago). Anything found, or a scan cut short,
//! keeps the module mapped: the entry bytes are back, so the patch is rolled back all the same,
//! and a mapped module is harmless, where an unmapped one called through a pointer kills the
//! process.
//!
//! The scan runs with the threads running (holding them for a scan of the whole heap would be
//! a stop of its own): nothing jumps into the module any more and no thread is inside it, so no
//! new pointer into it can be made; one the program copies from a part not yet scanned to a part
//! already scanned during the scan is missed.

use super::Session;
use crate::error::{Error, Result};
use pannus_kernel::Mapping;
use std::ops::Range;
use std::time::{Duration, Instant};

/// The most bytes of writable memory scanned for pointers into a module before it is unmapped.
pub(super) const SCAN_CAP: u64 = 1 << 30;
/// How long that scan may take.
pub(super) const SCAN_DEADLINE: Duration = Duration::from_secs(5);
/// How much is read at once.
const CHUNK: usize = 1 << 20;

/// The first aligned word of `bytes` (read at `addr`, a multiple of 8) whose value lies in one
/// of `into`: its address and its value.
#[cfg(test)]
pub(super) fn first_pointer(bytes: &[u8], addr: u64, into: &[Range<u64>]) -> Option<(u64, u64)> {
    first_pointer_of(8, bytes, addr, into)
}

/// [`first_pointer`] with words of `word` bytes: 8, or 4 in a 32-bit process.
pub(super) fn first_pointer_of(word: usize, bytes: &[u8], addr: u64, into: &[Range<u64>]) -> Option<(u64, u64)> {
    super::activate::stack_words(bytes, word)
        .enumerate()
        .find_map(|(i, v)| into.iter().any(|r| r.contains(&v)).then_some((addr + (word * i) as u64, v)))
}

/// The parts of the module at `module` that a pointer left behind could reach and that do not
/// change: its code and its read-only data (string literals, vtables after RELRO), by the
/// process's maps, each with what it is; less `unwind_tables`, which only the unwinder reads.
fn reachable(maps: &[Mapping], module: &Range<u64>, unwind_tables: &[Range<u64>]) -> Vec<(Range<u64>, &'static str)> {
    let mut out = Vec::new();
    for m in maps.iter().filter(|m| m.start >= module.start && m.end <= module.end && m.read && !m.write) {
        let what = if m.exec { "its code" } else { "its read-only data" };
        let mut parts: Vec<Range<u64>> = std::iter::once(m.start..m.end).collect();
        for t in unwind_tables {
            parts = parts
                .into_iter()
                .flat_map(|p| [p.start..p.end.min(t.start), p.start.max(t.end)..p.end])
                .filter(|p| p.start < p.end)
                .collect();
        }
        out.extend(parts.into_iter().map(|p| (p, what)));
    }
    out
}

/// The mappings to scan: private, readable and writable, outside `module`, the registry
/// (`skip`) and the stacks holding one of `stack_pointers`.
fn scanned<'m>(maps: &'m [Mapping], module: &Range<u64>, skip: &[u64], stack_pointers: &[u64]) -> Vec<&'m Mapping> {
    maps.iter()
        .filter(|m| m.read && m.write && !m.shared)
        .filter(|m| m.end <= module.start || m.start >= module.end)
        .filter(|m| !skip.iter().chain(stack_pointers).any(|&a| m.contains(a)))
        .filter(|m| m.path != "[stack]")
        .collect()
}

impl Session<'_> {
    /// Succeeds when nothing the process keeps points into the module mapped at `module`; else
    /// fails saying what does (or that the scan was cut short), and the module must stay mapped.
    /// `stack_pointers`: each thread's stack pointer, from the stop that found it clear of the
    /// module; `unwind_tables`: parts of the module a pointer into does not count.
    pub(super) fn unreferenced(
        &mut self,
        module: Range<u64>,
        unwind_tables: &[Range<u64>],
        stack_pointers: &[u64],
    ) -> Result<()> {
        self.target.refresh_maps()?;
        let into = reachable(&self.target.maps, &module, unwind_tables);
        if into.is_empty() {
            return Ok(());
        }
        let ranges: Vec<Range<u64>> = into.iter().map(|(r, _)| r.clone()).collect();
        let what = |v: u64| into.iter().find(|(r, _)| r.contains(&v)).map_or("it", |(_, w)| *w);
        self.signal_handlers_outside(&ranges, &what)?;
        let registry: Vec<u64> = crate::registry::locate(&self.target.maps).map(|l| l.addr).into_iter().collect();
        let regions = scanned(&self.target.maps, &module, &registry, stack_pointers);
        let total: u64 = regions.iter().map(|m| m.end - m.start).sum();
        let deadline = Instant::now() + SCAN_DEADLINE;
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        for m in regions {
            let mut at = m.start;
            while at < m.end {
                let cut = if done >= SCAN_CAP {
                    Some(format!("{} MiB, its cap", SCAN_CAP >> 20))
                } else if Instant::now() >= deadline {
                    Some(format!("{:?}, its deadline", SCAN_DEADLINE))
                } else {
                    None
                };
                if let Some(cut) = cut {
                    return Err(Error::other(format!(
                        "the scan for pointers into it stopped after {} of {} MiB of writable memory ({cut}): \
                         nothing proves the process holds none",
                        mib(done),
                        mib(total)
                    )));
                }
                let len = CHUNK.min((m.end - at) as usize);
                let got = self.target.mem.read_some(at, &mut buf[..len]);
                let word = self.target.word() as usize;
                if let Some((addr, v)) = first_pointer_of(word, &buf[..got - got % 8], at, &ranges) {
                    let region = if m.path.is_empty() { "anonymous memory" } else { m.path.as_str() };
                    return Err(Error::other(format!("{v:#x} in {region} at {addr:#x} points into it ({})", what(v))));
                }
                // A page that cannot be read (a hole the program made): the next one.
                let step = if got == 0 { pannus_kernel::PAGE as usize } else { got };
                at = at.saturating_add(step as u64);
                done += step as u64;
            }
        }
        Ok(())
    }

    /// Fails when a signal the process catches has its handler (or restorer) in `into`.
    fn signal_handlers_outside(&mut self, into: &[Range<u64>], what: &dyn Fn(u64) -> &'static str) -> Result<()> {
        let pid = self.target.pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|_| Error::from(pannus_kernel::Error::NoProcess { pid }))?;
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let caught = field("SigCgt:").and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(0);
        let signals: Vec<i32> = (1..=64).filter(|&s| caught & (1u64 << (s - 1)) != 0).collect();
        if signals.is_empty() {
            return Ok(());
        }
        if field("Seccomp:").is_some_and(|m| m != "0") && !self.may_ask_for_handlers(pid) {
            return Err(Error::other(
                "the process's seccomp filter does not let pannus ask for its signal handlers (rt_sigaction)",
            ));
        }
        let mut h = self.hijack()?;
        let mut found = None;
        for &sig in &signals {
            let action = match h.signal_handler(sig) {
                Ok(a) => a,
                Err(e) => {
                    let _ = h.release();
                    return Err(Error::from(e).context("asking for the process's signal handlers"));
                }
            };
            if let Some(v) = [action.handler, action.restorer].into_iter().find(|v| into.iter().any(|r| r.contains(v)))
            {
                found = Some(format!("the handler of {} ({v:#x}) is in it ({})", signal_name(sig), what(v)));
                break;
            }
        }
        h.release()?;
        found.map_or(Ok(()), |f| Err(Error::other(f)))
    }

    /// Whether the process's seccomp filters let `rt_sigaction(sig, NULL, &old, 8)` through.
    fn may_ask_for_handlers(&self, pid: i32) -> bool {
        let Ok(filters) = pannus_kernel::read_seccomp_filters(pid) else { return false };
        let arch = crate::seccomp::AUDIT_ARCH_X86_64;
        let call = crate::seccomp::Call { name: "rt_sigaction", nr: 13, args: [1, 0, 1, 8, 0, 0], arch };
        let call = match self.target.word() {
            4 => crate::seccomp::for_i386(vec![call]).remove(0),
            _ => call,
        };
        crate::seccomp::blocked(&filters, std::slice::from_ref(&call)).is_empty()
    }
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

/// `SIGPWR`, `SIGRTMIN+3`, ...
fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => s.as_str().to_string(),
        Err(_) if sig >= nix::libc::SIGRTMIN() => format!("SIGRTMIN+{}", sig - nix::libc::SIGRTMIN()),
        Err(_) => format!("signal {sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_aligned_words_pointing_into_the_ranges_are_found() {
        let (module, shorter) = (
            std::iter::once(0x7000_0000..0x7000_2000).collect::<Vec<_>>(),
            std::iter::once(0x7000_0000..0x7000_1ff8).collect::<Vec<_>>(),
        );
        let mut bytes = vec![0u8; 64];
        // Straddling two words: no aligned word holds it.
        bytes[4..12].copy_from_slice(&0x7000_1000u64.to_le_bytes());
        assert_eq!(first_pointer(&bytes, 0x1000, &module), None);
        bytes[40..48].copy_from_slice(&0x7000_1ff8u64.to_le_bytes());
        assert_eq!(first_pointer(&bytes, 0x1000, &module), Some((0x1028, 0x7000_1ff8)));
        assert_eq!(first_pointer(&bytes, 0x1000, &shorter), None, "the end is outside");
        assert_eq!(first_pointer(&bytes[..63], 0x1000, &module), Some((0x1028, 0x7000_1ff8)));
    }

    #[test]
    fn unwind_tables_are_cut_out_of_what_a_pointer_may_reach() {
        let m = |start, end, exec| Mapping {
            start,
            end,
            read: true,
            write: false,
            exec,
            shared: false,
            offset: 0,
            dev: (0, 1),
            inode: 7,
            path: String::from("/memfd:m.so (deleted)"),
        };
        let maps = [m(0x1000, 0x2000, true), m(0x2000, 0x3000, false), m(0x5000, 0x6000, false)];
        let got = reachable(&maps, &(0x1000..0x5000), &[0x2100..0x2200, 0x2f00..0x3100]);
        assert_eq!(
            got,
            vec![
                (0x1000..0x2000, "its code"),
                (0x2000..0x2100, "its read-only data"),
                (0x2200..0x2f00, "its read-only data")
            ]
        );
    }

    #[test]
    fn signals_are_named_as_the_kernel_numbers_them() {
        assert_eq!(signal_name(30), "SIGPWR");
        assert_eq!(signal_name(nix::libc::SIGRTMIN() + 2), "SIGRTMIN+2");
    }
}
