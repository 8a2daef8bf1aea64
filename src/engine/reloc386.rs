//! Stage 2's relocation math for an i386 module (`gcc -m32 -shared -fPIC`): pure, as
//! [`super::symbols::relocate`] is for x86-64, over the same image and with the same result (the
//! runs of pages that changed). i386 modules carry `REL` relocations: the addend is the word in
//! place, which the parse already read into [`Reloc::addend`].
//!
//! A shared object's PIC reaches its GOT through `__x86.get_pc_thunk.*`, which the module
//! carries: the static linker has already resolved `R_386_GOT32X`, `R_386_GOTOFF`,
//! `R_386_GOTPC` and `R_386_PLT32`, so a module holds only the dynamic types below. Any other
//! (TLS, `R_386_COPY`, `R_386_IRELATIVE`, text relocations of non-PIC code other than `32` and
//! `PC32`) is refused by name in pre-flight: `load: dlopen` handles TLS.

use crate::elf::Reloc;
use crate::error::{Error, Result};
use std::ops::Range;

pub const R_386_NONE: u32 = 0;
pub const R_386_32: u32 = 1;
pub const R_386_PC32: u32 = 2;
pub const R_386_GLOB_DAT: u32 = 6;
pub const R_386_JMP_SLOT: u32 = 7;
pub const R_386_RELATIVE: u32 = 8;

/// The relocation types the `mmap` method applies to an i386 module.
pub const SUPPORTED: [u32; 6] = [R_386_NONE, R_386_32, R_386_PC32, R_386_GLOB_DAT, R_386_JMP_SLOT, R_386_RELATIVE];

/// The ELF name of an i386 relocation type, for messages.
pub fn reloc_name(t: u32) -> String {
    let name = goblin::elf::reloc::r_to_str(t, goblin::elf::header::EM_386);
    format!("R_386_{}", name.trim_start_matches("R_").trim_start_matches("386_"))
}

/// Applies `relocs` to `image` (the module's bytes from virtual address `lo`, loaded at `bias`,
/// below 4 GiB), with `value(i)` the run-time address of symbol `i`: every field is 32 bits,
/// and a PC-relative one always reaches (addresses wrap at 4 GiB).
pub fn relocate(
    relocs: &[Reloc],
    image: &mut [u8],
    lo: u64,
    bias: u64,
    value: impl Fn(usize) -> u64,
) -> Result<Vec<Range<usize>>> {
    let width = |r: &Reloc| (r.rtype != R_386_NONE).then_some(4);
    super::symbols::write_fields(relocs, image, lo, width, |r| {
        let s = r.sym.map_or(0, &value) as u32;
        let a = r.addend as u32;
        let place = bias.wrapping_add(r.offset) as u32;
        let word = match r.rtype {
            R_386_RELATIVE => (bias as u32).wrapping_add(a),
            R_386_32 => s.wrapping_add(a),
            R_386_PC32 => s.wrapping_add(a).wrapping_sub(place),
            // ld.so writes the symbol's address alone here: the word in place (a lazy-binding
            // PLT address, or 0) is no addend.
            R_386_GLOB_DAT | R_386_JMP_SLOT => s,
            t => return Err(Error::bad_input(format!("relocation {} is not supported by load: mmap", reloc_name(t)))),
        };
        Ok(word.to_le_bytes().to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reloc(offset: u64, rtype: u32, sym: Option<usize>, addend: i64) -> Reloc {
        Reloc { offset, rtype, sym, addend }
    }

    #[test]
    fn i386_relocations_are_32_bit_and_wrap() {
        let mut img = vec![0u8; 0x3000];
        let bias = 0xf7e0_0000u64;
        let relocs = [
            reloc(0x1000, R_386_RELATIVE, None, 0x2010),
            reloc(0x1004, R_386_32, Some(0), 4),
            reloc(0x1008, R_386_GLOB_DAT, Some(0), 0x1234),
            reloc(0x100c, R_386_JMP_SLOT, Some(1), 0x0456),
            reloc(0x1010, R_386_PC32, Some(1), -4),
        ];
        let values = [0x5655_7000u64, 0x0804_9000];
        let runs = relocate(&relocs, &mut img, 0, bias, |i| values[i]).unwrap();
        assert_eq!(runs, vec![0x1000..0x2000]);
        let word = |at: usize| u32::from_le_bytes(img[at..at + 4].try_into().unwrap());
        assert_eq!(word(0x1000), 0xf7e0_2010);
        assert_eq!(word(0x1004), 0x5655_7004);
        assert_eq!(word(0x1008), 0x5655_7000, "GLOB_DAT: the address alone");
        assert_eq!(word(0x100c), 0x0804_9000, "JMP_SLOT: the address alone");
        // From 0xf7e01010 to 0x08049000 - 4: wraps around 4 GiB, always in reach.
        assert_eq!(word(0x1010), 0x0804_9000u32.wrapping_sub(4).wrapping_sub(0xf7e0_1010));
        let tls = [reloc(0x1000, 14, None, 0)];
        let e = relocate(&tls, &mut img, 0, bias, |_| 0).unwrap_err();
        assert!(e.message.contains("R_386_TLS_TPOFF"), "{}", e.message);
        assert!(relocate(&[reloc(0x2ffe, R_386_32, None, 0)], &mut img, 0, bias, |_| 0).is_err());
    }
}
