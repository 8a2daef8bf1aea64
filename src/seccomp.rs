//! Would the target's seccomp filters let pannus's system calls through? The filters are read
//! with ptrace and run here, on the exact system calls and arguments pannus will make inside
//! the target, so that a process where patching cannot work is refused before anything is done
//! (instead of failing halfway, or being killed by its own filter).

/// A system call pannus makes inside the target: name, number, arguments that matter.
pub struct Call {
    pub name: &'static str,
    pub nr: u32,
    pub args: [u64; 6],
    /// The architecture seccomp reports with it (`AUDIT_ARCH_X86_64`, or `AUDIT_ARCH_I386` for
    /// a 32-bit process's calls: see [`for_i386`]).
    pub arch: u32,
}

/// The system calls of an apply and a rollback, as the kernel's seccomp sees them: the numbers
/// and the very protection and flag words pannus passes (its own constants, so that the two
/// cannot drift), and -1, which is what seccomp sees of every call pannus skips under ptrace
/// (each remote function call ends with one).
pub fn pannus_calls() -> Vec<Call> {
    use crate::engine::{REGISTRY_MAP, RESERVE, SCRATCH_MAP, SEGMENT};
    use nix::sys::mman::{MapFlags, ProtFlags};
    let prot = |p: ProtFlags| p.bits() as u32 as u64;
    let (r, rw, rx) = (
        prot(ProtFlags::PROT_READ),
        prot(ProtFlags::PROT_READ | ProtFlags::PROT_WRITE),
        prot(ProtFlags::PROT_READ | ProtFlags::PROT_EXEC),
    );
    let flags = |f: MapFlags| f.bits() as u32 as u64;
    let anon = SEGMENT | MapFlags::MAP_ANONYMOUS;
    let (fd, none) = (3, u64::MAX);
    let c = |name, nr, args| Call { name, nr, args, arch: AUDIT_ARCH_X86_64 };
    vec![
        c("mmap (reserve)", 9, [0, 0, r, flags(RESERVE), none, 0]),
        c("mmap (jump stubs)", 9, [0, 0, rx, flags(RESERVE), none, 0]),
        c("mmap (code)", 9, [0, 0, rx, flags(SEGMENT), fd, 0]),
        c("mmap (data)", 9, [0, 0, rw, flags(SEGMENT), fd, 0]),
        c("mmap (read-only data)", 9, [0, 0, r, flags(SEGMENT), fd, 0]),
        c("mmap (bss)", 9, [0, 0, rw, flags(anon), none, 0]),
        c("mmap (code, anonymous)", 9, [0, 0, rx, flags(anon), none, 0]),
        c("mmap (scratch)", 9, [0, 0, r, flags(SCRATCH_MAP), none, 0]),
        c("mmap (registry)", 9, [0, 0, r, flags(REGISTRY_MAP), fd, 0]),
        c("mprotect (RELRO)", 10, [0, 0, r, 0, 0, 0]),
        c("munmap", 11, [0; 6]),
        c("close", 3, [fd, 0, 0, 0, 0, 0]),
        c("memfd_create", 319, [0, 1, 0, 0, 0, 0]),
        c("ftruncate", 77, [fd, 0, 0, 0, 0, 0]),
        c("rt_sigreturn", 15, [0; 6]),
        c("a call skipped under ptrace (number -1)", u32::MAX, [0; 6]),
    ]
}

pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// pannus's calls (as [`pannus_calls`] gives them) as a 32-bit process makes them: by their i386
/// numbers (`mmap2` for `mmap`), under `AUDIT_ARCH_I386`, each argument a 32-bit word.
pub fn for_i386(calls: Vec<Call>) -> Vec<Call> {
    calls
        .into_iter()
        .map(|c| {
            let nr = match c.nr {
                9 => 192,
                10 => 125,
                11 => 91,
                3 => 6,
                319 => 356,
                77 => 93,
                15 => 173,
                13 => 174,
                n => n,
            };
            Call { nr, args: c.args.map(|a| a & 0xffff_ffff), arch: AUDIT_ARCH_I386, ..c }
        })
        .collect()
}

/// What a filter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused, with the action's name.
    Deny(&'static str),
    /// The filter uses an instruction this evaluator does not know.
    Unknown,
}

fn action(ret: u32) -> Verdict {
    match ret & 0xffff_0000 {
        0x7fff_0000 | 0x7ffc_0000 => Verdict::Allow,
        0x8000_0000 => Verdict::Deny("kill the process"),
        0x0000_0000 => Verdict::Deny("kill the thread"),
        0x0003_0000 => Verdict::Deny("trap (SIGSYS)"),
        0x0005_0000 => Verdict::Deny("fail with an errno"),
        0x7fc0_0000 => Verdict::Deny("notify a supervisor"),
        0x7ff0_0000 => Verdict::Deny("hand to a tracer"),
        _ => Verdict::Deny("an unknown action"),
    }
}

/// Runs one classic-BPF seccomp filter on `call`.
pub fn evaluate(filter: &[[u8; 8]], call: &Call) -> Verdict {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&call.nr.to_le_bytes());
    data[4..8].copy_from_slice(&call.arch.to_le_bytes());
    for (i, a) in call.args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let word = |k: u32| -> Option<u32> {
        let k = k as usize;
        data.get(k..k + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0usize;
    for _ in 0..4096 {
        let Some(ins) = filter.get(pc) else { return Verdict::Unknown };
        let code = u16::from_le_bytes([ins[0], ins[1]]);
        let (jt, jf) = (ins[2] as usize, ins[3] as usize);
        let k = u32::from_le_bytes([ins[4], ins[5], ins[6], ins[7]]);
        pc += 1;
        match code {
            0x20 => match word(k) {
                Some(v) => a = v, // ld [k]
                None => return Verdict::Unknown,
            },
            0x80 => a = 64,                                 // ld len
            0x00 => a = k,                                  // ld #k
            0x01 => x = k,                                  // ldx #k
            0x81 => x = 64,                                 // ldx len
            0x60 => a = mem[(k & 15) as usize],             // ld M[k]
            0x61 => x = mem[(k & 15) as usize],             // ldx M[k]
            0x02 => mem[(k & 15) as usize] = a,             // st M[k]
            0x03 => mem[(k & 15) as usize] = x,             // stx M[k]
            0x04 => a = a.wrapping_add(k),                  // add #k
            0x0c => a = a.wrapping_add(x),                  // add x
            0x14 => a = a.wrapping_sub(k),                  // sub #k
            0x1c => a = a.wrapping_sub(x),                  // sub x
            0x24 => a = a.wrapping_mul(k),                  // mul #k
            0x54 => a &= k,                                 // and #k
            0x5c => a &= x,                                 // and x
            0x44 => a |= k,                                 // or #k
            0x4c => a |= x,                                 // or x
            0xa4 => a ^= k,                                 // xor #k
            0x64 => a = a.checked_shl(k).unwrap_or(0),      // lsh #k
            0x74 => a = a.checked_shr(k).unwrap_or(0),      // rsh #k
            0x84 => a = a.wrapping_neg(),                   // neg
            0x07 => x = a,                                  // tax
            0x87 => a = x,                                  // txa
            0x05 => pc += k as usize,                       // ja
            0x15 => pc += if a == k { jt } else { jf },     // jeq #k
            0x25 => pc += if a > k { jt } else { jf },      // jgt #k
            0x35 => pc += if a >= k { jt } else { jf },     // jge #k
            0x45 => pc += if a & k != 0 { jt } else { jf }, // jset #k
            0x1d => pc += if a == x { jt } else { jf },     // jeq x
            0x2d => pc += if a > x { jt } else { jf },      // jgt x
            0x3d => pc += if a >= x { jt } else { jf },     // jge x
            0x4d => pc += if a & x != 0 { jt } else { jf }, // jset x
            0x06 => return action(k),                       // ret #k
            0x16 => return action(a),                       // ret a
            _ => return Verdict::Unknown,
        }
    }
    Verdict::Unknown
}

/// The calls some filter does not allow, with the verdict. Every filter must allow a call.
pub fn blocked<'c>(filters: &[Vec<[u8; 8]>], calls: &'c [Call]) -> Vec<(&'c Call, Verdict)> {
    let mut out = Vec::new();
    for c in calls {
        if let Some(v) = filters.iter().map(|f| evaluate(f, c)).find(|v| *v != Verdict::Allow) {
            out.push((c, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&code.to_le_bytes());
        b[2] = jt;
        b[3] = jf;
        b[4..8].copy_from_slice(&k.to_le_bytes());
        b
    }

    /// Denies memfd_create with EPERM, allows the rest.
    fn filter() -> Vec<[u8; 8]> {
        vec![
            ins(0x20, 0, 0, 4),           // ld arch
            ins(0x15, 1, 0, 0xc000_003e), // jeq x86_64
            ins(0x06, 0, 0, 0),           // kill
            ins(0x20, 0, 0, 0),           // ld nr
            ins(0x15, 0, 1, 319),         // jeq memfd_create
            ins(0x06, 0, 0, 0x0005_0001), // errno EPERM
            ins(0x06, 0, 0, 0x7fff_0000), // allow
        ]
    }

    #[test]
    fn a_filter_blocking_memfd_create_is_seen() {
        let calls = pannus_calls();
        let b = blocked(&[filter()], &calls);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].0.name, "memfd_create");
        assert_eq!(b[0].1, Verdict::Deny("fail with an errno"));
    }

    #[test]
    fn write_and_execute_together_is_what_w_xor_x_filters_deny() {
        // ld args[2] (prot); jset PROT_WRITE; ... a filter denying prot with both W and X.
        let f = vec![
            ins(0x20, 0, 0, 0),
            ins(0x15, 0, 4, 9), // mmap?
            ins(0x20, 0, 0, 32),
            ins(0x54, 0, 0, 6), // prot & (W|X)
            ins(0x15, 0, 1, 6),
            ins(0x06, 0, 0, 0x0005_000d),
            ins(0x06, 0, 0, 0x7fff_0000),
        ];
        assert!(blocked(&[f], &pannus_calls()).is_empty(), "pannus never maps W and X at once");
    }

    #[test]
    fn unknown_instructions_are_not_taken_as_allowed() {
        let f = vec![ins(0xff, 0, 0, 0)];
        assert_eq!(evaluate(&f, &pannus_calls()[0]), Verdict::Unknown);
    }
}
