//! Backtraces of a 32-bit (i386) process's stopped threads: framehop unwinds x86-64 and
//! AArch64 only, so here each object's `.eh_frame` is read with gimli and its rules evaluated
//! for the registers that i386 code's CFI uses: `esp`, `ebp`, the return address, and the DWARF
//! expressions of a function that realigns its stack (`main`: its CFA and `ebp` found through
//! `ebp`). A rule that needs another register, or code no table describes, ends the backtrace as
//! incomplete, which the callers treat as busy, never as safe.

use crate::target::Loaded;
use crate::unwind::Backtrace;
use gimli::{
    BaseAddresses, CfaRule, EhFrame, Encoding, EvaluationResult, Format, LittleEndian, Location, RegisterRule,
    UnwindContext, UnwindExpression, UnwindSection, Value, X86,
};

type Slice<'a> = gimli::EndianSlice<'a, LittleEndian>;

/// Evaluates a CFI expression of `eh` with `esp` and `ebp` known, `push` first on its stack (the
/// CFA, for a register rule), memory read with `read`: the address or value it computes.
fn evaluate(
    eh: &EhFrame<Slice<'_>>,
    expr: &UnwindExpression<usize>,
    (esp, ebp): (u64, u64),
    push: Option<u64>,
    read: &dyn Fn(u64) -> Option<u64>,
) -> Option<u64> {
    let expr = expr.get(eh).ok()?;
    let encoding = Encoding { format: Format::Dwarf32, version: 4, address_size: 4 };
    let mut eval = expr.evaluation(encoding);
    if let Some(v) = push {
        eval.set_initial_value(v);
    }
    let mut result = eval.evaluate().ok()?;
    for _ in 0..64 {
        result = match result {
            EvaluationResult::Complete => break,
            EvaluationResult::RequiresRegister { register, .. } => {
                let v = match register {
                    X86::ESP => esp,
                    X86::EBP => ebp,
                    _ => return None,
                };
                eval.resume_with_register(Value::Generic(v)).ok()?
            }
            EvaluationResult::RequiresMemory { address, size: 4, .. } => {
                eval.resume_with_memory(Value::Generic(read(address)?)).ok()?
            }
            _ => return None,
        };
    }
    if result != EvaluationResult::Complete {
        return None;
    }
    match eval.result().first()?.location {
        Location::Address { address } => Some(address & 0xffff_ffff),
        Location::Value { value } => value.to_u64(0xffff_ffff).ok(),
        _ => None,
    }
}
use pannus_kernel::Mem;

/// Deepest backtrace taken.
const MAX_FRAMES: usize = 256;

/// One object's unwinding table, as the process maps it.
struct Table<'a> {
    eh: EhFrame<Slice<'a>>,
    bases: BaseAddresses,
}

/// Unwinds a stopped 32-bit thread from `eip`, `esp`, `ebp`. `stack` holds the memory from
/// `esp` up, read beforehand; other addresses are read from the process.
pub fn backtrace(objects: &[Loaded], mem: &Mem, eip: u64, esp: u64, ebp: u64, stack: &[u8]) -> Backtrace {
    let read = |addr: u64| -> Option<u64> {
        if addr >= esp {
            let off = usize::try_from(addr - esp).ok()?;
            if let Some(b) = stack.get(off..off.checked_add(4)?) {
                return Some(u64::from(u32::from_le_bytes(b.try_into().ok()?)));
            }
        }
        let b = mem.read_vec(addr, 4).ok()?;
        Some(u64::from(u32::from_le_bytes(b.try_into().ok()?)))
    };
    let sections: Vec<(usize, &[u8], u64, Option<u64>)> = objects
        .iter()
        .enumerate()
        .filter_map(|(i, o)| {
            let (range, bytes) = o.object.section(".eh_frame")?;
            let got = o.object.section(".got.plt").or_else(|| o.object.section(".got")).map(|(r, _)| r.start);
            Some((i, bytes, range.start, got))
        })
        .collect();
    let table = |i: usize| -> Option<Table<'_>> {
        let &(_, bytes, eh_vaddr, got) = sections.iter().find(|s| s.0 == i)?;
        let o = &objects[i];
        let mut eh = EhFrame::new(bytes, LittleEndian);
        eh.set_address_size(4);
        let mut bases = BaseAddresses::default().set_eh_frame(o.bias.wrapping_add(eh_vaddr));
        if let Some(got) = got {
            bases = bases.set_got(o.bias.wrapping_add(got));
        }
        Some(Table { eh, bases })
    };
    let mut ctx = Box::new(UnwindContext::new());
    let (mut pc, mut sp, mut bp) = (eip, esp, ebp);
    let mut frames = vec![eip];
    let complete = loop {
        if frames.len() >= MAX_FRAMES {
            break false;
        }
        // A return address is looked up by its call instruction, the byte before it.
        let lookup = if frames.len() == 1 { pc } else { pc.wrapping_sub(1) };
        let Some(i) = objects.iter().position(|o| lookup >= o.lo && lookup < o.hi) else { break false };
        let Some(t) = table(i) else { break false };
        let Ok(row) = t.eh.unwind_info_for_address(&t.bases, &mut ctx, lookup, EhFrame::cie_from_offset) else {
            break false;
        };
        let reg = |r: gimli::Register| match r {
            X86::ESP => Some(sp),
            X86::EBP => Some(bp),
            _ => None,
        };
        let cfa = match row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } => match reg(*register) {
                Some(v) => v.wrapping_add_signed(*offset) & 0xffff_ffff,
                None => break false,
            },
            CfaRule::Expression(e) => match evaluate(&t.eh, e, (sp, bp), None, &read) {
                Some(v) => v,
                None => break false,
            },
        };
        let ra = match row.register(X86::RA) {
            Some(RegisterRule::Undefined) => break true,
            Some(RegisterRule::Offset(o)) => read(cfa.wrapping_add_signed(o)),
            Some(RegisterRule::Expression(e)) => evaluate(&t.eh, &e, (sp, bp), Some(cfa), &read).and_then(&read),
            _ => None,
        };
        let Some(ra) = ra else { break false };
        bp = match row.register(X86::EBP) {
            None | Some(RegisterRule::SameValue) => bp,
            Some(RegisterRule::Offset(o)) => match read(cfa.wrapping_add_signed(o)) {
                Some(v) => v,
                None => break false,
            },
            Some(RegisterRule::Expression(e)) => {
                match evaluate(&t.eh, &e, (sp, bp), Some(cfa), &read).and_then(&read) {
                    Some(v) => v,
                    None => break false,
                }
            }
            Some(_) => break false,
        };
        if ra == 0 {
            break true;
        }
        if cfa <= sp && frames.len() > 1 {
            // The stack must grow towards the caller's frames: anything else is a loop.
            break false;
        }
        (pc, sp) = (ra, cfa);
        frames.push(ra);
    };
    Backtrace { frames, complete }
}
