//! Stage 4's safety rules for x86-64 (and i386 code, decoded in 32-bit mode): what may be overwritten at a function's entry, and whether
//! a stopped thread stands in the way of the switch right now.

use crate::error::{Error, Result};
use crate::registry::JumpKind;
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind};

/// What stage 4 will write at one function's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPlan {
    pub jump: JumpKind,
    /// First byte overwritten (the entry, or the pad before it).
    pub patch_address: u64,
    /// The bytes found there, covering whole instructions (restored on rollback).
    pub original: Vec<u8>,
    /// The bytes written there (a prefix of the covered range).
    pub written: Vec<u8>,
    /// Where the instructions this plan writes begin; a thread may stand there, nowhere else
    /// inside the covered range.
    pub starts: Vec<u64>,
}

impl EntryPlan {
    pub fn end(&self) -> u64 {
        self.patch_address + self.original.len() as u64
    }
    /// Whether `addr` lies strictly inside the overwritten bytes (not at the start of a new
    /// instruction): a thread resuming there, or returning there, would execute garbage.
    pub fn is_unsafe_spot(&self, addr: u64) -> bool {
        addr > self.patch_address && addr < self.end() && !self.starts.contains(&addr)
    }
    pub fn describe(&self) -> String {
        format!(
            "{} at {:#x}, {} bytes overwritten ({} written)",
            self.jump.as_str(),
            self.patch_address,
            self.original.len(),
            self.written.len()
        )
    }
}

fn rel32(from_end: u64, to: u64) -> Option<i32> {
    i32::try_from(to.wrapping_sub(from_end) as i64).ok()
}

fn decode_all(bits: u32, code: &[u8], ip: u64) -> Vec<Instruction> {
    let mut d = Decoder::with_ip(bits, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        out.push(d.decode());
    }
    out
}

fn branch_target(i: &Instruction) -> Option<u64> {
    match i.op0_kind() {
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => Some(i.near_branch_target()),
        _ => None,
    }
}

/// Plans the jump for function `name` at `entry` (`size` bytes, `code` its current bytes in the
/// process) to `replacement`. `pad` holds the bytes just before the entry (for a nop pad left by
/// `-fpatchable-function-entry`). Refuses, naming the function, when stage 4's entry rules
/// (ARCHITECTURE.md, `safety.rs` in the code map) are not met.
pub fn plan_entry(name: &str, entry: u64, code: &[u8], pad: &[u8], replacement: u64) -> Result<EntryPlan> {
    plan_entry_bits(64, name, entry, code, pad, replacement)
}

/// [`plan_entry`] for code of `bits` bits: 64, or 32 for an i386 process, where the code is
/// decoded in 32-bit mode and a `jmp rel32` reaches every address (it wraps at 4 GiB).
pub fn plan_entry_bits(
    bits: u32,
    name: &str,
    entry: u64,
    code: &[u8],
    pad: &[u8],
    replacement: u64,
) -> Result<EntryPlan> {
    let refuse =
        |why: String| Error::precondition(format!("function `{name}` at {entry:#x} cannot be patched safely: {why}"));
    let rel32 = |from_end: u64, to: u64| {
        if bits == 32 {
            Some(to.wrapping_sub(from_end) as u32 as i32)
        } else {
            rel32(from_end, to)
        }
    };
    let insns = decode_all(bits, code, entry);
    let near = rel32(entry + 5, replacement).is_some();
    let needed = if near { 5 } else { 14 };

    // A nop pad of 5 bytes before the entry takes the jump, and the entry only a 2-byte jump into
    // it: whatever the body begins with (a call, say), only the entry's first instructions are
    // covered. So does a pad already holding such a jump (a patch applied earlier: the same
    // bytes are then rewritten, and rollback hands them on). An entry that already holds a
    // jump of its own (an earlier patch's, at the entry) keeps that form.
    let nops = pad.iter().rev().take_while(|&&b| b == 0x90).count();
    let pad_jump = pad.len() >= 5 && pad[pad.len() - 5] == 0xe9 && code.starts_with(&[0xeb, 0xf9]);
    let entry_jump = code.first() == Some(&0xe9) || code.starts_with(&[0xff, 0x25]);
    let use_pad = (nops >= 5 && !entry_jump) || pad_jump;
    if pad_jump && rel32(entry, replacement).is_none() {
        // Two forms on one entry would break the hand-over of bytes between stacked patches.
        return Err(refuse("its nop pad holds a jump already, and the replacement is out of its reach".into()));
    }
    let (jump, patch_address, cover_from, need_here, written, starts) =
        if (code.len() as u64) >= needed && !(use_pad && rel32(entry, replacement).is_some() && code.len() >= 2) {
            if near {
                let mut w = vec![0xe9];
                w.extend_from_slice(&rel32(entry + 5, replacement).unwrap_or_default().to_le_bytes());
                (JumpKind::Rel32, entry, entry, 5u64, w, vec![entry])
            } else {
                let mut w = vec![0xff, 0x25, 0, 0, 0, 0];
                w.extend_from_slice(&replacement.to_le_bytes());
                (JumpKind::Abs64, entry, entry, 14u64, w, vec![entry])
            }
        } else {
            let pad_at = entry - 5;
            match rel32(entry, replacement) {
                Some(r) if use_pad && code.len() >= 2 => {
                    let mut w = vec![0xe9];
                    w.extend_from_slice(&r.to_le_bytes());
                    w.extend_from_slice(&[0xeb, 0xf9]); // jmp -7: back to the pad
                    (JumpKind::Pad, pad_at, entry, 2u64, w, vec![pad_at, entry])
                }
                _ => {
                    return Err(refuse(format!(
                "it is {} bytes long and the jump needs {needed}, and it has no nop pad of 5 bytes before its entry",
                code.len()
            ))
                    .hint("rebuild the target with -fpatchable-function-entry=7,5, or patch its caller instead"))
                }
            }
        };

    // Whole instructions covering the bytes written at the entry.
    let mut covered = 0u64;
    for i in &insns {
        if covered >= need_here {
            break;
        }
        if i.is_invalid() || i.next_ip() > entry + code.len() as u64 {
            return Err(refuse(format!("the instruction at {:#x} does not decode within the function", i.ip())));
        }
        // i386 PIC code begins with `call __x86.get_pc_thunk.*` (5 bytes, its return address the
        // end of the jump's 5): a thread in the callee returns to the first byte left intact,
        // never strictly inside the jump, as the stack check below holds. Any other call in
        // the bytes could be returned into.
        let call_ends_the_jump = bits == 32 && i.ip() == cover_from && i.next_ip() == cover_from + need_here;
        let bad = match i.mnemonic() {
            Mnemonic::Syscall | Mnemonic::Sysenter => Some("a syscall"),
            Mnemonic::Int | Mnemonic::Int1 | Mnemonic::Int3 | Mnemonic::Into => Some("an int"),
            _ if i.flow_control() == FlowControl::Call && call_ends_the_jump => None,
            _ if matches!(i.flow_control(), FlowControl::Call | FlowControl::IndirectCall) => Some("a call"),
            _ => None,
        };
        if let Some(what) = bad {
            return Err(refuse(format!(
                "the bytes to overwrite hold {what} at {:#x} ({i}): a thread could return into the middle of the jump",
                i.ip()
            )));
        }
        covered = i.next_ip() - entry;
    }
    if covered < need_here {
        return Err(refuse(format!("only {covered} bytes of whole instructions, {need_here} needed")));
    }
    let cover_end = cover_from + covered;
    let plan_end = cover_end;
    // No branch in the function may land strictly inside the overwritten bytes.
    for i in &insns {
        if let Some(t) = branch_target(i) {
            if t > patch_address && t < plan_end && !starts.contains(&t) {
                return Err(refuse(format!(
                    "the branch at {:#x} ({i}) lands at {t:#x}, inside the bytes the jump overwrites",
                    i.ip()
                )));
            }
        }
    }
    let mut original = Vec::with_capacity((plan_end - patch_address) as usize);
    if patch_address < entry {
        original.extend_from_slice(&pad[pad.len() - (entry - patch_address) as usize..]);
    }
    original.extend_from_slice(&code[..(cover_end - entry) as usize]);
    Ok(EntryPlan { jump, patch_address, original, written, starts })
}

/// Code of a function that the compiler placed apart from it: its cold part (`foo.cold`) or an
/// outlined part (`foo.part.0`), in the process.
pub struct Part<'a> {
    pub name: &'a str,
    pub address: u64,
    pub code: &'a [u8],
}

/// The entry rule for the parts of function `name` placed apart (see [`Part`]): as for the
/// function's own branches, none may land strictly inside the bytes `plan` overwrites. A thread
/// in a cold part jumping back to just after the entry would land in the middle of the jump.
pub fn check_parts(bits: u32, name: &str, plan: &EntryPlan, parts: &[Part]) -> Result<()> {
    for part in parts {
        for i in decode_all(bits, part.code, part.address) {
            let Some(t) = branch_target(&i) else { continue };
            if plan.is_unsafe_spot(t) {
                return Err(Error::precondition(format!(
                    "function `{name}` at {:#x} cannot be patched safely: the branch at {:#x} ({i}) in `{}`, a part \
                     of it the compiler placed apart, lands at {t:#x}, inside the bytes the jump overwrites",
                    plan.starts.last().copied().unwrap_or(plan.patch_address),
                    i.ip(),
                    part.name
                ))
                .hint(format!(
                    "rebuild the target with -fpatchable-function-entry=7,5 (the jump then goes in the pad), or \
                     -fno-reorder-blocks-and-partition; or patch the callers of `{name}` instead"
                )));
            }
        }
    }
    Ok(())
}

/// Why a stopped thread blocks the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub tid: i32,
    pub function: String,
    pub reason: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "thread {} {} in `{}`", self.tid, self.reason, self.function)
    }
}

/// A stopped thread as the checks need it: instruction pointer and a copy of its live stack.
pub struct ThreadView<'a> {
    pub tid: i32,
    pub rip: u64,
    pub stack_base: u64,
    pub stack: &'a [u8],
    /// The size of a stack word: 8, or 4 in a 32-bit process.
    pub word: usize,
}

/// The `entry` consistency rule: no instruction pointer, and no return address or signal frame
/// on a stack (any stack word), strictly inside bytes being overwritten. At most one conflict per
/// thread and function; a thread executing inside the bytes is reported as such.
///
/// This runs while every thread is stopped, over every stack word read, so each word costs one
/// subtraction and comparison against the span of all the plans, and only words in that span
/// look for their plan (by binary search: plans do not overlap).
pub fn entry_conflicts<'p>(
    plans: impl Iterator<Item = (&'p str, &'p EntryPlan)> + Clone,
    threads: &[ThreadView],
) -> Vec<Conflict> {
    let mut sorted: Vec<(&str, &EntryPlan)> = plans.collect();
    sorted.sort_by_key(|(_, p)| p.patch_address);
    let (Some(first), Some(lo_end)) = (sorted.first(), sorted.iter().map(|(_, p)| p.end()).max()) else {
        return Vec::new();
    };
    let lo = first.1.patch_address + 1;
    let span = lo_end.saturating_sub(lo);
    // The plan whose covered bytes hold `addr` strictly inside (not at an instruction start).
    let unsafe_in = |addr: u64| -> Option<usize> {
        if addr.wrapping_sub(lo) >= span {
            return None;
        }
        let k = sorted.partition_point(|(_, p)| p.patch_address < addr).checked_sub(1)?;
        sorted[k].1.is_unsafe_spot(addr).then_some(k)
    };
    let mut out = Vec::new();
    for t in threads {
        let mut hit: Vec<bool> = vec![false; sorted.len()];
        if let Some(k) = unsafe_in(t.rip) {
            hit[k] = true;
            out.push(Conflict {
                tid: t.tid,
                function: sorted[k].0.to_string(),
                reason: format!("is executing at {:#x}, inside the bytes to overwrite", t.rip),
            });
        }
        let word = if t.word == 4 { 4 } else { 8 };
        for (i, w) in t.stack.chunks_exact(word).enumerate() {
            let mut v = [0u8; 8];
            v[..word].copy_from_slice(w);
            let v = u64::from_le_bytes(v);
            let Some(k) = unsafe_in(v) else { continue };
            if std::mem::replace(&mut hit[k], true) {
                continue;
            }
            let at = t.stack_base + (word * i) as u64;
            out.push(Conflict {
                tid: t.tid,
                function: sorted[k].0.to_string(),
                reason: format!(
                    "has {v:#x} on its stack at {at:#x} (a return address or signal frame inside the bytes to overwrite)"
                ),
            });
        }
    }
    out
}

/// A function's code in the target, by name: what the `function` rule keeps threads out of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRange {
    pub function: String,
    pub range: std::ops::Range<u64>,
}

/// The `function` consistency rule for one thread: none of its frames may be in the old code,
/// and a stack that could not be unwound to its end counts as busy ("unknown"), never as safe.
pub fn function_conflicts(tid: i32, bt: &crate::unwind::Backtrace, old: &[CodeRange]) -> Vec<Conflict> {
    for (depth, a) in bt.code_addresses().enumerate() {
        if let Some(CodeRange { function: name, .. }) = old.iter().find(|c| c.range.contains(&a)) {
            let reason = if depth == 0 {
                format!("is executing at {a:#x}")
            } else {
                format!("has a frame at depth {depth} (returning to {:#x})", a + 1)
            };
            return vec![Conflict { tid, function: name.clone(), reason }];
        }
    }
    match old.first() {
        Some(CodeRange { function: name, .. }) if !bt.complete => vec![Conflict {
            tid,
            function: name.clone(),
            reason: format!(
                "has a stack that cannot be unwound past {} frame(s): unknown, so not safe",
                bt.frames.len()
            ),
        }],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // push rbp; mov rbp,rsp; mov eax,edi; add eax,1; pop rbp; ret
    const FUNC: &[u8] = &[0x55, 0x48, 0x89, 0xe5, 0x89, 0xf8, 0x83, 0xc0, 0x01, 0x5d, 0xc3];

    #[test]
    fn rel32_covers_whole_instructions() {
        let p = plan_entry("f", 0x1000, FUNC, &[], 0x2000).unwrap();
        assert_eq!(p.jump, JumpKind::Rel32);
        assert_eq!(p.original, FUNC[..6].to_vec()); // 1 + 3 + 2 bytes
        assert_eq!(p.written[0], 0xe9);
        assert_eq!(i32::from_le_bytes(p.written[1..5].try_into().unwrap()), 0x2000 - 0x1005);
        assert!(p.is_unsafe_spot(0x1001));
        assert!(!p.is_unsafe_spot(0x1000));
        assert!(!p.is_unsafe_spot(0x1006));
    }

    #[test]
    fn far_replacement_uses_abs64() {
        let mut code = FUNC.to_vec();
        code.extend_from_slice(&[0x90; 8]);
        let p = plan_entry("f", 0x1000, &code, &[], 0x7f00_0000_0000).unwrap();
        assert_eq!(p.jump, JumpKind::Abs64);
        assert_eq!(p.written.len(), 14);
        assert!(p.original.len() >= 14);
    }

    #[test]
    fn too_small_is_refused_by_name() {
        let e = plan_entry("tiny", 0x1000, &[0x31, 0xc0, 0xc3], &[], 0x2000).unwrap_err();
        assert!(e.message.contains("`tiny`"), "{e}");
        assert!(e.message.contains("3 bytes long"), "{e}");
    }

    #[test]
    fn nop_pad_before_entry_is_used() {
        let p = plan_entry("tiny", 0x1000, &[0x31, 0xc0, 0xc3], &[0x90; 5], 0x2000).unwrap();
        assert_eq!(p.jump, JumpKind::Pad);
        assert_eq!(p.patch_address, 0x1000 - 5);
        assert_eq!(&p.written[5..], &[0xeb, 0xf9]);
        assert!(!p.is_unsafe_spot(0x1000));
        assert!(p.is_unsafe_spot(0x1001));
    }

    /// -fpatchable-function-entry=7,5: 5 nops before the entry, 2 at it, then the body.
    const PADDED_CALL: &[u8] = &[0x90, 0x90, 0xe8, 0, 0, 0, 0, 0xc3]; // nop; nop; call; ret

    #[test]
    fn a_pad_takes_the_jump_whatever_the_body_begins_with() {
        let p = plan_entry("padded", 0x1000, PADDED_CALL, &[0x90; 5], 0x2000).unwrap();
        assert_eq!(p.jump, JumpKind::Pad);
        assert_eq!(p.patch_address, 0x1000 - 5);
        assert_eq!(p.original, vec![0x90; 7], "the pad and the two nops at the entry, not the call");
        assert_eq!(i32::from_le_bytes(p.written[1..5].try_into().unwrap()), 0x2000 - 0x1000);
        // A pad already holding such a jump (an earlier patch) is rewritten in place, so that
        // rollback hands the bytes on between the two patches.
        let mut pad = vec![0xe9];
        pad.extend_from_slice(&(0x3000i32 - 0x1000).to_le_bytes());
        let mut code = vec![0xeb, 0xf9];
        code.extend_from_slice(&PADDED_CALL[2..]);
        let q = plan_entry("padded", 0x1000, &code, &pad, 0x2000).unwrap();
        assert_eq!((q.jump, q.patch_address), (JumpKind::Pad, p.patch_address));
        assert_eq!(&q.original[..5], &pad[..]);
        // An entry holding an earlier patch's jump of its own keeps that form.
        let mut code = vec![0xe9, 0, 0x10, 0, 0];
        code.extend_from_slice(&PADDED_CALL[2..]);
        let r = plan_entry("padded", 0x1000, &code, &[0x90; 5], 0x2000).unwrap();
        assert_eq!((r.jump, r.patch_address), (JumpKind::Rel32, 0x1000));
        // A call right at the entry is still covered by the short jump: refused.
        let e = plan_entry("c", 0x1000, &PADDED_CALL[2..], &[0x90; 5], 0x2000).unwrap_err();
        assert!(e.message.contains("a call"), "{e}");
    }

    #[test]
    fn call_in_entry_is_refused() {
        // call rel32; ret
        let e = plan_entry("c", 0x1000, &[0xe8, 0, 0, 0, 0, 0xc3], &[], 0x2000).unwrap_err();
        assert!(e.message.contains("a call"), "{e}");
    }

    #[test]
    fn branch_into_entry_is_refused() {
        // 0: push rbp(1) 1: mov rbp,rsp(3) 4: nop(1) 5: nop 6: jmp 0x1001 (eb f9) 8: ret
        let code = [0x55, 0x48, 0x89, 0xe5, 0x90, 0x90, 0xeb, 0xf9, 0xc3];
        let e = plan_entry("loop", 0x1000, &code, &[], 0x2000).unwrap_err();
        assert!(e.message.contains("lands at 0x1001"), "{e}");
    }

    #[test]
    fn a_cold_part_branching_into_the_entry_bytes_is_refused() {
        let p = plan_entry("f", 0x1000, FUNC, &[], 0x2000).unwrap();
        // push rdi; pop rdi; jmp 0x1001 (rel32 from 0x5002 + 5)
        let mut cold = vec![0x57, 0x5f, 0xe9];
        cold.extend_from_slice(&(0x1001i32 - 0x5007).to_le_bytes());
        let part = Part { name: "f.cold", address: 0x5000, code: &cold };
        let e = check_parts(64, "f", &p, &[part]).unwrap_err();
        assert!(e.message.contains("`f.cold`") && e.message.contains("lands at 0x1001"), "{e}");
        // Back to the entry itself, or past the overwritten bytes: fine.
        for to in [0x1000i32, 0x1006] {
            let mut cold = vec![0xe9];
            cold.extend_from_slice(&(to - 0x5005).to_le_bytes());
            check_parts(64, "f", &p, &[Part { name: "f.cold", address: 0x5000, code: &cold }]).unwrap();
        }
    }

    #[test]
    fn threads_inside_are_conflicts() {
        let p = plan_entry("f", 0x1000, FUNC, &[], 0x2000).unwrap();
        let stack = 0x1003u64.to_le_bytes();
        let threads = [
            ThreadView { tid: 7, rip: 0x1004, stack_base: 0, stack: &[], word: 8 },
            ThreadView { tid: 8, rip: 0x5000, stack_base: 0x7000, stack: &stack, word: 8 },
            ThreadView { tid: 9, rip: 0x1000, stack_base: 0, stack: &[], word: 8 },
        ];
        let c = entry_conflicts([("f", &p)].into_iter(), &threads);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].tid, 7);
        assert_eq!(c[1].tid, 8);
    }

    #[test]
    fn each_plan_is_found_among_many() {
        let plans: Vec<(String, EntryPlan)> = (0..50u64)
            .rev()
            .map(|k| (format!("f{k}"), plan_entry("f", 0x1000 + 0x100 * k, FUNC, &[], 0x9_0000).unwrap()))
            .collect();
        let mut stack = Vec::new();
        for v in [0x1003u64, 0x2000, 0x1000 + 0x100 * 17 + 2, 0x1000 + 0x100 * 17 + 3, 0x1000 + 0x100 * 49, 0x0fff] {
            stack.extend_from_slice(&v.to_le_bytes());
        }
        let threads = [
            ThreadView { tid: 1, rip: 0x1000 + 0x100 * 30 + 1, stack_base: 0x8000, stack: &stack, word: 8 },
            ThreadView { tid: 2, rip: 0x1000 + 0x100 * 31, stack_base: 0, stack: &[], word: 8 },
        ];
        let c = entry_conflicts(plans.iter().map(|(n, p)| (n.as_str(), p)), &threads);
        let found: Vec<(i32, &str)> = c.iter().map(|c| (c.tid, c.function.as_str())).collect();
        // f30 by its instruction pointer; f0 and f17 (once) by stack words; f49's start is fine.
        assert_eq!(found, [(1, "f30"), (1, "f0"), (1, "f17")]);
        assert!(c[2].reason.contains(&format!("{:#x}", 0x8000 + 16)), "{}", c[2].reason);
    }

    #[test]
    fn in_32_bit_code_a_jump_always_reaches_and_a_pic_thunk_call_may_be_overwritten() {
        // call __x86.get_pc_thunk.ax; add $0x2d0f, %eax; ...: the call ends the jump's 5 bytes.
        let thunk = [0xe8, 0x6d, 0x06, 0x00, 0x00, 0x05, 0x0f, 0x2d, 0x00, 0x00, 0xc3];
        let p = plan_entry_bits(32, "helper", 0x5655_72e0, &thunk, &[], 0xf7f0_0000).unwrap();
        assert_eq!(p.jump, JumpKind::Rel32, "rel32 wraps at 4 GiB");
        assert_eq!(p.written[0], 0xe9);
        assert_eq!(p.original, thunk[..5].to_vec());
        let e = plan_entry("helper", 0x1000, &thunk, &[], 0x2000).unwrap_err();
        assert!(e.message.contains("a call"), "64-bit code keeps the rule: {}", e.message);
        // push %ebx; call ...: the call ends a byte past the jump.
        let parked = [0x53, 0xe8, 0x3a, 0xf9, 0xff, 0xff, 0x81, 0xc3, 0x8e, 0x27, 0x00, 0x00, 0xc3];
        let e = plan_entry_bits(32, "parked", 0x1000, &parked, &[], 0x2000).unwrap_err();
        assert!(e.message.contains("a call"), "{}", e.message);
        // int $0x80 in the first bytes.
        let e = plan_entry_bits(32, "sys", 0x1000, &[0xcd, 0x80, 0x90, 0x90, 0x90, 0xc3], &[], 0x2000).unwrap_err();
        assert!(e.message.contains("an int"), "{}", e.message);
    }
}
