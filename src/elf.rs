//! ELF objects as pannus needs them: the patch module (segments, dynamic relocations, init
//! functions, symbols with versions) and the target's objects (symbols from `.dynsym` and
//! `.symtab`, build-id). Parsed once with goblin into owned data.

use crate::error::{Error, Result};
use goblin::elf::{header, program_header as ph, sym, Elf};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub mod extent;
pub mod versions;

/// Largest file pannus will read as an ELF object.
const MAX_OBJECT_SIZE: u64 = 1 << 30;

/// A loadable segment (PT_LOAD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
}

impl Segment {
    /// Its protection, for mmap.
    pub fn prot(&self) -> pannus_kernel::ProtFlags {
        use pannus_kernel::ProtFlags;
        let mut prot = ProtFlags::PROT_NONE;
        prot.set(ProtFlags::PROT_READ, self.read);
        prot.set(ProtFlags::PROT_WRITE, self.write);
        prot.set(ProtFlags::PROT_EXEC, self.exec);
        prot
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymKind {
    Func,
    Object,
    Tls,
    Ifunc,
    Other,
}

#[derive(Debug, Clone)]
pub struct Symbol {
    pub name: String,
    pub value: u64,
    pub size: u64,
    pub kind: SymKind,
    /// GLOBAL or WEAK (not LOCAL).
    pub global: bool,
    pub weak: bool,
    pub defined: bool,
    /// Symbol version: for a definition, the version it defines; for a reference, the version it
    /// requires.
    pub version: Option<Arc<str>>,
    /// A definition that is the default version (`sym@@VER`), or unversioned.
    pub default_version: bool,
    /// For a file-local `.symtab` symbol: the source file it belongs to (the `STT_FILE` entry
    /// before it), which `FILE::NAME` names it by.
    pub file: Option<Arc<str>>,
}

impl Symbol {
    fn from_elf(name: String, s: &sym::Sym, version: Option<Arc<str>>, default_version: bool) -> Symbol {
        Symbol {
            name,
            value: s.st_value,
            size: s.st_size,
            kind: sym_kind(s.st_type()),
            global: s.st_bind() != sym::STB_LOCAL,
            weak: s.st_bind() == sym::STB_WEAK,
            defined: s.st_shndx != 0,
            version,
            default_version,
            file: None,
        }
    }
}

/// A dynamic relocation (`.rela.dyn` or `.rela.plt`).
#[derive(Debug, Clone)]
pub struct Reloc {
    pub offset: u64,
    pub rtype: u32,
    /// Index into [`Object::dynsyms`]; `None` for relocations without a symbol.
    pub sym: Option<usize>,
    pub addend: i64,
}

/// An ELF object read from disk.
#[derive(Debug)]
pub struct Object {
    pub path: PathBuf,
    /// The file, or with [`Object::load_tables`] only its tables (zeros elsewhere; see
    /// `resident`).
    data: Vec<u8>,
    /// With [`Object::load_tables`]: the file ranges `data` holds, sorted; the whole file is
    /// read on the first need of another range (`full`).
    resident: Option<FileRanges>,
    full: OnceLock<Vec<u8>>,
    /// With [`Object::load_tables`]: the file the tables were read from, which the reads on
    /// first need go through: the same file even once its path names another, or (read through
    /// `/proc/PID/map_files`) once that process has exited, so that one parse can serve every
    /// process mapping the file.
    file: Option<std::fs::File>,
    /// The class and machine it is built for: x86-64, or i386 (see ARCHITECTURE.md, 32-bit
    /// processes).
    pub arch: pannus_kernel::Arch,
    /// ET_DYN (a shared object or a PIE); ET_EXEC otherwise.
    pub is_dyn: bool,
    pub build_id: Option<String>,
    pub segments: Vec<Segment>,
    /// PT_NOTE ranges (vaddr, size), used to find the build-id in memory.
    pub notes: Vec<(u64, u64)>,
    pub has_tls: bool,
    pub relro: Option<(u64, u64)>,
    pub dynsyms: Vec<Symbol>,
    pub symtab: Vec<Symbol>,
    pub relocs: Vec<Reloc>,
    pub init: Option<u64>,
    pub init_array: Option<(u64, u64)>,
    /// `DT_FINI` and `DT_FINI_ARRAY` (address, size in bytes): what `dlclose` runs.
    pub fini: Option<u64>,
    pub fini_array: Option<(u64, u64)>,
    /// Section headers: name, address, file offset, size.
    pub sections: Vec<(String, u64, u64, u64)>,
    /// Defined symbols by name: (hash of the name, in `.dynsym`, index), sorted. Built once per
    /// object without copying a name: libc alone has some 3,000 symbols, and every command
    /// parses it.
    by_name: Vec<(u64, bool, u32)>,
    /// Defined functions by address: (start, size, in `.dynsym`, index), for naming addresses
    /// in backtraces; built on first use.
    functions: OnceLock<Vec<(u64, u64, bool, u32)>>,
    /// With [`Object::load_tables`]: each section's bytes, read alone on its first need (the
    /// unwinder wants `.eh_frame`, not the whole of a library).
    section_data: Vec<OnceLock<Vec<u8>>>,
}

/// The section in which `pannus build` lists the relocations of a module that a shared object's
/// dynamic relocations cannot express: PC-relative and 32-bit references to the target's data and
/// file-local functions (`FILE::NAME`), which the module reaches because pannus maps it within
/// ±2 GiB of the target. Stage 2 applies them with the dynamic relocations.
pub const FIXUPS: &str = ".pannus.fixups";

/// One entry of [`FIXUPS`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixup {
    /// The virtual address of the place in the module.
    pub offset: u64,
    /// `R_X86_64_PC32`, `R_X86_64_32` or `R_X86_64_32S`.
    #[serde(rename = "type")]
    pub rtype: String,
    /// The symbol; empty for a place in the module itself (`R_X86_64_32`, `R_X86_64_32S`: the
    /// load bias plus the addend).
    pub symbol: String,
    pub addend: i64,
}

/// Adds the fixups listed in `bytes` (a JSON array of [`Fixup`]) as relocations against
/// undefined symbols appended to `dynsyms`, one per name.
fn add_fixups(bytes: &[u8], dynsyms: &mut Vec<Symbol>, relocs: &mut Vec<Reloc>) -> std::result::Result<(), String> {
    let fixups: Vec<Fixup> =
        serde_json::from_slice(bytes).map_err(|e| format!("section {FIXUPS} is not a list of fixups: {e}"))?;
    let mut index: HashMap<String, usize> = HashMap::new();
    for f in fixups {
        let rtype = match f.rtype.as_str() {
            "R_X86_64_PC32" => 2,
            "R_X86_64_32" => 10,
            "R_X86_64_32S" => 11,
            other => return Err(format!("section {FIXUPS}: relocation type `{other}` is not one pannus fixes up")),
        };
        if f.symbol.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("section {FIXUPS}: invalid symbol name `{}`", f.symbol.escape_debug()));
        }
        if f.symbol.is_empty() {
            // A place in the module itself: the load bias plus the addend.
            if rtype == 2 {
                return Err(format!("section {FIXUPS}: a PC-relative fixup names no symbol"));
            }
            relocs.push(Reloc { offset: f.offset, rtype, sym: None, addend: f.addend });
            continue;
        }
        let next = dynsyms.len();
        let i = *index.entry(f.symbol.clone()).or_insert(next);
        if i == next {
            dynsyms.push(Symbol {
                name: f.symbol,
                value: 0,
                size: 0,
                kind: SymKind::Other,
                global: true,
                weak: false,
                defined: false,
                version: None,
                default_version: true,
                file: None,
            });
        }
        relocs.push(Reloc { offset: f.offset, rtype, sym: Some(i), addend: f.addend });
    }
    Ok(())
}

/// Whether `STT_FILE` name `recorded` is the source file `given` names: equal, or one ends with
/// the other at a path separator.
fn same_source(recorded: &str, given: &str) -> bool {
    let tail = |long: &str, short: &str| long.strip_suffix(short).is_some_and(|head| head.ends_with('/'));
    recorded == given || tail(recorded, given) || tail(given, recorded)
}

fn sym_kind(st_type: u8) -> SymKind {
    match st_type {
        sym::STT_FUNC => SymKind::Func,
        sym::STT_OBJECT | sym::STT_COMMON => SymKind::Object,
        sym::STT_TLS => SymKind::Tls,
        sym::STT_GNU_IFUNC => SymKind::Ifunc,
        _ => SymKind::Other,
    }
}

impl Object {
    /// Reads and parses `path`. Any problem is bad input naming the file.
    pub fn load(path: &Path, role: &str) -> Result<Object> {
        let data = read_file(path, role)?;
        Object::parse(path, data).map_err(|what| Error::bad_input(format!("{role} {}: {what}", path.display())))
    }

    /// The whole file, for an object read whole ([`Object::load`], [`Object::parse`]): the very
    /// bytes that were parsed (and, for a module, checksummed).
    pub fn whole_file(&self) -> Option<&[u8]> {
        self.resident.is_none().then_some(self.data.as_slice())
    }

    /// Like [`Object::load`], reading only what the parse needs: headers, symbol, string,
    /// version and hash tables, relocations, the dynamic section and notes. For libc that is
    /// about 200 KiB of its 2 MiB, and every command reads libc. The rest (code, `.eh_frame`,
    /// for [`Object::section`] and [`Object::bytes_at`]) is read on first need.
    pub fn load_tables(path: &Path, role: &str) -> Result<Object> {
        let bad = |what: String| Error::bad_input(format!("{role} {}: {what}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let meta = file.metadata().map_err(|e| bad(format!("cannot read: {e}")))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.len() > MAX_OBJECT_SIZE {
            return Err(bad(format!("too large ({} bytes)", meta.len())));
        }
        match read_tables(&file, meta.len()) {
            Some((data, resident)) => {
                let mut o = Object::parse(path, data).map_err(bad)?;
                o.resident = Some(resident);
                o.section_data = o.sections.iter().map(|_| OnceLock::new()).collect();
                o.file = Some(file);
                Ok(o)
            }
            None => Object::load(path, role),
        }
    }

    /// Whether the bytes at `start..start + len` were read with the tables.
    fn is_resident(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else { return false };
        match &self.resident {
            None => true,
            Some(r) => r.partition_point(|x| x.0 <= start).checked_sub(1).is_some_and(|k| end <= r[k].1),
        }
    }

    /// The file bytes at `range`, reading the whole file first when they are not resident.
    fn file_bytes(&self, start: u64, len: u64) -> Option<&[u8]> {
        let end = start.checked_add(len)?;
        let resident = match &self.resident {
            None => true,
            Some(r) => {
                let k = r.partition_point(|x| x.0 <= start).checked_sub(1);
                k.is_some_and(|k| end <= r[k].1)
            }
        };
        let data = if resident { &self.data } else { self.full.get_or_init(|| self.read_whole().unwrap_or_default()) };
        data.get(start as usize..end as usize)
    }

    /// The whole file, read on first need: through the descriptor the tables were read from.
    fn read_whole(&self) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = self.file.as_ref()?;
        let len = file.metadata().ok()?.len();
        let mut buf = vec![0u8; usize::try_from(len).ok().filter(|&n| n as u64 <= MAX_OBJECT_SIZE)?];
        file.read_exact_at(&mut buf, 0).ok()?;
        Some(buf)
    }

    /// Parses an ELF image; the error text says what is wrong with it.
    pub fn parse(path: &Path, data: Vec<u8>) -> std::result::Result<Object, String> {
        if data.len() < 4 || &data[..4] != b"\x7fELF" {
            return Err("not an ELF file".into());
        }
        let elf = Elf::parse(&data).map_err(|e| format!("malformed ELF: {e}"))?;
        let arch = match pannus_kernel::Arch::of_header(&data) {
            Some(a @ (pannus_kernel::Arch::X86_64 | pannus_kernel::Arch::I386)) => a,
            // Named by class and machine, as the refusal of a module for a process of another
            // architecture names them (see ARCHITECTURE.md, 32-bit processes).
            Some(arch) => {
                return Err(format!("an {arch} object; pannus patches ELF64 x86-64 and ELF32 i386 processes only"))
            }
            None => return Err("not an ELF file".into()),
        };
        let i386 = arch == pannus_kernel::Arch::I386;
        let is_dyn = match elf.header.e_type {
            header::ET_DYN => true,
            header::ET_EXEC => false,
            t => return Err(format!("not an executable or shared object (ELF type {t})")),
        };
        let mut segments = Vec::new();
        let mut notes = Vec::new();
        let mut has_tls = false;
        let mut relro = None;
        for p in &elf.program_headers {
            match p.p_type {
                ph::PT_LOAD => {
                    if p.p_filesz > p.p_memsz
                        || p.p_offset.checked_add(p.p_filesz).is_none_or(|e| e > data.len() as u64)
                        || p.p_vaddr.checked_add(p.p_memsz).is_none_or(|e| e > if i386 { 1 << 32 } else { 1 << 47 })
                        || p.p_offset % 4096 != p.p_vaddr % 4096
                    {
                        return Err(format!("PT_LOAD segment at {:#x} is inconsistent", p.p_vaddr));
                    }
                    segments.push(Segment {
                        vaddr: p.p_vaddr,
                        memsz: p.p_memsz,
                        offset: p.p_offset,
                        filesz: p.p_filesz,
                        read: p.is_read(),
                        write: p.is_write(),
                        exec: p.is_executable(),
                    })
                }
                ph::PT_NOTE => notes.push((p.p_vaddr, p.p_filesz)),
                ph::PT_TLS => has_tls = true,
                ph::PT_GNU_RELRO => relro = Some((p.p_vaddr, p.p_memsz)),
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err("no loadable segment".into());
        }
        segments.sort_by_key(|s| s.vaddr);
        let build_id = elf.iter_note_headers(&data).and_then(|notes| {
            notes.flatten().find_map(|n| {
                (n.n_type == goblin::elf::note::NT_GNU_BUILD_ID && n.name == "GNU").then(|| hex::encode(n.desc))
            })
        });

        // Version names by versym index: definitions (verdef) and requirements (verneed).
        let mut ver_names: HashMap<u16, Arc<str>> = HashMap::new();
        if let Some(vd) = &elf.verdef {
            for d in vd.iter() {
                if let Some(aux) = d.iter().next() {
                    if let Some(name) = elf.dynstrtab.get_at(aux.vda_name) {
                        ver_names.insert(d.vd_ndx, Arc::from(name));
                    }
                }
            }
        }
        if let Some(vn) = &elf.verneed {
            for n in vn.iter() {
                for aux in n.iter() {
                    if let Some(name) = elf.dynstrtab.get_at(aux.vna_name) {
                        ver_names.insert(aux.vna_other & 0x7fff, Arc::from(name));
                    }
                }
            }
        }

        let mut dynsyms = Vec::with_capacity(elf.dynsyms.len());
        for (i, s) in elf.dynsyms.iter().enumerate() {
            let name = elf.dynstrtab.get_at(s.st_name).unwrap_or("").to_string();
            let (version, default_version) = match elf.versym.as_ref().and_then(|v| v.get_at(i)) {
                Some(v) if v.version() > 1 => (ver_names.get(&v.version()).cloned(), !v.is_hidden()),
                _ => (None, true),
            };
            dynsyms.push(Symbol::from_elf(name, &s, version, default_version));
        }
        let mut symtab = Vec::with_capacity(elf.syms.len());
        let mut file: Option<Arc<str>> = None;
        for s in elf.syms.iter() {
            let name = elf.strtab.get_at(s.st_name).unwrap_or("");
            if s.st_type() == sym::STT_FILE {
                file = (!name.is_empty()).then(|| Arc::from(name));
                continue;
            }
            if name.is_empty() || s.st_type() == sym::STT_SECTION {
                continue;
            }
            let mut symbol = Symbol::from_elf(name.to_string(), &s, None, true);
            if !symbol.global {
                symbol.file = file.clone();
            }
            symtab.push(symbol);
        }

        let mut relocs = Vec::new();
        for r in elf.dynrelas.iter().chain(elf.dynrels.iter()).chain(elf.pltrelocs.iter()) {
            let sym = (r.r_sym != 0).then_some(r.r_sym);
            if sym.is_some_and(|i| i >= dynsyms.len()) {
                return Err(format!("relocation at {:#x} names symbol #{} beyond .dynsym", r.r_offset, r.r_sym));
            }
            let addend = match r.r_addend {
                Some(a) => a,
                // REL (i386): the addend is the word in place, in the file.
                None if i386 => implicit_addend(&segments, &data, r.r_offset)
                    .ok_or_else(|| format!("relocation at {:#x} lies outside the file's segments", r.r_offset))?,
                None => return Err("REL relocations (without addends) are not used on x86-64 and not supported".into()),
            };
            relocs.push(Reloc { offset: r.r_offset, rtype: r.r_type, sym, addend });
        }
        for sh in &elf.section_headers {
            if elf.shdr_strtab.get_at(sh.sh_name) == Some(FIXUPS) {
                let bytes = sh
                    .file_range()
                    .and_then(|r| data.get(r))
                    .ok_or_else(|| format!("section {FIXUPS} lies outside the file"))?;
                add_fixups(bytes, &mut dynsyms, &mut relocs)?;
            }
        }
        if !i386 && elf.dynamic.as_ref().is_some_and(|d| d.info.rel != 0 && d.info.relsz != 0) {
            return Err("REL relocations (without addends) are not used on x86-64 and not supported".into());
        }
        // goblin's DynamicInfo turns some addresses into file offsets: read the raw entries.
        let (mut init, mut init_array, mut init_arraysz) = (None, None, 0u64);
        let (mut fini, mut fini_array, mut fini_arraysz) = (None, None, 0u64);
        if let Some(d) = &elf.dynamic {
            use goblin::elf::dynamic::*;
            for e in &d.dyns {
                match e.d_tag {
                    DT_INIT if e.d_val != 0 => init = Some(e.d_val),
                    DT_INIT_ARRAY if e.d_val != 0 => init_array = Some(e.d_val),
                    DT_INIT_ARRAYSZ => init_arraysz = e.d_val,
                    DT_FINI if e.d_val != 0 => fini = Some(e.d_val),
                    DT_FINI_ARRAY if e.d_val != 0 => fini_array = Some(e.d_val),
                    DT_FINI_ARRAYSZ => fini_arraysz = e.d_val,
                    _ => {}
                }
            }
        }
        let init_array = init_array.filter(|_| init_arraysz != 0).map(|a| (a, init_arraysz));
        let fini_array = fini_array.filter(|_| fini_arraysz != 0).map(|a| (a, fini_arraysz));
        let mut by_name: Vec<(u64, bool, u32)> = Vec::with_capacity(dynsyms.len() + symtab.len());
        for (dynamic, table) in [(true, &dynsyms), (false, &symtab)] {
            for (i, s) in table.iter().enumerate() {
                if s.defined && !s.name.is_empty() {
                    by_name.push((name_hash(&s.name), dynamic, i as u32));
                }
            }
        }
        // Stable: for one name, .dynsym entries stay before .symtab ones, each in table order.
        by_name.sort_by_key(|e| e.0);
        let mut sections = Vec::new();
        for sh in &elf.section_headers {
            let name = elf.shdr_strtab.get_at(sh.sh_name).unwrap_or("").to_string();
            sections.push((name, sh.sh_addr, sh.sh_offset, sh.sh_size));
        }
        Ok(Object {
            path: path.to_path_buf(),
            data: Vec::new(),
            resident: None,
            full: OnceLock::new(),
            file: None,
            arch,
            is_dyn,
            build_id,
            segments,
            notes,
            has_tls,
            relro,
            dynsyms,
            symtab,
            relocs,
            init,
            init_array,
            fini,
            fini_array,
            sections,
            by_name,
            functions: OnceLock::new(),
            section_data: Vec::new(),
        }
        .with_data(data))
    }

    fn with_data(mut self, data: Vec<u8>) -> Object {
        self.data = data;
        self
    }

    fn symbol(&self, dynamic: bool, i: u32) -> &Symbol {
        if dynamic {
            &self.dynsyms[i as usize]
        } else {
            &self.symtab[i as usize]
        }
    }

    /// The defined symbols named `name`, `.dynsym` ones first, each table in its order.
    fn named<'a: 'n, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = (bool, &'a Symbol)> + 'n {
        let h = name_hash(name);
        let start = self.by_name.partition_point(|e| e.0 < h);
        self.by_name[start..]
            .iter()
            .take_while(move |e| e.0 == h)
            .map(|&(_, dynamic, i)| (dynamic, self.symbol(dynamic, i)))
            .filter(move |(_, s)| s.name == name)
    }

    /// Every definition of `name` (dynamic first, then `.symtab`, file-local ones included).
    pub fn definitions(&self, name: &str) -> Vec<&Symbol> {
        let mut out: Vec<&Symbol> = Vec::new();
        for (_, s) in self.named(name) {
            // .symtab repeats the .dynsym entries: keep one per address.
            if !out.iter().any(|o| o.value == s.value && o.global == s.global) {
                out.push(s);
            }
        }
        out
    }

    /// The single definition of `name`: a global one if there is one, else a file-local one if it
    /// is unique. `Err` lists the addresses when several file-local symbols share the name.
    /// `FILE::NAME` names the file-local `NAME` of source file `FILE` (as the compiler was
    /// given it, or its last components): no ELF symbol contains `::`.
    pub fn lookup(&self, name: &str) -> std::result::Result<Option<&Symbol>, Vec<u64>> {
        if let Some((file, local)) = name.rsplit_once("::") {
            let defs: Vec<&Symbol> = self
                .definitions(local)
                .into_iter()
                .filter(|s| !s.global && s.file.as_deref().is_some_and(|f| same_source(f, file)))
                .collect();
            return match defs.len() {
                0 => Ok(None),
                1 => Ok(Some(defs[0])),
                _ => Err(defs.iter().map(|s| s.value).collect()),
            };
        }
        let defs = self.definitions(name);
        if let Some(g) = defs.iter().find(|s| s.global && s.default_version) {
            return Ok(Some(g));
        }
        if let Some(g) = defs.iter().find(|s| s.global) {
            return Ok(Some(g));
        }
        match defs.len() {
            0 => Ok(None),
            1 => Ok(Some(defs[0])),
            _ => Err(defs.iter().map(|s| s.value).collect()),
        }
    }

    /// A dynamic (exported) definition of `name` with the given version, or the default version
    /// when `version` is `None`, as ld.so would bind it.
    pub fn lookup_dynamic(&self, name: &str, version: Option<&str>) -> Option<&Symbol> {
        let mut fallback = None;
        for (dynamic, s) in self.named(name) {
            if !dynamic || !s.global {
                continue;
            }
            match version {
                Some(v) if s.version.as_deref() == Some(v) => return Some(s),
                Some(_) if s.version.is_none() => fallback = Some(s),
                Some(_) => {}
                None if s.default_version => return Some(s),
                None => {}
            }
        }
        fallback
    }

    /// The lowest and highest virtual addresses of the loadable segments, page-aligned.
    pub fn span(&self) -> (u64, u64) {
        let lo = self.segments.iter().map(|s| s.vaddr).min().unwrap_or(0);
        let hi = self.segments.iter().map(|s| s.vaddr + s.memsz).max().unwrap_or(0);
        (pannus_kernel::page_floor(lo), pannus_kernel::page_ceil(hi))
    }

    /// The address range and bytes of section `name`, when the file holds it.
    pub fn section(&self, name: &str) -> Option<(std::ops::Range<u64>, &[u8])> {
        let k = self.sections.iter().position(|s| s.0 == name)?;
        let (_, addr, off, size) = &self.sections[k];
        let bytes = match self.section_data.get(k) {
            Some(cell) if !self.is_resident(*off, *size) => {
                let read = || -> Option<Vec<u8>> {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; usize::try_from(*size).ok().filter(|&n| n as u64 <= MAX_OBJECT_SIZE)?];
                    self.file.as_ref()?.read_exact_at(&mut buf, *off).ok()?;
                    Some(buf)
                };
                let data = cell.get_or_init(|| read().unwrap_or_default());
                Some(data.as_slice()).filter(|d| d.len() as u64 == *size)?
            }
            _ => self.file_bytes(*off, *size)?,
        };
        Some((*addr..*addr + *size, bytes))
    }

    /// The function containing virtual address `vaddr`, and the offset into it.
    pub fn function_at(&self, vaddr: u64) -> Option<(&str, u64)> {
        let functions = self.functions.get_or_init(|| {
            let mut f: Vec<(u64, u64, bool, u32)> = [(true, &self.dynsyms), (false, &self.symtab)]
                .into_iter()
                .flat_map(|(dynamic, table)| table.iter().enumerate().map(move |(i, s)| (dynamic, i, s)))
                .filter(|(_, _, s)| s.defined && s.kind == SymKind::Func && s.value != 0)
                .map(|(dynamic, i, s)| (s.value, s.size, dynamic, i as u32))
                .collect();
            f.sort_by_key(|e| e.0);
            f.dedup_by_key(|e| e.0);
            f
        });
        let i = functions.partition_point(|f| f.0 <= vaddr).checked_sub(1)?;
        let &(start, size, dynamic, k) = &functions[i];
        (vaddr < start + size.max(1)).then(|| (self.symbol(dynamic, k).name.as_str(), vaddr - start))
    }

    /// The file bytes backing `[vaddr, vaddr+len)`, when the range lies in one segment's file part.
    pub fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&[u8]> {
        let end = vaddr.checked_add(len)?;
        let seg = self.segments.iter().find(|s| s.vaddr <= vaddr && end <= s.vaddr + s.filesz)?;
        self.file_bytes(seg.offset + (vaddr - seg.vaddr), len)
    }
}

/// File ranges `(start, end)`, sorted.
type FileRanges = Vec<(u64, u64)>;

/// Reads the parts of an ELF file of `len` bytes that parsing needs (see
/// [`Object::load_tables`]) into a buffer of the file's size, zeros elsewhere, and returns it
/// with the file ranges read. `None` when the whole file had better be read: small, no section
/// headers, or anything unexpected (the full parse then says what is wrong).
fn read_tables(file: &std::fs::File, len: u64) -> Option<(Vec<u8>, FileRanges)> {
    use goblin::container::{Container, Ctx, Endian};
    use goblin::elf::section_header::{
        SectionHeader, SHT_DYNAMIC, SHT_DYNSYM, SHT_GNU_HASH, SHT_GNU_VERDEF, SHT_GNU_VERNEED, SHT_GNU_VERSYM,
        SHT_HASH, SHT_NOTE, SHT_REL, SHT_RELA, SHT_STRTAB, SHT_SYMTAB,
    };
    use std::os::unix::fs::FileExt;
    const SMALL: u64 = 256 << 10;
    if len < SMALL {
        return None;
    }
    // Zeroed lazily by the allocator (fresh pages): the parts not read cost nothing.
    let mut data = vec![0u8; usize::try_from(len).ok()?];
    let read = |data: &mut Vec<u8>, start: u64, n: u64| -> Option<()> {
        let end = start.checked_add(n).filter(|&e| e <= len)?;
        file.read_exact_at(&mut data[start as usize..end as usize], start).ok()
    };
    read(&mut data, 0, 64)?;
    let h = Elf::parse_header(&data).ok()?;
    if h.e_ident[header::EI_CLASS] != header::ELFCLASS64 || h.e_ident[header::EI_DATA] != header::ELFDATA2LSB {
        return None;
    }
    let phs = u64::from(h.e_phnum) * u64::from(h.e_phentsize);
    let shs = u64::from(h.e_shnum) * u64::from(h.e_shentsize);
    if h.e_shnum == 0 || h.e_shentsize as usize != std::mem::size_of::<goblin::elf64::section_header::SectionHeader>() {
        return None;
    }
    read(&mut data, h.e_phoff, phs)?;
    read(&mut data, h.e_shoff, shs)?;
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let shdrs = SectionHeader::parse(&data, h.e_shoff as usize, h.e_shnum as usize, ctx).ok()?;
    let mut want: Vec<(u64, u64)> = vec![(0, 64), (h.e_phoff, h.e_phoff + phs), (h.e_shoff, h.e_shoff + shs)];
    for sh in &shdrs {
        let table = matches!(
            sh.sh_type,
            SHT_SYMTAB
                | SHT_STRTAB
                | SHT_DYNSYM
                | SHT_DYNAMIC
                | SHT_NOTE
                | SHT_RELA
                | SHT_REL
                | SHT_HASH
                | SHT_GNU_HASH
                | SHT_GNU_VERSYM
                | SHT_GNU_VERDEF
                | SHT_GNU_VERNEED
        );
        if table && sh.sh_size > 0 {
            want.push((sh.sh_offset, sh.sh_offset.checked_add(sh.sh_size)?));
        }
    }
    // Segments other than code (PT_DYNAMIC, PT_NOTE, ...) too, whatever the section headers say.
    let phdrs = goblin::elf::ProgramHeader::parse(&data, h.e_phoff as usize, h.e_phnum as usize, ctx).ok()?;
    for p in phdrs.iter().filter(|p| p.p_type != ph::PT_LOAD && p.p_filesz > 0) {
        want.push((p.p_offset, p.p_offset.checked_add(p.p_filesz)?));
    }
    // Merged, with small gaps bridged, so that the reads are few.
    want.sort_unstable();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (s, e) in want {
        match ranges.last_mut() {
            Some(last) if s <= last.1 + 4096 => last.1 = last.1.max(e),
            _ => ranges.push((s, e)),
        }
    }
    for &(s, e) in &ranges {
        read(&mut data, s, e.checked_sub(s)?)?;
    }
    Some((data, ranges))
}

/// The GNU build-id of the ELF file `file`, reading only its header, program headers and
/// notes (a few hundred bytes); `None` when it has none or is not a little-endian ELF (64-bit,
/// or 32-bit: the build-id of a 32-bit program is shown and matched the same way).
pub fn build_id_of(file: &std::fs::File) -> Option<String> {
    use goblin::container::{Container, Ctx, Endian};
    use std::os::unix::fs::FileExt;
    const MAX_HEADERS: usize = 64 << 10;
    let mut head = [0u8; 64];
    // A 32-bit ELF header is 52 bytes: a file that short holds no notes anyway.
    file.read_exact_at(&mut head, 0).ok()?;
    let h = Elf::parse_header(&head).ok()?;
    let container = match h.e_ident[header::EI_CLASS] {
        header::ELFCLASS64 => Container::Big,
        header::ELFCLASS32 => Container::Little,
        _ => return None,
    };
    if h.e_ident[header::EI_DATA] != header::ELFDATA2LSB {
        return None;
    }
    let phs = usize::from(h.e_phnum).checked_mul(usize::from(h.e_phentsize)).filter(|&n| n <= MAX_HEADERS)?;
    let mut phbuf = vec![0u8; phs];
    file.read_exact_at(&mut phbuf, h.e_phoff).ok()?;
    let ctx = Ctx::new(container, Endian::Little);
    let phdrs = goblin::elf::ProgramHeader::parse(&phbuf, 0, usize::from(h.e_phnum), ctx).ok()?;
    for p in phdrs.iter().filter(|p| p.p_type == ph::PT_NOTE && p.p_filesz > 0) {
        let Some(len) = usize::try_from(p.p_filesz).ok().filter(|&n| n <= MAX_HEADERS) else { continue };
        let mut notes = vec![0u8; len];
        if file.read_exact_at(&mut notes, p.p_offset).is_err() {
            continue;
        }
        let align = usize::try_from(p.p_align).unwrap_or(0);
        let mut it = goblin::elf::note::NoteDataIterator { data: &notes, offset: 0, size: len, ctx: (align, ctx) };
        let id = it.by_ref().map_while(|n| n.ok()).find_map(|n| {
            (n.n_type == goblin::elf::note::NT_GNU_BUILD_ID && n.name == "GNU").then(|| hex::encode(n.desc))
        });
        if id.is_some() {
            return id;
        }
    }
    None
}

/// The 32-bit word the file holds at virtual address `vaddr` (inside a segment's file bytes;
/// zero in its bss), sign-extended: the addend of an i386 `REL` relocation there.
fn implicit_addend(segments: &[Segment], data: &[u8], vaddr: u64) -> Option<i64> {
    let end = vaddr.checked_add(4)?;
    let s = segments.iter().find(|s| s.vaddr <= vaddr && end <= s.vaddr.saturating_add(s.memsz))?;
    let at = vaddr - s.vaddr;
    if at + 4 > s.filesz {
        return Some(0);
    }
    let o = usize::try_from(s.offset + at).ok()?;
    let w = data.get(o..o + 4)?;
    Some(i64::from(i32::from_le_bytes(w.try_into().ok()?)))
}

/// FNV-1a of a symbol name: the key of [`Object`]'s name index, which compares the names
/// themselves on a match.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(sha256(&std::fs::read(path)?))
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The bytes of the file at `path`, a regular file (never a FIFO or a device to block on) of at
/// most the largest object size. `role` names it in errors (bad input).
pub fn read_file(path: &Path, role: &str) -> Result<Vec<u8>> {
    let bad = |what: String| Error::bad_input(format!("{role} {}: {what}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > MAX_OBJECT_SIZE {
        return Err(bad(format!("too large ({} bytes)", meta.len())));
    }
    std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The libc this test runs with, as its maps name it.
    fn libc_path() -> PathBuf {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.contains("/libc.so")).unwrap();
        PathBuf::from(path)
    }

    #[test]
    fn reading_only_the_tables_parses_the_same_object() {
        let path = libc_path();
        let full = Object::load(&path, "libc").unwrap();
        let tables = Object::load_tables(&path, "libc").unwrap();
        assert!(tables.resident.is_some(), "libc is large enough to be read in part");
        assert_eq!(full.build_id, tables.build_id);
        assert_eq!(full.dynsyms.len(), tables.dynsyms.len());
        assert_eq!(full.relocs.len(), tables.relocs.len());
        assert_eq!(full.sections, tables.sections);
        for name in ["malloc", "memcpy", "printf", "__libc_start_main"] {
            let a = full.lookup_dynamic(name, None).map(|s| (s.value, s.version.clone()));
            assert!(a.is_some(), "{name}");
            assert_eq!(a, tables.lookup_dynamic(name, None).map(|s| (s.value, s.version.clone())), "{name}");
        }
        // Code is not read up front, and is there when asked for.
        for section in [".text", ".eh_frame", ".dynsym"] {
            assert_eq!(full.section(section).map(|s| s.1), tables.section(section).map(|s| s.1), "{section}");
        }
        let malloc = full.lookup_dynamic("malloc", None).unwrap().value;
        assert_eq!(full.function_at(malloc + 1), Some(("malloc", 1)));
        assert_eq!(tables.bytes_at(malloc, 16), full.bytes_at(malloc, 16));
    }

    #[test]
    fn the_build_id_from_the_notes_alone_is_the_parsed_one() {
        let path = libc_path();
        let full = Object::load(&path, "libc").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        assert!(full.build_id.is_some());
        assert_eq!(build_id_of(&file), full.build_id);
        let text = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(build_id_of(&text), None);
    }

    #[test]
    fn several_symbols_of_one_name_are_all_found() {
        let path = libc_path();
        let o = Object::load_tables(&path, "libc").unwrap();
        // libc defines memcpy in more than one version; the default one is found without one.
        let defs = o.definitions("memcpy");
        assert!(defs.len() >= 2, "{defs:?}");
        assert!(o.lookup_dynamic("memcpy", Some("GLIBC_2.2.5")).is_some());
        assert!(o.lookup_dynamic("no_such_symbol_anywhere", None).is_none());
    }
}
