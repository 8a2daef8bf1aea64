//! Where a function of an object starts and ends when the object's own symbol tables do not
//! say: the separate debug file installed for its build-id (`/usr/lib/debug/.build-id/`, whose
//! `.symtab` names glibc's hidden functions such as `__strlen_avx2` and `__GI_strlen`), and the
//! object's `.eh_frame` (every function compiled with unwind tables has a frame description
//! entry, which gives its start and length). All of it read from files, never from a process.

use super::{Object, SymKind, Symbol};
use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};
use std::path::PathBuf;

/// The path of the separate debug file for build-id `build_id`.
pub fn debug_path(build_id: &str) -> Option<PathBuf> {
    if build_id.len() < 4 || !build_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (head, tail) = build_id.split_at(2);
    Some(PathBuf::from(format!("/usr/lib/debug/.build-id/{head}/{tail}.debug")))
}

/// The defined symbols of `.symtab` of a separate debug file: its functions (plain and indirect),
/// with their addresses in the object they describe.
#[derive(Debug, Default)]
pub struct DebugSymbols {
    pub symbols: Vec<Symbol>,
}

impl DebugSymbols {
    /// The debug file installed for `object`'s build-id, when there is one whose own build-id is
    /// the object's (a debug file of another build would name other addresses).
    pub fn for_object(object: &Object) -> Option<DebugSymbols> {
        let id = object.build_id.as_deref()?;
        let path = debug_path(id)?;
        let bytes = super::read_file(&path, "debug file").ok()?;
        let elf = goblin::elf::Elf::parse(&bytes).ok()?;
        let own = elf.iter_note_sections(&bytes, None).and_then(|notes| {
            notes.flatten().find_map(|n| {
                (n.n_type == goblin::elf::note::NT_GNU_BUILD_ID && n.name == "GNU").then(|| hex::encode(n.desc))
            })
        });
        if own.as_deref() != Some(id) {
            return None;
        }
        let symbols = elf
            .syms
            .iter()
            .filter(|s| {
                s.st_shndx != 0 && matches!(s.st_type(), goblin::elf::sym::STT_FUNC | goblin::elf::sym::STT_GNU_IFUNC)
            })
            .filter_map(|s| {
                let name = elf.strtab.get_at(s.st_name).filter(|n| !n.is_empty())?;
                Some(Symbol::from_elf(name.to_string(), &s, None, true))
            })
            .collect();
        Some(DebugSymbols { symbols })
    }

    /// The single definition of `name`: a global one if there is one, else a file-local one if
    /// it is the only one.
    pub fn lookup(&self, name: &str) -> Option<&Symbol> {
        let defs: Vec<&Symbol> = self.symbols.iter().filter(|s| s.name == name).collect();
        defs.iter().find(|s| s.global).copied().or_else(|| {
            let first = defs.first()?;
            defs.iter().all(|s| s.value == first.value).then_some(*first)
        })
    }

    /// The functions (not indirect ones) that start at `vaddr`, in table order.
    pub fn functions_at(&self, vaddr: u64) -> impl Iterator<Item = &Symbol> {
        self.symbols.iter().filter(move |s| s.value == vaddr && s.kind == SymKind::Func && s.size > 0)
    }
}

/// The length of the function starting exactly at `vaddr`, from the frame description entry of
/// `object`'s `.eh_frame` that begins there (found through `.eh_frame_hdr`'s search table).
pub fn unwind_extent(object: &Object, vaddr: u64) -> Option<u64> {
    let (hdr_range, hdr) = object.section(".eh_frame_hdr")?;
    let (frame_range, frame) = object.section(".eh_frame")?;
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_range.start).set_eh_frame(frame_range.start);
    let word = object.arch.word() as u8;
    let parsed = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, word).ok()?;
    let table = parsed.table()?;
    let mut eh_frame = EhFrame::new(frame, LittleEndian);
    eh_frame.set_address_size(word);
    let fde = table.fde_for_address(&eh_frame, &bases, vaddr, EhFrame::cie_from_offset).ok()?;
    (fde.initial_address() == vaddr && fde.len() > 0).then(|| fde.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_c_library_functions_have_frame_entries() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("/libc.so")).unwrap();
        let o = Object::load_tables(std::path::Path::new(path), "libc").unwrap();
        let getpid = o.lookup_dynamic("getpid", None).unwrap();
        assert_eq!(unwind_extent(&o, getpid.value), Some(getpid.size));
        assert_eq!(unwind_extent(&o, getpid.value + 1), None);
        assert!(debug_path("ab").is_none() && debug_path("zz12").is_none());
        if let Some(d) = DebugSymbols::for_object(&o) {
            // Installed (libc6-dbg): the hidden implementations are named.
            let at: Vec<&Symbol> = d.functions_at(getpid.value).collect();
            assert!(at.iter().any(|s| s.name == "getpid" || s.name == "__getpid"), "{at:?}");
            assert!(at.iter().all(|s| s.size == getpid.size), "{at:?}");
        }
    }
}
