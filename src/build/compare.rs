//! Comparing compiled functions at the level of code and what their relocations refer to,
//! not source text: two builds of one unit, or a unit and the running binary.

use super::objfile::{self, Unit};
use iced_x86::{Decoder, DecoderOptions};

/// How one function's two builds compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Same,
    /// The code differs only in immediates that are the `__LINE__` values of lines the diff
    /// moved: (old line, new line) for each.
    LinesOnly(Vec<(u32, u32)>),
    /// Really changed: the first difference, for the report.
    Changed(String),
}

/// The bytes of function `sym` with every relocated field zeroed (and, for the relocations the
/// linker may relax, the opcode bytes before them), and what each relocation refers to.
pub fn masked(unit: &Unit, sym: usize) -> (Vec<u8>, Vec<(u64, String)>) {
    let mut bytes = unit.code(sym).map(<[u8]>::to_vec).unwrap_or_default();
    let mut refs = Vec::new();
    for r in unit.relocs_in(sym) {
        let from = if matches!(r.rtype, objfile::R_GOTPCRELX | objfile::R_REX_GOTPCRELX) {
            r.offset.saturating_sub(3)
        } else {
            r.offset
        } as usize;
        let end = (r.offset as usize + objfile::width(r.rtype)).min(bytes.len());
        if from < end {
            bytes[from..end].fill(0);
        }
        refs.push((r.offset, unit.describe(&r)));
    }
    (bytes, refs)
}

/// Compares function `a` of unit `ua` (the original build) with function `b` of `ub` (the
/// build with the fix); `moved(old, new)` says whether `old` is a line the diff moved to `new`.
pub fn compare(ua: &Unit, a: usize, ub: &Unit, b: usize, moved: &dyn Fn(i64, i64) -> bool) -> Verdict {
    let (ca, ra) = masked(ua, a);
    let (cb, rb) = masked(ub, b);
    if ra.len() != rb.len() || ra.iter().zip(&rb).any(|(x, y)| x.1 != y.1) {
        let first = ra
            .iter()
            .zip(&rb)
            .find(|(x, y)| x.1 != y.1)
            .map(|(x, y)| format!("refers to {} instead of {}", y.1, x.1))
            .unwrap_or_else(|| format!("{} references instead of {}", rb.len(), ra.len()));
        return Verdict::Changed(first);
    }
    if ca == cb {
        return Verdict::Same;
    }
    if ca.len() != cb.len() {
        return Verdict::Changed(format!("{} bytes of code instead of {}", cb.len(), ca.len()));
    }
    let mut da = Decoder::with_ip(64, &ca, 0, DecoderOptions::NONE);
    let mut db = Decoder::with_ip(64, &cb, 0, DecoderOptions::NONE);
    let mut lines = Vec::new();
    while da.can_decode() && db.can_decode() {
        let pos = da.position();
        let ia = da.decode();
        let ib = db.decode();
        let (len_a, len_b) = (ia.len(), ib.len());
        if len_a != len_b {
            return Verdict::Changed(format!("different instructions at offset {pos:#x}"));
        }
        let (xa, xb) = (&ca[pos..pos + len_a], &cb[pos..pos + len_b]);
        if xa == xb {
            continue;
        }
        let oa = da.get_constant_offsets(&ia);
        let ob = db.get_constant_offsets(&ib);
        let imm = |x: &[u8], o: &iced_x86::ConstantOffsets| -> Option<(usize, i64)> {
            if !o.has_immediate() {
                return None;
            }
            let (at, size) = (o.immediate_offset(), o.immediate_size());
            let raw = x.get(at..at + size)?;
            let mut v = [0u8; 8];
            v[..size].copy_from_slice(raw);
            Some((at, i64::from_le_bytes(v)))
        };
        match (imm(xa, &oa), imm(xb, &ob)) {
            (Some((at, va)), Some((bt, vb)))
                if at == bt
                    && xa[..at] == xb[..at]
                    && xa[at + oa.immediate_size()..] == xb[at + ob.immediate_size()..]
                    && moved(va, vb) =>
            {
                lines.push((va as u32, vb as u32));
            }
            _ => return Verdict::Changed(format!("different instruction at offset {pos:#x}")),
        }
    }
    if lines.is_empty() {
        Verdict::Changed("different code".into())
    } else {
        Verdict::LinesOnly(lines)
    }
}

/// Whether function `sym` of `unit` is the code `binary` (its bytes in the running binary) has,
/// relocated fields aside; the difference otherwise. Instruction by instruction: a branch to
/// a function of the same section is a short jump in the binary, where the assembler resolved
/// it, and a long one with a relocation in the unit built with `-ffunction-sections`.
pub fn matches_binary(unit: &Unit, sym: usize, binary: &[u8]) -> Result<(), String> {
    let ours = unit.code(sym).unwrap_or_default();
    let relocs = unit.relocs_in(sym);
    // The bytes of each relocation's field (and what the linker may rewrite around it).
    let masked_at = |r: &objfile::Rel| {
        let from = match r.rtype {
            objfile::R_GOTPCRELX | objfile::R_REX_GOTPCRELX => r.offset.saturating_sub(3),
            _ => r.offset,
        };
        from as usize..(r.offset as usize + objfile::width(r.rtype))
    };
    let mut da = Decoder::with_ip(64, ours, 0, DecoderOptions::NONE);
    let mut db = Decoder::with_ip(64, binary, 0, DecoderOptions::NONE);
    while da.can_decode() && db.can_decode() {
        let (pa, pb) = (da.position(), db.position());
        let (ia, ib) = (da.decode(), db.decode());
        let (xa, xb) = (&ours[pa..pa + ia.len()], &binary[pb..pb + ib.len()]);
        let inside: Vec<std::ops::Range<usize>> = relocs
            .iter()
            .map(masked_at)
            .filter(|m| m.start < pa + ia.len() && m.end > pa)
            .map(|m| m.start.saturating_sub(pa)..(m.end - pa).min(ia.len()))
            .collect();
        let same =
            xa.len() == xb.len() && (0..xa.len()).all(|k| xa[k] == xb[k] || inside.iter().any(|m| m.contains(&k)));
        let branch = matches!(
            ia.flow_control(),
            iced_x86::FlowControl::UnconditionalBranch | iced_x86::FlowControl::ConditionalBranch
        );
        if same || (branch && !inside.is_empty() && ia.mnemonic() == ib.mnemonic()) {
            continue;
        }
        return Err(format!("the code differs at offset {pa:#x}"));
    }
    if da.can_decode() || db.can_decode() {
        return Err(format!("{} bytes here, {} in the running binary", ours.len(), binary.len()));
    }
    Ok(())
}
