//! The target's address space (`/proc/PID/maps`) and the holes in it.

use crate::error::{Error, Result};
use crate::mem::Mem;
use crate::{page_ceil, page_floor, PAGE};
use procfs::process::{MMPermissions, MMapPath};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev: (i32, i32),
    pub inode: u64,
    /// The path as the kernel shows it: a file, `[heap]`, `[stack]`, `[vdso]`, an empty string
    /// for anonymous memory, `/memfd:NAME (deleted)` for a memfd.
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Reads the address space of process `pid`.
pub fn read(pid: i32) -> Result<Vec<Mapping>> {
    let proc = procfs::process::Process::new(pid).map_err(|_| Error::NoProcess { pid })?;
    let maps = proc.maps().map_err(|e| match e {
        procfs::ProcError::NotFound(_) => Error::NoProcess { pid },
        procfs::ProcError::PermissionDenied(_) => {
            Error::Permission { pid, op: "read the address space of", errno: nix::errno::Errno::EACCES }
        }
        e => Error::Other(format!("cannot read /proc/{pid}/maps: {e}")),
    })?;
    Ok(maps
        .into_iter()
        .map(|m| Mapping {
            start: m.address.0,
            end: m.address.1,
            read: m.perms.contains(MMPermissions::READ),
            write: m.perms.contains(MMPermissions::WRITE),
            exec: m.perms.contains(MMPermissions::EXECUTE),
            shared: m.perms.contains(MMPermissions::SHARED),
            offset: m.offset,
            dev: m.dev,
            inode: m.inode,
            path: match m.pathname {
                MMapPath::Path(p) => p.to_string_lossy().into_owned(),
                MMapPath::Heap => "[heap]".into(),
                MMapPath::Stack => "[stack]".into(),
                MMapPath::TStack(t) => format!("[stack:{t}]"),
                MMapPath::Vdso => "[vdso]".into(),
                MMapPath::Vvar => "[vvar]".into(),
                MMapPath::Vsyscall => "[vsyscall]".into(),
                MMapPath::Rollup => "[rollup]".into(),
                MMapPath::Anonymous => String::new(),
                MMapPath::Vsys(k) => format!("/SYSV{k:08x}"),
                MMapPath::Other(s) => s,
            },
        })
        .collect())
}

/// How many bytes below `addr`, up to `most`, lie in writable memory with no gap: the mapping
/// holding `addr - 1` and those right below it, as long as each is writable. Below the start of
/// the main thread's `[stack]`, which the kernel grows as the thread uses it, all of `most`.
pub fn writable_below(maps: &[Mapping], addr: u64, most: u64) -> u64 {
    let mut at = addr;
    while addr - at < most {
        let Some(m) = at.checked_sub(1).and_then(|a| maps.iter().find(|m| m.contains(a))) else { break };
        if !m.write {
            break;
        }
        if m.path == "[stack]" {
            return most;
        }
        at = m.start;
    }
    (addr - at).min(most)
}

/// Lowest address pannus maps at (above `vm.mmap_min_addr`).
const LOW_LIMIT: u64 = 0x10000;
/// Top of the x86-64 user address space with 4-level paging, less a guard page.
const HIGH_LIMIT: u64 = 0x7fff_ffff_f000 - PAGE;
/// Distance kept from the heap and stacks, which grow into free space.
const GROWTH_GAP: u64 = 256 << 20;

/// A free, page-aligned range of `size` bytes lying entirely inside `[lo, hi)`, as close to
/// `near` as possible, preferring addresses below `near` (room above the executable is where
/// the heap grows). Free space next to `[heap]` or a stack keeps a distance from it.
pub fn find_hole(maps: &[Mapping], size: u64, lo: u64, hi: u64, near: u64) -> Option<u64> {
    let size = page_ceil(size.max(1));
    let lo = page_ceil(lo.max(LOW_LIMIT));
    let hi = page_floor(hi.min(HIGH_LIMIT));
    let mut sorted: Vec<&Mapping> = maps.iter().collect();
    sorted.sort_by_key(|m| m.start);
    let mut best: Option<(u64, u64)> = None; // (distance, address)
    let mut prev_end = 0u64;
    let mut prev_grows = false;
    for i in 0..=sorted.len() {
        let (gap_start, gap_end) = match sorted.get(i) {
            Some(m) => (prev_end, m.start),
            None => (prev_end, HIGH_LIMIT),
        };
        let next_grows_down = sorted.get(i).is_some_and(|m| m.path.starts_with("[stack"));
        let mut g0 = gap_start.saturating_add(PAGE);
        if prev_grows {
            g0 = g0.saturating_add(GROWTH_GAP);
        }
        let mut g1 = gap_end.saturating_sub(PAGE);
        if next_grows_down {
            g1 = g1.saturating_sub(GROWTH_GAP);
        }
        let (g0, g1) = (page_ceil(g0.max(lo)), page_floor(g1.min(hi)));
        if g1 > g0 && g1 - g0 >= size {
            // Candidates: the top of a gap below `near`, the bottom of a gap above it.
            let cand = if g1 <= near {
                g1 - size
            } else if g0 >= near {
                g0
            } else {
                page_floor(near.min(g1 - size)).max(g0)
            };
            let dist = cand.abs_diff(near) + if cand < near { 0 } else { 1 << 20 };
            if best.is_none_or(|(d, _)| dist < d) {
                best = Some((dist, cand));
            }
        }
        if let Some(m) = sorted.get(i) {
            prev_end = m.end;
            prev_grows = m.path == "[heap]";
        }
    }
    best.map(|(_, a)| a)
}

/// Code that already exists in the target and that a borrowed thread is pointed at; pannus
/// writes no code of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gadgets {
    /// `syscall; ret` (0f 05 c3).
    pub syscall_ret: u64,
    /// A `ret` (c3).
    pub ret: u64,
    /// The C library's signal restorer, `mov $15, %rax; syscall` (rt_sigreturn).
    pub restorer: u64,
    /// Where a function's return value is stored without a system call (see [`Store`]); `None`
    /// when the target's code holds none.
    pub store: Option<Store>,
    /// Gadgets of a 32-bit (i386) process (see `i386.rs`): `syscall_ret` is an `int $0x80`
    /// followed by three pops and a `ret` (the vDSO's `__kernel_vsyscall`), `restorer`
    /// `mov $173, %eax; int $0x80`, and there is no store.
    pub compat: bool,
}

/// A register a function preserves (callee-saved), as the base of a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Rbx,
    Rbp,
    R12,
    R13,
    R14,
    R15,
}

/// Code ending a function in the target that stores `%rax` to memory and returns:
/// `mov %rax, disp(%base); pop ...(pops times); ret`. A function pannus calls returns into it,
/// with `base` set to point at a word of pannus's signal frame: its return value lands there,
/// and the thread returns on into the restorer. No system call sees the value, even if pannus is
/// gone by then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store {
    pub addr: u64,
    pub base: Base,
    pub disp: i32,
    /// How many words the pops take off the stack before the `ret`.
    pub pops: u8,
}

/// The store gadget ([`Store`]) whose bytes begin `code`, if they do: REX.W (with REX.B for
/// r12-r15), `89`, a ModRM of `%rax` to a callee-saved base with no displacement, 8 or 32 bits
/// of it, up to four pops (never of `%rsp`), `c3`.
fn parse_store(code: &[u8]) -> Option<(Base, i32, u8)> {
    let (&rex, &op, &modrm) = (code.first()?, code.get(1)?, code.get(2)?);
    if op != 0x89 || modrm & 0x38 != 0 {
        return None;
    }
    let (md, rm) = (modrm >> 6, modrm & 7);
    let base = match (rex, rm) {
        (0x48, 3) => Base::Rbx,
        (0x48, 5) if md != 0 => Base::Rbp,
        (0x49, 4) => Base::R12,
        (0x49, 5) if md != 0 => Base::R13,
        (0x49, 6) => Base::R14,
        (0x49, 7) => Base::R15,
        _ => return None,
    };
    let mut at = 3;
    if rm == 4 {
        // A SIB byte: base r12, no index.
        if code.get(at) != Some(&0x24) {
            return None;
        }
        at += 1;
    }
    let disp = match md {
        0 => 0,
        1 => {
            at += 1;
            *code.get(at - 1)? as i8 as i32
        }
        2 => {
            at += 4;
            i32::from_le_bytes(code.get(at - 4..at)?.try_into().ok()?)
        }
        _ => return None,
    };
    let mut pops = 0;
    loop {
        match (code.get(at)?, code.get(at + 1)) {
            (0xc3, _) => return Some((base, disp, pops)),
            _ if pops == 4 => return None,
            (&b, _) if (0x58..=0x5f).contains(&b) && b != 0x5c => at += 1,
            (0x41, Some(&b)) if (0x58..=0x5f).contains(&b) => at += 2,
            _ => return None,
        }
        pops += 1;
    }
}

/// Finds a [`Store`] in the bytes `code` mapped at `start`, checked in the target's memory.
fn find_store_in(mem: &Mem, code: &[u8], start: u64) -> Option<Store> {
    let mut from = 1;
    while let Some(i) = code.get(from..)?.iter().position(|&b| b == 0x89) {
        let at = from + i - 1;
        from += i + 1;
        let Some((base, disp, pops)) = parse_store(&code[at..code.len().min(at + 16)]) else { continue };
        let store = Store { addr: start + at as u64, base, disp, pops };
        if store_holds(mem, &store) {
            return Some(store);
        }
    }
    None
}

/// Whether `store` is still what it was found to be, in the target's memory.
fn store_holds(mem: &Mem, store: &Store) -> bool {
    mem.read_vec(store.addr, 16).is_ok_and(|b| parse_store(&b) == Some((store.base, store.disp, store.pops)))
}

/// Finds a [`Store`] in the target's executable mappings, the C library first.
pub fn find_store(mem: &Mem, maps: &[Mapping]) -> Option<Store> {
    executable(maps).into_iter().find_map(|m| find_store_in(mem, &mapping_bytes(mem, m), m.start))
}

/// The target's executable mappings, the C library first, then the vDSO, then the rest.
fn executable(maps: &[Mapping]) -> Vec<&Mapping> {
    let rank = |m: &Mapping| {
        if m.path.contains("/libc.so") || m.path.contains("/libc-") || m.path.contains("ld-musl") {
            0
        } else if m.path == "[vdso]" {
            1
        } else {
            2
        }
    };
    let mut exec: Vec<&Mapping> = maps.iter().filter(|m| m.exec && m.read && m.path != "[vsyscall]").collect();
    exec.sort_by_key(|m| rank(m));
    exec
}

const RESTORER: [u8; 9] = [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
const SYSCALL_RET: [u8; 3] = [0x0f, 0x05, 0xc3];

/// Whether the gadgets are still what they were found to be, in the target's memory.
pub fn verify_gadgets(mem: &Mem, g: &Gadgets) -> bool {
    let at = |addr: u64, want: &[u8]| mem.read_vec(addr, want.len()).is_ok_and(|b| b == want);
    if g.compat {
        return crate::i386::verify_gadgets(g, at);
    }
    at(g.syscall_ret, &SYSCALL_RET)
        && at(g.ret, &[0xc3])
        && at(g.restorer, &RESTORER)
        && g.store.is_none_or(|s| store_holds(mem, &s))
}

/// The bytes of an executable mapping: from its file through the page cache when it is a
/// regular file (much cheaper than /proc/PID/mem), else from the target's memory.
pub(crate) fn mapping_bytes(mem: &Mem, m: &Mapping) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    if m.path.starts_with('/') && !m.path.ends_with(" (deleted)") {
        if let Ok(f) = std::fs::File::open(&m.path) {
            let mut buf = vec![0u8; m.len() as usize];
            if let Ok(n) = f.read_at(&mut buf, m.offset) {
                buf.truncate(n);
                return buf;
            }
        }
    }
    mem.read_partial(m.start, m.len() as usize)
}

/// Finds the [`Gadgets`] in the target's executable mappings, the C library first. Bytes are
/// read from the mapped files and every gadget found is checked in the target's memory (the
/// file may differ where code was patched).
pub fn find_gadgets(mem: &Mem, maps: &[Mapping]) -> Option<Gadgets> {
    let exec = executable(maps);
    let (mut syscall_ret, mut ret, mut restorer, mut store) = (None, None, None, None);
    let checked = |addr: u64, want: &[u8]| mem.read_vec(addr, want.len()).is_ok_and(|b| b == want);
    for m in exec {
        let bytes = mapping_bytes(mem, m);
        let find = |pat: &[u8]| {
            let mut from = 0;
            while let Some(i) = bytes[from..].windows(pat.len()).position(|w| w == pat) {
                let addr = m.start + (from + i) as u64;
                if checked(addr, pat) {
                    return Some(addr);
                }
                from += i + 1;
            }
            None
        };
        syscall_ret = syscall_ret.or_else(|| find(&SYSCALL_RET));
        ret = ret.or_else(|| find(&[0xc3]));
        restorer = restorer.or_else(|| find(&RESTORER));
        store = store.or_else(|| find_store_in(mem, &bytes, m.start));
        if let (Some(syscall_ret), Some(ret), Some(restorer), Some(_)) = (syscall_ret, ret, restorer, store) {
            return Some(Gadgets { syscall_ret, ret, restorer, store, compat: false });
        }
    }
    Some(Gadgets { syscall_ret: syscall_ret?, ret: ret?, restorer: restorer?, store, compat: false })
}

/// [`find_gadgets`] for a 32-bit (i386) process (see `i386.rs`).
pub fn find_gadgets_i386(mem: &Mem, maps: &[Mapping]) -> Option<Gadgets> {
    crate::i386::find_gadgets(mem, maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(start: u64, end: u64, write: bool, path: &str) -> Mapping {
        let (read, exec, shared, offset, dev, inode) = (true, false, false, 0, (0, 0), 0);
        Mapping { start, end, read, write, exec, shared, offset, dev, inode, path: path.into() }
    }

    #[test]
    fn stores_of_rax_through_a_preserved_register_then_a_return_are_recognised() {
        assert_eq!(parse_store(&[0x48, 0x89, 0x03, 0x5b, 0xc3]), Some((Base::Rbx, 0, 1)));
        assert_eq!(parse_store(&[0x48, 0x89, 0x43, 0x18, 0x58, 0x5a, 0x5b, 0xc3]), Some((Base::Rbx, 0x18, 3)));
        assert_eq!(parse_store(&[0x49, 0x89, 0x44, 0x24, 0xf8, 0x41, 0x5c, 0xc3]), Some((Base::R12, -8, 1)));
        assert_eq!(parse_store(&[0x49, 0x89, 0x87, 0, 1, 0, 0, 0xc3]), Some((Base::R15, 0x100, 0)));
        assert_eq!(parse_store(&[0x48, 0x89, 0x03, 0x5c, 0xc3]), None, "pop %rsp");
        assert_eq!(parse_store(&[0x48, 0x89, 0x07, 0xc3]), None, "%rdi is not preserved");
        assert_eq!(parse_store(&[0x48, 0x89, 0x05, 0, 0, 0, 0, 0xc3]), None, "rip-relative");
        assert_eq!(parse_store(&[0x48, 0x89, 0x0b, 0xc3]), None, "stores %rcx");
        assert_eq!(parse_store(&[0x48, 0x89, 0x03, 0x5b, 0x5b, 0x5b, 0x5b, 0x5b, 0xc3]), None, "five pops");
        assert_eq!(parse_store(&[0x48, 0x89, 0x03, 0x5b]), None, "cut short");
    }

    #[test]
    fn writable_memory_below_an_address_ends_at_a_gap_or_a_page_the_thread_cannot_write() {
        let maps = [
            mapping(0x1000, 0x2000, false, ""),
            mapping(0x2000, 0x4000, true, ""),
            mapping(0x4000, 0x6000, true, ""),
            mapping(0x8000, 0x9000, true, "[stack]"),
        ];
        assert_eq!(writable_below(&maps, 0x5800, 1 << 20), 0x3800, "down to the read-only page");
        assert_eq!(writable_below(&maps, 0x5800, 0x100), 0x100, "no more than asked");
        assert_eq!(writable_below(&maps, 0x2000, 1 << 20), 0, "nothing writable right below");
        assert_eq!(writable_below(&maps, 0x7000, 1 << 20), 0, "unmapped right below");
        assert_eq!(writable_below(&maps, 0x8800, 1 << 20), 1 << 20, "the main stack grows");
    }
}
