//! A compiled translation unit (an ELF relocatable object built with `-ffunction-sections
//! -fdata-sections`) as `pannus build` compares and copies it: sections with their relocations,
//! and the functions and variables they hold.

use crate::error::{Error, Result};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind, SymbolKind};
use std::collections::BTreeSet;
use std::path::Path;

/// What a section holds, as far as a patch cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    Code,
    /// Writable data with contents.
    Data,
    /// Zero-initialised data.
    Bss,
    /// Read-only data (constants, tables, jump tables).
    ReadOnly,
    /// Merged strings (`.rodata.str1.1`): literals, owned by the code that uses them.
    Strings,
    /// Thread-local storage.
    Tls,
    /// Debug information, unwind tables, notes: not copied into a module.
    Other,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub holds: Holds,
    pub data: Vec<u8>,
    pub size: u64,
    pub align: u64,
    pub relocs: Vec<Rel>,
}

#[derive(Debug, Clone, Copy)]
pub struct Rel {
    pub offset: u64,
    pub rtype: u32,
    /// Index into [`Unit::symbols`].
    pub sym: usize,
    pub addend: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Func,
    Object,
    Section,
    Tls,
    Other,
}

#[derive(Debug, Clone)]
pub struct Sym {
    pub name: String,
    pub kind: Kind,
    /// Index into [`Unit::sections`]; `None` when undefined (or absolute, common).
    pub section: Option<usize>,
    pub value: u64,
    pub size: u64,
    pub global: bool,
}

/// One compiled translation unit.
#[derive(Debug)]
pub struct Unit {
    /// The source file name the compiler recorded (`STT_FILE`), as the linked program's symbol
    /// table repeats it: what `FILE::NAME` names the unit's file-local symbols by.
    pub file: String,
    pub sections: Vec<Section>,
    pub symbols: Vec<Sym>,
    /// Static local variables by the debug information: (name, declaring function). Set by
    /// the caller once the unit's debug information is read.
    pub statics: Vec<(String, String)>,
}

pub use crate::engine::symbols::{reloc_name, R_32, R_32S, R_64, R_PC32, R_PLT32};

/// The relocations of compiled code that go through the global offset table (the linker may
/// relax them, rewriting the instruction around the field).
pub const R_GOTPCREL: u32 = 9;
pub const R_GOTPCRELX: u32 = 41;
pub const R_REX_GOTPCRELX: u32 = 42;

/// Whether a relocation of type `t` is PC-relative with a 4-byte field.
pub fn pc_relative(t: u32) -> bool {
    matches!(t, R_PC32 | R_PLT32 | R_GOTPCREL | R_GOTPCRELX | R_REX_GOTPCRELX)
}

/// The width of the field a relocation of type `t` writes.
pub fn width(t: u32) -> usize {
    match t {
        R_64 | 24 | 26 => 8,
        _ => 4,
    }
}

impl Unit {
    pub fn read(path: &Path) -> Result<Unit> {
        let data = std::fs::read(path)
            .map_err(|e| Error::other(format!("reading the compiled object {}: {e}", path.display())))?;
        let bad = |e: object::Error| Error::other(format!("{}: not an object pannus can read: {e}", path.display()));
        let file = object::File::parse(&*data).map_err(bad)?;
        if file.kind() != object::ObjectKind::Relocatable || file.architecture() != object::Architecture::X86_64 {
            return Err(Error::other(format!("{}: not an x86-64 relocatable object", path.display())));
        }
        let count = file.sections().map(|s| s.index().0).max().unwrap_or(0) + 1;
        let mut sections: Vec<Section> = (0..count)
            .map(|_| Section {
                name: String::new(),
                holds: Holds::Other,
                data: Vec::new(),
                size: 0,
                align: 1,
                relocs: Vec::new(),
            })
            .collect();
        let mut unit_file = String::new();
        let sym_count = file.symbols().map(|s| s.index().0).max().unwrap_or(0) + 1;
        let mut symbols: Vec<Sym> = (0..sym_count)
            .map(|_| Sym { name: String::new(), kind: Kind::Other, section: None, value: 0, size: 0, global: false })
            .collect();
        for s in file.symbols() {
            // Assembler-local labels (`.LC0`) name no function or variable: what they mark
            // is reached through its section.
            let local_label = s.name().is_ok_and(|n| n.starts_with(".L"));
            let kind = match s.kind() {
                _ if local_label => Kind::Other,
                SymbolKind::Text => Kind::Func,
                SymbolKind::Data => Kind::Object,
                SymbolKind::Section => Kind::Section,
                SymbolKind::Tls => Kind::Tls,
                SymbolKind::File => {
                    if unit_file.is_empty() {
                        unit_file = s.name().unwrap_or("").to_string();
                    }
                    Kind::Other
                }
                _ => Kind::Other,
            };
            symbols[s.index().0] = Sym {
                name: s.name().unwrap_or("").to_string(),
                kind,
                section: s.section_index().map(|i| i.0),
                value: s.address(),
                size: s.size(),
                global: s.is_global(),
            };
        }
        for s in file.sections() {
            let holds = match s.kind() {
                SectionKind::Text => Holds::Code,
                SectionKind::Data => Holds::Data,
                SectionKind::UninitializedData => Holds::Bss,
                SectionKind::ReadOnlyData | SectionKind::ReadOnlyDataWithRel => Holds::ReadOnly,
                SectionKind::ReadOnlyString => Holds::Strings,
                SectionKind::Tls | SectionKind::UninitializedTls => Holds::Tls,
                _ => Holds::Other,
            };
            let name = s.name().unwrap_or("").to_string();
            let holds = if name == ".init_array" || name.starts_with(".init_array.") { Holds::Data } else { holds };
            let mut relocs = Vec::new();
            if holds != Holds::Other || name.starts_with(".debug_") {
                for (offset, r) in s.relocations() {
                    let object::RelocationFlags::Elf { r_type } = r.flags() else { continue };
                    let sym = match r.target() {
                        RelocationTarget::Symbol(i) => i.0,
                        _ => continue,
                    };
                    relocs.push(Rel { offset, rtype: r_type.0, sym, addend: r.addend() });
                }
            }
            let data = if holds == Holds::Bss { Vec::new() } else { s.data().map(|d| d.to_vec()).unwrap_or_default() };
            sections[s.index().0] = Section { name, holds, data, size: s.size(), align: s.align().max(1), relocs };
        }
        Ok(Unit { file: unit_file, sections, symbols, statics: Vec::new() })
    }

    /// The defined functions: (symbol index, section index), in symbol order.
    pub fn functions(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.symbols.iter().enumerate().filter_map(|(i, s)| match (s.kind, s.section) {
            (Kind::Func, Some(sec)) if !s.name.is_empty() => Some((i, sec)),
            _ => None,
        })
    }

    /// The defined variables: (symbol index, section index).
    pub fn variables(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.symbols.iter().enumerate().filter_map(|(i, s)| match (s.kind, s.section) {
            (Kind::Object | Kind::Tls, Some(sec)) if !s.name.is_empty() => Some((i, sec)),
            _ => None,
        })
    }

    /// The function or variable a reference through symbol `sym` with `addend` reaches: the
    /// symbol itself when it is named, else the only named symbol of the section it stands for.
    pub fn named_target(&self, sym: usize) -> Option<usize> {
        let s = self.symbols.get(sym)?;
        if s.kind != Kind::Section {
            return Some(sym);
        }
        let sec = s.section?;
        let mut named = self
            .symbols
            .iter()
            .enumerate()
            .filter(|(_, t)| t.section == Some(sec) && matches!(t.kind, Kind::Func | Kind::Object | Kind::Tls));
        let first = named.next()?;
        named.next().is_none().then_some(first.0)
    }

    /// The bytes of function `sym` (in its section at its offset).
    pub fn code(&self, sym: usize) -> Option<&[u8]> {
        let s = &self.symbols[sym];
        let sec = &self.sections[s.section?];
        let start = s.value as usize;
        sec.data.get(start..start.checked_add(s.size as usize)?)
    }

    /// The relocations inside function `sym`, offsets relative to its start.
    pub fn relocs_in(&self, sym: usize) -> Vec<Rel> {
        let s = &self.symbols[sym];
        let Some(sec) = s.section else { return Vec::new() };
        let mut out: Vec<Rel> = self.sections[sec]
            .relocs
            .iter()
            .filter(|r| r.offset >= s.value && r.offset < s.value + s.size.max(1))
            .map(|r| Rel { offset: r.offset - s.value, ..*r })
            .collect();
        out.sort_by_key(|r| r.offset);
        out
    }

    /// What a relocation refers to, independent of where the compiler put it: a named
    /// function or variable by name (file-local variables by [`Unit::variable_key`]), a literal
    /// by its contents, an undefined symbol by its name.
    pub fn describe(&self, r: &Rel) -> String {
        let Some(s) = self.symbols.get(r.sym) else { return "?".into() };
        if s.kind == Kind::Other && s.section.is_some() {
            // A label (`.LC0`): what it marks, by contents.
            return self.describe_place(s.section.unwrap_or(0), r.rtype, r.addend + s.value as i64);
        }
        if s.kind == Kind::Object && self.generated(r.sym) {
            return self.describe_object(r.sym, r.rtype, r.addend);
        }
        if s.kind != Kind::Section {
            let name = if s.kind == Kind::Object && !s.global { self.variable_key(r.sym) } else { s.name.clone() };
            return format!("{} {name}{:+}", reloc_name(r.rtype), r.addend);
        }
        if let Some(t) = self.named_target(r.sym) {
            let t_sym = &self.symbols[t];
            if t_sym.kind == Kind::Object && self.generated(t) {
                return self.describe_object(t, r.rtype, r.addend - t_sym.value as i64);
            }
            let name =
                if t_sym.kind == Kind::Object && !t_sym.global { self.variable_key(t) } else { t_sym.name.clone() };
            return format!("{} {name}{:+}", reloc_name(r.rtype), r.addend - t_sym.value as i64);
        }
        self.describe_place(s.section.unwrap_or(usize::MAX), r.rtype, r.addend)
    }

    /// A constant gcc made, by its contents.
    fn describe_object(&self, sym: usize, rtype: u32, addend: i64) -> String {
        let s = &self.symbols[sym];
        let bytes = s
            .section
            .and_then(|i| self.sections.get(i))
            .and_then(|x| x.data.get(s.value as usize..(s.value + s.size) as usize))
            .unwrap_or_default();
        let base = Unit::numbered(&s.name).unwrap_or(&s.name);
        format!("{} {base} {}{addend:+}", reloc_name(rtype), hex::encode(bytes))
    }

    /// A place in section `sec` at `addend` (as a relocation of type `rtype` gives it), by its
    /// contents: a string, a constant, or the section's bytes.
    fn describe_place(&self, sec: usize, rtype: u32, addend: i64) -> String {
        let r = Rel { offset: 0, rtype, sym: 0, addend };
        let Some(sec) = self.sections.get(sec) else { return "?".into() };
        let at = r.addend + if pc_relative(r.rtype) { 4 } else { 0 };
        match sec.holds {
            Holds::Strings => {
                let from = (at.max(0) as usize).min(sec.data.len());
                let end = sec.data[from..].iter().position(|&b| b == 0).map_or(sec.data.len(), |p| from + p);
                format!("{} {:?}", reloc_name(r.rtype), String::from_utf8_lossy(&sec.data[from..end]))
            }
            Holds::ReadOnly if sec.name.starts_with(".rodata.cst") => {
                let size: usize = sec.name.trim_start_matches(".rodata.cst").parse().unwrap_or(8);
                let from = (at.max(0) as usize).min(sec.data.len());
                let end = (from + size).min(sec.data.len());
                format!("{} const {}", reloc_name(r.rtype), hex::encode(&sec.data[from..end]))
            }
            Holds::ReadOnly => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(&sec.data);
                format!("{} {}{:+} [{}]", reloc_name(r.rtype), sec.name, r.addend, hex::encode(&digest[..8]))
            }
            _ => format!("{} {}{:+}", reloc_name(r.rtype), sec.name, r.addend),
        }
    }

    /// The name gcc gave a numbered file-local object (`count.0`, `CSWTCH.5`) without its number.
    fn numbered(name: &str) -> Option<&str> {
        match name.rsplit_once('.') {
            Some((b, n)) if !b.is_empty() && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => Some(b),
            _ => None,
        }
    }

    /// Whether variable `sym` is a constant gcc made for a function (a switch's table
    /// `CSWTCH.N`, `__func__`, a compound literal): numbered, file-local, read-only, and no
    /// variable of the source by the debug information. It belongs to the function's code.
    pub fn generated(&self, sym: usize) -> bool {
        let s = &self.symbols[sym];
        let read_only = s
            .section
            .and_then(|i| self.sections.get(i))
            .is_some_and(|x| matches!(x.holds, Holds::ReadOnly | Holds::Strings));
        !s.global
            && s.kind == Kind::Object
            && read_only
            && Unit::numbered(&s.name).is_some_and(|b| !self.statics.iter().any(|(n, _)| n == b))
    }

    /// A file-local variable's name without the number gcc appends to static locals
    /// (`count.0`), with the function that declares it (by the debug information, else the
    /// functions that refer to it): what matches it across two builds of the unit, where the
    /// numbers, and the functions it is inlined into, may differ.
    pub fn variable_key(&self, sym: usize) -> String {
        let s = &self.symbols[sym];
        if s.global {
            return s.name.clone();
        }
        let Some(base) = Unit::numbered(&s.name) else { return s.name.clone() };
        let owners: Vec<&(String, String)> = self.statics.iter().filter(|(n, _)| n == base).collect();
        if let [(_, owner)] = owners.as_slice() {
            return format!("{base} (static in {owner})");
        }
        let users: BTreeSet<&str> = self.users_of(sym).into_iter().map(|u| self.symbols[u].name.as_str()).collect();
        format!("{base} (static in {})", users.into_iter().collect::<Vec<_>>().join(", "))
    }

    /// The functions whose code refers to symbol `sym` (directly or through its section).
    pub fn users_of(&self, sym: usize) -> Vec<usize> {
        let target_sec = self.symbols[sym].section;
        let mut out = Vec::new();
        for (f, _) in self.functions() {
            let hits = self.relocs_in(f).iter().any(|r| {
                r.sym == sym
                    || (self.symbols.get(r.sym).is_some_and(|s| s.kind == Kind::Section && s.section == target_sec)
                        && self.named_target(r.sym) == Some(sym))
            });
            if hits {
                out.push(f);
            }
        }
        out
    }

    /// The `.init_array` sections whose entries call function `sym`.
    pub fn init_arrays_calling(&self, sym: usize) -> Vec<usize> {
        let target = self.symbols[sym].section;
        self.sections
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name == ".init_array" || s.name.starts_with(".init_array."))
            .filter(|(_, s)| {
                s.relocs.iter().any(|r| {
                    r.sym == sym
                        || (self.symbols.get(r.sym).is_some_and(|t| t.kind == Kind::Section && t.section == target))
                })
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The symbol index of the function or variable named `name` (a key from
    /// [`Unit::variable_key`] for file-local variables).
    pub fn find(&self, name: &str, kind: Kind) -> Option<usize> {
        let matches = |i: usize, s: &Sym| {
            s.kind == kind
                && s.section.is_some()
                && (s.name == name || (kind == Kind::Object && !s.global && self.variable_key(i) == name))
        };
        self.symbols.iter().enumerate().find(|(i, s)| matches(*i, s)).map(|(i, _)| i)
    }
}
