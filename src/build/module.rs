//! Making the patch module: the changed functions' sections from the units built with the fix,
//! with whatever they need that the running process lacks (new variables, literals, helpers
//! gcc specialised), and every reference to what the process already has (its functions, its
//! variables, file-local ones included) left for stage 2 to bind to the process's own.

use super::objfile::{self, Holds, Kind, Unit};
use crate::elf::{Fixup, FIXUPS};
use crate::error::{Error, Result};
use object::write::{self, SectionId, SymbolId};
use object::{Object as _, ObjectSymbol as _};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// One unit of the build with the fix, and how its symbols relate to the running binary.
pub struct Source<'a> {
    pub patched: &'a Unit,
    pub original: &'a Unit,
    /// The functions (symbol indexes in `patched`) to replace, each with the name the running
    /// binary knows it by (`NAME`, or `FILE::NAME` when file-local).
    pub replaced: Vec<(usize, String)>,
    /// `.init_array` sections (of `patched`) to run in stage 3: a static initialiser the fix
    /// changed. What they reach runs on scratch copies of the objects the process already has.
    pub init: Vec<usize>,
}

/// What the module holds and binds, for the report.
#[derive(Debug, Default)]
pub struct Made {
    /// (target in the binary, replacement in the module).
    pub functions: Vec<(String, String)>,
    /// What was copied into the module, why, and whether it is a function; what binds to the
    /// process.
    pub copied: Vec<(String, String, bool)>,
    pub bound: Vec<String>,
}

/// Whether the running binary defines a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InBinary {
    Yes,
    No,
    /// Several file-local definitions of that name in source files of that name: which one a
    /// unit's is cannot be told.
    Ambiguous,
}

/// What a fixup refers to: a symbol of the process, or a place in the module itself.
enum FixTo {
    Process(String, i64),
    Module(SectionId, i64),
}

/// Where a reference leads.
enum To {
    /// A section of the module (unit, section), the addend to use against its start.
    Section(usize, usize, i64),
    /// A symbol of the running process (or a library), by name, with the addend.
    Process(String, i64),
}

struct Builder<'a, 'b> {
    sources: &'a [Source<'b>],
    in_binary: &'a dyn Fn(&str) -> InBinary,
    out: write::Object<'static>,
    sections: HashMap<(usize, usize), SectionId>,
    markers: Vec<(SectionId, String)>,
    undefined: HashMap<String, SymbolId>,
    /// Relocations left for stage 2: (section, offset, type, where to).
    fixups: Vec<(SectionId, u64, u32, FixTo)>,
    queue: Vec<(usize, usize)>,
    /// Sections reached only from a static initialiser: the objects they refer to that the
    /// process already has are scratch copies, so that nothing constructs those again in place.
    scratch: std::collections::HashSet<(usize, usize)>,
    made: Made,
}

/// The name by which the running binary knows symbol `sym` of `unit`: its own for a global,
/// `FILE::NAME` for a file-local one (the original build's name, which static locals' numbers
/// follow).
pub fn binary_name(original: &Unit, patched: &Unit, sym: usize) -> Option<String> {
    let s = &patched.symbols[sym];
    if s.global {
        return Some(s.name.clone());
    }
    let kind = s.kind;
    let key = if kind == Kind::Object { patched.variable_key(sym) } else { s.name.clone() };
    let o = original.find(&key, kind)?;
    Some(format!("{}::{}", original.file, original.symbols[o].name))
}

impl<'b> Builder<'_, 'b> {
    fn section(&mut self, u: usize, sec: usize) -> Result<SectionId> {
        if let Some(&id) = self.sections.get(&(u, sec)) {
            return Ok(id);
        }
        let unit = self.sources[u].patched;
        let s = &unit.sections[sec];
        let kind = match s.holds {
            Holds::Code => object::SectionKind::Text,
            Holds::Data => object::SectionKind::Data,
            Holds::Bss => object::SectionKind::UninitializedData,
            Holds::ReadOnly | Holds::Strings => object::SectionKind::ReadOnlyData,
            Holds::Tls => {
                return Err(Error::precondition(format!(
                    "the fix needs the thread-local section {} of {}, and a module loaded by pannus has no \
                     thread-local storage",
                    s.name, unit.file
                )))
            }
            Holds::Other => return Err(Error::other(format!("the fix refers to section {} of {}", s.name, unit.file))),
        };
        let id = self.out.add_section(Vec::new(), s.name.as_bytes().to_vec(), kind);
        if s.holds == Holds::Bss {
            self.out.append_section_bss(id, s.size, s.align);
        } else {
            self.out.append_section_data(id, &s.data, s.align);
        }
        let marker = format!("__pannus.section.{}", self.markers.len());
        self.out.add_symbol(write::Symbol {
            name: marker.clone().into_bytes(),
            value: 0,
            size: 0,
            kind: object::SymbolKind::Label,
            scope: write::SymbolScope::Compilation,
            weak: false,
            section: write::SymbolSection::Section(id),
            flags: object::SymbolFlags::None,
        });
        self.markers.push((id, marker));
        // Its own symbols, file-local, for backtraces and the debugger.
        for t in unit.symbols.iter().filter(|t| t.section == Some(sec) && matches!(t.kind, Kind::Func | Kind::Object)) {
            self.out.add_symbol(write::Symbol {
                name: t.name.as_bytes().to_vec(),
                value: t.value,
                size: t.size,
                kind: if t.kind == Kind::Func { object::SymbolKind::Text } else { object::SymbolKind::Data },
                scope: write::SymbolScope::Compilation,
                weak: false,
                section: write::SymbolSection::Section(id),
                flags: object::SymbolFlags::None,
            });
        }
        self.sections.insert((u, sec), id);
        self.queue.push((u, sec));
        Ok(id)
    }

    /// Where a reference of unit `u` to symbol `sym` with `addend` leads.
    fn resolve(&mut self, u: usize, sym: usize, addend: i64, scratch: bool) -> Result<To> {
        let src = &self.sources[u];
        let unit = src.patched;
        let s = &unit.symbols[sym];
        let Some(sec) = s.section else {
            return Ok(To::Process(s.name.clone(), addend));
        };
        if s.kind == Kind::Other {
            // A label (`.LC0`): what it marks is reached through its section.
            return Ok(To::Section(u, sec, addend + s.value as i64));
        }
        let (named, addend) = match unit.named_target(sym) {
            Some(t) if s.kind == Kind::Section => (t, addend - unit.symbols[t].value as i64),
            Some(t) => (t, addend),
            None => return Ok(To::Section(u, sec, addend)),
        };
        let t = &unit.symbols[named];
        let t_sec = t.section.unwrap_or(sec);
        let whole = addend + t.value as i64;
        if t.kind == Kind::Object && unit.generated(named) {
            self.note(
                &t.name,
                "a constant gcc made for the function (a switch's table, __func__): travels with it",
                false,
            );
            return Ok(To::Section(u, t_sec, whole));
        }
        // A name the binary has several file-local definitions of cannot be bound.
        if let Some(name) =
            binary_name(src.original, unit, named).filter(|n| (self.in_binary)(n) == InBinary::Ambiguous)
        {
            return Err(Error::precondition(format!(
                "`{name}` is ambiguous in the running binary: several file-local definitions of that name in source \
                 files of that name, and pannus cannot tell which is this unit's"
            ))
            .hint("give the source files distinct names (the binary's symbol table names each by its file), or restart the service"));
        }
        match t.kind {
            Kind::Tls => Err(Error::precondition(format!(
                "the fix refers to the thread-local variable `{}` of {}, and a module loaded by pannus has no \
                 thread-local storage",
                t.name, unit.file
            ))
            .hint("keep the state in an ordinary variable, or apply the fix at the next restart")),
            Kind::Func => {
                let replaced = src.replaced.iter().any(|(i, _)| *i == named);
                let generated = t.name.contains('.');
                let bound = binary_name(src.original, unit, named).filter(|n| (self.in_binary)(n) == InBinary::Yes);
                match bound {
                    Some(name) if !replaced && !generated && (!scratch || t.global) => {
                        if !self.made.bound.contains(&name) {
                            self.made.bound.push(name.clone());
                        }
                        Ok(To::Process(name, addend))
                    }
                    _ => {
                        if !replaced {
                            let why = if scratch {
                                "code of the static initialiser, run in stage 3 on scratch copies"
                            } else if t.name.ends_with(".cold") {
                                "the cold part of a function the module holds"
                            } else if generated {
                                "a copy gcc specialised for its callers: its calling convention is private to them"
                            } else if src.original.find(&t.name, Kind::Func).is_none() {
                                "new with the fix"
                            } else {
                                "not in the running binary as a function of its own (inlined everywhere)"
                            };
                            self.note(&t.name, why, true);
                        }
                        Ok(To::Section(u, t_sec, whole))
                    }
                }
            }
            _ => {
                let key = unit.variable_key(named);
                let existing = src.original.find(&key, Kind::Object).is_some()
                    || (t.global && src.original.find(&t.name, Kind::Object).is_some());
                let bound =
                    binary_name(src.original, unit, named).filter(|n| existing && (self.in_binary)(n) == InBinary::Yes);
                if scratch && bound.is_some() {
                    self.note(
                        &key,
                        "a scratch copy, constructed by the static initialiser instead of the process's own",
                        false,
                    );
                    return Ok(To::Section(u, t_sec, whole));
                }
                match bound {
                    Some(name) => {
                        if !self.made.bound.contains(&name) {
                            self.made.bound.push(name.clone());
                        }
                        Ok(To::Process(name, addend))
                    }
                    None => {
                        let why = if existing {
                            "not in the running binary (the compiler removed it there); the module's copy starts \
                             with its initial value"
                        } else {
                            "new with the fix: lives in the module"
                        };
                        self.note(&key, why, false);
                        Ok(To::Section(u, t_sec, whole))
                    }
                }
            }
        }
    }

    fn note(&mut self, what: &str, why: &str, function: bool) {
        if !self.made.copied.iter().any(|(w, _, _)| w == what) {
            self.made.copied.push((what.to_string(), why.to_string(), function));
        }
    }

    fn undefined(&mut self, name: &str) -> SymbolId {
        if let Some(&id) = self.undefined.get(name) {
            return id;
        }
        let id = self.out.add_symbol(write::Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: object::SymbolKind::Unknown,
            scope: write::SymbolScope::Dynamic,
            weak: false,
            section: write::SymbolSection::Undefined,
            flags: object::SymbolFlags::None,
        });
        self.undefined.insert(name.to_string(), id);
        id
    }

    /// Copies the relocations of section `sec` of unit `u`, adding what they lead to.
    fn relocate(&mut self, u: usize, sec: usize) -> Result<()> {
        let id = self.sections[&(u, sec)];
        let relocs = self.sources[u].patched.sections[sec].relocs.clone();
        let scratch = self.scratch.contains(&(u, sec));
        for r in relocs {
            let rel = |symbol, addend| write::Relocation {
                offset: r.offset,
                symbol,
                addend,
                flags: object::RelocationFlags::Elf { r_type: object::elf::RelocationType(r.rtype) },
            };
            // The module's own, from crtbeginS: the static initialiser registers the new
            // objects' destructors against the module, which its finaliser runs at unload.
            if self.sources[u]
                .patched
                .symbols
                .get(r.sym)
                .is_some_and(|s| s.name == "__dso_handle" && s.section.is_none())
            {
                let symbol = self.undefined("__dso_handle");
                self.out.add_relocation(id, rel(symbol, r.addend)).map_err(|e| Error::other(e.to_string()))?;
                continue;
            }
            let to = self.resolve(u, r.sym, r.addend, scratch)?;
            if scratch {
                if let To::Section(tu, tsec, _) = &to {
                    if !self.sections.contains_key(&(*tu, *tsec)) {
                        self.scratch.insert((*tu, *tsec));
                    }
                }
            }
            match to {
                // Absolute 32-bit addresses (code built without -fPIE) cannot be in a shared
                // object: stage 2 fills them in, the module being mapped near the program.
                To::Section(tu, tsec, addend) if matches!(r.rtype, objfile::R_32 | objfile::R_32S) => {
                    let target = self.section(tu, tsec)?;
                    self.fixups.push((id, r.offset, r.rtype, FixTo::Module(target, addend)));
                }
                To::Section(tu, tsec, addend) => {
                    let target = self.section(tu, tsec)?;
                    let symbol = self.out.section_symbol(target);
                    self.out.add_relocation(id, rel(symbol, addend)).map_err(|e| Error::other(e.to_string()))?;
                }
                To::Process(name, addend) => match r.rtype {
                    objfile::R_PC32 | objfile::R_32 | objfile::R_32S => {
                        self.fixups.push((id, r.offset, r.rtype, FixTo::Process(name, addend)));
                    }
                    objfile::R_PLT32
                    | objfile::R_GOTPCREL
                    | objfile::R_GOTPCRELX
                    | objfile::R_REX_GOTPCRELX
                    | objfile::R_64 => {
                        let symbol = self.undefined(&name);
                        self.out.add_relocation(id, rel(symbol, addend)).map_err(|e| Error::other(e.to_string()))?;
                    }
                    t => {
                        return Err(Error::precondition(format!(
                            "the fix refers to `{name}` through a {} relocation, which a patch module cannot carry",
                            objfile::reloc_name(t)
                        )))
                    }
                },
            }
        }
        Ok(())
    }
}

/// Writes the module for `sources` to `so` (through `work/ID.o`), naming each replacement
/// `NAME.patched`. `in_binary(name)` says whether the running binary defines `name`
/// (`FILE::NAME` for file-local symbols).
pub fn make(sources: &[Source<'_>], in_binary: &dyn Fn(&str) -> InBinary, work: &Path, so: &Path) -> Result<Made> {
    let mut b = Builder {
        sources,
        in_binary,
        out: write::Object::new(object::BinaryFormat::Elf, object::Architecture::X86_64, object::Endianness::Little),
        sections: HashMap::new(),
        markers: Vec::new(),
        undefined: HashMap::new(),
        fixups: Vec::new(),
        queue: Vec::new(),
        scratch: std::collections::HashSet::new(),
        made: Made::default(),
    };
    let mut taken: Vec<String> = Vec::new();
    for (u, src) in sources.iter().enumerate() {
        for (sym, target) in &src.replaced {
            let s = &src.patched.symbols[*sym];
            let sec = s.section.ok_or_else(|| Error::other(format!("`{}` has no code", s.name)))?;
            let id = b.section(u, sec)?;
            let mut name = format!("{}.patched", s.name);
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{}.patched.{n}", s.name);
                n += 1;
            }
            taken.push(name.clone());
            b.out.add_symbol(write::Symbol {
                name: name.clone().into_bytes(),
                value: s.value,
                size: s.size,
                kind: object::SymbolKind::Text,
                scope: write::SymbolScope::Dynamic,
                weak: false,
                section: write::SymbolSection::Section(id),
                flags: object::SymbolFlags::None,
            });
            b.made.functions.push((target.clone(), name));
        }
    }
    for (u, src) in sources.iter().enumerate() {
        for &sec in &src.init {
            b.scratch.insert((u, sec));
            b.section(u, sec)?;
        }
    }
    while let Some((u, sec)) = b.queue.pop() {
        b.relocate(u, sec)?;
    }
    let bytes = b.out.write().map_err(|e| Error::other(format!("writing the module object: {e}")))?;
    let obj = work.join("module.o");
    std::fs::write(&obj, bytes).map_err(|e| Error::other(format!("{}: {e}", obj.display())))?;
    run(
        Command::new("cc")
            .args(["-shared", "-Wl,-z,notext", "-Wl,--build-id", "-Wl,-z,noexecstack", "-o"])
            .arg(so)
            .arg(&obj),
        "linking the module",
    )?;
    if !b.fixups.is_empty() {
        let data = std::fs::read(so).map_err(|e| Error::other(format!("{}: {e}", so.display())))?;
        let file = object::File::parse(&*data).map_err(|e| Error::other(format!("{}: {e}", so.display())))?;
        let at: HashMap<String, u64> =
            file.symbols().filter_map(|s| Some((s.name().ok()?.to_string(), s.address()))).collect();
        let mut list = Vec::new();
        let base = |id: &SectionId| -> Result<u64> {
            let marker = b.markers.iter().find(|(sid, _)| sid == id).map(|m| m.1.clone()).unwrap_or_default();
            at.get(&marker).copied().ok_or_else(|| Error::other(format!("the linked module lost its marker {marker}")))
        };
        for (id, offset, rtype, to) in &b.fixups {
            let (symbol, addend) = match to {
                FixTo::Process(name, addend) => (name.clone(), *addend),
                FixTo::Module(target, addend) => (String::new(), base(target)? as i64 + addend),
            };
            if !symbol.is_empty() && !b.made.bound.contains(&symbol) {
                b.made.bound.push(symbol.clone());
            }
            list.push(Fixup { offset: base(id)? + offset, rtype: objfile::reloc_name(*rtype), symbol, addend });
        }
        let table = work.join("fixups.json");
        let json = serde_json::to_vec(&list).map_err(|e| Error::other(e.to_string()))?;
        std::fs::write(&table, json).map_err(|e| Error::other(format!("{}: {e}", table.display())))?;
        run(
            Command::new("objcopy").arg(format!("--add-section={FIXUPS}={}", table.display())).arg(so),
            "adding the module's fixups",
        )?;
    }
    b.made.bound.sort();
    Ok(b.made)
}

fn run(command: &mut Command, what: &str) -> Result<()> {
    let out = command.output().map_err(|e| Error::other(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::other(format!("{what} failed:\n{}", String::from_utf8_lossy(&out.stderr).trim_end())));
    }
    Ok(())
}
